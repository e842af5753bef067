//! Crash consistency of the boot partition and the system profile: the real
//! `stagehand install-bootloader` and `stagehand rollback` SIGKILLed before each of their
//! mutating system calls (see `crash_harness`). After every kill the ESP must still boot:
//! `loader.conf`'s default selects an entry (as systemd-boot would choose it) whose kernel and
//! initrd are on the ESP, whole; the profile link must name a generation; running the command
//! again must leave exactly what an uninterrupted run leaves.
//!
//! Needs `strace` (vm-tests/setup-host installs it); without it the tests fail and say so.

mod crash_harness;

use std::path::Path;

use crash_harness::{require_strace, run_ok, run_trials, scratch, snapshot, uninterrupted, Cmd};
use stagehand_boot::bls::Entry;
use stagehand_boot::esp::BootFs;
use stagehand_boot::profile::Profile;
use stagehand_boot::sdboot;
use stagehand_common::rootfs::Root;
use stagehand_testkit::FakeRoot;

/// Generation `n`: toplevel, kernel, initrd and their contents (distinct per generation so
/// that a file copied half-way or from the wrong generation is noticed).
fn toplevel(n: u32) -> String {
    format!("/nix/store/t{n}-nixos-system-crash")
}

fn kernel(n: u32) -> (String, Vec<u8>) {
    (
        format!("/nix/store/k{n}-linux-6.1/bzImage"),
        vec![n as u8; 3000 + 1000 * n as usize],
    )
}

fn initrd(n: u32) -> (String, Vec<u8>) {
    (
        format!("/nix/store/i{n}-initrd-linux-6.1/initrd"),
        vec![0x40 + n as u8; 2000 + 500 * n as usize],
    )
}

fn add_generation(r: &FakeRoot, n: u32) {
    let top = toplevel(n);
    let (k, kc) = kernel(n);
    let (i, ic) = initrd(n);
    std::fs::create_dir_all(r.host(&format!("{top}/kernel-modules/lib/modules/6.1.0")))
        .expect("mkdir");
    r.write(&format!("{top}/nixos-version"), "26.05\n");
    r.write(
        &format!("{top}/boot.json"),
        &format!(
            r#"{{
  "org.nixos.bootspec.v1": {{
    "init": "{top}/init",
    "initrd": "{i}",
    "kernel": "{k}",
    "kernelParams": ["console=ttyS0"],
    "label": "NixOS 26.05 gen {n} (Linux 6.1.0)",
    "system": "x86_64-linux",
    "toplevel": "{top}"
  }},
  "org.nixos.specialisation.v1": {{}}
}}
"#
        ),
    );
    std::fs::create_dir_all(r.host(&k).parent().expect("dir")).expect("mkdir");
    std::fs::write(r.host(&k), kc).expect("kernel");
    std::fs::create_dir_all(r.host(&i).parent().expect("dir")).expect("mkdir");
    std::fs::write(r.host(&i), ic).expect("initrd");
    let root = Root::open(r.path()).expect("root");
    Profile::system(&root)
        .set(Path::new(&top))
        .expect("profile");
}

/// A root whose ESP (`/boot`) has generation 1 installed and whose profile already names
/// generations 1..=`gens`.
fn installed(gens: u32) -> FakeRoot {
    let r = FakeRoot { dir: scratch() };
    std::fs::create_dir_all(r.host("/boot")).expect("esp");
    add_generation(&r, 1);
    run_ok(r.path(), &["install-bootloader"]);
    for n in 2..=gens {
        add_generation(&r, n);
    }
    r
}

