//! `/etc/passwd`, `/etc/group`, `/etc/shadow`, `/etc/subuid`, `/etc/subgid` from the
//! declared users and groups, with the semantics of NixOS's `update-users-groups.pl`.
//!
//! * Ids: an existing account keeps its id (a declared change is refused with a warning).
//!   A new account without a declared id gets one allocated: groups and system users from
//!   999 down to 400, normal users from 1000 up to 29999. An id is never reused: ids in the
//!   spec, in the current files and every id ever recorded in `/var/lib/nixos/{uid,gid}-map`
//!   are skipped, except that a name that comes back revives its old id if it is free.
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
//!   run completes or discards it, so readers see all-old or all-new. The run holds the
//!   `/etc/.pwd.lock` record lock, like `lckpwdf(3)` in shadow-utils, so `passwd` or
//!   `useradd` cannot interleave.
//! * userborn's schema is accepted and treated as `mutableUsers = true`, except that a
//!   previously declared user that disappears is locked (`!*` in `/etc/shadow`) instead of
//!   removed, as userborn does.

pub mod commit;
pub mod spec;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::crypt;
use crate::rootfs::{self, Node, Perms, Root};
pub use spec::{Flavor, GroupSpec, SpecError, UserSpec, UsersSpec};

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

// ---- the account files ---------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupLine {
    name: String,
    password: String,
    gid: Option<u32>,
    /// The id field's text when it is not a number, so that a line we do not manage is
    /// written back as it was rather than with the field emptied.
    unparsed_id: String,
    members: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdLine {
    name: String,
    password: String,
    uid: Option<u32>,
    /// The id field's text when it is not a number, so that a line we do not manage is
    /// written back as it was rather than with the field emptied.
    unparsed_id: String,
    gid: String,
    description: String,
    home: String,
    shell: String,
}

/// Split a line into exactly `n` fields; missing ones are empty, extra ones dropped (as
/// Perl's list assignment from `split` does).
fn fields(line: &str, n: usize) -> Vec<String> {
    let mut v: Vec<String> = line.split(':').take(n).map(str::to_owned).collect();
    v.resize(n, String::new());
    v
}

fn parse_group(text: &str) -> Vec<GroupLine> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f = fields(l, 4);
            GroupLine {
                gid: f[2].parse().ok(),
                unparsed_id: f[2].clone(),
                name: f[0].clone(),
                password: f[1].clone(),
                members: f[3].clone(),
            }
        })
        .collect()
}

fn parse_passwd(text: &str) -> Vec<PasswdLine> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f = fields(l, 7);
            PasswdLine {
                uid: f[2].parse().ok(),
                unparsed_id: f[2].clone(),
                name: f[0].clone(),
                password: f[1].clone(),
                gid: f[3].clone(),
                description: f[4].clone(),
                home: f[5].clone(),
                shell: f[6].clone(),
            }
        })
        .collect()
}

fn id_text(id: Option<u32>) -> String {
    id.map(|i| i.to_string()).unwrap_or_default()
}

/// An id field as written back: the number, or the text it had when it was not one.
fn id_field(id: Option<u32>, unparsed: &str) -> String {
    id.map_or_else(|| unparsed.to_owned(), |i| i.to_string())
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

fn file_perms(root: &Root, path: &Path) -> io::Result<Option<Perms>> {
    Ok(match root.lstat(path)? {
        Some(Node::File { mode, uid, gid, .. }) => Some(Perms { mode, uid, gid }),
        _ => None,
    })
}

/// Directory descriptors by in-root path, resolved once per run: the account files share
/// two directories and the home directories mostly one (`/home`).
struct DirCache<'r> {
    root: &'r Root,
    open: HashMap<PathBuf, std::os::fd::OwnedFd>,
}

impl<'r> DirCache<'r> {
    fn new(root: &'r Root) -> Self {
        DirCache {
            root,
            open: HashMap::new(),
        }
    }

    /// The directory holding `path` and the final name (not looked up).
    fn parent(&mut self, path: &Path) -> io::Result<(&std::os::fd::OwnedFd, std::ffi::OsString)> {
        let name = rootfs::final_name(path)?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        if !self.open.contains_key(dir) {
            let (fd, _, _) = self.root.dir(dir, None)?;
            self.open.insert(dir.to_path_buf(), fd);
        }
        let fd = self
            .open
            .get(dir)
            .ok_or_else(|| io::Error::other("directory cache lost an entry"))?;
        Ok((fd, name))
    }

