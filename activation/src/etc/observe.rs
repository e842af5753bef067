//! Reading what `/etc` holds now, for the plan — using what the [`cache`] of earlier runs
//! still vouches for instead of reading it again.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;

use super::cache::{self, CleanFact, CopyFact, DirFact, Facts, Held, Stamp, Time};
use super::sources::InRoot;
use super::tree::{uses_owner_names, EntryKind, EtcTree, Install, TreeEntry};
use super::{is_safe_rel, EtcError, STATIC};
use stagehand_common::rootfs::{self, Node, Root};

/// Which remembered facts an observation may use without reading again.
pub(crate) enum Reuse<'a> {
    /// Those whose stamps still match what is on disk (one `stat` each).
    IfUnchanged,
    /// All but those about the directories and files named here, without looking: for a
    /// run that changed exactly those. Every other fact was taken by this run before it
    /// changed anything and is true of the state its stamp describes.
    Except {
        dirs: &'a HashSet<String>,
        files: &'a HashSet<String>,
        /// The sources of the copies this run wrote, as it read them then.
        written: &'a HashMap<String, Written>,
    },
}

/// A copy's source as [`super::apply()`] read it: its in-root path after following links,
/// its stamp (taken before the read) and its bytes.
pub(crate) struct Written {
    pub canon: String,
    pub stamp: Stamp,
    pub bytes: Vec<u8>,
}

/// One observation: the state for the plan, the facts for the cache, and how many
/// directories and files had to be read (rather than taken from facts).
pub(crate) struct Seen {
    pub state: EtcState,
    pub facts: Facts,
    pub reads: usize,
}

/// Read the current `/etc` under `root`, all of it.
pub fn observe(root: &Root, tree: &EtcTree) -> Result<EtcState, EtcError> {
    let mut state = observe_with(
        root,
        tree,
        Facts::default(),
        Reuse::IfUnchanged,
        HashMap::default(),
    )?
    .state;
    let links = state.nodes.iter().filter_map(|(rel, n)| match n {
        Node::Symlink(t) if t.starts_with(STATIC.as_bytes()) && !under_nixos(rel) => {
            Some(rel.as_str())
        }
        _ => None,
    });
    state.deep_links = deep_links(root, tree, links);
    Ok(state)
}

fn gone(e: &io::Error) -> bool {
    [Errno::NOENT, Errno::LOOP, Errno::NOTDIR]
        .iter()
        .any(|n| e.raw_os_error() == Some(n.raw_os_error()))
}

fn child(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        return name.to_owned();
    }
    let mut path = String::with_capacity(rel.len() + 1 + name.len());
    path.push_str(rel);
    path.push('/');
    path.push_str(name);
    path
}

/// Read `/etc`, taking from `prior` what `reuse` allows. Directories that have to be read
/// are read through the descriptors in `open` (by path relative to `/etc`) when it has them.
pub(crate) fn observe_with(
    root: &Root,
    tree: &EtcTree,
    prior: Facts,
    reuse: Reuse,
    open: HashMap<String, OwnedFd>,
) -> Result<Seen, EtcError> {
    let obs_err = |error: io::Error| EtcError::Observe {
        path: root.host_path(Path::new("/etc")),
        error,
    };
    let mut state = EtcState {
        owners: if uses_owner_names(tree) {
            Owners::read(root)
        } else {
            Owners::default()
        },
        ..EtcState::default()
    };
    // Before the first stamp: see `cache` on racy time stamps.
    let clock = cache::coarse_now();
    let etc = match root.dir(Path::new("/etc"), None) {
        Ok((fd, _, _)) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Seen {
                state,
                facts: Facts::default(),
                reads: 0,
            })
        }
        Err(e) => return Err(obs_err(e)),
    };
    state.static_link = match rustix::fs::readlinkat(&etc, "static", Vec::new()) {
        Ok(t) => Some(Some(String::from_utf8_lossy(t.as_bytes()).into_owned())),
        Err(Errno::NOENT) => None,
        Err(Errno::INVAL) => Some(None),
        Err(e) => return Err(obs_err(e.into())),
    };
    let mut walk = Walk {
        etc: &etc,
        prior,
        reuse: &reuse,
        open,
        clock,
        nodes: HashMap::default(),
        facts: Facts::default(),
        reads: 0,
    };
    walk.visit(None, "").map_err(obs_err)?;
    walk.copies(root, tree);
    walk.clean();
    let Walk {
        nodes,
        facts,
        reads,
        ..
    } = walk;
    state.nodes = nodes;
    state.old_clean = facts
        .clean
        .as_ref()
        .map(|h| h.fact.lines.clone())
        .unwrap_or_default();
    for rel in facts
        .copies
        .iter()
        .filter(|(_, h)| h.fact.same)
        .map(|(r, _)| r)
    {
        state.same_content.insert(rel.clone());
    }
    state.nixos_tag = state.nodes.contains_key("NIXOS");
    look_up_below_links(root, tree, &mut state);
    look_up_extras(root, tree, &mut state);
    Ok(Seen {
        state,
        facts,
        reads,
    })
}

