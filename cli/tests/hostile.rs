//! The hostile-input tier (issue #15): every command that reads a file of outside input,
//! fed each class of bad input, through the real binaries. For every (command, input)
//! pair the same invariants hold:
//! - exit status 1 (the operation failed), never 0, never a panic (101) or a signal, and
//!   within 20 s (a FIFO or a device once hung a reader, or read until memory ran out);
//! - one clear message on stderr that names the input;
//! - nothing outside `--root` changed (a planted link points at a file outside it);
//! - no account file written, so nothing secret made readable.
//!
//! The per-format matrices (`*/tests/bad_input.rs`) check each reader's exact messages;
//! this tier checks that no reader escapes the contract.

use stagehand_testkit::hostile::{check, plant, run, snapshot, CLASSES};
use stagehand_testkit::FakeRoot;

/// A command under test: its binary and arguments (with `{root}`, `{in}` and `{out}`
/// replaced), where the input goes (inside the root, or a host path when the command
/// takes host paths), and what the message must name.
struct Case {
    name: &'static str,
    binary: &'static str,
    args: &'static [&'static str],
    /// The input's path inside the root.
    input: &'static str,
    /// Files the generation needs besides the input.
    setup: fn(&FakeRoot),
    /// What the message names (a substring).
    names: &'static str,
}

const TOP: &str = "/nix/store/h0-nixos-system-hostile";

fn generation(r: &FakeRoot) {
    r.symlink("/nix/var/nix/profiles/system-1-link", TOP);
    r.symlink("/nix/var/nix/profiles/system", "system-1-link");
    r.write(&format!("{TOP}/nixos-version"), "25.11");
}

fn nothing(_: &FakeRoot) {}

/// Make `entry` a copied one: its `.mode` sidecar holds `mode`, owner and group root.
fn sidecars(r: &FakeRoot, entry: &str, mode: &str) {
    r.write(&format!("{entry}.mode"), mode);
    r.write(&format!("{entry}.uid"), "+0\n");
    r.write(&format!("{entry}.gid"), "+0\n");
}

/// `stagehand etc --root <r> <tree>`: (exit code, stderr).
fn run_etc(r: &FakeRoot, tree: &str) -> (Option<i32>, String) {
    run(
        env!("CARGO_BIN_EXE_stagehand"),
        &[
            "etc".into(),
            "--root".into(),
            r.path().to_string_lossy().into_owned(),
            tree.to_owned(),
        ],
    )
}

const STAGEHAND: &str = env!("CARGO_BIN_EXE_stagehand");

const CASES: &[Case] = &[
    Case {
        name: "users",
        binary: STAGEHAND,
        args: &["users", "--root", "{root}", "/in.json"],
        input: "/in.json",
        setup: nothing,
        names: "in.json",
    },
    Case {
        name: "activate (activation.json)",
        binary: STAGEHAND,
        args: &["activate", "--root", "{root}", TOP],
        input: "/nix/store/h0-nixos-system-hostile/activation.json",
        setup: generation,
        names: "activation.json",
    },
    Case {
        name: "activate (NixOS's activate script)",
        binary: STAGEHAND,
        args: &["activate", "--root", "{root}", TOP],
        input: "/nix/store/h0-nixos-system-hostile/activate",
        setup: generation,
        names: "activate",
    },
    Case {
        name: "compile",
        binary: STAGEHAND,
        args: &["compile", "--root", "{root}", TOP],
        input: "/nix/store/h0-nixos-system-hostile/activation.json",
        setup: generation,
        names: "activation.json",
    },
    Case {
        name: "plan",
        binary: STAGEHAND,
        args: &["plan", "--root", "{root}", TOP],
        input: "/nix/store/h0-nixos-system-hostile/activation.plan",
        setup: generation,
        names: "activation.plan",
    },
    Case {
        name: "install-bootloader (boot.json)",
        binary: STAGEHAND,
        args: &[
            "install-bootloader",
            "--root",
            "{root}",
            "--esp",
            "/boot",
            "--efivars",
            "/efivars",
            "--dry-run",
        ],
        input: "/nix/store/h0-nixos-system-hostile/boot.json",
        setup: generation,
        names: "boot.json",
    },
];

