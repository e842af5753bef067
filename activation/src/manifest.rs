//! The generation manifest (`<toplevel>/activation.json`, version 1), resolved into a
//! [`CompiledPlan`] by [`from_sources`]; the compiled file itself is [`crate::compiled`].
//!
//! ```json
//! { "version": 1,
//!   "etc": "/nix/store/…-etc/etc",                  // optional; default <toplevel>/etc if it exists
//!   "usersGroups": "/nix/store/…-users-groups.json", // optional; update-users-groups.pl or userborn JSON
//!   "binsh": "/nix/store/…-bash/bin/sh",            // optional; /bin/sh
//!   "usrbinenv": "/nix/store/…-coreutils/bin/env",  // optional; null removes /usr/bin/env
//!   "modprobe": "/nix/store/…-kmod/bin/modprobe",   // optional; /proc/sys/kernel/modprobe
//!   "firmware": "/nix/store/…-firmware/lib/firmware",// optional; firmware_class search path
//!   "shell": "/nix/store/…-bash/bin/bash",          // optional; runs snippets (default binsh, else /bin/sh)
//!   "path": ["/nix/store/…-coreutils/bin", …],      // optional; PATH for snippets (default: inherited)
//!   "snippets": [ { "name": "x", "deps": ["users"], "text": "…", "supportsDryActivation": false } ] }
//! ```
//! Every path is as the target system sees it. A snippet named like a built-in step
//! (`specialfs`, `users`, `groups`, `hashes`, `etc`, `binsh`, `usrbinenv`, `modprobe`, `udevd`,
//! `stdio`, `var`) only adds dependencies to it: its text is not run, the native step replaces
//! it. Unknown keys are ignored, so later versions can add optional ones.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};
use stagehand_common::envelope::EnvelopeError;

use crate::compiled::CompiledPlan;
use crate::etc;
use crate::users::UsersSpec;
use stagehand_common::rootfs::Root;

pub const MANIFEST_NAME: &str = "activation.json";

/// Built-in steps and the dependencies NixOS gives them.
pub const BUILTINS: [(&str, &[&str]); 11] = [
    ("binsh", &["stdio"]),
    ("etc", &["users", "groups", "specialfs"]),
    ("groups", &["users"]),
    ("hashes", &["users"]),
    ("modprobe", &[]),
    ("specialfs", &[]),
    ("stdio", &[]),
    ("udevd", &[]),
    ("users", &[]),
    ("usrbinenv", &[]),
    ("var", &[]),
];

pub fn is_builtin(name: &str) -> bool {
    BUILTINS.iter().any(|(n, _)| *n == name)
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct ManifestJson {
    version: u32,
    etc: Option<String>,
    users_groups: Option<String>,
    binsh: Option<String>,
    #[serde(default, deserialize_with = "present")]
    usrbinenv: Option<Option<String>>,
    modprobe: Option<String>,
    firmware: Option<String>,
    shell: Option<String>,
    path: Option<Vec<String>>,
    #[serde(default)]
    snippets: Vec<SnippetJson>,
}

/// Tell "key absent" (outer `None`) from "key is null" (`Some(None)`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct SnippetJson {
    name: String,
    #[serde(default)]
    deps: Vec<String>,
    #[serde(default)]
    text: String,
    #[serde(default)]
    supports_dry_activation: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    pub name: String,
    pub deps: Vec<String>,
    pub text: String,
    pub supports_dry_activation: bool,
}

