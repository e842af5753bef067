//! Stage-1 scenarios: the root found by `LABEL=`/`UUID=`, a root that never appears (the
//! failure message, `boot.panic_on_fail`), the failure path's shell, a dirty ext4 journal
//! checked by fsck before the mount, and a separate `/nix` disk.
//!
//! Each builds its own initrd and disk image under `<target>/vm-tests/<scenario>/` and
//! asserts on the guest console.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use stagehand_common::stage1_config::FileSystem;
use stagehand_initrd::objects::StoreObject;
use stagehand_initrd::{ExtraFile, InitrdSpec, SpecExtras};

use crate::console::{probe_facts, shows, Phases, PROBE_DONE};
use crate::generation::{write_ext4, BuiltGeneration, SystemImage};
use crate::host::run;
use crate::qemu::{Line, Vm};
use crate::scenarios::{root_disk, Inputs, Outcome, FIRST_LINE, ROOT_LABEL, STEP};
use crate::tree::{Node, Tree};

/// The host's e2fsck, put into every test initrd as `/bin/fsck.ext4` (with its libraries)
/// so stage 1 checks the ext4 root before mounting it.
pub const HOST_E2FSCK: &str = "/sbin/e2fsck";

/// Initrd inputs beyond the spec that every scenario's initrd carries: the ext4 checker.
pub fn initrd_extras() -> SpecExtras {
    let mut extras = SpecExtras::default();
    extras.contents = vec![StoreObject {
        source: HOST_E2FSCK.into(),
        target: Some("/bin/fsck.ext4".into()),
    }];
    extras
}

/// One scenario's working directory, initrd and demo image.
struct Setup {
    dir: PathBuf,
    initrd: PathBuf,
    generation: BuiltGeneration,
    image: SystemImage,
}

impl Setup {
    /// Build the initrd from the harness's spec changed by `edit`, and the demo system.
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

    /// The whole system on one ext4 disk labelled `stagehand-root`.
    fn root_image(&self) -> Result<PathBuf> {
        root_disk(&self.image, &self.dir)
    }

    /// Start the VM with `drives` and `append`, the console in `log` (which `out` names).
    fn start(
        &self,
        inputs: &Inputs,
        drives: Vec<PathBuf>,
        append: String,
        log: &str,
        out: &mut Outcome,
    ) -> Result<Vm> {
        let cfg = inputs.vm_config(&self.initrd, drives, append, self.dir.join(log));
        out.log = Some(cfg.log.clone());
        Vm::start(&cfg)
    }

    /// Boot `drives` with the generation's own command line (the console in
    /// `console.log`) through `expect` to the probe and power-off: [`boot_to_probe`].
    fn boot(
        &self,
        inputs: &Inputs,
        drives: Vec<PathBuf>,
        expect: &[&str],
        out: &mut Outcome,
    ) -> Result<Option<Vec<Line>>> {
        let append = self.generation.cmdline();
        let mut vm = self.start(inputs, drives, append, "console.log", out)?;
        Ok(boot_to_probe(&mut vm, expect, out))
    }

    /// [`Self::boot`], then check `/nix/store` came up read-only and note stage 1's time:
    /// the scenarios that move `/nix` to a disk of its own.
    fn boot_checking_store(
        &self,
        inputs: &Inputs,
        drives: Vec<PathBuf>,
        expect: &[&str],
    ) -> Result<Outcome> {
        let mut out = Outcome::default();
        if let Some(lines) = self.boot(inputs, drives, expect, &mut out)? {
            check_store_read_only(&mut out, "/nix/store mounted read-only", &lines);
            note_stage1_time(&mut out, &lines);
        }
        Ok(out)
    }

    /// `nix` as its own ext4 disk, labelled [`NIX_LABEL`].
    fn nix_disk(&self, nix: &Tree) -> Result<PathBuf> {
        let img = self.dir.join("nix.img");
        write_ext4(nix, &img, 256, NIX_LABEL).context("building the /nix image")?;
        Ok(img)
    }

    /// The system tree with its `/nix` taken out (for a disk of its own), and that `/nix`.
    fn tree_without_nix(&self) -> Result<(Tree, Tree)> {
        let mut root = self.image.tree()?;
        match root.take("nix") {
            Some(Node::Dir(nix)) => Ok((root, nix)),
            other => bail!("the system tree has no /nix directory: {other:?}"),
        }
    }
}

/// The label of the disk that holds `/nix` where it has one of its own.
const NIX_LABEL: &str = "stagehand-nix";

