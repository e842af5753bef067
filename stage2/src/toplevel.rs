//! Which generation are we? Stage 2 is exec'd as `<toplevel>/init` (stage 1 passes the
//! path with a canonical directory; the kernel passes `init=` as given when there is no
//! stage 1), so the toplevel is the canonical parent directory of `argv[0]`. Under a root
//! prefix (the systemd initrd's `/sysroot`) the path is resolved inside that root, where
//! absolute profile links mean what they mean on the booted system.

use std::fmt;
use std::path::{Path, PathBuf};

use stagehand_common::rootfs::Root;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToplevelError {
    NotAbsolute(String),
    Unresolvable { argv0: String, error: String },
    NotAGeneration { dir: PathBuf },
}

impl fmt::Display for ToplevelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAbsolute(a) => write!(
                f,
                "started as {a:?}, not as an absolute <toplevel>/init path; boot with \
                 init=/nix/var/nix/profiles/system/init (or a store path)"
            ),
            Self::Unresolvable { argv0, error } => {
                write!(
                    f,
                    "cannot resolve the generation directory of {argv0}: {error}"
                )
            }
            Self::NotAGeneration { dir } => write!(
                f,
                "{} does not look like a system generation (no boot.json, nixos-version or \
                 activation.json in it)",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for ToplevelError {}

/// The generation directory for a stage 2 started as `argv0`.
pub fn from_argv0(argv0: &str) -> Result<PathBuf, ToplevelError> {
    let path = Path::new(argv0);
    if !path.is_absolute() {
        return Err(ToplevelError::NotAbsolute(argv0.into()));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dir = std::fs::canonicalize(dir).map_err(|e| ToplevelError::Unresolvable {
        argv0: argv0.into(),
        error: e.to_string(),
    })?;
    let is_generation = ["boot.json", "nixos-version", "activation.json"]
        .iter()
        .any(|marker| dir.join(marker).exists());
    if !is_generation {
        return Err(ToplevelError::NotAGeneration { dir });
    }
    Ok(dir)
}

/// The in-root generation directory for a stage 2 started as `argv0` with the real root at
/// `root`. `argv0` may be a host path under `root` (`/sysroot/nix/store/…/init`) or an
/// in-root one (`/nix/var/nix/profiles/system/init`).
pub fn from_argv0_in(root: &Path, argv0: &str) -> Result<PathBuf, ToplevelError> {
    if root == Path::new("/") {
        return from_argv0(argv0);
    }
    let path = Path::new(argv0);
    if !path.is_absolute() {
        return Err(ToplevelError::NotAbsolute(argv0.into()));
    }
    let in_root = match path.strip_prefix(root) {
        Ok(rest) => Path::new("/").join(rest),
        Err(_) => path.to_path_buf(),
    };
    let unresolvable = |error: std::io::Error| ToplevelError::Unresolvable {
        argv0: argv0.into(),
        error: format!("{error} (inside {})", root.display()),
    };
    let r = Root::open(root).map_err(unresolvable)?;
    let dir = r
        .canonicalize(in_root.parent().unwrap_or(Path::new("/")))
        .map_err(unresolvable)?;
    let is_generation = ["boot.json", "nixos-version", "activation.json"]
        .iter()
        .any(|marker| r.host_path(&dir.join(marker)).exists());
    if !is_generation {
        return Err(ToplevelError::NotAGeneration {
            dir: r.host_path(&dir),
        });
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn profile_link_resolves_to_the_store_path() {
        let t = tempfile::tempdir().expect("tempdir");
        let gen = t.path().join("store/aaa-system");
        std::fs::create_dir_all(&gen).expect("mkdir");
        std::fs::write(gen.join("boot.json"), "{}").expect("write");
        symlink(&gen, t.path().join("system-1-link")).expect("ln");
        let argv0 = t.path().join("system-1-link/init");
        let top = from_argv0(argv0.to_str().expect("utf8")).expect("toplevel");
        assert_eq!(top, std::fs::canonicalize(&gen).expect("canon"));
    }

    #[test]
    fn rejects_relative_and_non_generations() {
        assert!(matches!(
            from_argv0("init"),
            Err(ToplevelError::NotAbsolute(_))
        ));
        let t = tempfile::tempdir().expect("tempdir");
        let argv0 = t.path().join("init");
        let e = from_argv0(argv0.to_str().expect("utf8")).expect_err("not a generation");
        assert!(matches!(e, ToplevelError::NotAGeneration { .. }));
        assert!(e.to_string().contains("boot.json"));
    }

    #[test]
    fn under_a_root_prefix_links_resolve_inside_it() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        let gen = root.join("nix/store/aaa-system");
        std::fs::create_dir_all(&gen).expect("mkdir");
        std::fs::write(gen.join("nixos-version"), "x").expect("write");
        let profiles = root.join("nix/var/nix/profiles");
        std::fs::create_dir_all(&profiles).expect("mkdir");
        // An absolute link, as on the booted system: only right when read inside the root.
        symlink("/nix/store/aaa-system", profiles.join("system-1-link")).expect("ln");
        let want = PathBuf::from("/nix/store/aaa-system");
        let top = from_argv0_in(root, "/nix/var/nix/profiles/system-1-link/init").expect("in-root");
        assert_eq!(top, want);
        let host = root.join("nix/var/nix/profiles/system-1-link/init");
        let top = from_argv0_in(root, host.to_str().expect("utf8")).expect("host path");
        assert_eq!(top, want);
        let e = from_argv0_in(root, "/nix/var/nix/profiles/init").expect_err("not a generation");
        assert!(e.to_string().contains(&root.display().to_string()), "{e}");
    }
}
