//! The pure decision for systemd-boot: the generations and what is on the ESP now → the
//! files to write, copy and remove ([`FilePlan`]) and the entries as they will be.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::entries::{desired_entries, render_loader_conf, PlannedEntry};
use super::names::{efi_name, generation_of_any, is_debris, is_managed_stem, preference};
use super::state::{predicted_boot, EspState};
use super::{PlanError, SdBootConfig, ENTRIES_DIR, LOADER_CONF, NIXOS_DIR};
use crate::bls::Entry;
use crate::entry_name::{Counter, EntryName};
use crate::esp::FileInfo;
use crate::gather::Inputs;
use crate::plan::{Copy, FilePlan, Removal, Write};

/// Plan the ESP for `inputs` with generation `default` booted by default.
pub fn plan(
    inputs: &Inputs,
    default: u64,
    cfg: &SdBootConfig,
    esp: &EspState,
) -> Result<(FilePlan, Vec<PlannedEntry>), PlanError> {
    let desired = desired_entries(inputs, default, cfg, inputs.machine_id.as_deref())?;
    let mut warnings = desired.warnings;
    warnings.extend(inputs.skipped.iter().cloned());
    // Directories that exist need no space; keep the list for creation only.
    let mut fp = FilePlan {
        dirs: vec![
            "loader".into(),
            ENTRIES_DIR.into(),
            "EFI".into(),
            NIXOS_DIR.into(),
        ],
        ..FilePlan::default()
    };
    let entries = write_entries(inputs, cfg, esp, desired.entries, &mut fp);
    copy_referenced_files(inputs, esp, &entries.referenced, &mut fp)?;
    // loader.conf last among the writes: by then every entry it could select exists.
    write_loader_conf(cfg, esp, &mut fp);
    remove_unused(inputs, esp, &entries, &mut fp);
    fp.warnings = warnings;
    fp.notes = desired.notes;
    Ok((fp, entries.planned))
}

/// The entries as they will be, and what they keep on the ESP.
struct NewEntries {
    planned: Vec<PlannedEntry>,
    /// Entry file names that stay (rewritten or already right).
    kept_files: BTreeSet<String>,
    /// `EFI/nixos/` file name → the `sources` key it is copied from.
    referenced: BTreeMap<String, PathBuf>,
}

/// Existing managed entry files by lower-cased stem. Two files for one entry (only by hand
/// or a foreign tool) keep the one the loader would prefer, first; the others go.
fn existing_entry_files(esp: &EspState) -> BTreeMap<String, Vec<(EntryName, String)>> {
    let mut existing: BTreeMap<String, Vec<(EntryName, String)>> = BTreeMap::new();
    for f in &esp.entries {
        if f.dir {
            continue;
        }
        if let Some(n) = EntryName::from_file_name(&f.name) {
            if n.suffix == ".conf" && is_managed_stem(&n.stem) {
                existing
                    .entry(n.key())
                    .or_default()
                    .push((n, f.name.clone()));
            }
        }
    }
    for names in existing.values_mut() {
        names.sort_by_key(|n| preference(&n.0));
    }
    existing
}

/// Each desired entry goes to its existing file (keeping the counter) or a new one with
/// `+<tries>`; only a file whose text changes is written.
fn write_entries(
    inputs: &Inputs,
    cfg: &SdBootConfig,
    esp: &EspState,
    desired: Vec<(String, u64, Entry)>,
    fp: &mut FilePlan,
) -> NewEntries {
    let existing = existing_entry_files(esp);
    let mut new = NewEntries {
        planned: Vec::new(),
        kept_files: BTreeSet::new(),
        referenced: BTreeMap::new(),
    };
    for (id, generation, entry) in desired {
        for path in entry
            .linux
            .iter()
            .chain(&entry.initrd)
            .chain(&entry.devicetree)
        {
            if let Some(name) = path.strip_prefix(&format!("/{NIXOS_DIR}/")) {
                if let Some(src) = source_for(inputs, name) {
                    new.referenced.insert(name.to_string(), src);
                }
            }
        }
        let text = entry.render();
        let file_name = match existing
            .get(&id.to_ascii_lowercase())
            .and_then(|v| v.first())
        {
            Some((_, raw)) => raw.clone(),
            None => EntryName {
                stem: id.clone(),
                counter: cfg.tries.map(|left| Counter { left, done: None }),
                suffix: ".conf".into(),
            }
            .file_name(),
        };
        if esp.entry_texts.get(&file_name).map(Vec::as_slice) != Some(text.as_bytes()) {
            fp.writes.push(Write {
                dest: format!("{ENTRIES_DIR}/{file_name}"),
                contents: text.into_bytes(),
            });
        }
        new.kept_files.insert(file_name.clone());
        new.planned.push(PlannedEntry {
            id,
            generation,
            entry,
            file_name,
        });
    }
    new
}

