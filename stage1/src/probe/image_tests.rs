//! Tests against images made by the real tools (mkfs.*, mkswap, mksquashfs,
//! mkfs.erofs, sfdisk), compared with util-linux `blkid -p` / `partx` on the same file.
//!
//! A missing tool fails the test with the package to install. Debian packages: e2fsprogs dosfstools btrfs-progs xfsprogs fdisk squashfs-tools
//! erofs-utils util-linux.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Cursor, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use stagehand_testkit::host::require_tool;

use super::*;

/// Run `tool args…`, which must be installed and succeed.
fn run(tool: &str, args: &[&str]) {
    let out = Command::new(require_tool(tool))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn tool");
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_stdin(tool: &str, args: &[&str], input: &str) -> String {
    let mut child = Command::new(require_tool(tool))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait tool");
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `blkid -p -o export FILE` as a map. `None` when blkid is missing; an empty map when
/// it found nothing (exit 2) or refused (ambivalent).
fn blkid(path: &Path) -> HashMap<String, String> {
    let out = Command::new(require_tool("blkid"))
        .args(["-p", "-o", "export"])
        .arg(path)
        .output()
        .expect("spawn blkid");
    let mut map = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once('=') {
            map.insert(k.to_string(), unshell(v));
        }
    }
    map
}

/// `blkid -o export` backslash-escapes shell specials (`LABEL=my\ root`).
fn unshell(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    File::create(&p)
        .expect("create image")
        .set_len(size)
        .expect("size image");
    p
}

fn probe_file(path: &Path) -> Result<Option<FsInfo>, ProbeError> {
    let mut f = File::open(path).expect("open image");
    probe_filesystem(&mut f)
}

fn patch(path: &Path, off: u64, data: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open image");
    f.seek(SeekFrom::Start(off)).expect("seek");
    f.write_all(data).expect("patch");
}

/// Probe `path`, check our answer against `blkid -p`, and return it.
fn probe_and_compare(path: &Path) -> FsInfo {
    let info = probe_file(path)
        .expect("probe ok")
        .expect("a filesystem is found");
    let b = blkid(path);
    assert_eq!(
        b.get("TYPE").map(String::as_str),
        Some(info.fs_type),
        "TYPE of {path:?}"
    );
    assert_eq!(b.get("UUID"), info.uuid.as_ref(), "UUID of {path:?}");
    assert_eq!(b.get("LABEL"), info.label.as_ref(), "LABEL of {path:?}");
    if info.version.is_some() {
        assert_eq!(
            b.get("VERSION").map(String::as_str),
            info.version,
            "VERSION of {path:?}"
        );
    }
    info
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn ext4_ext3_ext2() {
    let d = tmp();
    let uuid = "6f1c2b3a-1111-4222-8333-444455556666";
    let p = image(d.path(), "ext4.img", 32 << 20);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "nixos",
            "-U",
            uuid,
            p.to_str().expect("utf8"),
        ],
    );
    let info = probe_and_compare(&p);
    assert_eq!(
        (info.fs_type, info.uuid.as_deref(), info.label.as_deref()),
        ("ext4", Some(uuid), Some("nixos"))
    );

    for (mkfs, want) in [("mkfs.ext3", "ext3"), ("mkfs.ext2", "ext2")] {
        let p = image(d.path(), &format!("{want}.img"), 32 << 20);
        run(
            mkfs,
            &["-q", "-F", "-L", "a label", p.to_str().expect("utf8")],
        );
        let info = probe_and_compare(&p);
        assert_eq!(info.fs_type, want);
        assert_eq!(info.label.as_deref(), Some("a label"));
    }

    // ext4 without a journal is still ext4 (extents etc.), not ext2.
    let p = image(d.path(), "ext4nj.img", 32 << 20);
    run(
        "mkfs.ext4",
        &["-q", "-F", "-O", "^has_journal", p.to_str().expect("utf8")],
    );
    assert_eq!(probe_and_compare(&p).fs_type, "ext4");
}

#[test]
fn ext4_metadata_csum_is_checked() {
    let d = tmp();
    let p = image(d.path(), "ext4.img", 32 << 20);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-O",
            "metadata_csum",
            "-L",
            "csum",
            p.to_str().expect("utf8"),
        ],
    );
    assert_eq!(probe_and_compare(&p).label.as_deref(), Some("csum"));
    // A label byte changed behind the checksum's back: newer libblkid (2.39+, what
    // NixOS ships) rejects it, as does the kernel; Debian 12's 2.38 does not check.
    patch(&p, 1024 + 0x78, b"X");
    assert_eq!(probe_file(&p).expect("probe ok"), None);
}

