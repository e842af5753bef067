//! LUKS1 and LUKS2 headers as cryptsetup writes them, and opening a keyslot with a
//! passphrase (or keyfile contents) to recover the volume key.
//!
//! Formats: cryptsetup's `docs/on-disk-format.pdf` (LUKS1: a 592-byte big-endian
//! header, eight keyslots) and `docs/on-disk-format-luks2.pdf` (LUKS2: two copies of a
//! 4 KiB binary header, each followed by its JSON metadata area, the whole copy
//! checksummed with SHA-256). A keyslot holds the volume key anti-forensically split
//! (`stripes` copies), encrypted with a key derived from the passphrase; a digest
//! (PBKDF2 of the volume key) tells the right key from a wrong one.
//!
//! Everything here reads through `Read + Seek`, so an image file made by the real
//! `cryptsetup` on the host is tested exactly as the disk is read at boot.

use std::io::{Read, Seek, SeekFrom};

use zeroize::Zeroizing;

use super::crypt::{self, CipherSpec, Hash, Secret};
use super::json::{self, Value};
use crate::probe::util::{be16, be32, be64};

const LUKS_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
const LUKS2_SECONDARY_MAGIC: &[u8; 6] = b"SKUL\xba\xbe";
/// Where cryptsetup may put the second LUKS2 header copy: right after the first, whose
/// size is one of these (LUKS2 spec, "hdr_size").
const LUKS2_COPY_OFFSETS: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];
/// The largest keyslot area read into memory (cryptsetup's maximum keyslots area is
/// 128 MiB for all slots; one slot of a 512-bit key with 4000 stripes is 250 KiB).
const MAX_KEYSLOT_AREA: u64 = 64 << 20;
/// cryptsetup's maximum Argon2 memory cost, in KiB (4 GiB).
const MAX_ARGON2_KIB: u32 = 4 * 1024 * 1024;

/// How a keyslot's key is derived from the passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kdf {
    Pbkdf2 {
        hash: Hash,
        iterations: u32,
        salt: Vec<u8>,
    },
    Argon2 {
        id: bool,
        time: u32,
        memory_kib: u32,
        lanes: u32,
        salt: Vec<u8>,
    },
}

impl Kdf {
    fn derive(&self, passphrase: &[u8], len: usize) -> Result<Secret, String> {
        match self {
            Self::Pbkdf2 {
                hash,
                iterations,
                salt,
            } => Ok(crypt::pbkdf2(*hash, passphrase, salt, *iterations, len)),
            Self::Argon2 {
                id,
                time,
                memory_kib,
                lanes,
                salt,
            } => crypt::argon2(*id, passphrase, salt, *time, *memory_kib, *lanes, len),
        }
    }

