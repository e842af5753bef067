//! Whole activations of generations laid out as nixpkgs builds them: no `activation.json`,
//! only the toplevel's own `activate` and `dry-activate` scripts.

use std::path::Path;

use stagehand_activation::{activate, Action, ActivateOptions, Outcome};
use stagehand_testkit::host::{install_bash, require_root};
use stagehand_testkit::nixos::{ActivateScript, Snippet};
use stagehand_testkit::FakeRoot;

const TOP: &str = "/nix/store/7q1-nixos-system-demo-25.11";
const PERL: &str = "/nix/store/8x1-perl-5.40.0-env/bin/perl";

/// `activate` and `dry-activate` as activation-script.nix writes them for `snippets`.
fn scripts(snippets: &[Snippet]) -> (String, String) {
    let path = [
        "/nix/store/c1-coreutils-9.5".to_owned(),
        "/nix/store/g1-gnugrep-3.11".to_owned(),
    ];
    let script = ActivateScript {
        shell: "/bin/bash",
        path: &path,
        system_config: TOP,
        snippets,
    };
    (
        script.activate().expect("activate"),
        script.dry_activate().expect("dry-activate"),
    )
}

fn users_snippet() -> String {
    format!(
        "install -m 0700 -d /root\ninstall -m 0755 -d /home\n\n{PERL} \\\n\
         -w /nix/store/u1-update-users-groups.pl /nix/store/u2-users-groups.json\n"
    )
}

fn etc_snippet() -> String {
    format!(
        "# Set up the statically computed bits of /etc.\necho \"setting up /etc...\"\n\
         {PERL} /nix/store/e1-setup-etc.pl /nix/store/abc-etc/etc\n"
    )
}

const BINSH: &str = "mkdir -p /bin\nchmod 0755 /bin\n\
    ln -sfn \"/nix/store/b1-bash-interactive/bin/sh\" /bin/.sh.tmp\n\
    mv /bin/.sh.tmp /bin/sh # atomically replace /bin/sh\n";

/// A third-party snippet (sops-nix-like) using only bash builtins, and the prelude's
/// variables.
const SECRETS: &str = "echo \"secret for $systemConfig ($NIXOS_ACTION)\" > /run/secret-marker\n\
    echo \"$PATH\" > /run/path-seen\n";

/// The generation with `snippets` in its activate script (and, with `dry`, its
/// dry-activate script), the etc tree, the users JSON and the profile link.
fn generation(r: &FakeRoot, snippets: &[Snippet], dry: bool) {
    r.etc_tree(
        "abc",
        &[
            ("hosts", "127.0.0.1 localhost\n", None),
            (
                "sudoers",
                "root ALL=(ALL) ALL\n",
                Some(("0440", "root", "root")),
            ),
        ],
    );
    r.write(
        "/nix/store/u2-users-groups.json",
        r#"{"mutableUsers": true, "users": [
            {"name": "root", "uid": 0, "group": "root", "home": "/root", "shell": "/bin/bash",
             "hashedPassword": "!", "description": "System administrator", "isSystemUser": false,
             "createHome": false, "homeMode": "700", "subUidRanges": [],
             "subGidRanges": [], "autoSubUidGidRange": false, "hashedPasswordFile": null,
             "initialHashedPassword": null, "initialPassword": null, "password": null,
             "expires": null, "linger": null},
            {"name": "alice", "uid": 1000, "group": "users", "home": "/home/alice",
             "shell": "/bin/bash", "hashedPassword": "$y$j9T$abc$def", "description": "Alice",
             "isSystemUser": false, "createHome": true, "homeMode": "700",
             "subUidRanges": [], "subGidRanges": [],
             "autoSubUidGidRange": false, "hashedPasswordFile": null,
             "initialHashedPassword": null, "initialPassword": null, "password": null,
             "expires": null, "linger": null}],
          "groups": [{"name": "root", "gid": 0, "members": []},
                     {"name": "users", "gid": 100, "members": []},
                     {"name": "wheel", "gid": 1, "members": ["alice"]}]}"#,
    );
    let (activate, dry_activate) = scripts(snippets);
    r.write(&format!("{TOP}/activate"), &activate);
    if dry {
        r.write(&format!("{TOP}/dry-activate"), &dry_activate);
    }
    r.symlink(&format!("{TOP}/etc"), "/nix/store/abc-etc/etc");
    r.write(&format!("{TOP}/nixos-version"), "25.11");
    r.symlink("/nix/var/nix/profiles/system-1-link", TOP);
    r.symlink("/nix/var/nix/profiles/system", "system-1-link");
    std::fs::create_dir_all(r.host("/run")).expect("mkdir /run");
}

