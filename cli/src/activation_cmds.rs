//! The subcommands of the `stagehand` binary, here so they can be tested as a library.

use std::path::{Path, PathBuf};

use stagehand_activation::activate::{activate, Action, ActivateOptions};
use stagehand_activation::{etc, manifest, users};
use stagehand_common::rootfs::Root;

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
        "activate" => {
            let toplevel = one(positional, "TOPLEVEL")?;
            let action = match action {
                Some(a) => a.to_owned(),
                None => std::env::var("NIXOS_ACTION").unwrap_or_else(|_| "switch".to_owned()),
            };
            let action = Action::parse(&action).ok_or_else(|| {
                format!("usage: unknown action {action:?} (boot, switch, test, dry-activate)")
            })?;
            let opts = ActivateOptions {
                root: root.to_path_buf(),
                dry_run,
                action,
            };
            let report = activate(&toplevel, &opts).map_err(|e| e.to_string())?;
            Ok(u8::from(!report.success()))
        }
        "compile" => {
            let toplevel = one(positional, "TOPLEVEL")?;
            let root = open_root(root)?;
            let plan = manifest::compile(&root, &toplevel).map_err(|e| e.to_string())?;
            log::info!(
                "wrote {}/{} ({} etc entries, {} users, {} steps)",
                plan.toplevel,
                manifest::PLAN_NAME,
                plan.etc.as_ref().map_or(0, |t| t.entries.len()),
                plan.users.as_ref().map_or(0, |u| u.users.len()),
                plan.order.len()
            );
            Ok(0)
        }
        "plan" => {
            let toplevel = one(positional, "TOPLEVEL")?;
            let root = open_root(root)?;
            let plan = manifest::load(&root, &toplevel).map_err(|e| e.to_string())?;
            let json = serde_json::to_string_pretty(&plan).map_err(|e| e.to_string())?;
            println!("{json}");
            Ok(0)
        }
        "bench" => stagehand_activation::bench::run(positional).map(|()| 0),
        _ => Err(format!("usage: unknown command {cmd:?}")),
    }
}
