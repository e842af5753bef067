//! What is on the ESP now: read once ([`scan`]) for the planner, and judged without
//! writing — each generation's entry and its counter, and the entry the firmware will boot.

use std::collections::BTreeMap;

use super::{ENTRIES_DIR, ENTRY_PREFIX, LOADER_CONF, NIXOS_DIR};
use crate::bls::{self, Entry};
use crate::entry_name::EntryName;
use crate::esp::{BootFs, EspError, FileInfo};

/// What is on the ESP now, as far as the planner cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EspState {
    /// File names in `loader/entries/`.
    pub entries: Vec<FileInfo>,
    /// Contents of every `.conf` entry, by file name.
    pub entry_texts: BTreeMap<String, Vec<u8>>,
    /// Files in `EFI/nixos/`.
    pub nixos_files: Vec<FileInfo>,
    pub loader_conf: Option<Vec<u8>>,
}

/// Read the ESP state the planner needs.
pub fn scan(fs: &BootFs) -> Result<EspState, EspError> {
    let entries = fs
        .list(ENTRIES_DIR)
        .map_err(fs.err(ENTRIES_DIR, "list"))?
        .unwrap_or_default();
    // Every entry is read, not only ours: another profile's entries may share files in
    // EFI/nixos, and a file is only removed when no entry at all refers to it.
    let mut entry_texts = BTreeMap::new();
    for e in &entries {
        let is_entry = EntryName::from_file_name(&e.name).is_some_and(|n| n.suffix == ".conf");
        if is_entry && !e.dir {
            let rel = format!("{ENTRIES_DIR}/{}", e.name);
            if let Some(text) = fs.read(&rel).map_err(fs.err(&rel, "read"))? {
                entry_texts.insert(e.name.clone(), text);
            }
        }
    }
    Ok(EspState {
        entries,
        entry_texts,
        nixos_files: fs
            .list(NIXOS_DIR)
            .map_err(fs.err(NIXOS_DIR, "list"))?
            .unwrap_or_default(),
        loader_conf: fs.read(LOADER_CONF).map_err(fs.err(LOADER_CONF, "read"))?,
    })
}

/// The entry file of one generation (not a specialisation) as found on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryStatus {
    pub generation: u64,
    pub file_name: String,
    pub state: crate::entry_name::BootState,
}

/// `N` from a managed main-entry stem `nixos-generation-N`.
fn generation_of(stem: &str) -> Option<u64> {
    let rest = stem.to_ascii_lowercase();
    let digits = rest.strip_prefix(ENTRY_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Main entries found on the ESP, by generation.
pub fn entry_statuses(esp: &EspState) -> BTreeMap<u64, EntryStatus> {
    let mut out = BTreeMap::new();
    for f in esp.entries.iter().filter(|f| !f.dir) {
        let Some(n) = EntryName::from_file_name(&f.name) else {
            continue;
        };
        if n.suffix != ".conf" {
            continue;
        }
        if let Some(g) = generation_of(&n.stem) {
            out.insert(
                g,
                EntryStatus {
                    generation: g,
                    file_name: f.name.clone(),
                    state: n.state(),
                },
            );
        }
    }
    out
}

/// The entry file systemd-boot will boot next without EFI-variable overrides, judged from
/// our entries and `loader.conf`'s `default` (other systems' entries are not read).
pub fn predicted_boot(esp: &EspState) -> Option<String> {
    let conf = esp
        .loader_conf
        .as_deref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let default = conf.lines().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix("default")?;
        rest.starts_with([' ', '\t'])
            .then(|| rest.trim().to_string())
    });
    let mut items: Vec<bls::MenuItem> = esp
        .entry_texts
        .iter()
        .filter_map(|(name, text)| {
            bls::MenuItem::new(name, &Entry::parse(&String::from_utf8_lossy(text)))
        })
        .collect();
    bls::sort(&mut items);
    bls::select_default(&items, default.as_deref()).map(|i| items[i].name.file_name())
}
