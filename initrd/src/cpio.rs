//! The "newc" cpio format (`070701`), the only archive format the kernel unpacks into its
//! initramfs, written reproducibly and read back.
//!
//! Every entry is a 110-byte ASCII header of thirteen 8-digit hex fields, the NUL-terminated
//! name padded so header + name ends on a 4-byte boundary, then the data padded to 4 bytes.
//! The archive ends with an entry named `TRAILER!!!`.
//!
//! Reproducibility: the writer takes its entries from a sorted map, so the order never
//! depends on the order they were added; every entry gets mtime 1, uid/gid 0, and an inode
//! number that is its position in that order. Regular files get nlink 1: the kernel treats
//! a regular file with nlink >= 2 as a possible hard link and matches it by inode number.

use std::collections::BTreeMap;
use std::fmt;

pub const MAGIC: &[u8; 6] = b"070701";
pub const HEADER_LEN: usize = 110;
pub const TRAILER: &str = "TRAILER!!!";

/// File type bits of `st_mode`, as the cpio header carries them.
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFMT: u32 = 0o170000;

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Permission bits only (e.g. `0o755`); the type bits come from `node`.
    pub perm: u32,
    pub node: Node,
}

impl Entry {
    pub fn mode(&self) -> u32 {
        let kind = match self.node {
            Node::Dir => S_IFDIR,
            Node::File(_) => S_IFREG,
            Node::Symlink(_) => S_IFLNK,
            Node::CharDev { .. } => S_IFCHR,
        };
        kind | (self.perm & 0o7777)
    }

    /// Bytes this entry stores as its data (file content or link target).
    pub fn data(&self) -> &[u8] {
        match &self.node {
            Node::File(d) => d,
            Node::Symlink(t) => t.as_bytes(),
            Node::Dir | Node::CharDev { .. } => &[],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpioError {
    /// A name that cannot go into the archive (empty, absolute after normalising, `..`).
    BadPath { path: String, reason: &'static str },
    /// Two different entries for one path.
    Conflict { path: String },
    /// A file too large for the 32-bit size field.
    TooLarge { path: String, size: usize },
    /// Reader: the archive ends in the middle of an entry, or has no trailer.
    Truncated { offset: usize },
    /// Reader: a header that is not newc.
    BadHeader { offset: usize, reason: String },
}

impl fmt::Display for CpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadPath { path, reason } => {
                write!(f, "initrd path {path:?} is not usable: {reason}")
            }
            Self::Conflict { path } => write!(
                f,
                "two different initrd entries want the path /{path}; remove one of them \
                 from the spec"
            ),
            Self::TooLarge { path, size } => write!(
                f,
                "/{path} is {size} bytes, more than the 4 GiB a cpio newc entry can hold"
            ),
            Self::Truncated { offset } => write!(
                f,
                "cpio archive ends early at byte {offset} (no TRAILER!!! entry): the file \
                 is truncated or not fully decompressed"
            ),
            Self::BadHeader { offset, reason } => {
                write!(
                    f,
                    "cpio archive has a bad header at byte {offset}: {reason}"
                )
            }
        }
    }
}

impl std::error::Error for CpioError {}

/// Turn `/a/b`, `a/b`, `./a//b/` into the archive name `a/b`. The root itself is never an
/// entry of its own: the kernel unpacks into an existing root.
pub fn normalize(path: &str) -> Result<String, CpioError> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(CpioError::BadPath {
                    path: path.into(),
                    reason: "it contains `..`; give the target as a plain absolute path",
                })
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(CpioError::BadPath {
            path: path.into(),
            reason: "it names the root directory; give a file path such as /etc/foo",
        });
    }
    Ok(parts.join("/"))
}

