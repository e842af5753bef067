//! The sequence of stage 2, step by step.
//!
//! Finishes the special filesystems, protects `/nix/store`, activates the generation
//! (users, `/etc`, ...) with the activation engine, records `/run/booted-system` and hands
//! PID 1 over to the generation's systemd with the kernel's arguments. A failure before the
//! hand-over goes to the shared failure path; PID 1 never panics.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Instant;

use stagehand_activation::{activate, Action, ActivateOptions};
use stagehand_boot::bless::bless_generation;
use stagehand_boot::efivars::{self, EfiVars, EFIVARS_DIR};
use stagehand_boot::receipt::{
    BootReceipt, Stage1Receipt, Stage2Times, ATTEMPTS_DIR, BOOT_RECEIPT, STAGE1_RECEIPT,
};
use stagehand_common::cmdline::Cmdline;
use stagehand_common::emergency::{fail, FailurePolicy};
use stagehand_common::kmsg::KmsgLogger;
use stagehand_common::mounts::mountinfo;
use stagehand_common::panic_hook::{self, PanicRoute};
use stagehand_common::rootfs::Root;
use stagehand_common::timing::monotonic_us;

use crate::plan::{self, Handoff};
use crate::{bless_unit, blesser, mounts, postboot, toplevel};

const HEADER: &str = "An error occurred in stage 2 of the boot process, which must activate the \
                      generation and start systemd.";

/// The whole of stage 2, as `<toplevel>/init` runs it.
pub fn main() {
    // Debug records pass the logger; the global maximum (info, debug with boot.debugtrace)
    // decides what is written.
    let logger = KmsgLogger::install("stage2", log::LevelFilter::Debug);
    log::set_max_level(log::LevelFilter::Info);
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("bless") {
        // Run by stagehand-bless.service; a terminal gets the lines too.
        logger.set_mirror_to_stderr(rustix::termios::isatty(std::io::stderr()));
        std::process::exit(blesser::run(args.get(2..).unwrap_or_default()));
    }
    let systemd_stage1 = std::env::var("IN_NIXOS_SYSTEMD_STAGE1").ok();
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    if systemd_stage1.as_deref() == Some("true") {
        // A service in the initrd: its output goes to the journal.
        logger.set_mirror_to_stderr(true);
    } else if pid != 1 {
        logger.set_mirror_to_stderr(true);
        log::error!("{}", plan::PlanError::NotPid1 { pid });
        std::process::exit(2);
    }
    // A panic, too, goes through the one failure path (see `Failure`).
    panic_hook::install(if systemd_stage1.as_deref() == Some("true") {
        PanicRoute::Exit
    } else {
        PanicRoute::Menu(FailurePolicy::new(HEADER))
    });
    run(pid, systemd_stage1);
}

/// The one failure path: the emergency menu as PID 1; in the systemd initrd, where stage 2
/// is a service, the error and exit 1 (systemd's initrd then goes to its emergency target).
struct Failure {
    policy: FailurePolicy,
    exit: bool,
}

impl Failure {
    fn fail(&self, step: &str, message: &str) {
        if self.exit {
            log::error!("{step} failed: {message}");
            std::process::exit(1);
        }
        fail(&self.policy, step, message);
    }
}

/// Stage 2 as PID 1 (or the systemd initrd's service): the phases in order. Each phase that
/// fails goes to the one failure path, [`Failure::fail`].
fn run(pid: u32, systemd_stage1: Option<String>) {
    let started = Instant::now();
    let mut times = Stage2Times::starting_at(monotonic_us());
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().cloned().unwrap_or_default();

    let (failure, cmdline) = read_command_line(systemd_stage1.as_deref());
    let plan = decide_plan(&failure, pid, systemd_stage1, &cmdline);
    mount_filesystems(&failure, &plan);
    times.phases.since("special filesystems", times.start_us);
    let toplevel = loop {
        match toplevel::from_argv0_in(&plan.root, &argv0) {
            Ok(t) => break t,
            Err(e) => failure.fail("finding the generation", &e.to_string()),
        }
    };
    log::info!("booting system configuration {}", toplevel.display());
    prepare_root(&failure, &plan, &mut times);
    run_activation(&failure, &plan, &toplevel, &mut times);
    record_the_boot(&failure, &plan, &toplevel, &mut times);
    let systemd = plan.host(
        &toplevel
            .join("systemd/lib/systemd/systemd")
            .to_string_lossy(),
    );
    count_and_report(&plan, &cmdline, &toplevel, &systemd, times);
    hand_over(&failure, &plan, &systemd, &args, started);
}

