//! `vm-tests bench-floor [--boots N]`: the kernel's floor for stage 1's own work (issue #18).
//!
//! Stage 1's receipt splits its time into `finit_module`, `device_wait`, `fsck` and `own`
//! (everything else). Part of `own` is the kernel's work for system calls any stage 1 must
//! make (mounting the special filesystems, the first procfs read, reading the disk's head,
//! mounting ext4, walking the `init=` links), which under TCG is QEMU translating the
//! kernel's code. This measures that part on its own: `vm-tests/floor/floor.c`, a static C
//! program built here with `cc`, is put at `/init` of an initrd with the same module
//! closure and fsck as ours, booted with the same kernel, command line and disk as
//! `boot-spine`, and stamps CLOCK_MONOTONIC around each step (its header says which calls).
//! Our stage 1 boots the same way, alternating with it, and its receipt (printed by the
//! guest probe) gives `own` and the phases. Both run once more with `loglevel=4` (NixOS's
//! default `boot.consoleLogLevel`), where neither the kernel's info lines nor stage 1's
//! reach the emulated serial console, and the floor once more with a pause after fsck
//! ([`VARIANTS`]).
//!
//! Not on the test path: it asserts only that every boot completed and gave its figures.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use stagehand_common::stage1_config::Module;
use stagehand_initrd::{Compression, ExtraFile};

use crate::console::{probe_facts, PROBE_DONE};
use crate::host::run as run_cmd;
use crate::qemu::Vm;
use crate::scenarios::{Inputs, FIRST_LINE, STEP};

use super::median;

/// Default boots per column of the table.
pub const DEFAULT_BOOTS: usize = 5;

/// Where the floor program reads its module list (the harness writes it from our config).
const MODULE_LIST: &str = "/etc/floor/modules";
/// The floor's one line of results (and the prefix of its failures).
const RESULT: &str = "FLOOR-RESULT ";
const ERROR: &str = "FLOOR-ERROR ";
/// The floor's second pass over three of its steps.
const AGAIN: &str = "FLOOR-AGAIN ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Floor,
    Ours,
}

/// One column of the table: which `/init`, and what is added to `boot-spine`'s command line.
struct Variant {
    kind: Kind,
    name: &'static str,
    append: &'static str,
}

/// The columns, booted in this order in even rounds and in the reverse order in odd ones.
/// The last lets the floor sleep 50 ms (excluded) after fsck before it mounts: does the
/// kernel's leftover work from the checker's exit land in the mount's time? (It did not,
/// measurably: BENCHMARKS.md.)
const VARIANTS: [Variant; 5] = [
    Variant {
        kind: Kind::Floor,
        name: "floor",
        append: "",
    },
    Variant {
        kind: Kind::Ours,
        name: "stage 1",
        append: "",
    },
    Variant {
        kind: Kind::Floor,
        name: "floor, loglevel=4",
        append: "loglevel=4",
    },
    Variant {
        kind: Kind::Ours,
        name: "stage 1, loglevel=4",
        append: "loglevel=4",
    },
    Variant {
        kind: Kind::Floor,
        name: "floor, 50 ms settle after fsck",
        append: "floor.settle_ms=50",
    },
];

/// Pairs of columns (floor, ours) whose `own` medians the report subtracts.
const PAIRS: [(usize, usize); 2] = [(0, 1), (2, 3)];

