//! The memory of the etc step: what earlier runs saw in `/etc`, so that a run reads only
//! what changed since.
//!
//! Every boot activates the generation that is already in place, and a switch usually
//! changes a handful of entries; reading all of `/etc` each time (an open, two `getdents`
//! and a close per directory, a `readlink` per link, a byte comparison per copied file)
//! would cost most of the step. So each observation also yields [`Facts`], each paired
//! with the inode [`Stamp`] taken just before it was read:
//! * a directory's entries: names, types, the targets of the links, and for files their
//!   mode, owner and size as listed ([`DirFact`]);
//! * whether a copied file has its source's bytes, with the stamps of both ([`CopyFact`]);
//! * the lines of `/etc/.clean` ([`CleanFact`]).
//!
//! They are kept in `/var/lib/stagehand/etc-cache`. The next observation stats what a fact
//! is about and uses the fact when the stamp is unchanged; anything else — no cache, a
//! damaged one, a stamp that differs, a path that cannot be stat'ed — is read again. The
//! plan is then computed from the observation as always: the facts only save reading.
//!
//! One shortcut decides more: a run whose plan came out empty records its input and the
//! stamps of all its facts ([`Quiet`]). A next run with the same input whose stamps all
//! match would observe the same state and plan the same nothing, so it stops there — the
//! common case of every boot, at the cost of one `stat` per directory and copied file.
//!
//! # Why an unchanged stamp means an unchanged fact
//! * Creating, removing or renaming anything in a directory — the only way to change a
//!   symlink's target or an entry's type — changes the directory's mtime and ctime. A
//!   directory replaced by another shows in its parent (also stamped, down from `/etc`) and
//!   as another inode; a mount over it as another device and inode.
//! * Writing to a file, or `chmod`/`chown` of it, changes its ctime. Unlike the mtime, the
//!   ctime cannot be set from user space (`touch -d` and `rsync -t` set the mtime and bump
//!   the ctime to *now*), so a hand edit cannot hide behind a restored mtime. That is why
//!   the copied files and `.clean` are stat'ed on every run: their directory does not
//!   change when they do. Other files' mode, owner and size are not used by the plan.
//! * A fact is true of the state its stamp describes, whatever happened afterwards. So a
//!   run that changed `/etc` reads again only the directories and files it changed, and
//!   keeps the facts it took before for the rest; a change someone else made meanwhile
//!   shows as a new stamp next time. In a directory it read again, a link whose inode
//!   number is the one it saw before its changes keeps the target read then (a symlink's
//!   target is fixed for the life of its inode); the one change that would go unseen is
//!   someone else deleting and re-creating that link during the run with the freed inode
//!   number reused. Facts from earlier runs never get this: their listings are used only
//!   when the directory's stamp is unchanged.
//!
//! # Time stamps that are too new to trust ("racily clean", as git calls it)
//! The kernel stamps a change with its coarse clock (a tick: 4 ms here). A change made in
//! the same tick as the stamp we recorded, but after we took it, would leave the stamp
//! unchanged. Every observation reads `CLOCK_REALTIME_COARSE` before its first stamp; a
//! later change gets a ctime of at least that, so a stamp whose ctime is *before* it would
//! change. A fact whose stamp is not before it is racy: it is used within the run but
//! never kept. File systems that keep whole seconds only (ctime nanoseconds of zero) need a
//! two-second margin instead of a tick. A run that changed `/etc` therefore reads those
//! places again only once the coarse clock has passed the precise time of its last change
//! (at most a tick after it; on a disk, flushing the changes, done first, usually takes
//! longer). In `activate` the read-back runs on a thread of its own, alongside the later
//! steps ([`super::Recheck`]), and is never waited for: if the tick has not passed when the
//! last step ends, the run gives the read-back up and keeps the facts it took before its
//! changes, less those about the places it changed. The next run has no fact about those
//! and reads them, as it reads any place someone changed — what git does with a racily
//! clean entry — and can stop early from the run after it on. Only `stagehand etc` on its
//! own (`setup_etc`) waits out the tick, parked ([`wait_past`]).

