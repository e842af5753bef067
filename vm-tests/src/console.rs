//! Reading a finished (or running) boot's console: the probe's facts and the phase times
//! from the kernel's timestamps.

use std::collections::BTreeMap;
use std::fmt;

use crate::qemu::Line;

pub const PROBE_PREFIX: &str = "STAGEHAND-PROBE ";
pub const PROBE_DONE: &str = "STAGEHAND-PROBE done";

/// `key=value` facts the guest probe printed (the last value wins if one repeats).
pub fn probe_facts(lines: &[Line]) -> BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|l| {
            // Kernel output can land on the same console line before the marker.
            let at = l.text.find(PROBE_PREFIX)?;
            let (k, v) = l.text[at + PROBE_PREFIX.len()..].split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Whether any console line contains `needle`.
pub fn shows(lines: &[Line], needle: &str) -> bool {
    lines.iter().any(|l| l.text.contains(needle))
}

/// Console lines worth a look even when every check passed: systemd complaining, and
/// records that reached the console with a raw `<N>` printk prefix (written to the
/// console because /dev/kmsg could not be opened).
pub fn suspicious_lines(lines: &[Line]) -> Vec<&Line> {
    lines
        .iter()
        .filter(|l| {
            let t = l.text.trim_start();
            let systemd = t.contains("systemd[1]: ")
                && [
                    "Failed", "failed", "tainted", "Warning", "Cannot", "Refusing",
                ]
                .iter()
                .any(|w| t.contains(w));
            let raw_printk = t.len() > 3
                && t.as_bytes()[0] == b'<'
                && t.as_bytes()[1].is_ascii_digit()
                && t.as_bytes()[2] == b'>';
            systemd || raw_printk
        })
        .collect()
}

fn first(lines: &[Line], pred: impl Fn(&str) -> bool) -> Option<(usize, &Line)> {
    lines.iter().enumerate().find(|(_, l)| pred(&l.text))
}

/// Kernel timestamps (seconds since the kernel started) of the boot's milestones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Phases {
    pub stage1_start: Option<f64>,
    pub switch_root: Option<f64>,
    pub stage2_start: Option<f64>,
    /// The last stage-2 line before systemd's first: stage 2 is about to exec systemd.
    pub stage2_end: Option<f64>,
    pub systemd_start: Option<f64>,
    /// The probe unit's first kmsg line: systemd has started the default target's unit.
    pub probe_start: Option<f64>,
    /// Host clock: QEMU start to the probe's last line, and to QEMU's exit.
    pub host_probe_done: Option<f64>,
    pub host_exit: Option<f64>,
}

fn kmsg_of(ident: &str) -> impl Fn(&str) -> bool + '_ {
    move |t: &str| {
        t.split_once("] ")
            .is_some_and(|(ts, rest)| ts.trim_start().starts_with('[') && rest.starts_with(ident))
    }
}

impl Phases {
    pub fn from_lines(lines: &[Line]) -> Self {
        let kt = |x: Option<(usize, &Line)>| x.and_then(|(_, l)| l.kernel_time());
        let stage1 = kmsg_of("stage1: ");
        let stage2 = kmsg_of("stage2: ");
        let systemd = first(lines, kmsg_of("systemd[1]: "));
        let systemd_idx = systemd.map_or(lines.len(), |(i, _)| i);
        let stage2_end = lines[..systemd_idx]
            .iter()
            .rev()
            .find(|l| stage2(&l.text))
            .and_then(Line::kernel_time);
        Self {
            stage1_start: kt(first(lines, &stage1)),
            switch_root: kt(first(lines, |t| {
                stage1(t) && t.contains("stage1: switching root")
            })),
            stage2_start: kt(first(lines, &stage2)),
            stage2_end,
            systemd_start: kt(systemd),
            probe_start: kt(first(lines, kmsg_of("guest-probe: started"))),
            host_probe_done: first(lines, |t| t.contains(PROBE_DONE))
                .map(|(_, l)| l.host.as_secs_f64()),
            host_exit: None,
        }
    }
}