/// The generation's command line with `drop` words removed and `add` appended.
pub(crate) fn cmdline(g: &BuiltGeneration, drop: &[&str], add: &[&str]) -> String {
    g.cmdline()
        .split_whitespace()
        .filter(|w| !drop.contains(w))
        .chain(add.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Boot to the guest probe and check the VM powers off; returns the console lines.
pub(crate) fn boot_to_probe(vm: &mut Vm, expect: &[&str], out: &mut Outcome) -> Option<Vec<Line>> {
    let result = (|| -> Result<()> {
        vm.wait_for("stage1: started", FIRST_LINE)?;
        for needle in expect {
            vm.wait_for(needle, STEP)?;
        }
        vm.wait_for("stage1: switching root", STEP)?;
        vm.wait_for(PROBE_DONE, STEP)?;
        let status = vm.wait_exit(STEP)?;
        if !status.success() {
            bail!("QEMU exited with {status} after the probe");
        }
        Ok(())
    })();
    match result {
        Ok(()) => Some(vm.lines()),
        Err(e) => {
            out.failures.push(format!("{e:#}"));
            out.notes.push(vm.failure_context(40));
            None
        }
    }
}

/// Check the guest probe saw `/nix/store` mounted read-only (`what` names the check).
pub(crate) fn check_store_read_only(out: &mut Outcome, what: &str, lines: &[Line]) {
    let facts = probe_facts(lines);
    let store = facts
        .get("nix-store.mount")
        .map_or("<missing>", String::as_str);
    out.check(what, store.starts_with("ro "), || {
        format!("the guest says {store:?}")
    });
}

/// Note how long stage 1 ran, from the kernel's timestamps.
fn note_stage1_time(out: &mut Outcome, lines: &[Line]) {
    let phases = Phases::from_lines(lines);
    out.notes.push(format!("stage 1: {}", stage1_time(&phases)));
}

/// The ext4 UUID of an image, as e2fsprogs reports it (not our own probe).
fn ext4_uuid(img: &Path) -> Result<String> {
    let text = run(Command::new("dumpe2fs").arg("-h").arg(img))
        .context("reading the image's UUID (install e2fsprogs)")?;
    text.lines()
        .find_map(|l| l.strip_prefix("Filesystem UUID:"))
        .map(|u| u.trim().to_owned())
        .filter(|u| u.len() == 36)
        .with_context(|| format!("dumpe2fs -h {} printed no UUID", img.display()))
}

/// Where the label-root scenario's initrd secret goes.
const SECRET_DEST: &str = "/etc/stagehand/test-secret";

/// `label-root`: boot with `root=LABEL=stagehand-root`, then with `root=UUID=<uuid>`; stage
/// 1 finds the disk by probing its superblock (no udev) and the boot reaches systemd.
pub fn label_root(inputs: &Inputs) -> Result<Outcome> {
    let setup = Setup::new(inputs, "label-root", |_| {})?;
    // An initrd secret appended as NixOS's append-initrd-secrets does: stage 1 puts it
    // at its path before mounting anything.
    let secret_src = setup.dir.join("secret.txt");
    fs::write(&secret_src, "not in the store\n")?;
    let secrets = stagehand_initrd::secrets_archive(&[stagehand_initrd::Secret {
        dest: SECRET_DEST.into(),
        source: secret_src,
    }])
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().append(true).open(&setup.initrd)?;
        f.write_all(&secrets)?;
    }
    let img = setup.root_image()?;
    let uuid = ext4_uuid(&img)?;
    let mut out = Outcome::default();
    for (form, log) in [
        (format!("LABEL={ROOT_LABEL}"), "console-label.log"),
        (format!("UUID={uuid}"), "console-uuid.log"),
    ] {
        let append = cmdline(&setup.generation, &[], &[&format!("root={form}")]);
        let mut vm = setup.start(inputs, vec![img.clone()], append, log, &mut out)?;
        let found = format!("stage1: device {form} for / is /dev/vda");
        let secret = format!("stage1: installed 1 initrd secret(s): {SECRET_DEST}");
        let expect = [secret.as_str(), &found, "stage1: mounted /"];
        let Some(lines) = boot_to_probe(&mut vm, &expect, &mut out) else {
            return Ok(out);
        };
        let phases = Phases::from_lines(&lines);
        out.notes.push(format!(
            "root={form}: found and booted to the probe in {:.1} s (host); stage 1 {}",
            vm.elapsed().as_secs_f64(),
            stage1_time(&phases)
        ));
        check_store_read_only(
            &mut out,
            &format!("root={form}: /nix/store mounted read-only"),
            &lines,
        );
    }
    Ok(out)
}

fn stage1_time(p: &Phases) -> String {
    match (p.stage1_start, p.switch_root) {
        (Some(a), Some(b)) => format!("/init → switch_root {:.0} ms", (b - a) * 1000.0),
        _ => "time unknown".into(),
    }
}

/// `missing-root`: `root=LABEL=nope` with a 2 s device timeout. Stage 1 must say which
/// device it waited for and which devices it saw, within the deadline, and with
/// `boot.panic_on_fail` the kernel panics and the VM exits.
pub fn missing_root(inputs: &Inputs) -> Result<Outcome> {
    let setup = Setup::new(inputs, "missing-root", |_| {})?;
    let img = setup.root_image()?;
    let append = cmdline(
        &setup.generation,
        &[],
        &["root=LABEL=nope", "rd.device_timeout=2"],
    );
    let mut out = Outcome::default();
    out.notes.push(format!("kernel command line: {append}"));
    let mut vm = setup.start(inputs, vec![img], append, "console.log", &mut out)?;
    let result = (|| -> Result<(Line, Line, Line)> {
        let loaded = vm.wait_for("modules loaded", FIRST_LINE)?;
        let failed = vm.wait_for_line(
            "a stage-1 error naming LABEL=nope and the devices seen",
            STEP,
            |l| {
                l.contains("stage1: ")
                    && l.contains("LABEL=nope")
                    && l.contains("Block devices seen: vda (ext4 label=stagehand-root")
            },
        )?;
        let panic = vm.wait_for("Kernel panic", STEP)?;
        vm.wait_exit(STEP)?;
        Ok((loaded, failed, panic))
    })();
    match result {
        Ok((loaded, failed, panic)) => {
            out.notes
                .push(format!("stage 1 said: {}", failed.text.trim()));
            let waited = failed
                .kernel_time()
                .zip(loaded.kernel_time())
                .map(|(f, l)| f - l);
            out.notes.push(format!(
                "modules loaded at {}, failure at {}, kernel panic at {}; VM gone {:.1} s after QEMU start",
                loaded.kernel_stamp(),
                failed.kernel_stamp(),
                panic.kernel_stamp(),
                vm.elapsed().as_secs_f64()
            ));
            out.check(
                "the failure comes after the 2 s deadline, not much later",
                waited.is_some_and(|w| (1.9..6.0).contains(&w)),
                || format!("modules loaded → failure took {waited:?} s"),
            );
        }
        Err(e) => {
            out.failures.push(format!("{e:#}"));
            out.notes.push(vm.failure_context(30));
        }
    }
    let lines = vm.lines();
    out.check(
        "nothing after the failure",
        !shows(&lines, "stage1: switching root"),
        || "stage 1 went on without a root".into(),
    );
    Ok(out)
}

/// Debian's statically linked busybox (package `busybox-static`), downloaded once into the
/// cache.
pub fn static_busybox(cache: &Path) -> Result<PathBuf> {
    let bin = crate::kernel::unpacked_package(cache, "busybox-static")?.join("bin/busybox");
    if !bin.is_file() {
        bail!(
            "busybox-static has no bin/busybox ({} missing)",
            bin.display()
        );
    }
    Ok(bin)
}

/// `shell-on-fail`: the initrd carries busybox as `/bin/sh`; with `boot.shell_on_fail`
/// and a missing root the failure menu offers the shell, key `f` starts it as PID 1 on
/// the serial console, and it runs what we type.
pub fn shell_on_fail(inputs: &Inputs) -> Result<Outcome> {
    let busybox = static_busybox(&inputs.workspace.cache_dir())?;
    let setup = Setup::new(inputs, "shell-on-fail", |spec| {
        spec.extra_files.push(ExtraFile {
            source: busybox.clone(),
            target: "/bin/sh".into(),
            mode: Some(0o755),
        });
    })?;
    let img = setup.root_image()?;
    let append = cmdline(
        &setup.generation,
        &["boot.panic_on_fail"],
        &[
            "root=LABEL=nope",
            "rd.device_timeout=1",
            "boot.shell_on_fail",
        ],
    );
    let mut out = Outcome::default();
    out.notes.push(format!("kernel command line: {append}"));
    let mut vm = setup.start(inputs, vec![img], append, "console.log", &mut out)?;
    let result = (|| -> Result<Line> {
        vm.wait_for("LABEL=nope", FIRST_LINE)?;
        vm.wait_for("i) to launch an interactive shell", STEP)?;
        vm.wait_for("f) to start an interactive shell having pid 1", STEP)?;
        vm.wait_for("*) to ignore the error and continue", STEP)?;
        vm.send(b"f")?;
        // Typed ahead: the tty buffers it until the shell reads (and may echo it before
        // the first prompt is drawn).
        vm.send(b"echo STAGEHAND-SHELL-$((6*7))\n")?;
        vm.wait_for_line("the shell's answer STAGEHAND-SHELL-42", STEP, |l| {
            l.trim() == "STAGEHAND-SHELL-42"
        })?;
        // The shell has run a command, so it is reading the next: an empty line completes
        // a console line holding just its prompt (`/ # ` from busybox as root).
        vm.send(b"\n")?;
        vm.wait_for_line("a shell prompt line", STEP, is_prompt)
    })();
    match result {
        Ok(prompt) => {
            out.notes.push(format!(
                "shell answered on the serial console; prompt {:?}, {:.1} s after QEMU start",
                prompt.text,
                vm.elapsed().as_secs_f64()
            ));
            // PID 1 is the shell now: power off through sysrq (no reboot binary needed).
            let _ = vm.send(b"echo o > /proc/sysrq-trigger\n");
            let _ = vm.wait_exit(Duration::from_secs(30));
        }
        Err(e) => {
            out.failures.push(format!("{e:#}"));
            out.notes.push(vm.failure_context(30));
        }
    }
    Ok(out)
}

/// A console line that is only a shell prompt: short, ending in `#` or `$`.
fn is_prompt(line: &str) -> bool {
    let t = line.trim_end();
    t.len() <= 40 && (t.ends_with('#') || t.ends_with('$')) && !t.contains("echo")
}

/// Give an ext4 image a dirty journal and a "not clean" state, as after a crash: a
/// journal transaction rewriting the last block with its own content (harmless when
/// replayed, but it sets `needs_recovery`), then state 0 so e2fsck does a full pass.
pub fn make_dirty(img: &Path) -> Result<()> {
    let blocks = fs::metadata(img)?.len() / 4096;
    let last = blocks.checked_sub(1).context("empty image")?;
    let dir = img.parent().context("image has no parent dir")?;
    let block_file = dir.join("journal-block.bin");
    let data = {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = fs::File::open(img)?;
        f.seek(SeekFrom::Start(last * 4096))?;
        let mut b = vec![0u8; 4096];
        f.read_exact(&mut b)?;
        b
    };
    fs::write(&block_file, data)?;
    let cmds = dir.join("debugfs-dirty.cmds");
    fs::write(
        &cmds,
        format!(
            "jo\njw -b {last} {}\njc\nssv state 0\n",
            block_file.display()
        ),
    )?;
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(img))
    .context("writing the dirty journal (install e2fsprogs)")?;
    let text = run(Command::new("dumpe2fs").arg("-h").arg(img))?;
    if !text.contains("needs_recovery") || !text.contains("not clean") {
        bail!("debugfs did not leave the image dirty:\n{text}");
    }
    Ok(())
}

