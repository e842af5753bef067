//! The entries we want: one per kept generation and specialisation, newest first, each
//! with its title, version, sort key and `EFI/nixos/` files; and `loader.conf`.

use std::path::PathBuf;

use super::names::{efi_name, valid_specialisation_name};
use super::{PlanError, SdBootConfig, DEFAULT_GLOB, DEFAULT_SORT_KEY, ENTRY_PREFIX, NIXOS_DIR};
use crate::bls::{self, Entry};
use crate::date;
use crate::gather::{GenerationBoot, Inputs};
use crate::initrd_choice;
use crate::spec::BootSpec;

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

/// The entries we want, before matching them to existing files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// `(id, generation, entry)`, newest generation first.
    pub entries: Vec<(String, u64, Entry)>,
    pub warnings: Vec<String>,
    /// Which initrd each entry boots, when there was a choice.
    pub notes: Vec<String>,
}

/// The entries we want, newest generation first, before matching them to existing files.
pub fn desired_entries(
    inputs: &Inputs,
    default: u64,
    cfg: &SdBootConfig,
    machine_id: Option<&str>,
) -> Result<Desired, PlanError> {
    let mut out = Desired::default();
    let gens = kept_generations(inputs, default, cfg.configuration_limit)?;
    for g in &gens {
        let group = if g.number == default {
            ""
        } else if g.number < default {
            "-generation"
        } else {
            "-generation-newer"
        };
        let id = format!("{ENTRY_PREFIX}{}", g.number);
        let e = entry_for(
            inputs, g, &g.spec, None, group, machine_id, default, &mut out,
        )?;
        out.entries.push((id.clone(), g.number, e));
        for (name, s) in &g.spec.specialisations {
            if !valid_specialisation_name(name) {
                out.warnings.push(format!(
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
                &mut out,
            )?;
            out.entries
                .push((format!("{id}-specialisation-{name}"), g.number, e));
        }
    }
    Ok(out)
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

#[allow(clippy::too_many_arguments)]
fn entry_for(
    inputs: &Inputs,
    g: &GenerationBoot,
    spec: &BootSpec,
    specialisation: Option<&str>,
    group: &str,
    machine_id: Option<&str>,
    default: u64,
    out: &mut Desired,
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
        Ok(format!("/{NIXOS_DIR}/{}", efi_name(src)))
    };
    let choice = initrd_choice::choose(inputs, g, spec, specialisation);
    out.notes.extend(choice.note);
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
        initrd: choice.initrd.iter().map(file).collect::<Result<_, _>>()?,
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
