//! UEFI boot scenarios (issue 5): OVMF firmware, Debian's systemd-boot on a FAT ESP image,
//! and the boot entries that *our* `stagehand install-bootloader` writes. The guest's own
//! console says which generation booted (`/run/booted-system` from the probe unit).
//!
//! * `uefi-menu` — two generations; the default boots the newest, and choosing the older
//!   entry in systemd-boot's menu (keys on the serial console) boots the older one.
//! * `uefi-fallback` — generation 2's stage 2 exits (PID 1 dies, the kernel panics); its
//!   entry has one try, so systemd-boot renames it `+0-1` and the next boot lands on
//!   generation 1 by itself.
//!
//! The harness's [`crate::qemu::Vm`] boots a kernel directly and sees the console in
//! lines; the boot menu is drawn with ANSI escapes and no newlines, so this module has its
//! own small runner that matches on the raw serial stream.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use stagehand_initrd::Compression;

use crate::console::{probe_facts, Phases, PROBE_DONE};
use crate::generation::{BootFiles, BuiltGeneration, GenerationSpec, SystemImage};
use crate::qemu::{accelerator, strip_ansi, Line};
use crate::scenarios::{check_probe, Expected, Inputs, Outcome};
use crate::workspace::TARGET_TRIPLE;

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const SYSTEMD_BOOT_EFI: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// Hard limit for one UEFI VM run (OVMF ≈ 4 s, EFI-stub decompression ≈ 2.5 s, the rest
/// like a direct boot; the machine is shared).
const VM_LIMIT: Duration = Duration::from_secs(300);
/// QEMU start → systemd-boot's menu or the kernel's first line.
const FIRMWARE: Duration = Duration::from_secs(120);
/// Between two milestones of a boot.
const STEP: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------
// The runner: QEMU with OVMF under `timeout`, the serial stream kept raw.

#[derive(Default)]
struct Serial {
    bytes: Vec<u8>,
    /// (end offset of a chunk, when it arrived since QEMU start)
    chunks: Vec<(usize, Duration)>,
    eof: bool,
}

