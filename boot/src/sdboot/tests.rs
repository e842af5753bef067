use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::*;
use crate::bls;
use crate::esp::FileInfo;
use crate::gather::{GenerationBoot, Inputs, Source};
use crate::plan::FilePlan;
use crate::spec::BootSpec;

pub(crate) fn spec(top: &str, label: &str, specs: &[(&str, &str)]) -> BootSpec {
    BootSpec {
        label: label.into(),
        kernel: PathBuf::from("/nix/store/kkkk-linux-6.1/bzImage"),
        initrd: Some(PathBuf::from(format!("{top}-initrd/initrd"))),
        initrd_secrets: None,
        kernel_params: vec!["console=ttyS0".into(), "loglevel=4".into()],
        init: PathBuf::from(format!("{top}/init")),
        toplevel: PathBuf::from(top),
        system: "x86_64-linux".into(),
        sort_key: Some("nixos".into()),
        devicetree: None,
        stagehand_initrd: None,
        specialisations: specs
            .iter()
            .map(|(n, t)| (n.to_string(), spec(t, label, &[])))
            .collect(),
    }
}

fn source(p: &str, size: u64) -> (PathBuf, Source) {
    (
        PathBuf::from(p),
        Source {
            canonical: PathBuf::from(p),
            size,
            files: 1,
            tree: false,
            digest: None,
        },
    )
}

/// Generations 1..=n, each with its own initrd and a shared kernel; 2 has a specialisation.
pub(crate) fn inputs(n: u64) -> Inputs {
    let mut sources: BTreeMap<PathBuf, Source> = BTreeMap::new();
    sources.extend([source("/nix/store/kkkk-linux-6.1/bzImage", 9000)]);
    let mut generations = Vec::new();
    for g in 1..=n {
        let top = format!("/nix/store/sys{g}");
        let specs: Vec<(&str, &str)> = if g == 2 {
            vec![("debug", "/nix/store/dbg2")]
        } else {
            vec![]
        };
        let s = spec(&top, "NixOS 26.05 (Linux 6.1.0)", &specs);
        sources.extend([source(&format!("{top}-initrd/initrd"), 1000 + g)]);
        if g == 2 {
            sources.extend([source("/nix/store/dbg2-initrd/initrd", 3000)]);
        }
        generations.push(GenerationBoot {
            number: g,
            created: 1_767_225_600 + i64::try_from(g).expect("small") * 86_400,
            built: 1_767_225_600 + i64::try_from(g).expect("small") * 86_400,
            spec: s,
            nixos_version: BTreeMap::new(),
            dtbs: BTreeMap::new(),
            modules_version: BTreeMap::new(),
        });
    }
    generations.reverse();
    Inputs {
        generations,
        sources,
        current: Some(n),
        machine_id: Some("4098b3f648d74c13b1f04ccfba7798e8".into()),
        skipped: vec![],
        unreadable: vec![],
        ours: None,
    }
}

fn text(fp: &FilePlan, dest: &str) -> String {
    let w = fp
        .writes
        .iter()
        .find(|w| w.dest == dest)
        .unwrap_or_else(|| panic!("no write to {dest}: {:?}", fp.describe()));
    String::from_utf8(w.contents.clone()).expect("utf8")
}

