//! Resolving `init=` inside the new root before we chroot into it.
//!
//! The boot loader usually names a profile link (`/nix/var/nix/profiles/system-42-link/init`)
//! whose components are *absolute* symlinks (`system-42-link -> /nix/store/...`). Followed
//! from the initramfs they would point into the initramfs, so every symlink is resolved
//! relative to the new root instead, the way `chroot-realpath` would.
//!
//! The directory part is fully canonicalised (that is the generation's toplevel, which stage
//! 2 derives from its `argv[0]`); the last component is kept as named, so `init` stays
//! `init` even when it is itself a link to the stage-2 binary.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed before giving up, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitError {
    /// A component of the path does not exist in the new root.
    Missing { init: String, missing: String },
    /// More than [`MAX_SYMLINKS`] links, or a cycle.
    Loop { init: String },
    /// The path exists but is not a regular executable file.
    NotExecutable { init: String, resolved: String },
    Io {
        init: String,
        path: String,
        error: String,
    },
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { init, missing } => write!(
                f,
                "stage 2 init {init} not found in the root filesystem: {missing} does not exist; \
                 pick another generation in the boot menu or fix init= on the kernel command line"
            ),
            Self::Loop { init } => write!(
                f,
                "stage 2 init {init}: too many levels of symbolic links (a link loop?); fix the \
                 profile links or init= on the kernel command line"
            ),
            Self::NotExecutable { init, resolved } => write!(
                f,
                "stage 2 init {init} resolves to {resolved}, which is not an executable file"
            ),
            Self::Io { init, path, error } => {
                write!(f, "stage 2 init {init}: cannot inspect {path}: {error}")
            }
        }
    }
}

impl std::error::Error for InitError {}

/// Resolve `init` (an absolute path as seen from inside `root`) to the path stage 2 must be
/// exec'd as after the chroot: canonical directory, last component kept.
pub fn resolve_init(root: &Path, init: &str) -> Result<String, InitError> {
    let path = Path::new(init);
    let name = path.file_name().ok_or_else(|| InitError::NotExecutable {
        init: init.into(),
        resolved: init.into(),
    })?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut links = 0;
    let canonical_dir = canonicalize_in(root, dir, init, &mut links)?;
    let result = canonical_dir.join(name);

    // The file itself may be a link (toplevel/init -> stage-2 binary): check where it ends.
    let target = canonicalize_in(root, &result, init, &mut links)?;
    let meta = std::fs::metadata(host_path(root, &target)).map_err(|e| InitError::Io {
        init: init.into(),
        path: target.display().to_string(),
        error: e.to_string(),
    })?;
    use std::os::unix::fs::PermissionsExt;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(InitError::NotExecutable {
            init: init.into(),
            resolved: target.display().to_string(),
        });
    }
    Ok(result.display().to_string())
}

/// The host path of a path inside the new root.
fn host_path(root: &Path, inside: &Path) -> PathBuf {
    root.join(inside.strip_prefix("/").unwrap_or(inside))
}

/// Canonicalise `path` as if `root` were `/`: `..` never climbs above the root, absolute
/// link targets restart at the root.
fn canonicalize_in(
    root: &Path,
    path: &Path,
    init: &str,
    links: &mut usize,
) -> Result<PathBuf, InitError> {
    // Components still to walk, in reverse so that pushing a link's target is cheap.
    let mut todo: Vec<std::ffi::OsString> =
        path.components().rev().filter_map(component_name).collect();
    let mut done = PathBuf::from("/");
    while let Some(part) = todo.pop() {
        if part == ".." {
            done.pop();
            continue;
        }
        let candidate = done.join(&part);
        let host = host_path(root, &candidate);
        let meta = match std::fs::symlink_metadata(&host) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(InitError::Missing {
                    init: init.into(),
                    missing: candidate.display().to_string(),
                })
            }
            Err(e) => {
                return Err(InitError::Io {
                    init: init.into(),
                    path: candidate.display().to_string(),
                    error: e.to_string(),
                })
            }
        };
        if meta.file_type().is_symlink() {
            *links += 1;
            if *links > MAX_SYMLINKS {
                return Err(InitError::Loop { init: init.into() });
            }
            let target = std::fs::read_link(&host).map_err(|e| InitError::Io {
                init: init.into(),
                path: candidate.display().to_string(),
                error: e.to_string(),
            })?;
            if target.is_absolute() {
                done = PathBuf::from("/");
            }
            todo.extend(target.components().rev().filter_map(component_name));
        } else {
            done = candidate;
        }
    }
    Ok(done)
}

