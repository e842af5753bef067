//! Build a Stagehand initrd: the stage-1 binary as `/init`, its compiled configuration,
//! the kernel modules it loads (with their dependency closure), and any extra files, as a
//! reproducible newc cpio archive, optionally compressed.
//!
//! Same spec and same input files give byte-identical output: entries are sorted, times,
//! owners and inode numbers are fixed, file modes are normalised, and the compressors are
//! run without timestamps.
//!
//! - [`build`] takes an [`InitrdSpec`]; [`build_with`] also takes [`SpecExtras`]: module
//!   parameters, firmware, and `contents` in make-initrd-ng's `{source, target}` form
//!   (programs with their ELF closure, see [`objects`]).
//! - Nothing in the initrd is generation-specific (stage 1 takes the generation from
//!   `init=`), so one initrd serves every generation that shares a kernel.
//! - [`secrets_archive`] makes the separate archive appended at install time;
//!   [`list`] reads an initrd back, concatenated segments included, and
//!   [`inspect::kernel_version`] tells which kernel its modules are for.
//!
//! Layout inside the initrd: `/init`, `/etc/stagehand/stage1.cfg`, modules as
//! `/lib/modules/<name>.ko` (unpacked, signatures stripped unless kept), firmware under
//! `/lib/firmware/`, our stage 2 at [`STAGE2_PATH`] when one is given, the directories
//! stage 1 mounts onto, and `/dev/console`.
//!
//! [`system::spec_from_system`] makes the spec for an unmodified NixOS generation.

pub mod compress;
pub mod confined;
pub mod cpio;
pub mod elf;
pub mod fstab;
pub mod input;
pub mod inspect;
pub mod layer_modules;
#[cfg(test)]
mod layer_tests;
pub mod modules;
pub mod objects;
pub mod output;
pub mod secrets;
pub mod strip;
pub mod system;
#[cfg(test)]
mod system_tests;
#[cfg(test)]
mod tests;

pub use layer_modules::{
    spec_with_layer_modules, LUKS_MODULES, LUKS_OPTIONAL_MODULES, LVM_MODULES,
};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use stagehand_common::stage1_config::{self, FileSystem, Stage1Config};

pub use compress::Compression;
use cpio::{Archive, Entry, Node};
pub use secrets::{secrets_archive, Secret, SECRETS_DIR};

/// Where the modules go inside the initrd.
pub const MODULES_DIR: &str = "/lib/modules";

/// Where the kernel's firmware loader looks first.
pub const FIRMWARE_DIR: &str = "/lib/firmware";

/// Where our stage-2 binary goes when the spec names one (`stage2`): stage 1 runs it for
/// a generation whose `init` is not ours (an unmodified NixOS generation).
pub const STAGE2_PATH: &str = "/stagehand/stage2";

/// Directories stage 1 mounts onto or writes to; they exist even when nothing is in them.
pub const SKELETON_DIRS: &[&str] = &["/dev", "/etc", "/mnt-root", "/proc", "/run", "/sys", "/tmp"];

/// Everything `build` needs. Serialised as JSON for the CLI (`stagehand-initrd build
/// --spec`).
#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct InitrdSpec {
    /// The stage-1 binary; becomes `/init` (mode 0755).
    pub stage1: PathBuf,
    /// A `lib/modules/<version>` directory, e.g. from `dpkg -x` of a kernel package.
    #[serde(default)]
    pub modules_dir: Option<PathBuf>,
    /// Modules to load, in this order (after their dependencies); `-` and `_` are equal.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Loaded when present; a missing one is a warning, a failing one is logged at boot.
    #[serde(default)]
    pub optional_modules: Vec<String>,
    #[serde(default)]
    pub filesystems: Vec<FileSystem>,
    #[serde(default = "default_device_timeout_ms")]
    pub device_timeout_ms: u32,
    #[serde(default)]
    pub panic_on_fail: bool,
    #[serde(default)]
    pub extra_files: Vec<ExtraFile>,
    #[serde(default)]
    pub compression: Compression,
    /// Keep the modules' appended signatures. Needed when the target kernel enforces
    /// module signatures (Secure Boot lockdown, `module.sig_enforce=1`); otherwise
    /// stripping them saves the signature check at boot.
    #[serde(default)]
    pub keep_module_signatures: bool,
    /// Compressor level; `None` picks the default of the format (zstd 10, gzip 9, xz 6).
    #[serde(default)]
    pub compression_level: Option<i32>,
}

