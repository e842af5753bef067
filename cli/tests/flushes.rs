//! What `stagehand activate` flushes (issue #18), counted with `strace -f` on the real
//! binary: the etc step makes at most one `syncfs` — only when it writes a file (a copy,
//! `.clean`, `NIXOS`) — and makes its links durable with an `fsync`; a run that changes
//! nothing flushes nothing. The users step is left out (no `usersGroups`): its commit
//! flushes on its own.
//!
//! Needs `strace` (vm-tests/setup-host installs it); without it the test fails and says so.

mod crash_harness;

use std::process::Command;

use crash_harness::{require_strace, BIN};
use stagehand_testkit::FakeRoot;

/// Calls of `syncfs` (anywhere) and of `fsync` of the root's `/etc` in one successful
/// `stagehand activate` of `top` under `root`. (`/run/current-system` is flushed on its
/// own, in `/run`: not counted.)
fn flushes(root: &FakeRoot, top: &str) -> (usize, usize) {
    let log = root.path().join("strace.log");
    let out = Command::new("strace")
        .args(["-f", "-y"])
        .args(["-e", "trace=syncfs,fsync", "-o"])
        .arg(&log)
        .arg(BIN)
        .args(["activate", "--root"])
        .arg(root.path())
        .args(["--action", "switch", top])
        .output()
        .expect("run strace");
    assert!(out.status.success(), "activate {top} failed: {out:?}");
    let text = std::fs::read_to_string(&log).expect("strace log");
    std::fs::remove_file(&log).expect("remove log");
    // With -y each descriptor is shown with its path: `fsync(5</tmp/…/etc>)`.
    let etc = format!("{}/etc>", root.path().display());
    let calls = |call: &str| {
        text.lines()
            .filter(move |l| l.contains(&format!("{call}(")) && !l.contains("resumed>"))
            .collect::<Vec<_>>()
    };
    let etc_fsyncs = calls("fsync").iter().filter(|l| l.contains(&etc)).count();
    (calls("syncfs").len(), etc_fsyncs)
}

fn generation(root: &FakeRoot, name: &str, hosts: &str, copied: &str) -> String {
    let mut entries: Vec<(String, String)> = (0..20)
        .map(|i| (format!("conf.d/{i:02}.conf"), format!("setting {i}\n")))
        .collect();
    entries.push(("hosts".into(), hosts.into()));
    let mut spec: Vec<stagehand_testkit::TreeSpec<'_>> = entries
        .iter()
        .map(|(r, c)| (r.as_str(), c.as_str(), None))
        .collect();
    spec.push(("sudoers", copied, Some(("0440", "+0", "+0"))));
    let tree = root.etc_tree(name, &spec);
    let top = format!("/nix/store/{name}-nixos-system");
    root.write(
        &format!("{top}/activation.json"),
        &format!(r#"{{"version": 1, "etc": "{tree}"}}"#),
    );
    top
}

#[test]
fn the_etc_step_syncs_the_file_system_at_most_once_and_only_to_publish_files() {
    require_strace();
    let root = FakeRoot::new();
    let first = generation(&root, "g1", "127.0.0.1 one\n", "root ALL=(ALL) ALL\n");
    // Only link targets change: /etc/static moves, no file is copied or rewritten.
    let links_only = generation(&root, "g2", "127.0.0.1 two\n", "root ALL=(ALL) ALL\n");
    // The copied file changes: it is staged and published by rename.
    let copy_changed = generation(&root, "g3", "127.0.0.1 two\n", "root ALL=(ALL) NOPASSWD\n");

    let (syncfs, fsync) = flushes(&root, &first);
    assert_eq!(
        syncfs, 1,
        "first run: one syncfs before the copies are renamed"
    );
    assert_eq!(
        fsync, 1,
        "first run: one fsync of /etc makes its links durable"
    );

    let (syncfs, fsync) = flushes(&root, &first);
    assert_eq!(
        (syncfs, fsync),
        (0, 0),
        "a run that changes nothing flushes nothing"
    );

    let (syncfs, fsync) = flushes(&root, &links_only);
    assert_eq!(syncfs, 0, "no file written, so no syncfs");
    assert_eq!(fsync, 1, "the new /etc/static must be made durable");
    assert_eq!(
        std::fs::read_link(root.host("/etc/static"))
            .expect("static link")
            .to_string_lossy(),
        "/nix/store/g2-etc/etc"
    );

    let (syncfs, _) = flushes(&root, &copy_changed);
    assert_eq!(syncfs, 1, "a changed copy: one syncfs before its rename");
    assert_eq!(root.read("/etc/sudoers"), "root ALL=(ALL) NOPASSWD\n");
}

/// Each log line of a run is one `write` to stderr: stderr is unbuffered, and formatting
/// straight into it made a system call per piece (about 8 per activation step line).
#[test]
fn every_log_line_is_one_write() {
    require_strace();
    let root = FakeRoot::new();
    let top = generation(&root, "g1", "127.0.0.1 one\n", "root ALL=(ALL) ALL\n");
    let log = root.path().join("strace-writes.log");
    let out = Command::new("strace")
        .args(["-e", "trace=write", "-o"])
        .arg(&log)
        .arg(BIN)
        .args(["activate", "--root"])
        .arg(root.path())
        .args(["--action", "switch", &top])
        .output()
        .expect("run strace");
    assert!(out.status.success(), "activate {top} failed: {out:?}");
    let lines = String::from_utf8_lossy(&out.stderr).lines().count();
    let text = std::fs::read_to_string(&log).expect("strace log");
    let writes = text.lines().filter(|l| l.starts_with("write(2,")).count();
    assert!(lines >= 10, "expected the step lines on stderr: {out:?}");
    assert_eq!(writes, lines, "one write(2, …) per stderr line:\n{text}");
}
