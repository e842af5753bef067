//! `stagehand`: the activation engine, the generations and boot-loader commands and
//! `switch-to-configuration`, as one host command. This file holds the argument structs
//! (clap derive) and the dispatch; the commands themselves are in the `*_cmds` modules.
//! `stagehand --help` lists the commands, `stagehand COMMAND --help` their options.
//!
//! Started under the name `switch-to-configuration` (as `<toplevel>/bin/switch-to-configuration
//! ACTION`, a link to this binary), it behaves as NixOS's program of that name: see
//! [`switch_cmds::multicall`].

use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use log::{Level, LevelFilter, Log, Metadata, Record};

mod activation_cmds;
mod boot_cmds;
mod switch_cmds;

/// The exit statuses of every command but `switch-to-configuration` (a macro so that
/// `concat!` can use it too).
macro_rules! exit_status {
    () => {
        "Exit status:
  0  success
  1  the operation failed (the message says what and where)
  2  usage error: unknown option, missing or stray argument, bad value"
    };
}
const EXIT_STATUS: &str = exit_status!();

#[derive(Debug, Parser)]
#[command(
    name = "stagehand",
    version,
    about = "Activation, generations, boot-loader entries and switch-to-configuration for \
             NixOS-style systems",
    long_about = None,
    after_help = concat!(
        "Every path argument is a path as the target system sees it, resolved inside --root \
         (default /).\n\n",
        exit_status!(),
        "\nswitch-to-configuration exits as NixOS's does \
         (see `stagehand switch-to-configuration --help`)."
    ),
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    /// Log debug messages too
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set up /etc from a generation's etc tree (setup-etc.pl semantics)
    #[command(after_help = EXIT_STATUS)]
    Etc(EtcArgs),
    /// Create and update users and groups from update-users-groups.pl's (or userborn's) JSON
    #[command(after_help = EXIT_STATUS)]
    Users(UsersArgs),
    /// Activate a generation: etc, users and snippets, as TOPLEVEL/activate would
    #[command(after_help = EXIT_STATUS)]
    Activate(ActivateArgs),
    /// Compile TOPLEVEL/activation.json into TOPLEVEL/activation.plan
    #[command(after_help = EXIT_STATUS)]
    Compile(ToplevelArgs),
    /// Print TOPLEVEL's compiled activation plan as JSON, for diffs
    #[command(after_help = EXIT_STATUS)]
    Plan(ToplevelArgs),
    /// List the system profile's generations, with their boot entries
    #[command(after_help = EXIT_STATUS)]
    Generations(GenerationsArgs),
    /// Point the system profile at the generation before the current one
    #[command(after_help = EXIT_STATUS)]
    Rollback(RollbackArgs),
    /// Write the boot-loader entries (systemd-boot or extlinux) for the system profile
    #[command(visible_alias = "boot-entries", after_help = EXIT_STATUS)]
    InstallBootloader(InstallArgs),
    /// Mark the boot entry this boot was counted on as good (boot counting)
    #[command(after_help = EXIT_STATUS)]
    Bless(BlessArgs),
    /// Switch to a generation, as NixOS's TOPLEVEL/bin/switch-to-configuration does
    #[command(name = "switch-to-configuration", after_help = switch_cmds::EXIT_STATUS)]
    SwitchToConfiguration(SwitchArgs),
    /// Time the etc and users steps on generated inputs (prints numbers; not a test)
    #[command(hide = true)]
    Bench(BenchArgs),
}

impl Command {
    /// The name errors are prefixed with: `stagehand NAME: …`.
    fn name(&self) -> &'static str {
        match self {
            Command::Etc(_) => "etc",
            Command::Users(_) => "users",
            Command::Activate(_) => "activate",
            Command::Compile(_) => "compile",
            Command::Plan(_) => "plan",
            Command::Generations(_) => "generations",
            Command::Rollback(_) => "rollback",
            Command::InstallBootloader(_) => "install-bootloader",
            Command::Bless(_) => "bless",
            Command::SwitchToConfiguration(_) => switch_cmds::NAME,
            Command::Bench(_) => "bench",
        }
    }
}

/// `--root DIR`: the target system's root directory.
#[derive(Debug, Args)]
struct RootArg {
    /// The target system's root directory; path arguments are resolved inside it
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
}

#[derive(Debug, Args)]
struct EtcArgs {
    #[command(flatten)]
    root: RootArg,
    /// Log what would change, change nothing
    #[arg(long)]
    dry_run: bool,
    /// The generation's etc tree (TOPLEVEL/etc)
    #[arg(value_name = "ETC_TREE")]
    tree: PathBuf,
}