/// `/proc` first (the command line, the mount table and the toplevel lookup need it), then
/// the command line, and the failure path as the command line wants it.
fn read_command_line(systemd_stage1: Option<&str>) -> (Failure, Cmdline) {
    let mut failure = Failure {
        policy: FailurePolicy::new(HEADER),
        exit: systemd_stage1 == Some("true"),
    };
    match mounts::ensure_proc() {
        Ok(true) => log::info!("mounted /proc"),
        Ok(false) => {}
        Err(e) => failure.fail("mounting /proc", &e),
    }
    let cmdline = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    failure.policy = FailurePolicy {
        header: HEADER,
        panic_on_fail: cmdline.flag("boot.panic_on_fail"),
        shell_on_fail: cmdline.flag("boot.shell_on_fail"),
        console: cmdline
            .get("console")
            .and_then(|c| c.split(',').next())
            .map(str::to_owned),
    };
    if !failure.exit {
        panic_hook::set_route(PanicRoute::Menu(failure.policy.clone()));
    }
    (failure, cmdline)
}

/// What this boot must do (`plan::decide` over the facts), logged; with `boot.debugtrace`
/// the log level goes to debug from here on.
fn decide_plan(
    failure: &Failure,
    pid: u32,
    systemd_stage1: Option<String>,
    cmdline: &Cmdline,
) -> plan::Plan {
    let plan = loop {
        let mounted: Vec<String> = mountinfo::read()
            .into_iter()
            .map(|m| m.mount_point)
            .collect();
        let facts = plan::Facts {
            pid,
            systemd_stage1: systemd_stage1.clone(),
            container: std::env::var("container").ok(),
            stage1_receipt: mounted.iter().any(|m| m == "/run")
                && Path::new(STAGE1_RECEIPT).exists(),
            initrd_release: Path::new("/etc/initrd-release").exists(),
            efi: Path::new(plan::EFIVARS).is_dir(),
            cmdline: cmdline.clone(),
            mounted,
        };
        match plan::decide(&facts) {
            Ok(p) => break p,
            Err(e) => failure.fail("deciding how to boot", &e.to_string()),
        }
    };
    if plan.debugtrace {
        log::set_max_level(log::LevelFilter::Debug);
    }
    log::info!("{}", plan.mode);
    for line in plan.describe() {
        log::debug!("plan: {line}");
    }
    plan
}

/// The special filesystems the plan lists, `/run` bound into the real root, efivarfs.
fn mount_filesystems(failure: &Failure, plan: &plan::Plan) {
    if let Err(e) = mounts::mount_special(&plan.special) {
        failure.fail("mounting the special filesystems", &e);
    }
    if !plan.special.is_empty() {
        log::info!("mounted {}", plan.special.join(" "));
    }
    if plan.bind_run {
        if let Err(e) = mounts::bind_run(&plan.root) {
            failure.fail("binding /run into the real root", &e);
        }
    }
    if plan.efivarfs {
        // Only to read the loader's counting variables; systemd would mount it anyway.
        match mounts::mount_efivarfs() {
            Ok(()) => log::debug!("mounted efivarfs on {}", plan::EFIVARS),
            Err(e) => log::warn!("{e}; boot counting by the loader cannot be seen"),
        }
    }
}

