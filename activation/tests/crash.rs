//! Crash consistency: the real `stagehand` binary is killed (SIGKILL, delivered by
//! `strace --inject` at the entry of one system call, which therefore never runs) before every
//! file-system-mutating system call it makes, one trial per call. After each kill the root
//! must satisfy the invariants a machine rebooting at that instant relies on, and running the
//! same command again must leave exactly the tree an uninterrupted run leaves.
//!
//! Kill points: a first run of the command under `strace -e trace=<mutating calls>` lists every
//! mutating call in order (`openat` only with `O_CREAT`/`O_WRONLY`/`O_RDWR`, `write` only to a
//! file rather than stdout/stderr, plus the `clone`/`wait4` around each snippet); trial k then
//! runs the command on a fresh copy of the same root with
//! `-e inject=<call>:when=<n>:signal=SIGKILL`, where the k-th mutating call is the n-th call
//! of that name. The file system state only changes at those calls, so the trials together
//! visit every state a kill of the process can leave behind.
//!
//! Needs `strace` (vm-tests/setup-host installs it); the test says so and skips without it.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::FakeRoot;
use stagehand_activation::rootfs::Root;
use stagehand_activation::users;

const BIN: &str = env!("CARGO_BIN_EXE_stagehand");

/// System calls that change the file system (or start/await a snippet, whose own writes are
/// then either done or not).
const MUTATING: &[&str] = &[
    "openat",
    "open",
    "creat",
    "write",
    "pwrite64",
    "writev",
    "fsync",
    "fdatasync",
    "syncfs",
    "sync",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "rmdir",
    "symlink",
    "symlinkat",
    "link",
    "linkat",
    "mkdir",
    "mkdirat",
    "chown",
    "fchown",
    "lchown",
    "fchownat",
    "chmod",
    "fchmod",
    "fchmodat",
    "truncate",
    "ftruncate",
    "fallocate",
    "copy_file_range",
    "sendfile",
    "clone",
    "clone3",
    "vfork",
    "wait4",
];

fn have_strace() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

// ---------------------------------------------------------------------------------------------
// Trees: copy a template root per trial, snapshot a root for comparison.

/// Files that no command under test writes (the store, the bash copied in for snippets) are
/// hard-linked into each trial's root instead of copied.
fn shared(rel: &Path) -> bool {
    ["nix/store", "bin/bash", "lib", "lib64", "usr/lib"]
        .iter()
        .any(|p| rel.starts_with(p))
}

fn copy_tree(from: &Path, to: &Path, rel: &Path) {
    for e in std::fs::read_dir(from.join(rel)).expect("read template") {
        let e = e.expect("entry");
        let r = rel.join(e.file_name());
        let (src, dst) = (from.join(&r), to.join(&r));
        let md = std::fs::symlink_metadata(&src).expect("lstat");
        if md.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).expect("readlink"), &dst)
                .expect("symlink");
            std::os::unix::fs::lchown(&dst, Some(md.uid()), Some(md.gid())).expect("lchown");
            continue;
        }
        if md.is_dir() {
            std::fs::create_dir(&dst).expect("mkdir");
            copy_tree(from, to, &r);
        } else if shared(&r) {
            std::fs::hard_link(&src, &dst).expect("link");
            continue;
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
        std::os::unix::fs::chown(&dst, Some(md.uid()), Some(md.gid())).expect("chown");
        std::fs::set_permissions(&dst, md.permissions()).expect("chmod");
    }
}

/// A temporary directory on tmpfs when there is one: a kill loses nothing that was not
/// synced, so the trials need no disk, and `syncfs` on a real disk would make them slow.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::tempdir_in(shm) {
            return t;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

fn clone_root(template: &Path) -> tempfile::TempDir {
    let t = scratch();
    copy_tree(template, t.path(), Path::new(""));
    std::fs::set_permissions(
        t.path(),
        std::fs::symlink_metadata(template)
            .expect("lstat")
            .permissions(),
    )
    .expect("chmod root");
    t
}

/// One line per path: type, mode, owner and contents (link target for a link). Shared
/// (hard-linked) files are compared by size only.
type Snapshot = BTreeMap<String, String>;

fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    snap_walk(root, Path::new(""), &mut out);
    out
}

