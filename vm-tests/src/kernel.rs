//! The guest kernel: Debian's `linux-image-amd64` of the host's release, downloaded with
//! `apt-get download`, unpacked with `dpkg -x` into the cache, and its uncompressed
//! `vmlinux` extracted once for PVH boot (QEMU `-kernel` with an ELF image skips the
//! in-guest decompression, ~2.5 s under TCG). Other Debian packages a scenario needs
//! (busybox) come the same way, through [`unpacked_package`].

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::host::run;

/// The metapackage that names the current kernel ABI.
const META_PACKAGE: &str = "linux-image-amd64";

/// Start of an xz stream: the kernel payload inside Debian's bzImage.
const XZ_MAGIC: [u8; 6] = [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00];

/// Marker written last into an unpacked package directory.
const COMPLETE_MARKER: &str = ".complete";

#[derive(Debug, Clone)]
pub struct Kernel {
    /// `linux-image-6.1.0-56-amd64`
    pub package: String,
    /// `6.1.0-56-amd64`, the name of the modules directory
    pub version: String,
    /// The unpacked package (`boot/`, `lib/modules/`).
    pub root: PathBuf,
    /// The compressed bzImage as shipped (`boot/vmlinuz-VERSION`).
    pub vmlinuz: PathBuf,
    /// The uncompressed ELF image for PVH boot.
    pub vmlinux: PathBuf,
    /// `lib/modules/VERSION` inside the unpacked package.
    pub modules_dir: PathBuf,
}

/// Resolve, download (once) and prepare the kernel under `cache/kernel/`.
pub fn fetch(cache: &Path) -> Result<Kernel> {
    let package = resolve_package()?;
    let version = package
        .strip_prefix("linux-image-")
        .with_context(|| format!("unexpected kernel package name {package}"))?
        .to_string();
    let pkg_dir = cache.join("kernel").join(&package);
    let root = unpacked_package(&cache.join("kernel"), &package)?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{version}"));
    let modules_dir = root.join("lib/modules").join(&version);
    for p in [&vmlinuz, &modules_dir] {
        if !p.exists() {
            bail!(
                "{} is missing from the unpacked {package}; delete {} and retry",
                p.display(),
                pkg_dir.display()
            );
        }
    }
    let vmlinux = pkg_dir.join("vmlinux");
    if !vmlinux.exists() {
        extract_vmlinux(&vmlinuz, &vmlinux)?;
    }
    Ok(Kernel {
        package,
        version,
        root,
        vmlinuz,
        vmlinux,
        modules_dir,
    })
}

/// A Debian package of the host's release, downloaded once with `apt-get download` and
/// unpacked with `dpkg -x` into `parent/<package>/root`; that root.
pub fn unpacked_package(parent: &Path, package: &str) -> Result<PathBuf> {
    fs::create_dir_all(parent)
        .with_context(|| format!("creating cache dir {}", parent.display()))?;
    let pkg_dir = parent.join(package);
    if pkg_dir.exists() && !pkg_dir.join(COMPLETE_MARKER).exists() {
        // Not made by us (we rename complete directories into place): start over.
        fs::remove_dir_all(&pkg_dir)
            .with_context(|| format!("removing incomplete {}", pkg_dir.display()))?;
    }
    if !pkg_dir.join(COMPLETE_MARKER).exists() {
        download_and_unpack(package, parent, &pkg_dir)?;
    }
    Ok(pkg_dir.join("root"))
}

/// `apt-cache depends linux-image-amd64` → `linux-image-6.1.0-N-amd64`.
fn resolve_package() -> Result<String> {
    let text = run(Command::new("apt-cache").args(["depends", META_PACKAGE]))
        .context("asking apt for the kernel package (a Debian host? run vm-tests/setup-host)")?;
    parse_depends(&text).with_context(|| {
        format!(
            "`apt-cache depends {META_PACKAGE}` names no linux-image package \
             (apt lists missing? run vm-tests/setup-host): {text:?}"
        )
    })
}

fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|name| {
            name.starts_with("linux-image-")
                && name.len() > "linux-image-".len()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '+'))
        })
        .map(str::to_string)
}

