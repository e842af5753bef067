//! Carrying an etc plan out under the root.

use rustc_hash::FxHashMap as HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::Mode;
use rustix::io::Errno;

use super::cache;
use super::observe::Written;
use super::plan::{EtcAction, EtcPlan};
use super::sources::InRoot;
use super::{EtcError, EtcIssue, STATIC};
use stagehand_common::rootfs::{self, own_perms, Root};

/// Directory descriptors under `/etc`, opened once per run. A directory is opened relative
/// to its parent's descriptor, one component at a time and without following symlinks; a
/// symlink met on the way (a user's link to a directory, which `setup-etc.pl` follows) is
/// resolved from the root instead, inside it.
struct Dirs<'r> {
    root: &'r Root,
    open: HashMap<String, OwnedFd>,
}

impl<'r> Dirs<'r> {
    fn new(root: &'r Root) -> Self {
        Dirs {
            root,
            open: HashMap::default(),
        }
    }

    fn get(&mut self, rel: &str, create: bool) -> io::Result<&OwnedFd> {
        if !self.open.contains_key(rel) {
            let fd = self.open_dir(rel, create)?;
            self.open.insert(rel.to_owned(), fd);
        }
        self.open
            .get(rel)
            .ok_or_else(|| io::Error::other("directory cache lost an entry"))
    }

    fn open_dir(&mut self, rel: &str, create: bool) -> io::Result<OwnedFd> {
        let mode = create.then(|| Mode::from_raw_mode(0o755));
        let from_root = |root: &Root| -> io::Result<OwnedFd> {
            let path = if rel.is_empty() {
                PathBuf::from("/etc")
            } else {
                Path::new("/etc").join(rel)
            };
            Ok(root.dir(&path, mode)?.0)
        };
        if rel.is_empty() {
            return from_root(self.root);
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let parent_fd = self.get(parent, create)?;
        let opened = match rustix::fs::openat(parent_fd, name, rootfs::dir_flags(), Mode::empty()) {
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(parent_fd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                rustix::fs::openat(parent_fd, name, rootfs::dir_flags(), Mode::empty())
            }
            r => r,
        };
        match opened {
            Ok(fd) => Ok(fd),
            Err(Errno::NOTDIR | Errno::LOOP) => from_root(self.root),
            Err(e) => Err(e.into()),
        }
    }

    /// The directory holding `rel` and the final name.
    fn parent(&mut self, rel: &str, create: bool) -> io::Result<(&OwnedFd, OsString)> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        Ok((self.get(dir, create)?, OsString::from(name)))
    }

    /// Make directory `rel`, which the plan found missing: `mkdir` first, without the
    /// `open` that would fail.
    fn make(&mut self, rel: &str) -> io::Result<()> {
        if !rel.is_empty() && !self.open.contains_key(rel) {
            let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
            let parent_fd = self.get(parent, true)?;
            // Whatever is in the way (a user's symlink to a directory, to be followed; a
            // file) is left to `get`, as without this shortcut.
            let _ = rustix::fs::mkdirat(parent_fd, name, Mode::from_raw_mode(0o755));
        }
        self.get(rel, true).map(|_| ())
    }

    fn forget_under(&mut self, rel: &str) {
        let prefix = format!("{rel}/");
        self.open.retain(|k, _| k != rel && !k.starts_with(&prefix));
    }
}

/// What applying a plan did.
#[derive(Debug, Default)]
pub struct EtcOutcome {
    pub changed: usize,
    pub issues: Vec<EtcIssue>,
}

/// Carry out `plan` under `root`. With `dry_run` nothing is written; every action is logged
/// as what would be done.
pub fn apply(root: &Root, plan: &EtcPlan, dry_run: bool) -> Result<EtcOutcome, EtcError> {
    apply_keeping_dirs(root, plan, dry_run).map(|(out, _)| out)
}

