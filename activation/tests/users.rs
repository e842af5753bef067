//! Users and groups over successive generations, on temporary roots.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use stagehand_activation::crypt;
use stagehand_activation::users::{self, commit, SpecError, UsersError, UsersSpec};
use stagehand_common::rootfs::Root;
use stagehand_testkit::FakeRoot;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn spec(json: &str) -> UsersSpec {
    UsersSpec::from_json(Path::new("/users.json"), json.as_bytes()).expect("spec")
}

fn run(r: &FakeRoot, s: &UsersSpec) -> users::UsersOutcome {
    let root = Root::open(r.path()).expect("root");
    users::update_users(&root, s, false).expect("users")
}

fn plan_is_empty(r: &FakeRoot, s: &UsersSpec) -> bool {
    let root = Root::open(r.path()).expect("root");
    let st = users::observe(&root, s).expect("observe");
    let p = users::plan(
        s,
        &st,
        false,
        &mut || Ok("saltsaltsaltsalt".into()),
        &mut users::FilesOnly,
    )
    .expect("plan");
    if !p.is_empty() {
        eprintln!("{:?}", p.writes.iter().map(|w| &w.0).collect::<Vec<_>>());
    }
    p.is_empty()
}

/// Shadow lines with the hash replaced by `HASH` when it is a `$6$` hash.
fn shadow(r: &FakeRoot) -> String {
    r.read("/etc/shadow")
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(':').collect();
            if f[1].starts_with("$6$") {
                f[1] = "HASH";
            }
            f.join(":") + "\n"
        })
        .collect()
}

const GEN0: &str = r#"{
  "mutableUsers": true,
  "users": [
    {"name": "root", "uid": 0, "group": "root", "description": "System administrator",
     "home": "/root", "homeMode": "700", "createHome": false, "isSystemUser": false,
     "shell": "/run/current-system/sw/bin/bash", "hashedPassword": "!", "password": null,
     "hashedPasswordFile": null, "initialPassword": null, "initialHashedPassword": null,
     "autoSubUidGidRange": false, "subUidRanges": [], "subGidRanges": [], "expires": null,
     "linger": null},
    {"name": "alice", "uid": null, "group": "users", "description": "Alice",
     "home": "/home/alice", "homeMode": "700", "createHome": true, "isSystemUser": false,
     "shell": "/run/current-system/sw/bin/bash", "initialPassword": "hunter2",
     "autoSubUidGidRange": true, "subUidRanges": [], "subGidRanges": [], "linger": true},
    {"name": "sshd", "uid": null, "group": "sshd", "description": "SSH privilege separation user",
     "home": "/var/empty", "homeMode": "700", "createHome": false, "isSystemUser": true,
     "shell": null}
  ],
  "groups": [
    {"name": "root", "gid": 0, "members": []},
    {"name": "wheel", "gid": 1, "members": ["alice"]},
    {"name": "users", "gid": 100, "members": []},
    {"name": "shadow", "gid": 318, "members": []},
    {"name": "sshd", "gid": null, "members": []}
  ]
}"#;

