//! Writing the initrd file: `build -o` and `append-secrets`.
//!
//! Through [`stagehand_common::atomic::write_file`]: a temporary file created exclusively next
//! to the target (a symlink planted at the temporary name or at the target is replaced, never
//! written through), fsync, rename, directory fsync. A reader (a boot loader installer, a
//! second build) sees the old initrd or the new one, never half of one.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use stagehand_common::atomic::{self, WriteError};

/// Mode of a new initrd file that holds no secrets, as the builders NixOS runs leave it.
pub const PLAIN_MODE: u32 = 0o644;
/// Mode of a new initrd file with secrets appended: readable by its owner only.
pub const SECRETS_MODE: u32 = 0o600;

/// Replace the initrd at `path` with `bytes`. The new file keeps the permission bits of the
/// regular file it replaces (an initrd made 0600 because it holds secrets stays 0600),
/// else gets `new_mode` ([`PLAIN_MODE`] or [`SECRETS_MODE`]). With [`SECRETS_MODE`] the
/// kept bits lose the world's: appending a secret to a 0644 initrd leaves it 0640 (a group
/// the admin chose keeps its access; everyone else loses it), since a secret must never be
/// world-readable.
pub fn write_initrd(path: &Path, bytes: &[u8], new_mode: u32) -> Result<(), WriteError> {
    let narrow = if new_mode == SECRETS_MODE {
        0o770
    } else {
        0o777
    };
    let mode = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => m.permissions().mode() & narrow,
        Ok(_) => new_mode,
        Err(e) if e.kind() == io::ErrorKind::NotFound => new_mode,
        Err(error) => {
            return Err(WriteError {
                path: path.to_path_buf(),
                action: "inspect",
                error,
            })
        }
    };
    atomic::write_file(path, bytes, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_new_file_gets_the_given_mode_an_old_one_keeps_its_own() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("initrd");
        write_initrd(&p, b"one", PLAIN_MODE).expect("write");
        assert_eq!(mode(&p), 0o644);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        write_initrd(&p, b"two", PLAIN_MODE).expect("write");
        assert_eq!(
            (mode(&p), std::fs::read(&p).expect("read")),
            (0o600, b"two".to_vec())
        );
        let q = t.path().join("with-secrets");
        write_initrd(&q, b"s", SECRETS_MODE).expect("write");
        assert_eq!(mode(&q), 0o600);
        // A world-readable initrd that gets secrets appended is no longer world-readable.
        let r = t.path().join("was-public");
        write_initrd(&r, b"plain", PLAIN_MODE).expect("write");
        assert_eq!(mode(&r), 0o644);
        write_initrd(&r, b"plain+secret", SECRETS_MODE).expect("write");
        assert_eq!(mode(&r), 0o640);
        // Narrower bits the owner chose stay narrower.
        std::fs::set_permissions(&r, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        write_initrd(&r, b"again", SECRETS_MODE).expect("write");
        assert_eq!(mode(&r), 0o400);
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_and_its_mode_not_borrowed() {
        let t = tempfile::tempdir().expect("tempdir");
        let victim = t.path().join("victim");
        std::fs::write(&victim, "precious").expect("write");
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let p = t.path().join("initrd");
        symlink(&victim, &p).expect("symlink");
        write_initrd(&p, b"secret", SECRETS_MODE).expect("write");
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
        assert!(!p.is_symlink());
        assert_eq!(mode(&p), 0o600);
    }
}
