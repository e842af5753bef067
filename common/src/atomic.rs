//! Replacing one file by its path so that readers see the old or the new contents, never a
//! mix, and a crash leaves one of the two: [`rootfs::atomic_write`] (temporary file created
//! exclusively next to the target, fsync, rename over it) followed by an fsync of the
//! directory, without which the rename itself may not survive a power cut.
//!
//! The path's directories are followed as the host sees them; only the final name is never
//! followed, so a symlink planted at the target or at the temporary name is replaced, and
//! whatever it points at is left alone.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};

use crate::rootfs::{self, NewFile};

/// A write that failed, with the file and the step.
#[derive(Debug)]
pub struct WriteError {
    pub path: PathBuf,
    pub action: &'static str,
    pub error: io::Error,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.action,
            self.path.display(),
            self.error
        )
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Write `bytes` to `path` atomically and durably, creating missing parent directories
/// (0755 less the umask). The file gets exactly `mode` (the umask does not apply) before
/// any byte is in it, and is owned by whoever we run as ([`rootfs::own_perms`]).
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    write_file_as(path, bytes, NewFile::Perms(rootfs::own_perms(mode)))
}

/// [`write_file`] with the owner too, or with whatever the file system gives (FAT).
pub fn write_file_as(path: &Path, bytes: &[u8], new_file: NewFile) -> Result<(), WriteError> {
    let err = |action: &'static str, p: &Path| {
        let path = p.to_path_buf();
        move |error: io::Error| WriteError {
            path,
            action,
            error,
        }
    };
    let name = rootfs::final_name(path).map_err(err("write", path))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(err("create", dir))?;
    let dirfd = rfs::openat(
        rfs::CWD,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("open", dir)(e.into()))?;
    rootfs::atomic_write(&dirfd, &name, bytes, new_file).map_err(err("write", path))?;
    rootfs::fsync_dir(&dirfd).map_err(err("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn names(dir: &Path) -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        v.sort();
        v
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn replaces_and_creates_parents() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("run/stagehand/boot.json");
        write_file(&p, b"{}\n", 0o644).expect("first write");
        write_file(&p, b"{\"a\":1}\n", 0o644).expect("second write");
        assert_eq!(std::fs::read(&p).expect("read"), b"{\"a\":1}\n");
        assert_eq!(
            names(p.parent().expect("parent")),
            ["boot.json"],
            "no temporary file left"
        );
    }

    #[test]
    fn the_mode_is_exact_whatever_the_umask_or_the_old_file() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("secret");
        std::fs::write(&p, "old").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_file(&p, b"new", 0o600).expect("write");
        assert_eq!(mode(&p), 0o600);
        // Wider than a usual umask allows: fchmod is not masked.
        write_file(&p, b"newer", 0o666).expect("write");
        assert_eq!(mode(&p), 0o666);
    }

    #[test]
    fn planted_symlinks_are_replaced_not_followed() {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "precious").expect("write");
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let p = t.path().join("out");
        // At the temporary name ...
        symlink(&victim, t.path().join(rootfs::tmp_name("out".as_ref()))).expect("symlink");
        write_file(&p, b"first", 0o600).expect("write");
        // ... and at the target itself.
        std::fs::remove_file(&p).expect("rm");
        symlink(&victim, &p).expect("symlink");
        write_file(&p, b"second", 0o600).expect("write");
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
        assert_eq!(mode(&victim), 0o644);
        assert_eq!(std::fs::read(&p).expect("read"), b"second");
        assert!(!p.is_symlink());
        assert_eq!(names(t.path()), ["out"]);
    }

    #[test]
    fn a_path_without_a_file_name_is_refused_naming_it() {
        let err = write_file(Path::new("/"), b"x", 0o644).expect_err("/ is no file");
        assert_eq!(err.path, Path::new("/"));
        assert!(err.to_string().starts_with("cannot write /:"), "{err}");
    }
}
