//! The Stagehand VM test harness as a library: the pieces the `vm-tests` binary (and later
//! tests) put together to build a NixOS-shaped system image, boot it in QEMU and read what
//! the guest says.

pub mod bench;
pub mod console;
pub mod declared;
pub mod fallback_scenarios;
pub mod generation;
pub mod host;
pub mod initrd_scenarios;
pub mod kernel;
pub mod layer_scenarios;
pub mod nixos_generation;
pub mod nixos_scenarios;
pub mod nixos_tools;
pub mod powercut_scenarios;
pub mod qemu;
pub mod scenarios;
pub mod stage1_scenarios;
pub mod stage2_scenarios;
pub mod storage_scenarios;
pub mod store;
pub mod switch_scenarios;
pub mod switch_suite;
pub mod switch_suite_configs;
pub mod switch_suite_steps;
pub mod timeline;
pub mod tree;
pub mod uefi_scenarios;
pub mod workspace;
