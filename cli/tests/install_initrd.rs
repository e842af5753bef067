//! `stagehand install-bootloader --initrd` through the real binary on a temp root: the
//! admin's initrd (outside the store) is copied once under its content's name and booted by
//! the generations of its kernel only; the others keep theirs and a note says why; the
//! dry run shows the choice and writes nothing; a bad `--initrd` or a bad
//! `dev.stagehand.v1` extension in `boot.json` is refused with the file and the fix.

use std::path::Path;
use std::process::{Command, Output};

use stagehand_boot::profile::Profile;
use stagehand_common::rootfs::Root;
use stagehand_initrd::cpio::{Archive, Entry, Node};
use stagehand_testkit::host::require_tool;
use stagehand_testkit::FakeRoot;

const BIN: &str = env!("CARGO_BIN_EXE_stagehand");
const OURS: &str = "/root/stagehand-initrd.img";

/// Generation `n` running Linux `version`, with its own kernel and initrd in the store;
/// `extension` is added to its boot.json as is.
fn add_generation(r: &FakeRoot, n: u32, version: &str, extension: &str) {
    let top = format!("/nix/store/t{n}-nixos-system-demo");
    let kernel = format!("/nix/store/k{n}-linux-{version}/bzImage");
    let initrd = format!("/nix/store/i{n}-initrd-linux-{version}/initrd");
    std::fs::create_dir_all(r.host(&format!("{top}/kernel-modules/lib/modules/{version}")))
        .expect("mkdir");
    r.write(&kernel, &format!("kernel {n}"));
    r.write(&initrd, &format!("nixos initrd {n}"));
    r.write(
        &format!("{top}/boot.json"),
        &format!(
            r#"{{
  {extension}"org.nixos.bootspec.v1": {{
    "init": "{top}/init",
    "initrd": "{initrd}",
    "kernel": "{kernel}",
    "kernelParams": ["console=ttyS0"],
    "label": "NixOS 26.05 (Linux {version})",
    "system": "x86_64-linux",
    "toplevel": "{top}"
  }}
}}
"#
        ),
    );
    let root = Root::open(r.path()).expect("root");
    Profile::system(&root)
        .set(Path::new(&top))
        .expect("profile");
}

/// Generation 1 runs Linux 6.6.0, generation 2 (current) 6.1.0; our initrd, with one
/// module built for 6.1.0, lies outside the store as an admin would keep it.
fn setup() -> (FakeRoot, Vec<u8>) {
    let r = FakeRoot::new();
    std::fs::create_dir_all(r.host("/boot")).expect("esp");
    add_generation(&r, 1, "6.6.0", "");
    add_generation(&r, 2, "6.1.0", "");
    let mut a = Archive::new();
    let file = |data: Vec<u8>| Entry {
        perm: 0o755,
        node: Node::File(data),
    };
    a.add("/init", file(b"stage 1".to_vec())).expect("add");
    let ko = stagehand_initrd::inspect::fake_module(&[
        "name=virtio_blk",
        "vermagic=6.1.0 SMP preempt mod_unload",
    ]);
    a.add("/lib/modules/virtio_blk.ko", file(ko)).expect("add");
    let bytes = a.to_bytes().expect("cpio");
    std::fs::create_dir_all(r.host("/root")).expect("mkdir");
    std::fs::write(r.host(OURS), &bytes).expect("initrd");
    (r, bytes)
}

