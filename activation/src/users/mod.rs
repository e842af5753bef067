//! `/etc/passwd`, `/etc/group`, `/etc/shadow`, `/etc/subuid`, `/etc/subgid` from the
//! declared users and groups, with the semantics of NixOS's `update-users-groups.pl`.
//!
//! * Ids: an existing account keeps its id (a declared change is refused with a warning).
//!   A new account without a declared id gets one allocated: groups and system users from
//!   999 down to 400, normal users from 1000 up to 29999. An id is never reused: ids in the
//!   spec, in the current files and every id ever recorded in `/var/lib/nixos/{uid,gid}-map`
//!   are skipped, except that a name that comes back revives its old id if it is free.
//!   Ids that another NSS source gives out (extrausers, LDAP, sssd) are skipped too, as
//!   NixOS skips what `getpwuid`/`getgrgid` resolve (see [`nss`]).
//! * Accounts not in the spec are removed when `mutableUsers` is off or when they were
//!   declared before (`/var/lib/nixos/declarative-{users,groups}`); otherwise kept. With
//!   `mutableUsers`, members added by hand to a declared group are kept.
//! * Passwords: a new account gets `hashedPassword`, else `initialPassword` (hashed once,
//!   SHA-512 crypt), else `initialHashedPassword`. `hashedPasswordFile` is read on every run
//!   and `password` applies on every run; both only change `/etc/shadow` for immutable users
//!   or new accounts, as in NixOS. Unlike NixOS, a plaintext `password` whose current hash
//!   still matches is not hashed again (so a re-run changes nothing).
//! * Subordinate ids: declared ranges, plus for `autoSubUidGidRange` a 65536-wide slot
//!   starting at 100000 + k·65536, remembered in `/var/lib/nixos/auto-subuid-map`.
//! * The whole set of files is committed together (see [`commit`]): after a crash the next
//!   run completes or discards it, so readers see all-old or all-new; it completes it only
//!   when the files are still what the commit was planned against, so that an edit made
//!   after the crash (`passwd`, `useradd`) is never reverted. The run holds the
//!   `/etc/.pwd.lock` record lock, like `lckpwdf(3)` in shadow-utils, so `passwd` or
//!   `useradd` cannot interleave.
//! * userborn's schema is accepted and treated as `mutableUsers = true`, except that a
//!   previously declared user that disappears is locked (`!*` in `/etc/shadow`) instead of
//!   removed, as userborn does.

mod accounts;
pub mod commit;
mod fasthash;
mod idmap;
mod ids;
mod lines;
pub mod nss;
mod plan;
pub mod spec;
mod subids;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::os::fd::OwnedFd;

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

pub use self::nss::{FilesOnly, IdDb, IdsElsewhere, OtherIds};
pub use self::plan::plan;
use crate::crypt;
pub use spec::{Flavor, GroupSpec, SpecError, UserSpec, UsersSpec};
use stagehand_common::rootfs::{self, Perms, Root};

pub const STATE_DIR: &str = "/var/lib/nixos";
pub const LINGER_DIR: &str = "/var/lib/systemd/linger";
pub const LOCK_FILE: &str = "/etc/.pwd.lock";
const NOLOGIN: &str = "/run/current-system/sw/bin/nologin";
/// `lckpwdf(3)` gives up after 15 seconds.
const LOCK_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything that stops the users step.
#[derive(Debug)]
pub enum UsersError {
    Spec(SpecError),
    /// A state file in `/var/lib/nixos` is not what we wrote.
    State {
        path: PathBuf,
        problem: String,
    },
    OutOfIds {
        what: &'static str,
        min: u32,
        max: u32,
    },
    Lock {
        path: PathBuf,
        error: io::Error,
    },
    LockTimeout {
        path: PathBuf,
    },
    Read {
        path: PathBuf,
        error: io::Error,
    },
    Write {
        path: PathBuf,
        error: io::Error,
    },
    Random(String),
}

