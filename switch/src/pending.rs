//! Work a switch still owes, kept in `/run/nixos/{start,restart,reload}-list` (one unit a
//! line, the names and format NixOS uses, so either implementation resumes the other's
//! interrupted switch). Each list is rewritten whole, atomically (temp + fsync + rename),
//! before the units are stopped and again after each phase, so a crash at any point leaves
//! either the old or the new list — never a torn one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::units::Pending;
use stagehand_common::rootfs::Root;

pub const START_LIST: &str = "/run/nixos/start-list";
pub const RESTART_LIST: &str = "/run/nixos/restart-list";
pub const RELOAD_LIST: &str = "/run/nixos/reload-list";
pub const ACTIVATION_RESTART_LIST: &str = "/run/nixos/activation-restart-list";
pub const ACTIVATION_RELOAD_LIST: &str = "/run/nixos/activation-reload-list";
pub const DRY_ACTIVATION_RESTART_LIST: &str = "/run/nixos/dry-activation-restart-list";
pub const DRY_ACTIVATION_RELOAD_LIST: &str = "/run/nixos/dry-activation-reload-list";

/// The unit names in a list file; missing or unreadable = empty.
pub fn read_list(root: &Root, path: &str) -> Vec<String> {
    let bytes = root
        .read_opt(Path::new(path))
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && seen.insert(l.to_string()))
        .map(str::to_string)
        .collect()
}

pub fn read_pending(root: &Root) -> Pending {
    let set = |p| read_list(root, p).into_iter().collect();
    Pending {
        start: set(START_LIST),
        restart: set(RESTART_LIST),
        reload: set(RELOAD_LIST),
    }
}

fn host(root: &Root, path: &str) -> PathBuf {
    root.host_path(Path::new(path))
}

/// Replace the list at `path` with `units` (an empty set removes the file).
pub fn write_list(root: &Root, path: &str, units: &BTreeSet<String>) -> Result<(), String> {
    let p = host(root, path);
    if units.is_empty() {
        return remove(root, path);
    }
    let mut text = String::new();
    for u in units {
        text.push_str(u);
        text.push('\n');
    }
    stagehand_common::atomic::write_file(&p, text.as_bytes(), 0o644).map_err(|e| e.to_string())
}

pub fn remove(root: &Root, path: &str) -> Result<(), String> {
    let p = host(root, path);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_empty_removes() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = Root::open(t.path()).expect("root");
        assert_eq!(read_pending(&root), Pending::default());
        let units: BTreeSet<String> = ["b.service", "a.service"].map(String::from).into();
        write_list(&root, START_LIST, &units).expect("write");
        let text = std::fs::read_to_string(t.path().join("run/nixos/start-list")).expect("read");
        assert_eq!(text, "a.service\nb.service\n");
        // NixOS appends with duplicates and blank lines; both are tolerated.
        std::fs::write(
            t.path().join("run/nixos/restart-list"),
            "x.service\n\nx.service\ny.mount\n",
        )
        .expect("w");
        let p = read_pending(&root);
        assert_eq!(p.start, units);
        assert_eq!(p.restart.len(), 2);
        write_list(&root, START_LIST, &BTreeSet::new()).expect("clear");
        assert!(!t.path().join("run/nixos/start-list").exists());
    }
}
