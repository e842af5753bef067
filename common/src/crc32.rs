//! CRC-32 (IEEE 802.3, as zlib and GPT use it): the envelope's checksum and the GPT
//! header's.
//!
//! One 1 KiB table, built at compile time, one byte per step. `crc32fast` does the same
//! job faster with SIMD and slicing-by-16 tables, but those are 20 KiB of every boot binary
//! for files of a few KiB (the stage-1 config, a GPT header and its entries) and an
//! activation plan that this checks at some hundreds of MB/s anyway.

/// The reflected IEEE polynomial.
const POLY: u32 = 0xEDB8_8320;

const TABLE: [u32; 256] = reflected_table(POLY);

/// The byte-at-a-time lookup table of a reflected CRC-32 with polynomial `poly` (also
/// CRC-32C's, `0x82F6_3B78`, which the ext4 probe uses).
#[expect(
    clippy::indexing_slicing,
    reason = "evaluated at compile time: an index out of range fails the build"
)]
pub const fn reflected_table(poly: u32) -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { poly ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// The CRC-32 of `bytes`.
pub fn hash(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |c, &b| {
        // A u8 always indexes the 256-entry table; `get` only satisfies the lint (and the
        // optimiser removes the check).
        TABLE.get(usize::from(c as u8 ^ b)).copied().unwrap_or(0) ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The check value of CRC-32/ISO-HDLC, and zlib's crc32 of the empty string.
        assert_eq!(hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(hash(b""), 0);
        assert_eq!(
            hash(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn agrees_with_crc32fast() {
        // Lengths around crc32fast's block sizes, bytes from a simple generator.
        let mut x = 0x1234_5678u32;
        let data: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for len in [
            0, 1, 3, 15, 16, 17, 63, 64, 65, 127, 128, 129, 1000, 4096, 5000,
        ] {
            assert_eq!(hash(&data[..len]), crc32fast::hash(&data[..len]), "{len}");
        }
    }
}
