//! The md v1.x superblock (linux `include/uapi/linux/raid/md_p.h`, `struct
//! mdp_superblock_1`): what stage 1 needs to group members into arrays and decide
//! whether an array can start. Pure: it reads through `Read + Seek`.
//!
//! Where it sits: v1.1 at the start of the device, v1.2 at 4 KiB, v1.0 at the end
//! (`(sectors - 16) & !7`, in 512-byte sectors). Each is checked as the kernel's
//! `super_1_load` checks it before using it: the magic, major version 1, the
//! `super_offset` field equal to where it was read, `max_dev` within the 4 KiB block,
//! and the checksum. One that has the magic but fails a check is an error, not
//! "nothing": a damaged member must be named, not silently left out of its array.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};

/// `MD_SB_MAGIC`, little-endian at offset 0.
pub const MD_SB_MAGIC: u32 = 0xa92b_4efc;
/// Bytes read for one superblock: the 256-byte header and up to 1920 roles.
const SB_LEN: usize = 4096;
/// The fixed part; `dev_roles[]` follows.
const SB_HEADER: usize = 256;
/// `dev_roles` values that are not a slot in the array.
const ROLE_SPARE: u16 = 0xffff;
const ROLE_FAULTY: u16 = 0xfffe;
const ROLE_JOURNAL: u16 = 0xfffd;

/// What this member is in its array, from `dev_roles[dev_number]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Holds slot N (0-based) of the array's data.
    Active(u16),
    Spare,
    Faulty,
    /// A RAID4/5/6 write journal.
    Journal,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Active(n) => write!(f, "active slot {n}"),
            Self::Spare => write!(f, "spare"),
            Self::Faulty => write!(f, "faulty"),
            Self::Journal => write!(f, "journal"),
        }
    }
}

/// One member's superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdSuper {
    /// 0, 1 or 2: where the superblock was found (v1.0 end, v1.1 start, v1.2 at 4 KiB).
    pub minor_version: u8,
    pub array_uuid: [u8; 16],
    /// `set_name`: `homehost:name` as mdadm writes it (or just `name`).
    pub name: String,
    /// RAID level: -1 linear, 0, 1, 4, 5, 6, 10.
    pub level: i32,
    /// How data is laid out on the members. For RAID10: near copies in bits 0-7, far
    /// copies in bits 8-15, bit 16 for the "offset" variant of far.
    pub layout: u32,
    pub raid_disks: u32,
    pub events: u64,
    pub dev_number: u32,
    pub role: Role,
    pub device_uuid: [u8; 16],
    /// Sector where this member's data starts.
    pub data_offset: u64,
}

