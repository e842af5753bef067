//! Ids that the system gives out through NSS sources other than the account files.
//!
//! NixOS's allocator skips an id that `getpwuid`/`getgrgid` resolves, so an account that
//! LDAP, sssd or libnss_extrausers already has at uid 1000 is never doubled by a new local
//! user. Our binaries are linked statically against glibc, and a static glibc cannot load
//! NSS modules: asking `getpwuid` in-process would only see the files we read anyway. So:
//!
//! * `<root>/etc/nsswitch.conf` says which sources `passwd` and `group` use. `files`,
//!   `compat` (the files with NIS markers) and `systemd` (its dynamic users live at 61184
//!   and above, outside the ranges we allocate from) are what the plan already sees.
//! * `extrausers` listed: its files, `<root>/var/lib/extrausers/passwd` and `group`, are
//!   read directly — the very files libnss_extrausers reads. That works under any root, at
//!   boot before anything runs, and without any helper program.
//! * Any other source (`ldap`, `sss`, `winbind`, `nis`, `db`, `mymachines`, …) can only be
//!   asked through the system's own glibc: when the root is `/`, each candidate id is
//!   looked up with `getent passwd ID` / `getent group ID`, a dynamically linked program
//!   that loads the same modules with the same configuration `getpwuid` would — the
//!   question NixOS asks, one id at a time (new ids are rare, and enumerating instead would
//!   miss LDAP and sssd, which do not enumerate by default). `getent` is looked for on
//!   `PATH`, then in `/run/current-system/sw/bin`. Each lookup is given 10 s.
//! * Under another root the host's NSS says nothing about the target's accounts: only
//!   extrausers is checked there (the README says so).
//!
//! When `getent` cannot be run, or fails in a way that is not "found" or "not found", the
//! step says so in a warning and allocates as if those sources were empty: failing the
//! whole users step (at boot, before the network that LDAP needs is up) would be worse.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stagehand_common::rootfs::Root;

/// Where libnss_extrausers keeps its accounts.
pub const EXTRAUSERS_DIR: &str = "/var/lib/extrausers";
/// Where `getent` is looked for when it is not on `PATH`.
const GETENT_FALLBACK: &str = "/run/current-system/sw/bin/getent";
/// How long one `getent` may take (an unreachable LDAP server can stall it).
const GETENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The NSS database an id is looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdDb {
    Passwd,
    Group,
}

impl IdDb {
    fn name(self) -> &'static str {
        match self {
            IdDb::Passwd => "passwd",
            IdDb::Group => "group",
        }
    }
}

/// Ids given out by something other than the account files the plan reads.
pub trait IdsElsewhere {
    /// Whether `id` already resolves in `db` through another source.
    fn taken(&mut self, db: IdDb, id: u32) -> bool;
}

/// No other source: only the files count (tests, and systems with `files` only).
pub struct FilesOnly;

impl IdsElsewhere for FilesOnly {
    fn taken(&mut self, _: IdDb, _: u32) -> bool {
        false
    }
}

/// The sources `nsswitch.conf` lists for `passwd` and `group`, in order (the
/// `[STATUS=action]` items left out). A database it does not mention uses `files`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NssSources {
    pub passwd: Vec<String>,
    pub group: Vec<String>,
}

impl Default for NssSources {
    fn default() -> Self {
        NssSources {
            passwd: vec!["files".into()],
            group: vec!["files".into()],
        }
    }
}

/// Sources whose accounts the plan sees without asking: the files, and systemd's.
fn is_local(source: &str) -> bool {
    matches!(source, "files" | "compat" | "systemd")
}