/// `/etc/nixos` and everything under it: `setup-etc.pl` leaves it out of its cleanup walk
/// (it can hold a whole nixpkgs checkout), so neither it nor anything in it is ever removed
/// as a stale link.
pub(crate) fn under_nixos(rel: &str) -> bool {
    rel == "nixos" || rel.starts_with("nixos/")
}

/// The paths the walk does not cover: those under `/etc/nixos` (not walked: it can hold a
/// whole nixpkgs checkout), looked up one by one.
fn look_up_extras(root: &Root, tree: &EtcTree, st: &mut EtcState) {
    let extra: Vec<String> = tree
        .entries
        .iter()
        .map(|e| &e.rel)
        .chain(&st.old_clean)
        .filter(|r| r.starts_with("nixos/") && is_safe_rel(r) && !st.nodes.contains_key(*r))
        .cloned()
        .collect();
    for rel in extra {
        if let Ok(Some(n)) = root.lstat(&Path::new("/etc").join(&rel)) {
            st.nodes.insert(rel.clone(), n);
            st.looked_up.push(rel);
        }
    }
}

/// The paths below a user's symlink to a directory (`/etc/ssh -> /srv/persist/ssh`), which
/// the walk does not follow but `setup-etc.pl` reaches through: entries of the tree that
/// are installed through the link, and files of the old `/etc/.clean` to remove through it.
/// Each is looked up one by one, resolving the link **inside the root** (an absolute
/// target restarts at the root, `..` stops there); so is each directory between the link
/// and the entry. A link into `/etc/static` is ours, not a user's: it is left to the stale
/// link phase. Copies found this way are compared with their source here, since the walk's
/// comparison (relative to `/etc`, where the kernel would follow the link from the host's
/// `/`) never sees them.
fn look_up_below_links(root: &Root, tree: &EtcTree, st: &mut EtcState) {
    let wanted: Vec<String> = tree
        .entries
        .iter()
        .map(|e| &e.rel)
        .chain(&st.old_clean)
        .filter(|r| is_safe_rel(r) && !st.nodes.contains_key(*r))
        .cloned()
        .collect();
    let mut sources = InRoot::new(root);
    for rel in wanted {
        // The first ancestor the walk saw as something other than a directory.
        let mut link = None;
        for (i, _) in rel.match_indices('/') {
            let prefix = &rel[..i];
            match st.nodes.get(prefix) {
                Some(Node::Dir { .. }) => continue,
                Some(Node::Symlink(t)) if !t.starts_with(STATIC.as_bytes()) => {
                    link = Some(prefix.to_owned());
                }
                _ => {}
            }
            break;
        }
        let Some(link) = link else { continue };
        if !st.linked_dirs.contains(&link) {
            if root.dir(&Path::new("/etc").join(&link), None).is_err() {
                continue;
            }
            st.linked_dirs.insert(link.clone());
        }
        // Every path from below the link down to the entry itself.
        let below = rel[link.len() + 1..]
            .match_indices('/')
            .map(|(i, _)| link.len() + 1 + i)
            .chain(std::iter::once(rel.len()));
        for end in below {
            let path = &rel[..end];
            if st.nodes.contains_key(path) {
                continue;
            }
            match root.lstat(&Path::new("/etc").join(path)) {
                Ok(Some(n)) => {
                    st.nodes.insert(path.to_owned(), n);
                    st.looked_up.push(path.to_owned());
                }
                _ => break,
            }
        }
        let copied = tree
            .entries
            .iter()
            .any(|e| e.rel == rel && matches!(e.install, Install::Copy { .. }));
        if let (true, Some(Node::File { size, .. })) = (copied, st.nodes.get(&rel)) {
            let same = (|| -> io::Result<bool> {
                let (src, _, _) = sources.read(&Path::new(&tree.path).join(&rel))?;
                if src.len() as u64 != *size {
                    return Ok(false);
                }
                let (dir, name) = root.parent(&Path::new("/etc").join(&rel), None)?;
                Ok(rootfs::read_at(&dir, &name)? == src)
            })();
            if matches!(same, Ok(true)) {
                st.same_content.insert(rel);
            }
        }
    }
}