#[test]
fn vfat_12_16_32() {
    let d = tmp();
    for (bits, size, label, serial, want_uuid) in [
        ("12", 2u64 << 20, "TINY", "0000BEEF", "0000-BEEF"),
        ("16", 64 << 20, "BOOT", "1234ABCD", "1234-ABCD"),
        ("32", 64 << 20, "MY ESP", "DEADBEEF", "DEAD-BEEF"),
    ] {
        let p = image(d.path(), &format!("fat{bits}.img"), size);
        run(
            "mkfs.vfat",
            &[
                "-F",
                bits,
                "-n",
                label,
                "-i",
                serial,
                p.to_str().expect("utf8"),
            ],
        );
        let info = probe_and_compare(&p);
        assert_eq!(info.fs_type, "vfat");
        assert_eq!(info.uuid.as_deref(), Some(want_uuid));
        assert_eq!(info.label.as_deref(), Some(label));
        assert_eq!(
            by_links(Some(&info), None)[0],
            format!("/dev/disk/by-label/{}", label.replace(' ', "\\x20"))
        );
    }
}

#[test]
fn vfat_label_comes_from_root_directory() {
    let d = tmp();
    let p = image(d.path(), "fat.img", 64 << 20);
    run(
        "mkfs.vfat",
        &["-F", "16", "-n", "BOOT", p.to_str().expect("utf8")],
    );
    // Delete the volume-label directory entry (first root entry on a fresh FAT16):
    // libblkid then reports no LABEL (the boot-sector copy is only LABEL_FATBOOT).
    let bs = std::fs::read(&p).expect("read image");
    let reserved = u64::from(u16::from_le_bytes([bs[0x0E], bs[0x0F]]));
    let fats = u64::from(bs[0x10]);
    let fat_len = u64::from(u16::from_le_bytes([bs[0x16], bs[0x17]]));
    let sector = u64::from(u16::from_le_bytes([bs[0x0B], bs[0x0C]]));
    let root = (reserved + fats * fat_len) * sector;
    assert_eq!(&bs[root as usize..root as usize + 11], b"BOOT       ");
    patch(&p, root, &[0xE5]);
    let info = probe_and_compare(&p);
    assert_eq!(info.label, None);
    assert!(info.uuid.is_some());
}

#[test]
fn btrfs() {
    let d = tmp();
    let uuid = "0b7e1f00-aaaa-4bbb-8ccc-dddddddddddd";
    let p = image(d.path(), "btrfs.img", 128 << 20);
    run(
        "mkfs.btrfs",
        &[
            "-q",
            "-f",
            "-L",
            "bt root",
            "-U",
            uuid,
            p.to_str().expect("utf8"),
        ],
    );
    let info = probe_and_compare(&p);
    assert_eq!(
        (info.fs_type, info.uuid.as_deref(), info.label.as_deref()),
        ("btrfs", Some(uuid), Some("bt root"))
    );
    // Checksum (CRC-32C) verified: a changed label byte makes it unrecognisable.
    patch(&p, 0x10000 + 0x12B, b"X");
    assert_eq!(probe_file(&p).expect("probe ok"), None);
}

#[test]
fn xfs() {
    let d = tmp();
    let uuid = "5a5a5a5a-1234-4567-89ab-cdef01234567";
    let p = image(d.path(), "xfs.img", 320 << 20);
    let uuid_opt = format!("uuid={uuid}");
    run(
        "mkfs.xfs",
        &[
            "-q",
            "-f",
            "-L",
            "xroot",
            "-m",
            &uuid_opt,
            p.to_str().expect("utf8"),
        ],
    );
    let info = probe_and_compare(&p);
    assert_eq!(
        (info.fs_type, info.uuid.as_deref(), info.label.as_deref()),
        ("xfs", Some(uuid), Some("xroot"))
    );
    // v5 superblock CRC verified.
    patch(&p, 108, b"X");
    assert_eq!(probe_file(&p).expect("probe ok"), None);
}

