//! The bad-input matrix for stage 2: how it was started (`argv[0]`, i.e. `init=`) and what
//! stage 1 left for it. Stage 2 is a binary (PID 1 only), so these run against its modules
//! from inside the crate; a failing activation continuing the boot is the VM scenarios' job.

use std::path::Path;

use crate::receipt;
use crate::toplevel::{from_argv0, from_argv0_in, ToplevelError};

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

#[test]
fn an_unreadable_stage1_receipt_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (case, bytes) in [
        ("not JSON", &b"{\"stage1\": "[..]),
        ("binary", &b"\xff\xfe\x00\x01"[..]),
        ("empty", &b""[..]),
    ] {
        let p = dir.path().join("stage1.json");
        std::fs::write(&p, bytes).expect("write");
        assert_eq!(receipt::read_stage1(&p), None, "{case}");
    }
    assert_eq!(receipt::read_stage1(&dir.path().join("missing.json")), None);
}