/// Which of the links `candidates` (paths under `/etc` that the tree does not list) the new
/// tree still has as links, through one of its symlinked directories: those are not stale.
/// Asked only about links the plan would otherwise remove — rarely any — because it needs
/// the whole listing indexed and an `lstat` in the store per candidate.
pub(crate) fn deep_links<'c>(
    root: &Root,
    tree: &EtcTree,
    candidates: impl Iterator<Item = &'c str>,
) -> HashSet<String> {
    let mut out = HashSet::default();
    let mut by_rel: Option<HashMap<&str, &TreeEntry>> = None;
    for rel in candidates {
        let by_rel = by_rel
            .get_or_insert_with(|| tree.entries.iter().map(|e| (e.rel.as_str(), e)).collect());
        if by_rel.contains_key(rel) {
            continue;
        }
        let mut has_linked_ancestor = false;
        let mut cur = rel;
        while let Some((parent, _)) = cur.rsplit_once('/') {
            if let Some(e) = by_rel.get(parent) {
                has_linked_ancestor = matches!(e.kind, EntryKind::Symlink(_));
                break;
            }
            cur = parent;
        }
        if has_linked_ancestor {
            let p = Path::new(&tree.path).join(rel);
            if let Ok(Some(Node::Symlink(_))) = root.lstat(&p) {
                out.insert(rel.to_owned());
            }
        }
    }
    out
}

struct Walk<'a> {
    etc: &'a OwnedFd,
    prior: Facts,
    reuse: &'a Reuse<'a>,
    /// Descriptors of directories under `/etc`, never read from (see [`observe_with`]).
    open: HashMap<String, OwnedFd>,
    clock: Time,
    nodes: HashMap<String, Node>,
    facts: Facts,
    reads: usize,
}

