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
//! 2. remove every symlink under `/etc` (not under `/etc/nixos`) whose target starts with
//!    `/etc/static` and whose counterpart in the new tree is no longer a symlink;
//! 3. for each tree entry, in pre-order: create the parent directory; if the entry is a symlink
//!    and `/etc/<rel>` is a real directory, delete the directory when it holds only links into
//!    `/etc/static/`, else warn that it holds user files; then
//!    * `<rel>.mode` = `direct-symlink`: `/etc/<rel>` links straight to the tree link's target;
//!    * other `<rel>.mode`: copy the file with that mode and the owner from `<rel>.uid` /
//!      `<rel>.gid` (`+N` numeric, or a name looked up in the root's `/etc/passwd` /
//!      `/etc/group`, never the host's);
//!    * other symlinks: `/etc/<rel>` → `/etc/static/<rel>`, replacing whatever is there;
//! 4. delete files listed in the previous `/etc/.clean` that the new tree no longer has;
//! 5. rewrite `/etc/.clean` (sorted list of copied entries) and create `/etc/NIXOS`.
//!
//! Files and links that no generation declared are never touched.

#[path = "etc_cache.rs"]
pub mod cache;
#[path = "etc_observe.rs"]
mod observation;

pub use observation::observe;
use observation::{observe_with, Reuse};

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use stagehand_common::rootfs::{self, Node, Perms, Root};

/// The static link `setup-etc.pl` maintains, and the prefix that marks a link as ours.
const STATIC: &str = "/etc/static";

/// One path in the etc tree, relative to the tree's top (`ssh/sshd_config`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct TreeEntry {
    pub rel: String,
    pub kind: EntryKind,
    pub install: Install,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Dir,
    /// A symlink, with its target as stored (normally a store path).
    Symlink(String),
    /// A regular file: the `.mode`/`.uid`/`.gid` sidecars themselves, or an odd tree.
    File,
}

/// What ends up at `/etc/<rel>`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub enum Install {
    /// Directories and plain files: only the parent directory is made.
    Nothing,
    /// `/etc/<rel>` → `/etc/static/<rel>`.
    Link,
    /// `direct-symlink`: `/etc/<rel>` → the tree link's own target.
    Direct(String),
    /// A copy owned by `user:group` with `mode`.
    Copy {
        mode: u32,
        user: Owner,
        group: Owner,
    },
    /// The sidecars are unusable; the entry is reported and left alone.
    Invalid(EtcIssue),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Id(u32),
    Name(String),
}

/// The etc tree of a generation.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct EtcTree {
    /// Canonical in-root path of the tree (`/nix/store/…-etc/etc`): the target of `/etc/static`.
    pub path: String,
    /// Pre-order, names sorted within each directory.
    pub entries: Vec<TreeEntry>,
}

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
        }
    }
}

impl std::error::Error for EtcError {}

