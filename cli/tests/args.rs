//! The `stagehand` command line, run as the real binary: help and version, refused flags and
//! arguments with their exit status, `rollback --dry-run`, and the multi-call
//! `switch-to-configuration` that must keep NixOS's interface.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use stagehand_boot::profile::Profile;
use stagehand_common::rootfs::Root;
use stagehand_testkit::FakeRoot;

const BIN: &str = env!("CARGO_BIN_EXE_stagehand");

/// Every command (the hidden `bench` too) with words its `--help` must show: its
/// arguments and options.
const COMMANDS: &[(&str, &[&str])] = &[
    (
        "etc",
        &["<ETC_TREE>", "--root <DIR>", "--dry-run", "Exit status"],
    ),
    ("users", &["<USERS_JSON>", "--root <DIR>", "--dry-run"]),
    (
        "activate",
        &[
            "<TOPLEVEL>",
            "--root <DIR>",
            "--dry-run",
            "--action <ACTION>",
            "dry-activate",
        ],
    ),
    ("compile", &["<TOPLEVEL>", "--root <DIR>"]),
    ("plan", &["<TOPLEVEL>", "--root <DIR>"]),
    ("generations", &["--root <DIR>", "--esp <DIR>", "--json"]),
    ("rollback", &["--root <DIR>", "--dry-run"]),
    (
        "install-bootloader",
        &[
            "[TOPLEVEL]",
            "--root <DIR>",
            "--esp <DIR>",
            "--efivars <DIR>",
            "--loader <LOADER>",
            "systemd-boot, extlinux",
            "--timeout <SECS>",
            "--limit <N>",
            "--tries <N>",
            "--no-counting",
            "--editor",
            "--console-mode <MODE>",
            "--initrd <FILE>",
            "--dry-run",
        ],
    ),
    ("boot-entries", &["[TOPLEVEL]", "--loader <LOADER>"]),
    (
        "bless",
        &[
            "--root <DIR>",
            "--esp <DIR>",
            "--efivars <DIR>",
            "--dry-run",
        ],
    ),
    (
        "switch-to-configuration",
        &[
            "<ACTION>",
            "<TOPLEVEL>",
            "--root <DIR>",
            "- switch:",
            "- boot:",
            "- test:",
            "- dry-activate:",
            "- check:",
            "100",
        ],
    ),
    (
        "bench",
        &[
            "--reps <N>",
            "--dir <DIR>",
            "--prepare <DIR>",
            "--stress",
            "--activate",
            "--before <BIN>",
        ],
    ),
];

