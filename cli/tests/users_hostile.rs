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

/// The running system's NSS (here LDAP, answered by a stand-in `getent` on `PATH`) already
/// has uid 1000 and gid 999: `stagehand users` on `/` skips them, as NixOS's allocator does.
/// `/` is a chroot holding the static binary, bash for the stand-in and the root's files.
#[test]
fn on_the_running_system_new_ids_skip_what_getent_resolves() {
    require_root("chroot");
    let chroot = require_tool("chroot");
    let r = FakeRoot::new();
    stagehand_testkit::host::install_bash(r.path());
    std::fs::copy(env!("CARGO_BIN_EXE_stagehand"), r.host("/stagehand")).expect("copy binary");
    r.write(
        "/bin/getent",
        "#!/bin/bash\necho \"$1 $2\" >> /asked\n\
         case \"$1 $2\" in 'passwd 1000'|'group 999') echo found; exit 0;; esac\nexit 2\n",
    );
    std::fs::set_permissions(
        r.host("/bin/getent"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    r.write(
        "/etc/nsswitch.conf",
        "passwd: files ldap\ngroup: files ldap\n",
    );
    r.write(
        "/users.json",
        r#"{"mutableUsers": false, "users": [
            {"name": "alice", "group": "alice", "home": "/home/alice", "shell": "/bin/sh",
             "isSystemUser": false}],
          "groups": [{"name": "alice", "members": []}]}"#,
    );
    let out = Command::new(chroot)
        .arg(r.path())
        .args(["/stagehand", "users", "/users.json"])
        .env_clear()
        .env("PATH", "/bin")
        .output()
        .expect("run stagehand in the chroot");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        r.read("/etc/passwd").starts_with("alice:x:1001:998:"),
        "{}\n{stderr}",
        r.read("/etc/passwd")
    );
    let asked = r.read("/asked");
    assert!(
        asked.contains("passwd 1000") && asked.contains("group 999"),
        "{asked}"
    );
    // The same root activated from outside (`--root`): the host's NSS says nothing about
    // it, so getent is not asked and 1000 is free there.
    let other = FakeRoot::new();
    other.write(
        "/etc/nsswitch.conf",
        "passwd: files ldap\ngroup: files ldap\n",
    );
    other.write("/users.json", &r.read("/users.json"));
    let out = users(&other);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(other.read("/etc/passwd").starts_with("alice:x:1000:999:"));
}