fn snap_walk(root: &Path, rel: &Path, out: &mut Snapshot) {
    let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for e in rd {
        let e = e.expect("entry");
        let r = rel.join(e.file_name());
        let p = root.join(&r);
        let md = std::fs::symlink_metadata(&p).expect("lstat");
        let who = format!("{:04o} {}:{}", md.mode() & 0o7777, md.uid(), md.gid());
        let line = if md.file_type().is_symlink() {
            format!(
                "L -> {}",
                std::fs::read_link(&p).expect("readlink").display()
            )
        } else if md.is_dir() {
            snap_walk(root, &r, out);
            format!("D {who}")
        } else if md.nlink() > 1 {
            format!("F {who} shared, {} bytes", md.len())
        } else if r == Path::new("var/lib/stagehand/etc-cache") {
            // The etc step's no-change cache holds this run's inode numbers and time
            // stamps: compared by presence only (its checks are in tests/etc_cache.rs).
            format!("F {who} etc cache")
        } else {
            let c = std::fs::read(&p).expect("read");
            format!("F {who} {:?}", String::from_utf8_lossy(&c))
        };
        out.insert(format!("/{}", r.display()), line);
    }
}

fn diff(a: &Snapshot, b: &Snapshot) -> String {
    let mut d = String::new();
    for (k, v) in a {
        match b.get(k) {
            None => d.push_str(&format!("  only after the crash and rerun: {k} {v}\n")),
            Some(w) if w != v => d.push_str(&format!("  {k}: {v}\n    uninterrupted: {w}\n")),
            _ => {}
        }
    }
    for (k, v) in b {
        if !a.contains_key(k) {
            d.push_str(&format!("  only after an uninterrupted run: {k} {v}\n"));
        }
    }
    d
}

// ---------------------------------------------------------------------------------------------
// Running the binary, under strace.

fn stagehand(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .arg("--root")
        .arg(root)
        .stdin(std::process::Stdio::null());
    c
}

