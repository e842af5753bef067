//! Which kind of boot this is, and therefore what stage 2 does: a pure decision over the
//! environment, the kernel command line and what is mounted, so every mode is unit-tested
//! without booting.
//!
//! * after our stage 1: `/proc /sys /dev /run` were moved in, `/run/stagehand/stage1.json`
//!   is there; stage 2 mounts the rest of the special filesystems, remounts `/` read-write.
//! * direct: no stage 1 of ours (no initrd, `init=` straight to stage 2, or a foreign initrd
//!   that only mounted the root): stage 2 mounts every special filesystem that is missing.
//! * container (`$container` set by the container manager): no remount of `/` (the manager
//!   owns it), no devtmpfs or sysfs (a container cannot mount them; the manager provides
//!   them), and `/nix/store` is bound recursively (it may carry submounts from the host).
//! * systemd initrd (`IN_NIXOS_SYSTEMD_STAGE1=true`): run by `initrd-nixos-activation.service`
//!   as `prepare-root`, not PID 1. It prepares the real root and exits 0; systemd then
//!   switches root itself. NixOS's service runs it chrooted into `/sysroot`; started from
//!   the initrd's own root instead (where `/etc/initrd-release` exists), stage 2 works under
//!   the prefix `/sysroot` and binds the initrd's `/run` onto `/sysroot/run` first, so
//!   `/run/booted-system` and friends survive the switch.

use std::fmt;
use std::path::PathBuf;

use stagehand_common::cmdline::Cmdline;
use stagehand_common::mounts::special::{SpecialFs, SPECIAL_FILESYSTEMS};

/// Where the systemd initrd mounts the real root.
pub const SYSROOT: &str = "/sysroot";
/// Where efivarfs belongs (systemd mounts it too; stage 2 needs it earlier, to see whether
/// the boot loader is counting this boot).
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";

/// What stage 2 observed before deciding. `mounted` is the mount points of
/// `/proc/self/mountinfo`, read after `/proc` is guaranteed.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub pid: u32,
    /// `$IN_NIXOS_SYSTEMD_STAGE1`.
    pub systemd_stage1: Option<String>,
    /// `$container` (systemd-nspawn, LXC, podman set it).
    pub container: Option<String>,
    pub cmdline: Cmdline,
    pub mounted: Vec<String>,
    /// `/etc/initrd-release` exists: this process sees the initrd's root, not the real one.
    pub initrd_release: bool,
    /// `/run/stagehand/stage1.json` exists on a mounted `/run`.
    pub stage1_receipt: bool,
    /// `/sys/firmware/efi/efivars` exists: booted by UEFI firmware.
    pub efi: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    AfterStage1,
    Direct,
    Container(String),
    /// `chrooted`: already inside the real root (NixOS's `chroot /sysroot prepare-root`).
    SystemdInitrd {
        chrooted: bool,
    },
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::AfterStage1 => f.write_str("after Stagehand's stage 1"),
            Mode::Direct => f.write_str("direct boot (no Stagehand stage 1)"),
            Mode::Container(c) => write!(f, "container ({c})"),
            Mode::SystemdInitrd { chrooted: true } => {
                f.write_str("systemd initrd, chrooted into the real root")
            }
            Mode::SystemdInitrd { chrooted: false } => {
                write!(f, "systemd initrd, real root at {SYSROOT}")
            }
        }
    }
}

/// How stage 2 ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// exec the generation's systemd as PID 1 with the kernel's arguments.
    ExecSystemd,
    /// Exit 0: systemd in the initrd switches root itself.
    Exit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mode: Mode,
    /// The real root as this process sees it; every write goes under it.
    pub root: PathBuf,
    /// Special filesystems to mount (only ever on `/`: under `/sysroot` systemd moves the
    /// initrd's own over).
    pub special: Vec<&'static str>,
    /// Bind the initrd's `/run` onto `<root>/run` (systemd initrd, not chrooted).
    pub bind_run: bool,
    pub remount_root_rw: bool,
    /// Bind `/nix/store` with `MS_REC` (containers: keep the host's submounts).
    pub store_rbind: bool,
    /// Mount efivarfs on [`EFIVARS`] (UEFI boots, not in containers).
    pub efivarfs: bool,
    /// `boot.debugtrace`: log every step at debug level and trace snippets (`set -x`).
    pub debugtrace: bool,
    pub handoff: Handoff,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// Run as a normal process outside the systemd initrd.
    NotPid1 { pid: u32 },
    /// `IN_NIXOS_SYSTEMD_STAGE1=true` in the initrd's root, but nothing at `/sysroot`.
    NoSysroot,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::NotPid1 { pid } => write!(
                f,
                "stage 2 must run as PID 1 (boot with init=<toplevel>/init), or as prepare-root \
                 with IN_NIXOS_SYSTEMD_STAGE1=true; this is PID {pid}, refusing to run"
            ),
            PlanError::NoSysroot => write!(
                f,
                "IN_NIXOS_SYSTEMD_STAGE1=true and /etc/initrd-release exists (this is the \
                 initrd's root), but nothing is mounted on {SYSROOT}; start stage 2 after \
                 initrd-fs.target, or chrooted into the real root"
            ),
        }
    }
}

