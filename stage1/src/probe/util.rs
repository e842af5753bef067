//! Small helpers shared by the probers: fixed-offset integer reads that cannot panic,
//! label and UUID formatting the way libblkid produces them, and CRC-32C.

/// The `N` bytes at `off`, or `None` when the buffer is too short (or `off` is past it).
pub(crate) fn array<const N: usize>(buf: &[u8], off: usize) -> Option<[u8; N]> {
    buf.get(off..)?.first_chunk::<N>().copied()
}

/// Little-endian u16 at `off`, or 0 when the buffer is too short. Callers only read
/// offsets inside buffers whose length they already checked; the fallback keeps a
/// logic slip from turning into a panic in PID 1.
pub(crate) fn le16(buf: &[u8], off: usize) -> u16 {
    array(buf, off).map_or(0, u16::from_le_bytes)
}

pub(crate) fn le32(buf: &[u8], off: usize) -> u32 {
    array(buf, off).map_or(0, u32::from_le_bytes)
}

pub(crate) fn le64(buf: &[u8], off: usize) -> u64 {
    array(buf, off).map_or(0, u64::from_le_bytes)
}

pub(crate) fn be16(buf: &[u8], off: usize) -> u16 {
    array(buf, off).map_or(0, u16::from_be_bytes)
}

pub(crate) fn be32(buf: &[u8], off: usize) -> u32 {
    array(buf, off).map_or(0, u32::from_be_bytes)
}

pub(crate) fn be64(buf: &[u8], off: usize) -> u64 {
    array(buf, off).map_or(0, u64::from_be_bytes)
}

pub(crate) fn byte(buf: &[u8], off: usize) -> u8 {
    buf.get(off).copied().unwrap_or(0)
}

/// `len` bytes at `off`, or an empty slice when out of range (see `le16`).
pub(crate) fn bytes(buf: &[u8], off: usize, len: usize) -> &[u8] {
    buf.get(off..)
        .and_then(|rest| rest.get(..len))
        .unwrap_or(&[])
}

/// True when `buf` holds `magic` at `off`.
pub(crate) fn has_magic(buf: &[u8], off: usize, magic: &[u8]) -> bool {
    buf.get(off..).and_then(|rest| rest.get(..magic.len())) == Some(magic)
}

/// A label field as libblkid's `blkid_probe_set_label` turns it into `LABEL=`: the bytes
/// up to the first NUL, trailing whitespace (C `isspace`) removed, nothing when empty.
/// Labels are raw bytes on disk (FAT uses an OEM code page); bytes that are not UTF-8
/// become U+FFFD, which only matters for labels nobody could type in an fstab anyway.
pub(crate) fn label(field: &[u8]) -> Option<String> {
    let mut raw = field.split(|&b| b == 0).next().unwrap_or(field);
    while let Some((&last, rest)) = raw.split_last() {
        if is_c_space(last) {
            raw = rest;
        } else {
            break;
        }
    }
    if raw.is_empty() {
        None
    } else {
        Some(String::from_utf8_lossy(raw).into_owned())
    }
}

/// C `isspace` in the "C" locale, which is what libblkid's trimming uses.
pub(crate) fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// A 16-byte UUID stored as a plain byte array (ext, btrfs, xfs, swap, erofs), printed
/// as `blkid_unparse_uuid` does: lowercase, dashed 8-4-4-4-12. An all-zero UUID means
/// "none" to libblkid, so it yields `None` as well.
pub(crate) fn uuid_bytes(raw: &[u8]) -> Option<String> {
    if raw.len() != 16 || raw.iter().all(|&b| b == 0) {
        return None;
    }
    Some(dashed(raw))
}

/// A GPT GUID: the first three fields are little-endian on disk (the EFI layout), the
/// last two are byte strings. The printed form is the usual big-endian text.
pub(crate) fn guid_mixed_endian(raw: &[u8]) -> String {
    let Ok([a0, a1, a2, a3, b0, b1, c0, c1, rest @ ..]) = <[u8; 16]>::try_from(raw) else {
        return String::new();
    };
    let [d0, d1, d2, d3, d4, d5, d6, d7] = rest;
    dashed(&[
        a3, a2, a1, a0, b1, b0, c1, c0, d0, d1, d2, d3, d4, d5, d6, d7,
    ])
}

fn dashed(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) register update without the
/// initial or final inversion; each filesystem applies those differently, so the caller
/// does. `stagehand_common::crc32` is the IEEE polynomial only, and a 1 KiB table is cheaper
/// than a new dependency.
pub(crate) fn crc32c_update(crc: u32, data: &[u8]) -> u32 {
    data.iter().fold(crc, |crc, &b| crc32c_byte(crc, b))
}

/// Like `crc32c_update`, but the bytes `skip_off..skip_off + skip_len` count as zeros:
/// superblocks store their own checksum inside the checksummed range.
pub(crate) fn crc32c_update_skipping(
    crc: u32,
    data: &[u8],
    skip_off: usize,
    skip_len: usize,
) -> u32 {
    let skipped = skip_off..skip_off.saturating_add(skip_len);
    data.iter().enumerate().fold(crc, |crc, (i, &b)| {
        crc32c_byte(crc, if skipped.contains(&i) { 0 } else { b })
    })
}

fn crc32c_byte(crc: u32, b: u8) -> u32 {
    // A u8 always indexes the 256-entry table; `get` only satisfies the lint (and the
    // optimiser removes the check).
    let entry = CRC32C_TABLE.get(usize::from(crc as u8 ^ b)).copied();
    entry.unwrap_or(0) ^ (crc >> 8)
}

const CRC32C_TABLE: [u32; 256] = stagehand_common::crc32::reflected_table(0x82F6_3B78);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C over "123456789".
        assert_eq!(!crc32c_update(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn crc32c_skip_counts_zeros() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let zeroed = [1u8, 2, 0, 0, 0, 6, 7, 8];
        assert_eq!(
            crc32c_update_skipping(!0, &data, 2, 3),
            crc32c_update(!0, &zeroed)
        );
    }

    #[test]
    fn label_trims_like_libblkid() {
        assert_eq!(label(b"root\0garbage"), Some("root".into()));
        assert_eq!(label(b"EFI        "), Some("EFI".into()));
        assert_eq!(label(b"  lead"), Some("  lead".into()));
        assert_eq!(label(b"\0abc"), None);
        assert_eq!(label(b"   "), None);
    }

    #[test]
    fn uuid_formats() {
        let raw: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            uuid_bytes(&raw).as_deref(),
            Some("00010203-0405-0607-0809-0a0b0c0d0e0f")
        );
        assert_eq!(uuid_bytes(&[0u8; 16]), None);
        assert_eq!(
            guid_mixed_endian(&raw),
            "03020100-0504-0706-0809-0a0b0c0d0e0f"
        );
    }
}
