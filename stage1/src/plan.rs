//! The pure part of stage 1: from the kernel command line and the compiled stage-1 config,
//! decide what this boot will do. Nothing here touches the system, so every decision is
//! unit-tested against plain strings.

use std::fmt;

use stagehand_common::cmdline::Cmdline;
use stagehand_common::stage1_config::{FileSystem, Module, Stage1Config};

use crate::fsck::{FsckMode, FsckPolicy};
use crate::layers::LayerPlan;
use crate::resume::ResumePlan;

/// Where the new root is assembled before `switch_root`.
pub const TARGET_ROOT: &str = "/mnt-root";

/// NixOS's default when the command line names no `init=`.
pub const DEFAULT_INIT: &str = "/init";

/// Points at which `rd.break=<phase>` stops the boot and opens the failure path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakPoint {
    /// Before anything is mounted (also `boot.debug1`).
    Start,
    /// After kernel modules are loaded (also `boot.debug1devices`).
    Modules,
    /// After every filesystem is mounted, just before `switch_root` (also `boot.debug1mounts`).
    Mounts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub modules: Vec<Module>,
    /// Filesystems in mount order; the first one is always `/`.
    pub filesystems: Vec<FileSystem>,
    pub device_timeout_ms: u32,
    /// `init=` as given, a path inside the new root.
    pub init: String,
    pub panic_on_fail: bool,
    pub shell_on_fail: bool,
    pub break_at: Option<BreakPoint>,
    /// The console the failure path talks to (`console=` without options), e.g. `ttyS0`.
    pub console: Option<String>,
    /// `boot.trace`/`debugtrace`: log every step (debug level).
    pub trace: bool,
    pub fsck: FsckPolicy,
    pub resume: ResumePlan,
    /// Register every btrfs device with the kernel before mounting (`btrfs_scan`).
    pub btrfs_scan: bool,
    /// The LUKS and LVM layers set up before the filesystems' devices are waited for.
    pub layers: LayerPlan,
    /// Problems with the command line that do not stop the boot but deserve a warning.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// Neither the config nor `root=` names the root filesystem.
    NoRoot,
    /// A configured mount point is not absolute.
    BadMountPoint(String),
    /// `resume=` is given but unusable.
    BadResume(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRoot => write!(
                f,
                "no root filesystem: the stage-1 config has no \"/\" entry and the kernel \
                 command line has no root=; add root=/dev/... (or LABEL=/UUID=) to the boot entry"
            ),
            Self::BadMountPoint(mp) => write!(
                f,
                "stage-1 config lists mount point {mp:?}, which is not an absolute path; rebuild \
                 the initrd with a corrected filesystem list"
            ),
            Self::BadResume(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for PlanError {}

impl Plan {
    pub fn new(cmdline: &Cmdline, config: &Stage1Config) -> Result<Plan, PlanError> {
        let mut warnings = Vec::new();
        let filesystems = plan_filesystems(cmdline, config, &mut warnings)?;

        let panic_on_fail = if cmdline.flag("boot.panic_on_fail") || cmdline.flag("stage1panic") {
            true
        } else {
            config.panic_on_fail
                && !cmdline
                    .iter()
                    .any(|(k, v)| k == "stage1panic" && v == Some("0"))
        };

        let break_at = break_point(cmdline, &mut warnings);
        let shell_on_fail = cmdline.flag("boot.shell_on_fail") || break_at.is_some();

        let init = match cmdline.get("init") {
            Some(p) if p.starts_with('/') => p.to_owned(),
            Some(p) => {
                warnings.push(format!(
                    "init={p} is not an absolute path; using {DEFAULT_INIT} instead"
                ));
                DEFAULT_INIT.to_owned()
            }
            None => DEFAULT_INIT.to_owned(),
        };

        // The last console= is the one the kernel makes /dev/console; options follow a comma.
        let console = cmdline
            .get("console")
            .map(|c| c.split(',').next().unwrap_or(c).to_owned())
            .filter(|c| !c.is_empty());

        let device_timeout_ms =
            device_timeout(cmdline, &mut warnings).unwrap_or(config.device_timeout_ms);
        let trace = cmdline.flag("boot.trace") || cmdline.flag("debugtrace");

        let mut fsck = FsckPolicy {
            check_journaling_fs: config.options.check_journaling_fs,
            mode: FsckMode::Auto,
            programs: config.options.fsck_programs.clone(),
        };
        match cmdline.get("fsck.mode") {
            None | Some("auto") => {}
            Some("skip") => fsck.mode = FsckMode::Skip,
            Some("force") => fsck.mode = FsckMode::Force,
            Some(other) => warnings.push(format!(
                "fsck.mode={other} is not auto, skip or force; using auto"
            )),
        }

        let resume = ResumePlan::new(
            cmdline.get("resume"),
            cmdline.flag("noresume"),
            config.options.resume_device.as_deref(),
            &config.options.resume_devices,
        )
        .map_err(PlanError::BadResume)?;

        Ok(Plan {
            modules: config.modules.clone(),
            filesystems,
            device_timeout_ms,
            init,
            panic_on_fail,
            shell_on_fail,
            break_at,
            console,
            trace,
            fsck,
            resume,
            btrfs_scan: config.options.btrfs_scan,
            layers: LayerPlan::new(&config.options),
            warnings,
        })
    }
}

/// The filesystems in mount order, the root first: the configured ones, with the root's
/// device from `root=` or `boot.persistence=` where those apply (warnings for the ones
/// that do not).
fn plan_filesystems(
    cmdline: &Cmdline,
    config: &Stage1Config,
    warnings: &mut Vec<String>,
) -> Result<Vec<FileSystem>, PlanError> {
    let mut filesystems = Vec::with_capacity(config.filesystems.len() + 1);
    for fs in &config.filesystems {
        if !fs.mount_point.starts_with('/') {
            return Err(PlanError::BadMountPoint(fs.mount_point.clone()));
        }
    }
    let persistence = cmdline.get("boot.persistence").filter(|d| !d.is_empty());
    match config.filesystems.iter().find(|fs| fs.mount_point == "/") {
        // A tmpfs root with `boot.persistence=DEV`: DEV becomes the root instead
        // (live media keeping their changes), mounted with `boot.persistence.opt=`.
        Some(root) if is_tmpfs(root) && persistence.is_some() => {
            let device = persistence.unwrap_or_default().to_owned();
            let options = cmdline
                .get("boot.persistence.opt")
                .map(split_options)
                .unwrap_or_default();
            filesystems.push(FileSystem {
                mount_point: "/".into(),
                device,
                fs_type: "auto".into(),
                options,
            });
        }
        // A tmpfs root has no device for root= to replace; NixOS ignores root= too
        // (it only names /dev/root).
        Some(root) if is_tmpfs(root) => {
            if let Some(dev) = cmdline.get("root") {
                warnings.push(format!(
                    "root={dev} ignored: the configured root filesystem is a tmpfs"
                ));
            }
            filesystems.push(root.clone());
        }
        // The command line overrides the configured root device, as on NixOS where
        // root= rewrites /dev/root.
        Some(root) => filesystems.push(root_from_cmdline(cmdline, Some(root.clone()), warnings)),
        None => match cmdline.get("root").filter(|r| !r.is_empty()) {
            Some(_) => filesystems.push(root_from_cmdline(cmdline, None, warnings)),
            None => return Err(PlanError::NoRoot),
        },
    }
    if let Some(dev) = persistence {
        if filesystems.first().is_none_or(|r| r.device != dev) {
            warnings.push(format!(
                "boot.persistence={dev} ignored: the root filesystem is not a tmpfs"
            ));
        }
    }
    filesystems.extend(
        config
            .filesystems
            .iter()
            .filter(|fs| fs.mount_point != "/")
            .cloned(),
    );
    Ok(filesystems)
}

/// Where `boot.debug1*` or `rd.break=` ask stage 1 to stop, if anywhere.
fn break_point(cmdline: &Cmdline, warnings: &mut Vec<String>) -> Option<BreakPoint> {
    let mut break_at = None;
    if cmdline.flag("boot.debug1") || cmdline.flag("debug1") {
        break_at = Some(BreakPoint::Start);
    } else if cmdline.flag("boot.debug1devices") {
        break_at = Some(BreakPoint::Modules);
    } else if cmdline.flag("boot.debug1mounts") {
        break_at = Some(BreakPoint::Mounts);
    }
    if let Some(phase) = cmdline.get("rd.break") {
        match phase {
            "start" | "cmdline" => break_at = Some(BreakPoint::Start),
            "modules" | "devices" => break_at = Some(BreakPoint::Modules),
            "mounts" | "mount" | "pre-pivot" => break_at = Some(BreakPoint::Mounts),
            other => warnings.push(format!(
                "rd.break={other} is not a known phase (use start, modules or mounts); ignored"
            )),
        }
    }
    break_at
}

/// Command-line names for the device wait, in seconds (fractions allowed): ours, and
/// systemd's initrd name for the same thing.
const TIMEOUT_PARAMS: &[&str] = &["rd.device_timeout", "rd.systemd.default_device_timeout_sec"];

/// The device timeout the command line asks for, in milliseconds.
fn device_timeout(cmdline: &Cmdline, warnings: &mut Vec<String>) -> Option<u32> {
    let (name, value) = cmdline
        .iter()
        .filter(|(k, v)| TIMEOUT_PARAMS.contains(k) && v.is_some())
        .last()?;
    let value = value.unwrap_or_default();
    match seconds_to_ms(value) {
        Some(ms) => Some(ms),
        None => {
            warnings.push(format!(
                "{name}={value} is not a number of seconds; using the configured device timeout"
            ));
            None
        }
    }
}

/// `SECONDS[.FRACTION]` (either part may be empty, not both) in milliseconds, rounded to
/// the nearest and kept within u32 (about 49 days: "forever" in practice). Decimal by
/// hand rather than through `f64`: the float parser and its tables are 16 KiB of stage 1.
fn seconds_to_ms(value: &str) -> Option<u32> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return None;
    }
    // Leading zeros and a whole part of any length: saturate rather than overflow.
    let secs = whole.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    });
    let mut frac = fraction.bytes().chain(std::iter::repeat(b'0'));
    let mut ms = 0u64;
    for _ in 0..3 {
        ms = ms * 10 + u64::from(frac.next().unwrap_or(b'0') - b'0');
    }
    // Round half up on the fourth fractional digit.
    if frac.next().is_some_and(|d| d >= b'5') {
        ms += 1;
    }
    let total = secs.saturating_mul(1000).saturating_add(ms);
    Some(u32::try_from(total).unwrap_or(u32::MAX))
}

