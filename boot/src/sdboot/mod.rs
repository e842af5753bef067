//! systemd-boot: Boot Loader Specification type #1 entries, one per generation and
//! specialisation, named as NixOS names them, plus `loader/loader.conf`.
//!
//! ## How the default survives a bad generation
//! systemd-boot boots the first entry, in menu order, whose ID matches `loader.conf`'s
//! `default` glob; a boot-counted entry with no tries left sorts after all others. An exact
//! `default` naming one entry keeps booting it even when it is bad (systemd#15256), so we
//! write `default nixos-generation-*` and make the generation we want booted sort first
//! instead, with `sort-key` groups that share the configured key as a prefix:
//!
//! | group | sort-key | order inside (version, descending) |
//! |---|---|---|
//! | the default generation | `nixos` | — |
//! | older generations | `nixos-generation` | newest first: the fallback chain |
//! | generations newer than the default (after a rollback) | `nixos-generation-newer` | newest first |
//! | specialisations | `nixos-specialisation` | newest first |
//!
//! So the menu reads top-down as "what boots, then what boots if that fails", and a
//! specialisation (a different configuration the user picks on purpose) is never an
//! automatic fallback. Grouping by prefix keeps NixOS entries together relative to other
//! operating systems' sort keys.
//!
//! ## Boot counting
//! A new entry file gets `+<tries>`; an existing entry keeps its file name, whatever its
//! counter says, when its contents are rewritten — so re-running the installer never resets
//! an assessment in progress or revives a bad entry.
//!
//! * `entries` — the entries we want and `loader.conf`.
//! * `names` — entry and `EFI/nixos/` file names, ours or not, debris.
//! * `plan` — the pure decision: files to write, copy and remove.
//! * `state` — what is on the ESP now: read it, which entry boots next.

use std::fmt;
use std::path::PathBuf;

mod entries;
mod names;
mod plan;
mod state;

pub use entries::{desired_entries, menu, render_loader_conf, Desired, PlannedEntry};
pub use names::{clean_name, efi_name, is_debris, is_managed_stem};
pub use plan::plan;
pub use state::{entry_statuses, predicted_boot, scan, EntryStatus, EspState};

pub const ENTRIES_DIR: &str = "loader/entries";
pub const NIXOS_DIR: &str = "EFI/nixos";
pub const LOADER_CONF: &str = "loader/loader.conf";
/// Prefix of every entry file we manage; entries of other profiles or systems never match.
pub const ENTRY_PREFIX: &str = "nixos-generation-";
/// The `loader.conf` default: every generation, so a bad one is skipped.
pub const DEFAULT_GLOB: &str = "nixos-generation-*";
/// NixOS's `sortKey` default.
pub const DEFAULT_SORT_KEY: &str = "nixos";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdBootConfig {
    /// Menu timeout in seconds; `None` leaves systemd-boot's default.
    pub timeout: Option<u32>,
    /// Allow editing the kernel command line in the menu (root access for anyone at the
    /// keyboard, hence off by default).
    pub editor: bool,
    pub console_mode: Option<String>,
    /// Keep at most this many generations (the default generation is always kept).
    pub configuration_limit: Option<usize>,
    /// Boot counting: tries for new entries; `None` turns counting off for new entries.
    pub tries: Option<u32>,
}

impl Default for SdBootConfig {
    fn default() -> Self {
        SdBootConfig {
            timeout: Some(5),
            editor: false,
            console_mode: None,
            configuration_limit: None,
            tries: Some(3),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    NoGenerations,
    DefaultMissing {
        generation: u64,
    },
    /// `initrdSecrets` needs a program run at install time, which we do not do yet.
    InitrdSecrets {
        generation: u64,
        program: PathBuf,
    },
    /// Internal: a path was not measured by `gather`.
    Unmeasured {
        path: PathBuf,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::NoGenerations => write!(
                f,
                "no bootable generation: refusing to write a boot menu without entries"
            ),
            PlanError::DefaultMissing { generation } => write!(
                f,
                "generation {generation} should become the default but is not among the \
                 readable generations"
            ),
            PlanError::InitrdSecrets {
                generation,
                program,
            } => write!(
                f,
                "generation {generation} needs initrd secrets appended by {} (boot.initrd.secrets), \
                 which stagehand does not support yet; remove boot.initrd.secrets or install \
                 with NixOS's builder",
                program.display()
            ),
            PlanError::Unmeasured { path } => {
                write!(f, "internal error: {} was not measured", path.display())
            }
        }
    }
}

impl std::error::Error for PlanError {}

#[cfg(test)]
pub(crate) mod tests;