#[test]
fn generations_with_a_user_added_by_hand_in_between() {
    let r = FakeRoot::new();
    let g0 = spec(GEN0);
    let out = run(&r, &g0);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(
        r.read("/etc/passwd"),
        "root:x:0:0:System administrator:/root:/run/current-system/sw/bin/bash
sshd:x:999:999:SSH privilege separation user:/var/empty:/run/current-system/sw/bin/nologin
alice:x:1000:100:Alice:/home/alice:/run/current-system/sw/bin/bash
"
    );
    assert_eq!(
        r.read("/etc/group"),
        "root:x:0:\nwheel:x:1:alice\nusers:x:100:\nshadow:x:318:\nsshd:x:999:\n"
    );
    assert_eq!(
        shadow(&r),
        "root:!:1::::::\nsshd:!:1::::::\nalice:HASH:1::::::\n"
    );
    let alice_hash = r
        .read("/etc/shadow")
        .lines()
        .nth(2)
        .expect("line")
        .split(':')
        .nth(1)
        .expect("hash")
        .to_owned();
    assert!(crypt::verify("hunter2", &alice_hash));
    assert_eq!(r.read("/etc/subuid"), "alice:100000:65536\n");
    assert_eq!(r.read("/etc/subgid"), "alice:100000:65536\n");
    assert_eq!(
        r.read("/var/lib/nixos/uid-map"),
        r#"{"alice":1000,"root":0,"sshd":999}"#
    );
    assert_eq!(
        r.read("/var/lib/nixos/gid-map"),
        r#"{"root":0,"shadow":318,"sshd":999,"users":100,"wheel":1}"#
    );
    assert_eq!(
        r.read("/var/lib/nixos/declarative-users"),
        "alice root sshd"
    );
    assert_eq!(
        r.read("/var/lib/nixos/declarative-groups"),
        "root shadow sshd users wheel"
    );
    assert_eq!(
        r.read("/var/lib/nixos/auto-subuid-map"),
        "{\"alice\":100000}\n"
    );
    assert!(r.host("/var/lib/systemd/linger/alice").exists());
    let home = std::fs::metadata(r.host("/home/alice")).expect("home");
    assert_eq!(home.permissions().mode() & 0o7777, 0o700);
    let sh = std::fs::metadata(r.host("/etc/shadow")).expect("shadow");
    assert_eq!(sh.permissions().mode() & 0o7777, 0o640);
    if is_root() {
        assert_eq!((home.uid(), home.gid()), (1000, 100));
        assert_eq!((sh.uid(), sh.gid()), (0, 318));
    }

    // Nothing changed: nothing to write, and the initial password is not hashed again.
    assert!(plan_is_empty(&r, &g0));
    let out = run(&r, &g0);
    assert!(!out.changed);

    // By hand: bob is created and put into wheel.
    let mut passwd = r.read("/etc/passwd");
    passwd.push_str("bob:x:1001:100:Bob:/home/bob:/bin/sh\n");
    std::fs::write(r.host("/etc/passwd"), passwd).expect("write");
    let mut sh = r.read("/etc/shadow");
    sh.push_str("bob:$6$x$y:19000:0:99999:7:::\n");
    std::fs::write(r.host("/etc/shadow"), sh).expect("write");
    std::fs::write(
        r.host("/etc/group"),
        r.read("/etc/group")
            .replace("wheel:x:1:alice", "wheel:x:1:alice,bob"),
    )
    .expect("write");

    // gen1: sshd (user and group) goes, carol arrives.
    let gen1 = GEN0
        .replace(
            r#"{"name": "sshd", "gid": null, "members": []}"#,
            r#"{"name": "carol", "gid": null, "members": []}"#,
        )
        .replace(
            r#""name": "sshd", "uid": null, "group": "sshd""#,
            r#""name": "carol", "uid": null, "group": "carol""#,
        )
        .replace(r#""isSystemUser": true"#, r#""isSystemUser": false"#);
    let g1 = spec(&gen1);
    let out = run(&r, &g1);
    assert!(
        out.messages.iter().any(|m| m == "removing user ‘sshd’"),
        "{:?}",
        out.messages
    );
    assert!(
        out.messages.iter().any(|m| m == "removing group ‘sshd’"),
        "{:?}",
        out.messages
    );
    assert_eq!(
        r.read("/etc/passwd"),
        "root:x:0:0:System administrator:/root:/run/current-system/sw/bin/bash
alice:x:1000:100:Alice:/home/alice:/run/current-system/sw/bin/bash
bob:x:1001:100:Bob:/home/bob:/bin/sh
carol:x:1002:998:SSH privilege separation user:/var/empty:/run/current-system/sw/bin/nologin
"
    );
    // carol's group does not get 999: sshd had it, and ids are never reused.
    assert_eq!(
        r.read("/etc/group"),
        "root:x:0:\nwheel:x:1:alice,bob\nusers:x:100:\nshadow:x:318:\ncarol:x:998:\n"
    );
    assert_eq!(
        shadow(&r),
        "root:!:1::::::\nalice:HASH:1::::::\nbob:HASH:19000:0:99999:7:::\ncarol:!:1::::::\n"
    );
    assert!(plan_is_empty(&r, &g1));

    // gen2: sshd comes back and revives its old ids.
    let g2 = spec(&GEN0.replace(
        r#"{"name": "sshd", "gid": null, "members": []}"#,
        r#"{"name": "sshd", "gid": null, "members": []}, {"name": "carol", "gid": null, "members": []}"#,
    ));
    let out = run(&r, &g2);
    assert!(
        out.messages
            .iter()
            .any(|m| m == "reviving user 'sshd' with UID 999"),
        "{:?}",
        out.messages
    );
    assert!(
        out.messages
            .iter()
            .any(|m| m == "reviving group 'sshd' with GID 999"),
        "{:?}",
        out.messages
    );
    assert!(r
        .read("/etc/passwd")
        .contains("\nbob:x:1001:100:Bob:/home/bob:/bin/sh\n"));
    assert!(r.read("/etc/passwd").contains("\nsshd:x:999:999:"));
    // carol's user is gone (declared before), her group stays declared.
    assert!(!r.read("/etc/passwd").contains("carol"));
    assert!(r.read("/etc/group").contains("carol:x:998:"));
    assert!(plan_is_empty(&r, &g2));
}

#[test]
fn immutable_users_drop_hand_made_accounts_and_force_hashes() {
    let r = FakeRoot::new();
    let json = r#"{"mutableUsers": false, "users": [
        {"name": "alice", "uid": 1000, "group": "users", "home": "/home/alice",
         "shell": "/bin/sh", "hashedPassword": "$6$abc$def"},
        {"name": "dave", "uid": 1001, "group": "users", "home": "/home/dave", "shell": "/bin/sh",
         "password": "plain"}],
      "groups": [{"name": "users", "gid": 100, "members": []}]}"#;
    r.write(
        "/etc/passwd",
        "alice:x:1000:100::/home/alice:/bin/sh\nmallory:x:1500:100::/:/bin/sh\n",
    );
    r.write(
        "/etc/shadow",
        "alice:$6$changed$byhand:19000::::::\nmallory:x:1::::::\n",
    );
    let s = spec(json);
    run(&r, &s);
    assert!(!r.read("/etc/passwd").contains("mallory"));
    let sh = r.read("/etc/shadow");
    assert!(sh.starts_with("alice:$6$abc$def:19000::::::\n"), "{sh}");
    let dave = sh.lines().find(|l| l.starts_with("dave:")).expect("dave");
    assert!(crypt::verify(
        "plain",
        dave.split(':').nth(1).expect("hash")
    ));
    // The plaintext password is not hashed again when it still matches.
    assert!(plan_is_empty(&r, &s));
}

