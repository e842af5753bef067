//! The host programs (bash, coreutils, util-linux, …) and kernel modules a NixOS-layout
//! store holds, copied and named as nixpkgs names them (see [`crate::nixos_generation`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use stagehand_initrd::modules::ModuleIndex;

use crate::generation::{ldd, SystemImage};
use crate::host::run;
use crate::store::{StoreBuilder, StorePath};
use crate::tree::{install_host_path, Node, Tree};

/// A host program copied into the store as a nixpkgs package would hold it.
pub(crate) struct ToolPackage {
    /// The nixpkgs name (`util-linux`); the store name adds the version and `suffix`.
    pub(crate) name: &'static str,
    /// The Debian package whose version names the store path.
    pub(crate) debian: &'static str,
    /// `-bin` for split outputs (`util-linux-2.38.1-bin`).
    pub(crate) suffix: &'static str,
    /// Host programs, each becoming `bin/<file name>`.
    pub(crate) bins: &'static [&'static str],
    /// `bin/<name>` → `<target>` links inside the package.
    pub(crate) links: &'static [(&'static str, &'static str)],
}

/// What NixOS's scripts run: the activation script's PATH (coreutils, grep, findutils, getent,
/// shadow, util-linux), stage 2's PATH (coreutils, util-linux), `/bin/sh`'s bash, the
/// modprobe the kernel is pointed at. Only the programs the fixture's snippets and stage 2
/// use are copied (a whole coreutils would only make the image bigger).
pub(crate) const TOOL_PACKAGES: &[ToolPackage] = &[
    ToolPackage {
        name: "bash",
        debian: "bash",
        suffix: "",
        bins: &["/usr/bin/bash"],
        links: &[("sh", "bash")],
    },
    ToolPackage {
        name: "coreutils",
        debian: "coreutils",
        suffix: "",
        bins: &[
            "/usr/bin/basename",
            "/usr/bin/cat",
            "/usr/bin/chmod",
            "/usr/bin/chown",
            "/usr/bin/cp",
            "/usr/bin/date",
            "/usr/bin/dirname",
            "/usr/bin/echo",
            "/usr/bin/env",
            "/usr/bin/false",
            "/usr/bin/head",
            "/usr/bin/id",
            "/usr/bin/install",
            "/usr/bin/ln",
            "/usr/bin/ls",
            "/usr/bin/mkdir",
            "/usr/bin/mv",
            "/usr/bin/printf",
            "/usr/bin/readlink",
            "/usr/bin/rm",
            "/usr/bin/sleep",
            "/usr/bin/sort",
            "/usr/bin/stat",
            "/usr/bin/touch",
            "/usr/bin/tr",
            "/usr/bin/true",
            "/usr/bin/uname",
            "/usr/bin/wc",
        ],
        links: &[],
    },
    ToolPackage {
        name: "gnugrep",
        debian: "grep",
        suffix: "",
        bins: &["/usr/bin/grep"],
        links: &[],
    },
    ToolPackage {
        name: "findutils",
        debian: "findutils",
        suffix: "",
        bins: &["/usr/bin/find"],
        links: &[],
    },
    ToolPackage {
        name: "getent-glibc",
        debian: "libc-bin",
        suffix: "",
        bins: &["/usr/bin/getent"],
        links: &[],
    },
    ToolPackage {
        name: "shadow",
        debian: "login",
        suffix: "",
        bins: &["/usr/sbin/nologin"],
        links: &[],
    },
    ToolPackage {
        name: "util-linux",
        debian: "util-linux",
        suffix: "-bin",
        bins: &[
            "/usr/bin/findmnt",
            "/usr/bin/mount",
            "/usr/bin/mountpoint",
            "/usr/bin/umount",
        ],
        links: &[],
    },
    ToolPackage {
        name: "kmod",
        debian: "kmod",
        suffix: "",
        bins: &["/usr/bin/kmod"],
        links: &[
            ("depmod", "kmod"),
            ("insmod", "kmod"),
            ("lsmod", "kmod"),
            ("modinfo", "kmod"),
            ("modprobe", "kmod"),
            ("rmmod", "kmod"),
        ],
    },
];