fn run_ok(root: &Path, args: &[&str]) {
    let out = stagehand(root, args).output().expect("run stagehand");
    assert!(
        out.status.code().is_some(),
        "stagehand {args:?} died: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mutating system call, named by its name and its ordinal among calls of that name.
#[derive(Debug, Clone)]
struct KillPoint {
    call: String,
    nth: usize,
    line: String,
}

fn is_mutating(call: &str, line: &str) -> bool {
    match call {
        "openat" | "open" => ["O_CREAT", "O_WRONLY", "O_RDWR", "O_TRUNC"]
            .iter()
            .any(|f| line.contains(f)),
        // Log lines to stdout and stderr change nothing on disk.
        "write" | "writev" | "pwrite64" => {
            !(line.starts_with(&format!("{call}(1,")) || line.starts_with(&format!("{call}(2,")))
        }
        _ => true,
    }
}

/// Every mutating call `stagehand args` makes on a copy of `template`, in order.
fn kill_points(template: &Path, args: &[&str]) -> Vec<KillPoint> {
    let dir = clone_root(template);
    let log = dir.path().join("..").join(format!(
        "{}.strace",
        dir.path().file_name().expect("name").to_string_lossy()
    ));
    let mut cmd = Command::new("strace");
    cmd.args(["-qq", "-s", "0", "-o"])
        .arg(&log)
        .arg("-e")
        .arg(format!("trace={}", MUTATING.join(",")))
        .arg(BIN)
        .args(args)
        .arg("--root")
        .arg(dir.path());
    let out = cmd.output().expect("strace");
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "uninterrupted stagehand {args:?} under strace: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).expect("strace log");
    let _ = std::fs::remove_file(&log);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut points = Vec::new();
    for line in text.lines() {
        let Some((call, _)) = line.split_once('(') else {
            continue;
        };
        if !MUTATING.contains(&call) {
            continue;
        }
        let n = counts.entry(call.to_owned()).or_default();
        *n += 1;
        if is_mutating(call, line) {
            points.push(KillPoint {
                call: call.to_owned(),
                nth: *n,
                line: line.to_owned(),
            });
        }
    }
    points
}

/// Run `stagehand args` on `root` and kill it at `p`. The process group (strace, stagehand
/// and any snippet it started) is killed afterwards, as a power cut would.
fn run_killed(root: &Path, args: &[&str], p: &KillPoint) {
    let child = Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "-e"])
        .arg(format!("trace={}", p.call))
        .arg("-e")
        .arg(format!("inject={}:when={}:signal=SIGKILL", p.call, p.nth))
        .arg(BIN)
        .args(args)
        .arg("--root")
        .arg(root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("strace");
    let group = rustix::process::Pid::from_child(&child);
    let out = child.wait_with_output().expect("wait");
    // Normally the group is gone; a snippet that outlived stagehand dies now.
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the kill point {} #{} ({}) was not reached: {:?}\n{}",
        p.call,
        p.nth,
        p.line,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Activation scenarios.

const TOP1: &str = "/nix/store/g1-nixos-system-crash";
const TOP2: &str = "/nix/store/g2-nixos-system-crash";

/// Declared accounts: `bob` only in generation 1, `carol` only in 2, subordinate ids change.
fn users_json(gen: u32) -> String {
    let user = |name: &str, uid: &str, group: &str, home: &str, extra: &str| {
        format!(
            r#"{{"name": "{name}", "uid": {uid}, "group": "{group}", "description": "{name}",
                "home": "{home}", "homeMode": "700", "createHome": {create},
                "shell": "/run/current-system/sw/bin/bash",
                "hashedPassword": "$y$j9T$salt$hash-{name}", "subUidRanges": [],
                "subGidRanges": [] {extra}}}"#,
            create = name != "root"
        )
    };
    let mut users = vec![
        user("root", "0", "root", "/root", ""),
        user(
            "alice",
            "1000",
            "users",
            "/home/alice",
            r#", "autoSubUidGidRange": true"#,
        ),
        user(
            "sshd",
            "null",
            "sshd",
            "/var/empty",
            r#", "isSystemUser": true"#,
        ),
    ];
    let mut groups = vec![
        r#"{"name": "root", "gid": 0, "members": []}"#.to_owned(),
        r#"{"name": "wheel", "gid": 1, "members": ["alice"]}"#.to_owned(),
        r#"{"name": "users", "gid": 100, "members": []}"#.to_owned(),
        r#"{"name": "shadow", "gid": 318, "members": []}"#.to_owned(),
        r#"{"name": "sshd", "gid": null, "members": []}"#.to_owned(),
    ];
    if gen == 1 {
        users.push(user("bob", "null", "users", "/home/bob", ""));
        groups.push(r#"{"name": "old", "gid": null, "members": ["bob"]}"#.to_owned());
    } else {
        users.push(user(
            "carol",
            "null",
            "users",
            "/home/carol",
            r#", "autoSubUidGidRange": true"#,
        ));
        groups.push(r#"{"name": "new", "gid": null, "members": ["carol"]}"#.to_owned());
    }
    format!(
        r#"{{"mutableUsers": true, "users": [{}], "groups": [{}]}}"#,
        users.join(","),
        groups.join(",")
    )
}

/// The etc tree of generation `gen`: links, nested links, copied files with owners and modes
/// (`sudoers`, a secret readable by its group only), entries only in one generation, and a
/// batch of plain entries so that the trials cover long runs of links.
/// `(path, contents, (mode, uid, gid) sidecars)` of one etc tree entry.
type Entry = (String, String, Option<(String, String, String)>);

fn etc_entries(gen: u32) -> Vec<Entry> {
    let side = |m: &str, u: &str, g: &str| Some((m.to_owned(), u.to_owned(), g.to_owned()));
    let mut v = vec![
        (
            "hosts".to_owned(),
            format!("127.0.0.1 localhost gen{gen}\n"),
            None,
        ),
        (
            "ssh/sshd_config".to_owned(),
            "PermitRootLogin no\n".to_owned(),
            None,
        ),
        (
            "sudoers".to_owned(),
            format!("root ALL=(ALL) ALL # gen{gen}\n"),
            side("0440", "root", "root"),
        ),
        (
            "secret.key".to_owned(),
            format!("secret of gen{gen}\n"),
            side("0640", "alice", "users"),
        ),
    ];
    for i in 0..12 {
        v.push((
            format!("conf.d/{i:02}.conf"),
            format!("entry {i} of gen{}\n", if i % 3 == 0 { gen } else { 1 }),
            None,
        ));
    }
    // An entry changing kind between generations: link -> copy, copy -> link, and a
    // directory of links replaced by a link.
    let copy = side("0644", "+0", "+0");
    let (a, b) = if gen == 1 {
        (None, side("0600", "+0", "+0"))
    } else {
        (copy, None)
    };
    v.push(("kind-a".to_owned(), format!("kind a of gen{gen}\n"), a));
    v.push(("kind-b".to_owned(), format!("kind b of gen{gen}\n"), b));
    let dir_or_link = if gen == 1 {
        "dir-to-link/inner"
    } else {
        "dir-to-link"
    };
    v.push((dir_or_link.to_owned(), format!("in gen{gen}\n"), None));
    if gen == 1 {
        v.push(("only-in-1".to_owned(), "old\n".to_owned(), None));
        v.push((
            "copied-only-in-1".to_owned(),
            "old copy\n".to_owned(),
            side("0644", "+0", "+0"),
        ));
    } else {
        v.push(("only-in-2".to_owned(), "new\n".to_owned(), None));
        v.push((
            "copied-only-in-2".to_owned(),
            "new copy\n".to_owned(),
            side("0600", "sshd", "sshd"),
        ));
    }
    v
}

fn install_bash(r: &FakeRoot) -> bool {
    let Ok(out) = Command::new("ldd").arg("/bin/bash").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut files = vec!["/bin/bash".to_owned()];
    for l in text.lines() {
        if let Some(p) = l.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(p.to_owned());
        }
    }
    files.iter().all(|f| {
        let dest = r.host(f);
        std::fs::create_dir_all(dest.parent().expect("parent")).is_ok()
            && std::fs::copy(f, &dest).is_ok()
    })
}

/// Both generations in the store of a root that has nothing else yet.
fn fresh_root() -> FakeRoot {
    let r = FakeRoot { dir: scratch() };
    std::fs::create_dir_all(r.host("/nix/store")).expect("store");
    // Snippets run chrooted into the root with its bash; chroot needs root privileges.
    let snippets = rustix::process::geteuid().is_root() && install_bash(&r);
    for (gen, top) in [(1, TOP1), (2, TOP2)] {
        let entries = etc_entries(gen);
        let spec: Vec<common::TreeSpec<'_>> = entries
            .iter()
            .map(|(rel, c, s)| {
                (
                    rel.as_str(),
                    c.as_str(),
                    s.as_ref()
                        .map(|(m, u, g)| (m.as_str(), u.as_str(), g.as_str())),
                )
            })
            .collect();
        let etc = r.etc_tree(&format!("g{gen}"), &spec);
        let users = format!("/nix/store/g{gen}-users-groups.json");
        r.write(&users, &users_json(gen));
        let snippet_list = if snippets {
            format!(
                r#"[{{"name": "stamp", "deps": ["users"],
                     "text": "echo gen{gen} > /var/lib/nixos/stamp; echo $NIXOS_ACTION >> /var/lib/nixos/stamp"}}]"#
            )
        } else {
            "[]".to_owned()
        };
        r.write(
            &format!("{top}/activation.json"),
            &format!(
                r#"{{"version": 1, "etc": "{etc}", "usersGroups": "{users}",
                    "binsh": "/nix/store/g{gen}-bash/bin/sh",
                    "usrbinenv": "/nix/store/g{gen}-coreutils/bin/env",
                    "shell": "/bin/bash", "snippets": {snippet_list}}}"#
            ),
        );
    }
    r
}

