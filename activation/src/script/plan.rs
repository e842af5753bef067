//! The activation plan of a generation nixpkgs built: its `activate` script read into the
//! same [`CompiledPlan`] an `activation.json` gives, so the one executor runs both.
//!
//! Recognised built-ins become native steps (the users spec and the etc tree are read and
//! checked here, before anything runs); every other snippet, and a built-in whose text we
//! do not recognise exactly, is a bash step whose script is the `activate` script's own
//! prelude (its `PATH` loop, `source …/lib.sh`, …) followed by the snippet's text. The
//! order is the script's. Nothing is written: not into the store, not anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use stagehand_common::rootfs::Root;

use super::{classify, parse, ActivateScript, Builtin};
use crate::compiled::CompiledPlan;
use crate::etc;
use crate::manifest::{LoadError, Snippet};
use crate::users::{SpecError, UsersSpec};

/// `<toplevel>/activate`, as top-level.nix links it.
pub const ACTIVATE_NAME: &str = "activate";
/// `<toplevel>/dry-activate`.
pub const DRY_ACTIVATE_NAME: &str = "dry-activate";
/// The largest activate script read (they are tens of KiB; this is a wrong file).
const MAX_SCRIPT_BYTES: u64 = 16 << 20;

/// The plan for the generation at `top` (canonical, inside `root`) from its scripts.
pub fn from_script(root: &Root, top: &Path) -> Result<CompiledPlan, LoadError> {
    let path = top.join(ACTIVATE_NAME);
    let script = read_script(root, &path)?.ok_or_else(|| LoadError::ScriptRead {
        path: root.host_path(&path),
        error: std::io::ErrorKind::NotFound.into(),
    })?;
    let dry_path = top.join(DRY_ACTIVATE_NAME);
    // Which snippets support dry activation: those with their text in dry-activate (the
    // others are a placeholder line there). Without the file, none.
    let dry_capable: BTreeSet<String> = match read_script(root, &dry_path)? {
        Some(dry) => dry
            .snippets
            .into_iter()
            .filter(|s| !s.dry_placeholder)
            .map(|s| s.name)
            .collect(),
        None => BTreeSet::new(),
    };
    let top_str = top.to_string_lossy().into_owned();
    if let Some(sc) = &script.system_config {
        if root.canonicalize(Path::new(sc)).ok().as_deref() != Some(top) {
            log::warn!(
                "{}: systemConfig is {sc}, not this generation ({top_str}); activating \
                 {top_str}",
                root.host_path(&path).display()
            );
        }
    }
    let mut plan = CompiledPlan {
        toplevel: top_str,
        etc: None,
        users: None,
        users_source: None,
        binsh: None,
        usrbinenv: None,
        modprobe: None,
        firmware: None,
        shell: Some(script.shell.clone()),
        path: None,
        snippets: BTreeMap::new(),
        order: Vec::new(),
    };
    for s in &script.snippets {
        let builtin = classify(&s.name, &s.text);
        let step = match builtin {
            Some(b) => native_step(root, &mut plan, &s.name, b)?,
            None => {
                log::debug!("activate: snippet {} runs as bash", s.name);
                plan.snippets.insert(
                    s.name.clone(),
                    bash_snippet(&script, &s.name, &s.text, dry_capable.contains(&s.name)),
                );
                Some(s.name.clone())
            }
        };
        if let Some(step) = step {
            plan.order.push(step);
        }
    }
    if !script.tail.is_empty() {
        // Lines after the last snippet that are not the usual current-system link: run
        // them as one more bash step, last, as the script would.
        let name = "activate-tail".to_owned();
        let text = script.tail.join("\n");
        log::warn!(
            "{}: running lines after the last snippet as bash: {}",
            root.host_path(&path).display(),
            text.replace('\n', "; ")
        );
        plan.snippets
            .insert(name.clone(), bash_snippet(&script, &name, &text, false));
        plan.order.push(name);
    }
    Ok(plan)
}

fn read_script(root: &Root, path: &Path) -> Result<Option<ActivateScript>, LoadError> {
    let read_err = |error| LoadError::ScriptRead {
        path: root.host_path(path),
        error,
    };
    let Some(bytes) = root.read_opt(path).map_err(read_err)? else {
        return Ok(None);
    };
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_SCRIPT_BYTES {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} bytes, more than an activate script can be ({} MiB)",
                bytes.len(),
                MAX_SCRIPT_BYTES >> 20
            ),
        )));
    }
    parse(&bytes).map(Some).map_err(|error| LoadError::Script {
        path: root.host_path(path),
        error,
    })
}

/// A bash step: the script's prelude, then the snippet's text.
fn bash_snippet(script: &ActivateScript, name: &str, text: &str, dry: bool) -> Snippet {
    let text = if script.prelude.is_empty() {
        text.to_owned()
    } else {
        format!("{}\n{text}", script.prelude)
    };
    Snippet {
        name: name.to_owned(),
        deps: Vec::new(),
        text,
        supports_dry_activation: dry,
    }
}

/// Fill the plan for a recognised built-in; the step name to run, if any.
fn native_step(
    root: &Root,
    plan: &mut CompiledPlan,
    name: &str,
    builtin: Builtin,
) -> Result<Option<String>, LoadError> {
    let step = match builtin {
        // Empty text: NixOS runs nothing (userborn's users, stdio, var, groups).
        Builtin::Empty => return Ok(None),
        Builtin::Users { spec } => {
            let path = Path::new(&spec);
            let bytes = root.read(path).map_err(|error| {
                LoadError::Users(SpecError::Read {
                    path: root.host_path(path),
                    error,
                })
            })?;
            plan.users = Some(
                UsersSpec::from_json(&root.host_path(path), &bytes).map_err(LoadError::Users)?,
            );
            plan.users_source = Some(spec);
            "users"
        }
        Builtin::Etc { tree } => {
            plan.etc = Some(etc::list_tree(root, Path::new(&tree)).map_err(LoadError::Etc)?);
            "etc"
        }
        Builtin::Binsh { target } => {
            plan.binsh = Some(target);
            "binsh"
        }
        Builtin::Usrbinenv { target } => {
            plan.usrbinenv = Some(target);
            "usrbinenv"
        }
        Builtin::Modprobe { path } => {
            plan.modprobe = Some(path);
            "modprobe"
        }
        Builtin::Udevd { firmware } => {
            plan.firmware = Some(firmware);
            "udevd"
        }
        Builtin::Specialfs => "specialfs",
        Builtin::Hashes => "hashes",
    };
    debug_assert_eq!(step, name);
    Ok(Some(step.to_owned()))
}