/// Problems that stop activation before any step runs.
#[derive(Debug)]
pub enum LoadError {
    Toplevel {
        path: PathBuf,
        error: std::io::Error,
    },
    ManifestRead {
        path: PathBuf,
        error: std::io::Error,
    },
    ManifestJson {
        path: PathBuf,
        error: serde_json::Error,
    },
    ManifestVersion {
        path: PathBuf,
        found: u32,
    },
    Cycle {
        path: PathBuf,
        names: Vec<String>,
    },
    Compiled {
        path: PathBuf,
        error: EnvelopeError,
    },
    CompiledRead {
        path: PathBuf,
        error: std::io::Error,
    },
    Mismatch {
        path: PathBuf,
        compiled_for: String,
        toplevel: String,
    },
    Etc(etc::EtcError),
    Users(crate::users::SpecError),
    /// NixOS's `activate` script of a generation without `activation.json`.
    Script {
        path: PathBuf,
        error: crate::script::ScriptError,
    },
    ScriptRead {
        path: PathBuf,
        error: std::io::Error,
    },
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Toplevel { path, error } => write!(
                f,
                "{}: cannot resolve the generation: {error}; check the init= path",
                path.display()
            ),
            Self::ManifestRead { path, error } => write!(
                f,
                "{}: cannot read the activation manifest: {error}; check the generation \
                 (nix-store --verify-path)",
                path.display()
            ),
            Self::ManifestJson { path, error } => write!(
                f,
                "{}: not a valid activation manifest: {error}; rebuild the generation",
                path.display()
            ),
            Self::ManifestVersion { path, found } => write!(
                f,
                "{}: manifest version {found} is not supported (this build reads version \
                 1); rebuild the generation with a matching Stagehand",
                path.display()
            ),
            Self::Cycle { path, names } => write!(
                f,
                "{}: activation snippets depend on each other in a cycle ({}); fix their deps",
                path.display(),
                names.join(" -> ")
            ),
            Self::Compiled { path, error } => write!(
                f,
                "{}: refusing the compiled activation plan: {error} (delete it to fall back to \
                 activation.json, or run `stagehand compile`)",
                path.display()
            ),
            Self::CompiledRead { path, error } => {
                write!(
                    f,
                    "{}: cannot read the activation plan: {error}",
                    path.display()
                )
            }
            Self::Mismatch {
                path,
                compiled_for,
                toplevel,
            } => write!(
                f,
                "{}: the plan was compiled for {compiled_for}, not {toplevel}; recompile it \
                 with `stagehand compile {toplevel}`",
                path.display()
            ),
            Self::Etc(e) => e.fmt(f),
            Self::Users(e) => e.fmt(f),
            Self::Script { path, error } => write!(f, "{}: {error}", path.display()),
            Self::ScriptRead { path, error } => write!(
                f,
                "{}: cannot read the generation's activate script: {error}; check the \
                 generation (nix-store --verify-path)",
                path.display()
            ),
            Self::Write { path, error } => write!(
                f,
                "{}: cannot write the plan: {error}; the generation must be writable while \
                 it is built",
                path.display()
            ),
        }
    }
}

impl std::error::Error for LoadError {}

/// NixOS's order: names alphabetically, each preceded by its dependencies (depth first),
/// every step once. Unknown dependencies are ignored with a warning; cycles are refused.
pub fn order(deps: &BTreeMap<String, Vec<String>>, path: &Path) -> Result<Vec<String>, LoadError> {
    fn visit(
        name: &str,
        deps: &BTreeMap<String, Vec<String>>,
        done: &mut HashSet<String>,
        stack: &mut Vec<String>,
        out: &mut Vec<String>,
        path: &Path,
    ) -> Result<(), LoadError> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(pos) = stack.iter().position(|s| s == name) {
            let mut names = stack[pos..].to_vec();
            names.push(name.to_owned());
            return Err(LoadError::Cycle {
                path: path.to_path_buf(),
                names,
            });
        }
        let Some(ds) = deps.get(name) else {
            log::warn!("activation step dependency {name:?} does not exist; ignored");
            return Ok(());
        };
        stack.push(name.to_owned());
        for d in ds {
            visit(d, deps, done, stack, out, path)?;
        }
        stack.pop();
        done.insert(name.to_owned());
        out.push(name.to_owned());
        Ok(())
    }
    let mut out = Vec::new();
    let mut done = HashSet::new();
    for name in deps.keys() {
        visit(name, deps, &mut done, &mut Vec::new(), &mut out, path)?;
    }
    Ok(out)
}

fn in_root(p: &str) -> PathBuf {
    PathBuf::from(p)
}

/// The generation directory, profile links resolved inside the root.
pub(crate) fn toplevel_dir(root: &Root, toplevel: &Path) -> Result<PathBuf, LoadError> {
    root.canonicalize(toplevel)
        .map_err(|error| LoadError::Toplevel {
            path: root.host_path(toplevel),
            error,
        })
}