impl fmt::Display for UsersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spec(e) => e.fmt(f),
            Self::State { path, problem } => write!(
                f,
                "{}: {problem}; restore it from a backup, or delete it to start afresh (ids \
                 it remembered may then be given to new accounts)",
                path.display()
            ),
            Self::OutOfIds { what, min, max } => write!(
                f,
                "no free {what} left in {min}..={max}; declare explicit ids or remove stale \
                 entries from /var/lib/nixos/uid-map and gid-map"
            ),
            Self::Lock { path, error } => write!(f, "{}: cannot lock: {error}", path.display()),
            Self::LockTimeout { path } => write!(
                f,
                "{}: still locked after {} s by another program (passwd, useradd, …); \
                 let it finish and activate again",
                path.display(),
                LOCK_TIMEOUT.as_secs()
            ),
            Self::Read { path, error } => write!(f, "{}: cannot read: {error}", path.display()),
            Self::Write { path, error } => write!(
                f,
                "{}: cannot write: {error}; the previous account files are still in place",
                path.display()
            ),
            Self::Random(e) => write!(
                f,
                "cannot get random bytes for a password salt: {e}; the kernel's random \
                 generator is not available"
            ),
        }
    }
}

impl std::error::Error for UsersError {}

impl From<SpecError> for UsersError {
    fn from(e: SpecError) -> Self {
        Self::Spec(e)
    }
}

// ---- observed state --------------------------------------------------------------------------

/// A file's bytes and, for `/etc/shadow`, its ownership and mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileState {
    pub contents: Option<Vec<u8>>,
    pub perms: Option<Perms>,
}

/// What the root holds now, as far as the users plan needs to know.
#[derive(Debug, Clone, Default)]
pub struct UsersState {
    /// Keyed by in-root path: the account files and the state files.
    pub files: BTreeMap<String, FileState>,
    /// `hashedPasswordFile` contents by path (`None`: missing).
    pub password_files: HashMap<String, Option<String>>,
    /// Home directories that exist: their owner and mode.
    pub homes: HashMap<String, Option<Perms>>,
    /// Users with a file in `/var/lib/systemd/linger`.
    pub lingering: HashSet<String>,
    /// Who we run as. Files are owned by root (and `/etc/shadow` by group shadow) only when
    /// that is root; otherwise (tests, image builds without privileges) by ourselves.
    pub euid: u32,
    pub egid: u32,
}

/// Files in the commit set, in the order NixOS writes them.
pub const SET: [&str; 10] = [
    "/var/lib/nixos/declarative-groups",
    "/var/lib/nixos/gid-map",
    "/etc/group",
    "/var/lib/nixos/declarative-users",
    "/var/lib/nixos/uid-map",
    "/etc/passwd",
    "/etc/shadow",
    "/etc/subuid",
    "/etc/subgid",
    "/var/lib/nixos/auto-subuid-map",
];

/// Directory descriptors by in-root path, resolved once per run: the account files share
/// two directories and the home directories mostly one (`/home`). A directory that cannot
/// be opened is remembered too, so that a missing `/home` costs one lookup, not one per
/// user.
struct DirCache<'r> {
    root: &'r Root,
    /// The mode missing directories are created with; `None` leaves them missing.
    create: Option<Mode>,
    open: HashMap<PathBuf, Result<OwnedFd, i32>>,
}

impl<'r> DirCache<'r> {
    fn new(root: &'r Root, create: Option<Mode>) -> Self {
        DirCache {
            root,
            create,
            open: HashMap::new(),
        }
    }

    /// The directory holding `path` and the final name (not looked up).
    fn parent(&mut self, path: &Path) -> io::Result<(&OwnedFd, std::ffi::OsString)> {
        let name = rootfs::final_name(path)?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        if !self.open.contains_key(dir) {
            let fd = match self.root.dir(dir, self.create) {
                Ok((fd, _, _)) => Ok(fd),
                Err(e) => Err(e.raw_os_error().unwrap_or(Errno::IO.raw_os_error())),
            };
            self.open.insert(dir.to_path_buf(), fd);
        }
        match self.open.get(dir) {
            Some(Ok(fd)) => Ok((fd, name)),
            Some(Err(errno)) => Err(io::Error::from_raw_os_error(*errno)),
            None => Err(io::Error::other("directory cache lost an entry")),
        }
    }

