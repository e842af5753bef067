//! `btrfs device scan` without btrfs-progs: every btrfs device the prober found is
//! registered with the kernel through `/dev/btrfs-control` (`BTRFS_IOC_SCAN_DEV`), so a
//! filesystem spanning several devices mounts by naming any one of them, as udev's
//! `64-btrfs.rules` (`btrfs ready`) arrange on a running system.
//!
//! The superblock fields read here (linux `fs/btrfs/ctree.h`, `struct btrfs_super_block`
//! at 64 KiB): `fsid` at 0x20, `num_devices` at 0x88, and the device item at 0xc9 with
//! its `devid` first and its `uuid` at +0x42 (blkid's `UUID_SUB`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

/// What one btrfs device's superblock says about the filesystem it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtrfsMember {
    /// The filesystem's UUID (`UUID=`), dashed lowercase.
    pub fsid: String,
    /// How many devices the filesystem has.
    pub num_devices: u64,
    /// This device's id in it.
    pub devid: u64,
}

const SB_OFFSET: u64 = 0x10000;

/// Read the btrfs membership of a device whose superblock the prober already accepted
/// (magic and checksum checked there).
pub fn member<R: Read + Seek>(dev: &mut R) -> Option<BtrfsMember> {
    dev.seek(SeekFrom::Start(SB_OFFSET)).ok()?;
    let mut sb = vec![0u8; 0x1000];
    dev.read_exact(&mut sb).ok()?;
    parse_member(&sb)
}

/// [`member`] on a 4 KiB superblock already in memory.
pub fn parse_member(sb: &[u8]) -> Option<BtrfsMember> {
    if sb.get(0x40..0x48) != Some(b"_BHRfS_M") {
        return None;
    }
    let le64 =
        |o: usize| -> Option<u64> { Some(u64::from_le_bytes(sb.get(o..o + 8)?.try_into().ok()?)) };
    let fsid = sb.get(0x20..0x30)?;
    let hex: String = fsid.iter().map(|b| format!("{b:02x}")).collect();
    let dashed = format!(
        "{}-{}-{}-{}-{}",
        hex.get(0..8)?,
        hex.get(8..12)?,
        hex.get(12..16)?,
        hex.get(16..20)?,
        hex.get(20..32)?
    );
    Some(BtrfsMember {
        fsid: dashed,
        num_devices: le64(0x88)?,
        devid: le64(0xc9)?,
    })
}

/// `BTRFS_IOC_SCAN_DEV` = `_IOW(0x94, 4, struct btrfs_ioctl_vol_args)`, the struct being
/// `{ __s64 fd; char name[4088]; }` (4096 bytes).
const BTRFS_IOC_SCAN_DEV: libc::c_ulong = 0x5000_9404;
const BTRFS_PATH_NAME_MAX: usize = 4087;

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

/// Register `node` with the kernel's btrfs device list.
pub fn scan_device(node: &Path) -> Result<(), String> {
    let control = File::options()
        .read(true)
        .write(true)
        .open("/dev/btrfs-control")
        .map_err(|e| {
            format!("cannot open /dev/btrfs-control (is the btrfs module loaded?): {e}")
        })?;
    let path = node.as_os_str().as_encoded_bytes();
    if path.len() > BTRFS_PATH_NAME_MAX || path.contains(&0) {
        return Err(format!(
            "{}: path too long for the btrfs scan",
            node.display()
        ));
    }
    let mut args = VolArgs {
        fd: 0,
        name: [0; BTRFS_PATH_NAME_MAX + 1],
    };
    if let Some(dst) = args.name.get_mut(..path.len()) {
        dst.copy_from_slice(path);
    }
    scan_ioctl(&control, &mut args)
        .map_err(|e| format!("btrfs device scan of {}: {e}", node.display()))
}

#[allow(unsafe_code)]
fn scan_ioctl(control: &File, args: &mut VolArgs) -> Result<(), std::io::Error> {
    // SAFETY: `control` is an open file descriptor for the whole call; `args` is a
    // `#[repr(C)]` struct laid out as the kernel's `struct btrfs_ioctl_vol_args`
    // (an i64 and 4088 bytes, NUL-terminated path), which the ioctl number encodes as
    // 4096 bytes written to the kernel; the kernel only reads it (and NUL-terminates its
    // own copy), and we hold the only reference for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            control.as_raw_fd(),
            BTRFS_IOC_SCAN_DEV,
            std::ptr::from_mut(args),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vol_args_is_the_kernels_size() {
        // _IOW encodes the size: 0x5000_9404 >> 16 & 0x3fff == 4096.
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!((BTRFS_IOC_SCAN_DEV >> 16) & 0x3fff, 4096);
        assert_eq!(BTRFS_IOC_SCAN_DEV & 0xff, 4);
        assert_eq!((BTRFS_IOC_SCAN_DEV >> 8) & 0xff, 0x94);
    }

    #[test]
    fn members_of_a_two_device_mkfs_btrfs() {
        let t = tempfile::tempdir().expect("tempdir");
        let a = t.path().join("a.img");
        let b = t.path().join("b.img");
        for p in [&a, &b] {
            File::create(p)
                .expect("create")
                .set_len(128 << 20)
                .expect("size");
        }
        let ok = std::process::Command::new(stagehand_testkit::host::require_tool("mkfs.btrfs"))
            .args(["-q", "-f", "-d", "raid1", "-m", "raid1", "-L", "two", "-U"])
            .arg("7d1c3a5e-2b4f-4e6a-9c8d-0f1e2d3c4b5a")
            .arg(&a)
            .arg(&b)
            .status()
            .expect("mkfs.btrfs");
        assert!(ok.success());
        let ma = member(&mut File::open(&a).expect("open")).expect("a is btrfs");
        let mb = member(&mut File::open(&b).expect("open")).expect("b is btrfs");
        assert_eq!(ma.fsid, "7d1c3a5e-2b4f-4e6a-9c8d-0f1e2d3c4b5a");
        assert_eq!(ma.fsid, mb.fsid);
        assert_eq!((ma.num_devices, mb.num_devices), (2, 2));
        assert_eq!((ma.devid, mb.devid), (1, 2));
        // Not btrfs: nothing.
        assert_eq!(parse_member(&[0u8; 4096]), None);
        assert_eq!(parse_member(&[]), None);
    }
}
