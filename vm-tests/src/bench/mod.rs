//! `vm-tests bench [--boots N]`: Stagehand side by side with the peers people use today,
//! in one run, with public tools.
//!
//! 1. Initrds for the same kernel and root: ours, Debian's `dracut` (host-only, as Fedora
//!    and RHEL build it for one machine; generic with our driver list; generic as it comes)
//!    and `initramfs-tools` (our module list; `MODULES=most`), their build times, compressed
//!    sizes and entry counts.
//! 2. Boots of the same kernel, command line and root image with each of the four bootable
//!    initrds, alternating, `N` boots each (default 5), every one asserted to reach the
//!    generation's stage 2, its systemd and the probe unit; the phases from kernel
//!    timestamps, medians with their spread, and ratios to ours.
//! 3. Activation as whole processes (`stagehand etc` / `stagehand users`) on generated
//!    NixOS-shaped inputs: hyperfine medians and `strace -c -f` system-call counts.
//! 4. The rest of BENCHMARKS.md, so that this one command reproduces every figure in it:
//!    activation in process (`stagehand bench`), one boot of ours phase by phase with its
//!    timeline SVG (the boot-spine scenario), and the initrd compression/stripping table.
//!
//! Not on the test path: `vm-tests/bench-host` installs what only this needs.

pub mod activation;
pub mod boots;
pub mod floor;
pub mod peers;

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::scenarios::Inputs;
use boots::{BootResult, Milestones};
use peers::{Built, DracutBuild, Kind};

/// Default boots per initrd.
pub const DEFAULT_BOOTS: usize = 5;

/// Run the whole benchmark; the report goes to stdout and `<target>/vm-tests/bench/report.md`.
pub fn run(boots_each: usize) -> Result<bool> {
    peers::check_tools()?;
    let inputs = Inputs::prepare()?;
    let dir = inputs.scenario_dir("bench")?;
    inputs.workspace.build_release(&["-p", "stagehand-cli"])?;
    let stagehand = inputs.workspace.release_binary("stagehand")?;

    let initrds = build_initrds(&inputs, &dir)?;
    let results = boot_each_initrd(&inputs, &dir, &initrds, boots_each)?;
    eprintln!("bench: activation (hyperfine, strace)");
    let cases = activation::measure(&stagehand, &dir.join("activation"))?;

    let mut report = String::new();
    boot_table(&mut report, &results, boots_each)?;
    writeln!(
        report,
        "\ndracut host-only was built on this host, whose root is {} (the guest's: ext4 on \
         /dev/vda, virtio).",
        peers::host_root()?
    )?;
    initrd_table(&mut report, &initrds)?;
    let kib = |p: &Path| fs::metadata(p).map_or(0, |m| m.len()).div_ceil(1024);
    writeln!(
        report,
        "\nBinaries (static, release): stage1 {} KiB, stage2 {} KiB (includes the activation \
         engine), stagehand {} KiB.",
        kib(&inputs.bins.stage1),
        kib(&inputs.bins.stage2),
        kib(&stagehand)
    )?;
    writeln!(
        report,
        "\nActivation, whole process (`stagehand etc|users --root`, tmpfs), hyperfine median \
         of 10 runs and `strace -c -f` system calls per run:\n"
    )?;
    report.push_str(&activation::table(&cases)?);
    // The rest of BENCHMARKS.md, so that this one command reproduces every figure in it.
    activation_in_process(&mut report, &stagehand)?;
    let spine_ok = boot_spine(&mut report, &inputs, &dir)?;
    eprintln!("bench: initrd compression and stripping (vm-tests initrd-sizes)");
    writeln!(report, "\nInitrd compression and stripping:\n")?;
    report.push_str(&crate::initrd_scenarios::sizes(&inputs)?);

    let path = dir.join("report.md");
    fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    println!("{report}");
    println!("(also in {}; console logs beside it)", path.display());
    let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
    if failed > 0 {
        println!("{failed} boot(s) failed; they are left out of the medians");
    }
    Ok(failed == 0 && spine_ok)
}

/// The initrds of one run: those that boot (one per [`Kind`], in [`Kind::ALL`]'s order) and
/// those built only for their size.
pub struct Initrds {
    pub booted: Vec<(Kind, Built)>,
    pub size_only: Vec<Built>,
}

impl Initrds {
    fn of(&self, kind: Kind) -> Result<&Built> {
        self.booted
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, b)| b)
            .with_context(|| format!("no {} initrd was built", kind.name()))
    }

    fn all(&self) -> impl Iterator<Item = &Built> {
        self.booted.iter().map(|(_, b)| b).chain(&self.size_only)
    }
}