/// Special filesystems a container must not mount: the manager provides `/dev` and `/sys`,
/// and a user namespace cannot mount devtmpfs or sysfs anyway.
fn container_may_mount(fs: &SpecialFs) -> bool {
    !matches!(fs.fstype, "devtmpfs" | "sysfs")
}

pub fn decide(f: &Facts) -> Result<Plan, PlanError> {
    let is_mounted = |target: &str| f.mounted.iter().any(|m| m == target);
    let missing = |keep: &dyn Fn(&SpecialFs) -> bool| -> Vec<&'static str> {
        SPECIAL_FILESYSTEMS
            .iter()
            .filter(|fs| keep(fs) && !is_mounted(fs.target))
            .map(|fs| fs.target)
            .collect()
    };
    if f.systemd_stage1.as_deref() == Some("true") {
        let chrooted = !f.initrd_release;
        if !chrooted && !is_mounted(SYSROOT) {
            return Err(PlanError::NoSysroot);
        }
        return Ok(Plan {
            mode: Mode::SystemdInitrd { chrooted },
            root: PathBuf::from(if chrooted { "/" } else { SYSROOT }),
            // Chrooted, the real root has none of its own yet; `/run` is the initrd's,
            // bound in by the service, and must not be covered.
            special: if chrooted {
                missing(&|fs| fs.target != "/run")
            } else {
                Vec::new()
            },
            bind_run: !chrooted && !is_mounted(&format!("{SYSROOT}/run")),
            remount_root_rw: false,
            store_rbind: false,
            efivarfs: f.efi && !is_mounted(EFIVARS),
            // NixOS ignores boot.debugtrace here: the service's output is the journal.
            debugtrace: false,
            handoff: Handoff::Exit,
        });
    }
    if f.pid != 1 {
        return Err(PlanError::NotPid1 { pid: f.pid });
    }
    let debugtrace = f.cmdline.flag("boot.debugtrace");
    let plan = match f.container.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Plan {
            mode: Mode::Container(c.to_owned()),
            root: PathBuf::from("/"),
            special: missing(&container_may_mount),
            bind_run: false,
            remount_root_rw: false,
            store_rbind: true,
            efivarfs: false,
            debugtrace,
            handoff: Handoff::ExecSystemd,
        },
        None => Plan {
            mode: if f.stage1_receipt {
                Mode::AfterStage1
            } else {
                Mode::Direct
            },
            root: PathBuf::from("/"),
            special: missing(&|_| true),
            bind_run: false,
            remount_root_rw: true,
            store_rbind: false,
            efivarfs: f.efi && !is_mounted(EFIVARS),
            debugtrace,
            handoff: Handoff::ExecSystemd,
        },
    };
    Ok(plan)
}

