//! The filesystems stage 2 sets up on the real root before activation: the special
//! filesystems stage 1 did not pass on (or all of them when there was no stage 1), a
//! writable `/`, and the read-only bind of `/nix/store`.

use std::ffi::CString;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use rustix::mount::{MountFlags, MountPropagationFlags};

/// Special filesystems as NixOS's `boot.specialFileSystems` sets them up: source, target,
/// type, flags, data. Sizes are left to the kernel defaults.
fn special() -> [(
    &'static str,
    &'static str,
    &'static str,
    MountFlags,
    &'static str,
); 6] {
    let nosuid_nodev = MountFlags::NOSUID | MountFlags::NODEV;
    [
        (
            "proc",
            "/proc",
            "proc",
            nosuid_nodev | MountFlags::NOEXEC,
            "",
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            nosuid_nodev | MountFlags::NOEXEC,
            "",
        ),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MountFlags::NOSUID | MountFlags::STRICTATIME,
            "mode=0755",
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            nosuid_nodev | MountFlags::STRICTATIME,
            "mode=0755",
        ),
        ("tmpfs", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            "mode=0620,ptmxmode=0666,gid=3",
        ),
    ]
}

/// Mount points currently in use, from `/proc/self/mountinfo` (field 5).
pub fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| parse_mount_points(&s))
        .unwrap_or_default()
}

pub fn parse_mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount every special filesystem that is not mounted yet. Returns the ones it mounted.
pub fn mount_special() -> Result<Vec<&'static str>, String> {
    let mut mounted = Vec::new();
    // /proc first: without it we cannot tell what else is mounted.
    let mut present = mount_points();
    for (source, target, fstype, flags, data) in special() {
        if present.iter().any(|m| m == target) {
            continue;
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(target)
            .map_err(|e| format!("cannot create {target}: {e}"))?;
        let data = CString::new(data).map_err(|e| e.to_string())?;
        match rustix::mount::mount(source, target, fstype, flags, Some(data.as_c_str())) {
            Ok(()) | Err(rustix::io::Errno::BUSY) => mounted.push(target),
            Err(e) => return Err(format!("cannot mount {fstype} on {target}: {e}")),
        }
        if target == "/proc" {
            present = mount_points();
        }
    }
    Ok(mounted)
}

/// `mount -o remount,rw /`, as NixOS's stage 2 does outside containers.
pub fn remount_root_rw() -> Result<(), String> {
    rustix::mount::mount_remount("/", MountFlags::empty(), "")
        .map_err(|e| format!("cannot remount / read-write: {e}"))
}

/// `/nix/store` owned by root:nixbld (30000), mode 1775, and bind-mounted onto itself
/// read-only so that only the Nix daemon (in its own mount namespace) can write to it.
pub fn protect_store() -> Result<(), String> {
    let store = Path::new("/nix/store");
    if !store.is_dir() {
        return Err("/nix/store does not exist on the root filesystem".into());
    }
    // A read-only store (squashfs on live media) cannot change owner or mode; that is fine.
    let _ = rustix::fs::chown(
        store,
        Some(rustix::fs::Uid::ROOT),
        Some(rustix::fs::Gid::from_raw(30000)),
    );
    let _ = std::fs::set_permissions(store, std::fs::Permissions::from_mode(0o1775));
    if store_is_read_only() {
        return Ok(());
    }
    rustix::mount::mount_bind(store, store)
        .map_err(|e| format!("cannot bind-mount /nix/store onto itself: {e}"))?;
    rustix::mount::mount_remount(store, MountFlags::BIND | MountFlags::RDONLY, "")
        .map_err(|e| format!("cannot remount /nix/store read-only: {e}"))?;
    // Keep later mounts under the store from propagating anywhere surprising.
    let _ = rustix::mount::mount_change(store, MountPropagationFlags::PRIVATE);
    Ok(())
}

fn store_is_read_only() -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some("/nix/store"))
        .and_then(|l| l.split(' ').nth(5))
        .is_some_and(|opts| opts.split(',').any(|o| o == "ro"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_mount_points() {
        let info = "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw\n\
                    40 22 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw\n";
        assert_eq!(parse_mount_points(info), ["/", "/dev", "/mnt/with space"]);
    }
}
