//! Stagehand stage 1: the initrd's `/init`.
//!
//! Mounts the special filesystems, reads the compiled stage-1 config, loads the kernel
//! modules, mounts the root (and whatever else boot needs) under `/mnt-root`, finds the
//! generation named by `init=` inside it and `switch_root`s into that generation's stage 2.
//! Every failure goes through [`failure::fail`]; PID 1 never panics and never exits except
//! on purpose (`boot.panic_on_fail`).

mod devices;
mod init_path;
mod mount_opts;
mod plan;
mod sys;

use std::path::Path;
use std::time::{Duration, Instant};

use stagehand_common::cmdline::Cmdline;
use stagehand_common::kmsg::KmsgLogger;
use stagehand_common::probe::DeviceSpec;
use stagehand_common::stage1_config::{Stage1Config, STAGE1_CONFIG_PATH};

use plan::{BreakPoint, Plan, TARGET_ROOT};
use stagehand_common::emergency::{fail, FailurePolicy};

const STAGE1_HEADER: &str =
    "An error occurred in stage 1 of the boot process, which must mount the \
     root filesystem on /mnt-root and then start stage 2.";

fn main() {
    let logger = KmsgLogger::install("stage1", log::LevelFilter::Info);
    if rustix::process::getpid().as_raw_nonzero().get() != 1 {
        logger.set_mirror_to_stderr(true);
        log::error!(
            "stage 1 must run as PID 1 (the initrd's /init); refusing to touch this system"
        );
        std::process::exit(2);
    }
    let started = Instant::now();
    run(started);
}

/// The boot, step by step. Returns only if `switch_root` itself failed and the user chose to
/// continue, in which case there is nothing left to try.
fn run(started: Instant) {
    let mut policy = FailurePolicy::new(STAGE1_HEADER);

    if let Err(e) = sys::mount_special() {
        fail(&policy, "mounting the special filesystems", &e);
    }
    sys::reopen_console();
    log::info!("started; special filesystems mounted");

    let cmdline_text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let cmdline = Cmdline::parse(&cmdline_text);

    let config = match Stage1Config::read(Path::new(STAGE1_CONFIG_PATH)) {
        Ok(c) => c,
        Err(e) => {
            // Use what the command line says about failing, even without a config.
            policy.panic_on_fail =
                cmdline.flag("boot.panic_on_fail") || cmdline.flag("stage1panic");
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
    for w in &plan.warnings {
        log::warn!("{w}");
    }
    if plan.break_at == Some(BreakPoint::Start) {
        fail(
            &policy,
            "rd.break=start",
            "stopped before anything was mounted, as requested",
        );
    }

    let t = Instant::now();
    for module in &plan.modules {
        let m = Instant::now();
        match sys::load_module(module) {
            Ok(()) => log::info!(
                "loading module {}: done in {} ms",
                module.name,
                m.elapsed().as_millis()
            ),
            Err(e) if module.optional => log::warn!("optional module skipped: {e}"),
            Err(e) => {
                fail(&policy, "loading kernel modules", &e);
            }
        }
    }
    log::info!(
        "{} modules loaded in {} ms",
        plan.modules.len(),
        t.elapsed().as_millis()
    );
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
    mount_all(&plan, &policy, new_root);
    if plan.break_at == Some(BreakPoint::Mounts) {
        fail(
            &policy,
            "rd.break=mounts",
            "stopped after mounting the filesystems, as requested",
        );
    }

    let init = loop {
        match init_path::resolve_init(new_root, &plan.init) {
            Ok(init) => break init,
            Err(e) => {
                fail(&policy, "finding stage 2", &e.to_string());
            }
        }
    };
    log::info!(
        "switching root to {TARGET_ROOT}, stage 2 is {init} (stage 1 took {} ms)",
        started.elapsed().as_millis()
    );
    let e = sys::switch_root(new_root, &init);
    fail(&policy, "switching to the new root", &e);
    log::error!("nothing left to try after a failed switch_root; waiting for a reboot");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Wait for every block device the filesystems need (together, with one deadline), then
/// mount them in order.
fn mount_all(plan: &Plan, policy: &FailurePolicy, new_root: &Path) {
    let t = Instant::now();
    let mut registry = devices::Registry::system();
    let mut specs = Vec::new();
    for fs in plan
        .filesystems
        .iter()
        .filter(|fs| sys::is_block_device(&fs.device))
    {
        match DeviceSpec::parse(&fs.device) {
            Ok(spec) => specs.push((fs.mount_point.as_str(), spec)),
            Err(e) => {
                fail(
                    policy,
                    &format!("finding the device of {}", fs.mount_point),
                    &e.to_string(),
                );
            }
        }
    }
    let wanted: Vec<DeviceSpec> = specs.iter().map(|(_, s)| s.clone()).collect();
    let timeout = Duration::from_millis(plan.device_timeout_ms.into());
    let found = registry.wait_all(&wanted, timeout);
    let node_of = |mount_point: &str| {
        specs
            .iter()
            .zip(&found)
            .find(|((mp, _), _)| *mp == mount_point)
            .and_then(|(_, f)| f.clone())
    };
    for ((mp, spec), node) in specs.iter().zip(&found) {
        match node {
            Some(node) => log::info!("device {spec:?} for {mp} is {}", node.display()),
            None => {
                fail(
                    policy,
                    &format!("waiting for the device of {mp}"),
                    &format!(
                        "timed out after {} ms waiting for {spec:?}; check root= or the \
                         filesystem's device, and that the initrd has the disk's driver. \
                         Block devices seen: {}",
                        timeout.as_millis(),
                        seen_devices(&registry)
                    ),
                );
            }
        }
    }
    log::info!("devices ready in {} ms", t.elapsed().as_millis());
    for fs in &plan.filesystems {
        let m = Instant::now();
        let node = node_of(&fs.mount_point);
        if sys::is_block_device(&fs.device) && node.is_none() {
            // Already reported above; the user chose to continue without this filesystem.
            continue;
        }
        let probed = node.as_deref().and_then(|n| registry.fs_type(n));
        match sys::mount_filesystem(new_root, fs, node.as_deref(), probed) {
            Ok(fstype) => log::info!(
                "mounted {} ({}, {fstype}) in {} ms",
                fs.mount_point,
                fs.device,
                m.elapsed().as_millis()
            ),
            Err(e) => {
                fail(policy, &format!("mounting {}", fs.mount_point), &e);
            }
        }
        if fs.mount_point == "/" {
            if let Some(node) = &node {
                // systemd and tools expect /dev/root for the root device, as NixOS's udev rule makes it.
                let _ = std::os::unix::fs::symlink(node, "/dev/root");
            }
        }
    }
}

/// One line describing every block device found, for "device not found" messages.
fn seen_devices(registry: &devices::Registry) -> String {
    let list: Vec<String> = registry
        .devices()
        .map(|d| match &d.fs {
            Some(fs) => format!(
                "{} ({} label={} uuid={})",
                d.name,
                fs.fs_type,
                fs.label.as_deref().unwrap_or("-"),
                fs.uuid.as_deref().unwrap_or("-")
            ),
            None => d.name.clone(),
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}
