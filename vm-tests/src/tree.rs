//! An in-memory file tree (files, symlinks, directories) that is hashed to name store
//! paths and written out to a staging directory for `mkfs.ext4 -d`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Bytes(Vec<u8>),
    /// A file on the host, copied when the tree is written.
    Host(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File { source: Source, mode: u32 },
    Symlink(String),
    Dir(Tree),
}

impl Node {
    pub fn text(s: impl Into<String>) -> Node {
        Node::File {
            source: Source::Bytes(s.into().into_bytes()),
            mode: 0o444,
        }
    }

    pub fn bytes(b: Vec<u8>, mode: u32) -> Node {
        Node::File {
            source: Source::Bytes(b),
            mode,
        }
    }

    pub fn host_file(path: impl Into<PathBuf>, mode: u32) -> Node {
        Node::File {
            source: Source::Host(path.into()),
            mode,
        }
    }

    pub fn executable(path: impl Into<PathBuf>) -> Node {
        Self::host_file(path, 0o555)
    }

    pub fn symlink(target: impl Into<String>) -> Node {
        Node::Symlink(target.into())
    }
}

/// A directory: entries by name, kept sorted so hashing and writing are deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    pub mode: Option<u32>,
    entries: BTreeMap<String, Node>,
}

fn split(path: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|c| *c == "." || *c == "..") {
        bail!("bad tree path {path:?}");
    }
    Ok(parts)
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_mode(mode: u32) -> Self {
        Self {
            mode: Some(mode),
            entries: BTreeMap::new(),
        }
    }

    /// The directory at `path`, created (with parents) if needed.
    pub fn dir_mut(&mut self, path: &str) -> Result<&mut Tree> {
        let mut cur = self;
        for part in split(path)? {
            let node = cur
                .entries
                .entry(part.to_string())
                .or_insert_with(|| Node::Dir(Tree::new()));
            cur = match node {
                Node::Dir(t) => t,
                _ => bail!("{path:?}: {part:?} exists and is not a directory"),
            };
        }
        Ok(cur)
    }

    /// Insert `node` at `path` (relative, `/`-separated), creating parent directories.
    /// Inserting an identical node twice is fine; a different one is an error.
    pub fn insert(&mut self, path: &str, node: Node) -> Result<()> {
        let parts = split(path)?;
        let (name, parents) = parts.split_last().context("empty path")?;
        let dir = if parents.is_empty() {
            self
        } else {
            self.dir_mut(&parents.join("/"))?
        };
        match dir.entries.get_mut(*name) {
            None => {
                dir.entries.insert(name.to_string(), node);
            }
            Some(existing) if *existing == node => {}
            Some(Node::Dir(existing)) => match node {
                // Creating a directory that exists keeps its contents.
                Node::Dir(t) if t.entries.is_empty() => {
                    if t.mode.is_some() {
                        existing.mode = t.mode;
                    }
                }
                _ => bail!("{path:?} already exists as a directory"),
            },
            Some(existing) => bail!("{path:?} already exists as {existing:?}"),
        }
        Ok(())
    }

    /// Remove and return the node at `path`.
    pub fn take(&mut self, path: &str) -> Option<Node> {
        let parts = split(path).ok()?;
        let (name, parents) = parts.split_last()?;
        let mut cur = self;
        for p in parents {
            cur = match cur.entries.get_mut(*p)? {
                Node::Dir(t) => t,
                _ => return None,
            };
        }
        cur.entries.remove(*name)
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        let parts = split(path).ok()?;
        let (name, parents) = parts.split_last()?;
        let mut cur = self;
        for p in parents {
            cur = match cur.entries.get(*p)? {
                Node::Dir(t) => t,
                _ => return None,
            };
        }
        cur.entries.get(*name)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.entries.iter()
    }

    /// SHA-256 over a canonical serialisation: names, kinds, modes, contents, targets.
    pub fn digest(&self) -> Result<[u8; 32]> {
        let mut h = Sha256::new();
        hash_tree(&mut h, self)?;
        Ok(h.finalize().into())
    }

    /// Write the tree below `dest` (which must exist).
    pub fn write_to(&self, dest: &Path) -> Result<()> {
        for (name, node) in &self.entries {
            let p = dest.join(name);
            match node {
                Node::Dir(t) => {
                    fs::create_dir(&p).with_context(|| format!("mkdir {}", p.display()))?;
                    t.write_to(&p)?;
                    fs::set_permissions(&p, fs::Permissions::from_mode(t.mode.unwrap_or(0o755)))
                        .with_context(|| format!("chmod {}", p.display()))?;
                }
                Node::Symlink(target) => std::os::unix::fs::symlink(target, &p)
                    .with_context(|| format!("symlink {} -> {target}", p.display()))?,
                Node::File { source, mode } => {
                    match source {
                        Source::Bytes(b) => fs::write(&p, b),
                        Source::Host(h) => fs::copy(h, &p).map(|_| ()),
                    }
                    .with_context(|| format!("writing {}", p.display()))?;
                    fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
                        .with_context(|| format!("chmod {}", p.display()))?;
                }
            }
        }
        Ok(())
    }
}

