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

/// Issue #15 item 2: an empty or foreign document used to read as a spec with no accounts
/// (exit 0, /etc/group emptied, every account locked). Each is refused, naming the file,
/// the missing key and what to pass instead, and activation leaves the accounts alone.
#[test]
fn empty_and_foreign_users_specs_are_refused_not_applied() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "empty array",
            "[]",
            &[
                "not a users/groups spec",
                "not a JSON object",
                "mutableUsers, users and groups",
            ],
        ),
        ("null", "null", &["not a JSON object"]),
        ("a string", r#""users""#, &["not a JSON object"]),
        (
            "empty object",
            "{}",
            &["empty object", "key users is missing"],
        ),
        (
            "foreign object",
            r#"{"hostname": "x"}"#,
            &["key users is missing", "\"hostname\""],
        ),
        (
            "userborn, no users",
            r#"{"users": []}"#,
            &["users, groups", "no user and no group", "root group"],
        ),
        (
            "userborn, nothing",
            r#"{"users": [], "groups": []}"#,
            &["no user and no group"],
        ),
        (
            "NixOS, nothing",
            r#"{"mutableUsers": false, "users": [], "groups": []}"#,
            &["no user and no group", "lock or remove every account"],
        ),
        (
            "NixOS, no users key",
            r#"{"mutableUsers": true, "groups": []}"#,
            &["missing field `users`", "users-groups.nix"],
        ),
        (
            "NixOS, no groups key",
            r#"{"mutableUsers": true, "users": []}"#,
            &["missing field `groups`"],
        ),
        (
            "NixOS, groups not a list",
            r#"{"mutableUsers": true, "users": [], "groups": {}}"#,
            &["groups: invalid type: map"],
        ),
    ];
    for (case, json, words) in cases {
        let path = Path::new("/nix/store/x-users-groups.json");
        let e = UsersSpec::from_json(path, json.as_bytes()).expect_err(case);
        let msg = e.to_string();
        assert_says(case, &msg, &["/nix/store/x-users-groups.json"]);
        assert_says(case, &msg, words);
    }

    // End to end: a generation whose spec is `{}` fails and leaves the accounts as they were.
    let r = FakeRoot::new();
    generation(&r, None);
    let passwd = "root:x:0:0::/root:/bin/sh\nalice:x:1000:100::/home/alice:/bin/sh\n";
    let group = "root:x:0:\nusers:x:100:alice\n";
    let shadow = "root:$6$a$b:1::::::\nalice:$6$c$d:1::::::\n";
    r.write("/etc/passwd", passwd);
    r.write("/etc/group", group);
    r.write("/etc/shadow", shadow);
    for json in ["[]", "{}", r#"{"users": []}"#] {
        r.write("/nix/store/abc-users-groups.json", json);
        let e = activate(Path::new(TOP), &opts(&r)).expect_err(json);
        assert_says(
            json,
            &format!("{e:#}"),
            &["/nix/store/abc-users-groups.json"],
        );
        assert_eq!(r.read("/etc/passwd"), passwd, "{json}");
        assert_eq!(r.read("/etc/group"), group, "{json}");
        assert_eq!(r.read("/etc/shadow"), shadow, "{json}");
    }
}

