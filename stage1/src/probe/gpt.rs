//! GPT and MBR partition tables: enough to answer `PARTUUID=` and `PARTLABEL=` for the
//! partitions of a disk, with the rules of util-linux
//! `libblkid/src/partitions/{gpt,dos}.c`.

use std::io::{Read, Seek};

use super::fs::fat_boot_sector;
use super::util::{byte, bytes, guid_mixed_endian, has_magic, is_c_space, le32, le64};
use super::{Disk, ProbeError};

/// One used GPT entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    /// 1-based slot in the entry array; equals the kernel's partition number
    /// (`/sys/class/block/<part>/partition`). Unused slots keep their number.
    pub number: u32,
    /// Unique partition GUID, lowercase, as blkid's `PARTUUID`.
    pub part_uuid: String,
    /// Partition name (UTF-16LE on disk), trailing blanks removed as blkid does.
    pub part_label: String,
    /// Partition type GUID, lowercase (e.g. `c12a7328-f81f-11d2-ba4b-00a0c93ec93b`).
    pub type_guid: String,
    /// In logical sectors of the size `probe_gpt` was given.
    pub first_lba: u64,
    pub last_lba: u64,
    /// The 64 attribute bits (bit 2 "legacy BIOS bootable", 60 read-only, …).
    pub attributes: u64,
}

/// Entry arrays larger than this are refused. The standard array is 16 KiB (128
/// entries); libblkid allows up to 4 GiB, but a header is only CRC-protected, not
/// authenticated, and stage 1 must not allocate gigabytes on a crafted disk.
const MAX_ENTRY_ARRAY: u64 = 1024 * 1024;
const GPT_ENTRY_SIZE: u32 = 128;
const GPT_HEADER_MIN: u32 = 92;

/// Read the GPT of a whole disk. `sector_size` is the logical block size
/// (`/sys/block/<disk>/queue/logical_block_size`; 512 for image files).
///
/// `Ok(None)` when there is no valid GPT. As in libblkid (and the kernel without the
/// `gpt` parameter) a protective MBR with a 0xEE entry is required. The primary header
/// at LBA 1 is used when valid, else the backup at the last LBA. A header counts as
/// valid only if its signature, header CRC, own-LBA field, usable range and entry-array
/// CRC all check out.
pub fn probe_gpt<R: Read + Seek>(
    dev: &mut R,
    sector_size: u64,
) -> Result<Option<Vec<GptPartition>>, ProbeError> {
    if !sector_size.is_power_of_two() || !(512..=65536).contains(&sector_size) {
        return Err(ProbeError::BadSectorSize(sector_size));
    }
    let mut disk = Disk::open(dev, 512)?;
    if disk.size < sector_size {
        return Ok(None);
    }
    let last_lba = disk.size / sector_size - 1;

    if !has_protective_mbr(disk.head()) {
        return Ok(None);
    }
    let mut table = read_header(&mut disk, sector_size, 1, last_lba)?;
    if table.is_none() {
        table = read_header(&mut disk, sector_size, last_lba, last_lba)?;
    }
    let Some((hdr, entries)) = table else {
        return Ok(None);
    };

    let mut parts = Vec::new();
    for (i, e) in entries.chunks_exact(GPT_ENTRY_SIZE as usize).enumerate() {
        let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let type_raw = bytes(e, 0, 16);
        if type_raw.iter().all(|&b| b == 0) {
            continue;
        }
        let first_lba = le64(e, 32);
        let last_lba = le64(e, 40);
        // Entries outside the usable area are ignored by libblkid (and the kernel).
        if first_lba < hdr.first_usable || last_lba > hdr.last_usable || last_lba < first_lba {
            continue;
        }
        parts.push(GptPartition {
            number,
            part_uuid: guid_mixed_endian(bytes(e, 16, 16)),
            part_label: utf16le_name(bytes(e, 56, 72)),
            type_guid: guid_mixed_endian(type_raw),
            first_lba,
            last_lba,
            attributes: le64(e, 48),
        });
    }
    Ok(Some(parts))
}

/// Sector 0 ends in 0x55AA and one of its four entries has type 0xEE.
fn has_protective_mbr(sector0: &[u8]) -> bool {
    has_magic(sector0, 510, b"\x55\xAA")
        && (0..4).any(|i| byte(sector0, 0x1BE + 16 * i + 4) == 0xEE)
}

struct Header {
    first_usable: u64,
    last_usable: u64,
}