fn is_tmpfs(fs: &FileSystem) -> bool {
    fs.fs_type == "tmpfs" || (fs.fs_type == "auto" && fs.device == "tmpfs")
}

fn split_options(opts: &str) -> Vec<String> {
    opts.split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The root filesystem, with `root=`, `rootfstype=`, `rootflags=` and `ro`/`rw` applied on
/// top of the configured entry (or on their own when the config has none).
fn root_from_cmdline(
    cmdline: &Cmdline,
    configured: Option<FileSystem>,
    warnings: &mut Vec<String>,
) -> FileSystem {
    let mut root = configured.unwrap_or_else(|| FileSystem {
        mount_point: "/".into(),
        device: String::new(),
        fs_type: "auto".into(),
        options: Vec::new(),
    });
    match cmdline.get("root") {
        Some("") => warnings.push(format!(
            "root= is empty; using the configured root device {}",
            root.device
        )),
        Some(dev) => root.device = dev.to_owned(),
        None => {}
    }
    match cmdline.get("rootfstype") {
        Some("") => warnings.push("rootfstype= is empty; ignored".into()),
        Some(t) => root.fs_type = t.to_owned(),
        None => {}
    }
    if let Some(flags) = cmdline.get("rootflags") {
        root.options.extend(split_options(flags));
    }
    // `ro`/`rw` are bare words; the later one wins, as in the kernel.
    let ro_rw = cmdline
        .iter()
        .filter(|(k, v)| v.is_none() && (*k == "ro" || *k == "rw"))
        .last();
    if let Some((word, _)) = ro_rw {
        root.options.retain(|o| o != "ro" && o != "rw");
        root.options.push(word.to_owned());
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(mp: &str, dev: &str, t: &str) -> FileSystem {
        FileSystem {
            mount_point: mp.into(),
            device: dev.into(),
            fs_type: t.into(),
            options: vec![],
        }
    }

    fn config() -> Stage1Config {
        Stage1Config {
            filesystems: vec![fs("/nix", "/dev/vdb", "ext4"), fs("/", "/dev/vda", "ext4")],
            ..Default::default()
        }
    }

    #[test]
    fn root_comes_first_and_cmdline_overrides_it() {
        let p = Plan::new(
            &Cmdline::parse("root=LABEL=nixos rootflags=noatime,discard ro init=/nix/store/a/init"),
            &config(),
        )
        .expect("plan");
        assert_eq!(p.filesystems[0].mount_point, "/");
        assert_eq!(p.filesystems[0].device, "LABEL=nixos");
        assert_eq!(p.filesystems[0].options, ["noatime", "discard", "ro"]);
        assert_eq!(p.filesystems[1].mount_point, "/nix");
        assert_eq!(p.init, "/nix/store/a/init");
        assert!(!p.panic_on_fail && !p.shell_on_fail);
    }

    #[test]
    fn root_from_cmdline_only() {
        let p = Plan::new(
            &Cmdline::parse("root=/dev/vda rootfstype=ext4"),
            &Stage1Config::default(),
        )
        .expect("plan");
        assert_eq!(p.filesystems, vec![fs("/", "/dev/vda", "ext4")]);
        assert_eq!(p.init, DEFAULT_INIT);
    }

    #[test]
    fn no_root_is_an_error_that_says_what_to_add() {
        let e = Plan::new(&Cmdline::parse("quiet"), &Stage1Config::default()).expect_err("no root");
        assert_eq!(e, PlanError::NoRoot);
        assert!(e.to_string().contains("root="));
    }

    #[test]
    fn failure_switches() {
        let p = Plan::new(&Cmdline::parse("root=/dev/vda stage1panic=1"), &config()).expect("plan");
        assert!(p.panic_on_fail);
        let p = Plan::new(
            &Cmdline::parse("root=/dev/vda boot.panic_on_fail"),
            &config(),
        )
        .expect("plan");
        assert!(p.panic_on_fail);
        let cfg = Stage1Config {
            panic_on_fail: true,
            ..config()
        };
        assert!(
            Plan::new(&Cmdline::parse(""), &cfg)
                .expect("plan")
                .panic_on_fail
        );
        assert!(
            !Plan::new(&Cmdline::parse("stage1panic=0"), &cfg)
                .expect("plan")
                .panic_on_fail
        );
        let p = Plan::new(
            &Cmdline::parse("boot.shell_on_fail console=ttyS0,115200"),
            &config(),
        )
        .expect("plan");
        assert!(p.shell_on_fail);
        assert_eq!(p.console.as_deref(), Some("ttyS0"));
    }

    #[test]
    fn break_points() {
        let at = |c: &str| {
            Plan::new(&Cmdline::parse(c), &config())
                .expect("plan")
                .break_at
        };
        assert_eq!(at("boot.debug1"), Some(BreakPoint::Start));
        assert_eq!(at("boot.debug1devices"), Some(BreakPoint::Modules));
        assert_eq!(at("boot.debug1mounts"), Some(BreakPoint::Mounts));
        assert_eq!(at("rd.break=mounts"), Some(BreakPoint::Mounts));
        assert_eq!(at(""), None);
        let p = Plan::new(&Cmdline::parse("rd.break=bogus"), &config()).expect("plan");
        assert_eq!(p.break_at, None);
        assert!(p.warnings[0].contains("rd.break=bogus"));
    }

    #[test]
    fn relative_init_is_reported_not_used() {
        let p = Plan::new(&Cmdline::parse("init=bin/sh"), &config()).expect("plan");
        assert_eq!(p.init, DEFAULT_INIT);
        assert!(p.warnings[0].contains("init=bin/sh"));
    }

    #[test]
    fn relative_mount_point_is_rejected() {
        let cfg = Stage1Config {
            filesystems: vec![fs("nix", "/dev/vdb", "ext4")],
            ..config()
        };
        let e = Plan::new(&Cmdline::parse("root=/dev/vda"), &cfg).expect_err("bad");
        assert_eq!(e, PlanError::BadMountPoint("nix".into()));
    }

    fn plan(c: &str, cfg: &Stage1Config) -> Plan {
        Plan::new(&Cmdline::parse(c), cfg).expect("plan")
    }

    #[test]
    fn rootfstype_rootflags_and_ro_rw() {
        let p = plan(
            "root=UUID=0b2d rootfstype=btrfs rootflags=subvol=@,compress=zstd rw ro",
            &config(),
        );
        let root = &p.filesystems[0];
        assert_eq!(root.device, "UUID=0b2d");
        assert_eq!(root.fs_type, "btrfs");
        assert_eq!(root.options, ["subvol=@", "compress=zstd", "ro"]);
        // `ro=1` is not the bare word and does not count.
        let p = plan("root=/dev/vda ro=1", &config());
        assert!(p.filesystems[0].options.is_empty());
    }

    #[test]
    fn malformed_root_params_are_reported_and_ignored() {
        let p = plan("root= rootfstype=", &config());
        assert_eq!(p.filesystems[0].device, "/dev/vda");
        assert_eq!(p.filesystems[0].fs_type, "ext4");
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("root= is empty"));
        let e = Plan::new(&Cmdline::parse("root="), &Stage1Config::default()).expect_err("none");
        assert_eq!(e, PlanError::NoRoot);
    }

    #[test]
    fn trace_and_device_timeout() {
        let p = plan("boot.trace rd.device_timeout=1.5", &config());
        assert!(p.trace);
        assert_eq!(p.device_timeout_ms, 1500);
        assert!(plan("debugtrace", &config()).trace);
        assert!(!plan("", &config()).trace);
        assert_eq!(plan("", &config()).device_timeout_ms, 20_000);
        let p = plan("rd.systemd.default_device_timeout_sec=3", &config());
        assert_eq!(p.device_timeout_ms, 3000);
        let p = plan("rd.device_timeout=soon", &config());
        assert_eq!(p.device_timeout_ms, 20_000);
        assert!(p.warnings[0].contains("rd.device_timeout=soon"));
        assert_eq!(plan("rd.device_timeout=-1", &config()).warnings.len(), 1);
    }

    #[test]
    fn device_timeouts_in_decimal_seconds() {
        for (text, ms) in [
            ("1.5", Some(1500)),
            ("0.5", Some(500)),
            ("3", Some(3000)),
            (".25", Some(250)),
            ("2.", Some(2000)),
            ("0.0005", Some(1)),
            ("0.0004", Some(0)),
            ("0.9996", Some(1000)),
            ("007.010", Some(7010)),
            ("99999999999999999999999", Some(u32::MAX)),
            ("4294967.295", Some(u32::MAX)),
            ("4294967.2955", Some(u32::MAX)),
            ("", None),
            (".", None),
            ("-1", None),
            ("+1", None),
            ("1e3", None),
            ("1.2.3", None),
            (" 1", None),
            ("inf", None),
            ("NaN", None),
        ] {
            assert_eq!(seconds_to_ms(text), ms, "{text:?}");
        }
    }

    #[test]
    fn fsck_policy_from_config_and_cmdline() {
        let mut cfg = config();
        cfg.options.check_journaling_fs = false;
        cfg.options
            .fsck_programs
            .insert("ext4".into(), "/bin/e2fsck".into());
        let p = plan("", &cfg);
        assert!(!p.fsck.check_journaling_fs);
        assert_eq!(p.fsck.mode, FsckMode::Auto);
        assert_eq!(p.fsck.programs["ext4"], "/bin/e2fsck");
        assert_eq!(plan("fsck.mode=skip", &cfg).fsck.mode, FsckMode::Skip);
        assert_eq!(plan("fsck.mode=force", &cfg).fsck.mode, FsckMode::Force);
        let p = plan("fsck.mode=maybe", &cfg);
        assert_eq!(p.fsck.mode, FsckMode::Auto);
        assert!(p.warnings[0].contains("fsck.mode=maybe"));
    }

    #[test]
    fn resume_from_cmdline_or_config() {
        let mut cfg = config();
        assert_eq!(plan("", &cfg).resume, ResumePlan::AnySwsuspend);
        cfg.options.resume_devices = vec!["/dev/vdc".into()];
        assert_eq!(
            plan("", &cfg).resume,
            ResumePlan::Candidates(vec!["/dev/vdc".into()])
        );
        cfg.options.resume_device = Some("LABEL=swap".into());
        assert_eq!(
            plan("", &cfg).resume,
            ResumePlan::Device("LABEL=swap".into())
        );
        assert_eq!(
            plan("resume=PARTUUID=abcd", &cfg).resume,
            ResumePlan::Device("PARTUUID=abcd".into())
        );
        assert_eq!(plan("resume=8:3", &cfg).resume, ResumePlan::Devno(8, 3));
        assert_eq!(
            plan("resume=/dev/vdb noresume", &cfg).resume,
            ResumePlan::Off
        );
        let e = Plan::new(&Cmdline::parse("resume="), &cfg).expect_err("empty resume");
        assert!(e.to_string().contains("resume="), "{e}");
    }

    fn tmpfs_root_config() -> Stage1Config {
        Stage1Config {
            filesystems: vec![
                FileSystem {
                    mount_point: "/".into(),
                    device: "none".into(),
                    fs_type: "tmpfs".into(),
                    options: vec!["mode=755".into(), "size=25%".into()],
                },
                fs("/nix", "LABEL=nix", "ext4"),
                FileSystem {
                    mount_point: "/nix/store".into(),
                    device: "/nix/store".into(),
                    fs_type: "none".into(),
                    options: vec!["bind".into(), "ro".into()],
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn tmpfs_root_keeps_its_order_and_ignores_root_eq() {
        let p = plan("root=/dev/vda ro", &tmpfs_root_config());
        let mps: Vec<&str> = p
            .filesystems
            .iter()
            .map(|f| f.mount_point.as_str())
            .collect();
        assert_eq!(mps, ["/", "/nix", "/nix/store"]);
        assert_eq!(p.filesystems[0], tmpfs_root_config().filesystems[0]);
        assert!(
            p.warnings[0].contains("root=/dev/vda ignored"),
            "{:?}",
            p.warnings
        );
        assert!(plan("", &tmpfs_root_config()).warnings.is_empty());
    }

    #[test]
    fn persistence_replaces_a_tmpfs_root() {
        let p = plan(
            "boot.persistence=/dev/disk/by-label/live-rw boot.persistence.opt=noatime,discard",
            &tmpfs_root_config(),
        );
        assert_eq!(
            p.filesystems[0],
            FileSystem {
                mount_point: "/".into(),
                device: "/dev/disk/by-label/live-rw".into(),
                fs_type: "auto".into(),
                options: vec!["noatime".into(), "discard".into()],
            }
        );
        assert_eq!(p.filesystems[1].mount_point, "/nix");
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        // Without options, and on a disk root where it does not apply.
        let p = plan("boot.persistence=LABEL=rw", &tmpfs_root_config());
        assert!(p.filesystems[0].options.is_empty());
        let p = plan("boot.persistence=LABEL=rw", &config());
        assert_eq!(p.filesystems[0].device, "/dev/vda");
        assert!(p.warnings[0].contains("not a tmpfs"), "{:?}", p.warnings);
    }
}
