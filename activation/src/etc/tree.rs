//! The etc tree of a generation: its entries in pre-order and what each installs, read
//! with its `.mode`/`.uid`/`.gid` sidecars (once, at build time, by `stagehand compile`).

use rustc_hash::FxHashSet as HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::FileType;
use serde::{Deserialize, Serialize};

use super::{EtcError, EtcIssue};
use stagehand_common::rootfs::{self, Root};

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
    super::refuse_tree_in_etc(root, path, &canon)?;
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

/// Does any copy take its owner by name (so that the root's passwd/group are needed)?
pub(super) fn uses_owner_names(tree: &EtcTree) -> bool {
    tree.entries.iter().any(|e| {
        matches!(&e.install, Install::Copy { user, group, .. }
            if matches!(user, Owner::Name(_)) || matches!(group, Owner::Name(_)))
    })
}
