//! The no-change fast path of the etc step: a cache of what the last verified run saw.
//!
//! A re-run with nothing to do is the common case (every boot activates the generation that
//! is already in place), and the full path pays for it with a walk of all of `/etc`: one
//! open, two `getdents` and a close per directory, a `readlink` per symlink and a byte
//! comparison of every copied file. The cache lets such a run check a handful of inode
//! stamps instead.
//!
//! # What is recorded
//! After a run that *observed* `/etc` in a state for which [`super::plan`] has nothing to do
//! and nothing to report, `/var/lib/stagehand/etc-cache` records:
//! * the input: the etc tree (its canonical path and a hash of the whole listing, sidecars
//!   included), the options, and [`RULES`], the version of the planning rules;
//! * a [`Stamp`] (device, inode, type and mode, owner, size, link count, mtime and ctime) of
//!   every directory the walk listed — `/etc` itself and all below it except `/etc/nixos`'s
//!   contents, which the full path does not walk either;
//! * a stamp of every copied file, of `/etc/.clean`, and of every copy's source file.
//!
//! # Why matching stamps mean the plan is still empty
//! The plan is a function of the tree (same hash), the options, the names and types of the
//! entries of every walked directory, the targets of the symlinks among them, the contents,
//! mode and owner of the copied files and `/etc/.clean`, the sources' contents, and, for
//! owners given by name, `/etc/passwd` and `/etc/group`.
//! * Creating, removing or renaming anything in a directory — which is the only way to
//!   change a symlink's target or an entry's type — changes the directory's mtime and ctime.
//!   A directory made or replaced anywhere below `/etc` therefore shows in its parent, which
//!   is stamped too, down from `/etc`. A mount over a stamped path shows as another device
//!   and inode.
//! * Writing to a file, or `chmod`/`chown` of it, changes its ctime. Unlike the mtime, the
//!   ctime cannot be set from user space (`touch -d` and `rsync -t` set the mtime and bump
//!   the ctime to *now*), so a hand edit cannot hide behind a restored mtime.
//! * Owner names are resolved again from the root's passwd/group on every fast run and
//!   must give the ids the copies have.
//!
//! # Time stamps that are too new to trust ("racily clean", as git calls it)
//! The kernel stamps a change with its coarse clock (a tick: 4 ms here). A change made in
//! the same tick as the stamp we recorded, but after we took it, would leave the stamp
//! unchanged. Every stamp is taken after reading `CLOCK_REALTIME_COARSE` (`clock`); a later
//! change gets a ctime of at least `clock`, so a stamp whose ctime is *before* `clock` would
//! change. A stamp whose ctime is not before `clock` is racy, and the cache is not written
//! at all. File systems that keep whole seconds only (ctime nanoseconds of zero) need a
//! two-second margin instead of a tick. A run that changed `/etc` therefore first waits until
//! the coarse clock has passed the precise time of its last change (one or two ticks; about
//! nothing on a disk, where the flush takes longer), then walks `/etc` once more to verify
//! and record.
//!
//! Anything unexpected — no cache, a damaged one (envelope checksum), another tree, a stamp
//! that differs, a path that cannot be stat'ed, an entry under `/etc/nixos` — means the full
//! path runs. The cache is only ever a reason to skip work that would find nothing to do.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode};
use serde::{Deserialize, Serialize};
use stagehand_common::envelope::{self, Kind};

use super::{EtcOptions, EtcTree, Install, Owner, Owners};
use crate::rootfs::{self, Root};

/// Where the cache lives: outside `/etc`, so that writing it does not change the stamp of
/// `/etc` it records.
pub const CACHE_DIR: &str = "/var/lib/stagehand";
pub const CACHE_NAME: &str = "etc-cache";

/// Bump when [`super::plan`]'s rules change, so that a cache written by an older build
/// cannot vouch for a state the new rules would change.
const RULES: u32 = 1;