/// One boot's figures in milliseconds, by row name (see [`ROWS`]).
#[derive(Debug, Clone)]
struct Sample {
    variant: usize,
    values: Vec<(&'static str, f64)>,
}

/// The table's rows; the md read and the second pass are the floor's only, the rest both
/// programs have.
const ROWS: [&str; 16] = [
    "own (total − finit_module − device wait − fsck)",
    "special filesystems",
    "config (/proc/cmdline, …)",
    "modules, less finit_module",
    "devices (open /dev/vda, read its head)",
    "mount /",
    "find init=",
    "rest of own (gaps, boot counting, …)",
    "finit_module (excluded)",
    "fsck (excluded)",
    "md v1.0 superblock read at the disk's end (floor: not in own)",
    "total (main → end)",
    "floor, the same once more: read /proc/cmdline",
    "floor, the same once more: mount / (after umount)",
    "floor, the same once more: find init=",
    "stage 1: user-space CPU, main → receipt (its own code in any phase; tick-sampled)",
];

/// Run the comparison; the report goes to stdout and `<target>/vm-tests/bench-floor/report.md`.
pub fn run(boots: usize) -> Result<bool> {
    let cc = stagehand_testkit::host::require_tool("cc");
    let inputs = Inputs::prepare()?;
    let dir = inputs.scenario_dir("bench-floor")?;
    let floor_bin = build_floor(&cc, &inputs.workspace.root, &dir)?;

    let (ours, ours_path) = inputs.initrd_in(&dir, |_| {})?;
    let list = dir.join("floor-modules");
    fs::write(&list, module_list(&ours.config.modules)?)
        .with_context(|| format!("writing {}", list.display()))?;
    let floor = inputs.build_initrd_with(Compression::Zstd, |spec| {
        spec.stage1 = floor_bin.clone();
        spec.extra_files.push(ExtraFile {
            source: list.clone(),
            target: MODULE_LIST.into(),
            mode: Some(0o644),
        });
    })?;
    if floor.config.modules != ours.config.modules {
        bail!("the floor's initrd did not get the same module closure as ours");
    }
    let floor_path = dir.join("floor-initrd.zst");
    fs::write(&floor_path, &floor.bytes)
        .with_context(|| format!("writing {}", floor_path.display()))?;
    let (image, generation) = inputs.demo_image(&dir, &ours_path)?;

    let mut samples = Vec::new();
    let mut failures = Vec::new();
    for round in 0..boots {
        // Alternate the order, so that no column always follows the same other one.
        let mut order: Vec<usize> = (0..VARIANTS.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for variant in order {
            let v = &VARIANTS[variant];
            eprintln!("bench-floor: round {} of {boots}, {}", round + 1, v.name);
            let initrd = match v.kind {
                Kind::Floor => &floor_path,
                Kind::Ours => &ours_path,
            };
            let append = format!("{} {}", generation.cmdline(), v.append);
            let tag = format!("{variant}-{round}");
            match boot(
                &inputs,
                &dir,
                v.kind,
                &tag,
                initrd,
                &image,
                append.trim_end().into(),
            ) {
                Ok(values) => samples.push(Sample { variant, values }),
                Err(e) => {
                    eprintln!("bench-floor: boot {tag} ({}) failed: {e:#}", v.name);
                    failures.push(format!("{tag} ({}): {e:#}", v.name));
                }
            }
        }
    }

    let mut report = String::new();
    table(&mut report, &samples, boots)?;
    for f in &failures {
        writeln!(report, "\nfailed boot (left out): {f}")?;
    }
    let path = dir.join("report.md");
    fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    println!("{report}");
    println!("(also in {}; console logs beside it)", path.display());
    Ok(failures.is_empty())
}

/// `cc -static -O2` of `vm-tests/floor/floor.c` into `dir/floor`.
fn build_floor(cc: &Path, workspace: &Path, dir: &Path) -> Result<PathBuf> {
    let source = workspace.join("vm-tests/floor/floor.c");
    let out = dir.join("floor");
    run_cmd(
        Command::new(cc)
            .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&out)
            .arg(&source),
    )
    .context(
        "building the floor program (a static C program: it needs the static C library, \
         apt-get install libc6-dev)",
    )?;
    Ok(out)
}

/// The floor's module list: `path TAB optional TAB params TAB aliases`, one module a line,
/// in the order stage 1 loads them.
fn module_list(modules: &[Module]) -> Result<String> {
    let mut text = String::new();
    for m in modules {
        let fields = [m.path.as_str(), m.params.as_str()]
            .into_iter()
            .chain(m.cpu_aliases.iter().map(String::as_str));
        if fields.clone().any(|f| f.contains(['\t', '\n'])) {
            bail!(
                "module {} has a tab or newline in its path, parameters or aliases",
                m.name
            );
        }
        writeln!(
            text,
            "{}\t{}\t{}\t{}",
            m.path,
            u8::from(m.optional),
            m.params,
            m.cpu_aliases.join(" ")
        )?;
    }
    Ok(text)
}

/// Boot `initrd` with a fresh copy of `image` and return the boot's figures.
fn boot(
    inputs: &Inputs,
    dir: &Path,
    kind: Kind,
    tag: &str,
    initrd: &Path,
    image: &Path,
    append: String,
) -> Result<Vec<(&'static str, f64)>> {
    let disk = dir.join("root-copy.img");
    // Sparse copy: each boot starts from the same disk.
    run_cmd(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(image)
            .arg(&disk),
    )
    .context("copying the root image")?;
    let log = dir.join(format!("console-{tag}.log"));
    let cfg = inputs.vm_config(initrd, vec![disk.clone()], append, log);
    let mut vm = Vm::start(&cfg)?;
    let result = (|| -> Result<Vec<(&'static str, f64)>> {
        let values = match kind {
            Kind::Floor => {
                let line = vm.wait_for_line("the floor's result line", FIRST_LINE, |l| {
                    l.contains(RESULT) || l.contains(ERROR)
                })?;
                let mut values = floor_values(&line.text)?;
                let again = vm.wait_for_line("the floor's second pass", STEP, |l| {
                    l.contains(AGAIN) || l.contains(ERROR)
                })?;
                values.extend(again_values(&again.text)?);
                values
            }
            Kind::Ours => {
                vm.wait_for(PROBE_DONE, FIRST_LINE + STEP)?;
                let facts = probe_facts(&vm.lines());
                let receipt = facts
                    .get("boot-receipt")
                    .context("the probe printed no boot-receipt")?;
                stage1_values(receipt)?
            }
        };
        let status = vm.wait_exit(STEP)?;
        if !status.success() {
            bail!("QEMU exited with {status}");
        }
        Ok(values)
    })();
    let result = result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", vm.failure_context(20)));
    drop(vm);
    let _ = fs::remove_file(&disk);
    result
}

/// `key=µs` of a floor line after `prefix`, in milliseconds; an error for a line without
/// the prefix (`FLOOR-ERROR …`) or the key.
fn field(line: &str, prefix: &str, key: &str) -> Result<f64> {
    let Some((_, rest)) = line.split_once(prefix) else {
        bail!("the floor program failed: {line}");
    };
    rest.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("the floor's line has no {key}=: {line}"))?
        .parse::<f64>()
        .map(|us| us / 1000.0)
        .with_context(|| format!("the floor's {key}= is not a number: {line}"))
}

