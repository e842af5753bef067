//! The boot subcommands of `stagehand`. The binary hands us its arguments after the command
//! name; every path option names a path as the target system sees it, inside `--root`.

use std::path::{Path, PathBuf};

use crate::rootfs::Root;

use super::date;
use super::esp::{self, BootFs, Statvfs};
use super::gather::{self, Inputs};
use super::plan::FilePlan;
use super::profile::{self, GenerationInfo, Profile};
use super::sdboot::{self, SdBootConfig};

pub const USAGE: &str = "usage:
  stagehand generations        [--root DIR] [--json]
  stagehand rollback           [--root DIR]
  stagehand install-bootloader [--root DIR] [--esp DIR] [--loader systemd-boot|extlinux]
                               [--timeout SECS] [--limit N] [--tries N | --no-counting]
                               [--editor] [--console-mode MODE] [--dry-run] [TOPLEVEL]
  stagehand boot-entries       (same as install-bootloader)
  stagehand bless              [--root DIR] [--esp DIR] [--efivars DIR] [--dry-run]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loader {
    SystemdBoot,
    Extlinux,
}

/// Options of the boot subcommands (each uses the ones that apply to it).
#[derive(Debug, Clone)]
struct Opts {
    root: PathBuf,
    esp: Option<PathBuf>,
    efivars: PathBuf,
    loader: Loader,
    json: bool,
    dry_run: bool,
    sd: SdBootConfig,
    positional: Vec<String>,
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("usage: {name} wants a non-negative number, not {v:?}"))
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        root: PathBuf::from("/"),
        esp: None,
        efivars: PathBuf::from(super::efivars::EFIVARS_DIR),
        loader: Loader::SystemdBoot,
        json: false,
        dry_run: false,
        sd: SdBootConfig::default(),
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
            "--esp" | "--boot" => o.esp = Some(PathBuf::from(value("--esp")?)),
            "--efivars" => o.efivars = PathBuf::from(value("--efivars")?),
            "--loader" => {
                o.loader = match value("--loader")?.as_str() {
                    "systemd-boot" => Loader::SystemdBoot,
                    "extlinux" => Loader::Extlinux,
                    other => {
                        return Err(format!(
                            "usage: --loader is systemd-boot or extlinux, not {other:?}"
                        ))
                    }
                }
            }
            "--timeout" => o.sd.timeout = Some(number("--timeout", &value("--timeout")?)?),
            "--limit" => o.sd.configuration_limit = Some(number("--limit", &value("--limit")?)?),
            "--tries" => {
                let n: u32 = number("--tries", &value("--tries")?)?;
                // Zero tries would write entries that are bad from the start.
                if n == 0 {
                    return Err("usage: --tries must be at least 1 (or --no-counting)".into());
                }
                o.sd.tries = Some(n);
            }
            "--no-counting" => o.sd.tries = None,
            "--editor" => o.sd.editor = true,
            "--console-mode" => o.sd.console_mode = Some(value("--console-mode")?),
            "--json" => o.json = true,
            "--dry-run" => o.dry_run = true,
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
        "install-bootloader" | "boot-entries" => install(&o),
        "bless" => {
            let root = open_root(&o.root)?;
            let esp_path = o.esp.clone().unwrap_or_else(|| PathBuf::from("/boot"));
            let fs = BootFs::open(&root, &esp_path).map_err(|e| e.to_string())?;
            let d = super::bless::bless(&root, &fs, &o.efivars, o.dry_run)
                .map_err(|e| e.to_string())?;
            let verb = if o.dry_run { "would rename" } else { "renamed" };
            match d {
                super::bless::Decision::Rename { dir, from, to } => {
                    println!("boot entry marked good: {verb} {dir}/{from} -> {dir}/{to}")
                }
                super::bless::Decision::AlreadyGood { file } => {
                    println!("boot entry {file} is already good")
                }
                super::bless::Decision::Nothing(why) => println!("nothing to bless: {why}"),
            }
            Ok(0)
        }
        _ => Err(format!("usage: unknown boot command {cmd:?}")),
    }
}

/// The generation `toplevel` (any path resolving to one) belongs to, else the current one.
fn default_generation(
    root: &Root,
    inputs: &Inputs,
    toplevel: Option<&String>,
) -> Result<u64, String> {
    let Some(t) = toplevel else {
        return inputs.current.ok_or_else(|| {
            "the system profile points at no generation; pass the TOPLEVEL to make default"
                .to_string()
        });
    };
    let canon = root
        .canonicalize(Path::new(t))
        .map_err(|e| format!("cannot resolve {t}: {e}"))?;
    inputs
        .generations
        .iter()
        .find(|g| g.spec.toplevel == canon)
        .map(|g| g.number)
        .ok_or_else(|| {
            format!(
                "{t} is not a generation of the system profile; add it first \
                 (nix-env -p /nix/var/nix/profiles/system --set {t})"
            )
        })
}

fn install(o: &Opts) -> Result<u8, String> {
    let root = open_root(&o.root)?;
    let profile = Profile::system(&root);
    let inputs = gather::gather(&root, &profile).map_err(|e| e.to_string())?;
    let default = default_generation(&root, &inputs, o.positional.first())?;
    let esp_path = o.esp.clone().unwrap_or_else(|| PathBuf::from("/boot"));
    let fs = BootFs::open(&root, &esp_path).map_err(|e| e.to_string())?;
    let plan: FilePlan = match o.loader {
        Loader::SystemdBoot => {
            let state = sdboot::scan(&fs).map_err(|e| e.to_string())?;
            let (plan, planned) =
                sdboot::plan(&inputs, default, &o.sd, &state).map_err(|e| e.to_string())?;
            if o.dry_run {
                println!("menu (what systemd-boot will show, first = default):");
                for item in sdboot::menu(&planned) {
                    println!("  {}", item.name.file_name());
                }
            }
            plan
        }
        Loader::Extlinux => {
            let cfg = super::extlinux::ExtlinuxConfig {
                timeout: o.sd.timeout,
                configuration_limit: o.sd.configuration_limit,
                ..super::extlinux::ExtlinuxConfig::default()
            };
            let state = super::extlinux::scan(&fs).map_err(|e| e.to_string())?;
            super::extlinux::plan(&inputs, default, &cfg, &state).map_err(|e| e.to_string())?
        }
    };
    for w in &plan.warnings {
        log::warn!("{w}");
    }
    if o.dry_run {
        print!("{}", plan.describe());
        return Ok(0);
    }
    let done = esp::apply(&fs, &root, &plan, &Statvfs).map_err(|e| e.to_string())?;
    log::info!(
        "boot loader entries installed in {}: default generation {default}, {} bytes written, \
         {} were free",
        fs.host().display(),
        done.needed,
        done.available
    );
    Ok(0)
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