#[test]
fn swap_and_swsuspend() {
    let d = tmp();
    let uuid = "11111111-2222-4333-8444-555555555555";
    let p = image(d.path(), "swap.img", 16 << 20);
    run(
        "mkswap",
        &["-q", "-L", "swappy", "-U", uuid, p.to_str().expect("utf8")],
    );
    let info = probe_and_compare(&p);
    assert_eq!(
        (
            info.fs_type,
            info.uuid.as_deref(),
            info.label.as_deref(),
            info.version
        ),
        ("swap", Some(uuid), Some("swappy"), Some("1"))
    );
    // mkswap writes the signature at page size − 10; find which page size it used.
    let data = std::fs::read(&p).expect("read image");
    let sig_off = [0xFF6usize, 0x1FF6, 0x3FF6, 0x7FF6, 0xFFF6]
        .into_iter()
        .find(|&o| &data[o..o + 10] == b"SWAPSPACE2")
        .expect("swap signature");

    // A hibernation image replaces the signature; UUID and label stay readable.
    for (magic, version) in [
        (&b"S1SUSPEND\0"[..], "s1suspend"),
        (b"S2SUSPEND\0", "s2suspend"),
        (b"ULSUSPEND\0", "ulsuspend"),
        (b"LINHIB0001", "linhib0001"),
    ] {
        patch(&p, sig_off as u64, magic);
        let info = probe_and_compare(&p);
        assert_eq!(
            (
                info.fs_type,
                info.uuid.as_deref(),
                info.label.as_deref(),
                info.version
            ),
            ("swsuspend", Some(uuid), Some("swappy"), Some(version))
        );
    }

    // Old v0 swap: no UUID, no label.
    patch(&p, sig_off as u64, b"SWAP-SPACE");
    let info = probe_and_compare(&p);
    assert_eq!(
        (info.fs_type, info.uuid, info.version),
        ("swap", None, Some("0"))
    );

    // TuxOnIce: magic at 0 wins over the swap signature.
    patch(&p, sig_off as u64, b"SWAPSPACE2");
    patch(&p, 0, b"\xed\xc3\x02\xe9\x98\x56\xe5\x0c");
    let info = probe_and_compare(&p);
    assert_eq!(
        (info.fs_type, info.version),
        ("swsuspend", Some("tuxonice"))
    );
}

#[test]
fn squashfs() {
    let d = tmp();
    let src = d.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("f"), b"hello").expect("write");
    let p = d.path().join("sq.img");
    run(
        "mksquashfs",
        &[
            src.to_str().expect("utf8"),
            p.to_str().expect("utf8"),
            "-quiet",
            "-noappend",
        ],
    );
    let info = probe_and_compare(&p);
    assert_eq!(
        (info.fs_type, info.uuid, info.label),
        ("squashfs", None, None)
    );
}

#[test]
fn erofs() {
    let d = tmp();
    let src = d.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("f"), b"hello").expect("write");
    let p = d.path().join("ero.img");
    let uuid = "0e0f0e0f-1111-2222-3333-444444444444";
    let uuid_opt = format!("-U{uuid}");
    run(
        "mkfs.erofs",
        &[
            &uuid_opt,
            p.to_str().expect("utf8"),
            src.to_str().expect("utf8"),
        ],
    );
    let info = probe_and_compare(&p);
    assert_eq!((info.fs_type, info.uuid.as_deref()), ("erofs", Some(uuid)));
    // erofs-utils sets the superblock-checksum feature; a changed byte is refused.
    let data = std::fs::read(&p).expect("read image");
    if u32::from_le_bytes([data[1032], data[1033], data[1034], data[1035]]) & 1 != 0 {
        patch(&p, 1024 + 64, b"X");
        assert_eq!(probe_file(&p).expect("probe ok"), None);
    }
}

#[test]
fn two_signatures_are_refused() {
    let d = tmp();
    let p = image(d.path(), "both.img", 32 << 20);
    run("mkfs.ext2", &["-q", "-F", p.to_str().expect("utf8")]);
    // A swap signature at 4 KiB − 10 on top of ext2, which leaves that area alone.
    // The swap header shares offset 1024 with the ext superblock; ext2 has no
    // superblock checksum, so setting s_inodes_count to 1 (swap "version 1") keeps
    // both signatures valid.
    patch(&p, 0xFF6, b"SWAPSPACE2");
    patch(&p, 1024, &1u32.to_le_bytes());
    match probe_file(&p) {
        Err(ProbeError::Ambivalent(types)) => assert_eq!(types, vec!["swap", "ext2"]),
        other => panic!("expected ambivalent, got {other:?}"),
    }
    let b = blkid(&p);
    assert!(!b.contains_key("TYPE"), "blkid -p also refuses: {b:?}");
}

