//! The bad-input matrix for activation: damaged compiled plans and
//! manifests, users specs and account files, etc trees, `boot.json`, EFI variables, boot
//! entries and a full or missing ESP. Every case asserts what the message says (the file or
//! field, the problem and what fixes it) and what is left behind (nothing half-written).
//! The etc/users cases of issue #3 live in etc.rs and users.rs; the ones here call the same
//! API for the cases those do not cover.

use std::path::Path;

use stagehand_activation::compiled;
use stagehand_activation::etc::{self, EtcIssue, EtcOptions};
use stagehand_activation::users::{self, UsersSpec};
use stagehand_activation::{activate, Action, ActivateOptions};
use stagehand_common::rootfs::Root;
use stagehand_testkit::FakeRoot;

const TOP: &str = "/nix/store/abc-nixos-system-demo";

fn opts(r: &FakeRoot) -> ActivateOptions {
    ActivateOptions {
        root: r.path().to_path_buf(),
        dry_run: false,
        action: Action::Boot,
    }
}

fn assert_says(case: &str, msg: &str, words: &[&str]) {
    for w in words {
        assert!(msg.contains(w), "{case}: {w:?} missing from: {msg}");
    }
}

/// A generation with an etc tree, a users spec and the given `activation.json`.
fn generation(r: &FakeRoot, manifest: Option<&str>) {
    let etc = r.etc_tree("abc", &[("hosts", "127.0.0.1 localhost\n", None)]);
    r.write(
        "/nix/store/abc-users-groups.json",
        r#"{"mutableUsers": true, "users": [{"name": "root", "uid": 0, "group": "root",
            "home": "/root", "shell": "/bin/sh", "hashedPassword": "!"}],
            "groups": [{"name": "root", "gid": 0, "members": []}]}"#,
    );
    let default = format!(
        r#"{{"version": 1, "etc": "{etc}", "usersGroups": "/nix/store/abc-users-groups.json",
            "snippets": []}}"#
    );
    r.write(
        &format!("{TOP}/activation.json"),
        manifest.unwrap_or(&default),
    );
}

// ---- the compiled activation plan and the manifest -------------------------------------------

type Damage = fn(&mut Vec<u8>);

#[test]
fn damaged_compiled_plans_are_refused_by_name_and_nothing_is_activated() {
    let cases: &[(&str, Damage, &[&str])] = &[
        ("truncated", |b| b.truncate(b.len() / 2), &["truncated"]),
        (
            "empty",
            |b| b.clear(),
            &["truncated", "expected 20 bytes, found 0"],
        ),
        (
            "payload bit flip",
            |b| {
                let n = b.len() - 2;
                b[n] ^= 4;
            },
            &["checksum mismatch"],
        ),
        (
            "wrong version",
            |b| b[8] = 9,
            &["format version 9", "matching Stagehand"],
        ),
        (
            "stage-1 config in its place",
            |b| b[..8].copy_from_slice(b"SHSTAGE1"),
            &["wrong magic"],
        ),
        (
            "another payload behind a good crc",
            |b| {
                *b = stagehand_common::envelope::encode(
                    compiled::PLAN_KIND,
                    &("not", 1u8, "a plan"),
                )
                .expect("encode");
            },
            &["payload does not decode"],
        ),
    ];
    for (case, damage, words) in cases {
        let r = FakeRoot::new();
        generation(&r, None);
        let root = Root::open(r.path()).expect("root");
        compiled::compile(&root, Path::new(TOP)).expect("compile");
        let p = r.host(&format!("{TOP}/activation.plan"));
        let mut bytes = std::fs::read(&p).expect("read");
        damage(&mut bytes);
        std::fs::write(&p, &bytes).expect("write");
        let e = activate(Path::new(TOP), &opts(&r)).expect_err(case);
        let msg = e.to_string();
        assert_says(
            case,
            &msg,
            &[
                &p.display().to_string(),
                "activation plan",
                "stagehand compile",
            ],
        );
        assert_says(case, &msg, words);
        // Refused before any step: no /etc, no current-system.
        assert!(!r.host("/etc/hosts").exists(), "{case}: /etc was touched");
        assert!(!r.host("/run/current-system").exists(), "{case}");
    }
}

