//! The initrd builder's options that change what the kernel unpacks and runs: an xz
//! initrd with stripped programs boots (`xz-stripped`), and the size of the test initrd
//! with each compression, stripped or not (`vm-tests initrd-sizes`, for BENCHMARKS.md).

use std::fmt::Write as _;
use std::fs;
use std::time::Instant;

use anyhow::{Context, Result};
use stagehand_initrd::{Compression, Initrd};

use crate::console::{probe_facts, shows, PROBE_DONE};
use crate::qemu::Vm;
use crate::scenarios::{check_probe, Expected, Inputs, Outcome, FIRST_LINE, STEP};

/// The harness's initrd (`virtio_pci virtio_blk ext4`, e2fsck as `/bin/fsck.ext4` with its
/// libraries) with `compression`, its programs and libraries stripped or not.
pub fn build(inputs: &Inputs, compression: Compression, strip: bool) -> Result<Initrd> {
    let spec = inputs.initrd_spec(compression)?;
    let mut extras = crate::stage1_scenarios::initrd_extras();
    extras.strip = strip;
    stagehand_initrd::build_with(&spec, &extras)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("building the initrd")
}

/// `xz-stripped`: the kernel unpacks an xz initrd (CRC32 check) and stage 1 runs the
/// stripped e2fsck with its stripped libraries and loader before the root is mounted; the
/// boot reaches the guest probe.
pub fn xz_stripped(inputs: &Inputs) -> Result<Outcome> {
    let dir = inputs.scenario_dir("xz-stripped")?;
    let initrd = build(inputs, Compression::Xz, true)?;
    let path = dir.join("initrd.xz");
    fs::write(&path, &initrd.bytes).with_context(|| format!("writing {}", path.display()))?;
    let (img, generation) = inputs.demo_image(&dir, &path)?;
    let cfg = inputs.vm_config(
        &path,
        vec![img],
        generation.cmdline(),
        dir.join("console.log"),
    );
    let mut out = Outcome {
        log: Some(cfg.log.clone()),
        ..Outcome::default()
    };
    let stripped: Vec<&str> = initrd
        .report
        .stripped
        .iter()
        .map(|s| s.path.as_str())
        .collect();
    out.check(
        "the initrd's e2fsck, its libraries and the loader were stripped",
        ["/sbin/e2fsck", "libc.so.6", "ld-linux-x86-64.so.2"]
            .iter()
            .all(|want| stripped.iter().any(|p| p.ends_with(want))),
        || format!("stripped: {stripped:?}"),
    );
    out.notes.push(format!(
        "initrd: {} KiB xz (cpio {} KiB), {} ELF files stripped",
        initrd.report.compressed.div_ceil(1024),
        initrd.report.uncompressed.div_ceil(1024),
        stripped.len()
    ));

    let mut vm = Vm::start(&cfg)?;
    let result = (|| -> Result<()> {
        vm.wait_for("stage1: started", FIRST_LINE)?;
        // e2fsck ran (stripped, from the xz initrd) and found the root clean.
        vm.wait_for("stage1: fsck of /dev/vda clean", STEP)?;
        vm.wait_for("stage1: switching root", STEP)?;
        vm.wait_for(PROBE_DONE, STEP)?;
        let status = vm.wait_exit(STEP)?;
        anyhow::ensure!(
            status.success(),
            "QEMU exited with {status} after the probe"
        );
        Ok(())
    })();
    if let Err(e) = result {
        out.failures.push(format!("{e:#}"));
        out.notes.push(vm.failure_context(40));
        return Ok(out);
    }
    let lines = vm.lines();
    out.check(
        "the kernel unpacked the initrd",
        !shows(&lines, "Initramfs unpacking failed"),
        || "the console shows 'Initramfs unpacking failed'".into(),
    );
    out.failures.extend(check_probe(
        &probe_facts(&lines),
        &Expected::of(&generation),
    ));
    Ok(out)
}

/// The test initrd's size with every compression, unstripped and stripped, and how long
/// each build took (one build each, on whatever else the machine is doing).
pub fn sizes(inputs: &Inputs) -> Result<String> {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| compression | programs | initrd (bytes) | cpio (bytes) | build (s) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|");
    for strip in [false, true] {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Zstd,
            Compression::Xz,
        ] {
            let t = Instant::now();
            let initrd = build(inputs, c, strip)?;
            let secs = t.elapsed().as_secs_f64();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {secs:.2} |",
                c.name(),
                if strip { "stripped" } else { "as on the host" },
                initrd.report.compressed,
                initrd.report.uncompressed
            );
            if strip && c == Compression::None {
                let (before, after) = initrd
                    .report
                    .stripped
                    .iter()
                    .fold((0, 0), |(b, a), f| (b + f.before, a + f.after));
                let _ = writeln!(
                    s,
                    "|  | ({} ELF files: {before} -> {after} bytes) | | | |",
                    initrd.report.stripped.len()
                );
            }
        }
    }
    Ok(s)
}
