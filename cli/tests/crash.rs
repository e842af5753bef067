//! Crash consistency of activation: the real `stagehand activate` SIGKILLed before each of its
//! mutating system calls (see `crash_harness`), for a first activation, a generation change
//! with a user added by hand in between, and the way back. After each kill the account files
//! must be the old or the new set (each file whole; a mix only with the journal that finishes
//! it, and never after recovery), no user that existed before is gone, nothing named shadow
//! is readable by others, and every `/etc` entry is its old or its new version; running again
//! must leave exactly what an uninterrupted run leaves, and it must do the recovery itself
//! (the checks recover a copy). Further trials edit the account files by hand (as
//! `usermod`/`useradd` do, under the lock) between the kill and the rerun: the edits survive.
//!
//! Needs `strace` (vm-tests/setup-host installs it); without it the tests fail and say so.

mod crash_harness;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crash_harness::{
    require_strace, run_ok, run_trials, scratch, snapshot, uninterrupted, Cmd, Snapshot,
};
use stagehand_activation::users;
use stagehand_common::rootfs::Root;
use stagehand_testkit::host::install_bash;
use stagehand_testkit::FakeRoot;
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
    // Generation 1 has conf.d/00..39, generation 2 conf.d/05..49; every third changes.
    let range = if gen == 1 { 0..40 } else { 5..50 };
    for i in range {
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

/// Both generations in the store of a root that has nothing else yet.
fn fresh_root() -> FakeRoot {
    let r = FakeRoot { dir: scratch() };
    std::fs::create_dir_all(r.host("/nix/store")).expect("store");
    // Snippets run chrooted into the root with its bash; chroot needs root privileges.
    let snippets = rustix::process::geteuid().is_root();
    if snippets {
        install_bash(r.path());
    }
    for (gen, top) in [(1, TOP1), (2, TOP2)] {
        let entries = etc_entries(gen);
        let spec: Vec<stagehand_testkit::TreeSpec<'_>> = entries
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
    // An empty database is one empty line, as update-users-groups.pl writes it.
    for l in text.lines().filter(|l| !l.is_empty()) {
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
    top: &'static str,
    /// Users that exist before and must exist at every kill point.
    keep: Vec<&'static str>,
}

impl ActivationCase {
    fn args(&self) -> [&str; 4] {
        ["activate", "--action", "boot", self.top]
    }
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
    let before = case.before.path();
    let done = uninterrupted(before, Cmd::new(&case.args()));
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
            "the account files mix old and new versions with no journal to finish the switch"
                .into(),
        );
    }
    let passwd = std::fs::read(root.join("etc/passwd")).unwrap_or_default();
    let have = names(&passwd);
    if root.join("etc/passwd").exists() || !case.keep.is_empty() {
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
    // After that the set is entirely old or entirely new. Checked on a copy: the rerun that
    // follows must do the recovery itself, with the binary's own code.
    let copy = crash_harness::clone_root(root);
    let r = Root::open(copy.path()).expect("root");
    users::commit::recover(&r).map_err(|e| format!("recovery: {e}"))?;
    let set = account_set(copy.path());
    if set != x.set_before && set != x.set_after {
        return Err("after recovery the account files are neither the old nor the new set".into());
    }
    Ok(())
}

fn crash_trials(case: &ActivationCase) -> usize {
    let x = expectations(case);
    run_trials(
        case.name,
        case.before.path(),
        Cmd::new(&case.args()),
        &x.after,
        &|root: &Path| check_killed_state(case, &x, root),
    )
}

/// A crash during the run that recovers from a crash: first kill at the first call whose
/// strace line contains each of `first`, then every kill point of the next run. The
/// invariants stay those of the original switch (old = before the first run).
fn double_crash_trials(case: &ActivationCase, first: &[&str]) -> usize {
    let x = expectations(case);
    let points = crash_harness::kill_points(case.before.path(), Cmd::new(&case.args()));
    let mut n = 0;
    for f in first {
        let p = points
            .iter()
            .find(|p| p.line.contains(f))
            .unwrap_or_else(|| panic!("{}: no kill point matches {f:?}", case.name));
        let killed = crash_harness::clone_root(case.before.path());
        crash_harness::run_killed(killed.path(), Cmd::new(&case.args()), p);
        let name = format!("{}, killed again after a kill at {f}", case.name);
        n += run_trials(
            &name,
            killed.path(),
            Cmd::new(&case.args()),
            &x.after,
            &|root: &Path| check_killed_state(case, &x, root),
        );
    }
    n
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
    require_strace();
    let case = ActivationCase {
        name: "first activation",
        before: fresh_root(),
        top: TOP1,
        keep: vec![],
    };
    crash_trials(&case);
}

#[test]
fn activation_killed_at_every_write_over_an_existing_etc() {
    require_strace();
    // A root that was not ours before: accounts and files made by someone else.
    let before = fresh_root();
    before.write("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/:/bin/false\ndave:x:1500:1500::/home/dave:/bin/sh\n");
    before.write("/etc/group", "root:x:0:\ndaemon:x:1:\ndave:x:1500:\n");
    before.write(
        "/etc/shadow",
        "root:*:19000:0:99999:7:::\ndaemon:*:19000::::::\ndave:!:19000::::::\n",
    );
    std::fs::set_permissions(before.host("/etc/shadow"), PermissionsExt::from_mode(0o600))
        .expect("chmod");
    before.write("/etc/hosts", "127.0.0.1 handmade\n");
    before.write("/etc/motd", "not declared, kept\n");
    let case = ActivationCase {
        name: "first activation over an existing /etc",
        before,
        top: TOP2,
        keep: vec!["root", "daemon", "dave"],
    };
    crash_trials(&case);
}

#[test]
fn activation_killed_at_every_write_generation_change() {
    require_strace();
    let before = generation_1_with_dave();
    let case = ActivationCase {
        name: "generation 1 -> 2",
        before,
        top: TOP2,
        keep: vec!["root", "alice", "sshd", "dave"],
    };
    crash_trials(&case);
}

#[test]
fn activation_killed_at_every_write_rollback() {
    require_strace();
    let before = generation_1_with_dave();
    run_ok(before.path(), &["activate", "--action", "switch", TOP2]);
    let case = ActivationCase {
        name: "generation 2 -> 1",
        before,
        top: TOP1,
        keep: vec!["root", "alice", "sshd", "dave"],
    };
    crash_trials(&case);
}

#[test]
fn activation_killed_again_while_recovering() {
    require_strace();
    // A first boot cut while the account files are being switched, then cut again.
    let first = ActivationCase {
        name: "first activation",
        before: fresh_root(),
        top: TOP1,
        keep: vec![],
    };
    let mut n = double_crash_trials(&first, &[r#", "shadow")"#]);
    let change = ActivationCase {
        name: "generation 1 -> 2",
        before: generation_1_with_dave(),
        top: TOP2,
        keep: vec!["root", "alice", "sshd", "dave"],
    };
    // Half-way through renaming the account files (journal written), right after
    // /etc/static switched generations, and while the snippet runs.
    n += double_crash_trials(
        &change,
        &[
            r#", "passwd")"#,
            r#"symlinkat("/etc/static/only-in-2""#,
            "wait4(",
        ],
    );
    eprintln!("killed twice: {n} trials");
}

// ---------------------------------------------------------------------------------------------
// A crash, then someone else edits the account files, then the rerun.

/// Rewrite `file` (an in-root path) under `/etc/.pwd.lock` the way shadow-utils' commonio
/// does for `passwd`, `usermod` and `useradd`: lock as `lckpwdf` does, write `FILE+` with the
/// file's mode, rename it over the file.
fn edit_like_shadow_utils(root: &Path, file: &str, edit: impl FnOnce(String) -> String) {
    let r = Root::open(root).expect("root");
    let _lock = users::lock(&r).expect("lckpwdf");
    let path = root.join(file.trim_start_matches('/'));
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mode = std::fs::metadata(&path)
        .map(|m| m.permissions())
        .unwrap_or_else(|_| PermissionsExt::from_mode(0o644));
    let plus = root.join(format!("{}+", file.trim_start_matches('/')));
    std::fs::write(&plus, edit(old)).expect("write FILE+");
    std::fs::set_permissions(&plus, mode).expect("chmod FILE+");
    std::fs::rename(&plus, &path).expect("rename FILE+");
}

const EDITED_HASH: &str = "$6$byhand$dave-set-this";

/// `usermod -p HASH dave` and `useradd eve`, each under the lock.
fn usermod_dave_and_useradd_eve(root: &Path) {
    edit_like_shadow_utils(root, "/etc/shadow", |t| {
        let mut out: String = t
            .lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(':').collect();
                if f.first() == Some(&"dave") && f.len() > 1 {
                    f[1] = EDITED_HASH;
                }
                f.join(":") + "\n"
            })
            .collect();
        out.push_str("eve:!:19000:0:99999:7:::\n");
        out
    });
    edit_like_shadow_utils(root, "/etc/passwd", |t| {
        t + "eve:x:1600:1600::/home/eve:/bin/sh\n"
    });
    edit_like_shadow_utils(root, "/etc/group", |t| t + "eve:x:1600:\n");
}

/// After the rerun: the hand edits are there, and so is everything the generation declares.
fn check_edits_survived(root: &Path, declared: &[&str]) -> Result<(), String> {
    let read = |p: &str| std::fs::read(root.join(p)).unwrap_or_default();
    for (i, path) in users::SET.iter().enumerate() {
        if let Some(b) = &account_set(root)[i] {
            parse_check(path, b)?;
        }
    }
    let shadow = String::from_utf8_lossy(&read("etc/shadow")).into_owned();
    if !shadow.contains(&format!("dave:{EDITED_HASH}:")) {
        return Err(format!("dave's new password was reverted:\n{shadow}"));
    }
    if !shadow.lines().any(|l| l.starts_with("eve:")) {
        return Err(format!("eve is gone from /etc/shadow:\n{shadow}"));
    }
    let passwd = names(&read("etc/passwd"));
    for u in declared.iter().chain(&["dave", "eve"]) {
        if !passwd.iter().any(|h| h == u) {
            return Err(format!("user {u} is missing from /etc/passwd: {passwd:?}"));
        }
    }
    if !names(&read("etc/group")).iter().any(|g| g == "eve") {
        return Err("group eve is gone from /etc/group".into());
    }
    let journal = root.join(users::commit::JOURNAL.trim_start_matches('/'));
    if journal.exists() {
        return Err("the journal is still there".into());
    }
    Ok(())
}

/// Kill `stagehand ARGS` at each of its mutating calls; then `usermod`/`useradd` by hand;
/// then run it again: the edits must survive, and a further run must change nothing.
fn crash_edit_rerun_trials(name: &str, start: &Path, args: &[&str], declared: &[&str]) {
    require_strace();
    let cmd = Cmd::new(args);
    let points = crash_harness::kill_points(start, cmd);
    assert!(
        points.len() > 2,
        "{name}: only {} kill points",
        points.len()
    );
    let mut failures = Vec::new();
    let mut discarded = 0;
    for (k, p) in points.iter().enumerate() {
        let dir = crash_harness::clone_root(start);
        crash_harness::run_killed(dir.path(), cmd, p);
        usermod_dave_and_useradd_eve(dir.path());
        let out = crash_harness::run_cmd(dir.path(), cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("discarded the journal") {
            discarded += 1;
        }
        let at = format!(
            "{name}, kill point {k} ({}), then usermod and useradd",
            p.line
        );
        if let Err(e) = check_edits_survived(dir.path(), declared) {
            failures.push(format!("{at}: {e}\n{stderr}"));
            continue;
        }
        let settled = snapshot(dir.path());
        crash_harness::run_cmd(dir.path(), cmd);
        let d = crash_harness::diff(&snapshot(dir.path()), &settled);
        if !d.is_empty() {
            failures.push(format!("{at}: a further run still changes things:\n{d}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} trials failed; the first ones:\n{}",
        failures.len(),
        points.len(),
        failures[..failures.len().min(5)].join("\n")
    );
    // The kill points past the commit point leave a journal that the edits make stale.
    assert!(
        discarded > 0,
        "{name}: no trial discarded a stale journal; the scenario does not reach the case"
    );
    eprintln!(
        "{name}: {} kill points, edits kept at each ({discarded} stale journals discarded)",
        points.len()
    );
}

#[test]
fn users_killed_then_edited_by_hand_then_rerun_keeps_the_edits() {
    let before = generation_1_with_dave();
    crash_edit_rerun_trials(
        "users 1 -> 2",
        before.path(),
        &["users", "/nix/store/g2-users-groups.json"],
        &["root", "alice", "sshd", "carol"],
    );
}

#[test]
fn activation_killed_then_edited_by_hand_then_rerun_keeps_the_edits() {
    let before = generation_1_with_dave();
    crash_edit_rerun_trials(
        "activation 1 -> 2",
        before.path(),
        &["activate", "--action", "boot", TOP2],
        &["root", "alice", "sshd", "carol"],
    );
}

/// A single kill past the commit point, then a rerun: the rerun itself (not the test)
/// completes the interrupted update, and says so. Fails if the binary does not recover.
#[test]
fn a_rerun_completes_an_interrupted_commit_itself() {
    require_strace();
    let before = generation_1_with_dave();
    let args = ["users", "/nix/store/g2-users-groups.json"];
    let cmd = Cmd::new(&args);
    let after = snapshot(uninterrupted(before.path(), cmd).path());
    let points = crash_harness::kill_points(before.path(), cmd);
    let journal = points
        .iter()
        .position(|p| p.line.contains("renameat") && p.line.contains(".stagehand-users.commit"))
        .expect("a kill point renaming the journal into place");
    // Every kill point after the journal is in place and before it is removed.
    let past: Vec<_> = points[journal + 1..]
        .iter()
        .take_while(|p| {
            !(p.line.contains("unlinkat") && p.line.contains(".stagehand-users.commit"))
        })
        .collect();
    assert!(!past.is_empty(), "no kill point past the commit point");
    for p in past {
        let dir = crash_harness::clone_root(before.path());
        crash_harness::run_killed(dir.path(), cmd, p);
        assert!(dir
            .path()
            .join(users::commit::JOURNAL.trim_start_matches('/'))
            .exists());
        let stderr = crash_harness::run_stderr(dir.path(), cmd);
        assert!(
            stderr.contains("completed an interrupted update of the account files"),
            "killed at {}: the rerun did not complete the commit itself:\n{stderr}",
            p.line
        );
        let d = crash_harness::diff(&snapshot(dir.path()), &after);
        assert!(d.is_empty(), "killed at {}:\n{d}", p.line);
    }
}