#[test]
fn subordinate_ranges_are_never_reused() {
    let r = FakeRoot::new();
    let mk = |names: &[&str]| {
        let users: Vec<String> = names
            .iter()
            .map(|n| format!(r#"{{"name": "{n}", "group": "users", "home": "/home/{n}", "shell": "/bin/sh", "autoSubUidGidRange": true}}"#))
            .collect();
        spec(&format!(
            r#"{{"mutableUsers": false, "users": [{}], "groups": [{{"name": "users", "gid": 100}}]}}"#,
            users.join(",")
        ))
    };
    run(&r, &mk(&["a", "b"]));
    assert_eq!(r.read("/etc/subuid"), "a:100000:65536\nb:165536:65536\n");
    run(&r, &mk(&["b", "c"]));
    assert_eq!(r.read("/etc/subuid"), "b:165536:65536\nc:231072:65536\n");
    run(&r, &mk(&["a", "b", "c"]));
    assert_eq!(
        r.read("/etc/subuid"),
        "a:100000:65536\nb:165536:65536\nc:231072:65536\n"
    );
}

#[test]
fn bad_inputs_are_named() {
    let e = UsersSpec::from_json(
        Path::new("/nix/store/x-users.json"),
        b"{\"mutableUsers\": tru",
    )
    .expect_err("malformed");
    assert!(matches!(e, SpecError::Json { .. }));
    assert!(e.to_string().contains("/nix/store/x-users.json"), "{e}");

    let e = UsersSpec::from_json(
        Path::new("/u.json"),
        br#"{"mutableUsers": true, "users": [
            {"name": "a", "uid": 1000, "group": "users", "home": "/a"},
            {"name": "b", "uid": 1000, "group": "users", "home": "/b"}], "groups": []}"#,
    )
    .expect_err("duplicate uid");
    let msg = e.to_string();
    assert!(
        msg.contains("users.b.uid") && msg.contains("1000") && msg.contains("\"a\""),
        "{msg}"
    );

    let e = UsersSpec::from_json(
        Path::new("/u.json"),
        br#"{"mutableUsers": true, "users": [
            {"name": "a", "group": "users", "home": "/a", "description": "x:y"}], "groups": []}"#,
    )
    .expect_err("colon");
    assert!(e.to_string().contains("users.a.description"), "{e}");

    // Unknown primary group: a warning and gid 65534, as NixOS does.
    let r = FakeRoot::new();
    let s = spec(
        r#"{"mutableUsers": true, "users": [{"name": "a", "uid": 1000, "group": "nope", "home": "/a", "shell": "/bin/sh"}], "groups": []}"#,
    );
    let out = run(&r, &s);
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("unknown group ‘nope’")),
        "{:?}",
        out.warnings
    );
    assert_eq!(r.read("/etc/passwd"), "a:x:1000:65534::/a:/bin/sh\n");

    // A damaged state file stops the step with a message that names it.
    r.write("/var/lib/nixos/uid-map", "{not json");
    let root = Root::open(r.path()).expect("root");
    let e = users::update_users(&root, &s, false).expect_err("corrupt map");
    assert!(matches!(e, UsersError::State { .. }));
    assert!(e.to_string().contains("/var/lib/nixos/uid-map"), "{e}");
}