/// Further inputs, kept out of [`InitrdSpec`] so code that builds a spec with a struct
/// literal keeps compiling as options are added here: other crates start from
/// `SpecExtras::default()` and set fields (it is `non_exhaustive` for that reason). The
/// CLI's spec JSON takes these keys in the same object as the `InitrdSpec` ones.
#[derive(Deserialize, Serialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SpecExtras {
    /// Parameters per module (`"loop": "max_loop=16"`), passed to `finit_module` at boot.
    /// Keys use either `-` or `_`.
    #[serde(default)]
    pub module_params: BTreeMap<String, String>,
    /// Where to look for the files modules name in `firmware=` (e.g. `/lib/firmware`),
    /// first match wins; they go to `/lib/firmware/` in the initrd, where the kernel's
    /// loader looks. Empty: no firmware is copied.
    #[serde(default)]
    pub firmware_dirs: Vec<PathBuf>,
    /// Programs and other files with their closures, in make-initrd-ng's format: each
    /// `source` lands at its own path, ELF files bring their interpreter and libraries.
    #[serde(default)]
    pub contents: Vec<objects::StoreObject>,
    /// Where to look for libraries after an ELF file's RUNPATH/RPATH. `None`: the
    /// conventional host directories ([`objects::DEFAULT_LIBRARY_DIRS`]); `Some([])`:
    /// RUNPATH only, as make-initrd-ng does for Nix store paths.
    #[serde(default)]
    pub library_dirs: Option<Vec<PathBuf>>,
    /// Stage-1 boot policy (fsck, resume) copied into the config as it is.
    #[serde(default)]
    pub stage1_options: stage1_config::Stage1Options,
    /// Cut every program and shared library in the initrd down to what its program
    /// headers map (see [`strip`]): no symbol tables, debug sections or section headers.
    /// Kernel modules are never touched.
    #[serde(default)]
    pub strip: bool,
    /// Our stage-2 binary, copied to [`STAGE2_PATH`] (mode 0755).
    #[serde(default)]
    pub stage2: Option<PathBuf>,
    /// A directory holding a whole system (a mounted disk, a VM fixture): `modules_dir`
    /// and `firmware_dirs` are host paths under it, and every symlink met below them is
    /// followed as if it were `/` (NixOS's trees are absolute links into `/nix/store`).
    /// A link leading out of it is an error. `None`: symlinks are followed on the host.
    #[serde(default)]
    pub root: Option<PathBuf>,
}

/// The CLI's spec file: an [`InitrdSpec`] and [`SpecExtras`] in one JSON object. A key
/// neither knows is an error naming it: a misspelt `modulez` would otherwise build an
/// initrd without modules and exit 0.
#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct FullSpec {
    #[serde(flatten)]
    pub spec: InitrdSpec,
    #[serde(flatten)]
    pub extras: SpecExtras,
}

fn default_device_timeout_ms() -> u32 {
    Stage1Config::default().device_timeout_ms
}

/// A file (or directory tree) copied into the initrd at `target`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExtraFile {
    pub source: PathBuf,
    /// Absolute path inside the initrd.
    pub target: String,
    /// Permission bits; by default 0755 when the source is executable by its owner, else
    /// 0644 (so the umask of whoever made the source does not leak into the initrd).
    #[serde(default)]
    pub mode: Option<u32>,
}

