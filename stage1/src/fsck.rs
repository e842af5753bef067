//! Checking a filesystem before it is mounted, with the policy of NixOS's `checkFS`
//! (stage-1-init.sh): which types are checked, which are left to the kernel, what a
//! checker's exit code means. The decisions are pure; [`crate::sys::run_fsck`] runs the
//! program.

use std::collections::BTreeMap;
use std::fmt;

use stagehand_common::mounts::mountinfo;

/// `fsck.mode=` on the command line, as systemd-fsck reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsckMode {
    /// Check what the policy says to check; the checker decides whether a clean
    /// filesystem needs a full pass.
    #[default]
    Auto,
    /// Check nothing.
    Skip,
    /// Force a full check (`-f`) of everything the policy checks.
    Force,
}

/// What stage 1 does about fsck, from the config and the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsckPolicy {
    /// `boot.initrd.checkJournalingFS`.
    pub check_journaling_fs: bool,
    pub mode: FsckMode,
    /// Checker programs the config names, by filesystem type.
    pub programs: BTreeMap<String, String>,
}

impl Default for FsckPolicy {
    fn default() -> Self {
        Self {
            check_journaling_fs: true,
            mode: FsckMode::Auto,
            programs: BTreeMap::new(),
        }
    }
}

/// Why a filesystem is not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// `fsck.mode=skip`.
    Disabled,
    /// tmpfs, a bind mount, a network share: nothing to check.
    NotABlockDevice,
    /// `auto` and the superblock named no type we know.
    UnknownType,
    /// Read-only images (iso9660, udf, squashfs, erofs): nothing can be repaired.
    ReadOnlyImage(String),
    /// btrfs, zfs, bcachefs validate themselves at mount time.
    CheckedAtMount(String),
    /// nilfs2 and apfs have no non-interactive checker NixOS would run.
    NoAutomaticCheck(String),
    /// A journaling filesystem with `check_journaling_fs` off.
    Journaling(String),
    /// The device is mounted already (listed twice, or by an earlier step).
    AlreadyMounted,
    /// No checker for this type in the initrd; `tried` lists the paths looked at.
    NoChecker { fs_type: String, tried: Vec<String> },
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => write!(f, "fsck.mode=skip is set"),
            Self::NotABlockDevice => write!(f, "not a block device"),
            Self::UnknownType => write!(f, "cannot check a filesystem of unknown type (auto)"),
            Self::ReadOnlyImage(t) => write!(f, "{t} is a read-only image"),
            Self::CheckedAtMount(t) => write!(f, "{t} checks itself when mounted"),
            Self::NoAutomaticCheck(t) => write!(f, "{t} has no automatic checker"),
            Self::Journaling(t) => write!(
                f,
                "{t} is a journaling filesystem and check_journaling_fs is off"
            ),
            Self::AlreadyMounted => write!(f, "the device is already mounted"),
            Self::NoChecker { fs_type, tried } => write!(
                f,
                "the initrd has no checker for {fs_type} (looked for {}); add one to the \
                 initrd's contents to have it checked",
                tried.join(", ")
            ),
        }
    }
}

/// The checker to run: `program args... device`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub program: String,
    pub args: Vec<String>,
}

/// Types the kernel journal makes consistent after a crash; NixOS checks them only with
/// `checkJournalingFS`.
const JOURNALING: &[&str] = &["ext3", "ext4", "ext4dev", "reiserfs", "xfs", "jfs", "f2fs"];

