//! The bad-input matrix for the initrd builder, run through the `stagehand-initrd` binary
//! as a build would run it: each case checks the exit status, that stderr names the file
//! or key and says what would fix it, and that no output (or no damaged output) is left.

use std::path::{Path, PathBuf};
use std::process::Command;

const SIG_MARKER: &[u8] = b"~Module signature appended~\n";
const KO: &str = "lib/modules/6.1.0-test/kernel";

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    /// A temp dir with a fake stage 1 and an empty `lib/modules/6.1.0-test`.
    fn new() -> Case {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("stage1"), b"\x7fELF fake stage1").expect("stage1");
        std::fs::create_dir_all(dir.path().join("lib/modules/6.1.0-test/kernel")).expect("modules");
        std::fs::write(
            dir.path().join("lib/modules/6.1.0-test/modules.builtin"),
            "",
        )
        .expect("builtin");
        Case { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, bytes).expect("write");
        p
    }

    /// A spec JSON with `modules` and the given extra keys (`"key": value, ...`).
    fn spec(&self, modules: &[&str], extra: &str) -> PathBuf {
        let mods: Vec<String> = modules.iter().map(|m| format!("{m:?}")).collect();
        let sep = if extra.is_empty() { "" } else { "," };
        let json = format!(
            r#"{{"stage1": {:?}, "modules_dir": {:?}, "modules": [{}],
                "filesystems": [{{"mount_point": "/", "device": "LABEL=nixos",
                "fs_type": "ext4", "options": []}}], "compression": "none"{sep} {extra}}}"#,
            self.path("stage1"),
            self.path("lib/modules/6.1.0-test"),
            mods.join(", ")
        );
        self.write("spec.json", json.as_bytes())
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_stagehand-initrd"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run stagehand-initrd");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `build` must fail, leave no output, and say each of `words`.
    fn build_fails(&self, case: &str, spec: &Path, words: &[&str]) {
        let out = self.path("initrd.img");
        let (ok, stderr) = self.run(&[
            "build",
            "--spec",
            spec.to_str().expect("utf8"),
            "-o",
            out.to_str().expect("utf8"),
        ]);
        assert!(!ok, "{case}: build succeeded");
        assert!(!out.exists(), "{case}: an initrd was left behind");
        assert!(
            std::fs::read_dir(self.dir.path()).expect("ls").all(|e| !e
                .expect("e")
                .file_name()
                .to_string_lossy()
                .contains("tmp")),
            "{case}: a temporary file was left behind"
        );
        for w in words {
            assert!(stderr.contains(w), "{case}: {w:?} missing from: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    }
}

/// An ELF64 relocatable with a `.modinfo` section holding `modinfo` (None: no such section).
fn module(modinfo: Option<&[u8]>) -> Vec<u8> {
    let mut shstr = b"\0.shstrtab\0.modinfo\0".to_vec();
    let data = modinfo.unwrap_or_default();
    let nsec: u16 = if modinfo.is_some() { 3 } else { 2 };
    if modinfo.is_none() {
        shstr.truncate(11);
    }
    let data_off = 64u64;
    let shstr_off = data_off + data.len() as u64;
    let sh_off = (shstr_off + shstr.len() as u64).next_multiple_of(8);
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\0");
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&1u16.to_le_bytes()); // ET_REL
    out.extend_from_slice(&62u16.to_le_bytes()); // x86-64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // entry
    out.extend_from_slice(&0u64.to_le_bytes()); // phoff
    out.extend_from_slice(&sh_off.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    out.extend_from_slice(&[0; 4]); // phentsize, phnum
    out.extend_from_slice(&64u16.to_le_bytes()); // shentsize
    out.extend_from_slice(&nsec.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // shstrndx
    out.extend_from_slice(data);
    out.extend_from_slice(&shstr);
    out.resize(sh_off as usize, 0);
    let shdr = |out: &mut Vec<u8>, name: u32, ty: u32, off: u64, size: u64| {
        out.extend_from_slice(&name.to_le_bytes());
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // flags
        out.extend_from_slice(&0u64.to_le_bytes()); // addr
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&[0; 8]); // link, info
        out.extend_from_slice(&1u64.to_le_bytes()); // addralign
        out.extend_from_slice(&0u64.to_le_bytes()); // entsize
    };
    shdr(&mut out, 0, 0, 0, 0);
    shdr(&mut out, 1, 3, shstr_off, shstr.len() as u64);
    if modinfo.is_some() {
        shdr(&mut out, 11, 1, data_off, data.len() as u64);
    }
    out
}

#[test]
fn the_module_builder_makes_modules_the_builder_accepts() {
    // The helper itself: a well-formed module builds, so the failures below are the inputs.
    let c = Case::new();
    c.write(
        "lib/modules/6.1.0-test/kernel/good.ko",
        &module(Some(b"depends=\0name=good\0")),
    );
    let out = c.path("initrd.img");
    let spec = c.spec(&["good"], "");
    let (ok, stderr) = c.run(&[
        "build",
        "--spec",
        spec.to_str().expect("utf8"),
        "-o",
        out.to_str().expect("utf8"),
    ]);
    assert!(ok, "{stderr}");
    let (ok, stderr) = c.run(&["list", out.to_str().expect("utf8")]);
    assert!(ok, "{stderr}");
}

#[test]
fn bad_modules_name_the_file_and_the_fix() {
    type Setup = fn(&Case);
    let cases: &[(&str, Setup, &[&str])] = &[
        (
            "not an ELF file",
            |c| {
                c.write(&format!("{KO}/m.ko"), b"this is no module");
            },
            &[
                "m.ko",
                "not a usable kernel module",
                "reinstall the kernel package",
            ],
        ),
        (
            "empty file",
            |c| {
                c.write(&format!("{KO}/m.ko"), b"");
            },
            &["m.ko", "not a usable kernel module"],
        ),
        (
            "ELF without .modinfo",
            |c| {
                c.write(&format!("{KO}/m.ko"), &module(None));
            },
            &["m.ko", "no .modinfo section"],
        ),
        (
            "ELF cut short",
            |c| {
                let m = module(Some(b"depends=\0"));
                c.write(&format!("{KO}/m.ko"), &m[..m.len() - 70]);
            },
            &["m.ko", "not a usable kernel module"],
        ),
        (
            "truncated .ko.xz",
            |c| {
                c.write(&format!("{KO}/m.ko.xz"), b"\xfd7zXZ\0\0\x04");
            },
            &["m.ko.xz", "cannot decompress xz", "reinstall"],
        ),
        (
            "garbage .ko.zst",
            |c| {
                c.write(&format!("{KO}/m.ko.zst"), b"\x28\xb5\x2f\xfdjunk");
            },
            &["m.ko.zst", "cannot decompress"],
        ),
        (
            "garbage .ko.gz",
            |c| {
                c.write(&format!("{KO}/m.ko.gz"), b"\x1f\x8bjunk");
            },
            &["m.ko.gz", "cannot decompress"],
        ),
        (
            "signature trailer too long",
            |c| {
                let mut m = module(Some(b"depends=\0"));
                m.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
                m.extend_from_slice(&100_000u32.to_be_bytes());
                m.extend_from_slice(SIG_MARKER);
                c.write(&format!("{KO}/m.ko"), &m);
            },
            &["m.ko", "module signature is malformed", "100000 bytes"],
        ),
        (
            "dangling module link (skipped like a missing file)",
            |c| {
                std::os::unix::fs::symlink("/nonexistent/m.ko", c.path(&format!("{KO}/m.ko")))
                    .expect("symlink");
            },
            &["kernel module \"m\"", "point modules_dir at the tree"],
        ),
        (
            "missing module",
            |_| {},
            &["kernel module \"m\"", "modules.builtin", "optional_modules"],
        ),
        (
            "missing dependency",
            |c| {
                c.write(&format!("{KO}/m.ko"), &module(Some(b"depends=nope\0")));
            },
            &["\"nope\"", "needed by m"],
        ),
        (
            "dependency cycle",
            |c| {
                c.write(&format!("{KO}/m.ko"), &module(Some(b"depends=n\0")));
                c.write(&format!("{KO}/n.ko"), &module(Some(b"depends=m\0")));
            },
            &["cycle", "m -> n", "the modules tree is inconsistent"],
        ),
        (
            "garbage .modinfo strings",
            |c| {
                c.write(
                    &format!("{KO}/m.ko"),
                    &module(Some(b"\xff\xfe=\0depends=,,,\0\0\0softdep=pre:\0alias\0")),
                );
            },
            &[],
        ),
    ];
    for (case, setup, words) in cases {
        let c = Case::new();
        setup(&c);
        let spec = c.spec(&["m"], "");
        if words.is_empty() {
            // Garbage strings in .modinfo are ignored like modprobe does: the build works.
            let out = c.path("initrd.img");
            let (ok, stderr) = c.run(&[
                "build",
                "--spec",
                spec.to_str().expect("utf8"),
                "-o",
                out.to_str().expect("utf8"),
            ]);
            assert!(ok, "{case}: {stderr}");
            continue;
        }
        c.build_fails(case, &spec, words);
    }
}

#[test]
fn bad_specs_name_the_key_and_the_file() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "not JSON",
            "{\"stage1\": ",
            &["spec.json", "not a valid initrd spec", "EOF"],
        ),
        (
            "unknown compression",
            r#"{"stage1": "/x", "compression": "lz5"}"#,
            &["spec.json", "lz5", "zstd"],
        ),
        (
            "stage1 missing",
            r#"{"modules": []}"#,
            &["spec.json", "missing field `stage1`"],
        ),
        (
            "timeout not a number",
            r#"{"stage1": "/x", "device_timeout_ms": "soon"}"#,
            &["spec.json", "\"soon\", expected u32", "line 1 column"],
        ),
    ];
    for (case, json, words) in cases {
        let c = Case::new();
        let spec = c.write("spec.json", json.as_bytes());
        c.build_fails(case, &spec, words);
    }
    // Files the spec names that do not exist.
    let c = Case::new();
    std::fs::remove_file(c.path("stage1")).expect("rm");
    let spec = c.spec(&[], "");
    c.build_fails("stage1 binary missing", &spec, &["stage1", "No such file"]);
    let c = Case::new();
    let spec = c.spec(
        &[],
        r#""extra_files": [{"source": "/nonexistent/x", "target": "/etc/x"}]"#,
    );
    c.build_fails("extra file missing", &spec, &["/nonexistent/x"]);
    let c = Case::new();
    let spec = c.spec(
        &[],
        r#""extra_files": [{"source": "/etc/hostname", "target": "../../escape"}]"#,
    );
    c.build_fails("extra file escaping the initrd", &spec, &["../../escape"]);
    let c = Case::new();
    std::fs::remove_dir_all(c.path("lib")).expect("rm");
    let spec = c.spec(&["m"], "");
    c.build_fails("modules_dir missing", &spec, &["6.1.0-test"]);
}

