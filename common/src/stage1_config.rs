//! The stage-1 configuration: what the initrd builder compiles into the initrd and what
//! `/init` reads before it does anything else. It lives at [`STAGE1_CONFIG_PATH`] inside
//! the initrd, wrapped in the [`crate::envelope`] with [`STAGE1_CONFIG_KIND`].
//!
//! Nothing in here is generation-specific: the generation is chosen at boot from `init=`,
//! so one initrd serves every generation that shares a kernel.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, Kind};

pub const STAGE1_CONFIG_PATH: &str = "/etc/stagehand/stage1.cfg";

pub const STAGE1_CONFIG_KIND: Kind = Kind {
    magic: *b"SHSTAGE1",
    version: 1,
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
}

impl Default for Stage1Config {
    fn default() -> Self {
        Self {
            modules: Vec::new(),
            filesystems: Vec::new(),
            device_timeout_ms: 20_000,
            panic_on_fail: false,
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
    }
}