/// `rel` is usable as a path under `/etc`: plain names only.
pub fn is_safe_rel(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.contains('\0')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

fn parse_mode(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 6 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(text, 8).ok().filter(|m| *m <= 0o7777)
}

fn parse_owner(text: &str) -> Option<Owner> {
    match text.strip_prefix('+') {
        Some(n) => n.parse().ok().map(Owner::Id),
        None if text.is_empty() => None,
        None => Some(Owner::Name(text.to_owned())),
    }
}

/// Sidecar contents are written by `etc.nix` with a trailing newline; `chomp` it.
fn chomp(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    s.strip_suffix('\n').unwrap_or(&s).to_owned()
}

/// Read the etc tree at `path` (in-root, symlinks resolved inside the root).
pub fn list_tree(root: &Root, path: &Path) -> Result<EtcTree, EtcError> {
    let tree_err = |error: io::Error| EtcError::Tree {
        path: root.host_path(path),
        error,
    };
    let (fd, canon, _) = root.dir(path, None).map_err(tree_err)?;
    let canon_str = canon.to_string_lossy().into_owned();
    let mut entries = Vec::new();
    walk_tree(root, &fd, &canon_str, "", &mut entries).map_err(tree_err)?;
    Ok(EtcTree {
        path: canon_str,
        entries,
    })
}

fn walk_tree(
    root: &Root,
    dir: &OwnedFd,
    tree: &str,
    prefix: &str,
    out: &mut Vec<TreeEntry>,
) -> io::Result<()> {
    let listing = rootfs::list_new_dir(dir)?;
    let names: HashSet<&OsStr> = listing.iter().map(|(n, _)| n.as_os_str()).collect();
    for (name, ty) in &listing {
        let name_str = name.to_string_lossy();
        let rel = if prefix.is_empty() {
            name_str.to_string()
        } else {
            format!("{prefix}/{name_str}")
        };
        let kind = match *ty {
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => EntryKind::Symlink(
                String::from_utf8_lossy(
                    rustix::fs::readlinkat(dir, name.as_os_str(), Vec::new())?.as_bytes(),
                )
                .into_owned(),
            ),
            _ => EntryKind::File,
        };
        let mut mode_name = name.clone();
        mode_name.push(".mode");
        let install = if names.contains(mode_name.as_os_str()) {
            sidecar_install(root, dir, tree, &rel, name, &kind)
        } else if matches!(kind, EntryKind::Symlink(_)) {
            Install::Link
        } else {
            Install::Nothing
        };
        let is_dir = kind == EntryKind::Dir;
        out.push(TreeEntry { rel, kind, install });
        if is_dir {
            let sub = rootfs::open_subdir(dir, name)?;
            let rel = out.last().map(|e| e.rel.clone()).unwrap_or_default();
            walk_tree(root, &sub, tree, &rel, out)?;
        }
    }
    Ok(())
}

/// Read one sidecar; it may itself be a symlink into the store, so fall back to an in-root
/// read of the full path.
fn read_sidecar(
    root: &Root,
    dir: &OwnedFd,
    tree: &str,
    rel: &str,
    name: &OsStr,
) -> Result<String, EtcIssue> {
    let sidecar = format!("{tree}/{rel}");
    match rootfs::read_at(dir, name) {
        Ok(b) => Ok(chomp(&b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(EtcIssue::MissingSidecar { sidecar }),
        Err(_) => match root.read(Path::new(&sidecar)) {
            Ok(b) => Ok(chomp(&b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(EtcIssue::MissingSidecar { sidecar })
            }
            Err(e) => Err(EtcIssue::UnreadableSidecar {
                sidecar,
                error: e.to_string(),
            }),
        },
    }
}

fn sidecar_install(
    root: &Root,
    dir: &OwnedFd,
    tree: &str,
    rel: &str,
    name: &OsStr,
    kind: &EntryKind,
) -> Install {
    let side = |ext: &str| {
        let mut n = name.to_os_string();
        n.push(ext);
        read_sidecar(root, dir, tree, &format!("{rel}{ext}"), &n)
    };
    let result = (|| -> Result<Install, EtcIssue> {
        let mode = side(".mode")?;
        if mode == "direct-symlink" {
            return match kind {
                EntryKind::Symlink(t) => Ok(Install::Direct(t.clone())),
                _ => Err(EtcIssue::DirectNotSymlink {
                    entry: format!("{tree}/{rel}"),
                }),
            };
        }
        let mode = parse_mode(&mode).ok_or_else(|| EtcIssue::BadMode {
            sidecar: format!("{tree}/{rel}.mode"),
            value: mode.clone(),
        })?;
        let owner = |ext: &str| -> Result<Owner, EtcIssue> {
            let text = side(ext)?;
            parse_owner(&text).ok_or_else(|| EtcIssue::BadMode {
                sidecar: format!("{tree}/{rel}{ext}"),
                value: text,
            })
        };
        Ok(Install::Copy {
            mode,
            user: owner(".uid")?,
            group: owner(".gid")?,
        })
    })();
    result.unwrap_or_else(Install::Invalid)
}

/// User and group names of the target system, from its own `/etc/passwd` and `/etc/group`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    pub users: HashMap<String, u32>,
    pub groups: HashMap<String, u32>,
}

impl Owners {
    pub fn read(root: &Root) -> Owners {
        let table = |path: &str| -> HashMap<String, u32> {
            let text = root
                .read_opt(Path::new(path))
                .ok()
                .flatten()
                .unwrap_or_default();
            String::from_utf8_lossy(&text)
                .lines()
                .filter_map(|l| {
                    let mut f = l.split(':');
                    let name = f.next()?;
                    let id = f.nth(1)?.parse().ok()?;
                    Some((name.to_owned(), id))
                })
                .collect()
        };
        Owners {
            users: table("/etc/passwd"),
            groups: table("/etc/group"),
        }
    }
}

/// What `/etc` holds now, as far as the plan needs to know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcState {
    /// Target of `/etc/static`, `None` when absent; `Some(None)` when it is not a symlink.
    pub static_link: Option<Option<String>>,
    /// Everything under `/etc` except `/etc/static` and the contents of `/etc/nixos`, plus
    /// individually looked-up tree entries and `.clean` entries under `/etc/nixos`.
    pub nodes: HashMap<String, Node>,
    /// Copied entries whose current file already has the source's bytes.
    pub same_content: HashSet<String>,
    /// Stale-link candidates not listed in the tree that are still symlinks in the new tree
    /// through a symlinked directory of it (see [`plan_observed`]).
    pub deep_links: HashSet<String>,
    /// `/etc/.clean` as read, one entry per line.
    pub old_clean: Vec<String>,
    pub nixos_tag: bool,
    pub owners: Owners,
}

/// Reads files by in-root path, following symlinks inside the root like [`Root::read`],
/// but keeping the descriptors of the directories it meets: the copies' sources are
/// mostly in one or two store directories, which are then resolved once per run.
struct InRoot<'r> {
    root: &'r Root,
    dirs: HashMap<PathBuf, (OwnedFd, PathBuf)>,
}

impl<'r> InRoot<'r> {
    fn new(root: &'r Root) -> Self {
        InRoot {
            root,
            dirs: HashMap::default(),
        }
    }

    /// The contents, canonical in-root path and `fstat` of the regular file at `path`.
    fn read(&mut self, path: &Path) -> io::Result<(Vec<u8>, PathBuf, rustix::fs::Stat)> {
        let mut path = path.to_path_buf();
        for _ in 0..40 {
            let name = rootfs::final_name(&path)?;
            let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            if !self.dirs.contains_key(&parent) {
                let (fd, canon, _) = self.root.dir(&parent, None)?;
                self.dirs.insert(parent.clone(), (fd, canon));
            }
            let Some((dir, canon)) = self.dirs.get(&parent) else {
                return Err(io::Error::other("directory cache lost an entry"));
            };
            // O_NONBLOCK: a FIFO planted here must not hang the activation.
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            match rustix::fs::openat(dir, name.as_os_str(), flags, Mode::empty()) {
                Ok(fd) => {
                    let st = rustix::fs::fstat(&fd)?;
                    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("{} is not a regular file", canon.join(&name).display()),
                        ));
                    }
                    let buf = rootfs::read_fd(&fd, usize::try_from(st.st_size).unwrap_or(0))?;
                    return Ok((buf, canon.join(&name), st));
                }
                Err(Errno::LOOP) => {
                    let target = rustix::fs::readlinkat(dir, name.as_os_str(), Vec::new())?;
                    let t = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                    path = if t.is_absolute() { t } else { canon.join(t) };
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Errno::LOOP.into())
    }
}

