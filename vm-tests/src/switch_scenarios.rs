//! Issue 7: a live `switch-to-configuration switch` under real systemd restarts exactly the
//! services that changed.
//!
//! Generation 1 runs services A, B and C (busybox `sleep`); generation 2 changes A's unit,
//! drops B, keeps C and adds D. A oneshot driver (`stagehand-switch-test.service`, the same
//! unit in both generations, ordered after the four services) runs, inside the guest:
//! `system-2-link/bin/switch-to-configuration switch`, `system-1-link/… switch` (back), then
//! `system-1-link/… test` again (a no-op), and prints each service's `MainPID` and state
//! after every step as `SWITCH-TEST` lines. The probe runs after it and powers the VM off.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use crate::console::{probe_facts, shows, PROBE_DONE};
use crate::generation::{ldd, BuiltGeneration, EtcEntry, GenerationSpec, SystemImage, PROBE_UNIT};
use crate::qemu::{Line, Vm};
use crate::scenarios::{check_probe, root_disk, Expected, Inputs, Outcome, FIRST_LINE, STEP};
use crate::stage1_scenarios::static_busybox;
use crate::tree::{install_host_path, Node, Tree};
use crate::uefi_scenarios::build_stagehand;

const PREFIX: &str = "SWITCH-TEST ";
const DRIVER_UNIT: &str = "stagehand-switch-test.service";
const SYSTEMCTL: &str = "/usr/bin/systemctl";
const SERVICES: [&str; 4] = ["a", "b", "c", "d"];

/// The driver: snapshots of the four services around three switches.
fn driver_script(busybox: &str) -> String {
    format!(
        r#"bb={busybox}
sc={SYSTEMCTL}
say() {{ echo "{PREFIX}$*"; }}
pid() {{ $sc show -p MainPID --value "$1.service"; }}
state() {{ $sc is-active "$1.service"; }}
snap() {{
  line="$1"
  for s in a b c d; do line="$line $s=$(pid $s) $s.state=$(state $s)"; done
  say "$line current=$($bb readlink /run/current-system)"
}}
snap gen1
/nix/var/nix/profiles/system-2-link/bin/switch-to-configuration switch
say switched-to-2 exit=$?
snap gen2
/nix/var/nix/profiles/system-1-link/bin/switch-to-configuration switch
say switched-to-1 exit=$?
snap back
/nix/var/nix/profiles/system-1-link/bin/switch-to-configuration test
say no-op exit=$?
snap again
say done
"#
    )
}

/// Generation `number` with the services `present` (A's command line depends on the
/// generation: its unit changes between them).
fn generation(
    inputs: &Inputs,
    number: u32,
    initrd: &Path,
    stagehand: &Path,
    busybox: &str,
    driver: &str,
    present: &[&str],
) -> GenerationSpec {
    let mut spec = inputs.generation(number, initrd, &inputs.bins.stage2);
    spec.switch_to_configuration = Some(stagehand.to_path_buf());
    for s in present {
        // No default dependencies: this system has no sysinit.target or basic.target.
        let seconds = match *s {
            "a" => 1000 + number,
            "b" => 2000,
            "c" => 3000,
            _ => 4000,
        };
        spec.etc.push(EtcEntry::unit(
            &format!("{s}.service"),
            format!(
                "[Unit]\nDescription=Switch test service {s}\nDefaultDependencies=no\n\n\
                 [Service]\nExecStart={busybox} sleep {seconds}\n"
            ),
        ));
        spec.etc.push(EtcEntry::Link {
            path: format!("systemd/system/default.target.wants/{s}.service"),
            target: format!("../{s}.service"),
        });
    }
    let after: Vec<String> = SERVICES.iter().map(|s| format!("{s}.service")).collect();
    spec.etc.extend(driver_units(
        DRIVER_UNIT,
        "Switch generations live",
        &after,
        &format!("{busybox} sh {driver}"),
    ));
    spec
}

