//! UEFI boot scenarios (issue 5): OVMF firmware, Debian's systemd-boot on a FAT ESP image,
//! and the boot entries that *our* `stagehand install-bootloader` writes. The guest's own
//! console says which generation booted (`/run/booted-system` from the probe unit).
//!
//! * `uefi-menu` — two generations; the default boots the newest, and choosing the older
//!   entry in systemd-boot's menu (keys on the serial console) boots the older one. Each
//!   boot that reaches `boot-complete.target` blesses its entry (`+2-1` → no counter).
//! * `uefi-fallback` — generation 2's stage 2 exits (PID 1 dies, the kernel panics); its
//!   entry has one try, so systemd-boot renames it `+0-1` and the next boot lands on
//!   generation 1 by itself, whose entry is then blessed while generation 2's stays bad.
//!
//! Blessing is stage 2's runtime unit: systemd-boot sets `LoaderBootCountPath`, so stage 2
//! writes `/run/systemd/system/stagehand-bless.service` (the generations ship no bless unit
//! and no `boot-complete.target`); after `boot-complete.target` it runs `<toplevel>/init
//! bless --esp /dev/vdb` (from `stagehand.esp=` in the entries' options: the whole-disk ESP
//! has no partition UUID to find it by), which mounts the ESP, renames the entry and
//! unmounts. The probe is ordered after it. The ESP image is read back with mtools after
//! QEMU exits.
//!
//! The harness's [`crate::qemu::Vm`] runs the firmware from [`qemu_args`]; the boot menu is
//! drawn with ANSI escapes and no newlines, so the boots here wait on the raw serial stream
//! (`Vm::wait_raw`) and read lines only afterwards.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::console::{probe_facts, Phases, PROBE_DONE};
use crate::generation::{BuiltGeneration, SystemImage};
use crate::host::{on_path, run};
use crate::qemu::{base_args, option_path, Line, Vm};
use crate::scenarios::{check_probe, root_disk, Expected, Inputs, Outcome, STEP, VM_LIMIT};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const SYSTEMD_BOOT_EFI: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The ESP as the guest sees it: the second virtio disk (after the root), a whole-disk FAT.
pub const ESP_DEVICE: &str = "/dev/vdb";

/// What stage 2's bless unit needs from the initrd: stage 1 loads these before switch_root
/// (the root has no `/lib/modules`). FAT with Debian's defaults (codepage 437, iocharset ascii,
/// utf8) for the ESP mount, efivarfs for systemd to mount `/sys/firmware/efi/efivars`.
const BLESS_MODULES: &[&str] = &["vfat", "nls_cp437", "nls_ascii", "nls_utf8", "efivarfs"];

/// The line `stagehand bless` prints on the console when it renamed an entry.
const BLESSED: &str = "boot entry marked good: renamed ";

/// QEMU start → systemd-boot's menu or the kernel's first line.
const FIRMWARE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// The machine: QEMU with OVMF, run by the harness's `Vm` from this command line.

/// QEMU's arguments for a q35 machine with OVMF (`vars` is a writable copy), the root
/// disk as the first virtio disk and the ESP as the one the firmware boots.
pub fn qemu_args(vars: &Path, root: &Path, esp: &Path) -> Vec<String> {
    let mut a = base_args("q35", 512);
    for arg in [
        format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
        format!("if=pflash,format=raw,unit=1,file={}", option_path(vars)),
        format!("if=none,id=root,format=raw,file={}", option_path(root)),
        format!("if=none,id=esp,format=raw,file={}", option_path(esp)),
    ] {
        a.push("-drive".into());
        a.push(arg);
    }
    for dev in [
        "virtio-blk-pci,drive=root",
        "virtio-blk-pci,drive=esp,bootindex=1",
    ] {
        a.push("-device".into());
        a.push(dev.into());
    }
    a
}

// ---------------------------------------------------------------------------------------
// Building what the firmware boots.