#[test]
fn bad_manifests_are_refused_by_name() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "not JSON",
            "{\"version\": 1,",
            &["not a valid activation manifest", "rebuild the generation"],
        ),
        (
            "wrong type",
            "{\"version\": \"one\"}",
            &["not a valid activation manifest"],
        ),
        (
            "version from the future",
            "{\"version\": 7}",
            &["manifest version 7", "matching Stagehand"],
        ),
        (
            "snippet cycle",
            r#"{"version": 1, "snippets": [{"name": "a", "text": "true", "deps": ["b"]},
                {"name": "b", "text": "true", "deps": ["a"]}]}"#,
            &["cycle", "a -> b", "fix their deps"],
        ),
    ];
    for (case, json, words) in cases {
        let r = FakeRoot::new();
        generation(&r, Some(json));
        let e = activate(Path::new(TOP), &opts(&r)).expect_err(case);
        let msg = e.to_string();
        assert_says(case, &msg, &[&format!("{TOP}/activation.json")]);
        assert_says(case, &msg, words);
        assert!(!r.host("/run/current-system").exists(), "{case}");
    }
}

#[test]
fn init_pointing_at_a_missing_or_looping_generation_is_named() {
    let r = FakeRoot::new();
    let e = activate(Path::new("/nix/store/gone-nixos-system"), &opts(&r)).expect_err("missing");
    assert_says(
        "missing",
        &e.to_string(),
        &[
            "gone-nixos-system",
            "cannot resolve the generation",
            "init=",
        ],
    );
    r.symlink("/nix/var/nix/profiles/system-1-link", "system-2-link");
    r.symlink("/nix/var/nix/profiles/system-2-link", "system-1-link");
    let e =
        activate(Path::new("/nix/var/nix/profiles/system-1-link"), &opts(&r)).expect_err("loop");
    assert_says(
        "loop",
        &e.to_string(),
        &["system-1-link", "cannot resolve the generation"],
    );
}

// ---- users -----------------------------------------------------------------------------------

#[test]
fn bad_users_specs_name_the_field_and_the_fix() {
    let u = |name: &str, extra: &str| {
        format!(r#"{{"name": "{name}", "group": "users", "home": "/home/{name}"{extra}}}"#)
    };
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("truncated JSON", "{\"mutableUsers\": true, \"users\": [".into(), &["not a valid users/groups spec", "users-groups.nix"]),
        ("users not a list", "{\"mutableUsers\": true, \"users\": 3}".into(), &["not a valid users/groups spec"]),
        (
            "duplicate gid",
            r#"{"mutableUsers": true, "users": [], "groups": [
                {"name": "a", "gid": 500, "members": []}, {"name": "b", "gid": 500, "members": []}]}"#.into(),
            &["groups.b.gid", "500", "\"a\""],
        ),
        (
            "duplicate user name",
            format!(r#"{{"mutableUsers": true, "users": [{}, {}], "groups": []}}"#, u("x", ""), u("x", "")),
            &["users.x", "x"],
        ),
        (
            "name with a colon",
            format!(r#"{{"mutableUsers": true, "users": [{}], "groups": []}}"#, u("a:b", "")),
            &["a:b"],
        ),
        (
            "home with a newline",
            r#"{"mutableUsers": true, "users": [{"name": "n", "group": "users", "home": "/x\ny"}], "groups": []}"#.into(),
            &["users.n.home"],
        ),
    ];
    for (case, json, words) in &cases {
        let path = Path::new("/nix/store/x-users-groups.json");
        let e = UsersSpec::from_json(path, json.as_bytes()).expect_err(case);
        let msg = e.to_string();
        assert_says(case, &msg, &["/nix/store/x-users-groups.json"]);
        assert_says(case, &msg, words);
    }
}