/// What a program reading `/etc/<rel>` gets: its contents and, for a copied file (not a
/// link), its mode and owner. `None` when absent or dangling.
type EtcView = Option<(String, Option<String>)>;

fn etc_view(root: &Path, rel: &str) -> EtcView {
    let r = Root::open(root).expect("root");
    let bytes = r.read(&PathBuf::from("/etc").join(rel)).ok()?;
    let meta = match std::fs::symlink_metadata(root.join("etc").join(rel)) {
        Ok(m) if m.is_file() => Some(format!(
            "copy {:04o} {}:{}",
            m.permissions().mode() & 0o7777,
            m.uid(),
            m.gid()
        )),
        _ => None,
    };
    Some((String::from_utf8_lossy(&bytes).into_owned(), meta))
}

/// `seen` is the old or the new version of an entry. While `/etc/static` has switched but a
/// copied file has not been renamed into place yet, an entry that changes between link and
/// copy is a link showing the new contents: the same window `setup-etc.pl` has, accepted.
fn etc_version_ok(seen: &EtcView, old: &EtcView, new: &EtcView) -> bool {
    match seen {
        None => old.is_none() || new.is_none(),
        Some((_, Some(_))) => seen == old || seen == new,
        Some((text, None)) => [old, new]
            .iter()
            .any(|v| v.as_ref().is_some_and(|(t, _)| t == text)),
    }
}

