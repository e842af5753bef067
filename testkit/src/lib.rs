//! Helpers shared by the integration tests: a fake Nix store inside a temporary root and a
//! textual snapshot of a directory tree.

pub mod host;
pub mod hostile;
pub mod nixos;

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `(path in the tree, contents, optional (mode, uid, gid) sidecars)`.
pub type TreeSpec<'a> = (&'a str, &'a str, Option<(&'a str, &'a str, &'a str)>);

pub struct FakeRoot {
    pub dir: tempfile::TempDir,
}

impl Default for FakeRoot {
    fn default() -> FakeRoot {
        FakeRoot::new()
    }
}

impl FakeRoot {
    pub fn new() -> FakeRoot {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("nix/store")).expect("store");
        FakeRoot { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn host(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    pub fn write(&self, p: &str, contents: &str) {
        let h = self.host(p);
        std::fs::create_dir_all(h.parent().expect("parent")).expect("mkdir");
        std::fs::write(h, contents).expect("write");
    }

    pub fn symlink(&self, p: &str, target: &str) {
        let h = self.host(p);
        std::fs::create_dir_all(h.parent().expect("parent")).expect("mkdir");
        symlink(target, h).expect("symlink");
    }

    /// Read a file as the system would, following symlinks inside the root.
    pub fn read(&self, p: &str) -> String {
        let root = stagehand_common::rootfs::Root::open(self.path()).expect("root");
        String::from_utf8(root.read(Path::new(p)).expect("read")).expect("utf8")
    }

    /// An etc tree like NixOS's etc derivation makes: every entry is a symlink to a store
    /// file holding `contents`; `sidecars` are `(mode, uid, gid)`.
    pub fn etc_tree(&self, name: &str, entries: &[TreeSpec<'_>]) -> String {
        let tree = format!("/nix/store/{name}-etc/etc");
        std::fs::create_dir_all(self.host(&tree)).expect("tree");
        for (i, (rel, contents, side)) in entries.iter().enumerate() {
            let src = format!("/nix/store/{name}-src{i}-{}", rel.replace('/', "_"));
            self.write(&src, contents);
            self.symlink(&format!("{tree}/{rel}"), &src);
            if let Some((mode, uid, gid)) = side {
                self.write(&format!("{tree}/{rel}.mode"), &format!("{mode}\n"));
                self.write(&format!("{tree}/{rel}.uid"), &format!("{uid}\n"));
                self.write(&format!("{tree}/{rel}.gid"), &format!("{gid}\n"));
            }
        }
        tree
    }

    /// Every path under the root with its inode, ctime and mtime: any write shows.
    pub fn stamps(&self) -> BTreeMap<PathBuf, (u64, i64, i64, i64, i64)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read_dir") {
                let p = e.expect("entry").path();
                let m = std::fs::symlink_metadata(&p).expect("lstat");
                out.insert(
                    p.clone(),
                    (
                        m.ino(),
                        m.ctime(),
                        m.ctime_nsec(),
                        m.mtime(),
                        m.mtime_nsec(),
                    ),
                );
                if m.is_dir() {
                    stack.push(p);
                }
            }
        }
        out
    }

    /// Every path under `dir` (in-root), one per line: `path L target`, `path D`,
    /// `path F mode uid:gid contents`.
    pub fn snapshot(&self, dir: &str) -> String {
        let mut lines = Vec::new();
        walk(&self.host(dir), dir, &mut lines);
        lines.sort();
        lines.join("\n")
    }
}

fn walk(host: &Path, shown: &str, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(host) else {
        return;
    };
    for e in rd {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        let s = format!("{shown}/{name}");
        let md = std::fs::symlink_metadata(&p).expect("lstat");
        if md.file_type().is_symlink() {
            out.push(format!(
                "{s} L {}",
                std::fs::read_link(&p).expect("readlink").display()
            ));
        } else if md.is_dir() {
            out.push(format!("{s} D"));
            walk(&p, &s, out);
        } else {
            let c = std::fs::read_to_string(&p).unwrap_or_default();
            out.push(format!(
                "{s} F {:04o} {}:{} {:?}",
                md.permissions().mode() & 0o7777,
                md.uid(),
                md.gid(),
                c
            ));
        }
    }
}
