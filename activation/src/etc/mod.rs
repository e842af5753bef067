//! `/etc` from the generation's etc tree, with the semantics of NixOS's `setup-etc.pl`.
//!
//! The work is split in three: [`list_tree`] reads the etc tree of a generation (done once at
//! build time by `stagehand compile` and stored in the plan), [`observe`] reads what `/etc`
//! holds now, and [`plan`] — a pure function of the two — decides what to change. [`apply`]
//! then carries the plan out under the root. Nothing is written when `/etc` already matches.
//! [`setup_etc`] does not read all of `/etc` every time: the [`cache`] remembers what earlier
//! runs saw, with the inode stamps that vouch for it, so a run reads only the directories
//! and files that changed since; and when the last run found nothing to do for the same
//! input and no stamp changed, it stops after the `stat` calls.
//!
//! What the plan does, in `setup-etc.pl` order:
//! 1. point `/etc/static` at the tree (atomic symlink swap);
//! 2. remove every symlink under `/etc` (not `/etc/nixos` itself nor anything under it, and
//!    not below a user's symlinked directory: the walk, like `setup-etc.pl`'s, follows no
//!    link) whose target starts with `/etc/static` and whose counterpart in the new tree is
//!    no longer a symlink;
//! 3. for each tree entry, in pre-order: create the parent directory; if the entry is a symlink
//!    and `/etc/<rel>` is a real directory, delete the directory when it holds only links into
//!    `/etc/static/`, else warn that it holds user files; then
//!    * `<rel>.mode` = `direct-symlink`: `/etc/<rel>` links straight to the tree link's target;
//!    * other `<rel>.mode`: copy the file with that mode and the owner from `<rel>.uid` /
//!      `<rel>.gid` (`+N` numeric, or a name looked up in the root's `/etc/passwd` /
//!      `/etc/group`, never the host's);
//!    * other symlinks: `/etc/<rel>` → `/etc/static/<rel>`, replacing whatever is there;
//! 4. delete files listed in the previous `/etc/.clean` that the new tree no longer has,
//!    also through a user's symlink to a directory (`/etc/ssh -> /srv/persist/ssh`), which
//!    is resolved inside the root, as `setup-etc.pl`'s `unlink "/etc/$fn"` reaches them;
//! 5. rewrite `/etc/.clean` (sorted list of copied entries) and create `/etc/NIXOS`.
//!
//! Files and links that no generation declared are never touched.
//!
//! One submodule per part: `tree` (the generation's etc tree and its sidecars), `observe`
//! (what `/etc` holds now), [`cache`] (what earlier runs saw), `plan` (the pure decision),
//! `apply` (carrying it out), `sources` (reading the copies' sources). This file runs the
//! step: [`setup_etc`], [`preview`].

mod apply;
pub mod cache;
mod observe;
mod plan;
mod sources;
mod tree;

pub use apply::{apply, EtcOutcome};
pub use observe::{observe, EtcState, Owners};
pub use plan::{plan, EtcAction, EtcOptions, EtcPlan};
pub use tree::{list_tree, EntryKind, EtcTree, Install, Owner, TreeEntry};

use apply::{apply_keeping_dirs, Applied};
use observe::{observe_with, Reuse};
use plan::plan_observed;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::lock::{self, ActivationLock, LockError};
use stagehand_common::rootfs::Root;

/// The static link `setup-etc.pl` maintains, and the prefix that marks a link as ours.
const STATIC: &str = "/etc/static";

/// A problem with one entry. Such problems do not stop the others (as in NixOS), but make
/// the step fail at the end.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub enum EtcIssue {
    BadMode { sidecar: String, value: String },
    MissingSidecar { sidecar: String },
    UnreadableSidecar { sidecar: String, error: String },
    DirectNotSymlink { entry: String },
    UnsafePath { rel: String },
    UnknownUser { sidecar: String, name: String },
    UnknownGroup { sidecar: String, name: String },
    UserFilesInDir { path: String },
    Io { action: String, error: String },
}

