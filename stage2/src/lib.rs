//! Stagehand stage 2: `<toplevel>/init`, PID 1 on the real root.
//!
//! Finishes the special filesystems, protects `/nix/store`, activates the generation
//! (users, `/etc`, ...) with the activation engine, records `/run/booted-system` and hands
//! PID 1 over to the generation's systemd with the kernel's arguments. A failure before the
//! hand-over goes to the shared failure path; PID 1 never panics. [`boot`] is the sequence;
//! [`plan`] the pure decision of what this boot must do.

// Tests may index, expect and panic: a failing test should stop at the line that failed.
#![cfg_attr(
    test,
    allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

#[cfg(test)]
mod bad_input_tests;
pub mod bless_unit;
pub mod blesser;
pub mod boot;
pub mod mounts;
pub mod plan;
pub mod postboot;
pub mod toplevel;
