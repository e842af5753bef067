//! Initrd secrets: files kept out of the Nix store and appended to the initrd at install
//! time as `/.initrd-secrets/<absolute path>` (the builder's `secrets_archive`). Before
//! anything is mounted they are put at their absolute path in the initramfs, where the
//! programs that need them (a LUKS keyfile, an SSH host key for remote unlock) look, as
//! NixOS's stage 1 does.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Where the appended archive puts them.
pub const SECRETS_DIR: &str = "/.initrd-secrets";

/// Move every file and symlink under `secrets` to the same relative path under `root`,
/// keeping its mode; missing parent directories are created owner-only (0700), since
/// what goes in them is secret. Returns the paths installed, relative to `root`.
///
/// Moving (a rename within the initramfs) rather than copying keeps one copy of each
/// secret in memory; the result is the same as NixOS's `cp`.
pub fn install(secrets: &Path, root: &Path) -> Result<Vec<String>, String> {
    let mut installed = Vec::new();
    if !secrets.is_dir() {
        return Ok(installed);
    }
    walk(secrets, secrets, root, &mut installed)?;
    // Only empty directories are left; an error just leaves them behind.
    let _ = std::fs::remove_dir_all(secrets);
    Ok(installed)
}

fn walk(base: &Path, dir: &Path, root: &Path, installed: &mut Vec<String>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the initrd secrets in {}: {e}", dir.display()))?;
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let src = entry.path();
        let meta = std::fs::symlink_metadata(&src)
            .map_err(|e| format!("cannot stat initrd secret {}: {e}", src.display()))?;
        if meta.is_dir() {
            walk(base, &src, root, installed)?;
            continue;
        }
        let rel = src.strip_prefix(base).map_err(|_| {
            format!(
                "initrd secret {} is outside {}",
                src.display(),
                base.display()
            )
        })?;
        let dest = root.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| {
                    format!(
                        "cannot create {} for initrd secret /{}: {e}",
                        parent.display(),
                        rel.display()
                    )
                })?;
        }
        // rename keeps mode, owner and content, and replaces a file already there.
        if let Err(e) = std::fs::rename(&src, &dest) {
            // Across filesystems (a /run secret, say) copy instead; fs::copy keeps the mode.
            std::fs::copy(&src, &dest).map_err(|e2| {
                format!(
                    "cannot install initrd secret /{}: rename failed ({e}), copy failed ({e2})",
                    rel.display()
                )
            })?;
        }
        installed.push(format!("/{}", rel.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_land_at_their_path_with_their_mode() {
        let t = tempfile::tempdir().expect("tempdir");
        let secrets = t.path().join(".initrd-secrets");
        std::fs::create_dir_all(secrets.join("etc/ssh")).expect("mkdir");
        std::fs::create_dir_all(t.path().join("etc")).expect("mkdir");
        let key = secrets.join("etc/ssh/host_key");
        std::fs::write(&key, "KEY").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let pass = secrets.join("keyfile.bin");
        std::fs::write(&pass, "PW").expect("write");
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o400)).expect("chmod");

        let got = install(&secrets, t.path()).expect("install");
        assert_eq!(got, ["/etc/ssh/host_key", "/keyfile.bin"]);
        let mode = |p: &str| {
            std::fs::metadata(t.path().join(p))
                .expect("stat")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(
            std::fs::read_to_string(t.path().join("etc/ssh/host_key")).expect("read"),
            "KEY"
        );
        assert_eq!(mode("etc/ssh/host_key"), 0o600);
        assert_eq!(mode("keyfile.bin"), 0o400);
        // A directory we created is owner-only; one that existed keeps its mode.
        assert_eq!(mode("etc/ssh"), 0o700);
        assert_ne!(mode("etc"), 0o700);
        assert!(!secrets.exists());
    }

    #[test]
    fn no_secrets_is_nothing_to_do() {
        let t = tempfile::tempdir().expect("tempdir");
        assert!(install(&t.path().join("absent"), t.path())
            .expect("install")
            .is_empty());
    }
}
