//! The lock NixOS takes: `flock(LOCK_EX | LOCK_NB)` on `/run/nixos/switch-to-configuration.lock`,
//! so a second switch (ours or NixOS's own) refuses to interleave with a running one. The
//! lock lives as long as the returned guard (and dies with the process, never stale).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

pub const LOCK_PATH: &str = "/run/nixos/switch-to-configuration.lock";

#[derive(Debug)]
pub struct SwitchLock {
    _file: File,
}

#[derive(Debug)]
pub enum LockError {
    /// Someone else holds it.
    Busy(PathBuf),
    Io {
        path: PathBuf,
        error: io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Busy(p) => write!(
                f,
                "another switch-to-configuration is running (it holds {}); wait for it to \
                 finish and try again",
                p.display()
            ),
            LockError::Io { path, error } => {
                write!(f, "cannot take the lock {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for LockError {}

/// Take the lock at `path` (a host path), without waiting.
pub fn take(path: &Path) -> Result<SwitchLock, LockError> {
    let io_err = |error| LockError::Io {
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(SwitchLock { _file: file }),
        Err(Errno::WOULDBLOCK) => Err(LockError::Busy(path.to_path_buf())),
        Err(e) => Err(io_err(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("switch-to-configuration.lock");
        let first = take(&p).expect("first");
        let e = take(&p).expect_err("second");
        assert!(matches!(e, LockError::Busy(_)));
        assert!(e
            .to_string()
            .contains("another switch-to-configuration is running"));
        drop(first);
        take(&p).expect("free again");
    }
}
