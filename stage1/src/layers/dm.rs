//! Device-mapper through its ioctls on `/dev/mapper/control` (`linux/dm-ioctl.h`), what
//! `dmsetup create NAME --table …` does: create the device, load its table, resume it.
//! The only `unsafe` of the unlock layers is the ioctl call itself.
//!
//! Each request is one buffer: `struct dm_ioctl` (312 bytes) followed by its data (for a
//! table: one `struct dm_target_spec` of 40 bytes per target, each followed by its NUL-
//! terminated parameter string, 8-byte aligned). The kernel copies the buffer in and out
//! (`copy_params`), so it needs no particular alignment in our memory.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use zeroize::Zeroize;

pub const CONTROL: &str = "/dev/mapper/control";

const DM_IOCTL_SIZE: usize = 312;
const TARGET_SPEC_SIZE: usize = 40;
const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;

// Offsets in struct dm_ioctl.
const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_FLAGS: usize = 28;
const OFF_DEV: usize = 40;
const OFF_NAME: usize = 48;
const OFF_UUID: usize = 176;

// Commands (`enum { DM_VERSION_CMD = 0, … }`).
const DM_VERSION_CMD: u8 = 0;
const DM_DEV_CREATE_CMD: u8 = 3;
const DM_DEV_REMOVE_CMD: u8 = 4;
const DM_DEV_SUSPEND_CMD: u8 = 6;
const DM_TABLE_LOAD_CMD: u8 = 9;

/// `DM_READONLY_FLAG`: a read-only device.
pub const DM_READONLY_FLAG: u32 = 1 << 0;
/// `DM_SECURE_DATA_FLAG`: the kernel wipes its copy of the buffer (the table holds a key).
const DM_SECURE_DATA_FLAG: u32 = 1 << 15;

/// `_IOWR(0xfd, cmd, struct dm_ioctl)`.
fn request(cmd: u8) -> u64 {
    (3u64 << 30) | ((DM_IOCTL_SIZE as u64) << 16) | (0xfd << 8) | u64::from(cmd)
}

/// One target line of a table: `start length type params`, in 512-byte sectors.
pub struct Target {
    pub start: u64,
    pub length: u64,
    pub kind: &'static str,
    /// Zeroed when dropped: a crypt target's parameters hold the key.
    pub params: String,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.params.zeroize();
    }
}

/// An ioctl buffer, wiped when dropped.
struct Buf(Vec<u8>);

impl Drop for Buf {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Buf {
    fn new(name: &str, uuid: &str, flags: u32, data_len: usize) -> Result<Self, String> {
        if name.is_empty() || name.len() >= DM_NAME_LEN || name.contains('/') {
            return Err(format!("{name:?} cannot be a device-mapper name"));
        }
        if uuid.len() >= DM_UUID_LEN {
            return Err(format!("{uuid:?} is too long for a device-mapper uuid"));
        }
        let mut b = vec![0u8; DM_IOCTL_SIZE + data_len];
        put32(&mut b, 0, 4); // interface version 4.0.0: what every kernel since 2.6 speaks
        let len = b.len() as u32;
        put32(&mut b, OFF_DATA_SIZE, len);
        put32(&mut b, OFF_DATA_START, DM_IOCTL_SIZE as u32);
        put32(&mut b, OFF_FLAGS, flags);
        if let Some(dst) = b.get_mut(OFF_NAME..OFF_NAME + name.len()) {
            dst.copy_from_slice(name.as_bytes());
        }
        if let Some(dst) = b.get_mut(OFF_UUID..OFF_UUID + uuid.len()) {
            dst.copy_from_slice(uuid.as_bytes());
        }
        Ok(Self(b))
    }
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    if let Some(d) = b.get_mut(off..off + 4) {
        d.copy_from_slice(&v.to_ne_bytes());
    }
}

fn put64(b: &mut [u8], off: usize, v: u64) {
    if let Some(d) = b.get_mut(off..off + 8) {
        d.copy_from_slice(&v.to_ne_bytes());
    }
}

fn get64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// The control device, opened once per layer step.
pub struct Control {
    file: File,
}

impl Control {
    /// Open `/dev/mapper/control`, creating the node first when devtmpfs has not (its
    /// number is in `/sys/class/misc/device-mapper/dev`), and check the interface version.
    pub fn open() -> Result<Self, String> {
        if !Path::new(CONTROL).exists() {
            let _ = std::fs::create_dir_all("/dev/mapper");
            let dev =
                std::fs::read_to_string("/sys/class/misc/device-mapper/dev").map_err(|e| {
                    format!(
                        "device-mapper is not available (/sys/class/misc/device-mapper/dev: {e}); \
                     the initrd needs the dm_mod module"
                    )
                })?;
            let (maj, min) = dev
                .trim()
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .ok_or_else(|| format!("unreadable device-mapper number {dev:?}"))?;
            rustix::fs::mknodat(
                rustix::fs::CWD,
                CONTROL,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o600),
                rustix::fs::makedev(maj, min),
            )
            .map_err(|e| format!("cannot create {CONTROL}: {e}"))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL)
            .map_err(|e| format!("cannot open {CONTROL}: {e}"))?;
        let c = Self { file };
        let mut b = Buf::new("version", "", 0, 0)?;
        // DM_VERSION takes no name; an empty one is what dmsetup sends.
        if let Some(n) = b.0.get_mut(OFF_NAME..OFF_NAME + DM_NAME_LEN) {
            n.fill(0);
        }
        c.ioctl(DM_VERSION_CMD, &mut b)
            .map_err(|e| format!("device-mapper version check failed: {e}"))?;
        Ok(c)
    }

