//! `stagehand-initrd`: build an initrd from a JSON spec, list what one contains, or append
//! secrets to one. The argument structs (clap derive) and one function per command;
//! `stagehand-initrd --help` and `stagehand-initrd COMMAND --help` say the rest.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use stagehand_initrd::objects::StoreObject;
use stagehand_initrd::output;
use stagehand_initrd::{build_with, cpio, list, system, FullSpec, Secret};

const EXIT_STATUS: &str = "\
Exit status:
  0  success
  1  the operation failed (the message names the file or key, and the output is not written)
  2  usage error: unknown option, missing or stray argument, bad value";

#[derive(Debug, Parser)]
#[command(
    name = "stagehand-initrd",
    version,
    about = "Build a reproducible initrd for stagehand's stage 1, list one, or append secrets",
    after_help = EXIT_STATUS,
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an initrd from a spec (see initrd/README.md for its keys), or for an unmodified
    /// NixOS generation (--system)
    #[command(after_help = EXIT_STATUS)]
    Build(BuildArgs),
    /// Decompress an initrd (gzip, zstd or xz, by magic) and list its cpio entries
    #[command(after_help = EXIT_STATUS)]
    List(ListArgs),
    /// Append a gzip'ed cpio holding each SOURCE at /.initrd-secrets/DEST
    #[command(after_help = EXIT_STATUS)]
    AppendSecrets(AppendSecretsArgs),
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// The spec: an InitrdSpec as JSON, plus the SpecExtras keys
    #[arg(
        long,
        value_name = "SPEC.json",
        required_unless_present = "system",
        conflicts_with = "system"
    )]
    spec: Option<PathBuf>,
    /// Build for an unmodified NixOS generation instead of a spec: filesystems from its
    /// etc/fstab, modules and firmware from its kernel-modules and firmware
    #[arg(long, value_name = "TOPLEVEL")]
    system: Option<PathBuf>,
    /// With --system: the directory the generation lives under; TOPLEVEL and every
    /// symlink in it are resolved inside it
    #[arg(long, value_name = "DIR", default_value = "/", conflicts_with = "spec")]
    root: PathBuf,
    /// With --system: further modules to load (comma-separated, may be repeated)
    #[arg(
        long,
        value_name = "A,B,C",
        value_delimiter = ',',
        conflicts_with = "spec"
    )]
    modules: Vec<String>,
    /// With --system: modules to carry and try, whose absence or failure to load does not
    /// stop the boot (NixOS's boot.initrd.availableKernelModules)
    #[arg(
        long,
        value_name = "A,B,C",
        value_delimiter = ',',
        conflicts_with = "spec"
    )]
    optional_modules: Vec<String>,
    /// With --system: the generic set of disk-controller and keyboard drivers (those in
    /// the kernel's tree; see initrd/README.md)
    #[arg(long, conflicts_with = "spec")]
    generic: bool,
    /// With --system: the drivers this host's boot disks use, read from /sys
    #[arg(long, conflicts_with = "spec")]
    host_only: bool,
    /// With --system: stage-1 options as the spec's `stage1_options` JSON object (LUKS
    /// devices, LVM, fsck, resume), which a NixOS toplevel does not hold
    #[arg(long, value_name = "FILE.json", conflicts_with = "spec")]
    stage1_options: Option<PathBuf>,
    /// The stage-1 binary (/init); with --system the default is `stage1` next to this
    /// executable; with --spec it replaces the spec's
    #[arg(long, value_name = "PATH")]
    stage1: Option<PathBuf>,
    /// Our stage-2 binary, put at /stagehand/stage2; with --system the default is `stage2`
    /// next to this executable; with --spec it replaces the spec's
    #[arg(long, value_name = "PATH")]
    stage2: Option<PathBuf>,
    /// Where the initrd goes (written whole or not at all)
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: PathBuf,
    /// A make-initrd-ng list, [{"source": …, "target": …}, …], added to the spec's contents
    /// (may be given more than once)
    #[arg(long, value_name = "LIST.json")]
    contents: Vec<PathBuf>,
    /// Print the size of every file, largest first
    #[arg(long)]
    report: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// The initrd to list
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, Args)]
struct AppendSecretsArgs {
    /// The initrd to extend (it must be one this tool can read)
    #[arg(value_name = "INITRD")]
    initrd: PathBuf,
    /// A secret: its path at boot, `=`, the file to copy now
    #[arg(value_name = "DEST=SOURCE", value_parser = parse_secret)]
    secrets: Vec<Secret>,
}

