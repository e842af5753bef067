//! Replacing several files as one set: all old or all new, even across a crash.
//!
//! `rename` replaces one file atomically, but passwd, group, shadow and their companions
//! must change together (a uid in `/etc/passwd` without its `/etc/shadow` line locks the
//! user out). So:
//! 1. every new file is written next to its target under a fixed temporary name, and the
//!    file systems are flushed (`syncfs`, one journal commit for all files);
//! 2. a journal is written and flushed — the commit point. For every file of the set it
//!    records the SHA-256 of the file as the plan read it (`-`: absent) and of what replaces
//!    it (`=`: this commit leaves the file alone);
//! 3. each temporary file is renamed over its target, the file systems are flushed, and the
//!    journal is removed.
//!
//! [`recover`] runs (under the lock) before every users step. A journal left by a crash is
//! rolled forward (step 3 again) only when the files are still exactly what it was written
//! against: each file not yet renamed holds the bytes the plan read (and its temporary file
//! the new bytes), each one already renamed holds the new bytes. Anything else means that
//! someone changed the files after the crash released the lock — `passwd`, `usermod`,
//! `useradd` and `vipw` take the same lock and rewrite the files — and rolling forward would
//! silently revert those edits: the journal and the temporary files are then discarded, with
//! a warning naming the journal, and the step plans afresh from the files as they are
//! (which is always safe: the plan is a function of the spec and the files). A journal that
//! cannot be read as ours (damaged, or written by a version without digests) is discarded
//! the same way. Temporary files without a journal — a crash before the commit point — are
//! deleted. A boot therefore sees the old set or the new set, never a mix, and an edit made
//! between a crash and the next run is never lost.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use rustix::fs::Mode;
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use super::{read_with_perms, DirCache, FileState, UsersError, SET};
use stagehand_common::rootfs::{self, Perms, Root};

pub const JOURNAL: &str = "/etc/.stagehand-users.commit";

/// The journal's first line: its format. A journal without it (the first format listed
/// paths only, so it cannot be checked) is discarded rather than trusted.
const JOURNAL_MAGIC: &str = "stagehand-users-commit 2";

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

/// How the journal names a file's contents: the SHA-256 in lower-case hex, `-` for none.
fn digest(contents: Option<&[u8]>) -> String {
    match contents {
        None => "-".to_owned(),
        Some(b) => Sha256::digest(b)
            .iter()
            .fold(String::with_capacity(64), |mut s, byte| {
                use std::fmt::Write as _;
                let _ = write!(s, "{byte:02x}");
                s
            }),
    }
}

/// One line of the journal: a file of the set, its digest before the commit, and its digest
/// after (`None`: the commit does not write it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    path: &'static str,
    before: String,
    after: Option<String>,
}

/// The journal for a commit of `writes` planned against `before` (the set as observed).
fn journal_text(
    before: &BTreeMap<String, FileState>,
    writes: &[(String, Vec<u8>, Perms)],
) -> String {
    let mut text = format!("{JOURNAL_MAGIC}\n");
    for p in SET {
        let was = digest(before.get(p).and_then(|f| f.contents.as_deref()));
        let new = writes
            .iter()
            .find(|(w, _, _)| w == p)
            .map_or_else(|| "=".to_owned(), |(_, c, _)| digest(Some(c)));
        text.push_str(&format!("{p} {was} {new}\n"));
    }
    text
}

/// Read a journal back; `Err` says why it cannot be trusted.
fn parse_journal(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not text".to_owned())?;
    let mut lines = text.lines();
    if lines.next() != Some(JOURNAL_MAGIC) {
        return Err(format!(
            "it does not start with {JOURNAL_MAGIC:?} (damaged, or written by an older \
             version that recorded no digests to check the files against)"
        ));
    }
    let is_digest =
        |d: &str| d == "-" || (d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()));
    let mut entries: Vec<Entry> = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(' ').collect();
        let [path, before, after] = f[..] else {
            return Err(format!("line {line:?} is not `PATH BEFORE AFTER`"));
        };
        let Some(path) = SET.iter().copied().find(|p| *p == path) else {
            return Err(format!("{path:?} is not one of the account files"));
        };
        if entries.iter().any(|e| e.path == path) {
            return Err(format!("{path} is listed twice"));
        }
        if !is_digest(before) || !(after == "=" || is_digest(after)) {
            return Err(format!("line {line:?} has a malformed digest"));
        }
        entries.push(Entry {
            path,
            before: before.to_owned(),
            after: (after != "=").then(|| after.to_owned()),
        });
    }
    if entries.len() != SET.len() {
        return Err(format!(
            "it lists {} of the {} account files (cut short)",
            entries.len(),
            SET.len()
        ));
    }
    Ok(entries)
}

