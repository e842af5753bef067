//! `/etc` setup over successive generations, on temporary roots.

use std::path::Path;

use stagehand_activation::etc::{self, EtcAction, EtcIssue, EtcOptions, EtcTree, Install};
use stagehand_common::rootfs::Root;
use stagehand_testkit::FakeRoot;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// "+<uid>" of whoever runs the test, so that chown works without privileges.
fn me_uid() -> String {
    format!("+{}", rustix::process::geteuid().as_raw())
}
fn me_gid() -> String {
    format!("+{}", rustix::process::getegid().as_raw())
}

fn run(r: &FakeRoot, tree: &str) -> etc::EtcOutcome {
    let root = Root::open(r.path()).expect("root");
    let t = etc::list_tree(&root, Path::new(tree)).expect("tree");
    etc::setup_etc(&root, &t, EtcOptions::default(), false).expect("etc")
}

fn plan(r: &FakeRoot, tree: &str) -> etc::EtcPlan {
    let root = Root::open(r.path()).expect("root");
    let t = etc::list_tree(&root, Path::new(tree)).expect("tree");
    let st = etc::observe(&root, &t).expect("observe");
    etc::plan(&t, &st, EtcOptions::default())
}

/// Snapshot with the caller's ids shown as `me`, so expectations hold for any user.
fn snap(r: &FakeRoot) -> String {
    let me = format!(
        " {}:{} ",
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw()
    );
    r.snapshot("/etc").replace(&me, " me ")
}