/// Issue #15 item 3: `"mutableUser": true` (a typo) used to switch silently to userborn's
/// schema (a normal user got a system uid and no home), and misspelt keys of users and
/// groups were dropped. Every unknown key is an error naming it and where it is.
#[test]
fn misspelt_keys_are_named_with_their_position() {
    let user = |name: &str, extra: &str| {
        format!(
            r#"{{"name": "{name}", "group": "users", "home": "/home/{name}", "shell": "/bin/sh"{extra}}}"#
        )
    };
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "mutableUser",
            format!(r#"{{"mutableUser": true, "users": [{}], "groups": []}}"#, user("u", r#", "isSystemUser": false"#)),
            &["mutableUser: unknown field `mutableUser`", "userborn", "no mutableUsers key"],
        ),
        (
            "users[3].isNormalUsr",
            format!(
                r#"{{"mutableUsers": true, "users": [{}, {}, {}, {}], "groups": []}}"#,
                user("a", ""), user("b", ""), user("c", ""), user("d", r#", "isNormalUsr": true"#)
            ),
            &["users[3].isNormalUsr", "unknown field `isNormalUsr`", "users-groups.nix"],
        ),
        (
            "groups[1].member",
            r#"{"mutableUsers": true, "users": [], "groups": [{"name": "a", "members": []}, {"name": "b", "member": ["x"]}]}"#.into(),
            &["groups[1].member", "unknown field `member`"],
        ),
        (
            "subUidRanges[0].startUID",
            format!(r#"{{"mutableUsers": true, "users": [{}], "groups": []}}"#, user("u", r#", "subUidRanges": [{"startUID": 1, "count": 2}]"#)),
            &["users[0].subUidRanges[0].startUID", "unknown field `startUID`"],
        ),
        (
            "NixOS key in a userborn user",
            r#"{"users": [{"name": "u", "isSystemUser": true}], "groups": []}"#.into(),
            &["users[0].isSystemUser", "unknown field `isSystemUser`", "userborn"],
        ),
        (
            "top-level typo in NixOS's schema",
            r#"{"mutableUsers": true, "users": [], "groups": [], "group": []}"#.into(),
            &["unknown field `group`"],
        ),
        (
            "wrong type with its position",
            format!(r#"{{"mutableUsers": true, "users": [{}, {}], "groups": []}}"#, user("a", ""), user("b", r#", "uid": "1000""#)),
            &["users[1].uid", "invalid type: string"],
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

/// Issue #15 item 8: (uid_t)-1 as an id (chown then changes nothing) and names NixOS's
/// users-groups.nix would refuse (`.`, `..`, control and bidi characters) were accepted.
#[test]
fn ids_and_names_follow_nixos_rules() {
    let spec = |users: &str, groups: &str| {
        format!(r#"{{"mutableUsers": true, "users": [{users}], "groups": [{groups}]}}"#)
    };
    let user = |name: &str, extra: &str| {
        format!(
            r#"{{"name": "{name}", "group": "users", "home": "/home/x", "shell": "/bin/sh"{extra}}}"#
        )
    };
    let users_group = r#"{"name": "users", "gid": 100, "members": []}"#;
    let long = "a".repeat(32);
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "uid -1",
            spec(&user("a", r#", "uid": 4294967295"#), users_group),
            &["users.a.uid", "4294967295", "(uid_t)-1", "below 4294967295"],
        ),
        (
            "gid -1",
            spec(&user("a", ""), r#"{"name": "g", "gid": 4294967295}"#),
            &["groups.g.gid", "(gid_t)-1"],
        ),
        (
            "primary gid -1",
            spec(
                r#"{"name": "a", "group": "4294967295", "home": "/h"}"#,
                users_group,
            ),
            &["users.a.group", "4294967295"],
        ),
        (
            "primary gid beyond 32 bits",
            spec(
                r#"{"name": "a", "group": "99999999999", "home": "/h"}"#,
                users_group,
            ),
            &["users.a.group", "99999999999"],
        ),
        (
            "user .",
            spec(
                &format!("{},{}", user("ok", ""), user(".", "")),
                users_group,
            ),
            &["users[1].name", "\".\"", "path components", "a-z A-Z 0-9"],
        ),
        (
            "user ..",
            spec(&user("..", ""), users_group),
            &["users[0].name", "\"..\""],
        ),
        (
            "user with U+202E",
            spec(&user("adm\u{202e}nimda", ""), users_group),
            &["users[0].name", "\\u{202e}", "[a-zA-Z0-9_.][a-zA-Z0-9_.-]*"],
        ),
        (
            "user with BEL",
            spec(&user("a\\u0007b", ""), users_group),
            &["users[0].name", "\\u{7}"],
        ),
        (
            "user with a leading -",
            spec(&user("-x", ""), users_group),
            &["\"-x\"", "does not match"],
        ),
        (
            "user with a space",
            spec(&user("a b", ""), users_group),
            &["\"a b\""],
        ),
        (
            "user not ASCII",
            spec(&user("jürgen", ""), users_group),
            &["jürgen", "does not match"],
        ),
        (
            "user of 32 characters",
            spec(&user(&long, ""), users_group),
            &["longer than 31 characters"],
        ),
        (
            "empty user name",
            spec(&user("", ""), users_group),
            &["users[0].name", "empty"],
        ),
        (
            "group ..",
            spec("", r#"{"name": "..", "gid": 5}"#),
            &["groups[0].name", "\"..\""],
        ),
        (
            "group with U+202E",
            spec("", "{\"name\": \"wheel\u{202e}\"}"),
            &["groups[0].name", "\\u{202e}"],
        ),
        (
            "member ..",
            spec("", r#"{"name": "wheel", "members": [".."]}"#),
            &["groups.wheel.members", "\"..\""],
        ),
    ];
    for (case, json, words) in &cases {
        let path = Path::new("/nix/store/x-users-groups.json");
        let e = UsersSpec::from_json(path, json.as_bytes()).expect_err(case);
        let msg = e.to_string();
        assert_says(case, &msg, &["/nix/store/x-users-groups.json"]);
        assert_says(case, &msg, words);
    }
    // What the rule allows: 31 characters, dots, underscores, a leading digit, and the
    // largest usable ids.
    let ok = spec(
        &[
            user(&"a".repeat(31), r#", "uid": 4294967294"#),
            user("_svc.x-1", ""),
            user("1password", ""),
        ]
        .join(","),
        r#"{"name": "users", "gid": 4294967294, "members": ["_svc.x-1"]}"#,
    );
    UsersSpec::from_json(Path::new("/u.json"), ok.as_bytes()).expect("valid names and ids");
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
