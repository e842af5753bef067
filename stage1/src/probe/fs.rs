//! Filesystem and swap superblock probers.
//!
//! Every offset and rule below was checked against util-linux
//! `libblkid/src/superblocks/{vfat,swap,xfs,ext,squashfs,btrfs,erofs,superblocks}.c`.
//! The candidates run in libblkid's `idinfos[]` order; like libblkid's "safe probe"
//! every candidate is tried, and two matches are an error rather than a guess.

use std::io::{Read, Seek};

use super::util::{
    array, be16, be32, be64, byte, bytes, crc32c_update, crc32c_update_skipping, has_magic, label,
    le16, le32, uuid_bytes,
};
use super::{Disk, FsInfo, ProbeError, HEAD_LEN};

/// Identify the filesystem (or swap area) on `dev`.
///
/// `Ok(None)`: no signature we know. `Err(Ambivalent)`: two or more signatures, as
/// libblkid's `blkid -p` would refuse too. Devices of 1 KiB or less are never probed
/// (libblkid ignores them; they are usually extended-partition stubs).
pub fn probe_filesystem<R: Read + Seek>(dev: &mut R) -> Result<Option<FsInfo>, ProbeError> {
    let mut disk = Disk::open(dev, HEAD_LEN)?;
    if disk.size <= 1024 {
        return Ok(None);
    }
    // libblkid: on floppy-sized devices the first match wins without an ambiguity check.
    let tiny = disk.size <= 1440 * 1024;

    let probers: [Prober<R>; 9] = [
        super::containers::probe_luks,
        super::containers::probe_lvm2,
        probe_vfat,
        probe_swap_family,
        probe_xfs,
        probe_ext,
        probe_squashfs,
        probe_btrfs,
        probe_erofs,
    ];
    let mut found = Vec::new();
    for prober in probers {
        prober(&mut disk, &mut found)?;
        if tiny && !found.is_empty() {
            break;
        }
    }
    if found.len() > 1 && !tiny {
        return Err(ProbeError::Ambivalent(
            found.iter().map(|f| f.fs_type).collect(),
        ));
    }
    Ok(found.into_iter().next())
}

/// One candidate check: pushes what it recognises onto the list.
type Prober<R> = for<'a, 'b> fn(&'a mut Disk<'b, R>, &mut Vec<FsInfo>) -> Result<(), ProbeError>;

fn fs(fs_type: &'static str, uuid: Option<String>, label: Option<String>) -> FsInfo {
    FsInfo {
        fs_type,
        uuid,
        label,
        version: None,
    }
}

// ---------------------------------------------------------------------------------------
// vfat (vfat.c)

const FAT12_MAX: u32 = 0xFF4;
const FAT16_MAX: u32 = 0xFFF4;
const FAT32_MAX: u32 = 0x0FFF_FFF6;

/// The boot-sector magics libblkid accepts, in its order: (offset, bytes). The last
/// three are weak (a jump opcode or the 0x55AA trailer), and need extra checks.
const VFAT_MAGICS: [(usize, &[u8]); 9] = [
    (0x52, b"MSWIN"),
    (0x52, b"FAT32   "),
    (0x36, b"MSDOS"),
    (0x36, b"FAT16   "),
    (0x36, b"FAT12   "),
    (0x36, b"FAT     "),
    (0, b"\xEB"),
    (0, b"\xE9"),
    (0x1FE, b"\x55\xAA"),
];

