//! The envelope around every binary file Stagehand defines (the stage-1 config in the
//! initrd, the compiled activation plan in a generation).
//!
//! Layout, all integers little-endian:
//!
//! | offset | size | field                                              |
//! |--------|------|----------------------------------------------------|
//! | 0      | 8    | magic, names the kind of file                      |
//! | 8      | 2    | format version of the payload                      |
//! | 10     | 2    | reserved, must be 0                                |
//! | 12     | 4    | payload length in bytes                            |
//! | 16     | 4    | CRC-32 (IEEE, as zlib) of the payload              |
//! | 20     | n    | payload: the value encoded with postcard 1.x       |
//!
//! A reader checks magic, version, length and checksum before it decodes anything, so a
//! truncated or bit-flipped file is reported as exactly that rather than as a confusing
//! decode error.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

/// Size of the fixed header in front of the payload.
pub const HEADER_LEN: usize = 20;

/// What kind of file an envelope holds, and which payload version this build understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub magic: [u8; 8],
    pub version: u16,
    /// Human name used in messages, e.g. "stage-1 config".
    pub name: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Fewer bytes than the header, or than the header says the payload has.
    Truncated {
        expected: usize,
        found: usize,
    },
    BadMagic {
        expected: [u8; 8],
        found: [u8; 8],
    },
    UnsupportedVersion {
        supported: u16,
        found: u16,
    },
    ReservedNotZero(u16),
    TrailingBytes {
        extra: usize,
    },
    ChecksumMismatch {
        stored: u32,
        computed: u32,
    },
    Decode(String),
    Encode(String),
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { expected, found } => write!(
                f,
                "file is truncated: expected {expected} bytes, found {found}; rebuild it"
            ),
            Self::BadMagic { expected, found } => write!(
                f,
                "wrong magic {:?} (expected {:?}): this is not the file it should be",
                String::from_utf8_lossy(found),
                String::from_utf8_lossy(expected)
            ),
            Self::UnsupportedVersion { supported, found } => write!(
                f,
                "format version {found} is not supported by this build (it reads version \
                 {supported}); rebuild the file with a matching Stagehand"
            ),
            Self::ReservedNotZero(v) => write!(
                f,
                "reserved header field is {v}, must be 0: the file is corrupt or from a newer \
                 Stagehand; rebuild it"
            ),
            Self::TrailingBytes { extra } => {
                write!(f, "{extra} unexpected bytes after the payload; rebuild it")
            }
            Self::ChecksumMismatch { stored, computed } => write!(
                f,
                "checksum mismatch: header says crc32 {stored:#010x}, payload has \
                 {computed:#010x}; the file is corrupt, rebuild it"
            ),
            Self::Decode(e) => write!(
                f,
                "payload does not decode: {e}; the checksum matched, so it was written by a \
                 different Stagehand build: rebuild it with this one"
            ),
            Self::Encode(e) => write!(f, "cannot encode payload: {e}"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// An envelope error together with the file it came from.
#[derive(Debug)]
pub enum FileError {
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    Format {
        path: PathBuf,
        kind: &'static str,
        error: EnvelopeError,
    },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Format { path, kind, error } => {
                write!(f, "{} ({kind}): {error}", path.display())
            }
        }
    }
}

impl std::error::Error for FileError {}

