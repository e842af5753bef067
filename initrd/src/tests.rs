//! Whole-build tests against a synthetic modules tree (fake `.ko` files that carry only a
//! `.modinfo` section), so they run anywhere. The tests against the real Debian kernel
//! are in `tests/debian_kernel.rs`.

use std::path::{Path, PathBuf};

use stagehand_common::stage1_config::{FileSystem, Stage1Config, STAGE1_CONFIG_PATH};
use stagehand_testkit::host::require_tool;

use crate::elf::tests::tiny_elf;
use crate::modules::{ModuleError, ModuleIndex};
use crate::*;

const SIG_MARKER: &[u8] = b"~Module signature appended~\n";

pub(crate) struct Tree {
    _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) modules: PathBuf,
}

/// A temp dir with `stage1` and `lib/modules/6.1.0-test/` holding the given modules:
/// (relative path, modinfo strings).
pub(crate) fn tree(mods: &[(&str, &[&str])], builtin: &[&str]) -> Tree {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    std::fs::write(root.join("stage1"), b"\x7fELF fake stage1").expect("stage1");
    let modules = root.join("lib/modules/6.1.0-test");
    for (rel, info) in mods {
        write_module(&modules.join(rel), info, None);
    }
    std::fs::create_dir_all(&modules).expect("mkdir");
    let builtin_list: String = builtin.iter().map(|b| format!("{b}\n")).collect();
    std::fs::write(modules.join("modules.builtin"), builtin_list).expect("builtin");
    Tree {
        _dir: dir,
        root,
        modules,
    }
}

fn modinfo_bytes(info: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for kv in info {
        out.extend_from_slice(kv.as_bytes());
        out.push(0);
    }
    out
}

/// Write a fake module; with `sig`, append a signature of that many bytes.
fn write_module(path: &Path, info: &[&str], sig: Option<usize>) -> Vec<u8> {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let body = tiny_elf(&[(".text", b"\xc3"), (".modinfo", &modinfo_bytes(info))]);
    let mut bytes = body.clone();
    if let Some(n) = sig {
        bytes.extend_from_slice(&vec![0x5a; n]);
        bytes.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&(n as u32).to_be_bytes());
        bytes.extend_from_slice(SIG_MARKER);
    }
    std::fs::write(path, &bytes).expect("write module");
    body
}

pub(crate) fn spec(t: &Tree, modules: &[&str], optional: &[&str]) -> InitrdSpec {
    InitrdSpec {
        stage1: t.root.join("stage1"),
        modules_dir: Some(t.modules.clone()),
        modules: modules.iter().map(|s| s.to_string()).collect(),
        optional_modules: optional.iter().map(|s| s.to_string()).collect(),
        filesystems: vec![FileSystem {
            mount_point: "/".into(),
            device: "LABEL=nixos".into(),
            fs_type: "ext4".into(),
            options: vec!["noatime".into()],
        }],
        device_timeout_ms: 7000,
        panic_on_fail: true,
        extra_files: Vec::new(),
        compression: Compression::None,
        keep_module_signatures: false,
        compression_level: None,
    }
}

/// A small fake kernel: `fs` needs `jrnl` and `cache` and softdeps on alias `crypto-sum`
/// (provided by two modules), `jrnl` needs `cache`, `blk` needs `core` which is built in.
fn fake_kernel() -> Tree {
    tree(
        &[
            (
                "kernel/fs/fs.ko",
                &["softdep=pre: crypto-sum", "depends=jrnl,cache", "name=fs"],
            ),
            ("kernel/fs/jrnl.ko", &["depends=cache", "name=jrnl"]),
            ("kernel/fs/cache.ko", &["depends=", "name=cache"]),
            (
                "kernel/crypto/sum-generic.ko",
                &["alias=crypto-sum", "alias=sum", "name=sum_generic"],
            ),
            (
                "kernel/arch/sum-fast.ko",
                &["alias=crypto-sum", "name=sum_fast"],
            ),
            ("kernel/drivers/blk.ko", &["depends=core", "name=blk"]),
            (
                "kernel/drivers/net.ko",
                &["softdep=pre: nosuchthing", "name=net"],
            ),
        ],
        &["kernel/base/core.ko"],
    )
}

fn names(c: &modules::Closure) -> Vec<(String, bool)> {
    c.modules
        .iter()
        .map(|m| (m.name.clone(), m.optional))
        .collect()
}

