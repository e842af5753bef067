//! Everything the boot-loader planners need from the system root, read once up front so the
//! planners stay pure: generations with their bootspecs and dates, and the size, canonical
//! path of every file an entry refers to (always in the store: see [`source`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use stagehand_common::rootfs::{self, Root};

use super::esp;
use super::profile::{self, Profile, ProfileError};
use super::spec::BootSpec;

/// The Nix store; paths in it are immutable, so their names already identify their content.
pub const STORE_DIR: &str = "/nix/store";

/// One generation as the planners see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationBoot {
    pub number: u64,
    /// When the generation link was made.
    pub created: i64,
    /// Change time of the toplevel, which NixOS's builders print as "built on".
    pub built: i64,
    pub spec: BootSpec,
    /// `<toplevel>/nixos-version` of the generation and of each specialisation (extlinux).
    pub nixos_version: BTreeMap<PathBuf, String>,
    /// Canonical `<toplevel>/dtbs` of the generation and of each specialisation, if any.
    pub dtbs: BTreeMap<PathBuf, PathBuf>,
}

/// A file (or tree) an entry refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Resolved inside the root.
    pub canonical: PathBuf,
    pub size: u64,
    pub files: u64,
    pub tree: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Newest first.
    pub generations: Vec<GenerationBoot>,
    /// By the path as `boot.json` names it.
    pub sources: BTreeMap<PathBuf, Source>,
    /// The generation the profile link points at.
    pub current: Option<u64>,
    /// `/etc/machine-id` when it holds a valid ID.
    pub machine_id: Option<String>,
    /// Generations left out, with the reason.
    pub skipped: Vec<String>,
    /// Numbers of the generations left out: their existing entries are kept as they are,
    /// because the generation still exists and may still boot.
    pub unreadable: Vec<u64>,
}

#[derive(Debug)]
pub enum GatherError {
    Profile(ProfileError),
    /// A file the current generation's entry needs is missing or unreadable.
    Source {
        generation: u64,
        path: PathBuf,
        error: std::io::Error,
    },
    /// The current generation cannot get an entry at all.
    Current {
        generation: u64,
        reason: String,
    },
}

impl fmt::Display for GatherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatherError::Profile(e) => e.fmt(f),
            GatherError::Source {
                generation,
                path,
                error,
            } => write!(
                f,
                "generation {generation}: cannot read {}: {error}; the store path is missing or \
                 damaged (nix-store --verify --check-contents, or rebuild the generation)",
                path.display()
            ),
            GatherError::Current { generation, reason } => write!(
                f,
                "the current generation {generation} cannot be booted: {reason}"
            ),
        }
    }
}

impl std::error::Error for GatherError {}

