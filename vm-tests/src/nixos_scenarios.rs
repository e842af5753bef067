//! Issue 19: booting generations in nixpkgs' exact layout (`nixos_generation.rs`): no
//! `activation.json`, no Perl, NixOS's own `activate` and bash `init`.
//!
//! * `nixos-native-init`: our initrd (stage 1, carrying our stage 2), then
//!   `init=<toplevel>/init` = NixOS's bash stage 2 because `stagehand.init=generation` asks
//!   for the generation's own init (the fallback); it runs `activate` (its two Perl calls
//!   fail, as they must without Perl, and the script goes on) and execs systemd.
//! * `nixos-generation`: our initrd built from the generation (`stagehand-initrd --system`'s
//!   library call), carrying our stage 2, booted with `init=` at the NixOS script through
//!   the profile link; our stage 2 must run instead,
//!   activating from `activate` (users, groups, shadow, `/etc`, the third-party snippet).
//! * `nixos-switch`: two such generations (the second adds a user and changes an etc file),
//!   `bin/switch-to-configuration dry-activate` of the second (nothing changes), then
//!   `switch` to the second and back to the first, live.
//!
//! The last two are Stagehand's own path for such a generation (issue 19 items 1 and 2):
//! stage 1 runs the stage 2 it carries, which activates from the generation's `activate`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use stagehand_initrd::system;

use crate::console::{probe_facts, shows, PROBE_DONE};
use crate::generation::{EtcEntry, SystemImage};
use crate::nixos_generation::{
    add_nixos_generation, install_units_outside_etc, secret_text, BuiltNixos, HostTools,
    KernelModules, NixosSpec, ToolPaths, ALICE_HASH,
};
use crate::qemu::{Line, Vm};
use crate::scenarios::{check_probe, root_disk, Inputs, Outcome, FIRST_LINE, ROOT_LABEL, STEP};
use crate::switch_scenarios::{driver_units, Snapshots};
use crate::uefi_scenarios::build_stagehand;

/// NixOS's stage-2 greeting (the bash `init`).
const NIXOS_STAGE2: &str = "<<< NixOS Stage 2 >>>";

/// What the activation script prints when a snippet fails.
const SNIPPET_FAILED: &str = "Activation script snippet '";

/// The modules a virtio ext4 root needs, as in the harness's initrd.
const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "ext4"];
const OPTIONAL_MODULES: &[&str] = &["crc32c_generic"];

/// What every NixOS scenario starts from: its directory, the host programs, the
/// generation's kernel modules (`dir/kernel-modules`), the harness's initrd (which the
/// generations' own `initrd` entry stands for NixOS's; it is not booted) and an image
/// with no generation yet.
struct Setup {
    dir: PathBuf,
    tools: HostTools,
    modules: KernelModules,
    nixos_initrd: PathBuf,
    image: SystemImage,
}

impl Setup {
    fn new(inputs: &Inputs, scenario: &str) -> Result<Setup> {
        let dir = inputs.scenario_dir(scenario)?;
        let tools = HostTools::discover()?;
        let modules = KernelModules::build(
            &inputs.kernel.modules_dir,
            &inputs.kernel.version,
            MODULES,
            OPTIONAL_MODULES,
            &dir.join("kernel-modules"),
        )?;
        let (_, nixos_initrd) = inputs.initrd_in(&dir, |_| {})?;
        let image = SystemImage::new(&inputs.systemd)?;
        Ok(Setup {
            dir,
            tools,
            modules,
            nixos_initrd,
            image,
        })
    }

    /// The fixture system as generation `number`.
    fn spec(&self, inputs: &Inputs, number: u32) -> NixosSpec {
        NixosSpec::fixture(
            number,
            inputs.boot_files(&self.nixos_initrd),
            &inputs.bins.guest_probe,
            ROOT_LABEL,
        )
    }

    fn add(&mut self, spec: &NixosSpec) -> Result<BuiltNixos> {
        add_nixos_generation(&mut self.image, &self.tools, &self.modules, spec)
    }
}

