//! `stagehand-initrd build --system` through the binary: where stage 1 and stage 2 come
//! from when not named (the directory of the running executable, so the binary is copied
//! to a scratch directory to control what sits next to it), and refused inputs (exit 1,
//! the thing named, nothing written). The full build with real modules is in
//! `debian_kernel.rs`.

use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::Command;

const TOP: &str = "/nix/store/tttt-nixos-system-t-24.11";

/// Held while a binary is copied and while one is run: a child forked by another test
/// thread during the copy would inherit the file open for writing, and exec'ing the copy
/// then fails with ETXTBSY.
static SPAWN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn spawn_lock() -> std::sync::MutexGuard<'static, ()> {
    SPAWN.lock().unwrap_or_else(|e| e.into_inner())
}

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A root holding a generation whose root is a tmpfs (so no module is needed) and an
    /// empty modules tree for kernel 6.6.7; the binary copied to `bin/`.
    fn new() -> Scratch {
        let s = Scratch {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir_all(s.path("bin")).expect("bin");
        let _lock = spawn_lock();
        std::fs::copy(
            env!("CARGO_BIN_EXE_stagehand-initrd"),
            s.path("bin/stagehand-initrd"),
        )
        .expect("copy the binary");
        s.write(
            "root/nix/store/ffff-etc/etc/fstab",
            "none / tmpfs mode=755 0 0\n/dev/disk/by-label/boot /boot vfat defaults 0 2\n",
        );
        s.link(&format!("root{TOP}/etc"), "/nix/store/ffff-etc/etc");
        std::fs::create_dir_all(s.path("root/nix/store/kkkk-kernel-modules/lib/modules/6.6.7"))
            .expect("modules");
        s.link(
            &format!("root{TOP}/kernel-modules"),
            "/nix/store/kkkk-kernel-modules",
        );
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    fn link(&self, rel: &str, target: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        let _ = std::fs::remove_file(&p);
        symlink(target, p).expect("symlink");
    }

    /// Run the copied binary: (exit code, stderr).
    fn run(&self, extra: &[&str]) -> (Option<i32>, String) {
        let _lock = spawn_lock();
        let out = Command::new(self.path("bin/stagehand-initrd"))
            .args(["build", "--system", TOP, "--root"])
            .arg(self.path("root"))
            .args(["-o", "out.img"])
            .args(extra)
            .current_dir(self.dir.path())
            .output()
            .expect("run stagehand-initrd");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn out(&self) -> &'static str {
        "out.img"
    }

    fn listing(&self) -> String {
        let _lock = spawn_lock();
        let out = Command::new(self.path("bin/stagehand-initrd"))
            .arg("list")
            .arg(self.path(self.out()))
            .output()
            .expect("list");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn stage1_and_stage2_default_to_the_binaries_next_to_the_executable() {
    let s = Scratch::new();
    let (code, err) = s.run(&[]);
    assert_eq!(code, Some(1), "{err}");
    let bin = s.path("bin");
    assert!(
        err.contains(&format!(
            "no stage1 binary: give --stage1 PATH (the default is `stage1` next to \
             stagehand-initrd, in {})",
            bin.display()
        )),
        "{err}"
    );
    assert!(!s.path(s.out()).exists());

    s.write("bin/stage1", "\u{7f}ELF stage one");
    let (code, err) = s.run(&[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no stage2 binary: give --stage2 PATH"),
        "{err}"
    );
    assert!(!s.path(s.out()).exists());

    s.write("bin/stage2", "\u{7f}ELF stage two");
    let (code, err) = s.run(&[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("mount / none tmpfs mode=755 (fstab line 1)")
            && err.contains("skip /boot: not needed for boot")
            && err.contains("kernel 6.6.7"),
        "{err}"
    );
    let listing = s.listing();
    // `-0755  <size> /stagehand/stage2`: the size of "\x7fELF stage two".
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-0755") && l.ends_with(" 14 /stagehand/stage2")),
        "{listing}"
    );
    assert!(
        listing.lines().any(|l| l.ends_with(" 14 /init")),
        "{listing}"
    );

    // Named ones win over the defaults.
    s.write("other-stage2", "\u{7f}ELF another stage two, longer");
    let (code, err) = s.run(&["--stage2", "other-stage2"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        s.listing()
            .lines()
            .any(|l| l.ends_with(" 30 /stagehand/stage2")),
        "{}",
        s.listing()
    );
}

#[test]
fn refused_generations_exit_1_naming_the_thing_and_write_nothing() {
    /// (name, what breaks the scratch generation, what the message must say)
    type Case = (&'static str, fn(&Scratch), &'static str);
    let cases: &[Case] = &[
        (
            "not a generation",
            |s| {
                std::fs::remove_file(s.path(&format!("root{TOP}/kernel-modules"))).expect("rm");
            },
            "no kernel-modules/lib/modules",
        ),
        (
            "no fstab",
            |s| {
                std::fs::remove_file(s.path("root/nix/store/ffff-etc/etc/fstab")).expect("rm");
            },
            "no etc/fstab",
        ),
        (
            "two kernels",
            |s| {
                std::fs::create_dir_all(
                    s.path("root/nix/store/kkkk-kernel-modules/lib/modules/6.7.0"),
                )
                .expect("mkdir");
            },
            "2 kernel versions (6.6.7, 6.7.0)",
        ),
        (
            "escape",
            |s| s.link(&format!("root{TOP}/etc"), "../../../../../../../../../etc"),
            "leads out of the root",
        ),
        (
            "short line",
            |s| s.write("root/nix/store/ffff-etc/etc/fstab", "none / tmpfs\n"),
            "line 1 `none / tmpfs`: 3 fields",
        ),
        (
            "luks root",
            |s| {
                s.write(
                    "root/nix/store/ffff-etc/etc/fstab",
                    "/dev/mapper/crypted / ext4 defaults 0 1\n",
                )
            },
            "device-mapper device (LUKS or LVM)",
        ),
        (
            "a module not in the tree",
            |_| {},
            "kernel module \"virtio_blk\"",
        ),
    ];
    for (name, break_it, says) in cases {
        let s = Scratch::new();
        s.write("bin/stage1", "1");
        s.write("bin/stage2", "2");
        break_it(&s);
        let extra: &[&str] = if *name == "a module not in the tree" {
            &["--modules", "virtio_blk"]
        } else {
            &[]
        };
        let (code, err) = s.run(extra);
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(
            err.starts_with("stagehand-initrd: ") && err.contains(says),
            "{name}: {says:?} not in {err}"
        );
        assert!(!s.path(s.out()).exists(), "{name}: output written");
    }
}