    /// For messages: `argon2id` / `pbkdf2-sha256`.
    pub fn name(&self) -> String {
        match self {
            Self::Pbkdf2 { hash, .. } => format!("pbkdf2-{hash:?}").to_lowercase(),
            Self::Argon2 { id: true, .. } => "argon2id".into(),
            Self::Argon2 { id: false, .. } => "argon2i".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyslot {
    /// `0`…`31` (LUKS2's JSON key; LUKS1's slot number).
    pub id: String,
    /// The volume key's length in bytes.
    pub key_size: usize,
    pub kdf: Kdf,
    /// Byte offset of the encrypted AF-split key on the (header) device, and its length.
    pub area_offset: u64,
    pub area_size: u64,
    pub area_cipher: CipherSpec,
    /// The key the area is encrypted with is `area_key_size` bytes of KDF output.
    pub area_key_size: usize,
    pub stripes: usize,
    pub af_hash: Hash,
}

/// How to recognise the right volume key: PBKDF2 of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDigest {
    pub hash: Hash,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub digest: Vec<u8>,
    /// The keyslots whose key this digest checks (LUKS1: all).
    pub keyslots: Vec<String>,
}

/// The encrypted data: what the dm-crypt table needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset of the data on the data device.
    pub offset: u64,
    /// Length in bytes, or `None` for "to the end of the device".
    pub size: Option<u64>,
    /// The first sector's IV (`iv_tweak`), in 512-byte sectors.
    pub iv_tweak: u64,
    /// dm-crypt's cipher spec, `aes-xts-plain64`.
    pub cipher: String,
    /// Encryption sector size in bytes (512 or 4096).
    pub sector_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 1 or 2.
    pub version: u16,
    pub uuid: String,
    pub label: Option<String>,
    /// Tried in this order (LUKS2 priority "high" first; "ignore" left out).
    pub keyslots: Vec<Keyslot>,
    pub digests: Vec<KeyDigest>,
    pub segment: Segment,
    /// Activation flags stored in the header (LUKS2 `config.flags`: `allow-discards`,
    /// `no-read-workqueue`, `no-write-workqueue`, …).
    pub flags: Vec<String>,
}

/// Why a header cannot be used. `Display` says what to do.
#[derive(Debug)]
pub enum LuksError {
    Io(std::io::Error),
    NotLuks,
    Damaged(String),
    Unsupported(String),
}

impl std::fmt::Display for LuksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "cannot read the LUKS header: {e}"),
            Self::NotLuks => write!(
                f,
                "no LUKS header (check the device, or the header device when the header is detached)"
            ),
            Self::Damaged(why) => write!(
                f,
                "the LUKS header is damaged: {why}; restore it from a backup \
                 (`cryptsetup luksHeaderRestore`)"
            ),
            Self::Unsupported(why) => write!(f, "{why}"),
        }
    }
}

fn damaged<T>(why: impl Into<String>) -> Result<T, LuksError> {
    Err(LuksError::Damaged(why.into()))
}

fn read_at<R: Read + Seek>(dev: &mut R, off: u64, len: usize) -> Result<Vec<u8>, LuksError> {
    dev.seek(SeekFrom::Start(off)).map_err(LuksError::Io)?;
    let mut buf = vec![0u8; len];
    dev.read_exact(&mut buf).map_err(LuksError::Io)?;
    Ok(buf)
}

/// A NUL-terminated text field.
fn cstr(b: &[u8], off: usize, len: usize) -> String {
    let field = b.get(off..off + len).unwrap_or(&[]);
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    String::from_utf8_lossy(field.get(..end).unwrap_or(&[])).into_owned()
}

/// Does `head` (the device's first bytes) start with a LUKS header? For the prober.
pub fn is_luks(head: &[u8]) -> bool {
    head.get(..6) == Some(LUKS_MAGIC) && matches!(be16(head, 6), 1 | 2)
}

/// Read and check the LUKS header at the start of `dev`.
pub fn read_header<R: Read + Seek>(dev: &mut R) -> Result<Header, LuksError> {
    let first = match read_at(dev, 0, 4096) {
        Ok(b) => b,
        Err(LuksError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(LuksError::NotLuks)
        }
        Err(e) => return Err(e),
    };
    let magic = first.get(..6).unwrap_or(&[]);
    match (magic == LUKS_MAGIC, be16(&first, 6)) {
        (true, 1) => luks1(&first),
        (true, 2) => luks2(dev),
        (true, v) => Err(LuksError::Unsupported(format!(
            "LUKS version {v} is not supported (1 and 2 are)"
        ))),
        // The primary LUKS2 header may be the damaged part: look for the second copy.
        (false, _) => luks2(dev),
    }
}