use rustc_hash::FxHashMap as HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode};
use serde::{Deserialize, Serialize};
use stagehand_common::envelope::{self, Kind};

use super::tree::{EtcTree, Install, Owner};
use super::EtcOptions;
use stagehand_common::rootfs::{self, Node, Root};

/// Where the cache lives: outside `/etc`, so that writing it does not change a stamp it
/// records.
pub const CACHE_DIR: &str = "/var/lib/stagehand";
pub const CACHE_NAME: &str = "etc-cache";

/// Bump when what a fact means changes, so that a cache written by an older build is not
/// read as something it is not.
const RULES: u32 = 2;

/// The cache file is two envelopes one after the other: a small head (which build wrote
/// it, and the [`Quiet`] record), then the facts. A run that finds its input quiet decodes
/// the head only.
const HEAD: Kind = Kind {
    magic: *b"SHETCCAC",
    version: 2,
    name: "etc cache",
};
const FACTS: Kind = Kind {
    magic: *b"SHETCFAC",
    version: 1,
    name: "etc cache facts",
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

    pub fn is_dir(&self) -> bool {
        FileType::from_raw_mode(self.mode) == FileType::Directory
    }

    /// Could a change after this stamp was taken still produce the same stamp?
    pub fn is_racy(&self, clock: Time) -> bool {
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

/// How a [`wait_past`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The coarse clock has moved past the time waited for: stamps taken from now on are
    /// clear of the changes made before it.
    Passed,
    /// The clock did not move within the bound (50 ms, many ticks: a stopped or odd clock).
    /// Reading back is still correct then — facts that are too new are marked racy and not
    /// kept — only less useful.
    Bound,
    /// Told to hurry before the clock passed: the caller gives the read-back up.
    Hurried,
}

/// Wait until the coarse clock has moved past `t`, or until `hurry` is set (checked first
/// thing and after every wake-up; whoever sets it unparks this thread, see
/// [`super::Recheck::finish`]). With `t` from [`precise_now`] after our last change, every
/// stamp taken once the clock has passed is clear of our own changes (a coarse clock reading
/// taken before it is later than their ctimes). Parks until the tick is due (the coarse
/// clock's resolution is the tick), then polls finely: waiting a whole millisecond at a time
/// overshot by most of one. Parking rather than sleeping is what lets `hurry` cut it short.
pub fn wait_past(t: Time, hurry: &std::sync::atomic::AtomicBool) -> Waited {
    let nanos = |t: Time| i128::from(t.sec) * 1_000_000_000 + i128::from(t.nsec);
    let res = rustix::time::clock_getres(rustix::time::ClockId::RealtimeCoarse);
    let tick = i128::from(res.tv_sec) * 1_000_000_000 + i128::from(res.tv_nsec);
    let due = nanos(t) + tick.clamp(0, 20_000_000);
    wait_until(
        || coarse_now() > t,
        || {
            let ahead = u64::try_from(due - nanos(precise_now())).unwrap_or(0);
            std::time::Duration::from_nanos(ahead.clamp(50_000, 1_000_000))
        },
        hurry,
        std::time::Duration::from_millis(50),
    )
}

/// [`wait_past`] with the clock left out: wait until `passed()`, parking for `pause()` at a
/// time, giving up when `hurry` is set first or after `bound`.
fn wait_until(
    passed: impl Fn() -> bool,
    pause: impl Fn() -> std::time::Duration,
    hurry: &std::sync::atomic::AtomicBool,
    bound: std::time::Duration,
) -> Waited {
    let start = std::time::Instant::now();
    loop {
        if passed() {
            return Waited::Passed;
        }
        // Acquire: pairs with the hurrying thread's store, made before its unpark.
        if hurry.load(std::sync::atomic::Ordering::Acquire) {
            return Waited::Hurried;
        }
        if start.elapsed() > bound {
            return Waited::Bound;
        }
        // An unpark that came before this call makes it return at once, so a hurry set
        // between the check above and here is not missed.
        std::thread::park_timeout(pause());
    }
}

/// A directory's entries (sorted by name, each with its inode number), listed after
/// `stamp` was taken. Subdirectories are listed as `Node::Dir` with mode and owner zero
/// (the walk does not look at them); files with what `stat` said when listed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DirFact {
    pub stamp: Stamp,
    pub entries: Vec<(String, u64, Node)>,
}

