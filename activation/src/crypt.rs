//! SHA-512 crypt (`$6$`) password hashes, as glibc's `crypt(3)` writes them.
//!
//! The `sha-crypt` crate computes the raw 64-byte digest; the crypt string around it (the
//! byte shuffle and crypt's own base-64 alphabet, from Ulrich Drepper's "Unix crypt using
//! SHA-256 and SHA-512" specification) is done here, so the crate's optional
//! password-hash framework is not needed.

use rustix::rand::GetRandomFlags;
use sha_crypt::{sha512_crypt, Params};

/// crypt's base-64 alphabet (not RFC 4648's).
const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The order in which digest bytes are encoded, three at a time (the specification's
/// transposition for SHA-512); byte 63 comes last on its own.
const ORDER: [[usize; 3]; 21] = [
    [0, 21, 42],
    [22, 43, 1],
    [44, 2, 23],
    [3, 24, 45],
    [25, 46, 4],
    [47, 5, 26],
    [6, 27, 48],
    [28, 49, 7],
    [50, 8, 29],
    [9, 30, 51],
    [31, 52, 10],
    [53, 11, 32],
    [12, 33, 54],
    [34, 55, 13],
    [56, 14, 35],
    [15, 36, 57],
    [37, 58, 16],
    [59, 17, 38],
    [18, 39, 60],
    [40, 61, 19],
    [62, 20, 41],
];

fn push_b64(out: &mut String, b2: u8, b1: u8, b0: u8, n: usize) {
    let mut w = (u32::from(b2) << 16) | (u32::from(b1) << 8) | u32::from(b0);
    for _ in 0..n {
        out.push(char::from(ITOA64[(w & 0x3f) as usize]));
        w >>= 6;
    }
}

fn encode(digest: &[u8; 64]) -> String {
    let mut out = String::with_capacity(86);
    for [a, b, c] in ORDER {
        push_b64(&mut out, digest[a], digest[b], digest[c], 4);
    }
    push_b64(&mut out, 0, 0, digest[63], 2);
    out
}

/// `crypt(password, "$6$<salt>$")` with the default 5000 rounds. The salt must use the
/// crypt alphabet; only its first 16 characters count, as in glibc.
pub fn hash_with_salt(password: &str, salt: &str, rounds: Option<u32>) -> Option<String> {
    if !salt.bytes().all(|b| ITOA64.contains(&b)) {
        return None;
    }
    let salt: String = salt.chars().take(16).collect();
    let params = match rounds {
        None => Params::RECOMMENDED,
        Some(r) => Params::new(r.clamp(Params::ROUNDS_MIN, Params::ROUNDS_MAX)).ok()?,
    };
    let digest = sha512_crypt(password.as_bytes(), salt.as_bytes(), params);
    Some(match rounds {
        None => format!("$6${salt}${}", encode(&digest)),
        Some(r) => format!(
            "$6$rounds={}${salt}${}",
            r.clamp(Params::ROUNDS_MIN, Params::ROUNDS_MAX),
            encode(&digest)
        ),
    })
}

/// A fresh random 16-character salt from the kernel's generator.
///
/// The `getrandom(2)` system call itself, never a device file: activation runs chrooted
/// into roots that have no `/dev`. (The `getrandom` crate finds glibc's wrapper with
/// `dlsym`, which a `+crt-static` binary cannot do, and then falls back to opening
/// `/dev/random` and `/dev/urandom`.) Without flags the call waits, as those files
/// would, until the kernel's pool is initialised.
pub fn random_salt() -> Result<String, rustix::io::Errno> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        match rustix::rand::getrandom(&mut bytes[filled..], GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(bytes
        .iter()
        .map(|b| char::from(ITOA64[usize::from(b & 0x3f)]))
        .collect())
}

/// Hash `password` with a fresh salt.
pub fn hash(password: &str) -> Result<String, rustix::io::Errno> {
    let salt = random_salt()?;
    // The salt is drawn from the crypt alphabet, so hashing cannot refuse it.
    Ok(hash_with_salt(password, &salt, None).unwrap_or_default())
}

/// Does `hash` (a `$6$` string) belong to `password`? Other schemes answer `false`, which
/// makes the caller hash again — correct, only a little slower.
pub fn verify(password: &str, hash: &str) -> bool {
    let Some(rest) = hash.strip_prefix("$6$") else {
        return false;
    };
    let (rounds, rest) = match rest.strip_prefix("rounds=") {
        Some(r) => match r.split_once('$') {
            Some((n, rest)) => match n.parse::<u32>() {
                Ok(n) => (Some(n), rest),
                Err(_) => return false,
            },
            None => return false,
        },
        None => (None, rest),
    };
    let Some((salt, _)) = rest.split_once('$') else {
        return false;
    };
    match hash_with_salt(password, salt, rounds) {
        // Constant-time enough: both strings are public-length hashes; fold every byte.
        Some(h) => {
            h.len() == hash.len()
                && h.bytes()
                    .zip(hash.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vectors of the SHA-crypt specification.
    #[test]
    fn specification_vectors() {
        assert_eq!(
            hash_with_salt("Hello world!", "saltstring", None).expect("hash"),
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
        );
        assert_eq!(
            hash_with_salt("Hello world!", "saltstringsaltstring", Some(10000)).expect("hash"),
            "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."
        );
    }

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse").expect("hash");
        assert!(h.starts_with("$6$") && h.len() == 3 + 16 + 1 + 86, "{h}");
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong", &h));
        assert!(!verify("x", "$y$j9T$abc$def"));
        assert!(!verify("x", "!"));
        assert_ne!(hash("a").expect("hash"), hash("a").expect("hash"));
    }
}
