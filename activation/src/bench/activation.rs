//! `stagehand bench --activate [--dir DIR]… [--reps N] [--before BIN]`: activation as users
//! run it — `activate()` of a compiled generation, in process and as a whole `stagehand
//! activate` process — on every file system given (`--dir /dev/shm --dir /var/tmp`: tmpfs
//! and a disk-backed ext4), next to the system-call floor, in medians of N.
//!
//! Each repetition runs `BIN bench --sample DIR` for every binary compared (this one, and
//! `--before` when given, alternating so that the shared machine's drift hits both alike)
//! and each sample prints its timings as `KEY MS` lines, which the driver collects. A
//! sample makes its own scratch roots under DIR: two shapes (an etc tree only; a users spec
//! only), each activated as first run, two no-change re-runs and a 10 %-changed run, once
//! in process and once as processes spawned from the binary itself. The first re-run is
//! reported on its own: when the first run's etc read-back was left to the next run (the
//! clock tick had not passed when it ended), that re-run reads what the first run made; the
//! second re-run is the steady no-change run every later boot meets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::{io, make_etc, make_users, Scratch, SIZES};
use crate::activate::{activate, Action, ActivateOptions};
use crate::compiled;
use stagehand_common::rootfs::{self, Root};

/// The two generations of a sample root: `a` (first and no-change runs), `b` (changed).
const TOPS: [&str; 2] = [
    "/nix/store/gena-nixos-system-bench",
    "/nix/store/genb-nixos-system-bench",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Etc,
    Users,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Etc => "etc",
            Shape::Users => "users",
        }
    }
}

