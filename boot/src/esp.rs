//! The boot partition (ESP, or `/boot` for extlinux): reading its state and applying a
//! [`FilePlan`] to it.
//!
//! Every file is written as a hidden temporary next to its final name, fsynced, and renamed
//! into place; directories are fsynced after their renames and the whole file system is
//! synced (`syncfs`) at the end, because FAT has no journal and firmware reads it right after
//! a reboot that may come from a power cut. Free space is checked before the first change.
//! The partition root is `flock`ed for the duration, so an install and a bless never
//! interleave.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use stagehand_common::rootfs::{self, Root};

use super::plan::{FilePlan, Order, Removal, SpaceError};

/// Suffix of our temporary files (see [`rootfs::tmp_name`]); a crash leaves only these.
pub const TMP_SUFFIX: &str = ".stagehand-tmp";

#[derive(Debug)]
pub enum EspError {
    /// The partition directory is missing or unreadable.
    Open {
        path: PathBuf,
        error: io::Error,
    },
    Io {
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },
    Space(SpaceError),
}

impl fmt::Display for EspError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EspError::Open { path, error } => write!(
                f,
                "cannot open the boot partition at {}: {error}; mount the ESP there or pass \
                 --esp with its mount point",
                path.display()
            ),
            EspError::Io {
                path,
                action,
                error,
            } => write!(f, "cannot {action} {}: {error}", path.display()),
            EspError::Space(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for EspError {}

/// What a directory listing reports for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub name: String,
    pub dir: bool,
    /// Size of a regular file; 0 for anything else.
    pub size: u64,
}

/// Free space and allocation unit of a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub available: u64,
    pub cluster: u64,
}

/// Where free-space numbers come from; tests inject a full partition through this.
pub trait SpaceProbe {
    fn space(&self, fs: &BootFs) -> io::Result<Space>;
}

/// The real probe: `fstatvfs` of the partition root.
pub struct Statvfs;

impl SpaceProbe for Statvfs {
    fn space(&self, fs: &BootFs) -> io::Result<Space> {
        let st = rfs::fstatvfs(&fs.fd)?;
        // f_frsize is the allocation unit (the FAT cluster); some file systems leave it 0.
        let cluster = if st.f_frsize > 0 {
            st.f_frsize
        } else {
            st.f_bsize
        };
        Ok(Space {
            available: st.f_bavail.saturating_mul(cluster),
            cluster,
        })
    }
}

/// An open boot partition. Paths given to its methods are relative to its root and made of
/// plain names (`loader/entries`); none is followed through a symlink.
#[derive(Debug)]
pub struct BootFs {
    fd: OwnedFd,
    host: PathBuf,
}

impl BootFs {
    /// Open `path` (as the system sees it) inside `root`.
    pub fn open(root: &Root, path: &Path) -> Result<BootFs, EspError> {
        let host = root.host_path(path);
        let (fd, _, _) = root.dir(path, None).map_err(|error| EspError::Open {
            path: host.clone(),
            error,
        })?;
        Ok(BootFs { fd, host })
    }

    /// The partition root as the host sees it, for messages.
    pub fn host(&self) -> &Path {
        &self.host
    }

    /// `rel` as the host sees it, for messages.
    pub fn host_path(&self, rel: &str) -> PathBuf {
        self.host.join(rel)
    }

    /// An I/O error on `rel` (relative to the partition), for `map_err`.
    pub(crate) fn err(
        &self,
        rel: &str,
        action: &'static str,
    ) -> impl FnOnce(io::Error) -> EspError {
        let path = self.host_path(rel);
        move |error| EspError::Io {
            path,
            action,
            error,
        }
    }

    /// Hold the partition lock until this `BootFs` is dropped.
    pub fn lock(&self) -> Result<(), EspError> {
        rfs::flock(&self.fd, FlockOperation::LockExclusive)
            .map_err(|e| self.err("", "lock")(e.into()))
    }