/// NixOS's order for these: binsh, users, etc (after users), then the third-party one.
fn standard() -> Vec<Snippet> {
    vec![
        Snippet::new("binsh", BINSH),
        Snippet::new("setupSecrets", SECRETS).dry(),
        Snippet::new("users", &users_snippet()).dry(),
        Snippet::new("etc", &etc_snippet()).after(&["users"]),
    ]
}

fn opts(r: &FakeRoot, action: Action) -> ActivateOptions {
    ActivateOptions {
        root: r.path().to_path_buf(),
        dry_run: false,
        action,
    }
}

fn names(rep: &stagehand_activation::ActivationReport) -> Vec<&str> {
    rep.steps.iter().map(|s| s.name.as_str()).collect()
}

#[test]
fn a_nixpkgs_generation_is_activated_from_its_activate_script() {
    require_root("running the third-party snippet chrooted into the root");
    let r = FakeRoot::new();
    install_bash(r.path());
    generation(&r, &standard(), false);
    let store_before: Vec<_> = r
        .stamps()
        .into_iter()
        .filter(|(p, _)| p.starts_with(r.host("/nix/store")))
        .collect();
    let rep = activate(
        Path::new("/nix/var/nix/profiles/system"),
        &opts(&r, Action::Boot),
    )
    .expect("activate");
    assert!(rep.success(), "{:?}", rep.steps);
    // The script's order; the built-ins native, the third-party snippet as bash.
    assert_eq!(
        names(&rep),
        ["binsh", "users", "etc", "setupSecrets", "current-system"]
    );
    assert_eq!(
        r.read("/etc/passwd"),
        "root:x:0:0:System administrator:/root:/bin/bash\nalice:x:1000:100:Alice:/home/alice:/bin/bash\n"
    );
    assert!(r.read("/etc/group").contains("wheel:x:1:alice\n"));
    assert!(r.read("/etc/shadow").contains("alice:$y$j9T$abc$def:"));
    assert_eq!(
        std::fs::read_link(r.host("/etc/static")).expect("static"),
        Path::new("/nix/store/abc-etc/etc")
    );
    assert_eq!(r.read("/etc/hosts"), "127.0.0.1 localhost\n");
    assert_eq!(
        std::fs::read_link(r.host("/bin/sh")).expect("sh"),
        Path::new("/nix/store/b1-bash-interactive/bin/sh")
    );
    // The snippet ran with the script's prelude: systemConfig, NIXOS_ACTION, its PATH.
    assert_eq!(
        r.read("/run/secret-marker"),
        format!("secret for {TOP} (boot)\n")
    );
    assert_eq!(
        r.read("/run/path-seen"),
        "/empty:/nix/store/c1-coreutils-9.5/bin:/nix/store/c1-coreutils-9.5/sbin:\
         /nix/store/g1-gnugrep-3.11/bin:/nix/store/g1-gnugrep-3.11/sbin\n"
    );
    assert_eq!(
        std::fs::read_link(r.host("/run/current-system")).expect("current"),
        Path::new(TOP)
    );
    // Nothing was written into the store (no compiled plan, no cache).
    let store_after: Vec<_> = r
        .stamps()
        .into_iter()
        .filter(|(p, _)| p.starts_with(r.host("/nix/store")))
        .collect();
    assert_eq!(store_after, store_before);
}

#[test]
fn a_snippet_that_calls_exit_stops_activation_as_nixos_does() {
    require_root("running snippets chrooted into the root");
    let r = FakeRoot::new();
    install_bash(r.path());
    let mut snippets = standard();
    snippets.push(Snippet::new(
        "early",
        "echo before > /run/early
exit 4
echo after >> /run/early",
    ));
    generation(&r, &snippets, false);
    let rep = activate(Path::new(TOP), &opts(&r, Action::Switch)).expect("activate");
    assert!(!rep.success());
    assert_eq!(rep.stopped_by.as_deref(), Some("early"));
    // binsh ran before it; nothing after it did; current-system was not pointed.
    assert_eq!(names(&rep), ["binsh", "early"]);
    assert!(matches!(&rep.steps[1].outcome, Outcome::Failed(m) if m.contains("exit 4")));
    assert_eq!(r.read("/run/early"), "before\n");
    assert!(!r.host("/run/secret-marker").exists());
    assert!(!r.host("/etc/passwd").exists());
    assert!(!r.host("/run/current-system").exists());
    assert!(!rep.current_system_updated);
}

