//! The stage-1 configuration: what the initrd builder compiles into the initrd and what
//! `/init` reads before it does anything else. It lives at [`STAGE1_CONFIG_PATH`] inside
//! the initrd, wrapped in the [`crate::envelope`] with [`STAGE1_CONFIG_KIND`].
//!
//! Nothing in here is generation-specific: the generation is chosen at boot from `init=`,
//! so one initrd serves every generation that shares a kernel.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::{self, Kind};

pub const STAGE1_CONFIG_PATH: &str = "/etc/stagehand/stage1.cfg";

pub const STAGE1_CONFIG_KIND: Kind = Kind {
    magic: *b"SHSTAGE1",
    // 2: `options` (fsck policy and tools, resume devices).
    // 3: `Module::cpu_aliases` (modules for CPU features this machine lacks are not tried).
    // 4: `Stage1Options::{md_arrays, swraid, btrfs_scan}` (md RAID assembly and the btrfs
    //    device scan) and `{luks, lvm, passphrase_tries, reuse_passphrases}` (the LUKS and
    //    LVM layers), all before the root is looked for. postcard encodes fields by
    //    position, so a version-3 stage 1 would misread a version-4 payload: the bump
    //    makes it refuse.
    version: 4,
    name: "stage-1 config",
};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Stage1Config {
    /// Kernel modules in load order: every module comes after the modules it depends on.
    pub modules: Vec<Module>,
    /// Filesystems to mount under the new root, in mount order. When no entry has mount
    /// point `/`, the root comes from `root=` on the kernel command line.
    pub filesystems: Vec<FileSystem>,
    /// How long to wait for a device before giving up on it, in milliseconds.
    pub device_timeout_ms: u32,
    /// What the failure path does when the command line does not say
    /// (`boot.panic_on_fail`, `stage1panic=1`).
    pub panic_on_fail: bool,
    /// Everything added after version 1, grouped so the initrd builder can take it from
    /// its spec as one value.
    pub options: Stage1Options,
}

impl Default for Stage1Config {
    fn default() -> Self {
        Self {
            modules: Vec::new(),
            filesystems: Vec::new(),
            device_timeout_ms: 20_000,
            panic_on_fail: false,
            options: Stage1Options::default(),
        }
    }
}

/// Boot policy beyond modules and filesystems: what NixOS's `boot.initrd.checkJournalingFS`,
/// the fsck programs of `extraUtils` and `boot.resumeDevice`/`swapDevices` give its stage 1.
/// In the initrd builder's spec JSON this is the `stage1_options` object; every key may be
/// left out, and an unknown one is refused.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Stage1Options {
    /// Check journaling filesystems (ext3/ext4/xfs/f2fs/jfs/reiserfs) before mounting
    /// them, as `boot.initrd.checkJournalingFS` (default true). Others are always checked
    /// when the initrd has a checker for them.
    pub check_journaling_fs: bool,
    /// Checker programs by filesystem type (`"ext4": "/bin/e2fsck"`), for programs not
    /// at the conventional `/bin/fsck.<type>` or `/sbin/fsck.<type>`.
    pub fsck_programs: BTreeMap<String, String>,
    /// The hibernation image's device (`boot.resumeDevice`); `resume=` on the command
    /// line wins. Any form a filesystem device may take.
    pub resume_device: Option<String>,
    /// Swap devices that may hold a hibernation image, tried in order when no resume
    /// device is named: the first one carrying a swsuspend signature is resumed from.
    /// Empty: any block device with a swsuspend signature.
    pub resume_devices: Vec<String>,
    /// md RAID arrays to assemble before the root is looked for (`boot.swraid` with
    /// `mdadm.conf`'s ARRAY lines): stage 1 waits for their members, then starts them.
    pub md_arrays: Vec<MdArray>,
    /// Assemble every md array whose members are found (`boot.swraid.enable` without a
    /// list, mdadm's `--assemble --scan`). Arrays in `md_arrays` are assembled either way.
    pub swraid: bool,
    /// Register every btrfs device found with the kernel (`btrfs device scan` through
    /// `/dev/btrfs-control`) before mounting, so a filesystem spanning several devices
    /// mounts by any one of them.
    pub btrfs_scan: bool,
    /// LUKS devices to open before the filesystems are looked for
    /// (`boot.initrd.luks.devices`), in this order within their layer.
    pub luks: Vec<LuksDevice>,
    /// Activate the LVM volume groups found on the block devices (after the `pre_lvm`
    /// LUKS devices, before the others), as `boot.initrd.services.lvm.enable`.
    pub lvm: bool,
    /// Passphrase attempts per LUKS device before the failure path (NixOS asks forever;
    /// systemd-cryptsetup asks 3 times).
    pub passphrase_tries: u32,
    /// Try a passphrase that opened one device on the next ones first
    /// (`boot.initrd.luks.reusePassphrases`, default true).
    pub reuse_passphrases: bool,
}

