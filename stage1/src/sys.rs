//! The system-changing steps of stage 1: special filesystems, modules, mounts and
//! `switch_root`. Each returns an error message meant for the console; the decisions about
//! *what* to do live in [`crate::plan`].

use std::ffi::CString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::fs::{Mode, OFlags};
use rustix::mount::MountFlags;
use stagehand_common::mounts::options as mount_opts;
use stagehand_common::mounts::special::{SpecialFs, SPECIAL_FILESYSTEMS};
use stagehand_common::stage1_config::{FileSystem, Module};

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

/// The special filesystems stage 1 needs and passes on to stage 2.
pub fn mount_special() -> Result<(), String> {
    SPECIAL_FILESYSTEMS
        .iter()
        .filter(|fs| fs.early)
        .try_for_each(SpecialFs::mount)
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

/// Is this `device` field a block device (as opposed to a bind source, tmpfs, or a
/// network share)? NixOS's stage 1 decides the same way.
pub fn is_block_device(device: &str) -> bool {
    device.starts_with("/dev/")
        || ["LABEL=", "UUID=", "PARTUUID=", "PARTLABEL="]
            .iter()
            .any(|p| device.starts_with(p))
}

/// Mount `fs` under `new_root`. `source` is the resolved device node for block devices;
/// `probed_type` is what the superblock said, used for `auto`.
pub fn mount_filesystem(
    new_root: &Path,
    fs: &FileSystem,
    source: Option<&Path>,
    probed_type: Option<&str>,
) -> Result<String, String> {
    let target = target_path(new_root, &fs.mount_point);
    mkdir_p(&target, 0o755)?;
    let opts = mount_opts::parse(&fs.options);
    let data = CString::new(opts.data.clone())
        .map_err(|_| format!("mount options for {} contain a NUL byte", fs.mount_point))?;
    let source = match source {
        Some(node) => node.display().to_string(),
        // A path is a bind source relative to the new root, as in NixOS's stage 1.
        None if fs.device.starts_with('/') && fs.fs_type != "tmpfs" => {
            target_path(new_root, &fs.device).display().to_string()
        }
        None => fs.device.clone(),
    };
    let mut flags = opts.flags;
    if fs.options.iter().any(|o| o == "bind") {
        flags |= MountFlags::BIND;
    }
    let types: Vec<&str> = match (fs.fs_type.as_str(), probed_type) {
        ("auto", Some(t)) => vec![t],
        ("auto", None) => AUTO_TYPES.to_vec(),
        (t, _) => vec![t],
    };
    let mut last_err = None;
    for t in &types {
        match rustix::mount::mount(source.as_str(), &target, *t, flags, Some(data.as_c_str())) {
            Ok(()) => return Ok((*t).to_owned()),
            Err(e) => last_err = Some((*t, e)),
        }
    }
    let (t, e) = last_err.unwrap_or(("?", rustix::io::Errno::INVAL));
    if types.len() > 1 {
        return Err(format!(
            "cannot mount {source} on {}: no known filesystem signature on the device (is it \
             blank?), and mounting it as any of {} failed; set the filesystem's fsType",
            fs.mount_point,
            types.join(", ")
        ));
    }
    Err(format!(
        "cannot mount {source} on {} (type {t}, options {:?}): {e}; check that the device \
         holds a {t} filesystem and the initrd has its module (the filesystem's fsType and \
         options, or rootfstype=/rootflags= for the root)",
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
/// `/` and exec `program` there with `argv[0]` = `init` and an empty environment (`program`
/// is `init` itself, unless stage 1 runs its carried stage 2 for the generation `init`
/// names). Returns only on failure.
pub fn switch_root(new_root: &Path, program: &str, init: &str) -> String {
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
    // /dev/kmsg moved away with /dev: report on the initramfs once we are in the new root.
    let started = Instant::now();
    let freed = is_initramfs("/")
        && std::fs::symlink_metadata("/")
            .map(|meta| remove_on_device(Path::new("/"), meta.dev()))
            .is_ok();
    let free_time = started.elapsed();
    if let Err(e) = rustix::mount::mount_move(".", "/") {
        return format!("cannot move {} to /: {e}", new_root.display());
    }
    if let Err(e) = rustix::process::chroot(".") {
        return format!("cannot chroot into the new root: {e}");
    }
    if let Err(e) = rustix::process::chdir("/") {
        return format!("cannot chdir to / in the new root: {e}");
    }
    if freed {
        log::info!("freed the initramfs in {} ms", free_time.as_millis());
    } else {
        log::warn!("/ was not an initramfs (ramfs/tmpfs); left its contents alone");
    }
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new(program)
        .arg0(init)
        .env_clear()
        .exec();
    format!("cannot execute stage 2 {program}: {e}")
}

/// Files some tools expect in any Linux root: e2fsck looks at `/etc/mtab` (here a link to
/// the kernel's mount table, as NixOS makes it) and `/etc/fstab`.
pub fn make_etc_stubs() {
    let _ = std::fs::create_dir_all("/etc");
    let _ = std::os::unix::fs::symlink("/proc/mounts", "/etc/mtab");
    if !Path::new("/etc/fstab").exists() {
        let _ = std::fs::write("/etc/fstab", "");
    }
}

/// The `(major, minor)` of a device node.
pub fn devno(node: &Path) -> Option<(u32, u32)> {
    let st = rustix::fs::stat(node).ok()?;
    Some((rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)))
}

/// Block devices mounted right now, by `(major, minor)`.
pub fn mounted_devices() -> Vec<(u32, u32)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| crate::fsck::mounted_devices(&t))
        .unwrap_or_default()
}

/// Run a filesystem checker on `node` and log what it says. Returns its exit code
/// (`None`: killed by a signal).
pub fn run_fsck(cmd: &crate::fsck::Command, node: &Path) -> Result<Option<i32>, String> {
    log::info!(
        "checking {}: {} {} {}",
        node.display(),
        cmd.program,
        cmd.args.join(" "),
        node.display()
    );
    let output = std::process::Command::new(&cmd.program)
        .args(&cmd.args)
        .arg(node)
        // A checker run by PID 1 inherits nothing from the kernel's environment but a
        // search path for any helper it starts.
        .env_clear()
        .env("PATH", "/bin:/sbin")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cmd.program))?;
    let name = Path::new(&cmd.program)
        .file_name()
        .map_or(cmd.program.clone(), |n| n.to_string_lossy().into_owned());
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&output.stderr).lines())
        .filter(|l| !l.trim().is_empty())
    {
        log::info!("{name}: {line}");
    }
    Ok(output.status.code())
}