#[test]
fn generations_gen0_gen1_gen2_with_user_files() {
    let r = FakeRoot::new();
    let (u, g) = (me_uid(), me_gid());
    let gen0 = r.etc_tree(
        "g0",
        &[
            ("hosts", "127.0.0.1 localhost\n", None),
            ("ssh/sshd_config", "Port 22\n", None),
            ("ssh/ssh_config", "Host *\n", None),
            ("sudoers", "root ALL=(ALL) ALL\n", Some(("0440", &u, &g))),
            ("profile.d/a.sh", "a\n", None),
            ("old-copy", "bye\n", Some(("0644", &u, &g))),
        ],
    );
    let out = run(&r, &gen0);
    assert!(out.issues.is_empty(), "{:?}", out.issues);
    assert_eq!(
        snap(&r),
        format!(
            "/etc/.clean F 0644 me \"old-copy\\nsudoers\\n\"
/etc/NIXOS F 0644 me \"\"
/etc/hosts L /etc/static/hosts
/etc/old-copy F 0644 me \"bye\\n\"
/etc/profile.d D
/etc/profile.d/a.sh L /etc/static/profile.d/a.sh
/etc/ssh D
/etc/ssh/ssh_config L /etc/static/ssh/ssh_config
/etc/ssh/sshd_config L /etc/static/ssh/sshd_config
/etc/static L {gen0}
/etc/sudoers F 0440 me \"root ALL=(ALL) ALL\\n\""
        )
    );
    // A second run with nothing changed plans nothing, so it writes nothing.
    assert_eq!(plan(&r, &gen0).actions, vec![]);
    let before = snap(&r);
    let out = run(&r, &gen0);
    assert_eq!(out.changed, 0);
    assert_eq!(snap(&r), before);

    // The administrator adds things by hand between generations.
    r.write("/etc/my-notes", "mine\n");
    r.symlink("/etc/my-link", "/var/lib/thing");
    r.write("/etc/ssh/ssh_host_ed25519_key", "secret\n");
    r.write("/etc/hosts-edit-me", "x\n");

    // gen1: ssh_config and old-copy go away, a new entry appears, sudoers changes content,
    // profile.d becomes a single symlink to a directory.
    let gen1 = r.etc_tree(
        "g1",
        &[
            ("hosts", "127.0.0.1 localhost\n", None),
            ("ssh/sshd_config", "Port 2222\n", None),
            (
                "sudoers",
                "root ALL=(ALL) NOPASSWD: ALL\n",
                Some(("0440", &u, &g)),
            ),
            ("nsswitch.conf", "passwd: files\n", None),
        ],
    );
    std::fs::create_dir_all(r.host("/nix/store/g1-profiled")).expect("mkdir");
    r.symlink(&format!("{gen1}/profile.d"), "/nix/store/g1-profiled");
    let out = run(&r, &gen1);
    assert!(out.issues.is_empty(), "{:?}", out.issues);
    assert_eq!(
        snap(&r),
        format!(
            "/etc/.clean F 0644 me \"sudoers\\n\"
/etc/NIXOS F 0644 me \"\"
/etc/hosts L /etc/static/hosts
/etc/hosts-edit-me F 0644 me \"x\\n\"
/etc/my-link L /var/lib/thing
/etc/my-notes F 0644 me \"mine\\n\"
/etc/nsswitch.conf L /etc/static/nsswitch.conf
/etc/profile.d L /etc/static/profile.d
/etc/ssh D
/etc/ssh/ssh_host_ed25519_key F 0644 me \"secret\\n\"
/etc/ssh/sshd_config L /etc/static/ssh/sshd_config
/etc/static L {gen1}
/etc/sudoers F 0440 me \"root ALL=(ALL) NOPASSWD: ALL\\n\""
        )
    );
    assert_eq!(plan(&r, &gen1).actions, vec![]);

    // gen2: profile.d is a directory again but the user put a file in /etc/profile.d's place
    // meanwhile? No: the user edits a declared path; declared entries win.
    std::fs::remove_file(r.host("/etc/hosts")).expect("rm");
    r.write("/etc/hosts", "edited by hand\n");
    let gen2 = r.etc_tree(
        "g2",
        &[
            ("hosts", "127.0.0.1 localhost\n", None),
            ("profile.d/b.sh", "b\n", None),
            (
                "sudoers",
                "root ALL=(ALL) NOPASSWD: ALL\n",
                Some(("0440", &u, &g)),
            ),
        ],
    );
    let out = run(&r, &gen2);
    assert!(out.issues.is_empty(), "{:?}", out.issues);
    assert_eq!(
        snap(&r),
        format!(
            "/etc/.clean F 0644 me \"sudoers\\n\"
/etc/NIXOS F 0644 me \"\"
/etc/hosts L /etc/static/hosts
/etc/hosts-edit-me F 0644 me \"x\\n\"
/etc/my-link L /var/lib/thing
/etc/my-notes F 0644 me \"mine\\n\"
/etc/profile.d D
/etc/profile.d/b.sh L /etc/static/profile.d/b.sh
/etc/ssh D
/etc/ssh/ssh_host_ed25519_key F 0644 me \"secret\\n\"
/etc/static L {gen2}
/etc/sudoers F 0440 me \"root ALL=(ALL) NOPASSWD: ALL\\n\""
        )
    );
    assert_eq!(plan(&r, &gen2).actions, vec![]);
}

#[test]
fn static_directory_is_replaced_but_one_with_user_files_is_kept() {
    let r = FakeRoot::new();
    let gen0 = r.etc_tree("s0", &[("a/x", "1", None), ("b/y", "2", None)]);
    run(&r, &gen0);
    r.write("/etc/b/user-file", "mine");
    // gen1: a and b become symlinks to store directories.
    let gen1 = r.etc_tree("s1", &[]);
    for d in ["a", "b"] {
        std::fs::create_dir_all(r.host(&format!("/nix/store/s1-{d}"))).expect("mkdir");
        r.symlink(&format!("{gen1}/{d}"), &format!("/nix/store/s1-{d}"));
    }
    let out = run(&r, &gen1);
    assert_eq!(
        std::fs::read_link(r.host("/etc/a")).expect("a is a link"),
        Path::new("/etc/static/a")
    );
    assert!(r.host("/etc/b").is_dir() && !r.host("/etc/b").is_symlink());
    assert_eq!(r.read("/etc/b/user-file"), "mine");
    assert!(
        out.issues
            .iter()
            .any(|i| matches!(i, EtcIssue::UserFilesInDir { path } if path == "/etc/b")),
        "{:?}",
        out.issues
    );
}