fn read_header<R: Read + Seek>(
    disk: &mut Disk<'_, R>,
    ssz: u64,
    lba: u64,
    last_lba: u64,
) -> Result<Option<(Header, Vec<u8>)>, ProbeError> {
    let Some(h) = disk.read(lba * ssz, ssz as usize)? else {
        return Ok(None);
    };
    if !has_magic(&h, 0, b"EFI PART") {
        return Ok(None);
    }
    let hsz = le32(&h, 12);
    if hsz < GPT_HEADER_MIN || u64::from(hsz) > ssz {
        return Ok(None);
    }
    // The header CRC covers header_size bytes with the CRC field itself as zeros.
    let mut hdr = bytes(&h, 0, hsz as usize).to_vec();
    let stored = le32(&hdr, 16);
    if let Some(field) = hdr.get_mut(16..20) {
        field.fill(0);
    }
    if stagehand_common::crc32::hash(&hdr) != stored {
        return Ok(None);
    }
    if le64(&h, 24) != lba {
        return Ok(None);
    }
    let first_usable = le64(&h, 40);
    let last_usable = le64(&h, 48);
    if last_usable < first_usable || first_usable > last_lba || last_usable > last_lba {
        return Ok(None);
    }
    // The header itself must lie outside the area partitions may use.
    if first_usable < lba && lba < last_usable {
        return Ok(None);
    }
    let entries_lba = le64(&h, 72);
    let count = le32(&h, 80);
    let entry_size = le32(&h, 84);
    let array_len = u64::from(count) * u64::from(entry_size);
    if array_len == 0 || entry_size != GPT_ENTRY_SIZE || array_len > MAX_ENTRY_ARRAY {
        return Ok(None);
    }
    let Some(off) = entries_lba.checked_mul(ssz) else {
        return Ok(None);
    };
    let Some(entries) = disk.read(off, array_len as usize)? else {
        return Ok(None);
    };
    if stagehand_common::crc32::hash(&entries) != le32(&h, 88) {
        return Ok(None);
    }
    Ok(Some((
        Header {
            first_usable,
            last_usable,
        },
        entries,
    )))
}

/// Decode the 36 UTF-16LE code units of a partition name up to the first NUL;
/// unpaired surrogates become U+FFFD. Trailing whitespace is dropped like libblkid's
/// `blkid_rtrim_whitespace`, so the name equals udev's `ID_PART_ENTRY_NAME`.
fn utf16le_name(raw: &[u8]) -> String {
    let units: Vec<u16> = raw
        .as_chunks::<2>()
        .0
        .iter()
        .map(|&pair| u16::from_le_bytes(pair))
        .take_while(|&u| u != 0)
        .collect();
    let mut name: String = char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    while name.as_bytes().last().is_some_and(|&b| is_c_space(b)) {
        name.pop();
    }
    name
}

/// The MBR ("dos") partition table of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MbrTable {
    /// The 32-bit disk signature at offset 440; 0 means "none", and then partitions
    /// have no PARTUUID.
    pub disk_id: u32,
    /// Primary partitions only (numbers 1–4).
    pub partitions: Vec<MbrPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MbrPartition {
    /// 1–4, the kernel's partition number. Empty slots keep their number.
    pub number: u32,
    /// `xxxxxxxx-NN` from the disk signature, as blkid and the kernel print it; `None`
    /// when the disk signature is 0.
    pub part_uuid: Option<String>,
    /// The system-id byte (0x83 Linux, 0x82 swap, 0xEF EFI, 0x05/0x0F/0x85 extended).
    pub part_type: u8,
    pub bootable: bool,
    /// Start and length in the disk's logical sectors, as stored.
    pub first_lba: u64,
    pub sectors: u64,
}

/// The `PARTUUID` of MBR partition `number` on a disk with signature `disk_id`:
/// `%08x-%02x`, lowercase, as both libblkid and the kernel's `root=PARTUUID=` use.
pub fn mbr_partuuid(disk_id: u32, number: u32) -> String {
    format!("{disk_id:08x}-{number:02x}")
}

/// Read an MBR partition table. Only the four primary slots are returned: logical
/// partitions (5+) would need the extended-partition chain walked, which NixOS-style
/// systems do not use for anything stage 1 mounts.
///
/// `Ok(None)` when sector 0 is no MBR by libblkid's rules: no 0x55AA, an AIX label, a
/// FAT boot sector (partitionless FAT media), a boot flag other than 0/0x80, or a
/// protective 0xEE entry (that disk is GPT).
pub fn probe_mbr<R: Read + Seek>(dev: &mut R) -> Result<Option<MbrTable>, ProbeError> {
    let disk = Disk::open(dev, 512)?;
    let s0 = disk.head();
    if s0.len() < 512 || !has_magic(s0, 510, b"\x55\xAA") {
        return Ok(None);
    }
    if has_magic(s0, 0, b"\xC9\xC2\xD4\xC1") || fat_boot_sector(s0).is_some() {
        return Ok(None);
    }
    let slots: Vec<&[u8]> = (0..4).map(|i| bytes(s0, 0x1BE + 16 * i, 16)).collect();
    if slots
        .iter()
        .any(|p| !matches!(byte(p, 0), 0x00 | 0x80) || byte(p, 4) == 0xEE)
    {
        return Ok(None);
    }
    let disk_id = le32(s0, 440);
    let mut partitions = Vec::new();
    for (i, p) in slots.iter().enumerate() {
        let number = i as u32 + 1;
        let sectors = u64::from(le32(p, 12));
        if sectors == 0 {
            continue;
        }
        partitions.push(MbrPartition {
            number,
            part_uuid: (disk_id != 0).then(|| mbr_partuuid(disk_id, number)),
            part_type: byte(p, 4),
            bootable: byte(p, 0) == 0x80,
            first_lba: u64::from(le32(p, 8)),
            sectors,
        });
    }
    Ok(Some(MbrTable {
        disk_id,
        partitions,
    }))
}
