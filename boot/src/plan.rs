//! A boot-partition change as data: what to copy, write and remove, computed by a pure
//! planner (systemd-boot or extlinux) from the generations and the partition's current
//! state, then applied by [`super::esp::apply`]. Printing a plan is `--dry-run`.

use std::fmt;
use std::path::PathBuf;

/// Copy a file (or a directory tree, for `dtbs`) from the system root to the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// Canonical path inside the system root.
    pub source: PathBuf,
    /// Path relative to the partition root, e.g. `EFI/nixos/<hash>-linux-6.1-bzImage.efi`.
    pub dest: String,
    /// Bytes of file data (all files, for a tree).
    pub size: u64,
    /// Number of files (1 for a file); each may waste up to one cluster.
    pub files: u64,
    pub tree: bool,
}

/// Create or replace a small file with these contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub dest: String,
    pub contents: Vec<u8>,
}

/// Remove a file (or tree) we manage that nothing references any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub path: String,
    pub size: u64,
    pub tree: bool,
    /// The entry the partition boots by default now, or a file it names: removed only after
    /// every new file is written, so that a crash in between still boots the old default.
    pub boots_now: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilePlan {
    /// Directories that must exist (created in order, parents first).
    pub dirs: Vec<String>,
    /// Kernel, initrd and device-tree copies; done first so entries never name a missing file.
    pub copies: Vec<Copy>,
    /// Entry files and loader configuration, in the order they are written.
    pub writes: Vec<Write>,
    pub removals: Vec<Removal>,
    /// Things the user should know that do not stop the install.
    pub warnings: Vec<String>,
    /// What was chosen where there was a choice (which initrd each entry boots); printed
    /// with the plan and by the installer, not a problem.
    pub notes: Vec<String>,
}

/// In which order the executor may apply a plan so that it fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Everything new fits beside the old: write first, remove last (a failure midway leaves
    /// every old entry bootable).
    WriteThenRemove,
    /// It only fits once some unreferenced files are gone: those the current default entry
    /// does not need are removed first (no entry we keep references them), then the new
    /// files are written, then the old default's files go.
    RemoveThenWrite,
}

/// The partition cannot take the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceError {
    pub partition: PathBuf,
    pub needed: u64,
    pub available: u64,
    pub freeable: u64,
}

impl fmt::Display for SpaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not enough space on {}: the new boot files need {} bytes, {} bytes are free and \
             removing unreferenced files would free {} more (the files of the entry booted now \
             stay until the new ones are written); nothing was changed. Lower the \
             number of generations kept (--limit), delete old generations \
             (nix-collect-garbage -d), or enlarge the partition",
            self.partition.display(),
            self.needed,
            self.available,
            self.freeable
        )
    }
}

impl std::error::Error for SpaceError {}

fn round_up(n: u64, cluster: u64) -> u64 {
    let c = cluster.max(1);
    n.div_ceil(c).saturating_mul(c)
}

impl FilePlan {
    pub fn is_empty(&self) -> bool {
        self.copies.is_empty() && self.writes.is_empty() && self.removals.is_empty()
    }

    /// Upper bound of the space the new files take, in bytes, on a file system with this
    /// allocation unit: each file rounded up to whole clusters, plus one cluster per file
    /// for a tree (whose per-file sizes we do not keep) and per new directory.
    pub fn bytes_needed(&self, cluster: u64) -> u64 {
        let mut n = 0u64;
        for c in &self.copies {
            let bytes = if c.tree {
                c.size
                    .saturating_add(c.files.saturating_mul(cluster.max(1)))
            } else {
                round_up(c.size, cluster)
            };
            n = n.saturating_add(bytes);
        }
        for w in &self.writes {
            n = n.saturating_add(round_up(w.contents.len() as u64, cluster));
        }
        n.saturating_add((self.dirs.len() as u64).saturating_mul(cluster.max(1)))
    }

    /// Lower bound of what the removals give back.
    pub fn bytes_freed(&self, cluster: u64) -> u64 {
        self.freed(cluster, |_| true)
    }