#[test]
fn direct_symlink_and_owner_names_from_the_roots_passwd() {
    let r = FakeRoot::new();
    r.write(
        "/etc/passwd",
        "root:x:0:0::/root:/bin/sh\nsshd:x:4321:4322::/var/empty:/bin/nologin\n",
    );
    r.write("/etc/group", "root:x:0:\nsshd:x:4322:\n");
    let owner = if is_root() {
        ("sshd", "sshd")
    } else {
        ("+0", "+0")
    };
    let tree = r.etc_tree(
        "d0",
        &[
            ("passwd-link", "", Some(("direct-symlink", "+0", "+0"))),
            ("ssh/key", "k", Some(("0600", owner.0, owner.1))),
        ],
    );
    let root = Root::open(r.path()).expect("root");
    let t = etc::list_tree(&root, Path::new(&tree)).expect("tree");
    let direct = t
        .entries
        .iter()
        .find(|e| e.rel == "passwd-link")
        .expect("entry");
    let Install::Direct(target) = &direct.install else {
        panic!("{direct:?}")
    };
    let out = etc::setup_etc(&root, &t, EtcOptions::default(), false).expect("etc");
    assert_eq!(
        std::fs::read_link(r.host("/etc/passwd-link"))
            .expect("link")
            .to_str(),
        Some(target.as_str())
    );
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        assert!(out.issues.is_empty(), "{:?}", out.issues);
        let md = std::fs::metadata(r.host("/etc/ssh/key")).expect("md");
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (4321, 4322, 0o600)
        );
    }
    assert_eq!(r.read("/etc/.clean"), "passwd-link\nssh/key\n");
}

#[test]
fn unknown_owner_name_is_reported_not_looked_up_on_the_host() {
    let r = FakeRoot::new();
    r.write("/etc/passwd", "root:x:0:0::/root:/bin/sh\n");
    r.write("/etc/group", "root:x:0:\n");
    // "nobody" exists on nearly every host; the root's files do not have it.
    let tree = r.etc_tree("o0", &[("f", "x", Some(("0644", "nobody", "+0")))]);
    let p = plan(&r, &tree);
    assert!(
        p.issues
            .iter()
            .any(|i| matches!(i, EtcIssue::UnknownUser { name, .. } if name == "nobody")),
        "{:?}",
        p.issues
    );
    let msg = p.issues[0].to_string();
    assert!(msg.contains("f.uid") && msg.contains("nobody"), "{msg}");
}

#[test]
fn bad_sidecar_mode_is_reported_and_the_rest_still_installed() {
    let r = FakeRoot::new();
    let tree = r.etc_tree(
        "m0",
        &[
            ("bad", "x", Some(("0999", "+0", "+0"))),
            ("good", "y", None),
        ],
    );
    let out = run(&r, &tree);
    assert!(out
        .issues
        .iter()
        .any(|i| matches!(i, EtcIssue::BadMode { value, .. } if value == "0999")));
    assert!(
        out.issues[0].to_string().contains("bad.mode"),
        "{}",
        out.issues[0]
    );
    assert!(!r.host("/etc/bad").exists());
    assert_eq!(r.read("/etc/good"), "y");
}