/// A switch test's driver: oneshot unit `name` running `exec_start` on the console after
/// `default.target` (and `after`), pulled in by it; the probe unit (which powers the VM
/// off) waits for it.
pub(crate) fn driver_units(
    name: &str,
    description: &str,
    after: &[String],
    exec_start: &str,
) -> Vec<EtcEntry> {
    let mut after_line = String::from("default.target");
    for unit in after {
        after_line.push(' ');
        after_line.push_str(unit);
    }
    vec![
        // No default dependencies: this system has no sysinit.target or basic.target.
        EtcEntry::unit(
            name,
            format!(
                "[Unit]\nDescription={description}\nDefaultDependencies=no\n\
                 After={after_line}\n\n\
                 [Service]\nType=oneshot\nExecStart={exec_start}\nTimeoutStartSec=200\n\
                 StandardOutput=tty\nStandardError=tty\nTTYPath=/dev/console\nTTYReset=no\n\
                 TTYVHangup=no\n"
            ),
        ),
        EtcEntry::Link {
            path: format!("systemd/system/default.target.wants/{name}"),
            target: format!("../{name}"),
        },
        EtcEntry::unit(
            &format!("{PROBE_UNIT}.d/after-driver.conf"),
            format!("[Unit]\nAfter={name}\n"),
        ),
    ]
}

/// `<prefix><label> k=v …` lines by label.
fn snapshots(lines: &[Line], prefix: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for l in lines {
        let Some(rest) = l.text.split(prefix).nth(1) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(label) = words.next() else { continue };
        let kv = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        out.insert(label.to_string(), kv);
    }
    out
}

/// `switch-live`: 1 → 2 → 1 → 1 (no-op), every step checked from inside the guest.
pub fn switch_live(inputs: &Inputs) -> Result<Outcome> {
    let dir = inputs.scenario_dir("switch-live")?;
    let (_, initrd) = inputs.initrd_in(&dir, |_| {})?;
    let stagehand = build_stagehand(inputs)?;
    let mut image = SystemImage::new(&inputs.systemd)?;
    // systemctl (and what it links) from the host, like systemd itself.
    install_host_path(&mut image.root, Path::new(SYSTEMCTL))?;
    for lib in ldd(Path::new(SYSTEMCTL))? {
        install_host_path(&mut image.root, &lib)?;
    }
    let mut bb = Tree::new();
    bb.insert(
        "bin/busybox",
        Node::executable(static_busybox(&inputs.workspace.cache_dir())?),
    )?;
    let busybox = image
        .store
        .add("busybox", Node::Dir(bb))?
        .join("bin/busybox");
    let driver = image
        .store
        .add_text("switch-test.sh", driver_script(&busybox))?;
    let gen = |n: u32, present: &[&str]| {
        generation(
            inputs,
            n,
            &initrd,
            &stagehand,
            &busybox,
            driver.as_str(),
            present,
        )
    };
    let g1 = image.add_generation(&gen(1, &["a", "b", "c"]))?;
    let g2 = image.add_generation(&gen(2, &["a", "c", "d"]))?;
    let img = root_disk(&image, &dir)?;

    let log = dir.join("console.log");
    let cfg = inputs.vm_config(&initrd, vec![img], g1.cmdline(), log.clone());
    let mut out = Outcome {
        log: Some(log),
        ..Outcome::default()
    };
    let mut vm = Vm::start(&cfg)?;
    let result = (|| -> Result<()> {
        vm.wait_for("stage1: switching root", FIRST_LINE)?;
        vm.wait_for(&format!("{PREFIX}gen1"), STEP)?;
        vm.wait_for(&format!("{PREFIX}done"), STEP)?;
        vm.wait_for(PROBE_DONE, STEP)?;
        vm.wait_exit(STEP)?;
        Ok(())
    })();
    if let Err(e) = result {
        out.failures.push(format!("{e:#}"));
        out.notes.push(vm.failure_context(60));
        return Ok(out);
    }
    let lines = vm.lines();
    check(&mut out, &lines, &g1, &g2);
    for bad in check_probe(&probe_facts(&lines), &Expected::of(&g1)) {
        out.failures.push(format!("after switching back: {bad}"));
    }
    out.notes.push(format!(
        "QEMU start → three switches done, VM gone {:.1} s",
        vm.elapsed().as_secs_f64()
    ));
    Ok(out)
}

