//! The bad-input matrix for what `common` parses: the envelope around our binary files, the
//! stage-1 config inside it, and the kernel command line (device specs and superblock probes
//! are stage 1's: `stage1/tests/bad_input.rs`). Each case asserts that the message names the
//! file or field and says what would fix it, not merely that an error came back.

// A test may index, expect and panic: a failure should stop at the line that failed.
#![allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;

use stagehand_common::cmdline::Cmdline;
use stagehand_common::envelope::HEADER_LEN;
use stagehand_common::stage1_config::{FileSystem, Stage1Config, STAGE1_CONFIG_KIND};

fn good_config() -> Vec<u8> {
    Stage1Config {
        filesystems: vec![FileSystem {
            mount_point: "/".into(),
            device: "LABEL=nixos".into(),
            fs_type: "ext4".into(),
            options: vec!["rw".into()],
        }],
        ..Stage1Config::default()
    }
    .encode()
    .expect("encode")
}

/// Rewrite the header's CRC so a damaged payload gets past the checksum to the decoder.
fn fix_crc(bytes: &mut [u8]) {
    let len = u32::try_from(bytes.len() - HEADER_LEN).expect("len");
    bytes[12..16].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&bytes[HEADER_LEN..]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
}

type Damage = fn(&mut Vec<u8>);

/// `(case, damage, words the message must contain)`. The file name is always required too.
const CONFIG_CASES: &[(&str, Damage, &[&str])] = &[
    (
        "empty file",
        |b| b.clear(),
        &["truncated", "expected 20 bytes, found 0", "rebuild"],
    ),
    (
        "cut inside the header",
        |b| b.truncate(11),
        &["truncated", "found 11", "rebuild"],
    ),
    (
        "cut inside the payload",
        |b| {
            b.pop();
        },
        &["truncated", "rebuild"],
    ),
    (
        "one byte too many",
        |b| b.push(0),
        &["1 unexpected bytes after the payload", "rebuild"],
    ),
    (
        "payload bit flip",
        |b| {
            let n = b.len() - 1;
            b[n] ^= 0x20;
        },
        &["checksum mismatch", "corrupt", "rebuild"],
    ),
    (
        "crc field flipped",
        |b| b[16] ^= 1,
        &["checksum mismatch", "rebuild"],
    ),
    (
        "wrong magic (an activation plan)",
        |b| b[..8].copy_from_slice(b"SHPLAN\0\0"),
        &["wrong magic", "SHSTAGE1", "not the file it should be"],
    ),
    (
        "version from the future",
        |b| b[8..10].copy_from_slice(&99u16.to_le_bytes()),
        &[
            "format version 99",
            "reads version 4",
            "rebuild the file with a matching Stagehand",
        ],
    ),
    (
        "old version 1",
        |b| b[8..10].copy_from_slice(&1u16.to_le_bytes()),
        &["format version 1 ", "reads version 4"],
    ),
    (
        "version 2 (before the modules' cpu aliases)",
        |b| b[8..10].copy_from_slice(&2u16.to_le_bytes()),
        &["format version 2 ", "reads version 4"],
    ),
    (
        "previous version 3 (before md RAID, the btrfs scan and the LUKS/LVM layers)",
        |b| b[8..10].copy_from_slice(&3u16.to_le_bytes()),
        &["format version 3 ", "reads version 4"],
    ),
    (
        "reserved field set",
        |b| b[10] = 7,
        &["reserved header field is 7", "must be 0", "rebuild"],
    ),
    (
        "length field larger than the file",
        |b| b[12..16].copy_from_slice(&u32::MAX.to_le_bytes()),
        &["truncated", "rebuild"],
    ),
    (
        "postcard garbage behind a valid crc",
        |b| {
            b.truncate(HEADER_LEN);
            b.extend_from_slice(&[0xff; 12]);
            fix_crc(b);
        },
        &["payload does not decode", "rebuild"],
    ),
    (
        "postcard payload cut short behind a valid crc",
        |b| {
            let n = b.len() - 3;
            b.truncate(n);
            fix_crc(b);
        },
        &["payload does not decode", "rebuild"],
    ),
];

#[test]
fn stage1_config_files_that_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (case, damage, words) in CONFIG_CASES {
        let mut bytes = good_config();
        damage(&mut bytes);
        let path = dir.path().join("stage1.cfg");
        std::fs::write(&path, &bytes).expect("write");
        let e = Stage1Config::read(&path).expect_err(case);
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains(STAGE1_CONFIG_KIND.name),
            "{case}: the message must name the file and what it is: {msg}"
        );
        for w in *words {
            assert!(msg.contains(w), "{case}: {w:?} missing from: {msg}");
        }
    }
}

#[test]
fn missing_stage1_config_names_the_file() {
    let e = Stage1Config::read(Path::new("/nonexistent/etc/stagehand/stage1.cfg"))
        .expect_err("missing");
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/etc/stagehand/stage1.cfg") && msg.contains("No such file"),
        "{msg}"
    );
}

#[test]
fn kernel_command_line_quoting_never_loses_later_words() {
    // An unterminated quote swallows the rest of the line into one value, as the kernel
    // does; the words before it stay intact.
    let c = Cmdline::parse("root=LABEL=nixos init=/nix/store/a-system/init foo=\"a b quiet");
    assert_eq!(c.get("root"), Some("LABEL=nixos"));
    assert_eq!(c.get("init"), Some("/nix/store/a-system/init"));
    assert_eq!(c.get("foo"), Some("a b quiet"));
    assert!(!c.flag("quiet"));
    // Quotes in the middle of a word, empty values, lone `=`, NUL and non-ASCII bytes.
    let c = Cmdline::parse("a=\"x\"y b= = \"\" c=\u{0}\u{fffd} root=\"LABEL=my disk\"");
    assert_eq!(c.get("a"), Some("xy"));
    assert_eq!(c.get("b"), Some(""));
    assert_eq!(c.get(""), Some(""));
    assert_eq!(c.get("root"), Some("LABEL=my disk"));
}