#[test]
fn bad_archives_for_list_and_append_secrets() {
    let c = Case::new();
    let secret = c.write("key", b"secret");
    let pair = format!("/etc/key={}", secret.display());
    // (contents of the "initrd", words `list` must say)
    let cases: &[(&str, &[u8], &[&str])] = &[
        ("text file", b"hello, not an initrd\n", &["junk.img"]),
        ("newc header cut short", b"070701000000", &["junk.img", "truncated"]),
        ("newc header with non-hex fields", b"070701zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", &["junk.img"]),
        ("gzip magic then junk", b"\x1f\x8b\x08\0junkjunkjunk", &["junk.img"]),
        ("zstd magic then junk", b"\x28\xb5\x2f\xfdjunkjunkjunk", &["junk.img"]),
    ];
    for (case, bytes, words) in cases {
        let img = c.write("junk.img", bytes);
        let img = img.to_str().expect("utf8");
        let (ok, stderr) = c.run(&["list", img]);
        assert!(!ok, "{case}: list accepted it");
        for w in *words {
            assert!(stderr.contains(w), "{case}: {w:?} missing from: {stderr}");
        }
        // append-secrets refuses to extend something that is not an initrd, and leaves it.
        let (ok, stderr) = c.run(&["append-secrets", img, &pair]);
        assert!(!ok, "{case}: append-secrets accepted it");
        assert!(
            stderr.contains("junk.img") && stderr.contains("not an initrd"),
            "{case}: {stderr}"
        );
        assert_eq!(
            std::fs::read(c.path("junk.img")).expect("read"),
            *bytes,
            "{case}: file changed"
        );
    }
    // Bad secret arguments: the initrd stays as it was.
    c.write(
        "lib/modules/6.1.0-test/kernel/good.ko",
        &module(Some(b"depends=\0")),
    );
    let out = c.path("initrd.img");
    let spec = c.spec(&["good"], "");
    let (ok, stderr) = c.run(&[
        "build",
        "--spec",
        spec.to_str().expect("utf8"),
        "-o",
        out.to_str().expect("utf8"),
    ]);
    assert!(ok, "{stderr}");
    let before = std::fs::read(&out).expect("read");
    let o = out.to_str().expect("utf8");
    for (case, arg, words) in [
        ("no =", "/etc/key", &["\"/etc/key\" is not DEST=SOURCE"][..]),
        (
            "missing source",
            "/etc/key=/nonexistent/key",
            &["/nonexistent/key"][..],
        ),
        (
            "relative destination escaping",
            "../../etc/shadow=/etc/hostname",
            &["../../etc/shadow"][..],
        ),
    ] {
        let (ok, stderr) = c.run(&["append-secrets", o, arg]);
        assert!(!ok, "{case}: accepted");
        for w in words {
            assert!(stderr.contains(w), "{case}: {w:?} missing from: {stderr}");
        }
        assert_eq!(
            std::fs::read(&out).expect("read"),
            before,
            "{case}: initrd changed"
        );
    }
}

