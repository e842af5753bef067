//! Mark the booted entry good: rename its file to drop the boot counter; and mark the
//! generation stage 1 counts good ([`bless_generation`]: its attempt file
//! `<base>+LEFT-DONE` becomes `<base>.good`).
//!
//! Run once the system reached its boot-complete point (what `systemd-bless-boot.service`
//! does after `boot-complete.target`). The entry comes from `LoaderBootCountPath`, which
//! systemd-boot sets to the file it just renamed; older or newer loaders may only give
//! `LoaderEntrySelected`, whose ID form has changed between versions, so that is matched
//! tolerantly against the entry files.

use std::fmt;
use std::path::{Path, PathBuf};

use stagehand_common::boot_counting::split_counter;
use stagehand_common::rootfs::Root;

use super::efivars::{self, EfiVarError, EfiVars, LoaderVars};
use super::entry_name::{BootState, EntryName};
use super::esp::{BootFs, EspError, FileInfo};
use super::sdboot::ENTRIES_DIR;

/// Where type #2 entries (unified kernel images) live; they are counted the same way.
pub const UKI_DIR: &str = "EFI/Linux";

/// What bless decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Rename `dir/from` to `dir/to`.
    Rename {
        dir: String,
        from: String,
        to: String,
    },
    /// The booted entry carries no counter (already good, or counting is off for it).
    AlreadyGood { file: String },
    /// Nothing to do, and why (no loader variables: not booted by a counting loader).
    Nothing(String),
}

#[derive(Debug)]
pub enum BlessError {
    Var(EfiVarError),
    Esp(EspError),
    /// `LoaderBootCountPath` names something we will not rename.
    BadPath {
        value: String,
        reason: String,
    },
    /// The loader says it booted this file, but it is not there.
    Missing {
        path: String,
    },
}

impl fmt::Display for BlessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlessError::Var(e) => e.fmt(f),
            BlessError::Esp(e) => e.fmt(f),
            BlessError::BadPath { value, reason } => write!(
                f,
                "LoaderBootCountPath is {value:?}, which {reason}; not renaming anything"
            ),
            BlessError::Missing { path } => write!(
                f,
                "the loader booted {path}, but neither it nor its counter-less name is on the \
                 ESP; is --esp the partition the loader booted from?"
            ),
        }
    }
}

impl std::error::Error for BlessError {}

/// Find `name` in a listing, ignoring case as FAT and the firmware do.
fn find<'a>(files: &'a [FileInfo], name: &str) -> Option<&'a FileInfo> {
    files
        .iter()
        .find(|f| !f.dir && f.name.eq_ignore_ascii_case(name))
}