#[test]
fn entry_and_loader_conf_snapshots() {
    let (fp, _) = plan(
        &inputs(2),
        2,
        &SdBootConfig::default(),
        &EspState::default(),
    )
    .expect("plan");
    assert_eq!(
        text(&fp, "loader/entries/nixos-generation-2+3.conf"),
        "title NixOS
version Generation 2 NixOS 26.05 (Linux 6.1.0), built on 2026-01-03
linux /EFI/nixos/kkkk-linux-6.1-bzImage.efi
initrd /EFI/nixos/sys2-initrd-initrd.efi
options init=/nix/store/sys2/init console=ttyS0 loglevel=4
machine-id 4098b3f648d74c13b1f04ccfba7798e8
sort-key nixos
"
    );
    assert_eq!(
        text(&fp, "loader/entries/nixos-generation-1+3.conf"),
        "title NixOS
version Generation 1 NixOS 26.05 (Linux 6.1.0), built on 2026-01-02
linux /EFI/nixos/kkkk-linux-6.1-bzImage.efi
initrd /EFI/nixos/sys1-initrd-initrd.efi
options init=/nix/store/sys1/init console=ttyS0 loglevel=4
machine-id 4098b3f648d74c13b1f04ccfba7798e8
sort-key nixos-generation
"
    );
    assert_eq!(
        text(
            &fp,
            "loader/entries/nixos-generation-2-specialisation-debug+3.conf"
        ),
        "title NixOS (debug)
version Generation 2 NixOS 26.05 (Linux 6.1.0), built on 2026-01-03
linux /EFI/nixos/kkkk-linux-6.1-bzImage.efi
initrd /EFI/nixos/dbg2-initrd-initrd.efi
options init=/nix/store/dbg2/init console=ttyS0 loglevel=4
machine-id 4098b3f648d74c13b1f04ccfba7798e8
sort-key nixos-specialisation
"
    );
    assert_eq!(
        text(&fp, "loader/loader.conf"),
        "# Written by stagehand install-bootloader; changes here are lost on the next install.
timeout 5
default nixos-generation-*
editor no
"
    );
    // loader.conf is written after every entry.
    assert_eq!(
        fp.writes.last().map(|w| w.dest.as_str()),
        Some("loader/loader.conf")
    );
    // The shared kernel is copied once.
    let dests: Vec<&str> = fp.copies.iter().map(|c| c.dest.as_str()).collect();
    assert_eq!(
        dests,
        [
            "EFI/nixos/dbg2-initrd-initrd.efi",
            "EFI/nixos/kkkk-linux-6.1-bzImage.efi",
            "EFI/nixos/sys1-initrd-initrd.efi",
            "EFI/nixos/sys2-initrd-initrd.efi",
        ]
    );
}

#[test]
fn loader_conf_options() {
    let cfg = SdBootConfig {
        timeout: None,
        editor: true,
        console_mode: Some("max".into()),
        ..SdBootConfig::default()
    };
    assert_eq!(
        render_loader_conf(&cfg),
        "# Written by stagehand install-bootloader; changes here are lost on the next install.
default nixos-generation-*
editor yes
console-mode max
"
    );
}

fn info(name: &str, size: u64) -> FileInfo {
    FileInfo {
        name: name.into(),
        dir: false,
        size,
    }
}