#[test]
fn crash_before_commit_point_keeps_old_and_after_it_gives_new() {
    for (stop, expect_new) in [
        (commit::StopAt::AfterTemps, false),
        (commit::StopAt::AfterJournal, true),
    ] {
        let r = FakeRoot::new();
        let s = spec(GEN0);
        run(&r, &s);
        let old_passwd = r.read("/etc/passwd");
        let old_group = r.read("/etc/group");
        let g1 = spec(
            &GEN0
                .replace(r#""description": "Alice""#, r#""description": "Alice A""#)
                .replace(
                    r#"{"name": "users", "gid": 100, "members": []}"#,
                    r#"{"name": "users", "gid": 100, "members": ["alice"]}"#,
                ),
        );
        let root = Root::open(r.path()).expect("root");
        let st = users::observe(&root, &g1).expect("observe");
        let p = users::plan(
            &g1,
            &st,
            false,
            &mut || Ok("saltsaltsaltsalt".into()),
            &mut users::FilesOnly,
        )
        .expect("plan");
        commit::commit(&root, &st.files, &p.writes, stop).expect("commit");
        // The "crash": nothing renamed yet.
        assert_eq!(r.read("/etc/passwd"), old_passwd);
        commit::recover(&root).expect("recover");
        if expect_new {
            assert!(r.read("/etc/passwd").contains(":Alice A:"));
            assert!(r.read("/etc/group").contains("users:x:100:alice"));
        } else {
            assert_eq!(r.read("/etc/passwd"), old_passwd);
            assert_eq!(r.read("/etc/group"), old_group);
        }
        assert!(!r.host("/etc/.stagehand-users.commit").exists());
        assert!(!r.host("/etc/.passwd.stagehand-tmp").exists());
    }
}

/// Rewrite `file` under `/etc/.pwd.lock` the way shadow-utils' commonio does (`passwd`,
/// `usermod`, `useradd`): the new contents go to `FILE+`, which is renamed over the file,
/// keeping its mode.
fn edit_like_shadow_utils(r: &FakeRoot, file: &str, edit: impl FnOnce(String) -> String) {
    let root = Root::open(r.path()).expect("root");
    let _lock = users::lock(&root).expect("lckpwdf");
    let path = r.host(file);
    let mode = std::fs::metadata(&path).expect("stat").permissions();
    let plus = r.host(&format!("{file}+"));
    std::fs::write(&plus, edit(r.read(file))).expect("write FILE+");
    std::fs::set_permissions(&plus, mode).expect("chmod");
    std::fs::rename(&plus, &path).expect("rename");
}

/// `usermod -p HASH alice` and `useradd eve`.
fn usermod_and_useradd(r: &FakeRoot) {
    edit_like_shadow_utils(r, "/etc/shadow", |t| {
        t.lines()
            .map(|l| match l.split_once(':') {
                Some(("alice", rest)) => {
                    let rest = rest.split_once(':').map_or("", |(_, r)| r);
                    format!("alice:$6$byhand$edited:{rest}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect::<String>()
            + "eve:!:19000:0:99999:7:::\n"
    });
    edit_like_shadow_utils(r, "/etc/passwd", |t| {
        t + "eve:x:1500:1500::/home/eve:/bin/sh\n"
    });
    edit_like_shadow_utils(r, "/etc/group", |t| t + "eve:x:1500:\n");
}

/// Generation 0 committed, generation 1 (alice renamed, in group users) interrupted
/// after its journal.
fn interrupted_after_the_journal() -> (FakeRoot, UsersSpec) {
    let r = FakeRoot::new();
    run(&r, &spec(GEN0));
    let g1 = spec(
        &GEN0
            .replace(r#""description": "Alice""#, r#""description": "Alice A""#)
            .replace(
                r#"{"name": "users", "gid": 100, "members": []}"#,
                r#"{"name": "users", "gid": 100, "members": ["alice"]}"#,
            ),
    );
    let root = Root::open(r.path()).expect("root");
    let st = users::observe(&root, &g1).expect("observe");
    let p = users::plan(
        &g1,
        &st,
        false,
        &mut || Ok("saltsaltsaltsalt".into()),
        &mut users::FilesOnly,
    )
    .expect("plan");
    commit::commit(&root, &st.files, &p.writes, commit::StopAt::AfterJournal).expect("commit");
    assert!(r.host(commit::JOURNAL).exists());
    (r, g1)
}

fn assert_no_commit_debris(r: &FakeRoot) {
    assert!(!r.host(commit::JOURNAL).exists(), "journal left behind");
    for p in users::SET {
        let path = r.host(p);
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let tmp = path.with_file_name(format!(".{name}.stagehand-tmp"));
        assert!(!tmp.exists(), "{} left behind", tmp.display());
    }
}

#[test]
fn edits_made_after_a_crash_are_not_reverted_by_the_stale_journal() {
    // Issue #15 item 1: the run is killed after its commit point; an admin then changes
    // alice's password and adds eve (both under /etc/.pwd.lock); the next run must not
    // roll the stale journal forward over those edits.
    let (r, g1) = interrupted_after_the_journal();
    usermod_and_useradd(&r);
    let out = run(&r, &g1);
    let shadow = r.read("/etc/shadow");
    assert!(shadow.contains("alice:$6$byhand$edited:"), "{shadow}");
    assert!(shadow.contains("eve:!:"), "{shadow}");
    assert!(r.read("/etc/passwd").contains("eve:x:1500:1500:"));
    assert!(r.read("/etc/group").contains("eve:x:1500:"));
    // Planned afresh: generation 1's own changes are there too.
    assert!(r.read("/etc/passwd").contains(":Alice A:"));
    assert!(r.read("/etc/group").contains("users:x:100:alice"));
    let journal = r.host(commit::JOURNAL);
    assert!(
        out.warnings.iter().any(|w| w.contains("discarded")
            && w.contains(&journal.display().to_string())
            && w.contains("/etc/")),
        "{:?}",
        out.warnings
    );
    assert_no_commit_debris(&r);
}

#[test]
fn an_edit_to_a_file_the_commit_had_already_renamed_also_stops_the_roll_forward() {
    // Killed half-way through the renames: /etc/group is new, /etc/passwd not yet. Then
    // `useradd eve` rewrites both.
    let (r, g1) = interrupted_after_the_journal();
    std::fs::rename(r.host("/etc/.group.stagehand-tmp"), r.host("/etc/group")).expect("rename");
    usermod_and_useradd(&r);
    let root = Root::open(r.path()).expect("root");
    let warnings = commit::recover(&root).expect("recover");
    assert!(
        warnings.iter().any(|w| w.contains("discarded")),
        "{warnings:?}"
    );
    assert!(r.read("/etc/passwd").contains("eve:x:1500:"));
    assert!(!r.read("/etc/passwd").contains(":Alice A:"));
    assert_no_commit_debris(&r);
    run(&r, &g1);
    assert!(r.read("/etc/passwd").contains("eve:x:1500:"));
    assert!(r.read("/etc/shadow").contains("alice:$6$byhand$edited:"));
}

#[test]
fn an_untouched_journal_is_rolled_forward_also_half_way() {
    for renamed_first in [false, true] {
        let (r, _) = interrupted_after_the_journal();
        if renamed_first {
            std::fs::rename(r.host("/etc/.group.stagehand-tmp"), r.host("/etc/group"))
                .expect("rename");
        }
        let root = Root::open(r.path()).expect("root");
        let warnings = commit::recover(&root).expect("recover");
        assert!(
            warnings.iter().any(|w| w.contains("completed")),
            "{warnings:?}"
        );
        assert!(r.read("/etc/passwd").contains(":Alice A:"));
        assert!(r.read("/etc/group").contains("users:x:100:alice"));
        assert_no_commit_debris(&r);
    }
}

#[test]
fn a_journal_that_cannot_be_checked_is_discarded() {
    // The first journal format listed paths only; a damaged one lists anything.
    for text in [
        "/etc/group\n/etc/passwd\n",
        "stagehand-users-commit 2\n/etc/passwd - -\n",
    ] {
        let (r, _) = interrupted_after_the_journal();
        let old_passwd = r.read("/etc/passwd");
        std::fs::write(r.host(commit::JOURNAL), text).expect("write journal");
        let root = Root::open(r.path()).expect("root");
        let warnings = commit::recover(&root).expect("recover");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("discarded") && w.contains(".stagehand-users.commit")),
            "{warnings:?}"
        );
        assert_eq!(r.read("/etc/passwd"), old_passwd);
        assert_no_commit_debris(&r);
    }
}

#[test]
fn hashed_password_file_and_userborn_schema() {
    let r = FakeRoot::new();
    r.write("/run/secrets/alice", "$6$fromfile$hash\n");
    let s = spec(
        r#"{"mutableUsers": false, "users": [
        {"name": "alice", "uid": 1000, "group": "users", "home": "/home/alice", "shell": "/bin/sh",
         "hashedPasswordFile": "/run/secrets/alice"},
        {"name": "bob", "uid": 1001, "group": "users", "home": "/home/bob", "shell": "/bin/sh",
         "hashedPasswordFile": "/run/secrets/missing"}],
      "groups": [{"name": "users", "gid": 100}]}"#,
    );
    let out = run(&r, &s);
    assert!(r
        .read("/etc/shadow")
        .starts_with("alice:$6$fromfile$hash:1::::::\nbob:!:1"));
    assert!(out
        .warnings
        .iter()
        .any(|w| w.contains("/run/secrets/missing")));
    // The file is read again on every run.
    r.write("/run/secrets/alice", "$6$rotated$hash\n");
    run(&r, &s);
    assert!(r.read("/etc/shadow").starts_with("alice:$6$rotated$hash:"));

    let r = FakeRoot::new();
    let ub = spec(
        r#"{"users": [{"isNormal": true, "name": "eve", "home": "/home/eve", "shell": "/bin/sh"},
                                {"name": "svc", "description": "a service"}],
                      "groups": [{"name": "wheel", "gid": 1, "members": ["eve"]}]}"#,
    );
    assert_eq!(ub.flavor, users::Flavor::Userborn);
    run(&r, &ub);
    assert_eq!(
        r.read("/etc/passwd"),
        "svc:x:999:998:a service:/var/empty:/run/current-system/sw/bin/nologin\neve:x:1000:999::/home/eve:/bin/sh\n"
    );
    assert_eq!(
        r.read("/etc/group"),
        "wheel:x:1:eve\nsvc:x:998:\neve:x:999:\n"
    );
}