impl NssSources {
    /// Read `nsswitch.conf` text: `DATABASE: SOURCE [STATUS=action] SOURCE …`, `#` comments.
    pub fn parse(text: &str) -> NssSources {
        let mut out = NssSources::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let Some((db, rest)) = line.split_once(':') else {
                continue;
            };
            // `[STATUS=action …]` items may hold spaces: drop them before splitting.
            let mut depth = 0usize;
            let plain: String = rest
                .chars()
                .map(|c| match c {
                    '[' => {
                        depth += 1;
                        ' '
                    }
                    ']' => {
                        depth = depth.saturating_sub(1);
                        ' '
                    }
                    _ if depth > 0 => ' ',
                    c => c,
                })
                .collect();
            let sources: Vec<String> = plain.split_whitespace().map(str::to_owned).collect();
            match db.trim() {
                "passwd" => out.passwd = sources,
                "group" => out.group = sources,
                _ => {}
            }
        }
        out
    }

    fn of(&self, db: IdDb) -> &[String] {
        match db {
            IdDb::Passwd => &self.passwd,
            IdDb::Group => &self.group,
        }
    }

    /// Whether `db` uses libnss_extrausers.
    pub fn extrausers(&self, db: IdDb) -> bool {
        self.of(db).iter().any(|s| s == "extrausers")
    }

    /// The sources of `db` that only the system's glibc can ask.
    pub fn remote(&self, db: IdDb) -> Vec<&str> {
        self.of(db)
            .iter()
            .map(String::as_str)
            .filter(|s| !is_local(s) && *s != "extrausers")
            .collect()
    }
}

/// The ids of a passwd or group file (the third field).
fn ids_of(text: &str) -> HashSet<u32> {
    text.lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect()
}

/// The other sources of one root, asked about each candidate id. Nothing is read until the
/// first question: a run that allocates no id (nearly every run) costs nothing.
pub struct OtherIds<'r> {
    root: &'r Root,
    /// `None`: find `getent` when the root is `/`; `Some(p)`: use `p` (`None` inside: none).
    given: Option<Option<PathBuf>>,
    loaded: Option<Loaded>,
    /// What happened that the step should report.
    pub warnings: Vec<String>,
    /// Ids found taken, for the step's messages.
    pub skipped: Vec<String>,
}

/// What [`OtherIds`] read on its first question.
struct Loaded {
    sources: NssSources,
    extra_uids: HashSet<u32>,
    extra_gids: HashSet<u32>,
    /// The `getent` to ask about the remote sources; `None` under another root, when none
    /// was found, or once it failed.
    getent: Option<PathBuf>,
}