const KIND: Kind = Kind {
    magic: *b"SHETCCAC",
    version: 1,
    name: "etc cache",
};

/// A point in time as the kernel stamps files: seconds and nanoseconds.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// What identifies the state of one inode for our purpose (see the module comment).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
    pub mtime: Time,
    pub ctime: Time,
}

impl Stamp {
    pub fn of(st: &rfs::Stat) -> Stamp {
        // The field types differ between architectures; every value fits.
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        let t = |sec: i64, nsec: u64| Time {
            sec,
            nsec: u32::try_from(nsec).unwrap_or(u32::MAX),
        };
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Stamp {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mode: st.st_mode as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink as u64,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: t(st.st_mtime as i64, st.st_mtime_nsec as u64),
            ctime: t(st.st_ctime as i64, st.st_ctime_nsec as u64),
        }
    }

    fn is_dir(&self) -> bool {
        FileType::from_raw_mode(self.mode) == FileType::Directory
    }

    /// Could a change after this stamp was taken still produce the same stamp?
    fn is_racy(&self, clock: Time) -> bool {
        if self.ctime.nsec == 0 {
            // Whole-second file systems (or an exact second by chance: then we only lose
            // the fast path once).
            self.ctime.sec.saturating_add(2) > clock.sec
        } else {
            self.ctime >= clock
        }
    }
}

/// The kernel's coarse clock, which file time stamps are taken from.
pub fn coarse_now() -> Time {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    Time {
        sec: ts.tv_sec,
        nsec: u32::try_from(ts.tv_nsec).unwrap_or(0),
    }
}

/// The precise clock. A change's time stamp is never later than this read after it: the
/// kernel stamps from the coarse clock, which lags behind, or (multigrain time stamps, for
/// an inode whose times were just looked at) from this very clock.
pub fn precise_now() -> Time {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    Time {
        sec: ts.tv_sec,
        nsec: u32::try_from(ts.tv_nsec).unwrap_or(0),
    }
}

