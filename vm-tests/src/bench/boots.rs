//! One timed boot of the demo generation from a given initrd, and the phase times read
//! from the kernel timestamps on its console. Every initrd gets the same kernel, the same
//! command line and a fresh copy of the same root image, and each boot must reach the same
//! marker: the generation's stage 2 (`init=` on the real root) activates it and starts its
//! systemd, whose probe unit reports the facts `scenarios::check_probe` checks.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::console::{probe_facts, PROBE_DONE};
use crate::generation::BuiltGeneration;
use crate::host::run;
use crate::qemu::{Line, Vm};
use crate::scenarios::{check_probe, Expected, Inputs, FIRST_LINE, STEP};

use super::peers::Kind;

/// The kernel's line just before it executes the initrd's `/init`.
const RUN_INIT: &str = "Run /init as init process";
/// A peer's initrd under TCG (dracut's systemd and udev) takes far longer than one step.
const PEER_INITRD: Duration = Duration::from_secs(300);

/// Kernel timestamps (seconds) of one boot's milestones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Milestones {
    /// The kernel starts the initrd's `/init`.
    pub init: Option<f64>,
    /// The initrd's own "switching root" line, where it prints one (ours; dracut's systemd
    /// logs it to its journal, initramfs-tools' scripts without a timestamp).
    pub switch_root: Option<f64>,
    /// The first line of stage 2, i.e. of the real root's init.
    pub stage2: Option<f64>,
    /// Stage 2's last line: it executes the generation's systemd.
    pub systemd: Option<f64>,
    /// The probe unit (started by that systemd) runs.
    pub probe: Option<f64>,
    /// Host clock: QEMU start until the VM powered off.
    pub host_total: Option<f64>,
}

fn kmsg<'a>(l: &'a Line, ident: &str) -> Option<(f64, &'a str)> {
    let (ts, rest) = l.text.split_once("] ")?;
    if !ts.trim_start().starts_with('[') || !rest.starts_with(ident) {
        return None;
    }
    Some((l.kernel_time()?, rest))
}

impl Milestones {
    pub fn from_lines(lines: &[Line]) -> Self {
        let first = |ident: &str, what: &str| {
            lines
                .iter()
                .find_map(|l| kmsg(l, ident).and_then(|(t, rest)| rest.contains(what).then_some(t)))
        };
        let init = lines
            .iter()
            .find(|l| l.text.contains(RUN_INIT))
            .and_then(Line::kernel_time);
        let stage2_lines: Vec<f64> = lines
            .iter()
            .filter_map(|l| kmsg(l, "stage2: ").map(|(t, _)| t))
            .collect();
        Self {
            init,
            switch_root: first("stage1: ", "switching root")
                .or_else(|| first("systemd[1]: ", "Switching root")),
            stage2: stage2_lines.first().copied(),
            systemd: first("stage2: ", "starting systemd"),
            probe: first("guest-probe: ", "started"),
            host_total: None,
        }
    }
}

/// What one boot gave: its milestones, or why it does not count.
pub struct BootResult {
    pub kind: Kind,
    pub milestones: Milestones,
    pub failures: Vec<String>,
    pub log: std::path::PathBuf,
}

/// Boot `initrd` with a fresh copy of `image` and wait for the probe; `n` numbers the log.
pub fn boot(
    inputs: &Inputs,
    dir: &Path,
    kind: Kind,
    n: usize,
    initrd: &Path,
    image: &Path,
    generation: &BuiltGeneration,
) -> Result<BootResult> {
    let disk = dir.join(format!("root-{}.img", kind.slug()));
    // Sparse copy: the image is mostly empty, and each boot must start from the same state.
    run(std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(&disk))
    .context("copying the root image")?;
    let log = dir.join(format!("console-{}-{n}.log", kind.slug()));
    let cfg = inputs.vm_config(initrd, vec![disk.clone()], cmdline(generation), log.clone());
    let mut failures = Vec::new();
    let mut vm = Vm::start(&cfg)?;
    let initrd_limit = if kind == Kind::Stagehand {
        STEP
    } else {
        PEER_INITRD
    };
    let waited = (|| -> Result<()> {
        vm.wait_for(RUN_INIT, FIRST_LINE)?;
        vm.wait_for_line("stage 2 booting the generation", initrd_limit, |l| {
            l.contains("stage2: ") && l.contains(generation.toplevel.as_str())
        })?;
        vm.wait_for("stage2: starting systemd", STEP)?;
        vm.wait_for(PROBE_DONE, STEP)?;
        let status = vm.wait_exit(STEP)?;
        if !status.success() {
            anyhow::bail!("QEMU exited with {status}");
        }
        Ok(())
    })();
    if let Err(e) = waited {
        failures.push(format!("{e:#}"));
        failures.push(vm.failure_context(20));
    }
    let lines = vm.lines();
    let mut milestones = Milestones::from_lines(&lines);
    milestones.host_total = Some(vm.elapsed().as_secs_f64());
    if failures.is_empty() {
        failures.extend(check_probe(&probe_facts(&lines), &Expected::of(generation)));
    }
    drop(vm);
    let _ = std::fs::remove_file(&disk);
    Ok(BootResult {
        kind,
        milestones,
        failures,
        log,
    })
}

/// One command line for all of them: the peers need `root=`; ours takes its root from the
/// stage-1 config, and `root=` names the same disk.
pub fn cmdline(generation: &BuiltGeneration) -> String {
    format!("root=/dev/vda {}", generation.cmdline())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<Line> {
        text.lines()
            .map(|t| Line {
                text: t.to_string(),
                host: Duration::ZERO,
            })
            .collect()
    }

    #[test]
    fn milestones_of_our_boot() {
        let m = Milestones::from_lines(&lines(
            "[    2.300000] Run /init as init process\n\
             [    2.400000] stage1: started; special filesystems mounted\n\
             [    3.000000] stage1: switching root to /mnt-root, stage 2 is /nix/store/x/init\n\
             [    3.200000] stage2: booting system configuration /nix/store/x\n\
             [    3.500000] stage2: starting systemd /nix/store/x/systemd/lib/systemd/systemd\n\
             [    4.000000] systemd[1]: systemd 252 running in system mode\n\
             [    4.500000] guest-probe: started\n\
             STAGEHAND-PROBE done\n",
        ));
        assert_eq!(m.init, Some(2.3));
        assert_eq!(m.switch_root, Some(3.0));
        assert_eq!(m.stage2, Some(3.2));
        assert_eq!(m.systemd, Some(3.5));
        assert_eq!(m.probe, Some(4.5));
    }

    #[test]
    fn milestones_of_a_peer_boot_ignore_the_initrds_own_systemd() {
        let m = Milestones::from_lines(&lines(
            "[   11.400000] Run /init as init process\n\
             [   12.700000] systemd[1]: systemd 252 running in system mode\n\
             [   12.800000] systemd[1]: Running in initrd.\n\
             Begin: Mounting root file system ... done.\n\
             [   80.000000] stage2: mounted /dev/shm\n\
             [   80.100000] stage2: booting system configuration /nix/store/x\n\
             [   80.400000] stage2: starting systemd /nix/store/x/systemd/lib/systemd/systemd\n\
             [   82.000000] guest-probe: started\n",
        ));
        assert_eq!(m.init, Some(11.4));
        assert_eq!(m.switch_root, None);
        assert_eq!(m.stage2, Some(80.0));
        assert_eq!(m.systemd, Some(80.4));
        assert_eq!(m.probe, Some(82.0));
    }
}
