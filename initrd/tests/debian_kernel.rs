//! Tests against a real Debian kernel's modules tree, compared with kmod's own answer.
//!
//! The tree is the first that exists of: `$STAGEHAND_KERNEL_MODULES` (a
//! `lib/modules/<version>` directory); the kernel the VM tests cache
//! (`$STAGEHAND_CACHE` or `<workspace>/target/vm-cache`, then
//! `kernel/linux-image-*/root/lib/modules/*`); `/work/kernel-cache/root/lib/modules/*`.
//! When there is none, the tests fetch the kernel into the VM tests' cache the way their
//! harness does (`apt-cache depends linux-image-amd64` names `linux-image-6.1.0-N-amd64`,
//! `apt-get download` it, `dpkg -x` it), so CI's `cargo test` on a fresh clone runs them
//! and the VM tests find the kernel there afterwards. A missing tool fails the test with
//! the package to install.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use stagehand_initrd::modules::{self, ModuleIndex};
use stagehand_initrd::{build, list, Compression, InitrdSpec};
use stagehand_testkit::host::require_tool;

/// Subdirectories of `dir`, sorted.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_dir());
    v.sort();
    v
}

/// The newest `<root>/lib/modules/<version>` that has a `kernel/` directory.
fn modules_under(root: &Path) -> Option<PathBuf> {
    subdirs(&root.join("lib/modules"))
        .into_iter()
        .rfind(|p| p.join("kernel").is_dir())
}

fn vm_cache() -> PathBuf {
    match std::env::var_os("STAGEHAND_CACHE") {
        Some(c) if !c.is_empty() => PathBuf::from(c),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vm-cache"),
    }
}

/// The modules tree already on this host, if any (see the file's comment for the order).
fn kernel_modules() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STAGEHAND_KERNEL_MODULES") {
        return Some(PathBuf::from(p));
    }
    // The VM harness writes `.complete` once a package is fully unpacked.
    let cached = subdirs(&vm_cache().join("kernel"))
        .into_iter()
        .filter(|p| p.join(".complete").exists())
        .filter_map(|p| modules_under(&p.join("root")))
        .next_back();
    cached.or_else(|| modules_under(Path::new("/work/kernel-cache/root")))
}

/// Download and unpack Debian's current kernel package into the VM tests' cache, in
/// their layout (`kernel/<package>/root` renamed into place with a `.complete` marker).
fn fetch_kernel() -> PathBuf {
    let apt = |cmd: &mut Command| {
        let out = cmd.output().expect("run apt");
        assert!(
            out.status.success(),
            "{cmd:?} failed (a Debian host? run vm-tests/setup-host, or set \
             STAGEHAND_KERNEL_MODULES to a lib/modules/<version> directory): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let depends = apt(Command::new("apt-cache").args(["depends", "linux-image-amd64"]));
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|name| name.starts_with("linux-image-") && !name.contains(['<', ' ']))
        .unwrap_or_else(|| panic!("apt-cache names no linux-image package: {depends:?}"))
        .to_owned();
    let parent = vm_cache().join("kernel");
    let pkg_dir = parent.join(&package);
    if !pkg_dir.join(".complete").exists() {
        std::fs::create_dir_all(&parent).expect("create the kernel cache");
        if pkg_dir.exists() {
            // Not complete, so not renamed into place by a finished run: start over.
            std::fs::remove_dir_all(&pkg_dir).expect("remove an incomplete download");
        }
        let work = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(&parent)
            .expect("download dir");
        // apt drops privileges to `_apt` for the download; let it write here.
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        apt(Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(work.path()));
        let deb = work.path().join(
            std::fs::read_dir(work.path())
                .expect("list the download dir")
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .find(|n| n.to_string_lossy().ends_with(".deb"))
                .expect("apt-get download left a .deb"),
        );
        let staging = work.path().join("pkg");
        std::fs::create_dir_all(staging.join("root")).expect("mkdir");
        let dpkg = Command::new(require_tool("dpkg"))
            .arg("-x")
            .arg(&deb)
            .arg(staging.join("root"))
            .status()
            .expect("run dpkg -x");
        assert!(dpkg.success(), "dpkg -x {}: {dpkg}", deb.display());
        std::fs::write(staging.join(".complete"), &package).expect("write the marker");
        if let Err(e) = std::fs::rename(&staging, &pkg_dir) {
            // Another run may have finished first: its copy is as good as ours.
            assert!(
                pkg_dir.join(".complete").exists(),
                "rename into {pkg_dir:?}: {e}"
            );
        }
    }
    modules_under(&pkg_dir.join("root"))
        .unwrap_or_else(|| panic!("{package} unpacked without lib/modules/*/kernel"))
}

/// The modules tree: found, or fetched once for all the tests in this file.
fn kernel_tree() -> PathBuf {
    static TREE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TREE.get_or_init(|| kernel_modules().unwrap_or_else(fetch_kernel))
        .clone()
}

/// kmod's load order for each module, from `modprobe --show-depends` after running
/// `depmod` on a scratch tree that links to the real modules (the fixture stays
/// untouched). `None` when kmod is not installed.
fn modprobe_orders(modules_dir: &Path, names: &[&str]) -> BTreeMap<String, Vec<String>> {
    let version = modules_dir
        .file_name()
        .and_then(|v| v.to_str())
        .expect("lib/modules/<version> in UTF-8")
        .to_owned();
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join("lib/modules").join(&version);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::os::unix::fs::symlink(modules_dir.join("kernel"), dir.join("kernel")).expect("link");
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let src = modules_dir.join(f);
        if src.exists() {
            std::fs::copy(&src, dir.join(f)).expect("copy");
        }
    }
    let depmod = Command::new(require_tool("depmod"))
        .arg("-b")
        .arg(scratch.path())
        .arg(&version)
        .status()
        .expect("run depmod");
    assert!(depmod.success(), "depmod failed: {depmod}");
    let mut out = BTreeMap::new();
    for name in names {
        let o = Command::new(require_tool("modprobe"))
            .arg("-d")
            .arg(scratch.path())
            .args(["-S", &version, "--show-depends", name])
            .output()
            .expect("modprobe");
        assert!(o.status.success(), "modprobe {name}: {o:?}");
        let order = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("insmod "))
            .filter_map(|p| {
                let file = p.trim().rsplit('/').next()?;
                Some(modules::normalize_name(file.split(".ko").next()?))
            })
            .collect();
        out.insert((*name).to_owned(), order);
    }
    out
}