impl fmt::Display for EtcIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMode { sidecar, value } => write!(
                f,
                "{sidecar}: mode {value:?} is neither an octal mode (like 0440) nor \
                 \"direct-symlink\"; fix environment.etc.<name>.mode"
            ),
            Self::MissingSidecar { sidecar } => write!(
                f,
                "{sidecar} is missing although the .mode sidecar exists; rebuild the etc tree"
            ),
            Self::UnreadableSidecar { sidecar, error } => {
                write!(f, "{sidecar}: cannot read: {error}; rebuild the etc tree")
            }
            Self::DirectNotSymlink { entry } => write!(
                f,
                "{entry}: mode is direct-symlink but the tree entry is not a symlink; \
                 rebuild the etc tree"
            ),
            Self::UnsafePath { rel } => write!(
                f,
                "etc entry {rel:?} is not a plain relative path inside /etc (it has '..', \
                 '.', an empty or absolute component); the plan or tree is corrupt, rebuild it"
            ),
            Self::UnknownUser { sidecar, name } => write!(
                f,
                "{sidecar}: user {name:?} is not in the system's /etc/passwd, the file was \
                 installed owned by root; declare users.users.{name} or use \"+<uid>\""
            ),
            Self::UnknownGroup { sidecar, name } => write!(
                f,
                "{sidecar}: group {name:?} is not in the system's /etc/group, the file was \
                 installed owned by group root; declare users.groups.{name} or use \"+<gid>\""
            ),
            Self::UserFilesInDir { path } => write!(
                f,
                "{path} is a directory that contains user files, so it cannot become a \
                 symlink; move the files away and activate again"
            ),
            Self::Io { action, error } => write!(f, "cannot {action}: {error}"),
        }
    }
}

/// Problems that stop the whole step.
#[derive(Debug)]
pub enum EtcError {
    /// The etc tree cannot be read.
    Tree { path: PathBuf, error: io::Error },
    /// `/etc` cannot be read.
    Observe { path: PathBuf, error: io::Error },
    /// `/etc/static` cannot be pointed at the new tree (fatal in NixOS too).
    Static { path: PathBuf, error: io::Error },
    /// The etc tree is `/etc` or lies inside it: `/etc/static` would point into `/etc`
    /// (at itself, for `/etc`), and every link through it would loop.
    TreeInEtc { tree: PathBuf, resolved: PathBuf },
    /// The activation lock of the root could not be taken ([`crate::lock`]).
    Lock(LockError),
}