/// The host programs, found and measured once: each package's store name and tree, and the
/// shared libraries they load.
#[derive(Debug, Clone)]
pub struct HostTools {
    pub(crate) packages: Vec<(&'static str, String, Tree)>,
    pub(crate) libraries: BTreeSet<PathBuf>,
}

/// Where [`HostTools`] landed in one image's store, by nixpkgs name.
#[derive(Debug, Clone, Default)]
pub struct ToolPaths(BTreeMap<&'static str, StorePath>);

impl ToolPaths {
    pub fn get(&self, name: &str) -> Result<&StorePath> {
        self.0
            .get(name)
            .with_context(|| format!("the fixture has no {name} package"))
    }

    pub(crate) fn list(&self, names: &[&str]) -> Result<Vec<String>> {
        names
            .iter()
            .map(|n| self.get(n).map(|p| p.to_string()))
            .collect()
    }
}

impl HostTools {
    pub fn discover() -> Result<Self> {
        let mut packages = Vec::new();
        let mut libraries = BTreeSet::new();
        for p in TOOL_PACKAGES {
            let mut tree = Tree::new();
            for bin in p.bins {
                let path = Path::new(bin);
                if !path.is_file() {
                    bail!(
                        "{bin} is missing: the NixOS fixture copies it from the host \
                         (Debian package {}; run vm-tests/setup-host)",
                        p.debian
                    );
                }
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("tool");
                tree.insert(&format!("bin/{name}"), Node::executable(path))?;
                libraries.extend(ldd(path)?);
            }
            for (link, target) in p.links {
                tree.insert(&format!("bin/{link}"), Node::symlink(*target))?;
            }
            let version = debian_version(p.debian)
                .map(|v| format!("-{v}"))
                .unwrap_or_default();
            packages.push((p.name, format!("{}{version}{}", p.name, p.suffix), tree));
        }
        Ok(Self {
            packages,
            libraries,
        })
    }

    /// Put the packages into the image's store and their libraries at the host paths.
    pub fn add_to(&self, image: &mut SystemImage) -> Result<ToolPaths> {
        for lib in &self.libraries {
            install_host_path(&mut image.root, lib)?;
        }
        let mut paths = ToolPaths::default();
        for (name, store_name, tree) in &self.packages {
            let path = image.store.add(store_name, Node::Dir(tree.clone()))?;
            paths.0.insert(name, path);
        }
        Ok(paths)
    }

    /// `sw`: NixOS's `system-path`, a tree of links to every package's programs.
    pub(crate) fn system_path(
        &self,
        store: &mut StoreBuilder,
        paths: &ToolPaths,
    ) -> Result<StorePath> {
        let mut sw = Tree::new();
        for (name, _, tree) in &self.packages {
            let Some(Node::Dir(bin)) = tree.get("bin") else {
                continue;
            };
            let pkg = paths.get(name)?;
            for (prog, _) in bin.entries() {
                sw.insert(
                    &format!("bin/{prog}"),
                    Node::symlink(pkg.join(&format!("bin/{prog}"))),
                )?;
            }
        }
        store.add("system-path", Node::Dir(sw))
    }
}

/// `5.2.15` from `dpkg-query` (`5.2.15-2+b8`: the epoch and the Debian revision dropped);
/// `None` when dpkg does not know the package.
pub(crate) fn debian_version(package: &str) -> Option<String> {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${Version}", package])).ok()?;
    upstream_version(out.trim())
}

pub(crate) fn upstream_version(v: &str) -> Option<String> {
    let v = v.split_once(':').map_or(v, |(_, rest)| rest);
    let v = v.rsplit_once('-').map_or(v, |(up, _)| up);
    let ok = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+._~".contains(c));
    ok.then(|| v.replace('~', "_"))
}

/// The kernel's modules as NixOS ships them: `lib/modules/<version>/` with the modules a
/// boot needs as `.ko.xz` (CRC32 check, what the kernel's decompressor takes), `modules.order`,
/// `modules.builtin*` from the package, and the indexes `depmod -b` makes.
#[derive(Debug, Clone)]
pub struct KernelModules {
    pub version: String,
    /// The directory holding `lib/modules/<version>` (the store path's contents).
    pub root: PathBuf,
}

impl KernelModules {
    /// `<root>/lib/modules/<version>`, what an initrd builder reads.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }

    /// The closure of `wanted` (and `optional`, when present) from a Debian
    /// `lib/modules/<version>` directory, compressed into `out` (replaced).
    pub fn build(
        debian_dir: &Path,
        version: &str,
        wanted: &[&str],
        optional: &[&str],
        out: &Path,
    ) -> Result<Self> {
        for tool in ["xz", "depmod"] {
            if !crate::host::on_path(tool) {
                bail!("{tool} is missing (xz-utils, kmod): run vm-tests/setup-host");
            }
        }
        if out.exists() {
            fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
        }
        let dir = out.join("lib/modules").join(version);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let index = ModuleIndex::open(debian_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let closure = index
            .closure(&owned(wanted), &owned(optional))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for m in &closure.modules {
            let rel = m.source.strip_prefix(debian_dir).with_context(|| {
                format!(
                    "{} is not under {}",
                    m.source.display(),
                    debian_dir.display()
                )
            })?;
            let rel = rel
                .to_str()
                .with_context(|| format!("non-UTF-8 module path {}", rel.display()))?;
            let dest = dir.join(format!("{}.xz", rel.trim_end_matches(".xz")));
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let xz = Command::new("xz")
                .args(["--check=crc32", "-c"])
                .arg(&m.source)
                .output()
                .with_context(|| format!("running xz on {}", m.source.display()))?;
            if !xz.status.success() {
                bail!(
                    "xz --check=crc32 {} failed: {}",
                    m.source.display(),
                    String::from_utf8_lossy(&xz.stderr)
                );
            }
            fs::write(&dest, &xz.stdout).with_context(|| format!("writing {}", dest.display()))?;
        }
        for name in [
            "modules.order",
            "modules.builtin",
            "modules.builtin.modinfo",
        ] {
            let src = debian_dir.join(name);
            if src.is_file() {
                fs::copy(&src, dir.join(name))
                    .with_context(|| format!("copying {}", src.display()))?;
            }
        }
        run(Command::new("depmod").arg("-b").arg(out).arg(version))
            .context("making modules.dep for the fixture's kernel-modules")?;
        if !dir.join("modules.dep").is_file() {
            bail!("depmod -b {} {version} wrote no modules.dep", out.display());
        }
        Ok(Self {
            version: version.into(),
            root: out.to_path_buf(),
        })
    }
}

/// A host directory as a tree (files read-only, as in the store; links kept).
pub(crate) fn host_dir_tree(dir: &Path) -> Result<Tree> {
    let mut t = Tree::new();
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e
            .file_name()
            .into_string()
            .map_err(|n| anyhow::anyhow!("non-UTF-8 name {n:?} in {}", dir.display()))?;
        let ft = e.file_type()?;
        let node = if ft.is_dir() {
            Node::Dir(host_dir_tree(&path)?)
        } else if ft.is_symlink() {
            let target = fs::read_link(&path)?;
            Node::symlink(
                target
                    .to_str()
                    .with_context(|| format!("non-UTF-8 link {}", path.display()))?,
            )
        } else {
            Node::host_file(&path, 0o444)
        };
        t.insert(&name, node)?;
    }
    Ok(t)
}