/// A built initrd.
#[derive(Debug, Clone)]
pub struct Initrd {
    /// The (compressed) archive, ready to write out.
    pub bytes: Vec<u8>,
    pub report: SizeReport,
    /// The configuration written to `/etc/stagehand/stage1.cfg`.
    pub config: Stage1Config,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SizeReport {
    /// Each regular file and symlink by size, largest first (ties by path).
    pub files: Vec<FileSize>,
    /// Size of the cpio archive before compression.
    pub uncompressed: u64,
    /// Size of `Initrd::bytes`.
    pub compressed: u64,
    pub compression: Compression,
    /// Modules requested or needed that are built into the kernel: nothing to load.
    pub builtin_modules: Vec<String>,
    /// Things that did not stop the build but may matter (missing optional modules,
    /// softdeps that resolve to nothing).
    pub warnings: Vec<String>,
    /// With `strip`: each ELF file that got smaller, its size before and after.
    pub stripped: Vec<Stripped>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stripped {
    pub path: String,
    pub before: u64,
    pub after: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileSize {
    pub path: String,
    pub size: u64,
}

impl fmt::Display for SizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for file in &self.files {
            writeln!(f, "{:>10}  {}", file.size, file.path)?;
        }
        writeln!(f, "{:>10}  (cpio, uncompressed)", self.uncompressed)?;
        writeln!(
            f,
            "{:>10}  (initrd, {})",
            self.compressed,
            self.compression.name()
        )?;
        if !self.stripped.is_empty() {
            let (before, after) = self
                .stripped
                .iter()
                .fold((0, 0), |(b, a), s| (b + s.before, a + s.after));
            writeln!(
                f,
                "{:>10}  (saved by stripping {} ELF files: {before} -> {after})",
                before - after,
                self.stripped.len()
            )?;
        }
        for b in &self.builtin_modules {
            writeln!(f, "note: module {b} is built into the kernel")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub enum InitrdError {
    /// Reading an input failed.
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    /// The spec names modules but no `modules_dir`.
    NoModulesDir {
        modules: Vec<String>,
    },
    Module(modules::ModuleError),
    /// Two inputs for one path, or a path that cannot exist in an archive.
    Archive {
        context: String,
        error: cpio::CpioError,
    },
    /// An extra file's source is neither a file nor a directory.
    UnsupportedSource {
        path: PathBuf,
    },
    Config(stagehand_common::envelope::EnvelopeError),
    Compress(compress::CompressError),
    /// A `contents` source that is not an absolute path.
    ObjectNotAbsolute {
        path: PathBuf,
    },
    /// Too many symlinks while copying a `contents` object.
    SymlinkLoop {
        path: PathBuf,
    },
    /// A path under `root` that cannot be followed inside it.
    Path(confined::ConfinedError),
}

impl fmt::Display for InitrdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, what, error } => {
                write!(f, "initrd: cannot read {what} {}: {error}", path.display())
            }
            Self::NoModulesDir { modules } => write!(
                f,
                "initrd spec lists modules ({}) but no modules_dir; set modules_dir to the \
                 kernel's lib/modules/<version> directory",
                modules.join(", ")
            ),
            Self::Module(e) => write!(f, "initrd modules: {e}"),
            Self::Archive { context, error } => write!(f, "initrd {context}: {error}"),
            Self::UnsupportedSource { path } => write!(
                f,
                "initrd extra file {}: not a regular file or directory; point source at a \
                 file or a directory tree",
                path.display()
            ),
            Self::Config(e) => write!(f, "initrd: cannot encode the stage-1 config: {e}"),
            Self::Compress(e) => write!(f, "initrd: {e}"),
            Self::ObjectNotAbsolute { path } => write!(
                f,
                "initrd contents: {} is not an absolute path; objects are copied to their \
                 own path in the initrd, so give the full path",
                path.display()
            ),
            Self::SymlinkLoop { path } => write!(
                f,
                "initrd contents: {} goes through more than 40 symlinks (a loop?); fix the \
                 links or list the real file",
                path.display()
            ),
            Self::Path(e) => write!(f, "initrd: {e}"),
        }
    }
}

impl std::error::Error for InitrdError {}

impl From<modules::ModuleError> for InitrdError {
    fn from(e: modules::ModuleError) -> Self {
        Self::Module(e)
    }
}

pub(crate) fn archive_err(
    context: impl Into<String>,
) -> impl FnOnce(cpio::CpioError) -> InitrdError {
    let context = context.into();
    move |error| InitrdError::Archive { context, error }
}

/// Build the initrd `spec` describes.
pub fn build(spec: &InitrdSpec) -> Result<Initrd, InitrdError> {
    build_with(spec, &SpecExtras::default())
}

