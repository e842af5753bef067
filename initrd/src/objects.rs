//! Copying programs and other files into the initrd with everything they need, the way
//! make-initrd-ng does (nixos-boot-chain.md §7):
//!
//! - each object lands at its own absolute path inside the initrd;
//! - a symlink is recreated verbatim and its target is copied too, including symlinks in
//!   the middle of a path (`/lib64 -> usr/lib64`), so the loader finds what it expects;
//! - a directory given as an object brings its whole tree; a directory reached on the way
//!   to something else is only created;
//! - an ELF file brings its interpreter and its `DT_NEEDED` libraries, found through
//!   `DT_RUNPATH` (else `DT_RPATH`, with `$ORIGIN`) and then the library directories of a
//!   conventional host (empty for a pure Nix closure). An unresolved library is a warning,
//!   as in make-initrd-ng: glibc's own dependencies are found by its loader at run time.
//!
//! One exception to "symlinks verbatim": when the initrd already has a real directory
//! where the host has a symlink (on a merged-/usr host `/lib -> usr/lib`, while the
//! initrd keeps its modules in a real `/lib/modules`), the path goes on through that
//! directory instead, and the file lands under it.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cpio::{Archive, Entry, Node};
use crate::{archive_err, default_perm, elf, InitrdError};

/// One entry of make-initrd-ng's JSON input. Its `dlopen` key is accepted and ignored;
/// any other key is an error naming it (read through [`StoreObjectEntry`]).
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(from = "StoreObjectEntry")]
pub struct StoreObject {
    /// Absolute path on the build host; copied to the same path in the initrd.
    pub source: PathBuf,
    /// When set, `/<target>` in the initrd becomes a symlink to `source`.
    #[serde(default)]
    pub target: Option<String>,
}

/// The JSON form of a [`StoreObject`]: make-initrd-ng's keys, and nothing else, so a
/// misspelt `sourc` is refused rather than read as an entry without a source.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreObjectEntry {
    source: PathBuf,
    #[serde(default)]
    target: Option<String>,
    /// make-initrd-ng's dlopen hints; libraries a program dlopens are listed as their own
    /// entries instead.
    #[serde(default, rename = "dlopen")]
    _dlopen: Option<serde::de::IgnoredAny>,
}

impl From<StoreObjectEntry> for StoreObject {
    fn from(entry: StoreObjectEntry) -> Self {
        StoreObject {
            source: entry.source,
            target: entry.target,
        }
    }
}

/// Where a conventional x86_64 Linux host keeps shared libraries (Debian's multiarch
/// directories first), searched after RUNPATH/RPATH.
pub const DEFAULT_LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// A bound on symlinks followed for one object, as the kernel's ELOOP limit.
const MAX_LINKS: usize = 40;

/// Copy `objects` and their closures into `archive`.
pub fn add_objects(
    archive: &mut Archive,
    objects: &[StoreObject],
    library_dirs: &[PathBuf],
    warnings: &mut Vec<String>,
) -> Result<(), InitrdError> {
    let mut copier = Copier {
        archive,
        library_dirs,
        warnings,
        queue: VecDeque::new(),
        seen: BTreeMap::new(),
    };
    for object in objects {
        if !object.source.is_absolute() {
            return Err(InitrdError::ObjectNotAbsolute {
                path: object.source.clone(),
            });
        }
        copier.queue.push_back(Job {
            path: object.source.clone(),
            whole_tree: true,
            links: 0,
        });
        if let Some(target) = &object.target {
            let link = object.source.to_string_lossy().into_owned();
            copier
                .archive
                .add(
                    target,
                    Entry {
                        perm: 0o777,
                        node: Node::Symlink(link),
                    },
                )
                .map_err(archive_err(format!(
                    "object {} -> {target}",
                    object.source.display()
                )))?;
        }
    }
    while let Some(job) = copier.queue.pop_front() {
        copier.process(job)?;
    }
    Ok(())
}

struct Job {
    path: PathBuf,
    /// The object itself (or inside one): a directory brings its children.
    whole_tree: bool,
    /// Symlinks followed to get here.
    links: usize,
}

struct Copier<'a> {
    archive: &'a mut Archive,
    library_dirs: &'a [PathBuf],
    warnings: &'a mut Vec<String>,
    queue: VecDeque<Job>,
    /// Paths done, and whether as a whole tree (a directory first reached on the way to
    /// something else may later be asked for whole).
    seen: BTreeMap<PathBuf, bool>,
}

