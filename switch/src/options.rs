//! NixOS's `switch-to-configuration` interface as data: the actions, the exit codes, and the
//! inputs its wrapper passes in the environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use stagehand_activation::activate::Action;

/// The exit codes NixOS's `switch-to-configuration` uses.
pub mod exit {
    pub const OK: u8 = 0;
    /// Usage errors, not a NixOS root, failed pre-switch check or boot-loader install.
    pub const FAILED: u8 = 1;
    pub const ACTIVATION_FAILED: u8 = 2;
    pub const UNITS_FAILED: u8 = 4;
    /// The lock is held (NixOS exits with the errno, EWOULDBLOCK).
    pub const LOCKED: u8 = 11;
    /// The new init cannot take over the running system; reboot into it.
    pub const INCOMPATIBLE_INIT: u8 = 100;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchAction {
    Switch,
    Boot,
    Test,
    DryActivate,
    Check,
}

impl SwitchAction {
    pub fn parse(s: &str) -> Option<SwitchAction> {
        Some(match s {
            "switch" => Self::Switch,
            "boot" => Self::Boot,
            "test" => Self::Test,
            "dry-activate" => Self::DryActivate,
            "check" => Self::Check,
            _ => return None,
        })
    }

    /// `NIXOS_ACTION`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Switch => "switch",
            Self::Boot => "boot",
            Self::Test => "test",
            Self::DryActivate => "dry-activate",
            Self::Check => "check",
        }
    }

    pub(crate) fn activation(self) -> Action {
        match self {
            Self::Switch => Action::Switch,
            Self::Boot | Self::Check => Action::Boot,
            Self::Test => Action::Test,
            Self::DryActivate => Action::DryActivate,
        }
    }
}

/// Inputs that NixOS takes from its wrapper's environment (see [`SwitchOptions::from_env`]).
#[derive(Debug, Clone)]
pub struct SwitchOptions {
    pub root: PathBuf,
    /// The new generation as the system sees it.
    pub toplevel: PathBuf,
    pub action: SwitchAction,
    /// `PRE_SWITCH_CHECK`: run with `TOPLEVEL ACTION` appended, unless `NIXOS_NO_CHECK=1`.
    pub pre_switch_check: Option<String>,
    pub no_check: bool,
    /// `NIXOS_NO_SYNC=1`: skip `syncfs` of `/nix/store`.
    pub no_sync: bool,
    /// `DISTRO_ID` (default `nixos`).
    pub distro_id: String,
    /// `STC_DISPLAY_ALL_UNITS=1`: also print the targets that are always started.
    pub display_all_units: bool,
    /// What PID 1 runs (`/proc/1/exe`), to tell whether systemd changed; `None` = unknown
    /// (never re-exec).
    pub pid1_exe: Option<PathBuf>,
}

impl SwitchOptions {
    pub fn from_env(root: &Path, toplevel: &Path, action: SwitchAction) -> SwitchOptions {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let pid1_exe = if root == Path::new("/") {
            std::fs::read_link("/proc/1/exe").ok()
        } else {
            None
        };
        SwitchOptions {
            root: root.to_path_buf(),
            toplevel: toplevel.to_path_buf(),
            action,
            pre_switch_check: var("PRE_SWITCH_CHECK"),
            no_check: var("NIXOS_NO_CHECK").as_deref() == Some("1"),
            no_sync: var("NIXOS_NO_SYNC").as_deref() == Some("1"),
            distro_id: var("DISTRO_ID").unwrap_or_else(|| "nixos".into()),
            display_all_units: var("STC_DISPLAY_ALL_UNITS").as_deref() == Some("1"),
            pid1_exe,
        }
    }
}

/// What happened: the exit code and every line printed (also written to stderr).
#[derive(Debug, Clone, Default)]
pub struct SwitchOutcome {
    pub code: u8,
    pub lines: Vec<String>,
    pub elapsed: Duration,
}