/// Build with the further inputs of [`SpecExtras`].
pub fn build_with(spec: &InitrdSpec, extras: &SpecExtras) -> Result<Initrd, InitrdError> {
    let (mut archive, config, mut closure) = assemble(spec, extras)?;
    let stripped = if extras.strip {
        strip_files(&mut archive, &mut closure.warnings)
    } else {
        Vec::new()
    };
    let cpio_bytes = archive.to_bytes().map_err(archive_err("archive"))?;
    let bytes = compress::compress(&cpio_bytes, spec.compression, spec.compression_level)
        .map_err(InitrdError::Compress)?;

    let mut files: Vec<FileSize> = archive
        .entries()
        .filter(|(_, e)| !e.data().is_empty())
        .map(|(path, e)| FileSize {
            path: format!("/{path}"),
            size: e.data().len() as u64,
        })
        .collect();
    files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    let report = SizeReport {
        files,
        uncompressed: cpio_bytes.len() as u64,
        compressed: bytes.len() as u64,
        compression: spec.compression,
        builtin_modules: closure.builtin,
        warnings: closure.warnings,
        stripped,
    };
    Ok(Initrd {
        bytes,
        report,
        config,
    })
}

/// Strip every program and library in `archive`; a file whose ELF headers are broken is
/// kept as it is, with a warning.
fn strip_files(archive: &mut Archive, warnings: &mut Vec<String>) -> Vec<Stripped> {
    let mut done = Vec::new();
    for (path, data) in archive.files_mut() {
        match strip::strip(data) {
            Ok(Some(smaller)) => {
                done.push(Stripped {
                    path: format!("/{path}"),
                    before: data.len() as u64,
                    after: smaller.len() as u64,
                });
                *data = smaller;
            }
            Ok(None) => {}
            Err(e) => warnings.push(format!("/{path}: not stripped, {e}")),
        }
    }
    done
}

/// The uncompressed archive and the config it carries.
fn assemble(
    spec: &InitrdSpec,
    extras: &SpecExtras,
) -> Result<(Archive, Stage1Config, modules::Closure), InitrdError> {
    let mut archive = Archive::new();
    add_skeleton(&mut archive)?;
    let stage1 = read_input(&spec.stage1, "stage-1 binary")?;
    archive
        .add(
            "/init",
            Entry {
                perm: 0o755,
                node: Node::File(stage1),
            },
        )
        .map_err(archive_err("/init"))?;

    if let Some(stage2) = &extras.stage2 {
        let data = read_input(stage2, "stage-2 binary")?;
        archive
            .add(
                STAGE2_PATH,
                Entry {
                    perm: 0o755,
                    node: Node::File(data),
                },
            )
            .map_err(archive_err(STAGE2_PATH))?;
    }

    let with_layers = spec_with_layer_modules(spec, &extras.stage1_options);
    let spec = &with_layers;
    let mut closure = module_closure(spec, extras.root.as_deref())?;
    let config_modules = add_modules(&mut archive, spec, extras, &mut closure)?;
    add_firmware(&mut archive, extras, &mut closure)?;
    let config = Stage1Config {
        modules: config_modules,
        filesystems: spec.filesystems.clone(),
        device_timeout_ms: spec.device_timeout_ms,
        panic_on_fail: spec.panic_on_fail,
        options: extras.stage1_options.clone(),
    };
    archive
        .add(
            stage1_config::STAGE1_CONFIG_PATH,
            Entry {
                perm: 0o644,
                node: Node::File(config.encode().map_err(InitrdError::Config)?),
            },
        )
        .map_err(archive_err(stage1_config::STAGE1_CONFIG_PATH))?;

    // After the modules: on a merged-/usr host the objects' `/lib/...` paths then go
    // through the initrd's real /lib directory (see objects.rs).
    let library_dirs: Vec<PathBuf> = match &extras.library_dirs {
        Some(dirs) => dirs.clone(),
        None => objects::DEFAULT_LIBRARY_DIRS
            .iter()
            .map(PathBuf::from)
            .collect(),
    };
    objects::add_objects(
        &mut archive,
        &extras.contents,
        &library_dirs,
        &mut closure.warnings,
    )?;
    for extra in &spec.extra_files {
        add_extra(&mut archive, extra)?;
    }
    Ok((archive, config, closure))
}