/// `dirty-journal`: the root has an unreplayed journal and is marked not clean; stage 1
/// runs e2fsck (as `/bin/fsck.ext4 -a`) before mounting it, which replays the journal and
/// checks the filesystem, and the boot goes on to systemd.
pub fn dirty_journal(inputs: &Inputs) -> Result<Outcome> {
    let setup = Setup::new(inputs, "dirty-journal", |_| {})?;
    let img = setup.root_image()?;
    make_dirty(&img)?;
    let mut out = Outcome::default();
    let Some(lines) = setup.boot(
        inputs,
        vec![img],
        &[
            "stage1: checking /dev/vda: /bin/fsck.ext4 -a /dev/vda",
            "fsck.ext4: stagehand-root: recovering journal",
            "stage1: fsck of /dev/vda",
            "stage1: mounted /",
        ],
        &mut out,
    )?
    else {
        return Ok(out);
    };
    let said: Vec<&str> = lines
        .iter()
        .map(|l| l.text.as_str())
        .filter(|t| t.contains("fsck"))
        .collect();
    out.notes
        .push(format!("stage 1 fsck lines:\n  {}", said.join("\n  ")));
    out.check(
        "e2fsck made a full pass (the fs was marked not clean)",
        lines
            .iter()
            .any(|l| l.text.contains("fsck.ext4: stagehand-root: ") && l.text.contains(" files")),
        || "no e2fsck summary line".into(),
    );
    out.check(
        "the kernel found nothing left to recover",
        !shows(&lines, "EXT4-fs (vda): recovery complete"),
        || "the kernel replayed the journal itself: fsck did not".into(),
    );
    note_stage1_time(&mut out, &lines);
    Ok(out)
}

