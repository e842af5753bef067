//! A NixOS generation's `etc/fstab`: which entries the initrd mounts and how stage 1
//! expresses them.
//!
//! NixOS writes one line per filesystem, `DEVICE MOUNTPOINT TYPE OPTIONS 0 PASS`, in mount
//! order (its `fileSystems` sorted so a parent comes before what is mounted inside it),
//! then `DEVICE none swap OPTIONS` per swap device. Spaces and tabs in a field are
//! written `\040` and `\011` (fstab(5) octal escapes; every `\ooo` is undone here).
//!
//! Needed for boot, as NixOS's `fsNeededForBoot`: a mount point in
//! [`PATHS_NEEDED_FOR_BOOT`], or `x-initrd.mount` among the options (NixOS adds it to every
//! filesystem needed for boot, `neededForBoot = true` included, so an entry marked that way
//! is kept even when the option is the only sign of it). Swap is never mounted by stage 1.

use std::fmt;

use stagehand_common::stage1_config::FileSystem;

/// NixOS's `pathsNeededForBoot` (`nixos/lib/utils.nix`).
pub const PATHS_NEEDED_FOR_BOOT: &[&str] = &[
    "/",
    "/nix",
    "/nix/store",
    "/var",
    "/var/log",
    "/var/lib",
    "/var/lib/nixos",
    "/etc",
    "/usr",
];

/// Filesystem types on a block device that stage 1 can check and mount with nothing but
/// the kernel's module (no helper program, no network).
pub const BLOCK_TYPES: &[&str] = &[
    "ext2", "ext3", "ext4", "btrfs", "xfs", "f2fs", "vfat", "exfat", "erofs", "squashfs",
    "iso9660", "udf", "jfs",
];

/// Filesystems in memory: no device to wait for.
pub const MEMORY_TYPES: &[&str] = &["tmpfs", "ramfs"];

/// The four content-based link directories stage 1 understands (it makes these links
/// itself, without udev).
const BY_LINKS: &[&str] = &[
    "/dev/disk/by-label/",
    "/dev/disk/by-uuid/",
    "/dev/disk/by-partuuid/",
    "/dev/disk/by-partlabel/",
];

const TAGS: &[&str] = &["LABEL=", "UUID=", "PARTUUID=", "PARTLABEL="];

/// One line of an fstab, its fields unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number.
    pub line: usize,
    /// The line as written, for messages.
    pub text: String,
    pub device: String,
    pub mount_point: String,
    pub fs_type: String,
    pub options: Vec<String>,
}

impl Entry {
    pub fn is_swap(&self) -> bool {
        self.fs_type == "swap"
    }

    pub fn has_option(&self, name: &str) -> bool {
        self.options.iter().any(|o| o == name)
    }

    /// NixOS's `fsNeededForBoot`, as far as the fstab shows it.
    pub fn needed_for_boot(&self) -> bool {
        !self.is_swap()
            && (PATHS_NEEDED_FOR_BOOT.contains(&self.mount_point.as_str())
                || self.has_option("x-initrd.mount"))
    }

    pub fn is_bind(&self) -> bool {
        self.has_option("bind") || self.has_option("rbind")
    }
}

/// What is wrong with one fstab line, and what would fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub text: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {} `{}`: {}; {}",
            self.line, self.text, self.problem, self.fix
        )
    }
}

impl std::error::Error for LineError {}