#[test]
fn nothing_on_blank_or_tiny_devices() {
    let blank = vec![0u8; 4 << 20];
    assert_eq!(
        probe_filesystem(&mut Cursor::new(blank)).expect("probe ok"),
        None
    );
    let tiny = vec![0u8; 512];
    assert_eq!(
        probe_filesystem(&mut Cursor::new(tiny)).expect("probe ok"),
        None
    );
    assert_eq!(
        probe_filesystem(&mut Cursor::new(Vec::new())).expect("probe ok"),
        None
    );
}

#[test]
fn works_in_memory() {
    // A hand-made ext2 superblock: magic, no features, label and UUID.
    let mut img = vec![0u8; 64 << 10];
    img[1024 + 0x38] = 0x53;
    img[1024 + 0x39] = 0xEF;
    img[1024 + 0x68..1024 + 0x78].copy_from_slice(&[0xAB; 16]);
    img[1024 + 0x78..1024 + 0x7C].copy_from_slice(b"mem ");
    let info = probe_filesystem(&mut Cursor::new(img))
        .expect("probe ok")
        .expect("found");
    assert_eq!(info.fs_type, "ext2");
    assert_eq!(info.label.as_deref(), Some("mem"));
    assert_eq!(
        info.uuid.as_deref(),
        Some("abababab-abab-abab-abab-abababababab")
    );
}

/// `partx -g -P -o NR,UUID,NAME,TYPE,START,END FILE` (libblkid's partition prober) as
/// one map per partition; values come `\xNN`-escaped.
fn partx(path: &Path) -> Vec<HashMap<String, String>> {
    let out = Command::new(require_tool("partx"))
        .args(["-g", "-P", "-o", "NR,UUID,NAME,TYPE,START,END"])
        .arg(path)
        .output()
        .expect("spawn partx");
    assert!(out.status.success(), "partx failed");
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut row = HashMap::new();
        // KEY="value" pairs separated by spaces; values here contain no quotes.
        for pair in line.split("\" ") {
            if let Some((k, v)) = pair.split_once("=\"") {
                row.insert(k.to_string(), udev_unescape(v.trim_end_matches('"')));
            }
        }
        rows.push(row);
    }
    rows
}

const GPT_SCRIPT: &str = "label: gpt
label-id: 01234567-89AB-CDEF-0123-456789ABCDEF
start=2048, size=20480, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=8F3C1E2A-1B2C-4D5E-8F90-A1B2C3D4E5F6, name=\"EFI System\"
start=22528, size=20480, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=11223344-5566-4778-899A-ABBCCDDEEFF0, name=\"nixos root/\u{fc}\"
";

fn make_gpt(dir: &Path) -> PathBuf {
    let p = image(dir, "disk.img", 64 << 20);
    let disk = p.to_str().expect("utf8");
    // Partition 4 with slot 3 left empty: numbers are slots, not a count.
    let script = format!(
        "{GPT_SCRIPT}{disk}4 : start=43008, size=8192, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, uuid=DEADBEEF-0000-4000-8000-000000000004, name=\"swap\"\n"
    );
    run_stdin("sfdisk", &["-q", disk], &script);
    p
}

fn gpt_of(path: &Path) -> Option<Vec<GptPartition>> {
    let mut f = File::open(path).expect("open image");
    probe_gpt(&mut f, 512).expect("probe ok")
}