impl Default for Stage1Options {
    fn default() -> Self {
        Self {
            check_journaling_fs: true,
            fsck_programs: BTreeMap::new(),
            resume_device: None,
            resume_devices: Vec::new(),
            md_arrays: Vec::new(),
            swraid: false,
            btrfs_scan: false,
            luks: Vec::new(),
            lvm: false,
            passphrase_tries: 3,
            reuse_passphrases: true,
        }
    }
}

/// One md array stage 1 must assemble.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MdArray {
    /// The array UUID, as `mdadm --detail` prints it (`1c2b…:…:…:…`) or dashed; its
    /// members are the devices whose md superblock carries it.
    pub uuid: String,
    /// The array's name: `/dev/md/NAME` links to it. Empty or absent: the name in the
    /// superblock (after the `host:` prefix).
    #[serde(default)]
    pub name: Option<String>,
    /// Start the array with members missing when enough are present (RAID1: one),
    /// with a warning, once the device timeout has passed (mdadm's `--run`). Default
    /// true, as a machine with a dead disk should still boot from its mirror.
    #[serde(default = "yes")]
    pub allow_degraded: bool,
}

/// One `boot.initrd.luks.devices.<name>`: the encrypted device opened as
/// `/dev/mapper/<name>`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LuksDevice {
    /// The name under `/dev/mapper/`.
    pub name: String,
    /// The encrypted device, in any form a filesystem device may take
    /// (`/dev/disk/by-uuid/<LUKS UUID>`, `UUID=…`, `/dev/vda2`, `/dev/vg/crypt`).
    pub device: String,
    /// A device or file holding the LUKS header when it is not on `device` (`header`).
    #[serde(default)]
    pub header: Option<String>,
    /// A file in the initrd (an initrd secret) whose bytes are the key (`keyFile`).
    #[serde(default)]
    pub key_file: Option<String>,
    /// How many bytes of the key file are the key (`keyFileSize`); all of it when absent.
    #[serde(default)]
    pub key_file_size: Option<u64>,
    /// Where in the key file the key starts (`keyFileOffset`).
    #[serde(default)]
    pub key_file_offset: Option<u64>,
    /// Pass discards through (`allowDiscards`).
    #[serde(default)]
    pub allow_discards: bool,
    /// dm-crypt's `no_read_workqueue no_write_workqueue` (`bypassWorkqueues`).
    #[serde(default)]
    pub bypass_workqueues: bool,
    /// Open before LVM is activated (`preLVM`, default true): LVM on LUKS. False: LUKS
    /// on LVM, opened after.
    #[serde(default = "yes")]
    pub pre_lvm: bool,
    /// Ask for a passphrase when the key file is missing or wrong
    /// (`fallbackToPassword`).
    #[serde(default)]
    pub fallback_to_password: bool,
}