fn hash_tree(h: &mut Sha256, t: &Tree) -> Result<()> {
    h.update(format!(
        "dir {:o} {}\0",
        t.mode.unwrap_or(0o755),
        t.entries.len()
    ));
    for (name, node) in &t.entries {
        h.update(format!("entry {}:{name}\0", name.len()));
        match node {
            Node::Dir(sub) => hash_tree(h, sub)?,
            Node::Symlink(target) => h.update(format!("link {}:{target}\0", target.len())),
            Node::File { source, mode } => {
                h.update(format!("file {mode:o}\0"));
                match source {
                    Source::Bytes(b) => {
                        h.update((b.len() as u64).to_le_bytes());
                        h.update(b);
                    }
                    Source::Host(p) => {
                        let mut f = fs::File::open(p)
                            .with_context(|| format!("opening {}", p.display()))?;
                        let len = f.metadata()?.len();
                        h.update(len.to_le_bytes());
                        let mut buf = vec![0u8; 1 << 16];
                        loop {
                            let n = f
                                .read(&mut buf)
                                .with_context(|| format!("reading {}", p.display()))?;
                            if n == 0 {
                                break;
                            }
                            h.update(&buf[..n]);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Copy a host file into `root` at its real path, recreating every symlink met on the
/// way (`/lib64` → `usr/lib64`, `ld-linux-x86-64.so.2` → `../lib/...`), so the paths
/// the dynamic loader and RUNPATHs use resolve inside the image as on the host.
pub fn install_host_path(root: &mut Tree, path: &Path) -> Result<()> {
    install_host_path_inner(root, path, 0)
        .with_context(|| format!("copying host file {} into the image", path.display()))
}

fn install_host_path_inner(root: &mut Tree, path: &Path, depth: u32) -> Result<()> {
    if depth > 40 {
        bail!("too many levels of symbolic links");
    }
    if !path.is_absolute() {
        bail!("not an absolute path");
    }
    let comps: Vec<&std::ffi::OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut prefix = PathBuf::from("/");
    for (i, comp) in comps.iter().enumerate() {
        let cand = prefix.join(comp);
        let rel = rel_str(&cand)?;
        let md = fs::symlink_metadata(&cand)
            .with_context(|| format!("inspecting {}", cand.display()))?;
        if md.file_type().is_symlink() {
            let target = fs::read_link(&cand)?;
            let target_str = target
                .to_str()
                .with_context(|| format!("non-UTF-8 link target in {}", cand.display()))?;
            root.insert(&rel, Node::symlink(target_str))?;
            let mut resolved = normalize(&prefix.join(&target));
            for rest in &comps[i + 1..] {
                resolved.push(rest);
            }
            return install_host_path_inner(root, &resolved, depth + 1);
        }
        if i + 1 == comps.len() {
            if md.is_dir() {
                root.dir_mut(&rel)?;
            } else if md.is_file() {
                let exec = md.permissions().mode() & 0o111 != 0;
                root.insert(
                    &rel,
                    Node::host_file(&cand, if exec { 0o755 } else { 0o644 }),
                )?;
            } else {
                bail!("{} is neither a file nor a directory", cand.display());
            }
        } else if md.is_dir() {
            root.dir_mut(&rel)?;
        } else {
            bail!("{} is not a directory", cand.display());
        }
        prefix = cand;
    }
    Ok(())
}

fn rel_str(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))?;
    Ok(s.trim_start_matches('/').to_string())
}

/// Lexically resolve `.` and `..` (safe here: every prefix has been checked to be a real
/// directory before a relative link target is appended to it).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_creates_parents_and_rejects_conflicts() {
        let mut t = Tree::new();
        t.insert("a/b/c", Node::text("x")).expect("insert");
        t.insert("a/b/c", Node::text("x")).expect("same again");
        assert!(t.insert("a/b/c", Node::text("y")).is_err());
        assert!(t.insert("a/b/c/d", Node::text("y")).is_err());
        assert!(t.insert("a/../x", Node::text("y")).is_err());
        assert!(matches!(t.get("a/b"), Some(Node::Dir(_))));
        assert_eq!(t.get("a/b/c"), Some(&Node::text("x")));
        assert_eq!(t.get("a/nope"), None);
    }

    #[test]
    fn digest_depends_on_content_names_and_modes() {
        let mut a = Tree::new();
        a.insert("f", Node::text("x")).expect("insert");
        let mut b = a.clone();
        assert_eq!(a.digest().expect("d"), b.digest().expect("d"));
        b.insert("g", Node::symlink("f")).expect("insert");
        assert_ne!(a.digest().expect("d"), b.digest().expect("d"));
        let mut c = Tree::new();
        c.insert("f", Node::bytes(b"x".to_vec(), 0o555))
            .expect("insert");
        assert_ne!(a.digest().expect("d"), c.digest().expect("d"));
        let mut d = Tree::new();
        d.insert("f", Node::text("y")).expect("insert");
        assert_ne!(a.digest().expect("d"), d.digest().expect("d"));
    }

    #[test]
    fn installs_host_files_through_symlinks() {
        let host = tempfile::tempdir().expect("tempdir");
        let h = host.path();
        fs::create_dir_all(h.join("usr/lib/x")).expect("mkdir");
        fs::write(h.join("usr/lib/x/libfoo.so.1.2"), b"elf").expect("write");
        std::os::unix::fs::symlink("usr/lib", h.join("lib")).expect("link");
        std::os::unix::fs::symlink("libfoo.so.1.2", h.join("usr/lib/x/libfoo.so.1")).expect("link");
        let mut root = Tree::new();
        install_host_path(&mut root, &h.join("lib/x/libfoo.so.1")).expect("install");
        let rel = |p: &str| rel_str(&h.join(p)).expect("utf8");
        assert_eq!(root.get(&rel("lib")), Some(&Node::symlink("usr/lib")));
        assert_eq!(
            root.get(&rel("usr/lib/x/libfoo.so.1")),
            Some(&Node::symlink("libfoo.so.1.2"))
        );
        assert!(matches!(
            root.get(&rel("usr/lib/x/libfoo.so.1.2")),
            Some(Node::File { .. })
        ));
        assert_eq!(
            normalize(Path::new("/usr/lib64/../lib/./x")),
            PathBuf::from("/usr/lib/x")
        );
    }

    #[test]
    fn writes_what_it_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut t = Tree::new();
        t.insert("d/f", Node::text("hello")).expect("insert");
        t.insert("d/l", Node::symlink("/nix/store/x"))
            .expect("insert");
        t.insert("e", Node::Dir(Tree::with_mode(0o1777)))
            .expect("insert");
        t.write_to(dir.path()).expect("write");
        assert_eq!(
            fs::read_to_string(dir.path().join("d/f")).expect("read"),
            "hello"
        );
        assert_eq!(
            fs::read_link(dir.path().join("d/l")).expect("readlink"),
            PathBuf::from("/nix/store/x")
        );
        let mode = fs::metadata(dir.path().join("e"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o1777);
    }
}