/// Decide what to rename from the loader variables and the entry directories' listings.
pub fn decide(
    vars: &LoaderVars,
    entries: &[FileInfo],
    ukis: &[FileInfo],
) -> Result<Decision, BlessError> {
    if let Some(value) = &vars.boot_count_path {
        let bad = |reason: &str| BlessError::BadPath {
            value: value.clone(),
            reason: reason.to_string(),
        };
        let path = value.replace('\\', "/");
        let path = path.trim_start_matches('/');
        if path
            .split('/')
            .any(|c| c == ".." || c == "." || c.is_empty())
        {
            return Err(bad("is not a plain path"));
        }
        let (dir, name) = path
            .rsplit_once('/')
            .ok_or_else(|| bad("has no directory"))?;
        let (dir, files) = if dir.eq_ignore_ascii_case(ENTRIES_DIR) {
            (ENTRIES_DIR, entries)
        } else if dir.eq_ignore_ascii_case(UKI_DIR) {
            (UKI_DIR, ukis)
        } else {
            return Err(bad("is outside /loader/entries and /EFI/Linux"));
        };
        let parsed = EntryName::from_file_name(name)
            .ok_or_else(|| bad("is not a .conf or .efi entry file"))?;
        if parsed.counter.is_none() {
            return Ok(Decision::AlreadyGood {
                file: format!("{dir}/{name}"),
            });
        }
        let good = parsed.blessed().file_name();
        return match find(files, name) {
            // Name the result after the file as it is spelled on disk, not as the variable
            // spells it.
            Some(f) => Ok(Decision::Rename {
                dir: dir.to_string(),
                from: f.name.clone(),
                to: EntryName::from_file_name(&f.name).map_or(good, |n| n.blessed().file_name()),
            }),
            None => match find(files, &good) {
                Some(f) => Ok(Decision::AlreadyGood {
                    file: format!("{dir}/{}", f.name),
                }),
                None => Err(BlessError::Missing {
                    path: format!("{dir}/{name}"),
                }),
            },
        };
    }
    if let Some(id) = &vars.entry_selected {
        let Some(want) = EntryName::from_id(id) else {
            return Ok(Decision::Nothing("LoaderEntrySelected is empty".into()));
        };
        for (dir, files) in [(ENTRIES_DIR, entries), (UKI_DIR, ukis)] {
            let mut matches: Vec<(EntryName, &FileInfo)> = files
                .iter()
                .filter(|f| !f.dir)
                .filter_map(|f| EntryName::from_file_name(&f.name).map(|n| (n, f)))
                .filter(|(n, _)| n.key() == want.key())
                .filter(|(n, _)| {
                    want.suffix.is_empty() || n.suffix.eq_ignore_ascii_case(&want.suffix)
                })
                .collect();
            // An ID that still carries a counter names one exact file.
            if want.counter.is_some() {
                matches.retain(|(n, _)| n.counter == want.counter);
            }
            match matches.as_slice() {
                [] => continue,
                [(n, f)] => {
                    return Ok(match n.state() {
                        BootState::Good => Decision::AlreadyGood {
                            file: format!("{dir}/{}", f.name),
                        },
                        _ => Decision::Rename {
                            dir: dir.to_string(),
                            from: f.name.clone(),
                            to: n.blessed().file_name(),
                        },
                    })
                }
                _ => {
                    return Ok(Decision::Nothing(format!(
                        "LoaderEntrySelected {id:?} matches several files in {dir}; bless it by \
                         hand"
                    )))
                }
            }
        }
        return Ok(Decision::Nothing(format!(
            "LoaderEntrySelected {id:?} matches no entry file"
        )));
    }
    Ok(Decision::Nothing(
        "the loader set neither LoaderBootCountPath nor LoaderEntrySelected (not booted by \
         systemd-boot, or boot counting is off)"
            .into(),
    ))
}

/// Read the variables, decide, and (unless `dry_run`) rename under the ESP lock.
pub fn bless(
    root: &Root,
    fs: &BootFs,
    efivars_dir: &Path,
    dry_run: bool,
) -> Result<Decision, BlessError> {
    let vars = efivars::loader_vars(&EfiVars::new(root, efivars_dir)).map_err(BlessError::Var)?;
    if vars.boot_count_path.is_none() && vars.entry_selected.is_none() {
        return decide(&vars, &[], &[]);
    }
    fs.lock().map_err(BlessError::Esp)?;
    let list = |dir: &str| -> Result<Vec<FileInfo>, BlessError> {
        fs.list(dir)
            .map(Option::unwrap_or_default)
            .map_err(|error| {
                BlessError::Esp(EspError::Io {
                    path: fs.host_path(dir),
                    action: "list",
                    error,
                })
            })
    };
    let decision = decide(&vars, &list(ENTRIES_DIR)?, &list(UKI_DIR)?)?;
    if let (false, Decision::Rename { dir, from, to }) = (dry_run, &decision) {
        fs.rename(dir, from, to).map_err(BlessError::Esp)?;
    }
    Ok(decision)
}

/// A failure on stage 1's attempt files.
#[derive(Debug)]
pub struct AttemptsError {
    pub action: &'static str,
    pub path: PathBuf,
    pub error: std::io::Error,
}

impl fmt::Display for AttemptsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.action,
            self.path.display(),
            self.error
        )
    }
}

impl std::error::Error for AttemptsError {}