fn check(out: &mut Outcome, lines: &[Line], g1: &BuiltGeneration, g2: &BuiltGeneration) {
    let snaps = Snapshots::read(lines, PREFIX);
    for label in ["gen1", "gen2", "back", "again"] {
        out.notes.push(format!("{label}: {:?}", snaps.snap(label)));
    }
    check_units(out, &snaps, g1, g2);
    check_printed(out, lines);
    out.check("no kernel panic", !shows(lines, "Kernel panic"), || {
        "panic on the console".into()
    });
}

/// A driver's snapshots by label, read leniently (a missing value is empty, PID 0).
pub(crate) struct Snapshots(BTreeMap<String, BTreeMap<String, String>>);

impl Snapshots {
    /// The driver's `<prefix><label> k=v …` lines.
    pub(crate) fn read(lines: &[Line], prefix: &str) -> Snapshots {
        Snapshots(snapshots(lines, prefix))
    }

    pub(crate) fn snap(&self, label: &str) -> BTreeMap<String, String> {
        self.0.get(label).cloned().unwrap_or_default()
    }

    pub(crate) fn get(&self, label: &str, k: &str) -> String {
        self.0
            .get(label)
            .and_then(|s| s.get(k))
            .cloned()
            .unwrap_or_default()
    }

    fn pid(&self, label: &str, s: &str) -> u32 {
        self.get(label, s).parse::<u32>().unwrap_or(0)
    }

    fn running(&self, label: &str, s: &str) -> bool {
        self.pid(label, s) > 0 && self.get(label, &format!("{s}.state")) == "active"
    }

    fn stopped(&self, label: &str, s: &str) -> bool {
        self.pid(label, s) == 0 && self.get(label, &format!("{s}.state")) != "active"
    }
}

/// Which services ran, with which PIDs, after each switch; every switch exited 0.
fn check_units(out: &mut Outcome, s: &Snapshots, g1: &BuiltGeneration, g2: &BuiltGeneration) {
    out.check(
        "generation 1 boots with A, B, C running and no D",
        s.running("gen1", "a")
            && s.running("gen1", "b")
            && s.running("gen1", "c")
            && s.stopped("gen1", "d"),
        || format!("{:?}", s.snap("gen1")),
    );
    for (step, label) in [
        ("switched-to-2", "switch to 2"),
        ("switched-to-1", "switch back to 1"),
        ("no-op", "no-op switch"),
    ] {
        out.check(
            &format!("{label} exits 0"),
            s.get(step, "exit") == "0",
            || format!("exit {:?}", s.get(step, "exit")),
        );
    }
    check_switch_to_2(out, s, g2);
    check_switch_back(out, s, g1);
    out.check(
        "the no-op switch kept every PID",
        ["a", "b", "c"]
            .iter()
            .all(|u| s.pid("again", u) == s.pid("back", u) && s.running("again", u)),
        || format!("{:?} then {:?}", s.snap("back"), s.snap("again")),
    );
}