/// Every module comes after the modules it `depends=` on (within the list).
fn assert_topological(index: &ModuleIndex, order: &[String], who: &str) {
    let pos: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    for (i, name) in order.iter().enumerate() {
        let path = index.path_of(name).expect("module exists");
        let bytes = modules::read_module_file(path).expect("read");
        let section = stagehand_initrd::elf::find_section(bytes.as_slice(), ".modinfo")
            .expect("elf")
            .expect("modinfo");
        for dep in modules::parse_modinfo(&section).depends {
            let at = pos.get(dep.as_str()).unwrap_or_else(|| {
                panic!("{who}: {name} depends on {dep}, which is not in {order:?}")
            });
            assert!(*at < i, "{who}: {dep} must load before {name}: {order:?}");
        }
    }
}

#[test]
fn closure_matches_modprobe_show_depends() {
    let dir = kernel_tree();
    let names = ["virtio_blk", "virtio_pci", "ext4"];
    let theirs = modprobe_orders(&dir, &names);
    let index = ModuleIndex::open(&dir).expect("index");
    for name in names {
        let c = index.closure(&[name.to_owned()], &[]).expect("closure");
        let ours: Vec<String> = c.modules.iter().map(|m| m.name.clone()).collect();
        let want = &theirs[name];
        println!("{name}:\n  ours    {ours:?}\n  modprobe {want:?}");
        assert_eq!(
            ours.iter().collect::<BTreeSet<_>>(),
            want.iter().collect::<BTreeSet<_>>(),
            "{name}: module sets differ"
        );
        assert_topological(&index, &ours, name);
        assert_topological(&index, want, name);
        assert_eq!(ours.last(), Some(&name.to_owned()));
    }

    // Beyond a valid order, the same order: siblings deepest-first reproduces depmod's
    // whole-tree sort on these modules.
    for name in names {
        let c = index.closure(&[name.to_owned()], &[]).expect("closure");
        let ours: Vec<&str> = c.modules.iter().map(|m| m.name.as_str()).collect();
        let want: Vec<&str> = theirs[name].iter().map(String::as_str).collect();
        assert_eq!(ours, want, "{name}");
    }
}