impl Walk<'_> {
    /// The remembered listing of directory `rel` when it may be used as it is (`Ok`);
    /// otherwise (`Err`) what this run saw there before it changed it, if anything.
    fn reusable(&mut self, rel: &str) -> Result<Held<DirFact>, Option<DirFact>> {
        let held = self.prior.dirs.remove(rel).ok_or(None)?;
        match self.reuse {
            Reuse::Except { dirs, .. } if held.racy || dirs.contains(rel) => Err(Some(held.fact)),
            Reuse::Except { .. } => Ok(held),
            Reuse::IfUnchanged => {
                let same = !held.racy
                    && matches!(cache::stat_rel(self.etc, rel),
                        Ok(now) if now == held.fact.stamp && now.is_dir());
                if same {
                    Ok(held)
                } else {
                    Err(None)
                }
            }
        }
    }

    /// Observe directory `rel` and everything below it. `parent` is the descriptor of its
    /// parent when that was read (not taken from a fact) in this walk.
    fn visit(&mut self, parent: Option<&OwnedFd>, rel: &str) -> io::Result<()> {
        let (held, fd) = match self.reusable(rel) {
            Ok(h) => (h, None),
            Err(before) => {
                let fd = if let Some(fd) = self.open.remove(rel) {
                    Some(fd)
                } else if rel.is_empty() {
                    None
                } else {
                    let name = rel.rsplit_once('/').map_or(rel, |(_, n)| n);
                    // Relative to the parent just read when there is one; otherwise through
                    // ancestors whose stamps were just checked.
                    let opened = match parent {
                        Some(p) => rootfs::open_subdir(p, OsStr::new(name)),
                        None => rootfs::open_subdir(self.etc, OsStr::new(rel)),
                    };
                    match opened {
                        Ok(fd) => Some(fd),
                        // Removed or replaced by a symlink since its parent was listed: it is
                        // not a directory to walk now (its parent's stamp shows that next time).
                        Err(e) if gone(&e) => return Ok(()),
                        Err(e) => return Err(e),
                    }
                };
                let dir = fd.as_ref().unwrap_or(self.etc);
                let held = read_dir(dir, rel, self.clock, before.as_ref())?;
                self.reads += 1;
                (held, fd)
            }
        };
        let mut subdirs = Vec::new();
        for (name, _, entry) in &held.fact.entries {
            let path = child(rel, name);
            if matches!(entry, Node::Dir { .. }) && path != "nixos" {
                subdirs.push(path.clone());
            }
            self.nodes.insert(path, entry.clone());
        }
        self.facts.dirs.insert(rel.to_owned(), held);
        for sub in subdirs {
            self.visit(fd.as_ref(), &sub)?;
        }
        Ok(())
    }

    /// Whether each copied entry already has its source's bytes (and the current mode and
    /// owner of the copies, which can change without their directory).
    fn copies(&mut self, root: &Root, tree: &EtcTree) {
        let mut sources = InRoot::new(root);
        for e in &tree.entries {
            if !matches!(e.install, Install::Copy { .. }) || !is_safe_rel(&e.rel) {
                continue;
            }
            // A racy fact is never taken as it is: it is looked at again, and by now its
            // stamps may be trusted.
            let mut prior = self.prior.copies.remove(&e.rel).filter(|h| !h.racy);
            if let Reuse::Except { files, .. } = self.reuse {
                if let Some(h) = prior.take_if(|_| !files.contains(&e.rel)) {
                    self.facts.copies.insert(e.rel.clone(), h);
                    continue;
                }
            }
            if !matches!(self.nodes.get(&e.rel), Some(Node::File { .. })) {
                continue;
            }
            let Ok(st) = rustix::fs::statat(self.etc, e.rel.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                continue;
            }
            let size = u64::try_from(st.st_size).unwrap_or(0);
            self.nodes.insert(
                e.rel.clone(),
                Node::File {
                    mode: st.st_mode & 0o7777,
                    uid: st.st_uid,
                    gid: st.st_gid,
                    size,
                },
            );
            let dest = Stamp::of(&st);
            // The store file the tree entry links to, when the link leads straight to it.
            let first = match &e.kind {
                EntryKind::Symlink(t) if t.starts_with('/') => Some(t.as_str()),
                _ => None,
            };
            if let Some(h) = prior {
                let f = &h.fact;
                let source_unchanged = || {
                    let rel = f.source.trim_start_matches('/');
                    matches!(rustix::fs::statat(root.fd(), rel, AtFlags::SYMLINK_NOFOLLOW),
                        Ok(s) if Stamp::of(&s) == f.source_stamp)
                };
                if f.dest == dest && first == Some(f.source.as_str()) && source_unchanged() {
                    self.facts.copies.insert(e.rel.clone(), h);
                    continue;
                }
            }
            self.reads += 1;
            let written = match self.reuse {
                Reuse::Except { written, .. } => written.get(&e.rel),
                Reuse::IfUnchanged => None,
            };
            let source = Path::new(&tree.path).join(&e.rel);
            let compared = (|| -> io::Result<(bool, String, Stamp)> {
                // What this run copied is compared with the source it copied from (read
                // then, with the stamp taken before): the source need not be read again.
                let (src, canon, src_stamp) = match written {
                    Some(w) => (
                        std::borrow::Cow::Borrowed(&w.bytes),
                        w.canon.clone(),
                        w.stamp,
                    ),
                    None => {
                        let (b, canon, st) = sources.read(&source)?;
                        let canon = canon.to_string_lossy().into_owned();
                        (std::borrow::Cow::Owned(b), canon, Stamp::of(&st))
                    }
                };
                let same = src.len() as u64 == size
                    && rootfs::read_at(self.etc, OsStr::new(&e.rel))? == *src;
                Ok((same, canon, src_stamp))
            })();
            if let Ok((same, canon, source_stamp)) = compared {
                // Kept only when a later run can check the source with one `stat`.
                let racy = first != Some(canon.as_str())
                    || dest.is_racy(self.clock)
                    || source_stamp.is_racy(self.clock);
                self.facts.copies.insert(
                    e.rel.clone(),
                    Held {
                        fact: CopyFact {
                            dest,
                            source: canon,
                            source_stamp,
                            same,
                        },
                        racy,
                    },
                );
            }
        }
    }

    /// The lines of `/etc/.clean`, when it is a regular file.
    fn clean(&mut self) {
        let prior = self.prior.clean.take().filter(|h| !h.racy);
        if let Reuse::Except { files, .. } = self.reuse {
            if !files.contains(".clean") && prior.is_some() {
                self.facts.clean = prior;
                return;
            }
        }
        if !matches!(self.nodes.get(".clean"), Some(Node::File { .. })) {
            return;
        }
        let Ok(stamp) = cache::stat_rel(self.etc, ".clean") else {
            return;
        };
        if let Some(h) = prior.filter(|h| h.fact.stamp == stamp) {
            self.facts.clean = Some(h);
            return;
        }
        self.reads += 1;
        if let Ok(b) = rootfs::read_at(self.etc, OsStr::new(".clean")) {
            let lines = String::from_utf8_lossy(&b)
                .lines()
                .map(str::to_owned)
                .collect();
            self.facts.clean = Some(Held {
                fact: CleanFact { stamp, lines },
                racy: stamp.is_racy(self.clock),
            });
        }
    }
}