fn component_name(c: Component<'_>) -> Option<std::ffi::OsString> {
    match c {
        Component::Normal(n) => Some(n.to_owned()),
        Component::ParentDir => Some("..".into()),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A new root with a store, one generation and NixOS's profile links.
    fn root() -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        let r = t.path();
        let stage2 = r.join("nix/store/bbb-stage2/bin");
        std::fs::create_dir_all(&stage2).expect("mkdir");
        std::fs::write(stage2.join("stage2"), b"#!").expect("write");
        std::fs::set_permissions(
            stage2.join("stage2"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::fs::create_dir_all(r.join("nix/store/aaa-system")).expect("mkdir");
        symlink(
            "/nix/store/bbb-stage2/bin/stage2",
            r.join("nix/store/aaa-system/init"),
        )
        .expect("ln");
        std::fs::create_dir_all(r.join("nix/var/nix/profiles")).expect("mkdir");
        symlink(
            "/nix/store/aaa-system",
            r.join("nix/var/nix/profiles/system-2-link"),
        )
        .expect("ln");
        symlink("system-2-link", r.join("nix/var/nix/profiles/system")).expect("ln");
        t
    }

    #[test]
    fn follows_absolute_profile_links_inside_the_root() {
        let t = root();
        for init in [
            "/nix/var/nix/profiles/system-2-link/init",
            "/nix/var/nix/profiles/system/init",
            "/nix/store/aaa-system/init",
            "/nix/var/nix/profiles/../profiles/system/init",
        ] {
            assert_eq!(
                resolve_init(t.path(), init).expect(init),
                "/nix/store/aaa-system/init",
                "{init}"
            );
        }
    }

    #[test]
    fn missing_component_is_named() {
        let t = root();
        let e = resolve_init(t.path(), "/nix/var/nix/profiles/system-3-link/init")
            .expect_err("missing");
        assert_eq!(
            e,
            InitError::Missing {
                init: "/nix/var/nix/profiles/system-3-link/init".into(),
                missing: "/nix/var/nix/profiles/system-3-link".into()
            }
        );
        assert!(e.to_string().contains("boot menu"));
    }

    #[test]
    fn loops_are_detected() {
        let t = root();
        symlink("/loop-b", t.path().join("loop-a")).expect("ln");
        symlink("/loop-a", t.path().join("loop-b")).expect("ln");
        let e = resolve_init(t.path(), "/loop-a/init").expect_err("loop");
        assert!(matches!(e, InitError::Loop { .. }));
    }

    #[test]
    fn dotdot_does_not_escape_the_root() {
        let t = root();
        let r = resolve_init(t.path(), "/../../../nix/store/aaa-system/init").expect("resolves");
        assert_eq!(r, "/nix/store/aaa-system/init");
    }

    #[test]
    fn non_executable_is_rejected() {
        let t = root();
        std::fs::write(t.path().join("nix/store/aaa-system/notes"), b"x").expect("write");
        let e = resolve_init(t.path(), "/nix/store/aaa-system/notes").expect_err("not exec");
        assert!(matches!(e, InitError::NotExecutable { .. }));
        let e = resolve_init(t.path(), "/nix/store").expect_err("dir");
        assert!(matches!(e, InitError::NotExecutable { .. }));
    }
}