/// The ESP boots: the entry systemd-boot would pick by default exists and its kernel and
/// initrd are on the ESP with the contents of one of the generations' files. With
/// `may_be_empty`, an ESP with no entry at all (nothing installed yet) passes too.
fn esp_boots(root: &Path, gens: u32, may_be_empty: bool) -> Result<(), String> {
    let r = Root::open(root).expect("root");
    let fs = BootFs::open(&r, Path::new("/boot")).map_err(|e| e.to_string())?;
    let state = sdboot::scan(&fs).map_err(|e| e.to_string())?;
    if state.entry_texts.is_empty() && may_be_empty {
        return Ok(());
    }
    let name = sdboot::predicted_boot(&state).ok_or_else(|| {
        format!(
            "no entry is booted by default: loader.conf {:?}, entries {:?}",
            state.loader_conf.as_deref().map(String::from_utf8_lossy),
            state.entry_texts.keys().collect::<Vec<_>>()
        )
    })?;
    let text = String::from_utf8_lossy(&state.entry_texts[&name]).into_owned();
    let entry = Entry::parse(&text);
    let known: Vec<Vec<u8>> = (1..=gens)
        .flat_map(|n| [kernel(n).1, initrd(n).1])
        .collect();
    let linux = entry
        .linux
        .clone()
        .ok_or_else(|| format!("{name} has no linux line"))?;
    if entry.initrd.is_empty() {
        return Err(format!("{name} has no initrd line"));
    }
    for f in std::iter::once(&linux).chain(&entry.initrd) {
        let host = root.join("boot").join(f.trim_start_matches('/'));
        let bytes = std::fs::read(&host).map_err(|e| format!("{name} names {f}: {e}"))?;
        if !known.contains(&bytes) {
            return Err(format!(
                "{name} names {f}, which holds {} bytes that are no generation's file",
                bytes.len()
            ));
        }
    }
    Ok(())
}

/// The same for extlinux: `extlinux.conf`'s `DEFAULT` label exists and its `LINUX` and
/// `INITRD` are on the partition, whole.
fn extlinux_boots(root: &Path, gens: u32, may_be_empty: bool) -> Result<(), String> {
    let dir = root.join("boot/extlinux");
    let conf = match std::fs::read_to_string(dir.join("extlinux.conf")) {
        Ok(c) => c,
        Err(_) if may_be_empty => return Ok(()),
        Err(e) => return Err(format!("extlinux.conf: {e}")),
    };
    let default = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("DEFAULT "))
        .ok_or("extlinux.conf has no DEFAULT")?;
    let block: Vec<&str> = conf
        .lines()
        .skip_while(|l| l.trim() != format!("LABEL {default}"))
        .skip(1)
        .take_while(|l| !l.trim().starts_with("LABEL "))
        .collect();
    let known: Vec<Vec<u8>> = (1..=gens)
        .flat_map(|n| [kernel(n).1, initrd(n).1])
        .collect();
    for key in ["LINUX ", "INITRD "] {
        let f = block
            .iter()
            .find_map(|l| l.trim().strip_prefix(key))
            .ok_or_else(|| format!("label {default} has no {key}"))?;
        let bytes = std::fs::read(dir.join(f)).map_err(|e| format!("{default} names {f}: {e}"))?;
        if !known.contains(&bytes) {
            return Err(format!(
                "{default} names {f}, which is no generation's file"
            ));
        }
    }
    Ok(())
}

fn extlinux_trials(name: &str, before: &FakeRoot, args: &[&str], gens: u32, first: bool) -> usize {
    let cmd = Cmd::new(args);
    let done = uninterrupted(before.path(), cmd);
    extlinux_boots(done.path(), gens, false).expect("the uninterrupted run boots");
    let after = snapshot(done.path());
    run_trials(name, before.path(), cmd, &after, &|root: &Path| {
        extlinux_boots(root, gens, first)
    })
}

fn boot_trials(name: &str, before: &FakeRoot, cmd: Cmd<'_>, gens: u32, first: bool) -> usize {
    let done = uninterrupted(before.path(), cmd);
    esp_boots(done.path(), gens, false).expect("the uninterrupted run leaves a bootable ESP");
    let after = snapshot(done.path());
    run_trials(name, before.path(), cmd, &after, &|root: &Path| {
        esp_boots(root, gens, first)
    })
}

/// An ESP too small for the old and the new files together (a tmpfs in a private mount
/// namespace; needs root).
fn full_esp_trials() -> usize {
    // Generations 1 and 2 installed (2 is the default), generation 3 replaces both (limit
    // 1) on an ESP too small to hold generation 3 beside them: some old files have to go
    // before the new ones are written — never those of the entry booted now.
    let three = installed(2);
    run_ok(three.path(), &["install-bootloader"]);
    add_generation(&three, 3);
    let full = Cmd {
        args: &["install-bootloader", "--limit", "1"],
        esp_kib: Some(56),
    };
    // Make sure this really is the remove-first order: less free than needed.
    let probe = crash_harness::clone_root(three.path());
    let said = crash_harness::run_stderr(probe.path(), full);
    let free_below_needed = said.split_once(" bytes needed, ").and_then(|(a, b)| {
        let needed: u64 = a.rsplit(' ').next()?.parse().ok()?;
        let free: u64 = b.split(' ').next()?.parse().ok()?;
        Some(free < needed)
    });
    assert_eq!(free_below_needed, Some(true), "{said}");
    let n = boot_trials(
        "install-bootloader --limit 1 on a full ESP",
        &three,
        full,
        3,
        false,
    );
    // When only removing the entry booted now would make room, nothing is changed.
    let tight = installed(2);
    let left = crash_harness::clone_root(tight.path());
    let said = crash_harness::run_stderr(
        left.path(),
        Cmd {
            args: &["install-bootloader", "--limit", "1"],
            esp_kib: Some(40),
        },
    );
    assert!(said.contains("not enough space"), "{said}");
    assert_eq!(snapshot(left.path()), snapshot(tight.path()));
    esp_boots(left.path(), 2, false).expect("the old default still boots");
    n
}

