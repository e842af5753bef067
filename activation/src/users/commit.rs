//! Replacing several files as one set: all old or all new, even across a crash.
//!
//! `rename` replaces one file atomically, but passwd, group, shadow and their companions
//! must change together (a uid in `/etc/passwd` without its `/etc/shadow` line locks the
//! user out). So:
//! 1. every new file is written next to its target under a fixed temporary name, and the
//!    file systems are flushed (`syncfs`, one journal commit for all files);
//! 2. a journal listing the targets is written and flushed — the commit point;
//! 3. each temporary file is renamed over its target, the file systems are flushed, and the
//!    journal is removed.
//!
//! [`recover`] runs (under the lock) before every users step: a journal left by a crash is
//! rolled forward (step 3 again; a target whose temporary file is gone was already renamed),
//! and temporary files without a journal — a crash before the commit point — are deleted.
//! A boot therefore sees the old set or the new set, never a mix.

use std::io;
use std::path::Path;

use rustix::fs::Mode;
use rustix::io::Errno;

use super::{DirCache, UsersError, SET};
use stagehand_common::rootfs::{self, Perms, Root};

pub const JOURNAL: &str = "/etc/.stagehand-users.commit";

/// Where to stop, to test crash recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAt {
    Never,
    /// After the temporary files, before the journal (a crash before the commit point).
    AfterTemps,
    /// After the journal, before any rename (a crash right after the commit point).
    AfterJournal,
}

fn write_err(root: &Root, path: &str, error: io::Error) -> UsersError {
    UsersError::Write {
        path: root.host_path(Path::new(path)),
        error,
    }
}

/// Replace the files in `writes` (in-root path, contents, ownership) as one set.
pub fn commit(
    root: &Root,
    writes: &[(String, Vec<u8>, Perms)],
    stop: StopAt,
) -> Result<(), UsersError> {
    if writes.is_empty() {
        return Ok(());
    }
    // The directories are opened once for the whole set (missing ones made 0755).
    let mut dirs = DirCache::new(root, Some(Mode::from_raw_mode(0o755)));
    for (path, contents, perms) in writes {
        let (dir, name) = dirs
            .parent(Path::new(path))
            .map_err(|e| write_err(root, path, e))?;
        rootfs::write_tmp(dir, &rootfs::tmp_name(&name), contents, *perms, false)
            .map_err(|e| write_err(root, path, e))?;
    }
    sync_all(&dirs)?;
    if stop == StopAt::AfterTemps {
        return Ok(());
    }
    let journal: String = writes.iter().map(|(p, _, _)| format!("{p}\n")).collect();
    let (etc, jname) = dirs
        .parent(Path::new(JOURNAL))
        .map_err(|e| write_err(root, JOURNAL, e))?;
    rootfs::atomic_write(
        etc,
        &jname,
        journal.as_bytes(),
        stagehand_common::rootfs::own_perms(0o600),
    )
    .and_then(|()| rootfs::fsync_dir(etc))
    .map_err(|e| write_err(root, JOURNAL, e))?;
    if stop == StopAt::AfterJournal {
        return Ok(());
    }
    let paths: Vec<&str> = writes.iter().map(|(p, _, _)| p.as_str()).collect();
    roll_forward(&mut dirs, &paths)
}

fn roll_forward(dirs: &mut DirCache, paths: &[&str]) -> Result<(), UsersError> {
    let root = dirs.root;
    for path in paths {
        let (dir, name) = dirs
            .parent(Path::new(path))
            .map_err(|e| write_err(root, path, e))?;
        let tmp = rootfs::tmp_name(&name);
        match rustix::fs::renameat(dir, tmp.as_os_str(), dir, name.as_os_str()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(write_err(root, path, e.into())),
        }
    }
    sync_all(dirs)?;
    let (etc, jname) = dirs
        .parent(Path::new(JOURNAL))
        .map_err(|e| write_err(root, JOURNAL, e))?;
    match rootfs::unlink_at(etc, &jname) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(write_err(root, JOURNAL, e));
        }
        _ => {}
    }
    // Not flushed: a journal that survives a crash is only rolled forward again, which
    // finds nothing left to rename.
    Ok(())
}

/// `syncfs` once per file system among the directories opened so far (those of the files
/// in the set, and of the journal).
fn sync_all(dirs: &DirCache) -> Result<(), UsersError> {
    let mut done = Vec::new();
    for (d, fd) in dirs.opened() {
        let dev = rustix::fs::fstat(fd).map(|s| s.st_dev).ok();
        if dev.is_some() && done.contains(&dev) {
            continue;
        }
        rootfs::sync_fs(fd).map_err(|e| write_err(dirs.root, &d.to_string_lossy(), e))?;
        done.push(dev);
    }
    Ok(())
}

/// Finish or discard a commit that a crash interrupted.
pub fn recover(root: &Root) -> Result<(), UsersError> {
    recover_in(&mut DirCache::new(root, None))
}

/// [`recover`] with directories the caller opened (and goes on using).
pub(super) fn recover_in(dirs: &mut DirCache) -> Result<(), UsersError> {
    let root = dirs.root;
    let journal = match dirs.parent(Path::new(JOURNAL)) {
        Ok((etc, name)) => match rootfs::read_at(etc, &name) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(UsersError::Read {
                    path: root.host_path(Path::new(JOURNAL)),
                    error: e,
                })
            }
        },
        Err(_) => None,
    };
    match journal {
        Some(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            // Only our own file names are honoured: a damaged or planted journal cannot make
            // us rename anything else.
            let paths: Vec<&str> = text.lines().filter(|l| SET.contains(l)).collect();
            log::warn!(
                "completing an interrupted update of the account files ({} files)",
                paths.len()
            );
            roll_forward(dirs, &paths)
        }
        None => {
            for path in SET {
                if let Ok((dir, name)) = dirs.parent(Path::new(path)) {
                    let tmp = rootfs::tmp_name(&name);
                    if rootfs::unlink_at(dir, &tmp).is_ok() {
                        log::warn!("discarded an unfinished update of {path}");
                    }
                }
            }
            Ok(())
        }
    }
}