/// `/` read-write, `/nix/store` read-only, the base directories and `/var/run`.
fn prepare_root(failure: &Failure, plan: &plan::Plan, times: &mut Stage2Times) {
    let t = monotonic_us();
    if plan.remount_root_rw {
        log::debug!("remounting / read-write");
        if let Err(e) = mounts::remount_root_rw() {
            failure.fail("remounting / read-write", &e);
        }
    }
    times.phases.since("remount / rw", t);
    let t = monotonic_us();
    if let Err(e) = mounts::protect_store(&plan.root, plan.store_rbind) {
        failure.fail("making /nix/store read-only", &e);
    }
    times.phases.since("read-only /nix/store", t);
    let t = monotonic_us();
    for (dir, mode) in [("/etc", 0o755), ("/tmp", 0o1777), ("/var", 0o755)] {
        log::debug!("directory {dir} mode {mode:o}");
        if let Err(e) = ensure_dir(&plan.host(dir), mode) {
            failure.fail("creating the base directories", &e);
        }
    }
    // systemd marks the system tainted ("var-run-bad") unless /var/run is a link to /run;
    // NixOS makes it with tmpfiles (`L+ /var/run - - - - ../run`), too late for that check.
    let var_run = plan.host("/var/run");
    if std::fs::symlink_metadata(&var_run).is_err() {
        log::debug!("linking /var/run -> ../run");
        if let Err(e) = std::os::unix::fs::symlink("../run", &var_run) {
            log::warn!("cannot create /var/run -> ../run: {e}");
        }
    }
    times.phases.since("base directories", t);
}

/// The activation engine (`Action::Boot`). Failed steps are logged and the boot goes on.
fn run_activation(failure: &Failure, plan: &plan::Plan, toplevel: &Path, times: &mut Stage2Times) {
    let t_us = monotonic_us();
    let t = Instant::now();
    log::info!("running activation");
    let options = ActivateOptions {
        root: plan.root.clone(),
        dry_run: false,
        action: Action::Boot,
    };
    if plan.debugtrace {
        // Snippets are bash: xtrace makes them print each command, as `set -x` did.
        std::env::set_var("SHELLOPTS", "xtrace");
    }
    match activate(toplevel, &options) {
        Ok(report) => {
            times.activation_us = t.elapsed().as_micros() as u64;
            // Back to back as they ran: what precedes the first step and follows the last
            // are named too, so the steps sit where they ran and the sum is the phase.
            let us = |d: std::time::Duration| d.as_micros() as u64;
            let steps = std::iter::once(("prepare (plan, lock)".to_owned(), us(report.prepare)))
                .chain(
                    report
                        .steps
                        .iter()
                        .map(|s| (s.name.clone(), us(s.duration))),
                )
                .chain(std::iter::once((
                    "etc read-back wait".to_owned(),
                    us(report.readback_wait),
                )))
                .collect();
            times.record_activation_steps(t_us, steps);
            if !report.success() {
                // NixOS ignores the activation status at boot: a half-activated system that
                // reaches systemd is more useful than one that stops here.
                log::error!(
                    "activation steps failed: {}; continuing the boot",
                    report.failed_steps().join(", ")
                );
            }
        }
        Err(e) => failure.fail("activation", &e.to_string()),
    }
    std::env::remove_var("SHELLOPTS");
    times.phases.since("activation", t_us);
}