fn check_switch_to_2(out: &mut Outcome, s: &Snapshots, g2: &BuiltGeneration) {
    out.check(
        "after 1 → 2: A restarted (new PID)",
        s.running("gen2", "a") && s.pid("gen2", "a") != s.pid("gen1", "a"),
        || {
            format!(
                "A was {} now {} ({})",
                s.pid("gen1", "a"),
                s.pid("gen2", "a"),
                s.get("gen2", "a.state")
            )
        },
    );
    out.check("after 1 → 2: B stopped", s.stopped("gen2", "b"), || {
        format!("{:?}", s.snap("gen2"))
    });
    out.check(
        "after 1 → 2: C kept its PID",
        s.running("gen2", "c") && s.pid("gen2", "c") == s.pid("gen1", "c"),
        || format!("C was {} now {}", s.pid("gen1", "c"), s.pid("gen2", "c")),
    );
    out.check("after 1 → 2: D started", s.running("gen2", "d"), || {
        format!("{:?}", s.snap("gen2"))
    });
    out.check(
        "after 1 → 2: /run/current-system is generation 2",
        s.get("gen2", "current") == g2.toplevel.as_str(),
        || s.get("gen2", "current"),
    );
}

fn check_switch_back(out: &mut Outcome, s: &Snapshots, g1: &BuiltGeneration) {
    out.check(
        "after 2 → 1: A restarted again",
        s.running("back", "a") && s.pid("back", "a") != s.pid("gen2", "a"),
        || format!("A was {} now {}", s.pid("gen2", "a"), s.pid("back", "a")),
    );
    out.check(
        "after 2 → 1: B running again",
        s.running("back", "b"),
        || format!("{:?}", s.snap("back")),
    );
    out.check(
        "after 2 → 1: C still has its first PID",
        s.pid("back", "c") == s.pid("gen1", "c") && s.running("back", "c"),
        || format!("C was {} now {}", s.pid("gen1", "c"), s.pid("back", "c")),
    );
    out.check("after 2 → 1: D stopped", s.stopped("back", "d"), || {
        format!("{:?}", s.snap("back"))
    });
    out.check(
        "after 2 → 1: /run/current-system is generation 1",
        s.get("back", "current") == g1.toplevel.as_str(),
        || s.get("back", "current"),
    );
}

/// What the switches printed: the first switch's unit lists, a silent no-op switch, and
/// each switch's timing as a note.
fn check_printed(out: &mut Outcome, lines: &[Line]) {
    let text: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    let between = |from: &str, to: &str| -> Vec<&str> {
        let start = text
            .iter()
            .position(|l| l.contains(from))
            .unwrap_or(text.len());
        let end = text
            .iter()
            .position(|l| l.contains(to))
            .unwrap_or(text.len());
        text.get(start..end.max(start)).unwrap_or(&[]).to_vec()
    };
    let first = between(&format!("{PREFIX}gen1"), &format!("{PREFIX}switched-to-2"));
    for want in [
        "stopping the following units: a.service, b.service",
        "starting the following units: a.service",
        "the following new units were started: d.service",
    ] {
        out.check(
            &format!("switch 1 → 2 says {want:?}"),
            first.iter().any(|l| l.contains(want)),
            || first.join("\n"),
        );
    }
    let noop = between(&format!("{PREFIX}back"), &format!("{PREFIX}no-op"));
    out.check(
        "the no-op switch stops, restarts and starts nothing it names",
        !noop.iter().any(|l| l.contains("the following units")),
        || noop.join("\n"),
    );
    for l in text
        .iter()
        .filter(|l| l.contains("switch-to-configuration") && l.contains("finished in"))
    {
        out.notes.push(l.trim().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_lines_parse() {
        let line = |t: &str| Line {
            text: t.into(),
            host: std::time::Duration::ZERO,
        };
        let s = snapshots(
            &[
                line("[   5.1] SWITCH-TEST gen1 a=12 a.state=active d=0 d.state=inactive current=/nix/store/x"),
                line("SWITCH-TEST switched-to-2 exit=0"),
                line("noise"),
            ],
            PREFIX,
        );
        assert_eq!(s["gen1"]["a"], "12");
        assert_eq!(s["gen1"]["d.state"], "inactive");
        assert_eq!(s["switched-to-2"]["exit"], "0");
        assert!(driver_script("/bb").contains("system-2-link/bin/switch-to-configuration switch"));
    }
}
