//! The generations and boot-loader commands: `generations`, `rollback`,
//! `install-bootloader` (also spelled `boot-entries`) and `bless`. Every path option names a
//! path as the target system sees it, inside `--root`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use stagehand_common::rootfs::Root;

use stagehand_boot::bless::{self as blessing, Decision};
use stagehand_boot::date;
use stagehand_boot::entry_name::EntryName;
use stagehand_boot::esp::{BootFs, Statvfs};
use stagehand_boot::extlinux::ExtlinuxConfig;
use stagehand_boot::gather::{self, AdminInitrd};
use stagehand_boot::install::{self, InstallOptions, Loader};
use stagehand_boot::profile::{self, GenerationInfo, Profile};
use stagehand_boot::sdboot::{self, EntryStatus, EspState, SdBootConfig};

use crate::{BlessArgs, GenerationsArgs, InstallArgs, LoaderArg, RollbackArgs};

fn open_root(root: &Path) -> Result<Root> {
    Root::open(root).with_context(|| format!("cannot open root {}", root.display()))
}

/// `stagehand generations`: the table (or JSON) on stdout.
pub fn generations(a: &GenerationsArgs) -> Result<u8> {
    let root = open_root(&a.root.root)?;
    let profile = Profile::system(&root);
    let gens = profile::list(&root, &profile)?;
    // The ESP is optional here: without it the listing just has no entry column.
    let esp = BootFs::open(&root, &a.esp.esp)
        .ok()
        .and_then(|fs| sdboot::scan(&fs).ok());
    let text = if a.json {
        generations_json(&gens, esp.as_ref())
    } else {
        generations_table(&gens, esp.as_ref())
    };
    crate::print_stdout(&text)?;
    Ok(0)
}

/// `stagehand rollback`: the profile link moves to the previous generation; with
/// `--dry-run` only the line saying so is printed.
pub fn rollback(a: &RollbackArgs) -> Result<u8> {
    let root = open_root(&a.root.root)?;
    let profile = Profile::system(&root);
    let (from, to) = if a.dry_run {
        profile.rollback_target()?
    } else {
        profile.rollback()?
    };
    let would = if a.dry_run {
        " (dry run: would switch)"
    } else {
        ""
    };
    println!(
        "{}: generation {from} -> {to}{would}",
        root.host_path(&profile.path()).display()
    );
    Ok(0)
}

/// `stagehand bless`: rename the entry this boot was counted on to its good name.
pub fn bless(a: &BlessArgs) -> Result<u8> {
    let root = open_root(&a.root.root)?;
    let fs = BootFs::open(&root, &a.esp.esp)?;
    let d = blessing::bless(&root, &fs, &a.efivars.efivars, a.dry_run)?;
    let verb = if a.dry_run { "would rename" } else { "renamed" };
    match d {
        Decision::Rename { dir, from, to } => {
            println!("boot entry marked good: {verb} {dir}/{from} -> {dir}/{to}")
        }
        Decision::AlreadyGood { file } => println!("boot entry {file} is already good"),
        Decision::Nothing(why) => println!("nothing to bless: {why}"),
    }
    Ok(0)
}

/// The systemd-boot settings from the command line, over the defaults.
fn sdboot_config(a: &InstallArgs) -> SdBootConfig {
    let defaults = SdBootConfig::default();
    SdBootConfig {
        timeout: a.timeout.or(defaults.timeout),
        editor: a.editor,
        console_mode: a.console_mode.clone(),
        configuration_limit: a.limit,
        tries: if a.no_counting {
            None
        } else {
            a.tries.or(defaults.tries)
        },
    }
}

/// `--initrd FILE`: measured and hashed by the boot library (it must be a regular file),
/// then read back as an archive for the kernel version its modules are for.
fn admin_initrd(root: &Root, path: &Path) -> Result<AdminInitrd> {
    let (source, bytes) = gather::admin_initrd(root, path)?;
    let entries = stagehand_initrd::list(&bytes).with_context(|| {
        format!(
            "--initrd {}: not an initrd (a cpio archive, possibly compressed)",
            path.display()
        )
    })?;
    let kernel_version = stagehand_initrd::inspect::kernel_version(&entries)
        .with_context(|| format!("--initrd {}", path.display()))?;
    Ok(AdminInitrd {
        path: path.to_path_buf(),
        source,
        kernel_version,
    })
}

