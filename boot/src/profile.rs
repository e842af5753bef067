//! The system profile: `/nix/var/nix/profiles/system -> system-N-link -> /nix/store/…`.
//!
//! We follow Nix's own conventions so that `nix-env --list-generations`, `nix-collect-garbage`
//! and `nixos-rebuild` keep working on profiles we touched: generation links are named
//! `<profile>-<N>-link`, the profile link points at that name relatively, a new generation is
//! only made when the toplevel differs from the newest one, and changes are made under Nix's
//! profile lock (`flock` on `<profile>.lock`).

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use stagehand_common::rootfs::{self, Root};

use super::spec::{self, BootSpec};

/// Where NixOS keeps its profiles.
pub const PROFILES_DIR: &str = "/nix/var/nix/profiles";
/// The link stage 2 points at the generation it booted.
pub const BOOTED_SYSTEM: &str = "/run/booted-system";

#[derive(Debug)]
pub enum ProfileError {
    Io {
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },
    NoGenerations {
        dir: PathBuf,
        name: String,
    },
    NoSuchGeneration {
        profile: PathBuf,
        number: u64,
    },
    /// The profile link does not name a generation link, so "previous" means nothing.
    CurrentUnknown {
        profile: PathBuf,
        target: String,
    },
    NoPrevious {
        profile: PathBuf,
        current: u64,
    },
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileError::Io {
                path,
                action,
                error,
            } => write!(f, "cannot {action} {}: {error}", path.display()),
            ProfileError::NoGenerations { dir, name } => write!(
                f,
                "no generations of profile {name} in {} (no {name}-N-link there); build and \
                 switch to a configuration first",
                dir.display()
            ),
            ProfileError::NoSuchGeneration { profile, number } => write!(
                f,
                "{} has no generation {number}; `stagehand generations` lists the ones there are",
                profile.display()
            ),
            ProfileError::CurrentUnknown { profile, target } => write!(
                f,
                "{} points at {target:?}, which is not one of its generation links; point it at \
                 a generation (nix-env -p {} --switch-generation N) and retry",
                profile.display(),
                profile.display()
            ),
            ProfileError::NoPrevious { profile, current } => write!(
                f,
                "{} is at generation {current} and there is no older generation to roll back to",
                profile.display()
            ),
        }
    }
}

impl std::error::Error for ProfileError {}

/// One `<profile>-<N>-link`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenLink {
    pub number: u64,
    /// The link's text, normally a store path.
    pub target: PathBuf,
    /// When the link was made (its own mtime): the generation's date as Nix reports it.
    pub created: i64,
}

/// A profile inside a root.
pub struct Profile<'r> {
    root: &'r Root,
    dir: PathBuf,
    name: String,
}

/// Held while we change the profile; dropping it releases Nix's lock.
pub struct ProfileLock {
    _fd: OwnedFd,
}

impl<'r> Profile<'r> {
    /// The NixOS system profile, `/nix/var/nix/profiles/system`.
    pub fn system(root: &'r Root) -> Self {
        Profile::new(root, Path::new(PROFILES_DIR), "system")
    }