/// Resolve `activation.json` and the files it names into the plan activation runs.
pub fn from_sources(root: &Root, toplevel: &Path) -> Result<CompiledPlan, LoadError> {
    let top = toplevel_dir(root, toplevel)?;
    let mpath = top.join(MANIFEST_NAME);
    let m: ManifestJson = match root.read_opt(&mpath) {
        Ok(Some(bytes)) => {
            serde_json::from_slice(&bytes).map_err(|error| LoadError::ManifestJson {
                path: root.host_path(&mpath),
                error,
            })?
        }
        Ok(None)
            if root
                .lstat(&top.join(crate::script::ACTIVATE_NAME))
                .is_ok_and(|n| n.is_some()) =>
        {
            // A generation as nixpkgs builds it: its own activate script says what to do.
            return crate::script::from_script(root, &top);
        }
        Ok(None) => {
            log::warn!(
                "{} does not exist, nor does an activate script: activating /etc only (no \
                 users, no snippets)",
                root.host_path(&mpath).display()
            );
            ManifestJson {
                version: 1,
                etc: None,
                users_groups: None,
                binsh: None,
                usrbinenv: None,
                modprobe: None,
                firmware: None,
                shell: None,
                path: None,
                snippets: Vec::new(),
            }
        }
        Err(error) => {
            return Err(LoadError::ManifestRead {
                path: root.host_path(&mpath),
                error,
            })
        }
    };
    if m.version != 1 {
        return Err(LoadError::ManifestVersion {
            path: root.host_path(&mpath),
            found: m.version,
        });
    }
    let etc_path = match &m.etc {
        Some(p) => Some(in_root(p)),
        None => {
            let default = top.join("etc");
            root.canonicalize(&default).ok().map(|_| default)
        }
    };
    let etc = match etc_path {
        Some(p) => Some(etc::list_tree(root, &p).map_err(LoadError::Etc)?),
        None => None,
    };
    let users = match &m.users_groups {
        Some(p) => {
            let path = in_root(p);
            let bytes = root.read(&path).map_err(|error| {
                LoadError::Users(crate::users::SpecError::Read {
                    path: root.host_path(&path),
                    error,
                })
            })?;
            Some(UsersSpec::from_json(&root.host_path(&path), &bytes).map_err(LoadError::Users)?)
        }
        None => None,
    };
    let mut deps: BTreeMap<String, Vec<String>> = BUILTINS
        .iter()
        .map(|(n, d)| ((*n).to_owned(), d.iter().map(|s| (*s).to_owned()).collect()))
        .collect();
    let mut snippets = BTreeMap::new();
    for s in m.snippets {
        let entry = deps.entry(s.name.clone()).or_default();
        let mut all: BTreeSet<String> = entry.iter().cloned().collect();
        for d in &s.deps {
            if all.insert(d.clone()) {
                entry.push(d.clone());
            }
        }
        if !is_builtin(&s.name) {
            snippets.insert(
                s.name.clone(),
                Snippet {
                    name: s.name,
                    deps: s.deps,
                    text: s.text,
                    supports_dry_activation: s.supports_dry_activation,
                },
            );
        }
    }
    let order = order(&deps, &root.host_path(&mpath))?;
    Ok(CompiledPlan {
        toplevel: top.to_string_lossy().into_owned(),
        etc,
        users,
        users_source: m.users_groups,
        binsh: m.binsh,
        usrbinenv: m.usrbinenv,
        modprobe: m.modprobe,
        firmware: m.firmware,
        shell: m.shell,
        path: m.path,
        snippets,
        order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(v: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        v.iter()
            .map(|(n, d)| ((*n).to_owned(), d.iter().map(|s| (*s).to_owned()).collect()))
            .collect()
    }

    #[test]
    fn nixos_order_for_the_builtins() {
        let o = order(&deps(&BUILTINS), Path::new("m")).expect("order");
        assert_eq!(o, stagehand_testkit::nixos::BUILTIN_ORDER);
    }

    #[test]
    fn cycles_are_refused() {
        let e =
            order(&deps(&[("a", &["b"]), ("b", &["a"])]), Path::new("/m.json")).expect_err("cycle");
        assert!(e.to_string().contains("a -> b -> a"), "{e}");
    }
}