/// Our initrd for generation `g` of `image`, as `stagehand-initrd build --system
/// <profile link> --root <image> --modules virtio_pci,virtio_blk --optional-modules
/// crc32c_generic` makes it: the image is
/// written out as a root directory (`dir/system-root`, removed afterwards) and
/// `system::spec_from_system` reads the generation there (fstab, `.ko.xz` modules,
/// firmware); our stage 2 rides at `/stagehand/stage2`. The generation's own `initrd` entry
/// stands for NixOS's initrd and is not used. Returns the path and what `--system` chose.
fn system_initrd(
    inputs: &Inputs,
    dir: &Path,
    image: &SystemImage,
    g: &BuiltNixos,
) -> Result<(PathBuf, String)> {
    let root = dir.join("system-root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    image.tree()?.write_to(&root)?;
    let options = system::SystemOptions {
        stage1: inputs.bins.stage1.clone(),
        stage2: inputs.bins.stage2.clone(),
        // The disk's drivers; ext4 (and what it needs) comes from the fstab.
        modules: vec!["virtio_pci".into(), "virtio_blk".into()],
        // As `boot.initrd.availableKernelModules` would: ext4's metadata checksums need
        // crc32c, which ext4 only names as a soft dependency.
        optional_modules: vec!["crc32c_generic".into()],
        generic: false,
        host_only: None,
        stage1_options: Default::default(),
    };
    let built = system::spec_from_system(&root, Path::new(&g.profile_link()), &options)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("stagehand-initrd --system on the NixOS-layout generation")?;
    let initrd = stagehand_initrd::build_with(&built.spec.spec, &built.spec.extras)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("building the --system initrd")?;
    fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    let path = dir.join("initrd-system.zst");
    fs::write(&path, &initrd.bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok((path, built.choice.to_string()))
}

/// The lines of failed activation snippets, trimmed.
fn failed_snippets(lines: &[Line]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.text.contains(SNIPPET_FAILED) && l.text.contains("' failed ("))
        .map(|l| l.text.trim().to_string())
        .collect()
}

/// Probe fact `key`, `<missing>` when the guest did not report it.
fn fact(facts: &BTreeMap<String, String>, key: &str) -> String {
    facts
        .get(key)
        .cloned()
        .unwrap_or_else(|| "<missing>".into())
}

/// Each probe fact `key` is `value`.
fn check_facts(out: &mut Outcome, facts: &BTreeMap<String, String>, want: &[(&str, String)]) {
    for (key, value) in want {
        let seen = fact(facts, key);
        out.check(&format!("{key} = {value}"), seen == *value, || {
            format!("the guest says {seen:?}")
        });
    }
}

/// The facts every boot of a NixOS-layout generation must show, whoever activated it:
/// systemd from the generation is PID 1, both system links, the read-only store, the
/// third-party snippet's root-only secret, the note `boot.postBootCommands` wrote (run after
/// `/run/booted-system`, with stage 2's PATH).
fn check_common(out: &mut Outcome, facts: &BTreeMap<String, String>, g: &BuiltNixos) {
    let want = g.expected();
    let post_boot = g
        .post_boot_text()
        .unwrap_or_else(|e| format!("<no expectation: {e}>"));
    let fact = |k: &str| fact(facts, k);
    check_facts(
        out,
        facts,
        &[
            ("pid1.comm", "systemd".to_string()),
            ("pid1.exe", want.systemd.clone()),
            ("ppid", "1".into()),
            ("booted-system", want.toplevel.clone()),
            ("current-system", want.toplevel.clone()),
            ("run.secret", "file mode=0400 uid=0 gid=0".into()),
            ("run.secret.text", g.secret_text()),
            ("run.postboot", post_boot),
        ],
    );
    for (key, prefix) in [("nix-store.mount", "ro "), ("root.mount", "rw ")] {
        out.check(
            &format!("{key} starts with {prefix:?}"),
            fact(key).starts_with(prefix),
            || format!("the guest says {:?}", fact(key)),
        );
    }
}

/// `nixos-native-init`: NixOS's own bash stage 2 boots the generation after our stage 1.
pub fn nixos_native_init(inputs: &Inputs) -> Result<Outcome> {
    let mut setup = Setup::new(inputs, "nixos-native-init")?;
    let g = setup.add(&setup.spec(inputs, 1))?;
    // Without Perl the etc snippet fails: the units must be found outside /etc.
    install_units_outside_etc(&mut setup.image, &inputs.bins.guest_probe)?;
    // The initrd that would run our stage 2 (as in nixos-generation): the kernel parameter
    // is what picks NixOS's own init, as a user would from the boot menu's editor.
    let (initrd, _) = system_initrd(inputs, &setup.dir, &setup.image, &g)?;
    let img = root_disk(&setup.image, &setup.dir)?;
    let append = format!(
        "{} stagehand.init=generation",
        g.cmdline(&g.toplevel.join("init"))
    );
    let cfg = inputs.vm_config(&initrd, vec![img], append, setup.dir.join("console.log"));
    let mut out = Outcome::for_run(&cfg);
    let mut vm = Vm::start(&cfg)?;
    let result = (|| -> Result<()> {
        vm.wait_for("stage1: running the generation's own init", FIRST_LINE)?;
        vm.wait_for("stage1: switching root", STEP)?;
        vm.wait_for(NIXOS_STAGE2, STEP)?;
        vm.wait_for("running activation script...", STEP)?;
        vm.wait_for("starting systemd...", STEP)?;
        vm.wait_for("systemd[1]: ", STEP)?;
        vm.wait_for(PROBE_DONE, STEP)?;
        Ok(())
    })();
    if let Err(e) = result {
        out.wait_failed(&vm, &e, 50);
        return Ok(out);
    }
    out.check_powered_off(&mut vm);
    let lines = vm.lines();
    out.check(
        "our stage 2 stayed out (NixOS's script ran)",
        !shows(&lines, "stage2: "),
        || "a stage2: line is on the console".into(),
    );
    out.check_no_panic(&lines);
    // The two Perl calls fail (no Perl in the image) and the script goes on to the rest.
    let failed = failed_snippets(&lines);
    for name in ["users", "etc"] {
        out.check(
            &format!("the {name} snippet failed without Perl and activation went on"),
            failed
                .iter()
                .any(|l| l.contains(&format!("{SNIPPET_FAILED}{name}' failed (127)"))),
            || format!("failed snippets: {failed:?}"),
        );
    }
    out.check(
        "the third-party snippet ran without failing",
        !failed.iter().any(|l| l.contains("'setupSecrets'")),
        || format!("failed snippets: {failed:?}"),
    );
    let facts = probe_facts(&lines);
    check_common(&mut out, &facts, &g);
    let bash = g.tools.get("bash")?.join("bin/sh");
    let env = g.tools.get("coreutils")?.join("bin/env");
    check_facts(
        &mut out,
        &facts,
        &[("bin.sh.link", bash), ("usr.bin.env.link", env)],
    );
    out.notes.push(format!("snippets that failed: {failed:?}"));
    out.notes.push(format!(
        "QEMU start → VM off {:.1} s",
        vm.elapsed().as_secs_f64()
    ));
    Ok(out)
}

/// Boot the setup's image (generation `g` through its profile link) and wait until the
/// probe is done; a boot where NixOS's bash stage 2 runs instead of ours fails at once.
fn boot_through_our_stage2(
    inputs: &Inputs,
    setup: &Setup,
    initrd: &Path,
    g: &BuiltNixos,
    marker: &str,
    out: &mut Outcome,
) -> Result<Option<(Vm, Vec<Line>)>> {
    let dir = &setup.dir;
    let img = root_disk(&setup.image, dir)?;
    let append = g.cmdline(&format!("{}/init", g.profile_link()));
    let cfg = inputs.vm_config(initrd, vec![img], append, dir.join("console.log"));
    out.start_run(&cfg);
    let mut vm = Vm::start(&cfg)?;
    let result = (|| -> Result<()> {
        vm.wait_for("stage1: switching root", FIRST_LINE)?;
        let first = vm.wait_for_line("stage 2 starting (ours or NixOS's script)", STEP, |l| {
            l.contains("stage2: ") || l.contains(NIXOS_STAGE2)
        })?;
        if first.text.contains(NIXOS_STAGE2) {
            anyhow::bail!(
                "stage 1 started NixOS's bash stage 2 ({}), not ours from {}",
                g.profile_link(),
                stagehand_initrd::STAGE2_PATH
            );
        }
        vm.wait_for("systemd[1]: ", STEP)?;
        if !marker.is_empty() {
            vm.wait_for(marker, STEP)?;
        }
        vm.wait_for(PROBE_DONE, STEP)?;
        vm.wait_exit(STEP)?;
        Ok(())
    })();
    if let Err(e) = result {
        out.wait_failed(&vm, &e, 50);
        return Ok(None);
    }
    let lines = vm.lines();
    Ok(Some((vm, lines)))
}

/// `nixos-generation`: our stage 1 and stage 2 boot the NixOS-layout generation.
pub fn nixos_generation(inputs: &Inputs) -> Result<Outcome> {
    let mut setup = Setup::new(inputs, "nixos-generation")?;
    let g = setup.add(&setup.spec(inputs, 1))?;
    let (initrd, choice) = system_initrd(inputs, &setup.dir, &setup.image, &g)?;
    let mut out = Outcome::default();
    out.notes
        .push(format!("stagehand-initrd --system chose:\n{choice}"));
    let Some((vm, lines)) = boot_through_our_stage2(inputs, &setup, &initrd, &g, "", &mut out)?
    else {
        return Ok(out);
    };
    check_booted_by_us(&mut out, &lines, &g);
    out.notes.push(format!(
        "QEMU start → VM off {:.1} s",
        vm.elapsed().as_secs_f64()
    ));
    Ok(out)
}

/// A boot of `g` by our stage 2: every probe fact of the declared system, and no trace of
/// NixOS's script or of a failed snippet.
fn check_booted_by_us(out: &mut Outcome, lines: &[Line], g: &BuiltNixos) {
    out.check_no_panic(lines);
    out.check(
        "NixOS's bash stage 2 did not run",
        !shows(lines, NIXOS_STAGE2),
        || "its greeting is on the console".into(),
    );
    let failed = failed_snippets(lines);
    out.check("no activation snippet failed", failed.is_empty(), || {
        format!("{failed:?}")
    });
    let facts = probe_facts(lines);
    out.failures.extend(check_probe(&facts, &g.expected()));
    check_common(out, &facts, g);
    let hash = facts.get("shadow.alice").cloned().unwrap_or_default();
    out.check(
        "alice's declared hash is in /etc/shadow",
        hash == ALICE_HASH,
        || format!("the guest says {hash:?}"),
    );
}

const SWITCH_PREFIX: &str = "NIXOS-SWITCH ";
const DRIVER_UNIT: &str = "stagehand-nixos-switch.service";

/// The driver: a snapshot, dry-activate 2 (nothing may change), switch to 2, switch back
/// to 1, a snapshot after each.
fn driver_script(tools: &ToolPaths) -> Result<String> {
    let coreutils = tools.get("coreutils")?.join("bin");
    let grep = tools.get("gnugrep")?.join("bin");
    Ok(format!(
        r#"export PATH={coreutils}:{grep}
say() {{ echo "{SWITCH_PREFIX}$*"; }}
snap() {{
  say "$1 current=$(readlink /run/current-system) static=$(readlink /etc/static) \
bob=$(grep -c '^bob:' /etc/passwd 2>/dev/null) \
motd=$(tr ' ' _ < /etc/stagehand-motd 2>/dev/null) \
secret=$(tr ' ' _ < /run/secrets/stagehand-fixture 2>/dev/null)"
}}
snap gen1
/nix/var/nix/profiles/system-2-link/bin/switch-to-configuration dry-activate
say dry-activated-2 exit=$?
snap dry
/nix/var/nix/profiles/system-2-link/bin/switch-to-configuration switch
say switched-to-2 exit=$?
snap gen2
/nix/var/nix/profiles/system-1-link/bin/switch-to-configuration switch
say switched-to-1 exit=$?
snap back
say done
"#
    ))
}

/// `nixos-switch`: generation 1 boots (our stage 2), then live switches 1 → 2 → 1.
pub fn nixos_switch(inputs: &Inputs) -> Result<Outcome> {
    let mut setup = Setup::new(inputs, "nixos-switch")?;
    let stagehand = build_stagehand(inputs)?;
    // The driver script lives in the store and names only the tools, which both
    // generations share (same content, same store paths).
    let tool_paths = setup.tools.add_to(&mut setup.image)?;
    let bash = tool_paths.get("bash")?.join("bin/bash");
    let spec_for = |setup: &Setup, number: u32, driver: &str| {
        let mut spec = setup.spec(inputs, number);
        spec.switch_to_configuration = Some(stagehand.clone());
        spec.etc.push(EtcEntry::Text {
            path: "stagehand-motd".into(),
            text: format!("generation {number}\n"),
        });
        if number == 2 {
            let mut bob = spec.users[1].clone();
            bob.name = "bob".into();
            bob.uid = Some(1001);
            bob.description = "Bob".into();
            bob.home = "/home/bob".into();
            bob.hashed_password = Some("!".into());
            spec.users.push(bob);
        }
        spec.etc.extend(driver_units(
            DRIVER_UNIT,
            "Switch NixOS-layout generations live",
            &[],
            &format!("{bash} {driver}"),
        ));
        spec
    };
    let driver = setup
        .image
        .store
        .add_text("nixos-switch-test.sh", driver_script(&tool_paths)?)?;
    let g1 = setup.add(&spec_for(&setup, 1, driver.as_str()))?;
    let g2 = setup.add(&spec_for(&setup, 2, driver.as_str()))?;
    // One initrd serves both generations (same kernel, same filesystems).
    let (initrd, _) = system_initrd(inputs, &setup.dir, &setup.image, &g1)?;
    let mut out = Outcome::default();
    let done = format!("{SWITCH_PREFIX}done");
    let Some((vm, lines)) = boot_through_our_stage2(inputs, &setup, &initrd, &g1, &done, &mut out)?
    else {
        return Ok(out);
    };
    let snaps = Snapshots::read(&lines, SWITCH_PREFIX);
    for label in ["gen1", "dry", "gen2", "back"] {
        out.notes.push(format!("{label}: {:?}", snaps.snap(label)));
    }
    let get = |label: &str, k: &str| snaps.get(label, k);
    for step in ["dry-activated-2", "switched-to-2", "switched-to-1"] {
        out.check(
            &format!("{step} exited 0"),
            get(step, "exit") == "0",
            || format!("exit={:?}", get(step, "exit")),
        );
    }
    for (label, g, bob, motd) in [
        ("gen1", &g1, "0", "generation_1"),
        ("dry", &g1, "0", "generation_1"),
        ("gen2", &g2, "1", "generation_2"),
        ("back", &g1, "0", "generation_1"),
    ] {
        for (k, want) in [
            ("current", g.toplevel.to_string()),
            ("static", g.etc.join("etc")),
            ("bob", bob.to_string()),
            ("motd", motd.to_string()),
            ("secret", secret_text(g.toplevel.as_str()).replace(' ', "_")),
        ] {
            out.check(
                &format!("{label}: {k} = {want}"),
                get(label, k) == want,
                || format!("the guest says {:?}", get(label, k)),
            );
        }
    }
    // After switching back the system is generation 1 again, fully.
    check_booted_by_us(&mut out, &lines, &g1);
    out.notes.push(format!(
        "QEMU start → two switches done, VM off {:.1} s",
        vm.elapsed().as_secs_f64()
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Line {
        Line {
            text: text.into(),
            host: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn reads_failed_snippets_and_switch_snapshots() {
        let lines = [
            line("Activation script snippet 'users' failed (127)"),
            line("[    3.1] NIXOS-SWITCH gen2 current=/nix/store/x bob=1 secret=a_system=/nix/store/x"),
            line("NIXOS-SWITCH switched-to-2 exit=0"),
            line("setting up /etc..."),
        ];
        assert_eq!(
            failed_snippets(&lines),
            ["Activation script snippet 'users' failed (127)"]
        );
        let s = Snapshots::read(&lines, SWITCH_PREFIX);
        assert_eq!(s.get("gen2", "bob"), "1");
        assert_eq!(s.get("gen2", "secret"), "a_system=/nix/store/x");
        assert_eq!(s.get("switched-to-2", "exit"), "0");
    }
}