fn check_uefi_host() -> Result<()> {
    let missing: Vec<&str> = [OVMF_CODE, OVMF_VARS, SYSTEMD_BOOT_EFI]
        .into_iter()
        .filter(|p| !Path::new(p).is_file())
        .collect();
    let tools: Vec<&str> = ["mkfs.vfat", "mcopy", "mmd", "mdir"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    if !missing.is_empty() || !tools.is_empty() {
        bail!(
            "missing for the UEFI tests: {}; run vm-tests/setup-host (ovmf, systemd-boot-efi, \
             mtools, dosfstools)",
            missing
                .iter()
                .chain(tools.iter())
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `cargo build --release --bin stagehand` (the CLI whose `install-bootloader` writes the
/// ESP); its path.
pub(crate) fn build_stagehand(inputs: &Inputs) -> Result<PathBuf> {
    let ws = &inputs.workspace;
    ws.build_release(&["-p", "stagehand-cli", "--bin", "stagehand"])?;
    ws.release_binary("stagehand")
}

/// The disks of one UEFI scenario.
pub struct UefiDisks {
    pub root: PathBuf,
    pub esp: PathBuf,
    pub vars: PathBuf,
    /// What `stagehand install-bootloader` printed.
    pub install_log: String,
}

/// Write `image` as the root disk, run our `install-bootloader` against a copy of its tree
/// with `/boot` as the ESP, and pack that ESP (plus systemd-boot as the removable-media
/// loader) into a FAT image; a fresh writable copy of OVMF's variable store.
fn make_disks(
    inputs: &Inputs,
    dir: &Path,
    image: &SystemImage,
    install_args: &[&str],
) -> Result<UefiDisks> {
    let stagehand = build_stagehand(inputs)?;
    let root_img = root_disk(image, dir)?;

    let staging = tempfile::Builder::new()
        .prefix(".esp-staging-")
        .tempdir_in(dir)
        .context("creating a staging directory")?;
    let root = staging.path().join("root");
    fs::create_dir(&root)?;
    image
        .tree()?
        .write_to(&root)
        .context("writing the root tree for install-bootloader")?;
    let boot = root.join("boot");
    fs::create_dir_all(&boot)?;
    let mut cmd = Command::new(&stagehand);
    cmd.arg("install-bootloader")
        .arg("--root")
        .arg(&root)
        .args(["--esp", "/boot"])
        .args(install_args)
        .env("RUST_LOG", "info");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running stagehand install-bootloader")?;
    let install_log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "stagehand install-bootloader {install_args:?} failed ({}): {}",
            out.status,
            install_log.trim()
        );
    }
    let efi_boot = boot.join("EFI/BOOT");
    fs::create_dir_all(&efi_boot)?;
    fs::copy(SYSTEMD_BOOT_EFI, efi_boot.join("BOOTX64.EFI"))
        .with_context(|| format!("copying {SYSTEMD_BOOT_EFI}"))?;

    let esp = dir.join("esp.img");
    let _ = fs::remove_file(&esp);
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", "ESP"])
        .arg(&esp)
        .arg("65536"))?;
    let mut mcopy = Command::new("mcopy");
    mcopy.arg("-s").arg("-i").arg(&esp);
    for e in fs::read_dir(&boot)? {
        mcopy.arg(e?.path());
    }
    mcopy.arg("::/");
    run(&mut mcopy).context("copying the ESP tree into esp.img")?;

    let vars = dir.join("vars.fd");
    fs::copy(OVMF_VARS, &vars).with_context(|| format!("copying {OVMF_VARS}"))?;
    Ok(UefiDisks {
        root: root_img,
        esp,
        vars,
        install_log,
    })
}

/// The entry file names in the ESP image's `loader/entries`, sorted.
pub fn esp_entries(esp: &Path) -> Result<Vec<String>> {
    let out = run(Command::new("mdir")
        .args(["-b", "-i"])
        .arg(esp)
        .arg("::/loader/entries"))
    .context("listing the ESP's loader/entries")?;
    let mut names: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.rsplit('/').next().unwrap_or(l).to_string())
        .collect();
    names.sort();
    Ok(names)
}

/// The text of one file in the ESP image.
fn esp_file(esp: &Path, path: &str) -> Result<String> {
    run(Command::new("mtype")
        .arg("-i")
        .arg(esp)
        .arg(format!("::/{path}")))
}

/// How to pass systemd-boot's menu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Menu {
    /// Touch nothing: the default entry boots after the timeout.
    Default,
    /// Wait for the menu, then press down `n` times and Enter.
    Down(usize),
}