fn stagehand(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("NIXOS_ACTION")
        .output()
        .expect("run stagehand")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_command_has_help_naming_its_arguments() {
    for (cmd, words) in COMMANDS {
        let out = stagehand(&[cmd, "--help"]);
        let help = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{cmd} --help: {out:?}");
        for w in *words {
            assert!(help.contains(w), "{cmd} --help lacks {w:?}:\n{help}");
        }
    }
}

#[test]
fn top_level_help_lists_commands_and_exit_status_but_not_bench() {
    let out = stagehand(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let help = text(&out.stdout);
    for (cmd, _) in COMMANDS.iter().filter(|(c, _)| *c != "bench") {
        assert!(help.contains(cmd), "--help lacks {cmd}:\n{help}");
    }
    assert!(!help.contains("bench"), "the benchmark is hidden:\n{help}");
    for line in ["0  success", "1  the operation failed", "2  usage error"] {
        assert!(help.contains(line), "--help lacks {line:?}:\n{help}");
    }
}

#[test]
fn version_names_the_crate_version() {
    let out = stagehand(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        text(&out.stdout).trim(),
        format!("stagehand {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn no_command_prints_usage_and_exits_2() {
    let out = stagehand(&[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("Usage: stagehand"), "{err}");
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn an_unknown_command_is_refused() {
    let out = stagehand(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("'frobnicate'"), "{out:?}");
}

/// A status of 2 (1 for switch-to-configuration, NixOS's usage status) and a message naming
/// `what`; nothing was run, so nothing on stdout.
fn assert_refused(args: &[&str], what: &str) {
    let out = stagehand(args);
    let want = if args.first() == Some(&"switch-to-configuration") {
        1
    } else {
        2
    };
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(want), "{args:?}: {err}");
    assert!(err.contains(what), "{args:?}: {what:?} not named in: {err}");
    assert!(text(&out.stdout).is_empty(), "{args:?}: {out:?}");
}

#[test]
fn an_unknown_flag_is_refused_by_every_command() {
    for (cmd, _) in COMMANDS {
        assert_refused(&[cmd, "--frobnicate"], "'--frobnicate'");
    }
    assert_refused(&["--frobnicate"], "'--frobnicate'");
}

#[test]
fn stray_arguments_are_refused() {
    let cases: &[&[&str]] = &[
        &["etc", "/a/etc", "extra"],
        &["users", "/a.json", "extra"],
        &["activate", "/top", "extra"],
        &["compile", "/top", "extra"],
        &["plan", "/top", "extra"],
        &["generations", "extra"],
        &["rollback", "extra"],
        &["install-bootloader", "/top", "extra"],
        &["bless", "extra"],
        &["bench", "extra"],
        &["switch-to-configuration", "switch", "/top", "extra"],
    ];
    for args in cases {
        assert_refused(args, "'extra'");
    }
}

#[test]
fn options_a_command_does_not_offer_and_bad_values_are_refused() {
    assert_refused(&["compile", "--dry-run", "/top"], "'--dry-run'");
    assert_refused(&["generations", "--dry-run"], "'--dry-run'");
    assert_refused(&["etc"], "<ETC_TREE>");
    assert_refused(&["activate", "--action", "reboot", "/top"], "'reboot'");
    assert_refused(&["install-bootloader", "--tries", "0"], "'0'");
    assert_refused(&["install-bootloader", "--loader", "grub"], "'grub'");
    assert_refused(
        &["install-bootloader", "--tries", "2", "--no-counting"],
        "--no-counting",
    );
    assert_refused(&["switch-to-configuration", "frob", "/top"], "'frob'");
    assert_refused(&["switch-to-configuration"], "<ACTION>");
}

#[test]
fn a_bad_nixos_action_is_a_usage_error() {
    let out = Command::new(BIN)
        .args(["activate", "/nix/store/x-system"])
        .env("NIXOS_ACTION", "reboot")
        .output()
        .expect("run stagehand");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("stagehand activate: NIXOS_ACTION=\"reboot\""),
        "{err}"
    );
}

#[test]
fn a_failed_operation_exits_1_with_one_message() {
    let missing = tempfile::tempdir().expect("tempdir").path().join("gone");
    let out = stagehand(&["rollback", "--root", missing.to_str().expect("utf8")]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("stagehand rollback: cannot open root "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// A root whose system profile has generations 1 and 2, 2 current.
fn two_generations() -> FakeRoot {
    let r = FakeRoot::new();
    let root = Root::open(r.path()).expect("root");
    let profile = Profile::system(&root);
    for top in ["/nix/store/g1-nixos-system", "/nix/store/g2-nixos-system"] {
        profile.set(Path::new(top)).expect("set");
    }
    r
}

#[test]
fn rollback_dry_run_says_what_it_would_do_and_changes_nothing() {
    let r = two_generations();
    let root_arg = r.path().to_str().expect("utf8");
    let profiles = "/nix/var/nix/profiles";
    let before = (r.stamps(), r.snapshot(profiles));
    assert!(before.1.contains("/system L system-2-link"), "{}", before.1);

    let out = stagehand(&["rollback", "--dry-run", "--root", root_arg]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let said = text(&out.stdout);
    assert!(said.contains("generation 2 -> 1 (dry run"), "{said}");
    assert_eq!(
        (r.stamps(), r.snapshot(profiles)),
        before,
        "--dry-run wrote"
    );

    // The same command without --dry-run does move the link (so the check above can fail).
    let out = stagehand(&["rollback", "--root", root_arg]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("generation 2 -> 1\n"), "{out:?}");
    assert!(r.snapshot(profiles).contains("/system L system-1-link"));
}

/// NixOS's usage text, as `<toplevel>/bin/switch-to-configuration` prints it.
const NIXOS_USAGE: &str = "Usage: switch-to-configuration [check|switch|boot|test|dry-activate]\n";

/// The binary started as `argv0` (a name ending in `switch-to-configuration`).
fn multicall(argv0: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg0(argv0)
        .args(args)
        .output()
        .expect("run stagehand as switch-to-configuration")
}

#[test]
fn switch_to_configuration_by_name_keeps_nixos_interface() {
    let t = tempfile::tempdir().expect("tempdir");
    let link = t.path().join("bin/switch-to-configuration");
    std::fs::create_dir_all(link.parent().expect("bin")).expect("mkdir");
    std::os::unix::fs::symlink(BIN, &link).expect("ln");
    let link = link.to_str().expect("utf8");
    // No action, two, an unknown one, and options NixOS's program does not have: its
    // usage text and status 1, and nothing is done.
    for args in [
        &[][..],
        &["switch", "extra"],
        &["frob"],
        &["--help"],
        &["--version"],
        &["--root", "/"],
    ] {
        let out = Command::new(link).args(args).output().expect("run link");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.starts_with(NIXOS_USAGE), "{args:?}: {err}");
        assert!(text(&out.stdout).is_empty(), "{args:?}: {out:?}");
    }
    // A known action gets past the argument check: started by a bare name, the toplevel
    // cannot be found, which is said instead of the usage.
    let out = multicall("switch-to-configuration", &["dry-activate"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("run it by its full path"), "{err}");
    assert!(!err.contains("Usage:"), "{err}");
}

#[test]
fn output_into_a_closed_pipe_is_not_a_crash() {
    let r = two_generations();
    // The reader is gone before the table is written (`stagehand generations | head -0`).
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(BIN)
        .args(["generations", "--root", r.path().to_str().expect("utf8")])
        .stdout(writer)
        .output()
        .expect("run stagehand");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}