#[test]
fn closure_orders_dependencies_first_and_marks_softdeps_optional() {
    let t = fake_kernel();
    let index = ModuleIndex::open(&t.modules).expect("index");
    let c = index
        .closure(&["fs".into(), "blk".into()], &[])
        .expect("closure");
    let got = names(&c);
    let want: Vec<(String, bool)> = [
        ("sum_fast", true),
        ("sum_generic", true),
        ("cache", false),
        ("jrnl", false),
        ("fs", false),
        ("blk", false),
    ]
    .iter()
    .map(|(n, o)| (n.to_string(), *o))
    .collect();
    assert_eq!(got, want);
    assert_eq!(c.builtin, ["core"]);
}

#[test]
fn required_wins_over_optional_and_dashes_match_underscores() {
    let t = fake_kernel();
    let index = ModuleIndex::open(&t.modules).expect("index");
    let c = index
        .closure(
            &["sum-generic".into(), "fs".into()],
            &["jrnl".into(), "gone".into()],
        )
        .expect("closure");
    let got = names(&c);
    assert!(got.contains(&("sum_generic".into(), false)), "{got:?}");
    assert!(got.contains(&("sum_fast".into(), true)), "{got:?}");
    assert!(got.contains(&("jrnl".into(), false)), "{got:?}");
    assert!(
        c.warnings.iter().any(|w| w.contains("gone")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn unresolvable_softdep_is_a_warning() {
    let t = fake_kernel();
    let index = ModuleIndex::open(&t.modules).expect("index");
    let c = index.closure(&["net".into()], &[]).expect("closure");
    assert_eq!(names(&c), [("net".to_string(), false)]);
    assert!(c.warnings.iter().any(|w| w.contains("nosuchthing")));
}

#[test]
fn request_by_alias_works() {
    let t = fake_kernel();
    let index = ModuleIndex::open(&t.modules).expect("index");
    let c = index.closure(&["sum".into()], &[]).expect("closure");
    assert_eq!(names(&c), [("sum_generic".to_string(), false)]);
}

#[test]
fn missing_module_is_an_error_naming_it() {
    let t = fake_kernel();
    let e = build(&spec(&t, &["fs", "virtio_nothing"], &[])).expect_err("missing");
    let msg = e.to_string();
    assert!(
        matches!(e, InitrdError::Module(ModuleError::NotFound { ref name, .. }) if name == "virtio_nothing"),
        "{msg}"
    );
    assert!(
        msg.contains("virtio_nothing") && msg.contains("modules.builtin"),
        "{msg}"
    );
}

#[test]
fn missing_dependency_names_who_needs_it() {
    let t = tree(&[("kernel/a.ko", &["depends=b", "name=a"])], &[]);
    let e = build(&spec(&t, &["a"], &[])).expect_err("missing dep");
    let msg = e.to_string();
    assert!(
        msg.contains("\"b\"") && msg.contains("needed by a"),
        "{msg}"
    );
}

#[test]
fn corrupt_module_is_an_error_naming_the_file() {
    let t = fake_kernel();
    let bad = t.modules.join("kernel/fs/jrnl.ko");
    std::fs::write(&bad, b"this is not an ELF file at all, sorry").expect("write");
    let e = build(&spec(&t, &["fs"], &[])).expect_err("corrupt");
    let msg = e.to_string();
    assert!(
        matches!(e, InitrdError::Module(ModuleError::Corrupt { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("jrnl.ko") && msg.contains("not an ELF"),
        "{msg}"
    );

    // An ELF without .modinfo is not a module either.
    std::fs::write(&bad, tiny_elf(&[(".text", b"\xc3")])).expect("write");
    let msg = build(&spec(&t, &["fs"], &[]))
        .expect_err("no modinfo")
        .to_string();
    assert!(msg.contains("no .modinfo"), "{msg}");

    // A truncated ELF.
    let good = tiny_elf(&[(".modinfo", b"name=jrnl\0")]);
    std::fs::write(&bad, &good[..good.len() - 30]).expect("write");
    let msg = build(&spec(&t, &["fs"], &[]))
        .expect_err("truncated")
        .to_string();
    assert!(msg.contains("jrnl.ko"), "{msg}");
}

#[test]
fn dependency_cycle_is_reported() {
    let t = tree(
        &[
            ("kernel/a.ko", &["depends=b", "name=a"]),
            ("kernel/b.ko", &["depends=a", "name=b"]),
        ],
        &[],
    );
    let msg = build(&spec(&t, &["a"], &[]))
        .expect_err("cycle")
        .to_string();
    assert!(
        msg.contains("a -> b -> a") || msg.contains("b -> a -> b"),
        "{msg}"
    );
}

#[test]
fn no_modules_dir_is_an_error() {
    let t = fake_kernel();
    let mut s = spec(&t, &["fs"], &[]);
    s.modules_dir = None;
    let msg = build(&s).expect_err("no dir").to_string();
    assert!(msg.contains("modules_dir") && msg.contains("fs"), "{msg}");
}

#[test]
fn archive_has_init_config_modules_and_skeleton() {
    let t = fake_kernel();
    let initrd = build(&spec(&t, &["fs", "blk"], &[])).expect("build");
    let entries = list(&initrd.bytes).expect("list");
    let get = |name: &str| {
        entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no {name} in archive"))
    };
    assert_eq!(get("init").mode, 0o100755);
    assert_eq!(get("init").data, b"\x7fELF fake stage1");
    for d in SKELETON_DIRS {
        assert!(get(d.trim_start_matches('/')).is_dir(), "{d}");
    }
    let console = get("dev/console");
    assert_eq!((console.rdevmajor, console.rdevminor), (5, 1));

    let cfg = Stage1Config::decode(&get(STAGE1_CONFIG_PATH.trim_start_matches('/')).data)
        .expect("config decodes");
    assert_eq!(cfg, initrd.config);
    assert_eq!(cfg.device_timeout_ms, 7000);
    assert!(cfg.panic_on_fail);
    assert_eq!(cfg.filesystems[0].device, "LABEL=nixos");
    let order: Vec<&str> = cfg.modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        order,
        ["sum_fast", "sum_generic", "cache", "jrnl", "fs", "blk"]
    );
    for m in &cfg.modules {
        assert_eq!(m.path, format!("/lib/modules/{}.ko", m.name));
        let file = get(m.path.trim_start_matches('/'));
        assert_eq!(file.mode, 0o100644);
        assert_eq!(&file.data[..4], b"\x7fELF");
    }

    // Sorted, parents first, fixed metadata, unique inodes.
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for e in &entries {
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 1), "{}", e.name);
        if let Some((parent, _)) = e.name.rsplit_once('/') {
            let p = names.iter().position(|n| *n == parent).expect("parent");
            let me = names.iter().position(|n| *n == e.name).expect("self");
            assert!(p < me);
        }
    }
    let mut inos: Vec<u32> = entries.iter().map(|e| e.ino).collect();
    inos.sort();
    inos.dedup();
    assert_eq!(inos.len(), entries.len());

    // The report covers every file, largest first.
    let sizes: Vec<u64> = initrd.report.files.iter().map(|f| f.size).collect();
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]));
    assert_eq!(initrd.report.files.len(), 8);
    assert_eq!(initrd.report.compressed, initrd.bytes.len() as u64);
}

