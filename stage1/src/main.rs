//! Stagehand stage 1: the initrd's `/init`.
//!
//! Mounts the special filesystems, reads the compiled stage-1 config, loads the kernel
//! modules, mounts the root (and whatever else boot needs) under `/mnt-root`, finds the
//! generation named by `init=` inside it and `switch_root`s into that generation's stage 2.
//! Every failure goes through [`failure::fail`]; PID 1 never panics and never exits except
//! on purpose (`boot.panic_on_fail`).

#[cfg(test)]
mod boot_tests;
mod devices;
mod fsck;
mod init_path;
mod plan;
mod resume;
mod secrets;
mod sys;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stagehand_common::cmdline::Cmdline;
use stagehand_common::kmsg::KmsgLogger;
use stagehand_common::probe::DeviceSpec;
use stagehand_common::stage1_config::{FileSystem, Stage1Config, STAGE1_CONFIG_PATH};

use plan::{BreakPoint, Plan, TARGET_ROOT};
use resume::ResumePlan;
use stagehand_common::emergency::{fail, FailurePolicy};

const STAGE1_HEADER: &str =
    "An error occurred in stage 1 of the boot process, which must mount the \
     root filesystem on /mnt-root and then start stage 2.";

fn main() {
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
    sys::make_etc_stubs();
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

/// A device stage 1 waits for: a filesystem's, or a possible hibernation image's.
struct Wanted {
    /// The mount point, or `None` for a resume device.
    mount_point: Option<String>,
    /// As configured (`LABEL=nixos`), for messages.
    device: String,
    spec: DeviceSpec,
}

/// Wait for every block device the boot needs (together, with one deadline), resume
/// from hibernation if there is an image, then check and mount the filesystems in order.
fn mount_all(plan: &Plan, policy: &FailurePolicy, new_root: &Path) {
    let t = Instant::now();
    let mut registry = devices::Registry::system();
    let mut wanted = Vec::new();
    for fs in plan
        .filesystems
        .iter()
        .filter(|fs| sys::is_block_device(&fs.device))
    {
        match DeviceSpec::parse(&fs.device) {
            Ok(spec) => wanted.push(Wanted {
                mount_point: Some(fs.mount_point.clone()),
                device: fs.device.clone(),
                spec,
            }),
            Err(e) => {
                fail(
                    policy,
                    &format!("finding the device of {}", fs.mount_point),
                    &format!("{}: {e}", fs.device),
                );
            }
        }
    }
    let resume_waits = if sys::can_resume() {
        plan.resume.waits()
    } else {
        Vec::new()
    };
    for device in resume_waits {
        match DeviceSpec::parse(&device) {
            Ok(spec) => wanted.push(Wanted {
                mount_point: None,
                device,
                spec,
            }),
            Err(e) => log::warn!("resume device {device} ignored: {e}"),
        }
    }
    let specs: Vec<DeviceSpec> = wanted.iter().map(|w| w.spec.clone()).collect();
    let timeout = Duration::from_millis(plan.device_timeout_ms.into());
    log::debug!(
        "waiting up to {} ms for {}",
        timeout.as_millis(),
        wanted
            .iter()
            .map(|w| w.device.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let found = registry.wait_all(&specs, timeout);
    for (w, node) in wanted.iter().zip(&found) {
        match (node, &w.mount_point) {
            (Some(node), Some(mp)) => {
                log::info!("device {} for {mp} is {}", w.device, node.display())
            }
            (Some(node), None) => log::debug!("resume device {} is {}", w.device, node.display()),
            (None, Some(mp)) => {
                fail(
                    policy,
                    &format!("waiting for the device of {mp}"),
                    &format!(
                        "device {} did not appear within {} ms; check root= or the \
                         filesystem's device, and that the initrd has the disk's driver. \
                         Block devices seen: {}",
                        w.device,
                        timeout.as_millis(),
                        seen_devices(&registry)
                    ),
                );
            }
            (None, None) => log::info!(
                "resume device {} did not appear within {} ms; not resuming from it",
                w.device,
                timeout.as_millis()
            ),
        }
    }
    log::info!("devices ready in {} ms", t.elapsed().as_millis());

    let resume_found: Vec<Option<PathBuf>> = wanted
        .iter()
        .zip(&found)
        .filter(|(w, _)| w.mount_point.is_none())
        .map(|(_, f)| f.clone())
        .collect();
    try_resume(plan, &registry, &resume_found);

    let node_of = |mount_point: &str| {
        wanted
            .iter()
            .zip(&found)
            .find(|(w, _)| w.mount_point.as_deref() == Some(mount_point))
            .and_then(|(_, f)| f.clone())
    };
    for fs in &plan.filesystems {
        let m = Instant::now();
        let node = node_of(&fs.mount_point);
        if sys::is_block_device(&fs.device) && node.is_none() {
            // Already reported above; the user chose to continue without this filesystem.
            continue;
        }
        let probed = node.as_deref().and_then(|n| registry.fs_type(n));
        if let Some(node) = &node {
            check_filesystem(plan, policy, fs, node, probed);
        }
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

/// Resume from hibernation if the plan and the devices say there is an image; the
/// kernel takes over and this does not return when there is one.
fn try_resume(plan: &Plan, registry: &devices::Registry, found: &[Option<PathBuf>]) {
    if plan.resume == ResumePlan::Off {
        log::debug!("resume: off (noresume)");
        return;
    }
    if !sys::can_resume() {
        log::debug!("resume: the kernel has no /sys/power/resume (no hibernation support)");
        return;
    }
    let found: Vec<Option<SeenDevice>> = found
        .iter()
        .map(|f| SeenDevice::at(registry, f.as_deref()?))
        .collect();
    let all: Vec<SeenDevice> = registry
        .devices()
        .filter_map(|d| SeenDevice::at(registry, &Path::new("/dev").join(&d.name)))
        .collect();
    let found_seen: Vec<Option<resume::Seen<'_>>> = found
        .iter()
        .map(|f| f.as_ref().map(SeenDevice::seen))
        .collect();
    let all_seen: Vec<resume::Seen<'_>> = all.iter().map(SeenDevice::seen).collect();
    match resume::choose(&plan.resume, &found_seen, &all_seen) {
        resume::ResumeChoice::Nothing { why } => log::debug!("resume: {why}"),
        resume::ResumeChoice::Resume { devno, what } => {
            log::info!(
                "resuming from hibernation on {what}: writing {}:{} to /sys/power/resume",
                devno.0,
                devno.1
            );
            match sys::resume_from(devno) {
                // The kernel found no image there (or it did not fit): boot normally.
                Ok(()) => log::info!("no hibernation image was resumed; booting normally"),
                Err(e) => log::warn!("{e}; booting normally"),
            }
        }
    }
}

/// What the resume decision needs to know about a device node.
struct SeenDevice {
    name: String,
    fs_type: Option<&'static str>,
    devno: (u32, u32),
}

impl SeenDevice {
    fn at(registry: &devices::Registry, node: &Path) -> Option<Self> {
        Some(Self {
            name: node.file_name()?.to_string_lossy().into_owned(),
            fs_type: registry.fs_type(node),
            devno: sys::devno(node)?,
        })
    }

    fn seen(&self) -> resume::Seen<'_> {
        resume::Seen {
            name: &self.name,
            fs_type: self.fs_type,
            devno: self.devno,
        }
    }
}

/// fsck `fs` on `node` before mounting it, as NixOS's `checkFS`.
fn check_filesystem(
    plan: &Plan,
    policy: &FailurePolicy,
    fs: &FileSystem,
    node: &Path,
    probed: Option<&str>,
) {
    let fs_type = match fs.fs_type.as_str() {
        "auto" => probed,
        t => Some(t),
    };
    let mounted = sys::devno(node).is_some_and(|d| sys::mounted_devices().contains(&d));
    let cmd = match fsck::decide(&plan.fsck, true, fs_type, mounted, |p| {
        Path::new(p).exists()
    }) {
        Ok(cmd) => cmd,
        Err(skip @ (fsck::Skip::NoChecker { .. } | fsck::Skip::UnknownType)) => {
            log::info!("not checking {} ({}): {skip}", fs.mount_point, fs.device);
            return;
        }
        Err(skip) => {
            log::debug!("not checking {} ({}): {skip}", fs.mount_point, fs.device);
            return;
        }
    };
    let t = Instant::now();
    let what = format!("checking {} ({})", fs.mount_point, node.display());
    let code = match sys::run_fsck(&cmd, node) {
        Ok(code) => code,
        Err(e) => {
            fail(policy, &what, &e);
            return;
        }
    };
    let ms = t.elapsed().as_millis();
    let code_text = code.map_or("killed by a signal".to_owned(), |c| {
        format!("exit code {c}")
    });
    match fsck::interpret(code) {
        fsck::Outcome::Clean => log::info!("fsck of {} clean in {ms} ms", node.display()),
        fsck::Outcome::Corrected => log::info!(
            "fsck of {} corrected errors in {ms} ms ({code_text})",
            node.display()
        ),
        fsck::Outcome::Reboot => {
            log::warn!(
                "fsck finished, rebooting... ({} {code_text})",
                node.display()
            );
            // The message is the only explanation the user gets for the reboot; give
            // the console a moment to show it, as NixOS does.
            std::thread::sleep(Duration::from_secs(3));
            let e = sys::reboot();
            fail(policy, &what, &e);
        }
        fsck::Outcome::Unrepaired(_) => {
            fail(
                policy,
                &what,
                &format!(
                    "{} has unrepaired errors ({} {code_text}), please fix them manually",
                    node.display(),
                    cmd.program
                ),
            );
        }
        fsck::Outcome::Failed(_) => {
            fail(
                policy,
                &what,
                &format!(
                    "{} could not check {} ({code_text}); see its messages above",
                    cmd.program,
                    node.display()
                ),
            );
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