fn stagehand(r: &FakeRoot, args: &[&str]) -> Output {
    let root = r.path().to_str().expect("utf8");
    Command::new(BIN)
        .args([
            "install-bootloader",
            "--root",
            root,
            "--efivars",
            "/nonexistent",
        ])
        .args(args)
        .output()
        .expect("run stagehand")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sha256_prefix(path: &Path) -> String {
    let out = Command::new(require_tool("sha256sum"))
        .arg(path)
        .output()
        .expect("sha256sum");
    text(&out.stdout)[..32].to_string()
}

/// The entry file of generation `n` on the ESP (with whatever counter it has).
fn entry(r: &FakeRoot, n: u32) -> String {
    let dir = r.host("/boot/loader/entries");
    let prefix = format!("nixos-generation-{n}+");
    let e = std::fs::read_dir(&dir)
        .expect("entries")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .unwrap_or_else(|| panic!("no entry for generation {n}"));
    std::fs::read_to_string(e.path()).expect("read entry")
}

#[test]
fn the_admin_initrd_boots_the_generations_of_its_kernel() {
    let (r, bytes) = setup();
    let digest = sha256_prefix(&r.host(OURS));
    let name = format!("stagehand-{digest}-initrd.efi");

    // The dry run shows the choice for each generation and writes nothing.
    let out = stagehand(&r, &["--initrd", OURS, "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!(
            "copy /root/stagehand-initrd.img -> EFI/nixos/{name}"
        )),
        "{said}"
    );
    assert!(
        said.contains(
            "note: generation 2: initrd /root/stagehand-initrd.img (--initrd, modules for Linux 6.1.0)"
        ),
        "{said}"
    );
    assert!(
        said.contains(
            "note: generation 1: keeps its own initrd /nix/store/i1-initrd-linux-6.6.0/initrd: \
             its kernel modules are for Linux 6.6.0, --initrd's for Linux 6.1.0"
        ),
        "{said}"
    );
    assert_eq!(
        std::fs::read_dir(r.host("/boot")).expect("ls").count(),
        0,
        "--dry-run wrote to the ESP"
    );

    // The real run: copied once, whole, under its content's name; 2 boots it, 1 its own.
    let out = stagehand(&r, &["--initrd", OURS]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stderr).contains("note: generation 1: keeps its own initrd"),
        "{out:?}"
    );
    let copied = std::fs::read(r.host(&format!("/boot/EFI/nixos/{name}"))).expect("copied");
    assert_eq!(copied, bytes);
    assert!(
        entry(&r, 2).contains(&format!("\ninitrd /EFI/nixos/{name}\n")),
        "{}",
        entry(&r, 2)
    );
    assert!(
        entry(&r, 1).contains("\ninitrd /EFI/nixos/i1-initrd-linux-6.6.0-initrd.efi\n"),
        "{}",
        entry(&r, 1)
    );
    assert!(!r
        .host("/boot/EFI/nixos/i2-initrd-linux-6.1.0-initrd.efi")
        .exists());

    // Without --initrd, NixOS's own initrds come back and ours is removed.
    let out = stagehand(&r, &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(entry(&r, 2).contains("\ninitrd /EFI/nixos/i2-initrd-linux-6.1.0-initrd.efi\n"));
    assert!(!r.host(&format!("/boot/EFI/nixos/{name}")).exists());
}

#[test]
fn a_bad_initrd_argument_is_refused_before_anything_is_written() {
    let (r, _) = setup();
    std::fs::write(r.host("/root/notes.txt"), "not an archive").expect("write");
    for (arg, words) in [
        (
            "/root",
            &["--initrd /root: it is a directory, not a regular file"][..],
        ),
        (
            "/root/missing.img",
            &[
                "--initrd /root/missing.img: cannot read it",
                "stagehand-initrd build",
            ][..],
        ),
        (
            "/root/notes.txt",
            &["--initrd /root/notes.txt: not an initrd"][..],
        ),
    ] {
        let out = stagehand(&r, &["--initrd", arg]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{arg}: {err}");
        assert!(
            err.starts_with("stagehand install-bootloader: "),
            "{arg}: {err}"
        );
        for w in words {
            assert!(err.contains(w), "{arg}: {err} lacks {w}");
        }
        assert_eq!(
            std::fs::read_dir(r.host("/boot")).expect("ls").count(),
            0,
            "{arg}: the ESP was written to"
        );
    }
}

#[test]
fn the_modules_extension_is_honoured_and_a_bad_one_is_named() {
    let r = FakeRoot::new();
    std::fs::create_dir_all(r.host("/boot")).expect("esp");
    let ext = "/nix/store/e1-stagehand-initrd/initrd";
    r.write(ext, "stagehand initrd from the module");
    add_generation(
        &r,
        1,
        "6.1.0",
        &format!(r#""dev.stagehand.v1": {{"initrd": "{ext}"}},"#),
    );
    let out = stagehand(&r, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stdout).contains(&format!(
            "note: generation 1: initrd {ext} (boot.json dev.stagehand.v1)"
        )),
        "{out:?}"
    );
    let out = stagehand(&r, &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(entry(&r, 1).contains("\ninitrd /EFI/nixos/e1-stagehand-initrd-initrd.efi\n"));

    // The same generation naming a file outside the store: refused, naming file and key.
    let r = FakeRoot::new();
    std::fs::create_dir_all(r.host("/boot")).expect("esp");
    add_generation(
        &r,
        1,
        "6.1.0",
        r#""dev.stagehand.v1": {"initrd": "/etc/shadow"},"#,
    );
    let out = stagehand(&r, &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for w in [
        "/nix/store/t1-nixos-system-demo/boot.json",
        "\"dev.stagehand.v1\".initrd is \"/etc/shadow\"",
        "/nix/store",
    ] {
        assert!(err.contains(w), "{err} lacks {w}");
    }
    assert_eq!(std::fs::read_dir(r.host("/boot")).expect("ls").count(), 0);
}