/// Ours, dracut host-only and generic, initramfs-tools with our module list (the four that
/// boot), then the two peers as they build by default.
fn build_initrds(inputs: &Inputs, dir: &Path) -> Result<Initrds> {
    eprintln!("bench: building the initrds (ours, dracut ×3, initramfs-tools ×2)");
    let t = Instant::now();
    let (_, ours_path) = inputs.initrd_in(dir, |_| {})?;
    let ours = Built::measure("stagehand", &ours_path, t.elapsed(), "zstd")?;
    let modules = peers::modules_tree(&inputs.kernel, &dir.join("kroot"))?;
    let kroot = dir.join("kroot");
    let dracut = |file: &str, label: &str, build: DracutBuild| -> Result<Built> {
        let path = dir.join(file);
        let d = peers::dracut(&inputs.kernel, &modules, &path, build)?;
        Built::measure(label, &path, d, "gzip")
    };
    let hostonly = dracut(
        "dracut-hostonly.img",
        "dracut host-only (our drivers added)",
        DracutBuild::HostOnly,
    )?;
    let generic = dracut(
        "dracut.img",
        "dracut generic, our drivers",
        DracutBuild::GenericOurDrivers,
    )?;
    let itools_path = dir.join("initramfs-tools.img");
    let d = peers::initramfs_tools(&inputs.kernel, &kroot, dir, &itools_path, true)?;
    let itools = Built::measure("initramfs-tools, our modules", &itools_path, d, "zstd")?;
    let dracut_default = dracut(
        "dracut-generic.img",
        "dracut generic, default drivers",
        DracutBuild::GenericDefault,
    )?;
    let path = dir.join("initramfs-tools-most.img");
    let d = peers::initramfs_tools(&inputs.kernel, &kroot, dir, &path, false)?;
    let itools_most = Built::measure("initramfs-tools, default (MODULES=most)", &path, d, "zstd")?;
    Ok(Initrds {
        booted: vec![
            (Kind::Stagehand, ours),
            (Kind::DracutHostOnly, hostonly),
            (Kind::DracutGeneric, generic),
            (Kind::InitramfsTools, itools),
        ],
        size_only: vec![dracut_default, itools_most],
    })
}

/// `boots_each` rounds, each booting the demo image once with every bootable initrd,
/// alternating, so that a slow spell of the shared machine hits all of them alike.
fn boot_each_initrd(
    inputs: &Inputs,
    dir: &Path,
    initrds: &Initrds,
    boots_each: usize,
) -> Result<Vec<BootResult>> {
    let (image, generation) = inputs.demo_image(dir, &initrds.of(Kind::Stagehand)?.path)?;
    let mut results: Vec<BootResult> = Vec::new();
    for round in 0..boots_each {
        for kind in Kind::ALL {
            let initrd = &initrds.of(kind)?.path;
            eprintln!(
                "bench: boot {} of {boots_each} with {}",
                round + 1,
                kind.name()
            );
            let r = boots::boot(inputs, dir, kind, round, initrd, &image, &generation)?;
            if !r.failures.is_empty() {
                eprintln!("bench: the {} boot failed:", kind.name());
                for f in &r.failures {
                    eprintln!("  {f}");
                }
            }
            results.push(r);
        }
    }
    Ok(results)
}

/// `stagehand bench`'s table, as activation/BENCHMARKS.md shows it.
fn activation_in_process(report: &mut String, stagehand: &Path) -> Result<()> {
    eprintln!("bench: activation in process (stagehand bench --reps 9 --dir /dev/shm)");
    let in_process = Command::new(stagehand)
        .args(["bench", "--reps", "9", "--dir", "/dev/shm"])
        .output()
        .with_context(|| format!("running {} bench", stagehand.display()))?;
    if !in_process.status.success() {
        bail!(
            "{} bench failed: {}",
            stagehand.display(),
            String::from_utf8_lossy(&in_process.stderr).trim()
        );
    }
    writeln!(
        report,
        "\nActivation in process (`stagehand bench --reps 9 --dir /dev/shm`; \
         activation/BENCHMARKS.md):\n\n```\n{}```",
        String::from_utf8_lossy(&in_process.stdout)
    )?;
    Ok(())
}

/// One boot of ours phase by phase (the boot-spine scenario) and its timeline; `false`
/// when that boot failed.
fn boot_spine(report: &mut String, inputs: &Inputs, dir: &Path) -> Result<bool> {
    eprintln!(
        "bench: one boot of ours, phase by phase (the boot-spine scenario), and its timeline"
    );
    let spine = crate::scenarios::boot_spine(inputs, false)?;
    writeln!(report, "\nOne boot, phase by phase (boot-spine):\n")?;
    for note in &spine.notes {
        writeln!(report, "{note}")?;
    }
    for f in &spine.failures {
        writeln!(report, "boot-spine FAILED: {f}")?;
    }
    let drawn = inputs.scenario_dir("boot-spine")?.join("timeline.svg");
    if drawn.exists() {
        let svg = dir.join("timeline.svg");
        fs::copy(&drawn, &svg).with_context(|| format!("copying {}", drawn.display()))?;
        writeln!(report, "\nBoot timeline (SVG): {}", svg.display())?;
    }
    Ok(spine.failures.is_empty())
}

/// The middle value (the mean of the two middle ones for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    })
}

