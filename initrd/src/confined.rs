//! Paths of a system kept under a directory (`--root DIR`, a mounted disk, a VM fixture):
//! resolved as if that directory were `/`.
//!
//! A NixOS toplevel is a web of absolute symlinks into `/nix/store` (`kernel-modules ->
//! /nix/store/…-kernel-modules`, module files inside it linked by `buildEnv`). Followed by
//! the host's kernel they would land in the host's store, so every component is looked up
//! by hand: an absolute link restarts at the root, a relative one continues from its
//! directory, and a `..` that would climb above the root is an error naming the link —
//! unlike the kernel's `RESOLVE_IN_ROOT` (and `rootfs::Root`), which silently stops at the
//! root. A link that leaves the tree means the tree is not what we think it is.
//!
//! The result is a host path whose components are all real directories and files, so
//! reading it follows no further symlinks (short of a race with whoever writes the tree,
//! which a build tool reading a store does not defend against).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Linux gives up after 40 symlinks in one lookup; so do we.
const MAX_SYMLINKS: usize = 40;

#[derive(Debug)]
pub enum ConfinedError {
    /// A symlink (or the path itself) climbs above the root with `..`.
    Escape {
        root: PathBuf,
        /// The path being resolved, as the system sees it.
        path: PathBuf,
        /// The link whose target leaves the root, when a link did.
        link: Option<(PathBuf, PathBuf)>,
    },
    /// More than 40 symlinks (a loop).
    Loop { root: PathBuf, path: PathBuf },
    /// A component is missing, unreadable, or not a directory.
    Io {
        root: PathBuf,
        path: PathBuf,
        error: io::Error,
    },
    /// A host path handed in that does not lie under the root.
    NotUnderRoot { root: PathBuf, path: PathBuf },
}

impl ConfinedError {
    /// True when a component of the path does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { error, .. } if error.kind() == io::ErrorKind::NotFound)
    }
}

/// `path` (as the system sees it) as the host sees it under `root`, for messages.
pub fn host_path(root: &Path, path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    if rel.as_os_str().is_empty() {
        return root.to_owned();
    }
    root.join(rel)
}

impl fmt::Display for ConfinedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Escape {
                root,
                path,
                link: Some((link, target)),
            } => write!(
                f,
                "{}: the symlink {} -> {} leads out of the root {}; a system under a \
                 root directory must only link inside it (absolute links are taken \
                 relative to the root)",
                path.display(),
                link.display(),
                target.display(),
                root.display()
            ),
            Self::Escape {
                root,
                path,
                link: None,
            } => write!(
                f,
                "{}: `..` leads out of the root {}; give a path inside it",
                path.display(),
                root.display()
            ),
            Self::Loop { root, path } => write!(
                f,
                "{}: more than {MAX_SYMLINKS} symlinks (a loop?) under the root {}; fix the links",
                path.display(),
                root.display()
            ),
            Self::Io { root, path, error } => {
                write!(f, "{}", host_path(root, path).display())?;
                if root != Path::new("/") {
                    write!(f, " ({} inside the root)", path.display())?;
                }
                write!(f, ": {error}")
            }
            Self::NotUnderRoot { root, path } => write!(
                f,
                "{} is not under the root {}; give a path inside it",
                path.display(),
                root.display()
            ),
        }
    }
}

impl std::error::Error for ConfinedError {}

/// Components of a path, reversed so that `pop` yields the next one; empty and `.`
/// components dropped.
fn components_rev(path: &[u8]) -> Vec<OsString> {
    let mut v: Vec<OsString> = path
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsStr::from_bytes(c).to_os_string())
        .collect();
    v.reverse();
    v
}

fn in_root(stack: &[OsString]) -> PathBuf {
    let mut p = PathBuf::from("/");
    for c in stack {
        p.push(c);
    }
    p
}

