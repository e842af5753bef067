//! Whole activations of fake generations on temporary roots.

use std::path::Path;

use stagehand_activation::compiled;
use stagehand_activation::etc::ReadBack;
use stagehand_activation::{activate, Action, ActivateOptions, ActivationError, Outcome};
use stagehand_common::rootfs::Root;
use stagehand_testkit::host::{install_bash, require_root};
use stagehand_testkit::nixos::BUILTIN_ORDER;
use stagehand_testkit::FakeRoot;

const TOP: &str = "/nix/store/abc-nixos-system-demo";

fn generation(r: &FakeRoot, snippets: &str) {
    let etc = r.etc_tree("abc", &[("hosts", "127.0.0.1 localhost\n", None)]);
    r.write(
        "/nix/store/abc-users-groups.json",
        r#"{"mutableUsers": true, "users": [{"name": "root", "uid": 0, "group": "root",
            "home": "/root", "shell": "/bin/bash", "hashedPassword": "!"}],
            "groups": [{"name": "root", "gid": 0, "members": []}]}"#,
    );
    r.write(
        &format!("{TOP}/activation.json"),
        &format!(
            r#"{{"version": 1, "etc": "{etc}", "usersGroups": "/nix/store/abc-users-groups.json",
                "binsh": "/nix/store/abc-bash/bin/sh", "usrbinenv": "/nix/store/abc-coreutils/bin/env",
                "shell": "/bin/bash", "snippets": {snippets}}}"#
        ),
    );
    // The profile chain a boot entry points through.
    r.symlink("/nix/var/nix/profiles/system-1-link", TOP);
    r.symlink("/nix/var/nix/profiles/system", "system-1-link");
}

fn opts(r: &FakeRoot, action: Action) -> ActivateOptions {
    ActivateOptions {
        root: r.path().to_path_buf(),
        dry_run: false,
        action,
    }
}

fn outcome<'a>(rep: &'a stagehand_activation::ActivationReport, name: &str) -> &'a Outcome {
    &rep.steps
        .iter()
        .find(|s| s.name == name)
        .expect(name)
        .outcome
}

#[test]
fn activation_runs_builtins_and_sets_current_system() {
    let r = FakeRoot::new();
    generation(&r, "[]");
    let rep = activate(
        Path::new("/nix/var/nix/profiles/system"),
        &opts(&r, Action::Boot),
    )
    .expect("activate");
    assert!(rep.success(), "{:?}", rep.steps);
    let names: Vec<&str> = rep.steps.iter().map(|s| s.name.as_str()).collect();
    // NixOS's order for the built-ins, then the link to the new system.
    let mut want = BUILTIN_ORDER.to_vec();
    want.push("current-system");
    assert_eq!(names, want);
    assert_eq!(outcome(&rep, "etc"), &Outcome::Changed);
    assert_eq!(
        std::fs::read_link(r.host("/run/current-system")).expect("link"),
        Path::new(TOP)
    );
    assert_eq!(
        std::fs::read_link(r.host("/bin/sh")).expect("sh"),
        Path::new("/nix/store/abc-bash/bin/sh")
    );
    assert_eq!(
        std::fs::read_link(r.host("/usr/bin/env")).expect("env"),
        Path::new("/nix/store/abc-coreutils/bin/env")
    );
    assert_eq!(r.read("/etc/passwd"), "root:x:0:0::/root:/bin/bash\n");
    assert_eq!(r.read("/etc/hosts"), "127.0.0.1 localhost\n");

    // The etc step's read-back either ran (the clock tick had passed by the end) or was
    // left to the next run; it never makes the end wait for the tick.
    let first = rep.etc_readback;
    assert!(
        matches!(first, Some(ReadBack::Done | ReadBack::LeftToNextRun)),
        "{first:?}"
    );

    // Again: every step unchanged, and nothing under the root written — except, when the
    // first read-back was left to this run, the etc cache, which now learns what the first
    // activation made. Then a third run writes nothing at all.
    let cache_dir = r.host("/var/lib/stagehand");
    let outside_cache = |m: std::collections::BTreeMap<std::path::PathBuf, _>| {
        m.into_iter()
            .filter(|(p, _)| !p.starts_with(&cache_dir))
            .collect::<Vec<_>>()
    };
    let mut runs = 0;
    loop {
        let before = r.stamps();
        let rep = activate(Path::new(TOP), &opts(&r, Action::Switch)).expect("activate");
        runs += 1;
        for s in &rep.steps {
            assert_eq!(s.outcome, Outcome::Unchanged, "{}", s.name);
        }
        assert_eq!(
            rep.etc_readback, None,
            "an unchanged etc step reads nothing back"
        );
        let after = r.stamps();
        if after == before {
            break;
        }
        assert_eq!(
            (runs, first),
            (1, Some(ReadBack::LeftToNextRun)),
            "a re-run wrote something although the read-back after the first run was done"
        );
        assert_eq!(
            outside_cache(after),
            outside_cache(before),
            "a second activation wrote something besides the etc cache"
        );
    }
}