#[test]
fn garbage_in_the_account_files_is_kept_and_the_declared_users_still_made() {
    let r = FakeRoot::new();
    // Lines a hand edit or a crash may leave: too few fields, non-numeric ids, binary junk.
    r.write(
        "/etc/passwd",
        "root:x:0:0::/root:/bin/sh\nbroken line\nbob:x:notanumber:100::/home/bob:/bin/sh\n\u{1}\u{7f}::::\n",
    );
    r.write("/etc/group", "root:x:0:\n::::\nusers:x:100:\n");
    r.write("/etc/shadow", "root:!:1::::::\nhalf");
    let s = UsersSpec::from_json(
        Path::new("/u.json"),
        br#"{"mutableUsers": true, "users": [
            {"name": "root", "uid": 0, "group": "root", "home": "/root", "shell": "/bin/sh", "hashedPassword": "!"},
            {"name": "alice", "uid": 1000, "group": "users", "home": "/home/alice", "shell": "/bin/sh"}],
            "groups": [{"name": "root", "gid": 0, "members": []}, {"name": "users", "gid": 100, "members": []}]}"#,
    )
    .expect("spec");
    let root = Root::open(r.path()).expect("root");
    users::update_users(&root, &s, false).expect("users");
    let passwd = r.read("/etc/passwd");
    assert!(
        passwd.contains("alice:x:1000:100::/home/alice:/bin/sh"),
        "{passwd}"
    );
    assert!(passwd.contains("root:x:0:0::/root:/bin/sh\n"), "{passwd}");
    // Lines that are not accounts we know are kept (mutableUsers), not dropped.
    assert!(
        passwd.contains("broken line") && passwd.contains("bob:x:"),
        "{passwd}"
    );
}

// ---- /etc ------------------------------------------------------------------------------------

#[test]
fn symlink_loops_in_the_etc_tree_do_not_hang_or_escape() {
    let r = FakeRoot::new();
    let tree = r.etc_tree("loop", &[("ok", "fine", None)]);
    // A directory link pointing at itself and two links pointing at each other.
    r.symlink(&format!("{tree}/selfdir"), &format!("{tree}/selfdir"));
    r.symlink(&format!("{tree}/a"), &format!("{tree}/b"));
    r.symlink(&format!("{tree}/b"), &format!("{tree}/a"));
    let root = Root::open(r.path()).expect("root");
    let t = etc::list_tree(&root, Path::new(&tree)).expect("a loop is an entry, not an error");
    let out = etc::setup_etc(&root, &t, EtcOptions::default(), false).expect("etc");
    assert_eq!(r.read("/etc/ok"), "fine");
    // The looping links are installed as links (what NixOS does), never followed.
    for name in ["selfdir", "a", "b"] {
        let md = std::fs::symlink_metadata(r.host(&format!("/etc/{name}"))).expect(name);
        assert!(md.file_type().is_symlink(), "{name}");
    }
    assert!(out.issues.is_empty(), "{:?}", out.issues);
}

#[test]
fn missing_etc_tree_and_unusable_sidecars_are_named() {
    let r = FakeRoot::new();
    let root = Root::open(r.path()).expect("root");
    let e = etc::list_tree(&root, Path::new("/nix/store/gone-etc/etc")).expect_err("missing");
    assert_says(
        "missing tree",
        &e.to_string(),
        &["gone-etc/etc", "nix-store --verify-path"],
    );

    // A `.mode` sidecar whose `.uid` is missing, and one that is a directory.
    let tree = r.etc_tree(
        "side",
        &[
            ("good", "y", None),
            ("nouid", "x", None),
            ("dirmode", "z", None),
        ],
    );
    r.write(&format!("{tree}/nouid.mode"), "0644\n");
    r.write(&format!("{tree}/nouid.gid"), "+0\n");
    std::fs::create_dir_all(r.host(&format!("{tree}/dirmode.mode"))).expect("mkdir");
    r.write(&format!("{tree}/dirmode.uid"), "+0\n");
    r.write(&format!("{tree}/dirmode.gid"), "+0\n");
    let root = Root::open(r.path()).expect("root");
    let t = etc::list_tree(&root, Path::new(&tree)).expect("tree");
    let out = etc::setup_etc(&root, &t, EtcOptions::default(), false).expect("etc");
    let text: Vec<String> = out.issues.iter().map(|i| i.to_string()).collect();
    assert!(
        out.issues.iter().any(
            |i| matches!(i, EtcIssue::MissingSidecar { sidecar } if sidecar.ends_with("nouid.uid"))
        ),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("dirmode.mode") && t.contains("rebuild the etc tree")),
        "{text:?}"
    );
    assert_eq!(r.read("/etc/good"), "y");
}

#[test]
fn etc_entry_names_that_would_leave_etc_are_not_paths() {
    for rel in [
        "..",
        "../shadow",
        "a/../../x",
        "/abs",
        "a//b",
        "./a",
        "a/.",
        "",
        "a\0b",
    ] {
        assert!(!etc::is_safe_rel(rel), "{rel:?} accepted");
    }
    for rel in ["hosts", "ssh/sshd_config", "..hidden", "a..b/c"] {
        assert!(etc::is_safe_rel(rel), "{rel:?} refused");
    }
}