#[test]
fn signatures_are_stripped_unless_kept() {
    let t = tree(&[], &[]);
    let path = t.modules.join("kernel/signed.ko");
    let body = write_module(&path, &["name=signed"], Some(512));
    let signed = std::fs::read(&path).expect("read");
    assert!(signed.ends_with(SIG_MARKER));

    let initrd = build(&spec(&t, &["signed"], &[])).expect("build");
    let entries = list(&initrd.bytes).expect("list");
    let m = entries
        .iter()
        .find(|e| e.name == "lib/modules/signed.ko")
        .expect("module in archive");
    assert_eq!(m.data, body);

    let mut keep = spec(&t, &["signed"], &[]);
    keep.keep_module_signatures = true;
    let entries = list(&build(&keep).expect("build").bytes).expect("list");
    let m = entries
        .iter()
        .find(|e| e.name == "lib/modules/signed.ko")
        .expect("module in archive");
    assert_eq!(m.data, signed);

    // A marker whose length field lies is a corrupt module, named.
    let mut lying = body.clone();
    lying.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
    lying.extend_from_slice(&1_000_000u32.to_be_bytes());
    lying.extend_from_slice(SIG_MARKER);
    std::fs::write(&path, lying).expect("write");
    let msg = build(&spec(&t, &["signed"], &[]))
        .expect_err("bad sig")
        .to_string();
    assert!(
        msg.contains("signed.ko") && msg.contains("signature"),
        "{msg}"
    );
}