/// `DEST=SOURCE` → [`Secret`].
fn parse_secret(pair: &str) -> Result<Secret, String> {
    let (dest, source) = pair
        .split_once('=')
        .ok_or_else(|| format!("{pair:?} is not DEST=SOURCE"))?;
    Ok(Secret {
        dest: dest.to_owned(),
        source: PathBuf::from(source),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Build(a) => build(a),
        Command::List(a) => list_cmd(a),
        Command::AppendSecrets(a) => append_secrets(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stagehand-initrd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The spec at `path` with every `--contents` list added to its contents.
fn read_spec(path: &Path, content_lists: &[PathBuf]) -> Result<FullSpec> {
    let text = stagehand_initrd::input::read_regular_text(path)
        .with_context(|| path.display().to_string())?;
    let mut spec: FullSpec = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid initrd spec", path.display()))?;
    spec.extras.contents.extend(read_contents(content_lists)?);
    Ok(spec)
}

/// The objects of every `--contents` list, in order.
fn read_contents(content_lists: &[PathBuf]) -> Result<Vec<StoreObject>> {
    let mut all = Vec::new();
    for list_path in content_lists {
        let text = stagehand_initrd::input::read_regular_text(list_path)
            .with_context(|| list_path.display().to_string())?;
        let objects: Vec<StoreObject> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a make-initrd-ng list of {{source, target}}",
                list_path.display()
            )
        })?;
        all.extend(objects);
    }
    Ok(all)
}

fn build(a: &BuildArgs) -> Result<()> {
    let (mut spec, choice) = match (&a.spec, &a.system) {
        (Some(path), _) => (read_spec(path, &a.contents)?, None),
        (None, Some(toplevel)) => {
            let sys = system_spec(a, toplevel)?;
            let mut spec = sys.spec;
            spec.extras.contents.extend(read_contents(&a.contents)?);
            (spec, Some(sys.choice))
        }
        (None, None) => bail!("give --spec SPEC.json or --system TOPLEVEL"),
    };
    if let Some(s) = &a.stage1 {
        spec.spec.stage1 = s.clone();
    }
    if let Some(s) = &a.stage2 {
        spec.extras.stage2 = Some(s.clone());
    }
    let initrd = build_with(&spec.spec, &spec.extras)?;
    output::write_initrd(&a.output, &initrd.bytes, output::PLAIN_MODE)?;
    let chosen = choice.map(|c| {
        let loaded: Vec<String> = initrd
            .config
            .modules
            .iter()
            .map(|m| {
                if m.optional {
                    format!("{}?", m.name)
                } else {
                    m.name.clone()
                }
            })
            .collect();
        format!(
            "{c}loaded at boot, in order (? = optional): {}\n",
            loaded.join(" ")
        )
    });
    if a.report {
        print!("{}", chosen.unwrap_or_default());
        print!("{}", initrd.report);
    } else {
        eprint!("{}", chosen.unwrap_or_default());
        for w in &initrd.report.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(())
}

/// The spec for `--system TOPLEVEL`, with stage 1 and stage 2 defaulting to the binaries
/// next to this executable.
fn system_spec(a: &BuildArgs, toplevel: &Path) -> Result<system::SystemSpec> {
    let binary = |given: &Option<PathBuf>, name: &str, flag: &str| -> Result<PathBuf> {
        if let Some(p) = given {
            return Ok(p.clone());
        }
        system::next_to_executable(name).with_context(|| {
            let dir = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_owned))
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "?".into());
            format!(
                "no {name} binary: give {flag} PATH (the default is `{name}` next to \
                 stagehand-initrd, in {dir})"
            )
        })
    };
    let options = system::SystemOptions {
        stage1: binary(&a.stage1, "stage1", "--stage1")?,
        stage2: binary(&a.stage2, "stage2", "--stage2")?,
        modules: a
            .modules
            .iter()
            .filter(|m| !m.is_empty())
            .cloned()
            .collect(),
        optional_modules: a
            .optional_modules
            .iter()
            .filter(|m| !m.is_empty())
            .cloned()
            .collect(),
        generic: a.generic,
        host_only: if a.host_only {
            Some(system::HostOnly::running()?)
        } else {
            None
        },
        stage1_options: match &a.stage1_options {
            None => Default::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not valid stage-1 options", path.display()))?
            }
        },
    };
    Ok(system::spec_from_system(&a.root, toplevel, &options)?)
}

fn append_secrets(a: &AppendSecretsArgs) -> Result<()> {
    let appended = stagehand_initrd::secrets_archive(&a.secrets)?;
    let initrd = &a.initrd;
    let mut bytes = stagehand_initrd::input::read_regular(initrd)
        .with_context(|| initrd.display().to_string())?;
    // Appending to something that is not an initrd would hide the problem until boot.
    if let Err(e) = list(&bytes) {
        bail!(
            "{}: not an initrd ({e}); append-secrets only extends an initrd it can read",
            initrd.display()
        );
    }
    bytes.extend_from_slice(&appended);
    output::write_initrd(initrd, &bytes, output::SECRETS_MODE)?;
    Ok(())
}

fn list_cmd(a: &ListArgs) -> Result<()> {
    let file = &a.file;
    let bytes =
        stagehand_initrd::input::read_regular(file).with_context(|| file.display().to_string())?;
    let entries = list(&bytes).with_context(|| file.display().to_string())?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = entries
        .iter()
        .try_for_each(|e| writeln!(out, "{}", list_line(e)))
        .and_then(|()| out.flush());
    match written {
        // `list FILE | head` closed the pipe: what was wanted has been read.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the listing"),
    }
}

/// One entry as `list` prints it: type and mode, size, path, link target or device.
fn list_line(e: &cpio::ReadEntry) -> String {
    let kind = match e.mode & cpio::S_IFMT {
        cpio::S_IFDIR => 'd',
        cpio::S_IFLNK => 'l',
        cpio::S_IFCHR => 'c',
        cpio::S_IFREG => '-',
        _ => '?',
    };
    let extra = match kind {
        'l' => format!(" -> {}", String::from_utf8_lossy(&e.data)),
        'c' => format!(" ({},{})", e.rdevmajor, e.rdevminor),
        _ => String::new(),
    };
    format!(
        "{kind}{:04o} {:>10} /{}{extra}",
        e.mode & 0o7777,
        e.data.len(),
        e.name
    )
}
