//! Issue 5, VM test 3: the fallback with QEMU `-kernel` (no boot loader to count), through
//! stage 1's attempt counter on the root filesystem.
//!
//! Two generations on one disk image, reused across the boots (the counter lives on it).
//! Generation 2's stage 2 is `/usr/bin/false`: PID 1 dies and, with `boot.panic_on_fail`,
//! `panic=-1` and `-no-reboot`, QEMU exits. Both boots carry
//! `init=/nix/var/nix/profiles/system-2-link/init stagehand.tries=1 stagehand.bless=stage2`.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use stagehand_common::boot_counting::ATTEMPTS_DIR;

use crate::console::{probe_facts, PROBE_DONE};
use crate::generation::SystemImage;
use crate::host::run;
use crate::qemu::Vm;
use crate::scenarios::{check_probe, root_disk, Expected, Inputs, Outcome, FIRST_LINE, STEP};

/// A stage 2 that exits at once (as in the UEFI fallback scenario).
const FAILING_STAGE2: &str = "/usr/bin/false";

/// `kernel-fallback`: boot 1 uses generation 2's only try and dies; boot 2 sees `+0-1`,
/// says so, and boots generation 1 by itself.
pub fn kernel_fallback(inputs: &Inputs) -> Result<Outcome> {
    let dir = inputs.scenario_dir("kernel-fallback")?;
    let (_, initrd) = inputs.initrd_in(&dir, |_| {})?;
    let mut image = SystemImage::new(&inputs.systemd)?;
    let g1 = image.add_generation(&inputs.generation(1, &initrd, &inputs.bins.stage2))?;
    let g2 = image.add_generation(&inputs.generation(2, &initrd, Path::new(FAILING_STAGE2)))?;
    image.set_current(2)?;
    let img = root_disk(&image, &dir)?;
    let append = format!("{} stagehand.tries=1 stagehand.bless=stage2", g2.cmdline());
    let mut out = Outcome::default();
    out.notes.push(format!("kernel command line: {append}"));

    // Boot 1: generation 2, counted (untried → +0-1), then PID 1 dies.
    let log = dir.join("boot-bad.console.log");
    out.log = Some(log.clone());
    let cfg = inputs.vm_config(&initrd, vec![img.clone()], append.clone(), log);
    let mut vm = Vm::start(&cfg)?;
    let counted = "stage1: boot attempt of generation 2: untried -> +0-1";
    let result = (|| -> Result<()> {
        vm.wait_for(counted, FIRST_LINE)?;
        vm.wait_for("stage1: switching root", STEP)?;
        vm.wait_raw("Attempted to kill init", STEP)?;
        vm.wait_exit(STEP)?;
        Ok(())
    })();
    if let Err(e) = result {
        out.failures.push(format!("boot-bad: {e:#}"));
        out.notes.push(vm.failure_context(40));
        return Ok(out);
    }
    let lines = vm.lines();
    let switch = lines
        .iter()
        .find(|l| l.text.contains("stage1: switching root"))
        .map(|l| l.text.clone())
        .unwrap_or_default();
    out.check(
        "boot-bad attempted generation 2",
        switch.contains(&format!("stage 2 is {}/init", g2.toplevel)),
        || format!("expected stage 2 in {}, got {switch:?}", g2.toplevel),
    );
    out.check_bad_boot(&lines, &vm);
    drop(vm);

    // Boot 2: the same command line; stage 1 falls back to generation 1.
    let log = dir.join("boot-fallback.console.log");
    out.log = Some(log.clone());
    let cfg = inputs.vm_config(&initrd, vec![img.clone()], append, log);
    let mut vm = Vm::start(&cfg)?;
    let fallback = "stage1: generation 2 failed 1 boots; booting generation 1 instead";
    let result = (|| -> Result<()> {
        vm.wait_for(fallback, FIRST_LINE)?;
        vm.wait_for("stage1: switching root", STEP)?;
        vm.wait_for("stage2: boot receipt: ", STEP)?;
        vm.wait_for(PROBE_DONE, STEP)?;
        vm.wait_exit(STEP)?;
        Ok(())
    })();
    if let Err(e) = result {
        out.failures.push(format!("boot-fallback: {e:#}"));
        out.notes.push(vm.failure_context(40));
        return Ok(out);
    }
    let lines = vm.lines();
    let facts = probe_facts(&lines);
    let booted = facts
        .get("booted-system")
        .cloned()
        .unwrap_or_else(|| "<missing>".into());
    out.notes
        .push(format!("boot-fallback: /run/booted-system → {booted}"));
    for bad in check_probe(&facts, &Expected::of(&g1)) {
        out.failures
            .push(format!("boot-fallback (generation 1): {bad}"));
    }
    let receipt = lines
        .iter()
        .find(|l| l.text.contains("stage2: boot receipt: "))
        .map(|l| l.text.trim().to_owned())
        .unwrap_or_default();
    out.notes.push(format!("boot-fallback: {receipt}"));
    out.check(
        "the receipt names the fallback",
        receipt.contains("booted generation 1 ")
            && receipt.contains("as a fallback from generation 2 after 1 failed boots")
            && receipt.contains("counter untried -> +0-1"),
        || format!("got {receipt:?}"),
    );
    out.notes.push(format!(
        "boot-fallback: QEMU start → probe done, VM gone {:.1} s",
        vm.elapsed().as_secs_f64()
    ));
    drop(vm);

    // The state on the disk: generation 2 used up, generation 1 marked good by stage 2.
    let listing = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("ls -p {ATTEMPTS_DIR}"))
        .arg(&img))?;
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .collect();
    out.notes
        .push(format!("{ATTEMPTS_DIR} after both boots: {names:?}"));
    let want_bad = format!("{}+0-1", g2.toplevel.base_name());
    let want_good = format!("{}.good", g1.toplevel.base_name());
    out.check(
        "generation 2 used up, generation 1 marked good on disk",
        names.contains(&want_bad.as_str())
            && names.contains(&want_good.as_str())
            && names.len() == 2,
        || format!("expected [{want_bad}, {want_good}], got {names:?}"),
    );
    Ok(out)
}
