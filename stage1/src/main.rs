//! `/init` in the initrd: see the library's [`stagehand_stage1::boot`].
//!
//! `no_main`: the C `main` below is the entry point, so std's start-up (`lang_start`) is
//! not linked in. PID 1 needs none of it: it reopens its console itself
//! (`sys::reopen_console`; the initrd carries `/dev/console`, so the kernel opens fds 0–2
//! before `/init` runs), a stack overflow kills PID 1 with or without std's guard-page
//! message, and std's SIGPIPE setting only matters to programs that write to pipes whose
//! readers go away (stage 1 reads its checkers' output; the kernel does not deliver a
//! default-action SIGPIPE to init anyway). What it saves is the code std's start-up pulls
//! out of static glibc: `pthread_getattr_np` and, through it, `sscanf` and the `strtod`
//! family (about 130 KiB of the binary).
// Under `cargo test` the harness brings its own `main` (and must not boot anything).
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
use std::ffi::{c_char, c_int};

/// The C entry point glibc's `__libc_start_main` calls. `std::env::args` still works:
/// glibc hands argc/argv to std through `.init_array` before this runs.
// SAFETY: `no_mangle` exports this as `main`; no other symbol in the binary has that name
// (std's `lang_start` main is not generated under `no_main`), and the signature is the one
// glibc calls.
#[cfg(not(test))]
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    stagehand_stage1::boot::main();
    0
}