/// Issue #15 item 6: a misspelt key used to build an initrd without modules (exit 0), and
/// `"stage1": "/dev/zero"` read until memory ran out.
#[test]
fn misspelt_keys_and_inputs_that_are_not_files_are_refused() {
    for (key, value) in [
        ("compresion", r#""none""#),
        ("modulez", r#"["virtio_blk"]"#),
        ("module", r#"["virtio_blk"]"#),
        ("filesystem", "[]"),
    ] {
        let c = Case::new();
        let spec = c.spec(&[], &format!("{key:?}: {value}"));
        c.build_fails(
            key,
            &spec,
            &["spec.json", &format!("unknown field `{key}`")],
        );
    }
    let c = Case::new();
    let spec = c.spec(
        &[],
        r#""extra_files": [{"sorce": "/etc/hostname", "target": "/etc/x"}]"#,
    );
    c.build_fails("misspelt extra file key", &spec, &["unknown field `sorce`"]);

    // A device and a FIFO as the stage-1 binary: refused at once, not read or waited on.
    let timeout = stagehand_testkit::host::require_tool("timeout");
    for (case, make, words) in [
        (
            "character device",
            None,
            ["/dev/zero", "a character device"],
        ),
        ("FIFO", Some("fifo"), ["fifo", "a FIFO"]),
    ] {
        let c = Case::new();
        let source = match make {
            None => PathBuf::from("/dev/zero"),
            Some(name) => {
                let p = c.path(name);
                let made = Command::new(stagehand_testkit::host::require_tool("mkfifo"))
                    .arg(&p)
                    .status()
                    .expect("mkfifo");
                assert!(made.success());
                p
            }
        };
        let json = format!(r#"{{"stage1": {source:?}, "compression": "none"}}"#);
        let spec = c.write("spec.json", json.as_bytes());
        let out = Command::new(&timeout)
            .args([
                "20",
                env!("CARGO_BIN_EXE_stagehand-initrd"),
                "build",
                "--spec",
            ])
            .arg(&spec)
            .arg("-o")
            .arg(c.path("initrd.img"))
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {stderr}");
        for w in words {
            assert!(stderr.contains(w), "{case}: {w:?} missing from: {stderr}");
        }
        assert!(!c.path("initrd.img").exists(), "{case}");
    }
}