fn probe_vfat<R: Read + Seek>(
    disk: &mut Disk<'_, R>,
    found: &mut Vec<FsInfo>,
) -> Result<(), ProbeError> {
    let bs: Vec<u8> = bytes(disk.head(), 0, 512).to_vec();
    let Some(geo) = fat_boot_sector(&bs) else {
        return Ok(());
    };

    let mut vol_label: Option<[u8; 11]> = None;
    let mut serial: Option<[u8; 4]> = None;
    if geo.fat_length16 != 0 {
        // FAT12/16: fixed root directory right after the FATs.
        let root = (u64::from(geo.reserved) + u64::from(geo.fat_size)) * u64::from(geo.sector_size);
        vol_label = search_fat_label(disk, root, u32::from(geo.dir_entries))?;
        // Extended BPB: 0x28 has only the serial, 0x29 also label and type string.
        if matches!(byte(&bs, 0x26), 0x28 | 0x29) {
            serial = bytes(&bs, 0x27, 4).try_into().ok();
        }
    } else if geo.fat32_length != 0 {
        vol_label = fat32_root_label(disk, &geo, &bs)?;
        serial = bytes(&bs, 0x43, 4).try_into().ok();
        // The FSInfo sector must carry its signatures, or be blank (some formatters
        // leave it zeroed).
        let fsinfo = le16(&bs, 0x30);
        if fsinfo != 0 {
            let off = u64::from(fsinfo) * u64::from(geo.sector_size);
            let Some(fi) = disk.read(off, 512)? else {
                return Ok(());
            };
            let sig1 = bytes(&fi, 0, 4);
            let sig2 = bytes(&fi, 0x1E4, 4);
            if !matches!(sig1, b"RRaA" | b"RRdA" | b"\0\0\0\0")
                || !matches!(sig2, b"rrAa" | b"\0\0\0\0")
            {
                return Ok(());
            }
        }
    }

    // libblkid takes LABEL from the root-directory volume entry only; the copy in the
    // boot sector goes to LABEL_FATBOOT, which udev does not use for by-label. The
    // two differ when a tool (e.g. Windows) renamed the volume and updated only the
    // directory entry; the directory entry is what the kernel and Windows show.
    let label = vol_label.as_ref().and_then(|l| label(l));
    let uuid = serial.and_then(|s| {
        if s == [0; 4] {
            None
        } else {
            Some(format!("{:02X}{:02X}-{:02X}{:02X}", s[3], s[2], s[1], s[0]))
        }
    });
    found.push(fs("vfat", uuid, label));
    Ok(())
}

/// The FAT geometry when `bs` (the first 512 bytes) is a FAT boot sector by
/// libblkid's rules (`blkid_probe_is_vfat`); the MBR parser uses this too, because a
/// FAT boot sector also ends in 0x55AA and would otherwise pass for a partition table.
pub(crate) fn fat_boot_sector(bs: &[u8]) -> Option<FatGeometry> {
    if bs.len() < 512 {
        return None;
    }
    let &(_, magic) = VFAT_MAGICS
        .iter()
        .find(|(off, magic)| has_magic(bs, *off, magic))?;
    if magic.len() <= 2 {
        // Without a FAT name string, insist on the boot signature, and rule out the
        // FAT-like pseudo boot sectors OS/2 tools put in front of JFS and HPFS.
        if !has_magic(bs, 0x1FE, b"\x55\xAA")
            || has_magic(bs, 0x36, b"JFS     ")
            || has_magic(bs, 0x36, b"HPFS    ")
        {
            return None;
        }
    }
    let geo = FatGeometry::parse(bs)?;
    // BitLocker volumes carry a FAT-looking BPB with this OEM id; libblkid checks for
    // BitLocker before accepting FAT.
    if has_magic(bs, 3, b"-FVE-FS-") {
        return None;
    }
    Some(geo)
}

/// The BPB fields libblkid validates before calling something FAT.
pub(crate) struct FatGeometry {
    sector_size: u16,
    cluster_size: u8,
    reserved: u16,
    dir_entries: u16,
    fat_length16: u16,
    fat32_length: u32,
    fat_size: u32,
}

impl FatGeometry {
    fn parse(bs: &[u8]) -> Option<Self> {
        let fats = byte(bs, 0x10);
        let reserved = le16(bs, 0x0E);
        let media = byte(bs, 0x15);
        let cluster_size = byte(bs, 0x0D);
        let sector_size = le16(bs, 0x0B);
        if fats == 0 || reserved == 0 {
            return None;
        }
        if !(media >= 0xF8 || media == 0xF0) {
            return None;
        }
        if !cluster_size.is_power_of_two() {
            return None;
        }
        if !sector_size.is_power_of_two() || !(512..=4096).contains(&sector_size) {
            return None;
        }
        let dir_entries = le16(bs, 0x11);
        let mut sect_count = u32::from(le16(bs, 0x13));
        if sect_count == 0 {
            sect_count = le32(bs, 0x20);
        }
        let fat_length16 = le16(bs, 0x16);
        let fat32_length = le32(bs, 0x24);
        let fat_length = if fat_length16 != 0 {
            u32::from(fat_length16)
        } else {
            fat32_length
        };
        let fat_size = fat_length.checked_mul(u32::from(fats))?;
        let dir_size = (u32::from(dir_entries) * 32).div_ceil(u32::from(sector_size));
        let meta = u32::from(reserved)
            .checked_add(fat_size)?
            .checked_add(dir_size)?;
        let cluster_count = sect_count.checked_sub(meta)? / u32::from(cluster_size);
        let max_count = if fat_length16 == 0 && fat32_length != 0 {
            FAT32_MAX
        } else if cluster_count > FAT12_MAX {
            FAT16_MAX
        } else {
            FAT12_MAX
        };
        if cluster_count > max_count {
            return None;
        }
        Some(Self {
            sector_size,
            cluster_size,
            reserved,
            dir_entries,
            fat_length16,
            fat32_length,
            fat_size,
        })
    }
}