#[derive(Debug, Args)]
struct UsersArgs {
    #[command(flatten)]
    root: RootArg,
    /// Log what would change, change nothing
    #[arg(long)]
    dry_run: bool,
    /// The users and groups spec (update-users-groups.pl's JSON)
    #[arg(value_name = "USERS_JSON")]
    spec: PathBuf,
}

/// The actions `activate` knows (`NIXOS_ACTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ActivateAction {
    Boot,
    Switch,
    Test,
    DryActivate,
}

#[derive(Debug, Args)]
struct ActivateArgs {
    #[command(flatten)]
    root: RootArg,
    /// Log what would change, change nothing
    #[arg(long)]
    dry_run: bool,
    /// What the activation is for [default: $NIXOS_ACTION, else switch]
    #[arg(long, value_enum)]
    action: Option<ActivateAction>,
    /// The generation to activate
    #[arg(value_name = "TOPLEVEL")]
    toplevel: PathBuf,
}

#[derive(Debug, Args)]
struct ToplevelArgs {
    #[command(flatten)]
    root: RootArg,
    /// The generation (its activation.json, its activation.plan)
    #[arg(value_name = "TOPLEVEL")]
    toplevel: PathBuf,
}

/// `--esp DIR` (also spelled `--boot`).
#[derive(Debug, Args)]
struct EspArg {
    /// The EFI system partition's mount point (or the extlinux /boot)
    #[arg(long, alias = "boot", value_name = "DIR", default_value = stagehand_boot::install::DEFAULT_ESP)]
    esp: PathBuf,
}

/// `--efivars DIR`.
#[derive(Debug, Args)]
struct EfivarsArg {
    /// Where the EFI variables are read (and written)
    #[arg(long, value_name = "DIR", default_value = stagehand_boot::efivars::EFIVARS_DIR)]
    efivars: PathBuf,
}

#[derive(Debug, Args)]
struct GenerationsArgs {
    #[command(flatten)]
    root: RootArg,
    #[command(flatten)]
    esp: EspArg,
    /// One JSON array of generations instead of the table
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RollbackArgs {
    #[command(flatten)]
    root: RootArg,
    /// Print the generation it would switch the profile to, change nothing
    #[arg(long)]
    dry_run: bool,
}

/// `--loader`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LoaderArg {
    SystemdBoot,
    Extlinux,
}

#[derive(Debug, Args)]
struct InstallArgs {
    #[command(flatten)]
    root: RootArg,
    #[command(flatten)]
    esp: EspArg,
    #[command(flatten)]
    efivars: EfivarsArg,
    /// Which boot loader's entries to write
    #[arg(long, value_enum, default_value = "systemd-boot")]
    loader: LoaderArg,
    /// Menu timeout in seconds [default: 5]
    #[arg(long, value_name = "SECS")]
    timeout: Option<u32>,
    /// Keep entries for at most N generations (the default one is always kept)
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Boot counting: tries a new entry gets [default: 3]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    tries: Option<u32>,
    /// No boot counting for new entries
    #[arg(long, conflicts_with = "tries")]
    no_counting: bool,
    /// Allow editing the kernel command line in the systemd-boot menu
    #[arg(long)]
    editor: bool,
    /// systemd-boot's console-mode (keep, auto, max or a number)
    #[arg(long, value_name = "MODE")]
    console_mode: Option<String>,
    /// Stagehand's initrd (stagehand-initrd build -o FILE): booted by every generation whose
    /// kernel its modules match; copied to the boot partition under a name from its content
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Print the plan (entries to write and remove, menu order), change nothing
    #[arg(long)]
    dry_run: bool,
    /// The generation to boot by default [default: the one the system profile points at]
    #[arg(value_name = "TOPLEVEL")]
    default: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct BlessArgs {
    #[command(flatten)]
    root: RootArg,
    #[command(flatten)]
    esp: EspArg,
    #[command(flatten)]
    efivars: EfivarsArg,
    /// Print the rename it would do, change nothing
    #[arg(long)]
    dry_run: bool,
}

/// The actions of `switch-to-configuration` (NixOS's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SwitchActionArg {
    /// Make the configuration the boot default and activate it now
    Switch,
    /// Make the configuration the boot default
    Boot,
    /// Activate the configuration, but don't make it the boot default
    Test,
    /// Show what would be done if this configuration were activated
    DryActivate,
    /// Run the pre-switch checks and exit
    Check,
}

