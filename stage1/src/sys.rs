//! The system-changing steps of stage 1: special filesystems, modules, mounts and
//! `switch_root`. Each returns an error message meant for the console; the decisions about
//! *what* to do live in [`crate::plan`].

use std::ffi::CString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::mount::MountFlags;
use stagehand_common::stage1_config::{FileSystem, Module};

use crate::device;
use crate::mount_opts;

/// The special filesystems stage 1 needs and later passes on to stage 2, with the options
/// systemd's mount-setup and NixOS use.
const SPECIAL: &[(&str, &str, &str, &str)] = &[
    ("proc", "/proc", "proc", "nosuid,noexec,nodev"),
    ("sysfs", "/sys", "sysfs", "nosuid,noexec,nodev"),
    (
        "devtmpfs",
        "/dev",
        "devtmpfs",
        "nosuid,strictatime,mode=0755",
    ),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        "nosuid,nodev,strictatime,mode=0755",
    ),
];

/// Filesystem types tried, in order, when a filesystem says `auto` and probing is not
/// conclusive.
const AUTO_TYPES: &[&str] = &["ext4", "btrfs", "xfs", "f2fs", "vfat", "erofs", "squashfs"];

pub fn mkdir_p(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| format!("cannot create directory {}: {e}", path.display()))
}

pub fn mount_special() -> Result<(), String> {
    for (source, target, fstype, options) in SPECIAL {
        mkdir_p(Path::new(target), 0o755)?;
        let opts = mount_opts::parse(&[(*options).to_owned()]);
        let data = CString::new(opts.data).map_err(|e| e.to_string())?;
        match rustix::mount::mount(*source, *target, *fstype, opts.flags, Some(data.as_c_str())) {
            // The kernel may have mounted devtmpfs already (CONFIG_DEVTMPFS_MOUNT).
            Ok(()) | Err(rustix::io::Errno::BUSY) => {}
            Err(e) => return Err(format!("cannot mount {fstype} on {target}: {e}")),
        }
    }
    Ok(())
}

/// Point stdin, stdout and stderr at `/dev/console`: without a `/dev/console` node in the
/// initramfs the kernel starts us with nothing open.
pub fn reopen_console() {
    if let Ok(fd) = rustix::fs::open(
        "/dev/console",
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        // Failing here only means messages go to kmsg alone.
        let _ = rustix::stdio::dup2_stdin(&fd);
        let _ = rustix::stdio::dup2_stdout(&fd);
        let _ = rustix::stdio::dup2_stderr(&fd);
    }
}

pub fn load_module(module: &Module) -> Result<(), String> {
    let file = std::fs::File::open(&module.path)
        .map_err(|e| format!("cannot open module {} ({}): {e}", module.name, module.path))?;
    let params = CString::new(module.params.as_str())
        .map_err(|_| format!("module {} has a NUL byte in its parameters", module.name))?;
    match rustix::system::finit_module(&file, &params, 0) {
        // Already loaded (or built in under another name): nothing to do.
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(format!(
            "cannot load module {} from {}: {e}",
            module.name, module.path
        )),
    }
}

/// Where `fs` is mounted on the host side, under the new root.
pub fn target_path(new_root: &Path, mount_point: &str) -> PathBuf {
    new_root.join(mount_point.trim_start_matches('/'))
}

/// Turn a device spec into a device path that can be waited for. LABEL= and friends map
/// to the `/dev/disk/by-*` links.
pub fn device_path(device: &str) -> String {
    for (prefix, dir) in [
        ("LABEL=", "by-label"),
        ("UUID=", "by-uuid"),
        ("PARTUUID=", "by-partuuid"),
        ("PARTLABEL=", "by-partlabel"),
    ] {
        if let Some(rest) = device.strip_prefix(prefix) {
            return format!("/dev/disk/{dir}/{rest}");
        }
    }
    device.to_owned()
}