/// `--initrd` as a path inside the root. A relative one is the admin's working directory
/// (`./result/initrd`), which only means something when the root is `/`.
fn initrd_path(root: &Path, p: &Path) -> Result<std::path::PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    if root != Path::new("/") {
        anyhow::bail!(
            "--initrd {}: a relative path cannot be placed under --root {}; give it as an \
             absolute path as that system sees it",
            p.display(),
            root.display()
        );
    }
    let cwd = std::env::current_dir().context("--initrd: cannot read the current directory")?;
    Ok(cwd.join(p))
}

/// `stagehand install-bootloader`: write the entries, or with `--dry-run` print the plan.
pub fn install(a: &InstallArgs) -> Result<u8> {
    let root = open_root(&a.root.root)?;
    let initrd = a
        .initrd
        .as_deref()
        .map(|p| admin_initrd(&root, &initrd_path(&a.root.root, p)?))
        .transpose()?;
    let sd = sdboot_config(a);
    let opts = InstallOptions {
        esp: a.esp.esp.clone(),
        loader: match a.loader {
            LoaderArg::SystemdBoot => Loader::SystemdBoot,
            LoaderArg::Extlinux => Loader::Extlinux,
        },
        extlinux: ExtlinuxConfig {
            timeout: sd.timeout,
            configuration_limit: sd.configuration_limit,
            ..ExtlinuxConfig::default()
        },
        systemd_boot: sd,
        default: a.default.clone(),
        dry_run: a.dry_run,
        efivars: Some(a.efivars.efivars.clone()),
        initrd,
    };
    let report = install::install(&root, &opts, &Statvfs)?;
    for w in &report.plan.warnings {
        log::warn!("{w}");
    }
    if !a.dry_run {
        // The dry run prints them with the plan.
        for n in &report.plan.notes {
            log::info!("note: {n}");
        }
    }
    if a.dry_run {
        let mut text = String::new();
        if !report.menu.is_empty() {
            text.push_str(
                "menu (as systemd-boot will order it; the first is booted by default):\n",
            );
            for m in &report.menu {
                text.push_str(&format!("  {m}\n"));
            }
        }
        text.push_str(&report.plan.describe());
        crate::print_stdout(&text)?;
        return Ok(0);
    }
    if let Some(done) = &report.applied {
        log::info!(
            "boot entries installed in {}: default generation {}, {} bytes needed, {} were free",
            root.host_path(&opts.esp).display(),
            report.default_generation,
            done.needed,
            done.available
        );
    }
    Ok(0)
}

/// Per generation: the entry file's state, and whether it is the one booted next.
fn entry_info(esp: Option<&EspState>) -> (BTreeMap<u64, EntryStatus>, Option<String>) {
    match esp {
        Some(e) => (sdboot::entry_statuses(e), sdboot::predicted_boot(e)),
        None => (BTreeMap::new(), None),
    }
}

/// The table `stagehand generations` prints, oldest first like `nix-env --list-generations`.
pub fn generations_table(gens: &[GenerationInfo], esp: Option<&EspState>) -> String {
    let (entries, next) = entry_info(esp);
    let mut out = String::from("GEN   DATE        KERNEL      ENTRY              LABEL\n");
    for g in gens {
        let label = match &g.spec {
            Ok(s) => s.label.clone(),
            Err(e) => format!("(unreadable: {e})"),
        };
        let entry = entries.get(&g.number);
        let mut marks = Vec::new();
        if g.current {
            marks.push("current");
        }
        if g.booted {
            marks.push("booted");
        }
        if entry.is_some() && entry.map(|e| &e.file_name) == next.as_ref() {
            marks.push("boots next");
        }
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!("  ({})", marks.join(", "))
        };
        let state = match entry {
            Some(e) => match EntryName::from_file_name(&e.file_name).and_then(|n| n.counter) {
                Some(c) => format!("{} {c}", e.state),
                None => e.state.to_string(),
            },
            None => "-".to_string(),
        };
        out.push_str(&format!(
            "{:<5} {}  {:<10}  {state:<17}  {label}{marks}\n",
            g.number,
            date::date(g.created),
            g.kernel_version.as_deref().unwrap_or("?"),
        ));
    }
    out
}