impl MdSuper {
    /// The array UUID as `mdadm --detail` prints it: `xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx`.
    pub fn uuid_mdadm(&self) -> String {
        let hex: String = self.array_uuid.iter().map(|b| format!("{b:02x}")).collect();
        hex.as_bytes()
            .chunks(8)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// `set_name` without mdadm's `homehost:` prefix: the `/dev/md/NAME` udev makes.
    pub fn short_name(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }

    /// `1.0`, `1.1` or `1.2`, as `/sys/block/mdX/md/metadata_version` takes it.
    pub fn metadata_version(&self) -> String {
        format!("1.{}", self.minor_version)
    }
}

/// Normalise a UUID typed in a config (`1c2b…:…`, dashed, any case) to 32 hex digits.
pub fn normalize_uuid(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| !matches!(c, ':' | '-'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The array UUID as 32 lowercase hex digits (what [`normalize_uuid`] gives).
pub fn uuid_hex(uuid: &[u8; 16]) -> String {
    uuid.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a block with the md magic is not a usable superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MdSbError {
    /// Not major version 1 (0.90 superblocks are not read here).
    Version(u32),
    /// `super_offset` says the block belongs elsewhere (a copy left by a resize).
    Offset { stored: u64, read_at: u64 },
    /// `max_dev` roles would not fit the 4 KiB block.
    MaxDev(u32),
    /// The checksum over header and roles does not match.
    Checksum { stored: u32, computed: u32 },
    /// More data slots than a v1.x role table can describe.
    RaidDisks(u32),
    /// `dev_number` has no entry in `dev_roles`.
    DevNumber { dev_number: u32, max_dev: u32 },
}

impl fmt::Display for MdSbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Version(v) => write!(f, "md superblock major version {v}, not 1"),
            Self::Offset { stored, read_at } => write!(
                f,
                "md superblock found at sector {read_at} says it belongs at sector {stored}"
            ),
            Self::MaxDev(n) => write!(f, "md superblock lists {n} device roles (at most 1920 fit)"),
            Self::RaidDisks(n) => write!(
                f,
                "md superblock says the array has {n} devices (at most 1920 can have a role)"
            ),
            Self::Checksum { stored, computed } => write!(
                f,
                "md superblock checksum {stored:#010x} does not match its contents ({computed:#010x})"
            ),
            Self::DevNumber {
                dev_number,
                max_dev,
            } => write!(
                f,
                "md superblock: this device's number {dev_number} is past the role table ({max_dev})"
            ),
        }
    }
}

/// Parse one 4 KiB block read at sector `read_at` (the position a v1.`minor` superblock
/// lives at). `Ok(None)`: no md magic there.
pub fn parse(block: &[u8], read_at: u64, minor: u8) -> Result<Option<MdSuper>, MdSbError> {
    let le32 = |o: usize| {
        block
            .get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    };
    let le64 = |o: usize| {
        block
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let le16 = |o: usize| {
        block
            .get(o..o + 2)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u16::from_le_bytes)
    };
    let uuid_at = |o: usize| -> [u8; 16] {
        block
            .get(o..o + 16)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 16])
    };
    if block.len() < SB_LEN || le32(0) != MD_SB_MAGIC {
        return Ok(None);
    }
    let major = le32(4);
    if major != 1 {
        return Err(MdSbError::Version(major));
    }
    let max_dev = le32(220);
    if max_dev as usize > (SB_LEN - SB_HEADER) / 2 {
        return Err(MdSbError::MaxDev(max_dev));
    }
    let stored = le32(216);
    let computed = checksum(block, max_dev as usize);
    if stored != computed {
        return Err(MdSbError::Checksum { stored, computed });
    }
    let super_offset = le64(144);
    if super_offset != read_at {
        return Err(MdSbError::Offset {
            stored: super_offset,
            read_at,
        });
    }
    // Every data slot needs a role entry; a larger count is damage (and would make the
    // assembly walk billions of slots).
    let raid_disks = le32(92);
    if raid_disks as usize > (SB_LEN - SB_HEADER) / 2 {
        return Err(MdSbError::RaidDisks(raid_disks));
    }
    let dev_number = le32(160);
    if dev_number >= max_dev {
        return Err(MdSbError::DevNumber {
            dev_number,
            max_dev,
        });
    }
    let role = match le16(SB_HEADER + 2 * dev_number as usize) {
        ROLE_SPARE => Role::Spare,
        ROLE_FAULTY => Role::Faulty,
        ROLE_JOURNAL => Role::Journal,
        n => Role::Active(n),
    };
    let name_raw = block.get(32..64).unwrap_or(&[]);
    let name_end = name_raw
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(name_raw.len());
    let name = String::from_utf8_lossy(name_raw.get(..name_end).unwrap_or(&[])).into_owned();
    Ok(Some(MdSuper {
        minor_version: minor,
        array_uuid: uuid_at(16),
        name,
        level: le32(72) as i32,
        layout: le32(76),
        raid_disks,
        events: le64(200),
        dev_number,
        role,
        device_uuid: uuid_at(168),
        data_offset: le64(128),
    }))
}

/// `calc_sb_1_csum`: the little-endian u32 words of the header and `max_dev` roles, with
/// the checksum field as zero, summed in 64 bits and folded once.
fn checksum(block: &[u8], max_dev: usize) -> u32 {
    let size = SB_HEADER + 2 * max_dev;
    let data = block.get(..size).unwrap_or(block);
    let mut sum: u64 = 0;
    let (words, rest) = data.as_chunks::<4>();
    for (i, w) in words.iter().enumerate() {
        // sb_csum lives at byte 216, word 54.
        if i != 216 / 4 {
            sum += u64::from(u32::from_le_bytes(*w));
        }
    }
    if let [a, b] = rest {
        sum += u64::from(u16::from_le_bytes([*a, *b]));
    }
    ((sum & 0xffff_ffff) + (sum >> 32)) as u32
}

/// Look for a v1.2, v1.1 and v1.0 superblock, in that order (the order mdadm's
/// `load_super1` tries for "any 1.x"). `Ok(None)`: no md member.
pub fn probe<R: Read + Seek>(dev: &mut R) -> Result<Option<MdSuper>, ProbeIoError> {
    let size = dev.seek(SeekFrom::End(0)).map_err(ProbeIoError)?;
    let sectors = size / 512;
    let mut spots = vec![(8u64, 2u8), (0, 1)];
    // The kernel's and mdadm's v1.0 position: 8 KiB before the end, 4 KiB aligned.
    if sectors >= 24 {
        spots.push(((sectors - 16) & !7, 0));
    }
    let mut first_error = None;
    for (sector, minor) in spots {
        if (sector + 8) * 512 > size {
            continue;
        }
        dev.seek(SeekFrom::Start(sector * 512))
            .map_err(ProbeIoError)?;
        let mut block = vec![0u8; SB_LEN];
        dev.read_exact(&mut block).map_err(ProbeIoError)?;
        match parse(&block, sector, minor) {
            Ok(Some(sb)) => return Ok(Some(sb)),
            Ok(None) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(ProbeIoError(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.to_string(),
        ))),
        None => Ok(None),
    }
}

/// Reading the device failed, or a block with the md magic is damaged (the message says
/// which).
#[derive(Debug)]
pub struct ProbeIoError(pub std::io::Error);

impl fmt::Display for ProbeIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
