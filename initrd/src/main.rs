//! `stagehand-initrd`: build an initrd from a JSON spec, or list what one contains.
//!
//! ```text
//! stagehand-initrd build --spec SPEC.json -o OUT [--report]
//! stagehand-initrd list FILE
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use stagehand_initrd::{build_with, cpio, list, FullSpec};

const USAGE: &str = "usage:
  stagehand-initrd build --spec SPEC.json -o OUT [--contents LIST.json]... [--report]
      SPEC.json is an InitrdSpec as JSON (plus SpecExtras keys); LIST.json is a
      make-initrd-ng input list ([{source, target}, ...]) added to `contents`;
      --report prints the size of every file, largest first
  stagehand-initrd append-secrets INITRD DEST=SOURCE...
      append a gzip'ed cpio holding each SOURCE at /.initrd-secrets/DEST
  stagehand-initrd list FILE
      decompress (gzip/zstd/xz by magic) and list the cpio entries";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("stagehand-initrd: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("build") => cmd_build(&args[1..]),
        Some("list") => cmd_list(&args[1..]),
        Some("append-secrets") => cmd_append_secrets(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.to_owned()),
    }
}

fn cmd_build(args: &[String]) -> Result<(), String> {
    let mut spec_path: Option<PathBuf> = None;
    let mut out: Option<PathBuf> = None;
    let mut report = false;
    let mut content_lists: Vec<PathBuf> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--spec" => spec_path = it.next().map(PathBuf::from),
            "-o" | "--output" => out = it.next().map(PathBuf::from),
            "--report" => report = true,
            "--contents" => content_lists.extend(it.next().map(PathBuf::from)),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let (Some(spec_path), Some(out)) = (spec_path, out) else {
        return Err(format!("build needs --spec and -o\n{USAGE}"));
    };
    let text =
        std::fs::read_to_string(&spec_path).map_err(|e| format!("{}: {e}", spec_path.display()))?;
    let spec: FullSpec = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a valid initrd spec: {e}", spec_path.display()))?;
    let mut spec = spec;
    for list_path in content_lists {
        let text = std::fs::read_to_string(&list_path)
            .map_err(|e| format!("{}: {e}", list_path.display()))?;
        let objects: Vec<stagehand_initrd::objects::StoreObject> = serde_json::from_str(&text)
            .map_err(|e| {
                format!(
                    "{}: not a make-initrd-ng list of {{source, target}}: {e}",
                    list_path.display()
                )
            })?;
        spec.extras.contents.extend(objects);
    }
    let initrd = build_with(&spec.spec, &spec.extras).map_err(|e| e.to_string())?;
    // Write next to the target and rename, so a reader never sees half an initrd.
    let tmp = out.with_extension("tmp-stagehand");
    std::fs::write(&tmp, &initrd.bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &out).map_err(|e| format!("{}: {e}", out.display()))?;
    if report {
        print!("{}", initrd.report);
    } else {
        for w in &initrd.report.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(())
}

fn cmd_append_secrets(args: &[String]) -> Result<(), String> {
    let [initrd, pairs @ ..] = args else {
        return Err(format!("append-secrets needs the initrd file\n{USAGE}"));
    };
    let mut secrets = Vec::new();
    for pair in pairs {
        let (dest, source) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not DEST=SOURCE\n{USAGE}"))?;
        secrets.push(stagehand_initrd::Secret {
            dest: dest.to_owned(),
            source: PathBuf::from(source),
        });
    }
    let appended = stagehand_initrd::secrets_archive(&secrets).map_err(|e| e.to_string())?;
    let mut bytes = std::fs::read(initrd).map_err(|e| format!("{initrd}: {e}"))?;
    // Appending to something that is not an initrd would hide the problem until boot.
    list(&bytes).map_err(|e| {
        format!("{initrd}: not an initrd ({e}); append-secrets only extends an initrd it can read")
    })?;
    bytes.extend_from_slice(&appended);
    let tmp = format!("{initrd}.tmp-stagehand");
    std::fs::write(&tmp, &bytes).map_err(|e| format!("{tmp}: {e}"))?;
    std::fs::rename(&tmp, initrd).map_err(|e| format!("{initrd}: {e}"))?;
    Ok(())
}

fn cmd_list(args: &[String]) -> Result<(), String> {
    let [file] = args else {
        return Err(format!("list takes one file\n{USAGE}"));
    };
    let bytes = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    let entries = list(&bytes).map_err(|e| format!("{file}: {e}"))?;
    for e in entries {
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
        println!(
            "{kind}{:04o} {:>10} /{}{extra}",
            e.mode & 0o7777,
            e.data.len(),
            e.name
        );
    }
    Ok(())
}
