//! Issue 9: a power cut during activation on the first boot of a new generation.
//!
//! One disk image across three boots. Boot 1 brings up generation 1 (its first activation
//! writes `/etc` and the account files). Boot 2 starts generation 2, whose activation is slow
//! on purpose (a big copied `/etc` file) and which adds a user; as soon as the
//! console shows the users step finished, QEMU is killed with SIGKILL — the guest's unwritten
//! page cache is lost as in a power cut, what QEMU already wrote to the image stays. The
//! image as the cut left it is checked on the host (on a copy, after `e2fsck` replays the
//! journal as the next boot's stage 1 would): the account files parse, form the old or the
//! new set (a mix only together with the journal that finishes it), `/etc/shadow` and any
//! temporary of it are not readable by others. Boot 3 starts generation 2 again: it must come
//! up (the probe unit runs) with generation 2's accounts, printed by the guest probe and
//! read back from the image.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::console::{probe_facts, shows, PROBE_DONE};
use crate::generation::{BuiltGeneration, EtcEntry, Group, User};
use crate::host::run;
use crate::qemu::Vm;
use crate::scenarios::{check_probe, root_disk, Expected, Inputs, Outcome, FIRST_LINE, STEP};

/// Generation 2's etc step is slow on purpose: one copied `/etc` file this big (its
/// temporary is written and flushed before any link moves) takes seconds under TCG, and
/// plain links into the generation give the step more to do after it.
const BIG_COPY_BYTES: usize = 16 << 20;
const LINK_ENTRIES: usize = 300;

/// The account files, switched together by the users step.
const ACCOUNT_FILES: [&str; 5] = [
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/subuid",
    "/etc/subgid",
];

/// The users step's journal (see activation/src/users/commit.rs).
const USERS_JOURNAL: &str = "/etc/.stagehand-users.commit";

/// `debugfs -R "cat PATH"`; `None` when the file does not exist.
fn image_file(img: &Path, path: &str) -> Result<Option<String>> {
    let listing = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(img))?;
    if !listing.contains("Inode:") {
        return Ok(None);
    }
    Ok(Some(run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(img))?))
}

fn account_set(img: &Path) -> Result<Vec<Option<String>>> {
    ACCOUNT_FILES.iter().map(|p| image_file(img, p)).collect()
}

/// Every line has the file's number of fields; ids are numbers.
fn parses(path: &str, text: &str) -> bool {
    let (fields, numeric): (usize, &[usize]) = match path {
        "/etc/passwd" => (7, &[2, 3]),
        "/etc/group" => (4, &[2]),
        "/etc/shadow" => (9, &[]),
        _ => (3, &[1, 2]),
    };
    // An empty database is written as one empty line, as update-users-groups.pl does.
    (text.is_empty() || text.ends_with('\n'))
        && text.lines().filter(|l| !l.is_empty()).all(|l| {
            let f: Vec<&str> = l.split(':').collect();
            f.len() == fields && numeric.iter().all(|&i| f[i].parse::<u64>().is_ok())
        })
}

/// `name -> mode` of the entries of `/etc` in the image (`debugfs ls -p`:
/// `/inode/mode/uid/gid/name/size/`).
fn etc_modes(img: &Path) -> Result<BTreeMap<String, u32>> {
    let listing = run(Command::new("debugfs").arg("-R").arg("ls -p /etc").arg(img))?;
    Ok(listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('/').collect();
            let mode = u32::from_str_radix(f.get(2)?, 8).ok()?;
            Some((f.get(5)?.to_string(), mode))
        })
        .collect())
}

fn names(text: &str) -> Vec<&str> {
    text.lines().filter_map(|l| l.split(':').next()).collect()
}

/// Generation 2: the demo plus user carol and a slow etc step.
fn slow_generation(inputs: &Inputs, initrd: &Path) -> crate::generation::GenerationSpec {
    let mut spec = inputs.generation(2, initrd, &inputs.bins.stage2);
    spec.users.push(User {
        name: "carol".into(),
        uid: Some(1001),
        group: "users".into(),
        description: "Carol".into(),
        home: "/home/carol".into(),
        create_home: true,
        is_system_user: false,
        shell: "/bin/sh".into(),
        hashed_password: Some("!".into()),
    });
    spec.groups.push(Group {
        name: "carols".into(),
        gid: Some(1001),
        members: vec!["carol".into()],
    });
    spec.etc.push(EtcEntry::Copied {
        path: "slow/big.bin".into(),
        text: "generation 2 ".repeat(BIG_COPY_BYTES / 13),
        mode: "0644".into(),
        uid: "+0".into(),
        gid: "+0".into(),
    });
    for i in 0..LINK_ENTRIES {
        spec.etc.push(EtcEntry::Link {
            path: format!("slow/{i:03}.conf"),
            target: "/dev/null".into(),
        });
    }
    spec
}