#[test]
fn counters_are_kept_and_only_our_files_are_removed() {
    let (first, _) = plan(
        &inputs(3),
        3,
        &SdBootConfig::default(),
        &EspState::default(),
    )
    .expect("plan");
    let mut esp = EspState {
        entries: vec![
            info("nixos-generation-3+1-2.conf", 300),
            info("nixos-generation-2.conf", 300),
            // Generation 1 has two files (by hand): the good one is kept.
            info("nixos-generation-1+0-3.conf", 300),
            info("nixos-generation-1.conf", 300),
            // Generation 0 is no longer a generation.
            info("nixos-generation-0+2.conf", 300),
            // Not ours.
            info("other-os.conf", 300),
            info("nixos-other-generation-1.conf", 300),
            info("nixos-generation-x.conf", 300),
            info(".nixos-generation-4.conf.stagehand-tmp", 10),
        ],
        nixos_files: vec![
            info("kkkk-linux-6.1-bzImage.efi", 9000),
            info("sys1-initrd-initrd.efi", 1),
            info("stale-initrd.efi", 5000),
            info(".extra-files", 0),
        ],
        ..EspState::default()
    };
    // Give generation 3's file its current contents: nothing to write for it.
    let g3 = first
        .writes
        .iter()
        .find(|w| w.dest.ends_with("nixos-generation-3+3.conf"))
        .expect("g3");
    esp.entry_texts
        .insert("nixos-generation-3+1-2.conf".into(), g3.contents.clone());
    let (fp, planned) = plan(&inputs(3), 3, &SdBootConfig::default(), &esp).expect("plan");
    let files: Vec<(&str, &str)> = planned
        .iter()
        .map(|p| (p.id.as_str(), p.file_name.as_str()))
        .collect();
    assert_eq!(
        files,
        [
            ("nixos-generation-3", "nixos-generation-3+1-2.conf"),
            ("nixos-generation-2", "nixos-generation-2.conf"),
            (
                "nixos-generation-2-specialisation-debug",
                "nixos-generation-2-specialisation-debug+3.conf"
            ),
            ("nixos-generation-1", "nixos-generation-1.conf"),
        ]
    );
    let writes: Vec<&str> = fp.writes.iter().map(|w| w.dest.as_str()).collect();
    assert!(
        !writes.iter().any(|w| w.contains("nixos-generation-3")),
        "{writes:?}"
    );
    let removed: Vec<&str> = fp.removals.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        removed,
        [
            "loader/entries/nixos-generation-1+0-3.conf",
            "loader/entries/nixos-generation-0+2.conf",
            "loader/entries/.nixos-generation-4.conf.stagehand-tmp",
            "EFI/nixos/stale-initrd.efi",
        ]
    );
    // A present file with the wrong size (a damaged copy) is copied again.
    assert!(fp
        .copies
        .iter()
        .any(|c| c.dest == "EFI/nixos/sys1-initrd-initrd.efi"));
    assert!(!fp
        .copies
        .iter()
        .any(|c| c.dest == "EFI/nixos/kkkk-linux-6.1-bzImage.efi"));
}

/// Files another profile's entry (or an unreadable generation's entry) uses are kept.
#[test]
fn files_used_by_entries_we_do_not_rewrite_are_kept() {
    let mut i = inputs(2);
    i.unreadable.push(7);
    let esp = EspState {
        entries: vec![
            info("nixos-work-generation-3.conf", 100),
            info("nixos-generation-7+1-2.conf", 100),
        ],
        entry_texts: BTreeMap::from([
            (
                "nixos-work-generation-3.conf".to_string(),
                b"title NixOS [work]\nlinux /efi/nixos/WORK-bzImage.efi\n".to_vec(),
            ),
            (
                "nixos-generation-7+1-2.conf".to_string(),
                b"title NixOS\nlinux /EFI/nixos/seven-bzImage.efi\ninitrd /EFI/nixos/seven-initrd.efi\n"
                    .to_vec(),
            ),
        ]),
        nixos_files: vec![
            info("work-bzImage.efi", 10),
            info("seven-bzImage.efi", 10),
            info("seven-initrd.efi", 10),
            info("orphan.efi", 10),
        ],
        loader_conf: None,
    };
    let (fp, _) = plan(&i, 2, &SdBootConfig::default(), &esp).expect("plan");
    let removed: Vec<&str> = fp.removals.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(removed, ["EFI/nixos/orphan.efi"]);
}

#[test]
fn configuration_limit_keeps_the_default() {
    let cfg = SdBootConfig {
        configuration_limit: Some(2),
        ..SdBootConfig::default()
    };
    let gens = |default| -> BTreeSet<u64> {
        let (_, planned) = plan(&inputs(5), default, &cfg, &EspState::default()).expect("plan");
        planned.iter().map(|p| p.generation).collect()
    };
    assert_eq!(gens(5), BTreeSet::from([4, 5]));
    assert_eq!(gens(1), BTreeSet::from([1, 5]));
}