/// Whether the copied file (stamped `dest`) had the bytes of the regular file at the
/// in-root path `source` (stamped `source_stamp`, reached without a symlink).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CopyFact {
    pub dest: Stamp,
    pub source: String,
    pub source_stamp: Stamp,
    pub same: bool,
}

/// The lines of `/etc/.clean`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CleanFact {
    pub stamp: Stamp,
    pub lines: Vec<String>,
}

/// A fact, and whether its stamp is too recent for a later run to trust.
#[derive(Debug, Clone)]
pub struct Held<T> {
    pub fact: T,
    pub racy: bool,
}

/// Everything one observation established. Keys are paths relative to `/etc` (`""` is
/// `/etc` itself); copies are keyed by their tree entry.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub dirs: HashMap<String, Held<DirFact>>,
    pub copies: HashMap<String, Held<CopyFact>>,
    pub clean: Option<Held<CleanFact>>,
}

/// The facts a later run may trust, in a stable order so that the same facts give the
/// same bytes (and an unchanged cache is not rewritten).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    dirs: Vec<(String, DirFact)>,
    copies: Vec<(String, CopyFact)>,
    clean: Option<CleanFact>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Head {
    rules: u32,
    build: String,
    quiet: Option<Quiet>,
}

/// Left by a run that found nothing to do: the input it had and the stamps of everything
/// its observation rested on. When the next run has the same input and every stamp is
/// unchanged, its observation would be the same and so would its (empty) plan: it can stop
/// after a `stat` per directory and copied file, without decoding a listing or planning.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Quiet {
    key: u64,
    dirs: Vec<(String, Stamp)>,
    copies: Vec<QuietCopy>,
    clean: Stamp,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct QuietCopy {
    rel: String,
    dest: Stamp,
    source: String,
    source_stamp: Stamp,
}

/// [`Snapshot`] as written: borrowed from the facts (the same encoding, without copying).
#[derive(Serialize)]
struct SnapshotRef<'a> {
    dirs: Vec<(&'a str, &'a DirFact)>,
    copies: Vec<(&'a str, &'a CopyFact)>,
    clean: Option<&'a CleanFact>,
}

/// The facts of `m` a later run may trust, sorted by key.
fn trusted<T>(m: &HashMap<String, Held<T>>) -> Vec<(&str, &T)> {
    let mut v: Vec<(&str, &T)> = m
        .iter()
        .filter(|(_, h)| !h.racy)
        .map(|(k, h)| (k.as_str(), &h.fact))
        .collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    v
}

fn snapshot(facts: &Facts) -> SnapshotRef<'_> {
    SnapshotRef {
        dirs: trusted(&facts.dirs),
        copies: trusted(&facts.copies),
        clean: facts.clean.as_ref().filter(|h| !h.racy).map(|h| &h.fact),
    }
}

/// The identity of the input: the whole listing (sidecars included) and the options.
pub fn input_key(tree: &EtcTree, opts: EtcOptions) -> u64 {
    let mut h = DefaultHasher::new();
    tree.hash(&mut h);
    opts.skip_resolv_conf.hash(&mut h);
    h.finish()
}

