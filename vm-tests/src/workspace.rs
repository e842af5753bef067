//! Where things live: the Cargo workspace, its target directory, the download cache, and
//! the boot binaries the harness builds before it boots anything.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::host::run;

/// The target triple the workspace config forces (static glibc builds land under it).
pub const TARGET_TRIPLE: &str = "x86_64-unknown-linux-gnu";

#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
}

/// The static binaries that go into the initrd and the disk image.
#[derive(Debug, Clone)]
pub struct BootBinaries {
    pub stage1: PathBuf,
    pub stage2: PathBuf,
    pub guest_probe: PathBuf,
}

fn cargo() -> Command {
    // `cargo run` sets CARGO to the cargo that runs us; use the same one.
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

impl Workspace {
    /// Ask `cargo metadata` for the workspace root and target directory (which honours
    /// CARGO_TARGET_DIR and any config).
    pub fn locate() -> Result<Self> {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = cargo();
        cmd.args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(&manifest);
        Self::from_metadata(run(&mut cmd)?.as_bytes())
    }

    fn from_metadata(json: &[u8]) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_slice(json).context("parsing `cargo metadata` output")?;
        let field = |name: &str| -> Result<PathBuf> {
            v.get(name)
                .and_then(|x| x.as_str())
                .map(PathBuf::from)
                .with_context(|| format!("`cargo metadata` output has no `{name}`"))
        };
        Ok(Self {
            root: field("workspace_root")?,
            target_dir: field("target_directory")?,
        })
    }

    /// Downloads (the kernel package) are cached here: `$STAGEHAND_CACHE`, or
    /// `<workspace>/target/vm-cache` (gitignored).
    pub fn cache_dir(&self) -> PathBuf {
        match std::env::var_os("STAGEHAND_CACHE") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => self.root.join("target").join("vm-cache"),
        }
    }

    /// Per-run artifacts (disk images, initrds, console logs) go under the target dir.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.target_dir.join("vm-tests")
    }

    /// `cargo build --release` of stage1, stage2 and the guest probe.
    pub fn build_boot_binaries(&self) -> Result<BootBinaries> {
        self.build_release(&[
            "-p",
            "stagehand-stage1",
            "-p",
            "stagehand-stage2",
            "-p",
            "stagehand-vm-tests",
        ])?;
        Ok(BootBinaries {
            stage1: self.release_binary("stage1")?,
            stage2: self.release_binary("stage2")?,
            guest_probe: self.release_binary("guest-probe")?,
        })
    }

    /// `cargo build --release` in the workspace with `args` (which packages, binaries).
    pub fn build_release(&self, args: &[&str]) -> Result<()> {
        let shown = format!("cargo build --release {}", args.join(" "));
        let status = cargo()
            .current_dir(&self.root)
            .args(["build", "--release"])
            .args(args)
            .status()
            .with_context(|| format!("running `{shown}`"))?;
        if !status.success() {
            bail!("`{shown}` failed ({status})");
        }
        Ok(())
    }

    /// A binary that [`Self::build_release`] built, checked to exist.
    pub fn release_binary(&self, name: &str) -> Result<PathBuf> {
        let p = self
            .target_dir
            .join(TARGET_TRIPLE)
            .join("release")
            .join(name);
        if !p.is_file() {
            bail!("`{name}` was not built: {} does not exist", p.display());
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_root_and_target_dir_from_metadata() {
        let ws = Workspace::from_metadata(
            br#"{"packages":[],"workspace_root":"/src/ws","target_directory":"/tmp/t"}"#,
        )
        .expect("parse");
        assert_eq!(ws.root, PathBuf::from("/src/ws"));
        assert_eq!(ws.target_dir, PathBuf::from("/tmp/t"));
        assert_eq!(ws.artifacts_dir(), PathBuf::from("/tmp/t/vm-tests"));
        assert!(Workspace::from_metadata(br#"{"workspace_root":"/x"}"#).is_err());
    }
}