#[test]
fn dry_run_writes_nothing() {
    let r = FakeRoot::new();
    let root = Root::open(r.path()).expect("root");
    let out = users::update_users(&root, &spec(GEN0), true).expect("dry");
    assert!(out.changed);
    assert!(!r.host("/etc").exists() && !r.host("/var").exists() && !r.host("/home").exists());
}

#[test]
fn perl_written_maps_with_string_ids_revive() {
    let r = FakeRoot::new();
    r.write("/var/lib/nixos/uid-map", r#"{"alice":"1005"}"#);
    let s = spec(
        r#"{"mutableUsers": true, "users": [{"name": "alice", "group": "users", "home": "/h", "shell": "/bin/sh"}],
                    "groups": [{"name": "users", "gid": 100}]}"#,
    );
    let out = run(&r, &s);
    assert!(
        out.messages
            .iter()
            .any(|m| m == "reviving user 'alice' with UID 1005"),
        "{:?}",
        out.messages
    );
    assert_eq!(r.read("/var/lib/nixos/uid-map"), r#"{"alice":1005}"#);
}

#[test]
fn waits_for_the_pwd_lock_held_by_another_process() {
    let r = FakeRoot::new();
    r.write("/etc/.pwd.lock", "");
    let lock = r.host("/etc/.pwd.lock");
    let script = format!(
        "import fcntl,time,sys\nf=open({:?},'w')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\ntime.sleep(0.7)\n",
        lock.to_str().expect("utf8")
    );
    let mut child = std::process::Command::new(stagehand_testkit::host::require_tool("python3"))
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start python3 to hold the lock");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line.trim(), "locked");
    let t = std::time::Instant::now();
    run(&r, &spec(GEN0));
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    child.wait().expect("wait");
    assert!(r.read("/etc/passwd").contains("alice"));
}

#[test]
fn hand_made_lines_with_a_non_numeric_id_are_written_back_unchanged() {
    // A line we do not manage keeps its text, even an id field that is not a number
    // (update-users-groups.pl copies such lines as they are).
    let r = FakeRoot::new();
    let g0 = spec(GEN0);
    run(&r, &g0);
    let mut passwd = r.read("/etc/passwd");
    passwd.push_str("odd:x:abc:100:Odd:/home/odd:/bin/sh\n");
    std::fs::write(r.host("/etc/passwd"), passwd).expect("write");
    let mut group = r.read("/etc/group");
    group.push_str("oddgrp:x:xyz:\n");
    std::fs::write(r.host("/etc/group"), group).expect("write");
    // A change elsewhere makes the run rewrite both files.
    let gen1 = GEN0.replace("\"Alice\"", "\"Alice A.\"");
    let out = run(&r, &spec(&gen1));
    assert!(out.changed);
    assert!(
        r.read("/etc/passwd")
            .contains("odd:x:abc:100:Odd:/home/odd:/bin/sh\n"),
        "{}",
        r.read("/etc/passwd")
    );
    assert!(r.read("/etc/passwd").contains("Alice A."));
    assert!(
        r.read("/etc/group").contains("oddgrp:x:xyz:\n"),
        "{}",
        r.read("/etc/group")
    );
}

#[test]
fn home_directories_behind_symlinks_nested_or_blocked() {
    let r = FakeRoot::new();
    // /home is a symlink into /data (resolved inside the root); /home/c is a symlink to
    // an existing directory; /home/d exists with the wrong mode; /nohome is a file.
    std::fs::create_dir_all(r.host("/data/home")).expect("mkdir");
    std::fs::create_dir_all(r.host("/data/c-real")).expect("mkdir");
    std::fs::create_dir_all(r.host("/data/home/d")).expect("mkdir");
    std::fs::set_permissions(
        r.host("/data/home/d"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    r.symlink("/home", "/data/home");
    r.symlink("/data/home/c", "/data/c-real");
    r.write("/nohome", "a file\n");
    let user = |name: &str, uid: u32, home: &str, mode: &str| {
        format!(
            r#"{{"name": "{name}", "uid": {uid}, "group": "users", "home": "{home}",
                "homeMode": "{mode}", "createHome": true, "shell": "/bin/sh"}}"#
        )
    };
    let s = spec(&format!(
        r#"{{"mutableUsers": false, "users": [{}, {}, {}, {}, {}],
            "groups": [{{"name": "users", "gid": 100, "members": []}}]}}"#,
        user("a", 1000, "/home/a", "750"),
        user("b", 1001, "/srv/deep/b", "700"),
        user("c", 1002, "/home/c", "700"),
        user("d", 1003, "/home/d", "700"),
        user("e", 1004, "/nohome/e", "700"),
    ));
    let mode = |p: &str| {
        std::fs::metadata(r.host(p))
            .expect("home exists")
            .permissions()
            .mode()
            & 0o7777
    };
    for _ in 0..2 {
        let out = run(&r, &s);
        assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
        assert!(out.errors[0].contains("/nohome/e"), "{:?}", out.errors);
        assert_eq!(mode("/data/home/a"), 0o750);
        assert_eq!(mode("/srv/deep"), 0o755);
        assert_eq!(mode("/srv/deep/b"), 0o700);
        assert_eq!(mode("/data/c-real"), 0o700);
        assert!(std::fs::symlink_metadata(r.host("/data/home/c"))
            .expect("link")
            .file_type()
            .is_symlink());
        assert_eq!(mode("/data/home/d"), 0o700);
        if is_root() {
            let owner = |p: &str| {
                let m = std::fs::metadata(r.host(p)).expect("home");
                (m.uid(), m.gid())
            };
            assert_eq!(owner("/data/home/a"), (1000, 100));
            assert_eq!(owner("/srv/deep/b"), (1001, 100));
            assert_eq!(owner("/data/c-real"), (1002, 100));
            assert_eq!(owner("/data/home/d"), (1003, 100));
        }
    }
}