fn line_error(e: &Entry, problem: impl Into<String>, fix: impl Into<String>) -> LineError {
    LineError {
        line: e.line,
        text: e.text.clone(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Undo fstab's `\ooo` octal escapes (`\040` space, `\011` tab, `\134` backslash): the
/// same escapes as mountinfo's.
pub use stagehand_common::mounts::mountinfo::unescape_octal as unescape;

/// Every entry of `text`; comments and blank lines skipped. A line needs the four fields
/// `mount(8)` needs (dump and pass may be left out, as fstab(5) allows) and at most six.
pub fn parse(text: &str) -> Result<Vec<Entry>, LineError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        if fields.len() < 4 || fields.len() > 6 {
            return Err(LineError {
                line: i + 1,
                text: trimmed.to_owned(),
                problem: format!(
                    "{} fields, an fstab line has 4 to 6 (device, mount point, type, \
                     options, dump, pass)",
                    fields.len()
                ),
                fix: "write spaces inside a field as \\040; the generation's fstab is \
                      broken or was edited by hand"
                    .into(),
            });
        }
        for (n, extra) in fields.iter().enumerate().skip(4) {
            if extra.parse::<u32>().is_err() {
                return Err(LineError {
                    line: i + 1,
                    text: trimmed.to_owned(),
                    problem: format!(
                        "field {} ({}) is {extra:?}, not a number",
                        n + 1,
                        if n == 4 { "dump" } else { "pass" }
                    ),
                    fix: "write spaces inside a field as \\040".into(),
                });
            }
        }
        out.push(Entry {
            line: i + 1,
            text: trimmed.to_owned(),
            device: unescape(fields[0]),
            mount_point: unescape(fields[1]),
            fs_type: unescape(fields[2]),
            options: unescape(fields[3])
                .split(',')
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect(),
        });
    }
    Ok(out)
}

/// How stage 1 finds an entry's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A block device stage 1 waits for (`/dev/vda1`, `LABEL=…`, `/dev/disk/by-uuid/…`).
    Block,
    /// A directory of the new root bound onto the mount point.
    Bind,
    /// A filesystem in memory.
    Memory,
}

/// Check that stage 1 can mount `e` and translate it into its config entry.
/// `mdN`, `md/NAME`, `md_dN`: the names an md array has in `/dev`.
fn is_md_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("md") else {
        return false;
    };
    match rest.strip_prefix('/') {
        Some(n) => !n.is_empty() && !n.contains('/'),
        None => {
            !rest.is_empty()
                && rest
                    .trim_start_matches("_d")
                    .bytes()
                    .all(|b| b.is_ascii_digit())
        }
    }
}

/// Whether a filesystem's device is an md array (stage 1 must assemble it first).
pub fn is_md_device(device: &str) -> bool {
    device.strip_prefix("/dev/").is_some_and(is_md_name)
}

pub fn to_filesystem(e: &Entry) -> Result<(FileSystem, DeviceKind), LineError> {
    to_filesystem_with(e, false)
}

/// [`to_filesystem`], where `layers` says stage 1 sets up LUKS or LVM devices (the
/// `stage1_options` name some): then `/dev/mapper/NAME` and `/dev/VG/LV` are devices it
/// will make, not ones it cannot find.
pub fn to_filesystem_with(e: &Entry, layers: bool) -> Result<(FileSystem, DeviceKind), LineError> {
    if !e.mount_point.starts_with('/') {
        return Err(line_error(
            e,
            format!("mount point {:?} is not an absolute path", e.mount_point),
            "fix the generation's fileSystems",
        ));
    }
    let kind = if e.is_bind() {
        check_bind(e)?;
        DeviceKind::Bind
    } else if MEMORY_TYPES.contains(&e.fs_type.as_str()) {
        DeviceKind::Memory
    } else if BLOCK_TYPES.contains(&e.fs_type.as_str()) || e.fs_type == "auto" {
        check_block_device(e, layers)?;
        DeviceKind::Block
    } else {
        return Err(unsupported_type(e));
    };
    Ok((
        FileSystem {
            mount_point: e.mount_point.clone(),
            device: e.device.clone(),
            fs_type: e.fs_type.clone(),
            options: e.options.clone(),
        },
        kind,
    ))
}