#[test]
fn ext4_pulls_crc32c_as_optional_softdep() {
    let dir = kernel_tree();
    let index = ModuleIndex::open(&dir).expect("index");
    let c = index.closure(&["ext4".to_owned()], &[]).expect("closure");
    let by_name: BTreeMap<&str, bool> = c
        .modules
        .iter()
        .map(|m| (m.name.as_str(), m.optional))
        .collect();
    // softdep=pre: crypto-crc32c, an alias that crc32c_generic (and the CPU-specific
    // crc32c_intel) provide: loaded before jbd2, failures tolerated.
    assert_eq!(by_name.get("crc32c_generic"), Some(&true), "{by_name:?}");
    for hard in ["ext4", "jbd2", "mbcache", "crc16"] {
        assert_eq!(by_name.get(hard), Some(&false), "{hard}: {by_name:?}");
    }
    let pos = |n: &str| c.modules.iter().position(|m| m.name == n).expect(n);
    assert!(pos("crc32c_generic") < pos("jbd2"));

    // Asked for by name it is required.
    let c = index
        .closure(&["ext4".to_owned(), "crc32c-generic".to_owned()], &[])
        .expect("closure");
    let m = c
        .modules
        .iter()
        .find(|m| m.name == "crc32c_generic")
        .expect("present");
    assert!(!m.optional);
}

#[test]
fn builtin_and_missing_modules() {
    let dir = kernel_tree();
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).expect("builtin list");
    let first = builtin
        .lines()
        .next()
        .and_then(|l| l.rsplit('/').next())
        .and_then(|f| f.strip_suffix(".ko"))
        .expect("a builtin module")
        .to_owned();
    let index = ModuleIndex::open(&dir).expect("index");
    let c = index
        .closure(std::slice::from_ref(&first), &[])
        .expect("builtin is fine");
    assert!(c.modules.is_empty());
    assert_eq!(c.builtin, [modules::normalize_name(&first)]);

    let e = index
        .closure(&["virtio_blk".into(), "no_such_driver".into()], &[])
        .expect_err("missing");
    assert!(e.to_string().contains("no_such_driver"), "{e}");
}

#[test]
fn real_signatures_are_stripped() {
    let dir = kernel_tree();
    let index = ModuleIndex::open(&dir).expect("index");
    let path = index.path_of("virtio_blk").expect("virtio_blk");
    let signed = std::fs::read(path).expect("read");
    assert!(
        signed.ends_with(b"~Module signature appended~\n"),
        "{}: not signed, while Debian signs its modules (a custom STAGEHAND_KERNEL_MODULES?)",
        path.display()
    );
    let stripped = modules::strip_signature(&signed).expect("strip");
    assert!(stripped.len() < signed.len());
    assert!(signed.starts_with(stripped));
    let n = signed.len();
    let sig_len = u32::from_be_bytes([
        signed[n - 32],
        signed[n - 31],
        signed[n - 30],
        signed[n - 29],
    ]);
    assert_eq!(stripped.len() + sig_len as usize + 12 + 28, n);
    // Still a module with its metadata.
    let section = stagehand_initrd::elf::find_section(stripped, ".modinfo")
        .expect("elf")
        .expect("modinfo");
    assert_eq!(
        modules::parse_modinfo(&section).name.as_deref(),
        Some("virtio_blk")
    );
}