#[test]
fn without_a_users_snippet_users_are_left_alone() {
    // userborn or systemd-sysusers: the users snippet is empty, so nixpkgs leaves it out.
    let r = FakeRoot::new();
    generation(&r, &[Snippet::new("etc", &etc_snippet())], false);
    // What userborn left, which the etc step resolves the sidecars' owners in.
    let passwd = "root:x:0:0::/root:/bin/sh\n";
    r.write("/etc/passwd", passwd);
    r.write("/etc/group", "root:x:0:\n");
    let rep = activate(Path::new(TOP), &opts(&r, Action::Boot)).expect("activate");
    assert!(rep.success(), "{:?}", rep.steps);
    assert_eq!(names(&rep), ["etc", "current-system"]);
    assert_eq!(r.read("/etc/passwd"), passwd);
    assert_eq!(r.read("/etc/hosts"), "127.0.0.1 localhost\n");
}

#[test]
fn a_builtin_a_module_overrode_runs_as_its_bash() {
    require_root("running snippets chrooted into the root");
    let r = FakeRoot::new();
    install_bash(r.path());
    let custom = format!("{}\necho custom >> /run/etc-marker", etc_snippet());
    generation(&r, &[Snippet::new("etc", &custom)], false);
    let rep = activate(Path::new(TOP), &opts(&r, Action::Boot)).expect("activate");
    // Run as bash: perl is not in this root, so it fails; the native etc step did not run.
    assert_eq!(names(&rep), ["etc", "current-system"]);
    assert!(matches!(&rep.steps[0].outcome, Outcome::Failed(m) if m.contains("'etc' failed")));
    assert_eq!(r.read("/run/etc-marker"), "custom\n");
    assert!(!r.host("/etc/static").exists());
    // As under NixOS, a failed snippet does not stop the rest.
    assert!(rep.current_system_updated);
}

#[test]
fn dry_activation_uses_what_dry_activate_supports() {
    require_root("running snippets chrooted into the root");
    let r = FakeRoot::new();
    install_bash(r.path());
    generation(&r, &standard(), true);
    let passwd = "root:x:0:0::/root:/bin/sh\n";
    r.write("/etc/passwd", passwd);
    r.write("/etc/group", "root:x:0:\n");
    let before = r.stamps();
    let rep = activate(Path::new(TOP), &opts(&r, Action::DryActivate)).expect("dry");
    assert!(rep.success(), "{:?}", rep.steps);
    // The snippet that supports it ran (its own effect), nothing else was written.
    assert_eq!(
        r.read("/run/secret-marker"),
        format!("secret for {TOP} (dry-activate)\n")
    );
    std::fs::remove_file(r.host("/run/secret-marker")).expect("rm");
    std::fs::remove_file(r.host("/run/path-seen")).expect("rm");
    assert_eq!(r.stamps().len(), before.len());
    assert_eq!(r.read("/etc/passwd"), passwd);
    assert!(!r.host("/etc/static").exists());
    // Without dry-activate in the generation, no bash snippet runs in dry mode.
    std::fs::remove_file(r.host(&format!("{TOP}/dry-activate"))).expect("rm");
    activate(Path::new(TOP), &opts(&r, Action::DryActivate)).expect("dry");
    assert!(!r.host("/run/secret-marker").exists());
}

#[test]
fn a_damaged_activate_script_is_refused_naming_it() {
    let r = FakeRoot::new();
    generation(&r, &standard(), false);
    let path = r.host(&format!("{TOP}/activate"));
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replacen("_localstatus=0\n", "", 1)).expect("write");
    let e = activate(Path::new(TOP), &opts(&r, Action::Boot)).expect_err("damaged");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("{TOP}/activate")) && msg.contains("line 16: snippet \"binsh\""),
        "{msg}"
    );
    assert!(!r.host("/etc/passwd").exists());
}
