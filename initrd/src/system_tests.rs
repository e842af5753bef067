//! `spec_from_system` and the build it feeds, against a fake root holding a generation in
//! nixpkgs' layout: absolute links into the store everywhere, a `buildEnv`-style
//! kernel-modules tree whose `kernel/` is a link into the kernel's own store path,
//! `.ko.xz` modules (synthetic ones carrying only `.modinfo`), depmod's files, firmware.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use stagehand_common::mounts::mountinfo;
use stagehand_common::stage1_config::{FileSystem, Stage1Config, STAGE1_CONFIG_PATH};

use crate::elf::tests::tiny_elf;
use crate::system::{spec_from_system, HostOnly, SystemError, SystemOptions};
use crate::*;

const VERSION: &str = "6.6.7";
const KERNEL: &str = "/nix/store/aaaa-linux-6.6.7-modules";
const TREE: &str = "/nix/store/bbbb-kernel-modules";
const TOPLEVEL: &str = "/nix/store/ffff-nixos-system-test-24.05";
const STAGE2_BYTES: &[u8] = b"\x7fELF our stage 2";

/// (file under kernel/, modinfo strings)
const MODULES: &[(&str, &[&str])] = &[
    (
        "fs/ext4/ext4.ko.xz",
        &[
            "softdep=pre: crc32c",
            "depends=jbd2,mbcache",
            "alias=fs-ext4",
            "alias=fs-ext3",
            "name=ext4",
        ],
    ),
    ("fs/jbd2/jbd2.ko.xz", &["depends=", "name=jbd2"]),
    (
        "fs/btrfs/btrfs.ko.xz",
        &["depends=", "alias=fs-btrfs", "name=btrfs"],
    ),
    ("fs/mbcache.ko.xz", &["depends=", "name=mbcache"]),
    (
        "crypto/crc32c_generic.ko.xz",
        &["alias=crc32c", "alias=crypto-crc32c", "name=crc32c_generic"],
    ),
    ("fs/fat/fat.ko.xz", &["depends=", "name=fat"]),
    (
        "fs/fat/vfat.ko.xz",
        &["depends=fat", "alias=fs-vfat", "name=vfat"],
    ),
    (
        "fs/nls/nls_cp437.ko.xz",
        &["alias=nls_default", "name=nls_cp437"],
    ),
    ("fs/nls/nls_iso8859-1.ko.xz", &["name=nls_iso8859_1"]),
    (
        "drivers/virtio/virtio_pci.ko.xz",
        &[
            "alias=pci:v00001AF4d*sv*sd*bc*sc*i*",
            "firmware=virtio/fw.bin",
            "name=virtio_pci",
        ],
    ),
    (
        "drivers/block/virtio_blk.ko.xz",
        &["alias=virtio:d00000002v*", "name=virtio_blk"],
    ),
    (
        "drivers/nvme/host/nvme.ko.xz",
        &["alias=pci:v*d*sv*sd*bc01sc08i02*", "name=nvme"],
    ),
];

const FSTAB: &str = "\
# This is a generated file.  Do not edit!
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>

# Filesystems.
/dev/disk/by-label/nixos / ext4 x-initrd.mount 0 1
/dev/disk/by-label/nix\\040store /nix ext4 noatime,x-initrd.mount 0 2
/dev/disk/by-uuid/ABCD-1234 /boot vfat umask=0077 0 2
/persist/var/lib/nixos /var/lib/nixos none bind,x-initrd.mount 0 0
LABEL=data /srv/data vfat x-initrd.mount 0 2
tmpfs /tmp tmpfs mode=1777 0 0


# Swap devices.
/dev/disk/by-label/swap none swap defaults
";

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    stage1: PathBuf,
    stage2: PathBuf,
}