/// The directories stage 1 mounts onto, and `/dev/console`.
fn add_skeleton(archive: &mut Archive) -> Result<(), InitrdError> {
    for dir in SKELETON_DIRS {
        archive
            .add(
                dir,
                Entry {
                    perm: 0o755,
                    node: Node::Dir,
                },
            )
            .map_err(archive_err(format!("directory {dir}")))?;
    }
    // The kernel opens /dev/console for PID 1's stdin/stdout/stderr before /init runs,
    // i.e. before stage 1 can mount devtmpfs; without this node /init starts with no
    // console at all ("Warning: unable to open an initial console").
    archive
        .add(
            "/dev/console",
            Entry {
                perm: 0o600,
                node: Node::CharDev { major: 5, minor: 1 },
            },
        )
        .map_err(archive_err("/dev/console"))?;
    // /tmp is world-writable with the sticky bit, as everywhere.
    archive_set_perm(archive, "/tmp", 0o1777)
}

/// The closure's modules as `/lib/modules/<name>.ko` (signatures stripped unless kept),
/// and their entries for the config, with their parameters. A parameter for a module that
/// is not loaded is a warning.
fn add_modules(
    archive: &mut Archive,
    spec: &InitrdSpec,
    extras: &SpecExtras,
    closure: &mut modules::Closure,
) -> Result<Vec<stage1_config::Module>, InitrdError> {
    let params: BTreeMap<String, &String> = extras
        .module_params
        .iter()
        .map(|(k, v)| (modules::normalize_name(k), v))
        .collect();
    for name in params.keys() {
        if !closure.modules.iter().any(|m| &m.name == name) {
            closure.warnings.push(format!(
                "module_params names {name}, which is not among the modules loaded"
            ));
        }
    }
    let mut config_modules = Vec::new();
    for m in &closure.modules {
        let raw = modules::read_module_file(&m.source)?;
        let body = if spec.keep_module_signatures {
            raw.as_slice()
        } else {
            modules::strip_signature(&raw).map_err(|reason| modules::ModuleError::BadSignature {
                path: m.source.clone(),
                reason,
            })?
        };
        let target = format!("{MODULES_DIR}/{}.ko", m.name);
        archive
            .add(
                &target,
                Entry {
                    perm: 0o644,
                    node: Node::File(body.to_vec()),
                },
            )
            .map_err(archive_err(format!("module {}", m.source.display())))?;
        config_modules.push(stage1_config::Module {
            name: m.name.clone(),
            path: target,
            params: params
                .get(&m.name)
                .map(|p| p.to_string())
                .unwrap_or_default(),
            optional: m.optional,
            cpu_aliases: m.cpu_aliases.clone(),
        });
    }
    Ok(config_modules)
}

/// Copy the firmware the chosen modules name. Modules list every file any supported
/// device might want, so a file that is in none of the directories is a warning, not an
/// error. The kernel (CONFIG_FW_LOADER_COMPRESS) also loads `NAME.xz` / `NAME.zst`.
fn add_firmware(
    archive: &mut Archive,
    spec: &SpecExtras,
    closure: &mut modules::Closure,
) -> Result<(), InitrdError> {
    let wanted: Vec<(String, String)> = closure
        .modules
        .iter()
        .flat_map(|m| m.firmware.iter().map(|f| (m.name.clone(), f.clone())))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    if spec.firmware_dirs.is_empty() {
        let mut names: Vec<&str> = wanted.iter().map(|(m, _)| m.as_str()).collect();
        names.dedup();
        closure.warnings.push(format!(
            "modules {} name firmware files but firmware_dirs is empty; none copied",
            names.join(", ")
        ));
        return Ok(());
    }
    for (module, file) in wanted {
        let rel = match cpio::normalize(&file) {
            Ok(r) => r,
            Err(_) => {
                closure
                    .warnings
                    .push(format!("module {module}: firmware name {file:?} ignored"));
                continue;
            }
        };
        let mut found = None;
        'dirs: for dir in &spec.firmware_dirs {
            for ext in ["", ".xz", ".zst"] {
                let p = dir.join(format!("{rel}{ext}"));
                let p = match &spec.root {
                    // Under a root the firmware tree is links into its store.
                    Some(root) => match confined::resolve_host_path(root, &p) {
                        Ok(p) => p,
                        Err(e) if e.is_not_found() => continue,
                        Err(e) => return Err(InitrdError::Path(e)),
                    },
                    None => p,
                };
                if p.is_file() {
                    found = Some((p, ext));
                    break 'dirs;
                }
            }
        }
        let Some((path, ext)) = found else {
            closure.warnings.push(format!(
                "module {module}: firmware {file} not found in firmware_dirs"
            ));
            continue;
        };
        let target = format!("{FIRMWARE_DIR}/{rel}{ext}");
        if archive.contains(&target) {
            continue;
        }
        let data = read_input(&path, "firmware file")?;
        archive
            .add(
                &target,
                Entry {
                    perm: 0o644,
                    node: Node::File(data),
                },
            )
            .map_err(archive_err(format!("firmware {}", path.display())))?;
    }
    Ok(())
}