#[test]
fn gpt_matches_sfdisk_and_partx() {
    let d = tmp();
    let p = make_gpt(d.path());
    let parts = gpt_of(&p).expect("a GPT");
    let got: Vec<_> = parts
        .iter()
        .map(|g| {
            (
                g.number,
                g.part_uuid.as_str(),
                g.part_label.as_str(),
                g.first_lba,
                g.last_lba,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                1,
                "8f3c1e2a-1b2c-4d5e-8f90-a1b2c3d4e5f6",
                "EFI System",
                2048,
                22527
            ),
            (
                2,
                "11223344-5566-4778-899a-abbccddeeff0",
                "nixos root/\u{fc}",
                22528,
                43007
            ),
            (
                4,
                "deadbeef-0000-4000-8000-000000000004",
                "swap",
                43008,
                51199
            ),
        ]
    );
    assert_eq!(parts[0].type_guid, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");

    let rows = partx(&p);
    assert_eq!(rows.len(), parts.len());
    for (row, g) in rows.iter().zip(&parts) {
        assert_eq!(row["NR"], g.number.to_string());
        assert_eq!(row["UUID"], g.part_uuid);
        assert_eq!(row["NAME"], g.part_label);
        assert_eq!(row["TYPE"], g.type_guid);
        assert_eq!(row["START"], g.first_lba.to_string());
        assert_eq!(row["END"], g.last_lba.to_string());
    }

    let spec = DeviceSpec::parse("PARTLABEL=nixos root/\u{fc}").expect("spec");
    assert!(spec.matches(None, Some(&parts[1])));
    assert!(!spec.matches(None, Some(&parts[0])));
    assert_eq!(
        by_links(None, Some(&parts[1])),
        vec![
            "/dev/disk/by-partuuid/11223344-5566-4778-899a-abbccddeeff0",
            "/dev/disk/by-partlabel/nixos\\x20root\\x2f\u{fc}",
        ]
    );
    let link = DeviceSpec::parse("/dev/disk/by-partlabel/nixos\\x20root\\x2f\u{fc}").expect("spec");
    assert!(link.matches(None, Some(&parts[1])));
}

#[test]
fn gpt_backup_header_and_corruption() {
    let d = tmp();
    let p = make_gpt(d.path());
    let primary = gpt_of(&p).expect("a GPT");

    // Primary header damaged: the backup at the last LBA gives the same answer.
    patch(&p, 512 + 0x38, b"\xFF");
    assert_eq!(gpt_of(&p).as_ref(), Some(&primary));

    // Both headers damaged: no GPT at all.
    let last = (64u64 << 20) - 512;
    patch(&p, last + 0x38, b"\xFF");
    assert_eq!(gpt_of(&p), None);
}

#[test]
fn gpt_needs_protective_mbr_and_sane_sector_size() {
    let d = tmp();
    let p = make_gpt(d.path());
    let mut f = File::open(&p).expect("open");
    assert!(matches!(
        probe_gpt(&mut f, 1000),
        Err(ProbeError::BadSectorSize(1000))
    ));
    // With 4096-byte sectors the header is not at LBA 1, so nothing is found.
    assert_eq!(probe_gpt(&mut f, 4096).expect("probe ok"), None);
    patch(&p, 0x1BE + 4, b"\x83");
    assert_eq!(gpt_of(&p), None);
    // And a GPT disk is no MBR disk.
    let mut blank = Cursor::new(vec![0u8; 1 << 20]);
    assert_eq!(probe_gpt(&mut blank, 512).expect("probe ok"), None);
}

#[test]
fn mbr_partuuids() {
    let d = tmp();
    let p = image(d.path(), "mbr.img", 64 << 20);
    let script = "label: dos\nlabel-id: 0x12345678\nstart=2048, size=20480, type=83, bootable\nstart=22528, size=20480, type=82\n";
    run_stdin("sfdisk", &["-q", p.to_str().expect("utf8")], script);
    let mut f = File::open(&p).expect("open");
    let t = probe_mbr(&mut f).expect("probe ok").expect("an MBR");
    assert_eq!(t.disk_id, 0x1234_5678);
    let got: Vec<_> = t
        .partitions
        .iter()
        .map(|m| {
            (
                m.number,
                m.part_uuid.as_deref(),
                m.part_type,
                m.bootable,
                m.first_lba,
                m.sectors,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, Some("12345678-01"), 0x83, true, 2048, 20480),
            (2, Some("12345678-02"), 0x82, false, 22528, 20480),
        ]
    );
    let rows = partx(&p);
    let uuids: Vec<_> = rows.iter().map(|r| r["UUID"].clone()).collect();
    assert_eq!(uuids, vec!["12345678-01", "12345678-02"]);
    let ids = t.partitions[1].ids().expect("has a PARTUUID");
    assert!(DeviceSpec::parse("PARTUUID=12345678-02")
        .expect("spec")
        .matches_ids(None, Some(ids)));
    // The GPT disk from above is not an MBR disk, and a FAT floppy is not either.
    let g = image(d.path(), "fat.img", 2 << 20);
    run("mkfs.vfat", &[g.to_str().expect("utf8")]);
    let mut f = File::open(&g).expect("open");
    assert_eq!(probe_mbr(&mut f).expect("probe ok"), None);
    let mut f = File::open(&g).expect("open");
    assert_eq!(probe_gpt(&mut f, 512).expect("probe ok"), None);
}

#[test]
fn vfat_without_label() {
    let d = tmp();
    let p = image(d.path(), "fat.img", 64 << 20);
    // mkfs.fat without -n writes "NO NAME" into the boot sector and no directory
    // entry; blkid reports no LABEL then.
    run("mkfs.vfat", &["-F", "32", p.to_str().expect("utf8")]);
    let info = probe_and_compare(&p);
    assert_eq!((info.fs_type, info.label), ("vfat", None));
}

#[test]
fn erofs_label_offset() {
    // erofs-utils 1.5 (Debian 12) cannot set a label, so write one into the
    // superblock, fix up the checksum, and check blkid reads the same field.
    let d = tmp();
    let src = d.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    let p = d.path().join("ero.img");
    run(
        "mkfs.erofs",
        &[p.to_str().expect("utf8"), src.to_str().expect("utf8")],
    );
    let mut data = std::fs::read(&p).expect("read image");
    data[1024 + 64..1024 + 64 + 9].copy_from_slice(b"ero label");
    if u32::from_le_bytes([data[1032], data[1033], data[1034], data[1035]]) & 1 != 0 {
        let blksz = 1usize << data[1024 + 12];
        let crc = super::util::crc32c_update_skipping(!0, &data[1024..blksz], 4, 4);
        data[1028..1032].copy_from_slice(&crc.to_le_bytes());
    }
    std::fs::write(&p, &data).expect("write image");
    let info = probe_and_compare(&p);
    assert_eq!(info.label.as_deref(), Some("ero label"));
}

/// Counts reads that reach the device, to keep the "few reads per device" promise.
struct CountingReader<R> {
    inner: R,
    reads: usize,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reads += 1;
        self.inner.read(buf)
    }
}

