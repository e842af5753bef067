//! The bad-input matrix for stage 2: how it was started (`argv[0]`, i.e. `init=`) and what
//! stage 1 left for it. Stage 2 is a binary (PID 1 only), so these run against its modules
//! from inside the crate; a failing activation continuing the boot is the VM scenarios' job.

use std::path::Path;

use crate::toplevel::{from_argv0, from_argv0_in, ToplevelError};
use stagehand_boot::receipt::Stage1Receipt;

fn says(case: &str, msg: &str, words: &[&str]) {
    for w in words {
        assert!(msg.contains(w), "{case}: {w:?} missing from: {msg}");
    }
}

#[test]
fn argv0_that_names_no_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_gen = dir.path().join("nix/store/xxxx-not-a-system");
    std::fs::create_dir_all(&not_gen).expect("mkdir");
    let looping = dir.path().join("loop");
    std::os::unix::fs::symlink(&looping, &looping).expect("link");
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "relative",
            "init".into(),
            &[
                "\"init\"",
                "not as an absolute",
                "init=/nix/var/nix/profiles/system/init",
            ],
        ),
        ("empty", String::new(), &["\"\"", "absolute"]),
        (
            "missing directory",
            "/nonexistent/nix/store/gone-system/init".into(),
            &[
                "/nonexistent/nix/store/gone-system/init",
                "cannot resolve",
                "No such file",
            ],
        ),
        (
            "symlink loop",
            format!("{}/init", looping.display()),
            &["cannot resolve", "symbolic links"],
        ),
        (
            "not a generation",
            format!("{}/init", not_gen.display()),
            &[
                "xxxx-not-a-system",
                "does not look like a system generation",
                "boot.json",
            ],
        ),
    ];
    for (case, argv0, words) in &cases {
        let e = from_argv0(argv0).expect_err(case);
        says(case, &e.to_string(), words);
    }
    // Under a root prefix (systemd initrd), links resolve inside it and cannot leave it.
    let e = from_argv0_in(dir.path(), "/../../../../etc/init").expect_err("escape");
    assert!(
        matches!(&e, ToplevelError::NotAGeneration { dir } if dir == Path::new("/etc"))
            || matches!(e, ToplevelError::Unresolvable { .. }),
        "{e:?}"
    );
}

/// A missing stage-1 receipt is normal (no counting); an unreadable one is an error naming
/// the file and, where there is one, the field: stage 2 logs it and boots without stage 1's
/// counting rather than guess.
#[test]
fn an_unreadable_stage1_receipt_names_the_file_and_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("stage1.json");
    let file = p.display().to_string();
    for (case, bytes, words) in [
        (
            "not JSON",
            &b"{\"stage1\": "[..],
            &["field stage1", "unknown field"][..],
        ),
        ("binary", &b"\xff\xfe\x00\x01"[..], &["expected value"][..]),
        ("empty", &b""[..], &["EOF"][..]),
        (
            "renamed key",
            &br#"{"version":1,"init":"/init","tries":0,"reason":"init=","counting":false,
                  "times":{}}"#[..],
            &["field times", "unknown field"][..],
        ),
    ] {
        std::fs::write(&p, bytes).expect("write");
        let e = Stage1Receipt::read(&p).expect_err(case).to_string();
        says(case, &e, &[&file]);
        says(case, &e, words);
    }
    assert!(matches!(
        Stage1Receipt::read(&dir.path().join("missing.json")),
        Ok(None)
    ));
}
