//! Kernel modules: find them in a `lib/modules/<version>` tree, read their `.modinfo`,
//! compute the load closure of the requested ones, and strip appended signatures.
//!
//! No `modules.dep` is needed (Debian's package ships none): dependencies come from each
//! module's own `depends=` and `softdep=` lines, the same data `depmod` reads.
//!
//! Load order is a depth-first post-order: for each requested module, in the order given,
//! first its `softdep=` `pre:` modules, then its `depends=` modules (the one with the
//! longest dependency chain first, ties in the order listed), then the module itself.
//! That is deterministic and puts every module after what it needs. kmod orders
//! independent siblings by depmod's sort over the whole tree, which a closure cannot
//! reproduce in general; the deepest-first rule matches it on the virtio and ext4 sets.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use stagehand_common::glob;

use crate::elf;

/// `'-'` and `'_'` are the same in module names; the kernel uses `_`.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

#[derive(Debug)]
pub enum ModuleError {
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A module that is neither a `.ko` under the modules directory nor built in.
    NotFound {
        name: String,
        modules_dir: PathBuf,
        needed_by: Option<String>,
    },
    /// A path under a root that cannot be followed inside it (see [`crate::confined`]).
    Path(crate::confined::ConfinedError),
    /// The file is not a module we can read.
    Corrupt { path: PathBuf, reason: String },
    /// The file ends in the signature marker but the signature trailer does not add up.
    BadSignature { path: PathBuf, reason: String },
    /// Modules that (through `depends=`) need each other.
    Cycle { chain: Vec<String> },
}

impl fmt::Display for ModuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Path(e) => write!(f, "{e}"),
            Self::NotFound {
                name,
                modules_dir,
                needed_by,
            } => {
                write!(f, "kernel module {name:?} ")?;
                if let Some(by) = needed_by {
                    write!(f, "(needed by {by}) ")?;
                }
                write!(
                    f,
                    "is not under {} and not listed in its modules.builtin; check the \
                     name, point modules_dir at the tree of the kernel you boot, or move \
                     it to optional_modules",
                    modules_dir.display()
                )
            }
            Self::Corrupt { path, reason } => write!(
                f,
                "{}: not a usable kernel module ({reason}); reinstall the kernel \
                 package or drop the module from the spec",
                path.display()
            ),
            Self::BadSignature { path, reason } => write!(
                f,
                "{}: the appended module signature is malformed ({reason}); the file is \
                 corrupt, reinstall the kernel package",
                path.display()
            ),
            Self::Cycle { chain } => write!(
                f,
                "kernel modules depend on each other in a cycle: {}; the modules tree is \
                 inconsistent",
                chain.join(" -> ")
            ),
        }
    }
}

impl std::error::Error for ModuleError {}

impl From<crate::confined::ConfinedError> for ModuleError {
    fn from(e: crate::confined::ConfinedError) -> Self {
        Self::Path(e)
    }
}

/// The fields of `.modinfo` that matter for the closure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub name: Option<String>,
    pub depends: Vec<String>,
    /// `softdep=pre:` names: modules or aliases to load before this one, if they exist.
    pub softdep_pre: Vec<String>,
    pub aliases: Vec<String>,
    /// Firmware files the module may request, relative to the firmware directory.
    pub firmware: Vec<String>,
    pub vermagic: Option<String>,
}

/// Parse `.modinfo`: NUL-separated `key=value` strings (with padding NULs in between).
pub fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for raw in section.split(|&b| b == 0) {
        let Ok(text) = std::str::from_utf8(raw) else {
            continue;
        };
        let Some((key, value)) = text.split_once('=') else {
            continue;
        };
        match key {
            "name" => info.name = Some(normalize_name(value)),
            "depends" => info.depends.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(normalize_name),
            ),
            "softdep" => info.softdep_pre.extend(softdep_pre(value)),
            "alias" => info.aliases.push(value.to_owned()),
            "firmware" => info.firmware.push(value.to_owned()),
            "vermagic" => info.vermagic = Some(value.to_owned()),
            _ => {}
        }
    }
    info
}

/// The `cpu:` aliases among a module's aliases: what `MODULE_DEVICE_TABLE(x86cpu, …)`
/// (or another architecture's CPU-feature table) produces. The kernel's CPU modalias
/// (`/sys/devices/system/cpu/modalias`) matches one of them exactly when the CPU has what
/// the module needs; stage 1 compares them at boot.
pub fn cpu_aliases(aliases: &[String]) -> Vec<String> {
    aliases
        .iter()
        .filter(|a| a.starts_with("cpu:"))
        .cloned()
        .collect()
}

