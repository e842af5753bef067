//! `stagehand`: the activation engine's command line.
//!
//! ```text
//! stagehand etc      [--root DIR] [--dry-run] ETC_TREE
//! stagehand users    [--root DIR] [--dry-run] USERS_JSON
//! stagehand activate [--root DIR] [--dry-run] [--action boot|switch|test|dry-activate] TOPLEVEL
//! stagehand compile  [--root DIR] TOPLEVEL
//! stagehand plan     [--root DIR] TOPLEVEL      (print the compiled plan as JSON)
//! stagehand generations | rollback | install-bootloader | bless   (see `boot::cli::USAGE`)
//! stagehand switch-to-configuration [--root DIR] switch|boot|test|dry-activate|check TOPLEVEL
//! <toplevel>/bin/switch-to-configuration ACTION    (this binary, started under that name)
//! ```
//! Every path argument is a path as the target system sees it, resolved inside `--root`
//! (default `/`).

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use log::{Level, LevelFilter, Log, Metadata, Record};

mod activation_cmds;
mod boot_cmds;
mod switch_cmds;

use switch_cmds as switch_cli;

/// A plain stderr logger: this binary also runs as a normal command, where kmsg is wrong.
struct StderrLogger(LevelFilter);

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            let prefix = match r.level() {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                _ => "",
            };
            // Nowhere left to report a broken stderr to.
            let _ = writeln!(std::io::stderr(), "{prefix}{}", r.args());
        }
    }
    fn flush(&self) {}
}

struct Args {
    root: PathBuf,
    dry_run: bool,
    action: Option<String>,
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        root: PathBuf::from("/"),
        dry_run: false,
        action: None,
        positional: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--root" => {
                a.root = PathBuf::from(it.next().ok_or("--root needs a directory")?);
            }
            "--dry-run" => a.dry_run = true,
            "--action" => a.action = Some(it.next().ok_or("--action needs a value")?.clone()),
            "-v" | "--verbose" => log::set_max_level(LevelFilter::Debug),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => a.positional.push(arg.clone()),
        }
    }
    Ok(a)
}

const USAGE: &str = "usage:
  stagehand etc      [--root DIR] [--dry-run] ETC_TREE
  stagehand users    [--root DIR] [--dry-run] USERS_JSON
  stagehand activate [--root DIR] [--dry-run] [--action boot|switch|test|dry-activate] TOPLEVEL
  stagehand compile  [--root DIR] TOPLEVEL
  stagehand plan     [--root DIR] TOPLEVEL
  stagehand generations | rollback | install-bootloader | bless  (stagehand bless --help)
  stagehand switch-to-configuration [--root DIR] switch|boot|test|dry-activate|check TOPLEVEL";

fn main() -> ExitCode {
    static LOGGER: StderrLogger = StderrLogger(LevelFilter::Debug);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let argv: Vec<String> = args.collect();
    // Multi-call: `<toplevel>/bin/switch-to-configuration` is a link to this binary.
    if Path::new(&argv0).file_name() == Some(OsStr::new(switch_cli::NAME)) {
        return ExitCode::from(switch_cli::multicall(&argv0, &argv));
    }
    let Some((cmd, rest)) = argv.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    // Generations and boot-loader commands parse their own options.
    if matches!(
        cmd.as_str(),
        "generations" | "rollback" | "install-bootloader" | "boot-entries" | "bless"
    ) {
        return match boot_cmds::run(cmd, rest) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("stagehand {cmd}: {e}");
                if e.starts_with("usage") {
                    eprintln!("{}", boot_cmds::USAGE);
                    return ExitCode::from(2);
                }
                ExitCode::from(1)
            }
        };
    }
    if cmd == switch_cli::NAME {
        return ExitCode::from(switch_cli::subcommand(rest));
    }
    // The hidden benchmark takes its own options.
    if cmd == "bench" {
        return match stagehand_activation::bench::run(rest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("stagehand bench: {e}");
                ExitCode::from(1)
            }
        };
    }
    let args = match parse(rest) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stagehand: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match activation_cmds::run(
        cmd,
        &args.root,
        args.dry_run,
        args.action.as_deref(),
        &args.positional,
    ) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("stagehand {cmd}: {e}");
            if e.starts_with("usage") {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
            ExitCode::from(1)
        }
    }
}