/// Write both generations of `shape` into the root at `dir` (typical size), with their
/// `activation.json` and compiled `activation.plan`, and flush them: a real store is on
/// disk before activation starts, and the first run's flush must not pay for the inputs.
fn prepare(dir: &Path, shape: Shape) -> Result<Root, String> {
    let size = &SIZES[0];
    io(std::fs::create_dir_all(dir.join("nix/store")), "store")?;
    let root = io(Root::open(dir), "root")?;
    for (i, top) in TOPS.iter().enumerate() {
        let changed = i == 1;
        let gen = ["gena", "genb"][i];
        let manifest = match shape {
            Shape::Etc => {
                let tree = make_etc(dir, gen, size.etc_entries, changed)?;
                format!(r#"{{"version": 1, "etc": "{tree}"}}"#)
            }
            Shape::Users => {
                let spec = format!("/nix/store/{gen}-users-groups.json");
                io(
                    std::fs::write(
                        dir.join(spec.trim_start_matches('/')),
                        make_users(size.users, size.groups, changed),
                    ),
                    "users spec",
                )?;
                format!(r#"{{"version": 1, "usersGroups": "{spec}"}}"#)
            }
        };
        let host_top = dir.join(top.trim_start_matches('/'));
        io(std::fs::create_dir_all(&host_top), "toplevel")?;
        io(
            std::fs::write(host_top.join("activation.json"), manifest),
            "activation.json",
        )?;
        compiled::compile(&root, Path::new(top)).map_err(|e| e.to_string())?;
    }
    io(rootfs::sync_fs(root.fd()), "sync")?;
    Ok(root)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// `activate()` of generation `i` in process, in ms.
fn in_process(root_dir: &Path, i: usize) -> Result<f64, String> {
    let opts = ActivateOptions {
        root: root_dir.to_path_buf(),
        dry_run: false,
        action: Action::Switch,
    };
    let t = Instant::now();
    let report = activate(Path::new(TOPS[i]), &opts).map_err(|e| e.to_string())?;
    let took = ms(t);
    if !report.success() {
        return Err(format!("activation failed: {:?}", report.failed_steps()));
    }
    Ok(took)
}

/// Run this binary with `args`, its output discarded, in ms from spawn to exit.
fn whole(args: &[&str]) -> Result<f64, String> {
    let exe = io(std::env::current_exe(), "current_exe")?;
    let t = Instant::now();
    let st = io(
        Command::new(&exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status(),
        "spawn",
    )?;
    let took = ms(t);
    if !st.success() {
        return Err(format!("{} {args:?} failed: {st}", exe.display()));
    }
    Ok(took)
}

fn whole_activate(root_dir: &Path, i: usize) -> Result<f64, String> {
    let root = root_dir.to_string_lossy();
    whole(&["activate", "--root", &root, "--action", "switch", TOPS[i]])
}

/// `stagehand bench --floor ROOT` (internal): what a whole process that creates `/etc` has to
/// pay at least — start, read the compiled plan as `activate` does, then one `mkdir` or
/// `symlink` per directory or link of the tree, into a fresh directory, nothing checked.
pub fn floor_process(root_dir: &Path) -> Result<(), String> {
    let root = io(Root::open(root_dir), "root")?;
    let plan = compiled::load(&root, Path::new(TOPS[0])).map_err(|e| e.to_string())?;
    let listing = plan
        .etc
        .ok_or("the floor needs the etc shape's generation")?;
    let mut n = 0;
    let dir = loop {
        let d = root_dir.join(format!("floor{n}"));
        if !d.exists() {
            break d;
        }
        n += 1;
    };
    super::floor_run(&dir, &listing).map(|_| ())
}

/// Spin until the kernel's coarse clock (file time stamps) has moved past now: at most a
/// tick (50 ms at the very most, for a clock that does not move).
fn tick_passed() {
    use crate::etc::cache::{coarse_now, precise_now};
    let (t, start) = (precise_now(), Instant::now());
    while coarse_now() <= t && start.elapsed() < std::time::Duration::from_millis(50) {
        std::hint::spin_loop();
    }
}

/// One sample of this binary on the file system of `base`: `KEY MS` lines on stdout.
pub fn sample(base: &Path) -> Result<(), String> {
    let mut out = String::new();
    // What starting this binary costs at all, for the whole-process rows.
    let start = whole(&["--version"])?;
    let _ = writeln!(out, "start first whole-process {start:.3}");
    for shape in [Shape::Etc, Shape::Users] {
        for (mode, n) in [("in-process", 0), ("whole-process", 1)] {
            let scratch = Scratch::new(Some(base), n * 2 + usize::from(shape == Shape::Users))?;
            let dir = scratch.0.as_path();
            let root = prepare(dir, shape)?;
            let run = |i| {
                if n == 0 {
                    in_process(dir, i)
                } else {
                    whole_activate(dir, i)
                }
            };
            for (state, i) in [
                ("first", 0),
                ("re-run", 0),
                ("no-change", 0),
                ("changed", 1),
            ] {
                // Activations of one root are seconds apart, not back to back: a run that
                // starts in the clock tick of the last one's changes cannot trust their
                // stamps yet ([`crate::etc::cache`]) and would read them again next time.
                // So each run starts once the tick has passed, as any real one does. Spun,
                // not slept: an idle CPU here (a VM's halted vCPU) made the next run's start
                // slower than back to back, which the before binary's runs are.
                tick_passed();
                let _ = writeln!(out, "{} {state} {mode} {:.3}", shape.name(), run(i)?);
            }
            if shape == Shape::Etc {
                let floor = if n == 0 {
                    let plan =
                        compiled::load(&root, Path::new(TOPS[0])).map_err(|e| e.to_string())?;
                    let listing = plan.etc.ok_or("no etc tree")?;
                    let floor_dir = dir.join("floor");
                    super::floor_run(&floor_dir, &listing)?.wall.as_secs_f64() * 1000.0
                } else {
                    whole(&["bench", "--floor", &dir.to_string_lossy()])?
                };
                let _ = writeln!(out, "floor first {mode} {floor:.3}");
            }
        }
    }
    print!("{out}");
    Ok(())
}

/// Timings by `(binary, dir, key)`.
type Samples = BTreeMap<(usize, usize, String), Vec<f64>>;

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// The driver: `reps` samples of each binary on each of `dirs`, then one table per dir.
pub fn run(reps: usize, dirs: &[PathBuf], before: Option<&Path>) -> Result<(), String> {
    let me = io(std::env::current_exe(), "current_exe")?;
    let mut bins: Vec<PathBuf> = before.map(Path::to_path_buf).into_iter().collect();
    bins.push(me);
    let mut samples = Samples::new();
    for rep in 0..reps.max(1) {
        for (d, dir) in dirs.iter().enumerate() {
            for (b, bin) in bins.iter().enumerate() {
                eprintln!(
                    "sample {}/{reps}: {} on {}",
                    rep + 1,
                    bin.display(),
                    dir.display()
                );
                // The sample's stderr carries the activations' step logs; shown on failure.
                let o = io(
                    Command::new(bin)
                        .args(["bench", "--sample"])
                        .arg(dir)
                        .output(),
                    "spawn sample",
                )?;
                if !o.status.success() {
                    return Err(format!(
                        "{} bench --sample failed: {}",
                        bin.display(),
                        String::from_utf8_lossy(&o.stderr).trim()
                    ));
                }
                for line in String::from_utf8_lossy(&o.stdout).lines() {
                    let Some((key, v)) = line.rsplit_once(' ') else {
                        continue;
                    };
                    let v: f64 = v.parse().map_err(|_| format!("bad sample line {line:?}"))?;
                    samples.entry((b, d, key.to_owned())).or_default().push(v);
                }
            }
        }
    }
    let size = &SIZES[0];
    let cell = |b: usize, d: usize, key: &str| {
        samples
            .get(&(b, d, key.to_owned()))
            .and_then(|v| median(v))
            .map_or_else(|| "–".to_owned(), |m| format!("{m:.2}"))
    };
    let labels: Vec<&str> = if before.is_some() {
        vec!["before", "after"]
    } else {
        vec!["this build"]
    };
    for (d, dir) in dirs.iter().enumerate() {
        println!(
            "\n{} — milliseconds, median of {reps}, wall clock; whole-process = spawn to exit",
            dir.display()
        );
        let mut head = "| input | run |".to_owned();
        let mut rule = "|---|---|".to_owned();
        for mode in ["in-process", "whole-process"] {
            for l in &labels {
                let _ = write!(head, " {mode}, {l} |");
                rule.push_str("---|");
            }
        }
        println!("{head}\n{rule}");
        let rows = [
            (format!("etc, {} entries", size.etc_entries), "etc"),
            (
                format!("users, {} users / {} groups", size.users, size.groups),
                "users",
            ),
        ];
        for (label, shape) in &rows {
            for (state, shown) in [
                ("first", "first"),
                ("re-run", "no-change, 1st re-run"),
                ("no-change", "no-change, 2nd re-run"),
                ("changed", "changed"),
            ] {
                let mut line = format!("| {label} | {shown} |");
                for mode in ["in-process", "whole-process"] {
                    for b in 0..bins.len() {
                        let _ = write!(
                            line,
                            " {} |",
                            cell(b, d, &format!("{shape} {state} {mode}"))
                        );
                    }
                }
                println!("{line}");
            }
        }
        for (label, key) in [
            (
                "floor: one mkdir or symlink per etc directory or link",
                "floor",
            ),
            ("process start: `stagehand --version`", "start"),
        ] {
            let mut line = format!("| {label} | first |");
            for mode in ["in-process", "whole-process"] {
                for b in 0..bins.len() {
                    let _ = write!(line, " {} |", cell(b, d, &format!("{key} first {mode}")));
                }
            }
            println!("{line}");
        }
    }
    Ok(())
}
