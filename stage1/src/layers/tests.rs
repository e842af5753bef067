//! The layers against images made by the real tools on the host: `cryptsetup` (LUKS1,
//! LUKS2 with Argon2id and PBKDF2 keyslots, detached headers, damaged headers) and lvm2
//! (`pvcreate`/`vgcreate`/`lvcreate` on a loop device; `lvcreate` runs with
//! `activation = 0` because this host has no device-mapper, so it only writes metadata).
//! Cheap KDF parameters (`--pbkdf-memory 32768 --iter-time 100`) keep them quick.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use stagehand_testkit::host::require_tool;

use super::luks::{self, Kdf};
use super::lvm;
use super::*;

const PASS: &[u8] = b"correct horse";

/// A known 64-byte volume key, given to `luksFormat --volume-key-file`, so the unlock
/// can be checked against what the tool used.
fn volume_key() -> Vec<u8> {
    (0..64u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect()
}

fn cryptsetup(args: &[&str], stdin: &[u8]) {
    let mut child = Command::new(require_tool("cryptsetup"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cryptsetup");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write passphrase");
    let out = child.wait_with_output().expect("cryptsetup");
    assert!(
        out.status.success(),
        "cryptsetup {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cryptsetup luksFormat` on a new 20 MiB file with `extra` options; returns the file.
fn format(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let img = dir.join(name);
    File::create(&img)
        .and_then(|f| f.set_len(20 << 20))
        .expect("image");
    let vk = dir.join("vk.bin");
    std::fs::write(&vk, volume_key()).expect("vk");
    let mut args = vec![
        "luksFormat",
        "--batch-mode",
        "--key-file",
        "-",
        "--volume-key-file",
        vk.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    args.push(img.to_str().expect("utf-8"));
    cryptsetup(&args, PASS);
    img
}

fn unlock(img: &Path, pass: &[u8]) -> Option<Vec<u8>> {
    let mut f = File::open(img).expect("open");
    let h = luks::read_header(&mut f).expect("header");
    h.unlock(&mut f, pass).expect("unlock").map(|k| k.to_vec())
}

#[test]
fn luks2_argon2id_default_cipher() {
    let t = tempfile::tempdir().expect("tempdir");
    let img = format(
        t.path(),
        "l2.img",
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32768",
            "--iter-time",
            "100",
            "--label",
            "stagehand",
        ],
    );
    let mut f = File::open(&img).expect("open");
    let h = luks::read_header(&mut f).expect("header");
    assert_eq!(h.version, 2);
    assert_eq!(h.label.as_deref(), Some("stagehand"));
    assert_eq!(h.segment.cipher, "aes-xts-plain64");
    assert!(matches!(
        h.keyslots[0].kdf,
        Kdf::Argon2 {
            id: true,
            memory_kib: 32768,
            ..
        }
    ));
    assert_eq!(unlock(&img, PASS), Some(volume_key()));
    assert_eq!(unlock(&img, b"wrong"), None);
    // The probe names it as blkid does: TYPE crypto_LUKS with the header's UUID.
    let uuid = String::from_utf8(
        Command::new(require_tool("cryptsetup"))
            .arg("luksUUID")
            .arg(&img)
            .output()
            .expect("luksUUID")
            .stdout,
    )
    .expect("utf-8");
    let info = crate::probe::probe_filesystem(&mut f)
        .expect("probe")
        .expect("found");
    assert_eq!(info.fs_type, "crypto_LUKS");
    assert_eq!(info.uuid.as_deref(), Some(uuid.trim()));
    assert_eq!(info.label.as_deref(), Some("stagehand"));
}

#[test]
fn luks2_pbkdf2_sha512_and_second_slot() {
    let t = tempfile::tempdir().expect("tempdir");
    let img = format(
        t.path(),
        "l2p.img",
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--hash",
            "sha512",
            "--iter-time",
            "100",
            "--sector-size",
            "4096",
        ],
    );
    let new = t.path().join("new.txt");
    std::fs::write(&new, "second one").expect("write");
    // A second keyslot (Argon2i this time); the first passphrase on stdin.
    cryptsetup(
        &[
            "luksAddKey",
            "--batch-mode",
            "--pbkdf",
            "argon2i",
            "--pbkdf-memory",
            "32768",
            "--iter-time",
            "100",
            "--key-file",
            "-",
            img.to_str().expect("utf-8"),
            new.to_str().expect("utf-8"),
        ],
        PASS,
    );
    let mut f = File::open(&img).expect("open");
    let h = luks::read_header(&mut f).expect("header");
    assert_eq!(h.segment.sector_size, 4096);
    assert_eq!(h.keyslots.len(), 2);
    assert!(matches!(
        h.keyslots[0].kdf,
        Kdf::Pbkdf2 {
            hash: crypt::Hash::Sha512,
            ..
        }
    ));
    assert_eq!(unlock(&img, PASS), Some(volume_key()));
    assert_eq!(unlock(&img, b"second one"), Some(volume_key()));
}

#[test]
fn luks1_xts_and_cbc_essiv() {
    let t = tempfile::tempdir().expect("tempdir");
    let img = format(
        t.path(),
        "l1.img",
        &["--type", "luks1", "--iter-time", "100"],
    );
    let mut f = File::open(&img).expect("open");
    let h = luks::read_header(&mut f).expect("header");
    assert_eq!(h.version, 1);
    assert_eq!(h.segment.cipher, "aes-xts-plain64");
    assert_eq!(h.segment.offset % 512, 0);
    assert_eq!(unlock(&img, PASS), Some(volume_key()));
    assert_eq!(unlock(&img, b"nope"), None);

    let vk32 = t.path().join("vk.bin");
    let img = t.path().join("l1cbc.img");
    File::create(&img)
        .and_then(|f| f.set_len(20 << 20))
        .expect("image");
    std::fs::write(&vk32, &volume_key()[..32]).expect("vk");
    cryptsetup(
        &[
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks1",
            "--cipher",
            "aes-cbc-essiv:sha256",
            "--key-size",
            "256",
            "--hash",
            "sha1",
            "--iter-time",
            "100",
            "--key-file",
            "-",
            "--volume-key-file",
            vk32.to_str().expect("utf-8"),
            img.to_str().expect("utf-8"),
        ],
        PASS,
    );
    assert_eq!(unlock(&img, PASS), Some(volume_key()[..32].to_vec()));
}

#[test]
fn detached_header_and_damage() {
    let t = tempfile::tempdir().expect("tempdir");
    let hdr = t.path().join("hdr.img");
    let img = format(
        t.path(),
        "data.img",
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--iter-time",
            "100",
            "--header",
            hdr.to_str().expect("utf-8"),
        ],
    );
    // The data device carries no header; the header file opens it.
    assert!(matches!(
        luks::read_header(&mut File::open(&img).expect("open")),
        Err(luks::LuksError::NotLuks)
    ));
    assert_eq!(unlock(&hdr, PASS), Some(volume_key()));
    let h = luks::read_header(&mut File::open(&hdr).expect("open")).expect("header");
    assert_eq!(h.segment.offset, 0, "a detached header's data starts at 0");

    // One byte of the primary JSON changed: the checksum catches it and the second copy
    // is used; both changed: refused, naming the damage.
    let flip = |off: u64| {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&hdr)
            .expect("open");
        f.seek(SeekFrom::Start(off)).expect("seek");
        f.write_all(b"#").expect("write");
    };
    flip(4096 + 10);
    assert_eq!(unlock(&hdr, PASS), Some(volume_key()));
    flip(16384 + 4096 + 10);
    let e = luks::read_header(&mut File::open(&hdr).expect("open")).expect_err("damaged");
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
}

#[test]
fn key_file_offset_and_size() {
    let t = tempfile::tempdir().expect("tempdir");
    let kf = t.path().join("key");
    std::fs::write(&kf, b"0123456789abcdef").expect("write");
    let path = kf.to_str().expect("utf-8");
    assert_eq!(
        &read_key_file(path, Some(4), Some(6)).expect("key")[..],
        b"456789"
    );
    assert_eq!(
        &read_key_file(path, None, None).expect("key")[..],
        b"0123456789abcdef"
    );
    let e = read_key_file(path, Some(10), Some(16)).expect_err("short");
    assert!(e.contains("keyFileSize asks for 16"), "{e}");
    assert!(read_key_file("/nonexistent/key", None, None).is_err());
}

#[test]
fn steps_put_lvm_between_the_luks_layers() {
    let dev = |name: &str, pre_lvm: bool| LuksDevice {
        pre_lvm,
        ..LuksDevice::new(name, format!("/dev/{name}"))
    };
    let plan = LayerPlan {
        luks: vec![dev("onlv", false), dev("pv", true)],
        lvm: true,
        passphrase_tries: 3,
        reuse_passphrases: true,
    };
    let names: Vec<String> = plan
        .steps()
        .iter()
        .map(|s| match s {
            Step::Luks(d) => d.name.clone(),
            Step::Lvm => "lvm".into(),
        })
        .collect();
    assert_eq!(names, ["pv", "lvm", "onlv"]);
    assert!(LayerPlan::default().is_empty());
}

#[test]
fn lv_references() {
    let vgs = ["vg", "my-vg"];
    let r = |d| lv_reference(d, vgs.iter().copied());
    assert_eq!(r("/dev/vg/root"), Some(("vg".into(), "root".into())));
    assert_eq!(r("/dev/mapper/vg-root"), Some(("vg".into(), "root".into())));
    assert_eq!(
        r("/dev/mapper/my--vg-my--lv"),
        Some(("my-vg".into(), "my-lv".into()))
    );
    assert_eq!(r("/dev/mapper/cryptroot"), None);
    assert_eq!(r("/dev/other/root"), None);
    assert_eq!(r("/dev/disk/by-label/x"), None);
    assert_eq!(lvm::dm_name("my-vg", "my-lv"), "my--vg-my--lv");
}

/// A loop device over `img`, detached when dropped.
struct Loop(String);

impl Loop {
    fn new(img: &Path) -> Self {
        let out = Command::new(require_tool("losetup"))
            .args(["-f", "--show"])
            .arg(img)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// lvm2 without device-mapper and without recording the loop device in the host's
/// devices file.
const LVM_CONFIG: &str = "global { activation = 0 } devices { use_devicesfile = 0 }";

fn lvm(args: &[&str]) -> String {
    let out = Command::new(require_tool("lvm"))
        .args(args)
        .arg("--config")
        .arg(LVM_CONFIG)
        .output()
        .expect("lvm");
    assert!(
        out.status.success(),
        "lvm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lvm_metadata_from_real_lvm2() {
    let t = tempfile::tempdir().expect("tempdir");
    let img = t.path().join("pv.img");
    File::create(&img)
        .and_then(|f| f.set_len(64 << 20))
        .expect("image");
    // A unique VG name: the host's lvm may see other tests' loop devices meanwhile.
    let vg = format!("sh-test{}", std::process::id());
    let (pv_uuid, ranges) = {
        let dev = Loop::new(&img);
        lvm(&["pvcreate", "-y", &dev.0]);
        lvm(&["vgcreate", &vg, &dev.0]);
        lvm(&["lvcreate", "-an", "-Zn", "-L", "16M", "-n", "root", &vg]);
        lvm(&["lvcreate", "-an", "-Zn", "-L", "8M", "-n", "my-data", &vg]);
        let uuid = lvm(&["pvs", "--noheadings", "-o", "pv_uuid", &dev.0])
            .trim()
            .to_owned();
        let ranges = lvm(&["lvs", "--noheadings", "-o", "lv_name,seg_pe_ranges", &vg]);
        lvm(&["vgchange", "-an", &vg]);
        (uuid, ranges)
    };
    let mut f = File::open(&img).expect("open");
    let pv = lvm::read_pv(&mut f).expect("read").expect("a PV");
    assert_eq!(pv.uuid, pv_uuid);
    let info = crate::probe::probe_filesystem(&mut f)
        .expect("probe")
        .expect("found");
    assert_eq!(
        (info.fs_type, info.uuid.as_deref()),
        ("LVM2_member", Some(pv_uuid.as_str()))
    );
    let vg_meta = lvm::parse_vg(pv.metadata.as_deref().expect("metadata")).expect("parse");
    assert_eq!(vg_meta.name, vg);
    assert_eq!(vg_meta.extent_size, 8192, "4 MiB extents");
    let names: Vec<&str> = vg_meta.lvs.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["root", "my-data"]);
    // The tables agree with what lvs says about the extents: root is PEs 0-3 and
    // my-data 4-5, after pe_start (1 MiB = 2048 sectors).
    assert!(
        ranges.contains(":0-3") && ranges.contains(":4-5"),
        "{ranges}"
    );
    let dev = |_: &str| Some("7:0".to_owned());
    let root = lvm::table(&vg_meta, &vg_meta.lvs[0], &dev).expect("table");
    assert_eq!(
        (root[0].start, root[0].length, root[0].kind),
        (0, 4 * 8192, "linear")
    );
    assert_eq!(root[0].params, "7:0 2048");
    let data = lvm::table(&vg_meta, &vg_meta.lvs[1], &dev).expect("table");
    assert_eq!(data[0].params, format!("7:0 {}", 2048 + 4 * 8192));
    assert_eq!(
        lvm::dm_name(&vg, "my-data"),
        format!("{}-my--data", vg.replace('-', "--"))
    );

    // Damage: a byte of the metadata text changed fails its checksum.
    let text = pv.metadata.expect("metadata");
    let bytes = std::fs::read(&img).expect("read");
    // The whole current text (older versions sit before it in the circular buffer).
    let at = bytes
        .windows(text.len())
        .position(|w| w == text.as_bytes())
        .expect("metadata on disk");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .expect("open");
    f.seek(SeekFrom::Start(at as u64 + 2)).expect("seek");
    f.write_all(b"X").expect("write");
    let e = lvm::read_pv(&mut f).expect_err("damaged");
    assert!(e.contains("checksum mismatch"), "{e}");
}

#[test]
fn lvm_refuses_unsupported_segments_and_bad_text() {
    let text = r#"vg { id = "a" seqno = 1 extent_size = 8192
        physical_volumes { pv0 { id = "p" pe_start = 2048 } }
        logical_volumes { thin { id = "t" status = ["READ", "WRITE", "VISIBLE"] segment_count = 1
            segment1 { start_extent = 0 extent_count = 1 type = "thin-pool" } } } }"#;
    let vg = lvm::parse_vg(text).expect("parse");
    let e = lvm::table(&vg, &vg.lvs[0], &|_| Some("1:1".into()))
        .err()
        .expect("refused");
    assert!(
        e.contains("thin-pool") && e.contains("linear and striped"),
        "{e}"
    );
    for bad in [
        "vg {",
        "vg { a = }",
        "vg { a = \"x }",
        "{ }",
        "vg { extent_size = 99999999999999999999999 }",
    ] {
        assert!(lvm::parse_vg(bad).is_err(), "{bad}");
    }
}