impl Fixture {
    fn host(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn write(&self, p: &str, data: &[u8]) {
        let h = self.host(p);
        std::fs::create_dir_all(h.parent().expect("parent")).expect("mkdir");
        std::fs::write(h, data).expect("write");
    }

    fn link(&self, p: &str, target: &str) {
        let h = self.host(p);
        std::fs::create_dir_all(h.parent().expect("parent")).expect("mkdir");
        let _ = std::fs::remove_file(&h);
        symlink(target, h).expect("symlink");
    }

    fn options(&self) -> SystemOptions {
        SystemOptions {
            stage1: self.stage1.clone(),
            stage2: self.stage2.clone(),
            modules: Vec::new(),
            optional_modules: Vec::new(),
            generic: false,
            host_only: None,
            stage1_options: Default::default(),
        }
    }

    fn spec(&self, options: &SystemOptions) -> Result<system::SystemSpec, SystemError> {
        spec_from_system(
            &self.root,
            Path::new("/nix/var/nix/profiles/system"),
            options,
        )
    }
}

fn module_body(info: &[&str]) -> Vec<u8> {
    let mut modinfo = Vec::new();
    for kv in info {
        modinfo.extend_from_slice(kv.as_bytes());
        modinfo.push(0);
    }
    tiny_elf(&[(".text", b"\xc3"), (".modinfo", &modinfo)])
}

/// A root with the generation at `/nix/var/nix/profiles/system` and `fstab` as its
/// `etc/fstab`.
fn fixture(fstab: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let bins = dir.path().join("bin");
    std::fs::create_dir_all(&bins).expect("bins");
    let stage1 = bins.join("stage1");
    let stage2 = bins.join("stage2");
    std::fs::write(&stage1, b"\x7fELF our stage 1").expect("stage1");
    std::fs::write(&stage2, STAGE2_BYTES).expect("stage2");
    let f = Fixture {
        _dir: dir,
        root,
        stage1,
        stage2,
    };

    // The kernel's own modules, xz-compressed as nixpkgs ships them.
    let mut alias = String::new();
    let mut dep = String::new();
    for (rel, info) in MODULES {
        let body = module_body(info);
        let xz = compress::compress(&body, Compression::Xz, None).expect("xz");
        f.write(&format!("{KERNEL}/lib/modules/{VERSION}/kernel/{rel}"), &xz);
        let name = info
            .iter()
            .find_map(|kv| kv.strip_prefix("name="))
            .expect("name");
        for a in info.iter().filter_map(|kv| kv.strip_prefix("alias=")) {
            alias.push_str(&format!("alias {a} {name}\n"));
        }
        let deps: Vec<String> = info
            .iter()
            .filter_map(|kv| kv.strip_prefix("depends="))
            .flat_map(|d| d.split(',').filter(|d| !d.is_empty()))
            .map(|d| format!("kernel/fs/{d}.ko.xz"))
            .collect();
        dep.push_str(&format!("kernel/{rel}: {}\n", deps.join(" ")));
    }
    // The aggregated tree, as aggregateModules' buildEnv makes it: `kernel/` a link into
    // the kernel's store path, depmod's files written next to it.
    let tree_dir = format!("{TREE}/lib/modules/{VERSION}");
    f.link(
        &format!("{tree_dir}/kernel"),
        &format!("{KERNEL}/lib/modules/{VERSION}/kernel"),
    );
    f.write(&format!("{tree_dir}/modules.dep"), dep.as_bytes());
    f.write(&format!("{tree_dir}/modules.alias"), alias.as_bytes());
    f.write(
        &format!("{tree_dir}/modules.builtin"),
        b"kernel/mm/shmem.ko\n",
    );

    f.write("/nix/store/dddd-fstab", fstab.as_bytes());
    f.link("/nix/store/cccc-etc/etc/fstab", "/nix/store/dddd-fstab");
    // hardware.firmware is a buildEnv too: its files are links into each package.
    f.write(
        "/nix/store/gggg-linux-firmware/lib/firmware/virtio/fw.bin.xz",
        b"firmware blob",
    );
    f.link(
        "/nix/store/eeee-firmware/lib/firmware/virtio/fw.bin.xz",
        "/nix/store/gggg-linux-firmware/lib/firmware/virtio/fw.bin.xz",
    );

    f.link(&format!("{TOPLEVEL}/etc"), "/nix/store/cccc-etc/etc");
    f.link(&format!("{TOPLEVEL}/kernel-modules"), TREE);
    f.link(
        &format!("{TOPLEVEL}/firmware"),
        "/nix/store/eeee-firmware/lib/firmware",
    );
    f.write(
        &format!("{TOPLEVEL}/kernel-params"),
        b"loglevel=4 console=ttyS0",
    );
    f.write(&format!("{TOPLEVEL}/init"), b"#! /bin/sh\n");
    f.write(&format!("{TOPLEVEL}/boot.json"), b"{}");
    f.link("/nix/var/nix/profiles/system-1-link", TOPLEVEL);
    f.link("/nix/var/nix/profiles/system", "system-1-link");
    f
}

fn fs(mount_point: &str, device: &str, fs_type: &str, options: &[&str]) -> FileSystem {
    FileSystem {
        mount_point: mount_point.into(),
        device: device.into(),
        fs_type: fs_type.into(),
        options: options.iter().map(|o| o.to_string()).collect(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_nixpkgs_generation_gives_its_boot_mounts_modules_and_stage2() {
    let f = fixture(FSTAB);
    let mut options = f.options();
    options.generic = true;
    options.modules = strings(&["virtio-blk"]);
    let sys = f.spec(&options).expect("spec");
    let spec = &sys.spec.spec;

    assert_eq!(
        spec.filesystems,
        [
            fs("/", "/dev/disk/by-label/nixos", "ext4", &["x-initrd.mount"]),
            fs(
                "/nix",
                "/dev/disk/by-label/nix store",
                "ext4",
                &["noatime", "x-initrd.mount"]
            ),
            fs(
                "/var/lib/nixos",
                "/persist/var/lib/nixos",
                "none",
                &["bind", "x-initrd.mount"]
            ),
            fs("/srv/data", "LABEL=data", "vfat", &["x-initrd.mount"]),
        ]
    );
    assert_eq!(spec.modules, strings(&["ext4", "vfat", "virtio_blk"]));
    assert_eq!(
        spec.optional_modules,
        strings(&["nls_cp437", "nls_iso8859_1", "virtio_pci", "nvme"])
    );
    assert_eq!(sys.choice.kernel_version, VERSION);
    assert_eq!(sys.choice.toplevel, Path::new(TOPLEVEL));
    let skipped: Vec<(usize, &str)> = sys
        .choice
        .skipped
        .iter()
        .map(|(l, what, _)| (*l, what.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [(8, "/boot"), (11, "/tmp"), (15, "/dev/disk/by-label/swap")]
    );
    assert_eq!(
        spec.modules_dir.as_deref(),
        Some(f.host(&format!("{TREE}/lib/modules/{VERSION}")).as_path())
    );
    assert_eq!(sys.spec.extras.root.as_deref(), Some(f.root.as_path()));
    let shown = sys.choice.to_string();
    for want in [
        "kernel 6.6.7",
        "mount / /dev/disk/by-label/nixos ext4 x-initrd.mount (fstab line 6)",
        "skip /boot: not needed for boot",
        "skip /dev/disk/by-label/swap: swap",
        "ext4 (ext4 of /)",
        "virtio_pci (--generic)",
    ] {
        assert!(shown.contains(want), "{want:?} not in\n{shown}");
    }

    // The build: every module of the closure unpacked, firmware, stage 2, the config.
    let mut full = sys.spec.clone();
    full.spec.compression = Compression::Gzip;
    let initrd = build_with(&full.spec, &full.extras).expect("build");
    let entries = list(&initrd.bytes).expect("list");
    let get = |p: &str| {
        entries
            .iter()
            .find(|e| e.name == p.trim_start_matches('/'))
            .unwrap_or_else(|| {
                let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
                panic!("{p} not in the initrd: {names:?}")
            })
    };
    let stage2 = get(STAGE2_PATH);
    assert_eq!(stage2.data, STAGE2_BYTES);
    assert_eq!(stage2.mode & 0o7777, 0o755);
    assert_eq!(stage2.mode & cpio::S_IFMT, cpio::S_IFREG);
    assert_eq!(get("/init").data, b"\x7fELF our stage 1");
    assert_eq!(get("/lib/modules/ext4.ko").data, module_body(MODULES[0].1));
    assert_eq!(get("/lib/firmware/virtio/fw.bin.xz").data, b"firmware blob");
    let loaded: Vec<(&str, bool)> = initrd
        .config
        .modules
        .iter()
        .map(|m| (m.name.as_str(), m.optional))
        .collect();
    assert_eq!(
        loaded,
        [
            ("crc32c_generic", true),
            ("jbd2", false),
            ("mbcache", false),
            ("ext4", false),
            ("fat", false),
            ("vfat", false),
            ("virtio_blk", false),
            ("nls_cp437", true),
            ("nls_iso8859_1", true),
            ("virtio_pci", true),
            ("nvme", true),
        ]
    );
    for m in &initrd.config.modules {
        get(&m.path);
    }
    let config = Stage1Config::decode(&get(STAGE1_CONFIG_PATH).data).expect("config");
    assert_eq!(config.filesystems, spec.filesystems);
    // The kernel's command line is the boot loader's business, not the initrd's.
    assert!(
        !entries
            .iter()
            .any(|e| e.data.windows(10).any(|w| w == b"loglevel=4")),
        "kernel-params leaked into the initrd"
    );
}

#[test]
fn without_drivers_asked_for_the_note_says_so() {
    let f = fixture(FSTAB);
    let sys = f.spec(&f.options()).expect("spec");
    assert!(
        sys.choice
            .notes
            .iter()
            .any(|n| n.contains("no disk drivers were asked for")),
        "{:?}",
        sys.choice.notes
    );
    assert_eq!(sys.spec.spec.modules, strings(&["ext4", "vfat"]));
}

#[test]
fn host_only_walks_sysfs_up_from_the_root_device() {
    let f = fixture(FSTAB);
    let sys_dir = f.root.join("../sys");
    let w = |p: &str, data: &str| {
        let h = sys_dir.join(p);
        std::fs::create_dir_all(h.parent().expect("parent")).expect("mkdir");
        std::fs::write(h, data).expect("write");
    };
    let l = |p: &str, target: &str| {
        let h = sys_dir.join(p);
        std::fs::create_dir_all(h.parent().expect("parent")).expect("mkdir");
        symlink(target, h).expect("symlink");
    };
    let pci = "devices/pci0000:00/0000:00:04.0";
    w(
        &format!("{pci}/modalias"),
        "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n",
    );
    l(
        &format!("{pci}/driver"),
        "../../../bus/pci/drivers/virtio-pci",
    );
    l(
        "bus/pci/drivers/virtio-pci/module",
        "../../../../module/virtio_pci",
    );
    w(
        &format!("{pci}/virtio1/modalias"),
        "virtio:d00000002v00001AF4\n",
    );
    // A driver bound without a module link (built in): only its modalias counts.
    l(
        &format!("{pci}/virtio1/driver"),
        "../../../../bus/virtio/drivers/virtio_blk",
    );
    std::fs::create_dir_all(sys_dir.join("bus/virtio/drivers/virtio_blk")).expect("drv");
    w(&format!("{pci}/virtio1/block/vda/vda1/dev"), "253:1\n");
    l(
        "dev/block/253:1",
        "../../devices/pci0000:00/0000:00:04.0/virtio1/block/vda/vda1",
    );
    let mut options = f.options();
    options.host_only = Some(HostOnly {
        sys_dir: sys_dir.clone(),
        mounts: mountinfo::parse(
            "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
             23 22 0:33 / /nix rw shared:2 - btrfs /dev/vdb rw\n",
        ),
    });
    let sys = f.spec(&options).expect("spec");
    let host: Vec<&str> = sys
        .choice
        .optional_modules
        .iter()
        .filter(|(_, why)| why == "--host-only, /")
        .map(|(m, _)| m.as_str())
        .collect();
    assert_eq!(host, ["virtio_blk", "virtio_pci"]);
    assert!(
        sys.choice
            .notes
            .iter()
            .any(|n| n.contains("/nix is on device 0:33")),
        "{:?}",
        sys.choice.notes
    );
    assert!(
        !sys.choice
            .notes
            .iter()
            .any(|n| n.contains("no disk drivers")),
        "{:?}",
        sys.choice.notes
    );
}

fn error_of(f: &Fixture) -> String {
    match f.spec(&f.options()) {
        Ok(s) => panic!("expected an error, got {:?}", s.spec.spec.filesystems),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_generation_without_fstab_is_refused() {
    let f = fixture(FSTAB);
    std::fs::remove_file(f.host("/nix/store/cccc-etc/etc/fstab")).expect("rm");
    let e = f.spec(&f.options()).expect_err("no fstab");
    assert!(matches!(e, SystemError::NotAGeneration { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("no etc/fstab") && msg.contains(TOPLEVEL),
        "{msg}"
    );
}

#[test]
fn two_kernel_versions_are_refused() {
    let f = fixture(FSTAB);
    std::fs::create_dir_all(f.host(&format!("{TREE}/lib/modules/6.7.0"))).expect("mkdir");
    let msg = error_of(&f);
    assert!(msg.contains("2 kernel versions (6.6.7, 6.7.0)"), "{msg}");
}

#[test]
fn an_fstab_line_with_too_few_fields_is_refused_by_line() {
    let f = fixture("/dev/disk/by-label/nixos / ext4 0 1\nLABEL=x /nix\n");
    let msg = error_of(&f);
    assert!(
        msg.contains("dddd-fstab") && msg.contains("line 2 `LABEL=x /nix`: 2 fields"),
        "{msg}"
    );
}

#[test]
fn a_link_out_of_the_root_is_refused() {
    let f = fixture(FSTAB);
    f.link(&format!("{TOPLEVEL}/etc"), "../../../../../../../etc");
    let msg = error_of(&f);
    assert!(
        msg.contains("leads out of the root") && msg.contains(&format!("{TOPLEVEL}/etc")),
        "{msg}"
    );

    // Inside the modules tree too: the module index follows links in the root only.
    let f = fixture(FSTAB);
    f.link(
        &format!("{TREE}/lib/modules/{VERSION}/kernel"),
        "../../../../../../../../../lib/modules",
    );
    let msg = error_of(&f);
    assert!(
        msg.contains("leads out of the root") && msg.contains("kernel"),
        "{msg}"
    );
}

#[test]
fn filesystems_stage1_cannot_mount_are_refused_by_line() {
    for (fstab, says) in [
        (
            "/dev/vda / reiser5 defaults 0 1\n",
            "line 1 `/dev/vda / reiser5 defaults 0 1`: unknown filesystem type \"reiser5\"",
        ),
        (
            "/dev/vda / ext4 defaults 0 1\n/dev/vdb /var xfs defaults 0 2\n",
            "line 2 `/dev/vdb /var xfs defaults 0 2`: the kernel 6.6.7 has no module for xfs",
        ),
        ("/dev/mapper/crypt / ext4 defaults 0 1\n", "device-mapper"),
        ("srv:/export /nix nfs defaults 0 0\n", "network filesystem"),
    ] {
        let f = fixture(fstab);
        let msg = error_of(&f);
        assert!(msg.contains(says), "{says:?} not in {msg}");
    }
}

#[test]
fn an_md_root_assembles_arrays_and_btrfs_subvolumes_pass_through() {
    let f = fixture(
        "/dev/md/root / ext4 defaults 0 1\n\
         UUID=0f1e /nix btrfs subvol=@nix,compress=zstd 0 0\n",
    );
    let sys = f.spec(&f.options()).expect("spec");
    let options = &sys.spec.extras.stage1_options;
    assert!(options.swraid, "an md root makes stage 1 assemble arrays");
    assert!(
        options.btrfs_scan,
        "a btrfs filesystem makes stage 1 scan btrfs devices"
    );
    assert_eq!(
        sys.spec.spec.filesystems,
        vec![
            fs("/", "/dev/md/root", "ext4", &["defaults"]),
            fs(
                "/nix",
                "UUID=0f1e",
                "btrfs",
                &["subvol=@nix", "compress=zstd"]
            ),
        ]
    );
    assert!(
        sys.choice.notes.iter().any(|n| n.contains("md array")),
        "{:?}",
        sys.choice.notes
    );
    let plain = fixture(FSTAB);
    let sys = plain.spec(&plain.options()).expect("spec");
    assert!(!sys.spec.extras.stage1_options.swraid && !sys.spec.extras.stage1_options.btrfs_scan);
}

#[test]
fn an_ext3_root_is_served_by_ext4_through_its_alias() {
    let f = fixture("LABEL=old / ext3 defaults 0 1\n");
    let sys = f.spec(&f.options()).expect("spec");
    assert_eq!(sys.spec.spec.modules, strings(&["ext4"]));
}

#[test]
fn optional_modules_are_carried_but_not_required() {
    // NixOS's availableKernelModules: carried and tried; a module asked for both ways is
    // required.
    let f = fixture(FSTAB);
    let mut options = f.options();
    options.modules = strings(&["virtio_blk"]);
    options.optional_modules = strings(&["virtio-pci", "virtio_blk", "not_in_this_kernel"]);
    let sys = f.spec(&options).expect("spec");
    let spec = &sys.spec.spec;
    assert!(
        spec.modules.contains(&"virtio_blk".to_owned()),
        "{:?}",
        spec.modules
    );
    assert!(
        !spec.modules.contains(&"virtio_pci".to_owned()),
        "{:?}",
        spec.modules
    );
    assert!(
        spec.optional_modules.contains(&"virtio_pci".to_owned())
            && !spec.optional_modules.contains(&"virtio_blk".to_owned()),
        "{:?}",
        spec.optional_modules
    );
    assert!(sys
        .choice
        .to_string()
        .contains("virtio_pci (--optional-modules)"));
    // The build does not fail on the module this kernel does not have.
    let mut full = sys.spec.clone();
    full.spec.compression = Compression::Gzip;
    crate::build_with(&full.spec, &full.extras).expect("build");
}
