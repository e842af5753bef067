//! `switch-to-configuration {switch,boot,test,dry-activate,check}`: NixOS's interface (exit
//! codes, `NIXOS_ACTION`, `INSTALL_BOOTLOADER`, `PRE_SWITCH_CHECK`, `NIXOS_NO_CHECK`,
//! `NIXOS_NO_SYNC`, `STC_DISPLAY_ALL_UNITS`, the lock and the `/run/nixos` lists), so
//! nixos-rebuild, deploy-rs and colmena can drive it.
//!
//! * [`run`] — the sequence (plan, print, apply) and the exit codes.
//! * [`lock`] — the flock that keeps two switches apart.
//! * [`pending`] — the start/restart/reload lists that make an interrupted switch resume.
//! * [`manager`] — the systemd seam (`systemctl`, or nothing for an offline root).
//! * [`loader`] — making the generation the boot default.
//! * [`units`] — the pure core: unit files compared by NixOS's rules.

pub mod loader;
pub mod lock;
pub mod manager;
pub mod pending;
pub mod run;
pub mod units;

pub use run::{exit, switch, SwitchAction, SwitchOptions, SwitchOutcome};