#[test]
fn compressed_modules() {
    use std::io::Write;
    let t = tree(&[], &[]);
    let body = tiny_elf(&[(".modinfo", b"name=gz\0depends=zs\0")]);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&body).expect("gz");
    std::fs::create_dir_all(t.modules.join("kernel")).expect("mkdir");
    std::fs::write(t.modules.join("kernel/gz.ko.gz"), enc.finish().expect("gz")).expect("w");
    let zbody = tiny_elf(&[(".modinfo", b"name=zs\0")]);
    let z = zstd::stream::encode_all(zbody.as_slice(), 3).expect("zstd");
    std::fs::write(t.modules.join("kernel/zs.ko.zst"), z).expect("w");
    std::fs::write(t.modules.join("kernel/bad.ko.xz"), b"\xfd7zXZ\0trunc").expect("w");
    let xbody = tiny_elf(&[(".modinfo", b"name=xzm\0")]);
    let x = compress::compress(&xbody, Compression::Xz, None).expect("xz");
    std::fs::write(t.modules.join("kernel/xzm.ko.xz"), x).expect("w");

    let initrd = build(&spec(&t, &["gz"], &[])).expect("build");
    let order: Vec<&str> = initrd
        .config
        .modules
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(order, ["zs", "gz"]);
    let entries = list(&initrd.bytes).expect("list");
    let gz = entries
        .iter()
        .find(|e| e.name == "lib/modules/gz.ko")
        .expect("gz");
    assert_eq!(gz.data, body);
    let initrd = build(&spec(&t, &["xzm"], &[])).expect("build");
    let entries = list(&initrd.bytes).expect("list");
    let xzm = entries
        .iter()
        .find(|e| e.name == "lib/modules/xzm.ko")
        .expect("xzm");
    assert_eq!(xzm.data, xbody);

    let msg = build(&spec(&t, &["bad"], &[])).expect_err("xz").to_string();
    assert!(msg.contains("bad.ko.xz") && msg.contains("xz"), "{msg}");
}

#[test]
fn builds_are_byte_identical() {
    let t = fake_kernel();
    for c in [
        Compression::None,
        Compression::Gzip,
        Compression::Zstd,
        Compression::Xz,
    ] {
        let mut s = spec(&t, &["fs", "blk"], &["net"]);
        s.compression = c;
        let a = build(&s).expect("first");
        let b = build(&s).expect("second");
        assert_eq!(a.bytes, b.bytes, "{c:?}");
        assert_eq!(compress::detect(&a.bytes), Some(c));
    }
}