/// Should the filesystem of type `fs_type` (the configured type, or the probed one when
/// configured as `auto`; `None` when unknown) on a device be checked, and with what?
/// `exists` says whether a path exists in the initrd.
pub fn decide(
    policy: &FsckPolicy,
    is_block_device: bool,
    fs_type: Option<&str>,
    already_mounted: bool,
    exists: impl Fn(&str) -> bool,
) -> Result<Command, Skip> {
    if policy.mode == FsckMode::Skip {
        return Err(Skip::Disabled);
    }
    if !is_block_device {
        return Err(Skip::NotABlockDevice);
    }
    let t = match fs_type {
        None | Some("auto") | Some("") => return Err(Skip::UnknownType),
        Some(t) => t,
    };
    match t {
        "iso9660" | "udf" | "squashfs" | "erofs" => return Err(Skip::ReadOnlyImage(t.into())),
        "btrfs" | "zfs" | "bcachefs" => return Err(Skip::CheckedAtMount(t.into())),
        "nilfs2" | "apfs" => return Err(Skip::NoAutomaticCheck(t.into())),
        // Not filesystems one mounts; nothing to check.
        "swap" | "swsuspend" | "tmpfs" | "ramfs" | "proc" | "sysfs" | "overlay" => {
            return Err(Skip::NotABlockDevice)
        }
        _ => {}
    }
    if already_mounted {
        return Err(Skip::AlreadyMounted);
    }
    if JOURNALING.contains(&t) && !policy.check_journaling_fs {
        return Err(Skip::Journaling(t.into()));
    }
    let mut tried: Vec<String> = Vec::new();
    if let Some(p) = policy.programs.get(t) {
        tried.push(p.clone());
    }
    for dir in ["/bin", "/sbin"] {
        tried.push(format!("{dir}/fsck.{t}"));
    }
    // e2fsck checks every ext* type itself; fsck.ext4 is only its conventional alias.
    if matches!(t, "ext2" | "ext3" | "ext4" | "ext4dev") {
        tried.extend(["/bin/e2fsck".to_owned(), "/sbin/e2fsck".to_owned()]);
    }
    let Some(program) = tried.iter().find(|p| exists(p)).cloned() else {
        return Err(Skip::NoChecker {
            fs_type: t.into(),
            tried,
        });
    };
    let mut args = vec!["-a".to_owned()];
    if policy.mode == FsckMode::Force {
        args.push("-f".to_owned());
    }
    Ok(Command { program, args })
}

/// What a checker's exit status means (fsck(8): bits 1 corrected, 2 reboot, 4 left
/// uncorrected, 8 operational error, 16 usage, 32 cancelled, 128 shared-library error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Clean,
    Corrected,
    /// Errors were corrected that need a reboot before the filesystem is used.
    Reboot,
    /// Errors were left: the failure path.
    Unrepaired(i32),
    /// The checker itself failed (operational error, usage, killed): the failure path.
    Failed(i32),
}

/// Read an exit code the way NixOS's `checkFS` does: the reboot bit first, then
/// "unrepaired", then any code of 8 and up. `None` is a checker killed by a signal.
pub fn interpret(code: Option<i32>) -> Outcome {
    match code {
        None => Outcome::Failed(-1),
        Some(0) => Outcome::Clean,
        Some(c) if c < 0 => Outcome::Failed(c),
        Some(c) if c & 2 != 0 => Outcome::Reboot,
        Some(c) if c & 4 != 0 => Outcome::Unrepaired(c),
        Some(c) if c >= 8 => Outcome::Failed(c),
        Some(_) => Outcome::Corrected,
    }
}