/// Does this kernel support resuming from hibernation?
pub fn can_resume() -> bool {
    Path::new("/sys/power/resume").exists() && Path::new("/sys/power/disk").exists()
}

/// Ask the kernel to resume from the image on `devno`. If there is an image this does not
/// return (the kernel restores the hibernated system); otherwise the boot goes on.
pub fn resume_from(devno: (u32, u32)) -> Result<(), String> {
    let text = format!("{}:{}", devno.0, devno.1);
    std::fs::write("/sys/power/resume", &text)
        .map_err(|e| format!("cannot write {text} to /sys/power/resume: {e}"))
}

/// What `getrusage(RUSAGE_SELF)` says of this process, read with one system call (reading
/// `VmHWM` from `/proc/self/status` instead took 10-19 ms under QEMU's TCG).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Peak resident set size in KiB: `ru_maxrss`, the kernel's `VmHWM` (the high-water
    /// mark of our memory; PID 1 had none before it exec'd us).
    pub peak_rss_kib: u64,
    /// CPU time spent in user space, in microseconds (`ru_utime`): stage 1's own code,
    /// as against the kernel working for it. PID 1 ran no user code before it exec'd us,
    /// so this is ours since the exec. The kernel splits CPU time between user and system
    /// by sampling at the clock tick, so it is approximate.
    pub user_cpu_us: u64,
}

#[allow(unsafe_code)]
pub fn usage() -> Option<Usage> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: the pointer is to a `struct rusage` we own, which getrusage fills in; the
    // call reads nothing from it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: all-zero is a valid `rusage` (integers and timevals only), and the kernel
    // wrote it completely on success.
    let usage = unsafe { usage.assume_init() };
    let tv = usage.ru_utime;
    let user_cpu_us = u64::try_from(tv.tv_sec)
        .ok()?
        .saturating_mul(1_000_000)
        .saturating_add(u64::try_from(tv.tv_usec).ok()?);
    Some(Usage {
        peak_rss_kib: u64::try_from(usage.ru_maxrss).ok()?,
        user_cpu_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `VmHWM` of a `/proc/<pid>/status` text, in KiB.
    fn vmhwm(status: &str) -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse().ok())
            .expect("VmHWM in /proc/self/status")
    }

    #[test]
    fn peak_rss_is_vmhwm_in_kib() {
        let status = || std::fs::read_to_string("/proc/self/status").expect("status");
        let before = vmhwm(&status());
        let peak = usage().expect("getrusage").peak_rss_kib;
        let after = vmhwm(&status());
        // ru_maxrss is in KiB, like VmHWM, and is at least this image's high-water mark.
        // It can be more: Linux keeps the largest RSS of the images before exec (here
        // cargo's, which exec'd this test), so only the lower bound holds in a test. Stage 1
        // is exec'd by the kernel from a thread without user memory, so there the two are
        // the same counter.
        assert!(before <= peak, "VmHWM {before} KiB, ru_maxrss {peak} KiB");
        assert!(after >= before, "{before} {after}");
    }
}
