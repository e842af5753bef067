//! TEMPORARY: the activation entry point stage 2 calls until the activation crate's own
//! `activate` (manifest + compiled plan) lands. Runs the two steps the boot spine needs:
//! users and groups, then /etc.

use std::fmt;
use std::path::{Path, PathBuf};

use stagehand_activation::rootfs::Root;
use stagehand_activation::{etc, users};

#[derive(Debug, Clone, Copy)]
pub enum Action {
    Boot,
}

pub struct ActivateOptions {
    pub root: PathBuf,
    pub dry_run: bool,
    pub action: Action,
}

pub struct ActivationReport {
    failures: Vec<String>,
}

impl ActivationReport {
    pub fn is_success(&self) -> bool {
        self.failures.is_empty()
    }
}

#[derive(Debug)]
pub struct ActivationError(String);

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    etc: Option<PathBuf>,
    users_groups: Option<PathBuf>,
}

pub fn activate(
    toplevel: &Path,
    opts: &ActivateOptions,
) -> Result<ActivationReport, ActivationError> {
    let _ = opts.action;
    let root =
        Root::open(&opts.root).map_err(|e| ActivationError(format!("cannot open root: {e}")))?;
    let manifest_path = toplevel.join("activation.json");
    let bytes = std::fs::read(&manifest_path)
        .map_err(|e| ActivationError(format!("{}: {e}", manifest_path.display())))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| ActivationError(format!("{}: {e}", manifest_path.display())))?;
    let mut failures = Vec::new();
    if let Some(spec_path) = &manifest.users_groups {
        let t = std::time::Instant::now();
        let result = std::fs::read(spec_path)
            .map_err(|e| format!("{}: {e}", spec_path.display()))
            .and_then(|b| {
                users::spec::UsersSpec::from_json(spec_path, &b).map_err(|e| e.to_string())
            })
            .and_then(|spec| {
                users::update_users(&root, &spec, opts.dry_run).map_err(|e| e.to_string())
            });
        match result {
            Ok(_) => log::info!("activation step users: {} ms", t.elapsed().as_millis()),
            Err(e) => {
                log::error!("activation step users failed: {e}");
                failures.push(e);
            }
        }
    }
    let etc_path = manifest.etc.unwrap_or_else(|| toplevel.join("etc"));
    let t = std::time::Instant::now();
    let result = etc::list_tree(&root, &etc_path)
        .and_then(|tree| {
            etc::setup_etc(
                &root,
                &tree,
                etc::EtcOptions {
                    skip_resolv_conf: false,
                },
                opts.dry_run,
            )
        })
        .map_err(|e| e.to_string());
    match result {
        Ok(out) => {
            log::info!("activation step etc: {} ms", t.elapsed().as_millis());
            failures.extend(out.issues.iter().map(|i| i.to_string()));
        }
        Err(e) => {
            log::error!("activation step etc failed: {e}");
            failures.push(e);
        }
    }
    if let Err(e) = std::os::unix::fs::symlink(toplevel, opts.root.join("run/current-system")) {
        log::warn!("cannot point /run/current-system at the generation: {e}");
    }
    Ok(ActivationReport { failures })
}
