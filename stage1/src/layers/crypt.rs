//! The cryptography of a LUKS unlock, all of it on the CPU in stage 1: the key-derivation
//! functions (PBKDF2 over SHA-1/SHA-256/SHA-512, Argon2i/Argon2id), the keyslot-area
//! ciphers (AES in XTS or CBC mode with `plain64`, `plain` or `essiv:sha256` IVs), the
//! anti-forensic merge (cryptsetup's `lib/utils_crypt` AF splitter, `af.c`) and the
//! base64 of the LUKS2 JSON. The bulk data is decrypted by the kernel's dm-crypt; only
//! the keyslot (a few hundred KiB at most) passes through here.
//!
//! Every buffer holding key material is a [`Secret`]: wiped when dropped.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use sha2::Digest;
use zeroize::Zeroizing;

/// Bytes that hold key material: zeroed when dropped, never printed.
pub type Secret = Zeroizing<Vec<u8>>;

/// A hash LUKS names for PBKDF2 and the AF splitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha256,
    Sha512,
}

impl Hash {
    /// The hash named `name` (`sha256`, as LUKS headers spell it).
    pub fn parse(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Ok(Self::Sha1),
            "sha256" => Ok(Self::Sha256),
            "sha512" => Ok(Self::Sha512),
            other => Err(format!(
                "hash {other:?} is not supported (sha1, sha256, sha512 are); re-add the key with \
                 `cryptsetup luksChangeKey --hash sha256`"
            )),
        }
    }

    fn len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// The hash of the concatenation of `parts`.
    fn digest(self, parts: &[&[u8]]) -> Secret {
        fn run<D: Digest>(parts: &[&[u8]]) -> Secret {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            Zeroizing::new(d.finalize().to_vec())
        }
        match self {
            Self::Sha1 => run::<sha1::Sha1>(parts),
            Self::Sha256 => run::<sha2::Sha256>(parts),
            Self::Sha512 => run::<sha2::Sha512>(parts),
        }
    }
}

/// PBKDF2-HMAC of `password` and `salt`, `out_len` bytes.
pub fn pbkdf2(hash: Hash, password: &[u8], salt: &[u8], iterations: u32, out_len: usize) -> Secret {
    let mut out = Zeroizing::new(vec![0u8; out_len]);
    match hash {
        Hash::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, &mut out),
        Hash::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut out),
        Hash::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, &mut out),
    }
    out
}

/// Argon2 (`id`: Argon2id, else Argon2i), version 0x13 as cryptsetup uses; `memory_kib`
/// KiB, `time` passes, `lanes` lanes.
pub fn argon2(
    id: bool,
    password: &[u8],
    salt: &[u8],
    time: u32,
    memory_kib: u32,
    lanes: u32,
    out_len: usize,
) -> Result<Secret, String> {
    // The allocation below is fallible, but the kernel overcommits: an Argon2 cost larger
    // than the free memory would succeed here and then bring in the OOM killer, which
    // cannot kill PID 1 and panics the machine. Refuse it while it is still an error.
    let info = rustix::system::sysinfo();
    let unit = u64::from(info.mem_unit.max(1));
    let free = (info.freeram as u64).saturating_add(info.bufferram as u64);
    argon2_fits(memory_kib, free.saturating_mul(unit))?;
    let params = argon2::Params::new(memory_kib, time, lanes, Some(out_len)).map_err(|e| {
        format!(
            "unusable Argon2 parameters (memory {memory_kib} KiB, time {time}, lanes {lanes}): {e}"
        )
    })?;
    let alg = if id {
        argon2::Algorithm::Argon2id
    } else {
        argon2::Algorithm::Argon2i
    };
    let mut out = Zeroizing::new(vec![0u8; out_len]);
    argon2::Argon2::new(alg, argon2::Version::V0x13, params)
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| format!("Argon2 failed: {e}"))?;
    Ok(out)
}

/// Whether `memory_kib` of Argon2 state fits in three quarters of `free_bytes` (the rest
/// is stage 1's own and the kernel's); the error says what the keyslot asks for and what
/// there is.
pub fn argon2_fits(memory_kib: u32, free_bytes: u64) -> Result<(), String> {
    let need = u64::from(memory_kib) * 1024;
    if need > free_bytes / 4 * 3 {
        return Err(format!(
            "Argon2 needs {} MiB of memory for this keyslot and only {} MiB are free: \
             it cannot be opened on this machine (use a keyslot with a smaller \
             --pbkdf-memory, added with `cryptsetup luksAddKey` elsewhere)",
            need >> 20,
            free_bytes >> 20
        ));
    }
    Ok(())
}

