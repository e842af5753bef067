//! The kernel modules the storage layers of the stage-1 options need (md, btrfs scan,
//! LUKS, LVM), added to what an initrd spec asks for: stage 1 has no `modprobe`, so what
//! the kernel would otherwise load on demand has to be carried and loaded up front.

use stagehand_common::stage1_config;

use crate::{modules, InitrdSpec};

/// Kernel modules the LUKS layer needs. Stage 1 has no `modprobe` for the crypto API's
/// `request_module`, so the templates dm-crypt instantiates are loaded up front: `xts`
/// over `ecb(aes)` for aes-xts-plain64 (Debian 6.1 builds aes, cbc and sha256 in, xts and
/// ecb as modules); `essiv` for LUKS1's aes-cbc-essiv:sha256 and `aesni_intel` (skipped by
/// its `cpu:` alias where the CPU has no AES-NI) are optional.
pub const LUKS_MODULES: &[&str] = &["dm_mod", "dm_crypt", "ecb", "xts"];
pub const LUKS_OPTIONAL_MODULES: &[&str] = &["essiv", "aesni_intel"];
/// LVM's `linear` and `striped` targets are part of `dm_mod`.
pub const LVM_MODULES: &[&str] = &["dm_mod"];

/// The modules the storage layers in `options` need, appended to what the spec asks for
/// (when not named already): md assembly needs `md_mod` and RAID1's `raid1` (other
/// levels' modules, `raid456` or `raid10`, must be named), the btrfs scan needs `btrfs`
/// (its `/dev/btrfs-control`), LUKS [`LUKS_MODULES`] (and [`LUKS_OPTIONAL_MODULES`] as
/// optional ones), LVM [`LVM_MODULES`].
pub fn spec_with_layer_modules(
    spec: &InitrdSpec,
    options: &stage1_config::Stage1Options,
) -> InitrdSpec {
    let mut spec = spec.clone();
    let mut wanted: Vec<&str> = Vec::new();
    let mut optional: Vec<&str> = Vec::new();
    if options.swraid || !options.md_arrays.is_empty() {
        wanted.extend(["md_mod", "raid1"]);
    }
    if options.btrfs_scan {
        wanted.push("btrfs");
    }
    if options.lvm {
        wanted.extend(LVM_MODULES);
    }
    if !options.luks.is_empty() {
        wanted.extend(LUKS_MODULES);
        optional.extend(LUKS_OPTIONAL_MODULES);
    }
    for (list, names) in [
        (&mut spec.modules, wanted),
        (&mut spec.optional_modules, optional),
    ] {
        for m in names {
            if !list.iter().any(|n| modules::normalize_name(n) == m) {
                list.push(m.to_owned());
            }
        }
    }
    spec
}