fn name_of(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The error for an I/O failure on `path` while copying an object.
fn object_io(path: &Path) -> impl FnOnce(std::io::Error) -> InitrdError {
    let path = path.to_owned();
    move |error| InitrdError::Io {
        path,
        what: "object",
        error,
    }
}

impl Copier<'_> {
    /// Walk `job.path` a component at a time: a symlink on the way is copied and its target
    /// queued (with the rest of the path), the last component is copied.
    fn process(&mut self, job: Job) -> Result<(), InitrdError> {
        match self.seen.get(&job.path) {
            Some(&whole) if whole || !job.whole_tree => return Ok(()),
            _ => {}
        }
        self.seen.insert(job.path.clone(), job.whole_tree);

        let parts: Vec<Component> = job.path.components().collect();
        let mut cur = PathBuf::from("/");
        for (i, part) in parts.iter().enumerate() {
            let name: OsString = match part {
                Component::RootDir | Component::Prefix(_) | Component::CurDir => continue,
                Component::ParentDir => {
                    cur.pop();
                    continue;
                }
                Component::Normal(n) => n.to_os_string(),
            };
            let next = cur.join(&name);
            let last = i + 1 == parts.len();
            let meta = std::fs::symlink_metadata(&next).map_err(object_io(&next))?;
            if meta.file_type().is_symlink() {
                if !last && self.is_dir_in_archive(&next) {
                    cur = next;
                    continue;
                }
                return self.follow_symlink(&job, &cur, &next, &parts[i + 1..]);
            }
            if !last {
                cur = next;
                continue;
            }
            self.copy_node(&job, &next, &meta)?;
        }
        Ok(())
    }

    /// A link on the way that the archive already has as a directory (merged /usr: the
    /// initrd's real `/lib`) is walked through, not copied.
    fn is_dir_in_archive(&self, path: &Path) -> bool {
        matches!(
            self.archive.get(&name_of(path)),
            Some(Entry {
                node: Node::Dir,
                ..
            })
        )
    }

    /// Copy the link at `link` (in directory `dir`) and queue its target followed by
    /// `rest`, the part of the path after the link.
    fn follow_symlink(
        &mut self,
        job: &Job,
        dir: &Path,
        link: &Path,
        rest: &[Component],
    ) -> Result<(), InitrdError> {
        let target = std::fs::read_link(link).map_err(object_io(link))?;
        self.archive
            .add(
                &name_of(link),
                Entry {
                    perm: 0o777,
                    node: Node::Symlink(target.to_string_lossy().into_owned()),
                },
            )
            .map_err(archive_err(format!("object {}", job.path.display())))?;
        if job.links >= MAX_LINKS {
            return Err(InitrdError::SymlinkLoop {
                path: job.path.clone(),
            });
        }
        // The link's target, then whatever of the path was left after the link.
        let mut resolved = if target.is_absolute() {
            target
        } else {
            dir.join(target)
        };
        for part in rest {
            resolved.push(part.as_os_str());
        }
        self.queue.push_back(Job {
            path: resolved,
            whole_tree: job.whole_tree,
            links: job.links + 1,
        });
        Ok(())
    }

    /// The object itself: a directory (its children queued when the whole tree is wanted),
    /// a file (its ELF dependencies queued), anything else a warning.
    fn copy_node(
        &mut self,
        job: &Job,
        path: &Path,
        meta: &std::fs::Metadata,
    ) -> Result<(), InitrdError> {
        if meta.is_dir() {
            self.archive
                .add(
                    &name_of(path),
                    Entry {
                        perm: 0o755,
                        node: Node::Dir,
                    },
                )
                .map_err(archive_err(format!("object {}", job.path.display())))?;
            if job.whole_tree {
                let mut children: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(object_io(path))?
                    .map(|e| e.map(|e| e.path()))
                    .collect::<Result<_, _>>()
                    .map_err(object_io(path))?;
                children.sort();
                for child in children {
                    self.queue.push_back(Job {
                        path: child,
                        whole_tree: true,
                        links: 0,
                    });
                }
            }
        } else if meta.is_file() {
            let data = crate::input::read_regular(path).map_err(object_io(path))?;
            self.elf_dependencies(path, &data);
            self.archive
                .add(
                    &name_of(path),
                    Entry {
                        perm: default_perm(meta),
                        node: Node::File(data),
                    },
                )
                .map_err(archive_err(format!("object {}", job.path.display())))?;
        } else {
            self.warnings.push(format!(
                "{}: not a file, directory or symlink; skipped",
                path.display()
            ));
        }
        Ok(())
    }

    /// Queue the interpreter and libraries of an ELF file; anything else has none.
    fn elf_dependencies(&mut self, path: &Path, data: &[u8]) {
        let dynamic = match elf::dynamic(data) {
            Ok(d) => d,
            Err(elf::ElfError::NotElf) => return,
            Err(e) => {
                self.warnings.push(format!(
                    "{}: ELF not readable ({e}); copied without its libraries",
                    path.display()
                ));
                return;
            }
        };
        if let Some(interp) = dynamic.interpreter {
            self.queue.push_back(Job {
                path: PathBuf::from(interp),
                whole_tree: false,
                links: 0,
            });
        }
        let origin = path.parent().unwrap_or(Path::new("/"));
        let search: Vec<PathBuf> = if dynamic.runpath.is_empty() {
            &dynamic.rpath
        } else {
            &dynamic.runpath
        }
        .iter()
        .map(|d| {
            PathBuf::from(
                d.replace("${ORIGIN}", &origin.to_string_lossy())
                    .replace("$ORIGIN", &origin.to_string_lossy()),
            )
        })
        .chain(self.library_dirs.iter().cloned())
        .collect();
        for soname in dynamic.needed {
            if soname.contains('/') {
                self.queue.push_back(Job {
                    path: origin.join(&soname),
                    whole_tree: false,
                    links: 0,
                });
                continue;
            }
            match search.iter().map(|d| d.join(&soname)).find(|p| p.is_file()) {
                Some(found) => self.queue.push_back(Job {
                    path: found,
                    whole_tree: false,
                    links: 0,
                }),
                None => self.warnings.push(format!(
                    "{}: needs {soname}, which is in none of its RUNPATH/RPATH or the \
                     library directories; it will not start unless that is provided",
                    path.display()
                )),
            }
        }
    }
}
