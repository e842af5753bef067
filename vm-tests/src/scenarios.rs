//! The boot scenarios: each builds what it boots (initrd, disk image), runs the VM and
//! asserts on what the guest console shows.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use stagehand_common::envelope::HEADER_LEN;
use stagehand_common::stage1_config::{FileSystem, Stage1Config, STAGE1_CONFIG_PATH};
use stagehand_initrd::{Compression, Initrd, InitrdSpec};

use crate::console::{probe_facts, shows, suspicious_lines, Phases, PROBE_DONE};
use crate::generation::{BootFiles, BuiltGeneration, GenerationSpec, HostSystemd, SystemImage};
use crate::host::on_path;
use crate::kernel::{self, Kernel};
use crate::qemu::{Line, Vm, VmConfig};
use crate::timeline::{Part, Timeline};
use crate::workspace::{BootBinaries, Workspace};

/// Hard limit for one VM run. A direct boot takes ~3-5 s under TCG, a UEFI one ~7 s more
/// (OVMF ≈ 4 s, EFI-stub decompression ≈ 2.5 s); the machine is shared.
pub const VM_LIMIT: Duration = Duration::from_secs(300);
/// From QEMU start to the first stage-1 line (firmware, kernel start, initrd unpack).
pub const FIRST_LINE: Duration = Duration::from_secs(120);
/// Between two milestones of a boot.
pub const STEP: Duration = Duration::from_secs(90);

/// The label of the demo system's root filesystem.
pub const ROOT_LABEL: &str = "stagehand-root";

/// Everything the scenarios share, prepared once.
pub struct Inputs {
    pub workspace: Workspace,
    pub bins: BootBinaries,
    pub kernel: Kernel,
    pub systemd: HostSystemd,
}

impl Inputs {
    pub fn prepare() -> Result<Self> {
        check_host_tools()?;
        let workspace = Workspace::locate()?;
        eprintln!("vm-tests: building the boot binaries (cargo build --release)");
        let bins = workspace.build_boot_binaries()?;
        let kernel = kernel::fetch(&workspace.cache_dir()).context("preparing the guest kernel")?;
        eprintln!(
            "vm-tests: kernel {} ({})",
            kernel.package,
            kernel.vmlinux.display()
        );
        let systemd = HostSystemd::discover()?;
        Ok(Self {
            workspace,
            bins,
            kernel,
            systemd,
        })
    }

    /// `<target>/vm-tests/<name>/`, where a scenario keeps its images and logs.
    pub fn scenario_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.workspace.artifacts_dir().join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// The initrd for a virtio-pci ext4 root on /dev/vda.
    pub fn initrd_spec(&self, compression: Compression) -> Result<InitrdSpec> {
        initrd_spec(&self.bins.stage1, &self.kernel.modules_dir, compression)
    }

    /// With the ext4 checker (`/bin/fsck.ext4`), so stage 1 checks the root first.
    pub fn build_initrd(&self, compression: Compression) -> Result<Initrd> {
        self.build_initrd_with(compression, |_| {})
    }

    /// Like [`Self::build_initrd`], from the harness's spec changed by `edit`.
    pub fn build_initrd_with(
        &self,
        compression: Compression,
        edit: impl FnOnce(&mut InitrdSpec),
    ) -> Result<Initrd> {
        let mut spec = self.initrd_spec(compression)?;
        edit(&mut spec);
        let extras = crate::stage1_scenarios::initrd_extras();
        stagehand_initrd::build_with(&spec, &extras)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("building the initrd")
    }

