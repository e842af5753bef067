//! The hostile-input tier's shared part (issue #15): the classes of bad input, how each is
//! planted, and the invariants every command must keep when fed one (see
//! `cli/tests/hostile.rs`, `initrd/tests/hostile.rs`).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::require_tool;

/// How a class of bad input is planted at a path.
pub enum Plant {
    Bytes(&'static [u8]),
    /// A sparse file just over the 256 MiB every whole-file reader takes.
    Huge,
    Fifo,
    Directory,
    /// A link to a file outside the root (by its host path): inside the root it must not
    /// resolve to that file.
    LinkOutside,
    LinkLoop,
}

pub const CLASSES: &[(&str, Plant)] = &[
    ("empty", Plant::Bytes(b"")),
    ("empty object", Plant::Bytes(b"{}")),
    ("empty list", Plant::Bytes(b"[]")),
    ("null", Plant::Bytes(b"null")),
    (
        "wrong types",
        Plant::Bytes(br#"{"version": "1", "users": 5, "groups": {}}"#),
    ),
    (
        "control characters",
        Plant::Bytes(b"\x1b[2J\x00\x07#!/bin/sh\n\r\x7f"),
    ),
    ("not UTF-8", Plant::Bytes(b"{\"users\": [\"\xff\xfe\"]}")),
    ("deep nesting", Plant::Bytes(&[b'['; 100_000])),
    ("huge", Plant::Huge),
    ("FIFO", Plant::Fifo),
    ("directory", Plant::Directory),
    ("link outside the root", Plant::LinkOutside),
    ("link loop", Plant::LinkLoop),
];

pub fn plant(path: &Path, how: &Plant, outside: &Path) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    match how {
        Plant::Bytes(b) => std::fs::write(path, b).expect("write"),
        Plant::Huge => std::fs::File::create(path)
            .and_then(|f| f.set_len((256 << 20) + 1))
            .expect("sparse file"),
        Plant::Fifo => {
            let ok = Command::new(require_tool("mkfifo"))
                .arg(path)
                .status()
                .expect("mkfifo")
                .success();
            assert!(ok, "mkfifo {}", path.display());
        }
        Plant::Directory => std::fs::create_dir(path).expect("mkdir"),
        Plant::LinkOutside => symlink(outside.join("secret.json"), path).expect("symlink"),
        Plant::LinkLoop => symlink(path.file_name().expect("name"), path).expect("symlink"),
    }
}

/// Run under `timeout 20`; (status code, stderr).
pub fn run(binary: &str, args: &[String]) -> (Option<i32>, String) {
    let out = Command::new(require_tool("timeout"))
        .arg("20")
        .arg(binary)
        .args(args)
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn check(case: &str, class: &str, code: Option<i32>, stderr: &str, names: &str) {
    let what = format!("{case} with {class}");
    assert_ne!(code, Some(124), "{what}: still running after 20 s");
    assert_eq!(code, Some(1), "{what}: exit status {code:?}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert!(
        stderr.contains(names),
        "{what}: {names:?} not named in: {stderr}"
    );
}

/// The files outside the root, with their contents.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| {
            let p = e.expect("entry").path();
            let c = std::fs::read(&p).unwrap_or_default();
            (p, c)
        })
        .collect();
    v.sort();
    v
}