/// The same as JSON, one object per generation, for scripts and tests.
pub fn generations_json(gens: &[GenerationInfo], esp: Option<&EspState>) -> String {
    let (entries, next) = entry_info(esp);
    let items: Vec<serde_json::Value> = gens
        .iter()
        .map(|g| {
            let entry = entries.get(&g.number);
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
                "entry": entry.map(|e| e.file_name.clone()),
                "entry_state": entry.map(|e| e.state.to_string()),
                "boots_next": entry.is_some() && entry.map(|e| &e.file_name) == next.as_ref(),
            })
        })
        .collect();
    let mut s = serde_json::Value::Array(items).to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cli;
    use clap::Parser;
    use stagehand_boot::efivars::fixture::{encode, write_var};
    use stagehand_boot::spec;

    /// `stagehand CMD ARGS…` parsed as the binary parses it and run in process; the error
    /// as the binary would print it.
    fn run<S: AsRef<str>>(cmd: &str, args: &[S]) -> Result<u8, String> {
        let argv = ["stagehand", cmd]
            .into_iter()
            .chain(args.iter().map(AsRef::as_ref));
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        crate::run(cli.command).map_err(|e| format!("{e:#}"))
    }

    /// Whether clap refuses `stagehand CMD ARGS…` as a usage error (exit 2).
    fn refused(cmd: &str, args: &[&str]) -> bool {
        let argv = ["stagehand", cmd].into_iter().chain(args.iter().copied());
        Cli::try_parse_from(argv).is_err_and(|e| e.exit_code() == 2)
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// A root with two system toplevels sharing a kernel and initrd, and an empty /boot.
    fn system_root() -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        let r = t.path();
        for (top, label) in [
            (
                "/nix/store/aaaa-nixos-system-a",
                "NixOS 26.05 A (Linux 6.1.0)",
            ),
            (
                "/nix/store/bbbb-nixos-system-b",
                "NixOS 26.05 B (Linux 6.1.0)",
            ),
        ] {
            let dir = r.join(top.trim_start_matches('/'));
            std::fs::create_dir_all(dir.join("kernel-modules/lib/modules/6.1.0")).expect("mkdir");
            std::fs::write(
                dir.join("boot.json"),
                spec::fixture::sample_json(top, label, &[]),
            )
            .expect("write");
            std::fs::write(dir.join("nixos-version"), "26.05\n").expect("write");
        }
        std::fs::create_dir_all(r.join("nix/store/kkkk-linux-6.1")).expect("mkdir");
        std::fs::write(r.join("nix/store/kkkk-linux-6.1/bzImage"), vec![1u8; 4096]).expect("w");
        std::fs::create_dir_all(r.join("nix/store/iiii-initrd-linux-6.1")).expect("mkdir");
        std::fs::write(
            r.join("nix/store/iiii-initrd-linux-6.1/initrd"),
            vec![2u8; 2048],
        )
        .expect("w");
        std::fs::create_dir_all(r.join("boot")).expect("mkdir");
        t
    }

    fn entries(t: &tempfile::TempDir) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(t.path().join("boot/loader/entries"))
            .expect("ls")
            .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn install_bless_rollback_end_to_end() {
        let t = system_root();
        let root_arg = t.path().to_string_lossy().into_owned();
        let root = Root::open(t.path()).expect("root");
        let profile = Profile::system(&root);
        profile
            .set(Path::new("/nix/store/aaaa-nixos-system-a"))
            .expect("set");

        let install = |extra: &[&str]| {
            let mut args = s(&["--root", &root_arg]);
            args.extend(s(extra));
            run("install-bootloader", &args)
        };
        assert_eq!(install(&[]), Ok(0));
        assert_eq!(entries(&t), ["nixos-generation-1+3.conf"]);
        let b = t.path().join("boot");
        assert!(b.join("EFI/nixos/kkkk-linux-6.1-bzImage.efi").is_file());
        assert!(b
            .join("EFI/nixos/iiii-initrd-linux-6.1-initrd.efi")
            .is_file());
        let conf = std::fs::read_to_string(b.join("loader/loader.conf")).expect("conf");
        assert!(conf.contains("default nixos-generation-*\n"), "{conf}");

        // The firmware tries generation 1 and the system comes up: bless it.
        std::fs::rename(
            b.join("loader/entries/nixos-generation-1+3.conf"),
            b.join("loader/entries/nixos-generation-1+2-1.conf"),
        )
        .expect("firmware rename");
        let efivars = t.path().join("sys/firmware/efi/efivars");
        write_var(
            &efivars,
            "LoaderBootCountPath",
            &encode(6, "\\loader\\entries\\nixos-generation-1+2-1.conf"),
        );
        assert_eq!(run("bless", &s(&["--root", &root_arg])), Ok(0));
        assert_eq!(entries(&t), ["nixos-generation-1.conf"]);

        // A second generation: new entry counted, the blessed one stays good.
        profile
            .set(Path::new("/nix/store/bbbb-nixos-system-b"))
            .expect("set");
        assert_eq!(install(&["--tries", "2"]), Ok(0));
        assert_eq!(
            entries(&t),
            ["nixos-generation-1.conf", "nixos-generation-2+2.conf"]
        );
        let e2 = std::fs::read_to_string(b.join("loader/entries/nixos-generation-2+2.conf"))
            .expect("read");
        assert!(e2.contains("\nsort-key nixos\n"), "{e2}");
        assert!(
            e2.contains("options init=/nix/store/bbbb-nixos-system-b/init "),
            "{e2}"
        );

        // Roll back: generation 1 becomes the default entry (sorts first), 2 keeps its counter.
        assert_eq!(run("rollback", &s(&["--root", &root_arg])), Ok(0));
        assert_eq!(install(&[]), Ok(0));
        assert_eq!(
            entries(&t),
            ["nixos-generation-1.conf", "nixos-generation-2+2.conf"]
        );
        let e1 = std::fs::read_to_string(b.join("loader/entries/nixos-generation-1.conf"))
            .expect("read");
        assert!(e1.contains("\nsort-key nixos\n"), "{e1}");
        let e2 = std::fs::read_to_string(b.join("loader/entries/nixos-generation-2+2.conf"))
            .expect("read");
        assert!(e2.contains("\nsort-key nixos-generation-newer\n"), "{e2}");

        // The listing shows each generation's entry and which one boots next.
        let fs = BootFs::open(&root, Path::new("/boot")).expect("esp");
        let esp = sdboot::scan(&fs).expect("scan");
        let gens = profile::list(&root, &profile).expect("list");
        let table = generations_table(&gens, Some(&esp));
        println!("{table}");
        let line1 = table.lines().nth(1).expect("gen 1");
        assert!(line1.starts_with("1 "), "{table}");
        assert!(line1.contains(" good "), "{table}");
        assert!(line1.ends_with("(current, boots next)"), "{table}");
        let line2 = table.lines().nth(2).expect("gen 2");
        assert!(line2.contains(" indeterminate +2 "), "{table}");
        let json = generations_json(&gens, Some(&esp));
        assert!(
            json.contains("\"entry\":\"nixos-generation-2+2.conf\""),
            "{json}"
        );

        // A limit of one drops generation 2's entry; shared files stay referenced.
        assert_eq!(install(&["--limit", "1", "--dry-run"]), Ok(0));
        assert_eq!(entries(&t).len(), 2, "dry run changed the ESP");
        assert_eq!(
            install(&["--limit", "1", "/nix/var/nix/profiles/system-1-link"]),
            Ok(0)
        );
        assert_eq!(entries(&t), ["nixos-generation-1.conf"]);
        assert!(b.join("EFI/nixos/kkkk-linux-6.1-bzImage.efi").is_file());

        // extlinux on the same root.
        assert_eq!(install(&["--loader", "extlinux"]), Ok(0));
        let x = std::fs::read_to_string(b.join("extlinux/extlinux.conf")).expect("extlinux");
        assert!(x.contains("LABEL nixos-1-default\n"), "{x}");
        assert!(x.contains("LABEL nixos-2-default\n"), "{x}");
        assert!(b.join("nixos/kkkk-linux-6.1-bzImage").is_file());

        assert_eq!(
            run("generations", &s(&["--root", &root_arg, "--json"])),
            Ok(0)
        );
    }

    #[test]
    fn usage_errors() {
        assert!(refused("install-bootloader", &["--tries", "0"]));
        assert!(refused(
            "install-bootloader",
            &["--tries", "2", "--no-counting"]
        ));
        assert!(refused("install-bootloader", &["--loader", "grub"]));
        assert!(refused("install-bootloader", &["--timeout", "-1"]));
        assert!(refused("frobnicate", &[]));
        assert!(refused("generations", &["--dry-run"]));
        assert!(!refused(
            "boot-entries",
            &["--boot", "/efi", "--limit", "2"]
        ));
        let t = system_root();
        let root_arg = t.path().to_string_lossy().into_owned();
        let e = run("install-bootloader", &s(&["--root", &root_arg])).expect_err("no gens");
        assert!(e.contains("points at no generation"), "{e}");
        let e = run(
            "install-bootloader",
            &s(&["--root", &root_arg, "/nix/store/aaaa-nixos-system-a"]),
        )
        .expect_err("not a generation");
        assert!(
            e.contains("is not a generation of the system profile"),
            "{e}"
        );
        assert_eq!(run("bless", &s(&["--root", &root_arg])), Ok(0));
    }
}