/// The second pass's `FLOOR-AGAIN config= mount= init=`, in milliseconds.
fn again_values(line: &str) -> Result<Vec<(&'static str, f64)>> {
    Ok(vec![
        (ROWS[12], field(line, AGAIN, "config")?),
        (ROWS[13], field(line, AGAIN, "mount")?),
        (ROWS[14], field(line, AGAIN, "init")?),
    ])
}

/// The figures of a `FLOOR-RESULT key=µs …` line, in milliseconds.
fn floor_values(line: &str) -> Result<Vec<(&'static str, f64)>> {
    let field = |key: &str| field(line, RESULT, key);
    // Stage 1 checks the root before mounting it; a floor that did not would mount from a
    // colder page cache and not be comparable.
    if line.contains(RESULT)
        && !line.contains(" fsck_status=0 ")
        && !line.contains(" fsck_status=1 ")
    {
        bail!("the floor did not run a clean fsck of the root as stage 1 does: {line}");
    }
    let figures = Figures {
        own: field("own")?,
        special: field("special")?,
        config: field("config")?,
        modules: field("modules")?,
        devices: field("devices")?,
        mount: field("mount")?,
        init: field("init")?,
        finit: field("finit")?,
        fsck: field("fsck")?,
        total: field("total")?,
    };
    let mut values = figures.rows();
    values.push((ROWS[10], field("md_tail")?));
    Ok(values)
}

/// What both programs report, in milliseconds: `own` and its phases (`modules` with
/// `finit_module` in it), and what `own` leaves out.
struct Figures {
    own: f64,
    special: f64,
    config: f64,
    modules: f64,
    devices: f64,
    mount: f64,
    init: f64,
    finit: f64,
    fsck: f64,
    total: f64,
}

impl Figures {
    /// The rows of `own`, its phases, the rest of it and the excluded times.
    fn rows(&self) -> Vec<(&'static str, f64)> {
        let phases = [
            self.special,
            self.config,
            self.modules - self.finit,
            self.devices,
            self.mount,
            self.init,
        ];
        let rest_of_own = self.own - phases.iter().sum::<f64>();
        let mut values = vec![(ROWS[0], self.own)];
        values.extend(ROWS[1..7].iter().copied().zip(phases));
        values.extend([
            (ROWS[7], rest_of_own),
            (ROWS[8], self.finit),
            (ROWS[9], self.fsck),
            (ROWS[11], self.total),
        ]);
        values
    }
}

/// The same figures from stage 1's receipt (`times_us.stage1`), in milliseconds.
fn stage1_values(receipt: &str) -> Result<Vec<(&'static str, f64)>> {
    let v: Value = serde_json::from_str(receipt)
        .with_context(|| format!("the boot receipt is not JSON: {receipt}"))?;
    let s1 = &v["times_us"]["stage1"];
    let ms = |key: &str| -> Result<f64> {
        s1[key]
            .as_u64()
            .map(|us| us as f64 / 1000.0)
            .with_context(|| format!("the receipt's times_us.stage1 has no {key}: {receipt}"))
    };
    let phase = |name: &str| -> Result<f64> {
        s1["phases"]
            .as_array()
            .and_then(|ps| {
                ps.iter().find(|p| p["name"] == name).and_then(|p| {
                    Some((p["end"].as_u64()?.checked_sub(p["start"].as_u64()?)?) as f64 / 1000.0)
                })
            })
            .with_context(|| format!("the receipt has no phase {name:?}: {receipt}"))
    };
    let mut values = Figures {
        own: ms("own")?,
        special: phase("special filesystems")?,
        config: phase("config")?,
        modules: phase("modules")?,
        devices: phase("devices")?,
        mount: phase("mount /")?,
        init: phase("find init=")?,
        finit: ms("finit_module")?,
        fsck: ms("fsck")?,
        total: ms("total")?,
    }
    .rows();
    // Receipts from before stage 1 recorded it lack it.
    if let Ok(user) = ms("user_cpu") {
        values.push((ROWS[15], user));
    }
    Ok(values)
}

