//! The hostile-input tier (issue #15) for `stagehand-initrd`: every command that reads a
//! file, fed each class of bad input (`stagehand_testkit::hostile`): exit status 1 within
//! 20 s, a message naming the input, no output left, nothing outside changed.

use std::path::{Path, PathBuf};

use stagehand_testkit::hostile::{check, plant, run, snapshot, CLASSES};

/// The host-path commands of `stagehand-initrd`.
fn initrd_cases(dir: &Path) -> Vec<(&'static str, Vec<String>, PathBuf)> {
    let input = dir.join("in");
    let out = dir.join("out.img");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    vec![
        (
            "stagehand-initrd build --spec",
            vec![
                "build".into(),
                "--spec".into(),
                s(&input),
                "-o".into(),
                s(&out),
            ],
            input.clone(),
        ),
        (
            "stagehand-initrd list",
            vec!["list".into(), s(&input)],
            input.clone(),
        ),
        (
            "stagehand-initrd append-secrets (the initrd)",
            vec![
                "append-secrets".into(),
                s(&input),
                format!("/etc/key={}", s(&dir.join("key"))),
            ],
            input,
        ),
    ]
}

#[test]
fn every_command_refuses_every_class_of_bad_input_cleanly() {
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("secret.json"), b"{}").expect("write");
    let before = snapshot(outside.path());
    let initrd = env!("CARGO_BIN_EXE_stagehand-initrd");
    for (class, how) in CLASSES {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("key"), "k").expect("key");
        for (name, args, input) in initrd_cases(dir.path()) {
            let _ = std::fs::remove_file(&input).or_else(|_| std::fs::remove_dir(&input));
            plant(&input, how, outside.path());
            let (code, stderr) = run(initrd, &args);
            check(name, class, code, &stderr, "in");
            assert!(
                !dir.path().join("out.img").exists(),
                "{name} with {class}: output left"
            );
        }
    }
    assert_eq!(snapshot(outside.path()), before, "a file outside changed");
}
