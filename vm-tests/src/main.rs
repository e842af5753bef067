//! `vm-tests`: boots real Stagehand generations in QEMU and checks them from the guest's
//! console.
//!
//! ```text
//! vm-tests test [SCENARIO...]   run the boot scenarios, PASS/FAIL each, non-zero on failure
//! vm-tests demo                 boot the demo generation with the console on stdout
//! vm-tests list                 name the scenarios
//! vm-tests bench [--boots N]    side by side with dracut and initramfs-tools (BENCHMARKS.md)
//! vm-tests initrd-sizes         the test initrd's size per compression, stripped or not
//! vm-tests bench-floor [--boots N]  stage 1's own work against the kernel's floor (BENCHMARKS.md)
//! ```
//!
//! Before booting it builds stage1, stage2 and guest-probe (`cargo build --release`),
//! fetches the Debian kernel into `$STAGEHAND_CACHE` (default `<workspace>/target/vm-cache`)
//! and writes images, initrds and console logs under `<target dir>/vm-tests/<scenario>/`.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;

use stagehand_vm_tests::bench;
use stagehand_vm_tests::fallback_scenarios;
use stagehand_vm_tests::initrd_scenarios;
use stagehand_vm_tests::layer_scenarios;
use stagehand_vm_tests::nixos_scenarios;
use stagehand_vm_tests::powercut_scenarios;
use stagehand_vm_tests::scenarios::{self, Inputs, Outcome};
use stagehand_vm_tests::stage1_scenarios;
use stagehand_vm_tests::stage2_scenarios;
use stagehand_vm_tests::storage_scenarios;
use stagehand_vm_tests::switch_scenarios;
use stagehand_vm_tests::switch_suite;
use stagehand_vm_tests::uefi_scenarios;

type Scenario = (&'static str, &'static str, fn(&Inputs) -> Result<Outcome>);