/// Encode `value` into a complete envelope.
pub fn encode<T: Serialize>(kind: Kind, value: &T) -> Result<Vec<u8>, EnvelopeError> {
    let payload = postcard::to_allocvec(value).map_err(|e| EnvelopeError::Encode(e.to_string()))?;
    let len = u32::try_from(payload.len())
        .map_err(|_| EnvelopeError::Encode("payload larger than 4 GiB".into()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&kind.magic);
    out.extend_from_slice(&kind.version.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crate::crc32::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Check the header and checksum and decode the payload.
pub fn decode<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, EnvelopeError> {
    let body = verify(kind, bytes)?;
    postcard::from_bytes(body).map_err(|e| EnvelopeError::Decode(e.to_string()))
}

/// Check the header and checksum without decoding; the payload.
pub fn verify(kind: Kind, bytes: &[u8]) -> Result<&[u8], EnvelopeError> {
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(EnvelopeError::Truncated {
            expected: HEADER_LEN,
            found: bytes.len(),
        });
    };
    let [magic @ .., v0, v1, r0, r1, l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    if magic != kind.magic {
        return Err(EnvelopeError::BadMagic {
            expected: kind.magic,
            found: magic,
        });
    }
    let version = u16::from_le_bytes([v0, v1]);
    if version != kind.version {
        return Err(EnvelopeError::UnsupportedVersion {
            supported: kind.version,
            found: version,
        });
    }
    let reserved = u16::from_le_bytes([r0, r1]);
    if reserved != 0 {
        return Err(EnvelopeError::ReservedNotZero(reserved));
    }
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let stored = u32::from_le_bytes([c0, c1, c2, c3]);
    if body.len() < len {
        return Err(EnvelopeError::Truncated {
            expected: HEADER_LEN + len,
            found: bytes.len(),
        });
    }
    if body.len() > len {
        return Err(EnvelopeError::TrailingBytes {
            extra: body.len() - len,
        });
    }
    let computed = crate::crc32::hash(body);
    if computed != stored {
        return Err(EnvelopeError::ChecksumMismatch { stored, computed });
    }
    Ok(body)
}

/// Split `bytes` after the first envelope, for files that hold several one after another
/// (so that a reader can decode only the first). `None` when the first is truncated.
pub fn split_first(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = bytes.get(12..16)?.try_into().ok()?;
    let len = u32::from_le_bytes(len) as usize;
    let end = HEADER_LEN.checked_add(len)?;
    (end <= bytes.len()).then(|| bytes.split_at(end))
}

/// Read and decode an envelope file, naming the file in any error.
pub fn read_file<T: DeserializeOwned>(kind: Kind, path: &Path) -> Result<T, FileError> {
    let bytes = std::fs::read(path).map_err(|error| FileError::Io {
        path: path.into(),
        error,
    })?;
    decode(kind, &bytes).map_err(|error| FileError::Format {
        path: path.into(),
        kind: kind.name,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: Kind = Kind {
        magic: *b"SHTEST\0\0",
        version: 3,
        name: "test file",
    };

    fn sample() -> Vec<u8> {
        encode(K, &(String::from("hello"), 42u32, vec![1u8, 2, 3])).expect("encode")
    }

    #[test]
    fn round_trips() {
        let v: (String, u32, Vec<u8>) = decode(K, &sample()).expect("decode");
        assert_eq!(v, ("hello".into(), 42, vec![1, 2, 3]));
    }

    #[test]
    fn concatenated_envelopes_split() {
        let mut two = sample();
        let second = encode(K, &7u8).expect("encode");
        two.extend_from_slice(&second);
        let (a, b) = split_first(&two).expect("split");
        assert_eq!(a, sample().as_slice());
        assert_eq!(decode::<u8>(K, b).expect("second"), 7);
        assert!(split_first(&two[..sample().len() - 1]).is_none());
        assert!(split_first(&two[..5]).is_none());
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let good = sample();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            let r: Result<(String, u32, Vec<u8>), _> = decode(K, &bad);
            assert!(r.is_err(), "flip at byte {i} was accepted");
        }
    }

    #[test]
    fn payload_flip_reports_checksum() {
        let mut bad = sample();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let e = decode::<(String, u32, Vec<u8>)>(K, &bad).expect_err("must fail");
        assert!(matches!(e, EnvelopeError::ChecksumMismatch { .. }));
        assert!(e.to_string().contains("checksum"));
    }

    #[test]
    fn truncation_and_trailing_bytes_are_named() {
        let good = sample();
        let e = decode::<(String, u32, Vec<u8>)>(K, &good[..good.len() - 1]).expect_err("short");
        assert!(matches!(e, EnvelopeError::Truncated { .. }));
        let e = decode::<(String, u32, Vec<u8>)>(K, &good[..5]).expect_err("tiny");
        assert!(matches!(e, EnvelopeError::Truncated { .. }));
        let mut long = good.clone();
        long.push(0);
        let e = decode::<(String, u32, Vec<u8>)>(K, &long).expect_err("long");
        assert_eq!(e, EnvelopeError::TrailingBytes { extra: 1 });
    }

    #[test]
    fn wrong_version_and_magic() {
        let other = Kind { version: 4, ..K };
        let e = decode::<(String, u32, Vec<u8>)>(other, &sample()).expect_err("version");
        assert_eq!(
            e,
            EnvelopeError::UnsupportedVersion {
                supported: 4,
                found: 3
            }
        );
        let other = Kind {
            magic: *b"SHOTHER\0",
            ..K
        };
        let e = decode::<(String, u32, Vec<u8>)>(other, &sample()).expect_err("magic");
        assert!(matches!(e, EnvelopeError::BadMagic { .. }));
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("stage1.cfg");
        let mut bytes = sample();
        bytes[HEADER_LEN] ^= 0x40;
        std::fs::write(&p, bytes).expect("write");
        let e = read_file::<(String, u32, Vec<u8>)>(K, &p).expect_err("corrupt");
        let msg = e.to_string();
        assert!(
            msg.contains("stage1.cfg") && msg.contains("checksum"),
            "{msg}"
        );
    }
}
