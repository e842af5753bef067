//! Everything the boot-loader planners need from the system root, read once up front so the
//! planners stay pure: generations with their bootspecs, dates and kernel versions, and the
//! size, canonical path of every file an entry refers to. Those are store files (see
//! [`source`]), with one exception the admin names on the command line: Stagehand's own
//! initrd (`install-bootloader --initrd`, read by [`admin_initrd`]), named on the boot
//! partition by its content's digest.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
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
    /// The kernel version (`uname -r`) whose modules the generation and each specialisation
    /// ship: the one directory in `<toplevel>/kernel-modules/lib/modules/`. Missing when
    /// there is none or more than one (no initrd can then be matched to it).
    pub modules_version: BTreeMap<PathBuf, String>,
}

/// A file (or tree) an entry refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Resolved inside the root.
    pub canonical: PathBuf,
    pub size: u64,
    pub files: u64,
    pub tree: bool,
    /// SHA-256 (hex) of the content; only for the admin's initrd, which lives outside the
    /// store and so has no store hash in its name.
    pub digest: Option<String>,
}

/// Stagehand's initrd as the admin named it (`install-bootloader --initrd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminInitrd {
    /// As given (inside the root); also its key in [`Inputs::sources`].
    pub path: PathBuf,
    pub source: Source,
    /// The kernel version its modules were built for; `None` when it holds no modules
    /// (then nothing in it depends on the kernel and it serves every generation).
    pub kernel_version: Option<String>,
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
    /// Stagehand's initrd, for the generations whose kernel it matches.
    pub ours: Option<AdminInitrd>,
}

impl Inputs {
    /// Add the admin's initrd: the planners use it for every generation whose kernel
    /// version matches (see [`crate::initrd_choice`]).
    pub fn with_initrd(mut self, ours: AdminInitrd) -> Inputs {
        self.sources.insert(ours.path.clone(), ours.source.clone());
        self.ours = Some(ours);
        self
    }
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
        let mut modules_version = BTreeMap::new();
        for s in std::iter::once(&spec).chain(spec.specialisations.values()) {
            if let Some(v) = modules_version_of(root, &s.toplevel) {
                modules_version.insert(s.toplevel.clone(), v);
            }
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
                            digest: None,
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
            modules_version,
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
        let paths = [
            Some(&s.kernel),
            s.initrd.as_ref(),
            s.devicetree.as_ref(),
            s.stagehand_initrd.as_ref(),
        ];
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
        digest: None,
    })
}

/// The one directory name in `<toplevel>/kernel-modules/lib/modules/` (resolved inside the
/// root), as NixOS's aggregated modules tree has it.
fn modules_version_of(root: &Root, toplevel: &Path) -> Option<String> {
    let (fd, _, _) = root
        .dir(&toplevel.join("kernel-modules/lib/modules"), None)
        .ok()?;
    let mut dirs = rootfs::list_dir(&fd)
        .ok()?
        .into_iter()
        .filter(|(_, ty)| *ty == rustix::fs::FileType::Directory)
        .map(|(n, _)| n.to_string_lossy().into_owned());
    match (dirs.next(), dirs.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

#[derive(Debug)]
pub enum AdminInitrdError {
    /// Missing, unreadable, or a path that does not resolve inside the root.
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Resolves to something other than a regular file.
    NotAFile { path: PathBuf, what: &'static str },
}

impl fmt::Display for AdminInitrdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminInitrdError::Io { path, error } => write!(
                f,
                "--initrd {}: cannot read it: {error}; build it first \
                 (stagehand-initrd build --system TOPLEVEL -o FILE)",
                path.display()
            ),
            AdminInitrdError::NotAFile { path, what } => write!(
                f,
                "--initrd {}: it is {what}, not a regular file; name the initrd file itself \
                 (e.g. ./result/initrd, or the -o file of stagehand-initrd build)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for AdminInitrdError {}

/// Read the admin's initrd: `path` is resolved inside the root (symlinks followed there, as
/// `./result/initrd` needs) and must end at a regular file. Returns its measurement, with the
/// content's digest that names it on the boot partition, and its bytes (for the caller to
/// find the kernel version in). Unlike bootspec paths it may lie outside the store: the
/// admin chose it on the command line, and whatever it is becomes world-readable on the
/// boot partition, like any initrd.
pub fn admin_initrd(root: &Root, path: &Path) -> Result<(Source, Vec<u8>), AdminInitrdError> {
    let io = |error: std::io::Error| AdminInitrdError::Io {
        path: path.to_path_buf(),
        error,
    };
    let canonical = root.canonicalize(path).map_err(io)?;
    let what = match root.lstat(&canonical).map_err(io)? {
        Some(rootfs::Node::File { .. }) => None,
        Some(rootfs::Node::Dir { .. }) => Some("a directory"),
        Some(_) => Some("a device, socket or pipe"),
        None => return Err(io(std::io::ErrorKind::NotFound.into())),
    };
    if let Some(what) = what {
        return Err(AdminInitrdError::NotAFile {
            path: path.to_path_buf(),
            what,
        });
    }
    // Read through a descriptor opened without following a last symlink, so what is hashed
    // is the file that was checked.
    let (dir, name) = root.parent(&canonical, None).map_err(io)?;
    let fd = rustix::fs::openat(
        &dir,
        name.as_os_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io(e.into()))?;
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let source = Source {
        canonical,
        size: bytes.len() as u64,
        files: 1,
        tree: false,
        digest: Some(digest),
    };
    Ok((source, bytes))
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