/// `median (min–max)` in ms, or `–`.
fn cell(v: &[f64]) -> String {
    super::spread(v, 1, "–")
}

fn table(report: &mut String, samples: &[Sample], boots: usize) -> Result<()> {
    writeln!(
        report,
        "Stage 1's own work against the kernel's floor for the same system calls, ms, \
         median (min–max) of {boots} alternating boots each (floor: vm-tests/floor/floor.c \
         as /init):\n"
    )?;
    let mut header = String::from("| |");
    let mut rule = String::from("|---|");
    for v in &VARIANTS {
        write!(header, " {} |", v.name)?;
        rule.push_str("---:|");
    }
    writeln!(report, "{header}\n{rule}")?;
    let values = |variant: usize, row: &str| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s.variant == variant)
            .filter_map(|s| s.values.iter().find(|(r, _)| *r == row).map(|(_, v)| *v))
            .collect()
    };
    for row in ROWS {
        let mut line = format!("| {row} |");
        for variant in 0..VARIANTS.len() {
            write!(line, " {} |", cell(&values(variant, row)))?;
        }
        writeln!(report, "{line}")?;
    }
    // Ours beyond the floor: the difference of the medians of `own`.
    for (floor, ours) in PAIRS {
        if let (Some(f), Some(o)) = (
            median(&values(floor, ROWS[0])),
            median(&values(ours, ROWS[0])),
        ) {
            writeln!(
                report,
                "\n{}: own {o:.1} ms − {}: own {f:.1} ms = {:.1} ms of stage 1's own beyond the \
                 floor (medians).",
                VARIANTS[ours].name,
                VARIANTS[floor].name,
                o - f
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_line_parses_to_ms() {
        let v = floor_values(
            "[    3.9] floor: FLOOR-RESULT start=3800000 special=10000 config=12000 \
             modules=500000 finit=480000 wait=0 devices=30000 md_tail=2000 fsck=100000 \
             fsck_status=0 mount=40000 init=20000 total=716000 own=134000 resolved=/nix/x/init",
        )
        .expect("parses");
        let get = |r: &str| v.iter().find(|(n, _)| *n == r).map(|(_, x)| *x);
        assert_eq!(get(ROWS[0]), Some(134.0));
        assert_eq!(get(ROWS[3]), Some(20.0));
        // 134 − (10 + 12 + 20 + 30 + 40 + 20)
        assert_eq!(get(ROWS[7]), Some(2.0));
        assert!(floor_values("FLOOR-ERROR mount /dev/vda: EINVAL").is_err());
        assert!(floor_values("FLOOR-RESULT own=1 fsck_status=-1 special=1").is_err());
        let again = again_values("[ 4.1] floor: FLOOR-AGAIN config=300 mount=9000 init=1500")
            .expect("parses");
        assert_eq!(again[1], (ROWS[13], 9.0));
        assert!(again_values("FLOOR-AGAIN config=300 mount=x init=1500").is_err());
    }

    #[test]
    fn receipt_parses_to_ms() {
        let r = r#"{"times_us":{"stage1":{"total":900000,"finit_module":500000,"fsck":150000,
            "own":250000,"phases":[{"name":"special filesystems","start":0,"end":20000},
            {"name":"config","start":20000,"end":40000},{"name":"modules","start":40000,"end":560000},
            {"name":"devices","start":560000,"end":600000},{"name":"fsck /","start":600000,"end":750000},
            {"name":"mount /","start":750000,"end":800000},{"name":"find init=","start":800000,"end":830000}]}}}"#;
        let v = stage1_values(r).expect("parses");
        let get = |r: &str| v.iter().find(|(n, _)| *n == r).map(|(_, x)| *x);
        assert_eq!(get(ROWS[3]), Some(20.0));
        // 250 − (20 + 20 + 20 + 40 + 50 + 30)
        assert_eq!(get(ROWS[7]), Some(70.0));
        assert!(stage1_values(r#"{"times_us":{}}"#).is_err());
    }
}
