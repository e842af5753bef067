//! The filesystems stage 2 sets up on the real root before activation, as the plan says:
//! the special filesystems nobody passed on, a writable `/`, the read-only bind of
//! `/nix/store`, and (systemd initrd) the initrd's `/run` on the real root's `/run`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustix::mount::{MountFlags, MountPropagationFlags};
use stagehand_common::mounts::mountinfo;
use stagehand_common::mounts::special::SPECIAL_FILESYSTEMS;

/// `/proc` if it is not there: every other fact stage 2 gathers comes from it.
pub fn ensure_proc() -> Result<bool, String> {
    if Path::new("/proc/self/mountinfo").exists() {
        return Ok(false);
    }
    SPECIAL_FILESYSTEMS
        .iter()
        .find(|fs| fs.target == "/proc")
        .ok_or("no /proc in the special filesystem table")?
        .mount()?;
    Ok(true)
}

/// Mount the special filesystems named by the plan, in table order.
pub fn mount_special(targets: &[&str]) -> Result<(), String> {
    for fs in SPECIAL_FILESYSTEMS
        .iter()
        .filter(|fs| targets.contains(&fs.target))
    {
        fs.mount()?;
        log::debug!("mounted {} on {}", fs.fstype, fs.target);
    }
    Ok(())
}

/// efivarfs on `/sys/firmware/efi/efivars`, with systemd's flags.
pub fn mount_efivarfs() -> Result<(), String> {
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    match rustix::mount::mount("efivarfs", crate::plan::EFIVARS, "efivarfs", flags, None) {
        Ok(()) | Err(rustix::io::Errno::BUSY) => Ok(()),
        Err(e) => Err(format!(
            "cannot mount efivarfs on {}: {e}",
            crate::plan::EFIVARS
        )),
    }
}

/// `mount -o remount,rw /`, as NixOS's stage 2 does outside containers.
pub fn remount_root_rw() -> Result<(), String> {
    rustix::mount::mount_remount("/", MountFlags::empty(), "")
        .map_err(|e| format!("cannot remount / read-write: {e}"))
}

/// `mount --bind /run <root>/run`, as `initrd-nixos-activation.service` does before it
/// chroots: what stage 2 writes to `/run` must be in the `/run` systemd moves over.
pub fn bind_run(root: &Path) -> Result<(), String> {
    let target = root.join("run");
    std::fs::create_dir_all(&target)
        .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    rustix::mount::mount_bind("/run", &target)
        .map_err(|e| format!("cannot bind /run onto {}: {e}", target.display()))
}

/// `<root>/nix/store` owned by root:nixbld (30000), mode 1775, and bind-mounted onto itself
/// read-only so that only the Nix daemon (in its own mount namespace) can write to it.
/// `recursive`: `--rbind` (containers, where the host may have mounted paths inside).
pub fn protect_store(root: &Path, recursive: bool) -> Result<(), String> {
    let store = root.join("nix/store");
    if !store.is_dir() {
        return Err(format!(
            "{} does not exist on the root filesystem",
            store.display()
        ));
    }
    // A read-only store (squashfs on live media) cannot change owner or mode; that is fine.
    let _ = rustix::fs::chown(
        &store,
        Some(rustix::fs::Uid::ROOT),
        Some(rustix::fs::Gid::from_raw(30000)),
    );
    let _ = std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o1775));
    let mounts = mountinfo::read();
    let point = store.to_string_lossy();
    if mountinfo::find(&mounts, &point).is_some_and(mountinfo::Mount::is_read_only) {
        log::debug!("{point} is already a read-only mount");
        return Ok(());
    }
    let bind = if recursive {
        rustix::mount::mount_bind_recursive(&store, &store)
    } else {
        rustix::mount::mount_bind(&store, &store)
    };
    bind.map_err(|e| format!("cannot bind-mount {point} onto itself: {e}"))?;
    rustix::mount::mount_remount(&store, MountFlags::BIND | MountFlags::RDONLY, "")
        .map_err(|e| format!("cannot remount {point} read-only: {e}"))?;
    // Keep later mounts under the store from propagating anywhere surprising.
    let _ = rustix::mount::mount_change(&store, MountPropagationFlags::PRIVATE);
    log::debug!("{point}: read-only bind mount, root:30000 1775");
    Ok(())
}