    /// The zstd initrd (the harness's spec changed by `edit`) written as `dir/initrd.zst`;
    /// the initrd and that path.
    pub fn initrd_in(
        &self,
        dir: &Path,
        edit: impl FnOnce(&mut InitrdSpec),
    ) -> Result<(Initrd, PathBuf)> {
        let initrd = self.build_initrd_with(Compression::Zstd, edit)?;
        let path = dir.join("initrd.zst");
        fs::write(&path, &initrd.bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok((initrd, path))
    }

    /// What a generation's bootspec names: our kernel and `initrd`.
    pub fn boot_files(&self, initrd: &Path) -> BootFiles {
        BootFiles {
            // The EFI-stub bzImage: systemd-boot starts it as an EFI program (the direct
            // boots take the ELF `vmlinux` from `vm_config` instead).
            kernel: self.kernel.vmlinuz.clone(),
            kernel_version: self.kernel.version.clone(),
            initrd: initrd.to_path_buf(),
        }
    }

    /// Demo generation `number`, booting our kernel with `initrd` and running `stage2`.
    pub fn generation(&self, number: u32, initrd: &Path, stage2: &Path) -> GenerationSpec {
        GenerationSpec::demo(
            number,
            stage2,
            &self.bins.guest_probe,
            self.boot_files(initrd),
        )
    }

    /// A system with the demo generation (our stage 2) as generation 1 and current.
    pub fn demo_system(&self, initrd: &Path) -> Result<(SystemImage, BuiltGeneration)> {
        let mut image = SystemImage::new(&self.systemd)?;
        let generation = image.add_generation(&self.generation(1, initrd, &self.bins.stage2))?;
        Ok((image, generation))
    }

    /// A disk image with the demo generation as `system-1-link` and `system`.
    pub fn demo_image(&self, dir: &Path, initrd: &Path) -> Result<(PathBuf, BuiltGeneration)> {
        let (image, generation) = self.demo_system(initrd)?;
        Ok((root_disk(&image, dir)?, generation))
    }

    /// A direct kernel boot of `initrd` with `drives`, the console logged to `log`.
    pub fn vm_config(
        &self,
        initrd: &Path,
        drives: Vec<PathBuf>,
        append: String,
        log: PathBuf,
    ) -> VmConfig {
        VmConfig {
            kernel: self.kernel.vmlinux.clone(),
            initrd: initrd.to_path_buf(),
            drives,
            append,
            memory_mb: 512,
            timeout: VM_LIMIT,
            log,
            echo: false,
        }
    }
}

/// The whole of `image` as `dir/root.img`: one ext4 filesystem labelled [`ROOT_LABEL`].
pub fn root_disk(image: &SystemImage, dir: &Path) -> Result<PathBuf> {
    let img = dir.join("root.img");
    image
        .write_ext4(&img, 256, ROOT_LABEL)
        .context("building the disk image")?;
    Ok(img)
}

/// The initrd spec for a virtio-pci ext4 root on /dev/vda, written as the JSON the
/// initrd CLI takes (`stagehand-initrd build --spec`), so fields the builder adds later
/// keep their defaults.
pub fn initrd_spec(
    stage1: &Path,
    modules_dir: &Path,
    compression: Compression,
) -> Result<InitrdSpec> {
    let root = FileSystem {
        mount_point: "/".into(),
        device: "/dev/vda".into(),
        fs_type: "ext4".into(),
        options: vec![],
    };
    let value = serde_json::json!({
        "stage1": stage1,
        "modules_dir": modules_dir,
        "modules": ["virtio_pci", "virtio_blk", "ext4"],
        // ext4 needs crc32c for metadata_csum, but it is only a softdep of ext4.
        "optional_modules": ["crc32c_generic"],
        "filesystems": [{
            "mount_point": root.mount_point,
            "device": root.device,
            "fs_type": root.fs_type,
            "options": root.options,
        }],
        "device_timeout_ms": 10_000,
        // The command line decides (`boot.panic_on_fail` in the generation's params).
        "panic_on_fail": false,
        "compression": compression,
    });
    let spec: InitrdSpec = serde_json::from_value(value).context("making the initrd spec")?;
    // Unknown keys are ignored by serde: make sure ours all landed.
    if spec.filesystems != [root] || spec.modules.len() != 3 || spec.compression != compression {
        bail!("the initrd spec did not take the harness's settings: {spec:?}");
    }
    Ok(spec)
}

fn check_host_tools() -> Result<()> {
    let missing: Vec<&str> = [
        "qemu-system-x86_64",
        "mkfs.ext4",
        "timeout",
        "xz",
        "ldd",
        "apt-get",
        "apt-cache",
        "dpkg",
    ]
    .into_iter()
    .filter(|tool| !on_path(tool))
    .collect();
    if !missing.is_empty() {
        bail!(
            "missing host tools: {}; run vm-tests/setup-host (as root) first",
            missing.join(", ")
        );
    }
    Ok(())
}

/// What a scenario found: the checks that failed (empty = pass) and what to print.
#[derive(Debug, Default)]
pub struct Outcome {
    pub failures: Vec<String>,
    pub notes: Vec<String>,
    pub log: Option<PathBuf>,
}

impl Outcome {
    /// The outcome of one VM run of `cfg`: its console log, and the kernel command line
    /// noted.
    pub fn for_run(cfg: &VmConfig) -> Outcome {
        let mut out = Outcome::default();
        out.start_run(cfg);
        out
    }