/// Does any copy take its owner by name (so that the root's passwd/group are needed)?
fn uses_owner_names(tree: &EtcTree) -> bool {
    tree.entries.iter().any(|e| {
        matches!(&e.install, Install::Copy { user, group, .. }
            if matches!(user, Owner::Name(_)) || matches!(group, Owner::Name(_)))
    })
}

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

/// One change to `/etc`. Paths are relative to `/etc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcAction {
    SetStatic {
        target: String,
    },
    RemoveObsoleteLink {
        rel: String,
    },
    EnsureDir {
        rel: String,
    },
    RemoveStaticDir {
        rel: String,
    },
    Link {
        rel: String,
        target: String,
        /// Nothing was at `/etc/<rel>`: the link can be made in place (creating a name is
        /// atomic), without a temporary name and a rename.
        fresh: bool,
    },
    Copy {
        rel: String,
        source: String,
        perms: Perms,
    },
    RemoveObsoleteFile {
        rel: String,
    },
    WriteClean {
        contents: String,
    },
    TouchNixos,
}

impl fmt::Display for EtcAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SetStatic { target } => write!(f, "link /etc/static -> {target}"),
            Self::RemoveObsoleteLink { rel } => write!(f, "remove obsolete symlink /etc/{rel}"),
            Self::EnsureDir { rel } => write!(f, "create directory /etc/{rel}"),
            Self::RemoveStaticDir { rel } => {
                write!(
                    f,
                    "remove directory /etc/{rel} (only links into /etc/static)"
                )
            }
            Self::Link { rel, target, .. } => write!(f, "link /etc/{rel} -> {target}"),
            Self::Copy { rel, source, perms } => write!(
                f,
                "copy {source} to /etc/{rel} (mode {:04o}, owner {}:{})",
                perms.mode, perms.uid, perms.gid
            ),
            Self::RemoveObsoleteFile { rel } => write!(f, "remove obsolete file /etc/{rel}"),
            Self::WriteClean { .. } => write!(f, "rewrite /etc/.clean"),
            Self::TouchNixos => write!(f, "create /etc/NIXOS"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct EtcPlan {
    pub actions: Vec<EtcAction>,
    /// Problems found while planning; the affected entries are left alone.
    pub issues: Vec<EtcIssue>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct EtcOptions {
    /// `IN_NIXOS_ENTER`: `/etc/resolv.conf` is a bind mount owned by nixos-enter.
    pub skip_resolv_conf: bool,
}

fn starts_with_static_slash(t: &[u8]) -> bool {
    t.starts_with(b"/etc/static/")
}

/// Directories under `/etc` that hold something other than links into `/etc/static/`.
fn non_static_dirs(nodes: &HashMap<String, Node>) -> HashSet<&str> {
    let mut out = HashSet::default();
    for (rel, node) in nodes {
        let leaf_static = match node {
            Node::Symlink(t) => starts_with_static_slash(t),
            Node::Dir { .. } => true,
            _ => false,
        };
        // /etc/nixos's contents were not walked: count it as holding user files.
        if !leaf_static || rel == "nixos" {
            let mut cur = rel.as_str();
            if rel == "nixos" {
                out.insert("nixos");
            }
            while let Some((parent, _)) = cur.rsplit_once('/') {
                if !out.insert(parent) {
                    break;
                }
                cur = parent;
            }
        }
    }
    out
}

/// Decide what to change. Pure: everything it needs is in `tree` and `state`.
pub fn plan(tree: &EtcTree, state: &EtcState, opts: EtcOptions) -> EtcPlan {
    let mut p = EtcPlan::default();
    if state.static_link != Some(Some(tree.path.clone())) {
        p.actions.push(EtcAction::SetStatic {
            target: tree.path.clone(),
        });
    }

    let by_rel: HashMap<&str, &TreeEntry> =
        tree.entries.iter().map(|e| (e.rel.as_str(), e)).collect();

    // Stale links, in sorted order so that plans are reproducible.
    let mut stale: Vec<&str> = state
        .nodes
        .iter()
        .filter_map(|(rel, n)| match n {
            Node::Symlink(t) if t.starts_with(STATIC.as_bytes()) => Some(rel.as_str()),
            _ => None,
        })
        .filter(|rel| !rel.starts_with("nixos/"))
        .filter(|rel| {
            let still_link = by_rel
                .get(rel)
                .is_some_and(|e| matches!(e.kind, EntryKind::Symlink(_)))
                || state.deep_links.contains(*rel);
            !still_link
        })
        .collect();
    stale.sort_unstable();
    let removed: HashSet<&str> = stale.iter().copied().collect();
    for rel in &stale {
        p.actions.push(EtcAction::RemoveObsoleteLink {
            rel: (*rel).to_owned(),
        });
    }

    let non_static = non_static_dirs(&state.nodes);
    let mut ensured: HashSet<&str> = HashSet::default();
    let mut copied: Vec<&str> = Vec::new();
    for e in &tree.entries {
        if !is_safe_rel(&e.rel) {
            p.issues.push(EtcIssue::UnsafePath { rel: e.rel.clone() });
            continue;
        }
        if opts.skip_resolv_conf && e.rel == "resolv.conf" {
            continue;
        }
        // make_path(dirname): a parent that is not a real directory now is created (or, for a
        // user's symlink to a directory, followed inside the root by the executor).
        if let Some((parent, _)) = e.rel.rsplit_once('/') {
            let is_dir = matches!(state.nodes.get(parent), Some(Node::Dir { .. }))
                && !removed.contains(parent);
            if !is_dir && !ensured.contains(parent) {
                p.actions.push(EtcAction::EnsureDir {
                    rel: parent.to_owned(),
                });
            }
            // Everything above it exists after this, too (and once one is known to, so
            // are the ones above it).
            let mut cur = parent;
            loop {
                if !ensured.insert(cur) {
                    break;
                }
                match cur.rsplit_once('/') {
                    Some((up, _)) => cur = up,
                    None => break,
                }
            }
        }
        let current = state
            .nodes
            .get(&e.rel)
            .filter(|_| !removed.contains(e.rel.as_str()));
        if matches!(e.kind, EntryKind::Symlink(_)) && matches!(current, Some(Node::Dir { .. })) {
            if non_static.contains(e.rel.as_str()) {
                p.issues.push(EtcIssue::UserFilesInDir {
                    path: format!("/etc/{}", e.rel),
                });
            } else {
                p.actions
                    .push(EtcAction::RemoveStaticDir { rel: e.rel.clone() });
            }
        }
        // Whether the link is already there, decided without building its target first:
        // this runs for every entry.
        let links_to = |target: &[&[u8]]| match current {
            Some(Node::Symlink(t)) => {
                t.len() == target.iter().map(|p| p.len()).sum::<usize>() && {
                    let mut rest = t.as_slice();
                    target.iter().all(|part| match rest.strip_prefix(*part) {
                        Some(r) => {
                            rest = r;
                            true
                        }
                        None => false,
                    })
                }
            }
            _ => false,
        };
        let link_to = |target: String, p: &mut EtcPlan| {
            if !links_to(&[target.as_bytes()]) {
                p.actions.push(EtcAction::Link {
                    rel: e.rel.clone(),
                    target,
                    fresh: current.is_none() && !state.nodes.contains_key(&e.rel),
                });
            }
        };
        match &e.install {
            Install::Nothing => {}
            Install::Invalid(issue) => p.issues.push(issue.clone()),
            Install::Link => {
                if !links_to(&[STATIC.as_bytes(), b"/", e.rel.as_bytes()]) {
                    link_to(format!("{STATIC}/{}", e.rel), &mut p);
                }
            }
            Install::Direct(target) => {
                link_to(target.clone(), &mut p);
                copied.push(&e.rel);
            }
            Install::Copy { mode, user, group } => {
                let sidecar = |ext: &str| format!("{}/{}{ext}", tree.path, e.rel);
                let uid = match user {
                    Owner::Id(n) => *n,
                    Owner::Name(n) => state.owners.users.get(n).copied().unwrap_or_else(|| {
                        p.issues.push(EtcIssue::UnknownUser {
                            sidecar: sidecar(".uid"),
                            name: n.clone(),
                        });
                        0
                    }),
                };
                let gid = match group {
                    Owner::Id(n) => *n,
                    Owner::Name(n) => state.owners.groups.get(n).copied().unwrap_or_else(|| {
                        p.issues.push(EtcIssue::UnknownGroup {
                            sidecar: sidecar(".gid"),
                            name: n.clone(),
                        });
                        0
                    }),
                };
                let perms = Perms {
                    mode: *mode,
                    uid,
                    gid,
                };
                let up_to_date = matches!(current, Some(Node::File { mode, uid, gid, .. })
                    if *mode == perms.mode && *uid == perms.uid && *gid == perms.gid)
                    && state.same_content.contains(&e.rel);
                if !up_to_date {
                    p.actions.push(EtcAction::Copy {
                        rel: e.rel.clone(),
                        source: format!("{}/{}", tree.path, e.rel),
                        perms,
                    });
                }
                copied.push(&e.rel);
            }
        }
    }

    // Files copied by an earlier generation that this one does not have at all.
    for rel in &state.old_clean {
        if by_rel.contains_key(rel.as_str()) {
            continue;
        }
        if !is_safe_rel(rel) {
            p.issues.push(EtcIssue::UnsafePath { rel: rel.clone() });
            continue;
        }
        if matches!(
            state.nodes.get(rel),
            Some(Node::File { .. } | Node::Symlink(_) | Node::Other)
        ) && !removed.contains(rel.as_str())
        {
            p.actions
                .push(EtcAction::RemoveObsoleteFile { rel: rel.clone() });
        }
    }

    copied.sort_unstable();
    let lines = |rels: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for r in rels {
            text.push_str(r);
            text.push('\n');
        }
        text
    };
    let clean = lines(&mut copied.iter().copied());
    let old = lines(&mut state.old_clean.iter().map(String::as_str));
    if clean != old || !matches!(state.nodes.get(".clean"), Some(Node::File { .. })) {
        p.actions.push(EtcAction::WriteClean { contents: clean });
    }
    if !state.nixos_tag {
        p.actions.push(EtcAction::TouchNixos);
    }
    p
}

/// [`plan`] for a state from [`observe_with`], which leaves `deep_links` empty: when the
/// plan removes links the tree does not list, ask the store which of them its symlinked
/// directories still hold, and plan again with that.
fn plan_observed(root: &Root, tree: &EtcTree, state: &mut EtcState, opts: EtcOptions) -> EtcPlan {
    let p = plan(tree, state, opts);
    let stale = p.actions.iter().filter_map(|a| match a {
        EtcAction::RemoveObsoleteLink { rel } => Some(rel.as_str()),
        _ => None,
    });
    state.deep_links = observation::deep_links(root, tree, stale);
    if state.deep_links.is_empty() {
        p
    } else {
        plan(tree, state, opts)
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
struct Applied {
    dirs: HashMap<String, OwnedFd>,
    written: HashMap<String, observation::Written>,
}

/// [`apply`], also returning what it opened and read ([`Applied`]).
fn apply_keeping_dirs(
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
    let mut sources = InRoot::new(root);
    // Stage every file first and flush them together, so that each rename below publishes
    // contents that are already on disk — with one sync instead of one per file.
    let mut staged: HashMap<usize, io::Result<()>> = HashMap::default();
    let mut written: HashMap<String, observation::Written> = HashMap::default();
    for (i, a) in plan.actions.iter().enumerate() {
        let staging = match a {
            EtcAction::Copy { rel, source, perms } => {
                sources.read(Path::new(source)).and_then(|(b, canon, st)| {
                    let (d, n) = dirs.parent(rel, true)?;
                    rootfs::write_tmp(d, &rootfs::tmp_name(&n), &b, *perms, false)?;
                    let source = observation::Written {
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
    if !staged.is_empty() {
        if let Ok(fd) = dirs.get("", false) {
            let _ = rootfs::sync_fs(fd.as_fd());
        }
    }
    for (i, a) in plan.actions.iter().enumerate() {
        log::debug!("{a}");
        let r: io::Result<()> = match a {
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
            EtcAction::Link { rel, target, fresh } => {
                dirs.parent(rel, true).and_then(|(d, n)| {
                    let t = OsStr::from_bytes(target.as_bytes());
                    match fresh.then(|| rustix::fs::symlinkat(t, d, n.as_os_str())) {
                        Some(Ok(())) => Ok(()),
                        // Something appeared since we looked (or it was not fresh).
                        Some(Err(Errno::EXIST)) | None => {
                            rootfs::atomic_symlink(d, &n, target.as_bytes())
                        }
                        Some(Err(e)) => Err(e.into()),
                    }
                })
            }
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
        };
        match r {
            Ok(()) => out.changed += 1,
            Err(e) => out.issues.push(EtcIssue::Io {
                action: format!("{a} under {}", root.path().display()),
                error: e.to_string(),
            }),
        }
    }
    // One sync makes every rename, link and removal durable.
    if !plan.actions.is_empty() {
        if let Ok(fd) = dirs.get("", false) {
            let _ = rootfs::sync_fs(fd.as_fd());
        }
    }
    Ok((
        out,
        Applied {
            dirs: dirs.open,
            written,
        },
    ))
}

/// Owned by whoever runs us (root on a real system) with `mode`: for bookkeeping files.
pub fn own_perms(mode: u32) -> Perms {
    Perms {
        mode,
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
    }
}

/// The whole `etc` step: observe (reading only what the [`cache`] cannot vouch for), plan,
/// apply, and remember what is in `/etc` now for the next run. When the last run found
/// nothing to do for the same input and nothing it rested on changed, the step stops after
/// checking that ([`cache::Quiet`]).
pub fn setup_etc(
    root: &Root,
    tree: &EtcTree,
    opts: EtcOptions,
    dry_run: bool,
) -> Result<EtcOutcome, EtcError> {
    let (out, recheck) = setup_etc_deferred(root, tree, opts, dry_run)?;
    if let Some(r) = recheck {
        r.finish(root, tree);
    }
    Ok(out)
}

/// What is left of a run that changed `/etc`: reading back what it changed and remembering
/// it for the next run. That has to wait until the coarse clock has passed the last change
/// (so that the new stamps are not racy: see [`cache`]), so an activation does it after its
/// other steps, when that time has passed anyway.
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

impl Recheck {
    /// Read back what the run changed (the rest of what it saw before stays true of the
    /// stamps it was seen with) and keep it. If the state read back needs nothing more (as
    /// it should, unless someone changed /etc meanwhile), the next run may stop early.
    pub fn finish(self, root: &Root, tree: &EtcTree) {
        cache::wait_past(self.changed_at);
        let reuse = Reuse::Except {
            dirs: &self.dirs,
            files: &self.files,
            written: &self.applied.written,
        };
        match observe_with(root, tree, self.facts, reuse, self.applied.dirs) {
            Ok(mut again) => {
                let check = plan_observed(root, tree, &mut again.state, self.opts);
                let quiet = quiet_if_empty(tree, self.key, &again.facts, &check);
                cache::store(root, &again.facts, quiet, self.old.as_deref());
            }
            Err(e) => log::debug!("etc cache not updated: {e}"),
        }
    }
}

/// The [`cache::Quiet`] record for facts whose plan is `plan`, when that is empty.
fn quiet_if_empty(
    tree: &EtcTree,
    key: u64,
    facts: &cache::Facts,
    plan: &EtcPlan,
) -> Option<cache::Quiet> {
    (plan.actions.is_empty() && plan.issues.is_empty())
        .then(|| cache::quiet(tree, key, facts))
        .flatten()
}

/// [`setup_etc`] up to the point where only [`Recheck::finish`] is left (`None` when the
/// run changed nothing, or in a dry run).
pub fn setup_etc_deferred(
    root: &Root,
    tree: &EtcTree,
    opts: EtcOptions,
    dry_run: bool,
) -> Result<(EtcOutcome, Option<Recheck>), EtcError> {
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
        let quiet = quiet_if_empty(tree, key, &seen.facts, &plan);
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