impl fmt::Display for Phases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let span = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:>8.3} s", b - a),
            _ => "       -  ".to_string(),
        };
        let at = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{t:.3}"));
        let rows = [
            ("kernel start → stage 1 start", Some(0.0), self.stage1_start),
            (
                "stage 1 start → switch_root",
                self.stage1_start,
                self.switch_root,
            ),
            (
                "switch_root → stage 2 start",
                self.switch_root,
                self.stage2_start,
            ),
            (
                "stage 2 start → exec systemd",
                self.stage2_start,
                self.stage2_end,
            ),
            (
                "exec systemd → probe unit runs",
                self.stage2_end,
                self.probe_start,
            ),
            (
                "kernel start → probe unit runs",
                Some(0.0),
                self.probe_start,
            ),
        ];
        writeln!(f, "phase times (kernel clock):")?;
        for (name, a, b) in rows {
            writeln!(f, "  {name:<34}{}", span(a, b))?;
        }
        writeln!(
            f,
            "  (kernel timestamps: stage1 {} · switch_root {} · stage2 {} · exec systemd {} · \
             systemd's first line {} · probe {})",
            at(self.stage1_start),
            at(self.switch_root),
            at(self.stage2_start),
            at(self.stage2_end),
            at(self.systemd_start),
            at(self.probe_start)
        )?;
        write!(
            f,
            "host clock: QEMU start → probe done {} · → VM off {}",
            self.host_probe_done
                .map_or("-".into(), |t| format!("{t:.2} s")),
            self.host_exit.map_or("-".into(), |t| format!("{t:.2} s"))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lines(text: &str) -> Vec<Line> {
        text.lines()
            .enumerate()
            .map(|(i, t)| Line {
                text: t.to_string(),
                host: Duration::from_millis(100 * i as u64),
            })
            .collect()
    }

    #[test]
    fn shows_looks_inside_every_line() {
        let l = lines("[    1.0] stage1: started\nKernel panic - not syncing");
        assert!(shows(&l, "Kernel panic"));
        assert!(shows(&l, "stage1: "));
        assert!(!shows(&l, "stage2: "));
        assert!(!shows(&[], ""));
    }

    const BOOT: &str = "\
[    0.000000] Linux version 6.1.0
[    1.500000] stage1: started; special filesystems mounted
[    1.600000] stage1: loading module virtio_blk: done in 3 ms
[    1.900000] stage1: switching root to /mnt-root, stage 2 is /nix/store/x/bin/stage2
[    1.950000] stage2: started
[    2.000000] stage2: activation done
[    2.010000] stage2: exec systemd
[    2.100000] systemd[1]: systemd 252 running in system mode
[  OK  ] Reached target Stagehand test system.
[    2.700000] guest-probe: started
kernel noise STAGEHAND-PROBE pid1.comm=systemd
STAGEHAND-PROBE passwd.alice=alice:x:1000:100:Alice:/home/alice:/bin/sh
STAGEHAND-PROBE done
";

    #[test]
    fn phases_from_kernel_timestamps() {
        let p = Phases::from_lines(&lines(BOOT));
        assert_eq!(p.stage1_start, Some(1.5));
        assert_eq!(p.switch_root, Some(1.9));
        assert_eq!(p.stage2_start, Some(1.95));
        assert_eq!(p.stage2_end, Some(2.01));
        assert_eq!(p.systemd_start, Some(2.1));
        assert_eq!(p.probe_start, Some(2.7));
        assert_eq!(p.host_probe_done, Some(1.2));
        let shown = p.to_string();
        assert!(shown.contains("stage 1 start → switch_root"), "{shown}");
        assert!(shown.contains("0.400 s"), "{shown}");
    }

    #[test]
    fn flags_systemd_complaints_and_raw_printk_records() {
        let l = lines(
            "[    9.7] systemd[1]: System is tainted: var-run-bad\n\
             <6>stage1: freed the initramfs in 147 ms\n\
             [    9.8] systemd[1]: Detected virtualization qemu.\n\
             <html>\n",
        );
        let texts: Vec<&str> = suspicious_lines(&l)
            .iter()
            .map(|l| l.text.as_str())
            .collect();
        assert_eq!(
            texts,
            [
                "[    9.7] systemd[1]: System is tainted: var-run-bad",
                "<6>stage1: freed the initramfs in 147 ms"
            ]
        );
    }

    #[test]
    fn missing_phases_are_none() {
        let p = Phases::from_lines(&lines("[    0.1] Linux\n[    0.9] stage1: started\n"));
        assert_eq!(p.stage1_start, Some(0.9));
        assert_eq!(p.switch_root, None);
        assert_eq!(p.systemd_start, None);
        assert!(p.to_string().contains("  -  "));
    }

    #[test]
    fn probe_facts_survive_interleaving() {
        let f = probe_facts(&lines(BOOT));
        assert_eq!(f.get("pid1.comm").map(String::as_str), Some("systemd"));
        assert_eq!(
            f.get("passwd.alice").map(String::as_str),
            Some("alice:x:1000:100:Alice:/home/alice:/bin/sh")
        );
        assert!(!f.contains_key("done"));
    }
}