    /// A VM run of `cfg` starts: its console log is the one to show, its kernel command
    /// line is noted.
    pub fn start_run(&mut self, cfg: &VmConfig) {
        self.log = Some(cfg.log.clone());
        self.notes
            .push(format!("kernel command line: {}", cfg.append));
    }

    /// Record a wait for the console that failed, with the last `context` console lines.
    pub fn wait_failed(&mut self, vm: &Vm, e: &anyhow::Error, context: usize) {
        self.failures.push(format!("{e:#}"));
        self.notes.push(vm.failure_context(context));
    }

    /// The probe unit powers the VM off when it is done (SuccessAction=poweroff-force):
    /// QEMU must exit, and cleanly.
    pub fn check_powered_off(&mut self, vm: &mut Vm) {
        match vm.wait_exit(STEP) {
            Ok(status) => self.check("the VM powered off cleanly", status.success(), || {
                format!("QEMU exited with {status}")
            }),
            Err(e) => self.failures.push(format!("power off: {e:#}")),
        }
    }

    pub fn check_no_panic(&mut self, lines: &[Line]) {
        self.check("no kernel panic", !shows(lines, "Kernel panic"), || {
            "the console shows a kernel panic".into()
        });
    }

    /// Record a failed check: `what` was expected, `detail` says what was seen instead.
    pub fn check(&mut self, what: &str, ok: bool, detail: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(format!("{what}: {}", detail()));
        }
    }

    /// A boot of a generation whose stage 2 fails: it must not have reached the probe
    /// unit; how long it took until PID 1 died is noted.
    pub fn check_bad_boot(&mut self, lines: &[Line], vm: &Vm) {
        self.check(
            "boot-bad never reached the probe",
            !shows(lines, PROBE_DONE),
            || "the failing generation ran the probe unit".into(),
        );
        self.notes.push(format!(
            "boot-bad: QEMU start → PID 1 died, VM gone {:.1} s",
            vm.elapsed().as_secs_f64()
        ));
    }
}

fn sizes_note(inputs: &Inputs, initrd: &Initrd) -> String {
    let kib = |p: &Path| fs::metadata(p).map_or(0, |m| m.len()).div_ceil(1024);
    format!(
        "sizes: stage1 {} KiB, stage2 {} KiB, guest-probe {} KiB; initrd {} KiB ({}, cpio {} KiB)",
        kib(&inputs.bins.stage1),
        kib(&inputs.bins.stage2),
        kib(&inputs.bins.guest_probe),
        initrd.report.compressed.div_ceil(1024),
        initrd.report.compression.name(),
        initrd.report.uncompressed.div_ceil(1024),
    )
}