#[test]
fn entries_escaping_etc_are_refused() {
    let r = FakeRoot::new();
    let tree = r.etc_tree("e0", &[("ok", "fine", None)]);
    let root = Root::open(r.path()).expect("root");
    let mut t: EtcTree = etc::list_tree(&root, Path::new(&tree)).expect("tree");
    // A corrupt or crafted plan: entries that would land outside /etc.
    for rel in ["../escaped", "a/../../escaped2", "/abs"] {
        t.entries.push(etc::TreeEntry {
            rel: rel.into(),
            kind: etc::EntryKind::Symlink("/nix/store/x".into()),
            install: Install::Link,
        });
    }
    let out = etc::setup_etc(&root, &t, EtcOptions::default(), false).expect("etc");
    assert_eq!(
        out.issues
            .iter()
            .filter(|i| matches!(i, EtcIssue::UnsafePath { .. }))
            .count(),
        3
    );
    assert!(!r.host("/escaped").exists() && !r.host("/escaped2").exists());
    assert_eq!(r.read("/etc/ok"), "fine");

    // A .clean line pointing outside /etc must not delete anything there.
    r.write("/precious", "keep");
    r.write("/etc/.clean", "../precious\nok\n");
    let out = run(&r, &tree);
    assert!(out
        .issues
        .iter()
        .any(|i| matches!(i, EtcIssue::UnsafePath { rel } if rel == "../precious")));
    assert_eq!(r.read("/precious"), "keep");
}

#[test]
fn planted_symlink_is_replaced_not_followed() {
    let r = FakeRoot::new();
    let outside = tempfile::tempdir().expect("tempdir");
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "precious").expect("write");
    let tree = r.etc_tree(
        "p0",
        &[(
            "shadow-like",
            "secret",
            Some(("0600", &me_uid(), &me_gid())),
        )],
    );
    r.symlink("/etc/shadow-like", victim.to_str().expect("utf8"));
    // The temp name we use next to it, planted too.
    r.symlink(
        "/etc/.shadow-like.stagehand-tmp",
        victim.to_str().expect("utf8"),
    );
    let out = run(&r, &tree);
    assert!(out.issues.is_empty(), "{:?}", out.issues);
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
    assert_eq!(r.read("/etc/shadow-like"), "secret");
    assert!(!r.host("/etc/shadow-like").is_symlink());

    // An absolute symlink for a directory on the way stays inside the root.
    let r2 = FakeRoot::new();
    let tree2 = r2.etc_tree(
        "p1",
        &[("sub/file", "x", Some(("0644", &me_uid(), &me_gid())))],
    );
    r2.symlink("/etc/sub", outside.path().to_str().expect("utf8"));
    run(&r2, &tree2);
    assert!(!outside.path().join("file").exists());
}

#[test]
fn dry_run_writes_nothing_and_lists_changes() {
    let r = FakeRoot::new();
    let tree = r.etc_tree("y0", &[("a", "1", None)]);
    let root = Root::open(r.path()).expect("root");
    let t = etc::list_tree(&root, Path::new(&tree)).expect("tree");
    let out = etc::setup_etc(&root, &t, EtcOptions::default(), true).expect("etc");
    assert!(out.changed > 0);
    assert!(!r.host("/etc").exists());
    let p = plan(&r, &tree);
    assert!(matches!(p.actions[0], EtcAction::SetStatic { .. }));
}

#[test]
fn links_kept_through_a_symlinked_directory_of_the_new_tree_are_not_stale() {
    let r = FakeRoot::new();
    let gen0 = r.etc_tree("k0", &[("foo/a", "a\n", None), ("foo/b", "b\n", None)]);
    run(&r, &gen0);
    // The next generation has `foo` as a link to a store directory, where `a` is still a
    // link (so /etc/foo/a is not obsolete, as `setup-etc.pl`'s `-l /etc/static/foo/a`
    // finds) and `b` a plain file (so /etc/foo/b is).
    r.write("/nix/store/k1-foo/a-target", "a\n");
    r.symlink("/nix/store/k1-foo/a", "/nix/store/k1-foo/a-target");
    r.write("/nix/store/k1-foo/b", "b\n");
    std::fs::create_dir_all(r.host("/nix/store/k1-etc/etc")).expect("tree");
    r.symlink("/nix/store/k1-etc/etc/foo", "/nix/store/k1-foo");
    let gen1 = "/nix/store/k1-etc/etc";

    let removed = |actions: &[EtcAction]| -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                EtcAction::RemoveObsoleteLink { rel } => Some(rel.clone()),
                _ => None,
            })
            .collect()
    };
    // From a full walk of /etc, and from what the cache remembers.
    assert_eq!(removed(&plan(&r, gen1).actions), ["foo/b"]);
    let root = Root::open(r.path()).expect("root");
    let t = etc::list_tree(&root, Path::new(gen1)).expect("tree");
    let p = etc::preview(&root, &t, EtcOptions::default()).expect("preview");
    assert_eq!(removed(&p.plan.actions), ["foo/b"]);
    assert_eq!(p.state, etc::observe(&root, &t).expect("observe"));

    let out = run(&r, gen1);
    assert!(out.issues.is_empty(), "{:?}", out.issues);
    assert_eq!(
        std::fs::read_link(r.host("/etc/foo")).expect("foo is a link now"),
        Path::new("/etc/static/foo")
    );
    assert_eq!(r.read("/etc/foo/b"), "b\n");
}

