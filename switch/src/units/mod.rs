//! The live service switch's pure core: systemd unit files parsed and compared the way
//! NixOS's `switch-to-configuration` does, and the rules that turn the differences into
//! stop / start / restart / reload decisions. No I/O here except through [`UnitFiles`];
//! [`files::RootUnitFiles`] reads both generations under a root prefix.
//!
//! * [`ini`] — unit files with drop-ins, `[Install]` dropped, empty values resetting.
//! * [`compare`] — equal, reload-only, or restart-worthy.
//! * [`rules`] — the decisions ([`rules::plan`]) and the activation's restart/reload lists.
//! * [`fstab`] — mounts and swaps that changed in `/etc/fstab`.
//! * [`name`] — template instances, mount-unit names.

pub mod compare;
pub mod files;
pub mod fstab;
pub mod ini;
pub mod name;
pub mod rules;

pub use rules::{ActiveUnits, FileState, Gen, Pending, UnitFiles, UnitPlan, UnitState};