const SCENARIOS: &[Scenario] = &[
    (
        "boot-spine",
        "our initrd → stage 1 → stage 2 → activation → systemd as PID 1, checked from the guest",
        |i| scenarios::boot_spine(i, false),
    ),
    (
        "corrupt-config",
        "a stage-1 config with one flipped byte is refused (file and checksum named), boot stops",
        scenarios::corrupt_config_scenario,
    ),
    (
        "label-root",
        "root=LABEL= and then root=UUID= find the disk without udev; both boot to systemd",
        stage1_scenarios::label_root,
    ),
    (
        "missing-root",
        "root=LABEL=nope: the failure names the device and the devices seen, then panics",
        stage1_scenarios::missing_root,
    ),
    (
        "shell-on-fail",
        "boot.shell_on_fail + missing root: key f gives a busybox shell as PID 1 on ttyS0",
        stage1_scenarios::shell_on_fail,
    ),
    (
        "dirty-journal",
        "an ext4 root with an unreplayed journal is fsck'd before the mount and boots",
        stage1_scenarios::dirty_journal,
    ),
    (
        "separate-nix",
        "/nix on a second disk (LABEL=) from the stage-1 config; boots to systemd",
        stage1_scenarios::separate_nix,
    ),
    (
        "tmpfs-root",
        "/ is a tmpfs, /nix from disk, /usr bind-mounted from it; boots to systemd",
        stage1_scenarios::tmpfs_root,
    ),
    (
        "gpt-partuuid",
        "a GPT disk (sgdisk) with an ESP and the root: root=PARTUUID= then PARTLABEL= boot to systemd",
        storage_scenarios::gpt_partuuid,
    ),
    (
        "btrfs-subvol",
        "the root on btrfs subvolume @ (mkfs.btrfs, btrfs subvolume snapshot), subvol=@ from the config",
        storage_scenarios::btrfs_subvol,
    ),
    (
        "btrfs-multi",
        "a btrfs root over two devices (btrfs device add): both scanned through /dev/btrfs-control, it mounts",
        storage_scenarios::btrfs_multi,
    ),
    (
        "md-raid1-degraded",
        "an md RAID1 root (mdadm v1.2) with one member missing starts degraded and boots to systemd",
        storage_scenarios::md_raid1_degraded,
    ),
    (
        "md-raid10-degraded",
        "a four-member md RAID10 root with one member of each mirror missing starts degraded and boots",
        storage_scenarios::md_raid10_degraded,
    ),
    (
        "md-too-degraded",
        "only the md array's spare present: the failure names the array, the member and the fix, then panics",
        storage_scenarios::md_too_degraded,
    ),
    (
        "luks2-passphrase",
        "LUKS2 (argon2id) root by /dev/disk/by-uuid: one wrong passphrase on ttyS0, then the right one; boots to systemd",
        layer_scenarios::luks2_passphrase,
    ),
    (
        "luks-detached-header",
        "LUKS2 with its header on a second disk (found by UUID): the whole first disk is ciphertext; unlocked with a passphrase, boots",
        layer_scenarios::luks_detached_header,
    ),
    (
        "luks1-keyfile",
        "LUKS1 root opened with a key file from the initrd secrets (keyFileOffset/keyFileSize); boots to systemd",
        layer_scenarios::luks1_keyfile,
    ),
    (
        "lvm-on-luks",
        "LVM on LUKS2: the passphrase, then the VG activated natively; root /dev/VG/LV boots to systemd",
        layer_scenarios::lvm_on_luks,
    ),
    (
        "luks-on-lvm",
        "LUKS2 on an LVM volume (preLVM = false): the VG activated first, then the LV opened; boots to systemd",
        layer_scenarios::luks_on_lvm,
    ),
    (
        "luks-shared-passphrase",
        "two LUKS2 volumes, one passphrase typed once: the second opens with it (reusePassphrases)",
        layer_scenarios::luks_shared_passphrase,
    ),
    (
        "luks-wrong-passphrase",
        "three wrong passphrases: the failure names the device and what to check, then the failure menu",
        layer_scenarios::luks_wrong_passphrase,
    ),
    (
        "lvm-missing-lv",
        "the root names an LV its VG lacks: the failure names it, the VG's volumes and the fix, then the menu",
        layer_scenarios::lvm_missing_lv,
    ),
    (
        "uefi-menu",
        "OVMF + systemd-boot with our entries: the default boots generation 2, the menu's second entry generation 1",
        uefi_scenarios::uefi_menu,
    ),
    (
        "uefi-fallback",
        "OVMF + systemd-boot: generation 2 (one try) fails in stage 2; the next boot falls back to generation 1",
        uefi_scenarios::uefi_fallback,
    ),
    (
        "kernel-fallback",
        "QEMU -kernel: generation 2 (stagehand.tries=1) fails in stage 2; stage 1's counter boots generation 1 next",
        fallback_scenarios::kernel_fallback,
    ),
    (
        "no-stage1",
        "a foreign busybox initrd mounts only the root (read-only): stage 2 mounts every special fs itself, remounts / rw, systemd comes up",
        stage2_scenarios::no_stage1,
    ),
    (
        "xz-stripped",
        "an xz initrd (CRC32) with stripped e2fsck, libraries and loader unpacks, fscks the root and boots",
        initrd_scenarios::xz_stripped,
    ),
    (
        "power-cut",
        "QEMU killed during generation 2's first activation: the account files are old or new, the next boot comes up",
        powercut_scenarios::power_cut,
    ),
    (
        "switch-live",
        "live switch-to-configuration under systemd: 1 → 2 restarts changed A, stops removed B, starts new D, keeps C; back to 1; a no-op",
        switch_scenarios::switch_live,
    ),
    (
        "switch-suite-services",
        "NixOS's switch-test.nix, ported (first boot): checks, actions, services, failing units, the unit file parser, activation restart/reload lists",
        switch_suite::switch_suite_services,
    ),
    (
        "switch-suite-units",
        "NixOS's switch-test.nix, ported (second boot): fstab mounts, swaps, sockets, mounts, timers, targets, paths, slices, D-Bus reloads, generators",
        switch_suite::switch_suite_units,
    ),
    (
        "nixos-native-init",
        "a generation in nixpkgs' layout (no activation.json, no Perl) boots with NixOS's own bash init after our stage 1; its activate runs (Perl calls fail), systemd comes up",
        nixos_scenarios::nixos_native_init,
    ),
    (
        "nixos-generation",
        "the same generation, init= at NixOS's script: our stage 1 runs our carried stage 2, which activates from NixOS's activate (users, shadow, /etc, a third-party snippet)",
        nixos_scenarios::nixos_generation,
    ),
    (
        "nixos-switch",
        "two nixpkgs-layout generations (a user added, an etc file changed): live switch-to-configuration to 2 and back to 1",
        nixos_scenarios::nixos_switch,
    ),
];

