//! Root disks as real machines have them (issue #16): a GPT disk with an ESP beside the
//! root, found by PARTUUID and PARTLABEL; a btrfs root on a subvolume; an md RAID1 root
//! with a member missing; an md array too degraded to start.
//!
//! Every image is made by the real tools: `sgdisk` and `mkfs.vfat` for the GPT disk,
//! `mkfs.btrfs --rootdir` for btrfs, `mdadm --create` for the RAID members. What needs a
//! kernel (mdadm's array creation, `btrfs subvolume snapshot`) runs in a helper VM booted
//! from our own initrd: the host may have no md driver and no loop devices, the guest
//! kernel has both md and btrfs as modules.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;
use stagehand_initrd::InitrdSpec;

use crate::console::probe_facts;
use crate::generation::{BuiltGeneration, SystemImage};
use crate::host::run;
use crate::qemu::{Line, Vm};
use crate::scenarios::{root_disk, Inputs, Outcome};
use crate::stage1_scenarios::{boot_to_probe, check_store_read_only, cmdline};

/// One scenario's directory, initrd and demo system (as `stage1_scenarios`' setup).
struct Setup {
    dir: PathBuf,
    initrd: PathBuf,
    generation: BuiltGeneration,
    image: SystemImage,
}

impl Setup {
    fn new(inputs: &Inputs, name: &str, edit: impl FnOnce(&mut InitrdSpec)) -> Result<Self> {
        let dir = inputs.scenario_dir(name)?;
        let (_, initrd) = inputs.initrd_in(&dir, edit)?;
        let (image, generation) = inputs.demo_system(&initrd)?;
        Ok(Self {
            dir,
            initrd,
            generation,
            image,
        })
    }

    /// Boot `drives` with the generation's command line plus `add`, console in `log`,
    /// through `expect` to the probe. Returns the console lines of a boot that got there.
    fn boot(
        &self,
        inputs: &Inputs,
        drives: Vec<PathBuf>,
        add: &[&str],
        log: &str,
        expect: &[&str],
        out: &mut Outcome,
    ) -> Result<Option<Vec<Line>>> {
        let append = cmdline(&self.generation, &[], add);
        let cfg = inputs.vm_config(&self.initrd, drives, append, self.dir.join(log));
        out.start_run(&cfg);
        let mut vm = Vm::start(&cfg)?;
        Ok(boot_to_probe(&mut vm, expect, out))
    }
}

/// Stage 1's time from the boot receipt the probe printed (`times_us.stage1`): the
/// total from `/init` to the exec of stage 2, and the phases named in `phases` (all
/// when empty).
pub(crate) fn receipt_stage1(lines: &[Line], phases: &[&str]) -> String {
    let facts = probe_facts(lines);
    let Some(receipt) = facts.get("boot-receipt") else {
        return "stage 1: no boot receipt printed".into();
    };
    let Ok(v) = serde_json::from_str::<Value>(receipt) else {
        return "stage 1: the boot receipt is not JSON".into();
    };
    let s1 = &v["times_us"]["stage1"];
    let ms = |us: Option<u64>| us.map_or("?".into(), |u| format!("{:.1} ms", u as f64 / 1000.0));
    let total = s1["total"].as_u64().or_else(|| {
        s1["end"]
            .as_u64()
            .zip(s1["start"].as_u64())
            .map(|(e, s)| e.saturating_sub(s))
    });
    let mut parts = vec![format!("stage 1 (boot receipt): total {}", ms(total))];
    for p in s1["phases"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("?");
        if !phases.is_empty() && !phases.iter().any(|want| name.starts_with(want)) {
            continue;
        }
        let d = p["end"]
            .as_u64()
            .zip(p["start"].as_u64())
            .map(|(e, s)| e.saturating_sub(s));
        parts.push(format!("{name} {}", ms(d)));
    }
    parts.join(", ")
}

// ---------------------------------------------------------------------------------------
// GPT