#[test]
fn boot_entries_killed_at_every_write() {
    require_strace();
    // First install on an empty ESP.
    let fresh = FakeRoot { dir: scratch() };
    std::fs::create_dir_all(fresh.host("/boot")).expect("esp");
    add_generation(&fresh, 1);
    let mut n = boot_trials(
        "first install-bootloader",
        &fresh,
        Cmd::new(&["install-bootloader"]),
        1,
        true,
    );
    // Generation 2 added: a new kernel, initrd and entry; loader.conf unchanged.
    let two = installed(2);
    n += boot_trials(
        "install-bootloader for generation 2",
        &two,
        Cmd::new(&["install-bootloader"]),
        2,
        false,
    );
    // Generation 2 replaces 1 (limit 1): generation 1's entry and files are removed.
    n += boot_trials(
        "install-bootloader --limit 1",
        &two,
        Cmd::new(&["install-bootloader", "--limit", "1", "--timeout", "3"]),
        2,
        false,
    );
    stagehand_testkit::host::require_root("the full-ESP trials (mounting a small tmpfs)");
    n += full_esp_trials();
    // extlinux: one configuration file, rewritten whole.
    let ext = ["install-bootloader", "--loader", "extlinux"];
    n += extlinux_trials("extlinux first install", &fresh, &ext, 1, true);
    let ext_two = FakeRoot { dir: scratch() };
    std::fs::create_dir_all(ext_two.host("/boot")).expect("esp");
    add_generation(&ext_two, 1);
    run_ok(ext_two.path(), &ext);
    add_generation(&ext_two, 2);
    n += extlinux_trials("extlinux for generation 2", &ext_two, &ext, 2, false);
    n += extlinux_trials(
        "extlinux --limit 1",
        &ext_two,
        &["install-bootloader", "--loader", "extlinux", "--limit", "1"],
        2,
        false,
    );
    eprintln!("boot partition: {n} trials");
}

#[test]
fn profile_rollback_killed_at_every_write() {
    require_strace();
    let r = installed(2);
    run_ok(r.path(), &["install-bootloader"]);
    let profile_ok = |root: &Path| -> Result<(), String> {
        let rt = Root::open(root).expect("root");
        let t = rt
            .canonicalize(Path::new("/nix/var/nix/profiles/system"))
            .map_err(|e| format!("the system profile does not resolve: {e}"))?;
        if t != Path::new(&toplevel(1)) && t != Path::new(&toplevel(2)) {
            return Err(format!("the system profile points at {}", t.display()));
        }
        esp_boots(root, 2, false)
    };
    let done = uninterrupted(r.path(), Cmd::new(&["rollback"]));
    run_trials(
        "rollback",
        r.path(),
        Cmd::new(&["rollback"]),
        &snapshot(done.path()),
        &profile_ok,
    );
    // The rolled-back profile installed: generation 1 becomes the default entry.
    let rolled = FakeRoot {
        dir: uninterrupted(r.path(), Cmd::new(&["rollback"])),
    };
    boot_trials(
        "install-bootloader after rollback",
        &rolled,
        Cmd::new(&["install-bootloader"]),
        2,
        false,
    );
}

#[test]
fn build_dates_in_menu_labels_are_masked_for_comparison() {
    assert_eq!(
        crash_harness::mask_dates("MENU LABEL NixOS - Configuration 2 (2026-12-03 00:24 - 26.05)"),
        "MENU LABEL NixOS - Configuration 2 (DATE - 26.05)"
    );
    assert_eq!(
        crash_harness::mask_dates("version Generation 1, Built on 2026-12-03\n"),
        "version Generation 1, Built on DATE\n"
    );
    assert_eq!(crash_harness::mask_dates("26.05.2026"), "26.05.2026");
}
