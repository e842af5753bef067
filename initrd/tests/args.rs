//! The `stagehand-initrd` command line, run as the real binary: help and version, and
//! refused flags and arguments with exit status 2 (1 is kept for a build that failed).

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_stagehand-initrd");

fn initrd_cmd(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run stagehand-initrd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_command_has_help_naming_its_arguments() {
    let commands: &[(&str, &[&str])] = &[
        (
            "build",
            &[
                "--spec <SPEC.json>",
                "-o, --output <OUT>",
                "--contents <LIST.json>",
                "--report",
                "--system <TOPLEVEL>",
                "--root <DIR>",
                "--modules <A,B,C>",
                "--generic",
                "--host-only",
                "--stage1 <PATH>",
                "--stage2 <PATH>",
                "Exit status",
            ],
        ),
        ("list", &["<FILE>"]),
        ("append-secrets", &["<INITRD>", "[DEST=SOURCE]..."]),
    ];
    for (cmd, words) in commands {
        let out = initrd_cmd(&[cmd, "--help"]);
        let help = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{cmd} --help: {out:?}");
        for w in *words {
            assert!(help.contains(w), "{cmd} --help lacks {w:?}:\n{help}");
        }
    }
    let out = initrd_cmd(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let help = text(&out.stdout);
    for w in ["build", "list", "append-secrets", "2  usage error"] {
        assert!(help.contains(w), "--help lacks {w:?}:\n{help}");
    }
}

#[test]
fn version_names_the_crate_version() {
    let out = initrd_cmd(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        text(&out.stdout).trim(),
        format!("stagehand-initrd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2_and_name_the_argument() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage: stagehand-initrd"),
        (&["--frobnicate"], "'--frobnicate'"),
        (&["frobnicate"], "'frobnicate'"),
        (
            &["build", "--spec", "s.json", "-o", "out", "--frobnicate"],
            "'--frobnicate'",
        ),
        (
            &["build", "--spec", "s.json", "-o", "out", "extra"],
            "'extra'",
        ),
        (&["build", "--spec", "s.json"], "--output <OUT>"),
        (&["build", "-o", "out"], "--spec <SPEC.json>"),
        (
            &["build", "--spec", "s.json", "--system", "/t", "-o", "out"],
            "'--spec <SPEC.json>' cannot be used with '--system <TOPLEVEL>'",
        ),
        (
            &["build", "--spec", "s.json", "--generic", "-o", "out"],
            "'--spec <SPEC.json>' cannot be used with '--generic'",
        ),
        (
            &["build", "--spec", "s.json", "--root", "/mnt", "-o", "out"],
            "'--spec <SPEC.json>' cannot be used with '--root <DIR>'",
        ),
        (&["list"], "<FILE>"),
        (&["list", "a.img", "extra"], "'extra'"),
        (&["list", "--frobnicate", "a.img"], "'--frobnicate'"),
        (&["append-secrets"], "<INITRD>"),
        (
            &["append-secrets", "a.img", "/etc/key"],
            "\"/etc/key\" is not DEST=SOURCE",
        ),
        (
            &["append-secrets", "--frobnicate", "a.img"],
            "'--frobnicate'",
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, what) in cases {
        let out = Command::new(BIN)
            .args(*args)
            .current_dir(dir.path())
            .output()
            .expect("run stagehand-initrd");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(what), "{args:?}: {what:?} not named in: {err}");
        assert!(text(&out.stdout).is_empty(), "{args:?}: {out:?}");
    }
    // Refused before anything was read or written.
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
}

#[test]
fn a_failed_operation_exits_1_naming_the_file() {
    let out = initrd_cmd(&["list", "/nonexistent/initrd.img"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("stagehand-initrd: /nonexistent/initrd.img: "),
        "{err}"
    );
}

#[test]
fn list_into_a_closed_pipe_is_not_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("stage1"), b"\x7fELF fake stage1").expect("stage1");
    std::fs::write(
        dir.path().join("spec.json"),
        r#"{"stage1": "stage1", "compression": "none"}"#,
    )
    .expect("spec");
    let out = Command::new(BIN)
        .args(["build", "--spec", "spec.json", "-o", "initrd.img"])
        .current_dir(dir.path())
        .output()
        .expect("build");
    assert!(out.status.success(), "{out:?}");
    // The reader is gone before the listing starts (`list FILE | head -0`).
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(BIN)
        .args(["list", "initrd.img"])
        .current_dir(dir.path())
        .stdout(writer)
        .output()
        .expect("list");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}