    pub fn new(root: &'r Root, dir: &Path, name: &str) -> Self {
        Profile {
            root,
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// The profile link as the target sees it.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// The generation link's path as the target sees it.
    pub fn link_path(&self, number: u64) -> PathBuf {
        self.dir.join(self.link_name(number))
    }

    fn link_name(&self, number: u64) -> String {
        format!("{}-{number}-link", self.name)
    }

    /// `N` from `<profile>-N-link`, or `None` for any other name.
    fn parse_link_name(&self, name: &[u8]) -> Option<u64> {
        let rest = name
            .strip_prefix(self.name.as_bytes())?
            .strip_prefix(b"-")?;
        let digits = rest.strip_suffix(b"-link")?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }

    fn io(&self, path: PathBuf, action: &'static str) -> impl FnOnce(io::Error) -> ProfileError {
        move |error| ProfileError::Io {
            path,
            action,
            error,
        }
    }

    fn open_dir(&self, create: bool) -> Result<OwnedFd, ProfileError> {
        let mode = create.then(|| Mode::from_raw_mode(0o755));
        self.root
            .dir(&self.dir, mode)
            .map(|(fd, _, _)| fd)
            .map_err(self.io(self.root.host_path(&self.dir), "open profile directory"))
    }

    /// All generation links, oldest first. A missing profile directory has none.
    pub fn generations(&self) -> Result<Vec<GenLink>, ProfileError> {
        let dirfd = match self.root.dir(&self.dir, None) {
            Ok((fd, _, _)) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(self.root.host_path(&self.dir), "open")(e)),
        };
        let host_dir = self.root.host_path(&self.dir);
        let entries = rootfs::list_dir(&dirfd).map_err(self.io(host_dir.clone(), "list"))?;
        let mut out = Vec::new();
        for (name, ty) in entries {
            if ty != FileType::Symlink {
                continue;
            }
            let Some(number) = self.parse_link_name(name.as_bytes()) else {
                continue;
            };
            let path = host_dir.join(&name);
            let st = rfs::statat(&dirfd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| self.io(path.clone(), "stat")(e.into()))?;
            let target = rfs::readlinkat(&dirfd, name.as_os_str(), Vec::new())
                .map_err(|e| self.io(path.clone(), "read link")(e.into()))?;
            out.push(GenLink {
                number,
                target: PathBuf::from(OsStr::from_bytes(target.as_bytes())),
                created: st.st_mtime,
            });
        }
        out.sort_by_key(|g| g.number);
        Ok(out)
    }

    /// The generation the profile link points at; `None` when there is no profile link.
    pub fn current(&self) -> Result<Option<u64>, ProfileError> {
        let path = self.path();
        let text = match self.root.lstat(&path) {
            Ok(Some(rootfs::Node::Symlink(t))) => t,
            Ok(_) => return Ok(None),
            Err(e) => return Err(self.io(self.root.host_path(&path), "read link")(e)),
        };
        // Nix writes a relative name; accept an absolute path to a link in this directory too.
        let name = Path::new(OsStr::from_bytes(&text))
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        match self.parse_link_name(&name) {
            Some(n) => Ok(Some(n)),
            None => Err(ProfileError::CurrentUnknown {
                profile: self.root.host_path(&path),
                target: String::from_utf8_lossy(&text).into_owned(),
            }),
        }
    }

    /// Take Nix's profile lock (blocking), creating the directory and lock file if needed.
    pub fn lock(&self) -> Result<ProfileLock, ProfileError> {
        let dirfd = self.open_dir(true)?;
        let name = format!("{}.lock", self.name);
        let path = self.root.host_path(&self.dir.join(&name));
        let fd = rfs::openat(
            &dirfd,
            name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.io(path.clone(), "open lock file")(e.into()))?;
        rfs::flock(&fd, FlockOperation::LockExclusive)
            .map_err(|e| self.io(path, "lock")(e.into()))?;
        Ok(ProfileLock { _fd: fd })
    }

    /// Record `toplevel` as a new generation (unless it is already the newest one) and return
    /// its number. The profile link is not moved; see [`Profile::switch_to`].
    pub fn add_generation(&self, toplevel: &Path) -> Result<u64, ProfileError> {
        let _lock = self.lock()?;
        self.add_generation_locked(toplevel)
    }

    fn add_generation_locked(&self, toplevel: &Path) -> Result<u64, ProfileError> {
        let gens = self.generations()?;
        if let Some(last) = gens.last() {
            if last.target == toplevel {
                return Ok(last.number);
            }
        }
        let dirfd = self.open_dir(true)?;
        let mut number = gens.last().map_or(1, |g| g.number.saturating_add(1));
        loop {
            let name = self.link_name(number);
            // symlinkat(2) either makes the whole link or nothing, and refuses to replace an
            // existing name: a concurrent writer that ignores the lock cannot be clobbered.
            match rfs::symlinkat(toplevel.as_os_str(), &dirfd, name.as_str()) {
                Ok(()) => break,
                Err(Errno::EXIST) => number = number.saturating_add(1),
                Err(e) => {
                    return Err(self
                        .io(self.root.host_path(&self.link_path(number)), "create")(
                        e.into(),
                    ))
                }
            }
        }
        rootfs::fsync_dir(&dirfd).map_err(self.io(self.root.host_path(&self.dir), "fsync"))?;
        Ok(number)
    }

    /// Point the profile link at generation `number` (atomic rename of a new link over it).
    pub fn switch_to(&self, number: u64) -> Result<(), ProfileError> {
        let _lock = self.lock()?;
        self.switch_to_locked(number)
    }

    fn switch_to_locked(&self, number: u64) -> Result<(), ProfileError> {
        if !self.generations()?.iter().any(|g| g.number == number) {
            return Err(ProfileError::NoSuchGeneration {
                profile: self.root.host_path(&self.path()),
                number,
            });
        }
        let dirfd = self.open_dir(false)?;
        let host = self.root.host_path(&self.path());
        rootfs::atomic_symlink(
            &dirfd,
            OsStr::new(&self.name),
            self.link_name(number).as_bytes(),
        )
        .map_err(self.io(host.clone(), "replace"))?;
        rootfs::fsync_dir(&dirfd).map_err(self.io(host, "fsync the directory of"))?;
        Ok(())
    }

    /// Add `toplevel` as a generation and make it current, like `nix-env -p … --set`.
    pub fn set(&self, toplevel: &Path) -> Result<u64, ProfileError> {
        let _lock = self.lock()?;
        let n = self.add_generation_locked(toplevel)?;
        self.switch_to_locked(n)?;
        Ok(n)
    }

    /// Point the profile at the newest generation older than the current one, like
    /// `nix-env --rollback`. Returns `(from, to)`.
    pub fn rollback(&self) -> Result<(u64, u64), ProfileError> {
        let _lock = self.lock()?;
        let (current, previous) = self.rollback_target()?;
        self.switch_to_locked(previous)?;
        Ok((current, previous))
    }

    /// What [`Profile::rollback`] would do, `(from, to)`, without taking the lock or
    /// changing anything (`stagehand rollback --dry-run`).
    pub fn rollback_target(&self) -> Result<(u64, u64), ProfileError> {
        let gens = self.generations()?;
        let current = match self.current()? {
            Some(n) => n,
            None => {
                return Err(ProfileError::NoGenerations {
                    dir: self.root.host_path(&self.dir),
                    name: self.name.clone(),
                })
            }
        };
        let previous = gens
            .iter()
            .rev()
            .find(|g| g.number < current)
            .map(|g| g.number)
            .ok_or_else(|| ProfileError::NoPrevious {
                profile: self.root.host_path(&self.path()),
                current,
            })?;
        Ok((current, previous))
    }
}

/// Everything `stagehand generations` shows about one generation.
#[derive(Debug, Clone)]
pub struct GenerationInfo {
    pub number: u64,
    pub created: i64,
    /// The toplevel with every link resolved inside the root.
    pub toplevel: PathBuf,
    /// The parsed `boot.json`, or why it could not be read.
    pub spec: Result<BootSpec, String>,
    pub kernel_version: Option<String>,
    pub current: bool,
    pub booted: bool,
}

/// Gather [`GenerationInfo`] for every generation of `profile`, oldest first.
pub fn list(root: &Root, profile: &Profile<'_>) -> Result<Vec<GenerationInfo>, ProfileError> {
    let gens = profile.generations()?;
    // A profile link that names no generation is reported by `current()`; for a listing it
    // just means no generation is marked current.
    let current = profile.current().unwrap_or(None);
    let booted = root.canonicalize(Path::new(BOOTED_SYSTEM)).ok();
    let mut out = Vec::new();
    for g in gens {
        let link = profile.link_path(g.number);
        let toplevel = root
            .canonicalize(&link)
            .unwrap_or_else(|_| g.target.clone());
        let spec = read_spec(root, &toplevel);
        let kernel_version = kernel_version(root, &toplevel).or_else(|| {
            spec.as_ref()
                .ok()
                .and_then(|s| version_from_label(&s.label))
        });
        out.push(GenerationInfo {
            number: g.number,
            created: g.created,
            booted: booted.as_deref() == Some(toplevel.as_path()),
            current: current == Some(g.number),
            toplevel,
            spec,
            kernel_version,
        });
    }
    Ok(out)
}

/// Read and parse `<toplevel>/boot.json`; the error is the message to show.
pub fn read_spec(root: &Root, toplevel: &Path) -> Result<BootSpec, String> {
    let path = toplevel.join("boot.json");
    let host = root.host_path(&path);
    let bytes = root.read(&path).map_err(|e| {
        format!(
            "cannot read {}: {e} (generations built before NixOS 23.05 have no boot.json)",
            host.display()
        )
    })?;
    spec::parse(&host, &bytes).map_err(|e| e.to_string())
}

/// The kernel's module directory name (`uname -r`) under `<toplevel>/kernel-modules`.
fn kernel_version(root: &Root, toplevel: &Path) -> Option<String> {
    let (fd, _, _) = root
        .dir(&toplevel.join("kernel-modules/lib/modules"), None)
        .ok()?;
    let entries = rootfs::list_dir(&fd).ok()?;
    entries
        .into_iter()
        .find(|(_, ty)| *ty == FileType::Directory)
        .map(|(n, _)| n.to_string_lossy().into_owned())
}

/// `6.1.0` from NixOS's label `NixOS 26.05 (Linux 6.1.0)`.
fn version_from_label(label: &str) -> Option<String> {
    let start = label.rfind("(Linux ")? + "(Linux ".len();
    let rest = label.get(start..)?;
    Some(rest.strip_suffix(')').unwrap_or(rest).to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A root with store paths `toplevels` (each with a boot.json) and no profile yet.
    pub(crate) fn store_root(toplevels: &[(&str, &str)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        for (top, label) in toplevels {
            let dir = t.path().join(top.trim_start_matches('/'));
            std::fs::create_dir_all(dir.join("kernel-modules/lib/modules/6.1.0")).expect("mkdir");
            std::fs::write(
                dir.join("boot.json"),
                spec::fixture::sample_json(top, label, &[]),
            )
            .expect("write");
        }
        t
    }

    #[test]
    fn set_creates_links_and_switches_atomically() {
        let t = store_root(&[("/nix/store/a-sys", "A"), ("/nix/store/b-sys", "B")]);
        let root = Root::open(t.path()).expect("root");
        let p = Profile::system(&root);
        assert_eq!(p.generations().expect("none").len(), 0);
        assert_eq!(p.current().expect("current"), None);

        assert_eq!(p.set(Path::new("/nix/store/a-sys")).expect("set"), 1);
        // The same toplevel again makes no new generation, as with nix-env --set.
        assert_eq!(p.set(Path::new("/nix/store/a-sys")).expect("set"), 1);
        assert_eq!(p.set(Path::new("/nix/store/b-sys")).expect("set"), 2);
        let prof = t.path().join("nix/var/nix/profiles");
        assert_eq!(
            std::fs::read_link(prof.join("system")).expect("link"),
            PathBuf::from("system-2-link")
        );
        assert_eq!(
            std::fs::read_link(prof.join("system-1-link")).expect("link"),
            PathBuf::from("/nix/store/a-sys")
        );
        assert_eq!(p.current().expect("current"), Some(2));
        // No temporary debris is left next to the links.
        let names: Vec<_> = std::fs::read_dir(&prof)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(
            names,
            ["system", "system-1-link", "system-2-link", "system.lock"]
        );
    }

    #[test]
    fn rollback_goes_to_the_newest_older_generation() {
        let t = store_root(&[("/nix/store/a-sys", "A"), ("/nix/store/c-sys", "C")]);
        let prof = t.path().join("nix/var/nix/profiles");
        std::fs::create_dir_all(&prof).expect("mkdir");
        // Gaps in the numbering (deleted generations) are normal.
        symlink("/nix/store/a-sys", prof.join("system-3-link")).expect("ln");
        symlink("/nix/store/c-sys", prof.join("system-7-link")).expect("ln");
        symlink("system-7-link", prof.join("system")).expect("ln");
        // Names that only look like generations are ignored.
        symlink("/nix/store/x", prof.join("system-x-link")).expect("ln");
        symlink("/nix/store/x", prof.join("other-9-link")).expect("ln");
        let root = Root::open(t.path()).expect("root");
        let p = Profile::system(&root);
        let nums: Vec<u64> = p
            .generations()
            .expect("gens")
            .iter()
            .map(|g| g.number)
            .collect();
        assert_eq!(nums, [3, 7]);
        assert_eq!(p.rollback().expect("rollback"), (7, 3));
        assert_eq!(p.current().expect("current"), Some(3));
        let e = p.rollback().expect_err("nothing older");
        assert!(e.to_string().contains("no older generation"), "{e}");
        // A new generation after a rollback still gets the next free number.
        assert_eq!(
            p.add_generation(Path::new("/nix/store/new")).expect("add"),
            8
        );
    }

    #[test]
    fn switching_to_a_missing_generation_is_refused() {
        let t = store_root(&[("/nix/store/a-sys", "A")]);
        let root = Root::open(t.path()).expect("root");
        let p = Profile::system(&root);
        p.set(Path::new("/nix/store/a-sys")).expect("set");
        let e = p.switch_to(5).expect_err("missing");
        assert!(e.to_string().contains("has no generation 5"), "{e}");
    }

    #[test]
    fn list_marks_current_and_booted() {
        let t = store_root(&[
            ("/nix/store/a-sys", "NixOS 26.05 (Linux 6.1.0)"),
            ("/nix/store/b-sys", "NixOS 26.05 (Linux 6.1.0)"),
        ]);
        let root = Root::open(t.path()).expect("root");
        let p = Profile::system(&root);
        p.set(Path::new("/nix/store/a-sys")).expect("set");
        p.set(Path::new("/nix/store/b-sys")).expect("set");
        std::fs::create_dir_all(t.path().join("run")).expect("mkdir");
        symlink("/nix/store/a-sys", t.path().join("run/booted-system")).expect("ln");
        let l = list(&root, &p).expect("list");
        assert_eq!(l.len(), 2);
        assert!(l[0].booted && !l[0].current);
        assert!(!l[1].booted && l[1].current);
        assert_eq!(l[1].toplevel, PathBuf::from("/nix/store/b-sys"));
        assert_eq!(l[1].kernel_version.as_deref(), Some("6.1.0"));
        assert_eq!(
            l[1].spec.as_ref().expect("spec").label,
            "NixOS 26.05 (Linux 6.1.0)"
        );
        assert_eq!(
            version_from_label("NixOS 26.05 (Linux 6.12.3)").as_deref(),
            Some("6.12.3")
        );
    }
}
