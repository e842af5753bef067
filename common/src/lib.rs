//! Pieces shared by the boot binaries (`stage1`, `stage2`) and the build-time tools
//! (`initrd`, `activation`): the versioned binary envelope, the stage-1 configuration
//! it carries, the kernel command line, and printk-prefixed logging to `/dev/kmsg`.

// Tests may index, expect and panic: a failing test should stop at the line that failed.
#![cfg_attr(
    test,
    allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

pub mod atomic;
pub mod boot_counting;
pub mod chroot;
pub mod cmdline;
pub mod crc32;
pub mod date;
pub mod emergency;
pub mod envelope;
pub mod glob;
pub mod kmsg;
pub mod mounts;
pub mod panic_hook;
pub mod rootfs;
pub mod stage1_config;
pub mod timing;
