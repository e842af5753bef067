//! The pure part of stage 1: from the kernel command line and the compiled stage-1 config,
//! decide what this boot will do. Nothing here touches the system, so every decision is
//! unit-tested against plain strings.

use std::fmt;

use stagehand_common::cmdline::Cmdline;
use stagehand_common::stage1_config::{FileSystem, Module, Stage1Config};

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
    /// Problems with the command line that do not stop the boot but deserve a warning.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// Neither the config nor `root=` names the root filesystem.
    NoRoot,
    /// A configured mount point is not absolute.
    BadMountPoint(String),
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
        }
    }
}

impl std::error::Error for PlanError {}

impl Plan {
    pub fn new(cmdline: &Cmdline, config: &Stage1Config) -> Result<Plan, PlanError> {
        let mut warnings = Vec::new();
        let mut filesystems = Vec::with_capacity(config.filesystems.len() + 1);
        for fs in &config.filesystems {
            if !fs.mount_point.starts_with('/') {
                return Err(PlanError::BadMountPoint(fs.mount_point.clone()));
            }
        }
        match config.filesystems.iter().find(|fs| fs.mount_point == "/") {
            // The command line overrides the configured root device, as on NixOS where
            // root= rewrites /dev/root.
            Some(root) => filesystems.push(root_from_cmdline(cmdline, Some(root.clone()))),
            None => match cmdline.get("root") {
                Some(_) => filesystems.push(root_from_cmdline(cmdline, None)),
                None => return Err(PlanError::NoRoot),
            },
        }
        filesystems.extend(
            config
                .filesystems
                .iter()
                .filter(|fs| fs.mount_point != "/")
                .cloned(),
        );

        let panic_on_fail = if cmdline.flag("boot.panic_on_fail") || cmdline.flag("stage1panic") {
            true
        } else {
            config.panic_on_fail
                && !cmdline
                    .iter()
                    .any(|(k, v)| k == "stage1panic" && v == Some("0"))
        };

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

        Ok(Plan {
            modules: config.modules.clone(),
            filesystems,
            device_timeout_ms: config.device_timeout_ms,
            init,
            panic_on_fail,
            shell_on_fail,
            break_at,
            console,
            warnings,
        })
    }
}

/// The root filesystem, with `root=`, `rootfstype=`, `rootflags=` and `ro`/`rw` applied on
/// top of the configured entry (or on their own when the config has none).
fn root_from_cmdline(cmdline: &Cmdline, configured: Option<FileSystem>) -> FileSystem {
    let mut root = configured.unwrap_or_else(|| FileSystem {
        mount_point: "/".into(),
        device: String::new(),
        fs_type: "auto".into(),
        options: Vec::new(),
    });
    if let Some(dev) = cmdline.get("root") {
        root.device = dev.to_owned();
    }
    if let Some(t) = cmdline.get("rootfstype") {
        root.fs_type = t.to_owned();
    }
    if let Some(flags) = cmdline.get("rootflags") {
        root.options.extend(
            flags
                .split(',')
                .filter(|o| !o.is_empty())
                .map(str::to_owned),
        );
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
}
