//! Assembling the new root: wait for every block device the boot needs (together, with
//! one deadline), resume from hibernation when there is an image, then check and mount
//! the filesystems in order under `/mnt-root`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::probe::DeviceSpec;
use stagehand_common::emergency::{fail, reboot, FailurePolicy};
use stagehand_common::stage1_config::FileSystem;
use stagehand_common::timing::{monotonic_us, Spans};

use crate::plan::Plan;
use crate::resume::ResumePlan;
use crate::{devices, fsck, resume, sys};

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
/// Returns the microseconds spent blocked waiting for device nodes.
pub fn mount_all(
    plan: &Plan,
    policy: &FailurePolicy,
    new_root: &Path,
    phases: &mut Spans,
    registry: &mut devices::Registry,
) -> u64 {
    let t = Instant::now();
    let t_us = monotonic_us();
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
                        seen_devices(registry)
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
    if plan.btrfs_scan {
        let t_scan = monotonic_us();
        let left = timeout.saturating_sub(t.elapsed());
        scan_btrfs(registry, &found, left);
        phases.since("btrfs scan", t_scan);
    }

    let resume_found: Vec<Option<PathBuf>> = wanted
        .iter()
        .zip(&found)
        .filter(|(w, _)| w.mount_point.is_none())
        .map(|(_, f)| f.clone())
        .collect();
    try_resume(plan, registry, &resume_found);
    phases.since("devices", t_us);

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
            let t = monotonic_us();
            check_filesystem(plan, policy, fs, node, probed);
            phases.since(format!("fsck {}", fs.mount_point), t);
        }
        let t = monotonic_us();
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
        phases.since(format!("mount {}", fs.mount_point), t);
        if fs.mount_point == "/" {
            if let Some(node) = &node {
                // systemd and tools expect /dev/root for the root device, as NixOS's udev rule makes it.
                let _ = std::os::unix::fs::symlink(node, "/dev/root");
            }
        }
    }
    registry.waited.as_micros() as u64
}

/// Before mounting a btrfs filesystem that spans several devices, wait (within what is
/// left of the device timeout) until all of its devices are there, then register every
/// btrfs device found with the kernel: the mount then assembles the filesystem from
/// them, whichever device it names.
fn scan_btrfs(registry: &mut devices::Registry, found: &[Option<PathBuf>], left: Duration) {
    let wanted: Vec<crate::btrfs::BtrfsMember> = found
        .iter()
        .flatten()
        .filter_map(|node| std::fs::File::open(node).ok())
        .filter_map(|mut f| crate::btrfs::member(&mut f))
        .collect();
    let count = |reg: &devices::Registry, fsid: &str| {
        reg.devices()
            .filter(|d| {
                d.fs.as_ref()
                    .is_some_and(|f| f.fs_type == "btrfs" && f.uuid.as_deref() == Some(fsid))
            })
            .count() as u64
    };
    let complete = registry.wait_until(left, |reg| {
        wanted.iter().all(|m| count(reg, &m.fsid) >= m.num_devices)
    });
    if !complete {
        for m in &wanted {
            let have = count(registry, &m.fsid);
            if have < m.num_devices {
                log::warn!(
                    "btrfs {}: {have} of its {} devices found; mounting it needs the others                      (or the `degraded` mount option)",
                    m.fsid,
                    m.num_devices
                );
            }
        }
    }
    let nodes: Vec<PathBuf> = registry
        .devices()
        .filter(|d| d.fs.as_ref().is_some_and(|f| f.fs_type == "btrfs"))
        .map(|d| Path::new("/dev").join(&d.name))
        .collect();
    for node in nodes {
        match crate::btrfs::scan_device(&node) {
            Ok(()) => log::info!("btrfs device {} registered", node.display()),
            Err(e) => log::warn!("{e}"),
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
            let e = reboot();
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
