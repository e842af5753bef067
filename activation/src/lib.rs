//! Stagehand activation: turns a NixOS-style system generation into a running configuration.
//!
//! * [`activate()`] — what stage 2 and `switch-to-configuration` call: runs every step of the
//!   generation's compiled plan and points `/run/current-system` at it.
//! * [`etc`] — `/etc` with `setup-etc.pl` semantics; [`users`] — accounts with
//!   `update-users-groups.pl` semantics; [`manifest`] — `activation.json`; [`compiled`] —
//!   the compiled `activation.plan`.
//! * [`lock`] — the activation lock that keeps two runs on one root apart.
//! * `stagehand_common::rootfs` — every write goes through it, confined to a root prefix.
//!
//! Each step is a pure planner over what it observed plus a thin executor; see the modules.

pub mod activate;
#[doc(hidden)]
pub mod bench;
pub mod compiled;
pub mod crypt;
pub mod etc;
pub mod lock;
pub mod manifest;
pub mod script;
pub mod users;

pub use activate::{
    activate, Action, ActivateOptions, ActivationError, ActivationReport, Outcome, StepReport,
};