/// The account files as a set, `None` for a missing file.
fn account_set(root: &Path) -> Vec<Option<Vec<u8>>> {
    users::SET
        .iter()
        .map(|p| std::fs::read(root.join(p.trim_start_matches('/'))).ok())
        .collect()
}

fn names(file: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(file)
        .lines()
        .filter_map(|l| l.split(':').next().map(str::to_owned))
        .collect()
}

/// A passwd/group/shadow/subuid file parses: every line has the right number of fields and
/// numeric ids where ids go.
fn parse_check(path: &str, bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| format!("{path}: not UTF-8"))?;
    let (fields, numeric): (usize, &[usize]) = match path {
        "/etc/passwd" => (7, &[2, 3]),
        "/etc/group" => (4, &[2]),
        "/etc/shadow" => (9, &[]),
        "/etc/subuid" | "/etc/subgid" => (3, &[1, 2]),
        _ => return Ok(()),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(format!("{path}: last line not terminated: {text:?}"));
    }
    for l in text.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() != fields || numeric.iter().any(|&i| f[i].parse::<u64>().is_err()) {
            return Err(format!("{path}: bad line {l:?}"));
        }
    }
    Ok(())
}

/// No file under `/etc` whose name mentions shadow (the file, its temporary, gshadow) may be
/// readable or writable by others, at any kill point.
fn shadow_modes(root: &Path) -> Result<(), String> {
    for e in std::fs::read_dir(root.join("etc")).into_iter().flatten() {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        let md = std::fs::symlink_metadata(e.path()).expect("lstat");
        if name.contains("shadow") && md.is_file() && md.mode() & 0o007 != 0 {
            return Err(format!("/etc/{name} has mode {:04o}", md.mode() & 0o7777));
        }
    }
    Ok(())
}

struct ActivationCase {
    name: &'static str,
    before: FakeRoot,
    args: Vec<String>,
    /// Users that exist before and must exist at every kill point.
    keep: Vec<&'static str>,
}

struct Expect {
    after: Snapshot,
    set_before: Vec<Option<Vec<u8>>>,
    set_after: Vec<Option<Vec<u8>>>,
    etc_rels: Vec<String>,
    etc_before: Vec<EtcView>,
    etc_after: Vec<EtcView>,
}

fn etc_rels() -> Vec<String> {
    let mut rels: Vec<String> = etc_entries(1)
        .into_iter()
        .chain(etc_entries(2))
        .map(|(r, _, _)| r)
        .collect();
    rels.sort();
    rels.dedup();
    rels
}

fn expectations(case: &ActivationCase) -> Expect {
    let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let before = case.before.path();
    let done = clone_root(before);
    run_ok(done.path(), &args);
    let rels = etc_rels();
    Expect {
        after: snapshot(done.path()),
        set_before: account_set(before),
        set_after: account_set(done.path()),
        etc_before: rels.iter().map(|r| etc_view(before, r)).collect(),
        etc_after: rels.iter().map(|r| etc_view(done.path(), r)).collect(),
        etc_rels: rels,
    }
}

/// The invariants at a kill point, before anything ran again.
fn check_killed_state(case: &ActivationCase, x: &Expect, root: &Path) -> Result<(), String> {
    shadow_modes(root)?;
    let set = account_set(root);
    for (i, path) in users::SET.iter().enumerate() {
        if let Some(b) = &set[i] {
            parse_check(path, b)?;
        }
        // Each file on its own is the old or the new version, never a mix or a truncation.
        if set[i] != x.set_before[i] && set[i] != x.set_after[i] {
            return Err(format!("{path} is neither the old nor the new version"));
        }
    }
    let journal = root
        .join(users::commit::JOURNAL.trim_start_matches('/'))
        .exists();
    if set != x.set_before && set != x.set_after && !journal {
        return Err(
            "the account files mix old and new versions with no journal to finish \
                    the switch"
                .into(),
        );
    }
    let passwd = set[users::SET
        .iter()
        .position(|p| *p == "/etc/passwd")
        .expect("passwd")]
    .clone()
    .unwrap_or_default();
    let have = names(&passwd);
    if x.set_before[5].is_some() {
        for u in &case.keep {
            if !have.iter().any(|h| h == u) {
                return Err(format!("user {u} is missing from /etc/passwd"));
            }
        }
    }
    for (i, rel) in x.etc_rels.iter().enumerate() {
        let v = etc_view(root, rel);
        if !etc_version_ok(&v, &x.etc_before[i], &x.etc_after[i]) {
            return Err(format!(
                "/etc/{rel} is {v:?}: neither the old {:?} nor the new {:?}",
                x.etc_before[i], x.etc_after[i]
            ));
        }
    }
    // What the next boot's users step does first: finish or discard the interrupted switch.
    // After that the set is entirely old or entirely new.
    let r = Root::open(root).expect("root");
    users::commit::recover(&r).map_err(|e| format!("recovery: {e}"))?;
    let set = account_set(root);
    if set != x.set_before && set != x.set_after {
        return Err("after recovery the account files are neither the old nor the new set".into());
    }
    Ok(())
}

