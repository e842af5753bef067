//! The subcommands of the `stagehand` binary, here so they can be tested as a library.

use std::path::{Path, PathBuf};

use crate::rootfs::Root;
use crate::{etc, users};

fn one(positional: &[String], what: &str) -> Result<PathBuf, String> {
    match positional {
        [p] => Ok(PathBuf::from(p)),
        _ => Err(format!("usage: exactly one {what} argument expected")),
    }
}

fn open_root(root: &Path) -> Result<Root, String> {
    Root::open(root).map_err(|e| format!("cannot open root {}: {e}", root.display()))
}

/// Run subcommand `cmd`; `Ok` carries the exit status.
pub fn run(
    cmd: &str,
    root: &Path,
    dry_run: bool,
    action: Option<&str>,
    positional: &[String],
) -> Result<u8, String> {
    let _ = action;
    match cmd {
        "etc" => {
            let tree_path = one(positional, "ETC_TREE")?;
            let root = open_root(root)?;
            log::info!("setting up /etc...");
            let tree = etc::list_tree(&root, &tree_path).map_err(|e| e.to_string())?;
            let opts = etc::EtcOptions {
                skip_resolv_conf: std::env::var_os("IN_NIXOS_ENTER").is_some(),
            };
            let out = etc::setup_etc(&root, &tree, opts, dry_run).map_err(|e| e.to_string())?;
            for i in &out.issues {
                log::error!("{i}");
            }
            Ok(u8::from(!out.issues.is_empty()))
        }
        "users" => {
            let spec_path = one(positional, "USERS_JSON")?;
            let root = open_root(root)?;
            let bytes = root.read(&spec_path).map_err(|error| {
                users::SpecError::Read {
                    path: root.host_path(&spec_path),
                    error,
                }
                .to_string()
            })?;
            let spec = users::UsersSpec::from_json(&root.host_path(&spec_path), &bytes)
                .map_err(|e| e.to_string())?;
            let out = users::update_users(&root, &spec, dry_run).map_err(|e| e.to_string())?;
            for e in &out.errors {
                log::error!("{e}");
            }
            Ok(u8::from(!out.errors.is_empty()))
        }
        _ => Err(format!("usage: unknown command {cmd:?}")),
    }
}