#[test]
fn snippets_run_in_order_failures_do_not_stop_the_rest() {
    require_root("running snippets chrooted into the root");
    let r = FakeRoot::new();
    install_bash(r.path());
    generation(
        &r,
        r#"[
          {"name": "zz-last", "deps": [], "text": "echo zz-last >> /log"},
          {"name": "a-needs-etc", "deps": ["etc"], "text": "echo a-needs-etc $NIXOS_ACTION >> /log; [ -L /etc/hosts ] && echo etc-ready >> /log"},
          {"name": "b-fails", "deps": [], "text": "false\necho still-in-b >> /log"},
          {"name": "c-dry", "deps": [], "text": "echo c-dry $NIXOS_ACTION >> /log", "supportsDryActivation": true},
          {"name": "users", "deps": ["c-dry"], "text": "echo NOT RUN: native step >> /log"}
        ]"#,
    );
    let rep = activate(Path::new(TOP), &opts(&r, Action::Switch)).expect("activate");
    assert!(!rep.success());
    assert_eq!(rep.failed_steps(), ["b-fails"]);
    assert!(
        matches!(outcome(&rep, "b-fails"), Outcome::Failed(m) if m.contains("'b-fails' failed (1)"))
    );
    assert_eq!(
        r.read("/log"),
        "c-dry switch\na-needs-etc switch\netc-ready\nstill-in-b\nzz-last\n"
    );
    assert!(rep.current_system_updated);
    let names: Vec<&str> = rep.steps.iter().map(|s| s.name.as_str()).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).expect(n);
    assert!(pos("c-dry") < pos("users") && pos("etc") < pos("a-needs-etc"));

    // Dry activation: only snippets that support it run; nothing else is written.
    std::fs::remove_file(r.host("/log")).expect("rm");
    std::fs::remove_file(r.host("/run/current-system")).expect("rm");
    let rep = activate(Path::new(TOP), &opts(&r, Action::DryActivate)).expect("dry");
    assert_eq!(r.read("/log"), "c-dry dry-activate\n");
    assert!(!r.host("/run/current-system").exists());
    assert!(!rep.current_system_updated);
}

#[test]
fn compiled_plan_is_used_and_a_damaged_one_refused() {
    let r = FakeRoot::new();
    generation(&r, "[]");
    let root = Root::open(r.path()).expect("root");
    let plan = compiled::compile(&root, Path::new(TOP)).expect("compile");
    assert_eq!(plan.toplevel, TOP);
    assert!(r.host(&format!("{TOP}/activation.plan")).exists());
    // The plan, not the JSON, is what activation reads now.
    r.write(&format!("{TOP}/activation.json"), "{ broken");
    let rep = activate(Path::new(TOP), &opts(&r, Action::Boot)).expect("activate from plan");
    assert!(rep.success(), "{:?}", rep.steps);

    // A flipped byte in the payload: refused, naming the file and the checksum.
    let p = r.host(&format!("{TOP}/activation.plan"));
    let mut bytes = std::fs::read(&p).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&p, &bytes).expect("write");
    let e = activate(Path::new(TOP), &opts(&r, Action::Boot)).expect_err("corrupt");
    let msg = e.to_string();
    assert!(
        msg.contains("activation.plan") && msg.contains("checksum"),
        "{msg}"
    );

    // Without the plan, the JSON is used again — and a broken one is reported by name.
    std::fs::remove_file(&p).expect("rm");
    let e = activate(Path::new(TOP), &opts(&r, Action::Boot)).expect_err("bad json");
    assert!(matches!(e, ActivationError::Load(_)));
    assert!(e.to_string().contains("activation.json"), "{e}");
}

#[test]
fn plan_copied_from_another_generation_is_refused() {
    let r = FakeRoot::new();
    generation(&r, "[]");
    let root = Root::open(r.path()).expect("root");
    compiled::compile(&root, Path::new(TOP)).expect("compile");
    let other = "/nix/store/def-nixos-system-other";
    std::fs::create_dir_all(r.host(other)).expect("mkdir");
    std::fs::copy(
        r.host(&format!("{TOP}/activation.plan")),
        r.host(&format!("{other}/activation.plan")),
    )
    .expect("copy");
    let e = activate(Path::new(other), &opts(&r, Action::Boot)).expect_err("mismatch");
    assert!(
        e.to_string()
            .contains("compiled for /nix/store/abc-nixos-system-demo"),
        "{e}"
    );
}

#[test]
fn dry_run_changes_nothing() {
    let r = FakeRoot::new();
    generation(&r, "[]");
    let before = r.snapshot("/");
    let mut o = opts(&r, Action::Switch);
    o.dry_run = true;
    let rep = activate(Path::new(TOP), &o).expect("dry");
    assert_eq!(outcome(&rep, "etc"), &Outcome::Changed);
    assert_eq!(r.snapshot("/"), before);
}
