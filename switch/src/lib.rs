//! `switch-to-configuration {switch,boot,test,dry-activate,check}`: NixOS's interface (exit
//! codes, `NIXOS_ACTION`, `INSTALL_BOOTLOADER`, `PRE_SWITCH_CHECK`, `NIXOS_NO_CHECK`,
//! `NIXOS_NO_SYNC`, `STC_DISPLAY_ALL_UNITS`, the lock and the `/run/nixos` lists), so
//! nixos-rebuild, deploy-rs and colmena can drive it.
//!
//! * [`options`] — NixOS's interface: actions, exit codes, the environment's inputs.
//! * [`run`] — one run top-down: the checks that may refuse it, then `boot` or the live switch.
//! * [`live`] — the live switch: decide the units, print, apply, move the boot default.
//! * [`say`] — what a switch prints (and keeps for the outcome).
//! * [`lock`] — the flock that keeps two switches apart.
//! * [`pending`] — the start/restart/reload lists that make an interrupted switch resume.
//! * [`manager`] — the systemd seam (`systemctl`, or nothing for an offline root).
//! * [`loader`] — making the generation the boot default.
//! * [`units`] — the pure core: unit files compared by NixOS's rules.

mod live;
pub mod loader;
pub mod lock;
pub mod manager;
pub mod options;
pub mod pending;
pub mod run;
mod say;
pub mod units;

pub use options::{exit, SwitchAction, SwitchOptions, SwitchOutcome};
pub use run::switch;