    /// Lower bound of what the removals allowed before the writes give back (all but the
    /// current default's files).
    pub fn bytes_freed_before_writes(&self, cluster: u64) -> u64 {
        self.freed(cluster, |r| !r.boots_now)
    }

    fn freed(&self, cluster: u64, which: impl Fn(&Removal) -> bool) -> u64 {
        self.removals
            .iter()
            .filter(|r| which(r))
            .map(|r| {
                if r.tree {
                    r.size
                } else {
                    round_up(r.size, cluster)
                }
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Decide whether and how the plan fits into `available` bytes.
    pub fn order_for(
        &self,
        partition: PathBuf,
        available: u64,
        cluster: u64,
    ) -> Result<Order, SpaceError> {
        let needed = self.bytes_needed(cluster);
        let freeable = self.bytes_freed_before_writes(cluster);
        if needed <= available {
            Ok(Order::WriteThenRemove)
        } else if needed <= available.saturating_add(freeable) {
            Ok(Order::RemoveThenWrite)
        } else {
            Err(SpaceError {
                partition,
                needed,
                available,
                freeable,
            })
        }
    }

    /// One line per action, for `--dry-run` and logs.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for c in &self.copies {
            out.push_str(&format!(
                "copy {} -> {} ({} bytes)\n",
                c.source.display(),
                c.dest,
                c.size
            ));
        }
        for w in &self.writes {
            out.push_str(&format!("write {} ({} bytes)\n", w.dest, w.contents.len()));
        }
        for r in &self.removals {
            out.push_str(&format!("remove {}\n", r.path));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> FilePlan {
        FilePlan {
            dirs: vec!["loader".into()],
            copies: vec![Copy {
                source: PathBuf::from("/nix/store/k/bzImage"),
                dest: "EFI/nixos/k-bzImage.efi".into(),
                size: 10_000,
                files: 1,
                tree: false,
            }],
            writes: vec![Write {
                dest: "loader/loader.conf".into(),
                contents: vec![b'x'; 100],
            }],
            removals: vec![Removal {
                path: "EFI/nixos/old.efi".into(),
                size: 8_000,
                tree: false,
                boots_now: false,
            }],
            warnings: vec![],
            notes: vec![],
        }
    }

    #[test]
    fn space_accounting_rounds_to_clusters() {
        let p = plan();
        // 10000 -> 3 clusters of 4096, 100 -> 1, one directory -> 1.
        assert_eq!(p.bytes_needed(4096), 5 * 4096);
        assert_eq!(p.bytes_freed(4096), 2 * 4096);
    }

    #[test]
    fn order_depends_on_what_fits() {
        let p = plan();
        let esp = PathBuf::from("/boot");
        assert_eq!(
            p.order_for(esp.clone(), 5 * 4096, 4096),
            Ok(Order::WriteThenRemove)
        );
        assert_eq!(
            p.order_for(esp.clone(), 3 * 4096, 4096),
            Ok(Order::RemoveThenWrite)
        );
        let e = p.order_for(esp, 2 * 4096, 4096).expect_err("too full");
        assert_eq!(e.needed, 5 * 4096);
        assert_eq!(e.available, 2 * 4096);
        let msg = e.to_string();
        assert!(
            msg.contains("need 20480 bytes, 8192 bytes are free"),
            "{msg}"
        );
        assert!(msg.contains("nothing was changed"), "{msg}");
    }

    #[test]
    fn the_default_entrys_files_never_make_room_before_the_writes() {
        // Removing the file the firmware boots now would make it fit, but a crash before
        // the new entry is written would leave nothing to boot: refused instead.
        let mut p = plan();
        p.removals[0].boots_now = true;
        let esp = PathBuf::from("/boot");
        let e = p
            .order_for(esp.clone(), 3 * 4096, 4096)
            .expect_err("only fits without the default");
        assert_eq!(e.freeable, 0);
        assert_eq!(p.order_for(esp, 5 * 4096, 4096), Ok(Order::WriteThenRemove));
    }
}