#[test]
fn counting_off_writes_plain_names() {
    let cfg = SdBootConfig {
        tries: None,
        ..SdBootConfig::default()
    };
    let (_, planned) = plan(&inputs(1), 1, &cfg, &EspState::default()).expect("plan");
    assert_eq!(planned[0].file_name, "nixos-generation-1.conf");
}

/// What systemd-boot will boot, simulated from the planned files: the default first;
/// once its tries are used up, the previous generation; never a specialisation.
#[test]
fn firmware_default_falls_back_to_the_previous_generation() {
    let (_, mut planned) = plan(
        &inputs(3),
        3,
        &SdBootConfig::default(),
        &EspState::default(),
    )
    .expect("plan");
    let booted = |planned: &[PlannedEntry]| {
        let items = menu(planned);
        let i = bls::select_default(&items, Some(DEFAULT_GLOB)).expect("some entry");
        items[i].name.stem.clone()
    };
    assert_eq!(booted(&planned), "nixos-generation-3");
    // Three failed boots: systemd-boot renamed +3 -> +2-1 -> +1-2 -> +0-3.
    for p in planned.iter_mut() {
        if p.id == "nixos-generation-3" {
            p.file_name = "nixos-generation-3+0-3.conf".into();
        }
    }
    assert_eq!(booted(&planned), "nixos-generation-2");
    // The menu order: default, fallbacks newest first, specialisations, bad last.
    let order: Vec<String> = menu(&planned).iter().map(|i| i.name.stem.clone()).collect();
    assert_eq!(
        order,
        [
            "nixos-generation-2",
            "nixos-generation-1",
            "nixos-generation-2-specialisation-debug",
            "nixos-generation-3",
        ]
    );
}

/// After a rollback the older generation is the default and boots first; the newer one
/// is not a fallback before the older ones.
#[test]
fn rolled_back_default_boots_first() {
    let (_, planned) = plan(
        &inputs(3),
        2,
        &SdBootConfig::default(),
        &EspState::default(),
    )
    .expect("plan");
    let order: Vec<String> = menu(&planned).iter().map(|i| i.name.stem.clone()).collect();
    assert_eq!(
        order,
        [
            "nixos-generation-2",
            "nixos-generation-1",
            "nixos-generation-3",
            "nixos-generation-2-specialisation-debug",
        ]
    );
}

#[test]
fn plan_errors() {
    let mut i = inputs(2);
    assert_eq!(
        plan(&i, 7, &SdBootConfig::default(), &EspState::default()).err(),
        Some(PlanError::DefaultMissing { generation: 7 })
    );
    i.generations[0].spec.initrd_secrets = Some(PathBuf::from("/nix/store/s/bin/append"));
    let e = plan(&i, 2, &SdBootConfig::default(), &EspState::default()).expect_err("secrets");
    assert!(e.to_string().contains("boot.initrd.secrets"), "{e}");
    let empty = Inputs::default();
    assert_eq!(
        plan(&empty, 1, &SdBootConfig::default(), &EspState::default()).err(),
        Some(PlanError::NoGenerations)
    );
}

#[test]
fn statuses_and_predicted_boot_from_esp_state() {
    let (fp, _) = plan(
        &inputs(2),
        2,
        &SdBootConfig::default(),
        &EspState::default(),
    )
    .expect("plan");
    let mut esp = EspState::default();
    for w in &fp.writes {
        if let Some(name) = w.dest.strip_prefix("loader/entries/") {
            // Generation 2 has used up its tries.
            let name = name.replace("nixos-generation-2+3", "nixos-generation-2+0-3");
            esp.entries.push(info(&name, 1));
            esp.entry_texts.insert(name, w.contents.clone());
        } else if w.dest == LOADER_CONF {
            esp.loader_conf = Some(w.contents.clone());
        }
    }
    let st = entry_statuses(&esp);
    assert_eq!(st.len(), 2);
    assert_eq!(st[&2].state, crate::entry_name::BootState::Bad);
    assert_eq!(st[&1].file_name, "nixos-generation-1+3.conf");
    assert_eq!(
        predicted_boot(&esp).as_deref(),
        Some("nixos-generation-1+3.conf")
    );
}