/// The [`Quiet`] record for a run that observed `facts` and planned nothing for `tree`, or
/// `None` when the facts cannot vouch for that on their own: one of them is racy, or the
/// state also rests on paths under `/etc/nixos` (looked up one by one, never recorded).
pub fn quiet(tree: &EtcTree, key: u64, facts: &Facts) -> Option<Quiet> {
    let under_nixos = |r: &String| r == "nixos" || r.starts_with("nixos/");
    if tree.entries.iter().any(|e| under_nixos(&e.rel)) {
        return None;
    }
    let clean = facts.clean.as_ref().filter(|h| !h.racy)?;
    if clean.fact.lines.iter().any(under_nixos) {
        return None;
    }
    let mut dirs = Vec::with_capacity(facts.dirs.len());
    for (rel, h) in &facts.dirs {
        if h.racy {
            return None;
        }
        dirs.push((rel.clone(), h.fact.stamp));
    }
    dirs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut copies = Vec::new();
    for e in &tree.entries {
        if let Install::Copy { .. } = e.install {
            let h = facts.copies.get(&e.rel).filter(|h| !h.racy)?;
            copies.push(QuietCopy {
                rel: e.rel.clone(),
                dest: h.fact.dest,
                source: h.fact.source.clone(),
                source_stamp: h.fact.source_stamp,
            });
        }
    }
    Some(Quiet {
        key,
        dirs,
        copies,
        clean: clean.fact.stamp,
    })
}

/// The cache as read at the start of a run.
#[derive(Debug, Default)]
pub struct Cache {
    raw: Option<Vec<u8>>,
    head: Option<Head>,
}

/// Read the cache (an empty one when there is none or it is unusable).
pub fn read(root: &Root) -> Cache {
    let Some(raw) = read_raw(root) else {
        return Cache::default();
    };
    // The facts are decoded only when needed, but checked now: a damaged cache is not
    // used at all.
    let head = envelope::split_first(&raw)
        .ok_or_else(|| "truncated".to_owned())
        .and_then(|(h, f)| {
            envelope::verify(FACTS, f).map_err(|e| e.to_string())?;
            envelope::decode::<Head>(HEAD, h).map_err(|e| e.to_string())
        });
    let head = match head {
        Ok(h) if h.rules == RULES && h.build == env!("CARGO_PKG_VERSION") => Some(h),
        Ok(_) => {
            log::debug!("etc cache is from another build, reading /etc afresh");
            None
        }
        Err(e) => {
            log::debug!("etc cache unreadable ({e}), reading /etc afresh");
            None
        }
    };
    Cache {
        raw: Some(raw),
        head,
    }
}

impl Cache {
    pub fn raw(&self) -> Option<&[u8]> {
        self.raw.as_deref()
    }

    pub fn into_raw(self) -> Option<Vec<u8>> {
        self.raw
    }

    /// The remembered facts (none when the cache is unusable).
    pub fn facts(&self) -> Facts {
        fn held<T>(fact: T) -> Held<T> {
            Held { fact, racy: false }
        }
        let (Some(raw), Some(_)) = (&self.raw, &self.head) else {
            return Facts::default();
        };
        let snap = envelope::split_first(raw)
            .ok_or_else(|| "truncated".to_owned())
            .and_then(|(_, f)| envelope::decode::<Snapshot>(FACTS, f).map_err(|e| e.to_string()));
        match snap {
            Ok(snap) => Facts {
                dirs: snap.dirs.into_iter().map(|(k, f)| (k, held(f))).collect(),
                copies: snap.copies.into_iter().map(|(k, f)| (k, held(f))).collect(),
                clean: snap.clean.map(held),
            },
            Err(e) => {
                log::debug!("etc cache facts unreadable ({e}), reading /etc afresh");
                Facts::default()
            }
        }
    }