/// What [`apply`] leaves for reading its work back: the descriptors of the directories it
/// opened under `/etc` (by path relative to it), so that reading them needs no second
/// `open`, and the sources of the files it copied, as read.
#[derive(Default)]
pub(super) struct Applied {
    pub(super) dirs: HashMap<String, OwnedFd>,
    pub(super) written: HashMap<String, Written>,
    /// The directory (relative to `/etc`) that the last action carried out changed.
    pub(super) last_dir: Option<String>,
}

/// The directory (relative to `/etc`) whose entries action `a` changes.
fn changed_dir(a: &EtcAction) -> String {
    match a {
        EtcAction::SetStatic { .. } | EtcAction::WriteClean { .. } | EtcAction::TouchNixos => {
            String::new()
        }
        EtcAction::RemoveObsoleteLink { rel }
        | EtcAction::RemoveObsoleteFile { rel }
        | EtcAction::RemoveStaticDir { rel }
        | EtcAction::EnsureDir { rel }
        | EtcAction::Link { rel, .. }
        | EtcAction::Copy { rel, .. } => rel.rsplit_once('/').map_or("", |(p, _)| p).to_owned(),
    }
}

/// [`apply`], also returning what it opened and read ([`Applied`]).
pub(super) fn apply_keeping_dirs(
    root: &Root,
    plan: &EtcPlan,
    dry_run: bool,
) -> Result<(EtcOutcome, Applied), EtcError> {
    let mut out = EtcOutcome {
        changed: 0,
        issues: plan.issues.clone(),
    };
    if dry_run {
        for a in &plan.actions {
            log::info!("would {a}");
        }
        out.changed = plan.actions.len();
        return Ok((out, Applied::default()));
    }
    let mut dirs = Dirs::new(root);
    let (mut staged, written) = stage_files(root, plan, &mut dirs);
    // The step's one `syncfs`, and only when a file was staged: what it buys is that the
    // bytes of every copied file, `.clean` and `NIXOS` are on disk before the rename that
    // publishes them, so after a power cut each of them is its old or its new version,
    // never empty or torn (ext4's delayed allocation would otherwise commit the rename
    // first). One `syncfs` rather than an `fsync` per file: on a journalling file system
    // each `fsync` of a new file is a journal commit of its own. Links, directories and
    // removals need no flush to be atomic; [`super::Recheck`] makes them durable (one
    // `fsync`), off the critical path.
    if !staged.is_empty() {
        if let Ok(fd) = dirs.get("", false) {
            let _ = rootfs::sync_fs(fd.as_fd());
        }
    }
    let mut last_dir = None;
    for (i, a) in plan.actions.iter().enumerate() {
        log::debug!("{a}");
        match carry_out(root, &mut dirs, &mut staged, i, a)? {
            Ok(()) => {
                out.changed += 1;
                last_dir = Some(changed_dir(a));
            }
            Err(e) => out.issues.push(EtcIssue::Io {
                action: format!("{a} under {}", root.path().display()),
                error: e.to_string(),
            }),
        }
    }
    Ok((
        out,
        Applied {
            dirs: dirs.open,
            written,
            last_dir,
        },
    ))
}

/// Files staged under temporary names, by the index of their action, with how staging went.
type Staged = HashMap<usize, io::Result<()>>;