fn luks1(h: &[u8]) -> Result<Header, LuksError> {
    let cipher_name = cstr(h, 8, 32);
    let cipher_mode = cstr(h, 40, 32);
    let hash = Hash::parse(&cstr(h, 72, 32)).map_err(LuksError::Unsupported)?;
    let payload_offset = u64::from(be32(h, 104));
    let key_bytes = be32(h, 108) as usize;
    let cipher = format!("{cipher_name}-{cipher_mode}");
    let area_cipher = CipherSpec::parse(&cipher).map_err(LuksError::Unsupported)?;
    if !(16..=64).contains(&key_bytes) {
        return damaged(format!("LUKS1 key size {key_bytes} bytes"));
    }
    let digest = KeyDigest {
        hash,
        iterations: be32(h, 164),
        salt: h.get(132..164).unwrap_or(&[]).to_vec(),
        digest: h.get(112..132).unwrap_or(&[]).to_vec(),
        keyslots: (0..8).map(|i: u32| i.to_string()).collect(),
    };
    if digest.iterations == 0 {
        return damaged("LUKS1 master-key digest with 0 iterations");
    }
    let mut keyslots = Vec::new();
    for i in 0..8usize {
        let k = 208 + i * 48;
        match be32(h, k) {
            0x00AC_71F3 => {}
            0x0000_DEAD => continue,
            other => return damaged(format!("LUKS1 keyslot {i} has state {other:#x}")),
        }
        let iterations = be32(h, k + 4);
        // active, iterations, salt[32], key material offset (sectors), stripes.
        let stripes = be32(h, k + 44) as usize;
        let offset = u64::from(be32(h, k + 40)) * 512;
        if iterations == 0 || stripes == 0 {
            return damaged(format!("LUKS1 keyslot {i} with 0 iterations or stripes"));
        }
        let area_size = (key_bytes as u64 * stripes as u64).div_ceil(512) * 512;
        keyslots.push(Keyslot {
            id: i.to_string(),
            key_size: key_bytes,
            kdf: Kdf::Pbkdf2 {
                hash,
                iterations,
                salt: h.get(k + 8..k + 40).unwrap_or(&[]).to_vec(),
            },
            area_offset: offset,
            area_size,
            area_cipher,
            area_key_size: key_bytes,
            stripes,
            af_hash: hash,
        });
    }
    Ok(Header {
        version: 1,
        uuid: cstr(h, 168, 40),
        label: None,
        keyslots,
        digests: vec![digest],
        segment: Segment {
            offset: payload_offset * 512,
            size: None,
            iv_tweak: 0,
            cipher,
            sector_size: 512,
        },
        flags: Vec::new(),
    })
}

/// One LUKS2 header copy (binary header + JSON area) at `off`, checked.
fn luks2_copy<R: Read + Seek>(
    dev: &mut R,
    off: u64,
    magic: &[u8; 6],
) -> Result<(u64, Vec<u8>, Vec<u8>), String> {
    let bin = read_at(dev, off, 4096).map_err(|e| e.to_string())?;
    if bin.get(..6) != Some(magic) || be16(&bin, 6) != 2 {
        return Err(format!("no LUKS2 header at offset {off}"));
    }
    let hdr_size = be64(&bin, 8);
    if !LUKS2_COPY_OFFSETS.contains(&hdr_size) {
        return Err(format!("header size {hdr_size} is not a LUKS2 size"));
    }
    if be64(&bin, 256) != off {
        return Err(format!("header at {off} says it is at {}", be64(&bin, 256)));
    }
    let csum_alg = cstr(&bin, 72, 32);
    if csum_alg != "sha256" {
        return Err(format!(
            "checksum algorithm {csum_alg:?} (only sha256 is supported)"
        ));
    }
    let json_len = (hdr_size - 4096) as usize;
    let json_area = read_at(dev, off + 4096, json_len).map_err(|e| e.to_string())?;
    let mut zeroed = bin.clone();
    if let Some(csum) = zeroed.get_mut(448..512) {
        csum.fill(0);
    }
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(&zeroed);
    h.update(&json_area);
    let sum = h.finalize();
    if bin.get(448..480) != Some(&sum[..]) {
        return Err(format!("checksum mismatch in the header copy at {off}"));
    }
    Ok((be64(&bin, 16), bin, json_area))
}