/// `stagehand etc --root R /etc` made `/etc/static` a link to `/etc` itself (issue #15 item
/// 13). A tree that is `/etc`, lies inside it, or reaches it through links is refused before
/// anything is read or changed.
#[test]
fn an_etc_tree_inside_etc_is_refused() {
    let r = FakeRoot::new();
    let gen0 = r.etc_tree("g0", &[("hosts", "127.0.0.1 localhost\n", None)]);
    run(&r, &gen0);
    // /etc/static links to the store tree now; an odd directory and a link into /etc too.
    std::fs::create_dir_all(r.host("/etc/sub")).expect("mkdir");
    r.symlink("/srv/etc-link", "/etc/sub");
    let root = Root::open(r.path()).expect("root");
    let before = r.stamps();
    let refused = |tree: &str, resolved: &str| {
        let e = etc::list_tree(&root, Path::new(tree)).expect_err(tree);
        assert!(
            matches!(e, etc::EtcError::TreeInEtc { .. }),
            "{tree}: {e:?}"
        );
        let msg = e.to_string();
        for w in [
            format!("the etc tree {tree} "),
            format!("resolved inside the root: {resolved})"),
            "is /etc itself or inside it".into(),
            "loop".into(),
            "etc tree in the store".into(),
        ] {
            assert!(msg.contains(&w), "{tree}: {w:?} missing from: {msg}");
        }
    };
    refused("/etc", "/etc");
    refused("/etc/", "/etc");
    refused("/etc/sub", "/etc/sub");
    refused("/srv/etc-link", "/etc/sub");
    refused("/nix/store/../../etc", "/etc");

    // A tree that came from a compiled plan, not through list_tree, is checked as well.
    let mut t = etc::list_tree(&root, Path::new(&gen0)).expect("store tree");
    t.path = "/etc".into();
    let e = etc::setup_etc(&root, &t, EtcOptions::default(), false).expect_err("/etc");
    assert!(matches!(e, etc::EtcError::TreeInEtc { .. }), "{e:?}");
    assert_eq!(r.stamps(), before, "a refused tree changed the root");
    assert_eq!(
        std::fs::read_link(r.host("/etc/static")).expect("static link"),
        Path::new(&gen0)
    );

    // With /etc/static a real directory, the tree /etc/static is /etc/static itself.
    let r = FakeRoot::new();
    std::fs::create_dir_all(r.host("/etc/static")).expect("mkdir");
    let root = Root::open(r.path()).expect("root");
    let e = etc::list_tree(&root, Path::new("/etc/static")).expect_err("/etc/static");
    assert!(
        e.to_string()
            .contains("resolved inside the root: /etc/static)"),
        "{e}"
    );

    // With /etc a link (to a persistent directory), its target counts as /etc.
    let r = FakeRoot::new();
    std::fs::create_dir_all(r.host("/persist/etc")).expect("mkdir");
    r.symlink("/etc", "/persist/etc");
    let root = Root::open(r.path()).expect("root");
    let e = etc::list_tree(&root, Path::new("/persist/etc")).expect_err("/persist/etc");
    assert!(matches!(e, etc::EtcError::TreeInEtc { .. }), "{e:?}");
}