#[test]
fn a_declared_id_change_is_not_applied_and_says_so() {
    // update-users-groups.pl keeps the id an account already has and warns; so do we.
    let r = FakeRoot::new();
    run(&r, &spec(GEN0));
    assert!(r.read("/etc/passwd").contains("alice:x:1000:"));
    let gen1 = GEN0
        .replace(
            r#""name": "alice", "uid": null"#,
            r#""name": "alice", "uid": 1234"#,
        )
        .replace(
            r#""name": "users", "gid": 100"#,
            r#""name": "users", "gid": 101"#,
        );
    let root = Root::open(r.path()).expect("root");
    let dry = users::update_users(&root, &spec(&gen1), true).expect("dry run");
    assert!(
        dry.warnings.iter().any(
            |w| w == "would not apply UID change of user ‘alice’ (1000 -> 1234) in /etc/passwd"
        ),
        "{:?}",
        dry.warnings
    );
    let out = run(&r, &spec(&gen1));
    for want in [
        "not applying UID change of user ‘alice’ (1000 -> 1234) in /etc/passwd",
        "not applying GID change of group ‘users’ (100 -> 101) in /etc/group",
    ] {
        assert!(out.warnings.iter().any(|w| w == want), "{:?}", out.warnings);
    }
    assert!(r.read("/etc/passwd").contains("alice:x:1000:100:"));
    assert!(r.read("/etc/group").contains("users:x:100:"));
}