fn usage() -> ExitCode {
    eprintln!(
        "usage: vm-tests test [SCENARIO...] | vm-tests demo | vm-tests list | \
         vm-tests bench [--boots N] | vm-tests bench-floor [--boots N] | vm-tests initrd-sizes"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => run_tests(&args[1..]),
        Some("demo") if args.len() == 1 => run_demo(),
        Some("bench") => run_bench(&args[1..]),
        Some("bench-floor") => run_bench_floor(&args[1..]),
        Some("initrd-sizes") if args.len() == 1 => {
            let Some(inputs) = prepare() else {
                return ExitCode::FAILURE;
            };
            match initrd_scenarios::sizes(&inputs) {
                Ok(table) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vm-tests: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("list") if args.len() == 1 => {
            for (name, what, _) in SCENARIOS {
                println!("{name:<16} {what}");
            }
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}

fn prepare() -> Option<Inputs> {
    match Inputs::prepare() {
        Ok(i) => Some(i),
        Err(e) => {
            eprintln!("vm-tests: cannot prepare the boot inputs: {e:#}");
            None
        }
    }
}

fn print_outcome(name: &str, outcome: &Result<Outcome>, secs: f64) -> bool {
    match outcome {
        Ok(o) => {
            for n in &o.notes {
                for line in n.lines() {
                    println!("  {line}");
                }
            }
            if o.failures.is_empty() {
                println!("PASS {name} ({secs:.1} s)");
                true
            } else {
                for f in &o.failures {
                    println!("  ✗ {f}");
                }
                if let Some(log) = &o.log {
                    println!("  console log: {}", log.display());
                }
                println!("FAIL {name} ({secs:.1} s)");
                false
            }
        }
        Err(e) => {
            println!("  error: {e:#}");
            println!("FAIL {name} ({secs:.1} s)");
            false
        }
    }
}

/// A filter names a scenario, or a group of them by the part of their names before a `-`
/// (`switch-suite` runs `switch-suite-services` and `switch-suite-units`).
fn selects(filter: &str, name: &str) -> bool {
    name == filter
        || name
            .strip_prefix(filter)
            .is_some_and(|rest| rest.starts_with('-'))
}

fn run_tests(filter: &[String]) -> ExitCode {
    let unknown: Vec<&String> = filter
        .iter()
        .filter(|f| !SCENARIOS.iter().any(|(n, _, _)| selects(f, n)))
        .collect();
    if !unknown.is_empty() {
        eprintln!("vm-tests: unknown scenario(s) {unknown:?}; `vm-tests list` names them");
        return ExitCode::from(2);
    }
    let Some(inputs) = prepare() else {
        return ExitCode::FAILURE;
    };
    let (mut passed, mut failed) = (0, 0);
    for (name, what, run) in SCENARIOS {
        if !filter.is_empty() && !filter.iter().any(|f| selects(f, name)) {
            continue;
        }
        println!("RUN  {name}: {what}");
        let t = Instant::now();
        let outcome = run(&inputs);
        if print_outcome(name, &outcome, t.elapsed().as_secs_f64()) {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("vm-tests: {passed} passed, {failed} failed");
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_demo() -> ExitCode {
    let Some(inputs) = prepare() else {
        return ExitCode::FAILURE;
    };
    println!("vm-tests demo: booting the demo generation; the guest console follows\n");
    let t = Instant::now();
    let outcome = scenarios::boot_spine(&inputs, true);
    println!("\n--- demo summary ---");
    let passed = print_outcome("demo", &outcome, t.elapsed().as_secs_f64());
    // The scenario drew the boot's timeline next to its console log; the demo's copy sits
    // beside the scenario directories.
    let drawn = inputs
        .scenario_dir("boot-spine")
        .map(|d| d.join("timeline.svg"))
        .ok()
        .filter(|p| p.exists());
    if let Some(drawn) = drawn {
        let demo = inputs.workspace.artifacts_dir().join("demo-timeline.svg");
        match std::fs::copy(&drawn, &demo) {
            Ok(_) => println!("boot timeline (SVG): {}", demo.display()),
            Err(e) => eprintln!(
                "vm-tests: cannot copy {} to {}: {e}",
                drawn.display(),
                demo.display()
            ),
        }
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--boots N` (a positive number) or nothing (`default`); `None` after saying what is wrong.
fn boots_arg(command: &str, args: &[String], default: usize) -> Option<usize> {
    match args {
        [] => Some(default),
        [flag, n] if flag == "--boots" => match n.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                eprintln!("vm-tests {command}: --boots needs a positive number, not {n:?}");
                None
            }
        },
        _ => {
            usage();
            None
        }
    }
}

fn run_bench_floor(args: &[String]) -> ExitCode {
    let Some(boots) = boots_arg("bench-floor", args, bench::floor::DEFAULT_BOOTS) else {
        return ExitCode::from(2);
    };
    match bench::floor::run(boots) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vm-tests bench-floor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_bench(args: &[String]) -> ExitCode {
    let Some(boots) = boots_arg("bench", args, bench::DEFAULT_BOOTS) else {
        return ExitCode::from(2);
    };
    match bench::run(boots) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vm-tests bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