/// The `pre:` words of a softdep value such as `pre: crc32c post: foo`. Words before any
/// `pre:`/`post:` marker are ignored, as modprobe does.
fn softdep_pre(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_pre = false;
    for word in value.split_whitespace() {
        match word {
            "pre:" => in_pre = true,
            "post:" => in_pre = false,
            w if in_pre => out.push(w.to_owned()),
            _ => {}
        }
    }
    out
}

const SIG_MARKER: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`: algo, hash, id_type, signer_len, key_id_len, pad[3], sig_len (BE).
const SIG_STRUCT_LEN: usize = 12;

/// Remove an appended signature (`<module><signature><struct module_signature><marker>`).
/// A module without the marker is returned unchanged. Stripping saves the kernel a
/// signature check per module at boot; a kernel that enforces signatures (lockdown,
/// `module.sig_enforce`) refuses stripped modules.
pub fn strip_signature(bytes: &[u8]) -> Result<&[u8], String> {
    let Some(body) = bytes.strip_suffix(SIG_MARKER) else {
        return Ok(bytes);
    };
    let struct_start = body
        .len()
        .checked_sub(SIG_STRUCT_LEN)
        .ok_or("file too short for the signature header")?;
    let st = &body[struct_start..];
    let sig_len = u32::from_be_bytes([st[8], st[9], st[10], st[11]]) as usize;
    let signer_len = st[3] as usize;
    let key_id_len = st[4] as usize;
    let trailer = sig_len + signer_len + key_id_len;
    let module_len = struct_start.checked_sub(trailer).ok_or_else(|| {
        format!("signature claims {trailer} bytes but only {struct_start} precede it")
    })?;
    Ok(&body[..module_len])
}

/// Read a module file, unpacking `.ko.xz` / `.ko.gz` / `.ko.zst`. Unpacking happens here
/// rather than at boot because a kernel without CONFIG_MODULE_DECOMPRESS (Debian 6.1)
/// cannot load compressed modules, and the initrd is compressed as a whole anyway.
pub fn read_module_file(path: &Path) -> Result<Vec<u8>, ModuleError> {
    let io = |error| ModuleError::Io {
        path: path.to_owned(),
        error,
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let raw = crate::input::read_regular(path).map_err(io)?;
    if name.ends_with(".ko.xz") {
        let mut out = Vec::new();
        lzma_rust2::XzReader::new(raw.as_slice(), true)
            .read_to_end(&mut out)
            .map_err(|e| ModuleError::Corrupt {
                path: path.to_owned(),
                reason: format!("cannot decompress xz: {e}"),
            })?;
        return Ok(out);
    }
    let corrupt = |e: std::io::Error| ModuleError::Corrupt {
        path: path.to_owned(),
        reason: format!("cannot decompress: {e}"),
    };
    if name.ends_with(".ko.gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(corrupt)?;
        return Ok(out);
    }
    if name.ends_with(".ko.zst") {
        return zstd::stream::decode_all(raw.as_slice()).map_err(corrupt);
    }
    Ok(raw)
}

/// The stem of a module file name (`crc32c-intel.ko.zst` -> `crc32c_intel`), or `None`
/// when the file is not a module.
fn module_stem(file_name: &str) -> Option<String> {
    [".ko", ".ko.gz", ".ko.zst", ".ko.xz"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))
        .map(normalize_name)
}

/// A module chosen for the initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModule {
    /// Name as the kernel knows it (`crc32c_intel`).
    pub name: String,
    pub source: PathBuf,
    /// Loaded if possible; stage 1 tolerates a failure.
    pub optional: bool,
    /// `firmware=` entries of the module.
    pub firmware: Vec<String>,
    /// Its `cpu:` aliases (the CPU features it needs, see [`cpu_aliases`]).
    pub cpu_aliases: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Closure {
    /// Load order, dependencies first.
    pub modules: Vec<ResolvedModule>,
    /// Requested or needed names that are built into the kernel (nothing to load).
    pub builtin: Vec<String>,
    /// Things worth telling the user that are not errors (missing optional modules,
    /// unresolvable softdeps).
    pub warnings: Vec<String>,
}

struct Loaded {
    path: PathBuf,
    info: ModInfo,
}

/// The modules of one kernel: every module file under the directory, by name.
pub struct ModuleIndex {
    dir: PathBuf,
    by_name: BTreeMap<String, PathBuf>,
    /// Position in `modules.order` (kernel link order), used to order alias matches the way
    /// depmod's `modules.alias` lists them.
    order: BTreeMap<String, usize>,
    builtin: BTreeSet<String>,
    /// alias pattern -> module names; filled on first use, since it needs every module's
    /// `.modinfo`.
    aliases: std::cell::OnceCell<Result<Vec<(String, String)>, String>>,
}

impl ModuleIndex {
    /// Index `dir` (a `lib/modules/<version>` directory): every `*.ko[.gz|.zst|.xz]` below
    /// it, plus `modules.builtin` and `modules.order` when present.
    pub fn open(dir: &Path) -> Result<Self, ModuleError> {
        Self::open_in_root(dir, None)
    }

    /// [`ModuleIndex::open`] for a tree under `root` (a host path of a system kept under a
    /// directory): `dir` lies under `root`, and every symlink met below it (NixOS's
    /// `kernel-modules` is a `buildEnv` of absolute links into the store) is followed
    /// inside `root` (see [`crate::confined`]); one that leads out of it is an error.
    /// With `modules.alias` present (depmod's, as NixOS ships it), aliases are read from
    /// it instead of from every module's `.modinfo`.
    pub fn open_in_root(dir: &Path, root: Option<&Path>) -> Result<Self, ModuleError> {
        let dir = &match root {
            Some(root) => crate::confined::resolve_host_path(root, dir)?,
            None => dir.to_owned(),
        };
        let mut files = Vec::new();
        walk(dir, dir, &mut files, 0, root)?;
        // A module under `updates/` overrides the stock one (depmod's default search
        // order); otherwise the first path in byte order wins, so the result is stable.
        files.sort_by_key(|(rel, _)| (!rel.starts_with("updates/"), rel.clone()));
        let mut by_name = BTreeMap::new();
        for (rel, path) in files {
            // The name in the tree, not the link target's (a store file may be named
            // anything).
            let name = Path::new(&rel).file_name().or_else(|| path.file_name());
            if let Some(stem) = name.and_then(|n| n.to_str()).and_then(module_stem) {
                by_name.entry(stem).or_insert(path);
            }
        }
        let read_optional = |name: &str| -> Result<String, ModuleError> {
            let p = dir.join(name);
            let p = match root {
                Some(root) => match crate::confined::resolve_host_path(root, &p) {
                    Ok(p) => p,
                    Err(e) if e.is_not_found() => return Ok(String::new()),
                    Err(e) => return Err(e.into()),
                },
                None => p,
            };
            match crate::input::read_regular_text(&p) {
                Ok(s) => Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(error) => Err(ModuleError::Io { path: p, error }),
            }
        };
        let stems = |text: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.trim().rsplit('/').next().and_then(module_stem))
                .collect()
        };
        let builtin = stems(&read_optional("modules.builtin")?)
            .into_iter()
            .collect();
        let order = stems(&read_optional("modules.order")?)
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, i))
            .collect();
        let aliases = std::cell::OnceCell::new();
        let alias_text = read_optional("modules.alias")?;
        if !alias_text.is_empty() {
            // `alias PATTERN MODULE`, one a line; only modules that are files here count
            // (a stale line naming a removed module must not resolve to nothing).
            let table: Vec<(String, String)> = alias_text
                .lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next()? == "alias").then_some(())?;
                    let pattern = w.next()?;
                    let module = normalize_name(w.next()?);
                    by_name
                        .contains_key(&module)
                        .then(|| (pattern.to_owned(), module))
                })
                .collect();
            let _ = aliases.set(Ok(table));
        }
        Ok(Self {
            dir: dir.to_owned(),
            by_name,
            order,
            builtin,
            aliases,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.by_name
            .get(&normalize_name(name))
            .map(PathBuf::as_path)
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize_name(name))
    }

    fn alias_table(&self) -> Result<&Vec<(String, String)>, String> {
        self.aliases
            .get_or_init(|| {
                let mut table = Vec::new();
                for (name, path) in &self.by_name {
                    let info = if path.extension().is_some_and(|e| e == "ko") {
                        // Plain modules: a few positioned reads instead of the whole file.
                        let file = crate::input::open_regular(path)
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                        elf::find_section(&file, ".modinfo")
                            .map_err(|e| format!("{}: {e}", path.display()))?
                    } else {
                        let bytes = read_module_file(path).map_err(|e| e.to_string())?;
                        elf::find_section(bytes.as_slice(), ".modinfo")
                            .map_err(|e| format!("{}: {e}", path.display()))?
                    };
                    if let Some(section) = info {
                        for alias in parse_modinfo(&section).aliases {
                            table.push((alias, name.clone()));
                        }
                    }
                }
                Ok(table)
            })
            .as_ref()
            .map_err(String::clone)
    }

    /// Module names an alias resolves to, in kernel link order.
    pub fn resolve_alias(&self, alias: &str) -> Result<Vec<String>, String> {
        let mut found: Vec<String> = self
            .alias_table()?
            .iter()
            .filter(|(pattern, _)| glob::matches(pattern.as_bytes(), alias.as_bytes()))
            .map(|(_, name)| name.clone())
            .collect();
        found.sort_by_key(|n| (self.order.get(n).copied().unwrap_or(usize::MAX), n.clone()));
        found.dedup();
        Ok(found)
    }

    fn load(&self, name: &str) -> Result<Loaded, ModuleError> {
        let path = self
            .by_name
            .get(name)
            .ok_or_else(|| ModuleError::NotFound {
                name: name.into(),
                modules_dir: self.dir.clone(),
                needed_by: None,
            })?
            .clone();
        let bytes = read_module_file(&path)?;
        let section = elf::find_section(bytes.as_slice(), ".modinfo")
            .map_err(|e| ModuleError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| ModuleError::Corrupt {
                path: path.clone(),
                reason: "it has no .modinfo section".into(),
            })?;
        Ok(Loaded {
            path,
            info: parse_modinfo(&section),
        })
    }

    /// The modules to load for `required` and `optional` names, dependencies first.
    ///
    /// A module is required when a required name reaches it through `depends=` alone;
    /// optional names, softdeps and whatever only they pull in are optional, because a
    /// failure to load them is survivable (modprobe ignores failing softdeps too).
    pub fn closure(
        &self,
        required: &[String],
        optional: &[String],
    ) -> Result<Closure, ModuleError> {
        let mut walk = Walk {
            index: self,
            loaded: BTreeMap::new(),
            state: BTreeMap::new(),
            order: Vec::new(),
            stack: Vec::new(),
            depths: BTreeMap::new(),
            closure: Closure::default(),
        };
        let mut roots_required = Vec::new();
        for (names, is_required) in [(required, true), (optional, false)] {
            for raw in names {
                let name = normalize_name(raw);
                for resolved in walk.resolve_request(&name, is_required)? {
                    if is_required {
                        roots_required.push(resolved.clone());
                    }
                    walk.visit(&resolved, None)?;
                }
            }
        }
        // Required set: reachable from required roots over `depends=` only.
        let mut required_set = BTreeSet::new();
        let mut queue = roots_required;
        while let Some(n) = queue.pop() {
            if required_set.insert(n.clone()) {
                if let Some(l) = walk.loaded.get(&n) {
                    queue.extend(
                        l.info
                            .depends
                            .iter()
                            .filter(|d| walk.loaded.contains_key(*d))
                            .cloned(),
                    );
                }
            }
        }
        let mut closure = walk.closure;
        for name in walk.order {
            if let Some(l) = walk.loaded.get(&name) {
                closure.modules.push(ResolvedModule {
                    name: l.info.name.clone().unwrap_or_else(|| name.clone()),
                    source: l.path.clone(),
                    optional: !required_set.contains(&name),
                    firmware: l.info.firmware.clone(),
                    cpu_aliases: cpu_aliases(&l.info.aliases),
                });
            }
        }
        closure.builtin.sort();
        closure.builtin.dedup();
        Ok(closure)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Visiting,
    Done,
}

struct Walk<'a> {
    index: &'a ModuleIndex,
    loaded: BTreeMap<String, Loaded>,
    state: BTreeMap<String, Mark>,
    order: Vec<String>,
    stack: Vec<String>,
    depths: BTreeMap<String, usize>,
    closure: Closure,
}

impl Walk<'_> {
    /// A name from the spec: a module file, a built-in module, or an alias of either.
    fn resolve_request(&mut self, name: &str, required: bool) -> Result<Vec<String>, ModuleError> {
        if self.index.by_name.contains_key(name) {
            return Ok(vec![name.to_owned()]);
        }
        if self.index.builtin.contains(name) {
            self.closure.builtin.push(name.to_owned());
            return Ok(Vec::new());
        }
        // `modprobe crc32c` works through aliases; requests may use them too. The alias
        // scan reads every module's header, so it only runs when a name is not a file.
        let via_alias = self.index.resolve_alias(name).unwrap_or_default();
        if !via_alias.is_empty() {
            return Ok(via_alias);
        }
        if required {
            return Err(ModuleError::NotFound {
                name: name.to_owned(),
                modules_dir: self.index.dir.clone(),
                needed_by: None,
            });
        }
        self.closure.warnings.push(format!(
            "optional module {name} is not in {}; skipped",
            self.index.dir.display()
        ));
        Ok(Vec::new())
    }

    fn visit(&mut self, name: &str, needed_by: Option<&str>) -> Result<(), ModuleError> {
        match self.state.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let from = self.stack.iter().position(|n| n == name).unwrap_or(0);
                let mut chain = self.stack[from..].to_vec();
                chain.push(name.to_owned());
                return Err(ModuleError::Cycle { chain });
            }
            None => {}
        }
        if !self.index.by_name.contains_key(name) {
            if self.index.builtin.contains(name) {
                self.closure.builtin.push(name.to_owned());
                return Ok(());
            }
            return Err(ModuleError::NotFound {
                name: name.to_owned(),
                modules_dir: self.index.dir.clone(),
                needed_by: needed_by.map(str::to_owned),
            });
        }
        self.state.insert(name.to_owned(), Mark::Visiting);
        self.stack.push(name.to_owned());
        let info = &self.ensure_loaded(name)?.info;
        let soft = info.softdep_pre.clone();
        let mut hard = info.depends.clone();
        // Deeper dependencies first, ties in the order listed. Any order of siblings is
        // correct; this one reproduces kmod's `modprobe --show-depends` on the virtio and
        // ext4 sets (virtio before the leaf virtio_pci_*_dev helpers).
        let mut depths = BTreeMap::new();
        for dep in &hard {
            depths.insert(dep.clone(), self.depth(dep, &mut Vec::new())?);
        }
        hard.sort_by_key(|d| std::cmp::Reverse(depths.get(d).copied().unwrap_or(0)));

        for dep in soft {
            for target in self.resolve_softdep(name, &dep) {
                // A softdep that loops back is dropped: it is only a hint.
                if self.state.get(&target) == Some(&Mark::Visiting) {
                    continue;
                }
                self.visit(&target, Some(name))?;
            }
        }
        for dep in hard {
            self.visit(&dep, Some(name))?;
        }
        self.stack.pop();
        self.state.insert(name.to_owned(), Mark::Done);
        self.order.push(name.to_owned());
        Ok(())
    }

    fn ensure_loaded(&mut self, name: &str) -> Result<&Loaded, ModuleError> {
        if !self.loaded.contains_key(name) {
            let l = self.index.load(name)?;
            self.loaded.insert(name.to_owned(), l);
        }
        self.loaded.get(name).ok_or_else(|| ModuleError::NotFound {
            name: name.to_owned(),
            modules_dir: self.index.dir.clone(),
            needed_by: None,
        })
    }

    /// Length of the longest `depends=` chain below `name` (0 for a leaf). Names that are
    /// built in or missing count as leaves here; `visit` reports the missing ones.
    fn depth(&mut self, name: &str, path: &mut Vec<String>) -> Result<usize, ModuleError> {
        if let Some(d) = self.depths.get(name) {
            return Ok(*d);
        }
        if !self.index.by_name.contains_key(name) {
            return Ok(0);
        }
        if let Some(from) = path.iter().position(|n| n == name) {
            let mut chain = path[from..].to_vec();
            chain.push(name.to_owned());
            return Err(ModuleError::Cycle { chain });
        }
        path.push(name.to_owned());
        let deps = self.ensure_loaded(name)?.info.depends.clone();
        let mut d = 0;
        for dep in deps {
            d = d.max(self.depth(&dep, path)? + 1);
        }
        path.pop();
        self.depths.insert(name.to_owned(), d);
        Ok(d)
    }

    fn resolve_softdep(&mut self, owner: &str, dep: &str) -> Vec<String> {
        let norm = normalize_name(dep);
        if self.index.by_name.contains_key(&norm) {
            return vec![norm];
        }
        if self.index.builtin.contains(&norm) {
            return Vec::new();
        }
        match self.index.resolve_alias(dep) {
            Ok(found) if !found.is_empty() => found,
            Ok(_) => {
                self.closure.warnings.push(format!(
                    "softdep {dep} of {owner} matches no module; ignored (it may be built in)"
                ));
                Vec::new()
            }
            Err(e) => {
                self.closure.warnings.push(format!(
                    "softdep {dep} of {owner} not resolved, the alias scan failed: {e}"
                ));
                Vec::new()
            }
        }
    }
}

/// Collect `(path relative to root, absolute path)` of module files under `dir`.
fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, PathBuf)>,
    depth: usize,
    confine: Option<&Path>,
) -> Result<(), ModuleError> {
    // Symlinked directories are followed (a modules tree may link `build/`), so bound the
    // depth against loops.
    if depth > 32 {
        return Ok(());
    }
    let io = |error| ModuleError::Io {
        path: dir.to_owned(),
        error,
    };
    let listing = match confine {
        Some(c) => crate::confined::resolve_host_path(c, dir)?,
        None => dir.to_owned(),
    };
    let mut entries: Vec<_> = std::fs::read_dir(&listing)
        .map_err(io)?
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = dir.join(entry.file_name());
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // `build` and `source` point at kernel headers, never at modules.
        if depth == 0 && (name == "build" || name == "source") {
            continue;
        }
        // Under a root, the entry is resolved inside it first: what is read below is
        // then a real file or directory, never a link into the host.
        let real = match confine {
            Some(c) => match crate::confined::resolve_host_path(c, &path) {
                Ok(p) => p,
                // A dangling link, as `metadata` below skips it.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            },
            None => path.clone(),
        };
        let Ok(meta) = std::fs::metadata(&real) else {
            continue;
        };
        if meta.is_dir() {
            // Walk the link's own path so entries keep their place in this tree
            // (`updates/` and relative names), each resolved again.
            walk(root, &path, out, depth + 1, confine)?;
        } else if module_stem(name).is_some() {
            let rel = path
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((rel, real));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_fields() {
        let info = parse_modinfo(
            b"softdep=pre: crypto-crc32c post: foo\0\0\0license=GPL\0alias=fs-ext4\0\
              depends=jbd2,mbcache,crc16\0name=ext4\0vermagic=6.1.0 SMP\0",
        );
        assert_eq!(info.name.as_deref(), Some("ext4"));
        assert_eq!(info.depends, ["jbd2", "mbcache", "crc16"]);
        assert_eq!(info.softdep_pre, ["crypto-crc32c"]);
        assert_eq!(info.aliases, ["fs-ext4"]);
        assert_eq!(parse_modinfo(b"depends=\0").depends, Vec::<String>::new());
        assert_eq!(
            parse_modinfo(b"softdep=gcm pre: a b\0").softdep_pre,
            ["a", "b"]
        );
    }

    #[test]
    fn globbing() {
        let glob_match = |p: &str, t: &str| glob::matches(p.as_bytes(), t.as_bytes());
        assert!(glob_match("crc32c", "crc32c"));
        assert!(!glob_match("crc32c", "crc32"));
        assert!(glob_match(
            "cpu:type:x86,ven*fam*mod*:feature:*0094*",
            "cpu:type:x86,ven0000fam0006mod003F:feature:,0094,"
        ));
        assert!(glob_match(
            "pci:v00001AF4d*sv*",
            "pci:v00001AF4d00001001sv00001AF4"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("x[0-9]y", "x5y"));
        assert!(!glob_match("x[!0-9]y", "x5y"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "ac"));
    }

    #[test]
    fn signature_strip() {
        let module = b"\x7fELF-module-bytes".to_vec();
        let sig = vec![0xAB; 300];
        let mut signed = module.clone();
        signed.extend_from_slice(&sig);
        signed.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        signed.extend_from_slice(&(sig.len() as u32).to_be_bytes());
        signed.extend_from_slice(SIG_MARKER);
        assert_eq!(strip_signature(&signed).expect("strip"), module.as_slice());
        assert_eq!(
            strip_signature(&module).expect("unsigned"),
            module.as_slice()
        );

        let mut lying = module.clone();
        lying.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        lying.extend_from_slice(&10_000u32.to_be_bytes());
        lying.extend_from_slice(SIG_MARKER);
        assert!(strip_signature(&lying).is_err());
        assert!(strip_signature(SIG_MARKER).is_err());
    }
}