#[test]
fn managed_names() {
    assert!(is_managed_stem("nixos-generation-12"));
    assert!(is_managed_stem("NixOS-Generation-12"));
    assert!(is_managed_stem("nixos-generation-12-specialisation-x"));
    assert!(!is_managed_stem("nixos-generation-"));
    assert!(!is_managed_stem("nixos-generation-12-other"));
    assert!(!is_managed_stem("nixos-generation-12-specialisation-"));
    assert!(!is_managed_stem("nixos-foo-generation-1"));
}

/// `inputs(3)` with the admin's initrd for Linux `ours` (`None`: no modules in it);
/// generation 1 runs Linux 6.6.0, 2 (and its specialisation) and 3 run 6.1.0.
pub(crate) fn with_admin_initrd(ours: Option<&str>) -> Inputs {
    let mut i = inputs(3);
    for g in &mut i.generations {
        let v = if g.number == 1 { "6.6.0" } else { "6.1.0" };
        let tops: Vec<PathBuf> = std::iter::once(g.spec.toplevel.clone())
            .chain(g.spec.specialisations.values().map(|s| s.toplevel.clone()))
            .collect();
        for t in tops {
            g.modules_version.insert(t, v.into());
        }
    }
    i.with_initrd(crate::gather::AdminInitrd {
        path: PathBuf::from("/root/stagehand-initrd"),
        source: Source {
            canonical: PathBuf::from("/root/stagehand-initrd"),
            size: 4321,
            files: 1,
            tree: false,
            digest: Some("0123456789abcdef".repeat(4)),
        },
        kernel_version: ours.map(str::to_string),
    })
}

const OURS: &str = "/EFI/nixos/stagehand-0123456789abcdef0123456789abcdef-initrd.efi";

fn initrd_line(fp: &FilePlan, dest: &str) -> String {
    text(fp, dest)
        .lines()
        .find(|l| l.starts_with("initrd "))
        .map(|l| l["initrd ".len()..].to_string())
        .unwrap_or_default()
}

#[test]
fn the_admin_initrd_goes_to_generations_of_its_kernel_only() {
    let i = with_admin_initrd(Some("6.1.0"));
    let (fp, _) = plan(&i, 3, &SdBootConfig::default(), &EspState::default()).expect("plan");
    // Same kernel: ours, for the generation and its specialisation.
    assert_eq!(
        initrd_line(&fp, "loader/entries/nixos-generation-3+3.conf"),
        OURS
    );
    assert_eq!(
        initrd_line(&fp, "loader/entries/nixos-generation-2+3.conf"),
        OURS
    );
    assert_eq!(
        initrd_line(
            &fp,
            "loader/entries/nixos-generation-2-specialisation-debug+3.conf"
        ),
        OURS
    );
    // Another kernel: its own initrd, and a note saying why.
    assert_eq!(
        initrd_line(&fp, "loader/entries/nixos-generation-1+3.conf"),
        "/EFI/nixos/sys1-initrd-initrd.efi"
    );
    let notes = fp.notes.join("\n");
    assert!(
        notes.contains(
            "generation 1: keeps its own initrd /nix/store/sys1-initrd/initrd: its kernel \
             modules are for Linux 6.6.0, --initrd's for Linux 6.1.0"
        ),
        "{notes}"
    );
    assert!(
        notes.contains(
            "generation 3: initrd /root/stagehand-initrd (--initrd, modules for Linux 6.1.0)"
        ),
        "{notes}"
    );
    assert!(
        notes.contains("generation 2 (specialisation debug): initrd /root/stagehand-initrd"),
        "{notes}"
    );
    // The dry run shows the choice.
    assert!(fp
        .describe()
        .contains("note: generation 1: keeps its own initrd"));
    // Ours is copied once, from where the admin keeps it, under its content's name; the
    // initrds it replaces are not copied at all.
    let copies: Vec<(&str, &str)> = fp
        .copies
        .iter()
        .map(|c| (c.dest.as_str(), c.source.to_str().unwrap_or("")))
        .collect();
    assert_eq!(
        copies,
        [
            (
                "EFI/nixos/kkkk-linux-6.1-bzImage.efi",
                "/nix/store/kkkk-linux-6.1/bzImage"
            ),
            (
                "EFI/nixos/stagehand-0123456789abcdef0123456789abcdef-initrd.efi",
                "/root/stagehand-initrd"
            ),
            (
                "EFI/nixos/sys1-initrd-initrd.efi",
                "/nix/store/sys1-initrd/initrd"
            ),
        ]
    );
}