/// Walk the FAT32 root directory's cluster chain (at most 99 clusters, as libblkid)
/// looking for the volume-label entry.
fn fat32_root_label<R: Read + Seek>(
    disk: &mut Disk<'_, R>,
    geo: &FatGeometry,
    bs: &[u8],
) -> Result<Option<[u8; 11]>, ProbeError> {
    let sector = u64::from(geo.sector_size);
    let cluster_bytes = u64::from(geo.cluster_size) * sector;
    let data_start = u64::from(geo.reserved) + u64::from(geo.fat_size);
    let fat_entries = u64::from(geo.fat32_length) * sector / 4;
    let mut next = u64::from(le32(bs, 0x2C));
    for _ in 0..99 {
        if next < 2 || next >= fat_entries {
            break;
        }
        let off = (data_start + (next - 2) * u64::from(geo.cluster_size)) * sector;
        let entries = u32::try_from(cluster_bytes / 32).unwrap_or(0);
        if let Some(l) = search_fat_label(disk, off, entries)? {
            return Ok(Some(l));
        }
        let fat_off = u64::from(geo.reserved) * sector + next * 4;
        let Some(e) = disk.read(fat_off, 4)? else {
            break;
        };
        next = u64::from(le32(&e, 0) & 0x0FFF_FFFF);
    }
    Ok(None)
}