#[test]
fn every_reader_refuses_every_class_of_bad_input_cleanly() {
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(
        outside.path().join("secret.json"),
        br#"{"mutableUsers": true, "users": [], "groups": []}"#,
    )
    .expect("write");
    let before = snapshot(outside.path());
    for case in CASES {
        for (class, how) in CLASSES {
            let r = FakeRoot::new();
            (case.setup)(&r);
            plant(&r.host(case.input), how, outside.path());
            let args: Vec<String> = case
                .args
                .iter()
                .map(|a| a.replace("{root}", &r.path().to_string_lossy()))
                .collect();
            let (code, stderr) = run(case.binary, &args);
            check(case.name, class, code, &stderr, case.names);
            for account in ["/etc/passwd", "/etc/shadow", "/etc/group"] {
                assert!(
                    !r.host(account).exists(),
                    "{} with {class}: {account} was written",
                    case.name
                );
            }
        }
    }
    assert_eq!(
        snapshot(outside.path()),
        before,
        "a file outside the root changed"
    );
}

/// `stagehand etc` reads a tree of entries and sidecars: each entry planted with a bad
/// class is refused (exit 1, the entry named), the other entries still installed, and
/// nothing outside the root is touched.
#[test]
fn etc_trees_with_hostile_entries_are_refused_entry_by_entry() {
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("secret.json"), b"top secret").expect("write");
    let before = snapshot(outside.path());
    for (class, how) in CLASSES {
        let r = FakeRoot::new();
        let tree = r.etc_tree("h1", &[("hosts", "127.0.0.1 localhost\n", None)]);
        // A copied entry (mode sidecar) whose source is the hostile input.
        let source = "/nix/store/h1-bad-source";
        plant(&r.host(source), how, outside.path());
        r.symlink(&format!("{tree}/bad"), source);
        sidecars(&r, &format!("{tree}/bad"), "0400\n");
        let (code, stderr) = run_etc(&r, &tree);
        match how {
            // Content that is merely odd is copied as it is; the entry is fine.
            stagehand_testkit::hostile::Plant::Bytes(b) => {
                assert_eq!(code, Some(0), "etc with {class}: {stderr}");
                assert_eq!(std::fs::read(r.host("/etc/bad")).expect("copied"), *b);
            }
            // A big declared file is copied (streamed, not read whole), as NixOS would.
            stagehand_testkit::hostile::Plant::Huge => {
                assert_eq!(code, Some(0), "etc with {class}: {stderr}");
                let len = std::fs::metadata(r.host("/etc/bad")).expect("copied").len();
                assert_eq!(len, (256 << 20) + 1);
            }
            _ => check("etc", class, code, &stderr, "bad"),
        }
        assert_eq!(
            r.read("/etc/hosts"),
            "127.0.0.1 localhost\n",
            "etc with {class}"
        );
    }
    // Sidecars with hostile contents.
    for (class, mode) in [
        ("control characters", "0400\x1b[2J\n"),
        ("huge number", "77777777777777777777\n"),
        ("setuid", "4755\n"),
        ("empty", ""),
    ] {
        let r = FakeRoot::new();
        let tree = r.etc_tree("h2", &[("x", "data\n", None)]);
        sidecars(&r, &format!("{tree}/x"), mode);
        let (code, stderr) = run_etc(&r, &tree);
        if class == "setuid" {
            // NixOS allows any mode; it is declared in the store by the admin.
            assert_eq!(code, Some(0), "{class}: {stderr}");
        } else {
            check("etc sidecar", class, code, &stderr, "x.mode");
        }
    }
    assert_eq!(
        snapshot(outside.path()),
        before,
        "a file outside the root changed"
    );
}