/// One boot through firmware and systemd-boot to the probe unit's last line and power
/// off. Returns the console lines and a summary of the timings; failures go into `out`.
fn boot_to_probe(
    setup: &UefiSetup,
    name: &str,
    menu: Menu,
    out: &mut Outcome,
) -> Result<Option<Vec<Line>>> {
    let mut vm = setup.start(name, out)?;
    let mut menu_at = None;
    let result = (|| -> Result<()> {
        if let Menu::Down(n) = menu {
            // Both entries are drawn (titles disambiguated by version) before any key:
            // an ESC sent during OVMF's start would open the firmware's setup instead.
            vm.wait_raw("Generation 1", FIRMWARE)?;
            menu_at = Some(vm.elapsed());
            std::thread::sleep(Duration::from_millis(300));
            for _ in 0..n {
                vm.send(b"\x1b[B")?;
                std::thread::sleep(Duration::from_millis(300));
            }
            vm.send(b"\r")?;
        }
        vm.wait_raw("Linux version", FIRMWARE)?;
        vm.wait_raw("stage1: started", STEP)?;
        vm.wait_raw("stage2: ", STEP)?;
        vm.wait_raw("systemd[1]: ", STEP)?;
        vm.wait_raw(PROBE_DONE, STEP)?;
        Ok(())
    })();
    if let Err(e) = result {
        out.failures.push(format!("{name}: {e:#}"));
        out.notes.push(vm.failure_context(40));
        return Ok(None);
    }
    match vm.wait_exit(STEP) {
        Ok(s) => out.check(&format!("{name}: the VM powered off"), s.success(), || {
            format!("QEMU exited with {s}")
        }),
        Err(e) => out.failures.push(format!("{name}: power off: {e:#}")),
    }
    let lines = vm.lines();
    let kernel_at = lines
        .iter()
        .find(|l| l.text.contains("Linux version"))
        .map(|l| l.host.as_secs_f64());
    let mut phases = Phases::from_lines(&lines);
    phases.host_exit = Some(vm.elapsed().as_secs_f64());
    out.notes.push(format!(
        "{name}: QEMU start → {}kernel's first line {} s → VM off {:.1} s",
        menu_at.map_or(String::new(), |t| format!(
            "menu {:.1} s → ",
            t.as_secs_f64()
        )),
        kernel_at.map_or("?".into(), |t| format!("{t:.1}")),
        vm.elapsed().as_secs_f64()
    ));
    out.notes.push(format!("{name}: {phases}"));
    Ok(Some(lines))
}

fn check_booted(out: &mut Outcome, name: &str, lines: &[Line], want: &BuiltGeneration) {
    let facts = probe_facts(lines);
    let booted = facts
        .get("booted-system")
        .cloned()
        .unwrap_or_else(|| "<missing>".into());
    out.notes
        .push(format!("{name}: /run/booted-system → {booted}"));
    for bad in check_probe(&facts, &Expected::of(want)) {
        out.failures
            .push(format!("{name} (generation {}): {bad}", want.number));
    }
}

/// Stage 2's bless unit said on the console that it renamed `from` to `to` (in
/// `loader/entries`).
fn check_blessed(out: &mut Outcome, name: &str, lines: &[Line], from: &str, to: &str) {
    let said: Vec<&str> = lines
        .iter()
        .filter(|l| l.text.contains("boot entry") || l.text.contains("nothing to bless"))
        .map(|l| l.text.as_str())
        .collect();
    out.notes.push(format!("{name}: bless said {said:?}"));
    let want = format!("{BLESSED}loader/entries/{from} -> loader/entries/{to}");
    out.check(
        &format!("{name}: bless marked {from} good"),
        said.iter().any(|l| l.contains(&want)),
        || format!("expected a console line with {want:?}, got {said:?}"),
    );
}

