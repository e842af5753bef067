//! The filesystems stage 2 sets up on the real root before activation: the special
//! filesystems stage 1 did not pass on (or all of them when there was no stage 1), a
//! writable `/`, and the read-only bind of `/nix/store`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustix::mount::{MountFlags, MountPropagationFlags};
use stagehand_common::mounts::mountinfo;
use stagehand_common::mounts::special::SPECIAL_FILESYSTEMS;

/// Mount every special filesystem that is not mounted yet. Returns the ones it mounted.
pub fn mount_special() -> Result<Vec<&'static str>, String> {
    let mut mounted = Vec::new();
    // Without /proc nothing is known to be mounted; it comes first in the table.
    let mut present = mountinfo::read();
    for fs in &SPECIAL_FILESYSTEMS {
        if mountinfo::find(&present, fs.target).is_some() {
            continue;
        }
        fs.mount()?;
        mounted.push(fs.target);
        if fs.target == "/proc" {
            present = mountinfo::read();
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
    let mounts = mountinfo::read();
    if mountinfo::find(&mounts, "/nix/store").is_some_and(mountinfo::Mount::is_read_only) {
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
