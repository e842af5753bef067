//! The bad-input matrix for stage 1's prober: device specs from `root=`/`resume=` and
//! superblock and partition-table probes. Each case asserts what the message says.

// A test may index, expect and panic: a failure should stop at the line that failed.
#![allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::Cursor;

use stagehand_stage1::probe::{self, DeviceSpec};

#[test]
fn device_specs_that_are_refused() {
    // (root= value, what the message must say)
    let cases: &[(&str, &[&str])] = &[
        ("nixos", &["\"nixos\"", "LABEL=", "root="]),
        ("FOO=bar", &["\"FOO=bar\"", "LABEL=, UUID="]),
        ("", &["\"\"", "/dev path"]),
        ("8:1", &["\"8:1\"", "root="]),
    ];
    for (spec, words) in cases {
        let e = DeviceSpec::parse(spec).expect_err(spec);
        let msg = e.to_string();
        for w in *words {
            assert!(msg.contains(w), "{spec:?}: {w:?} missing from: {msg}");
        }
    }
}

#[test]
fn garbage_and_ambiguous_disks_are_not_guessed() {
    // Random bytes, a zeroed disk and a disk cut mid-superblock are "nothing", not a panic.
    let noise: Vec<u8> = (0..70_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (case, image) in [
        ("noise", noise.clone()),
        ("zeros", vec![0u8; 70_000]),
        ("cut short", noise[..1100].to_vec()),
        ("empty", Vec::new()),
    ] {
        let fs = probe::probe_filesystem(&mut Cursor::new(&image));
        assert!(matches!(fs, Ok(None)), "{case}: {fs:?}");
        let gpt = probe::probe_gpt(&mut Cursor::new(&image), 512);
        assert!(matches!(gpt, Ok(None)), "{case}: {gpt:?}");
    }
    // A swap signature left on an ext2 volume: two answers, so none (libblkid's rule), and
    // the message says how to get rid of the stale one.
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("both.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .expect("image");
    let made = std::process::Command::new("mkfs.ext2")
        .args(["-q", "-F"])
        .arg(&img)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        made,
        "mkfs.ext2 failed or is missing: install e2fsprogs (vm-tests/setup-host does)"
    );
    let mut both = std::fs::read(&img).expect("read");
    {
        both[0xff6..0x1000].copy_from_slice(b"SWAPSPACE2");
        both[1024..1028].copy_from_slice(&1u32.to_le_bytes());
        let e = probe::probe_filesystem(&mut Cursor::new(&both)).expect_err("two signatures");
        let msg = e.to_string();
        assert!(
            msg.contains("swap, ext2") && msg.contains("wipefs"),
            "{msg}"
        );
    }
    let e = probe::probe_gpt(&mut Cursor::new(&both), 1000).expect_err("sector size");
    assert!(e.to_string().contains("sector size 1000"), "{e}");
}

#[test]
fn a_quoted_label_on_the_command_line_stays_one_device_spec() {
    let c = stagehand_common::cmdline::Cmdline::parse("a=\"x\"y root=\"LABEL=my disk\" quiet");
    let spec = DeviceSpec::parse(c.get("root").expect("root")).expect("quoted label");
    assert!(format!("{spec:?}").contains("my disk"), "{spec:?}");
}
