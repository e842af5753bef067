//! The boot sequence of stage 1, step by step.
//!
//! Mounts the special filesystems, reads the compiled stage-1 config, loads the kernel
//! modules, mounts the root (and whatever else boot needs) under `/mnt-root`, finds the
//! generation named by `init=` inside it and `switch_root`s into that generation's stage 2.
//! Every failure goes through [`fail`]; PID 1 never panics and never exits except
//! on purpose (`boot.panic_on_fail`).

use std::path::Path;
use std::time::{Duration, Instant};

use stagehand_common::cmdline::Cmdline;
use stagehand_common::kmsg::KmsgLogger;
use stagehand_common::stage1_config::{Stage1Config, Stage1Options, STAGE1_CONFIG_PATH};
use stagehand_common::timing::{monotonic_us, process_cpu_us};

use crate::plan::{BreakPoint, Plan, TARGET_ROOT};
use crate::{attempts, carried, cpu, devices, init_path, layers, md, root, secrets, sys};
use stagehand_common::emergency::{fail, FailurePolicy};
use stagehand_common::panic_hook::{self, PanicRoute};

const STAGE1_HEADER: &str =
    "An error occurred in stage 1 of the boot process, which must mount the \
     root filesystem on /mnt-root and then start stage 2.";

/// The whole of stage 1, as `/init` runs it.
pub fn main() {
    // The logger passes debug records; the global level starts at info and `boot.trace`
    // lowers it once the command line is read.
    let logger = KmsgLogger::install("stage1", log::LevelFilter::Debug);
    log::set_max_level(log::LevelFilter::Info);
    if rustix::process::getpid().as_raw_nonzero().get() != 1 {
        logger.set_mirror_to_stderr(true);
        log::error!(
            "stage 1 must run as PID 1 (the initrd's /init); refusing to touch this system"
        );
        std::process::exit(2);
    }
    // A panic, too, ends in the failure menu rather than killing PID 1.
    panic_hook::install(PanicRoute::Menu(FailurePolicy::new(STAGE1_HEADER)));
    let started = Instant::now();
    let times = attempts::Times {
        start_us: monotonic_us(),
        // PID 1's CPU clock already holds the kernel's whole initialisation (kernel_init
        // runs as PID 1 before it execs us): stage 1's share is counted from here.
        cpu_start_us: process_cpu_us(),
        ..attempts::Times::default()
    };
    run(started, times);
}