type Phase = (&'static str, fn(&Milestones) -> Option<f64>);

const PHASES: [Phase; 6] = [
    ("kernel start → /init", |m| m.init),
    (
        "/init → stage 2 on the real root (the initrd's work)",
        |m| Some(m.stage2? - m.init?),
    ),
    ("stage 2 → exec systemd (activation)", |m| {
        Some(m.systemd? - m.stage2?)
    }),
    ("kernel start → exec systemd (service manager)", |m| {
        m.systemd
    }),
    ("kernel start → probe unit runs", |m| m.probe),
    ("QEMU start → VM off (host clock)", |m| m.host_total),
];

/// The successful boots' values of one phase for one initrd.
fn phase_values(
    results: &[BootResult],
    kind: Kind,
    phase: fn(&Milestones) -> Option<f64>,
) -> Vec<f64> {
    results
        .iter()
        .filter(|r| r.kind == kind && r.failures.is_empty())
        .filter_map(|r| phase(&r.milestones))
        .filter(|v| v.is_finite())
        .collect()
}

/// `median (min–max)` in seconds, or `-` without values.
fn spread_cell(v: &[f64]) -> String {
    spread(v, 2, "-")
}

/// `median (min–max)` with `decimals` places (the median alone for one value), or `empty`.
pub fn spread(v: &[f64], decimals: usize, empty: &str) -> String {
    let (Some(m), Some(lo), Some(hi)) = (
        median(v),
        v.iter().copied().reduce(f64::min),
        v.iter().copied().reduce(f64::max),
    ) else {
        return empty.into();
    };
    if v.len() == 1 {
        format!("{m:.decimals$}")
    } else {
        format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})")
    }
}

fn boot_table(out: &mut String, results: &[BootResult], boots_each: usize) -> Result<()> {
    let ok = |kind: Kind| {
        results
            .iter()
            .filter(|r| r.kind == kind && r.failures.is_empty())
            .count()
    };
    let successful: Vec<String> = Kind::ALL
        .iter()
        .map(|k| format!("{} {}", k.name(), ok(*k)))
        .collect();
    writeln!(
        out,
        "Boots: same kernel, command line and root image; seconds, median (min–max) of \
         {boots_each} boots each (successful: {}), alternating.\n",
        successful.join(", ")
    )?;
    let peers = &Kind::ALL[1..];
    let mut header = String::from("| phase |");
    let mut rule = String::from("|---|");
    for k in Kind::ALL {
        write!(header, " {} |", k.name())?;
        rule.push_str("---|");
    }
    for k in peers {
        write!(header, " {} ÷ stagehand |", k.name())?;
        rule.push_str("---|");
    }
    writeln!(out, "{header}\n{rule}")?;
    for (name, phase) in PHASES {
        let mut row = format!("| {name} |");
        for k in Kind::ALL {
            write!(row, " {} |", spread_cell(&phase_values(results, k, phase)))?;
        }
        let ours = median(&phase_values(results, Kind::Stagehand, phase));
        for k in peers {
            let cell = match (median(&phase_values(results, *k, phase)), ours) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
                _ => "-".into(),
            };
            write!(row, " {cell} |")?;
        }
        writeln!(out, "{row}")?;
    }
    let secs = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    let switch = phase_values(results, Kind::Stagehand, |m| Some(m.switch_root? - m.init?));
    writeln!(
        out,
        "\nOurs: /init → stage 1's `switching root` line {} s (the rest of the initrd row is \
         switch_root and exec of stage 2).",
        spread_cell(&switch)
    )?;
    writeln!(
        out,
        "\nEvery boot (kernel clock: /init, stage 2, exec systemd, probe; host total):"
    )?;
    for r in results {
        let m = &r.milestones;
        let status = if r.failures.is_empty() {
            "ok"
        } else {
            "FAILED"
        };
        writeln!(
            out,
            "- {} {status}: {} {} {} {}; {} ({})",
            r.kind.name(),
            secs(m.init),
            secs(m.stage2),
            secs(m.systemd),
            secs(m.probe),
            secs(m.host_total),
            r.log.display()
        )?;
    }
    Ok(())
}

fn initrd_table(out: &mut String, initrds: &Initrds) -> Result<()> {
    let ours = initrds.of(Kind::Stagehand)?;
    writeln!(
        out,
        "\nInitrds for the same kernel and root:\n\n\
         | initrd | compression | size | ÷ ours | entries | build time |\n\
         |---|---|---|---|---|---|"
    )?;
    for b in initrds.all() {
        writeln!(
            out,
            "| {} | {} | {} KiB | {:.1}× | {} | {:.2} s |",
            b.label,
            b.compression,
            b.bytes.div_ceil(1024),
            b.bytes as f64 / ours.bytes.max(1) as f64,
            b.entries,
            b.build_time.as_secs_f64()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn spread_cells() {
        assert_eq!(spread_cell(&[]), "-");
        assert_eq!(spread_cell(&[1.234]), "1.23");
        assert_eq!(spread_cell(&[3.0, 1.0, 2.0]), "2.00 (1.00–3.00)");
    }
}
