//! LUKS and LVM roots (issue #16): disks encrypted and partitioned by the real
//! `cryptsetup` and lvm2 on the host, unlocked and activated by stage 1 natively.
//!
//! How the images are made on a host without device-mapper (this one has none, so
//! `cryptsetup open` cannot be used to fill a volume): the root filesystem is written with
//! `mkfs.ext4 -d` as in every scenario, then encrypted in place by
//! `cryptsetup reencrypt --encrypt --reduce-device-size 32M` (offline, on the file; the
//! header takes the first 16 MiB). A LUKS1 volume is made the same way as LUKS2 with a
//! PBKDF2 keyslot and converted with `cryptsetup convert --type luks1` (cryptsetup's LUKS1
//! encryption path needs device-mapper). The LVM volume group is made by `pvcreate`,
//! `vgcreate` and `lvcreate` on a loop device with lvm2's `activation = 0` (no
//! device-mapper: metadata only), and the root filesystem is copied into the LV at the
//! offset `pvs`/`lvs` report. KDF parameters are cheap on purpose
//! (`--pbkdf-memory 32768 --iter-time 100`): under TCG each try of a passphrase derives
//! the key once per keyslot.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use stagehand_common::stage1_config::{LuksDevice, Stage1Options};
use stagehand_initrd::Compression;

use crate::console::{probe_facts, shows, Phases, PROBE_DONE};
use crate::generation::BuiltGeneration;
use crate::host::run;
use crate::qemu::Vm;
use crate::scenarios::{root_disk, Inputs, Outcome, FIRST_LINE, ROOT_LABEL, STEP};

/// The LUKS UUID the scenarios give their volumes, so the initrd can name
/// `/dev/disk/by-uuid/…` before the image exists (the image holds the initrd).
const LUKS_UUID: &str = "5ca1ab1e-0b5e-4d1e-9a7a-c0ffee000016";
const PASSPHRASE: &str = "stagehand luks";
/// The LVM names of the lvm-on-luks scenario.
const VG: &str = "stagehand";
const LV: &str = "root";
/// Header room given to `reencrypt --reduce-device-size` (half of it is the header).
const HEADER_ROOM: &str = "32M";
const CHEAP_KDF: &[&str] = &["--pbkdf-memory", "32768", "--iter-time", "100"];

/// One scenario's initrd (with `options`, the root on `root_device`) and demo system.
struct Layered {
    dir: PathBuf,
    initrd: PathBuf,
    generation: BuiltGeneration,
    root_img: PathBuf,
}

impl Layered {
    fn new(inputs: &Inputs, name: &str, root_device: &str, options: Stage1Options) -> Result<Self> {
        let dir = inputs.scenario_dir(name)?;
        let mut spec = inputs.initrd_spec(Compression::Zstd)?;
        if let Some(root) = spec.filesystems.first_mut() {
            root.device = root_device.into();
        }
        let mut extras = crate::stage1_scenarios::initrd_extras();
        extras.stage1_options = options;
        let initrd = stagehand_initrd::build_with(&spec, &extras)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("building the initrd")?;
        let path = dir.join("initrd.zst");
        fs::write(&path, &initrd.bytes)?;
        let (image, generation) = inputs.demo_system(&path)?;
        let root_img = root_disk(&image, &dir)?;
        Ok(Self {
            dir,
            initrd: path,
            generation,
            root_img,
        })
    }

    fn start(
        &self,
        inputs: &Inputs,
        disks: Vec<PathBuf>,
        drop: &[&str],
        out: &mut Outcome,
    ) -> Result<Vm> {
        let append: String = self
            .generation
            .cmdline()
            .split_whitespace()
            .filter(|w| !drop.contains(w))
            .collect::<Vec<_>>()
            .join(" ");
        let cfg = inputs.vm_config(&self.initrd, disks, append, self.dir.join("console.log"));
        out.start_run(&cfg);
        Vm::start(&cfg)
    }