#[derive(Debug, Args)]
struct SwitchArgs {
    #[command(flatten)]
    root: RootArg,
    /// What to do with the generation
    #[arg(value_enum, value_name = "ACTION")]
    action: SwitchActionArg,
    /// The generation to switch to
    #[arg(value_name = "TOPLEVEL")]
    toplevel: PathBuf,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Repetitions per size
    #[arg(long, value_name = "N", default_value_t = 5)]
    reps: usize,
    /// Where the scratch roots go [default: $TMPDIR]; with --activate, repeat it to measure
    /// on several file systems (e.g. tmpfs and a disk)
    #[arg(long, value_name = "DIR")]
    dir: Vec<String>,
    /// Time whole activations (in process and as `stagehand activate` processes), medians
    #[arg(long)]
    activate: bool,
    /// With --activate: also time this other stagehand binary, side by side
    #[arg(long, value_name = "BIN", requires = "activate")]
    before: Option<String>,
    /// One sample for --activate's driver (internal)
    #[arg(long, value_name = "DIR", hide = true)]
    sample: Option<String>,
    /// The whole-process floor for --activate's driver (internal)
    #[arg(long, value_name = "ROOT", hide = true)]
    floor: Option<String>,
    /// Only write the generated inputs into DIR and print their paths
    #[arg(long, value_name = "DIR")]
    prepare: Option<String>,
    /// With --prepare: the stress size instead of the typical one
    #[arg(long, requires = "prepare")]
    stress: bool,
}

/// A mistake in what the command was given that clap cannot see (an environment variable):
/// exits 2 like clap's own usage errors.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

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
            // One write per line: stderr is unbuffered, and `writeln!` straight to it makes
            // a system call per formatted piece (8 per activation step line), which a
            // no-change activation's dozen lines felt.
            let line = format!("{prefix}{}\n", r.args());
            // Nowhere left to report a broken stderr to.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
    fn flush(&self) {}
}

/// Write a command's output to stdout. A reader that stopped early (`stagehand generations
/// | head`) is not an error; any other write error is.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
        Ok(()) => Ok(()),
    }
}

/// Run one parsed command; `Ok` is the exit status (1 when the command did its work but
/// some of it failed, as `etc` and `users` report), `Err` an operation that failed.
fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Etc(a) => activation_cmds::etc(&a),
        Command::Users(a) => activation_cmds::users(&a),
        Command::Activate(a) => activation_cmds::activate(&a),
        Command::Compile(a) => activation_cmds::compile(&a),
        Command::Plan(a) => activation_cmds::plan(&a),
        Command::Bench(a) => activation_cmds::bench(&a),
        Command::Generations(a) => boot_cmds::generations(&a),
        Command::Rollback(a) => boot_cmds::rollback(&a),
        Command::InstallBootloader(a) => boot_cmds::install(&a),
        Command::Bless(a) => boot_cmds::bless(&a),
        Command::SwitchToConfiguration(a) => Ok(switch_cmds::subcommand(&a)),
    }
}

/// Whether the command line names `switch-to-configuration` as the command: its usage
/// errors exit 1 as NixOS's do (2 means "activation failed" there).
fn names_switch(args: &[std::ffi::OsString]) -> bool {
    args.iter()
        .skip(1)
        .find(|a| !a.to_string_lossy().starts_with('-'))
        .is_some_and(|a| a == switch_cmds::NAME)
}

fn main() -> ExitCode {
    static LOGGER: StderrLogger = StderrLogger(LevelFilter::Debug);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv0 = args.first().map(PathBuf::from).unwrap_or_default();
    // Multi-call: `<toplevel>/bin/switch-to-configuration` is a link to this binary.
    if argv0.file_name() == Some(OsStr::new(switch_cmds::NAME)) {
        return ExitCode::from(switch_cmds::multicall(&argv0, &args[1..]));
    }
    let cli = match Cli::command()
        .try_get_matches_from(&args)
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with status 0; mistakes to stderr with 2.
            let _ = e.print();
            let code = match e.exit_code() {
                0 => 0,
                _ if names_switch(&args) => stagehand_switch::exit::FAILED,
                c => u8::try_from(c).unwrap_or(2),
            };
            return ExitCode::from(code);
        }
    };
    if cli.verbose {
        log::set_max_level(LevelFilter::Debug);
    }
    let name = cli.command.name();
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("stagehand {name}: {e:#}");
            ExitCode::from(if e.is::<UsageError>() { 2 } else { 1 })
        }
    }
}