/// Boot the demo generation from our initrd to systemd and check, from the guest's own
/// console, every step a user would see. `echo` streams the console (the demo).
pub fn boot_spine(inputs: &Inputs, echo: bool) -> Result<Outcome> {
    let dir = inputs.scenario_dir("boot-spine")?;
    let (initrd, initrd_path) = inputs.initrd_in(&dir, |_| {})?;
    let (img, generation) = inputs.demo_image(&dir, &initrd_path)?;
    let log = dir.join("console.log");
    let mut cfg = inputs.vm_config(&initrd_path, vec![img], generation.cmdline(), log);
    cfg.echo = echo;

    let mut out = Outcome::for_run(&cfg);
    out.notes.insert(0, sizes_note(inputs, &initrd));

    let mut vm = Vm::start(&cfg)?;
    let steps: Vec<(&str, Duration)> = vec![
        ("stage1: started", FIRST_LINE),
        ("stage1: loading module", STEP),
        ("stage1: mounted /", STEP),
        ("stage1: switching root", STEP),
        ("stage2: ", STEP),
    ];
    let result = (|| -> Result<()> {
        for (needle, within) in steps {
            vm.wait_for(needle, within)?;
        }
        vm.wait_for_line("a stage-2 line about activation", STEP, |l| {
            l.contains("stage2: ") && l.contains("activation")
        })?;
        vm.wait_for("systemd[1]: ", STEP)?;
        vm.wait_for(PROBE_DONE, STEP)?;
        Ok(())
    })();
    let mut phases = Phases::from_lines(&vm.lines());
    if let Err(e) = result {
        out.wait_failed(&vm, &e, 40);
        out.notes.push(phases.to_string());
        return Ok(out);
    }
    out.check_powered_off(&mut vm);
    phases.host_exit = Some(vm.elapsed().as_secs_f64());
    let lines = vm.lines();
    out.check_no_panic(&lines);
    // QEMU's default CPU (qemu64) has no SSE4.2: the ext4 softdep's crc32c_intel cannot
    // load, and stage 1 sees that from its CPU alias instead of trying.
    out.check(
        "crc32c_intel (SSE4.2) is not tried on qemu64",
        shows(
            &lines,
            "stage1: module crc32c_intel not loaded: this CPU lacks",
        ) && !shows(&lines, "cannot load module crc32c_intel"),
        || "stage 1 did not skip crc32c_intel by its CPU alias".into(),
    );

    let facts = probe_facts(&lines);
    let fact = |k: &str| facts.get(k).map(String::as_str).unwrap_or("<missing>");
    out.failures
        .extend(check_probe(&facts, &Expected::of(&generation)));
    let (shadow, store) = (fact("etc.shadow"), fact("nix-store.mount"));
    let mb_uid = fact("passwd.messagebus").split(':').nth(2).unwrap_or("?");
    out.notes.push(format!(
        "guest: pid 1 = {} ({}), /etc/shadow {}, messagebus uid {}, /nix/store {}",
        fact("pid1.comm"),
        fact("pid1.exe"),
        shadow,
        mb_uid,
        store
    ));
    match boot_timeline(&facts, &phases, &dir) {
        Ok((path, timeline)) => {
            out.notes.push(format!("boot timeline: {}", path.display()));
            // Stage 2 up to the exec of systemd, step by step, as issue #18 asks of it.
            for part in [Part::Stage1, Part::Stage2, Part::Activation] {
                out.notes.push(timeline.breakdown(part));
            }
            if let Some(receipt) = facts.get("boot-receipt") {
                out.notes.push(stage1_own_note(receipt));
            }
        }
        Err(e) => out.failures.push(format!("boot timeline: {e}")),
    }
    let odd = suspicious_lines(&lines);
    if !odd.is_empty() {
        let mut note = String::from("worth a look (not failures):");
        for l in odd {
            note.push_str(&format!("\n  {}", l.text.trim()));
        }
        out.notes.push(note);
    }
    out.notes.push(phases.to_string());
    out.notes
        .push(format!("console log: {}", cfg.log.display()));
    Ok(out)
}

/// Stage 1's own work as its receipt splits it (issue #18): wall time less `finit_module`,
/// fsck and the wait for the disk, and of its CPU time the part in user space.
fn stage1_own_note(receipt: &str) -> String {
    let parsed: Result<stagehand_boot::receipt::BootReceipt, _> = serde_json::from_str(receipt);
    let s1 = match parsed {
        Ok(r) => match r.times_us.stage1 {
            Some(s1) => s1,
            None => return "stage 1 receipt: none (the boot receipt has no stage 1 part)".into(),
        },
        Err(e) => return format!("stage 1 receipt: the boot receipt does not read as one: {e}"),
    };
    let ms = |us: Option<u64>| {
        us.map_or_else(
            || "?".to_owned(),
            |us| format!("{:.1} ms", us as f64 / 1000.0),
        )
    };
    format!(
        "stage 1 receipt: total {}, finit_module {}, fsck {}, device wait {}, own work {}; \
         CPU {} of which user space {}",
        ms(Some(s1.total_us)),
        ms(s1.finit_module_us),
        ms(s1.fsck_us),
        ms(s1.device_wait_us),
        ms(s1.own_us),
        ms(s1.cpu_us),
        ms(s1.user_cpu_us)
    )
}

