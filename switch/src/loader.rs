//! Making a generation the boot default. NixOS's wrapper passes the command in
//! `INSTALL_BOOTLOADER` (run with the toplevel as its last argument); without it we write the
//! boot entries ourselves ([`stagehand_boot::install`]) when `/boot` holds a loader we manage
//! (`loader/` for systemd-boot, `extlinux/`), and say so when it holds neither.

use std::path::{Path, PathBuf};
use std::process::Command;

use stagehand_boot::esp::Statvfs;
use stagehand_boot::install::{self, InstallOptions, Loader, DEFAULT_ESP};
use stagehand_common::rootfs::Root;

/// What NixOS prints when a generation has no boot loader to install (`boot.loader.grub.enable
/// = false` and no other): `switch` and `boot` still succeed.
pub const NO_BOOT_LOADER: &str =
    "Warning: do not know how to make this configuration bootable; please enable a boot loader.";

pub trait BootLoader {
    /// Make `toplevel` (as the system sees it) the default boot entry.
    fn install(&mut self, root: &Root, toplevel: &Path) -> Result<String, String>;
}

/// What `INSTALL_BOOTLOADER` says, else the native installer.
pub enum BootLoaderCommand {
    /// A command line, split on whitespace as NixOS does.
    Command(String),
    Native {
        esp: PathBuf,
    },
}

impl BootLoaderCommand {
    pub fn from_env() -> BootLoaderCommand {
        match std::env::var("INSTALL_BOOTLOADER") {
            Ok(c) if !c.trim().is_empty() => BootLoaderCommand::Command(c),
            _ => BootLoaderCommand::Native {
                esp: PathBuf::from(DEFAULT_ESP),
            },
        }
    }
}

impl BootLoader for BootLoaderCommand {
    fn install(&mut self, root: &Root, toplevel: &Path) -> Result<String, String> {
        match self {
            BootLoaderCommand::Command(c) => {
                let mut words = c.split_whitespace();
                let prog = words.next().unwrap_or_default();
                let status = Command::new(prog)
                    .args(words)
                    .arg(toplevel)
                    .status()
                    .map_err(|e| format!("cannot run {prog}: {e}"))?;
                if status.success() {
                    Ok(format!("{c} {}: done", toplevel.display()))
                } else {
                    Err(format!("{c} {} failed ({status})", toplevel.display()))
                }
            }
            BootLoaderCommand::Native { esp } => {
                let loader = if root.lstat(&esp.join("loader")).ok().flatten().is_some() {
                    Loader::SystemdBoot
                } else if root.lstat(&esp.join("extlinux")).ok().flatten().is_some() {
                    Loader::Extlinux
                } else {
                    // NixOS's own warning first (scripts and its test suite look for it), then
                    // what we looked at.
                    return Ok(format!(
                        "{NO_BOOT_LOADER}\n(INSTALL_BOOTLOADER is unset and {} has neither \
                         loader/ (systemd-boot) nor extlinux/)",
                        root.host_path(esp).display()
                    ));
                };
                let opts = InstallOptions {
                    esp: esp.clone(),
                    loader,
                    default: Some(toplevel.to_path_buf()),
                    ..InstallOptions::default()
                };
                let report = install::install(root, &opts, &Statvfs).map_err(|e| e.to_string())?;
                for w in &report.plan.warnings {
                    log::warn!("{w}");
                }
                Ok(format!(
                    "boot entries in {} updated: generation {} is the default",
                    root.host_path(esp).display(),
                    report.default_generation
                ))
            }
        }
    }
}