/// Scan up to `entries` 32-byte directory entries at `off` for the volume label,
/// reading 4 KiB at a time and stopping at the end-of-directory marker: the label is
/// almost always the first entry, so this is normally one read.
fn search_fat_label<R: Read + Seek>(
    disk: &mut Disk<'_, R>,
    off: u64,
    entries: u32,
) -> Result<Option<[u8; 11]>, ProbeError> {
    const PER_READ: u32 = 128;
    let mut done = 0u32;
    while done < entries {
        let n = PER_READ.min(entries - done);
        let Some(chunk) = disk.read(off + u64::from(done) * 32, n as usize * 32)? else {
            return Ok(None);
        };
        for ent in chunk.as_chunks::<32>().0 {
            let &[name0, ..] = ent;
            if name0 == 0x00 {
                return Ok(None);
            }
            let attr = byte(ent, 11);
            let cluster_high = le16(ent, 20);
            let cluster_low = le16(ent, 26);
            if name0 == 0xE5 || cluster_high != 0 || cluster_low != 0 || attr & 0x3F == 0x0F {
                continue;
            }
            // Volume-ID bit set, directory bit clear.
            if attr & 0x18 == 0x08 {
                let Some(mut name) = array::<11>(ent, 0) else {
                    continue;
                };
                // 0x05 stands for a leading 0xE5 byte (0xE5 itself means "deleted").
                if name[0] == 0x05 {
                    name[0] = 0xE5;
                }
                return Ok(Some(name));
            }
        }
        done += n;
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------
// swap and swsuspend (swap.c)

/// TuxOnIce writes this at offset 0 of a swap device holding its image.
const TOI_MAGIC: &[u8] = b"\xed\xc3\x02\xe9\x98\x56\xe5\x0c";
/// Signatures sit in the last 10 bytes of the first page; these are the page sizes
/// libblkid tries (4 KiB … 64 KiB), as offsets of those 10 bytes.
const SWAP_MAGIC_OFFSETS: [usize; 5] = [0xFF6, 0x1FF6, 0x3FF6, 0x7FF6, 0xFFF6];
/// libblkid skips swap on devices smaller than ten 4 KiB pages.
const SWAP_MIN_SIZE: u64 = 10 * 4096;

fn probe_swap_family<R: Read + Seek>(
    disk: &mut Disk<'_, R>,
    found: &mut Vec<FsInfo>,
) -> Result<(), ProbeError> {
    if disk.size < SWAP_MIN_SIZE {
        return Ok(());
    }
    let head = disk.head();
    let toi = has_magic(head, 0, TOI_MAGIC);

    // swsuspend first (libblkid order): a hibernation image replaces the swap
    // signature, so at most one of the two matches.
    let suspend_version = if toi {
        Some("tuxonice")
    } else {
        SWAP_MAGIC_OFFSETS.iter().find_map(|&off| {
            [
                (&b"S1SUSPEND"[..], "s1suspend"),
                (b"S2SUSPEND", "s2suspend"),
                (b"ULSUSPEND", "ulsuspend"),
                (b"LINHIB0001", "linhib0001"),
            ]
            .iter()
            .find(|(m, _)| has_magic(head, off, m))
            .map(|&(_, v)| v)
        })
    };
    if let Some(version) = suspend_version {
        if let Some(mut info) = swap_header_info(head, false) {
            info.fs_type = "swsuspend";
            info.version = Some(version);
            found.push(info);
        }
    }

    // TuxOnIce keeps a valid swap signature at the end of the page; libblkid reports
    // only swsuspend then.
    if toi {
        return Ok(());
    }
    for off in SWAP_MAGIC_OFFSETS {
        if has_magic(head, off, b"SWAP-SPACE") {
            // Version 0 swap has no UUID or label.
            found.push(FsInfo {
                fs_type: "swap",
                uuid: None,
                label: None,
                version: Some("0"),
            });
            return Ok(());
        }
        if has_magic(head, off, b"SWAPSPACE2") {
            if let Some(mut info) = swap_header_info(head, true) {
                info.version = Some("1");
                found.push(info);
            }
            return Ok(());
        }
    }
    Ok(())
}

/// The v1 swap header at 1024: version, last_page, nr_badpages, uuid[16],
/// volume[16], padding[117]. For "SWAPSPACE2" the version must be 1 (either byte
/// order; the header is in the writer's native order) and last_page non-zero.
fn swap_header_info(head: &[u8], check_version: bool) -> Option<FsInfo> {
    let hdr = bytes(head, 1024, 512);
    if hdr.len() < 512 {
        return None;
    }
    if check_version {
        let version = le32(hdr, 0);
        if version != 1 && version.swap_bytes() != 1 {
            return None;
        }
        if le32(hdr, 4) == 0 {
            return None;
        }
    }
    let mut info = fs("swap", None, None);
    // libblkid's sanity check: only trust uuid/label when padding[32] and padding[33]
    // (bytes 44 + 128 .. 44 + 136 of the header) are zero.
    if le32(hdr, 44 + 128) == 0 && le32(hdr, 44 + 132) == 0 {
        info.label = label(bytes(hdr, 28, 16));
        info.uuid = uuid_bytes(bytes(hdr, 12, 16));
    }
    Some(info)
}

// ---------------------------------------------------------------------------------------
// xfs (xfs.c). All fields big-endian.

fn probe_xfs<R: Read + Seek>(
    disk: &mut Disk<'_, R>,
    found: &mut Vec<FsInfo>,
) -> Result<(), ProbeError> {
    let sb = disk.head();
    if !has_magic(sb, 0, b"XFSB") || sb.len() < 512 {
        return Ok(());
    }
    let blocksize = be32(sb, 4);
    let dblocks = be64(sb, 8);
    let rextsize = be32(sb, 80);
    let agblocks = be32(sb, 84);
    let agcount = be32(sb, 88);
    let versionnum = be16(sb, 100);
    let sectsize = be16(sb, 102);
    let inodesize = be16(sb, 104);
    let blocklog = byte(sb, 120);
    let sectlog = byte(sb, 121);
    let inodelog = byte(sb, 122);
    let inopblog = byte(sb, 123);
    let imax_pct = byte(sb, 127);
    let features2 = be32(sb, 200);

    // libblkid's sanity checks, so a stray "XFSB" is not enough.
    let rext_bytes = u64::from(rextsize) * u64::from(blocksize);
    let sane = agcount > 0
        && (512..=32768).contains(&sectsize)
        && (9..=15).contains(&sectlog)
        && u32::from(sectsize) == 1u32 << sectlog
        && (512..=65536).contains(&blocksize)
        && (9..=16).contains(&blocklog)
        && u64::from(blocksize) == 1u64 << blocklog
        && (256..=2048).contains(&inodesize)
        && (8..=11).contains(&inodelog)
        && u32::from(inodesize) == 1u32 << inodelog
        && i32::from(blocklog) - i32::from(inodelog) == i32::from(inopblog)
        && (4096..=1024 * 1024 * 1024).contains(&rext_bytes)
        && imax_pct <= 100
        && dblocks != 0
        && dblocks <= u64::from(agcount) * u64::from(agblocks)
        && dblocks >= u64::from(agcount - 1) * u64::from(agblocks) + 64;
    if !sane {
        return Ok(());
    }
    if versionnum & 0x0F == 5 {
        // v5 superblocks are checksummed (CRC-32C over one sector, sb_crc at 0xE0
        // counted as zero, stored little-endian) and must say so in their flags.
        if versionnum & 0x8000 == 0 || features2 & 0x100 == 0 {
            return Ok(());
        }
        let sector = bytes(sb, 0, usize::from(sectsize));
        if sector.len() != usize::from(sectsize) {
            return Ok(());
        }
        let crc = !crc32c_update_skipping(!0, sector, 0xE0, 4);
        if crc != le32(sb, 0xE0) {
            return Ok(());
        }
    }
    let fname = label(bytes(sb, 108, 12));
    let uuid = uuid_bytes(bytes(sb, 32, 16));
    found.push(fs("xfs", uuid, fname));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// ext2/3/4 (ext.c). Superblock at 1024, little-endian.

const EXT_SB: usize = 1024;
const EXT3_COMPAT_HAS_JOURNAL: u32 = 0x0004;
const EXT3_INCOMPAT_JOURNAL_DEV: u32 = 0x0008;
const EXT2_FLAGS_TEST_FILESYS: u32 = 0x0004;
const EXT4_RO_COMPAT_METADATA_CSUM: u32 = 0x0400;
/// Feature bits ext2 (and ext3) understand; anything else means "ext4".
const EXT2_RO_COMPAT_SUPP: u32 = 0x0001 | 0x0002 | 0x0004; // sparse_super, large_file, btree_dir
const EXT2_INCOMPAT_SUPP: u32 = 0x0002 | 0x0010; // filetype, meta_bg
const EXT3_RO_COMPAT_SUPP: u32 = EXT2_RO_COMPAT_SUPP;
const EXT3_INCOMPAT_SUPP: u32 = 0x0002 | 0x0004 | 0x0010; // filetype, recover, meta_bg

fn probe_ext<R: Read + Seek>(
    disk: &mut Disk<'_, R>,
    found: &mut Vec<FsInfo>,
) -> Result<(), ProbeError> {
    let sb = bytes(disk.head(), EXT_SB, 1024);
    if sb.len() < 1024 || !has_magic(sb, 0x38, b"\x53\xEF") {
        return Ok(());
    }
    let fc = le32(sb, 0x5C);
    let fi = le32(sb, 0x60);
    let frc = le32(sb, 0x64);
    let flags = le32(sb, 0x160);

    // metadata_csum: CRC-32C (seed ~0, no final inversion) over the superblock up to
    // s_checksum at 0x3FC. A mismatch means a stale or torn superblock.
    if frc & EXT4_RO_COMPAT_METADATA_CSUM != 0 {
        let crc = crc32c_update(!0, bytes(sb, 0, 0x3FC));
        if crc != le32(sb, 0x3FC) {
            return Ok(());
        }
    }

    let journal_dev = fi & EXT3_INCOMPAT_JOURNAL_DEV != 0;
    let has_journal = fc & EXT3_COMPAT_HAS_JOURNAL != 0;
    let test_fs = flags & EXT2_FLAGS_TEST_FILESYS != 0;
    let beyond_ext3 = frc & !EXT3_RO_COMPAT_SUPP != 0 || fi & !EXT3_INCOMPAT_SUPP != 0;
    let beyond_ext2 = frc & !EXT2_RO_COMPAT_SUPP != 0 || fi & !EXT2_INCOMPAT_SUPP != 0;

    // Each of libblkid's ext probers decides on its own, in this order; more than one
    // can accept the same superblock (e.g. ext4dev and ext3), which then counts as
    // ambivalent exactly as in libblkid.
    let mut types = Vec::new();
    if !journal_dev && test_fs {
        types.push("ext4dev");
    }
    if !journal_dev && beyond_ext3 && !test_fs {
        types.push("ext4");
    }
    if has_journal && !beyond_ext3 {
        types.push("ext3");
    }
    if !has_journal && !beyond_ext2 {
        types.push("ext2");
    }
    if journal_dev {
        types.push("jbd");
    }
    let uuid = uuid_bytes(bytes(sb, 0x68, 16));
    let name = label(bytes(sb, 0x78, 16));
    for t in types {
        found.push(fs(t, uuid.clone(), name.clone()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// squashfs (squashfs.c). No UUID, no label.

fn probe_squashfs<R: Read + Seek>(
    disk: &mut Disk<'_, R>,
    found: &mut Vec<FsInfo>,
) -> Result<(), ProbeError> {
    let sb = disk.head();
    if sb.len() < 32 {
        return Ok(());
    }
    if has_magic(sb, 0, b"hsqs") {
        // Little-endian: version 4 is today's squashfs, older ones are "squashfs3".
        let major = le16(sb, 28);
        found.push(fs(
            if major >= 4 { "squashfs" } else { "squashfs3" },
            None,
            None,
        ));
    } else if has_magic(sb, 0, b"sqsh") && be16(sb, 28) <= 3 {
        // Big-endian images exist only for squashfs 3 and older.
        found.push(fs("squashfs3", None, None));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// btrfs (btrfs.c). Primary superblock at 64 KiB.

const BTRFS_SB: usize = 0x10000;
const BTRFS_MIN_SIZE: u64 = 1024 * 1024;

fn probe_btrfs<R: Read + Seek>(
    disk: &mut Disk<'_, R>,
    found: &mut Vec<FsInfo>,
) -> Result<(), ProbeError> {
    if disk.size < BTRFS_MIN_SIZE {
        return Ok(());
    }
    let sb = bytes(disk.head(), BTRFS_SB, 0x1000);
    if sb.len() < 0x1000 || !has_magic(sb, 0x40, b"_BHRfS_M") {
        return Ok(());
    }
    // csum_type 0 is CRC-32C over the rest of the 4 KiB superblock, stored in the
    // first 4 bytes. Other types (xxhash64, sha256, blake2b) are not verified.
    if le16(sb, 0xC4) == 0 {
        let crc = !crc32c_update(!0, bytes(sb, 0x20, 0x1000 - 0x20));
        if crc != le32(sb, 0) {
            return Ok(());
        }
    }
    let uuid = uuid_bytes(bytes(sb, 0x20, 16));
    let name = label(bytes(sb, 0x12B, 256));
    found.push(fs("btrfs", uuid, name));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// erofs (erofs.c). Superblock at 1024, little-endian.

const EROFS_SB: usize = 1024;
const EROFS_FEATURE_SB_CSUM: u32 = 0x1;

fn probe_erofs<R: Read + Seek>(
    disk: &mut Disk<'_, R>,
    found: &mut Vec<FsInfo>,
) -> Result<(), ProbeError> {
    let sb = bytes(disk.head(), EROFS_SB, 128);
    if sb.len() < 128 || !has_magic(sb, 0, b"\xE2\xE1\xF5\xE0") {
        return Ok(());
    }
    let blkszbits = byte(sb, 12);
    if le32(sb, 8) & EROFS_FEATURE_SB_CSUM != 0 {
        // CRC-32C (seed ~0, no final inversion) over the rest of the first block from
        // the superblock on, with the checksum field at +4 read as zero.
        if blkszbits > 16 {
            return Ok(());
        }
        let len = (1usize << blkszbits).saturating_sub(EROFS_SB);
        let Some(block) = disk.read(EROFS_SB as u64, len)? else {
            return Ok(());
        };
        let crc = crc32c_update_skipping(!0, &block, 4, 4);
        if crc != le32(&block, 4) {
            return Ok(());
        }
    }
    let sb = bytes(disk.head(), EROFS_SB, 128);
    let uuid = uuid_bytes(bytes(sb, 48, 16));
    let name = label(bytes(sb, 64, 16));
    found.push(fs("erofs", uuid, name));
    Ok(())
}
