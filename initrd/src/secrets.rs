//! The secrets appended to a built initrd at install time (NixOS's `boot.initrd.secrets`):
//! kept out of the store, read by stage 1 from `/.initrd-secrets/<dest>`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::compress::{self, Compression};
use crate::cpio::{self, Archive, Entry, Node};
use crate::{archive_err, read_input, InitrdError};

/// Where stage 1 finds the secrets appended to an initrd: `/.initrd-secrets/<dest>`,
/// copied to `<dest>` (NixOS's `boot.initrd.secrets` convention).
pub const SECRETS_DIR: &str = "/.initrd-secrets";

/// A file kept out of the store and appended to the initrd at install time.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// Absolute path it should have at boot, e.g. `/etc/ssh/ssh_host_ed25519_key`.
    pub dest: String,
    pub source: PathBuf,
}

/// A gzip'ed cpio with each secret at `/.initrd-secrets/<dest>` (mode 0600), to append
/// to a built initrd. gzip because every kernel unpacks it and NixOS's
/// `append-initrd-secrets` does the same; the kernel unpacks concatenated archives in
/// order whatever their compression.
pub fn secrets_archive(secrets: &[Secret]) -> Result<Vec<u8>, InitrdError> {
    let mut archive = Archive::new();
    archive
        .add(
            SECRETS_DIR,
            Entry {
                perm: 0o700,
                node: Node::Dir,
            },
        )
        .map_err(archive_err(SECRETS_DIR))?;
    for s in secrets {
        let dest = cpio::normalize(&s.dest).map_err(archive_err(format!("secret {}", s.dest)))?;
        let data = read_input(&s.source, "secret")?;
        archive
            .add(
                &format!("{SECRETS_DIR}/{dest}"),
                Entry {
                    perm: 0o600,
                    node: Node::File(data),
                },
            )
            .map_err(archive_err(format!("secret {}", s.dest)))?;
    }
    let bytes = archive.to_bytes().map_err(archive_err("secrets archive"))?;
    compress::compress(&bytes, Compression::Gzip, None).map_err(InitrdError::Compress)
}
