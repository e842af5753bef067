//! What an initrd was built for, read back from its contents: the kernel version its
//! modules belong to. `stagehand install-bootloader --initrd` uses it to give the initrd
//! only to generations running that kernel.

use std::collections::BTreeSet;
use std::fmt;

use crate::cpio::{ReadEntry, S_IFMT, S_IFREG};
use crate::{elf, modules};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InspectError {
    /// Modules for more than one kernel: no single generation can load them all.
    SeveralKernels { versions: Vec<String> },
    /// A `.ko` whose `.modinfo` does not say which kernel it is for.
    NoVermagic { path: String, reason: String },
}

impl fmt::Display for InspectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SeveralKernels { versions } => write!(
                f,
                "it holds modules for several kernels ({}); build one initrd per kernel",
                versions.join(", ")
            ),
            Self::NoVermagic { path, reason } => write!(
                f,
                "{path}: {reason}, so the kernel it is for is unknown; rebuild the initrd from \
                 the kernel's own modules"
            ),
        }
    }
}

impl std::error::Error for InspectError {}

/// The kernel version (`uname -r`) of the modules in an initrd's entries (from
/// [`crate::list`]): a `lib/modules/<version>/` directory names it (NixOS's and other
/// builders' layout), and Stagehand's flat `lib/modules/<name>.ko` files carry it as the
/// first word of `vermagic` in their `.modinfo`. `None` when the initrd holds no modules.
pub fn kernel_version(entries: &[ReadEntry]) -> Result<Option<String>, InspectError> {
    let mut versions = BTreeSet::new();
    for e in entries {
        let name = e.name.trim_start_matches("./").trim_start_matches('/');
        let Some(rest) = name.strip_prefix("lib/modules/") else {
            continue;
        };
        if e.is_dir() {
            if !rest.is_empty() && !rest.contains('/') {
                versions.insert(rest.to_string());
            }
            continue;
        }
        if e.mode & S_IFMT != S_IFREG || !rest.ends_with(".ko") {
            continue;
        }
        let bad = |reason: String| InspectError::NoVermagic {
            path: format!("/{name}"),
            reason,
        };
        let section = elf::find_section(e.data.as_slice(), ".modinfo")
            .map_err(|err| bad(format!("not a readable kernel module ({err})")))?
            .ok_or_else(|| bad("it has no .modinfo section".into()))?;
        let vermagic = modules::parse_modinfo(&section)
            .vermagic
            .ok_or_else(|| bad("its .modinfo has no vermagic".into()))?;
        let release = vermagic
            .split_whitespace()
            .next()
            .ok_or_else(|| bad("its vermagic is empty".into()))?;
        versions.insert(release.to_string());
    }
    let mut it = versions.iter();
    match (it.next(), it.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => Ok(Some(v.clone())),
        _ => Err(InspectError::SeveralKernels {
            versions: versions.into_iter().collect(),
        }),
    }
}

/// A fake kernel module for tests here and in the crates that read initrds: an ELF file
/// whose only content is a `.modinfo` section with these `key=value` strings.
#[doc(hidden)]
pub fn fake_module(modinfo: &[&str]) -> Vec<u8> {
    let mut info = Vec::new();
    for kv in modinfo {
        info.extend_from_slice(kv.as_bytes());
        info.push(0);
    }
    elf::fixture::tiny_elf(&[(".text", b"\xc3"), (".modinfo", &info)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::{Archive, Entry, Node};

    fn entries(files: &[(&str, Node)]) -> Vec<ReadEntry> {
        let mut a = Archive::new();
        for (path, node) in files {
            a.add(
                path,
                Entry {
                    perm: 0o644,
                    node: node.clone(),
                },
            )
            .expect("add");
        }
        crate::list(&a.to_bytes().expect("bytes")).expect("list")
    }

    fn module(vermagic: &str) -> Node {
        Node::File(fake_module(&["name=m", &format!("vermagic={vermagic}")]))
    }

    #[test]
    fn stagehands_flat_modules_name_their_kernel_by_vermagic() {
        let e = entries(&[
            ("/init", Node::File(b"x".to_vec())),
            (
                "/lib/modules/virtio_blk.ko",
                module("6.1.0-18-amd64 SMP preempt mod_unload"),
            ),
            (
                "/lib/modules/ext4.ko",
                module("6.1.0-18-amd64 SMP preempt mod_unload"),
            ),
        ]);
        assert_eq!(kernel_version(&e), Ok(Some("6.1.0-18-amd64".into())));
    }

    #[test]
    fn a_version_directory_names_the_kernel() {
        let e = entries(&[("/lib/modules/6.12.3", Node::Dir)]);
        assert_eq!(kernel_version(&e), Ok(Some("6.12.3".into())));
    }

    #[test]
    fn no_modules_no_version_and_mixed_kernels_are_refused() {
        let e = entries(&[
            ("/init", Node::File(b"x".to_vec())),
            ("/lib/firmware", Node::Dir),
        ]);
        assert_eq!(kernel_version(&e), Ok(None));
        let e = entries(&[
            ("/lib/modules/a.ko", module("6.1.0 SMP")),
            ("/lib/modules/6.6.0", Node::Dir),
        ]);
        let err = kernel_version(&e).expect_err("two kernels");
        assert_eq!(
            err.to_string(),
            "it holds modules for several kernels (6.1.0, 6.6.0); build one initrd per kernel"
        );
        let e = entries(&[("/lib/modules/a.ko", Node::File(fake_module(&["name=a"])))]);
        let err = kernel_version(&e).expect_err("no vermagic").to_string();
        assert!(
            err.starts_with("/lib/modules/a.ko: its .modinfo has no vermagic"),
            "{err}"
        );
        let e = entries(&[("/lib/modules/a.ko", Node::File(b"not elf".to_vec()))]);
        let err = kernel_version(&e).expect_err("not elf").to_string();
        assert!(
            err.starts_with("/lib/modules/a.ko: not a readable kernel module"),
            "{err}"
        );
    }
}