/// Boot `img` with `cmdline` through activation to the probe unit and a clean power-off.
/// `None` when the boot did not get there; the failure and the console's tail are in `out`.
fn boot_to_probe(
    inputs: &Inputs,
    initrd: &Path,
    img: &Path,
    cmdline: String,
    log: std::path::PathBuf,
    what: &str,
    out: &mut Outcome,
) -> Result<Option<Vm>> {
    out.log = Some(log.clone());
    let mut vm = Vm::start(&inputs.vm_config(initrd, vec![img.to_path_buf()], cmdline, log))?;
    let result = (|| -> Result<()> {
        vm.wait_for("stage2: activation finished", FIRST_LINE)?;
        vm.wait_for(PROBE_DONE, STEP)?;
        vm.wait_exit(STEP)?;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(Some(vm)),
        Err(e) => {
            out.failures.push(format!("{what}: {e:#}"));
            out.notes.push(vm.failure_context(40));
            Ok(None)
        }
    }
}

/// `power-cut`: see the module documentation.
pub fn power_cut(inputs: &Inputs) -> Result<Outcome> {
    let dir = inputs.scenario_dir("power-cut")?;
    let (_, initrd) = inputs.initrd_in(&dir, |_| {})?;
    let mut image = crate::generation::SystemImage::new(&inputs.systemd)?;
    let g1 = image.add_generation(&inputs.generation(1, &initrd, &inputs.bins.stage2))?;
    let g2 = image.add_generation(&slow_generation(inputs, &initrd))?;
    image.set_current(1)?;
    let img = root_disk(&image, &dir)?;
    let mut out = Outcome::default();

    // Boot 1: generation 1, to the probe and a clean power-off.
    let log = dir.join("boot-1.console.log");
    let Some(vm) = boot_to_probe(inputs, &initrd, &img, g1.cmdline(), log, "boot 1", &mut out)?
    else {
        return Ok(out);
    };
    drop(vm);
    let old = account_set(&img)?;

    // Boot 2: generation 2, cut during its activation.
    let log = dir.join("boot-2-cut.console.log");
    out.log = Some(log.clone());
    let vm = Vm::start(&inputs.vm_config(&initrd, vec![img.clone()], g2.cmdline(), log))?;
    if !cut_during_activation(vm, &mut out) {
        return Ok(out);
    }
    let at_cut = inspect_cut_image(&img, &dir, [&g1, &g2], &mut out)?;

    // Boot 3: generation 2 again, which must come up.
    let log = dir.join("boot-3.console.log");
    let what = "boot 3 after the cut";
    let Some(vm) = boot_to_probe(inputs, &initrd, &img, g2.cmdline(), log, what, &mut out)? else {
        return Ok(out);
    };
    let facts = probe_facts(&vm.lines());
    drop(vm);
    for bad in check_probe(&facts, &Expected::of(&g2)) {
        out.failures.push(format!("boot 3 (generation 2): {bad}"));
    }
    let new = account_set(&img)?;
    check_accounts_after_recovery(&facts, &old, &at_cut, &new, &mut out);
    Ok(out)
}

/// Boot 2: cut the power once the users step is done (its etc step is under way). `false`
/// when the console never got there (the failure is in `out`).
fn cut_during_activation(mut vm: Vm, out: &mut Outcome) -> bool {
    let cut_at = match vm.wait_for("stage2: activation step users:", FIRST_LINE) {
        Ok(line) => line,
        Err(e) => {
            out.failures.push(format!("boot 2: {e:#}"));
            out.notes.push(vm.failure_context(40));
            return false;
        }
    };
    // Dropping the VM SIGKILLs QEMU (and its `timeout`): the power cut.
    let lines = {
        let lines = vm.lines();
        drop(vm);
        lines
    };
    out.notes.push(format!(
        "boot 2: power cut after {:?} (kernel time {})",
        cut_at.text.trim(),
        cut_at.kernel_stamp()
    ));
    out.check(
        "the cut landed during activation",
        !shows(&lines, "stage2: activation step etc:")
            && !shows(&lines, "stage2: activation finished"),
        || "the etc step had finished before QEMU was killed: make it slower".into(),
    );
    true
}

/// The image as the cut left it, journal replayed on a copy: it is repairable, the account
/// files parse, shadow files are not readable by others. Returns the account files at the
/// cut and whether the users journal was there.
fn inspect_cut_image(
    img: &Path,
    dir: &Path,
    [g1, g2]: [&BuiltGeneration; 2],
    out: &mut Outcome,
) -> Result<AtCut> {
    let cut = dir.join("root-after-cut.img");
    std::fs::copy(img, &cut).with_context(|| format!("copying {}", img.display()))?;
    let fsck = Command::new("e2fsck")
        .args(["-fy"])
        .arg(&cut)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running e2fsck")?;
    out.check(
        "e2fsck finds the cut image repairable",
        matches!(fsck.status.code(), Some(0..=2)),
        || format!("e2fsck exited {:?}", fsck.status),
    );
    let accounts = account_set(&cut)?;
    let journal = image_file(&cut, USERS_JOURNAL)?.is_some();
    for (i, path) in ACCOUNT_FILES.iter().enumerate() {
        if let Some(text) = &accounts[i] {
            out.check(
                &format!("{path} parses after the cut"),
                parses(path, text),
                || format!("{text:?}"),
            );
        }
    }
    let modes = etc_modes(&cut)?;
    for (name, mode) in &modes {
        if name.contains("shadow") {
            out.check(
                &format!("/etc/{name} is not readable by others after the cut"),
                mode & 0o007 == 0,
                || format!("mode {:o}", mode & 0o7777),
            );
        }
    }
    let debris: Vec<&String> = modes
        .keys()
        .filter(|n| n.ends_with(".stagehand-tmp"))
        .collect();
    let static_link = run(Command::new("debugfs")
        .arg("-R")
        .arg("stat /etc/static")
        .arg(&cut))?;
    let static_at_cut = if static_link.contains(&g2.etc.to_string()) {
        "generation 2"
    } else if static_link.contains(&g1.etc.to_string()) {
        "generation 1"
    } else {
        "neither"
    };
    out.notes.push(format!(
        "after the cut /etc/static pointed at {static_at_cut}; temporaries in /etc: {debris:?}"
    ));
    std::fs::remove_file(&cut).ok();
    Ok(AtCut { accounts, journal })
}

/// The account files as the cut left them.
struct AtCut {
    accounts: Vec<Option<String>>,
    /// The users step's journal was on disk.
    journal: bool,
}

/// After boot 3: the guest sees the image's accounts, generation 2's and every old one;
/// at the cut each file was its old or new version, the set old, new, or a mix the journal
/// finishes.
fn check_accounts_after_recovery(
    facts: &BTreeMap<String, String>,
    old: &[Option<String>],
    cut: &AtCut,
    new: &[Option<String>],
    out: &mut Outcome,
) {
    let at_cut = &cut.accounts;
    let passwd = new[0].clone().unwrap_or_default();
    let printed = facts.get("db.etc.passwd").cloned().unwrap_or_default();
    out.check(
        "the guest's /etc/passwd is the image's",
        printed == passwd.trim_end().replace('\n', "|"),
        || format!("the guest printed {printed:?}, the image has {passwd:?}"),
    );
    out.check(
        "after boot 3 /etc/passwd has generation 2's carol and every old account",
        names(&passwd).contains(&"carol")
            && names(old[0].as_deref().unwrap_or_default())
                .iter()
                .all(|n| names(&passwd).contains(n)),
        || format!("old {:?}, now {passwd:?}", old[0]),
    );
    let which = if at_cut == old {
        "the old set"
    } else if at_cut == new {
        "the new set"
    } else {
        "a mix"
    };
    out.notes.push(format!(
        "after the cut the account files were {which}{}",
        if cut.journal {
            ", with the users journal"
        } else {
            ""
        }
    ));
    out.check(
        "after the cut the account files were the old or the new set, or a mix the journal finishes",
        at_cut == old || at_cut == new || cut.journal,
        || format!("old {old:?}\nat the cut {at_cut:?}\nnew {new:?}"),
    );
    for (i, path) in ACCOUNT_FILES.iter().enumerate() {
        out.check(
            &format!("{path} after the cut is its old or its new version"),
            at_cut[i] == old[i] || at_cut[i] == new[i],
            || format!("{:?}", at_cut[i]),
        );
    }
}