/// The `(major, minor)` of every mounted block device in `/proc/self/mountinfo` text
/// (field 3 is `major:minor`).
pub fn mounted_devices(text: &str) -> Vec<(u32, u32)> {
    mountinfo::parse(text)
        .into_iter()
        .map(|m| m.devno)
        // Major 0 is the kernel's anonymous devices (tmpfs, proc, ...), never a disk.
        .filter(|(major, _)| *major != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(policy: &FsckPolicy, t: Option<&str>, have: &[&str]) -> Result<Command, Skip> {
        decide(policy, true, t, false, |p| have.contains(&p))
    }

    #[test]
    fn ext4_runs_fsck_ext4_or_e2fsck_with_a() {
        let p = FsckPolicy::default();
        let c = run(&p, Some("ext4"), &["/bin/fsck.ext4", "/sbin/e2fsck"]).expect("check");
        assert_eq!(c.program, "/bin/fsck.ext4");
        assert_eq!(c.args, ["-a"]);
        let c = run(&p, Some("ext2"), &["/sbin/e2fsck"]).expect("check");
        assert_eq!(c.program, "/sbin/e2fsck");
        let c = run(&p, Some("vfat"), &["/sbin/fsck.vfat"]).expect("check");
        assert_eq!(c.program, "/sbin/fsck.vfat");
    }

    #[test]
    fn configured_program_comes_first_and_force_adds_f() {
        let mut p = FsckPolicy::default();
        p.programs
            .insert("xfs".into(), "/usr/bin/xfs_repair-wrapper".into());
        p.mode = FsckMode::Force;
        let c = run(
            &p,
            Some("xfs"),
            &["/usr/bin/xfs_repair-wrapper", "/bin/fsck.xfs"],
        )
        .expect("check");
        assert_eq!(c.program, "/usr/bin/xfs_repair-wrapper");
        assert_eq!(c.args, ["-a", "-f"]);
    }

    #[test]
    fn skip_list_matches_nixos() {
        let p = FsckPolicy::default();
        let all = ["/bin/fsck.btrfs", "/bin/fsck.iso9660", "/bin/fsck.squashfs"];
        for t in ["iso9660", "udf", "squashfs", "erofs"] {
            assert_eq!(run(&p, Some(t), &all), Err(Skip::ReadOnlyImage(t.into())));
        }
        for t in ["btrfs", "zfs", "bcachefs"] {
            assert_eq!(run(&p, Some(t), &all), Err(Skip::CheckedAtMount(t.into())));
        }
        for t in ["nilfs2", "apfs"] {
            assert_eq!(
                run(&p, Some(t), &all),
                Err(Skip::NoAutomaticCheck(t.into()))
            );
        }
        assert_eq!(run(&p, None, &all), Err(Skip::UnknownType));
        assert_eq!(run(&p, Some("auto"), &all), Err(Skip::UnknownType));
        assert_eq!(
            decide(&p, false, Some("ext4"), false, |_| true),
            Err(Skip::NotABlockDevice)
        );
        assert_eq!(
            decide(&p, true, Some("ext4"), true, |_| true),
            Err(Skip::AlreadyMounted)
        );
        let off = FsckPolicy {
            mode: FsckMode::Skip,
            ..FsckPolicy::default()
        };
        assert_eq!(
            run(&off, Some("ext4"), &["/bin/fsck.ext4"]),
            Err(Skip::Disabled)
        );
    }

    #[test]
    fn journaling_filesystems_only_with_check_journaling_fs() {
        let p = FsckPolicy {
            check_journaling_fs: false,
            ..FsckPolicy::default()
        };
        for t in ["ext3", "ext4", "xfs", "f2fs", "jfs", "reiserfs"] {
            assert_eq!(
                run(&p, Some(t), &["/bin/fsck.ext4", "/sbin/e2fsck"]),
                Err(Skip::Journaling(t.into()))
            );
        }
        // ext2 has no journal: still checked.
        assert!(run(&p, Some("ext2"), &["/sbin/e2fsck"]).is_ok());
    }

    #[test]
    fn a_missing_checker_names_the_paths_tried() {
        let e = run(&FsckPolicy::default(), Some("ext4"), &[]).expect_err("none");
        let text = e.to_string();
        for p in [
            "/bin/fsck.ext4",
            "/sbin/fsck.ext4",
            "/bin/e2fsck",
            "/sbin/e2fsck",
        ] {
            assert!(text.contains(p), "{text}");
        }
    }

    #[test]
    fn exit_codes_as_nixos_reads_them() {
        assert_eq!(interpret(Some(0)), Outcome::Clean);
        assert_eq!(interpret(Some(1)), Outcome::Corrected);
        assert_eq!(interpret(Some(2)), Outcome::Reboot);
        assert_eq!(interpret(Some(3)), Outcome::Reboot);
        // The reboot bit wins over "unrepaired", as in checkFS.
        assert_eq!(interpret(Some(6)), Outcome::Reboot);
        assert_eq!(interpret(Some(4)), Outcome::Unrepaired(4));
        assert_eq!(interpret(Some(5)), Outcome::Unrepaired(5));
        assert_eq!(interpret(Some(8)), Outcome::Failed(8));
        assert_eq!(interpret(Some(16)), Outcome::Failed(16));
        assert_eq!(interpret(Some(12)), Outcome::Unrepaired(12));
        assert_eq!(interpret(None), Outcome::Failed(-1));
    }

    #[test]
    fn mountinfo_devices() {
        let text = "22 1 0:21 / /proc rw - proc proc rw\n\
                    30 1 254:0 / /mnt-root rw,relatime - ext4 /dev/vda rw\n\
                    31 30 254:16 / /mnt-root/nix rw - ext4 /dev/vdb rw\n\
                    garbage\n";
        assert_eq!(mounted_devices(text), vec![(254, 0), (254, 16)]);
    }
}
