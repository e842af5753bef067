//! systemd-boot's loader variables, read from efivarfs.
//!
//! An efivarfs file is `<Name>-<vendor GUID>`; reading it yields the variable's attributes
//! (u32, little-endian) followed by its data. The loader's strings are UTF-16LE and
//! NUL-terminated; `LoaderEntries` is a sequence of such strings.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use stagehand_common::rootfs::Root;

/// Where the kernel mounts efivarfs.
pub const EFIVARS_DIR: &str = "/sys/firmware/efi/efivars";
/// Vendor GUID of the Boot Loader Interface variables.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

#[derive(Debug)]
pub enum EfiVarError {
    Io {
        path: PathBuf,
        error: io::Error,
    },
    /// Fewer than the 4 attribute bytes every efivarfs file starts with.
    TooShort {
        path: PathBuf,
        len: usize,
    },
    /// A UTF-16 string with an odd number of bytes.
    OddLength {
        path: PathBuf,
        len: usize,
    },
    NotUtf16 {
        path: PathBuf,
    },
}

impl fmt::Display for EfiVarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EfiVarError::Io { path, error } => write!(
                f,
                "cannot read EFI variable {}: {error} (is efivarfs mounted there?)",
                path.display()
            ),
            EfiVarError::TooShort { path, len } => write!(
                f,
                "EFI variable {} is {len} bytes, shorter than its 4-byte attribute header; it \
                 is not an efivarfs file",
                path.display()
            ),
            EfiVarError::OddLength { path, len } => write!(
                f,
                "EFI variable {} holds {len} data bytes, which is not UTF-16; the loader that \
                 set it wrote something else",
                path.display()
            ),
            EfiVarError::NotUtf16 { path } => write!(
                f,
                "EFI variable {} is not valid UTF-16LE text",
                path.display()
            ),
        }
    }
}

impl std::error::Error for EfiVarError {}

/// One variable: attributes and raw data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EfiVar {
    pub attributes: u32,
    pub data: Vec<u8>,
}

/// Split an efivarfs file's bytes; `path` is for messages.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<EfiVar, EfiVarError> {
    let Some((head, data)) = bytes.split_first_chunk::<4>() else {
        return Err(EfiVarError::TooShort {
            path: path.to_path_buf(),
            len: bytes.len(),
        });
    };
    Ok(EfiVar {
        attributes: u32::from_le_bytes(*head),
        data: data.to_vec(),
    })
}

fn utf16_units(path: &Path, data: &[u8]) -> Result<Vec<u16>, EfiVarError> {
    if !data.chunks_exact(2).remainder().is_empty() {
        return Err(EfiVarError::OddLength {
            path: path.to_path_buf(),
            len: data.len(),
        });
    }
    Ok(data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// The variable's data as one string, up to the first NUL (or the end if there is none).
pub fn utf16_string(path: &Path, data: &[u8]) -> Result<String, EfiVarError> {
    let units = utf16_units(path, data)?;
    let end = units.iter().position(|u| *u == 0).unwrap_or(units.len());
    String::from_utf16(&units[..end]).map_err(|_| EfiVarError::NotUtf16 {
        path: path.to_path_buf(),
    })
}

/// The variable's data as a list of NUL-terminated strings (`LoaderEntries`).
pub fn utf16_list(path: &Path, data: &[u8]) -> Result<Vec<String>, EfiVarError> {
    let units = utf16_units(path, data)?;
    units
        .split(|u| *u == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            String::from_utf16(s).map_err(|_| EfiVarError::NotUtf16 {
                path: path.to_path_buf(),
            })
        })
        .collect()
}

/// Reads loader variables from an efivarfs directory inside a root.
pub struct EfiVars<'r> {
    root: &'r Root,
    dir: PathBuf,
}

