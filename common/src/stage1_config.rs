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
    version: 3,
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
/// left out.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(default)]
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
}

impl Default for Stage1Options {
    fn default() -> Self {
        Self {
            check_journaling_fs: true,
            fsck_programs: BTreeMap::new(),
            resume_device: None,
            resume_devices: Vec::new(),
        }
    }
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
        let bytes = c.encode().expect("encode");
        assert_eq!(Stage1Config::decode(&bytes).expect("decode"), c);
    }

    #[test]
    fn journaling_checks_are_on_by_default() {
        assert!(Stage1Config::default().options.check_journaling_fs);
        assert!(Stage1Options::default().fsck_programs.is_empty());
    }
}