/// Undo cryptsetup's anti-forensic split: `split` holds `stripes` blocks of `key_len`
/// bytes; every block but the last is folded in through the diffuser.
pub fn af_merge(
    split: &[u8],
    key_len: usize,
    stripes: usize,
    hash: Hash,
) -> Result<Secret, String> {
    let need = key_len
        .checked_mul(stripes)
        .filter(|&n| n <= split.len() && stripes > 0 && key_len > 0)
        .ok_or_else(|| {
            format!(
                "the keyslot's AF area ({} bytes) is smaller than {stripes} stripes of {key_len} bytes",
                split.len()
            )
        })?;
    let mut d = Zeroizing::new(vec![0u8; key_len]);
    let mut blocks = split.get(..need).unwrap_or(&[]).chunks_exact(key_len);
    for _ in 1..stripes {
        let Some(block) = blocks.next() else { break };
        for (x, s) in d.iter_mut().zip(block) {
            *x ^= s;
        }
        diffuse(&mut d, hash);
    }
    let last = blocks.next().unwrap_or(&[]);
    for (x, s) in d.iter_mut().zip(last) {
        *x ^= s;
    }
    Ok(d)
}

/// The AF diffuser: each digest-sized piece `i` of `buf` becomes `H(be32(i) || piece)`,
/// the last (short) piece truncated.
fn diffuse(buf: &mut [u8], hash: Hash) {
    let len = hash.len();
    for (i, piece) in buf.chunks_mut(len).enumerate() {
        let iv = (i as u32).to_be_bytes();
        let h = hash.digest(&[&iv, piece]);
        let n = piece.len();
        piece.copy_from_slice(h.get(..n).unwrap_or(&[]));
    }
}

/// An AES key schedule of any of the three sizes.
enum Aes {
    A128(aes::Aes128),
    A192(aes::Aes192),
    A256(aes::Aes256),
}

impl Aes {
    fn new(key: &[u8]) -> Result<Self, String> {
        match key.len() {
            16 => aes::Aes128::new_from_slice(key).map(Self::A128),
            24 => aes::Aes192::new_from_slice(key).map(Self::A192),
            32 => aes::Aes256::new_from_slice(key).map(Self::A256),
            n => return Err(format!("an AES key of {n} bytes")),
        }
        .map_err(|_| "an unusable AES key".to_owned())
    }

    fn encrypt(&self, block: &mut [u8; 16]) {
        let b = GenericArray::from_mut_slice(block);
        match self {
            Self::A128(c) => c.encrypt_block(b),
            Self::A192(c) => c.encrypt_block(b),
            Self::A256(c) => c.encrypt_block(b),
        }
    }

    fn decrypt(&self, block: &mut [u8; 16]) {
        let b = GenericArray::from_mut_slice(block);
        match self {
            Self::A128(c) => c.decrypt_block(b),
            Self::A192(c) => c.decrypt_block(b),
            Self::A256(c) => c.decrypt_block(b),
        }
    }
}

/// The IV generator of a dm-crypt cipher spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Iv {
    /// The 64-bit little-endian sector number.
    Plain64,
    /// The low 32 bits of the sector number.
    Plain,
    /// The sector number encrypted with AES keyed by SHA-256 of the key.
    EssivSha256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Xts,
    Cbc,
}

/// A dm-crypt cipher spec we can decrypt a keyslot with: `aes-xts-plain64`,
/// `aes-cbc-essiv:sha256`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CipherSpec {
    mode: Mode,
    iv: Iv,
}

