//! A Nix-shaped store for test images: every path is `/nix/store/<32 chars>-<name>`,
//! with the hash part derived from the content (so identical inputs give identical paths
//! and any change gives a new one, as in Nix).

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::tree::{Node, Tree};

pub const STORE_DIR: &str = "/nix/store";

/// Nix's base-32 alphabet (no e, o, u, t).
const NIX_BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Nix's base-32 encoding (bytes read from the end, as `nix hash to-base32` does).
pub fn nix_base32(bytes: &[u8]) -> String {
    let len = (bytes.len() * 8).div_ceil(5);
    (0..len)
        .rev()
        .map(|n| {
            let b = n * 5;
            let i = b / 8;
            let j = b % 8;
            let lo = u16::from(bytes[i]) >> j;
            let hi = if i + 1 < bytes.len() {
                u16::from(bytes[i + 1]) << (8 - j)
            } else {
                0
            };
            NIX_BASE32[usize::from((lo | hi) & 0x1f)] as char
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StorePath(String);

impl StorePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `/nix/store/<hash>-name/rel`
    pub fn join(&self, rel: &str) -> String {
        format!("{}/{}", self.0, rel.trim_start_matches('/'))
    }

    /// `<hash>-name`
    pub fn base_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The store paths of one image, by base name.
#[derive(Debug, Clone, Default)]
pub struct StoreBuilder {
    paths: BTreeMap<String, Node>,
}

impl StoreBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a store path holding `node` (a file, a symlink or a directory) and return its
    /// name. Adding the same content under the same name twice returns the same path.
    pub fn add(&mut self, name: &str, node: Node) -> Result<StorePath> {
        let path = Self::path_for(name, &node)?;
        self.paths.insert(path.base_name().to_string(), node);
        Ok(path)
    }

    /// Add a store path whose content names the path itself (a toplevel's `boot.json`):
    /// the hash is taken over the content made with a placeholder path, as Nix does.
    pub fn add_self_referential(
        &mut self,
        name: &str,
        make: impl Fn(&str) -> Result<Node>,
    ) -> Result<StorePath> {
        // `e` is not in the alphabet, so the placeholder never collides with a real path.
        let placeholder = format!("{STORE_DIR}/{}-{name}", "e".repeat(32));
        let path = Self::path_for(name, &make(&placeholder)?)?;
        let node = make(path.as_str())?;
        self.paths.insert(path.base_name().to_string(), node);
        Ok(path)
    }

    /// The path `add` would give `node` under `name`, without adding it: for store paths a
    /// fixture names but leaves out of the image (NixOS's Perl, in a Perl-less image).
    pub fn path_of(name: &str, node: &Node) -> Result<StorePath> {
        Self::path_for(name, node)
    }

    fn path_for(name: &str, node: &Node) -> Result<StorePath> {
        if name.is_empty()
            || name.starts_with('.')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-._?=".contains(c))
        {
            bail!("invalid store path name {name:?}");
        }
        let digest = {
            let mut wrapper = Tree::new();
            wrapper.insert("x", node.clone())?;
            wrapper
                .digest()
                .with_context(|| format!("hashing store path {name}"))?
        };
        let mut h = Sha256::new();
        h.update(b"stagehand-test-store:");
        h.update(name.as_bytes());
        h.update(b":");
        h.update(digest);
        let full: [u8; 32] = h.finalize().into();
        Ok(StorePath(format!(
            "{STORE_DIR}/{}-{name}",
            nix_base32(&full[..20])
        )))
    }

    pub fn add_text(&mut self, name: &str, text: impl Into<String>) -> Result<StorePath> {
        self.add(name, Node::text(text))
    }

    pub fn add_tree(&mut self, name: &str, tree: Tree) -> Result<StorePath> {
        self.add(name, Node::Dir(tree))
    }

    pub fn get(&self, path: &StorePath) -> Option<&Node> {
        self.paths.get(path.base_name())
    }

    /// Put every store path under `nix/store` of `root`.
    pub fn install_into(&self, root: &mut Tree) -> Result<()> {
        let store = root.dir_mut("nix/store")?;
        for (base, node) in &self.paths {
            store.insert(base, node.clone())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_nix() {
        // `nix hash to-base32 --type sha256` of sha256("") is
        // 0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73
        let empty: [u8; 32] = Sha256::digest(b"").into();
        assert_eq!(
            nix_base32(&empty),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        assert_eq!(nix_base32(&[0u8; 20]).len(), 32);
    }

    #[test]
    fn paths_are_deterministic_and_content_addressed() {
        let mut s = StoreBuilder::new();
        let a = s.add_text("hostname", "demo\n").expect("add");
        let b = s.add_text("hostname", "demo\n").expect("add");
        let c = s.add_text("hostname", "other\n").expect("add");
        assert_eq!(a, b);
        assert_ne!(a, c);
        let hash = a
            .as_str()
            .strip_prefix("/nix/store/")
            .and_then(|s| s.strip_suffix("-hostname"))
            .expect("shape");
        assert_eq!(hash.len(), 32);
        assert!(hash.bytes().all(|b| NIX_BASE32.contains(&b)));
        assert_eq!(a.join("/etc/x"), format!("{a}/etc/x"));
        assert!(s.add_text("bad/name", "").is_err());
    }
}