/// A subdirectory as listed (its own mode and owner are not looked at).
const DIR: Node = Node::Dir {
    mode: 0,
    uid: 0,
    gid: 0,
};

/// List the directory open as `dir` (`rel` under `/etc`). `before` is what this run saw
/// there before changing it: a link whose name and inode number are unchanged since still
/// has the target read then (a symlink's target never changes; a link replaced by another,
/// as by `ln -sfn` or by us, is another inode), so it is not read again. Only a link
/// deleted and re-created under the same name by someone else during this run, reusing the
/// freed inode number, would go unseen.
fn read_dir(
    dir: &OwnedFd,
    rel: &str,
    clock: Time,
    before: Option<&DirFact>,
) -> io::Result<Held<DirFact>> {
    // The stamp is taken before the listing: a change after it shows in a later stamp.
    let stamp = Stamp::of(&rustix::fs::fstat(dir)?);
    // Both listings are sorted by name: one pass over `before` alongside.
    let mut before = before.map_or(&[][..], |b| &b.entries).iter().peekable();
    let mut known = |name: &str, ino: u64| {
        while before.next_if(|(n, _, _)| n.as_str() < name).is_some() {}
        match before.peek() {
            Some((n, was, Node::Symlink(t))) if n == name && *was == ino => Some(t.clone()),
            _ => None,
        }
    };
    let mut entries = Vec::new();
    for (name, ty, ino) in rootfs::list_new_dir_ino(dir)? {
        if rel.is_empty() && name == "static" {
            continue;
        }
        let name_str = name.to_string_lossy().into_owned();
        let mut ino = ino;
        let entry = match ty {
            FileType::Symlink => match known(&name_str, ino) {
                Some(t) => Node::Symlink(t),
                None => Node::Symlink(
                    rustix::fs::readlinkat(dir, name.as_os_str(), Vec::new())?.into_bytes(),
                ),
            },
            FileType::Directory => DIR,
            _ => {
                let s = match rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(s) => s,
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                };
                match FileType::from_raw_mode(s.st_mode) {
                    FileType::RegularFile => Node::File {
                        mode: s.st_mode & 0o7777,
                        uid: s.st_uid,
                        gid: s.st_gid,
                        size: u64::try_from(s.st_size).unwrap_or(0),
                    },
                    // Replaced between readdir and stat: look again the slow way (and
                    // record no inode number: the one read belonged to what was replaced).
                    FileType::Symlink | FileType::Directory => {
                        ino = 0;
                        match rootfs::lstat_at(dir, &name)? {
                            Some(Node::Dir { .. }) => DIR,
                            Some(n) => n,
                            None => continue,
                        }
                    }
                    _ => Node::Other,
                }
            }
        };
        entries.push((name_str, ino, entry));
    }
    Ok(Held {
        fact: DirFact { stamp, entries },
        racy: stamp.is_racy(clock),
    })
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
    /// individually looked-up tree entries and `.clean` entries under `/etc/nixos` and below
    /// a user's symlinked directory.
    pub nodes: HashMap<String, Node>,
    /// Copied entries whose current file already has the source's bytes.
    pub same_content: HashSet<String>,
    /// Stale-link candidates not listed in the tree that are still symlinks in the new tree
    /// through a symlinked directory of it (filled by `plan::plan_observed`).
    pub deep_links: HashSet<String>,
    /// `/etc/.clean` as read, one entry per line.
    pub old_clean: Vec<String>,
    pub nixos_tag: bool,
    pub owners: Owners,
    /// Users' symlinks under `/etc` that lead (inside the root) to a directory through which
    /// tree entries are installed or old copies removed: directories for the plan.
    pub linked_dirs: HashSet<String>,
    /// The paths in `nodes` that were looked up one by one (under `/etc/nixos` or below a
    /// linked directory) rather than read with a directory whose stamp vouches for them.
    pub looked_up: Vec<String>,
}
