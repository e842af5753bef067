//! How `stagehand-initrd` writes its output file (issue #15 item 5): never through a symlink
//! planted at the temporary name or at the target, and never widening the mode of an
//! initrd that was made private because it holds secrets.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    /// A fake stage 1, an empty module tree and a spec that builds from them.
    fn new() -> Dir {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("stage1"), b"\x7fELF fake stage1").expect("stage1");
        std::fs::create_dir_all(d.join("modules/kernel")).expect("modules");
        std::fs::write(d.join("modules/modules.builtin"), "").expect("builtin");
        let spec = format!(
            r#"{{"stage1": {:?}, "modules_dir": {:?}, "modules": [],
                "filesystems": [{{"mount_point": "/", "device": "LABEL=nixos",
                "fs_type": "ext4", "options": []}}], "compression": "none"}}"#,
            d.join("stage1"),
            d.join("modules"),
        );
        std::fs::write(d.join("spec.json"), spec).expect("spec");
        std::fs::write(d.join("key"), b"the secret").expect("key");
        Dir { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new(env!("CARGO_BIN_EXE_stagehand-initrd"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run stagehand-initrd");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn build(&self, out: &Path) {
        let spec = self.path("spec.json");
        let (spec, out) = (spec.to_str().expect("utf8"), out.to_str().expect("utf8"));
        self.run(&["build", "--spec", spec, "-o", out]);
    }

    fn append_secret(&self, initrd: &Path) {
        let pair = format!("/etc/key={}", self.path("key").display());
        self.run(&["append-secrets", initrd.to_str().expect("utf8"), &pair]);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn planted_symlinks_at_the_temporary_names_are_not_written_through() {
    let d = Dir::new();
    let victim = d.path("victim");
    std::fs::write(&victim, "precious").expect("victim");
    chmod(&victim, 0o644);
    let out = d.path("initrd.img");
    // The temporary name the builder used to write through, and the one it uses now.
    for name in ["initrd.img.tmp-stagehand", ".initrd.img.stagehand-tmp"] {
        symlink(&victim, d.path(name)).expect("symlink");
    }
    d.build(&out);
    d.append_secret(&out);
    assert!(
        std::fs::read(&victim).expect("read") == b"precious",
        "the symlink's target was overwritten"
    );
    assert_eq!(mode(&victim), 0o644);
    let listing = stagehand_initrd::list(&std::fs::read(&out).expect("read")).expect("list");
    assert!(listing.iter().any(|e| e.name == ".initrd-secrets/etc/key"));
    assert!(
        !d.path(".initrd.img.stagehand-tmp").exists(),
        "temporary left"
    );
}

#[test]
fn a_symlink_at_the_output_is_replaced() {
    let d = Dir::new();
    let victim = d.path("victim");
    std::fs::write(&victim, "precious").expect("victim");
    let out = d.path("initrd.img");
    symlink(&victim, &out).expect("symlink");
    d.build(&out);
    assert!(
        std::fs::read(&victim).expect("read") == b"precious",
        "the symlink's target was overwritten"
    );
    assert!(!out.is_symlink());
}

#[test]
fn the_mode_of_an_existing_initrd_is_kept() {
    let d = Dir::new();
    let out = d.path("initrd.img");
    d.build(&out);
    assert_eq!(mode(&out), 0o644, "a new initrd");
    chmod(&out, 0o600);
    d.append_secret(&out);
    assert_eq!(
        mode(&out),
        0o600,
        "append-secrets made a private initrd readable"
    );
    d.build(&out);
    assert_eq!(
        mode(&out),
        0o600,
        "a rebuild made a private initrd readable"
    );
    chmod(&out, 0o640);
    d.append_secret(&out);
    assert_eq!(mode(&out), 0o640);
}
