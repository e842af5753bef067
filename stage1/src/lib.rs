//! Stagehand stage 1: the initrd's `/init`.
//!
//! Mounts the special filesystems, reads the compiled stage-1 config, loads the kernel
//! modules, mounts the root (and whatever else boot needs) under `/mnt-root`, finds the
//! generation named by `init=` inside it and `switch_root`s into that generation's stage 2.
//! [`boot`] is the sequence; the other modules are its steps. A library as well as a binary so
//! that the planners and the prober can be tested and fuzzed on their own.

// Tests may index, expect and panic: a failing test should stop at the line that failed.
#![cfg_attr(
    test,
    allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

pub mod attempts;
#[cfg(test)]
mod bad_input_tests;
pub mod boot;
#[cfg(test)]
mod boot_tests;
pub mod btrfs;
pub mod carried;
pub mod cpu;
pub mod devices;
pub mod fsck;
pub mod init_path;
pub mod layers;
pub mod md;
pub mod plan;
pub mod probe;
pub mod resume;
pub mod root;
pub mod secrets;
pub mod sys;
