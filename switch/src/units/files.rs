//! Both generations' unit directories read through a [`Root`]: the running system's
//! `/etc/systemd/system` and `<toplevel>/etc/systemd/system`. Links are followed inside the
//! root; a link to `/dev/null` (at any hop) is a masked unit.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use stagehand_common::rootfs::{self, Node, Root};

use super::ini::UnitInfo;
use super::rules::{FileState, Gen, UnitError, UnitFiles};

pub struct RootUnitFiles<'a> {
    root: &'a Root,
    old_dir: PathBuf,
    new_dir: PathBuf,
}

impl<'a> RootUnitFiles<'a> {
    /// `toplevel` is the new generation as the system sees it.
    pub fn new(root: &'a Root, toplevel: &Path) -> RootUnitFiles<'a> {
        RootUnitFiles {
            root,
            old_dir: PathBuf::from("/etc/systemd/system"),
            new_dir: toplevel.join("etc/systemd/system"),
        }
    }

    fn dir(&self, gen: Gen) -> &Path {
        match gen {
            Gen::Old => &self.old_dir,
            Gen::New => &self.new_dir,
        }
    }

    /// Follow `path` through links to the file it names.
    fn resolve(&self, path: &Path) -> io::Result<(FileState, PathBuf)> {
        let mut p = path.to_path_buf();
        for _ in 0..40 {
            if p == Path::new("/dev/null") {
                return Ok((FileState::Masked, p));
            }
            match self.root.lstat(&p)? {
                None | Some(Node::Dir { .. }) => return Ok((FileState::Missing, p)),
                Some(Node::Symlink(t)) => {
                    let t = PathBuf::from(OsString::from_vec(t));
                    p = match p.parent() {
                        Some(parent) if t.is_relative() => parent.join(t),
                        _ => t,
                    };
                }
                Some(Node::File { .. }) | Some(Node::Other) => return Ok((FileState::Present, p)),
            }
        }
        Err(io::Error::from_raw_os_error(
            rustix::io::Errno::LOOP.raw_os_error(),
        ))
    }

    fn read_err(&self, path: &Path, error: io::Error) -> UnitError {
        UnitError::Read {
            path: self.root.host_path(path).display().to_string(),
            error,
        }
    }

    fn apply_file(&self, info: &mut UnitInfo, path: &Path) -> Result<(), UnitError> {
        let bytes = self.root.read(path).map_err(|e| self.read_err(path, e))?;
        let text = String::from_utf8_lossy(&bytes);
        info.apply(&self.root.host_path(path).display().to_string(), &text)
            .map_err(UnitError::Parse)
    }

    /// `dir/*.conf` in name order; nothing when the directory does not exist.
    fn dropins(&self, dir: &Path) -> Result<Vec<PathBuf>, UnitError> {
        let fd = match self.root.dir(dir, None) {
            Ok((fd, _, _)) => fd,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
            {
                return Ok(Vec::new())
            }
            Err(e) => return Err(self.read_err(dir, e)),
        };
        let names = rootfs::list_dir(&fd).map_err(|e| self.read_err(dir, e))?;
        Ok(names
            .into_iter()
            .filter(|(n, _)| n.to_string_lossy().ends_with(".conf"))
            .map(|(n, _)| dir.join(n))
            .collect())
    }
}

impl UnitFiles for RootUnitFiles<'_> {
    fn state(&self, gen: Gen, name: &str) -> FileState {
        // An unreadable link chain is treated as no file: the unit is then not ours to touch.
        self.resolve(&self.dir(gen).join(name))
            .map_or(FileState::Missing, |(s, _)| s)
    }

    fn load(&self, gen: Gen, unit: &str, base: &str) -> Result<UnitInfo, UnitError> {
        let dir = self.dir(gen);
        let mut info = UnitInfo::default();
        let main = dir.join(base);
        let (state, _) = self.resolve(&main).map_err(|e| self.read_err(&main, e))?;
        if state == FileState::Present {
            self.apply_file(&mut info, &main)?;
        }
        let mut dropin_dirs = vec![dir.join(format!("{base}.d"))];
        if unit != base {
            dropin_dirs.push(dir.join(format!("{unit}.d")));
        }
        for d in dropin_dirs {
            for f in self.dropins(&d)? {
                self.apply_file(&mut info, &f)?;
            }
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn reads_links_masks_and_dropins_under_a_root() {
        let t = tempfile::tempdir().expect("tempdir");
        let r = t.path();
        let store = r.join("nix/store/x-units");
        std::fs::create_dir_all(&store).expect("mkdir");
        std::fs::write(store.join("a.service"), "[Service]\nExecStart=/a\n").expect("w");
        // Old: /etc/systemd/system/a.service -> /etc/static/... -> store (absolute links
        // resolved inside the root).
        std::fs::create_dir_all(r.join("etc/static/systemd/system")).expect("mkdir");
        symlink(
            "/nix/store/x-units/a.service",
            r.join("etc/static/systemd/system/a.service"),
        )
        .expect("ln");
        std::fs::create_dir_all(r.join("etc/systemd/system/a.service.d")).expect("mkdir");
        symlink(
            "/etc/static/systemd/system/a.service",
            r.join("etc/systemd/system/a.service"),
        )
        .expect("ln");
        std::fs::write(
            r.join("etc/systemd/system/a.service.d/10-env.conf"),
            "[Service]\nEnvironment=X=1\n",
        )
        .expect("w");
        symlink("/dev/null", r.join("etc/systemd/system/m.service")).expect("ln");
        // New generation: relative link, no drop-ins.
        let top = r.join("nix/store/top/etc/systemd/system");
        std::fs::create_dir_all(&top).expect("mkdir");
        symlink("../../../../x-units/a.service", top.join("a.service")).expect("ln");

        let root = Root::open(r).expect("root");
        let f = RootUnitFiles::new(&root, Path::new("/nix/store/top"));
        assert_eq!(f.state(Gen::Old, "a.service"), FileState::Present);
        assert_eq!(f.state(Gen::Old, "m.service"), FileState::Masked);
        assert_eq!(f.state(Gen::Old, "nope.service"), FileState::Missing);
        assert_eq!(f.state(Gen::New, "a.service"), FileState::Present);
        let old = f.load(Gen::Old, "a.service", "a.service").expect("old");
        assert_eq!(old.get("Service", "Environment"), Some("X=1"));
        let new = f.load(Gen::New, "a.service", "a.service").expect("new");
        assert_eq!(new.get("Service", "ExecStart"), Some("/a"));
        assert_eq!(new.get("Service", "Environment"), None);

        std::fs::write(r.join("etc/systemd/system/bad.service"), "[Service\n").expect("w");
        let e = f
            .load(Gen::Old, "bad.service", "bad.service")
            .expect_err("bad");
        let msg = e.to_string();
        assert!(msg.contains("etc/systemd/system/bad.service:1:"), "{msg}");
    }
}