    /// The directories opened so far, with their in-root paths.
    fn opened(&self) -> impl Iterator<Item = (&Path, &OwnedFd)> {
        self.open
            .iter()
            .filter_map(|(p, fd)| fd.as_ref().ok().map(|fd| (p.as_path(), fd)))
    }

    /// Owner and mode of the directory `path` (following symlinks inside the root), `None`
    /// when there is none: one `stat` relative to the cached parent in the common case.
    fn dir_perms(&mut self, path: &Path) -> Option<Perms> {
        let of = |s: &rustix::fs::Stat| Perms {
            mode: s.st_mode & 0o7777,
            uid: s.st_uid,
            gid: s.st_gid,
        };
        match self.parent(path) {
            Ok((dir, name)) => {
                match rustix::fs::statat(
                    dir,
                    name.as_os_str(),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                ) {
                    Ok(s)
                        if rustix::fs::FileType::from_raw_mode(s.st_mode)
                            == rustix::fs::FileType::Directory =>
                    {
                        return Some(of(&s));
                    }
                    Err(Errno::NOENT) => return None,
                    // A symlink (followed inside the root below), or something odd.
                    _ => {}
                }
            }
            // No parent directory, so no home directory in it either.
            Err(e)
                if [Errno::NOENT, Errno::NOTDIR]
                    .iter()
                    .any(|n| e.raw_os_error() == Some(n.raw_os_error())) =>
            {
                return None;
            }
            Err(_) => {}
        }
        let (fd, _, _) = self.root.dir(path, None).ok()?;
        rustix::fs::fstat(&fd).ok().map(|s| of(&s))
    }
}

/// Read the regular file `name` in `dir` without following a final symlink, with its owner
/// and mode (`None` when it is not a regular file): an open, a `fstat`, reads until the end,
/// a close — the `fstat` sizes the buffer and stands in for a separate `lstat`.
fn read_with_perms(dir: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<(Vec<u8>, Option<Perms>)> {
    // O_NONBLOCK: a FIFO planted as an account file must not hang the open.
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    if kind != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "is {}, not a regular file; move it away",
                rootfs::describe_type(kind)
            ),
        ));
    }
    let perms = Some(Perms {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
    });
    let buf = rootfs::read_fd(&fd, usize::try_from(st.st_size).unwrap_or(0))?;
    Ok((buf, perms))
}

/// Read what the plan needs from the root.
pub fn observe(root: &Root, spec: &UsersSpec) -> Result<UsersState, UsersError> {
    observe_in(&mut DirCache::new(root, None), spec)
}

fn observe_in(dirs: &mut DirCache, spec: &UsersSpec) -> Result<UsersState, UsersError> {
    let root = dirs.root;
    let mut st = UsersState {
        euid: rustix::process::geteuid().as_raw(),
        egid: rustix::process::getegid().as_raw(),
        ..UsersState::default()
    };
    for p in SET {
        let path = Path::new(p);
        let read_err = |error| UsersError::Read {
            path: root.host_path(path),
            error,
        };
        // The account files are read without following a final symlink: a symlink there is
        // treated as absent and replaced by a real file.
        let (contents, perms) = match dirs.parent(path) {
            Ok((dir, name)) => match read_with_perms(dir, &name) {
                Ok((b, perms)) => (Some(b), perms),
                Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None),
                Err(e) if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => (None, None),
                Err(e) => return Err(read_err(e)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None),
            Err(e) => return Err(read_err(e)),
        };
        // Only the ownership and mode of /etc/shadow matter to the plan.
        let perms = if p == "/etc/shadow" { perms } else { None };
        st.files.insert(p.to_owned(), FileState { contents, perms });
    }
    for u in &spec.users {
        if let Some(f) = &u.hashed_password_file {
            let text = root
                .read_opt(Path::new(f))
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            st.password_files.insert(f.clone(), text);
        }
        if u.create_home {
            let perms = dirs.dir_perms(Path::new(&u.home));
            st.homes.insert(u.home.clone(), perms);
        }
    }
    if let Ok((fd, _, _)) = root.dir(Path::new(LINGER_DIR), None) {
        if let Ok(list) = rootfs::list_dir(&fd) {
            st.lingering = list
                .into_iter()
                .map(|(n, _)| n.to_string_lossy().into_owned())
                .collect();
        }
    }
    Ok(st)
}

