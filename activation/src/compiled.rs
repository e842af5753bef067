//! The compiled activation plan (`<toplevel>/activation.plan`): the [`CompiledPlan`],
//! postcard-encoded inside the common envelope with magic `SHACTPLN`, version 1 — the
//! resolved manifest, the etc tree listing with its sidecars, the parsed users spec and the
//! step order. With it, activation reads one file instead of walking the etc tree and
//! parsing JSON; without it, the plan is resolved from the sources
//! ([`crate::manifest::from_sources`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use stagehand_common::envelope::{self, Kind};
use stagehand_common::rootfs::{self, Root};

use crate::etc::EtcTree;
use crate::manifest::{from_sources, toplevel_dir, LoadError, Snippet};
use crate::users::UsersSpec;

pub const PLAN_NAME: &str = "activation.plan";
pub const PLAN_KIND: Kind = Kind {
    magic: *b"SHACTPLN",
    version: 1,
    name: "activation plan",
};

/// Everything activation needs, resolved: what `activation.plan` holds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CompiledPlan {
    /// Canonical in-root path of the generation.
    pub toplevel: String,
    pub etc: Option<EtcTree>,
    pub users: Option<UsersSpec>,
    /// In-root path of the users spec, for messages.
    pub users_source: Option<String>,
    pub binsh: Option<String>,
    pub usrbinenv: Option<Option<String>>,
    pub modprobe: Option<String>,
    pub firmware: Option<String>,
    pub shell: Option<String>,
    pub path: Option<Vec<String>>,
    /// Bash snippets by name (built-ins excluded).
    pub snippets: BTreeMap<String, Snippet>,
    /// Step names in execution order (built-ins and snippets).
    pub order: Vec<String>,
}

/// The plan for `toplevel`: the compiled one when present (refused if damaged), else built
/// from the JSON sources.
pub fn load(root: &Root, toplevel: &Path) -> Result<CompiledPlan, LoadError> {
    let top = toplevel_dir(root, toplevel)?;
    let ppath = top.join(PLAN_NAME);
    match root.read_opt(&ppath) {
        Ok(Some(bytes)) => {
            let plan: CompiledPlan =
                envelope::decode(PLAN_KIND, &bytes).map_err(|error| LoadError::Compiled {
                    path: root.host_path(&ppath),
                    error,
                })?;
            let want = top.to_string_lossy();
            if plan.toplevel != want {
                return Err(LoadError::Mismatch {
                    path: root.host_path(&ppath),
                    compiled_for: plan.toplevel,
                    toplevel: want.into_owned(),
                });
            }
            Ok(plan)
        }
        Ok(None) => from_sources(root, &top),
        Err(error) => Err(LoadError::CompiledRead {
            path: root.host_path(&ppath),
            error,
        }),
    }
}

/// `stagehand compile`: build the plan from the sources and write it atomically into the
/// generation.
pub fn compile(root: &Root, toplevel: &Path) -> Result<CompiledPlan, LoadError> {
    let plan = from_sources(root, toplevel)?;
    let top = Path::new(&plan.toplevel);
    let ppath = top.join(PLAN_NAME);
    let werr = |error| LoadError::Write {
        path: root.host_path(&ppath),
        error,
    };
    let bytes = envelope::encode(PLAN_KIND, &plan)
        .map_err(|e| werr(std::io::Error::other(e.to_string())))?;
    let (dir, _, _) = root.dir(top, None).map_err(werr)?;
    rootfs::atomic_write(&dir, PLAN_NAME.as_ref(), &bytes, rootfs::own_perms(0o444))
        .and_then(|()| rootfs::fsync_dir(&dir))
        .map_err(werr)?;
    Ok(plan)
}