fn luks2<R: Read + Seek>(dev: &mut R) -> Result<Header, LuksError> {
    let primary = luks2_copy(dev, 0, LUKS_MAGIC);
    let mut secondary = Err(String::from("no second LUKS2 header copy"));
    let start = primary.as_ref().map_or(0, |(_, bin, _)| be64(bin, 8));
    for off in LUKS2_COPY_OFFSETS {
        if start != 0 && off != start {
            continue;
        }
        secondary = luks2_copy(dev, off, LUKS2_SECONDARY_MAGIC);
        if secondary.is_ok() {
            break;
        }
    }
    let (bin, json_area) = match (primary, secondary) {
        (Ok(p), Ok(s)) => {
            // The copy with the higher sequence id is the newer one.
            if s.0 > p.0 {
                (s.1, s.2)
            } else {
                (p.1, p.2)
            }
        }
        (Ok(p), Err(_)) => (p.1, p.2),
        (Err(_), Ok(s)) => {
            log::warn!("the primary LUKS2 header is damaged; using the second copy");
            (s.1, s.2)
        }
        (Err(p), Err(s)) => {
            if p.starts_with("no LUKS2 header") && s.starts_with("no ") {
                return Err(LuksError::NotLuks);
            }
            return damaged(format!("{p}; {s}"));
        }
    };
    let meta = json::parse(&json_area).map_err(LuksError::Damaged)?;
    parse_luks2_json(&bin, &meta)
}

fn field<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a Value, LuksError> {
    v.get(key)
        .ok_or_else(|| LuksError::Damaged(format!("{what} has no {key:?}")))
}

fn str_field<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str, LuksError> {
    field(v, key, what)?
        .as_str()
        .ok_or_else(|| LuksError::Damaged(format!("{what}'s {key:?} is not a string")))
}

fn u64_field(v: &Value, key: &str, what: &str) -> Result<u64, LuksError> {
    field(v, key, what)?
        .as_u64()
        .ok_or_else(|| LuksError::Damaged(format!("{what}'s {key:?} is not a number")))
}

fn u32_field(v: &Value, key: &str, what: &str) -> Result<u32, LuksError> {
    u32::try_from(u64_field(v, key, what)?)
        .map_err(|_| LuksError::Damaged(format!("{what}'s {key:?} is too large")))
}

fn b64_field(v: &Value, key: &str, what: &str) -> Result<Vec<u8>, LuksError> {
    crypt::base64_decode(str_field(v, key, what)?)
        .map_err(|e| LuksError::Damaged(format!("{what}'s {key}: {e}")))
}

