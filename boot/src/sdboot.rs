//! systemd-boot: Boot Loader Specification type #1 entries, one per generation and
//! specialisation, named as NixOS names them, plus `loader/loader.conf`.
//!
//! ## How the default survives a bad generation
//! systemd-boot boots the first entry, in menu order, whose ID matches `loader.conf`'s
//! `default` glob; a boot-counted entry with no tries left sorts after all others. An exact
//! `default` naming one entry keeps booting it even when it is bad (systemd#15256), so we
//! write `default nixos-generation-*` and make the generation we want booted sort first
//! instead, with `sort-key` groups that share the configured key as a prefix:
//!
//! | group | sort-key | order inside (version, descending) |
//! |---|---|---|
//! | the default generation | `nixos` | — |
//! | older generations | `nixos-generation` | newest first: the fallback chain |
//! | generations newer than the default (after a rollback) | `nixos-generation-newer` | newest first |
//! | specialisations | `nixos-specialisation` | newest first |
//!
//! So the menu reads top-down as "what boots, then what boots if that fails", and a
//! specialisation (a different configuration the user picks on purpose) is never an
//! automatic fallback. Grouping by prefix keeps NixOS entries together relative to other
//! operating systems' sort keys.
//!
//! ## Boot counting
//! A new entry file gets `+<tries>`; an existing entry keeps its file name, whatever its
//! counter says, when its contents are rewritten — so re-running the installer never resets
//! an assessment in progress or revives a bad entry.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use super::bls::{self, Entry};
use super::date;
use super::entry_name::{Counter, EntryName};
use super::esp::{BootFs, EspError, FileInfo, TMP_SUFFIX};
use super::gather::{GenerationBoot, Inputs, Source, STORE_DIR};
use super::plan::{Copy, FilePlan, Removal, Write};
use super::spec::BootSpec;

pub const ENTRIES_DIR: &str = "loader/entries";
pub const NIXOS_DIR: &str = "EFI/nixos";
pub const LOADER_CONF: &str = "loader/loader.conf";
/// Prefix of every entry file we manage; entries of other profiles or systems never match.
pub const ENTRY_PREFIX: &str = "nixos-generation-";
/// The `loader.conf` default: every generation, so a bad one is skipped.
pub const DEFAULT_GLOB: &str = "nixos-generation-*";
/// NixOS's `sortKey` default.
pub const DEFAULT_SORT_KEY: &str = "nixos";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdBootConfig {
    /// Menu timeout in seconds; `None` leaves systemd-boot's default.
    pub timeout: Option<u32>,
    /// Allow editing the kernel command line in the menu (root access for anyone at the
    /// keyboard, hence off by default).
    pub editor: bool,
    pub console_mode: Option<String>,
    /// Keep at most this many generations (the default generation is always kept).
    pub configuration_limit: Option<usize>,
    /// Boot counting: tries for new entries; `None` turns counting off for new entries.
    pub tries: Option<u32>,
}