/// The ESP's entries now (noted as those `when`) are exactly `want`.
fn check_entries(out: &mut Outcome, esp: &Path, when: &str, want: &[&str]) -> Result<()> {
    let entries = note_entries(out, esp, when)?;
    out.check(&format!("entries {when}"), entries == want, || {
        format!("expected {want:?}, got {entries:?}")
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The scenarios.

/// What both scenarios start from.
struct UefiSetup {
    dir: PathBuf,
    disks: UefiDisks,
    g1: BuiltGeneration,
    g2: BuiltGeneration,
    /// The ESP's entries as `install-bootloader` wrote them.
    entries: Vec<String>,
}

/// Generation 1 (our stage 2) and generation 2 (running `g2_stage2`, current) on the disks
/// that `install-bootloader install_args` made, in the scenario directory `name`.
fn two_generations(
    inputs: &Inputs,
    name: &str,
    g2_stage2: &Path,
    install_args: &[&str],
    out: &mut Outcome,
) -> Result<UefiSetup> {
    check_uefi_host()?;
    let dir = inputs.scenario_dir(name)?;
    let (_, initrd) = inputs.initrd_in(&dir, |spec| {
        spec.modules
            .extend(BLESS_MODULES.iter().map(|m| m.to_string()))
    })?;
    let generation = |number: u32, stage2: &Path| {
        let mut spec = inputs.generation(number, &initrd, stage2);
        // Where stage 2's bless unit finds the ESP (see the module comment).
        spec.kernel_params
            .push(format!("stagehand.esp={ESP_DEVICE}"));
        spec
    };
    let mut image = SystemImage::new(&inputs.systemd)?;
    let g1 = image.add_generation(&generation(1, &inputs.bins.stage2))?;
    let g2 = image.add_generation(&generation(2, g2_stage2))?;
    image.set_current(2)?;
    let disks = make_disks(inputs, &dir, &image, install_args)?;
    let entries = note_entries(out, &disks.esp, "written by install-bootloader")?;
    Ok(UefiSetup {
        dir,
        disks,
        g1,
        g2,
        entries,
    })
}

impl UefiSetup {
    /// Start a VM from the disks, the console in `<name>.console.log` (which `out` names).
    fn start(&self, name: &str, out: &mut Outcome) -> Result<Vm> {
        let log = self.dir.join(format!("{name}.console.log"));
        out.log = Some(log.clone());
        let d = &self.disks;
        Vm::start_args(&qemu_args(&d.vars, &d.root, &d.esp), &log, VM_LIMIT)
    }
}

/// The ESP's entries, noted as those `when`.
fn note_entries(out: &mut Outcome, esp: &Path, when: &str) -> Result<Vec<String>> {
    let entries = esp_entries(esp)?;
    out.notes.push(format!("entries {when}: {entries:?}"));
    Ok(entries)
}

/// Issue 5, VM test 1: the default entry boots the newest generation; choosing the older
/// entry in the menu boots the older generation.
pub fn uefi_menu(inputs: &Inputs) -> Result<Outcome> {
    let mut out = Outcome::default();
    let setup = two_generations(
        inputs,
        "uefi-menu",
        &inputs.bins.stage2,
        &["--timeout", "3"],
        &mut out,
    )?;
    let (before, disks) = (&setup.entries, &setup.disks);
    let conf = esp_file(&disks.esp, "loader/loader.conf")?;
    out.check(
        "loader.conf",
        conf.contains("timeout 3") && conf.contains("default nixos-generation-*"),
        || format!("expected `timeout 3` and the glob default, got {conf:?}"),
    );
    out.check(
        "entries",
        before.len() == 2
            && before[0].starts_with("nixos-generation-1")
            && before[1].starts_with("nixos-generation-2"),
        || format!("expected one entry per generation, got {before:?}"),
    );

    // Boot 1: nobody touches the menu → the newest generation. systemd-boot counts its
    // try (`+3` → `+2-1`); once boot-complete.target is reached, bless drops the counter.
    if let Some(lines) = boot_to_probe(&setup, "boot-default", Menu::Default, &mut out)? {
        check_booted(&mut out, "boot-default", &lines, &setup.g2);
        check_blessed(
            &mut out,
            "boot-default",
            &lines,
            "nixos-generation-2+2-1.conf",
            "nixos-generation-2.conf",
        );
    }
    check_entries(
        &mut out,
        &disks.esp,
        "after the default boot",
        &["nixos-generation-1+3.conf", "nixos-generation-2.conf"],
    )?;

    // Boot 2: the older entry is second in the menu (a good entry and an untried one sort
    // the same way as two untried ones).
    if let Some(lines) = boot_to_probe(&setup, "boot-chosen", Menu::Down(1), &mut out)? {
        check_booted(&mut out, "boot-chosen", &lines, &setup.g1);
        check_blessed(
            &mut out,
            "boot-chosen",
            &lines,
            "nixos-generation-1+2-1.conf",
            "nixos-generation-1.conf",
        );
    }
    check_entries(
        &mut out,
        &disks.esp,
        "after choosing generation 1",
        &["nixos-generation-1.conf", "nixos-generation-2.conf"],
    )?;
    Ok(out)
}

/// A program that exits at once: as generation 2's `init` (stage 2), PID 1 dies after
/// switch_root and the kernel panics (`panic=-1` + `-no-reboot`: QEMU exits).
const FAILING_STAGE2: &str = "/usr/bin/false";

/// Issue 5, VM test 2: generation 2's stage 2 fails. Its entry has one try; the failed boot
/// leaves it `+0-1`, and the next boot lands on generation 1 with no one at the keyboard.
pub fn uefi_fallback(inputs: &Inputs) -> Result<Outcome> {
    let mut out = Outcome::default();
    let setup = two_generations(
        inputs,
        "uefi-fallback",
        Path::new(FAILING_STAGE2),
        &["--timeout", "0", "--tries", "1"],
        &mut out,
    )?;
    let (before, disks) = (&setup.entries, &setup.disks);
    out.check(
        "entries with one try",
        *before == ["nixos-generation-1+1.conf", "nixos-generation-2+1.conf"],
        || format!("expected nixos-generation-{{1,2}}+1.conf, got {before:?}"),
    );

    // Boot A: systemd-boot picks generation 2 (the default), counts the try down, and
    // generation 2's stage 2 exits.
    let mut vm = setup.start("boot-bad", &mut out)?;
    let result = (|| -> Result<()> {
        vm.wait_raw("Linux version", FIRMWARE)?;
        vm.wait_raw("stage1: switching root", STEP)?;
        vm.wait_raw("Attempted to kill init", STEP)?;
        vm.wait_exit(STEP)?;
        Ok(())
    })();
    let lines = vm.lines();
    match result {
        Err(e) => {
            out.failures.push(format!("boot-bad: {e:#}"));
            out.notes.push(vm.failure_context(40));
            return Ok(out);
        }
        Ok(()) => {
            let cmdline = lines
                .iter()
                .find(|l| l.text.contains("Kernel command line:"))
                .map(|l| l.text.clone())
                .unwrap_or_default();
            let want = format!("init={}/init", setup.g2.toplevel);
            out.check(
                "boot-bad booted generation 2's entry",
                cmdline.contains(&want),
                || format!("expected {want} on the kernel command line, got {cmdline:?}"),
            );
            out.check_bad_boot(&lines, &vm);
        }
    }
    drop(vm);
    let after_bad = note_entries(&mut out, &disks.esp, "after the failed boot")?;
    out.check(
        "systemd-boot counted generation 2's try",
        after_bad == ["nixos-generation-1+1.conf", "nixos-generation-2+0-1.conf"],
        || {
            format!(
                "expected nixos-generation-2+0-1.conf (and generation 1 untouched), got \
                 {after_bad:?}"
            )
        },
    );

    // Boot B: nobody touches anything; the bad entry sorts last, generation 1 boots,
    // systemd-boot counts its try (`+1` → `+0-1`) and bless marks it good after
    // boot-complete.target. Generation 2 stays bad: `+0-1`, last in the menu.
    if let Some(lines) = boot_to_probe(&setup, "boot-fallback", Menu::Default, &mut out)? {
        check_booted(&mut out, "boot-fallback", &lines, &setup.g1);
        check_blessed(
            &mut out,
            "boot-fallback",
            &lines,
            "nixos-generation-1+0-1.conf",
            "nixos-generation-1.conf",
        );
    }
    check_entries(
        &mut out,
        &disks.esp,
        "after the fallback boot",
        &["nixos-generation-1.conf", "nixos-generation-2+0-1.conf"],
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_esp_is_the_boot_disk_and_the_root_comes_first() {
        let a = qemu_args(
            Path::new("/t/vars.fd"),
            Path::new("/t/a,b.img"),
            Path::new("/t/esp.img"),
        );
        let joined = a.join(" ");
        assert!(joined.contains("unit=1,file=/t/vars.fd"), "{joined}");
        assert!(joined.contains("file=/t/a,,b.img"), "{joined}");
        let root = joined.find("drive=root").expect("root device");
        let esp = joined.find("drive=esp,bootindex=1").expect("esp device");
        assert!(root < esp, "{joined}");
        assert!(joined.contains("readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"));
        // Two virtio disks, the ESP second: the guest names it vdb.
        assert_eq!(joined.matches("virtio-blk-pci").count(), 2, "{joined}");
        assert_eq!(ESP_DEVICE, "/dev/vdb");
    }
}
