//! `stagehand users` where the root is unusual: no `/dev`, dates far in the future.

use std::process::{Command, Output};

use stagehand_testkit::host::{require_root, require_tool};
use stagehand_testkit::FakeRoot;

/// An immutable-users spec with one user whose plaintext password must be hashed, so a
/// salt is drawn, and whose account expires on `expires` (JSON, e.g. `null`).
fn spec_with(expires: &str) -> String {
    format!(
        r#"{{"mutableUsers": false, "users": [
            {{"name": "dave", "uid": 1001, "group": "users", "home": "/home/dave",
              "shell": "/bin/sh", "password": "plain", "expires": {expires}}}],
          "groups": [{{"name": "users", "gid": 100, "members": []}}]}}"#
    )
}

fn users(r: &FakeRoot) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stagehand"))
        .args(["users", "/users.json", "--root"])
        .arg(r.path())
        .output()
        .expect("run stagehand users")
}

/// Activation runs chrooted into roots that have no `/dev` mounted. Salts come from the
/// `getrandom(2)` system call, which needs no device file: with an empty `/dev` (a tmpfs
/// over it in a private mount namespace) the password is still hashed.
#[test]
fn a_password_is_hashed_when_dev_is_empty() {
    require_root("a private mount namespace with an empty /dev");
    let unshare = require_tool("unshare");
    require_tool("mount");
    let r = FakeRoot::new();
    r.write("/users.json", &spec_with("null"));
    let out = Command::new(unshare)
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none /dev && exec "$0" users /users.json --root "$1""#)
        .arg(env!("CARGO_BIN_EXE_stagehand"))
        .arg(r.path())
        .output()
        .expect("run stagehand under unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "users without /dev failed: {stderr}");
    let shadow = r.read("/etc/shadow");
    let dave = shadow
        .lines()
        .find(|l| l.starts_with("dave:"))
        .expect("dave in /etc/shadow");
    let hash = dave.split(':').nth(1).expect("hash field");
    assert!(stagehand_activation::crypt::verify("plain", hash), "{dave}");
}

/// A year whose day count overflows (or that is no number at all) is an error naming
/// the field, before anything is written; it once panicked with 'multiply with overflow'.
#[test]
fn a_huge_expires_year_is_an_error_naming_the_field() {
    for year in [
        "9223372036854775807",
        "-9223372036854775808",
        "100000000000000000",
        "99999999999999999999",
    ] {
        let r = FakeRoot::new();
        r.write("/users.json", &spec_with(&format!(r#""{year}-03-01""#)));
        let out = users(&r);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "year {year} accepted: {stderr}");
        assert!(!stderr.contains("panicked"), "year {year}: {stderr}");
        assert!(
            stderr.contains("expires") && stderr.contains("YYYY-MM-DD"),
            "year {year}: {stderr}"
        );
        assert!(!r.host("/etc/shadow").exists(), "year {year} wrote shadow");
    }
}

/// A far but representable year is kept as the right day count (10000-01-01 is day
/// 2932897 after 1970-01-01), not wrapped into a wrong date.
#[test]
fn a_far_expires_year_is_the_right_day() {
    let r = FakeRoot::new();
    r.write("/users.json", &spec_with(r#""10000-01-01""#));
    let out = users(&r);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shadow = r.read("/etc/shadow");
    let dave = shadow
        .lines()
        .find(|l| l.starts_with("dave:"))
        .expect("dave in /etc/shadow");
    assert_eq!(dave.split(':').nth(7), Some("2932897"), "{dave}");
}