fn download_and_unpack(package: &str, parent: &Path, pkg_dir: &Path) -> Result<()> {
    eprintln!("vm-tests: downloading {package} into {}", parent.display());
    // Downloaded and unpacked beside its final place, so the rename into it is atomic.
    let work = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(parent)
        .context("creating a download dir")?;
    // apt drops privileges to `_apt` for the download; let it write here.
    set_mode(work.path(), 0o755)?;
    run(Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(work.path()))
    .with_context(|| format!("downloading {package} (run vm-tests/setup-host)"))?;
    let deb = fs::read_dir(work.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("`apt-get download {package}` produced no .deb"))?;
    let staging = work.path().join("pkg");
    let root = staging.join("root");
    fs::create_dir_all(&root)?;
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    fs::write(staging.join(COMPLETE_MARKER), package)?;
    match fs::rename(&staging, pkg_dir) {
        Ok(()) => Ok(()),
        // Another run finished first: its copy is as good as ours.
        Err(_) if pkg_dir.join(COMPLETE_MARKER).exists() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("moving the package to {}", pkg_dir.display())),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Find the xz stream in the bzImage and decompress it with `xz` into `out`.
pub fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    let image = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let at = find(&image, &XZ_MAGIC).with_context(|| {
        format!(
            "{} contains no xz stream; only xz-compressed kernels are supported",
            vmlinuz.display()
        )
    })?;
    let mut child = Command::new("xz")
        // The stream is followed by the rest of the bzImage: stop after the first stream.
        .args(["--decompress", "--stdout", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `xz` (install xz-utils)")?;
    let mut stdin = child.stdin.take().context("xz stdin")?;
    let payload = image[at..].to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&payload));
    let output = child.wait_with_output().context("waiting for xz")?;
    let fed = feeder
        .join()
        .map_err(|_| anyhow::anyhow!("xz feeder thread panicked"))?;
    if !output.status.success() {
        bail!(
            "xz failed to decompress the kernel in {} ({}): {}",
            vmlinuz.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    match fed {
        // With --single-stream xz stops reading at the end of the stream: the rest of the
        // bzImage is not needed, so a closed pipe is expected.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.context("feeding the kernel to xz")?,
    }
    check_elf(&output.stdout).with_context(|| {
        format!(
            "the payload of {} is not a complete vmlinux",
            vmlinuz.display()
        )
    })?;
    // A unique temporary name, then rename: a concurrent run never sees half a file.
    let dir = out
        .parent()
        .with_context(|| format!("{} has no parent directory", out.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(&output.stdout)
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    set_mode(tmp.path(), 0o644)?;
    tmp.persist(out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A 64-bit little-endian ELF whose section header table (at the end of the file) is
/// inside the data: a truncated decompression fails this.
fn check_elf(data: &[u8]) -> Result<()> {
    let header = stagehand_initrd::elf::FileHeader::parse(data)?;
    let end = header.section_table_end();
    if header.shnum == 0 || end.is_none_or(|end| end > data.len() as u64) {
        bail!(
            "section headers end at {} but the image has {} bytes",
            end.map_or_else(|| "an overflowing offset".to_owned(), |e| e.to_string()),
            data.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_versioned_image_from_apt_cache_output() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(parse_depends("linux-image-amd64\n"), None);
        // Never hand apt a pattern.
        assert_eq!(parse_depends("  Depends: linux-image-*\n"), None);
        assert_eq!(
            parse_depends("  Depends: foo\n  Depends: linux-image-6.12.1+deb13-amd64\n").as_deref(),
            Some("linux-image-6.12.1+deb13-amd64")
        );
    }

    #[test]
    fn elf_check_rejects_truncation() {
        let mut elf = vec![0u8; 0x40];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        // One 64-byte section header right after the ELF header.
        elf[0x28..0x30].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3C..0x3E].copy_from_slice(&1u16.to_le_bytes());
        assert!(check_elf(&elf).is_err(), "headers past the end");
        elf.resize(0x80, 0);
        check_elf(&elf).expect("complete");
        assert!(check_elf(b"MZ\0\0").is_err());
    }

    #[test]
    fn finds_the_xz_magic() {
        let mut img = vec![0u8; 100];
        img.extend_from_slice(&XZ_MAGIC);
        assert_eq!(find(&img, &XZ_MAGIC), Some(100));
        assert_eq!(find(&img[..103], &XZ_MAGIC), None);
    }
}
