//! Stage 2 without our stage 1 (issue 7): `no-stage1`.
//!
//! The kernel boots a *foreign* initrd, built here and nothing like ours: a busybox shell
//! script as `/init` that loads the root's drivers (the Debian kernel has virtio-blk and
//! ext4 as modules, so there is no booting this kernel without some initrd), mounts the root
//! read-only, unmounts everything else it mounted and `switch_root`s straight into `init=`.
//! No `/proc`, `/sys`, `/dev` or `/run` is passed on and `/` stays read-only: stage 2 must
//! notice that nobody did stage 1's work, mount every special filesystem itself, remount
//! `/` read-write and still bring the generation's systemd up (the probe unit on the
//! console is the marker).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use stagehand_initrd::cpio::{Archive, Entry, Node};
use stagehand_initrd::modules::{read_module_file, ModuleIndex};

use crate::console::{probe_facts, shows, PROBE_DONE};
use crate::scenarios::{check_probe, Expected, Inputs, Outcome, FIRST_LINE, STEP};
use crate::stage1_scenarios::static_busybox;

/// What the foreign init says right before it hands over.
const HANDOVER: &str = "foreign-init: switch_root to";

/// The foreign initrd's `/init`. Every mount it makes it takes down again: stage 2 gets a
/// root with nothing on it.
const FOREIGN_INIT: &str = r#"#!/bin/busybox sh
bb=/bin/busybox
$bb mkdir -p /proc /dev /newroot
$bb mount -t proc proc /proc
$bb mount -t devtmpfs devtmpfs /dev
for m in /lib/modules/*.ko; do
    $bb insmod "$m" || echo "foreign-init: insmod $m failed"
done
init=/sbin/init
root=/dev/vda
for w in $($bb cat /proc/cmdline); do
    case "$w" in
        init=*) init="${w#init=}" ;;
        root=/dev/*) root="${w#root=}" ;;
    esac
done
i=0
while [ ! -b "$root" ] && [ "$i" -lt 200 ]; do $bb usleep 50000; i=$((i + 1)); done
$bb mount -t ext4 -o ro "$root" /newroot || echo "foreign-init: cannot mount $root"
$bb umount /dev
$bb umount /proc
echo "foreign-init: switch_root to $init, nothing mounted but $root (read-only)"
exec $bb switch_root /newroot "$init"
"#;

/// The foreign initrd: `/init`, busybox, the root's modules in load order, `/dev/console`
/// (so `/init` has a console before any `/dev` is mounted). Uncompressed newc cpio.
pub fn foreign_initrd(modules_dir: &Path, busybox: &Path) -> Result<Vec<u8>> {
    let index = ModuleIndex::open(modules_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let closure = index
        .closure(
            &["virtio_pci".into(), "virtio_blk".into(), "ext4".into()],
            &["crc32c_generic".into()],
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut a = Archive::new();
    let file = |perm: u32, data: Vec<u8>| Entry {
        perm,
        node: Node::File(data),
    };
    let err = |e: stagehand_initrd::cpio::CpioError| anyhow::anyhow!("{e}");
    a.add("init", file(0o755, FOREIGN_INIT.as_bytes().to_vec()))
        .map_err(err)?;
    let bb = fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    a.add("bin/busybox", file(0o755, bb)).map_err(err)?;
    a.add(
        "dev/console",
        Entry {
            perm: 0o600,
            node: Node::CharDev { major: 5, minor: 1 },
        },
    )
    .map_err(err)?;
    for (i, m) in closure.modules.iter().enumerate() {
        let bytes = read_module_file(&m.source).map_err(|e| anyhow::anyhow!("{e}"))?;
        // The glob in /init sorts by name: the number keeps the dependency order.
        a.add(
            &format!("lib/modules/{i:02}-{}.ko", m.name),
            file(0o644, bytes),
        )
        .map_err(err)?;
    }
    a.to_bytes().map_err(err)
}

/// `no-stage1`: the foreign initrd above, then our stage 2 as the first program on the root.
pub fn no_stage1(inputs: &Inputs) -> Result<Outcome> {
    let dir = inputs.scenario_dir("no-stage1")?;
    let busybox = static_busybox(&inputs.workspace.cache_dir())?;
    let initrd = dir.join("foreign-initrd.cpio");
    fs::write(
        &initrd,
        foreign_initrd(&inputs.kernel.modules_dir, &busybox)?,
    )
    .with_context(|| format!("writing {}", initrd.display()))?;
    let (img, generation) = inputs.demo_image(&dir, &initrd)?;
    let append = format!("{} root=/dev/vda", generation.cmdline());
    let log = dir.join("console.log");
    let cfg = inputs.vm_config(&initrd, vec![img], append, log);
    let mut out = Outcome::for_run(&cfg);

    let mut vm = crate::qemu::Vm::start(&cfg)?;
    let result = (|| -> Result<()> {
        vm.wait_for(HANDOVER, FIRST_LINE)?;
        vm.wait_for("stage2: direct boot (no Stagehand stage 1)", STEP)?;
        vm.wait_for("systemd[1]: ", STEP)?;
        vm.wait_for(PROBE_DONE, STEP)?;
        Ok(())
    })();
    if let Err(e) = result {
        out.wait_failed(&vm, &e, 40);
        return Ok(out);
    }
    out.check_powered_off(&mut vm);
    let lines = vm.lines();
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    out.check("our stage 1 never ran", !shows(&lines, "stage1: "), || {
        "a stage1: line is on the console".into()
    });
    out.check_no_panic(&lines);
    // Stage 2 found nothing mounted and mounted all of it: /proc first (it needs it to look),
    // then the rest of the table in order.
    for line in [
        "stage2: mounted /proc",
        "stage2: mounted /sys /dev /run /dev/shm /dev/pts",
    ] {
        out.check(
            &format!("stage 2 said {line:?}"),
            texts.iter().any(|t| t.ends_with(line)),
            || {
                let said: Vec<&&str> = texts.iter().filter(|t| t.contains("stage2: ")).collect();
                format!("stage 2 said {said:#?}")
            },
        );
    }
    let facts = probe_facts(&lines);
    out.failures
        .extend(check_probe(&facts, &Expected::of(&generation)));
    let root = facts.get("root.mount").map(String::as_str).unwrap_or("");
    out.check(
        "stage 2 remounted the read-only root read-write",
        root.starts_with("rw "),
        || format!("the guest says / is {root:?}"),
    );
    out.notes.push(format!(
        "guest: / {root}, /nix/store {}",
        facts
            .get("nix-store.mount")
            .map(String::as_str)
            .unwrap_or("?")
    ));
    out.notes.push(format!(
        "host clock: QEMU start → VM off {:.2} s",
        vm.elapsed().as_secs_f64()
    ));
    out.notes
        .push(format!("console log: {}", cfg.log.display()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_init_leaves_nothing_mounted() {
        // Every mount the foreign init makes, other than the root, is unmounted before
        // switch_root: stage 2 must find /proc, /dev, /sys and /run missing.
        for fs in ["/proc", "/dev"] {
            assert!(
                FOREIGN_INIT.contains(&format!("$bb umount {fs}\n")),
                "{fs} unmounted"
            );
        }
        assert!(!FOREIGN_INIT.contains("sysfs") && !FOREIGN_INIT.contains("tmpfs /run"));
        assert!(FOREIGN_INIT.contains("-o ro"));
        assert!(FOREIGN_INIT.contains(HANDOVER));
    }
}
