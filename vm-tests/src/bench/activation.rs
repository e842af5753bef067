//! Activation as whole processes: `stagehand etc` and `stagehand users` on the generated
//! NixOS-shaped inputs of `stagehand bench` (the same generator, the same typical and
//! stress sizes), timed with hyperfine (first run / no change / 10 % changed) and their
//! system calls counted with `strace -c -f`. The roots live on tmpfs (`/dev/shm`): the cost
//! of the work, not of this shared disk's flushes.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use stagehand_activation::bench::{make_etc, make_users, SIZES};

use crate::host::run;

/// hyperfine runs per measurement.
const RUNS: usize = 10;

/// One measured case: medians in milliseconds and system calls per run.
#[derive(Debug, Clone)]
pub struct Case {
    pub input: String,
    pub state: &'static str,
    pub median_ms: f64,
    pub syscalls: u64,
}

/// The scratch roots under `/dev/shm`, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A root with both generations' inputs in its store.
struct Inputs {
    root: PathBuf,
    etc: [String; 2],
    users: [String; 2],
}

fn make_inputs(root: &Path, etc_entries: usize, users: usize, groups: usize) -> Result<Inputs> {
    fs::create_dir_all(root.join("nix/store"))?;
    let etc_a = make_etc(root, "gena", etc_entries, false).map_err(|e| anyhow!(e))?;
    let etc_b = make_etc(root, "genb", etc_entries, true).map_err(|e| anyhow!(e))?;
    let mut users_paths = [String::new(), String::new()];
    for (i, changed) in [false, true].into_iter().enumerate() {
        let path = format!("/nix/store/gen{}-users-groups.json", ["a", "b"][i]);
        fs::write(
            root.join(path.trim_start_matches('/')),
            make_users(users, groups, changed),
        )?;
        users_paths[i] = path;
    }
    Ok(Inputs {
        root: root.to_path_buf(),
        etc: [etc_a, etc_b],
        users: users_paths,
    })
}

/// A script that empties a root of everything activation made (all but `/nix`), then runs
/// its remaining arguments: hyperfine's `--prepare` without a shell.
const RESET: &str = "root=$1; shift\n\
find \"$root\" -mindepth 1 -maxdepth 1 ! -name nix -exec rm -rf {} +\n\
[ $# -eq 0 ] || exec \"$@\" >/dev/null\n";

/// `stagehand STEP --root ROOT INPUT` as one shell word list.
fn step_cmd(stagehand: &Path, step: &str, root: &Path, input: &str) -> String {
    format!(
        "{} {step} --root {} {input}",
        stagehand.display(),
        root.display()
    )
}

pub fn measure(stagehand: &Path, work: &Path) -> Result<Vec<Case>> {
    let scratch = Scratch(
        Path::new("/dev/shm").join(format!("stagehand-peers-bench-{}", std::process::id())),
    );
    fs::create_dir_all(&scratch.0).context("creating the scratch roots in /dev/shm")?;
    fs::create_dir_all(work)?;
    let reset_script = work.join("reset.sh");
    fs::write(&reset_script, RESET)?;
    let mut cases = Vec::new();
    for (i, size) in SIZES.iter().enumerate() {
        let inputs = make_inputs(
            &scratch.0.join(format!("size{i}")),
            size.etc_entries,
            size.users,
            size.groups,
        )?;
        for (step, what, input) in [
            (
                "etc",
                format!("etc, {} entries", size.etc_entries),
                &inputs.etc,
            ),
            (
                "users",
                format!("users, {} users / {} groups", size.users, size.groups),
                &inputs.users,
            ),
        ] {
            let root = &inputs.root;
            let a = step_cmd(stagehand, step, root, &input[0]);
            let b = step_cmd(stagehand, step, root, &input[1]);
            let reset = format!("sh {} {}", reset_script.display(), root.display());
            // (state, what to do before each run, the timed command)
            let states = [
                ("first run", reset.clone(), a.clone()),
                ("no change", format!("{reset} {a}"), a.clone()),
                ("10 % changed", format!("{reset} {a}"), b),
            ];
            for (state, prepare, timed) in states {
                let tag = format!("{step}-{i}-{}", state.replace([' ', '%'], ""));
                let median_ms = hyperfine(&prepare, &timed, &work.join(format!("{tag}.json")))?;
                // The state the timed command starts from, for strace too.
                let words: Vec<&str> = prepare.split_whitespace().collect();
                if let Some((program, args)) = words.split_first() {
                    run(Command::new(program).args(args))?;
                }
                let syscalls = strace_calls(&timed, &work.join(format!("{tag}.strace")))?;
                cases.push(Case {
                    input: what.clone(),
                    state,
                    median_ms,
                    syscalls,
                });
            }
        }
    }
    Ok(cases)
}

/// The median of [`RUNS`] runs of `cmd`, `prepare` run before each (neither in a shell).
fn hyperfine(prepare: &str, cmd: &str, json: &Path) -> Result<f64> {
    run(Command::new("hyperfine")
        .args(["--style", "none", "--shell", "none", "--runs"])
        .arg(RUNS.to_string())
        .arg("--prepare")
        .arg(prepare)
        .arg("--export-json")
        .arg(json)
        .arg(cmd))
    .with_context(|| format!("hyperfine {cmd}"))?;
    let v: serde_json::Value = serde_json::from_slice(&fs::read(json)?)
        .with_context(|| format!("reading {}", json.display()))?;
    v["results"][0]["median"]
        .as_f64()
        .map(|s| s * 1000.0)
        .with_context(|| format!("no median in {}", json.display()))
}

/// Total system calls of `cmd` and its children (`strace -c -f`).
fn strace_calls(cmd: &str, out: &Path) -> Result<u64> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    run(Command::new("strace")
        .args(["-c", "-f", "-o"])
        .arg(out)
        .args(&words))
    .with_context(|| format!("strace {cmd}"))?;
    let text = fs::read_to_string(out)?;
    parse_strace_total(&text).with_context(|| format!("no total line in {}", out.display()))
}

/// The `calls` column of strace's summary `total` line.
fn parse_strace_total(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with("total"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The results as a markdown table: time and system calls per input and state.
pub fn table(cases: &[Case]) -> Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "| input | first run | no change | 10 % changed |\n|---|---|---|---|"
    )?;
    let mut inputs: Vec<&str> = Vec::new();
    for c in cases {
        if !inputs.contains(&c.input.as_str()) {
            inputs.push(&c.input);
        }
    }
    for input in inputs {
        let mut row = format!("| {input} |");
        for state in ["first run", "no change", "10 % changed"] {
            let c = cases
                .iter()
                .find(|c| c.input == input && c.state == state)
                .ok_or_else(|| anyhow!("no {state} case for {input}"))?;
            write!(row, " {:.1} ms, {} syscalls |", c.median_ms, c.syscalls)?;
        }
        writeln!(out, "{row}")?;
    }
    if cases.is_empty() {
        bail!("no activation cases measured");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_strace_total() {
        let text = "% time     seconds  usecs/call     calls    errors syscall\n\
                    ------ ----------- ----------- --------- --------- ----------------\n\
                    \x20 40.00    0.000400           4       100         3 openat\n\
                    ------ ----------- ----------- --------- --------- ----------------\n\
                    100.00    0.001000           2       512        12 total\n";
        assert_eq!(parse_strace_total(text), Some(512));
        let no_errors = "100.00    0.001000           2       77 total\n";
        assert_eq!(parse_strace_total(no_errors), Some(77));
        assert_eq!(parse_strace_total("nothing here\n"), None);
    }
}