/// Resolve every symlink in `path` (absolute, as the system sees it) inside `root`.
/// Returns the canonical path as the system sees it; [`host_path`] turns it into the
/// host's. With `root` = `/`, `..` at the top stays at `/` as it does in the kernel.
pub fn resolve(root: &Path, path: &Path) -> Result<PathBuf, ConfinedError> {
    let is_host_root = root == Path::new("/");
    let mut stack: Vec<OsString> = Vec::new();
    let mut pending = components_rev(path.as_os_str().as_bytes());
    let mut links = 0usize;
    let mut last_link: Option<(PathBuf, PathBuf)> = None;
    while let Some(c) = pending.pop() {
        if c == ".." {
            if stack.pop().is_none() && !is_host_root {
                return Err(ConfinedError::Escape {
                    root: root.to_owned(),
                    path: path.to_owned(),
                    link: last_link,
                });
            }
            continue;
        }
        stack.push(c);
        let here = in_root(&stack);
        let host = host_path(root, &here);
        let meta = std::fs::symlink_metadata(&host).map_err(|error| ConfinedError::Io {
            root: root.to_owned(),
            path: here.clone(),
            error,
        })?;
        if !meta.file_type().is_symlink() {
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(ConfinedError::Loop {
                root: root.to_owned(),
                path: path.to_owned(),
            });
        }
        let target = std::fs::read_link(&host).map_err(|error| ConfinedError::Io {
            root: root.to_owned(),
            path: here.clone(),
            error,
        })?;
        stack.pop();
        if target.is_absolute() {
            stack.clear();
        }
        pending.extend(components_rev(target.as_os_str().as_bytes()));
        last_link = Some((here, target));
    }
    Ok(in_root(&stack))
}

/// [`resolve`], as the host's path.
pub fn resolve_host(root: &Path, path: &Path) -> Result<PathBuf, ConfinedError> {
    Ok(host_path(root, &resolve(root, path)?))
}

/// A host path under `root` as the system sees it (`ROOT/nix/store/x` → `/nix/store/x`).
pub fn system_path(root: &Path, host: &Path) -> Result<PathBuf, ConfinedError> {
    let rel = host
        .strip_prefix(root)
        .map_err(|_| ConfinedError::NotUnderRoot {
            root: root.to_owned(),
            path: host.to_owned(),
        })?;
    Ok(Path::new("/").join(rel))
}

/// Resolve a host path that lies under `root` inside it; the result is a host path.
pub fn resolve_host_path(root: &Path, host: &Path) -> Result<PathBuf, ConfinedError> {
    resolve_host(root, &system_path(root, host)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_links_restart_at_the_root_and_escapes_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("nix/store/abc-x/lib")).expect("mkdir");
        std::fs::write(root.join("nix/store/abc-x/lib/f"), b"x").expect("write");
        symlink("/nix/store/abc-x", root.join("nix/store/top")).expect("link");
        symlink("../store/abc-x/lib", root.join("nix/store/rel")).expect("link");
        symlink("../../../../../etc", root.join("nix/store/out")).expect("link");
        symlink("loop", root.join("nix/store/loop")).expect("link");

        assert_eq!(
            resolve(root, Path::new("/nix/store/top/lib/f")).expect("abs"),
            Path::new("/nix/store/abc-x/lib/f")
        );
        assert_eq!(
            resolve_host(root, Path::new("/nix/store/rel/f")).expect("rel"),
            root.join("nix/store/abc-x/lib/f")
        );
        let e = resolve(root, Path::new("/nix/store/out/passwd")).expect_err("escape");
        assert!(matches!(e, ConfinedError::Escape { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("/nix/store/out -> ../../../../../etc"),
            "{msg}"
        );
        let e = resolve(root, Path::new("/nix/store/loop")).expect_err("loop");
        assert!(matches!(e, ConfinedError::Loop { .. }), "{e}");
        let e = resolve(root, Path::new("/nix/store/nothing")).expect_err("missing");
        assert!(e.is_not_found(), "{e}");
        assert!(e.to_string().contains("/nix/store/nothing"), "{e}");
        // The host's root cannot be left: `/..` is `/`.
        assert_eq!(
            resolve(Path::new("/"), Path::new("/../..")).expect("host"),
            Path::new("/")
        );
    }
}