/// `/run/booted-system` (and `/run/current-system` when activation did not set it),
/// `postBootCommands`, an empty `/etc/machine-id` when there is none.
fn record_the_boot(failure: &Failure, plan: &plan::Plan, toplevel: &Path, times: &mut Stage2Times) {
    let t = monotonic_us();
    if let Err(e) = point_link(&plan.root, Path::new("/run/booted-system"), toplevel) {
        failure.fail("recording /run/booted-system", &e);
    }
    if std::fs::symlink_metadata(plan.host("/run/current-system")).is_err() {
        // Activation normally does this; a failed activation must still leave a usable system.
        if let Err(e) = point_link(&plan.root, Path::new("/run/current-system"), toplevel) {
            log::error!("{e}");
        }
    }
    times.phases.since("booted-system", t);
    let t = monotonic_us();
    if run_post_boot(plan, toplevel) {
        times.phases.since("postBootCommands", t);
    }
    let t = monotonic_us();
    // An existing (even empty) machine-id keeps systemd's first-boot logic off.
    if let Err(e) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(plan.host("/etc/machine-id"))
    {
        log::warn!("cannot create /etc/machine-id: {e}");
    }
    times.phases.since("machine-id", t);
}

/// Boot counting and the receipt: `stagehand.bless=stage2`, the runtime bless unit when
/// this boot is counted, and the boot receipt. Never fails the boot.
fn count_and_report(
    plan: &plan::Plan,
    cmdline: &Cmdline,
    toplevel: &Path,
    systemd: &Path,
    mut times: Stage2Times,
) {
    let t = monotonic_us();
    let blessed = bless_in_stage2(plan, cmdline, toplevel, systemd);
    let stage1 = match Stage1Receipt::read(&plan.host(STAGE1_RECEIPT)) {
        Ok(r) => r,
        Err(e) => {
            log::error!("{e}; this boot goes on without stage 1's counting");
            None
        }
    };
    write_bless_unit(plan, cmdline, toplevel, stage1.as_ref(), blessed.is_some());
    times.phases.since("bless", t);
    write_receipt(plan, toplevel, stage1.as_ref(), blessed.as_deref(), times);
}

/// Exit 0 in the systemd initrd (it switches root next), else exec the generation's systemd
/// with the kernel's arguments.
fn hand_over(
    failure: &Failure,
    plan: &plan::Plan,
    systemd: &Path,
    args: &[String],
    started: Instant,
) {
    if plan.handoff == Handoff::Exit {
        log::info!(
            "{} prepared (stage 2 took {} ms); systemd switches root next",
            plan.root.display(),
            started.elapsed().as_millis()
        );
        std::process::exit(0);
    }
    log::info!(
        "starting systemd {} (stage 2 took {} ms)",
        systemd.display(),
        started.elapsed().as_millis()
    );
    loop {
        let e = std::process::Command::new(systemd)
            .arg0(systemd)
            .args(args.get(1..).unwrap_or_default())
            .exec();
        failure.fail(
            "starting systemd",
            &format!("cannot execute {}: {e}", systemd.display()),
        );
    }
}

/// `boot.postBootCommands` from the manifest, or from the `init` script of a generation
/// nixpkgs built; its failure is logged, not fatal. Whether there were any to run.
fn run_post_boot(plan: &plan::Plan, toplevel: &Path) -> bool {
    let snippet = match postboot::read(&plan.host(&toplevel.to_string_lossy())) {
        Ok(Some(s)) => s,
        Ok(None) => return false,
        Err(e) => {
            log::error!("postBootCommands: {e}");
            return false;
        }
    };
    let what = match &snippet.script {
        postboot::Script::Text(_) => "postBootCommands".to_owned(),
        postboot::Script::File(file) => {
            // The default is an empty option written to a file: not worth a bash.
            match postboot::file_is_blank(&plan.host(file)) {
                Ok(true) => {
                    log::debug!("postBootCommands: {file} is empty; nothing to run");
                    return false;
                }
                Ok(false) => {}
                Err(e) => {
                    log::error!("postBootCommands: {e}; continuing the boot");
                    return false;
                }
            }
            format!("postBootCommands ({file})")
        }
    };
    log::info!("running {what}");
    let t = Instant::now();
    match snippet
        .command(&plan.root, toplevel, plan.debugtrace)
        .status()
    {
        Ok(st) if st.success() => log::info!(
            "postBootCommands finished in {} µs",
            t.elapsed().as_micros()
        ),
        Ok(st) => log::error!("postBootCommands failed ({st}); continuing the boot"),
        Err(e) => log::error!(
            "postBootCommands: cannot run {}: {e}; continuing the boot",
            snippet.shell
        ),
    }
    true
}

