//! `install-bootloader` as a library call, for `switch-to-configuration` (`switch`/`boot`)
//! and the CLI: gather the generations, plan the boot partition, apply the plan.

use std::fmt;
use std::path::{Path, PathBuf};

use stagehand_common::rootfs::Root;

use super::efivars::{self, EfiVars};
use super::esp::{self, Applied, BootFs, EspError, SpaceProbe};
use super::extlinux::{self, ExtlinuxConfig};
use super::gather::{self, AdminInitrd, GatherError, Inputs};
use super::plan::FilePlan;
use super::profile::Profile;
use super::sdboot::{self, PlanError, SdBootConfig};

/// NixOS's default ESP mount point (`boot.loader.efi.efiSysMountPoint`).
pub const DEFAULT_ESP: &str = "/boot";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    SystemdBoot,
    Extlinux,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    /// The boot partition as the system sees it (`/boot`).
    pub esp: PathBuf,
    pub loader: Loader,
    pub systemd_boot: SdBootConfig,
    pub extlinux: ExtlinuxConfig,
    /// The toplevel (or a link to it) to make the default; `None` = the profile's current
    /// generation.
    pub default: Option<PathBuf>,
    /// Plan only.
    pub dry_run: bool,
    /// efivarfs, to warn about a persistent `LoaderEntryDefault`; `None` skips the check.
    pub efivars: Option<PathBuf>,
    /// Stagehand's initrd (`--initrd`, read by [`gather::admin_initrd`]), booted by every
    /// generation whose kernel it matches.
    pub initrd: Option<AdminInitrd>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            esp: PathBuf::from(DEFAULT_ESP),
            loader: Loader::SystemdBoot,
            systemd_boot: SdBootConfig::default(),
            extlinux: ExtlinuxConfig::default(),
            default: None,
            dry_run: false,
            efivars: Some(PathBuf::from(efivars::EFIVARS_DIR)),
            initrd: None,
        }
    }
}

#[derive(Debug)]
pub enum InstallError {
    Gather(GatherError),
    Plan(PlanError),
    Esp(EspError),
    /// The profile link names no generation and no default was given.
    NoCurrent,
    /// The requested default is not a generation of the profile.
    NotAGeneration {
        toplevel: PathBuf,
        detail: String,
    },
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallError::Gather(e) => e.fmt(f),
            InstallError::Plan(e) => e.fmt(f),
            InstallError::Esp(e) => e.fmt(f),
            InstallError::NoCurrent => write!(
                f,
                "the system profile points at no generation; pass the TOPLEVEL to make default"
            ),
            InstallError::NotAGeneration { toplevel, detail } => write!(
                f,
                "{} is not a generation of the system profile{detail}; add it first \
                 (nix-env -p /nix/var/nix/profiles/system --set {})",
                toplevel.display(),
                toplevel.display()
            ),
        }
    }
}

impl std::error::Error for InstallError {}

/// What an install did (or, with `dry_run`, would do).
#[derive(Debug, Clone)]
pub struct InstallReport {
    pub default_generation: u64,
    pub plan: FilePlan,
    /// Entry file names in the order systemd-boot will show them (first = booted by
    /// default); empty for extlinux.
    pub menu: Vec<String>,
    /// `None` for a dry run.
    pub applied: Option<Applied>,
}

/// The generation `toplevel` (any path resolving to one) belongs to, else the current one.
pub fn default_generation(
    root: &Root,
    inputs: &Inputs,
    toplevel: Option<&Path>,
) -> Result<u64, InstallError> {
    let Some(t) = toplevel else {
        return inputs.current.ok_or(InstallError::NoCurrent);
    };
    let canon = root
        .canonicalize(t)
        .map_err(|e| InstallError::NotAGeneration {
            toplevel: t.to_path_buf(),
            detail: format!(" (cannot resolve it: {e})"),
        })?;
    inputs
        .generations
        .iter()
        .find(|g| g.spec.toplevel == canon)
        .map(|g| g.number)
        .ok_or_else(|| InstallError::NotAGeneration {
            toplevel: t.to_path_buf(),
            detail: String::new(),
        })
}

/// A persistent `LoaderEntryDefault` (the menu's `d` key, `bootctl set-default`) wins over
/// `loader.conf` and, naming one entry, keeps booting it even when it is bad.
fn entry_default_warning(root: &Root, dir: &Path) -> Option<String> {
    // Unreadable efivarfs (not an EFI boot, a container) just means there is nothing to say.
    let value = EfiVars::new(root, dir)
        .string("LoaderEntryDefault")
        .ok()
        .flatten()?;
    if value.is_empty() || value.contains(['*', '?', '[']) {
        return None;
    }
    Some(format!(
        "the EFI variable LoaderEntryDefault is set to {value:?}; it overrides loader.conf, so \
         the boot menu keeps selecting that entry even after it fails to boot. Clear it with \
         `bootctl set-default \"\"` to let a bad generation fall back by itself"
    ))
}

/// Write the boot menu for the system profile of `root`.
pub fn install(
    root: &Root,
    opts: &InstallOptions,
    probe: &dyn SpaceProbe,
) -> Result<InstallReport, InstallError> {
    let profile = Profile::system(root);
    let mut inputs = gather::gather(root, &profile).map_err(InstallError::Gather)?;
    if let Some(ours) = &opts.initrd {
        inputs = inputs.with_initrd(ours.clone());
    }
    let default = default_generation(root, &inputs, opts.default.as_deref())?;
    let fs = BootFs::open(root, &opts.esp).map_err(InstallError::Esp)?;
    let (plan, menu) = match opts.loader {
        Loader::SystemdBoot => {
            let state = sdboot::scan(&fs).map_err(InstallError::Esp)?;
            let (mut plan, planned) = sdboot::plan(&inputs, default, &opts.systemd_boot, &state)
                .map_err(InstallError::Plan)?;
            if let Some(dir) = &opts.efivars {
                plan.warnings.extend(entry_default_warning(root, dir));
            }
            let menu = sdboot::menu(&planned)
                .iter()
                .map(|i| i.name.file_name())
                .collect();
            (plan, menu)
        }
        Loader::Extlinux => {
            let state = extlinux::scan(&fs).map_err(InstallError::Esp)?;
            let plan = extlinux::plan(&inputs, default, &opts.extlinux, &state)
                .map_err(InstallError::Plan)?;
            (plan, Vec::new())
        }
    };
    let applied = if opts.dry_run {
        None
    } else {
        Some(esp::apply(&fs, root, &plan, probe).map_err(InstallError::Esp)?)
    };
    Ok(InstallReport {
        default_generation: default,
        plan,
        menu,
        applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::efivars::fixture::{encode, write_var};

    #[test]
    fn a_persistent_exact_default_is_warned_about() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = Root::open(t.path()).expect("root");
        let dir = Path::new(efivars::EFIVARS_DIR);
        assert_eq!(entry_default_warning(&root, dir), None);
        let host = t.path().join(efivars::EFIVARS_DIR.trim_start_matches('/'));
        write_var(
            &host,
            "LoaderEntryDefault",
            &encode(7, "nixos-generation-3.conf"),
        );
        let w = entry_default_warning(&root, dir).expect("warning");
        assert!(w.contains("\"nixos-generation-3.conf\""), "{w}");
        write_var(
            &host,
            "LoaderEntryDefault",
            &encode(7, "nixos-generation-*"),
        );
        assert_eq!(entry_default_warning(&root, dir), None);
    }
}