#[test]
fn extra_files_and_trees() {
    use std::os::unix::fs::PermissionsExt;
    let t = fake_kernel();
    let src = t.root.join("extra");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("tool"), b"tool").expect("w");
    std::fs::set_permissions(src.join("tool"), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    std::fs::write(src.join("sub/data"), b"data").expect("w");
    std::fs::set_permissions(src.join("sub/data"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    std::os::unix::fs::symlink("tool", src.join("link")).expect("symlink");
    let single = t.root.join("motd");
    std::fs::write(&single, b"hello").expect("w");

    let mut s = spec(&t, &[], &[]);
    s.extra_files = vec![
        ExtraFile {
            source: src.clone(),
            target: "/opt/x/".into(),
            mode: None,
        },
        ExtraFile {
            source: single.clone(),
            target: "/etc/motd".into(),
            mode: Some(0o600),
        },
    ];
    let entries = list(&build(&s).expect("build").bytes).expect("list");
    let find = |n: &str| {
        entries
            .iter()
            .find(|e| e.name == n)
            .unwrap_or_else(|| panic!("no {n}"))
    };
    assert_eq!(find("opt/x/tool").mode, 0o100755);
    assert_eq!(find("opt/x/sub/data").mode, 0o100644);
    assert_eq!(find("opt/x/link").data, b"tool");
    assert_eq!(find("etc/motd").mode, 0o100600);
    assert!(find("opt/x/sub").is_dir());

    // An extra file that collides with /init is refused, naming the source.
    s.extra_files = vec![ExtraFile {
        source: single.clone(),
        target: "/init".into(),
        mode: None,
    }];
    let msg = build(&s).expect_err("conflict").to_string();
    assert!(msg.contains("motd") && msg.contains("/init"), "{msg}");

    s.extra_files = vec![ExtraFile {
        source: t.root.join("nope"),
        target: "/x".into(),
        mode: None,
    }];
    let msg = build(&s).expect_err("missing").to_string();
    assert!(msg.contains("nope"), "{msg}");
}

#[test]
fn system_cpio_reads_the_archive() {
    let t = fake_kernel();
    let initrd = build(&spec(&t, &["fs"], &[])).expect("build");
    let out = t.root.join("initrd.cpio");
    std::fs::write(&out, &initrd.bytes).expect("write");
    let file = std::fs::File::open(&out).expect("open");
    let listing = std::process::Command::new(require_tool("cpio"))
        .args(["-t", "--quiet"])
        .stdin(file)
        .output()
        .expect("run cpio");
    assert!(listing.status.success(), "{listing:?}");
    let (theirs, ours) = listings(&listing.stdout, &initrd.bytes);
    assert_eq!(theirs, ours);

    // And cpio can extract it byte-for-byte (skip the device node: no mknod needed).
    let x = t.root.join("x");
    std::fs::create_dir_all(&x).expect("mkdir");
    let file = std::fs::File::open(&out).expect("open");
    let st = std::process::Command::new("cpio")
        .args([
            "-i",
            "-d",
            "--quiet",
            "--no-absolute-filenames",
            "-f",
            "dev/console",
        ])
        .current_dir(&x)
        .stdin(file)
        .status()
        .expect("cpio -i");
    assert!(st.success());
    assert_eq!(
        std::fs::read(x.join("init")).expect("init"),
        b"\x7fELF fake stage1"
    );
    let cfg = Stage1Config::read(&x.join("etc/stagehand/stage1.cfg")).expect("cfg");
    assert_eq!(cfg, initrd.config);
}

#[test]
fn module_params_and_firmware() {
    let t = tree(
        &[(
            "kernel/net/nic.ko",
            &[
                "firmware=vendor/nic.bin",
                "firmware=vendor/old.bin",
                "name=nic",
            ],
        )],
        &[],
    );
    let fw = t.root.join("firmware");
    std::fs::create_dir_all(fw.join("vendor")).expect("mkdir");
    std::fs::write(fw.join("vendor/nic.bin.xz"), b"xz firmware").expect("w");

    let s = spec(&t, &["nic"], &[]);
    let without = build(&s).expect("build");
    assert!(
        without
            .report
            .warnings
            .iter()
            .any(|w| w.contains("firmware_dirs")),
        "{:?}",
        without.report.warnings
    );

    let extras = SpecExtras {
        module_params: [("nic".to_string(), "debug=1 mode=fast".to_string())]
            .into_iter()
            .chain([("not-loaded".to_string(), "x=1".to_string())])
            .collect(),
        firmware_dirs: vec![t.root.join("nowhere"), fw],
        ..SpecExtras::default()
    };
    let initrd = build_with(&s, &extras).expect("build");
    assert_eq!(initrd.config.modules[0].params, "debug=1 mode=fast");
    let entries = list(&initrd.bytes).expect("list");
    let f = entries
        .iter()
        .find(|e| e.name == "lib/firmware/vendor/nic.bin.xz")
        .expect("firmware copied");
    assert_eq!(f.data, b"xz firmware");
    let w = &initrd.report.warnings;
    assert!(w.iter().any(|w| w.contains("vendor/old.bin")), "{w:?}");
    assert!(w.iter().any(|w| w.contains("not_loaded")), "{w:?}");
}

#[test]
fn cli_spec_json_takes_extras_in_the_same_object() {
    let full: FullSpec = serde_json::from_str(
        r#"{"stage1": "/s", "modules": ["ext4"], "compression": "gzip",
            "module_params": {"ext4": "a=b"}, "firmware_dirs": ["/lib/firmware"]}"#,
    )
    .expect("json");
    assert_eq!(full.spec.modules, ["ext4"]);
    assert_eq!(full.spec.compression, Compression::Gzip);
    assert_eq!(full.spec.device_timeout_ms, 20_000);
    assert_eq!(full.extras.module_params["ext4"], "a=b");
    assert_eq!(full.extras.firmware_dirs, [PathBuf::from("/lib/firmware")]);
}

fn extras_with(contents: Vec<objects::StoreObject>) -> SpecExtras {
    SpecExtras {
        contents,
        library_dirs: Some(Vec::new()),
        ..SpecExtras::default()
    }
}

#[test]
fn objects_keep_symlinks_on_the_way_and_copy_trees() {
    use std::os::unix::fs::symlink;
    let t = fake_kernel();
    let base = t.root.join("store");
    std::fs::create_dir_all(base.join("pkg-1/bin")).expect("mkdir");
    std::fs::create_dir_all(base.join("pkg-1/share/doc")).expect("mkdir");
    std::fs::create_dir_all(base.join("other/deep")).expect("mkdir");
    std::fs::write(base.join("pkg-1/bin/tool"), b"#!tool").expect("w");
    std::fs::write(base.join("pkg-1/share/doc/readme"), b"doc").expect("w");
    std::fs::write(base.join("other/deep/unrelated"), b"no").expect("w");
    symlink("pkg-1", base.join("pkg")).expect("symlink");
    symlink(base.join("pkg/bin/tool"), base.join("tool-link")).expect("symlink");

    let s = spec(&t, &[], &[]);
    let extras = extras_with(vec![
        objects::StoreObject {
            source: base.join("tool-link"),
            target: Some("/bin/tool".into()),
        },
        objects::StoreObject {
            source: base.join("pkg-1/share"),
            target: None,
        },
    ]);
    let initrd = build_with(&s, &extras).expect("build");
    let entries = list(&initrd.bytes).expect("list");
    let rel = |p: &Path| p.to_string_lossy().trim_start_matches('/').to_owned();
    let find = |n: String| {
        entries
            .iter()
            .find(|e| e.name == n)
            .unwrap_or_else(|| panic!("no {n}"))
            .clone()
    };
    // The requested link, the intermediate `pkg -> pkg-1` link, and the file.
    let link = find(rel(&base.join("tool-link")));
    assert_eq!(link.mode & cpio::S_IFMT, cpio::S_IFLNK);
    assert_eq!(
        link.data,
        base.join("pkg/bin/tool").to_string_lossy().as_bytes()
    );
    let mid = find(rel(&base.join("pkg")));
    assert_eq!(mid.data, b"pkg-1");
    assert_eq!(find(rel(&base.join("pkg-1/bin/tool"))).data, b"#!tool");
    // make-initrd-ng's `target`: a link to the source.
    assert_eq!(
        find("bin/tool".into()).data,
        base.join("tool-link").to_string_lossy().as_bytes()
    );
    // A requested directory brings its tree; nothing else from the store comes along.
    assert_eq!(find(rel(&base.join("pkg-1/share/doc/readme"))).data, b"doc");
    assert!(!entries
        .iter()
        .any(|e| e.name.ends_with("unrelated") || e.name.ends_with("other")));

    // Relative sources are refused; so are link loops.
    let bad = extras_with(vec![objects::StoreObject {
        source: "relative/x".into(),
        target: None,
    }]);
    let msg = build_with(&s, &bad).expect_err("relative").to_string();
    assert!(msg.contains("absolute"), "{msg}");
    symlink("loop-b", base.join("loop-a")).expect("symlink");
    symlink("loop-a", base.join("loop-b")).expect("symlink");
    let looping = extras_with(vec![objects::StoreObject {
        source: base.join("loop-a/x"),
        target: None,
    }]);
    // Either the loop bound or the "already seen" rule stops it; it must not hang.
    let _ = build_with(&s, &looping);
}

#[test]
fn make_initrd_ng_json_is_accepted() {
    let list: Vec<objects::StoreObject> = serde_json::from_str(
        r#"[{"source": "/nix/store/abc-systemd/lib/systemd/systemd", "target": "/init",
             "dlopen": {"usePriority": "recommended", "features": []}},
            {"source": "/nix/store/def-e2fsprogs/bin/e2fsck", "target": null}]"#,
    )
    .expect("json");
    assert_eq!(list[0].target.as_deref(), Some("/init"));
    assert_eq!(list[1].target, None);
}

