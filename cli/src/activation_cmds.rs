//! The activation commands: `etc`, `users`, `activate`, `compile`, `plan` and the hidden
//! `bench`. Each returns the exit status, or the error the binary prints.

use std::path::Path;

use anyhow::{Context, Result};
use clap::ValueEnum;
use stagehand_activation::activate::{activate as run_activation, Action, ActivateOptions};
use stagehand_activation::{compiled, etc, users};
use stagehand_common::rootfs::Root;

use crate::{
    ActivateAction, ActivateArgs, BenchArgs, EtcArgs, ToplevelArgs, UsageError, UsersArgs,
};

fn open_root(root: &Path) -> Result<Root> {
    Root::open(root).with_context(|| format!("cannot open root {}", root.display()))
}

/// `stagehand etc`: 1 when some entries could not be set up (each is logged).
pub fn etc(a: &EtcArgs) -> Result<u8> {
    let root = open_root(&a.root.root)?;
    log::info!("setting up /etc...");
    let tree = etc::list_tree(&root, &a.tree)?;
    let opts = etc::EtcOptions {
        skip_resolv_conf: std::env::var_os("IN_NIXOS_ENTER").is_some(),
    };
    let out = etc::setup_etc(&root, &tree, opts, a.dry_run)?;
    for i in &out.issues {
        log::error!("{i}");
    }
    Ok(u8::from(!out.issues.is_empty()))
}

/// `stagehand users`: 1 when some users or groups could not be updated (each is logged).
pub fn users(a: &UsersArgs) -> Result<u8> {
    let root = open_root(&a.root.root)?;
    let bytes = root.read(&a.spec).map_err(|error| users::SpecError::Read {
        path: root.host_path(&a.spec),
        error,
    })?;
    let spec = users::UsersSpec::from_json(&root.host_path(&a.spec), &bytes)?;
    let out = users::update_users(&root, &spec, a.dry_run)?;
    for e in &out.errors {
        log::error!("{e}");
    }
    Ok(u8::from(!out.errors.is_empty()))
}

/// `--action`, else `NIXOS_ACTION`, else `switch`. A bad `NIXOS_ACTION` is a usage error
/// (exit 2), as a bad `--action` is.
fn action(a: &ActivateArgs) -> Result<Action> {
    let chosen = match (a.action, std::env::var("NIXOS_ACTION")) {
        (Some(chosen), _) => chosen,
        (None, Err(_)) => ActivateAction::Switch,
        (None, Ok(v)) => ActivateAction::from_str(&v, false).map_err(|_| {
            UsageError(format!(
                "NIXOS_ACTION={v:?} is not an action (boot, switch, test, dry-activate); \
                 pass --action or fix the variable"
            ))
        })?,
    };
    Ok(match chosen {
        ActivateAction::Boot => Action::Boot,
        ActivateAction::Switch => Action::Switch,
        ActivateAction::Test => Action::Test,
        ActivateAction::DryActivate => Action::DryActivate,
    })
}

/// `stagehand activate`: 1 when some step failed (the report logged which).
pub fn activate(a: &ActivateArgs) -> Result<u8> {
    let opts = ActivateOptions {
        root: a.root.root.clone(),
        dry_run: a.dry_run,
        action: action(a)?,
    };
    let report = run_activation(&a.toplevel, &opts)?;
    Ok(u8::from(!report.success()))
}

/// `stagehand compile`: writes TOPLEVEL/activation.plan.
pub fn compile(a: &ToplevelArgs) -> Result<u8> {
    let root = open_root(&a.root.root)?;
    let plan = compiled::compile(&root, &a.toplevel)?;
    log::info!(
        "wrote {}/{} ({} etc entries, {} users, {} steps)",
        plan.toplevel,
        compiled::PLAN_NAME,
        plan.etc.as_ref().map_or(0, |t| t.entries.len()),
        plan.users.as_ref().map_or(0, |u| u.users.len()),
        plan.order.len()
    );
    Ok(0)
}

/// `stagehand plan`: the compiled plan as pretty JSON on stdout.
pub fn plan(a: &ToplevelArgs) -> Result<u8> {
    let root = open_root(&a.root.root)?;
    let plan = compiled::load(&root, &a.toplevel)?;
    let json = serde_json::to_string_pretty(&plan).context("encoding the plan as JSON")?;
    crate::print_stdout(&format!("{json}\n"))?;
    Ok(0)
}

/// `stagehand bench`: the benchmark keeps its own option reader (in the activation crate),
/// so the options clap checked are handed on in its spelling.
pub fn bench(a: &BenchArgs) -> Result<u8> {
    let mut args = vec!["--reps".to_owned(), a.reps.to_string()];
    for dir in &a.dir {
        args.extend(["--dir".to_owned(), dir.clone()]);
    }
    if a.activate {
        args.push("--activate".to_owned());
    }
    for (flag, value) in [
        ("--before", &a.before),
        ("--sample", &a.sample),
        ("--floor", &a.floor),
    ] {
        if let Some(v) = value {
            args.extend([flag.to_owned(), v.clone()]);
        }
    }
    if let Some(dir) = &a.prepare {
        args.extend(["--prepare".to_owned(), dir.clone()]);
    }
    if a.stress {
        args.push("--stress".to_owned());
    }
    stagehand_activation::bench::run(&args).map_err(anyhow::Error::msg)?;
    Ok(0)
}