/// Draw the boot's timeline from the receipt the probe printed as `dir/timeline.svg`, and
/// check that it shows every phase of the boot with its duration.
fn boot_timeline(
    facts: &BTreeMap<String, String>,
    phases: &Phases,
    dir: &Path,
) -> Result<(PathBuf, Timeline), String> {
    let receipt = facts
        .get("boot-receipt")
        .ok_or("the probe printed no boot-receipt")?;
    let probe_clock = facts
        .get("started.monotonic-us")
        .and_then(|v| v.parse().ok());
    let t = crate::timeline::from_boot(receipt, phases, probe_clock)?;
    let svg = t.to_svg();
    let path = dir.join("timeline.svg");
    fs::write(&path, &svg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let missing = crate::timeline::missing_demo_phases(&t, &svg);
    if !missing.is_empty() {
        return Err(format!(
            "{} does not show: {}",
            path.display(),
            missing.join("; ")
        ));
    }
    Ok((path, t))
}

/// What the guest should report for a generation.
#[derive(Debug, Clone)]
pub struct Expected {
    pub toplevel: String,
    pub systemd: String,
    pub etc: String,
    pub hostname: String,
}

impl Expected {
    pub fn of(g: &BuiltGeneration) -> Self {
        Self {
            toplevel: g.toplevel.to_string(),
            systemd: g.systemd_binary(),
            etc: g.etc.join("etc"),
            hostname: g.hostname.clone(),
        }
    }
}

/// Check the guest probe's facts against what the demo generation declares; one message
/// per fact that is wrong or missing.
pub fn check_probe(facts: &BTreeMap<String, String>, want: &Expected) -> Vec<String> {
    let mut bad = Vec::new();
    let fact = |k: &str| facts.get(k).map(String::as_str).unwrap_or("<missing>");
    let mut check = |key: &str, ok: bool, expected: &str| {
        if !ok {
            bad.push(format!(
                "{key}: expected {expected}, the guest says {:?}",
                fact(key)
            ));
        }
    };
    for (key, value) in [
        // systemd from the generation is PID 1 and started the probe unit itself.
        ("pid1.comm", "systemd"),
        ("pid1.exe", want.systemd.as_str()),
        ("ppid", "1"),
        ("booted-system", want.toplevel.as_str()),
        ("current-system", want.toplevel.as_str()),
        // /etc is NixOS's: links through /etc/static into the generation's etc tree.
        ("etc.hostname.link", "/etc/static/hostname"),
        ("etc.hostname", want.hostname.as_str()),
        ("hostname", want.hostname.as_str()),
        ("etc.static.link", want.etc.as_str()),
        // The copied entry got its sidecars' mode and owner (alice = 1000, +0 = root).
        ("etc.secret", "file mode=0400 uid=1000 gid=0"),
    ] {
        check(key, fact(key) == value, &format!("{value:?}"));
    }
    check(
        "passwd.alice",
        fact("passwd.alice").starts_with("alice:x:1000:100:"),
        "alice:x:1000:100:...",
    );
    let mb = fact("passwd.messagebus");
    let mb_uid = mb.split(':').nth(2).and_then(|u| u.parse::<u32>().ok());
    check(
        "passwd.messagebus",
        mb.starts_with("messagebus:x:") && mb_uid.is_some_and(|u| (400..=999).contains(&u)),
        "an allocated system uid in 400..=999",
    );
    let wheel = fact("group.wheel");
    check(
        "group.wheel",
        wheel.starts_with("wheel:x:1:") && wheel.ends_with(":alice"),
        "wheel:x:1:alice",
    );
    let shadow = fact("etc.shadow");
    let shadow_mode = shadow
        .split(' ')
        .find_map(|w| w.strip_prefix("mode="))
        .and_then(|m| u32::from_str_radix(m, 8).ok());
    check(
        "etc.shadow",
        shadow.starts_with("file ") && shadow_mode.is_some_and(|m| m & 0o007 == 0),
        "a file that is not world-readable",
    );
    check(
        "nix-store.mount",
        fact("nix-store.mount").starts_with("ro "),
        "/nix/store mounted read-only",
    );
    bad
}

/// Flip one byte of the stage-1 config's payload inside an uncompressed initrd.
pub fn corrupt_config(initrd: &Initrd) -> Result<Vec<u8>> {
    let config = initrd
        .config
        .encode()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("encoding the stage-1 config")?;
    let mut bytes = initrd.bytes.clone();
    let at = bytes
        .windows(config.len())
        .position(|w| w == config.as_slice())
        .context("the stage-1 config is not stored verbatim in the initrd (compressed?)")?;
    let target = at + HEADER_LEN;
    bytes[target] ^= 0x01;
    Ok(bytes)
}

/// A stage-1 config with one flipped byte must be refused with a message naming the file
/// and the checksum, and with `boot.panic_on_fail` the boot must stop (kernel panic, VM
/// exits) instead of going on.
pub fn corrupt_config_scenario(inputs: &Inputs) -> Result<Outcome> {
    let dir = inputs.scenario_dir("corrupt-config")?;
    let initrd = inputs.build_initrd(Compression::None)?;
    let bad = corrupt_config(&initrd)?;
    // The corruption is what we think it is: the archive holds a config that fails its
    // checksum, and nothing else changed.
    let entries = stagehand_initrd::list(&bad).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg_name = STAGE1_CONFIG_PATH.trim_start_matches('/');
    let entry = entries
        .iter()
        .find(|e| e.name.trim_start_matches("./").trim_start_matches('/') == cfg_name)
        .with_context(|| format!("{STAGE1_CONFIG_PATH} is not in the initrd"))?;
    match Stage1Config::decode(&entry.data) {
        Err(stagehand_common::envelope::EnvelopeError::ChecksumMismatch { .. }) => {}
        other => bail!("the flipped config should fail its checksum, got {other:?}"),
    }
    let initrd_path = dir.join("initrd.cpio");
    fs::write(&initrd_path, &bad).with_context(|| format!("writing {}", initrd_path.display()))?;
    let (img, generation) = inputs.demo_image(&dir, &initrd_path)?;
    let log = dir.join("console.log");
    let cfg = inputs.vm_config(&initrd_path, vec![img], generation.cmdline(), log);
    let mut out = Outcome::for_run(&cfg);

    let mut vm = Vm::start(&cfg)?;
    let result = (|| -> Result<(Line, Line)> {
        let refused = vm.wait_for_line(
            "a stage-1 error naming /etc/stagehand/stage1.cfg and the checksum",
            FIRST_LINE,
            |l| l.contains("stage1: ") && l.contains(STAGE1_CONFIG_PATH) && l.contains("checksum"),
        )?;
        let panic = vm.wait_for("Kernel panic", STEP)?;
        vm.wait_exit(STEP)?;
        Ok((refused, panic))
    })();
    let lines = vm.lines();
    match result {
        Ok((refused, panic)) => {
            out.notes
                .push(format!("stage 1 said: {}", refused.text.trim()));
            out.notes.push(format!("then: {}", panic.text.trim()));
            out.notes.push(format!(
                "kernel start → config refused {}; kernel panic at {}; VM gone {:.2} s after QEMU start (host)",
                refused.kernel_stamp(),
                panic.kernel_stamp(),
                vm.elapsed().as_secs_f64()
            ));
        }
        Err(e) => out.wait_failed(&vm, &e, 30),
    }
    for never in [
        "stage1: loading module",
        "stage1: switching root",
        "stage2: ",
    ] {
        out.check(
            &format!("nothing after the bad config ({never:?})"),
            !shows(&lines, never),
            || "stage 1 went on despite the corrupt config".into(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagehand_initrd::SizeReport;

    fn good_facts() -> (BTreeMap<String, String>, Expected) {
        let want = Expected {
            toplevel: "/nix/store/aaa-nixos-system-stagehand-demo-1".into(),
            systemd: "/nix/store/bbb-systemd-252/lib/systemd/systemd".into(),
            etc: "/nix/store/ccc-etc/etc".into(),
            hostname: "stagehand-demo".into(),
        };
        let facts = [
            ("pid1.comm", "systemd"),
            ("pid1.exe", want.systemd.as_str()),
            ("ppid", "1"),
            ("booted-system", want.toplevel.as_str()),
            ("current-system", want.toplevel.as_str()),
            ("passwd.alice", "alice:x:1000:100:Alice:/home/alice:/bin/sh"),
            (
                "passwd.messagebus",
                "messagebus:x:999:999::/run/dbus:/sbin/nologin",
            ),
            ("group.wheel", "wheel:x:1:alice"),
            ("etc.hostname.link", "/etc/static/hostname"),
            ("etc.hostname", "stagehand-demo"),
            ("hostname", "stagehand-demo"),
            ("etc.static.link", want.etc.as_str()),
            ("etc.secret", "file mode=0400 uid=1000 gid=0"),
            ("etc.shadow", "file mode=0640 uid=0 gid=318"),
            ("nix-store.mount", "ro ext4"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        (facts, want)
    }

    #[test]
    fn probe_check_passes_a_good_boot() {
        let (facts, want) = good_facts();
        assert_eq!(check_probe(&facts, &want), Vec::<String>::new());
    }

    #[test]
    fn probe_check_catches_each_wrong_fact() {
        let cases = [
            ("pid1.comm", "stage2"),
            ("pid1.exe", "/usr/lib/systemd/systemd"),
            ("ppid", "0"),
            ("booted-system", "/nix/store/zzz-nixos-system-other-2"),
            ("passwd.alice", "error: no alice in /etc/passwd"),
            ("passwd.messagebus", "messagebus:x:1001:999::/:/bin/sh"),
            ("group.wheel", "wheel:x:1:"),
            ("etc.hostname.link", "/nix/store/ccc-hostname"),
            ("etc.secret", "file mode=0444 uid=0 gid=0"),
            ("etc.shadow", "file mode=0644 uid=0 gid=0"),
            ("nix-store.mount", "rw ext4"),
        ];
        for (key, value) in cases {
            let (mut facts, want) = good_facts();
            facts.insert(key.into(), value.into());
            let bad = check_probe(&facts, &want);
            assert_eq!(bad.len(), 1, "{key}={value}: {bad:?}");
            assert!(bad[0].starts_with(key), "{bad:?}");
        }
        let (mut facts, want) = good_facts();
        facts.remove("nix-store.mount");
        assert!(check_probe(&facts, &want)[0].contains("<missing>"));
    }

    #[test]
    fn initrd_spec_carries_the_root_and_modules() {
        let spec = initrd_spec(Path::new("/s1"), Path::new("/m"), Compression::None).expect("spec");
        assert_eq!(spec.stage1, PathBuf::from("/s1"));
        assert_eq!(spec.modules_dir, Some(PathBuf::from("/m")));
        assert_eq!(spec.modules, ["virtio_pci", "virtio_blk", "ext4"]);
        assert_eq!(spec.optional_modules, ["crc32c_generic"]);
        assert_eq!(spec.filesystems[0].device, "/dev/vda");
        assert_eq!(spec.device_timeout_ms, 10_000);
        assert!(!spec.panic_on_fail);
        assert!(spec.extra_files.is_empty());
    }

    #[test]
    fn corrupting_flips_exactly_one_payload_byte() {
        let config = Stage1Config::default();
        let enc = config.encode().expect("encode");
        let mut archive = b"070701 header stuff etc/stagehand/stage1.cfg\0".to_vec();
        let at = archive.len();
        archive.extend_from_slice(&enc);
        archive.extend_from_slice(b"TRAILER!!!");
        let initrd = Initrd {
            bytes: archive.clone(),
            report: SizeReport {
                files: vec![],
                uncompressed: 0,
                compressed: 0,
                compression: Compression::None,
                builtin_modules: vec![],
                warnings: vec![],
                stripped: vec![],
            },
            config,
        };
        let bad = corrupt_config(&initrd).expect("corrupt");
        let diff: Vec<usize> = (0..bad.len()).filter(|&i| bad[i] != archive[i]).collect();
        assert_eq!(diff, vec![at + HEADER_LEN]);
        let e = Stage1Config::decode(&bad[at..at + enc.len()]).expect_err("must fail");
        assert!(e.to_string().contains("checksum"), "{e}");

        let compressed = Initrd {
            bytes: b"not the config".to_vec(),
            ..initrd
        };
        assert!(corrupt_config(&compressed).is_err());
    }
}