/// The boot, step by step. Returns only if `switch_root` itself failed and the user chose to
/// continue, in which case there is nothing left to try.
fn run(started: Instant, mut times: attempts::Times) {
    let mut policy = FailurePolicy::new(STAGE1_HEADER);

    if let Err(e) = sys::mount_special() {
        fail(&policy, "mounting the special filesystems", &e);
    }
    sys::reopen_console();
    sys::make_etc_stubs();
    log::info!("started; special filesystems mounted");
    times.phases.since("special filesystems", times.start_us);
    let t = monotonic_us();

    let cmdline_text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let cmdline = Cmdline::parse(&cmdline_text);

    let config = match Stage1Config::read(Path::new(STAGE1_CONFIG_PATH)) {
        Ok(c) => c,
        Err(e) => {
            // Use what the command line says about failing, even without a config.
            policy.panic_on_fail =
                cmdline.flag("boot.panic_on_fail") || cmdline.flag("stage1panic");
            panic_hook::set_route(PanicRoute::Menu(policy.clone()));
            fail(&policy, "reading the stage-1 config", &e.to_string());
            Stage1Config::default()
        }
    };

    let plan = loop {
        match Plan::new(&cmdline, &config) {
            Ok(p) => break p,
            Err(e) => {
                fail(&policy, "planning the boot", &e.to_string());
            }
        }
    };
    policy = FailurePolicy {
        header: STAGE1_HEADER,
        panic_on_fail: plan.panic_on_fail,
        shell_on_fail: plan.shell_on_fail,
        console: plan.console.clone(),
    };
    panic_hook::set_route(PanicRoute::Menu(policy.clone()));
    if plan.trace {
        log::set_max_level(log::LevelFilter::Debug);
        log::debug!("boot.trace: logging every step");
    }
    for w in &plan.warnings {
        log::warn!("{w}");
    }
    log::debug!("command line: {}", cmdline_text.trim());
    log::debug!("plan: {plan:?}");

    match secrets::install(Path::new(secrets::SECRETS_DIR), Path::new("/")) {
        Ok(installed) if installed.is_empty() => log::debug!("no initrd secrets"),
        Ok(installed) => log::info!(
            "installed {} initrd secret(s): {}",
            installed.len(),
            installed.join(", ")
        ),
        Err(e) => {
            fail(&policy, "installing the initrd secrets", &e);
        }
    }
    if plan.break_at == Some(BreakPoint::Start) {
        fail(
            &policy,
            "rd.break=start",
            "stopped before anything was mounted, as requested",
        );
    }

    times.phases.since("config", t);

    load_modules(&plan, &policy, &mut times);
    if plan.break_at == Some(BreakPoint::Modules) {
        fail(
            &policy,
            "rd.break=modules",
            "stopped after loading modules, as requested",
        );
    }

    let new_root = Path::new(TARGET_ROOT);
    if let Err(e) = sys::mkdir_p(new_root, 0o755) {
        fail(&policy, "creating the mount point of the new root", &e);
    }
    let mut registry = storage_layers(&plan, &config.options, &policy, &mut times);
    let t = Instant::now();
    times.device_wait_us =
        root::mount_all(&plan, &policy, new_root, &mut times.phases, &mut registry);
    times.mounts_us = t.elapsed().as_micros() as u64;
    if plan.break_at == Some(BreakPoint::Mounts) {
        fail(
            &policy,
            "rd.break=mounts",
            "stopped after mounting the filesystems, as requested",
        );
    }

    let t = monotonic_us();
    let init = loop {
        match init_path::resolve_init(new_root, &plan.init) {
            Ok(init) => break init,
            Err(e) => {
                fail(&policy, "finding stage 2", &e.to_string());
            }
        }
    };
    times.phases.since("find init=", t);
    let init = attempts::count_boot(new_root, &cmdline, init, &mut times);
    let program = stage2_program(new_root, &init, &cmdline, &policy);
    log::info!(
        "switching root to {TARGET_ROOT}, stage 2 is {init}{} (stage 1 took {} ms)",
        if program == init {
            String::new()
        } else {
            format!(" run as {program}")
        },
        started.elapsed().as_millis()
    );
    let e = sys::switch_root(new_root, &program, &init);
    fail(&policy, "switching to the new root", &e);
    log::error!("nothing left to try after a failed switch_root; waiting for a reboot");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The storage layers, bottom up, before the filesystems are waited for: md RAID arrays
/// first (LUKS or LVM may sit on one), then the LUKS and LVM layers. Returns the device
/// registry the filesystems are then looked up in.
fn storage_layers(
    plan: &Plan,
    options: &Stage1Options,
    policy: &FailurePolicy,
    times: &mut attempts::Times,
) -> devices::Registry {
    let t = monotonic_us();
    match md::assemble_arrays(
        options,
        Duration::from_millis(plan.device_timeout_ms.into()),
    ) {
        Ok(started) if started.is_empty() => {}
        Ok(started) => {
            log::info!("{} md array(s) started", started.len());
            times.phases.since("md arrays", t);
        }
        Err(e) => fail(policy, "assembling md RAID arrays", &e.to_string()),
    }

    // One registry for the layers and the filesystems: what the layers make (the opened
    // LUKS device, the LVs) is probed and resolvable like any disk.
    let mut registry = devices::Registry::system();
    if !plan.layers.is_empty() {
        let t = monotonic_us();
        let wanted: Vec<String> = plan
            .filesystems
            .iter()
            .map(|fs| fs.device.clone())
            .chain(plan.layers.luks.iter().map(|l| l.device.clone()))
            .collect();
        let timeout = Duration::from_millis(plan.device_timeout_ms.into());
        layers::run(&plan.layers, policy, &mut registry, timeout, &wanted);
        times.phases.since("layers", t);
    }
    registry
}

/// Load the planned modules in order: a module for CPU features this CPU lacks is skipped,
/// an optional one that fails is logged, any other failure goes to the failure path.
fn load_modules(plan: &Plan, policy: &FailurePolicy, times: &mut attempts::Times) {
    let t_us = monotonic_us();
    let t = Instant::now();
    let modalias = cpu::read_modalias(&plan.modules);
    let mut skipped = 0;
    for module in &plan.modules {
        let decision = cpu::decide(module, modalias.as_deref());
        if decision == cpu::Decision::Skip {
            log::info!(
                "module {} not loaded: this CPU lacks the features it is for ({})",
                module.name,
                module.cpu_aliases.join(" ")
            );
            skipped += 1;
            continue;
        }
        let m = Instant::now();
        let loaded = sys::load_module(module);
        times.finit_us += m.elapsed().as_micros() as u64;
        match loaded {
            Ok(()) => log::info!(
                "loading module {}: done in {} ms",
                module.name,
                m.elapsed().as_millis()
            ),
            Err(e) if module.optional => log::warn!("optional module skipped: {e}"),
            Err(e) if decision == cpu::Decision::LoadMismatched => {
                let why = format!(
                    "{e} (none of its CPU aliases, {}, matches this CPU's {})",
                    module.cpu_aliases.join(" "),
                    cpu::CPU_MODALIAS
                );
                fail(policy, "loading kernel modules", &why);
            }
            Err(e) => {
                fail(policy, "loading kernel modules", &e);
            }
        }
    }
    times.modules_us = t.elapsed().as_micros() as u64;
    times.phases.since("modules", t_us);
    log::info!(
        "{} modules loaded in {} ms",
        plan.modules.len().saturating_sub(skipped),
        t.elapsed().as_millis()
    );
}

/// The program to exec as stage 2 for the generation whose `init` is `init`: that init, or
/// our stage 2 carried in the initrd for a generation nixpkgs built (see [`carried`]).
fn stage2_program(
    new_root: &Path,
    init: &str,
    cmdline: &Cmdline,
    policy: &FailurePolicy,
) -> String {
    let has_carried = Path::new(carried::CARRIED).is_file();
    let (choice, reason) = carried::choose(new_root, init, cmdline, has_carried);
    match choice {
        carried::Stage2::Generation => {
            if has_carried {
                log::info!("running the generation's own init: {reason}");
            }
            init.to_owned()
        }
        carried::Stage2::Carried => {
            log::info!("{reason}");
            loop {
                match carried::install(Path::new(carried::CARRIED), Path::new(carried::RUN_COPY)) {
                    Ok(()) => break carried::RUN_COPY.to_owned(),
                    Err(e) => {
                        fail(policy, "installing the carried stage 2", &e);
                        // "Continue": fall back to the generation's own init.
                        if cmdline.get(carried::PARAM).is_none() {
                            break init.to_owned();
                        }
                    }
                }
            }
        }
    }
}