/// GEN0's new ids (alice, a normal user; sshd, a system user and its group) when other
/// sources hold some of the candidates.
fn new_ids(r: &FakeRoot) -> (String, String, String) {
    let line = |file: &str, name: &str| {
        r.read(file)
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .and_then(|l| l.split(':').nth(2).map(str::to_owned))
            .unwrap_or_default()
    };
    (
        line("/etc/passwd", "alice"),
        line("/etc/passwd", "sshd"),
        line("/etc/group", "sshd"),
    )
}

#[test]
fn new_ids_skip_the_ids_extrausers_gives_out() {
    // Issue #15 item 9: with `passwd: files extrausers`, an account libnss_extrausers has
    // at uid 1000 must not get a twin. Its files are read under any root.
    let r = FakeRoot::new();
    r.write(
        "/etc/nsswitch.conf",
        "passwd: files extrausers\ngroup: files [NOTFOUND=return] extrausers\n",
    );
    r.write(
        "/var/lib/extrausers/passwd",
        "ext:x:1000:1000::/home/ext:/bin/sh\nsysext:x:999:999::/:/bin/false\n",
    );
    r.write("/var/lib/extrausers/group", "ext:x:1000:\nsysgrp:x:999:\n");
    let out = run(&r, &spec(GEN0));
    assert_eq!(
        new_ids(&r),
        ("1001".to_owned(), "998".to_owned(), "998".to_owned())
    );
    assert!(
        out.messages
            .iter()
            .any(|m| m.contains("UID 1000 is skipped") && m.contains("extrausers")),
        "{:?}",
        out.messages
    );
    // The same root without extrausers in nsswitch.conf: its files do not count.
    let plain = FakeRoot::new();
    plain.write(
        "/var/lib/extrausers/passwd",
        "ext:x:1000:1000::/home/ext:/bin/sh\n",
    );
    run(&plain, &spec(GEN0));
    assert_eq!(new_ids(&plain).0, "1000");
}