/// Replace the files in `writes` (in-root path, contents, ownership) as one set. `before`
/// is the set as the plan read it (under the same lock), which the journal records.
pub fn commit(
    root: &Root,
    before: &BTreeMap<String, FileState>,
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
    // The one `syncfs` of the commit: the new files' bytes are on disk before the journal
    // that names them, so a journal that survives a power cut always has whole temporary
    // files to roll forward (and a rename never publishes an empty file).
    sync_all(&dirs)?;
    if stop == StopAt::AfterTemps {
        return Ok(());
    }
    let journal = journal_text(before, writes);
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
    // The renames must be durable before the journal goes, or a power cut could leave a
    // mix of old and new files with no journal to finish it. Their files' bytes are on
    // disk already (the `syncfs` before the journal was written), so flushing the
    // directories that hold the renamed entries is enough: an `fsync` each, not a second
    // `syncfs` (which would also wait for every other dirty page of the file system).
    fsync_parents(dirs, paths)?;
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

/// `fsync` each directory that holds one of `paths` (`/etc`, `/var/lib/nixos`), once.
fn fsync_parents(dirs: &mut DirCache, paths: &[&str]) -> Result<(), UsersError> {
    let root = dirs.root;
    let mut done: Vec<&Path> = Vec::new();
    for path in paths {
        let parent = Path::new(path).parent().unwrap_or(Path::new("/"));
        if done.contains(&parent) {
            continue;
        }
        let (dir, _) = dirs
            .parent(Path::new(path))
            .map_err(|e| write_err(root, path, e))?;
        rootfs::fsync_dir(dir).map_err(|e| write_err(root, path, e))?;
        done.push(parent);
    }
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

/// Finish or discard a commit that a crash interrupted. Returns what it did, as warnings
/// (also logged).
pub fn recover(root: &Root) -> Result<Vec<String>, UsersError> {
    let warnings = recover_in(&mut DirCache::new(root, None))?;
    for w in &warnings {
        log::warn!("{w}");
    }
    Ok(warnings)
}

/// The digest of `path` and of its temporary file as they are now (`-`: absent). Read as
/// `observe` reads the set: a symlink or anything but a regular file counts as absent.
fn digests_now(dirs: &mut DirCache, path: &str) -> Result<(String, String), UsersError> {
    let root = dirs.root;
    let read_err = |error| UsersError::Read {
        path: root.host_path(Path::new(path)),
        error,
    };
    let (dir, name) = match dirs.parent(Path::new(path)) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(("-".into(), "-".into())),
        Err(e) => return Err(read_err(e)),
    };
    let one = |name: &std::ffi::OsStr| -> Result<String, UsersError> {
        match read_with_perms(dir, name) {
            Ok((b, Some(_))) => Ok(digest(Some(&b))),
            Ok((_, None)) => Ok(digest(None)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(digest(None)),
            Err(e) if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => Ok(digest(None)),
            Err(e) => Err(read_err(e)),
        }
    };
    let target = one(&name)?;
    let tmp = one(&rootfs::tmp_name(&name))?;
    Ok((target, tmp))
}

/// Whether the journal `entries` may be rolled forward: `Ok(paths to rename)`, or
/// `Err(why not)` naming the first file that is not what the journal expects.
fn check_journal(
    dirs: &mut DirCache,
    entries: &[Entry],
) -> Result<Result<Vec<&'static str>, String>, UsersError> {
    let mut rename = Vec::new();
    for e in entries {
        let (now, tmp) = digests_now(dirs, e.path)?;
        let fits = match &e.after {
            // Not part of the commit: the plan read it, so it must be unchanged.
            None => now == e.before,
            // Not renamed yet: still the old bytes, and the new ones waiting.
            Some(after) if tmp != "-" => now == e.before && tmp == *after,
            // Renamed already.
            Some(after) => now == *after,
        };
        if !fits {
            return Ok(Err(format!(
                "{} changed after the interrupted update was planned (by passwd, useradd, \
                 usermod or an edit by hand)",
                dirs.root.host_path(Path::new(e.path)).display()
            )));
        }
        if e.after.is_some() && tmp != "-" {
            rename.push(e.path);
        }
    }
    Ok(Ok(rename))
}

/// Remove every temporary file of the set, then the journal (when `journal`).
fn discard(dirs: &mut DirCache, journal: bool) -> Result<Vec<String>, UsersError> {
    let mut removed = Vec::new();
    for path in SET {
        if let Ok((dir, name)) = dirs.parent(Path::new(path)) {
            let tmp = rootfs::tmp_name(&name);
            if rootfs::unlink_at(dir, &tmp).is_ok() {
                removed.push(path);
            }
        }
    }
    if journal {
        let root = dirs.root;
        let (etc, jname) = dirs
            .parent(Path::new(JOURNAL))
            .map_err(|e| write_err(root, JOURNAL, e))?;
        match rootfs::unlink_at(etc, &jname) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(write_err(root, JOURNAL, e));
            }
            _ => {}
        }
        // A discarded journal must not come back after a power cut and be checked again
        // against files that may by then have lost the edits it yielded to.
        rootfs::fsync_dir(etc).map_err(|e| write_err(root, JOURNAL, e))?;
        return Ok(Vec::new());
    }
    Ok(removed
        .into_iter()
        .map(|p| format!("discarded an unfinished update of {p}"))
        .collect())
}