/// Wait (at most ~50 ms) until the coarse clock has moved past `t`. With `t` from
/// [`precise_now`] after our last change, every stamp taken afterwards is clear of our own
/// changes (a coarse clock reading taken before it is later than their ctimes).
pub fn wait_past(t: Time) {
    for _ in 0..50 {
        if coarse_now() > t {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The stamps one observation of `/etc` took.
#[derive(Debug, Clone, Default)]
pub struct Stamps {
    /// The coarse clock read before the first stamp.
    pub clock: Time,
    /// Every walked directory, `""` being `/etc` itself.
    pub dirs: Vec<(String, Stamp)>,
    /// Regular files under `/etc` (relative path).
    pub files: std::collections::HashMap<String, Stamp>,
    /// Copy sources: tree-relative entry → (canonical in-root path, stamp).
    pub sources: std::collections::HashMap<String, (String, Stamp)>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EtcCache {
    rules: u32,
    build: String,
    key: u64,
    tree_path: String,
    dirs: Vec<(String, Stamp)>,
    /// Copied files and `.clean`, relative to `/etc`.
    files: Vec<(String, Stamp)>,
    /// Copy sources by canonical in-root path.
    sources: Vec<(String, Stamp)>,
}

/// The identity of the input: the whole listing (sidecars included) and the options.
fn input_key(tree: &EtcTree, opts: EtcOptions) -> u64 {
    let mut h = DefaultHasher::new();
    tree.hash(&mut h);
    opts.skip_resolv_conf.hash(&mut h);
    h.finish()
}

/// Trees with entries under `/etc/nixos` are not cached: that directory is not walked, so
/// its changes would not show.
fn cacheable(tree: &EtcTree) -> bool {
    !tree
        .entries
        .iter()
        .any(|e| e.rel == "nixos" || e.rel.starts_with("nixos/"))
}

/// Build the cache for a state that needed no change, or `None` when it cannot vouch for it.
pub fn build(
    tree: &EtcTree,
    opts: EtcOptions,
    stamps: &Stamps,
    old_clean: &[String],
) -> Option<EtcCache> {
    if !cacheable(tree) || old_clean.iter().any(|r| r.starts_with("nixos/")) {
        return None;
    }
    let mut files = Vec::new();
    let mut sources = Vec::new();
    for e in &tree.entries {
        if let Install::Copy { .. } = e.install {
            files.push((e.rel.clone(), *stamps.files.get(&e.rel)?));
            let (path, st) = stamps.sources.get(&e.rel)?;
            sources.push((path.clone(), *st));
        }
    }
    files.push((".clean".to_owned(), *stamps.files.get(".clean")?));
    let cache = EtcCache {
        rules: RULES,
        build: env!("CARGO_PKG_VERSION").to_owned(),
        key: input_key(tree, opts),
        tree_path: tree.path.clone(),
        dirs: stamps.dirs.clone(),
        files,
        sources,
    };
    if !matches!(cache.dirs.first(), Some((r, _)) if r.is_empty()) {
        return None;
    }
    let racy = cache
        .dirs
        .iter()
        .chain(&cache.files)
        .chain(&cache.sources)
        .any(|(_, s)| s.is_racy(stamps.clock));
    if racy {
        log::debug!("etc cache not written: a time stamp is too recent to trust");
        return None;
    }
    Some(cache)
}

/// The cache file's bytes, `None` when there is none or it cannot be read.
pub fn read_raw(root: &Root) -> Option<Vec<u8>> {
    let (dir, _, _) = root.dir(Path::new(CACHE_DIR), None).ok()?;
    rootfs::read_at(&dir, CACHE_NAME.as_ref()).ok()
}

/// Write `cache` unless `old` already holds exactly these bytes. Failure only costs the fast
/// path next time, so it is logged, not reported. Not flushed: a cache lost or torn by a
/// crash fails its checksum or its stamps, and the full path runs.
pub fn store(root: &Root, cache: &EtcCache, old: Option<&[u8]>) {
    let bytes = match envelope::encode(KIND, cache) {
        Ok(b) => b,
        Err(e) => {
            log::debug!("etc cache not written: {e}");
            return;
        }
    };
    if old == Some(bytes.as_slice()) {
        return;
    }
    let r = root
        .dir(Path::new(CACHE_DIR), Some(Mode::from_raw_mode(0o755)))
        .and_then(|(dir, _, _)| {
            let name = std::ffi::OsStr::new(CACHE_NAME);
            rootfs::write_tmp(
                &dir,
                &rootfs::tmp_name(name),
                &bytes,
                super::own_perms(0o644),
                false,
            )?;
            rootfs::rename_tmp(&dir, name)
        });
    if let Err(e) = r {
        log::debug!("etc cache not written: {e}");
    }
}

fn stat_rel(dir: &std::os::fd::OwnedFd, rel: &str) -> io::Result<Stamp> {
    let st = if rel.is_empty() {
        rfs::fstat(dir)?
    } else {
        rfs::statat(dir, rel, AtFlags::SYMLINK_NOFOLLOW)?
    };
    Ok(Stamp::of(&st))
}

/// Does the cache in `raw` vouch that `/etc` under `root` needs nothing for `tree`?
pub fn still_valid(root: &Root, tree: &EtcTree, opts: EtcOptions, raw: &[u8]) -> bool {
    let Ok(cache) = envelope::decode::<EtcCache>(KIND, raw) else {
        log::debug!("etc cache unreadable, taking the full path");
        return false;
    };
    if cache.rules != RULES
        || cache.build != env!("CARGO_PKG_VERSION")
        || cache.tree_path != tree.path
        || cache.key != input_key(tree, opts)
    {
        log::debug!("etc cache is for another input, taking the full path");
        return false;
    }
    let Ok((etc, _, _)) = root.dir(Path::new("/etc"), None) else {
        return false;
    };
    // Directories first (most likely to differ after a hand edit), then files.
    for (rel, want) in &cache.dirs {
        match stat_rel(&etc, rel) {
            Ok(have) if have == *want && have.is_dir() => {}
            _ => {
                log::debug!("etc cache: /etc/{rel} changed, taking the full path");
                return false;
            }
        }
    }
    for (rel, want) in &cache.files {
        match stat_rel(&etc, rel) {
            Ok(have) if have == *want => {}
            _ => {
                log::debug!("etc cache: /etc/{rel} changed, taking the full path");
                return false;
            }
        }
    }
    for (path, want) in &cache.sources {
        // Relative to the root's descriptor: a symlink on the way would lead elsewhere
        // and give another stamp, so this can only fail towards the full path.
        let rel = path.trim_start_matches('/');
        match rfs::statat(root.fd(), rel, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if Stamp::of(&st) == *want => {}
            _ => {
                log::debug!("etc cache: source {path} changed, taking the full path");
                return false;
            }
        }
    }
    // Owners given by name: the copies must still carry what the names resolve to now.
    let named = tree.entries.iter().any(|e| {
        matches!(&e.install, Install::Copy { user, group, .. }
            if matches!(user, Owner::Name(_)) || matches!(group, Owner::Name(_)))
    });
    if named {
        let owners = Owners::read(root);
        let stamps: std::collections::HashMap<&str, &Stamp> =
            cache.files.iter().map(|(r, s)| (r.as_str(), s)).collect();
        for e in &tree.entries {
            let Install::Copy { user, group, .. } = &e.install else {
                continue;
            };
            let Some(st) = stamps.get(e.rel.as_str()) else {
                return false;
            };
            let uid_ok = match user {
                Owner::Id(_) => true,
                Owner::Name(n) => owners.users.get(n) == Some(&st.uid),
            };
            let gid_ok = match group {
                Owner::Id(_) => true,
                Owner::Name(n) => owners.groups.get(n) == Some(&st.gid),
            };
            if !(uid_ok && gid_ok) {
                log::debug!(
                    "etc cache: owner of /etc/{} resolves differently now",
                    e.rel
                );
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ctime: Time, dir: bool) -> Stamp {
        Stamp {
            dev: 1,
            ino: 2,
            mode: if dir { 0o040_755 } else { 0o100_644 },
            uid: 0,
            gid: 0,
            nlink: 1,
            size: 0,
            mtime: ctime,
            ctime,
        }
    }

    #[test]
    fn racy_stamps_are_not_vouched_for() {
        let tree = EtcTree {
            path: "/nix/store/x-etc/etc".into(),
            entries: Vec::new(),
        };
        let clock = Time {
            sec: 1000,
            nsec: 500,
        };
        let mut st = Stamps {
            clock,
            ..Stamps::default()
        };
        let older = Time {
            sec: 1000,
            nsec: 499,
        };
        st.dirs.push((String::new(), stamp(older, true)));
        st.files.insert(".clean".into(), stamp(older, false));
        let opts = EtcOptions::default();
        assert!(build(&tree, opts, &st, &[]).is_some());
        // Changed in the tick the walk started in: a second change could hide behind it.
        st.dirs.push(("ssh".into(), stamp(clock, true)));
        assert!(build(&tree, opts, &st, &[]).is_none());
        st.dirs.pop();
        // Whole seconds only: two seconds of margin.
        st.files
            .insert(".clean".into(), stamp(Time { sec: 999, nsec: 0 }, false));
        assert!(build(&tree, opts, &st, &[]).is_none());
        st.files
            .insert(".clean".into(), stamp(Time { sec: 997, nsec: 0 }, false));
        assert!(build(&tree, opts, &st, &[]).is_some());
        // Without /etc's own stamp there is nothing to vouch with.
        st.dirs.clear();
        assert!(build(&tree, opts, &st, &[]).is_none());
    }
}