// ---- the plan --------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeAction {
    pub path: String,
    pub create: bool,
    pub perms: Perms,
}

#[derive(Debug, Clone, Default)]
pub struct UsersPlan {
    /// Files whose contents change: in-root path, contents, ownership and mode.
    pub writes: Vec<(String, Vec<u8>, Perms)>,
    pub homes: Vec<HomeAction>,
    /// `(user, enable)` for `/var/lib/systemd/linger/<user>`.
    pub linger: Vec<(String, bool)>,
    /// What NixOS prints ("reviving …", "removing user …", "would …" in dry mode).
    pub messages: Vec<String>,
    pub warnings: Vec<String>,
}

impl UsersPlan {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.homes.is_empty() && self.linger.is_empty()
    }
}

// ---- applying --------------------------------------------------------------------------------

/// The `/etc/.pwd.lock` record lock, held while the value lives.
pub struct PwdLock {
    _fd: std::os::fd::OwnedFd,
}

/// Take the lock `lckpwdf(3)` takes: a write lock on the whole of `/etc/.pwd.lock`, waiting
/// up to 15 seconds.
pub fn lock(root: &Root) -> Result<PwdLock, UsersError> {
    let path = Path::new(LOCK_FILE);
    let err = |error| UsersError::Lock {
        path: root.host_path(path),
        error,
    };
    let (dir, name) = root
        .parent(path, Some(Mode::from_raw_mode(0o755)))
        .map_err(err)?;
    let fd = rustix::fs::openat(
        &dir,
        name.as_os_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| err(e.into()))?;
    let deadline = Instant::now() + LOCK_TIMEOUT;
    loop {
        match rustix::fs::fcntl_lock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(PwdLock { _fd: fd }),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::ACCESS) => {
                if Instant::now() >= deadline {
                    return Err(UsersError::LockTimeout {
                        path: root.host_path(path),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(err(e.into())),
        }
    }
}

/// What the users step did.
#[derive(Debug, Default)]
pub struct UsersOutcome {
    pub changed: bool,
    pub messages: Vec<String>,
    pub warnings: Vec<String>,
    /// Non-fatal failures (home directories, linger files).
    pub errors: Vec<String>,
}

/// The whole users step: lock, finish an interrupted commit, observe, plan, apply. New ids
/// are checked against the root's other NSS sources ([`nss`]).
pub fn update_users(
    root: &Root,
    spec: &UsersSpec,
    dry_run: bool,
) -> Result<UsersOutcome, UsersError> {
    update_users_with(root, spec, dry_run, &mut OtherIds::for_root(root))
}

/// [`update_users`] with the other NSS sources given.
pub fn update_users_with(
    root: &Root,
    spec: &UsersSpec,
    dry_run: bool,
    others: &mut OtherIds<'_>,
) -> Result<UsersOutcome, UsersError> {
    let _lock = if dry_run { None } else { Some(lock(root)?) };
    // One set of directory descriptors for recovery and observation: /etc and
    // /var/lib/nixos are opened once, not once per file.
    let mut dirs = DirCache::new(root, None);
    let recovered = if dry_run {
        Vec::new()
    } else {
        commit::recover_in(&mut dirs)?
    };
    let state = observe_in(&mut dirs, spec)?;
    drop(dirs);
    let mut salt = || crypt::random_salt().map_err(|e| UsersError::Random(e.to_string()));
    let plan = plan(spec, &state, dry_run, &mut salt, others)?;
    let mut out = UsersOutcome {
        changed: !plan.is_empty(),
        messages: others
            .skipped
            .drain(..)
            .chain(plan.messages.iter().cloned())
            .collect(),
        warnings: recovered
            .into_iter()
            .chain(others.warnings.drain(..))
            .chain(plan.warnings.iter().cloned())
            .collect(),
        errors: Vec::new(),
    };
    for m in &out.messages {
        log::info!("{m}");
    }
    for w in &out.warnings {
        log::warn!("{w}");
    }
    if dry_run {
        for (path, _, _) in &plan.writes {
            log::info!("would rewrite {path}");
        }
        for h in &plan.homes {
            log::info!("would set up home directory {}", h.path);
        }
        return Ok(out);
    }
    commit::commit(root, &state.files, &plan.writes, commit::StopAt::Never)?;
    let mut home_dirs = DirCache::new(root, Some(Mode::from_raw_mode(0o755)));
    for h in &plan.homes {
        if let Err(e) = apply_home(&mut home_dirs, h) {
            out.errors.push(format!(
                "home directory {}: {e}; create it by hand with owner {}:{} and mode {:o}",
                root.host_path(Path::new(&h.path)).display(),
                h.perms.uid,
                h.perms.gid,
                h.perms.mode
            ));
        }
    }
    for (user, enable) in &plan.linger {
        if let Err(e) = apply_linger(root, user, *enable) {
            out.errors.push(format!(
                "{}/{user}: cannot {} lingering: {e}",
                root.host_path(Path::new(LINGER_DIR)).display(),
                if *enable { "enable" } else { "disable" }
            ));
        }
    }
    Ok(out)
}

fn apply_home(dirs: &mut DirCache, h: &HomeAction) -> io::Result<()> {
    let path = Path::new(&h.path);
    let fd = match open_home(dirs, path, h.create) {
        Some(fd) => fd,
        // A symlink to follow inside the root, or a parent that could not be made: the
        // general path resolves it (and reports what is wrong).
        None => dirs.root.dir(path, Some(Mode::from_raw_mode(0o755)))?.0,
    };
    let st = rustix::fs::fstat(&fd)?;
    if st.st_uid != h.perms.uid || st.st_gid != h.perms.gid {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(h.perms.uid)),
            Some(rustix::fs::Gid::from_raw(h.perms.gid)),
        )?;
    }
    if st.st_mode & 0o7777 != h.perms.mode {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(h.perms.mode))?;
    }
    Ok(())
}