    /// Open directory `rel`; `None` if it does not exist (and `create` is false).
    pub fn dir(&self, rel: &str, create: bool) -> io::Result<Option<OwnedFd>> {
        let mut cur = rfs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for part in rel.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{rel}: '..' is not allowed"),
                ));
            }
            match rootfs::open_subdir(&cur, OsStr::new(part)) {
                Ok(fd) => cur = fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    match rfs::mkdirat(&cur, part, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    cur = rootfs::open_subdir(&cur, OsStr::new(part))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(Some(cur))
    }

    /// The entries of directory `rel`, sorted by name; `None` if it does not exist.
    pub fn list(&self, rel: &str) -> io::Result<Option<Vec<FileInfo>>> {
        let Some(dir) = self.dir(rel, false)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for (name, ty) in rootfs::list_dir(&dir)? {
            let Some(name_str) = name.to_str() else {
                // Not UTF-8: never one of ours, so never touched.
                continue;
            };
            let size = if ty == FileType::RegularFile {
                let st = rfs::statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                u64::try_from(st.st_size).unwrap_or(0)
            } else {
                0
            };
            out.push(FileInfo {
                name: name_str.to_string(),
                dir: ty == FileType::Directory,
                size,
            });
        }
        Ok(Some(out))
    }

    /// Contents of file `rel`; `None` if it (or its directory) does not exist.
    pub fn read(&self, rel: &str) -> io::Result<Option<Vec<u8>>> {
        let (dir, name) = split(rel);
        let Some(dirfd) = self.dir(dir, false)? else {
            return Ok(None);
        };
        match rootfs::read_at(&dirfd, OsStr::new(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Rename `from` to `to` inside directory `dir`, fsync the directory and the file system.
    pub fn rename(&self, dir: &str, from: &str, to: &str) -> Result<(), EspError> {
        let dirfd = self
            .dir(dir, false)
            .map_err(self.err(dir, "open"))?
            .ok_or_else(|| self.err(dir, "open")(io::Error::from(io::ErrorKind::NotFound)))?;
        let rel = format!("{dir}/{from}");
        rfs::renameat(&dirfd, from, &dirfd, to).map_err(|e| self.err(&rel, "rename")(e.into()))?;
        rootfs::fsync_dir(&dirfd).map_err(self.err(dir, "fsync"))?;
        self.sync()
    }

    /// Flush the whole file system (`syncfs`).
    pub fn sync(&self) -> Result<(), EspError> {
        rfs::syncfs(&self.fd).map_err(|e| self.err("", "sync")(e.into()))
    }
}

/// `("a/b", "c")` from `"a/b/c"`; `("", "c")` from `"c"`.
fn split(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub order: Order,
    pub needed: u64,
    pub available: u64,
}

/// Apply `plan` to `fs`, reading copy sources from `root`. Checks free space first and
/// refuses (changing nothing) when the new files cannot fit even after the removals.
pub fn apply(
    fs: &BootFs,
    root: &Root,
    plan: &FilePlan,
    probe: &dyn SpaceProbe,
) -> Result<Applied, EspError> {
    fs.lock()?;
    let space = probe
        .space(fs)
        .map_err(fs.err("", "measure free space on"))?;
    let order = plan
        .order_for(fs.host().to_path_buf(), space.available, space.cluster)
        .map_err(EspError::Space)?;
    let mut touched: BTreeSet<String> = BTreeSet::new();

    for d in &plan.dirs {
        fs.dir(d, true).map_err(fs.err(d, "create directory"))?;
        touched.insert(split(d).0.to_string());
    }
    if order == Order::RemoveThenWrite {
        // Never the default entry's files: a crash before the new entries exist must still
        // find something to boot.
        remove_all(fs, plan, &mut touched, |r| !r.boots_now)?;
        // Removals must be on disk before we count on the space they freed.
        fs.sync()?;
    }
    for c in &plan.copies {
        let (dir, name) = split(&c.dest);
        let dirfd = fs
            .dir(dir, true)
            .map_err(fs.err(dir, "create directory"))?
            .ok_or_else(|| fs.err(dir, "open")(io::Error::from(io::ErrorKind::NotFound)))?;
        let result = if c.tree {
            copy_tree_atomic(root, &c.source, &dirfd, name)
        } else {
            copy_file_atomic(root, &c.source, &dirfd, name)
        };
        result.map_err(|error| EspError::Io {
            path: fs.host_path(&c.dest),
            action: "copy the boot file to",
            error,
        })?;
        touched.insert(dir.to_string());
    }
    for w in &plan.writes {
        let (dir, name) = split(&w.dest);
        let dirfd = fs
            .dir(dir, true)
            .map_err(fs.err(dir, "create directory"))?
            .ok_or_else(|| fs.err(dir, "open")(io::Error::from(io::ErrorKind::NotFound)))?;
        // FAT has no modes or owners: the file gets what the mount options say.
        rootfs::atomic_write(
            &dirfd,
            OsStr::new(name),
            &w.contents,
            rootfs::NewFile::FileSystemDefault,
        )
        .map_err(fs.err(&w.dest, "write"))?;
        touched.insert(dir.to_string());
    }
    match order {
        Order::WriteThenRemove => remove_all(fs, plan, &mut touched, |_| true)?,
        Order::RemoveThenWrite => remove_all(fs, plan, &mut touched, |r| r.boots_now)?,
    }
    for d in &touched {
        if let Some(dirfd) = fs.dir(d, false).map_err(fs.err(d, "open"))? {
            rootfs::fsync_dir(&dirfd).map_err(fs.err(d, "fsync"))?;
        }
    }
    fs.sync()?;
    Ok(Applied {
        order,
        needed: plan.bytes_needed(space.cluster),
        available: space.available,
    })
}

fn remove_all(
    fs: &BootFs,
    plan: &FilePlan,
    touched: &mut BTreeSet<String>,
    which: impl Fn(&Removal) -> bool,
) -> Result<(), EspError> {
    for r in plan.removals.iter().filter(|r| which(r)) {
        let (dir, name) = split(&r.path);
        let Some(dirfd) = fs.dir(dir, false).map_err(fs.err(dir, "open"))? else {
            continue;
        };
        let result = if r.tree {
            rootfs::remove_tree_at(&dirfd, OsStr::new(name))
        } else {
            match rfs::unlinkat(&dirfd, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(e.into()),
            }
        };
        result.map_err(fs.err(&r.path, "remove"))?;
        touched.insert(dir.to_string());
    }
    Ok(())
}

fn unlink_quiet<Fd: AsFd>(dirfd: Fd, name: &OsStr) -> io::Result<()> {
    match rootfs::lstat_at(&dirfd, name)? {
        None => Ok(()),
        Some(_) => rootfs::remove_tree_at(&dirfd, name),
    }
}

fn create_file<Fd: AsFd>(dirfd: Fd, name: &OsStr) -> io::Result<OwnedFd> {
    rfs::openat(
        dirfd,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(Into::into)
}

/// Open a regular file of the system root for reading (its path already canonical).
fn open_source(root: &Root, source: &Path) -> io::Result<std::fs::File> {
    let (dir, name) = root.parent(source, None)?;
    let fd = rfs::openat(
        &dir,
        name.as_os_str(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(std::fs::File::from(fd))
}

fn copy_into<Fd: AsFd>(root: &Root, source: &Path, dirfd: Fd, name: &OsStr) -> io::Result<()> {
    let mut src = open_source(root, source)?;
    let mut dst = std::fs::File::from(create_file(&dirfd, name)?);
    io::copy(&mut src, &mut dst)?;
    dst.sync_all()
}

fn copy_file_atomic<Fd: AsFd>(root: &Root, source: &Path, dirfd: Fd, name: &str) -> io::Result<()> {
    let tmp = rootfs::tmp_name(OsStr::new(name));
    unlink_quiet(&dirfd, &tmp)?;
    let result = copy_into(root, source, &dirfd, &tmp).and_then(|()| {
        // rename(2) replaces a file atomically but not a directory of the same name.
        if let Some(rootfs::Node::Dir { .. }) = rootfs::lstat_at(&dirfd, OsStr::new(name))? {
            rootfs::remove_tree_at(&dirfd, OsStr::new(name))?;
        }
        rfs::renameat(&dirfd, tmp.as_os_str(), &dirfd, name).map_err(Into::into)
    });
    if result.is_err() {
        let _ = unlink_quiet(&dirfd, &tmp);
    }
    result
}

/// Copy directory `source` to `name` in `dirfd` through a temporary directory renamed at the
/// end. Symlinks inside are followed (inside the root): FAT cannot store them.
fn copy_tree_atomic<Fd: AsFd>(root: &Root, source: &Path, dirfd: Fd, name: &str) -> io::Result<()> {
    let tmp = rootfs::tmp_name(OsStr::new(name));
    unlink_quiet(&dirfd, &tmp)?;
    let result = (|| {
        rfs::mkdirat(&dirfd, tmp.as_os_str(), Mode::from_raw_mode(0o755))?;
        let sub = rootfs::open_subdir(&dirfd, &tmp)?;
        copy_tree_into(root, source, &sub, 0)?;
        rootfs::fsync_dir(&sub)?;
        // A directory cannot be renamed over a non-empty one: the old copy goes first.
        unlink_quiet(&dirfd, OsStr::new(name))?;
        rfs::renameat(&dirfd, tmp.as_os_str(), &dirfd, name)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = unlink_quiet(&dirfd, &tmp);
    }
    result
}

/// Deep enough for any real `dtbs` tree; stops a symlink loop.
const MAX_TREE_DEPTH: usize = 16;

fn copy_tree_into(root: &Root, source: &Path, dst: &OwnedFd, depth: usize) -> io::Result<()> {
    if depth > MAX_TREE_DEPTH {
        return Err(Errno::LOOP.into());
    }
    let (src, _, _) = root.dir(source, None)?;
    for (child, ty) in rootfs::list_dir(&src)? {
        let path = source.join(&child);
        let (path, ty) = if ty == FileType::Symlink {
            let canon = root.canonicalize(&path)?;
            let kind = match root.lstat(&canon)? {
                Some(rootfs::Node::Dir { .. }) => FileType::Directory,
                Some(rootfs::Node::File { .. }) => FileType::RegularFile,
                _ => continue,
            };
            (canon, kind)
        } else {
            (path, ty)
        };
        match ty {
            FileType::Directory => {
                rfs::mkdirat(dst, child.as_os_str(), Mode::from_raw_mode(0o755))?;
                let sub = rootfs::open_subdir(dst, &child)?;
                copy_tree_into(root, &path, &sub, depth + 1)?;
                rootfs::fsync_dir(&sub)?;
            }
            FileType::RegularFile => copy_into(root, &path, dst, &child)?,
            _ => {}
        }
    }
    Ok(())
}

/// Size and file count of a file or tree in the root (symlinks followed), for planning.
pub fn measure(root: &Root, path: &Path) -> io::Result<(u64, u64, bool)> {
    fn walk(root: &Root, path: &Path, depth: usize) -> io::Result<(u64, u64)> {
        if depth > MAX_TREE_DEPTH {
            return Err(Errno::LOOP.into());
        }
        let canon = root.canonicalize(path)?;
        match root.lstat(&canon)? {
            Some(rootfs::Node::File { size, .. }) => Ok((size, 1)),
            Some(rootfs::Node::Dir { .. }) => {
                let (fd, _, _) = root.dir(&canon, None)?;
                let mut total = (0u64, 0u64);
                for (child, _) in rootfs::list_dir(&fd)? {
                    let (s, n) = walk(root, &canon.join(child), depth + 1)?;
                    total = (total.0.saturating_add(s), total.1.saturating_add(n));
                }
                Ok(total)
            }
            _ => Ok((0, 0)),
        }
    }
    let canon = root.canonicalize(path)?;
    let is_dir = matches!(root.lstat(&canon)?, Some(rootfs::Node::Dir { .. }));
    if !is_dir && root.lstat(&canon)?.is_none() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    let (size, files) = walk(root, &canon, 0)?;
    Ok((size, files, is_dir))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::plan::{Copy, Removal, Write};

    /// A probe that reports fixed numbers.
    pub(crate) struct Fixed(pub Space);

    impl SpaceProbe for Fixed {
        fn space(&self, _: &BootFs) -> io::Result<Space> {
            Ok(self.0)
        }
    }

    fn setup() -> (tempfile::TempDir, Root) {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(t.path().join("boot/EFI/nixos")).expect("mkdir");
        std::fs::create_dir_all(t.path().join("nix/store/k-linux/dtbs/vendor")).expect("mkdir");
        std::fs::write(t.path().join("nix/store/k-linux/bzImage"), vec![7u8; 5000]).expect("w");
        std::fs::write(t.path().join("nix/store/k-linux/dtbs/a.dtb"), b"dtb").expect("w");
        std::fs::write(
            t.path().join("nix/store/k-linux/dtbs/vendor/b.dtb"),
            b"dtb2",
        )
        .expect("w");
        std::fs::write(t.path().join("boot/EFI/nixos/old.efi"), b"old").expect("w");
        let root = Root::open(t.path()).expect("root");
        (t, root)
    }

    fn plan() -> FilePlan {
        FilePlan {
            dirs: vec!["loader".into(), "loader/entries".into()],
            copies: vec![
                Copy {
                    source: PathBuf::from("/nix/store/k-linux/bzImage"),
                    dest: "EFI/nixos/k-linux-bzImage.efi".into(),
                    size: 5000,
                    files: 1,
                    tree: false,
                },
                Copy {
                    source: PathBuf::from("/nix/store/k-linux/dtbs"),
                    dest: "nixos/k-linux-dtbs".into(),
                    size: 7,
                    files: 2,
                    tree: true,
                },
            ],
            writes: vec![Write {
                dest: "loader/entries/a.conf".into(),
                contents: b"title A\n".to_vec(),
            }],
            removals: vec![Removal {
                path: "EFI/nixos/old.efi".into(),
                size: 3,
                tree: false,
                boots_now: false,
            }],
            warnings: vec![],
            notes: vec![],
        }
    }

    #[test]
    fn apply_copies_writes_removes_and_leaves_no_debris() {
        let (t, root) = setup();
        let fs = BootFs::open(&root, Path::new("/boot")).expect("open");
        let probe = Fixed(Space {
            available: 1 << 30,
            cluster: 512,
        });
        let done = apply(&fs, &root, &plan(), &probe).expect("apply");
        assert_eq!(done.order, Order::WriteThenRemove);
        let b = t.path().join("boot");
        assert_eq!(
            std::fs::read(b.join("EFI/nixos/k-linux-bzImage.efi"))
                .expect("copy")
                .len(),
            5000
        );
        assert_eq!(
            std::fs::read(b.join("nixos/k-linux-dtbs/vendor/b.dtb")).expect("tree"),
            b"dtb2"
        );
        assert_eq!(
            std::fs::read(b.join("loader/entries/a.conf")).expect("entry"),
            b"title A\n"
        );
        assert!(!b.join("EFI/nixos/old.efi").exists());
        for dir in ["EFI/nixos", "loader/entries", "nixos"] {
            for e in std::fs::read_dir(b.join(dir)).expect("ls") {
                let n = e.expect("e").file_name();
                assert!(!n.to_string_lossy().ends_with(TMP_SUFFIX), "debris {n:?}");
            }
        }
        assert_eq!(
            measure(&root, Path::new("/nix/store/k-linux/dtbs")).expect("measure"),
            (7, 2, true)
        );
    }

    /// A full partition: the install is refused before anything is touched.
    #[test]
    fn full_partition_is_refused_before_any_change() {
        let (t, root) = setup();
        let fs = BootFs::open(&root, Path::new("/boot")).expect("open");
        let probe = Fixed(Space {
            available: 1024,
            cluster: 512,
        });
        let e = apply(&fs, &root, &plan(), &probe).expect_err("full");
        let msg = e.to_string();
        assert!(msg.starts_with("not enough space on "), "{msg}");
        assert!(msg.contains("bytes are free"), "{msg}");
        let b = t.path().join("boot");
        assert!(b.join("EFI/nixos/old.efi").exists(), "removal happened");
        assert!(!b.join("loader").exists(), "directory created");
        assert!(
            !b.join("EFI/nixos/k-linux-bzImage.efi").exists(),
            "copy happened"
        );
    }

    #[test]
    fn tight_partition_removes_first() {
        let (_t, root) = setup();
        let fs = BootFs::open(&root, Path::new("/boot")).expect("open");
        let p = plan();
        let need = p.bytes_needed(512);
        let probe = Fixed(Space {
            available: need - 100,
            cluster: 512,
        });
        let done = apply(&fs, &root, &p, &probe).expect("apply");
        assert_eq!(done.order, Order::RemoveThenWrite);
    }

    #[test]
    fn missing_partition_names_the_fix() {
        let (_t, root) = setup();
        let e = BootFs::open(&root, Path::new("/efi")).expect_err("missing");
        assert!(e.to_string().contains("pass --esp"), "{e}");
    }
}
