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

use anyhow::{bail, Context, Result};
use serde_json::Value;
use stagehand_common::stage1_config::MdArray;
use stagehand_initrd::objects::StoreObject;
use stagehand_initrd::{Compression, ExtraFile, InitrdSpec, SpecExtras};

use crate::console::{probe_facts, shows};
use crate::generation::{BuiltGeneration, SystemImage};
use crate::host::run;
use crate::qemu::{Line, Vm};
use crate::scenarios::{root_disk, Inputs, Outcome, FIRST_LINE, STEP};
use crate::stage1_scenarios::{
    boot_to_probe, check_store_read_only, cmdline, initrd_extras, static_busybox,
};

/// One scenario's directory, initrd and demo system (as `stage1_scenarios`' setup).
struct Setup {
    dir: PathBuf,
    initrd: PathBuf,
    generation: BuiltGeneration,
    image: SystemImage,
}

impl Setup {
    fn new(inputs: &Inputs, name: &str, edit: impl FnOnce(&mut InitrdSpec)) -> Result<Self> {
        Self::with(inputs, name, edit, |_| {})
    }

    /// [`Self::new`] with the initrd's extras (stage-1 options, contents) changed too.
    fn with(
        inputs: &Inputs,
        name: &str,
        edit: impl FnOnce(&mut InitrdSpec),
        edit_extras: impl FnOnce(&mut SpecExtras),
    ) -> Result<Self> {
        let dir = inputs.scenario_dir(name)?;
        let initrd = build_initrd(inputs, &dir, "initrd.zst", edit, edit_extras)?;
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

/// The harness's initrd changed by `edit` and `edit_extras`, written as `dir/file`.
fn build_initrd(
    inputs: &Inputs,
    dir: &Path,
    file: &str,
    edit: impl FnOnce(&mut InitrdSpec),
    edit_extras: impl FnOnce(&mut SpecExtras),
) -> Result<PathBuf> {
    let mut spec = inputs.initrd_spec(Compression::Zstd)?;
    edit(&mut spec);
    let mut extras = initrd_extras();
    edit_extras(&mut extras);
    let initrd = stagehand_initrd::build_with(&spec, &extras)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("building the initrd")?;
    let path = dir.join(file);
    fs::write(&path, &initrd.bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

// ---------------------------------------------------------------------------------------
// The helper VM: real mdadm and btrfs-progs on the guest kernel

/// Run `script` (one shell line) in a helper VM booted from our initrd with `drives`:
/// stage 1 loads md_mod, raid1 and btrfs, stops at `rd.break=modules`, and key `f` of
/// its failure menu gives busybox's shell as PID 1, which runs the host's `mdadm` and
/// `btrfs` (carried with their libraries). The script must print `TOOLS-OK-2` last
/// (`echo TOOLS-OK-$((1+1))`, so the echoed command line does not match).
fn tools_vm(inputs: &Inputs, dir: &Path, drives: Vec<PathBuf>, script: &str) -> Result<()> {
    let busybox = static_busybox(&inputs.workspace.cache_dir())?;
    let initrd = build_initrd(
        inputs,
        dir,
        "tools-initrd.zst",
        |spec| {
            spec.modules
                .extend(["md_mod", "raid1", "raid10", "btrfs"].map(String::from));
            for target in ["/bin/sh", "/bin/busybox"] {
                spec.extra_files.push(ExtraFile {
                    source: busybox.clone(),
                    target: target.into(),
                    mode: Some(0o755),
                });
            }
        },
        |extras| {
            for tool in ["/usr/sbin/mdadm", "/usr/bin/btrfs"] {
                extras.contents.push(StoreObject {
                    source: tool.into(),
                    target: None,
                });
            }
        },
    )?;
    let cfg = inputs.vm_config(
        &initrd,
        drives,
        "console=ttyS0 panic=-1 rd.break=modules".into(),
        dir.join("tools-console.log"),
    );
    let mut vm = Vm::start(&cfg)?;
    let result = (|| -> Result<()> {
        vm.wait_for("f) to start an interactive shell having pid 1", FIRST_LINE)?;
        vm.send(b"f")?;
        vm.send(format!("{script}\n").as_bytes())?;
        vm.wait_for_line("the tools script's TOOLS-OK-2", STEP, |l| {
            l.trim() == "TOOLS-OK-2"
        })?;
        vm.send(b"/bin/busybox sync; echo o > /proc/sysrq-trigger\n")?;
        vm.wait_exit(STEP)?;
        Ok(())
    })();
    if let Err(e) = result {
        bail!(
            "the helper VM ({script}) failed: {e:#}\n{}",
            vm.failure_context(30)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// md RAID1

/// The members of a RAID1 root: two data members and a spare, made by `mdadm --create
/// --metadata=1.2 --level=1 --raid-devices=2 --spare-devices=1 --assume-clean --name=root`
/// in the helper VM, with the ext4 root image written onto the array (`dd` to
/// `/dev/md0`). Returns the three member images and the array UUID (`mdadm --examine`
/// on the host).
fn md_members(inputs: &Inputs, setup: &Setup) -> Result<(Vec<PathBuf>, String)> {
    // Room for the superblock and mdadm's data offset in front of the data.
    let (members, uuid) = create_array(
        inputs,
        setup,
        &["md-a.img", "md-b.img", "md-spare.img"],
        |len| len + (8 << 20),
        "--level=1 --raid-devices=2 --spare-devices=1",
    )?;
    for (m, name) in [(&members[0], "member0"), (&members[2], "spare")] {
        keep_superblock(m, &setup.dir.join(format!("mdadm-1.2-raid1-{name}.sb")))?;
    }
    Ok((members, uuid))
}

/// Make an md array of the member images `names` (each `size(root image length)` bytes)
/// with `mdadm --create /dev/md0 --run --assume-clean --metadata=1.2 LEVEL_ARGS --name=root`
/// in the helper VM, the members in slot order, and write the setup's ext4 root image onto
/// it. Returns the member images and the array UUID (`mdadm --examine` on the host).
fn create_array(
    inputs: &Inputs,
    setup: &Setup,
    names: &[&str],
    size: impl Fn(u64) -> u64,
    level_args: &str,
) -> Result<(Vec<PathBuf>, String)> {
    let root_img = root_disk(&setup.image, &setup.dir)?;
    let len = fs::metadata(&root_img)?.len();
    let members: Vec<PathBuf> = names.iter().map(|n| setup.dir.join(n)).collect();
    for m in &members {
        let _ = fs::remove_file(m);
        fs::File::create(m)?.set_len(size(len))?;
    }
    // The guest names the drives vda, vdb, … in the order given; the root image comes last.
    let dev = |i: usize| format!("/dev/vd{}", char::from(b'a' + i as u8));
    let devices: Vec<String> = (0..members.len()).map(dev).collect();
    let mut drives = members.clone();
    drives.push(root_img.clone());
    tools_vm(
        inputs,
        &setup.dir,
        drives,
        &format!(
            "/usr/sbin/mdadm --create /dev/md0 --run --assume-clean --metadata=1.2 {level_args} \
             --name=root --homehost=stagehand {} && /bin/busybox dd if={} of=/dev/md0 bs=1M \
             && /usr/sbin/mdadm --stop /dev/md0 && echo TOOLS-OK-$((1+1))",
            devices.join(" "),
            dev(members.len())
        ),
    )?;
    fs::remove_file(&root_img)?;
    let uuid = examine_uuid(&members[0])?;
    Ok((members, uuid))
}

/// The members of a RAID10 root: four members in mdadm's default layout (two near copies:
/// slots 0+1 and 2+3 mirror each other), made by `mdadm --create --metadata=1.2
/// --level=10 --layout=n2 --raid-devices=4 --assume-clean --name=root` in the helper VM,
/// with the ext4 root image written onto the array. Returns the member images (slot
/// order) and the array UUID.
fn md10_members(inputs: &Inputs, setup: &Setup) -> Result<(Vec<PathBuf>, String)> {
    // Each member holds half the data (two copies over four members), plus room for the
    // superblock, mdadm's data offset and chunk rounding.
    let (members, uuid) = create_array(
        inputs,
        setup,
        &["md10-0.img", "md10-1.img", "md10-2.img", "md10-3.img"],
        |len| len / 2 + (16 << 20),
        "--level=10 --layout=n2 --raid-devices=4",
    )?;
    keep_superblock(&members[1], &setup.dir.join("mdadm-1.2-raid10-member1.sb"))?;
    Ok((members, uuid))
}

/// The array UUID of member image `m` (`mdadm --examine` on the host).
fn examine_uuid(m: &Path) -> Result<String> {
    let examine = run(Command::new("mdadm").arg("--examine").arg(m))
        .context("reading the member back (install mdadm)")?;
    examine
        .lines()
        .find_map(|l| l.trim().strip_prefix("Array UUID :"))
        .map(|u| u.trim().to_owned())
        .with_context(|| format!("mdadm --examine printed no Array UUID:\n{examine}"))
}

/// Keep the v1.2 superblock mdadm wrote on member image `m` (4 KiB at 4 KiB) as `to`, for
/// the parser's unit tests and the fuzz corpus.
fn keep_superblock(m: &Path, to: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(m)?;
    f.seek(SeekFrom::Start(4096))?;
    let mut sb = vec![0u8; 4096];
    f.read_exact(&mut sb)?;
    fs::write(to, sb)?;
    Ok(())
}

/// An initrd for a root on md array `uuid`: the config lists the array (md_mod and raid1
/// come with it; `modules` adds other levels'), and the root is `/dev/md/root`.
fn md_setup(inputs: &Inputs, name: &str, uuid: Option<&str>, modules: &[&str]) -> Result<Setup> {
    let uuid = uuid.map(str::to_owned);
    Setup::with(
        inputs,
        name,
        |spec| {
            spec.filesystems[0].device = "/dev/md/root".into();
            spec.modules.extend(modules.iter().map(|m| m.to_string()));
        },
        |extras| {
            if let Some(uuid) = uuid {
                extras.stage1_options.md_arrays = vec![MdArray {
                    uuid,
                    name: None,
                    allow_degraded: true,
                }];
            }
        },
    )
}

/// `md-raid10-degraded`: the root on a four-member RAID10 (near copies) with two members
/// missing, one from each mirrored pair (slots 0 and 3): the array still has every block,
/// so stage 1 starts it degraded, as mdadm would, and the boot reaches the probe.
pub fn md_raid10_degraded(inputs: &Inputs) -> Result<Outcome> {
    let scratch = md_setup(inputs, "md-raid10-degraded", None, &["raid10"])?;
    let (members, uuid) = md10_members(inputs, &scratch)?;
    let setup = md_setup(inputs, "md-raid10-degraded", Some(&uuid), &["raid10"])?;
    let mut out = Outcome::default();
    out.notes
        .push(format!("array UUID (mdadm --examine): {uuid}"));
    boot_degraded(
        inputs,
        &setup,
        vec![members[1].clone(), members[2].clone()],
        &uuid,
        &[
            "loading module raid10",
            "started DEGRADED as /dev/md127 with vda, vdb",
            "stage1: mounted / (/dev/md/root, ext4)",
        ],
        &mut out,
    )?;
    Ok(out)
}

/// Boot `drives`, the members of array `uuid`, through `expect` to the probe, and check what
/// a degraded start must show: the warning names the array and the fix, and `/` is the
/// array. The console lines of a boot that got there.
fn boot_degraded(
    inputs: &Inputs,
    setup: &Setup,
    drives: Vec<PathBuf>,
    uuid: &str,
    expect: &[&str],
    out: &mut Outcome,
) -> Result<Option<Vec<Line>>> {
    let Some(lines) = setup.boot(
        inputs,
        drives,
        &["rd.device_timeout=3"],
        "console.log",
        expect,
        out,
    )?
    else {
        return Ok(None);
    };
    let degraded = lines
        .iter()
        .find(|l| l.text.contains("started DEGRADED"))
        .map(|l| l.text.trim().to_owned())
        .unwrap_or_default();
    out.check(
        "the degraded warning names the array and the fix",
        degraded.contains(&format!("UUID {uuid}")) && degraded.contains("mdadm /dev/md127 --add"),
        || format!("stage 1 said {degraded:?}"),
    );
    out.notes.push(format!("stage 1 said: {degraded}"));
    let facts = probe_facts(&lines);
    let root = facts.get("root.source").map_or("<missing>", String::as_str);
    out.check("/ is the md array", root.starts_with("/dev/md"), || {
        format!("the guest says / is {root:?}")
    });
    Ok(Some(lines))
}

/// `md-raid1-degraded`: the root on an md RAID1 (v1.2 metadata) with one of its two
/// members missing: stage 1 waits for the array's members until the device timeout,
/// starts it degraded with a warning, finds the ext4 on `/dev/md127` through
/// `/dev/md/root`, and the boot reaches the probe.
pub fn md_raid1_degraded(inputs: &Inputs) -> Result<Outcome> {
    // The members are made once with a throwaway initrd, then the real one names the array.
    let scratch = md_setup(inputs, "md-raid1-degraded", None, &[])?;
    let (members, uuid) = md_members(inputs, &scratch)?;
    let setup = md_setup(inputs, "md-raid1-degraded", Some(&uuid), &[])?;
    let mut out = Outcome::default();
    out.notes
        .push(format!("array UUID (mdadm --examine): {uuid}"));
    let Some(lines) = boot_degraded(
        inputs,
        &setup,
        vec![members[0].clone()],
        &uuid,
        &[
            "loading module raid1",
            "started DEGRADED as /dev/md127 with vda",
            "stage1: device /dev/md/root for / is /dev/md/root",
            "stage1: mounted / (/dev/md/root, ext4)",
        ],
        &mut out,
    )?
    else {
        return Ok(out);
    };
    check_store_read_only(&mut out, "/nix/store read-only", &lines);
    out.notes.push(receipt_stage1(
        &lines,
        &["modules", "md arrays", "devices", "mount /"],
    ));
    Ok(out)
}

/// `md-too-degraded`: only the array's spare is present. Stage 1 must refuse to start
/// the array with a message naming it (name, UUID, the member found and why it holds
/// no data) and the fix, then take the configured way out (`boot.panic_on_fail`).
pub fn md_too_degraded(inputs: &Inputs) -> Result<Outcome> {
    let scratch = md_setup(inputs, "md-too-degraded", None, &[])?;
    let (members, uuid) = md_members(inputs, &scratch)?;
    let setup = md_setup(inputs, "md-too-degraded", Some(&uuid), &[])?;
    let append = cmdline(&setup.generation, &[], &["rd.device_timeout=2"]);
    let cfg = inputs.vm_config(
        &setup.initrd,
        vec![members[2].clone()],
        append,
        setup.dir.join("console.log"),
    );
    let mut out = Outcome::for_run(&cfg);
    let mut vm = Vm::start(&cfg)?;
    let result = (|| -> Result<Line> {
        let failed = vm.wait_for_line(
            "a stage-1 error naming the array, its member and the fix",
            FIRST_LINE,
            |l| {
                l.contains("stage1: ")
                    && l.contains("too degraded")
                    && l.contains(&uuid)
                    && l.contains("vda left out: a spare member holds no data")
                    && l.contains("mdadm --assemble --force")
            },
        )?;
        vm.wait_for("Kernel panic", STEP)?;
        vm.wait_exit(STEP)?;
        Ok(failed)
    })();
    match result {
        Ok(line) => out
            .notes
            .push(format!("stage 1 said: {}", line.text.trim())),
        Err(e) => out.wait_failed(&vm, &e, 30),
    }
    let lines = vm.lines();
    out.check(
        "nothing mounted after the failure",
        !shows(&lines, "stage1: switching root") && !shows(&lines, "stage1: mounted /"),
        || "stage 1 went on without its array".into(),
    );
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// btrfs

const BTRFS_LABEL: &str = "stagehand-btrfs";

/// Each btrfs device image's size.
const BTRFS_SIZE: u64 = 512 << 20;

/// `img`: a fresh [`BTRFS_SIZE`] btrfs filesystem labelled [`BTRFS_LABEL`] holding the
/// setup's system tree (`mkfs.btrfs --rootdir`).
fn btrfs_of_tree(setup: &Setup, img: &Path) -> Result<()> {
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&setup.dir)?;
    setup.image.tree()?.write_to(staging.path())?;
    let _ = fs::remove_file(img);
    fs::File::create(img)?.set_len(BTRFS_SIZE)?;
    run(Command::new("mkfs.btrfs")
        .args(["-q", "-f", "-L", BTRFS_LABEL, "--rootdir"])
        .arg(staging.path())
        .arg(img))
    .context("making the btrfs image (install btrfs-progs)")?;
    Ok(())
}

/// The system tree as a btrfs image made by `mkfs.btrfs --rootdir` (btrfs-progs 6.2 has
/// no `--subvol`), then in the helper VM `btrfs subvolume snapshot` of the top level into
/// subvolume `@` (the tree, copy-on-write), which the boot mounts with `subvol=@`.
fn btrfs_subvol_image(inputs: &Inputs, setup: &Setup) -> Result<PathBuf> {
    let img = setup.dir.join("btrfs.img");
    btrfs_of_tree(setup, &img)?;
    tools_vm(
        inputs,
        &setup.dir,
        vec![img.clone()],
        "/bin/busybox mkdir -p /mnt && /bin/busybox mount -t btrfs /dev/vda /mnt && \
         /usr/bin/btrfs subvolume snapshot /mnt /mnt/@ && /bin/busybox umount /mnt && \
         echo TOOLS-OK-$((1+1))",
    )?;
    Ok(img)
}

/// `btrfs-subvol`: the root filesystem is subvolume `@` of a btrfs filesystem
/// (`LABEL=stagehand-btrfs`, options `subvol=@` from the stage-1 config, passed to the
/// kernel as mount data); `btrfs_scan` registers the device first; no fsck (NixOS does
/// not check btrfs at boot). The probe sees `/` as `/@` of the device.
pub fn btrfs_subvol(inputs: &Inputs) -> Result<Outcome> {
    let setup = Setup::with(
        inputs,
        "btrfs-subvol",
        |spec| {
            let root = &mut spec.filesystems[0];
            root.device = format!("LABEL={BTRFS_LABEL}");
            root.fs_type = "btrfs".into();
            root.options = vec!["subvol=@".into(), "noatime".into()];
        },
        |extras| extras.stage1_options.btrfs_scan = true,
    )?;
    let img = btrfs_subvol_image(inputs, &setup)?;
    let mut out = Outcome::default();
    let Some(lines) = setup.boot(
        inputs,
        vec![img],
        &[],
        "console.log",
        &[
            "loading module btrfs",
            "stage1: btrfs device /dev/vda registered",
            &format!("stage1: mounted / (LABEL={BTRFS_LABEL}, btrfs)"),
        ],
        &mut out,
    )?
    else {
        return Ok(out);
    };
    let facts = probe_facts(&lines);
    let root = facts.get("root.source").map_or("<missing>", String::as_str);
    out.check("/ is subvolume @", root == "/dev/vda /@", || {
        format!("the guest says / is {root:?}")
    });
    out.check(
        "btrfs is not fsck'd at boot",
        !lines.iter().any(|l| l.text.contains("stage1: checking")),
        || "stage 1 ran a checker on btrfs".into(),
    );
    check_store_read_only(&mut out, "/nix/store read-only", &lines);
    let module_times: Vec<String> = lines
        .iter()
        .filter(|l| {
            ["raid6_pq", "xor", "btrfs:"]
                .iter()
                .any(|m| l.text.contains(&format!("loading module {m}")))
        })
        .map(|l| l.text.trim().to_owned())
        .collect();
    out.notes
        .push(format!("module loads: {}", module_times.join(" | ")));
    out.notes.push(receipt_stage1(
        &lines,
        &["modules", "devices", "btrfs scan", "mount /"],
    ));
    Ok(out)
}

/// `btrfs-multi`: the root btrfs spans two devices (`mkfs.btrfs --rootdir` on one, then in
/// the helper VM `btrfs device add` of the second and a metadata balance to RAID1, so
/// the filesystem cannot be mounted from either device alone). With `btrfs_scan` stage 1
/// waits for both devices, registers them with the kernel, and the mount by label
/// assembles the filesystem.
pub fn btrfs_multi(inputs: &Inputs) -> Result<Outcome> {
    let setup = Setup::with(
        inputs,
        "btrfs-multi",
        |spec| {
            let root = &mut spec.filesystems[0];
            root.device = format!("LABEL={BTRFS_LABEL}");
            root.fs_type = "btrfs".into();
            root.options = vec!["noatime".into()];
        },
        |extras| extras.stage1_options.btrfs_scan = true,
    )?;
    let img = setup.dir.join("btrfs-a.img");
    let second = setup.dir.join("btrfs-b.img");
    btrfs_of_tree(&setup, &img)?;
    let _ = fs::remove_file(&second);
    fs::File::create(&second)?.set_len(BTRFS_SIZE)?;
    tools_vm(
        inputs,
        &setup.dir,
        vec![img.clone(), second.clone()],
        "/bin/busybox mkdir -p /mnt && /bin/busybox mount -t btrfs /dev/vda /mnt && \
         /usr/bin/btrfs device add -f /dev/vdb /mnt && \
         /usr/bin/btrfs balance start -f -mconvert=raid1 -sconvert=raid1 /mnt && \
         /bin/busybox umount /mnt && echo TOOLS-OK-$((1+1))",
    )?;
    // btrfs-progs' own view of the second device: a member of a two-device filesystem.
    let dump = run(Command::new("btrfs")
        .args(["inspect-internal", "dump-super"])
        .arg(&second))
    .context("reading the second device back (install btrfs-progs)")?;
    let field = |name: &str| {
        dump.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let fsid = field("fsid");
    if field("num_devices") != "2" {
        bail!("btrfs device add did not make a two-device filesystem:\n{dump}");
    }
    let mut out = Outcome::default();
    out.notes.push(format!("filesystem {fsid}, 2 devices"));
    let Some(lines) = setup.boot(
        inputs,
        vec![img, second],
        &[],
        "console.log",
        &[
            "stage1: btrfs device /dev/vda registered",
            "stage1: btrfs device /dev/vdb registered",
            &format!("stage1: mounted / (LABEL={BTRFS_LABEL}, btrfs)"),
        ],
        &mut out,
    )?
    else {
        return Ok(out);
    };
    check_store_read_only(&mut out, "/nix/store read-only", &lines);
    out.notes.push(receipt_stage1(
        &lines,
        &["devices", "btrfs scan", "mount /"],
    ));

    // The control: the same disks with an initrd that has the btrfs module but no scan.
    // The kernel knows only the device the mount names, and refuses the filesystem.
    let unscanned = build_initrd(
        inputs,
        &setup.dir,
        "initrd-no-scan.zst",
        |spec| {
            spec.modules.push("btrfs".into());
            let root = &mut spec.filesystems[0];
            root.device = format!("LABEL={BTRFS_LABEL}");
            root.fs_type = "btrfs".into();
        },
        |_| {},
    )?;
    let cfg = inputs.vm_config(
        &unscanned,
        vec![setup.dir.join("btrfs-a.img"), setup.dir.join("btrfs-b.img")],
        setup.generation.cmdline(),
        setup.dir.join("console-no-scan.log"),
    );
    out.start_run(&cfg);
    let mut vm = Vm::start(&cfg)?;
    let control = (|| -> Result<Line> {
        let failed = vm.wait_for("stage1: mounting / failed", FIRST_LINE)?;
        vm.wait_for("Kernel panic", STEP)?;
        vm.wait_exit(STEP)?;
        Ok(failed)
    })();
    match control {
        Ok(line) => out.notes.push(format!(
            "without btrfs_scan the mount fails: {}",
            line.text.trim()
        )),
        Err(e) => out.wait_failed(&vm, &e, 30),
    }
    Ok(out)
}