/// One `keyslots` member of the LUKS2 metadata with its priority, or `None` for a slot
/// that holds no passphrase key (re-encryption, future types) or must not be tried
/// (priority 0).
fn parse_keyslot(id: &str, ks: &Value) -> Result<Option<(u64, Keyslot)>, LuksError> {
    let what = format!("keyslot {id}");
    if str_field(ks, "type", &what)? != "luks2" {
        // Re-encryption slots and future types hold no passphrase key.
        return Ok(None);
    }
    let priority = ks.get("priority").and_then(Value::as_u64).unwrap_or(1);
    if priority == 0 {
        return Ok(None);
    }
    let af = field(ks, "af", &what)?;
    if str_field(af, "type", &what)? != "luks1" {
        return Err(LuksError::Unsupported(format!(
            "{what}: anti-forensic type {:?} is not supported",
            str_field(af, "type", &what)?
        )));
    }
    let area = field(ks, "area", &what)?;
    if str_field(area, "type", &what)? != "raw" {
        return Err(LuksError::Unsupported(format!(
            "{what}: area type {:?} is not supported",
            str_field(area, "type", &what)?
        )));
    }
    let kdf_v = field(ks, "kdf", &what)?;
    let kdf = match str_field(kdf_v, "type", &what)? {
        "pbkdf2" => Kdf::Pbkdf2 {
            hash: Hash::parse(str_field(kdf_v, "hash", &what)?).map_err(LuksError::Unsupported)?,
            iterations: u32_field(kdf_v, "iterations", &what)?,
            salt: b64_field(kdf_v, "salt", &what)?,
        },
        t @ ("argon2i" | "argon2id") => Kdf::Argon2 {
            id: t == "argon2id",
            time: u32_field(kdf_v, "time", &what)?,
            memory_kib: u32_field(kdf_v, "memory", &what)?,
            lanes: u32_field(kdf_v, "cpus", &what)?,
            salt: b64_field(kdf_v, "salt", &what)?,
        },
        other => {
            return Err(LuksError::Unsupported(format!(
                "{what}: key derivation {other:?} is not supported (pbkdf2, argon2i, argon2id are)"
            )))
        }
    };
    // cryptsetup's own limits (4 GiB of Argon2 memory, 16 lanes): a
    // header asking for more would exhaust stage 1's memory rather than open anything.
    if let Kdf::Argon2 {
        memory_kib, lanes, ..
    } = &kdf
    {
        if *memory_kib > MAX_ARGON2_KIB || *lanes == 0 || *lanes > 16 {
            return damaged(format!(
                "{what}: Argon2 with {memory_kib} KiB and {lanes} lanes (cryptsetup's \
                 limits are 4 GiB and 16 lanes)"
            ));
        }
    }
    let key_size = usize::try_from(u64_field(ks, "key_size", &what)?).unwrap_or(0);
    let area_key_size = usize::try_from(u64_field(area, "key_size", &what)?).unwrap_or(0);
    let stripes = usize::try_from(u64_field(af, "stripes", &what)?).unwrap_or(0);
    let area_size = u64_field(area, "size", &what)?;
    if !(1..=512).contains(&key_size)
        || !(1..=512).contains(&area_key_size)
        || !(1..=65536).contains(&stripes)
        || area_size > MAX_KEYSLOT_AREA
        || (key_size * stripes) as u64 > area_size
    {
        return damaged(format!(
            "{what}: key size {key_size}, {stripes} stripes in an area of {area_size} bytes"
        ));
    }
    let slot = Keyslot {
        id: id.to_owned(),
        key_size,
        kdf,
        area_offset: u64_field(area, "offset", &what)?,
        area_size,
        area_cipher: CipherSpec::parse(str_field(area, "encryption", &what)?)
            .map_err(LuksError::Unsupported)?,
        area_key_size,
        stripes,
        af_hash: Hash::parse(str_field(af, "hash", &what)?).map_err(LuksError::Unsupported)?,
    };
    Ok(Some((priority, slot)))
}

/// The `pbkdf2` digests that check a volume key, with the keyslots each covers.
fn parse_digests(meta: &Value) -> Result<Vec<KeyDigest>, LuksError> {
    let mut digests = Vec::new();
    for (id, d) in field(meta, "digests", "the LUKS2 metadata")?.members() {
        let what = format!("digest {id}");
        if str_field(d, "type", &what)? != "pbkdf2" {
            continue;
        }
        let keyslots = field(d, "keyslots", &what)?
            .as_array()
            .unwrap_or(&[])
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        digests.push(KeyDigest {
            hash: Hash::parse(str_field(d, "hash", &what)?).map_err(LuksError::Unsupported)?,
            iterations: u32_field(d, "iterations", &what)?,
            salt: b64_field(d, "salt", &what)?,
            digest: b64_field(d, "digest", &what)?,
            keyslots,
        });
    }
    Ok(digests)
}

