//! Reading the copies' sources (store files) by in-root path.

use rustc_hash::FxHashMap as HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use stagehand_common::rootfs::{self, Root};

/// Reads files by in-root path, following symlinks inside the root like [`Root::read`],
/// but keeping the descriptors of the directories it meets: the copies' sources are
/// mostly in one or two store directories, which are then resolved once per run.
pub(super) struct InRoot<'r> {
    root: &'r Root,
    dirs: HashMap<PathBuf, (OwnedFd, PathBuf)>,
}

impl<'r> InRoot<'r> {
    pub(super) fn new(root: &'r Root) -> Self {
        InRoot {
            root,
            dirs: HashMap::default(),
        }
    }

    /// The contents, canonical in-root path and `fstat` of the regular file at `path`.
    pub(super) fn read(&mut self, path: &Path) -> io::Result<(Vec<u8>, PathBuf, rustix::fs::Stat)> {
        let mut path = path.to_path_buf();
        for _ in 0..40 {
            let name = rootfs::final_name(&path)?;
            let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            if !self.dirs.contains_key(&parent) {
                let (fd, canon, _) = self.root.dir(&parent, None)?;
                self.dirs.insert(parent.clone(), (fd, canon));
            }
            let Some((dir, canon)) = self.dirs.get(&parent) else {
                return Err(io::Error::other("directory cache lost an entry"));
            };
            // O_NONBLOCK: a FIFO planted here must not hang the activation.
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            match rustix::fs::openat(dir, name.as_os_str(), flags, Mode::empty()) {
                Ok(fd) => {
                    let st = rustix::fs::fstat(&fd)?;
                    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("{} is not a regular file", canon.join(&name).display()),
                        ));
                    }
                    let buf = rootfs::read_fd(&fd, usize::try_from(st.st_size).unwrap_or(0))?;
                    return Ok((buf, canon.join(&name), st));
                }
                Err(Errno::LOOP) => {
                    let target = rustix::fs::readlinkat(dir, name.as_os_str(), Vec::new())?;
                    let t = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                    path = if t.is_absolute() { t } else { canon.join(t) };
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Errno::LOOP.into())
    }
}