impl fmt::Display for EtcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tree { path, error } => write!(
                f,
                "cannot read the etc tree {}: {error}; check that the generation is complete \
                 (nix-store --verify-path)",
                path.display()
            ),
            Self::Observe { path, error } => write!(
                f,
                "cannot read the current /etc at {}: {error}; check that the root is mounted \
                 and readable",
                path.display()
            ),
            Self::Static { path, error } => write!(
                f,
                "cannot point {} at the new etc tree: {error}; /etc must be writable and \
                 /etc/static must not be a directory",
                path.display()
            ),
            Self::TreeInEtc { tree, resolved } => write!(
                f,
                "the etc tree {} (resolved inside the root: {}) is /etc itself or inside it; \
                 /etc/static would point into /etc and loop. Pass the generation's etc tree in \
                 the store instead (<toplevel>/etc, a /nix/store/…-etc/etc directory)",
                tree.display(),
                resolved.display()
            ),
            Self::Lock(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for EtcError {}

/// Refuse an etc tree whose resolved in-root path `resolved` is `/etc` or under it (also
/// when `/etc` is itself a link, e.g. to a persistent directory).
pub(crate) fn refuse_tree_in_etc(
    root: &Root,
    tree: &Path,
    resolved: &Path,
) -> Result<(), EtcError> {
    let etc = Path::new("/etc");
    let etc_resolved = root.canonicalize(etc).ok().filter(|p| p != Path::new("/"));
    if resolved.starts_with(etc) || etc_resolved.is_some_and(|e| resolved.starts_with(e)) {
        return Err(EtcError::TreeInEtc {
            tree: tree.to_path_buf(),
            resolved: resolved.to_path_buf(),
        });
    }
    Ok(())
}

/// `rel` is usable as a path under `/etc`: plain names only.
pub fn is_safe_rel(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.contains('\0')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The whole `etc` step: observe (reading only what the [`cache`] cannot vouch for), plan,
/// apply, and remember what is in `/etc` now for the next run. When the last run found
/// nothing to do for the same input and nothing it rested on changed, the step stops after
/// checking that ([`cache::Quiet`]). A run that writes holds the root's activation lock
/// ([`crate::lock`]) throughout, so that two runs never interleave.
pub fn setup_etc(
    root: &Root,
    tree: &EtcTree,
    opts: EtcOptions,
    dry_run: bool,
) -> Result<EtcOutcome, EtcError> {
    let held = if dry_run {
        None
    } else {
        Some(lock::lock(root).map_err(EtcError::Lock)?)
    };
    let (out, recheck) = setup_etc_deferred(root, tree, opts, held.as_ref())?;
    if let Some(r) = recheck {
        // Never hurried: waiting out the rest of the tick (at most one, parked) here lets
        // this run's own read-back leave a cache on which the next run stops after its
        // `stat` calls. `stagehand etc` is the only caller; no boot or switch runs it
        // (they run `activate`, which does not wait: see `Recheck`).
        r.finish(root, tree, &std::sync::atomic::AtomicBool::new(false));
    }
    Ok(out)
}

/// What is left of a run that changed `/etc`: making its changes durable, reading back what
/// it changed and remembering it for the next run. The read-back can only start once the
/// coarse clock has passed the last change (before that, the new stamps are racy: see
/// [`cache`]), so `activate` runs all of it on a thread of its own while its other steps
/// run, and when it reaches the end tells the thread to hurry (`hurry` of
/// [`Recheck::finish`]). It never waits for the clock there: if the tick has passed, the
/// thread reads back (work, not waiting); if not, it gives the read-back up and stores
/// what the run saw before it changed anything, less the places it changed, which the next
/// run reads again like any changed place ([`ReadBack::LeftToNextRun`]). `Recheck` is
/// `Send` for that.
pub struct Recheck {
    facts: cache::Facts,
    dirs: HashSet<String>,
    files: HashSet<String>,
    applied: Applied,
    key: u64,
    opts: EtcOptions,
    old: Option<Vec<u8>>,
    changed_at: cache::Time,
}

/// How [`Recheck::finish`] ended: what the cache it left holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBack {
    /// The changed places were read back and stored (with a [`cache::Quiet`] record when
    /// they need nothing more): the next run may stop after its `stat` calls.
    Done,
    /// Hurried before the clock tick had passed: the facts from before the run are stored,
    /// less those about the places it changed, which the next run reads again.
    LeftToNextRun,
    /// Nothing stored: `/etc` could not be flushed (the cache must not vouch for a state a
    /// power cut could take back) or could not be read back. The next run reads what the
    /// old cache cannot vouch for.
    NotStored,
}

impl Recheck {
    /// Flush the run's changes, then read back what it changed (the rest of what it saw
    /// before stays true of the stamps it was seen with) and keep it. If the state read back
    /// needs nothing more (as it should, unless someone changed /etc meanwhile), the next
    /// run may stop early. The read-back waits for the clock tick — parked, so that the
    /// thread that sets `hurry` and then unparks this one cuts the wait short; hurried before
    /// the tick has passed, it leaves the read-back to the next run.
    pub fn finish(self, root: &Root, tree: &EtcTree, hurry: &AtomicBool) -> ReadBack {
        self.finish_with(root, tree, |t| cache::wait_past(t, hurry))
    }

    /// [`Recheck::finish`] with the wait for the clock given (the tests choose its ending).
    fn finish_with(
        self,
        root: &Root,
        tree: &EtcTree,
        wait_past: impl FnOnce(cache::Time) -> cache::Waited,
    ) -> ReadBack {
        // First, while the clock tick passes (on a disk the flush takes longer than that).
        if !self.make_durable(root) {
            // The cache must not vouch for a state that may not survive a power cut: the
            // next run reads what this one changed.
            log::debug!("etc cache not updated: /etc could not be flushed");
            return ReadBack::NotStored;
        }
        if wait_past(self.changed_at) == cache::Waited::Hurried {
            self.leave_to_next_run(root);
            return ReadBack::LeftToNextRun;
        }
        let reuse = Reuse::Except {
            dirs: &self.dirs,
            files: &self.files,
            written: &self.applied.written,
        };
        match observe_with(root, tree, self.facts, reuse, self.applied.dirs) {
            Ok(mut again) => {
                let check = plan_observed(root, tree, &mut again.state, self.opts);
                let quiet = quiet_if_empty(tree, self.key, (&again.facts, &again.state), &check);
                cache::store(root, &again.facts, quiet, self.old.as_deref());
                log::debug!("etc read-back: {} places read again", again.reads);
                ReadBack::Done
            }
            Err(e) => {
                log::debug!("etc cache not updated: {e}");
                ReadBack::NotStored
            }
        }
    }

    /// Store what the run saw before it changed anything, less the facts about the places
    /// it changed: each of the others is still true of the stamp it was taken with (the
    /// run did not touch it), and a later run uses it only when that stamp is unchanged.
    /// The changed places have no fact, so the next run reads them — as it reads a place
    /// anyone else changed, and as git re-reads a racily clean entry. No [`cache::Quiet`]
    /// record: nothing vouches for the state after the changes yet. (A fact about a
    /// directory the run removed stays until the next run, which never reaches it: its
    /// parent is read again and no longer lists it.)
    fn leave_to_next_run(self, root: &Root) {
        let Recheck {
            mut facts,
            dirs,
            files,
            old,
            ..
        } = self;
        facts.dirs.retain(|rel, _| !dirs.contains(rel));
        facts.copies.retain(|rel, _| !files.contains(rel));
        if files.contains(".clean") {
            facts.clean = None;
        }
        log::debug!(
            "etc read-back left to the next run (the clock tick had not passed): \
             {} directories and {} files to read again",
            dirs.len(),
            files.len()
        );
        cache::store(root, &facts, None, old.as_deref());
    }
}

impl Recheck {
    /// `fsync` the directory the run's last change was made in. What it buys: when
    /// `activate` returns, `/etc` is on disk as the report says, and the cache, stored after
    /// this, never describes a state that a power cut could take back. On ext4 and XFS the
    /// journal is written in order, so committing the last change commits every earlier one
    /// too: one flush for the whole run. Strictly by POSIX each changed directory would
    /// need an `fsync` of its own, and each is a device flush (a first run changes ~100
    /// directories: 175 ms on this machine's disk, against ~2 ms for one); a second
    /// `syncfs` would also wait for every other dirty page of the file system. On a file
    /// system that does not persist metadata in order, a power cut shortly after the run
    /// can still take back some of its links and removals — each entry stays its old or
    /// its new version (the copies' bytes were flushed before their renames, in `apply`),
    /// and the next activation finishes the job, as after a kill. `false` when the flush
    /// failed (logged).
    fn make_durable(&self, root: &Root) -> bool {
        let Some(rel) = &self.applied.last_dir else {
            return true;
        };
        let flushed = match self.applied.dirs.get(rel) {
            Some(fd) => stagehand_common::rootfs::fsync_dir(fd),
            None => {
                let path = if rel.is_empty() {
                    PathBuf::from("/etc")
                } else {
                    Path::new("/etc").join(rel)
                };
                root.dir(&path, None)
                    .and_then(|(fd, _, _)| stagehand_common::rootfs::fsync_dir(&fd))
            }
        };
        match flushed {
            Ok(()) => true,
            // Also when someone removed the directory since: then nothing vouches for the
            // run's changes being on disk, and the cache is not stored.
            Err(e) => {
                log::warn!("cannot flush /etc/{rel} to disk: {e}");
                false
            }
        }
    }
}

/// The [`cache::Quiet`] record for facts whose plan is `plan`, when that is empty — and
/// when `state` rests on the facts alone: a path looked up one by one (under `/etc/nixos`,
/// below a user's symlinked directory) has no stamp in them to vouch for it.
fn quiet_if_empty(
    tree: &EtcTree,
    key: u64,
    (facts, state): (&cache::Facts, &EtcState),
    plan: &EtcPlan,
) -> Option<cache::Quiet> {
    (plan.actions.is_empty() && plan.issues.is_empty() && state.looked_up.is_empty())
        .then(|| cache::quiet(tree, key, facts))
        .flatten()
}

/// [`setup_etc`] up to the point where only [`Recheck::finish`] is left (`None` when the
/// run changed nothing, or in a dry run). `held` is the root's activation lock, which the
/// caller holds until after [`Recheck::finish`]; `None` makes a dry run.
pub fn setup_etc_deferred(
    root: &Root,
    tree: &EtcTree,
    opts: EtcOptions,
    held: Option<&ActivationLock>,
) -> Result<(EtcOutcome, Option<Recheck>), EtcError> {
    let dry_run = held.is_none();
    // A tree from a compiled plan did not come through `list_tree`.
    let path = Path::new(&tree.path);
    refuse_tree_in_etc(root, path, path)?;
    let cache = cache::read(root);
    let key = cache::input_key(tree, opts);
    if cache.is_quiet(root, tree, key) {
        log::debug!("/etc is as the last activation left it (checked against its cache)");
        return Ok((EtcOutcome::default(), None));
    }
    let mut seen = observe_with(root, tree, cache.facts(), Reuse::IfUnchanged, no_dirs())?;
    log::debug!(
        "/etc observed: {} directories and files read, the rest from the cache",
        seen.reads
    );
    let plan = plan_observed(root, tree, &mut seen.state, opts);
    let (out, applied) = apply_keeping_dirs(root, &plan, dry_run)?;
    if dry_run {
        return Ok((out, None));
    }
    if plan.actions.is_empty() {
        let quiet = quiet_if_empty(tree, key, (&seen.facts, &seen.state), &plan);
        cache::store(root, &seen.facts, quiet, cache.raw());
        return Ok((out, None));
    }
    let changed_at = cache::precise_now();
    let (dirs, files) = touched(&plan);
    let recheck = Recheck {
        facts: seen.facts,
        dirs,
        files,
        applied,
        key,
        opts,
        old: cache.into_raw(),
        changed_at,
    };
    Ok((out, Some(recheck)))
}

/// No directory descriptors to read through ([`observe_with`]).
fn no_dirs() -> HashMap<String, OwnedFd> {
    HashMap::default()
}

/// The directories (relative to `/etc`) whose entries `plan` changes, and the files whose
/// contents it rewrites.
fn touched(plan: &EtcPlan) -> (HashSet<String>, HashSet<String>) {
    let mut dirs = HashSet::default();
    let mut files = HashSet::default();
    let parent = |rel: &str| rel.rsplit_once('/').map_or("", |(p, _)| p).to_owned();
    for a in &plan.actions {
        match a {
            EtcAction::SetStatic { .. } | EtcAction::TouchNixos => {
                dirs.insert(String::new());
            }
            EtcAction::WriteClean { .. } => {
                dirs.insert(String::new());
                files.insert(".clean".to_owned());
            }
            EtcAction::RemoveObsoleteLink { rel }
            | EtcAction::RemoveObsoleteFile { rel }
            | EtcAction::RemoveStaticDir { rel }
            | EtcAction::Link { rel, .. } => {
                dirs.insert(parent(rel));
            }
            EtcAction::Copy { rel, .. } => {
                dirs.insert(parent(rel));
                files.insert(rel.clone());
            }
            // Missing ancestors are made too, each in its parent.
            EtcAction::EnsureDir { rel } => {
                let mut cur = rel.as_str();
                dirs.insert(cur.to_owned());
                while let Some((up, _)) = cur.rsplit_once('/') {
                    dirs.insert(up.to_owned());
                    cur = up;
                }
                dirs.insert(String::new());
            }
        }
    }
    (dirs, files)
}

/// What the next run of [`setup_etc`] would find, without changing anything: how many
/// directories and files it would have to read rather than take from the cache, and its plan.
#[derive(Debug)]
pub struct Preview {
    /// The run would stop after checking stamps ([`cache::Quiet`]).
    pub quiet: bool,
    pub reads: usize,
    /// The state it would plan from, made of remembered facts and what it read.
    pub state: EtcState,
    pub plan: EtcPlan,
}

pub fn preview(root: &Root, tree: &EtcTree, opts: EtcOptions) -> Result<Preview, EtcError> {
    let cache = cache::read(root);
    let mut seen = observe_with(root, tree, cache.facts(), Reuse::IfUnchanged, no_dirs())?;
    Ok(Preview {
        quiet: cache.is_quiet(root, tree, cache::input_key(tree, opts)),
        reads: seen.reads,
        plan: plan_observed(root, tree, &mut seen.state, opts),
        state: seen.state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagehand_testkit::FakeRoot;

    fn me() -> (String, String) {
        (
            format!("+{}", rustix::process::geteuid().as_raw()),
            format!("+{}", rustix::process::getegid().as_raw()),
        )
    }

    /// What the next run would find, checked against a walk of all of `/etc` (the cache
    /// must never describe anything but what is there).
    fn next_run(root: &Root, t: &EtcTree) -> Preview {
        let p = preview(root, t, EtcOptions::default()).expect("preview");
        assert_eq!(
            p.state,
            observe(root, t).expect("observe"),
            "the cache lies"
        );
        p
    }

    /// A run of `t` whose read-back is told to hurry before the clock tick has passed, as
    /// `activate` does when no step after `etc` takes a tick. Returns how many places the
    /// run changed (directories and rewritten files).
    fn hurried_run(root: &Root, t: &EtcTree) -> usize {
        let held = lock::lock(root).expect("lock");
        let (out, recheck) =
            setup_etc_deferred(root, t, EtcOptions::default(), Some(&held)).expect("etc");
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        let recheck = recheck.expect("the run changed /etc");
        let touched = recheck.dirs.len() + recheck.files.len();
        let got = recheck.finish_with(root, t, |_| cache::Waited::Hurried);
        assert_eq!(got, ReadBack::LeftToNextRun);
        // The next run starts a tick later, as any real one does: what it reads of this
        // run's changes is then not racy.
        let not_hurried = AtomicBool::new(false);
        assert_ne!(
            cache::wait_past(cache::precise_now(), &not_hurried),
            cache::Waited::Hurried
        );
        touched
    }

    /// A plain run (its read-back done, not hurried); `true` when it changed nothing.
    fn plain_run(root: &Root, t: &EtcTree) -> bool {
        let out = setup_etc(root, t, EtcOptions::default(), false).expect("etc");
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        out.changed == 0
    }

    /// A read-back given up (the clock tick had not passed when `activate` ended) leaves a
    /// cache that is still true: the next run reaches the same empty plan, reading again
    /// exactly the places the hurried run changed, and the run after it stops after its
    /// `stat` calls. For a first run (everything is new) and for a changed run.
    #[test]
    fn a_read_back_left_to_the_next_run_costs_that_run_the_changed_places_only() {
        let r = FakeRoot::new();
        let (u, g) = me();
        let gen = |name: &str, port: &str, key: &str| {
            r.etc_tree(
                name,
                &[
                    ("hosts", "127.0.0.1 localhost\n", None),
                    ("ssh/sshd_config", port, None),
                    ("systemd/system/a.service", "[Unit]\n", None),
                    ("systemd/system/b.service", "[Unit]\n", None),
                    ("sudoers", "root ALL=(ALL) ALL\n", Some(("0440", &u, &g))),
                    ("ssh/known_hosts", key, Some(("0644", &u, &g))),
                    ("motd", "welcome\n", Some(("direct-symlink", &u, &g))),
                ],
            )
        };
        let (a, b) = (
            gen("a", "Port 22\n", "host key\n"),
            gen("b", "Port 2222\n", "new host key\n"),
        );
        let root = Root::open(r.path()).expect("root");
        let a = list_tree(&root, Path::new(&a)).expect("tree a");
        let b = list_tree(&root, Path::new(&b)).expect("tree b");

        // First run, into an empty root: everything it made is read by the next run.
        let touched = hurried_run(&root, &a);
        let next = next_run(&root, &a);
        assert!(!next.quiet, "a given-up read-back leaves no quiet record");
        assert!(next.plan.actions.is_empty(), "{:?}", next.plan.actions);
        assert_eq!(next.reads, touched, "the next run reads the changed places");
        assert!(plain_run(&root, &a), "the next run changes nothing");
        let after = next_run(&root, &a);
        assert!(
            after.quiet,
            "the run after the next one stops after its stats"
        );
        assert_eq!(after.reads, 0);

        // A changed run (a link in /etc/ssh, a copied file): only that is read again.
        let touched = hurried_run(&root, &b);
        let next = next_run(&root, &b);
        assert!(!next.quiet);
        assert!(next.plan.actions.is_empty(), "{:?}", next.plan.actions);
        assert_eq!(next.reads, touched, "the next run reads the changed places");
        assert!(
            touched < after_first_reads(&root, &b),
            "only the changed places, not all of /etc ({touched})"
        );
        assert!(plain_run(&root, &b));
        let after = next_run(&root, &b);
        assert!(after.quiet);
        assert_eq!(after.reads, 0);
    }

    /// How many places a run without any cache reads.
    fn after_first_reads(root: &Root, t: &EtcTree) -> usize {
        observe_with(
            root,
            t,
            cache::Facts::default(),
            Reuse::IfUnchanged,
            no_dirs(),
        )
        .expect("observe")
        .reads
    }
}