/// The LUKS2 JSON metadata: keyslots, segments, digests, config.
pub fn parse_luks2_json(bin: &[u8], meta: &Value) -> Result<Header, LuksError> {
    if let Some(req) = meta
        .get("config")
        .and_then(|c| c.get("requirements"))
        .and_then(|r| r.get("mandatory"))
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
    {
        let names: Vec<&str> = req.iter().filter_map(Value::as_str).collect();
        return Err(LuksError::Unsupported(format!(
            "the LUKS2 header requires {} (an interrupted re-encryption or a newer format); \
             finish it with `cryptsetup` from a rescue system",
            names.join(", ")
        )));
    }
    let mut ranked = Vec::new();
    for (id, ks) in field(meta, "keyslots", "the LUKS2 metadata")?.members() {
        if let Some((priority, slot)) = parse_keyslot(id, ks)? {
            ranked.push((std::cmp::Reverse(priority), slot));
        }
    }
    ranked.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
    let keyslots = ranked.into_iter().map(|(_, s)| s).collect();

    let digests = parse_digests(meta)?;

    // The data segment: the one crypt segment (several only exist mid-reencryption,
    // which the requirements check above refused).
    let segments = field(meta, "segments", "the LUKS2 metadata")?.members();
    let crypt_segments: Vec<&(String, Value)> = segments
        .iter()
        .filter(|(_, s)| s.get("type").and_then(Value::as_str) == Some("crypt"))
        .collect();
    let [(sid, seg)] = crypt_segments.as_slice() else {
        return Err(LuksError::Unsupported(format!(
            "{} crypt segments in the LUKS2 header (one is supported)",
            crypt_segments.len()
        )));
    };
    let what = format!("segment {sid}");
    let size = match str_field(seg, "size", &what)? {
        "dynamic" => None,
        _ => Some(u64_field(seg, "size", &what)?),
    };
    let sector_size = u32_field(seg, "sector_size", &what)?;
    if !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
        return damaged(format!("{what}: sector size {sector_size}"));
    }
    let segment = Segment {
        offset: u64_field(seg, "offset", &what)?,
        size,
        iv_tweak: u64_field(seg, "iv_tweak", &what)?,
        cipher: str_field(seg, "encryption", &what)?.to_owned(),
        sector_size,
    };
    if segment.cipher.contains(' ') || segment.cipher.is_empty() {
        return damaged(format!("{what}: cipher {:?}", segment.cipher));
    }
    let flags = meta
        .get("config")
        .and_then(|c| c.get("flags"))
        .and_then(Value::as_array)
        .unwrap_or(&[])
        .iter()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    Ok(Header {
        version: 2,
        uuid: cstr(bin, 168, 40),
        label: Some(cstr(bin, 24, 48)).filter(|l| !l.is_empty()),
        keyslots,
        digests,
        segment,
        flags,
    })
}

impl Header {
    /// Try `passphrase` on every keyslot. `Ok(Some(key))`: the volume key; `Ok(None)`: no
    /// keyslot opens with it (a wrong passphrase); `Err`: the header device could not be
    /// read or a keyslot is unusable.
    pub fn unlock<R: Read + Seek>(
        &self,
        dev: &mut R,
        passphrase: &[u8],
    ) -> Result<Option<Secret>, LuksError> {
        if self.keyslots.is_empty() {
            return Err(LuksError::Unsupported(
                "the LUKS header has no usable keyslot (all are empty)".into(),
            ));
        }
        for slot in &self.keyslots {
            if let Some(key) = self.open_slot(dev, slot, passphrase)? {
                log::debug!("keyslot {} ({}) opened", slot.id, slot.kdf.name());
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    fn open_slot<R: Read + Seek>(
        &self,
        dev: &mut R,
        slot: &Keyslot,
        passphrase: &[u8],
    ) -> Result<Option<Secret>, LuksError> {
        let digests: Vec<&KeyDigest> = self
            .digests
            .iter()
            .filter(|d| d.keyslots.contains(&slot.id))
            .collect();
        if digests.is_empty() {
            return damaged(format!("keyslot {} has no digest", slot.id));
        }
        let area_key = slot
            .kdf
            .derive(passphrase, slot.area_key_size)
            .map_err(LuksError::Unsupported)?;
        let split_len = (slot.key_size * slot.stripes).div_ceil(512) * 512;
        if split_len as u64 > slot.area_size.max(split_len as u64) {
            return damaged(format!("keyslot {} area too small", slot.id));
        }
        let mut split = Zeroizing::new(read_at(dev, slot.area_offset, split_len)?);
        slot.area_cipher
            .decrypt_sectors(&area_key, &mut split)
            .map_err(LuksError::Unsupported)?;
        let key = crypt::af_merge(&split, slot.key_size, slot.stripes, slot.af_hash)
            .map_err(LuksError::Damaged)?;
        for d in digests {
            let check = crypt::pbkdf2(d.hash, &key, &d.salt, d.iterations, d.digest.len());
            if crypt::same(&check, &d.digest) {
                return Ok(Some(key));
            }
        }
        Ok(None)
    }
}