/// The root partition's unique GUID and name on the GPT disk.
const GPT_ROOT_PARTUUID: &str = "5b2e0f3c-8a41-4d6e-9c1f-3e7a2b9d4c60";
const GPT_ROOT_PARTLABEL: &str = "stagehand-gpt-root";

/// A GPT disk (`sgdisk`) with an 8 MiB ESP (`mkfs.vfat`, type ef00) as partition 1 and
/// the ext4 root image as partition 2 (type 8304, Linux x86-64 root), copied in with
/// `dd conv=notrunc`.
fn gpt_disk(dir: &Path, root_img: &Path) -> Result<PathBuf> {
    let disk = dir.join("gpt-disk.img");
    let esp = dir.join("esp.img");
    let _ = fs::remove_file(&esp);
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", "ESP"])
        .arg(&esp)
        .arg("8192"))
    .context("making the ESP (install dosfstools)")?;
    let root_len = fs::metadata(root_img)?.len();
    // 1 MiB before the first partition, the ESP, the root, 1 MiB for the backup table.
    let size = (1 << 20) + (8 << 20) + root_len + (1 << 20);
    let f = fs::File::create(&disk)?;
    f.set_len(size)?;
    drop(f);
    run(Command::new("sgdisk")
        .args(["-o", "-n", "1:2048:+8M", "-t", "1:ef00", "-c", "1:ESP"])
        .args(["-n", "2:0:0", "-t", "2:8304"])
        .arg(format!("-c=2:{GPT_ROOT_PARTLABEL}"))
        .arg(format!("-u=2:{GPT_ROOT_PARTUUID}"))
        .arg(&disk))
    .context("partitioning the disk (install gdisk)")?;
    for (n, img) in [(1, &esp), (2, &root_img.to_path_buf())] {
        let info = run(Command::new("sgdisk").arg(format!("-i={n}")).arg(&disk))?;
        let first: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("First sector:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("sgdisk -i {n} printed no first sector:\n{info}"))?;
        run(Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", disk.display()))
            .args(["bs=512", "conv=notrunc,sparse", "status=none"])
            .arg(format!("seek={first}")))?;
    }
    Ok(disk)
}

/// `gpt-partuuid`: one GPT disk holding an ESP and the root; `root=PARTUUID=` and then
/// `root=PARTLABEL=` find partition 2 (stage 1 reads the partition table itself) and
/// both boots reach the probe.
pub fn gpt_partuuid(inputs: &Inputs) -> Result<Outcome> {
    let setup = Setup::new(inputs, "gpt-partuuid", |_| {})?;
    let root_img = root_disk(&setup.image, &setup.dir)?;
    let disk = gpt_disk(&setup.dir, &root_img)?;
    fs::remove_file(&root_img)?;
    let mut out = Outcome::default();
    for (form, log) in [
        (
            format!("PARTUUID={GPT_ROOT_PARTUUID}"),
            "console-partuuid.log",
        ),
        (
            format!("PARTLABEL={GPT_ROOT_PARTLABEL}"),
            "console-partlabel.log",
        ),
    ] {
        let found = format!("stage1: device {form} for / is /dev/vda2");
        let Some(lines) = setup.boot(
            inputs,
            vec![disk.clone()],
            &[&format!("root={form}")],
            log,
            &[&found, "stage1: mounted /"],
            &mut out,
        )?
        else {
            return Ok(out);
        };
        check_store_read_only(
            &mut out,
            &format!("root={form}: /nix/store read-only"),
            &lines,
        );
        let facts = probe_facts(&lines);
        let root = facts.get("root.source").map_or("<missing>", String::as_str);
        out.check(
            &format!("root={form}: / is partition 2 of the GPT disk"),
            root.starts_with("/dev/vda2 "),
            || format!("the guest says / is {root:?}"),
        );
        out.notes.push(format!(
            "root={form}: {}",
            receipt_stage1(&lines, &["modules", "devices", "mount /"])
        ));
    }
    Ok(out)
}