/// Mark generation `base` good in stage 1's attempts directory `dir`
/// ([`ATTEMPTS_DIR`](crate::receipt::ATTEMPTS_DIR) under the root): its counter
/// `<base>+LEFT-DONE` is renamed to `<base>.good` (created when there is none), other
/// counters of it removed, the directory fsynced. Returns what was done.
pub fn bless_generation(dir: &Path, base: &str) -> Result<String, AttemptsError> {
    let err = |action, path: &Path| {
        let path = path.to_owned();
        move |error| AttemptsError {
            action,
            path,
            error,
        }
    };
    let good = dir.join(format!("{base}.good"));
    if good.exists() {
        return Ok(format!("{base} already good"));
    }
    std::fs::create_dir_all(dir).map_err(err("create", dir))?;
    let mut counters: Vec<String> = std::fs::read_dir(dir)
        .map_err(err("list", dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| split_counter(n).is_some_and(|(stem, _)| stem == base))
        .collect();
    counters.sort();
    let done = match counters.split_first() {
        Some((first, rest)) => {
            std::fs::rename(dir.join(first), &good).map_err(err("rename to", &good))?;
            for r in rest {
                let _ = std::fs::remove_file(dir.join(r));
            }
            format!("{first} -> {base}.good")
        }
        None => {
            std::fs::File::create(&good)
                .and_then(|f| f.sync_all())
                .map_err(err("create", &good))?;
            format!("created {base}.good")
        }
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("sync", dir))?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::efivars::fixture::{encode, write_var};
    use crate::efivars::EFIVARS_DIR;

    fn files(names: &[&str]) -> Vec<FileInfo> {
        names
            .iter()
            .map(|n| FileInfo {
                name: n.to_string(),
                dir: false,
                size: 100,
            })
            .collect()
    }

    fn vars(path: Option<&str>, selected: Option<&str>) -> LoaderVars {
        LoaderVars {
            boot_count_path: path.map(str::to_string),
            entry_selected: selected.map(str::to_string),
        }
    }

    fn rename(from: &str, to: &str) -> Decision {
        Decision::Rename {
            dir: ENTRIES_DIR.into(),
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn boot_count_path_decides() {
        let e = files(&["nixos-generation-5+2-1.conf", "nixos-generation-4.conf"]);
        let d = decide(
            &vars(Some("\\loader\\entries\\nixos-generation-5+2-1.conf"), None),
            &e,
            &[],
        )
        .expect("decide");
        assert_eq!(
            d,
            rename("nixos-generation-5+2-1.conf", "nixos-generation-5.conf")
        );
        // Case differences, as FAT and firmware produce them.
        let d = decide(
            &vars(Some("\\LOADER\\ENTRIES\\NIXOS-GENERATION-5+2-1.CONF"), None),
            &e,
            &[],
        )
        .expect("decide");
        assert_eq!(
            d,
            rename("nixos-generation-5+2-1.conf", "nixos-generation-5.conf")
        );
        // Already renamed by an earlier run.
        let done = files(&["nixos-generation-5.conf"]);
        assert!(matches!(
            decide(
                &vars(Some("/loader/entries/nixos-generation-5+2-1.conf"), None),
                &done,
                &[]
            ),
            Ok(Decision::AlreadyGood { .. })
        ));
        assert!(matches!(
            decide(&vars(Some("/loader/entries/gone+1.conf"), None), &done, &[]),
            Err(BlessError::Missing { .. })
        ));
        for bad in [
            "\\loader\\entries\\..\\..\\x+1.conf",
            "\\EFI\\nixos\\x+1.conf",
            "\\loader\\entries\\x+1.txt",
            "x+1.conf",
        ] {
            assert!(
                matches!(
                    decide(&vars(Some(bad), None), &e, &[]),
                    Err(BlessError::BadPath { .. })
                ),
                "{bad}"
            );
        }
        // UKIs are counted too.
        let u = files(&["nixos-generation-5-abc+1-2.efi"]);
        assert_eq!(
            decide(
                &vars(Some("\\EFI\\Linux\\nixos-generation-5-abc+1-2.efi"), None),
                &[],
                &u
            )
            .expect("uki"),
            Decision::Rename {
                dir: UKI_DIR.into(),
                from: "nixos-generation-5-abc+1-2.efi".into(),
                to: "nixos-generation-5-abc.efi".into(),
            }
        );
    }

    #[test]
    fn entry_selected_is_matched_tolerantly() {
        let e = files(&[
            "nixos-generation-5+2-1.conf",
            "nixos-generation-4.conf",
            "nixos-generation-50+3.conf",
        ]);
        for id in [
            "nixos-generation-5",
            "nixos-generation-5.conf",
            "NixOS-Generation-5.conf",
            "nixos-generation-5+2-1",
            "nixos-generation-5+2-1.conf",
        ] {
            assert_eq!(
                decide(&vars(None, Some(id)), &e, &[]).expect(id),
                rename("nixos-generation-5+2-1.conf", "nixos-generation-5.conf"),
                "{id}"
            );
        }
        assert!(matches!(
            decide(&vars(None, Some("nixos-generation-4.conf")), &e, &[]),
            Ok(Decision::AlreadyGood { .. })
        ));
        assert!(matches!(
            decide(&vars(None, Some("auto-windows")), &e, &[]),
            Ok(Decision::Nothing(_))
        ));
        assert!(matches!(
            decide(&vars(None, None), &e, &[]),
            Ok(Decision::Nothing(_))
        ));
    }

    #[test]
    fn bless_renames_the_booted_entry_on_disk() {
        let t = tempfile::tempdir().expect("tempdir");
        let entries = t.path().join("boot/loader/entries");
        std::fs::create_dir_all(&entries).expect("mkdir");
        std::fs::write(entries.join("nixos-generation-5+2-1.conf"), "title NixOS\n").expect("w");
        let efivars = t.path().join(EFIVARS_DIR.trim_start_matches('/'));
        write_var(
            &efivars,
            "LoaderBootCountPath",
            &encode(6, "\\loader\\entries\\nixos-generation-5+2-1.conf"),
        );
        let root = Root::open(t.path()).expect("root");
        let fs = BootFs::open(&root, Path::new("/boot")).expect("esp");
        let d = bless(&root, &fs, Path::new(EFIVARS_DIR), true).expect("dry run");
        assert!(matches!(d, Decision::Rename { .. }));
        assert!(
            entries.join("nixos-generation-5+2-1.conf").exists(),
            "dry run renamed"
        );
        bless(&root, &fs, Path::new(EFIVARS_DIR), false).expect("bless");
        assert!(!entries.join("nixos-generation-5+2-1.conf").exists());
        assert_eq!(
            std::fs::read_to_string(entries.join("nixos-generation-5.conf")).expect("read"),
            "title NixOS\n"
        );
        // Running again (the variable still names the old file) is fine.
        assert!(matches!(
            bless(&root, &fs, Path::new(EFIVARS_DIR), false),
            Ok(Decision::AlreadyGood { .. })
        ));
    }

    #[test]
    fn bless_generation_renames_stage1s_counter() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("boot-attempts");
        std::fs::create_dir_all(&dir).expect("mkdir");
        for name in ["a-sys+0-1", "a-sys+2", "a-sys-2+1-0", "a-sys+x"] {
            std::fs::write(dir.join(name), "").expect("write");
        }
        assert_eq!(
            bless_generation(&dir, "a-sys").expect("bless"),
            "a-sys+0-1 -> a-sys.good"
        );
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("list")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        assert_eq!(names, ["a-sys+x", "a-sys-2+1-0", "a-sys.good"]);
        assert_eq!(
            bless_generation(&dir, "a-sys").expect("bless"),
            "a-sys already good"
        );
        assert_eq!(
            bless_generation(&dir, "b").expect("bless"),
            "created b.good"
        );
        let file = tmp.path().join("file");
        std::fs::write(&file, "").expect("write");
        let e = bless_generation(&file.join("dir"), "a").expect_err("not a directory");
        assert!(e.to_string().starts_with("cannot create "), "{e}");
    }
}