/// A stand-in for `getent` that knows passwd 1000 and group 999 (and logs each question),
/// or that fails with `fail_with`.
fn fake_getent(dir: &Path, fail_with: Option<u32>) -> std::path::PathBuf {
    let bash = stagehand_testkit::host::require_tool("bash");
    let log = dir.join("asked");
    let body = match fail_with {
        Some(code) => format!("exit {code}"),
        None => "case \"$1 $2\" in 'passwd 1000'|'group 999') echo found; exit 0;; esac; exit 2"
            .to_owned(),
    };
    let script = dir.join("getent");
    std::fs::write(
        &script,
        format!(
            "#!{}\necho \"$1 $2\" >> {:?}\n{body}\n",
            bash.display(),
            log.display()
        ),
    )
    .expect("write getent");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

#[test]
fn new_ids_skip_what_getent_resolves_for_ldap_and_sssd() {
    let r = FakeRoot::new();
    r.write(
        "/etc/nsswitch.conf",
        "passwd: files ldap\ngroup: files sss\n",
    );
    let bin = tempfile::tempdir().expect("tempdir");
    let getent = fake_getent(bin.path(), None);
    let root = Root::open(r.path()).expect("root");
    let mut others = users::OtherIds::with_getent(&root, Some(getent));
    let out = users::update_users_with(&root, &spec(GEN0), false, &mut others).expect("users");
    assert!(
        !out.warnings.iter().any(|w| w.contains("getent")),
        "{:?}",
        out.warnings
    );
    assert!(
        out.messages
            .iter()
            .any(|m| m == "UID 1000 is skipped: the system's NSS (ldap) already has it"),
        "{:?}",
        out.messages
    );
    // passwd 1000 and group 999 are LDAP's/sssd's; passwd 999 is free.
    assert_eq!(
        new_ids(&r),
        ("1001".to_owned(), "999".to_owned(), "998".to_owned())
    );
    let asked = std::fs::read_to_string(bin.path().join("asked")).expect("getent was asked");
    for q in [
        "passwd 1000",
        "passwd 1001",
        "group 999",
        "group 998",
        "passwd 999",
    ] {
        assert!(asked.lines().any(|l| l == q), "{q} not asked:\n{asked}");
    }
    // Existing accounts are not asked about again: nothing new to allocate, no question.
    std::fs::remove_file(bin.path().join("asked")).expect("rm");
    let mut others = users::OtherIds::with_getent(&root, Some(fake_getent(bin.path(), None)));
    users::update_users_with(&root, &spec(GEN0), false, &mut others).expect("users");
    assert!(!bin.path().join("asked").exists());
}

#[test]
fn a_getent_that_fails_is_reported_and_asked_no_more() {
    let r = FakeRoot::new();
    r.write("/etc/nsswitch.conf", "passwd: files ldap\ngroup: files\n");
    let bin = tempfile::tempdir().expect("tempdir");
    let getent = fake_getent(bin.path(), Some(1));
    let root = Root::open(r.path()).expect("root");
    let mut others = users::OtherIds::with_getent(&root, Some(getent));
    let out = users::update_users_with(&root, &spec(GEN0), false, &mut others).expect("users");
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("cannot ask ldap") && w.contains("passwd")),
        "{:?}",
        out.warnings
    );
    assert_eq!(new_ids(&r).0, "1000");
    let asked = std::fs::read_to_string(bin.path().join("asked")).expect("asked");
    assert_eq!(asked.lines().count(), 1, "{asked}");
}

#[test]
fn a_remembered_id_that_another_source_now_gives_out_is_not_revived() {
    // update-users-groups.pl would revive alice's old 1000 without asking; it belongs to
    // an extrausers account now, so alice gets a fresh id.
    let r = FakeRoot::new();
    r.write("/var/lib/nixos/uid-map", r#"{"alice":1000}"#);
    r.write("/etc/nsswitch.conf", "passwd: files extrausers\n");
    r.write(
        "/var/lib/extrausers/passwd",
        "ext:x:1000:1000::/home/ext:/bin/sh\n",
    );
    let out = run(&r, &spec(GEN0));
    assert_eq!(new_ids(&r).0, "1001");
    assert!(
        !out.messages
            .iter()
            .any(|m| m.contains("reviving user 'alice'")),
        "{:?}",
        out.messages
    );
}
