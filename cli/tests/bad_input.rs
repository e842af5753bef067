//! Bad input that only the whole `stagehand` process shows: a read-only root.

use stagehand_testkit::host::{require_root, require_tool};
use stagehand_testkit::FakeRoot;

fn assert_says(case: &str, msg: &str, words: &[&str]) {
    for w in words {
        assert!(msg.contains(w), "{case}: {w:?} missing from: {msg}");
    }
}

/// `stagehand etc` on a root mounted read-only (a private mount namespace makes a read-only
/// bind of the temp root; needs root and util-linux's `unshare`).
#[test]
fn a_read_only_root_is_named_and_left_alone() {
    require_root("a read-only bind mount of the root");
    let unshare = require_tool("unshare");
    require_tool("mount");
    let r = FakeRoot::new();
    let tree = r.etc_tree("ro", &[("hosts", "127.0.0.1 localhost\n", None)]);
    std::fs::create_dir_all(r.host("/etc")).expect("etc");
    let out = std::process::Command::new(unshare)
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && exec "$2" etc --root "$1" "$3""#)
        .arg("sh")
        .arg(r.path())
        .arg(env!("CARGO_BIN_EXE_stagehand"))
        .arg(&tree)
        .output()
        .expect("run stagehand under unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "activation on a read-only root succeeded: {stderr}"
    );
    assert_says(
        "read-only root",
        &stderr,
        &["Read-only file system", "/etc"],
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!r.host("/etc/hosts").exists() && !r.host("/etc/static").exists());
}