#[derive(Default)]
struct Shared {
    serial: Mutex<Serial>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Serial> {
        self.serial.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One UEFI VM: firmware, ESP and root disks as virtio-blk (root first: `/dev/vda`).
pub struct UefiVm {
    child: Child,
    stdin: Option<ChildStdin>,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    started: Instant,
    hard_deadline: Instant,
    /// Byte offset in the raw stream where the next wait starts looking.
    cursor: usize,
    log: PathBuf,
    stderr_log: PathBuf,
    status: Option<ExitStatus>,
}

/// QEMU's arguments for a q35 machine with OVMF (`vars` is a writable copy), the root
/// disk as the first virtio disk and the ESP as the one the firmware boots.
pub fn qemu_args(vars: &Path, root: &Path, esp: &Path) -> Vec<String> {
    let q = |p: &Path| p.display().to_string().replace(',', ",,");
    let mut a: Vec<String> = [
        "-machine",
        "q35",
        "-accel",
        accelerator(),
        "-m",
        "512",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for arg in [
        format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
        format!("if=pflash,format=raw,unit=1,file={}", q(vars)),
        format!("if=none,id=root,format=raw,file={}", q(root)),
        format!("if=none,id=esp,format=raw,file={}", q(esp)),
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

impl UefiVm {
    pub fn start(args: &[String], log: &Path) -> Result<Self> {
        let mut log_file =
            fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let stderr_log = log.with_extension("qemu-stderr.log");
        let stderr = fs::File::create(&stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        let mut cmd = Command::new("timeout");
        cmd.args([
            "--kill-after=5",
            &VM_LIMIT.as_secs().to_string(),
            "qemu-system-x86_64",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .context("starting qemu-system-x86_64 under `timeout`")?;
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().context("QEMU stdout")?;
        let shared = Arc::new(Shared::default());
        let reader = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = match stdout.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let _ = log_file.write_all(&buf[..n]);
                    let mut s = shared.lock();
                    s.bytes.extend_from_slice(&buf[..n]);
                    let end = s.bytes.len();
                    s.chunks.push((end, started.elapsed()));
                    drop(s);
                    shared.changed.notify_all();
                }
                let _ = log_file.flush();
                shared.lock().eof = true;
                shared.changed.notify_all();
            })
        };
        Ok(Self {
            child,
            stdin,
            shared,
            reader: Some(reader),
            started,
            hard_deadline: started + VM_LIMIT,
            cursor: 0,
            log: log.to_path_buf(),
            stderr_log,
            status: None,
        })
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Type into the serial console.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let stdin = self.stdin.as_mut().context("the console input is closed")?;
        stdin.write_all(bytes)?;
        stdin.flush()?;
        Ok(())
    }

    /// Wait until the raw serial stream, after the previous match, contains `needle`
    /// (menus have no newlines, so this does not wait for one). Returns when it arrived.
    pub fn wait_raw(&mut self, needle: &str, within: Duration) -> Result<Duration> {
        let deadline = (Instant::now() + within).min(self.hard_deadline);
        let shared = Arc::clone(&self.shared);
        let mut s = shared.lock();
        loop {
            if let Some(i) = find(&s.bytes[self.cursor..], needle.as_bytes()) {
                let end = self.cursor + i + needle.len();
                self.cursor = end;
                let at = s
                    .chunks
                    .iter()
                    .find(|(e, _)| *e >= end)
                    .map_or_else(|| self.started.elapsed(), |(_, t)| *t);
                return Ok(at);
            }
            // Keep the tail: a needle may straddle two chunks.
            self.cursor = s.bytes.len().saturating_sub(needle.len()).max(self.cursor);
            if s.eof {
                drop(s);
                let status = self.reap();
                bail!(
                    "the VM stopped ({}) after {:.1} s before the console showed {needle:?}",
                    status.map_or_else(|| "status unknown".into(), |s| s.to_string()),
                    self.elapsed().as_secs_f64()
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "the console did not show {needle:?} within {:.0} s{}",
                    within.as_secs_f64(),
                    if now >= self.hard_deadline {
                        " (hit the VM's hard limit)"
                    } else {
                        ""
                    }
                );
            }
            s = shared
                .changed
                .wait_timeout(s, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Wait for QEMU to exit by itself (poweroff, or a panic with `-no-reboot panic=-1`).
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = (Instant::now() + within).min(self.hard_deadline);
        let shared = Arc::clone(&self.shared);
        let mut s = shared.lock();
        while !s.eof {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "the VM was still running {:.0} s later",
                    within.as_secs_f64()
                );
            }
            s = shared
                .changed
                .wait_timeout(s, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        drop(s);
        self.reap()
            .context("QEMU closed its console but its exit status could not be read")
    }

    fn reap(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.stdin = None;
            self.status = self.child.wait().ok();
        }
        self.status
    }

    /// The console so far as lines (ANSI stripped), each stamped with when its newline
    /// arrived; the unfinished last line included.
    pub fn lines(&self) -> Vec<Line> {
        let s = self.shared.lock();
        split_lines(&s.bytes, &s.chunks)
    }

    pub fn failure_context(&self, n: usize) -> String {
        let lines = self.lines();
        let start = lines.len().saturating_sub(n);
        let mut s = format!("last {} console lines:\n", lines.len() - start);
        for l in &lines[start..] {
            s.push_str(&format!("  | {}\n", l.text));
        }
        let stderr = fs::read_to_string(&self.stderr_log).unwrap_or_default();
        if !stderr.trim().is_empty() {
            s.push_str(&format!("QEMU stderr:\n{}\n", stderr.trim_end()));
        }
        s.push_str(&format!("full console log: {}", self.log.display()));
        s
    }
}

impl Drop for UefiVm {
    fn drop(&mut self) {
        if self.status.is_none() {
            if let Some(pid) = i32::try_from(self.child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split_lines(bytes: &[u8], chunks: &[(usize, Duration)]) -> Vec<Line> {
    let at = |off: usize| {
        chunks
            .iter()
            .find(|(e, _)| *e > off)
            .or(chunks.last())
            .map_or(Duration::ZERO, |(_, t)| *t)
    };
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            out.push(Line {
                text: strip_ansi(&String::from_utf8_lossy(&bytes[start..i])),
                host: at(i),
            });
            start = i + 1;
        }
    }
    if start < bytes.len() {
        out.push(Line {
            text: strip_ansi(&String::from_utf8_lossy(&bytes[start..])),
            host: at(bytes.len() - 1),
        });
    }
    out
}

// ---------------------------------------------------------------------------------------
// Building what the firmware boots.

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check_uefi_host() -> Result<()> {
    let missing: Vec<&str> = [OVMF_CODE, OVMF_VARS, SYSTEMD_BOOT_EFI]
        .into_iter()
        .filter(|p| !Path::new(p).is_file())
        .collect();
    let tools: Vec<&str> = ["mkfs.vfat", "mcopy", "mmd", "mdir"]
        .into_iter()
        .filter(|t| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            !std::env::split_paths(&path)
                .chain(["/usr/sbin".into(), "/sbin".into()])
                .any(|d| d.join(t).is_file())
        })
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
fn build_stagehand(inputs: &Inputs) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&inputs.workspace.root)
        .args([
            "build",
            "--release",
            "-p",
            "stagehand-activation",
            "--bin",
            "stagehand",
        ])
        .status()
        .context("running `cargo build --release --bin stagehand`")?;
    if !status.success() {
        bail!("`cargo build --release --bin stagehand` failed ({status})");
    }
    let p = inputs
        .workspace
        .target_dir
        .join(TARGET_TRIPLE)
        .join("release/stagehand");
    if !p.is_file() {
        bail!("`stagehand` was not built: {} does not exist", p.display());
    }
    Ok(p)
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
    let root_img = dir.join("root.img");
    image
        .write_ext4(&root_img, 256, "stagehand-root")
        .context("building the root disk")?;

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
    run(
        Command::new("mkfs.vfat")
            .args(["-C", "-n", "ESP"])
            .arg(&esp)
            .arg("65536"),
        "mkfs.vfat",
    )?;
    let mut mcopy = Command::new("mcopy");
    mcopy.arg("-s").arg("-i").arg(&esp);
    for e in fs::read_dir(&boot)? {
        mcopy.arg(e?.path());
    }
    mcopy.arg("::/");
    run(&mut mcopy, "mcopy -s (the ESP tree into esp.img)")?;

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
    let out = run(
        Command::new("mdir")
            .args(["-b", "-i"])
            .arg(esp)
            .arg("::/loader/entries"),
        "mdir -b (the ESP's loader/entries)",
    )?;
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
    run(
        Command::new("mtype")
            .arg("-i")
            .arg(esp)
            .arg(format!("::/{path}")),
        "mtype",
    )
}

fn generation(inputs: &Inputs, number: u32, initrd: &Path, stage2: &Path) -> GenerationSpec {
    let boot = BootFiles {
        // The EFI-stub bzImage: systemd-boot starts it as an EFI program.
        kernel: inputs.kernel.vmlinuz.clone(),
        kernel_version: inputs.kernel.version.clone(),
        initrd: initrd.to_path_buf(),
    };
    GenerationSpec::demo(number, stage2, &inputs.bins.guest_probe, boot)
}

fn scenario_dir(inputs: &Inputs, name: &str) -> Result<PathBuf> {
    let dir = inputs.workspace.artifacts_dir().join(name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn check(out: &mut Outcome, what: &str, ok: bool, detail: impl FnOnce() -> String) {
    if !ok {
        out.failures.push(format!("{what}: {}", detail()));
    }
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
    dir: &Path,
    disks: &UefiDisks,
    name: &str,
    menu: Menu,
    out: &mut Outcome,
) -> Result<Option<Vec<Line>>> {
    let log = dir.join(format!("{name}.console.log"));
    out.log = Some(log.clone());
    let mut vm = UefiVm::start(&qemu_args(&disks.vars, &disks.root, &disks.esp), &log)?;
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
        Ok(s) => check(
            out,
            &format!("{name}: the VM powered off"),
            s.success(),
            || format!("QEMU exited with {s}"),
        ),
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

// ---------------------------------------------------------------------------------------
// The scenarios.

/// Issue 5, VM test 1: the default entry boots the newest generation; choosing the older
/// entry in the menu boots the older generation.
pub fn uefi_menu(inputs: &Inputs) -> Result<Outcome> {
    check_uefi_host()?;
    let dir = scenario_dir(inputs, "uefi-menu")?;
    let initrd = inputs.build_initrd(Compression::Zstd)?;
    let initrd_path = dir.join("initrd.zst");
    fs::write(&initrd_path, &initrd.bytes)?;
    let mut image = SystemImage::new(&inputs.systemd)?;
    let g1 = image.add_generation(&generation(inputs, 1, &initrd_path, &inputs.bins.stage2))?;
    let g2 = image.add_generation(&generation(inputs, 2, &initrd_path, &inputs.bins.stage2))?;
    image.set_current(2)?;
    let disks = make_disks(inputs, &dir, &image, &["--timeout", "3"])?;

    let mut out = Outcome::default();
    let before = esp_entries(&disks.esp)?;
    out.notes
        .push(format!("entries written by install-bootloader: {before:?}"));
    let conf = esp_file(&disks.esp, "loader/loader.conf")?;
    check(
        &mut out,
        "loader.conf",
        conf.contains("timeout 3") && conf.contains("default nixos-generation-*"),
        || format!("expected `timeout 3` and the glob default, got {conf:?}"),
    );
    check(
        &mut out,
        "entries",
        before.len() == 2
            && before[0].starts_with("nixos-generation-1")
            && before[1].starts_with("nixos-generation-2"),
        || format!("expected one entry per generation, got {before:?}"),
    );

    // Boot 1: nobody touches the menu → the newest generation.
    if let Some(lines) = boot_to_probe(&dir, &disks, "boot-default", Menu::Default, &mut out)? {
        check_booted(&mut out, "boot-default", &lines, &g2);
    }
    let after1 = esp_entries(&disks.esp)?;
    out.notes
        .push(format!("entries after the default boot: {after1:?}"));

    // Boot 2: the older entry is second in the menu.
    if let Some(lines) = boot_to_probe(&dir, &disks, "boot-chosen", Menu::Down(1), &mut out)? {
        check_booted(&mut out, "boot-chosen", &lines, &g1);
    }
    let after2 = esp_entries(&disks.esp)?;
    out.notes
        .push(format!("entries after choosing generation 1: {after2:?}"));
    Ok(out)
}

/// A program that exits at once: as generation 2's `init` (stage 2), PID 1 dies after
/// switch_root and the kernel panics (`panic=-1` + `-no-reboot`: QEMU exits).
const FAILING_STAGE2: &str = "/usr/bin/false";

/// Issue 5, VM test 2: generation 2's stage 2 fails. Its entry has one try; the failed boot
/// leaves it `+0-1`, and the next boot lands on generation 1 with no one at the keyboard.
pub fn uefi_fallback(inputs: &Inputs) -> Result<Outcome> {
    check_uefi_host()?;
    let dir = scenario_dir(inputs, "uefi-fallback")?;
    let initrd = inputs.build_initrd(Compression::Zstd)?;
    let initrd_path = dir.join("initrd.zst");
    fs::write(&initrd_path, &initrd.bytes)?;
    let mut image = SystemImage::new(&inputs.systemd)?;
    let g1 = image.add_generation(&generation(inputs, 1, &initrd_path, &inputs.bins.stage2))?;
    let g2 = image.add_generation(&generation(
        inputs,
        2,
        &initrd_path,
        Path::new(FAILING_STAGE2),
    ))?;
    image.set_current(2)?;
    let disks = make_disks(inputs, &dir, &image, &["--timeout", "0", "--tries", "1"])?;

    let mut out = Outcome::default();
    let before = esp_entries(&disks.esp)?;
    out.notes
        .push(format!("entries written by install-bootloader: {before:?}"));
    check(
        &mut out,
        "entries with one try",
        before == ["nixos-generation-1+1.conf", "nixos-generation-2+1.conf"],
        || format!("expected nixos-generation-{{1,2}}+1.conf, got {before:?}"),
    );

    // Boot A: systemd-boot picks generation 2 (the default), counts the try down, and
    // generation 2's stage 2 exits.
    let log = dir.join("boot-bad.console.log");
    out.log = Some(log.clone());
    let mut vm = UefiVm::start(&qemu_args(&disks.vars, &disks.root, &disks.esp), &log)?;
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
            let want = format!("init={}/init", g2.toplevel);
            check(
                &mut out,
                "boot-bad booted generation 2's entry",
                cmdline.contains(&want),
                || format!("expected {want} on the kernel command line, got {cmdline:?}"),
            );
            check(
                &mut out,
                "boot-bad never reached the probe",
                !lines.iter().any(|l| l.text.contains(PROBE_DONE)),
                || "the failing generation ran the probe unit".into(),
            );
            out.notes.push(format!(
                "boot-bad: QEMU start → PID 1 died, VM gone {:.1} s",
                vm.elapsed().as_secs_f64()
            ));
        }
    }
    drop(vm);
    let after_bad = esp_entries(&disks.esp)?;
    out.notes
        .push(format!("entries after the failed boot: {after_bad:?}"));
    check(
        &mut out,
        "systemd-boot counted generation 2's try",
        after_bad == ["nixos-generation-1+1.conf", "nixos-generation-2+0-1.conf"],
        || {
            format!(
                "expected nixos-generation-2+0-1.conf (and generation 1 untouched), got \
                 {after_bad:?}"
            )
        },
    );

    // Boot B: nobody touches anything; the bad entry sorts last, generation 1 boots.
    if let Some(lines) = boot_to_probe(&dir, &disks, "boot-fallback", Menu::Default, &mut out)? {
        check_booted(&mut out, "boot-fallback", &lines, &g1);
    }
    let after = esp_entries(&disks.esp)?;
    out.notes
        .push(format!("entries after the fallback boot: {after:?}"));
    check(
        &mut out,
        "generation 2 stays bad",
        after.iter().any(|e| e == "nixos-generation-2+0-1.conf"),
        || format!("expected nixos-generation-2+0-1.conf, got {after:?}"),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_from_the_raw_stream_keep_arrival_times() {
        let ms = Duration::from_millis;
        let bytes = b"\x1b[2J\x1b[1;1HNixOS (Generation 2)\x1b[2;1HNixOS (Generation 1)\r\n[    0.1] Linux\nhalf";
        let chunks = [(20, ms(5)), (60, ms(9)), (bytes.len(), ms(12))];
        let lines = split_lines(bytes, &chunks);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "NixOS (Generation 2)NixOS (Generation 1)",
                "[    0.1] Linux",
                "half"
            ]
        );
        assert_eq!(lines[0].host, ms(9));
        assert_eq!(lines[2].host, ms(12));
        assert_eq!(find(bytes, b"Generation 1"), Some(43));
        assert_eq!(find(bytes, b"Generation 3"), None);
    }

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
    }
}