/// Stage every file first (unflushed) and flush them together, so that each rename in
/// [`carry_out`] publishes contents that are already on disk — with one sync instead of one
/// per file. Also returns the copies' sources as read.
fn stage_files(
    root: &Root,
    plan: &EtcPlan,
    dirs: &mut Dirs<'_>,
) -> (Staged, HashMap<String, Written>) {
    let mut sources = InRoot::new(root);
    let mut staged: Staged = HashMap::default();
    let mut written: HashMap<String, Written> = HashMap::default();
    for (i, a) in plan.actions.iter().enumerate() {
        let staging = match a {
            EtcAction::Copy { rel, source, perms } => {
                sources.read(Path::new(source)).and_then(|(b, canon, st)| {
                    let (d, n) = dirs.parent(rel, true)?;
                    rootfs::write_tmp(d, &rootfs::tmp_name(&n), &b, *perms, false)?;
                    let source = Written {
                        canon: canon.to_string_lossy().into_owned(),
                        stamp: cache::Stamp::of(&st),
                        bytes: b,
                    };
                    written.insert(rel.clone(), source);
                    Ok(())
                })
            }
            EtcAction::WriteClean { contents } => dirs.parent(".clean", true).and_then(|(d, n)| {
                rootfs::write_tmp(
                    d,
                    &rootfs::tmp_name(&n),
                    contents.as_bytes(),
                    own_perms(0o644),
                    false,
                )
            }),
            EtcAction::TouchNixos => dirs.parent("NIXOS", true).and_then(|(d, n)| {
                rootfs::write_tmp(d, &rootfs::tmp_name(&n), b"", own_perms(0o644), false)
            }),
            _ => continue,
        };
        staged.insert(i, staging);
    }
    (staged, written)
}

/// Carry out action `i`, `a`. The inner result is the action's own (a failure is reported
/// and the other actions still run); the outer error stops the step: `/etc/static` could
/// not be set.
fn carry_out(
    root: &Root,
    dirs: &mut Dirs<'_>,
    staged: &mut Staged,
    i: usize,
    a: &EtcAction,
) -> Result<io::Result<()>, EtcError> {
    Ok(match a {
        EtcAction::SetStatic { target } => {
            let res = root
                .dir(Path::new("/etc"), Some(Mode::from_raw_mode(0o755)))
                .and_then(|(etc, _, _)| {
                    rootfs::atomic_symlink(&etc, OsStr::new("static"), target.as_bytes())
                });
            if let Err(error) = res {
                return Err(EtcError::Static {
                    path: root.host_path(Path::new(STATIC)),
                    error,
                });
            }
            Ok(())
        }
        EtcAction::RemoveObsoleteLink { rel } | EtcAction::RemoveObsoleteFile { rel } => {
            log::info!("removing obsolete /etc/{rel}");
            dirs.parent(rel, false)
                .and_then(|(d, n)| rootfs::unlink_at(d, &n))
        }
        EtcAction::EnsureDir { rel } => dirs.make(rel),
        EtcAction::RemoveStaticDir { rel } => {
            let r = dirs
                .parent(rel, false)
                .and_then(|(d, n)| rootfs::remove_tree_at(d, &n));
            dirs.forget_under(rel);
            r
        }
        EtcAction::Link { rel, target, fresh } => dirs.parent(rel, true).and_then(|(d, n)| {
            let t = OsStr::from_bytes(target.as_bytes());
            match fresh.then(|| rustix::fs::symlinkat(t, d, n.as_os_str())) {
                Some(Ok(())) => Ok(()),
                // Something appeared since we looked (or it was not fresh).
                Some(Err(Errno::EXIST)) | None => rootfs::atomic_symlink(d, &n, target.as_bytes()),
                Some(Err(e)) => Err(e.into()),
            }
        }),
        EtcAction::Copy { rel, .. } => match staged.remove(&i) {
            Some(Ok(())) => dirs
                .parent(rel, true)
                .and_then(|(d, n)| rootfs::rename_tmp(d, &n)),
            Some(Err(e)) => Err(e),
            None => Err(io::Error::other("not staged")),
        },
        EtcAction::WriteClean { .. } | EtcAction::TouchNixos => {
            let name = if matches!(a, EtcAction::TouchNixos) {
                "NIXOS"
            } else {
                ".clean"
            };
            match staged.remove(&i) {
                Some(Ok(())) => dirs
                    .parent(name, true)
                    .and_then(|(d, n)| rootfs::rename_tmp(d, &n)),
                Some(Err(e)) => Err(e),
                None => Err(io::Error::other("not staged")),
            }
        }
    })
}
