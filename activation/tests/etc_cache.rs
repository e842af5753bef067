//! The memory of the etc step (`etc::cache`): a run after which nothing changed reads
//! nothing from `/etc` and writes nothing, and every kind of change made since the last run
//! is read again and repaired.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use stagehand_activation::etc::{self, cache, EtcOptions, EtcTree};
use stagehand_common::rootfs::Root;
use stagehand_testkit::FakeRoot;

fn me() -> (String, String) {
    (
        format!("+{}", rustix::process::geteuid().as_raw()),
        format!("+{}", rustix::process::getegid().as_raw()),
    )
}

fn tree_of(r: &FakeRoot, tree: &str) -> EtcTree {
    let root = Root::open(r.path()).expect("root");
    etc::list_tree(&root, Path::new(tree)).expect("tree")
}

fn run(r: &FakeRoot, t: &EtcTree) -> etc::EtcOutcome {
    let root = Root::open(r.path()).expect("root");
    let out = etc::setup_etc(&root, t, EtcOptions::default(), false).expect("etc");
    assert!(out.issues.is_empty(), "{:?}", out.issues);
    out
}

/// What the next run would see, checked against a walk of all of `/etc`: the remembered
/// facts must never describe anything but what is there.
fn preview(r: &FakeRoot, t: &EtcTree) -> etc::Preview {
    let root = Root::open(r.path()).expect("root");
    let p = etc::preview(&root, t, EtcOptions::default()).expect("preview");
    let walked = etc::observe(&root, t).expect("observe");
    assert_eq!(p.state, walked, "the cache describes another /etc");
    p
}

/// Would the next run stop after checking the stamps the last one left? When it would, an
/// observation must agree: nothing to read, nothing to do.
fn fast(r: &FakeRoot, t: &EtcTree) -> bool {
    let p = preview(r, t);
    if p.quiet {
        assert_eq!(p.reads, 0, "quiet, but the observation had to read");
        assert!(p.plan.actions.is_empty(), "quiet, but {:?}", p.plan.actions);
    }
    p.quiet
}

/// How many directories and files the next run would read from `/etc`.
fn reads(r: &FakeRoot, t: &EtcTree) -> usize {
    preview(r, t).reads
}

/// A generation with links at the top and in nested directories and two copied files.
fn setup() -> (FakeRoot, String, EtcTree) {
    let r = FakeRoot::new();
    let (u, g) = me();
    let tree = r.etc_tree(
        "c0",
        &[
            ("hosts", "127.0.0.1 localhost\n", None),
            ("ssh/sshd_config", "Port 22\n", None),
            ("systemd/system/a.service", "[Unit]\n", None),
            ("sudoers", "root ALL=(ALL) ALL\n", Some(("0440", &u, &g))),
            ("ssh/known_hosts", "host key\n", Some(("0644", &u, &g))),
            ("motd", "welcome\n", Some(("direct-symlink", &u, &g))),
        ],
    );
    let t = tree_of(&r, &tree);
    let out = run(&r, &t);
    assert!(out.changed > 0);
    assert!(
        fast(&r, &t),
        "a run that changed /etc leaves a cache that vouches for it"
    );
    (r, tree, t)
}

#[test]
fn no_change_run_takes_the_fast_path_and_writes_nothing() {
    let (r, _, t) = setup();
    let before = r.stamps();
    let out = run(&r, &t);
    assert_eq!(out.changed, 0);
    assert_eq!(r.stamps(), before, "a no-change run wrote something");
    assert!(fast(&r, &t));
}

#[test]
fn hand_edit_of_a_copied_file_is_noticed_and_undone() {
    let (r, _, t) = setup();
    // In place, same size, and the mtime put back: only the ctime tells.
    let p = r.host("/etc/sudoers");
    let mtime = std::fs::metadata(&p)
        .expect("stat")
        .modified()
        .expect("mtime");
    std::fs::write(&p, "root ALL=(ALL) XXX\n").expect("edit");
    std::fs::File::options()
        .write(true)
        .open(&p)
        .and_then(|f| f.set_modified(mtime))
        .expect("restore mtime");
    assert!(!fast(&r, &t));
    assert!(run(&r, &t).changed > 0);
    assert_eq!(r.read("/etc/sudoers"), "root ALL=(ALL) ALL\n");
    assert!(fast(&r, &t));

    // A chmod alone.
    std::fs::set_permissions(
        r.host("/etc/ssh/known_hosts"),
        PermissionsExt::from_mode(0o666),
    )
    .expect("chmod");
    assert!(!fast(&r, &t));
    run(&r, &t);
    let mode = std::fs::metadata(r.host("/etc/ssh/known_hosts"))
        .expect("stat")
        .mode();
    assert_eq!(mode & 0o7777, 0o644);
}

#[test]
fn new_stale_link_in_a_managed_directory_is_noticed_and_removed() {
    let (r, _, t) = setup();
    // Deep down: only that directory's own stamp changes.
    r.symlink(
        "/etc/systemd/system/old.service",
        "/etc/static/systemd/system/old.service",
    );
    assert!(!fast(&r, &t));
    run(&r, &t);
    assert!(!r.host("/etc/systemd/system/old.service").is_symlink());

    // A user's own file there is kept, and the cache is refreshed to include it.
    r.write("/etc/systemd/system/mine.service", "[Unit]\n");
    assert!(!fast(&r, &t));
    assert_eq!(run(&r, &t).changed, 0);
    assert_eq!(r.read("/etc/systemd/system/mine.service"), "[Unit]\n");
    // That run may not vouch for a directory changed within the current clock tick (its
    // stamp could still hide a second change); one a tick later does.
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert_eq!(run(&r, &t).changed, 0);
    assert!(fast(&r, &t));
}