/// Read the generations of `profile` and everything their entries refer to. Generations
/// that cannot be read are skipped with a reason (as NixOS's builder does), except the
/// current one: installing a boot menu without it would be worse than failing.
pub fn gather(root: &Root, profile: &Profile<'_>) -> Result<Inputs, GatherError> {
    let links = profile.generations().map_err(GatherError::Profile)?;
    let current = profile.current().map_err(GatherError::Profile)?;
    let mut inputs = Inputs {
        current,
        machine_id: machine_id(root),
        ..Inputs::default()
    };
    for link in links.iter().rev() {
        let is_current = Some(link.number) == current;
        let read = root
            .canonicalize(&profile.link_path(link.number))
            .map_err(|e| format!("its link does not resolve: {e}"))
            .and_then(|toplevel| Ok((profile::read_spec(root, &toplevel)?, toplevel)));
        let (spec, toplevel) = match read {
            Ok(read) => read,
            Err(reason) => {
                if is_current {
                    return Err(GatherError::Current {
                        generation: link.number,
                        reason,
                    });
                }
                inputs
                    .skipped
                    .push(format!("generation {}: {reason}", link.number));
                inputs.unreadable.push(link.number);
                continue;
            }
        };
        match sources_of(root, &spec, &mut inputs.sources) {
            Ok(()) => {}
            Err((path, error)) => {
                if is_current {
                    return Err(GatherError::Source {
                        generation: link.number,
                        path,
                        error,
                    });
                }
                inputs.skipped.push(format!(
                    "generation {}: cannot read {}: {error}",
                    link.number,
                    root.host_path(&path).display()
                ));
                inputs.unreadable.push(link.number);
                continue;
            }
        }
        let built = ctime(root, &toplevel).unwrap_or(link.created);
        let mut nixos_version = BTreeMap::new();
        let mut dtbs = BTreeMap::new();
        for s in std::iter::once(&spec).chain(spec.specialisations.values()) {
            if let Ok(Some(v)) = root.read_opt(&s.toplevel.join("nixos-version")) {
                let v = String::from_utf8_lossy(&v).trim().to_string();
                // It goes into an extlinux `MENU LABEL` line; a newline would add lines.
                if !v.chars().any(char::is_control) {
                    nixos_version.insert(s.toplevel.clone(), v);
                }
            }
            let link = s.toplevel.join("dtbs");
            // Only a tree in the store: a `dtbs` link to /etc would copy /etc to the ESP.
            if let Ok(canon) = root.canonicalize(&link) {
                if !canon.starts_with(STORE_DIR) {
                    continue;
                }
                if let Ok((size, files, true)) = esp::measure(root, &canon) {
                    inputs.sources.insert(
                        canon.clone(),
                        Source {
                            canonical: canon.clone(),
                            size,
                            files,
                            tree: true,
                        },
                    );
                    dtbs.insert(s.toplevel.clone(), canon);
                }
            }
        }
        inputs.generations.push(GenerationBoot {
            number: link.number,
            created: link.created,
            built,
            spec,
            nixos_version,
            dtbs,
        });
    }
    Ok(inputs)
}

/// Measure the kernel, initrd and device tree of `spec` and its specialisations.
fn sources_of(
    root: &Root,
    spec: &BootSpec,
    out: &mut BTreeMap<PathBuf, Source>,
) -> Result<(), (PathBuf, std::io::Error)> {
    for s in std::iter::once(spec).chain(spec.specialisations.values()) {
        let paths = [Some(&s.kernel), s.initrd.as_ref(), s.devicetree.as_ref()];
        for p in paths.into_iter().flatten() {
            if out.contains_key(p) {
                continue;
            }
            let src = source(root, p).map_err(|e| (p.clone(), e))?;
            out.insert(p.clone(), src);
        }
    }
    Ok(())
}

fn source(root: &Root, path: &Path) -> std::io::Result<Source> {
    let canonical = root.canonicalize(path)?;
    // `spec` checked the spelling; a symlink in the store may still lead out of it, and what
    // it leads to would be copied onto the world-readable boot partition.
    if !canonical.starts_with(STORE_DIR) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "it resolves to {}, outside {STORE_DIR}; only store files are copied to the boot \
                 partition",
                canonical.display()
            ),
        ));
    }
    let size = match root.lstat(&canonical)? {
        Some(rootfs::Node::File { size, .. }) => size,
        Some(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ))
        }
        None => return Err(std::io::ErrorKind::NotFound.into()),
    };
    Ok(Source {
        canonical,
        size,
        files: 1,
        tree: false,
    })
}

fn ctime(root: &Root, path: &Path) -> Option<i64> {
    let (dir, name) = root.parent(path, None).ok()?;
    let st = rustix::fs::statat(
        &dir,
        name.as_os_str(),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .ok()?;
    Some(st.st_ctime)
}

/// `/etc/machine-id` if it is 32 lower-case hex digits (the only form entries may carry).
pub fn machine_id(root: &Root) -> Option<String> {
    let bytes = root.read_opt(Path::new("/etc/machine-id")).ok()??;
    let id = String::from_utf8(bytes).ok()?;
    let id = id.trim();
    (id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| id.to_string())
}