    /// Did the last run find nothing to do for this input (`key`: [`input_key`]), and is
    /// every stamp its observation rested on unchanged (see [`Quiet`])?
    pub fn is_quiet(&self, root: &Root, tree: &EtcTree, key: u64) -> bool {
        let Some(q) = self.head.as_ref().and_then(|h| h.quiet.as_ref()) else {
            return false;
        };
        if q.key != key {
            return false;
        }
        let Ok((etc, _, _)) = root.dir(Path::new("/etc"), None) else {
            return false;
        };
        let same = |rel: &str, want: &Stamp| matches!(stat_rel(&etc, rel), Ok(s) if s == *want);
        if !q
            .dirs
            .iter()
            .all(|(rel, want)| same(rel, want) && want.is_dir())
        {
            log::debug!("etc cache: a directory changed");
            return false;
        }
        if !same(".clean", &q.clean) || !q.copies.iter().all(|c| same(&c.rel, &c.dest)) {
            log::debug!("etc cache: a copied file changed");
            return false;
        }
        // Relative to the root's descriptor: a symlink on the way would lead elsewhere and
        // give another stamp, so this can only fail towards reading.
        let source_same = |c: &QuietCopy| {
            let rel = c.source.trim_start_matches('/');
            matches!(rfs::statat(root.fd(), rel, AtFlags::SYMLINK_NOFOLLOW),
                Ok(st) if Stamp::of(&st) == c.source_stamp)
        };
        if !q.copies.iter().all(source_same) {
            log::debug!("etc cache: the source of a copy changed");
            return false;
        }
        // Owners given by name: the copies must still carry what the names resolve to now.
        if super::tree::uses_owner_names(tree) {
            let owners = super::observe::Owners::read(root);
            let dests: HashMap<&str, &Stamp> =
                q.copies.iter().map(|c| (c.rel.as_str(), &c.dest)).collect();
            for e in &tree.entries {
                let Install::Copy { user, group, .. } = &e.install else {
                    continue;
                };
                let Some(st) = dests.get(e.rel.as_str()) else {
                    return false;
                };
                let resolves = |o: &Owner, table: &HashMap<String, u32>, have: u32| match o {
                    Owner::Id(_) => true,
                    Owner::Name(n) => table.get(n) == Some(&have),
                };
                if !resolves(user, &owners.users, st.uid)
                    || !resolves(group, &owners.groups, st.gid)
                {
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
}

/// The cache file's bytes, `None` when there is none or it cannot be read.
pub fn read_raw(root: &Root) -> Option<Vec<u8>> {
    let (dir, _, _) = root.dir(Path::new(CACHE_DIR), None).ok()?;
    rootfs::read_at(&dir, CACHE_NAME.as_ref()).ok()
}

/// Keep the trusted part of `facts` (and `quiet`), unless `old` already holds exactly that.
/// Failure only costs reading next time, so it is logged, not reported. Not flushed: a
/// cache lost or torn by a crash fails its checksum or its stamps, and `/etc` is read.
pub fn store(root: &Root, facts: &Facts, quiet: Option<Quiet>, old: Option<&[u8]>) {
    let head = Head {
        rules: RULES,
        build: env!("CARGO_PKG_VERSION").to_owned(),
        quiet,
    };
    let bytes = envelope::encode(HEAD, &head).and_then(|mut b| {
        b.extend(envelope::encode(FACTS, &snapshot(facts))?);
        Ok(b)
    });
    let bytes = match bytes {
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
                rootfs::own_perms(0o644),
                false,
            )?;
            rootfs::rename_tmp(&dir, name)
        });
    if let Err(e) = r {
        log::debug!("etc cache not written: {e}");
    }
}

/// The stamp of `rel` under the directory `dir` (`""`: `dir` itself), not following a
/// final symlink.
pub fn stat_rel(dir: &std::os::fd::OwnedFd, rel: &str) -> io::Result<Stamp> {
    let st = if rel.is_empty() {
        rfs::fstat(dir)?
    } else {
        rfs::statat(dir, rel, AtFlags::SYMLINK_NOFOLLOW)?
    };
    Ok(Stamp::of(&st))
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
    fn racy_stamps_are_recognised() {
        let clock = Time {
            sec: 1000,
            nsec: 500,
        };
        let older = Time {
            sec: 1000,
            nsec: 499,
        };
        assert!(!stamp(older, true).is_racy(clock));
        // Changed in the tick the observation started in: a second change could hide.
        assert!(stamp(clock, true).is_racy(clock));
        // Whole seconds only: two seconds of margin.
        assert!(stamp(Time { sec: 999, nsec: 0 }, false).is_racy(clock));
        assert!(!stamp(Time { sec: 997, nsec: 0 }, false).is_racy(clock));
    }

    /// The read-back's wait for the clock tick ends when told to hurry: at once when told
    /// before, and when parked, as soon as it is unparked — not when its pause (here far
    /// longer than the test allows) runs out. A clock that has passed wins over a hurry:
    /// then reading back is work, not waiting.
    #[test]
    fn a_hurried_wait_returns_at_once() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};
        let long = Duration::from_secs(3600);
        let never = || false;

        let told = AtomicBool::new(true);
        let t = Instant::now();
        assert_eq!(wait_until(never, || long, &told, long), Waited::Hurried);
        assert!(t.elapsed() < Duration::from_secs(60));
        assert_eq!(wait_until(|| true, || long, &told, long), Waited::Passed);

        // Told while parked (or about to park: the unpark is then kept for the park). A
        // waiter that missed the unpark would wake after its 30 s pause and fail the test.
        let pause = Duration::from_secs(30);
        let hurry = AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                tx.send(()).expect("send");
                wait_until(never, || pause, &hurry, long)
            });
            rx.recv().expect("started");
            std::thread::sleep(Duration::from_millis(20));
            let t = Instant::now();
            hurry.store(true, Ordering::Release);
            waiter.thread().unpark();
            assert_eq!(waiter.join().expect("join"), Waited::Hurried);
            // Far below the pause; generous for a loaded machine.
            assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        });

        // The real clock: a time already passed needs no wait, hurried or not.
        let past = Time { sec: 0, nsec: 1 };
        assert_eq!(wait_past(past, &AtomicBool::new(false)), Waited::Passed);
        assert_eq!(wait_past(past, &AtomicBool::new(true)), Waited::Passed);
        // A time the clock will not reach for an hour: hurried at once.
        let later = Time {
            sec: precise_now().sec + 3600,
            nsec: 0,
        };
        let t = Instant::now();
        assert_eq!(wait_past(later, &told), Waited::Hurried);
        assert!(t.elapsed() < Duration::from_secs(10));
        // Not hurried, it keeps to its bound (50 ms) rather than waiting for the hour.
        let t = Instant::now();
        assert_eq!(wait_past(later, &AtomicBool::new(false)), Waited::Bound);
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn only_trusted_facts_are_kept_in_a_stable_order() {
        let clock = Time { sec: 10, nsec: 5 };
        let mut facts = Facts::default();
        for (rel, t, racy) in [("b", 1, false), ("a", 2, false), ("c", 3, true)] {
            let st = stamp(Time { sec: t, nsec: 1 }, true);
            facts.dirs.insert(
                rel.into(),
                Held {
                    fact: DirFact {
                        stamp: st,
                        entries: vec![("x".into(), 7, Node::Symlink(b"/etc/static/x".to_vec()))],
                    },
                    racy: racy || st.is_racy(clock),
                },
            );
        }
        let snap = snapshot(&facts);
        let names: Vec<&str> = snap.dirs.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["a", "b"]);
        let copy = facts.clone();
        let again = snapshot(&copy);
        assert_eq!(
            envelope::encode(FACTS, &snap).ok(),
            envelope::encode(FACTS, &again).ok()
        );
    }
}