impl LuksDevice {
    /// `device` opened as `/dev/mapper/<name>` with NixOS's defaults for everything else
    /// (a passphrase, opened before LVM, no discards): what an entry naming only its
    /// device means in the spec.
    pub fn new(name: impl Into<String>, device: impl Into<String>) -> LuksDevice {
        LuksDevice {
            name: name.into(),
            device: device.into(),
            header: None,
            key_file: None,
            key_file_size: None,
            key_file_offset: None,
            allow_discards: false,
            bypass_workqueues: false,
            pre_lvm: true,
            fallback_to_password: false,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Module name as the kernel knows it (`virtio_blk`).
    pub name: String,
    /// Absolute path of the `.ko` inside the initrd.
    pub path: String,
    /// Parameters passed to `finit_module` (`key=value key2=value2`).
    pub params: String,
    /// A failure to load an optional module is logged, not fatal (e.g. a CPU-specific
    /// crc32c implementation that is absent on this machine).
    pub optional: bool,
    /// The module's `cpu:` aliases from its `.modinfo` (`cpu:type:x86,ven*fam*mod*:feature:*0094*`
    /// for `crc32c_intel`, which needs SSE4.2): a module that has some and none of them
    /// matches the CPU's modalias refuses to load with ENODEV, so stage 1 does not try an
    /// optional one. Empty for a module that does not depend on CPU features.
    pub cpu_aliases: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileSystem {
    /// Mount point as seen from the new root (`/`, `/nix`, ...).
    pub mount_point: String,
    /// Device in any form the stage-1 device resolver understands (`/dev/vda`,
    /// `/dev/disk/by-label/nixos`, `LABEL=nixos`, ...).
    pub device: String,
    /// Filesystem type, or `auto` to probe.
    pub fs_type: String,
    /// Mount options as NixOS lists them (`x-*` options are dropped at mount time).
    pub options: Vec<String>,
}

impl Stage1Config {
    pub fn encode(&self) -> Result<Vec<u8>, envelope::EnvelopeError> {
        envelope::encode(STAGE1_CONFIG_KIND, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, envelope::EnvelopeError> {
        envelope::decode(STAGE1_CONFIG_KIND, bytes)
    }

    pub fn read(path: &std::path::Path) -> Result<Self, envelope::FileError> {
        envelope::read_file(STAGE1_CONFIG_KIND, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constructor and the spec agree on what an entry naming only its device means.
    #[test]
    fn a_luks_device_with_only_its_device_has_the_spec_defaults() {
        let read: LuksDevice =
            serde_json::from_str(r#"{"name": "cryptroot", "device": "/dev/vda2"}"#).expect("json");
        assert_eq!(read, LuksDevice::new("cryptroot", "/dev/vda2"));
    }

    #[test]
    fn round_trip() {
        let c = Stage1Config {
            modules: vec![Module {
                name: "virtio_blk".into(),
                path: "/lib/modules/virtio_blk.ko".into(),
                params: String::new(),
                optional: false,
                cpu_aliases: vec!["cpu:type:x86,ven*fam*mod*:feature:*0094*".into()],
            }],
            filesystems: vec![FileSystem {
                mount_point: "/".into(),
                device: "/dev/vda".into(),
                fs_type: "ext4".into(),
                options: vec!["rw".into()],
            }],
            ..Default::default()
        };
        let bytes = c.encode().expect("encode");
        assert_eq!(Stage1Config::decode(&bytes).expect("decode"), c);
        let mut c = c;
        c.options.check_journaling_fs = false;
        c.options
            .fsck_programs
            .insert("ext4".into(), "/bin/e2fsck".into());
        c.options.resume_device = Some("LABEL=swap".into());
        c.options.resume_devices = vec!["/dev/vdb".into()];
        c.options.md_arrays = vec![MdArray {
            uuid: "1c2b3a49:5e6f7081:92a3b4c5:d6e7f809".into(),
            name: Some("root".into()),
            allow_degraded: false,
        }];
        c.options.swraid = true;
        c.options.btrfs_scan = true;
        c.options.luks = vec![LuksDevice {
            key_file: Some("/keyfile".into()),
            key_file_size: Some(4096),
            allow_discards: true,
            ..LuksDevice::new("root", "UUID=0b2d8d5e-6f3c-4b1a-9d7e-4f5a6b7c8d9e")
        }];
        c.options.lvm = true;
        let bytes = c.encode().expect("encode");
        assert_eq!(Stage1Config::decode(&bytes).expect("decode"), c);
    }

    #[test]
    fn options_refuse_unknown_keys_and_default_md_to_degraded_start() {
        let e = serde_json::from_str::<Stage1Options>(r#"{"swriad": true}"#)
            .expect_err("a misspelt key must be refused");
        assert!(e.to_string().contains("swriad"), "{e}");
        let o: Stage1Options = serde_json::from_str(
            r#"{"md_arrays": [{"uuid": "1c2b3a49:5e6f7081:92a3b4c5:d6e7f809"}], "btrfs_scan": true}"#,
        )
        .expect("parse");
        assert!(o.md_arrays[0].allow_degraded);
        assert_eq!(o.md_arrays[0].name, None);
        assert!(o.btrfs_scan && !o.swraid);
        let e =
            serde_json::from_str::<Stage1Options>(r#"{"md_arrays": [{"uuid": "x", "level": 1}]}"#)
                .expect_err("unknown array key");
        assert!(e.to_string().contains("level"), "{e}");
    }

    #[test]
    fn journaling_checks_are_on_by_default() {
        assert!(Stage1Config::default().options.check_journaling_fs);
        assert!(Stage1Options::default().fsck_programs.is_empty());
    }
}
