//! The boot subcommands of `stagehand`. The binary hands us its arguments after the command
//! name; every path option names a path as the target system sees it, inside `--root`.

use std::path::{Path, PathBuf};

use crate::rootfs::Root;

use super::date;
use super::profile::{self, GenerationInfo, Profile};

/// Options shared by every boot subcommand.
#[derive(Debug, Clone)]
struct Opts {
    root: PathBuf,
    json: bool,
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        root: PathBuf::from("/"),
        json: false,
        positional: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("usage: {name} needs a value"))
        };
        match a.as_str() {
            "--root" => o.root = PathBuf::from(value("--root")?),
            "--json" => o.json = true,
            s if s.starts_with("--") => return Err(format!("usage: unknown option {s}")),
            _ => o.positional.push(a.clone()),
        }
    }
    Ok(o)
}

fn open_root(root: &Path) -> Result<Root, String> {
    Root::open(root).map_err(|e| format!("cannot open root {}: {e}", root.display()))
}

/// Run boot subcommand `cmd` with the arguments that followed it; `Ok` is the exit status.
/// Errors starting with `usage` are argument mistakes (the binary exits 2 for those).
pub fn run(cmd: &str, args: &[String]) -> Result<u8, String> {
    let o = parse(args)?;
    match cmd {
        "generations" => {
            let root = open_root(&o.root)?;
            let profile = Profile::system(&root);
            let gens = profile::list(&root, &profile).map_err(|e| e.to_string())?;
            let text = if o.json {
                generations_json(&gens)
            } else {
                generations_table(&gens)
            };
            print!("{text}");
            Ok(0)
        }
        "rollback" => {
            let root = open_root(&o.root)?;
            let profile = Profile::system(&root);
            let (from, to) = profile.rollback().map_err(|e| e.to_string())?;
            println!(
                "{}: generation {from} -> {to}",
                root.host_path(&profile.path()).display()
            );
            Ok(0)
        }
        _ => Err(format!("usage: unknown boot command {cmd:?}")),
    }
}

/// The table `stagehand generations` prints, oldest first like `nix-env --list-generations`.
pub fn generations_table(gens: &[GenerationInfo]) -> String {
    let mut out = String::from("GEN   DATE        KERNEL      LABEL\n");
    for g in gens {
        let label = match &g.spec {
            Ok(s) => s.label.clone(),
            Err(e) => format!("(unreadable: {e})"),
        };
        let mut marks = Vec::new();
        if g.current {
            marks.push("current");
        }
        if g.booted {
            marks.push("booted");
        }
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!("  ({})", marks.join(", "))
        };
        out.push_str(&format!(
            "{:<5} {}  {:<10}  {label}{marks}\n",
            g.number,
            date::date(g.created),
            g.kernel_version.as_deref().unwrap_or("?"),
        ));
    }
    out
}

/// The same as JSON, one object per generation, for scripts and tests.
pub fn generations_json(gens: &[GenerationInfo]) -> String {
    let items: Vec<serde_json::Value> = gens
        .iter()
        .map(|g| {
            serde_json::json!({
                "generation": g.number,
                "date": date::date(g.created),
                "created": g.created,
                "toplevel": g.toplevel.to_string_lossy(),
                "label": g.spec.as_ref().ok().map(|s| s.label.clone()),
                "error": g.spec.as_ref().err(),
                "kernel": g.kernel_version,
                "current": g.current,
                "booted": g.booted,
            })
        })
        .collect();
    let mut s = serde_json::Value::Array(items).to_string();
    s.push('\n');
    s
}