/// `separate-nix`: `/nix` on a second disk (`LABEL=stagehand-nix`) listed in the stage-1
/// config; stage 1 waits for both disks at once and mounts `/nix` under the new root,
/// where stage 2 finds the generation.
pub fn separate_nix(inputs: &Inputs) -> Result<Outcome> {
    let setup = Setup::new(inputs, "separate-nix", |spec| {
        spec.filesystems.push(FileSystem {
            mount_point: "/nix".into(),
            device: "LABEL=stagehand-nix".into(),
            fs_type: "auto".into(),
            options: vec!["noatime".into()],
        });
    })?;
    let (mut root, nix) = setup.tree_without_nix()?;
    root.insert("nix", Node::Dir(Tree::new()))?;
    let root_img = setup.dir.join("root.img");
    write_ext4(&root, &root_img, 64, ROOT_LABEL).context("building the root image")?;
    let nix_img = setup.nix_disk(&nix)?;
    setup.boot_checking_store(
        inputs,
        vec![root_img, nix_img],
        &[
            "stage1: device LABEL=stagehand-nix for /nix is /dev/vdb",
            "stage1: mounted /nix (LABEL=stagehand-nix, ext4)",
        ],
    )
}

/// `tmpfs-root`: `/` is a tmpfs and everything persistent comes from one disk
/// (`LABEL=stagehand-nix`) mounted at `/nix`, with `/usr`, `/lib`, `/lib64`, `/bin` (the host systemd
/// the demo generation runs) bind-mounted from it — bind sources are paths in the new
/// root, as on NixOS. Stage 2, activation and systemd then run on the empty root.
pub fn tmpfs_root(inputs: &Inputs) -> Result<Outcome> {
    let setup = Setup::new(inputs, "tmpfs-root", |spec| {
        let fs = |mp: &str, dev: &str, t: &str, opts: &[&str]| FileSystem {
            mount_point: mp.into(),
            device: dev.into(),
            fs_type: t.into(),
            options: opts.iter().map(|o| o.to_string()).collect(),
        };
        spec.filesystems = vec![
            fs("/", "none", "tmpfs", &["mode=755", "size=64m"]),
            fs("/nix", "LABEL=stagehand-nix", "ext4", &[]),
            fs("/usr", "/nix/.usr", "none", &["bind"]),
            // Debian's /lib64/ld-linux-x86-64.so.2 links into /lib/x86_64-linux-gnu.
            fs("/lib", "/nix/.usr/lib", "none", &["bind"]),
            fs("/lib64", "/nix/.usr/lib64", "none", &["bind"]),
            fs("/bin", "/nix/.usr/bin", "none", &["bind"]),
        ];
    })?;
    let (mut root, mut nix) = setup.tree_without_nix()?;
    let usr = root.take("usr").context("the system tree has no /usr")?;
    nix.insert(".usr", usr)?;
    let nix_img = setup.nix_disk(&nix)?;
    setup.boot_checking_store(
        inputs,
        vec![nix_img],
        &[
            "stage1: mounted / (none, tmpfs)",
            "stage1: mounted /nix (LABEL=stagehand-nix, ext4)",
            "stage1: mounted /usr (/nix/.usr, none)",
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_lines() {
        assert!(is_prompt("/ # "));
        assert!(is_prompt("~ $"));
        assert!(!is_prompt("/ # echo STAGEHAND-SHELL-$((6*7))"));
        assert!(!is_prompt("STAGEHAND-SHELL-42"));
        assert!(!is_prompt(""));
    }

    #[test]
    fn extras_carry_e2fsck_as_fsck_ext4() {
        let e = initrd_extras();
        assert_eq!(e.contents.len(), 1);
        assert_eq!(e.contents[0].source, PathBuf::from(HOST_E2FSCK));
        assert_eq!(e.contents[0].target.as_deref(), Some("/bin/fsck.ext4"));
    }
}