#[test]
fn initrd_for_virtio_ext4_root() {
    let dir = kernel_tree();
    let scratch = tempfile::tempdir().expect("tempdir");
    let stage1 = scratch.path().join("stage1");
    std::fs::write(&stage1, vec![0x7f; 1000]).expect("stage1");
    let spec = InitrdSpec {
        stage1,
        modules_dir: Some(dir.clone()),
        modules: ["virtio_pci", "virtio_blk", "ext4", "crc32c_generic"]
            .map(String::from)
            .to_vec(),
        optional_modules: vec!["crc32c_intel".into()],
        filesystems: Vec::new(),
        device_timeout_ms: 20_000,
        panic_on_fail: false,
        extra_files: Vec::new(),
        compression: Compression::Zstd,
        keep_module_signatures: false,
        compression_level: None,
    };
    let a = build(&spec).expect("build");
    let b = build(&spec).expect("build again");
    assert_eq!(a.bytes, b.bytes, "not reproducible");
    println!("{}", a.report);

    let order: Vec<&str> = a.config.modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        order,
        [
            "virtio_ring",
            "virtio",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio_pci",
            "virtio_blk",
            "crc32c_intel",
            "crc32c_generic",
            "jbd2",
            "mbcache",
            "crc16",
            "ext4",
        ]
    );
    let entries = list(&a.bytes).expect("list");
    for m in &a.config.modules {
        let e = entries
            .iter()
            .find(|e| format!("/{}", e.name) == m.path)
            .expect("module file in archive");
        assert!(!e.data.ends_with(b"~Module signature appended~\n"));
    }
    let optional: Vec<&str> = a
        .config
        .modules
        .iter()
        .filter(|m| m.optional)
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(optional, ["crc32c_intel"]);
    // The CPU feature crc32c_intel is for (SSE4.2, X86_FEATURE_XMM4_2 = 0x94) goes into
    // the config for stage 1 to compare with the CPU; the generic modules have none.
    let cpu: Vec<(&str, &[String])> = a
        .config
        .modules
        .iter()
        .filter(|m| !m.cpu_aliases.is_empty())
        .map(|m| (m.name.as_str(), m.cpu_aliases.as_slice()))
        .collect();
    assert_eq!(
        cpu,
        [(
            "crc32c_intel",
            &["cpu:type:x86,ven*fam*mod*:feature:*0094*".to_string()][..]
        )]
    );
    // What `stagehand install-bootloader --initrd` reads back: the kernel the modules were
    // built for, from their vermagic, equal to the tree's directory name (`uname -r`).
    let version = dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("lib/modules/<version>");
    assert_eq!(
        stagehand_initrd::inspect::kernel_version(&entries),
        Ok(Some(version.to_string()))
    );
}

#[test]
fn xz_compressed_modules_as_nixos_and_newer_debian_ship_them() {
    let dir = kernel_tree();
    let index = ModuleIndex::open(&dir).expect("index");
    let scratch = tempfile::tempdir().expect("tempdir");
    let tree = scratch.path().join("lib/modules/test");
    std::fs::create_dir_all(tree.join("kernel")).expect("mkdir");
    for name in ["virtio_ring", "virtio", "virtio_blk"] {
        let src = index.path_of(name).expect("module");
        // The kernel build's own settings for CONFIG_MODULE_COMPRESS_XZ.
        let out = Command::new(require_tool("xz"))
            .args(["--check=crc32", "--lzma2=dict=1MiB", "-c"])
            .arg(src)
            .output()
            .expect("run xz");
        assert!(out.status.success(), "xz {}: {out:?}", src.display());
        let out = out.stdout;
        std::fs::write(tree.join(format!("kernel/{name}.ko.xz")), out).expect("write");
    }
    let xz_index = ModuleIndex::open(&tree).expect("index");
    let c = xz_index
        .closure(&["virtio_blk".to_owned()], &[])
        .expect("closure");
    let order: Vec<&str> = c.modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(order, ["virtio_ring", "virtio", "virtio_blk"]);
    for m in &c.modules {
        let unpacked = modules::read_module_file(&m.source).expect("unxz");
        let plain = std::fs::read(index.path_of(&m.name).expect("plain")).expect("read");
        assert_eq!(unpacked, plain, "{}", m.name);
    }
}