#[test]
fn appended_secrets_are_listed_after_the_initrd() {
    let t = fake_kernel();
    let key = t.root.join("key");
    std::fs::write(&key, b"secret key").expect("w");
    let secrets = secrets_archive(&[Secret {
        dest: "/etc/ssh/host_key".into(),
        source: key.clone(),
    }])
    .expect("secrets");
    assert_eq!(compress::detect(&secrets), Some(Compression::Gzip));
    for c in [
        Compression::None,
        Compression::Gzip,
        Compression::Zstd,
        Compression::Xz,
    ] {
        let mut s = spec(&t, &["fs"], &[]);
        s.compression = c;
        let mut bytes = build(&s).expect("build").bytes;
        bytes.extend_from_slice(&secrets);
        let entries = list(&bytes).expect("list");
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert!(names.contains(&"init"), "{c:?}: {names:?}");
        let secret = entries
            .iter()
            .find(|e| e.name == ".initrd-secrets/etc/ssh/host_key")
            .unwrap_or_else(|| panic!("{c:?}: {names:?}"));
        assert_eq!(secret.data, b"secret key");
        assert_eq!(secret.mode, 0o100600);
    }
    let msg = secrets_archive(&[Secret {
        dest: "/etc/x".into(),
        source: t.root.join("missing"),
    }])
    .expect_err("missing")
    .to_string();
    assert!(msg.contains("secret") && msg.contains("missing"), "{msg}");
}