    fn ioctl(&self, cmd: u8, buf: &mut Buf) -> Result<(), rustix::io::Errno> {
        // SAFETY: `buf` is a live, exclusively borrowed buffer of at least
        // DM_IOCTL_SIZE bytes whose `data_size` field equals its length, so the kernel
        // reads and writes only inside it; the request number is the one dm-ioctl.h
        // defines for this command with the size of struct dm_ioctl; the fd is open.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                request(cmd) as libc::c_ulong,
                buf.0.as_mut_ptr(),
            )
        };
        if rc < 0 {
            Err(rustix::io::Errno::from_raw_os_error(
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ))
        } else {
            Ok(())
        }
    }

    /// Create `name` with `targets`, resume it and make `/dev/mapper/<name>` point at its
    /// `/dev/dm-N`. On any failure the half-made device is removed again. Returns
    /// `/dev/mapper/<name>`.
    pub fn create(
        &self,
        name: &str,
        uuid: &str,
        targets: &[Target],
        read_only: bool,
    ) -> Result<PathBuf, String> {
        let mut b = Buf::new(name, uuid, 0, 0)?;
        self.ioctl(DM_DEV_CREATE_CMD, &mut b).map_err(|e| {
            format!("cannot create device-mapper device {name}: {e} (is the name in use?)")
        })?;
        let dev = get64(&b.0, OFF_DEV);
        match self.load_and_resume(name, targets, read_only) {
            Ok(()) => {}
            Err(e) => {
                self.remove(name);
                return Err(e);
            }
        }
        // huge_encode_dev: minor's low 8 bits, major, then the minor's high bits.
        let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
        let node = PathBuf::from(format!("/dev/dm-{minor}"));
        let link = Path::new("/dev/mapper").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("../dm-{minor}"), &link)
            .map_err(|e| format!("cannot create {}: {e}", link.display()))?;
        if !node.exists() {
            log::debug!("{} not yet in devtmpfs", node.display());
        }
        Ok(link)
    }

    fn load_and_resume(
        &self,
        name: &str,
        targets: &[Target],
        read_only: bool,
    ) -> Result<(), String> {
        let mut data = Vec::new();
        for t in targets {
            let start = data.len();
            let params_len = t.params.len() + 1;
            let spec_len = (TARGET_SPEC_SIZE + params_len).div_ceil(8) * 8;
            data.resize(start + spec_len, 0);
            let spec = data.get_mut(start..).unwrap_or(&mut []);
            put64(spec, 0, t.start);
            put64(spec, 8, t.length);
            // `next`: from this spec to the next one.
            put32(spec, 20, spec_len as u32);
            if t.kind.len() >= 16 {
                return Err(format!("target type {} too long", t.kind));
            }
            if let Some(d) = spec.get_mut(24..24 + t.kind.len()) {
                d.copy_from_slice(t.kind.as_bytes());
            }
            if let Some(d) = spec.get_mut(TARGET_SPEC_SIZE..TARGET_SPEC_SIZE + t.params.len()) {
                d.copy_from_slice(t.params.as_bytes());
            }
        }
        let mut flags = DM_SECURE_DATA_FLAG;
        if read_only {
            flags |= DM_READONLY_FLAG;
        }
        let mut b = Buf::new(name, "", flags, data.len())?;
        put32(&mut b.0, OFF_TARGET_COUNT, targets.len() as u32);
        if let Some(d) = b.0.get_mut(DM_IOCTL_SIZE..) {
            d.copy_from_slice(&data);
        }
        data.zeroize();
        self.ioctl(DM_TABLE_LOAD_CMD, &mut b).map_err(|e| {
            format!(
                "the kernel refused the {} table of {name}: {e} (see the kernel's device-mapper \
                 message above; is the target's module, e.g. dm_crypt, in the initrd?)",
                targets.first().map_or("", |t| t.kind)
            )
        })?;
        // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the loaded table goes live.
        let mut b = Buf::new(name, "", 0, 0)?;
        self.ioctl(DM_DEV_SUSPEND_CMD, &mut b)
            .map_err(|e| format!("cannot resume device-mapper device {name}: {e}"))
    }

    /// Remove `name` (after a failed table load); errors only logged.
    pub fn remove(&self, name: &str) {
        if let Ok(mut b) = Buf::new(name, "", 0, 0) {
            if let Err(e) = self.ioctl(DM_DEV_REMOVE_CMD, &mut b) {
                log::warn!("cannot remove the half-made device-mapper device {name}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_dm_ioctl_h() {
        // DM_VERSION = _IOWR(0xfd, 0, struct dm_ioctl): 0xc138fd00 on x86-64.
        assert_eq!(request(DM_VERSION_CMD), 0xc138_fd00);
        assert_eq!(request(DM_TABLE_LOAD_CMD), 0xc138_fd09);
    }

    #[test]
    fn names_are_checked() {
        assert!(Buf::new("", "", 0, 0).is_err());
        assert!(Buf::new("a/b", "", 0, 0).is_err());
        assert!(Buf::new(&"x".repeat(128), "", 0, 0).is_err());
        let b = Buf::new("root", "CRYPT-LUKS2-x", 0, 8).expect("buf");
        assert_eq!(b.0.len(), DM_IOCTL_SIZE + 8);
        assert_eq!(&b.0[OFF_NAME..OFF_NAME + 4], b"root");
    }
}