/// A real dynamically linked program from this host with its loader and libraries; with
/// kernel modules in the same initrd, `/lib` (a symlink on merged-/usr Debian) stays the
/// real directory that holds `/lib/modules`.
#[test]
fn e2fsck_closure_from_this_host() {
    let e2fsck = Path::new("/usr/sbin/e2fsck");
    assert!(
        e2fsck.exists(),
        "{} is not on this host: apt-get install e2fsprogs (vm-tests/setup-host does)",
        e2fsck.display()
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let stage1 = scratch.path().join("stage1");
    std::fs::write(&stage1, b"stage1").expect("stage1");
    let mut spec = InitrdSpec {
        stage1,
        modules_dir: None,
        modules: Vec::new(),
        optional_modules: Vec::new(),
        filesystems: Vec::new(),
        device_timeout_ms: 1000,
        panic_on_fail: false,
        extra_files: Vec::new(),
        compression: Compression::None,
        keep_module_signatures: false,
        compression_level: None,
    };
    if let Some(dir) = kernel_modules() {
        spec.modules_dir = Some(dir);
        spec.modules = vec!["virtio_blk".into()];
    }
    let mut extras = stagehand_initrd::SpecExtras::default();
    extras.contents = vec![stagehand_initrd::objects::StoreObject {
        source: e2fsck.to_owned(),
        target: Some("/bin/fsck.ext4".into()),
    }];
    let initrd = stagehand_initrd::build_with(&spec, &extras).expect("build");
    let entries = list(&initrd.bytes).expect("list");
    let names: BTreeSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    println!("{names:#?}\nwarnings: {:?}", initrd.report.warnings);
    assert!(
        initrd.report.warnings.is_empty(),
        "{:?}",
        initrd.report.warnings
    );
    let has_lib = |soname: &str| names.iter().any(|n| n.ends_with(&format!("/{soname}")));
    for soname in [
        "libext2fs.so.2",
        "libcom_err.so.2",
        "libblkid.so.1",
        "libuuid.so.1",
        "libe2p.so.2",
        "libc.so.6",
        "ld-linux-x86-64.so.2",
    ] {
        assert!(has_lib(soname), "{soname} missing");
    }
    assert!(names.contains("bin/fsck.ext4"));
    // The interpreter path as written in the binary resolves inside the archive.
    let interp = stagehand_initrd::elf::dynamic(std::fs::read(e2fsck).expect("read").as_slice())
        .expect("elf")
        .interpreter
        .expect("dynamic");
    assert!(
        resolves(&entries, &interp),
        "{interp} does not resolve in the initrd"
    );
}

/// Follow symlinks inside the archive listing to a regular file.
fn resolves(entries: &[stagehand_initrd::cpio::ReadEntry], path: &str) -> bool {
    let by_name: BTreeMap<&str, &stagehand_initrd::cpio::ReadEntry> =
        entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut parts: Vec<String> = path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while !parts.is_empty() {
        let part = parts.remove(0);
        if part == ".." {
            done.pop();
            continue;
        }
        done.push(part);
        let name = done.join("/");
        let Some(e) = by_name.get(name.as_str()) else {
            return false;
        };
        if e.mode & stagehand_initrd::cpio::S_IFMT == stagehand_initrd::cpio::S_IFLNK {
            hops += 1;
            if hops > 40 {
                return false;
            }
            let target = String::from_utf8_lossy(&e.data).into_owned();
            done.pop();
            if target.starts_with('/') {
                done.clear();
            }
            let mut new: Vec<String> = target
                .split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            new.extend(parts);
            parts = new;
        }
    }
    by_name
        .get(done.join("/").as_str())
        .is_some_and(|e| e.mode & stagehand_initrd::cpio::S_IFMT == stagehand_initrd::cpio::S_IFREG)
}

/// `stagehand-initrd build --system` run as the real binary on a generation in nixpkgs'
/// layout under a scratch root, whose kernel is the real Debian one shipped as NixOS
/// ships kernels: `.ko.xz` modules, depmod's files made by the real `depmod`, the
/// toplevel's `kernel-modules` a `buildEnv` whose `lib` is an absolute link into the
/// kernel's store path (only valid inside the root).
#[test]
fn system_build_of_a_nixpkgs_generation_with_the_real_kernel() {
    let dir = kernel_tree();
    let version = dir
        .file_name()
        .and_then(|v| v.to_str())
        .expect("version")
        .to_owned();
    let index = ModuleIndex::open(&dir).expect("index");
    let closure = index
        .closure(
            &["ext4", "vfat", "virtio_blk", "virtio_pci"].map(String::from),
            &["nls_cp437", "nls_iso8859_1"].map(String::from),
        )
        .expect("closure");

    let scratch = tempfile::tempdir().expect("tempdir");
    let root = scratch.path().join("root");
    let kernel = format!("/nix/store/kkkk-linux-{version}-modules");
    let host = |p: &str| root.join(p.trim_start_matches('/'));
    let tree = host(&format!("{kernel}/lib/modules/{version}"));
    for m in &closure.modules {
        let rel = m.source.strip_prefix(&dir).expect("under the tree");
        let out = Command::new(require_tool("xz"))
            .args(["--check=crc32", "--lzma2=dict=1MiB", "-c"])
            .arg(&m.source)
            .output()
            .expect("run xz");
        assert!(out.status.success(), "xz {}: {out:?}", m.source.display());
        let dest = tree.join(format!("{}.xz", rel.display()));
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::write(dest, out.stdout).expect("write");
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if dir.join(f).exists() {
            std::fs::copy(dir.join(f), tree.join(f)).expect("copy");
        }
    }
    let depmod = Command::new(require_tool("depmod"))
        .arg("-b")
        .arg(host(&kernel))
        .arg(&version)
        .status()
        .expect("run depmod");
    assert!(depmod.success(), "depmod: {depmod}");
    assert!(tree.join("modules.dep").is_file() && tree.join("modules.alias").is_file());

    let link = |p: &str, target: &str| {
        let h = host(p);
        std::fs::create_dir_all(h.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(target, h).expect("symlink");
    };
    let write = |p: &str, data: &str| {
        let h = host(p);
        std::fs::create_dir_all(h.parent().expect("parent")).expect("mkdir");
        std::fs::write(h, data).expect("write");
    };
    let top = "/nix/store/tttt-nixos-system-vm-24.11";
    link(
        "/nix/store/mmmm-kernel-modules/lib",
        &format!("{kernel}/lib"),
    );
    link(
        &format!("{top}/kernel-modules"),
        "/nix/store/mmmm-kernel-modules",
    );
    write(
        "/nix/store/ffff-etc/etc/fstab",
        "# Filesystems.\n\
         /dev/disk/by-label/nixos / ext4 x-initrd.mount 0 1\n\
         /dev/disk/by-uuid/1234-ABCD /boot vfat umask=0077 0 2\n\n\
         # Swap devices.\n\
         /dev/vdb none swap defaults\n",
    );
    link(&format!("{top}/etc"), "/nix/store/ffff-etc/etc");
    write(&format!("{top}/kernel-params"), "loglevel=4");
    link("/nix/var/nix/profiles/system-1-link", top);
    link("/nix/var/nix/profiles/system", "system-1-link");
    let stage1 = scratch.path().join("stage1");
    let stage2 = scratch.path().join("stage2");
    std::fs::write(&stage1, b"\x7fELF stage 1").expect("stage1");
    std::fs::write(&stage2, b"\x7fELF stage 2").expect("stage2");
    let out_file = scratch.path().join("initrd.img");

    let bin = env!("CARGO_BIN_EXE_stagehand-initrd");
    let out = Command::new(bin)
        .args([
            "build",
            "--system",
            "/nix/var/nix/profiles/system",
            "--root",
        ])
        .arg(&root)
        .arg("--stage1")
        .arg(&stage1)
        .arg("--stage2")
        .arg(&stage2)
        .args(["--generic", "--modules", "virtio_blk", "-o"])
        .arg(&out_file)
        .output()
        .expect("run stagehand-initrd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    for want in [
        format!("system {top}"),
        format!("kernel {version}"),
        "mount / /dev/disk/by-label/nixos ext4 x-initrd.mount (fstab line 2)".into(),
        "skip /boot: not needed for boot".into(),
        "skip /dev/vdb: swap".into(),
        "virtio_pci (--generic)".into(),
        "loaded at boot, in order".into(),
    ] {
        assert!(err.contains(&want), "{want:?} not in:\n{err}");
    }

    let bytes = std::fs::read(&out_file).expect("read the initrd");
    let entries = list(&bytes).expect("list");
    let get = |p: &str| entries.iter().find(|e| e.name == p);
    let s2 = get("stagehand/stage2").expect("stage 2 in the initrd");
    assert_eq!(
        (s2.mode & 0o7777, s2.data.as_slice()),
        (0o755, &b"\x7fELF stage 2"[..])
    );
    for m in ["ext4", "jbd2", "mbcache", "virtio_blk", "virtio_pci"] {
        let e = get(&format!("lib/modules/{m}.ko"))
            .unwrap_or_else(|| panic!("{m}.ko not in the initrd:\n{err}"));
        assert!(e.data.starts_with(b"\x7fELF"), "{m}.ko is not unpacked");
    }
    // /boot is not needed for boot, so neither is its vfat.
    assert!(get("lib/modules/vfat.ko").is_none(), "{err}");
    let config = stagehand_common::stage1_config::Stage1Config::decode(
        &get("etc/stagehand/stage1.cfg").expect("config").data,
    )
    .expect("decode");
    let mounts: Vec<&str> = config
        .filesystems
        .iter()
        .map(|f| f.mount_point.as_str())
        .collect();
    assert_eq!(mounts, ["/"]);

    // The same with --report: the choice goes to stdout with the sizes.
    let out = Command::new(bin)
        .args(["build", "--system", top, "--root"])
        .arg(&root)
        .arg("--stage1")
        .arg(&stage1)
        .arg("--stage2")
        .arg(&stage2)
        .args(["--report", "-o"])
        .arg(&out_file)
        .output()
        .expect("run stagehand-initrd");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains("note: no disk drivers were asked for")
            && stdout.contains("(initrd, zstd)"),
        "{stdout}"
    );
}

/// The disk controllers of real machines (NVMe, AHCI SATA, SCSI disks, virtio-scsi, USB
/// sticks behind xHCI, SD/eMMC) and the storage layers (md RAID1, btrfs), asked for by
/// name in a spec: each brings what it needs to bind to its disk, in an order the kernel
/// accepts, the same set kmod's `modprobe --show-depends` loads.
#[test]
fn real_controllers_and_storage_layers_closure() {
    let dir = kernel_tree();
    let asked = [
        "nvme",
        "ahci",
        "sd_mod",
        "virtio_scsi",
        "xhci_pci",
        "usb_storage",
        "sdhci_pci",
        "mmc_block",
        "md_mod",
        "raid1",
        "btrfs",
    ];
    let scratch = tempfile::tempdir().expect("tempdir");
    let stage1 = scratch.path().join("stage1");
    std::fs::write(&stage1, vec![0x7f; 1000]).expect("stage1");
    let spec = InitrdSpec {
        stage1,
        modules_dir: Some(dir.clone()),
        modules: asked.map(String::from).to_vec(),
        optional_modules: Vec::new(),
        filesystems: Vec::new(),
        device_timeout_ms: 20_000,
        panic_on_fail: false,
        extra_files: Vec::new(),
        compression: Compression::Zstd,
        keep_module_signatures: false,
        compression_level: None,
    };
    let built = build(&spec).expect("build");
    let order: Vec<&str> = built
        .config
        .modules
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    println!("{order:?}");
    let builtin: Vec<&str> = built
        .report
        .builtin_modules
        .iter()
        .map(String::as_str)
        .collect();
    let at = |name: &str| order.iter().position(|m| *m == name);
    // Each asked-for module is carried (or is built into this kernel), after what it
    // depends on: the controller's core library, the SCSI or USB layer below it.
    for name in asked {
        assert!(
            at(name).is_some() || builtin.contains(&name),
            "{name} is neither in the initrd nor built in: {order:?}"
        );
    }
    for (module, needs) in [
        ("nvme", "nvme_core"),
        ("ahci", "libahci"),
        ("libahci", "libata"),
        ("usb_storage", "usbcore"),
        ("xhci_pci", "xhci_hcd"),
        ("sdhci_pci", "sdhci"),
        ("mmc_block", "mmc_core"),
        ("raid1", "md_mod"),
        ("btrfs", "raid6_pq"),
        ("btrfs", "xor"),
        ("btrfs", "libcrc32c"),
    ] {
        let (Some(m), Some(n)) = (at(module), at(needs)) else {
            panic!("{module} and {needs} must both be loaded: {order:?}");
        };
        assert!(n < m, "{needs} must load before {module}: {order:?}");
    }
    // sd_mod binds the disks behind ahci, virtio_scsi and usb_storage; it must be there.
    assert!(at("sd_mod").is_some() || builtin.contains(&"sd_mod"));

    // Everything kmod's `modprobe --show-depends` loads, module by module. We may carry
    // more: btrfs's `softdep=pre: crc32c xxhash64 sha256 blake2b-256` names algorithms,
    // which we resolve through every module's aliases (sha256_ssse3, xxhash_generic)
    // where kmod stops at the built-in generic one; those extras are optional.
    let theirs = modprobe_orders(&dir, &asked);
    let index = ModuleIndex::open(&dir).expect("index");
    for name in asked {
        let c = index.closure(&[name.to_owned()], &[]).expect("closure");
        let ours: BTreeSet<String> = c.modules.iter().map(|m| m.name.clone()).collect();
        let want: BTreeSet<String> = theirs[name].iter().cloned().collect();
        assert!(
            ours.is_superset(&want),
            "{name}: modprobe loads {:?}, which we do not",
            want.difference(&ours).collect::<Vec<_>>()
        );
        for extra in ours.difference(&want) {
            let m = built
                .config
                .modules
                .iter()
                .find(|m| &m.name == extra)
                .expect("in the initrd");
            assert!(
                m.optional,
                "{name}: {extra} is required but kmod does not load it"
            );
        }
    }
    let names: Vec<String> = order.iter().map(|s| s.to_string()).collect();
    assert_topological(&index, &names, "controllers");
}