fn crash_trials(case: &ActivationCase) -> usize {
    let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let x = expectations(case);
    let points = kill_points(case.before.path(), &args);
    if std::env::var_os("CRASH_SHOW_POINTS").is_some() {
        for p in &points {
            eprintln!("{}", p.line);
        }
    }
    assert!(
        points.len() > 50,
        "{}: only {} kill points",
        case.name,
        points.len()
    );
    let mut failures = Vec::new();
    for (k, p) in points.iter().enumerate() {
        let dir = clone_root(case.before.path());
        run_killed(dir.path(), &args, p);
        let at = format!("{} kill point {k} ({})", case.name, p.line);
        if let Err(e) = check_killed_state(case, &x, dir.path()) {
            failures.push(format!("{at}: {e}"));
            continue;
        }
        run_ok(dir.path(), &args);
        let d = diff(&snapshot(dir.path()), &x.after);
        if !d.is_empty() {
            failures.push(format!("{at}: the rerun does not converge:\n{d}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} trials failed; the first ones:\n{}",
        failures.len(),
        points.len(),
        failures[..failures.len().min(5)].join("\n")
    );
    eprintln!(
        "{}: {} kill points, all consistent",
        case.name,
        points.len()
    );
    points.len()
}

fn activate_args(top: &str) -> Vec<String> {
    ["activate", "--action", "boot", top]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Add `dave` by hand, the way `useradd` would.
fn add_user_by_hand(r: &FakeRoot) {
    let append = |p: &str, line: &str| {
        let mut t = r.read(p);
        t.push_str(line);
        std::fs::write(r.host(p), t).expect("write");
    };
    append("/etc/passwd", "dave:x:1500:1500::/home/dave:/bin/sh\n");
    append("/etc/group", "dave:x:1500:\n");
    append("/etc/shadow", "dave:!:19000:0:99999:7:::\n");
    // A file nobody declared: kept as it is.
    r.write("/etc/dave-notes", "mine\n");
}

/// Generation 1 activated, `dave` added by hand.
fn generation_1_with_dave() -> FakeRoot {
    let r = fresh_root();
    run_ok(r.path(), &["activate", "--action", "boot", TOP1]);
    add_user_by_hand(&r);
    r
}

#[test]
fn activation_killed_at_every_write_first_run() {
    if !have_strace() {
        eprintln!("skipped: strace is not installed (vm-tests/setup-host installs it)");
        return;
    }
    let case = ActivationCase {
        name: "first activation",
        before: fresh_root(),
        args: activate_args(TOP1),
        keep: vec![],
    };
    crash_trials(&case);
}

#[test]
fn activation_killed_at_every_write_generation_change() {
    if !have_strace() {
        eprintln!("skipped: strace is not installed (vm-tests/setup-host installs it)");
        return;
    }
    let before = generation_1_with_dave();
    let case = ActivationCase {
        name: "generation 1 -> 2",
        before,
        args: activate_args(TOP2),
        keep: vec!["root", "alice", "sshd", "dave"],
    };
    crash_trials(&case);
}

#[test]
fn activation_killed_at_every_write_rollback() {
    if !have_strace() {
        eprintln!("skipped: strace is not installed (vm-tests/setup-host installs it)");
        return;
    }
    let before = generation_1_with_dave();
    run_ok(before.path(), &["activate", "--action", "switch", TOP2]);
    let case = ActivationCase {
        name: "generation 2 -> 1",
        before,
        args: activate_args(TOP1),
        keep: vec!["root", "alice", "sshd", "dave"],
    };
    crash_trials(&case);
}