/// `stagehand.bless=stage2`: the interim bless of stage 1's counter right before systemd
/// (only when the systemd binary is there). Returns what was done.
fn bless_in_stage2(
    plan: &plan::Plan,
    cmdline: &Cmdline,
    toplevel: &Path,
    systemd: &Path,
) -> Option<String> {
    if cmdline.get("stagehand.bless") != Some("stage2") {
        return None;
    }
    let runnable = std::fs::metadata(systemd)
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let base = toplevel.file_name().and_then(|b| b.to_str())?;
    if !runnable {
        log::warn!(
            "stagehand.bless=stage2: not marking this generation good, {} is not executable",
            systemd.display()
        );
        return None;
    }
    match bless_generation(&plan.host(ATTEMPTS_DIR), base) {
        Ok(done) => {
            log::info!("stagehand.bless=stage2: marked generation good: {done}");
            Some(done)
        }
        Err(e) => {
            log::warn!("stagehand.bless=stage2: cannot mark good: {e}");
            None
        }
    }
}

/// The runtime bless unit when this boot is being counted. Never fails the boot: without
/// the unit, counting only retires this generation after its tries, which is logged.
fn write_bless_unit(
    plan: &plan::Plan,
    cmdline: &Cmdline,
    toplevel: &Path,
    stage1: Option<&Stage1Receipt>,
    blessed_in_stage2: bool,
) {
    let loader = if matches!(plan.mode, plan::Mode::Container(_)) {
        None
    } else {
        let root = Root::open(Path::new("/")).ok();
        root.and_then(|r| {
            let vars = EfiVars::new(&r, Path::new(EFIVARS_DIR));
            match efivars::loader_vars(&vars) {
                Ok(v) => v.boot_count_path,
                Err(e) => {
                    log::warn!("cannot read the boot loader's variables: {e}");
                    None
                }
            }
        })
    };
    let counting = bless_unit::Counting {
        loader,
        stage1: bless_unit::stage1_counting(stage1, blessed_in_stage2),
    };
    if !counting.active() {
        log::debug!("boot counting is not in effect: no bless unit");
        return;
    }
    let files = bless_unit::files(
        &toplevel.join("init"),
        cmdline.get("stagehand.esp"),
        bless_unit::has_boot_complete(&plan.root),
    );
    match bless_unit::write(&plan.root, &files) {
        Ok(()) => log::info!(
            "this boot is counted ({}): {}/{} marks it good after {}",
            counting.describe(),
            bless_unit::UNIT_DIR,
            bless_unit::UNIT,
            bless_unit::BOOT_COMPLETE
        ),
        Err(e) => log::error!(
            "this boot is counted ({}) but the bless unit cannot be written: {e}; the \
             generation will not be marked good",
            counting.describe()
        ),
    }
}

/// The boot receipt: `/run/stagehand/boot.json` and its kmsg line. Never fails the boot.
fn write_receipt(
    plan: &plan::Plan,
    toplevel: &Path,
    stage1: Option<&Stage1Receipt>,
    blessed: Option<&str>,
    mut times: Stage2Times,
) {
    times.finish(monotonic_us());
    let r = BootReceipt::new(
        &plan.mode.to_string(),
        stage1,
        &toplevel.display().to_string(),
        blessed,
        times,
    );
    if let Err(e) = r.write(&plan.host(BOOT_RECEIPT)) {
        log::warn!("cannot write the boot receipt: {e}");
    }
    log::info!("{}", r.summary());
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

/// Point `link` (inside `root`) at `target` without a moment where `link` is missing.
fn point_link(root: &Path, link: &Path, target: &Path) -> Result<(), String> {
    Root::open(root)
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