/// Generation `g` of a tree where most entries change between generations: links that
/// become obsolete, copies that become obsolete files, directories that come and go.
fn churn_tree(r: &FakeRoot, g: usize) -> String {
    let (u, gid) = (me_uid(), me_gid());
    let mut entries: Vec<(String, String, bool)> = Vec::new();
    for i in 0..40 {
        entries.push((
            format!("common/c{i}"),
            format!("common {i} gen {g}\n"),
            false,
        ));
        entries.push((
            format!("only{g}/f{i}"),
            format!("gen {g} file {i}\n"),
            false,
        ));
        entries.push((format!("top{g}-{i}"), format!("top {i}\n"), false));
    }
    for i in 0..10 {
        entries.push((format!("copy{g}-{i}"), format!("copy {i} of {g}\n"), true));
        entries.push((
            format!("shared-copy{i}"),
            format!("shared {i} of {g}\n"),
            true,
        ));
    }
    let spec: Vec<stagehand_testkit::TreeSpec<'_>> = entries
        .iter()
        .map(|(p, c, copy)| {
            (
                p.as_str(),
                c.as_str(),
                copy.then_some(("0644", u.as_str(), gid.as_str())),
            )
        })
        .collect();
    r.etc_tree(&format!("churn{g}"), &spec)
}

