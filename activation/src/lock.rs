//! Serialising the activations of one root.
//!
//! Two runs that change `/etc` at once each plan from what they saw and then trip over the
//! other's changes (one removes an obsolete link the other already removed: "cannot remove
//! obsolete symlink"). So every run that writes — `stagehand etc`, and `activate` (stage 2,
//! `switch-to-configuration`, `stagehand activate`) for its whole run — holds an exclusive
//! `flock(2)` on the **root directory itself** (`/`, or `--root DIR`), waiting for it at
//! most [`LOCK_TIMEOUT`]. Dry runs change nothing and take no lock.
//!
//! Why the root directory and not a lock file: it is the one thing that surely exists
//! before activation starts — a file under `/run` may be hidden by the tmpfs the `specialfs`
//! step mounts over `/run` in the middle of a run (a container started without `/run`),
//! and one under `/etc` would be created in the very directory the lock protects, on a
//! root that may not have `/etc` yet, and could be planted (a symlink, a FIFO) to stop
//! activation. Locking a directory creates nothing, works on a read-only root, and cannot
//! be planted. The ESP is locked the same way (`boot::esp`). `flock` rather than a
//! `fcntl` record lock because record locks belong to the process: two threads of one
//! program (two library callers) would not exclude each other. A lock dies with its
//! holder, so a crash never leaves it held. `lslocks` shows the holder (an `FLOCK` on the
//! root's path).

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use stagehand_common::rootfs::Root;

/// How long a run waits for another activation of the same root. Long enough for an
/// activation whose snippets take a while; a run of the etc step alone takes milliseconds.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// The activation lock of one root, held while the value lives.
#[derive(Debug)]
pub struct ActivationLock {
    _fd: OwnedFd,
}

#[derive(Debug)]
pub enum LockError {
    /// The root directory could not be opened or locked.
    Lock { root: PathBuf, error: io::Error },
    /// Another activation of the same root held the lock for the whole wait.
    Timeout { root: PathBuf, waited: Duration },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lock { root, error } => write!(
                f,
                "{}: cannot take the activation lock (flock on the root directory): {error}",
                root.display()
            ),
            Self::Timeout { root, waited } => write!(
                f,
                "{}: another activation of this root (stagehand activate or etc, stage 2, \
                 switch-to-configuration) still holds the activation lock after {} s; let it \
                 finish and run again (`lslocks` shows the holder: an FLOCK on {})",
                root.display(),
                waited.as_secs(),
                root.display()
            ),
        }
    }
}

impl std::error::Error for LockError {}

/// Take the activation lock of `root`, waiting up to [`LOCK_TIMEOUT`].
pub fn lock(root: &Root) -> Result<ActivationLock, LockError> {
    lock_within(root, LOCK_TIMEOUT)
}

/// [`lock`], waiting up to `timeout`.
pub fn lock_within(root: &Root, timeout: Duration) -> Result<ActivationLock, LockError> {
    let err = |error: Errno| LockError::Lock {
        root: root.path().to_path_buf(),
        error: error.into(),
    };
    // A description of its own: flock locks belong to the open file description, and the
    // root's own descriptor may be shared by the caller's threads.
    let fd = rustix::fs::openat(
        root.fd(),
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    let start = Instant::now();
    let mut said = false;
    loop {
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(ActivationLock { _fd: fd }),
            Err(Errno::WOULDBLOCK) => {
                let waited = start.elapsed();
                if waited >= timeout {
                    return Err(LockError::Timeout {
                        root: root.path().to_path_buf(),
                        waited,
                    });
                }
                if !said {
                    log::info!(
                        "waiting for another activation of {} to finish",
                        root.path().display()
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_makes_others_wait_then_time_out_with_a_clear_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Root::open(dir.path()).expect("root");
        let held = lock(&root).expect("first lock");
        // Another thread of the same process is kept out too (flock, not a record lock).
        let other = Root::open(dir.path()).expect("root");
        let e = std::thread::scope(|s| {
            s.spawn(|| lock_within(&other, Duration::from_millis(100)))
                .join()
                .expect("thread")
        })
        .expect_err("the lock is held");
        let text = e.to_string();
        assert!(matches!(e, LockError::Timeout { .. }), "{e:?}");
        assert!(
            text.contains(&dir.path().display().to_string()) && text.contains("another activation"),
            "{text}"
        );
        drop(held);
        lock_within(&other, Duration::from_millis(100)).expect("free again");
    }
}