impl<'r> OtherIds<'r> {
    /// The sources of `root`: its `nsswitch.conf`, its extrausers files, and — when it is
    /// the running system (`/`) and lists other sources — `getent`.
    pub fn for_root(root: &'r Root) -> OtherIds<'r> {
        OtherIds {
            root,
            given: None,
            loaded: None,
            warnings: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// [`OtherIds::for_root`] asking the remote sources through `getent` (any root; `None`:
    /// ask none).
    pub fn with_getent(root: &'r Root, getent: Option<PathBuf>) -> OtherIds<'r> {
        OtherIds {
            given: Some(getent),
            ..OtherIds::for_root(root)
        }
    }

    fn read(&mut self) -> Loaded {
        let root = self.root;
        let sources = match root.read_opt(Path::new("/etc/nsswitch.conf")) {
            Ok(Some(b)) => NssSources::parse(&String::from_utf8_lossy(&b)),
            _ => NssSources::default(),
        };
        let warnings = &mut self.warnings;
        let mut read_extra = |db: IdDb| -> HashSet<u32> {
            if !sources.extrausers(db) {
                return HashSet::new();
            }
            let path = format!("{EXTRAUSERS_DIR}/{}", db.name());
            match root.read_opt(Path::new(&path)) {
                Ok(Some(b)) => ids_of(&String::from_utf8_lossy(&b)),
                Ok(None) => HashSet::new(),
                Err(e) => {
                    warnings.push(format!(
                        "{}: cannot read: {e}; new ids are not checked against extrausers",
                        root.host_path(Path::new(&path)).display()
                    ));
                    HashSet::new()
                }
            }
        };
        let extra_uids = read_extra(IdDb::Passwd);
        let extra_gids = read_extra(IdDb::Group);
        let remote = remote_list(&sources);
        let getent = if remote.is_empty() {
            None
        } else {
            match &self.given {
                Some(given) => given.clone(),
                None if root.is_host_root() => {
                    let found = find_getent();
                    if found.is_none() {
                        self.warnings.push(format!(
                            "/etc/nsswitch.conf lists {remote} for accounts, but no getent was                              found on PATH or at {GETENT_FALLBACK} to ask: new ids are not                              checked against {remote}"
                        ));
                    }
                    found
                }
                // Another root: the host's NSS says nothing about its accounts.
                None => None,
            }
        };
        Loaded {
            sources,
            extra_uids,
            extra_gids,
            getent,
        }
    }

    /// Ask `getent DB ID`: `Ok(true)` found (exit 0), `Ok(false)` not found (exit 2).
    fn ask(program: &Path, db: IdDb, id: u32) -> io::Result<bool> {
        // Pipes, not /dev/null: the root may have no /dev yet. One entry is far below a
        // pipe's buffer, so the child never blocks on the unread output.
        let mut child = Command::new(program)
            .arg(db.name())
            .arg(id.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        drop(child.stdin.take());
        let deadline = Instant::now() + GETENT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {} s", GETENT_TIMEOUT.as_secs()),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        match status.code() {
            Some(0) => Ok(true),
            Some(2) => Ok(false),
            _ => Err(io::Error::other(format!("it {status}"))),
        }
    }
}

/// The remote sources of `passwd` and `group` together, for messages (empty: none).
fn remote_list(sources: &NssSources) -> String {
    let mut all: Vec<&str> = sources.remote(IdDb::Passwd);
    for s in sources.remote(IdDb::Group) {
        if !all.contains(&s) {
            all.push(s);
        }
    }
    all.join(", ")
}

impl IdsElsewhere for OtherIds<'_> {
    fn taken(&mut self, db: IdDb, id: u32) -> bool {
        let what = match db {
            IdDb::Passwd => "UID",
            IdDb::Group => "GID",
        };
        if self.loaded.is_none() {
            let loaded = self.read();
            self.loaded = Some(loaded);
        }
        let Some(l) = self.loaded.as_mut() else {
            return false;
        };
        let extra = match db {
            IdDb::Passwd => &l.extra_uids,
            IdDb::Group => &l.extra_gids,
        };
        if extra.contains(&id) {
            self.skipped.push(format!(
                "{what} {id} is skipped: {EXTRAUSERS_DIR}/{} already has it",
                db.name()
            ));
            return true;
        }
        let remote = l.sources.remote(db).join(", ");
        if remote.is_empty() {
            return false;
        }
        let Some(program) = l.getent.clone() else {
            return false;
        };
        match OtherIds::ask(&program, db, id) {
            Ok(true) => {
                self.skipped.push(format!(
                    "{what} {id} is skipped: the system's NSS ({remote}) already has it"
                ));
                true
            }
            Ok(false) => false,
            Err(e) => {
                l.getent = None;
                let all = remote_list(&l.sources);
                self.warnings.push(format!(
                    "cannot ask {all} about {what} {id}: `{} {} {id}` failed: {e}; new ids \
                     are not checked against {all}",
                    program.display(),
                    db.name(),
                ));
                false
            }
        }
    }
}

/// `getent` on `PATH`, else NixOS's system profile's.
fn find_getent() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("getent"))
        .chain(std::iter::once(PathBuf::from(GETENT_FALLBACK)))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsswitch_sources_are_read_with_actions_and_comments_left_out() {
        let s = NssSources::parse(
            "# comment\npasswd:   files extrausers [NOTFOUND=return] ldap # trailing\n\
             group: files [SUCCESS=merge UNAVAIL=continue] systemd\nhosts: files dns\n",
        );
        assert_eq!(s.passwd, ["files", "extrausers", "ldap"]);
        assert_eq!(s.group, ["files", "systemd"]);
        assert!(s.extrausers(IdDb::Passwd) && !s.extrausers(IdDb::Group));
        assert_eq!(s.remote(IdDb::Passwd), ["ldap"]);
        assert!(s.remote(IdDb::Group).is_empty());
        // A file without the databases: glibc's default, files only.
        let d = NssSources::parse("hosts: files\n");
        assert!(d.remote(IdDb::Passwd).is_empty() && !d.extrausers(IdDb::Group));
        let sss = NssSources::parse("passwd: compat sss\ngroup: files mymachines systemd");
        assert_eq!(sss.remote(IdDb::Passwd), ["sss"]);
        assert_eq!(sss.remote(IdDb::Group), ["mymachines"]);
    }
}