/// Wait for the device of `fs` (when it is a device) and mount it under `new_root`.
pub fn mount_filesystem(
    new_root: &Path,
    fs: &FileSystem,
    timeout: Duration,
) -> Result<String, String> {
    let target = target_path(new_root, &fs.mount_point);
    mkdir_p(&target, 0o755)?;
    let opts = mount_opts::parse(&fs.options);
    let data = CString::new(opts.data.clone())
        .map_err(|_| format!("mount options for {} contain a NUL byte", fs.mount_point))?;

    let is_device = fs.device.starts_with("/dev/") || fs.device.contains('=');
    let source = if is_device {
        let dev = device_path(&fs.device);
        let waited = device::wait_for_path(Path::new(&dev), timeout)
            .map_err(|e| format!("cannot watch for device {dev}: {e}"))?;
        match waited {
            Some(t) if t > Duration::from_millis(1) => {
                log::info!("device {dev} appeared after {} ms", t.as_millis())
            }
            Some(_) => {}
            None => {
                return Err(format!(
                    "timed out after {} s waiting for device {} (for {}); check root= / the \
                     filesystem's device and that the initrd has the disk's driver",
                    timeout.as_secs(),
                    fs.device,
                    fs.mount_point
                ))
            }
        }
        dev
    } else if fs.device.starts_with('/') && fs.fs_type != "tmpfs" {
        // A path is a bind source relative to the new root, as in NixOS's stage 1.
        target_path(new_root, &fs.device).display().to_string()
    } else {
        fs.device.clone()
    };

    let mut flags = opts.flags;
    if fs.options.iter().any(|o| o == "bind") {
        flags |= MountFlags::BIND;
    }
    let types: Vec<&str> = if fs.fs_type == "auto" {
        AUTO_TYPES.to_vec()
    } else {
        vec![fs.fs_type.as_str()]
    };
    let mut last_err = None;
    for t in &types {
        match rustix::mount::mount(source.as_str(), &target, *t, flags, Some(data.as_c_str())) {
            Ok(()) => return Ok((*t).to_owned()),
            Err(e) => last_err = Some((*t, e)),
        }
    }
    let (t, e) = last_err.unwrap_or(("?", rustix::io::Errno::INVAL));
    Err(format!(
        "cannot mount {source} on {} (type {t}, options {:?}): {e}",
        fs.mount_point, opts.data
    ))
}

/// The filesystems of the initramfs itself, the only thing we may delete wholesale.
fn is_initramfs(path: &str) -> bool {
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    rustix::fs::statfs(path)
        .map(|s| {
            let t = s.f_type as u64;
            t == RAMFS_MAGIC || t == TMPFS_MAGIC
        })
        .unwrap_or(false)
}

/// Remove everything under `dir` that lives on device `dev`, never crossing into another
/// filesystem (the new root and the moved special filesystems are mount points).
fn remove_on_device(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_on_device(&path, dev);
            // A directory still holding a mount point stays; that is fine.
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Move the special filesystems into the new root, free the initramfs, make the new root
/// `/` and exec `init` there with an empty environment. Returns only on failure.
pub fn switch_root(new_root: &Path, init: &str) -> String {
    for m in ["/proc", "/sys", "/dev", "/run"] {
        let target = target_path(new_root, m);
        if let Err(e) = mkdir_p(&target, 0o755) {
            return e;
        }
        if let Err(e) = rustix::mount::mount_move(m, &target) {
            return format!("cannot move {m} to {}: {e}", target.display());
        }
    }
    if let Err(e) = rustix::process::chdir(new_root) {
        return format!("cannot enter {}: {e}", new_root.display());
    }
    let started = Instant::now();
    if is_initramfs("/") {
        match std::fs::symlink_metadata("/") {
            Ok(meta) => remove_on_device(Path::new("/"), meta.dev()),
            Err(e) => log::warn!("not freeing the initramfs: cannot stat /: {e}"),
        }
        log::info!(
            "freed the initramfs in {} ms",
            started.elapsed().as_millis()
        );
    }
    if let Err(e) = rustix::mount::mount_move(".", "/") {
        return format!("cannot move {} to /: {e}", new_root.display());
    }
    if let Err(e) = rustix::process::chroot(".") {
        return format!("cannot chroot into the new root: {e}");
    }
    if let Err(e) = rustix::process::chdir("/") {
        return format!("cannot chdir to / in the new root: {e}");
    }
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new(init)
        .arg0(init)
        .env_clear()
        .exec();
    format!("cannot execute stage 2 {init}: {e}")
}
