//! Stagehand stage 2: `<toplevel>/init`, PID 1 on the real root.
//!
//! Finishes the special filesystems, protects `/nix/store`, activates the generation
//! (users, `/etc`, ...) with the activation engine, records `/run/booted-system` and hands
//! PID 1 over to the generation's systemd with the kernel's arguments. A failure before the
//! hand-over goes to the shared failure path; PID 1 never panics.

mod mounts;
mod receipt;
mod toplevel;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use stagehand_activation::rootfs::Root;
use stagehand_activation::{activate, Action, ActivateOptions};
use stagehand_common::cmdline::Cmdline;
use stagehand_common::emergency::{fail, FailurePolicy};
use stagehand_common::kmsg::KmsgLogger;

const HEADER: &str = "An error occurred in stage 2 of the boot process, which must activate the \
                      generation and start systemd.";

fn main() {
    let logger = KmsgLogger::install("stage2", log::LevelFilter::Info);
    if rustix::process::getpid().as_raw_nonzero().get() != 1 {
        logger.set_mirror_to_stderr(true);
        log::error!("stage 2 must run as PID 1 (boot with init=<toplevel>/init); refusing to run");
        std::process::exit(2);
    }
    run();
}

fn run() {
    let started = Instant::now();
    let mut times = receipt::Stage2Times {
        start_us: receipt::monotonic_us(),
        ..receipt::Stage2Times::default()
    };
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    let cmdline = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let policy = FailurePolicy {
        header: HEADER,
        panic_on_fail: cmdline.flag("boot.panic_on_fail"),
        shell_on_fail: cmdline.flag("boot.shell_on_fail"),
        console: cmdline
            .get("console")
            .and_then(|c| c.split(',').next())
            .map(str::to_owned),
    };
    let in_container = std::env::var_os("container").is_some();

    // /proc first: the toplevel lookup and everything after need it.
    match mounts::mount_special() {
        Ok(m) if !m.is_empty() => log::info!("mounted {}", m.join(" ")),
        Ok(_) => {}
        Err(e) => {
            fail(&policy, "mounting the special filesystems", &e);
        }
    }
    let toplevel = loop {
        match toplevel::from_argv0(&argv0) {
            Ok(t) => break t,
            Err(e) => {
                fail(&policy, "finding the generation", &e.to_string());
            }
        }
    };
    log::info!("booting system configuration {}", toplevel.display());

    if !in_container {
        if let Err(e) = mounts::remount_root_rw() {
            fail(&policy, "remounting / read-write", &e);
        }
    }
    if let Err(e) = mounts::protect_store() {
        fail(&policy, "making /nix/store read-only", &e);
    }
    for (dir, mode) in [("/etc", 0o755), ("/tmp", 0o1777), ("/var", 0o755)] {
        if let Err(e) = ensure_dir(Path::new(dir), mode) {
            fail(&policy, "creating the base directories", &e);
        }
    }
    // systemd marks the system tainted ("var-run-bad") unless /var/run is a link to /run;
    // NixOS makes it with tmpfiles (`L+ /var/run - - - - ../run`), too late for that check.
    if std::fs::symlink_metadata("/var/run").is_err() {
        if let Err(e) = std::os::unix::fs::symlink("../run", "/var/run") {
            log::warn!("cannot create /var/run -> ../run: {e}");
        }
    }

    let t = Instant::now();
    log::info!("running activation");
    let options = ActivateOptions {
        root: PathBuf::from("/"),
        dry_run: false,
        action: Action::Boot,
    };
    match activate(&toplevel, &options) {
        Ok(report) => {
            times.activation_us = t.elapsed().as_micros() as u64;
            times.steps = report
                .steps
                .iter()
                .map(|s| (s.name.clone(), s.duration.as_micros() as u64))
                .collect();
            if !report.success() {
                // NixOS ignores the activation status at boot: a half-activated system that
                // reaches systemd is more useful than one that stops here.
                log::error!(
                    "activation steps failed: {}; continuing the boot",
                    report.failed_steps().join(", ")
                );
            }
        }
        Err(e) => {
            fail(&policy, "activation", &e.to_string());
        }
    }

    if let Err(e) = atomic_symlink(&toplevel, Path::new("/run/booted-system")) {
        fail(&policy, "recording /run/booted-system", &e);
    }
    if !Path::new("/run/current-system").exists() {
        // Activation normally does this; a failed activation must still leave a usable system.
        if let Err(e) = atomic_symlink(&toplevel, Path::new("/run/current-system")) {
            log::error!("{e}");
        }
    }
    // An existing (even empty) machine-id keeps systemd's first-boot logic off.
    if let Err(e) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/etc/machine-id")
    {
        log::warn!("cannot create /etc/machine-id: {e}");
    }

    let systemd = toplevel.join("systemd/lib/systemd/systemd");
    write_receipt(&cmdline, &toplevel, &systemd, &mut times);
    log::info!(
        "starting systemd {} (stage 2 took {} ms)",
        systemd.display(),
        started.elapsed().as_millis()
    );
    loop {
        let e = std::process::Command::new(&systemd)
            .arg0(&systemd)
            .args(&args[1.min(args.len())..])
            .exec();
        fail(
            &policy,
            "starting systemd",
            &format!("cannot execute {}: {e}", systemd.display()),
        );
    }
}

/// The boot receipt (and, with `stagehand.bless=stage2`, the interim bless). Never fails the
/// boot: problems are logged.
fn write_receipt(
    cmdline: &Cmdline,
    toplevel: &Path,
    systemd: &Path,
    times: &mut receipt::Stage2Times,
) {
    let mut blessed = None;
    if cmdline.get("stagehand.bless") == Some("stage2") {
        let runnable = std::fs::metadata(systemd)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        match toplevel.file_name().and_then(|b| b.to_str()) {
            Some(_) if !runnable => log::warn!(
                "stagehand.bless=stage2: not marking this generation good, {} is not executable",
                systemd.display()
            ),
            Some(base) => match receipt::bless(Path::new(receipt::STATE_DIR), base) {
                Ok(done) => {
                    log::info!("stagehand.bless=stage2: marked generation good: {done}");
                    blessed = Some(done);
                }
                Err(e) => log::warn!("stagehand.bless=stage2: cannot mark good: {e}"),
            },
            None => {}
        }
    }
    times.end_us = receipt::monotonic_us();
    let stage1 = receipt::read_stage1(Path::new(receipt::STAGE1_JSON));
    let r = receipt::build(
        stage1.as_ref(),
        &toplevel.display().to_string(),
        blessed.as_deref(),
        times,
    );
    if let Err(e) = receipt::write_atomic(Path::new(receipt::BOOT_JSON), &r) {
        log::warn!("cannot write the boot receipt: {e}");
    }
    log::info!("{}", receipt::summary(&r));
}

fn ensure_dir(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))
}

/// Point `link` at `target` without a moment where `link` is missing.
fn atomic_symlink(target: &Path, link: &Path) -> Result<(), String> {
    Root::open(Path::new("/"))
        .and_then(|root| root.set_symlink(link, target.as_os_str().as_bytes()))
        .map(drop)
        .map_err(|e| {
            format!(
                "cannot point {} at {}: {e}",
                link.display(),
                target.display()
            )
        })
}