#[test]
fn removed_or_retargeted_link_is_noticed_and_restored() {
    let (r, _, t) = setup();
    std::fs::remove_file(r.host("/etc/ssh/sshd_config")).expect("rm");
    assert!(!fast(&r, &t));
    run(&r, &t);
    assert_eq!(r.read("/etc/ssh/sshd_config"), "Port 22\n");

    // Same name, other target (replaced by rename, as `ln -sfn` does).
    std::fs::remove_file(r.host("/etc/hosts")).expect("rm");
    r.symlink("/etc/hosts", "/somewhere/else");
    assert!(!fast(&r, &t));
    run(&r, &t);
    assert_eq!(
        std::fs::read_link(r.host("/etc/hosts")).expect("readlink"),
        Path::new("/etc/static/hosts")
    );

    // A managed directory replaced by another one of the same name.
    std::fs::rename(r.host("/etc/systemd"), r.host("/etc/systemd.old")).expect("mv");
    std::fs::create_dir(r.host("/etc/systemd")).expect("mkdir");
    assert!(!fast(&r, &t));
    run(&r, &t);
    assert_eq!(r.read("/etc/systemd/system/a.service"), "[Unit]\n");
}

#[test]
fn changed_sidecar_or_tree_is_planned_for() {
    let (r, tree, t) = setup();
    // The same tree path with a changed sidecar (a store would never do this, a test can).
    r.write(&format!("{tree}/sudoers.mode"), "0400\n");
    let t2 = tree_of(&r, &tree);
    assert_ne!(t, t2);
    assert!(!fast(&r, &t2));
    run(&r, &t2);
    let mode = std::fs::metadata(r.host("/etc/sudoers"))
        .expect("stat")
        .mode();
    assert_eq!(mode & 0o7777, 0o400);
    assert!(fast(&r, &t2));
    // The old listing reads nothing either (the cache is about /etc, not the input), but
    // its plan puts the old mode back.
    assert_eq!(reads(&r, &t), 0);
    assert!(!fast(&r, &t));
}

#[test]
fn a_changed_run_reads_only_what_changed() {
    let (r, _, t) = setup();
    // A hand edit deep down: one directory to read again, nothing else.
    r.symlink(
        "/etc/systemd/system/old.service",
        "/etc/static/systemd/system/old.service",
    );
    assert_eq!(reads(&r, &t), 1);
    // A second generation that changes one link target and adds a directory: the run
    // after it reads nothing.
    let (u, g) = me();
    let tree2 = r.etc_tree(
        "c1",
        &[
            ("hosts", "127.0.0.2 localhost\n", None),
            ("ssh/sshd_config", "Port 22\n", None),
            ("systemd/system/a.service", "[Unit]\n", None),
            ("systemd/user/b.service", "[Unit]\n", None),
            ("sudoers", "root ALL=(ALL) ALL\n", Some(("0440", &u, &g))),
            ("ssh/known_hosts", "host key\n", Some(("0644", &u, &g))),
            // Retargeted in a directory this run changes anyway (/etc): the link is
            // replaced by a new inode, whose target must be read, not remembered.
            ("motd", "welcome to c1\n", Some(("direct-symlink", &u, &g))),
        ],
    );
    let t2 = tree_of(&r, &tree2);
    assert!(run(&r, &t2).changed > 0);
    assert!(!r.host("/etc/systemd/system/old.service").is_symlink());
    assert_eq!(r.read("/etc/systemd/user/b.service"), "[Unit]\n");
    assert_eq!(r.read("/etc/motd"), "welcome to c1\n");
    assert!(fast(&r, &t2));
}

#[test]
fn damaged_cache_is_ignored_and_dry_run_does_not_write_one() {
    let (r, _, t) = setup();
    let path = r.host(&format!("{}/{}", cache::CACHE_DIR, cache::CACHE_NAME));
    let mut bytes = std::fs::read(&path).expect("cache");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).expect("damage");
    assert!(!fast(&r, &t));
    // The full path finds nothing to do and replaces the damaged cache.
    assert_eq!(run(&r, &t).changed, 0);
    assert!(fast(&r, &t));

    let r2 = FakeRoot::new();
    let tree = r2.etc_tree("d0", &[("a", "1", None)]);
    let t = tree_of(&r2, &tree);
    let root = Root::open(r2.path()).expect("root");
    etc::setup_etc(&root, &t, EtcOptions::default(), true).expect("dry run");
    assert!(!r2.host(cache::CACHE_DIR).exists());
}

#[test]
fn source_of_a_copy_changed_in_place_is_noticed() {
    let (r, tree, t) = setup();
    // Resolve the store file the sudoers entry links to and change it in place.
    let target = std::fs::read_link(r.host(&format!("{tree}/sudoers"))).expect("readlink");
    std::fs::write(r.host(target.to_str().expect("utf8")), "changed source\n").expect("write");
    assert!(!fast(&r, &t));
    run(&r, &t);
    assert_eq!(r.read("/etc/sudoers"), "changed source\n");
}