    /// Owner and mode of the directory `path` (following symlinks inside the root), `None`
    /// when there is none: one `stat` relative to the cached parent in the common case.
    fn dir_perms(&mut self, path: &Path) -> Option<Perms> {
        let of = |s: &rustix::fs::Stat| Perms {
            mode: s.st_mode & 0o7777,
            uid: s.st_uid,
            gid: s.st_gid,
        };
        if let Ok((dir, name)) = self.parent(path) {
            match rustix::fs::statat(dir, name.as_os_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
                Ok(s)
                    if rustix::fs::FileType::from_raw_mode(s.st_mode)
                        == rustix::fs::FileType::Directory =>
                {
                    return Some(of(&s));
                }
                Err(rustix::io::Errno::NOENT) => return None,
                // A symlink (followed inside the root below), or something odd.
                _ => {}
            }
        }
        let (fd, _, _) = self.root.dir(path, None).ok()?;
        rustix::fs::fstat(&fd).ok().map(|s| of(&s))
    }
}

/// Read what the plan needs from the root.
pub fn observe(root: &Root, spec: &UsersSpec) -> Result<UsersState, UsersError> {
    let mut st = UsersState {
        euid: rustix::process::geteuid().as_raw(),
        egid: rustix::process::getegid().as_raw(),
        ..UsersState::default()
    };
    let mut dirs = DirCache::new(root);
    for p in SET {
        let path = Path::new(p);
        let read_err = |error| UsersError::Read {
            path: root.host_path(path),
            error,
        };
        // The account files are read without following a final symlink: a symlink there is
        // treated as absent and replaced by a real file.
        let contents = match dirs.parent(path) {
            Ok((dir, name)) => match rootfs::read_at(dir, &name) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => None,
                Err(e) => return Err(read_err(e)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(read_err(e)),
        };
        let perms = if p == "/etc/shadow" {
            file_perms(root, path).map_err(read_err)?
        } else {
            None
        };
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

/// Id allocation state, as in `allocId`.
struct Ids {
    used: HashSet<u32>,
    prev: HashSet<u32>,
}

impl Ids {
    fn alloc(
        &mut self,
        min: u32,
        max: u32,
        up: bool,
        what: &'static str,
    ) -> Result<u32, UsersError> {
        let mut id = if up { min } else { max };
        while (min..=max).contains(&id) {
            let free = !self.used.contains(&id) && !self.prev.contains(&id);
            self.used.insert(id);
            if free {
                return Ok(id);
            }
            id = if up { id + 1 } else { id - 1 };
        }
        Err(UsersError::OutOfIds { what, min, max })
    }
}

fn parse_map(state: &UsersState, path: &str) -> Result<BTreeMap<String, u32>, UsersError> {
    let Some(bytes) = state.files.get(path).and_then(|f| f.contents.as_ref()) else {
        return Ok(BTreeMap::new());
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(BTreeMap::new());
    }
    let bad = |problem: String| UsersError::State {
        path: PathBuf::from(path),
        problem,
    };
    let value: BTreeMap<String, MapId> = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("not a JSON object of name → id: {e}")))?;
    value
        .into_iter()
        .map(|(name, id)| match id {
            MapId::Id(id) => Ok((name, id)),
            MapId::Bad(v) => Err(bad(format!("the id of {name:?} is {v}, not a number"))),
        })
        .collect()
}

/// One value of a `/var/lib/nixos` id map, decoded straight from the JSON (no intermediate
/// `serde_json::Value` per entry: a thousand-user map is read on every run). Perl's JSON
/// module writes an id as a string when the script once used it as one, so both forms occur
/// in the wild.
enum MapId {
    Id(u32),
    /// Anything else, as text for the message.
    Bad(String),
}

impl<'de> serde::Deserialize<'de> for MapId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MapId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a uid or gid")
            }
            fn visit_u64<E>(self, n: u64) -> Result<MapId, E> {
                Ok(u32::try_from(n).map_or_else(|_| MapId::Bad(n.to_string()), MapId::Id))
            }
            fn visit_i64<E>(self, n: i64) -> Result<MapId, E> {
                Ok(u32::try_from(n).map_or_else(|_| MapId::Bad(n.to_string()), MapId::Id))
            }
            fn visit_f64<E>(self, n: f64) -> Result<MapId, E> {
                Ok(MapId::Bad(n.to_string()))
            }
            fn visit_str<E>(self, s: &str) -> Result<MapId, E> {
                Ok(s.parse()
                    .map_or_else(|_| MapId::Bad(format!("{s:?}")), MapId::Id))
            }
            fn visit_bool<E>(self, b: bool) -> Result<MapId, E> {
                Ok(MapId::Bad(b.to_string()))
            }
            fn visit_unit<E>(self) -> Result<MapId, E> {
                Ok(MapId::Bad("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

fn text_of(state: &UsersState, path: &str) -> String {
    state
        .files
        .get(path)
        .and_then(|f| f.contents.as_ref())
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

fn to_json_map(m: &BTreeMap<String, u32>) -> String {
    // BTreeMap serialises with sorted keys: Perl's `canonical => 1`.
    serde_json::to_string(m).unwrap_or_else(|_| "{}".to_owned())
}

/// Decide the new account files. Pure apart from `salt`, which supplies password salts.
pub fn plan(
    spec: &UsersSpec,
    state: &UsersState,
    dry: bool,
    salt: &mut dyn FnMut() -> Result<String, UsersError>,
) -> Result<UsersPlan, UsersError> {
    let mut p = UsersPlan::default();
    let say = |p: &mut UsersPlan, now: &str, would: &str, what: String| {
        let verb = if dry { would } else { now };
        p.messages.push(format!("{verb} {what}"));
    };
    let mutable = spec.mutable_users;

    let mut uid_map = parse_map(state, "/var/lib/nixos/uid-map")?;
    let mut gid_map = parse_map(state, "/var/lib/nixos/gid-map")?;
    let mut sub_map = parse_map(state, "/var/lib/nixos/auto-subuid-map")?;
    let decl_groups: HashSet<String> = text_of(state, "/var/lib/nixos/declarative-groups")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let decl_users: HashSet<String> = text_of(state, "/var/lib/nixos/declarative-users")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();

    let mut gids = Ids {
        used: spec.groups.iter().filter_map(|g| g.gid).collect(),
        prev: gid_map.values().copied().collect(),
    };
    let mut uids = Ids {
        used: spec.users.iter().filter_map(|u| u.uid).collect(),
        prev: uid_map.values().copied().collect(),
    };

    let groups_cur = parse_group(&text_of(state, "/etc/group"));
    gids.used.extend(groups_cur.iter().filter_map(|g| g.gid));
    let groups_cur: HashMap<String, GroupLine> = groups_cur
        .into_iter()
        .map(|g| (g.name.clone(), g))
        .collect();
    let users_cur = parse_passwd(&text_of(state, "/etc/passwd"));
    uids.used.extend(users_cur.iter().filter_map(|u| u.uid));
    let users_cur: HashMap<String, PasswdLine> =
        users_cur.into_iter().map(|u| (u.name.clone(), u)).collect();
    let shadow_cur: Vec<Vec<String>> = text_of(state, "/etc/shadow")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| fields(l, 9))
        .collect();
    let shadow_hash: HashMap<&str, &str> = shadow_cur
        .iter()
        .map(|f| (f[0].as_str(), f[1].as_str()))
        .collect();

    // Groups.
    let mut groups_out: BTreeMap<String, GroupLine> = BTreeMap::new();
    for g in &spec.groups {
        let mut members: BTreeSet<String> = g.members.iter().cloned().collect();
        let line = match groups_cur.get(&g.name) {
            Some(existing) => {
                let mut gid = g.gid.or(existing.gid);
                if gid != existing.gid && existing.gid.is_some() {
                    p.warnings.push(format!(
                        "{} GID change of group ‘{}’ ({} -> {}) in /etc/group",
                        if dry {
                            "would not apply"
                        } else {
                            "not applying"
                        },
                        g.name,
                        id_text(existing.gid),
                        id_text(gid)
                    ));
                    gid = existing.gid;
                }
                if gid.is_none() {
                    gid = Some(alloc_gid(&mut p, &mut gids, &gid_map, &g.name, dry)?);
                }
                if mutable {
                    for m in existing.members.split(',').filter(|m| !m.is_empty()) {
                        if !decl_users.contains(m) {
                            members.insert(m.to_owned());
                        }
                    }
                }
                GroupLine {
                    name: g.name.clone(),
                    password: existing.password.clone(),
                    gid,
                    unparsed_id: String::new(),
                    members: String::new(),
                }
            }
            None => {
                let gid = match g.gid {
                    Some(gid) => gid,
                    None => alloc_gid(&mut p, &mut gids, &gid_map, &g.name, dry)?,
                };
                GroupLine {
                    name: g.name.clone(),
                    password: "x".to_owned(),
                    gid: Some(gid),
                    unparsed_id: String::new(),
                    members: String::new(),
                }
            }
        };
        let members: Vec<String> = members.into_iter().collect();
        if let Some(gid) = line.gid {
            gid_map.insert(g.name.clone(), gid);
        }
        groups_out.insert(
            g.name.clone(),
            GroupLine {
                members: members.join(","),
                ..line
            },
        );
    }
    let decl_groups_new: Vec<&str> = groups_out.keys().map(String::as_str).collect();
    let decl_groups_text = decl_groups_new.join(" ");
    let mut cur_names: Vec<&String> = groups_cur.keys().collect();
    cur_names.sort();
    for name in cur_names {
        if groups_out.contains_key(name) {
            continue;
        }
        if !mutable || decl_groups.contains(name) {
            say(
                &mut p,
                "removing group",
                "would remove group",
                format!("‘{name}’"),
            );
        } else if let Some(g) = groups_cur.get(name) {
            groups_out.insert(name.clone(), g.clone());
        }
    }
    let mut glines: Vec<&GroupLine> = groups_out.values().collect();
    glines.sort_by(|a, b| {
        a.gid
            .unwrap_or(0)
            .cmp(&b.gid.unwrap_or(0))
            .then(a.name.cmp(&b.name))
    });
    let group_text: String = glines
        .iter()
        .map(|g| {
            format!(
                "{}:{}:{}:{}\n",
                g.name,
                g.password,
                id_field(g.gid, &g.unparsed_id),
                g.members
            )
        })
        .collect();

    // Users.
    struct Out {
        line: PasswdLine,
        hashed: Option<String>,
        expires: Option<i64>,
        spec: Option<usize>,
    }
    let mut users_out: BTreeMap<String, Out> = BTreeMap::new();
    for (i, u) in spec.users.iter().enumerate() {
        let gid: u32 = if !u.group.is_empty() && u.group.bytes().all(|b| b.is_ascii_digit()) {
            u.group.parse().unwrap_or(65534)
        } else if let Some(gid) = groups_out.get(&u.group).and_then(|g| g.gid) {
            gid
        } else {
            p.warnings.push(format!(
                "users.{0}.group: user ‘{0}’ has unknown group ‘{1}’, so it gets gid 65534 \
                 (nogroup); declare users.groups.{1} or name an existing group",
                u.name, u.group
            ));
            65534
        };
        let existing = users_cur.get(&u.name);
        let mut hashed = u.hashed_password.clone();
        let uid = match existing {
            Some(ex) => {
                let mut uid = u.uid.or(ex.uid);
                if uid != ex.uid && ex.uid.is_some() {
                    p.warnings.push(format!(
                        "{} UID change of user ‘{}’ ({} -> {}) in /etc/passwd",
                        if dry {
                            "would not apply"
                        } else {
                            "not applying"
                        },
                        u.name,
                        id_text(ex.uid),
                        id_text(uid)
                    ));
                    uid = ex.uid;
                }
                match uid {
                    Some(uid) => uid,
                    None => alloc_uid(&mut p, &mut uids, &uid_map, u, dry)?,
                }
            }
            None => {
                let uid = match u.uid {
                    Some(uid) => uid,
                    None => alloc_uid(&mut p, &mut uids, &uid_map, u, dry)?,
                };
                if hashed.is_none() {
                    if let Some(pw) = &u.initial_password {
                        hashed = Some(hash_with(pw, salt)?);
                    } else if let Some(h) = &u.initial_hashed_password {
                        hashed = Some(h.clone());
                    }
                }
                uid
            }
        };
        if existing.is_some() && mutable && u.linger.is_some() {
            p.warnings.push(format!(
                "{} lingering setting of mutable user '{}'",
                if dry {
                    "would not apply"
                } else {
                    "not applying"
                },
                u.name
            ));
        }
        if u.create_home {
            let want = Perms {
                mode: u.home_mode,
                uid,
                gid,
            };
            match state.homes.get(&u.home) {
                Some(Some(have)) if *have == want => {}
                Some(Some(_)) => p.homes.push(HomeAction {
                    path: u.home.clone(),
                    create: false,
                    perms: want,
                }),
                _ => p.homes.push(HomeAction {
                    path: u.home.clone(),
                    create: true,
                    perms: want,
                }),
            }
        }
        if let Some(f) = &u.hashed_password_file {
            match state.password_files.get(f).cloned().flatten() {
                Some(text) => {
                    let text = text.strip_suffix('\n').unwrap_or(&text).to_owned();
                    if text.contains(':') || text.contains('\n') {
                        p.warnings.push(format!(
                            "password file ‘{f}’ of user ‘{}’ holds ':' or several lines, \
                             ignored; it must hold one crypt(3) hash",
                            u.name
                        ));
                    } else {
                        hashed = Some(text);
                    }
                }
                None => p
                    .warnings
                    .push(format!("password file ‘{f}’ does not exist")),
            }
        } else if let Some(pw) = &u.password {
            // Keep the current hash when it still matches: re-hashing would change
            // /etc/shadow on every run for nothing.
            hashed = match shadow_hash.get(u.name.as_str()) {
                Some(h) if crypt::verify(pw, h) => Some((*h).to_owned()),
                _ => Some(hash_with(pw, salt)?),
            };
        }
        let shell = match (&u.shell, existing) {
            (Some(s), _) => s.clone(),
            (None, Some(ex)) => ex.shell.clone(),
            (None, None) => {
                p.warnings.push(format!(
                    "no declarative or previous shell for ‘{}’, setting shell to nologin",
                    u.name
                ));
                NOLOGIN.to_owned()
            }
        };
        uid_map.insert(u.name.clone(), uid);
        users_out.insert(
            u.name.clone(),
            Out {
                line: PasswdLine {
                    name: u.name.clone(),
                    password: existing.map_or_else(|| "x".to_owned(), |e| e.password.clone()),
                    uid: Some(uid),
                    unparsed_id: String::new(),
                    gid: gid.to_string(),
                    description: u.description.clone(),
                    home: u.home.clone(),
                    shell,
                },
                hashed,
                expires: u.expires,
                spec: Some(i),
            },
        );
    }
    let decl_users_text = users_out.keys().cloned().collect::<Vec<_>>().join(" ");
    let mut locked: HashSet<String> = HashSet::new();
    let mut cur_names: Vec<&String> = users_cur.keys().collect();
    cur_names.sort();
    for name in cur_names {
        if users_out.contains_key(name) {
            continue;
        }
        let Some(cur) = users_cur.get(name) else {
            continue;
        };
        let was_declared = decl_users.contains(name);
        if spec.flavor == Flavor::Userborn && was_declared {
            // userborn never deletes an account; it locks it.
            say(
                &mut p,
                "locking user",
                "would lock user",
                format!("‘{name}’"),
            );
            locked.insert(name.clone());
        } else if !mutable || was_declared {
            say(
                &mut p,
                "removing user",
                "would remove user",
                format!("‘{name}’"),
            );
            if state.lingering.contains(name) {
                p.linger.push((name.clone(), false));
            }
            continue;
        }
        users_out.insert(
            name.clone(),
            Out {
                line: cur.clone(),
                hashed: None,
                expires: None,
                spec: None,
            },
        );
    }
    let mut ulines: Vec<&Out> = users_out.values().collect();
    ulines.sort_by(|a, b| {
        a.line
            .uid
            .unwrap_or(0)
            .cmp(&b.line.uid.unwrap_or(0))
            .then(a.line.name.cmp(&b.line.name))
    });
    let passwd_text: String = ulines
        .iter()
        .map(|o| {
            let l = &o.line;
            format!(
                "{}:{}:{}:{}:{}:{}:{}\n",
                l.name,
                l.password,
                id_field(l.uid, &l.unparsed_id),
                l.gid,
                l.description,
                l.home,
                l.shell
            )
        })
        .collect();

    // Shadow: existing lines keep their order and fields; new accounts are appended.
    let mut shadow_text = String::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for f in &shadow_cur {
        let Some(o) = users_out.get(&f[0]) else {
            continue;
        };
        if !seen.insert(f[0].as_str()) {
            continue;
        }
        let mut f = f.clone();
        if !mutable {
            f[1] = o.hashed.clone().unwrap_or_else(|| "!".to_owned());
        }
        if locked.contains(&f[0]) && !f[1].starts_with('!') {
            f[1] = format!("!*{}", f[1]);
        }
        if let Some(days) = o.expires {
            f[7] = days.to_string();
        }
        shadow_text.push_str(&f.join(":"));
        shadow_text.push('\n');
    }
    for o in &ulines {
        if seen.contains(o.line.name.as_str()) {
            continue;
        }
        let hash = o.hashed.clone().unwrap_or_else(|| "!".to_owned());
        let expires = o.expires.map(|d| d.to_string()).unwrap_or_default();
        shadow_text.push_str(&format!("{}:{hash}:1:::::{expires}:\n", o.line.name));
    }

    // Subordinate ids.
    let mut sub_uids: Vec<String> = Vec::new();
    let mut sub_gids: Vec<String> = Vec::new();
    let prev_starts: HashSet<u32> = sub_map.values().copied().collect();
    let mut starts_used: HashSet<u32> = HashSet::new();
    for o in &ulines {
        let Some(i) = o.spec else { continue };
        let Some(u) = spec.users.get(i) else { continue };
        for (start, count) in &u.sub_uids {
            sub_uids.push(format!("{}:{start}:{count}", u.name));
        }
        for (start, count) in &u.sub_gids {
            sub_gids.push(format!("{}:{start}:{count}", u.name));
        }
        if u.auto_subid {
            let start = match sub_map.get(&u.name) {
                Some(s) if !starts_used.contains(s) => *s,
                _ => {
                    let mut k: u64 = 0;
                    loop {
                        let s = 100_000u64 + k * 65_536;
                        let Ok(s) = u32::try_from(s) else {
                            return Err(UsersError::OutOfIds {
                                what: "subordinate id ranges",
                                min: 100_000,
                                max: u32::MAX,
                            });
                        };
                        if !starts_used.contains(&s) && !prev_starts.contains(&s) {
                            break s;
                        }
                        k += 1;
                    }
                }
            };
            starts_used.insert(start);
            sub_map.insert(u.name.clone(), start);
            let v = format!("{}:{start}:65536", u.name);
            sub_uids.push(v.clone());
            sub_gids.push(v);
        }
    }

    // Linger, for declared users.
    for o in &ulines {
        let Some(u) = o.spec.and_then(|i| spec.users.get(i)) else {
            continue;
        };
        let Some(want) = u.linger else { continue };
        if mutable && users_cur.contains_key(&u.name) {
            continue;
        }
        if want != state.lingering.contains(&u.name) {
            say(
                &mut p,
                if want { "enabling" } else { "disabling" },
                if want {
                    "would enable"
                } else {
                    "would disable"
                },
                format!("lingering for user(s) '{}'", u.name),
            );
            p.linger.push((u.name.clone(), want));
        }
    }

    let (uid, gid, shadow_gid) = if state.euid == 0 {
        (
            0,
            0,
            groups_out.get("shadow").and_then(|g| g.gid).unwrap_or(0),
        )
    } else {
        (state.euid, state.egid, state.egid)
    };
    let plain = Perms {
        mode: 0o644,
        uid,
        gid,
    };
    let shadow_perms = Perms {
        mode: 0o640,
        uid,
        gid: shadow_gid,
    };
    let sub_map_text = format!("{}\n", to_json_map(&sub_map));
    let new_files: [(&str, String, Perms); 10] = [
        (SET[0], decl_groups_text, plain),
        (SET[1], to_json_map(&gid_map), plain),
        (SET[2], group_text, plain),
        (SET[3], decl_users_text, plain),
        (SET[4], to_json_map(&uid_map), plain),
        (SET[5], passwd_text, plain),
        (SET[6], shadow_text, shadow_perms),
        (SET[7], sub_uids.join("\n") + "\n", plain),
        (SET[8], sub_gids.join("\n") + "\n", plain),
        (SET[9], sub_map_text, plain),
    ];
    for (path, text, perms) in new_files {
        let cur = state.files.get(path);
        let same_bytes = cur.and_then(|f| f.contents.as_deref()) == Some(text.as_bytes());
        let same_perms = path != "/etc/shadow" || cur.and_then(|f| f.perms) == Some(perms);
        if !(same_bytes && same_perms) {
            p.writes.push((path.to_owned(), text.into_bytes(), perms));
        }
    }
    Ok(p)
}

fn hash_with(
    pw: &str,
    salt: &mut dyn FnMut() -> Result<String, UsersError>,
) -> Result<String, UsersError> {
    let s = salt()?;
    crypt::hash_with_salt(pw, &s, None)
        .ok_or_else(|| UsersError::Random(format!("salt {s:?} is not in the crypt alphabet")))
}

fn alloc_gid(
    p: &mut UsersPlan,
    gids: &mut Ids,
    gid_map: &BTreeMap<String, u32>,
    name: &str,
    dry: bool,
) -> Result<u32, UsersError> {
    if let Some(prev) = gid_map.get(name) {
        if !gids.used.contains(prev) {
            p.messages.push(format!(
                "{} group '{name}' with GID {prev}",
                if dry { "would revive" } else { "reviving" }
            ));
            gids.used.insert(*prev);
            return Ok(*prev);
        }
    }
    gids.alloc(400, 999, false, "GIDs")
}

fn alloc_uid(
    p: &mut UsersPlan,
    uids: &mut Ids,
    uid_map: &BTreeMap<String, u32>,
    u: &UserSpec,
    dry: bool,
) -> Result<u32, UsersError> {
    let (min, max, up) = if u.is_system {
        (400, 999, false)
    } else {
        (1000, 29999, true)
    };
    if let Some(prev) = uid_map.get(&u.name) {
        if (min..=max).contains(prev) && !uids.used.contains(prev) {
            p.messages.push(format!(
                "{} user '{}' with UID {prev}",
                if dry { "would revive" } else { "reviving" },
                u.name
            ));
            uids.used.insert(*prev);
            return Ok(*prev);
        }
    }
    uids.alloc(min, max, up, "UIDs")
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

/// The whole users step: lock, finish an interrupted commit, observe, plan, apply.
pub fn update_users(
    root: &Root,
    spec: &UsersSpec,
    dry_run: bool,
) -> Result<UsersOutcome, UsersError> {
    let _lock = if dry_run { None } else { Some(lock(root)?) };
    if !dry_run {
        commit::recover(root)?;
    }
    let state = observe(root, spec)?;
    let mut salt = || crypt::random_salt().map_err(|e| UsersError::Random(e.to_string()));
    let plan = plan(spec, &state, dry_run, &mut salt)?;
    let mut out = UsersOutcome {
        changed: !plan.is_empty(),
        messages: plan.messages.clone(),
        warnings: plan.warnings.clone(),
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
    commit::commit(root, &plan.writes, commit::StopAt::Never)?;
    for h in &plan.homes {
        if let Err(e) = apply_home(root, h) {
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

fn apply_home(root: &Root, h: &HomeAction) -> io::Result<()> {
    let (fd, _, _) = root.dir(Path::new(&h.path), Some(Mode::from_raw_mode(0o755)))?;
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

/// Without logind to ask (we may run before it, or under a root prefix), lingering is the
/// presence of `/var/lib/systemd/linger/<user>`, which logind reads when it starts.
fn apply_linger(root: &Root, user: &str, enable: bool) -> io::Result<()> {
    let mode = enable.then(|| Mode::from_raw_mode(0o755));
    let (dir, _, _) = root.dir(Path::new(LINGER_DIR), mode)?;
    if enable {
        rootfs::atomic_write(&dir, user.as_ref(), b"", crate::etc::own_perms(0o644))
    } else {
        match rootfs::unlink_at(&dir, user.as_ref()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}