fn unsupported_type(e: &Entry) -> LineError {
    let t = e.fs_type.as_str();
    let why = match t {
        "nfs" | "nfs4" | "cifs" | "smb3" | "smbfs" | "sshfs" | "glusterfs" | "ceph" => {
            "a network filesystem; stage 1 brings up no network".to_owned()
        }
        "zfs" => "ZFS needs its pool imported (zpool import), which stage 1 does not do".into(),
        "bcachefs" => "bcachefs is not supported by stage 1 yet".into(),
        "overlay" => "overlay mounts are not supported by stage 1 yet (NixOS rewrites their \
                      lowerdir/upperdir under the new root)"
            .into(),
        "9p" | "virtiofs" => format!("{t} (a host share) is not supported by stage 1 yet"),
        "none" => "type `none` is only for bind mounts, and the options have no `bind`".into(),
        t if t.starts_with("fuse") => "FUSE needs a helper program stage 1 does not run".into(),
        _ => format!("unknown filesystem type {t:?}"),
    };
    let needed = if PATHS_NEEDED_FOR_BOOT.contains(&e.mount_point.as_str()) {
        format!("{} is needed for boot", e.mount_point)
    } else {
        format!("{} is marked x-initrd.mount", e.mount_point)
    };
    line_error(
        e,
        format!("{why}, and {needed}"),
        format!(
            "stage 1 mounts {}, {} and bind mounts; use one of those, or move {} off the \
             boot path",
            BLOCK_TYPES.join(", "),
            MEMORY_TYPES.join(", "),
            e.mount_point
        ),
    )
}

fn check_bind(e: &Entry) -> Result<(), LineError> {
    if !e.device.starts_with('/') || e.device.starts_with("/dev/") {
        return Err(line_error(
            e,
            format!(
                "bind mount source {:?} is not a directory path of the new root",
                e.device
            ),
            "give the source as an absolute path on the system (stage 1 binds it from \
             under the new root, as NixOS does)",
        ));
    }
    Ok(())
}