/// An archive under construction: path (normalised, no leading `/`) to entry.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add an entry, creating missing parent directories with mode 0755. Adding a directory
    /// that already exists is fine (the first mode wins); anything else twice is a conflict.
    pub fn add(&mut self, path: &str, entry: Entry) -> Result<(), CpioError> {
        let name = normalize(path)?;
        let mut parent = String::new();
        let components: Vec<&str> = name.split('/').collect();
        for part in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.entries.get(&parent) {
                Some(Entry {
                    node: Node::Dir, ..
                }) => {}
                Some(_) => return Err(CpioError::Conflict { path: parent }),
                None => {
                    self.entries.insert(
                        parent.clone(),
                        Entry {
                            perm: 0o755,
                            node: Node::Dir,
                        },
                    );
                }
            }
        }
        match self.entries.get(&name) {
            None => {
                self.entries.insert(name, entry);
                Ok(())
            }
            Some(Entry {
                node: Node::Dir, ..
            }) if entry.node == Node::Dir => Ok(()),
            // The same file or link reached twice (two objects sharing a library).
            Some(existing) if *existing == entry => Ok(()),
            Some(_) => Err(CpioError::Conflict { path: name }),
        }
    }

    /// Change the permission bits of an existing entry.
    pub fn set_perm(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        let name = normalize(path)?;
        match self.entries.get_mut(&name) {
            Some(e) => {
                e.perm = perm;
                Ok(())
            }
            None => Err(CpioError::BadPath {
                path: path.into(),
                reason: "no such entry",
            }),
        }
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        normalize(path).ok().and_then(|n| self.entries.get(&n))
    }

    pub fn contains(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|n| self.entries.contains_key(&n))
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Each regular file's path and contents, to rewrite them in place (stripping).
    pub fn files_mut(&mut self) -> impl Iterator<Item = (&str, &mut Vec<u8>)> {
        self.entries
            .iter_mut()
            .filter_map(|(k, v)| match &mut v.node {
                Node::File(data) => Some((k.as_str(), data)),
                _ => None,
            })
    }

    /// Serialise as newc. Byte order of the names is the archive order; a parent is a
    /// prefix of its children, so it always comes first.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CpioError> {
        let total: usize = self
            .entries
            .iter()
            .map(|(k, e)| HEADER_LEN + k.len() + 4 + e.data().len() + 4)
            .sum();
        let mut out = Vec::with_capacity(total + 128);
        for (index, (name, entry)) in self.entries.iter().enumerate() {
            let data = entry.data();
            let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
                path: name.clone(),
                size: data.len(),
            })?;
            let (rmaj, rmin) = match entry.node {
                Node::CharDev { major, minor } => (major, minor),
                _ => (0, 0),
            };
            let nlink = if entry.node == Node::Dir { 2 } else { 1 };
            // Inode 0 is left unused so no real entry looks like the trailer's.
            let ino = u32::try_from(index + 1).map_err(|_| CpioError::TooLarge {
                path: name.clone(),
                size: index,
            })?;
            let header = Header {
                ino,
                mode: entry.mode(),
                nlink,
                mtime: 1,
                filesize: size,
                rdevmajor: rmaj,
                rdevminor: rmin,
            };
            write_entry(&mut out, &header, name, data);
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            filesize: 0,
            rdevmajor: 0,
            rdevminor: 0,
        };
        write_entry(&mut out, &trailer, TRAILER, &[]);
        Ok(out)
    }
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdevmajor: u32,
    rdevminor: u32,
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() & 3 != 0 {
        out.push(0);
    }
}

