//! Identify block devices without udev or libblkid: filesystem superblocks (type, UUID,
//! label), GPT and MBR partition entries (PARTUUID, PARTLABEL), and the fstab-style
//! device names stage 1 must resolve (`LABEL=`, `UUID=`, `/dev/disk/by-*/…`).
//!
//! Stage 1 has no udev, so nothing creates `/dev/disk/by-*` and nothing tells it which
//! device carries `LABEL=nixos`. It probes every block device itself with this module.
//! The rules follow util-linux libblkid (the library udev's `blkid` builtin uses) so the
//! answers match what the same system reports once udev runs: the same `TYPE`, the
//! same `UUID`/`LABEL` text, the same `/dev/disk/by-*` names.
//!
//! Everything here is pure: it reads through `Read + Seek`, so a `File` on `/dev/vda`,
//! an image file, or an in-memory `Cursor` all work.
//!
//! Cost: one read of the first 68 KiB per device covers every superblock we know
//! (the furthest is btrfs at 64 KiB; swap signatures sit at page size − 10 for pages up
//! to 64 KiB). The kernel reads ahead 128 KiB on a buffered block-device read anyway, so
//! one sequential read is cheaper than several small ones. Only FAT needs more (its
//! label lives in the root directory), read in 4 KiB pieces until the label is found.
//!
//! Known gaps against libblkid, all deliberate:
//! - Only the types listed in [`FsInfo::fs_type`] are recognised. A device that also
//!   holds a signature we do not know is reported by the one we do know, where libblkid
//!   would report the container instead. LUKS and LVM2 PVs are recognised
//!   (`crypto_LUKS`, `LVM2_member`); md RAID members are the exception: the device
//!   registry reads their superblock ([`crate::md::superblock`]) first and offers no
//!   filesystem for them, as libblkid's `linux_raid_member`.
//! - Superblock checksums are verified where the filesystem has one (ext4
//!   metadata_csum, XFS v5, btrfs CRC-32C, erofs sb_csum), as libblkid 2.39+ does and
//!   the kernel does at mount time. libblkid 2.38 (Debian 12) does not check them, so a
//!   superblock changed behind its checksum is "nothing" here but still named there.
//!   btrfs checksums other than CRC-32C (xxhash, sha256, blake2) are not verified.
//! - FAT labels are raw OEM-code-page bytes; non-UTF-8 bytes become U+FFFD in
//!   `FsInfo::label`, where udev would `\xNN`-escape them in the link name.
//! - MBR: primary partitions only (see [`probe_mbr`]).

mod containers;
mod fs;
mod gpt;
mod spec;
pub(crate) mod util;

#[cfg(test)]
mod image_tests;

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};

pub use fs::probe_filesystem;
pub use gpt::{mbr_partuuid, probe_gpt, probe_mbr, GptPartition, MbrPartition, MbrTable};
pub use spec::{by_links, by_links_ids, udev_encode, udev_unescape, DeviceSpec, PartIds};

/// What a filesystem (or swap) superblock says about the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// The libblkid `TYPE`: "ext4", "ext3", "ext2", "ext4dev", "jbd" (ext3/4 external
    /// journal), "btrfs", "xfs", "vfat", "erofs", "squashfs", "swap", "swsuspend"
    /// (a swap partition holding a hibernation image), "crypto_LUKS", "LVM2_member".
    pub fs_type: &'static str,
    /// `UUID=` exactly as `blkid` prints it: lowercase dashed for ext/btrfs/xfs/swap/
    /// erofs, `ABCD-1234` (uppercase) for vfat. `None` when the filesystem has none
    /// (squashfs, swap v0) or it is all zeros.
    pub uuid: Option<String>,
    /// `LABEL=` as `blkid` prints it (trailing blanks removed). `None` when empty.
    pub label: Option<String>,
    /// Only for swap and swsuspend: the libblkid `VERSION` ("1", "0", "s1suspend",
    /// "s2suspend", "ulsuspend", "tuxonice", "linhib0001"), telling a resume step which
    /// kind of hibernation image sits there. `None` for filesystems.
    pub version: Option<&'static str>,
}

#[derive(Debug)]
pub enum ProbeError {
    /// Reading the device failed (not: the device is too small, that is just "nothing").
    Io {
        what: &'static str,
        error: io::Error,
    },
    /// More than one signature matched, e.g. a leftover swap header on an ext4 volume.
    /// libblkid refuses to guess here ("ambivalent result") and so do we: mounting the
    /// wrong one of two filesystems is worse than failing loudly.
    Ambivalent(Vec<&'static str>),
    /// `probe_gpt` was given a sector size that is not a power of two in 512..=65536.
    BadSectorSize(u64),
    /// `DeviceSpec::parse` got something that is neither a path nor a known `TAG=value`.
    BadSpec(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { what, error } => write!(f, "reading {what}: {error}"),
            Self::Ambivalent(types) => write!(
                f,
                "more than one signature on the device ({}); refusing to guess: remove the \
                 stale one with `wipefs`",
                types.join(", ")
            ),
            Self::BadSectorSize(s) => write!(f, "unusable sector size {s}"),
            Self::BadSpec(s) => write!(
                f,
                "{s:?} is not a device: use a /dev path or LABEL=, UUID=, PARTUUID=, PARTLABEL= \
                 (in root=, resume= or the filesystem's device)"
            ),
        }
    }
}

impl std::error::Error for ProbeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Bytes from the start of the device kept in memory for all superblock checks: btrfs
/// at 64 KiB plus its 4 KiB superblock.
const HEAD_LEN: u64 = 0x11000;

/// A device being probed: its size and a cached copy of its first `HEAD_LEN` bytes.
struct Disk<'a, R> {
    dev: &'a mut R,
    size: u64,
    head: Vec<u8>,
}

impl<'a, R: Read + Seek> Disk<'a, R> {
    fn open(dev: &'a mut R, head_len: u64) -> Result<Self, ProbeError> {
        let size = dev.seek(SeekFrom::End(0)).map_err(|error| ProbeError::Io {
            what: "device size",
            error,
        })?;
        let want = head_len.min(size);
        let head = read_exact_at(dev, 0, usize::try_from(want).unwrap_or(0))?;
        Ok(Self { dev, size, head })
    }

    /// `len` bytes at `off`, or `None` when that range is not on the device (libblkid
    /// treats such a read as "no signature", not as an error).
    fn read(&mut self, off: u64, len: usize) -> Result<Option<Vec<u8>>, ProbeError> {
        let Some(end) = off.checked_add(len as u64) else {
            return Ok(None);
        };
        if end > self.size {
            return Ok(None);
        }
        if end <= self.head.len() as u64 {
            // Both bounds are below head.len(), so they fit in usize.
            let (s, e) = (off as usize, end as usize);
            return Ok(self.head.get(s..e).map(<[u8]>::to_vec));
        }
        read_exact_at(self.dev, off, len).map(Some)
    }

    /// The cached head; offsets past its end read as absent.
    fn head(&self) -> &[u8] {
        &self.head
    }
}

/// Read exactly `len` bytes at `off`. The caller has checked the range lies within the
/// device, so a short read is an I/O problem and reported as one.
fn read_exact_at<R: Read + Seek>(dev: &mut R, off: u64, len: usize) -> Result<Vec<u8>, ProbeError> {
    let io = |error| ProbeError::Io {
        what: "device",
        error,
    };
    dev.seek(SeekFrom::Start(off)).map_err(io)?;
    let mut buf = vec![0u8; len];
    dev.read_exact(&mut buf).map_err(io)?;
    Ok(buf)
}