/// An xz initrd as the host's own tools read it: `xz -d` (which checks the CRC32) and then
/// `cpio -t` list what our reader lists.
#[test]
fn xz_initrd_reads_back_with_xz_and_cpio() {
    let t = fake_kernel();
    let mut s = spec(&t, &["fs", "blk"], &[]);
    s.compression = Compression::Xz;
    let initrd = build(&s).expect("build");
    assert_eq!(initrd.report.compression, Compression::Xz);
    assert_eq!(compress::detect(&initrd.bytes), Some(Compression::Xz));
    let out = t.root.join("initrd.xz");
    std::fs::write(&out, &initrd.bytes).expect("write");
    let listing = std::process::Command::new("sh")
        .arg("-c")
        .arg("\"$2\" -d -c --single-stream \"$1\" | \"$3\" -t --quiet")
        .arg("sh")
        .arg(&out)
        .arg(require_tool("xz"))
        .arg(require_tool("cpio"))
        .output()
        .expect("run sh");
    assert!(
        listing.status.success(),
        "xz -d | cpio -t failed: {listing:?}"
    );
    let (theirs, ours) = listings(&listing.stdout, &initrd.bytes);
    assert!(ours.contains(&"lib/modules/fs.ko".to_string()), "{ours:?}");
    assert_eq!(theirs, ours);
}

/// `strip`: a real program from this machine and its libraries are cut down in the
/// initrd, still run when taken back out, and the report says what was saved.
#[test]
fn stripped_objects_still_run() {
    let t = fake_kernel();
    let s = spec(&t, &[], &[]);
    let mut extras = SpecExtras {
        contents: vec![objects::StoreObject {
            source: "/usr/bin/true".into(),
            target: None,
        }],
        ..SpecExtras::default()
    };
    let plain = build_with(&s, &extras).expect("build");
    extras.strip = true;
    let stripped = build_with(&s, &extras).expect("build");
    assert!(plain.report.stripped.is_empty());
    let r = &stripped.report.stripped;
    let paths: Vec<&str> = r.iter().map(|s| s.path.as_str()).collect();
    assert!(paths.contains(&"/usr/bin/true"), "{paths:?}");
    // The interpreter and libc came along and were stripped too.
    assert!(paths.iter().any(|p| p.contains("libc.so")), "{paths:?}");
    assert!(r.iter().all(|s| s.after < s.before), "{r:?}");
    assert!(stripped.report.uncompressed < plain.report.uncompressed);
    assert!(stripped.report.to_string().contains("saved by stripping"));
    // The fake /init is not an ELF program and stays as it is.
    let entries = list(&stripped.bytes).expect("list");
    let init = entries.iter().find(|e| e.name == "init").expect("init");
    assert_eq!(init.data, b"\x7fELF fake stage1");

    let tmp = tempfile::tempdir().expect("tempdir");
    let prog = tmp.path().join("true");
    let data = &entries
        .iter()
        .find(|e| e.name == "usr/bin/true")
        .expect("true")
        .data;
    std::fs::write(&prog, data).expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let st = std::process::Command::new(&prog)
        .arg("--version")
        .output()
        .expect("run");
    assert!(st.status.success(), "{st:?}");
}

/// The names `cpio -t` printed (`stdout`) and the names our reader finds in `archive`, both
/// in archive order, for comparing the two.
fn listings(stdout: &[u8], archive: &[u8]) -> (Vec<String>, Vec<String>) {
    let theirs = String::from_utf8_lossy(stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let ours = list(archive)
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    (theirs, ours)
}