impl<'r> EfiVars<'r> {
    pub fn new(root: &'r Root, dir: &Path) -> Self {
        EfiVars {
            root,
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-{LOADER_GUID}"))
    }

    /// A loader variable; `None` when it is not set (or efivarfs is not there).
    pub fn read(&self, name: &str) -> Result<Option<(PathBuf, EfiVar)>, EfiVarError> {
        let path = self.path(name);
        let host = self.root.host_path(&path);
        match self.root.read_opt(&path) {
            Ok(Some(bytes)) => Ok(Some((host.clone(), decode(&host, &bytes)?))),
            Ok(None) => Ok(None),
            Err(error) => Err(EfiVarError::Io { path: host, error }),
        }
    }

    pub fn string(&self, name: &str) -> Result<Option<String>, EfiVarError> {
        match self.read(name)? {
            Some((path, v)) => Ok(Some(utf16_string(&path, &v.data)?)),
            None => Ok(None),
        }
    }

    pub fn list(&self, name: &str) -> Result<Option<Vec<String>>, EfiVarError> {
        match self.read(name)? {
            Some((path, v)) => Ok(Some(utf16_list(&path, &v.data)?)),
            None => Ok(None),
        }
    }
}

/// What the loader told us about this boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoaderVars {
    /// `LoaderEntrySelected`: the ID of the entry booted.
    pub entry_selected: Option<String>,
    /// `LoaderBootCountPath`: partition path of the entry file after the counter update.
    pub boot_count_path: Option<String>,
}

pub fn loader_vars(vars: &EfiVars<'_>) -> Result<LoaderVars, EfiVarError> {
    Ok(LoaderVars {
        entry_selected: vars.string("LoaderEntrySelected")?,
        boot_count_path: vars.string("LoaderBootCountPath")?,
    })
}

/// Fixtures for tests in this crate and the crates above it: efivarfs files as the kernel
/// shows them.
#[doc(hidden)]
pub mod fixture {
    use std::path::Path;

    use super::LOADER_GUID;

    /// The bytes efivarfs returns for a loader string variable.
    pub fn encode(attributes: u32, s: &str) -> Vec<u8> {
        let mut v = attributes.to_le_bytes().to_vec();
        for u in s.encode_utf16().chain([0]) {
            v.extend(u.to_le_bytes());
        }
        v
    }

    /// Writes variable `name` of systemd-boot's vendor GUID under `dir`; panics on I/O errors.
    #[allow(clippy::expect_used)]
    pub fn write_var(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join(format!("{name}-{LOADER_GUID}")), bytes).expect("write");
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{encode, write_var};
    use super::*;

    #[test]
    fn reads_loader_variables_from_an_efivarfs_directory() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("sys/firmware/efi/efivars");
        write_var(
            &dir,
            "LoaderEntrySelected",
            &encode(0x06, "nixos-generation-5.conf"),
        );
        write_var(
            &dir,
            "LoaderBootCountPath",
            &encode(0x06, "\\loader\\entries\\nixos-generation-5+2-1.conf"),
        );
        let mut entries = 0x06u32.to_le_bytes().to_vec();
        for id in ["a.conf", "b.conf"] {
            for u in id.encode_utf16().chain([0]) {
                entries.extend(u.to_le_bytes());
            }
        }
        write_var(&dir, "LoaderEntries", &entries);
        let root = Root::open(t.path()).expect("root");
        let vars = EfiVars::new(&root, Path::new(EFIVARS_DIR));
        let lv = loader_vars(&vars).expect("read");
        assert_eq!(
            lv.entry_selected.as_deref(),
            Some("nixos-generation-5.conf")
        );
        assert_eq!(
            lv.boot_count_path.as_deref(),
            Some("\\loader\\entries\\nixos-generation-5+2-1.conf")
        );
        assert_eq!(
            vars.list("LoaderEntries").expect("list"),
            Some(vec!["a.conf".to_string(), "b.conf".to_string()])
        );
        let (_, raw) = vars
            .read("LoaderEntrySelected")
            .expect("read")
            .expect("set");
        assert_eq!(raw.attributes, 0x06);
        assert_eq!(vars.string("LoaderEntryOneShot").expect("absent"), None);
    }

    #[test]
    fn damaged_variables_are_errors_naming_the_file() {
        let p = Path::new("/sys/firmware/efi/efivars/X");
        assert!(decode(p, &[1, 0])
            .expect_err("short")
            .to_string()
            .contains("4-byte"));
        let v = decode(p, &[6, 0, 0, 0, b'a']).expect("decode");
        assert!(utf16_string(p, &v.data)
            .expect_err("odd")
            .to_string()
            .contains("not UTF-16"));
        // An unpaired surrogate.
        assert!(utf16_string(p, &[0x00, 0xd8]).is_err());
        // No terminating NUL is tolerated; text after the NUL is ignored.
        assert_eq!(utf16_string(p, &[b'a', 0]).expect("ok"), "a");
        assert_eq!(utf16_string(p, &[b'a', 0, 0, 0, b'b', 0]).expect("ok"), "a");
        assert_eq!(utf16_string(p, &[]).expect("empty"), "");
    }
}