/// Device forms stage 1 can wait for without udev.
fn check_block_device(e: &Entry, layers: bool) -> Result<(), LineError> {
    let d = e.device.as_str();
    let fix = "name the device by LABEL=, UUID=, PARTUUID= or PARTLABEL= (or their \
               /dev/disk/by-label|by-uuid|by-partuuid|by-partlabel links) or by its kernel \
               name (/dev/vda1)";
    if let Some(tag) = TAGS.iter().find(|t| d.starts_with(*t)) {
        if d.len() == tag.len() {
            return Err(line_error(e, format!("{tag} with no value"), fix));
        }
        return Ok(());
    }
    if let Some(dir) = BY_LINKS.iter().find(|p| d.starts_with(*p)) {
        let name = &d[dir.len()..];
        if name.is_empty() || name.contains('/') {
            return Err(line_error(
                e,
                format!("{d:?} names no device in {dir}"),
                fix,
            ));
        }
        return Ok(());
    }
    let Some(name) = d.strip_prefix("/dev/") else {
        return Err(line_error(
            e,
            format!(
                "device {d:?} is not a block device, and {} needs one",
                e.fs_type
            ),
            fix,
        ));
    };
    let made_by_layers = name.starts_with("mapper/")
        || (name.matches('/').count() == 1 && !name.starts_with("disk/"));
    let problem = if layers && made_by_layers {
        None
    } else if name.starts_with("mapper/") || name.starts_with("dm-") {
        Some(format!(
            "{d} is a device-mapper device (LUKS or LVM): give stage 1 its LUKS devices or \
             LVM with --stage1-options (NixOS's boot.initrd.luks.devices are not in the \
             generation's toplevel)"
        ))
    } else if is_md_name(name) {
        // Stage 1 assembles md arrays itself (`swraid`), naming them as mdadm does.
        None
    } else if name.starts_with("disk/") {
        Some(format!(
            "{d} is a udev link stage 1 does not make (it makes only by-label, by-uuid, \
             by-partuuid and by-partlabel)"
        ))
    } else if name.is_empty() || name.contains('/') {
        Some(format!(
            "{d} is not a kernel device name (an LVM volume or a udev link?), and stage 1 \
             runs no udev"
        ))
    } else {
        None
    };
    match problem {
        Some(p) => Err(line_error(e, p, fix)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_escapes_and_comments() {
        let text = "# comment\n\n\
                    /dev/disk/by-label/my\\040root / ext4 defaults,x-initrd.mount 0 1\n\
                    LABEL=swap none swap defaults\n\
                    tmpfs /tmp tmpfs mode=1777\n";
        let e = parse(text).expect("parse");
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].line, 3);
        assert_eq!(e[0].device, "/dev/disk/by-label/my root");
        assert_eq!(e[0].options, ["defaults", "x-initrd.mount"]);
        assert!(e[0].needed_for_boot());
        assert!(e[1].is_swap() && !e[1].needed_for_boot());
        assert!(!e[2].needed_for_boot());
        assert_eq!(unescape("a\\011b\\134c\\9"), "a\tb\\c\\9");
    }

    #[test]
    fn field_counts_are_checked() {
        let err = parse("/dev/vda / ext4\n").expect_err("3 fields");
        assert_eq!(err.line, 1);
        assert!(err.to_string().contains("3 fields"), "{err}");
        let err = parse("/dev/vda / ext4 defaults 0 1 extra\n").expect_err("7");
        assert!(err.to_string().contains("7 fields"), "{err}");
        let err = parse("/dev/my disk / ext4 defaults 0\n").expect_err("not a number");
        assert!(err.to_string().contains("\\040"), "{err}");
    }

    #[test]
    fn device_forms() {
        let entry = |dev: &str, t: &str, opts: &str| Entry {
            line: 7,
            text: format!("{dev} / {t} {opts} 0 1"),
            device: dev.into(),
            mount_point: "/".into(),
            fs_type: t.into(),
            options: opts.split(',').map(str::to_owned).collect(),
        };
        for ok in [
            "/dev/vda1",
            "LABEL=nixos",
            "UUID=1234",
            "PARTUUID=ab-01",
            "PARTLABEL=root",
            "/dev/disk/by-uuid/1234",
            "/dev/disk/by-partlabel/root",
        ] {
            let (fs, kind) = to_filesystem(&entry(ok, "ext4", "defaults")).expect(ok);
            assert_eq!((fs.device.as_str(), kind), (ok, DeviceKind::Block));
        }
        for (bad, says) in [
            ("/dev/mapper/root", "device-mapper"),
            ("/dev/disk/by-id/ata-x", "udev link"),
            ("/dev/vg/root", "kernel device name"),
            ("/dev/md/a/b", "kernel device name"),
            ("LABEL=", "no value"),
            ("server:/export", "not a block device"),
        ] {
            let e = to_filesystem(&entry(bad, "ext4", "defaults")).expect_err(bad);
            let msg = e.to_string();
            assert!(
                msg.contains(says) && msg.contains("line 7") && msg.contains("LABEL="),
                "{msg}"
            );
        }
        for md in ["/dev/md0", "/dev/md127", "/dev/md/root"] {
            let (fs, kind) = to_filesystem(&entry(md, "ext4", "defaults")).expect(md);
            assert_eq!(kind, DeviceKind::Block);
            assert!(is_md_device(&fs.device), "{md}");
        }
        assert!(!is_md_device("/dev/mdx") && !is_md_device("/dev/vda"));
        let (_, kind) = to_filesystem(&entry("/persist/etc", "none", "bind")).expect("bind");
        assert_eq!(kind, DeviceKind::Bind);
        let e = to_filesystem(&entry("/persist/etc", "none", "defaults")).expect_err("none");
        assert!(e.to_string().contains("bind"), "{e}");
        let (_, kind) = to_filesystem(&entry("none", "tmpfs", "mode=755")).expect("tmpfs");
        assert_eq!(kind, DeviceKind::Memory);
        let e = to_filesystem(&entry("srv:/x", "nfs", "defaults")).expect_err("nfs");
        assert!(e.to_string().contains("network"), "{e}");
        let e = to_filesystem(&entry("/dev/vda", "reiser5", "defaults")).expect_err("unknown");
        assert!(
            e.to_string()
                .contains("unknown filesystem type \"reiser5\""),
            "{e}"
        );
    }
}