    /// Boot `disks`, type [`PASSPHRASE`] when asked (after `wrong` wrong ones) and boot on
    /// through `expect` to the probe ([`finish_boot`]). The VM, for more checks of its
    /// console; `None` when the prompts did not go as expected (reported in `out`).
    fn boot_with_passphrase(
        &self,
        inputs: &Inputs,
        disks: Vec<PathBuf>,
        wrong: usize,
        expect: &[&str],
        out: &mut Outcome,
    ) -> Result<Option<Vm>> {
        let mut vm = self.start(inputs, disks, &[], out)?;
        if let Err(e) = answer_prompts(&mut vm, wrong, Some(PASSPHRASE)) {
            out.wait_failed(&vm, &e, 40);
            return Ok(None);
        }
        finish_boot(&mut vm, expect, out);
        Ok(Some(vm))
    }

    /// Append an initrd secret (as NixOS's append-initrd-secrets does).
    fn append_secret(&self, dest: &str, source: PathBuf) -> Result<()> {
        let archive = stagehand_initrd::secrets_archive(&[stagehand_initrd::Secret {
            dest: dest.into(),
            source,
        }])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut f = fs::OpenOptions::new().append(true).open(&self.initrd)?;
        f.write_all(&archive)?;
        Ok(())
    }
}