fn archive_set_perm(archive: &mut Archive, path: &str, perm: u32) -> Result<(), InitrdError> {
    archive
        .set_perm(path, perm)
        .map_err(archive_err(path.to_owned()))
}

fn module_closure(spec: &InitrdSpec, root: Option<&Path>) -> Result<modules::Closure, InitrdError> {
    if spec.modules.is_empty() && spec.optional_modules.is_empty() {
        return Ok(modules::Closure::default());
    }
    let Some(dir) = &spec.modules_dir else {
        return Err(InitrdError::NoModulesDir {
            modules: spec
                .modules
                .iter()
                .chain(&spec.optional_modules)
                .cloned()
                .collect(),
        });
    };
    let index = modules::ModuleIndex::open_in_root(dir, root)?;
    Ok(index.closure(&spec.modules, &spec.optional_modules)?)
}

pub(crate) fn read_input(path: &Path, what: &'static str) -> Result<Vec<u8>, InitrdError> {
    input::read_regular(path).map_err(|error| InitrdError::Io {
        path: path.to_owned(),
        what,
        error,
    })
}

pub(crate) fn default_perm(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o100 != 0 {
        0o755
    } else {
        0o644
    }
}

fn add_extra(archive: &mut Archive, extra: &ExtraFile) -> Result<(), InitrdError> {
    add_tree(archive, &extra.source, &extra.target, extra.mode, 0)
}

/// Copy a file, or a directory tree, following symlinks: a link into a store path that
/// is not in the initrd would dangle, so its content is copied instead.
fn add_tree(
    archive: &mut Archive,
    source: &Path,
    target: &str,
    mode: Option<u32>,
    depth: usize,
) -> Result<(), InitrdError> {
    let io = |error| InitrdError::Io {
        path: source.to_owned(),
        what: "extra file",
        error,
    };
    // Following symlinks can loop; no real tree is this deep.
    if depth > 64 {
        return Err(InitrdError::UnsupportedSource {
            path: source.to_owned(),
        });
    }
    let meta = std::fs::metadata(source).map_err(io)?;
    let context = || format!("extra file {} -> {target}", source.display());
    if meta.is_file() {
        let data = input::read_regular(source).map_err(io)?;
        archive
            .add(
                target,
                Entry {
                    perm: mode.unwrap_or_else(|| default_perm(&meta)),
                    node: Node::File(data),
                },
            )
            .map_err(archive_err(context()))
    } else if meta.is_dir() {
        archive
            .add(
                target,
                Entry {
                    perm: 0o755,
                    node: Node::Dir,
                },
            )
            .map_err(archive_err(context()))?;
        let mut children: Vec<_> = std::fs::read_dir(source)
            .map_err(io)?
            .collect::<Result<_, _>>()
            .map_err(io)?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let name = child.file_name();
            let name = name.to_string_lossy();
            add_tree(
                archive,
                &child.path(),
                &format!("{}/{name}", target.trim_end_matches('/')),
                mode,
                depth + 1,
            )?;
        }
        Ok(())
    } else {
        Err(InitrdError::UnsupportedSource {
            path: source.to_owned(),
        })
    }
}

/// The entries of an initrd file: each concatenated segment decompressed by its magic,
/// then read as cpio (later entries for the same path win at boot, as in the kernel).
pub fn list(bytes: &[u8]) -> Result<Vec<cpio::ReadEntry>, ListError> {
    let raw = compress::decompress_segments(bytes).map_err(ListError::Compress)?;
    cpio::read(&raw).map_err(ListError::Cpio)
}

#[derive(Debug)]
pub enum ListError {
    Compress(compress::CompressError),
    Cpio(cpio::CpioError),
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Compress(e) => write!(f, "{e}"),
            Self::Cpio(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ListError {}