impl Plan {
    /// The plan, one line per decision, for the log.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!("mode: {}; root {}", self.mode, self.root.display())];
        lines.push(if self.special.is_empty() {
            "special filesystems: all present".to_owned()
        } else {
            format!("special filesystems to mount: {}", self.special.join(" "))
        });
        if self.bind_run {
            lines.push(format!("bind /run onto {SYSROOT}/run"));
        }
        if self.efivarfs {
            lines.push(format!("mount efivarfs on {EFIVARS}"));
        }
        lines.push(format!(
            "remount / read-write: {}; /nix/store bind{}",
            if self.remount_root_rw { "yes" } else { "no" },
            if self.store_rbind { " (recursive)" } else { "" }
        ));
        lines.push(match self.handoff {
            Handoff::ExecSystemd => "then: exec systemd".to_owned(),
            Handoff::Exit => "then: exit 0 (systemd switches root)".to_owned(),
        });
        lines
    }

    /// A path on the real root as this process reaches it.
    pub fn host(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [&str; 6] = ["/proc", "/sys", "/dev", "/run", "/dev/shm", "/dev/pts"];

    fn facts(mounted: &[&str]) -> Facts {
        Facts {
            pid: 1,
            cmdline: Cmdline::parse("init=/nix/var/nix/profiles/system/init quiet"),
            mounted: mounted.iter().map(|s| (*s).to_owned()).collect(),
            ..Facts::default()
        }
    }

    #[test]
    fn after_stage1_mounts_only_the_late_ones() {
        let mut f = facts(&["/", "/proc", "/sys", "/dev", "/run"]);
        f.stage1_receipt = true;
        let p = decide(&f).expect("plan");
        assert_eq!(p.mode, Mode::AfterStage1);
        assert_eq!(p.special, ["/dev/shm", "/dev/pts"]);
        assert!(p.remount_root_rw && !p.store_rbind && !p.bind_run && !p.debugtrace);
        assert!(!p.efivarfs, "not a UEFI boot");
        assert_eq!(p.handoff, Handoff::ExecSystemd);
        f.efi = true;
        assert!(decide(&f).expect("plan").efivarfs);
        f.mounted.push(EFIVARS.into());
        assert!(!decide(&f).expect("plan").efivarfs, "already mounted");
        assert_eq!(p.root, PathBuf::from("/"));
    }

    #[test]
    fn direct_boot_mounts_everything_missing_in_table_order() {
        // A foreign initrd (or none): only /proc, which stage 2 mounts first itself.
        let p = decide(&facts(&["/", "/proc"])).expect("plan");
        assert_eq!(p.mode, Mode::Direct);
        assert_eq!(p.special, ["/sys", "/dev", "/run", "/dev/shm", "/dev/pts"]);
        assert!(p.remount_root_rw);
        // A stale receipt on an unmounted /run is not ours: the fact is false then.
        let p = decide(&facts(&[])).expect("plan");
        assert_eq!(p.special, ALL);
    }

    #[test]
    fn container_leaves_root_dev_and_sys_to_the_manager() {
        let mut f = facts(&["/", "/proc", "/dev", "/sys"]);
        f.container = Some("systemd-nspawn".into());
        let p = decide(&f).expect("plan");
        assert_eq!(p.mode, Mode::Container("systemd-nspawn".into()));
        assert_eq!(p.special, ["/run", "/dev/shm", "/dev/pts"]);
        assert!(!p.remount_root_rw && p.store_rbind);
        f.efi = true;
        assert!(
            !decide(&f).expect("plan").efivarfs,
            "the manager's business"
        );
        // Even with nothing mounted, devtmpfs and sysfs are not attempted.
        f.mounted.clear();
        let p = decide(&f).expect("plan");
        assert_eq!(p.special, ["/proc", "/run", "/dev/shm", "/dev/pts"]);
        // An empty $container is no container.
        f.container = Some(String::new());
        assert_eq!(decide(&f).expect("plan").mode, Mode::Direct);
    }

    #[test]
    fn systemd_initrd_chrooted_keeps_the_bound_run_and_exits() {
        let mut f = facts(&["/", "/run"]);
        f.pid = 412;
        f.systemd_stage1 = Some("true".into());
        let p = decide(&f).expect("plan");
        assert_eq!(p.mode, Mode::SystemdInitrd { chrooted: true });
        assert_eq!(p.root, PathBuf::from("/"));
        assert_eq!(p.special, ["/proc", "/sys", "/dev", "/dev/shm", "/dev/pts"]);
        assert!(!p.special.contains(&"/run"));
        assert!(!p.remount_root_rw && !p.bind_run);
        assert_eq!(p.handoff, Handoff::Exit);
    }

    #[test]
    fn systemd_initrd_from_the_initrd_root_works_under_sysroot() {
        let mut f = facts(&["/", "/proc", "/sys", "/dev", "/run", "/sysroot"]);
        f.pid = 300;
        f.systemd_stage1 = Some("true".into());
        f.initrd_release = true;
        // boot.debugtrace is ignored here, as NixOS does.
        f.cmdline = Cmdline::parse("boot.debugtrace");
        let p = decide(&f).expect("plan");
        assert_eq!(p.mode, Mode::SystemdInitrd { chrooted: false });
        assert_eq!(p.root, PathBuf::from("/sysroot"));
        assert_eq!(
            p.host("/run/booted-system"),
            PathBuf::from("/sysroot/run/booted-system")
        );
        assert!(p.special.is_empty() && p.bind_run && !p.debugtrace);
        f.mounted.push("/sysroot/run".into());
        assert!(!decide(&f).expect("plan").bind_run);
        f.mounted.retain(|m| !m.starts_with("/sysroot"));
        let e = decide(&f).expect_err("no sysroot");
        assert!(e.to_string().contains("/sysroot"), "{e}");
    }

    #[test]
    fn not_pid1_is_refused_unless_in_the_systemd_initrd() {
        let mut f = facts(&["/", "/proc"]);
        f.pid = 4242;
        let e = decide(&f).expect_err("not pid 1");
        assert_eq!(e, PlanError::NotPid1 { pid: 4242 });
        assert!(e.to_string().contains("PID 4242"));
        // Only the exact value "true" selects the initrd mode, as in stage-2-init.sh.
        f.systemd_stage1 = Some("1".into());
        assert!(decide(&f).is_err());
    }

    #[test]
    fn debugtrace_and_description() {
        let mut f = facts(&["/", "/proc", "/sys", "/dev", "/run", "/dev/shm", "/dev/pts"]);
        f.cmdline = Cmdline::parse("boot.debugtrace init=/x/init");
        let p = decide(&f).expect("plan");
        assert!(p.debugtrace);
        let d = p.describe();
        assert_eq!(d[0], "mode: direct boot (no Stagehand stage 1); root /");
        assert_eq!(d[1], "special filesystems: all present");
        assert_eq!(d.last().map(String::as_str), Some("then: exec systemd"));
    }
}