/// The home directory `path` as a plain directory in its (cached) parent, made first when
/// `create`: `mkdirat` and `openat` without walking the path from the root again. A new
/// directory starts 0700, so that nobody else can enter it before its owner and mode are
/// set. `None` when it is not a plain directory there.
fn open_home(dirs: &mut DirCache, path: &Path, create: bool) -> Option<OwnedFd> {
    let (parent, name) = dirs.parent(path).ok()?;
    if create {
        // EEXIST: made meanwhile, or a symlink (the open below refuses it).
        let _ = rustix::fs::mkdirat(parent, name.as_os_str(), Mode::from_raw_mode(0o700));
    }
    rustix::fs::openat(
        parent,
        name.as_os_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// Without logind to ask (we may run before it, or under a root prefix), lingering is the
/// presence of `/var/lib/systemd/linger/<user>`, which logind reads when it starts.
fn apply_linger(root: &Root, user: &str, enable: bool) -> io::Result<()> {
    let mode = enable.then(|| Mode::from_raw_mode(0o755));
    let (dir, _, _) = root.dir(Path::new(LINGER_DIR), mode)?;
    if enable {
        rootfs::atomic_write(&dir, user.as_ref(), b"", rootfs::own_perms(0o644))
    } else {
        match rootfs::unlink_at(&dir, user.as_ref()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}