#[test]
fn an_admin_initrd_without_modules_serves_every_kernel() {
    let i = with_admin_initrd(None);
    let (fp, _) = plan(&i, 3, &SdBootConfig::default(), &EspState::default()).expect("plan");
    for g in 1..=3 {
        let dest = format!("loader/entries/nixos-generation-{g}+3.conf");
        assert_eq!(initrd_line(&fp, &dest), OURS, "{dest}");
    }
    assert!(
        fp.notes
            .iter()
            .all(|n| n.contains("holds no kernel modules")),
        "{:?}",
        fp.notes
    );
}

#[test]
fn the_modules_extension_wins_over_the_admin_initrd() {
    let mut i = with_admin_initrd(Some("6.1.0"));
    let ext = PathBuf::from("/nix/store/eeee-stagehand-initrd/initrd");
    i.sources
        .extend([source("/nix/store/eeee-stagehand-initrd/initrd", 5000)]);
    // Generation 3 and generation 1 (whose kernel does not match --initrd) carry it.
    for g in &mut i.generations {
        if g.number != 2 {
            g.spec.stagehand_initrd = Some(ext.clone());
        }
    }
    let (fp, _) = plan(&i, 3, &SdBootConfig::default(), &EspState::default()).expect("plan");
    let theirs = "/EFI/nixos/eeee-stagehand-initrd-initrd.efi";
    assert_eq!(
        initrd_line(&fp, "loader/entries/nixos-generation-3+3.conf"),
        theirs
    );
    assert_eq!(
        initrd_line(&fp, "loader/entries/nixos-generation-1+3.conf"),
        theirs
    );
    assert_eq!(
        initrd_line(&fp, "loader/entries/nixos-generation-2+3.conf"),
        OURS
    );
    assert!(
        fp.notes.contains(&format!(
            "generation 3: initrd {} (boot.json dev.stagehand.v1)",
            ext.display()
        )),
        "{:?}",
        fp.notes
    );
    // Without --initrd the extension still decides; nothing else changes.
    let mut plain = inputs(3);
    plain
        .sources
        .extend([source("/nix/store/eeee-stagehand-initrd/initrd", 5000)]);
    plain.generations[0].spec.stagehand_initrd = Some(ext.clone());
    let (fp, _) = plan(&plain, 3, &SdBootConfig::default(), &EspState::default()).expect("plan");
    assert_eq!(
        initrd_line(&fp, "loader/entries/nixos-generation-3+3.conf"),
        theirs
    );
    assert_eq!(
        initrd_line(&fp, "loader/entries/nixos-generation-2+3.conf"),
        "/EFI/nixos/sys2-initrd-initrd.efi"
    );
    assert_eq!(fp.notes.len(), 1, "{:?}", fp.notes);
}

#[test]
fn without_initrd_choices_there_are_no_notes() {
    let (fp, _) = plan(
        &inputs(3),
        3,
        &SdBootConfig::default(),
        &EspState::default(),
    )
    .expect("plan");
    assert!(fp.notes.is_empty(), "{:?}", fp.notes);
}