/// Copies: every referenced file not already there with the right size.
fn copy_referenced_files(
    inputs: &Inputs,
    esp: &EspState,
    referenced: &BTreeMap<String, PathBuf>,
    fp: &mut FilePlan,
) -> Result<(), PlanError> {
    let present: BTreeMap<&str, &FileInfo> = esp
        .nixos_files
        .iter()
        .map(|f| (f.name.as_str(), f))
        .collect();
    for (name, key) in referenced {
        let Some(src) = inputs.sources.get(key) else {
            return Err(PlanError::Unmeasured { path: key.clone() });
        };
        let ok = present
            .get(name.as_str())
            .is_some_and(|f| !f.dir && f.size == src.size);
        if !ok {
            fp.copies.push(Copy {
                source: src.canonical.clone(),
                dest: format!("{NIXOS_DIR}/{name}"),
                size: src.size,
                files: 1,
                tree: false,
            });
        }
    }
    Ok(())
}

fn write_loader_conf(cfg: &SdBootConfig, esp: &EspState, fp: &mut FilePlan) {
    let conf = render_loader_conf(cfg);
    if esp.loader_conf.as_deref() != Some(conf.as_bytes()) {
        fp.writes.push(Write {
            dest: LOADER_CONF.into(),
            contents: conf.into_bytes(),
        });
    }
}

/// Removals: managed entries not kept, files in EFI/nixos nothing references (NixOS owns
/// that directory; hidden names are left alone except our own debris).
fn remove_unused(inputs: &Inputs, esp: &EspState, new: &NewEntries, fp: &mut FilePlan) {
    // What the firmware boots now: removed only once the new entries are written.
    let booted_now = predicted_boot(esp);
    let booted_files: BTreeSet<String> = booted_now
        .as_ref()
        .and_then(|n| esp.entry_texts.get(n))
        .map(|t| nixos_files_named(&String::from_utf8_lossy(t)))
        .unwrap_or_default()
        .into_iter()
        .collect();
    let still_referenced =
        remove_unused_entries(inputs, esp, &new.kept_files, booted_now.as_deref(), fp);
    for f in &esp.nixos_files {
        let unreferenced = !f.dir
            && !f.name.starts_with('.')
            && !new.referenced.contains_key(&f.name)
            && !still_referenced.contains(&f.name.to_ascii_lowercase());
        if unreferenced || is_debris(&f.name) {
            fp.removals.push(Removal {
                path: format!("{NIXOS_DIR}/{}", f.name),
                size: f.size,
                tree: f.dir,
                boots_now: booted_files.contains(&f.name.to_ascii_lowercase()),
            });
        }
    }
}

/// Our entries that are not kept (and our debris) go; returns the `EFI/nixos/` files that
/// entries staying as they are still name.
fn remove_unused_entries(
    inputs: &Inputs,
    esp: &EspState,
    kept_files: &BTreeSet<String>,
    booted_now: Option<&str>,
    fp: &mut FilePlan,
) -> BTreeSet<String> {
    let mut still_referenced: BTreeSet<String> = BTreeSet::new();
    for f in &esp.entries {
        if f.dir {
            continue;
        }
        let name = EntryName::from_file_name(&f.name).filter(|n| n.suffix == ".conf");
        let ours = name.as_ref().is_some_and(|n| is_managed_stem(&n.stem));
        // A generation that exists but could not be read keeps its entry untouched.
        let unreadable = name
            .as_ref()
            .and_then(|n| generation_of_any(&n.stem))
            .is_some_and(|g| inputs.unreadable.contains(&g));
        let removed = (ours && !unreadable && !kept_files.contains(&f.name)) || is_debris(&f.name);
        if removed {
            fp.removals.push(Removal {
                path: format!("{ENTRIES_DIR}/{}", f.name),
                size: f.size,
                tree: false,
                boots_now: booted_now == Some(f.name.as_str()),
            });
        } else if !kept_files.contains(&f.name) {
            // An entry that stays as it is (foreign, or of an unreadable generation): the
            // files it names must stay too.
            if let Some(text) = esp.entry_texts.get(&f.name) {
                still_referenced.extend(nixos_files_named(&String::from_utf8_lossy(text)));
            }
        }
    }
    still_referenced
}

/// Lower-cased names of the `EFI/nixos/` files an entry's text refers to (FAT compares
/// names without case, and other tools may spell the directory `efi/nixos`).
fn nixos_files_named(text: &str) -> Vec<String> {
    let e = Entry::parse(text);
    let prefix = format!("{}/", NIXOS_DIR.to_ascii_lowercase());
    e.linux
        .iter()
        .chain(&e.initrd)
        .chain(&e.devicetree)
        .chain(e.other.iter().filter(|(k, _)| k == "efi").map(|(_, v)| v))
        .filter_map(|p| {
            let p = p
                .trim_start_matches('/')
                .replace('\\', "/")
                .to_ascii_lowercase();
            p.strip_prefix(&prefix).map(str::to_string)
        })
        .collect()
}

/// The `sources` key whose EFI name is `name`.
fn source_for(inputs: &Inputs, name: &str) -> Option<PathBuf> {
    inputs
        .sources
        .iter()
        .find(|(_, s)| !s.tree && efi_name(s) == name)
        .map(|(p, _)| p.clone())
}
