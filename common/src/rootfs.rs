//! File-system access confined to a root prefix.
//!
//! Every executor touches the target system only through [`Root`]. Paths are given as the
//! system sees them (`/etc/ssh/sshd_config`) and are resolved component by component from a
//! directory descriptor of the root: a symlink met on the way is read and re-resolved *inside*
//! the root (an absolute target restarts at the root, `..` stops at it), the way the kernel's
//! `RESOLVE_IN_ROOT` does. We do this by hand instead of using `openat2` because some
//! sandboxes and older kernels lack it, and because the final component of a path we are about
//! to replace must never be followed at all: writes create a temporary file next to it and
//! `rename` over it, which replaces a planted symlink instead of writing through it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Linux gives up after 40 symlinks in one lookup; so do we.
const MAX_SYMLINKS: usize = 40;

/// Suffix of the temporary names we create next to a file we are about to replace. It starts
/// with a dot so that a crash leaves only hidden debris, which the next run removes.
const TMP_SUFFIX: &str = ".stagehand-tmp";

/// Flags for opening one directory component: never through a symlink.
pub fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// A directory tree treated as `/`.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// What `lstat` found at a path, without following a final symlink.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Node {
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink(Vec<u8>),
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        size: u64,
    },
    Other,
}

impl Root {
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rfs::openat(
            rfs::CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The root as the host sees it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path` (as the target sees it) as the host sees it, for messages only.
    pub fn host_path(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        self.path.join(rel)
    }

    pub fn is_host_root(&self) -> bool {
        self.path == Path::new("/")
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Open the directory at `path`, following symlinks inside the root. With `create`,
    /// missing directories are made with that mode (like `mkdir -p`). Returns the descriptor,
    /// the canonical in-root path, and whether anything was created.
    pub fn dir(&self, path: &Path, create: Option<Mode>) -> io::Result<(OwnedFd, PathBuf, bool)> {
        let mut stack: Vec<(OwnedFd, OsString)> = Vec::new();
        let mut pending: Vec<OsString> = components_rev(path.as_os_str().as_bytes());
        let mut links = 0usize;
        let mut created = false;
        while let Some(c) = pending.pop() {
            if c == ".." {
                stack.pop();
                continue;
            }
            let cur = stack.last().map_or(self.fd.as_fd(), |(fd, _)| fd.as_fd());
            match rfs::openat(cur, c.as_os_str(), dir_flags(), Mode::empty()) {
                Ok(fd) => stack.push((fd, c)),
                Err(Errno::NOENT) if create.is_some() => {
                    let mode = create.unwrap_or(Mode::from_raw_mode(0o755));
                    match rfs::mkdirat(cur, c.as_os_str(), mode) {
                        Ok(()) => created = true,
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    pending.push(c);
                }
                Err(e @ (Errno::NOTDIR | Errno::LOOP)) => {
                    match rfs::readlinkat(cur, c.as_os_str(), Vec::new()) {
                        Ok(target) => {
                            links += 1;
                            if links > MAX_SYMLINKS {
                                return Err(Errno::LOOP.into());
                            }
                            let t = target.as_bytes();
                            if t.first() == Some(&b'/') {
                                stack.clear();
                            }
                            pending.extend(components_rev(t));
                        }
                        Err(Errno::INVAL) => return Err(e.into()),
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut canon = PathBuf::from("/");
        for (_, name) in &stack {
            canon.push(name);
        }
        let fd = match stack.pop() {
            Some((fd, _)) => fd,
            None => rfs::openat(self.fd.as_fd(), ".", dir_flags(), Mode::empty())?,
        };
        Ok((fd, canon, created))
    }

    /// The directory holding `path` and the final name, which is not looked up. `/` itself
    /// has no parent and is refused.
    pub fn parent(&self, path: &Path, create: Option<Mode>) -> io::Result<(OwnedFd, OsString)> {
        let name = final_name(path)?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        let (fd, _, _) = self.dir(parent, create)?;
        Ok((fd, name))
    }

    /// Point the symlink `path` at `target` atomically (temp link + rename + directory
    /// fsync), creating missing parent directories 0755. Returns false, writing nothing,
    /// when it already points there.
    pub fn set_symlink(&self, path: &Path, target: &[u8]) -> io::Result<bool> {
        let (dir, name) = self.parent(path, Some(Mode::from_raw_mode(0o755)))?;
        if let Some(Node::Symlink(t)) = lstat_at(&dir, &name)? {
            if t == target {
                return Ok(false);
            }
        }
        atomic_symlink(&dir, &name, target)?;
        fsync_dir(&dir)?;
        Ok(true)
    }

    /// Resolve every symlink in `path` inside the root (like `chroot ROOT realpath PATH`).
    pub fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        let mut path = path.to_path_buf();
        for _ in 0..MAX_SYMLINKS {
            let name = match final_name(&path) {
                Ok(name) => name,
                // `/`, or a path ending in `..`: only directories are involved.
                Err(_) => return Ok(self.dir(&path, None)?.1),
            };
            let parent = path.parent().unwrap_or(Path::new("/"));
            let (dirfd, dir_canon, _) = self.dir(parent, None)?;
            match rfs::readlinkat(&dirfd, name.as_os_str(), Vec::new()) {
                Ok(target) => {
                    let t = PathBuf::from(OsString::from_vec(target.into_bytes()));
                    path = if t.is_absolute() {
                        t
                    } else {
                        dir_canon.join(t)
                    };
                }
                Err(Errno::INVAL) => return Ok(dir_canon.join(name)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Errno::LOOP.into())
    }

    /// Read a whole file, following symlinks inside the root.
    pub fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let canon = self.canonicalize(path)?;
        let (dirfd, name) = self.parent(&canon, None)?;
        read_at(&dirfd, &name)
    }

    /// Like [`Root::read`], but a missing file is `None`. A link that is there but leads
    /// nowhere inside the root (dangling, or pointing out of it) is an error, not `None`:
    /// a planted or broken link must not read as "no such file, use the default".
    pub fn read_opt(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match self.read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match self.lstat(path) {
                Ok(Some(Node::Symlink(target))) => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "is a link to {}, which does not exist inside the root",
                        String::from_utf8_lossy(&target)
                    ),
                )),
                _ => Ok(None),
            },
            Err(e) => Err(e),
        }
    }

    /// `lstat` of `path`; `None` when it (or a directory on the way) does not exist.
    pub fn lstat(&self, path: &Path) -> io::Result<Option<Node>> {
        let (dirfd, name) = match self.parent(path, None) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) => return Ok(None),
            Err(e) => return Err(e),
        };
        lstat_at(&dirfd, &name)
    }
}

/// Components of an in-root path, reversed so that `pop` yields the next one. Empty and `.`
/// components are dropped; a leading `/` means nothing here because every path starts at the
/// root anyway.
fn components_rev(path: &[u8]) -> Vec<OsString> {
    let mut v: Vec<OsString> = path
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsStr::from_bytes(c).to_os_string())
        .collect();
    v.reverse();
    v
}

/// The last component of `path`, which must be a plain name (not `/`, `.` or `..`).
pub fn final_name(path: &Path) -> io::Result<OsString> {
    match path.components().next_back() {
        Some(Component::Normal(n)) => Ok(n.to_os_string()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )),
    }
}

pub fn lstat_at<Fd: AsFd>(dirfd: Fd, name: &OsStr) -> io::Result<Option<Node>> {
    let st = match rfs::statat(&dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mode = st.st_mode & 0o7777;
    Ok(Some(match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Node::Dir {
            mode,
            uid: st.st_uid,
            gid: st.st_gid,
        },
        FileType::Symlink => Node::Symlink(rfs::readlinkat(&dirfd, name, Vec::new())?.into_bytes()),
        FileType::RegularFile => Node::File {
            mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: u64::try_from(st.st_size).unwrap_or(0),
        },
        _ => Node::Other,
    }))
}

/// Read a regular file named `name` in `dirfd` without following a final symlink.
pub fn read_at<Fd: AsFd>(dirfd: Fd, name: &OsStr) -> io::Result<Vec<u8>> {
    // Non-blocking, so a FIFO planted where a file should be cannot hang the open; the
    // type check below then refuses it.
    let fd = rfs::openat(
        &dirfd,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    let st = rfs::fstat(&fd)?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", describe_type(kind)),
        ));
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size > MAX_READ_BYTES {
        return Err(too_big(size));
    }
    read_fd(&fd, usize::try_from(size).unwrap_or(0))
}

/// The largest file any reader here takes whole (256 MiB): account files, specs, scripts
/// and boot entries are KiB; a file this big is a wrong path or an attack, and reading it
/// would exhaust memory.
pub const MAX_READ_BYTES: u64 = 256 << 20;

fn too_big(size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "is {size} bytes, more than the {} MiB a file read whole may be",
            MAX_READ_BYTES >> 20
        ),
    )
}

/// "a directory", "a FIFO", … for messages.
pub fn describe_type(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "of an unknown type",
    }
}

/// Read `fd` to its end, expecting about `size` bytes: one read for the whole file and one
/// to see the end, where the standard library's `read_to_end` also asks for the size and
/// the position first. More than [`MAX_READ_BYTES`] (a file growing while read, a
/// kernel file that claims size 0) is refused.
pub fn read_fd<Fd: AsFd>(fd: Fd, size: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size.saturating_add(1)];
    let mut n = 0;
    loop {
        if n == buf.len() {
            if u64::try_from(n).unwrap_or(u64::MAX) > MAX_READ_BYTES {
                return Err(too_big(u64::try_from(n).unwrap_or(u64::MAX)));
            }
            buf.resize(n * 2 + 64, 0);
        }
        let Some(rest) = buf.get_mut(n..) else { break };
        match rustix::io::read(&fd, rest) {
            Ok(0) => break,
            Ok(got) => n += got,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Name of the temporary file used to replace `name`.
pub fn tmp_name(name: &OsStr) -> OsString {
    // Keep well under NAME_MAX (255) even for long names: a long name is shortened; the
    // temp file only has to be unique per target within one directory and one run.
    let bytes = name.as_bytes();
    let stem = bytes.get(..200).unwrap_or(bytes);
    let mut t = OsString::from(".");
    t.push(OsStr::from_bytes(stem));
    t.push(TMP_SUFFIX);
    t
}

fn unlink_quiet<Fd: AsFd>(dirfd: Fd, name: &OsStr) -> io::Result<()> {
    match rfs::unlinkat(dirfd, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Replace `name` in `dirfd` by a symlink to `target` atomically (`ln -sfn` + `mv`). Whatever
/// is at `name` (file, symlink, empty directory is refused by rename) is replaced, never
/// followed.
pub fn atomic_symlink<Fd: AsFd>(dirfd: Fd, name: &OsStr, target: &[u8]) -> io::Result<()> {
    let tmp = tmp_name(name);
    // A stale temporary name (left by a crash) is removed only when it is in the way: one
    // system call less per link in the common case.
    match rfs::symlinkat(OsStr::from_bytes(target), &dirfd, tmp.as_os_str()) {
        Err(Errno::EXIST) => {
            unlink_quiet(&dirfd, &tmp)?;
            rfs::symlinkat(OsStr::from_bytes(target), &dirfd, tmp.as_os_str())?;
        }
        r => r?,
    }
    if let Err(e) = rfs::renameat(&dirfd, tmp.as_os_str(), &dirfd, name) {
        let _ = unlink_quiet(&dirfd, &tmp);
        return Err(e.into());
    }
    Ok(())
}

/// Ownership and permission bits of a file we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Owned by whoever runs us (root on a real system) with `mode`: for bookkeeping files.
pub fn own_perms(mode: u32) -> Perms {
    Perms {
        mode,
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
    }
}

/// What a file we write is made with, set *before* any content is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewFile {
    /// Exactly this owner and mode (the owner is changed only when it differs).
    Perms(Perms),
    /// Whatever the file system gives a new file. For FAT (the ESP), which has no owners or
    /// modes: the mount options decide them, `fchmod` is at best ignored and `fchown` to
    /// anyone but the mount's owner fails with `EPERM`, so we ask for neither.
    FileSystemDefault,
}

impl From<Perms> for NewFile {
    fn from(perms: Perms) -> NewFile {
        NewFile::Perms(perms)
    }
}

/// Write the file `tmp` in `dirfd` with final ownership and mode set *before* any content is
/// written; with `durable`, flush it to disk. The file is created exclusively (`O_EXCL`, so
/// whatever a crash or anyone else left under the name, a planted symlink included, is
/// removed and never written through) and 0600, so it is never readable by others, not even
/// for an instant before `fchmod` (which matters for `/etc/shadow`). Callers that write many
/// files pass `durable = false` and flush them all with one [`sync_fs`] before renaming: one
/// journal commit instead of one per file.
pub fn write_tmp<Fd: AsFd>(
    dirfd: Fd,
    tmp: &OsStr,
    contents: &[u8],
    new_file: impl Into<NewFile>,
    durable: bool,
) -> io::Result<()> {
    let new_file = new_file.into();
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let create_mode = match new_file {
        // FAT ignores the mode; anything else gets what the umask leaves of 0644.
        NewFile::FileSystemDefault => Mode::from_raw_mode(0o644),
        NewFile::Perms(_) => Mode::from_raw_mode(0o600),
    };
    let fd = match rfs::openat(&dirfd, tmp, flags, create_mode) {
        // O_EXCL: whatever a crash (or anyone) left under the name is removed, never reused.
        Err(Errno::EXIST) => {
            unlink_quiet(&dirfd, tmp)?;
            rfs::openat(&dirfd, tmp, flags, create_mode)?
        }
        r => r?,
    };
    let result = (|| -> io::Result<()> {
        match new_file {
            NewFile::Perms(perms) => {
                let current = rfs::fstat(&fd)?;
                if current.st_uid != perms.uid || current.st_gid != perms.gid {
                    rfs::fchown(
                        &fd,
                        Some(rfs::Uid::from_raw(perms.uid)),
                        Some(rfs::Gid::from_raw(perms.gid)),
                    )?;
                }
                rfs::fchmod(&fd, Mode::from_raw_mode(perms.mode))?;
            }
            NewFile::FileSystemDefault => {}
        }
        let mut file = std::fs::File::from(fd);
        io::Write::write_all(&mut file, contents)?;
        if durable {
            file.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = unlink_quiet(&dirfd, tmp);
        return Err(e);
    }
    Ok(())
}

/// Atomically replace `name` in `dirfd` with `contents`: a temporary file created
/// exclusively next to it ([`write_tmp`]), fsync, rename over `name`. Whatever is at `name`,
/// a symlink included, is replaced, never followed. The caller fsyncs the directory (once
/// per batch of writes); [`crate::atomic::write_file`] does it for one file by path.
pub fn atomic_write<Fd: AsFd>(
    dirfd: Fd,
    name: &OsStr,
    contents: &[u8],
    new_file: impl Into<NewFile>,
) -> io::Result<()> {
    let tmp = tmp_name(name);
    write_tmp(&dirfd, &tmp, contents, new_file, true)?;
    rename_tmp(&dirfd, name)
}

/// Rename the temporary file of `name` (see [`tmp_name`]) over `name`.
pub fn rename_tmp<Fd: AsFd>(dirfd: Fd, name: &OsStr) -> io::Result<()> {
    let tmp = tmp_name(name);
    if let Err(e) = rfs::renameat(&dirfd, tmp.as_os_str(), &dirfd, name) {
        let _ = unlink_quiet(&dirfd, &tmp);
        return Err(e.into());
    }
    Ok(())
}

/// Flush the whole file system holding `fd` (`syncfs(2)`).
pub fn sync_fs<Fd: AsFd>(fd: Fd) -> io::Result<()> {
    rfs::syncfs(fd).map_err(Into::into)
}

pub fn fsync_dir<Fd: AsFd>(dirfd: Fd) -> io::Result<()> {
    rfs::fsync(dirfd).map_err(Into::into)
}

pub fn unlink_at<Fd: AsFd>(dirfd: Fd, name: &OsStr) -> io::Result<()> {
    rfs::unlinkat(dirfd, name, AtFlags::empty()).map_err(Into::into)
}

/// Remove the tree `name` in `dirfd` without following any symlink in it.
pub fn remove_tree_at<Fd: AsFd>(dirfd: Fd, name: &OsStr) -> io::Result<()> {
    match lstat_at(&dirfd, name)? {
        None => Ok(()),
        Some(Node::Dir { .. }) => {
            let sub = rfs::openat(&dirfd, name, dir_flags(), Mode::empty())?;
            for (child, _) in list_dir(&sub)? {
                remove_tree_at(&sub, &child)?;
            }
            rfs::unlinkat(&dirfd, name, AtFlags::REMOVEDIR).map_err(Into::into)
        }
        Some(_) => unlink_at(&dirfd, name),
    }
}

/// The entries of a directory with their types from `readdir` (no `stat` unless the file
/// system does not report types). Sorted by name so that every walk is deterministic.
pub fn list_dir<Fd: AsFd>(dirfd: Fd) -> io::Result<Vec<(OsString, FileType)>> {
    // A fresh descriptor of the same directory, so that the caller's offset is untouched.
    let fresh = rfs::openat(&dirfd, ".", dir_flags(), Mode::empty())?;
    list_new_dir(fresh)
}

/// [`list_dir`] of a directory descriptor that was just opened and never read: the
/// descriptor is read directly instead of re-opened, three system calls less per directory
/// (the walks of `/etc` and of the etc tree do this for every directory).
pub fn list_new_dir<Fd: AsFd>(dirfd: Fd) -> io::Result<Vec<(OsString, FileType)>> {
    Ok(list_new_dir_ino(dirfd)?
        .into_iter()
        .map(|(name, ty, _)| (name, ty))
        .collect())
}

/// [`list_new_dir`] with each entry's inode number as `readdir` reports it.
pub fn list_new_dir_ino<Fd: AsFd>(dirfd: Fd) -> io::Result<Vec<(OsString, FileType, u64)>> {
    let mut out = Vec::new();
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 16 * 1024];
    let mut dir = rfs::RawDir::new(dirfd.as_fd(), &mut buf);
    while let Some(entry) = dir.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name).to_os_string();
        let mut ty = entry.file_type();
        if ty == FileType::Unknown {
            let st = rfs::statat(&dirfd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)?;
            ty = FileType::from_raw_mode(st.st_mode);
        }
        out.push((name, ty, entry.ino()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Open subdirectory `name` of `dirfd` without following a symlink.
pub fn open_subdir<Fd: AsFd>(dirfd: Fd, name: &OsStr) -> io::Result<OwnedFd> {
    rfs::openat(dirfd, name, dir_flags(), Mode::empty()).map_err(Into::into)
}

/// Make directory `name` in `dirfd` (mode subject to the umask, like `mkdir`).
pub fn mkdir_at<Fd: AsFd>(dirfd: Fd, name: &OsStr, mode: u32) -> io::Result<()> {
    rfs::mkdirat(dirfd, name, Mode::from_raw_mode(mode)).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let t = tempfile::tempdir().expect("tempdir");
        let r = t.path();
        std::fs::create_dir_all(r.join("nix/store/abc-etc/etc")).expect("mkdir");
        std::fs::write(r.join("nix/store/abc-etc/etc/hosts"), "x").expect("write");
        symlink("/nix/store/abc-etc", r.join("sys-link")).expect("symlink");
        // A link that tries to climb out of the root stays at the root.
        symlink("../../../../../nix/store", r.join("up")).expect("symlink");
        let root = Root::open(r).expect("open");
        assert_eq!(
            root.canonicalize(Path::new("/sys-link/etc/hosts"))
                .expect("canon"),
            PathBuf::from("/nix/store/abc-etc/etc/hosts")
        );
        assert_eq!(
            root.read(Path::new("/up/abc-etc/etc/hosts")).expect("read"),
            b"x"
        );
    }

    /// Every reader goes through `read_at`: a FIFO, a device or a huge file planted where
    /// a file is expected is refused at once, naming what it is (a FIFO once hung the
    /// open, a device or a sparse 300 MiB file was read until memory ran out).
    #[test]
    fn only_regular_files_of_a_sane_size_are_read() {
        let t = tempfile::tempdir().expect("tempdir");
        let r = t.path();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        std::fs::create_dir(r.join("dir")).expect("mkdir");
        let huge = std::fs::File::create(r.join("huge")).expect("create");
        huge.set_len(MAX_READ_BYTES + 1).expect("sparse");
        symlink("/dev/zero", r.join("zero-link")).expect("symlink");
        let root = Root::open(r).expect("open");
        let err = |p: &str| root.read(Path::new(p)).expect_err(p).to_string();
        assert_eq!(err("/fifo"), "is a FIFO, not a regular file");
        assert_eq!(err("/dir"), "is a directory, not a regular file");
        assert!(err("/huge").starts_with("is 268435457 bytes, more than the 256 MiB"));
        // The link resolves inside the root, where there is no /dev/zero.
        assert_eq!(
            root.read(Path::new("/zero-link")).expect_err("zero").kind(),
            io::ErrorKind::NotFound
        );
        let host = Root::open(Path::new("/")).expect("host root");
        assert_eq!(
            host.read(Path::new("/dev/zero"))
                .expect_err("zero")
                .to_string(),
            "is a character device, not a regular file"
        );
    }

    #[test]
    fn dir_create_and_parent() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = Root::open(t.path()).expect("open");
        let (_, canon, created) = root
            .dir(Path::new("/a/b/c"), Some(Mode::from_raw_mode(0o755)))
            .expect("mkdir -p");
        assert!(created);
        assert_eq!(canon, PathBuf::from("/a/b/c"));
        assert!(t.path().join("a/b/c").is_dir());
        let (_, name) = root.parent(Path::new("/a/b/c/file"), None).expect("parent");
        assert_eq!(name, "file");
        assert!(root.parent(Path::new("/"), None).is_err());
    }

    #[test]
    fn atomic_write_replaces_a_planted_symlink_instead_of_following_it() {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "precious").expect("write");
        std::fs::create_dir(t.path().join("etc")).expect("mkdir");
        symlink(&victim, t.path().join("etc/motd")).expect("symlink");
        let root = Root::open(t.path()).expect("open");
        let (dir, name) = root.parent(Path::new("/etc/motd"), None).expect("parent");
        let perms = Perms {
            mode: 0o644,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        };
        atomic_write(&dir, &name, b"hello", perms).expect("write");
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
        assert_eq!(
            std::fs::read(t.path().join("etc/motd")).expect("read"),
            b"hello"
        );
        assert!(!t.path().join("etc/motd").is_symlink());
    }

    #[test]
    fn file_system_default_sets_no_mode() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = rfs::openat(rfs::CWD, t.path(), dir_flags(), Mode::empty()).expect("open");
        atomic_write(
            &dir,
            OsStr::new("loader.conf"),
            b"x",
            NewFile::FileSystemDefault,
        )
        .expect("write");
        // What a plain create with 0644 gets under the same umask: no fchmod to 0600 or
        // anything else happened.
        let reference = rfs::openat(
            &dir,
            "reference",
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(0o644),
        )
        .expect("create");
        let mode = |st: rfs::Stat| st.st_mode & 0o7777;
        let written = rfs::statat(&dir, "loader.conf", AtFlags::empty()).expect("stat");
        assert_eq!(mode(written), mode(rfs::fstat(&reference).expect("stat")));
        atomic_write(&dir, OsStr::new("shadow"), b"x", own_perms(0o600)).expect("write");
        let written = rfs::statat(&dir, "shadow", AtFlags::empty()).expect("stat");
        assert_eq!(mode(written), 0o600);
    }
}