#[test]
fn concurrent_runs_on_one_root_are_serialised() {
    // Issue #15 item 12: two `stagehand etc` at once on one root failed about one time in
    // thirty ("cannot remove obsolete symlink": both planned the removal). Eight runs start
    // together, round after round, switching generations; each must succeed and leave /etc
    // exactly as one run alone does (checked against a second root run sequentially).
    const RUNS: usize = 8;
    let r = FakeRoot::new();
    let reference = FakeRoot::new();
    let trees: Vec<String> = (0..2).map(|g| churn_tree(&r, g)).collect();
    for g in 0..2 {
        churn_tree(&reference, g);
    }
    for round in 0..8 {
        let tree = &trees[round % 2];
        let barrier = std::sync::Barrier::new(RUNS);
        let results: Vec<Result<etc::EtcOutcome, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..RUNS)
                .map(|_| {
                    s.spawn(|| {
                        let root = Root::open(r.path()).map_err(|e| e.to_string())?;
                        let t =
                            etc::list_tree(&root, Path::new(tree)).map_err(|e| e.to_string())?;
                        barrier.wait();
                        etc::setup_etc(&root, &t, EtcOptions::default(), false)
                            .map_err(|e| e.to_string())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        for (i, res) in results.iter().enumerate() {
            match res {
                Ok(out) => assert!(
                    out.issues.is_empty(),
                    "round {round}, run {i}: {:?}",
                    out.issues
                ),
                Err(e) => panic!("round {round}, run {i}: {e}"),
            }
        }
        run(&reference, tree);
        assert_eq!(snap(&r), snap(&reference), "round {round}");
    }
}

#[test]
fn a_copy_installed_through_a_users_symlinked_directory_is_removed_when_dropped() {
    // Issue #15 item 11: /etc/ssh is the user's link to /srv/persist/ssh (resolved inside
    // the root). setup-etc.pl installs through it and, when a later generation drops a
    // copied file, removes it through it (`unlink "/etc/$fn"`); we forgot it there.
    let r = FakeRoot::new();
    let (u, g) = (me_uid(), me_gid());
    std::fs::create_dir_all(r.host("/srv/persist/ssh")).expect("mkdir");
    r.write("/srv/persist/ssh/ssh_host_ed25519_key", "the user's key\n");
    r.symlink("/etc/ssh", "/srv/persist/ssh");
    let gen1 = r.etc_tree(
        "ln1",
        &[
            ("hosts", "127.0.0.1 localhost\n", None),
            (
                "ssh/sshd_config",
                "PermitRootLogin no\n",
                Some(("0600", &u, &g)),
            ),
            ("ssh/ssh_config", "Host *\n", None),
            ("ssh/moduli.d/a", "moduli\n", Some(("0644", &u, &g))),
        ],
    );
    let out = run(&r, &gen1);
    assert!(out.issues.is_empty(), "{:?}", out.issues);
    assert!(std::fs::symlink_metadata(r.host("/etc/ssh"))
        .expect("lstat")
        .file_type()
        .is_symlink());
    assert_eq!(
        r.read("/srv/persist/ssh/sshd_config"),
        "PermitRootLogin no\n"
    );
    assert_eq!(
        std::fs::read_link(r.host("/srv/persist/ssh/ssh_config")).expect("link"),
        Path::new("/etc/static/ssh/ssh_config")
    );
    assert_eq!(r.read("/etc/.clean"), "ssh/moduli.d/a\nssh/sshd_config\n");
    // Installed through the link, the generation is complete: a second run has nothing
    // to do (it used to copy and link through the link again on every run).
    assert_eq!(plan(&r, &gen1).actions, vec![]);
    let gen2 = r.etc_tree(
        "ln2",
        &[
            ("hosts", "127.0.0.1 localhost\n", None),
            ("ssh/ssh_config", "Host *\n", None),
        ],
    );
    let out = run(&r, &gen2);
    assert!(out.issues.is_empty(), "{:?}", out.issues);
    assert!(!r.host("/srv/persist/ssh/sshd_config").exists());
    assert!(!r.host("/srv/persist/ssh/moduli.d/a").exists());
    assert_eq!(
        r.read("/srv/persist/ssh/ssh_host_ed25519_key"),
        "the user's key\n"
    );
    assert_eq!(
        std::fs::read_link(r.host("/srv/persist/ssh/ssh_config")).expect("link kept"),
        Path::new("/etc/static/ssh/ssh_config")
    );
    assert_eq!(r.read("/etc/.clean"), "");
    assert_eq!(plan(&r, &gen2).actions, vec![]);
}

#[test]
fn a_users_link_out_of_the_root_is_never_followed_from_the_host() {
    // /etc/ssh points at an absolute path that exists on the host but not in the root: it
    // resolves inside the root (to nothing), so the file on the host is never touched.
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("sshd_config"), "host's own\n").expect("write");
    let r = FakeRoot::new();
    r.symlink("/etc/ssh", outside.path().to_str().expect("utf8"));
    r.write("/etc/.clean", "ssh/sshd_config\n");
    let gen = r.etc_tree("out1", &[("hosts", "127.0.0.1 localhost\n", None)]);
    let out = run(&r, &gen);
    assert!(out.issues.is_empty(), "{:?}", out.issues);
    assert_eq!(
        std::fs::read_to_string(outside.path().join("sshd_config")).expect("read"),
        "host's own\n"
    );
}

#[test]
fn a_stale_link_at_etc_nixos_is_kept_as_setup_etc_pl_keeps_it() {
    // setup-etc.pl prunes /etc/nixos from its cleanup walk before looking at it, so even a
    // link from /etc/nixos into /etc/static that the new tree no longer has stays.
    let r = FakeRoot::new();
    let gen1 = r.etc_tree(
        "nx1",
        &[
            ("nixos", "a file as /etc/nixos\n", None),
            ("other", "x\n", None),
        ],
    );
    run(&r, &gen1);
    assert_eq!(
        std::fs::read_link(r.host("/etc/nixos")).expect("link"),
        Path::new("/etc/static/nixos")
    );
    let gen2 = r.etc_tree("nx2", &[("hosts", "127.0.0.1 localhost\n", None)]);
    let out = run(&r, &gen2);
    assert!(out.issues.is_empty(), "{:?}", out.issues);
    assert_eq!(
        std::fs::read_link(r.host("/etc/nixos")).expect("/etc/nixos is kept"),
        Path::new("/etc/static/nixos")
    );
    // Any other stale link goes.
    assert!(std::fs::symlink_metadata(r.host("/etc/other")).is_err());
}
