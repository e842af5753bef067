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
use stagehand_initrd::{build_with, cpio, list, FullSpec, Secret};

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
    /// Build an initrd from a spec (see initrd/README.md for its keys)
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
    #[arg(long, value_name = "SPEC.json")]
    spec: PathBuf,
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
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut spec: FullSpec = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid initrd spec", path.display()))?;
    for list_path in content_lists {
        let text =
            std::fs::read_to_string(list_path).with_context(|| list_path.display().to_string())?;
        let objects: Vec<StoreObject> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a make-initrd-ng list of {{source, target}}",
                list_path.display()
            )
        })?;
        spec.extras.contents.extend(objects);
    }
    Ok(spec)
}

fn build(a: &BuildArgs) -> Result<()> {
    let spec = read_spec(&a.spec, &a.contents)?;
    let initrd = build_with(&spec.spec, &spec.extras)?;
    output::write_initrd(&a.output, &initrd.bytes, output::PLAIN_MODE)?;
    if a.report {
        print!("{}", initrd.report);
    } else {
        for w in &initrd.report.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(())
}

fn append_secrets(a: &AppendSecretsArgs) -> Result<()> {
    let appended = stagehand_initrd::secrets_archive(&a.secrets)?;
    let initrd = &a.initrd;
    let mut bytes = std::fs::read(initrd).with_context(|| initrd.display().to_string())?;
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
    let bytes = std::fs::read(file).with_context(|| file.display().to_string())?;
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