fn write_entry(out: &mut Vec<u8>, h: &Header, name: &str, data: &[u8]) {
    // The entry starts 4-aligned (the previous one was padded), so padding the output
    // buffer is the same as padding relative to the entry.
    let namesize = name.len() + 1;
    let fields: [u32; 13] = [
        h.ino,
        h.mode,
        0, // uid
        0, // gid
        h.nlink,
        h.mtime,
        h.filesize,
        0, // devmajor
        0, // devminor
        h.rdevmajor,
        h.rdevminor,
        // Names are bounded by the caller's paths; a name over 4 GiB cannot exist in memory
        // next to the rest of the archive, so truncation here is not a real case.
        u32::try_from(namesize).unwrap_or(u32::MAX),
        0, // check: only used by the "070702" crc format
    ];
    out.extend_from_slice(MAGIC);
    for v in fields {
        out.extend_from_slice(format!("{v:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// One entry as read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub rdevmajor: u32,
    pub rdevminor: u32,
    pub data: Vec<u8>,
}

impl ReadEntry {
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
}

/// Read a whole newc archive (entries up to, not including, the trailer). Several archives
/// concatenated, as the kernel accepts them, are read as one list; NUL padding between
/// them is skipped.
pub fn read(bytes: &[u8]) -> Result<Vec<ReadEntry>, CpioError> {
    let mut entries = Vec::new();
    let mut pos = 0;
    let mut saw_trailer = false;
    loop {
        while pos < bytes.len() && bytes[pos] == 0 {
            pos += 1;
        }
        if pos >= bytes.len() {
            break;
        }
        saw_trailer = false;
        let header = bytes
            .get(pos..pos + HEADER_LEN)
            .ok_or(CpioError::Truncated { offset: pos })?;
        if &header[..6] != MAGIC {
            return Err(CpioError::BadHeader {
                offset: pos,
                reason: format!(
                    "magic is {:?}, expected \"070701\" (newc)",
                    String::from_utf8_lossy(&header[..6])
                ),
            });
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let at = 6 + i * 8;
            let text = std::str::from_utf8(&header[at..at + 8]).ok();
            *v = text
                .and_then(|t| u32::from_str_radix(t, 16).ok())
                .ok_or_else(|| CpioError::BadHeader {
                    offset: pos,
                    reason: format!("field {i} is not 8 hex digits"),
                })?;
        }
        let namesize = f[11] as usize;
        if namesize == 0 {
            return Err(CpioError::BadHeader {
                offset: pos,
                reason: "name size is 0".into(),
            });
        }
        let name_start = pos + HEADER_LEN;
        let name_bytes = bytes
            .get(name_start..name_start + namesize)
            .ok_or(CpioError::Truncated { offset: name_start })?;
        let name = String::from_utf8_lossy(&name_bytes[..namesize - 1]).into_owned();
        let data_start = align4(name_start + namesize);
        let filesize = f[6] as usize;
        let data = bytes
            .get(data_start..data_start + filesize)
            .ok_or(CpioError::Truncated { offset: data_start })?;
        pos = align4(data_start + filesize);
        if name == TRAILER {
            saw_trailer = true;
            continue;
        }
        entries.push(ReadEntry {
            name,
            ino: f[0],
            mode: f[1],
            uid: f[2],
            gid: f[3],
            nlink: f[4],
            mtime: f[5],
            rdevmajor: f[9],
            rdevminor: f[10],
            data: data.to_vec(),
        });
    }
    if !saw_trailer {
        return Err(CpioError::Truncated {
            offset: bytes.len(),
        });
    }
    Ok(entries)
}

/// Length of the archive at the start of `bytes`, through its trailer entry.
pub fn archive_len(bytes: &[u8]) -> Result<usize, CpioError> {
    let mut pos = 0;
    loop {
        let header = bytes
            .get(pos..pos + HEADER_LEN)
            .ok_or(CpioError::Truncated { offset: pos })?;
        if &header[..6] != MAGIC {
            return Err(CpioError::BadHeader {
                offset: pos,
                reason: "not a newc header".into(),
            });
        }
        let field = |i: usize| {
            std::str::from_utf8(&header[6 + i * 8..14 + i * 8])
                .ok()
                .and_then(|t| usize::from_str_radix(t, 16).ok())
                .ok_or_else(|| CpioError::BadHeader {
                    offset: pos,
                    reason: format!("field {i} is not 8 hex digits"),
                })
        };
        let filesize = field(6)?;
        let namesize = field(11)?;
        let name_start = pos + HEADER_LEN;
        let name = bytes
            .get(name_start..name_start + namesize)
            .ok_or(CpioError::Truncated { offset: name_start })?;
        pos = align4(align4(name_start + namesize) + filesize);
        if name.strip_suffix(b"\0") == Some(TRAILER.as_bytes()) {
            return Ok(pos.min(bytes.len()));
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(perm: u32, data: &[u8]) -> Entry {
        Entry {
            perm,
            node: Node::File(data.to_vec()),
        }
    }

    #[test]
    fn normalises_paths() {
        assert_eq!(normalize("/a//b/./c/").expect("ok"), "a/b/c");
        assert_eq!(normalize("init").expect("ok"), "init");
        assert!(normalize("/").is_err());
        assert!(normalize("/a/../b").is_err());
    }

    #[test]
    fn parents_are_created_and_conflicts_reported() {
        let mut a = Archive::new();
        a.add("/etc/stagehand/x", file(0o644, b"x")).expect("add");
        assert!(a.contains("/etc"));
        assert!(a.contains("etc/stagehand"));
        a.add(
            "/etc",
            Entry {
                perm: 0o700,
                node: Node::Dir,
            },
        )
        .expect("dir twice is fine");
        let e = a.add("/etc/stagehand/x", file(0o644, b"y"));
        assert!(matches!(e, Err(CpioError::Conflict { .. })));
        let e = a.add("/etc/stagehand/x/y", file(0o644, b"y"));
        assert!(matches!(e, Err(CpioError::Conflict { .. })));
    }

    #[test]
    fn layout_is_aligned_and_round_trips() {
        let mut a = Archive::new();
        a.add("/init", file(0o755, b"#!abc")).expect("add");
        a.add("/b/c", file(0o644, b"")).expect("add");
        a.add(
            "/dev/console",
            Entry {
                perm: 0o600,
                node: Node::CharDev { major: 5, minor: 1 },
            },
        )
        .expect("add");
        a.add(
            "/lnk",
            Entry {
                perm: 0o777,
                node: Node::Symlink("init".into()),
            },
        )
        .expect("add");
        let bytes = a.to_bytes().expect("bytes");
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(&bytes[..6], MAGIC);
        let back = read(&bytes).expect("read");
        let names: Vec<&str> = back.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["b", "b/c", "dev", "dev/console", "init", "lnk"]);
        let init = &back[4];
        assert_eq!(init.data, b"#!abc");
        assert_eq!(init.mode, 0o100755);
        assert_eq!((init.mtime, init.uid, init.gid, init.nlink), (1, 0, 0, 1));
        let console = &back[3];
        assert_eq!(console.mode, 0o020600);
        assert_eq!((console.rdevmajor, console.rdevminor), (5, 1));
        assert_eq!(back[5].data, b"init");
        let mut inos: Vec<u32> = back.iter().map(|e| e.ino).collect();
        inos.dedup();
        assert_eq!(inos.len(), back.len());
    }

    #[test]
    fn truncated_archive_is_reported() {
        let mut a = Archive::new();
        a.add("/init", file(0o755, b"0123456789")).expect("add");
        let bytes = a.to_bytes().expect("bytes");
        for cut in [10, HEADER_LEN + 3, bytes.len() - 120] {
            let e = read(&bytes[..cut]).expect_err("truncated");
            assert!(matches!(e, CpioError::Truncated { .. }), "cut {cut}: {e}");
        }
        let mut bad = bytes.clone();
        bad[0] = b'1';
        assert!(matches!(read(&bad), Err(CpioError::BadHeader { .. })));
    }
}