impl CipherSpec {
    /// Parse `cipher-mode-iv` (LUKS2's `encryption`, or LUKS1's cipher name and mode
    /// joined with `-`).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let unsupported = || {
            format!(
                "cipher {spec:?} is not supported for unlocking in stage 1 (aes-xts-plain64, \
                 aes-cbc-essiv:sha256, aes-cbc-plain(64) are)"
            )
        };
        let mut parts = spec.splitn(3, '-');
        let (Some("aes"), Some(mode), Some(iv)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(unsupported());
        };
        let mode = match mode {
            "xts" => Mode::Xts,
            "cbc" => Mode::Cbc,
            _ => return Err(unsupported()),
        };
        let iv = match iv {
            "plain64" => Iv::Plain64,
            "plain" => Iv::Plain,
            "essiv:sha256" => Iv::EssivSha256,
            _ => return Err(unsupported()),
        };
        Ok(Self { mode, iv })
    }

    /// Decrypt `data` in place as dm-crypt would with 512-byte sectors, the first sector
    /// numbered 0 (a keyslot area is encrypted on its own, its IVs counted from its start).
    pub fn decrypt_sectors(&self, key: &[u8], data: &mut [u8]) -> Result<(), String> {
        if !data.len().is_multiple_of(512) {
            return Err("a keyslot area that is not whole sectors".into());
        }
        let bad_key = |e: String| format!("{e} does not fit cipher aes-{:?}", self.mode);
        match self.mode {
            Mode::Xts => {
                if !key.len().is_multiple_of(2) {
                    return Err(bad_key(format!("a key of {} bytes", key.len())));
                }
                let (k1, k2) = key.split_at(key.len() / 2);
                let data_key = Aes::new(k1).map_err(bad_key)?;
                let tweak_key = Aes::new(k2).map_err(bad_key)?;
                let essiv = self.essiv(key)?;
                for (n, sector) in data.chunks_exact_mut(512).enumerate() {
                    let mut t = self.iv_block(n as u64, essiv.as_ref());
                    tweak_key.encrypt(&mut t);
                    for block in sector.chunks_exact_mut(16) {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(block);
                        xor(&mut b, &t);
                        data_key.decrypt(&mut b);
                        xor(&mut b, &t);
                        block.copy_from_slice(&b);
                        gf_double(&mut t);
                    }
                }
            }
            Mode::Cbc => {
                let cipher = Aes::new(key).map_err(bad_key)?;
                let essiv = self.essiv(key)?;
                for (n, sector) in data.chunks_exact_mut(512).enumerate() {
                    let mut prev = self.iv_block(n as u64, essiv.as_ref());
                    for block in sector.chunks_exact_mut(16) {
                        let mut c = [0u8; 16];
                        c.copy_from_slice(block);
                        let mut b = c;
                        cipher.decrypt(&mut b);
                        xor(&mut b, &prev);
                        block.copy_from_slice(&b);
                        prev = c;
                    }
                }
            }
        }
        Ok(())
    }

    /// ESSIV's own cipher, keyed with SHA-256 of the volume key, when the spec uses it.
    fn essiv(&self, key: &[u8]) -> Result<Option<Aes>, String> {
        if self.iv != Iv::EssivSha256 {
            return Ok(None);
        }
        let salt = Hash::Sha256.digest(&[key]);
        Aes::new(&salt).map(Some)
    }

    /// The IV of sector `n` (before XTS's tweak encryption).
    fn iv_block(&self, n: u64, essiv: Option<&Aes>) -> [u8; 16] {
        let mut iv = [0u8; 16];
        match self.iv {
            Iv::Plain64 => iv[..8].copy_from_slice(&n.to_le_bytes()),
            Iv::Plain => iv[..4].copy_from_slice(&(n as u32).to_le_bytes()),
            Iv::EssivSha256 => {
                iv[..8].copy_from_slice(&n.to_le_bytes());
                if let Some(c) = essiv {
                    c.encrypt(&mut iv);
                }
            }
        }
        iv
    }
}