/// [`recover`] with directories the caller opened (and goes on using); the warnings are
/// returned, not logged.
pub(super) fn recover_in(dirs: &mut DirCache) -> Result<Vec<String>, UsersError> {
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
    let Some(bytes) = journal else {
        return discard(dirs, false);
    };
    let journal_path = root.host_path(Path::new(JOURNAL));
    // Only our own file names are honoured: a damaged or planted journal cannot make us
    // rename anything else.
    let verdict = match parse_journal(&bytes) {
        Ok(entries) => check_journal(dirs, &entries)?,
        Err(why) => Err(format!("it cannot be read: {why}")),
    };
    match verdict {
        Ok(paths) => {
            roll_forward(dirs, &paths)?;
            Ok(vec![format!(
                "completed an interrupted update of the account files ({} files, journal {})",
                paths.len(),
                journal_path.display()
            )])
        }
        Err(why) => {
            discard(dirs, true)?;
            Ok(vec![format!(
                "discarded the journal of an interrupted update of the account files, {}: \
                 {why}; the files are kept as they are and planned afresh",
                journal_path.display()
            )])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(files: &[(&str, &str)]) -> BTreeMap<String, FileState> {
        files
            .iter()
            .map(|(p, c)| {
                (
                    (*p).to_owned(),
                    FileState {
                        contents: Some(c.as_bytes().to_vec()),
                        perms: None,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn journal_lists_every_file_with_digests_and_reads_back() {
        let before = state(&[("/etc/passwd", "root:x:0:0::/root:/bin/sh\n")]);
        let writes = vec![(
            "/etc/group".to_owned(),
            b"root:x:0:\n".to_vec(),
            Perms {
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        )];
        let text = journal_text(&before, &writes);
        let entries = parse_journal(text.as_bytes()).expect("parse");
        assert_eq!(entries.len(), SET.len());
        let passwd = entries
            .iter()
            .find(|e| e.path == "/etc/passwd")
            .expect("passwd");
        assert_eq!(
            passwd.before,
            digest(Some(b"root:x:0:0::/root:/bin/sh\n".as_slice()))
        );
        assert_eq!(passwd.after, None);
        let group = entries
            .iter()
            .find(|e| e.path == "/etc/group")
            .expect("group");
        assert_eq!(group.before, "-");
        assert_eq!(group.after, Some(digest(Some(b"root:x:0:\n".as_slice()))));
        // The SHA-256 of the empty string, as every implementation gives it.
        assert_eq!(
            digest(Some(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn damaged_or_old_journals_are_not_trusted() {
        let good = journal_text(&BTreeMap::new(), &[]);
        let cut: String = good.lines().take(4).map(|l| format!("{l}\n")).collect();
        for bad in [
            // The first format: paths only.
            "/etc/group\n/etc/passwd\n".to_owned(),
            cut,
            good.replace("/etc/subgid", "/etc/sudoers"),
            good.replacen(" - ", " zz ", 1),
            format!("{good}/etc/passwd - =\n"),
            String::new(),
        ] {
            assert!(parse_journal(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(parse_journal(good.as_bytes()).is_ok());
    }
}