impl Default for SdBootConfig {
    fn default() -> Self {
        SdBootConfig {
            timeout: Some(5),
            editor: false,
            console_mode: None,
            configuration_limit: None,
            tries: Some(3),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    NoGenerations,
    DefaultMissing {
        generation: u64,
    },
    /// `initrdSecrets` needs a program run at install time, which we do not do yet.
    InitrdSecrets {
        generation: u64,
        program: PathBuf,
    },
    /// Internal: a path was not measured by `gather`.
    Unmeasured {
        path: PathBuf,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::NoGenerations => write!(
                f,
                "no bootable generation: refusing to write a boot menu without entries"
            ),
            PlanError::DefaultMissing { generation } => write!(
                f,
                "generation {generation} should become the default but is not among the \
                 readable generations"
            ),
            PlanError::InitrdSecrets {
                generation,
                program,
            } => write!(
                f,
                "generation {generation} needs initrd secrets appended by {} (boot.initrd.secrets), \
                 which stagehand does not support yet; remove boot.initrd.secrets or install \
                 with NixOS's builder",
                program.display()
            ),
            PlanError::Unmeasured { path } => {
                write!(f, "internal error: {} was not measured", path.display())
            }
        }
    }
}

impl std::error::Error for PlanError {}

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

/// Is `stem` (file name without counter and suffix) one we write?
/// `nixos-generation-<N>` or `nixos-generation-<N>-specialisation-<name>`.
pub fn is_managed_stem(stem: &str) -> bool {
    let lower = stem.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix(ENTRY_PREFIX) else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    let tail = &rest[digits..];
    tail.is_empty()
        || tail
            .strip_prefix("-specialisation-")
            .is_some_and(|n| !n.is_empty())
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

/// File name in `EFI/nixos/` for a kernel, initrd or device tree: the store path with `/`
/// turned into `-` (`<hash>-linux-6.1-bzImage.efi`, like NixOS's builder), so each content
/// is stored once; outside the store, the content's SHA-256 stands in for the hash.
pub fn efi_name(path: &Path, source: &Source) -> String {
    format!("{}.efi", clean_name(path, source))
}

/// `<hash>-<name>-<file>` for a store path, `<sha256>-<file>` otherwise.
pub fn clean_name(path: &Path, source: &Source) -> String {
    let canon = &source.canonical;
    if let Ok(rel) = canon.strip_prefix(STORE_DIR) {
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if !parts.is_empty() {
            return sanitize(&parts.join("-"));
        }
    }
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let digest = source.digest.as_deref().unwrap_or("");
    sanitize(&format!("{}-{base}", &digest[..digest.len().min(32)]))
}

/// Keep file names within what FAT and the BLS allow.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Specialisation names become part of a file name; the BLS allows `A-Za-z0-9+-_.`.
fn valid_specialisation_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// One entry to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEntry {
    /// `nixos-generation-N[-specialisation-X]`.
    pub id: String,
    pub generation: u64,
    pub entry: Entry,
    /// The file it goes to (existing name with its counter, or a new one).
    pub file_name: String,
}

/// Entries as `(id, generation, entry)`, and warnings.
pub type Desired = (Vec<(String, u64, Entry)>, Vec<String>);

/// The entries we want, newest generation first, before matching them to existing files.
pub fn desired_entries(
    inputs: &Inputs,
    default: u64,
    cfg: &SdBootConfig,
    machine_id: Option<&str>,
) -> Result<Desired, PlanError> {
    let mut warnings = Vec::new();
    let gens = kept_generations(inputs, default, cfg.configuration_limit)?;
    let mut out = Vec::new();
    for g in &gens {
        let group = if g.number == default {
            ""
        } else if g.number < default {
            "-generation"
        } else {
            "-generation-newer"
        };
        let id = format!("{ENTRY_PREFIX}{}", g.number);
        let e = entry_for(inputs, g, &g.spec, None, group, machine_id, default)?;
        out.push((id.clone(), g.number, e));
        for (name, s) in &g.spec.specialisations {
            if !valid_specialisation_name(name) {
                warnings.push(format!(
                    "generation {}: specialisation {name:?} has characters a boot entry file \
                     name cannot hold (allowed: A-Z a-z 0-9 - _ .); it gets no entry",
                    g.number
                ));
                continue;
            }
            let e = entry_for(
                inputs,
                g,
                s,
                Some(name),
                "-specialisation",
                machine_id,
                default,
            )?;
            out.push((format!("{id}-specialisation-{name}"), g.number, e));
        }
    }
    Ok((out, warnings))
}

/// Newest first: the default generation and the newest others, `limit` in all. The
/// default always stays: after a rollback it may be older than the newest `limit`.
fn kept_generations(
    inputs: &Inputs,
    default: u64,
    limit: Option<usize>,
) -> Result<Vec<&GenerationBoot>, PlanError> {
    if inputs.generations.is_empty() {
        return Err(PlanError::NoGenerations);
    }
    let mut gens: Vec<&GenerationBoot> = inputs.generations.iter().collect();
    gens.sort_by_key(|g| std::cmp::Reverse(g.number));
    if !gens.iter().any(|g| g.number == default) {
        return Err(PlanError::DefaultMissing {
            generation: default,
        });
    }
    let mut others = limit.unwrap_or(usize::MAX).saturating_sub(1);
    gens.retain(|g| {
        if g.number == default {
            return true;
        }
        let keep = others > 0;
        others = others.saturating_sub(1);
        keep
    });
    Ok(gens)
}

fn entry_for(
    inputs: &Inputs,
    g: &GenerationBoot,
    spec: &BootSpec,
    specialisation: Option<&str>,
    group: &str,
    machine_id: Option<&str>,
    default: u64,
) -> Result<Entry, PlanError> {
    if let Some(program) = &spec.initrd_secrets {
        if g.number == default {
            return Err(PlanError::InitrdSecrets {
                generation: g.number,
                program: program.clone(),
            });
        }
    }
    let file = |p: &PathBuf| -> Result<String, PlanError> {
        let src = inputs
            .sources
            .get(p)
            .ok_or_else(|| PlanError::Unmeasured { path: p.clone() })?;
        Ok(format!("/{NIXOS_DIR}/{}", efi_name(p, src)))
    };
    let mut options = format!("init={}", spec.init.display());
    for p in &spec.kernel_params {
        options.push(' ');
        options.push_str(p);
    }
    let base = spec.sort_key.as_deref().unwrap_or(DEFAULT_SORT_KEY);
    Ok(Entry {
        title: Some(match specialisation {
            Some(name) => format!("NixOS ({name})"),
            None => "NixOS".to_string(),
        }),
        version: Some(format!(
            "Generation {} {}, built on {}",
            g.number,
            spec.label,
            date::date(g.built)
        )),
        machine_id: machine_id.map(str::to_string),
        sort_key: Some(format!("{base}{group}")),
        linux: Some(file(&spec.kernel)?),
        initrd: spec.initrd.iter().map(file).collect::<Result<_, _>>()?,
        options: vec![options],
        devicetree: spec.devicetree.as_ref().map(file).transpose()?,
        other: Vec::new(),
    })
}

/// `loader/loader.conf`.
pub fn render_loader_conf(cfg: &SdBootConfig) -> String {
    let mut s = String::from(
        "# Written by stagehand install-bootloader; changes here are lost on the next install.\n",
    );
    if let Some(t) = cfg.timeout {
        s.push_str(&format!("timeout {t}\n"));
    }
    // A glob, never one entry: see the module documentation.
    s.push_str(&format!("default {DEFAULT_GLOB}\n"));
    s.push_str(if cfg.editor {
        "editor yes\n"
    } else {
        "editor no\n"
    });
    if let Some(m) = &cfg.console_mode {
        s.push_str(&format!("console-mode {m}\n"));
    }
    s
}

/// Plan the ESP for `inputs` with generation `default` booted by default.
pub fn plan(
    inputs: &Inputs,
    default: u64,
    cfg: &SdBootConfig,
    esp: &EspState,
) -> Result<(FilePlan, Vec<PlannedEntry>), PlanError> {
    let (desired, mut warnings) =
        desired_entries(inputs, default, cfg, inputs.machine_id.as_deref())?;
    warnings.extend(inputs.skipped.iter().cloned());

    // Existing managed entry files by lower-cased stem. Two files for one entry (only by
    // hand or a foreign tool) keep the one the loader would prefer; the others go.
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

    let mut fp = FilePlan {
        dirs: vec![
            "loader".into(),
            ENTRIES_DIR.into(),
            "EFI".into(),
            NIXOS_DIR.into(),
        ],
        ..FilePlan::default()
    };
    // Directories that exist need no space; keep the list for creation only.
    let mut planned = Vec::new();
    let mut kept_files: BTreeSet<String> = BTreeSet::new();
    let mut referenced: BTreeMap<String, PathBuf> = BTreeMap::new();

    for (id, generation, entry) in desired {
        for path in entry
            .linux
            .iter()
            .chain(&entry.initrd)
            .chain(&entry.devicetree)
        {
            if let Some(name) = path.strip_prefix(&format!("/{NIXOS_DIR}/")) {
                if let Some(src) = source_for(inputs, name) {
                    referenced.insert(name.to_string(), src);
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
        kept_files.insert(file_name.clone());
        planned.push(PlannedEntry {
            id,
            generation,
            entry,
            file_name,
        });
    }

    // Copies: every referenced file not already there with the right size.
    let present: BTreeMap<&str, &FileInfo> = esp
        .nixos_files
        .iter()
        .map(|f| (f.name.as_str(), f))
        .collect();
    for (name, key) in &referenced {
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

    // loader.conf last among the writes: by then every entry it could select exists.
    let conf = render_loader_conf(cfg);
    if esp.loader_conf.as_deref() != Some(conf.as_bytes()) {
        fp.writes.push(Write {
            dest: LOADER_CONF.into(),
            contents: conf.into_bytes(),
        });
    }

    // Removals: managed entries not kept, files in EFI/nixos nothing references (NixOS owns
    // that directory; hidden names are left alone except our own debris).
    let mut still_referenced: BTreeSet<String> = BTreeSet::new();
    // What the firmware boots now: removed only once the new entries are written.
    let booted_now = predicted_boot(esp);
    let booted_files: BTreeSet<String> = booted_now
        .as_ref()
        .and_then(|n| esp.entry_texts.get(n))
        .map(|t| nixos_files_named(&String::from_utf8_lossy(t)))
        .unwrap_or_default()
        .into_iter()
        .collect();
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
                boots_now: booted_now.as_deref() == Some(f.name.as_str()),
            });
        } else if !kept_files.contains(&f.name) {
            // An entry that stays as it is (foreign, or of an unreadable generation): the
            // files it names must stay too.
            if let Some(text) = esp.entry_texts.get(&f.name) {
                still_referenced.extend(nixos_files_named(&String::from_utf8_lossy(text)));
            }
        }
    }
    for f in &esp.nixos_files {
        let unreferenced = !f.dir
            && !f.name.starts_with('.')
            && !referenced.contains_key(&f.name)
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
    fp.warnings = warnings;
    Ok((fp, planned))
}

/// `N` from a managed stem, main entry or specialisation.
fn generation_of_any(stem: &str) -> Option<u64> {
    if !is_managed_stem(stem) {
        return None;
    }
    let rest = stem.get(ENTRY_PREFIX.len()..)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
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

/// A temporary left by an interrupted run of ours.
pub fn is_debris(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TMP_SUFFIX)
}

/// Lower is preferred: good, then most tries left, then fewest done.
fn preference(n: &EntryName) -> (u8, std::cmp::Reverse<u32>, u32) {
    match n.counter {
        None => (0, std::cmp::Reverse(0), 0),
        Some(c) => (1, std::cmp::Reverse(c.left), c.done_or_zero()),
    }
}

/// The `sources` key whose EFI name is `name`.
fn source_for(inputs: &Inputs, name: &str) -> Option<PathBuf> {
    inputs
        .sources
        .iter()
        .find(|(p, s)| !s.tree && efi_name(p, s) == name)
        .map(|(p, _)| p.clone())
}

/// The menu as systemd-boot will order it, from the planned entries (for `--dry-run`,
/// `generations`, and tests).
pub fn menu(planned: &[PlannedEntry]) -> Vec<bls::MenuItem> {
    let mut items: Vec<bls::MenuItem> = planned
        .iter()
        .filter_map(|p| bls::MenuItem::new(&p.file_name, &p.entry))
        .collect();
    bls::sort(&mut items);
    items
}

/// The entry file of one generation (not a specialisation) as found on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryStatus {
    pub generation: u64,
    pub file_name: String,
    pub state: super::entry_name::BootState,
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
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

    #[test]
    fn names_outside_the_store_use_the_content_digest() {
        let src = Source {
            canonical: PathBuf::from("/boot-images/vmlinuz"),
            size: 1,
            files: 1,
            tree: false,
            digest: Some("ab".repeat(32)),
        };
        assert_eq!(
            efi_name(Path::new("/boot-images/vmlinuz"), &src),
            format!("{}-vmlinuz.efi", "ab".repeat(16))
        );
    }
}