fn xor(a: &mut [u8; 16], b: &[u8; 16]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// Multiply the XTS tweak by α in GF(2¹²⁸) (little-endian, reduction 0x87).
fn gf_double(t: &mut [u8; 16]) {
    let mut carry = 0u8;
    for b in t.iter_mut() {
        let next = *b >> 7;
        *b = (*b << 1) | carry;
        carry = next;
    }
    if carry != 0 {
        t[0] ^= 0x87;
    }
}

/// Standard base64 (with or without `=` padding) as the LUKS2 JSON stores salts and
/// digests.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("{text:?} is not base64")),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

/// Compare two byte strings without an early exit on the first difference.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// RFC 6070 (PBKDF2-HMAC-SHA1) and the RFC 7914 §11 PBKDF2-HMAC-SHA256 vector.
    #[test]
    fn argon2_memory_beyond_the_free_memory_is_refused_before_allocating() {
        let gib = 1u64 << 30;
        // 1 GiB of Argon2 in 2 GiB free: fits in three quarters.
        assert!(argon2_fits(1024 * 1024, 2 * gib).is_ok());
        // 4 GiB (cryptsetup's maximum) on a 2 GiB machine: refused, saying both sizes.
        let e = argon2_fits(4 * 1024 * 1024, 2 * gib).expect_err("too big");
        assert!(e.contains("4096 MiB") && e.contains("2048 MiB"), "{e}");
        // Real argon2 in the initrd is refused the same way when the cost is absurd
        // against what this machine has free.
        let e = argon2(true, b"pw", b"0123456789abcdef", 1, u32::MAX, 1, 32)
            .expect_err("u32::MAX KiB is more than any test machine has free");
        assert!(e.contains("cannot be opened on this machine"), "{e}");
    }

    #[test]
    fn pbkdf2_known_answers() {
        assert_eq!(
            pbkdf2(Hash::Sha1, b"password", b"salt", 2, 20).to_vec(),
            hex("ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957")
        );
        assert_eq!(
            pbkdf2(Hash::Sha1, b"password", b"salt", 4096, 20).to_vec(),
            hex("4b007901b765489abead49d926f721d065a429c1")
        );
        assert_eq!(
            pbkdf2(Hash::Sha256, b"passwd", b"salt", 1, 64).to_vec(),
            hex("55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783")
        );
    }

    /// The reference implementation's own vectors (phc-winner-argon2 `src/test.c`,
    /// version 0x13, no secret or associated data, as cryptsetup calls it): password
    /// "password", salt "somesalt", 32 bytes out.
    #[test]
    fn argon2_known_answers() {
        let run = |id, t, m, p| {
            hex_string(&argon2(id, b"password", b"somesalt", t, m, p, 32).expect("argon2"))
        };
        assert_eq!(
            run(true, 2, 256, 1),
            "9dfeb910e80bad0311fee20f9c0e2b12c17987b4cac90c2ef54d5b3021c68bfe"
        );
        assert_eq!(
            run(true, 2, 256, 2),
            "6d093c501fd5999645e0ea3bf620d7b8be7fd2db59c20d9fff9539da2bf57037"
        );
        assert_eq!(
            run(false, 2, 65536, 1),
            "c1628832147d9720c5bd1cfd61367078729f6dfb6f8fea9ff98158e0d7816ed0"
        );
    }

    fn hex_string(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn base64_round() {
        assert_eq!(base64_decode("aGVsbG8=").expect("b64"), b"hello");
        assert_eq!(base64_decode("aGVsbG8").expect("b64"), b"hello");
        assert!(base64_decode("a*").is_err());
    }

    /// IEEE 1619-2007 XTS-AES-128 vector 4 (data unit 0, 512 bytes of 00..ff twice).
    #[test]
    fn xts_vector() {
        let key = hex("2718281828459045235360287471352631415926535897932384626433832795");
        let pt: Vec<u8> = (0..512).map(|i| i as u8).collect();
        let ct = hex(concat!(
            "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c",
            "c78cf7f5e543445f8333d8fa7f56000005279fa5d8b5e4ad40e736ddb4d35412",
        ));
        // Only the first 64 bytes of the published ciphertext are checked: decrypt the whole
        // sector of our own encryption instead and compare the prefix.
        let spec = CipherSpec::parse("aes-xts-plain64").expect("spec");
        let mut full = encrypt_xts_for_test(&key, &pt);
        assert_eq!(&full[..64], &ct[..]);
        spec.decrypt_sectors(&key, &mut full).expect("decrypt");
        assert_eq!(full, pt);
    }

    fn encrypt_xts_for_test(key: &[u8], pt: &[u8]) -> Vec<u8> {
        let (k1, k2) = key.split_at(key.len() / 2);
        let (c1, c2) = (Aes::new(k1).expect("k1"), Aes::new(k2).expect("k2"));
        let mut out = pt.to_vec();
        for (n, sector) in out.chunks_exact_mut(512).enumerate() {
            let mut t = [0u8; 16];
            t[..8].copy_from_slice(&(n as u64).to_le_bytes());
            c2.encrypt(&mut t);
            for block in sector.chunks_exact_mut(16) {
                let mut b = [0u8; 16];
                b.copy_from_slice(block);
                xor(&mut b, &t);
                c1.encrypt(&mut b);
                xor(&mut b, &t);
                block.copy_from_slice(&b);
                gf_double(&mut t);
            }
        }
        out
    }

    /// AF merge inverts an AF split made as cryptsetup's `AF_split` does.
    #[test]
    fn af_merge_inverts_split() {
        for hash in [Hash::Sha1, Hash::Sha256, Hash::Sha512] {
            let key: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(7)).collect();
            let stripes = 17;
            let mut split = Vec::new();
            let mut d = vec![0u8; key.len()];
            for i in 0..stripes - 1 {
                let block: Vec<u8> = (0..key.len()).map(|j| (i * 31 + j * 3) as u8).collect();
                for (x, s) in d.iter_mut().zip(&block) {
                    *x ^= s;
                }
                diffuse(&mut d, hash);
                split.extend(block);
            }
            split.extend(d.iter().zip(&key).map(|(a, b)| a ^ b));
            assert_eq!(
                af_merge(&split, key.len(), stripes, hash)
                    .expect("merge")
                    .to_vec(),
                key
            );
        }
        assert!(af_merge(&[0; 10], 64, 4000, Hash::Sha256).is_err());
    }
}