impl<R: Seek> Seek for CountingReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[test]
fn few_reads_per_device() {
    let d = tmp();
    let cases: [(&str, &[&str], usize); 4] = [
        ("mkfs.ext4", &["-q", "-F"], 1),
        ("mkfs.btrfs", &["-q", "-f"], 1),
        // FAT: the boot sector plus one 4 KiB piece of the root directory.
        ("mkfs.vfat", &["-F", "16"], 2),
        ("mkfs.vfat", &["-F", "32"], 2),
    ];
    for (tool, args, max_reads) in cases {
        let p = image(d.path(), "img", 128 << 20);
        let mut all: Vec<&str> = args.to_vec();
        all.push(p.to_str().expect("utf8"));
        run(tool, &all);
        let mut r = CountingReader {
            inner: File::open(&p).expect("open"),
            reads: 0,
        };
        assert!(probe_filesystem(&mut r).expect("probe ok").is_some());
        assert!(r.reads <= max_reads, "{tool}: {} reads", r.reads);
    }
}

/// The first 256 KiB of an image: every structure we parse starts in there.
fn read_head(p: &Path) -> Vec<u8> {
    let mut head = Vec::new();
    std::io::Read::read_to_end(&mut File::open(p).expect("open").take(256 << 10), &mut head)
        .expect("read");
    head
}

/// Damaged and truncated images must give an answer or an error, never a panic.
#[test]
fn garbage_never_panics() {
    let d = tmp();
    let mut images = Vec::new();
    for (tool, args, size) in [
        ("mkfs.ext4", &["-q", "-F"][..], 32u64 << 20),
        ("mkfs.vfat", &["-F", "32"][..], 64 << 20),
        ("mkfs.vfat", &["-F", "12"][..], 2 << 20),
        ("mkswap", &["-q"][..], 16 << 20),
        ("mkfs.btrfs", &["-q", "-f"][..], 128 << 20),
        ("mkfs.xfs", &["-q", "-f"][..], 320 << 20),
    ] {
        let p = image(d.path(), "img", size);
        let mut all: Vec<&str> = args.to_vec();
        all.push(p.to_str().expect("utf8"));
        run(tool, &all);
        images.push(read_head(&p));
    }
    let p = make_gpt(d.path());
    images.push(read_head(&p));
    // Deterministic xorshift so failures reproduce.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for img in &images {
        for round in 0..200 {
            let mut m = img.clone();
            let len = if round % 4 == 0 {
                (next() as usize) % (m.len() + 1)
            } else {
                m.len()
            };
            m.truncate(len);
            for _ in 0..(1 + next() % 64) {
                if m.is_empty() {
                    break;
                }
                // Bias damage toward the first 68 KiB, where the superblocks are.
                let span = m.len().min(0x11000 + 512);
                let i = (next() as usize) % span;
                m[i] = next() as u8;
            }
            let _ = probe_filesystem(&mut Cursor::new(m.clone()));
            let _ = probe_gpt(&mut Cursor::new(m.clone()), 512);
            let _ = probe_mbr(&mut Cursor::new(m));
        }
    }
}