fn cryptsetup(args: &[&str], key: &[u8]) -> Result<()> {
    let mut child = Command::new("cryptsetup")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running cryptsetup (vm-tests/setup-host installs cryptsetup-bin)")?;
    child
        .stdin
        .take()
        .context("cryptsetup stdin")?
        .write_all(key)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "cryptsetup {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Encrypt `img` in place as LUKS2 (`extra` options), the key on stdin; then give it
/// [`LUKS_UUID`]. The header goes in front of the data (`--reduce-device-size`, the image
/// grown by that much first) or, with `header`, into that file: the image is then all
/// ciphertext and only the header carries the UUID.
fn encrypt(img: &Path, header: Option<&Path>, extra: &[&str], key: &[u8]) -> Result<()> {
    let path = img.to_str().context("image path")?;
    let mut args = vec![
        "reencrypt",
        "--encrypt",
        "--batch-mode",
        "--type",
        "luks2",
        "--key-file",
        "-",
    ];
    let uuid_on = match header {
        Some(h) => {
            let _ = fs::remove_file(h);
            let h = h.to_str().context("header path")?;
            args.extend(["--header", h]);
            h
        }
        None => {
            let room: u64 = 32 << 20;
            let f = fs::OpenOptions::new().write(true).open(img)?;
            f.set_len(f.metadata()?.len() + room)?;
            args.extend(["--reduce-device-size", HEADER_ROOM]);
            path
        }
    };
    args.extend_from_slice(extra);
    args.push(path);
    cryptsetup(&args, key)?;
    run(Command::new("cryptsetup").args([
        "luksUUID",
        "--batch-mode",
        "--uuid",
        LUKS_UUID,
        uuid_on,
    ]))?;
    Ok(())
}

fn luks_device(name: &str) -> LuksDevice {
    LuksDevice::new(name, format!("/dev/disk/by-uuid/{LUKS_UUID}"))
}

/// Type the passphrase when asked, after `wrong` wrong ones; each wrong one must be
/// answered with the "wrong passphrase" line.
fn answer_prompts(vm: &mut Vm, wrong: usize, right: Option<&str>) -> Result<()> {
    for n in 0..wrong {
        vm.wait_for(
            "stage1: asking for the passphrase of",
            if n == 0 { FIRST_LINE } else { STEP },
        )?;
        vm.wait_raw("Passphrase for /dev/", STEP)?;
        vm.send(format!("not the passphrase {n}\n").as_bytes())?;
        vm.wait_for("stage1: wrong passphrase for /dev/", STEP)?;
    }
    if let Some(p) = right {
        vm.wait_for(
            "stage1: asking for the passphrase of",
            if wrong == 0 { FIRST_LINE } else { STEP },
        )?;
        vm.wait_raw("Passphrase for /dev/", STEP)?;
        vm.send(format!("{p}\n").as_bytes())?;
    }
    Ok(())
}

/// Boot on to the probe after the layers: `expect` in order, then the probe's end and the
/// power-off; notes stage 1's time and checks the root is the unlocked device.
fn finish_boot(vm: &mut Vm, expect: &[&str], out: &mut Outcome) {
    let result = (|| -> Result<()> {
        for needle in expect {
            vm.wait_for(needle, STEP)?;
        }
        vm.wait_for("stage1: mounted /", STEP)?;
        vm.wait_for("stage1: switching root", STEP)?;
        vm.wait_for(PROBE_DONE, STEP)?;
        let status = vm.wait_exit(STEP)?;
        if !status.success() {
            bail!("QEMU exited with {status} after the probe");
        }
        Ok(())
    })();
    if let Err(e) = result {
        out.wait_failed(vm, &e, 40);
        return;
    }
    let lines = vm.lines();
    let phases = Phases::from_lines(&lines);
    if let (Some(a), Some(b)) = (phases.stage1_start, phases.switch_root) {
        out.notes.push(format!(
            "stage 1: /init → switch_root {:.0} ms (a passphrase prompt's wait included)",
            (b - a) * 1000.0
        ));
    }
    let facts = probe_facts(&lines);
    let store = facts
        .get("nix-store.mount")
        .map_or("<missing>", String::as_str);
    out.check(
        "/nix/store mounted read-only",
        store.starts_with("ro "),
        || format!("the guest says {store:?}"),
    );
    // Typed with echo off: the guest never writes it back to the console.
    out.check(
        "the passphrase is not echoed",
        !shows(&lines, PASSPHRASE),
        || "the passphrase appears on the console".into(),
    );
    out.check_no_panic(&lines);
    for l in lines.iter().filter(|l| {
        l.text.contains("stage1: ")
            && (l.text.contains("LUKS")
                || l.text.contains("opened")
                || l.text.contains("activated")
                || l.text.contains("layers"))
    }) {
        out.notes.push(l.text.trim().to_owned());
    }
}

/// A scenario whose root image is LUKS2 with an argon2id keyslot for [`PASSPHRASE`]
/// (cheap parameters), opened as `cryptroot` and holding the root by its label.
fn argon2id_root(inputs: &Inputs, name: &str) -> Result<Layered> {
    let options = Stage1Options {
        luks: vec![luks_device("cryptroot")],
        ..Stage1Options::default()
    };
    let s = Layered::new(inputs, name, &format!("LABEL={ROOT_LABEL}"), options)?;
    let mut args = vec!["--pbkdf", "argon2id"];
    args.extend_from_slice(CHEAP_KDF);
    encrypt(&s.root_img, None, &args, PASSPHRASE.as_bytes())?;
    Ok(s)
}

/// `luks2-passphrase`: the root on LUKS2 (argon2id, aes-xts-plain64, 4 KiB sectors as
/// `reencrypt` picks them), found as `/dev/disk/by-uuid/<LUKS UUID>`; one wrong passphrase
/// typed on the serial console first, then the right one; the root is then found by its
/// ext4 label on the unlocked device and the boot reaches systemd and the probe.
pub fn luks2_passphrase(inputs: &Inputs) -> Result<Outcome> {
    let s = argon2id_root(inputs, "luks2-passphrase")?;
    let mut out = Outcome::default();
    let Some(vm) = s.boot_with_passphrase(inputs, vec![s.root_img.clone()], 1, &[
            "stage1: opened /dev/disk/by-uuid/5ca1ab1e-0b5e-4d1e-9a7a-c0ffee000016 as /dev/mapper/cryptroot",
            "stage1: device LABEL=stagehand-root for / is /dev/dm-0",
        ], &mut out)? else {
        return Ok(out);
    };
    let lines = vm.lines();
    out.check(
        "exactly one wrong try reported",
        lines
            .iter()
            .filter(|l| {
                l.text
                    .contains("stage1: wrong passphrase for /dev/vda (cryptroot); 2 tries left")
            })
            .count()
            == 1,
        || "no (or more than one) wrong-passphrase line naming /dev/vda".into(),
    );
    Ok(out)
}

/// `luks-detached-header`: the root's disk is encrypted whole, its LUKS2 header on a
/// second disk (`cryptsetup reencrypt --encrypt --header`, as `boot.initrd.luks.devices.<name>.header`
/// on a USB stick would be): stage 1 waits for the header's disk by its UUID
/// (`/dev/disk/by-uuid/…`: only the header carries one), reads the keyslots from it, opens
/// `/dev/vda` (all ciphertext, no header of its own) and the boot reaches the probe.
pub fn luks_detached_header(inputs: &Inputs) -> Result<Outcome> {
    let mut dev = LuksDevice::new("cryptroot", "/dev/vda");
    dev.header = Some(format!("/dev/disk/by-uuid/{LUKS_UUID}"));
    let options = Stage1Options {
        luks: vec![dev],
        ..Stage1Options::default()
    };
    let s = Layered::new(
        inputs,
        "luks-detached-header",
        &format!("LABEL={ROOT_LABEL}"),
        options,
    )?;
    let header = s.dir.join("header.img");
    let mut args = vec!["--pbkdf", "argon2id"];
    args.extend_from_slice(CHEAP_KDF);
    encrypt(&s.root_img, Some(&header), &args, PASSPHRASE.as_bytes())?;
    let mut out = Outcome::default();
    let Some(_) = s.boot_with_passphrase(
        inputs,
        vec![s.root_img.clone(), header],
        0,
        &[
            "stage1: opened /dev/vda as /dev/mapper/cryptroot",
            "stage1: device LABEL=stagehand-root for / is /dev/dm-0",
        ],
        &mut out,
    )?
    else {
        return Ok(out);
    };
    Ok(out)
}

/// `luks1-keyfile`: a LUKS1 root (PBKDF2-sha256, aes-xts-plain64) opened with a key file
/// appended as an initrd secret: 64 bytes at offset 16 of a 128-byte file
/// (`keyFileOffset`/`keyFileSize`); no prompt.
pub fn luks1_keyfile(inputs: &Inputs) -> Result<Outcome> {
    const KEY_DEST: &str = "/etc/secrets/cryptroot.key";
    let mut dev = luks_device("cryptroot");
    dev.key_file = Some(KEY_DEST.into());
    dev.key_file_offset = Some(16);
    dev.key_file_size = Some(64);
    dev.allow_discards = true;
    let options = Stage1Options {
        luks: vec![dev],
        ..Stage1Options::default()
    };
    let s = Layered::new(inputs, "luks1-keyfile", "/dev/mapper/cryptroot", options)?;
    let keyfile: Vec<u8> = (0..128u32).map(|i| (i * 73 + 5) as u8).collect();
    let key_path = s.dir.join("cryptroot.key");
    fs::write(&key_path, &keyfile)?;
    let key = keyfile.get(16..80).context("key")?;
    encrypt(
        &s.root_img,
        None,
        &[
            "--pbkdf",
            "pbkdf2",
            "--iter-time",
            "100",
            "--sector-size",
            "512",
        ],
        key,
    )?;
    let path = s.root_img.to_str().context("path")?;
    run(Command::new("cryptsetup").args(["convert", "--batch-mode", "--type", "luks1", path]))?;
    s.append_secret(KEY_DEST, key_path)?;
    let mut out = Outcome::default();
    let mut vm = s.start(inputs, vec![s.root_img.clone()], &[], &mut out)?;
    if let Err(e) = vm.wait_for("stage1: started", FIRST_LINE) {
        out.wait_failed(&vm, &e, 40);
        return Ok(out);
    }
    finish_boot(
        &mut vm,
        &[
            "stage1: installed 1 initrd secret(s): /etc/secrets/cryptroot.key",
            "stage1: /dev/vda is LUKS1",
            "stage1: key file /etc/secrets/cryptroot.key opened cryptroot",
            "stage1: device /dev/mapper/cryptroot for / is /dev/mapper/cryptroot",
        ],
        &mut out,
    );
    let lines = vm.lines();
    out.check(
        "no passphrase prompt",
        !shows(&lines, "Passphrase for"),
        || "stage 1 asked for a passphrase".into(),
    );
    Ok(out)
}

/// A loop device over a file, detached when dropped.
struct Loop(String);

impl Loop {
    fn new(img: &Path) -> Result<Self> {
        let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(img))
            .context("losetup (the LVM image needs a loop device)")?;
        Ok(Self(dev.trim().to_owned()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

const LVM_CONFIG: &str = "global { activation = 0 } devices { use_devicesfile = 0 }";

fn lvm(args: &[&str]) -> Result<String> {
    run(Command::new("lvm")
        .args(args)
        .arg("--config")
        .arg(LVM_CONFIG))
}

/// A PV image holding VG [`VG`] with LV [`LV`] whose content is `fs_img`; returns it.
fn lvm_image(dir: &Path, fs_img: &Path) -> Result<PathBuf> {
    let fs_len = fs::metadata(fs_img)?.len();
    let pv = dir.join("pv.img");
    let f = fs::File::create(&pv)?;
    f.set_len(fs_len + (16 << 20))?;
    drop(f);
    let mb = fs_len.div_ceil(1 << 20);
    let offset = {
        let dev = Loop::new(&pv)?;
        lvm(&["pvcreate", "-y", &dev.0])?;
        lvm(&["vgcreate", VG, &dev.0])?;
        lvm(&[
            "lvcreate",
            "-an",
            "-Zn",
            "-L",
            &format!("{mb}M"),
            "-n",
            LV,
            VG,
        ])?;
        let pe_start = lvm(&[
            "pvs",
            "--noheadings",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "pe_start",
            &dev.0,
        ])?;
        let ranges = lvm(&[
            "lvs",
            "--noheadings",
            "-o",
            "seg_pe_ranges",
            &format!("{VG}/{LV}"),
        ])?;
        lvm(&["vgchange", "-an", VG])?;
        if !ranges.trim().ends_with(":0-") && !ranges.contains(":0-") {
            bail!("the LV does not start at extent 0: {ranges}");
        }
        pe_start.trim().parse::<u64>().context("pe_start")?
    };
    // The LV starts at extent 0, right at pe_start: its content goes there.
    run(Command::new("dd")
        .arg(format!("if={}", fs_img.display()))
        .arg(format!("of={}", pv.display()))
        .args(["bs=1M", "conv=notrunc", "oflag=seek_bytes", "status=none"])
        .arg(format!("seek={offset}")))?;
    Ok(pv)
}

/// `lvm-on-luks`: LUKS2 over an LVM PV whose VG holds the root LV; the root is
/// `/dev/stagehand/root` (the `/dev/VG/LV` link stage 1 makes).
pub fn lvm_on_luks(inputs: &Inputs) -> Result<Outcome> {
    let options = Stage1Options {
        luks: vec![luks_device("cryptpv")],
        lvm: true,
        ..Stage1Options::default()
    };
    let s = Layered::new(inputs, "lvm-on-luks", &format!("/dev/{VG}/{LV}"), options)?;
    let pv = lvm_image(&s.dir, &s.root_img)?;
    let mut args = vec!["--pbkdf", "argon2id"];
    args.extend_from_slice(CHEAP_KDF);
    encrypt(&pv, None, &args, PASSPHRASE.as_bytes())?;
    let mut out = Outcome::default();
    let Some(_) = s.boot_with_passphrase(inputs, vec![pv], 0, &[
            "stage1: opened /dev/disk/by-uuid/5ca1ab1e-0b5e-4d1e-9a7a-c0ffee000016 as /dev/mapper/cryptpv",
            "stage1: /dev/dm-0 is LVM physical volume",
            "stage1: activated stagehand/root as /dev/mapper/stagehand-root",
            "stage1: device /dev/stagehand/root for / is /dev/stagehand/root",
        ], &mut out)? else {
        return Ok(out);
    };
    Ok(out)
}

/// `luks-on-lvm`: the other order (NixOS's `preLVM = false`): an LVM PV whose LV
/// `stagehand/root` holds a LUKS2 volume with the root filesystem. Stage 1 activates the
/// VG first, then opens `/dev/stagehand/root` as `cryptroot`; the root is found by its
/// ext4 label on the opened device.
pub fn luks_on_lvm(inputs: &Inputs) -> Result<Outcome> {
    let crypt = LuksDevice {
        device: format!("/dev/{VG}/{LV}"),
        pre_lvm: false,
        ..luks_device("cryptroot")
    };
    let options = Stage1Options {
        luks: vec![crypt],
        lvm: true,
        ..Stage1Options::default()
    };
    let s = Layered::new(
        inputs,
        "luks-on-lvm",
        &format!("LABEL={ROOT_LABEL}"),
        options,
    )?;
    let mut args = vec!["--pbkdf", "argon2id"];
    args.extend_from_slice(CHEAP_KDF);
    encrypt(&s.root_img, None, &args, PASSPHRASE.as_bytes())?;
    let pv = lvm_image(&s.dir, &s.root_img)?;
    let mut out = Outcome::default();
    let mut vm = s.start(inputs, vec![pv], &[], &mut out)?;
    if let Err(e) = answer_prompts(&mut vm, 0, Some(PASSPHRASE)) {
        out.wait_failed(&vm, &e, 40);
        return Ok(out);
    }
    // The LV has to exist before its passphrase can be asked for.
    let lines = vm.lines();
    let at = |needle: &str| lines.iter().position(|l| l.text.contains(needle));
    let (activated, asked) = (
        at("stage1: activated stagehand/root as /dev/mapper/stagehand-root"),
        at("stage1: asking for the passphrase of cryptroot"),
    );
    out.check(
        "the VG is activated before the LUKS volume on it is asked for",
        matches!((activated, asked), (Some(a), Some(b)) if a < b),
        || format!("activation at line {activated:?}, the prompt at {asked:?}"),
    );
    finish_boot(
        &mut vm,
        &[
            "stage1: opened /dev/stagehand/root as /dev/mapper/cryptroot",
            &format!("stage1: device LABEL={ROOT_LABEL} for / is /dev/dm-1"),
        ],
        &mut out,
    );
    Ok(out)
}

/// `luks-shared-passphrase`: two LUKS2 volumes with the same passphrase (the root on
/// `/dev/vda`, a data volume on `/dev/vdb`): it is typed once, and the second device is
/// opened with it (`reuse_passphrases`, NixOS's `reusePassphrases`).
pub fn luks_shared_passphrase(inputs: &Inputs) -> Result<Outcome> {
    let on = |name: &str, device: &str| LuksDevice {
        device: device.into(),
        ..luks_device(name)
    };
    let options = Stage1Options {
        luks: vec![on("cryptroot", "/dev/vda"), on("cryptdata", "/dev/vdb")],
        ..Stage1Options::default()
    };
    let s = Layered::new(
        inputs,
        "luks-shared-passphrase",
        &format!("LABEL={ROOT_LABEL}"),
        options,
    )?;
    let data = s.dir.join("data.img");
    let _ = fs::remove_file(&data);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "stagehand-data"])
        .arg(&data)
        .arg("16M"))?;
    let mut args = vec!["--pbkdf", "argon2id"];
    args.extend_from_slice(CHEAP_KDF);
    encrypt(&s.root_img, None, &args, PASSPHRASE.as_bytes())?;
    encrypt(&data, None, &args, PASSPHRASE.as_bytes())?;
    let mut out = Outcome::default();
    let Some(vm) = s.boot_with_passphrase(
        inputs,
        vec![s.root_img.clone(), data],
        0,
        &[
            "stage1: opened /dev/vda as /dev/mapper/cryptroot",
            "stage1: a passphrase given before opened cryptdata",
            "stage1: opened /dev/vdb as /dev/mapper/cryptdata",
        ],
        &mut out,
    )?
    else {
        return Ok(out);
    };
    let prompts = vm
        .lines()
        .iter()
        .filter(|l| l.text.contains("stage1: asking for the passphrase of"))
        .count();
    out.check("the passphrase is asked for once", prompts == 1, || {
        format!("{prompts} prompts")
    });
    Ok(out)
}

/// Wait for the failure menu after `failure`, then press `r`: the VM reboots, which
/// with `-no-reboot` ends QEMU.
fn menu_then_reboot(vm: &mut Vm, failure: &str, out: &mut Outcome) {
    let result = (|| -> Result<String> {
        let line = vm.wait_for(failure, STEP)?;
        vm.wait_for("r) to reboot immediately", STEP)?;
        vm.wait_raw("*) to ignore the error and continue", STEP)?;
        vm.send(b"r")?;
        vm.wait_exit(Duration::from_secs(60))?;
        Ok(line.text.trim().to_owned())
    })();
    match result {
        Ok(line) => out.notes.push(format!("stage 1 said: {line}")),
        Err(e) => out.wait_failed(vm, &e, 40),
    }
    let lines = vm.lines();
    out.check(
        "nothing booted past the failure",
        !shows(&lines, "stage1: switching root"),
        || "stage 1 switched root".into(),
    );
}

/// `luks-wrong-passphrase`: three wrong passphrases; the failure names the device and
/// what to check, then the failure menu (no `boot.panic_on_fail` here) and its reboot.
pub fn luks_wrong_passphrase(inputs: &Inputs) -> Result<Outcome> {
    let s = argon2id_root(inputs, "luks-wrong-passphrase")?;
    let mut out = Outcome::default();
    let mut vm = s.start(
        inputs,
        vec![s.root_img.clone()],
        &["boot.panic_on_fail"],
        &mut out,
    )?;
    if let Err(e) = answer_prompts(&mut vm, 3, None) {
        out.wait_failed(&vm, &e, 40);
        return Ok(out);
    }
    menu_then_reboot(
        &mut vm,
        "unlocking cryptroot (/dev/disk/by-uuid/5ca1ab1e-0b5e-4d1e-9a7a-c0ffee000016) failed: 3 wrong passphrases for /dev/vda (cryptroot)",
        &mut out,
    );
    Ok(out)
}

/// `lvm-missing-lv`: the root names `/dev/stagehand/nope` in a VG that has only `root`:
/// stage 1 says so right after activating the VG (naming the device, the VG's volumes
/// and the fix), then the failure menu and its reboot.
pub fn lvm_missing_lv(inputs: &Inputs) -> Result<Outcome> {
    let options = Stage1Options {
        lvm: true,
        ..Stage1Options::default()
    };
    let s = Layered::new(
        inputs,
        "lvm-missing-lv",
        &format!("/dev/{VG}/nope"),
        options,
    )?;
    let pv = lvm_image(&s.dir, &s.root_img)?;
    let mut out = Outcome::default();
    let mut vm = s.start(inputs, vec![pv], &["boot.panic_on_fail"], &mut out)?;
    if let Err(e) = vm.wait_for("stage1: activated stagehand/root", FIRST_LINE) {
        out.wait_failed(&vm, &e, 40);
        return Ok(out);
    }
    menu_then_reboot(
        &mut vm,
        "/dev/stagehand/nope names logical volume nope of volume group stagehand, which has no such volume (it has: root)",
        &mut out,
    );
    Ok(out)
}
