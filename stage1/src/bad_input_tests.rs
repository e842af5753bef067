//! The bad-input matrix for stage 1: what the kernel command line, the compiled config and
//! the new root can get wrong, and what stage 1 then says and does. Stage 1 is a binary
//! (PID 1 only), so these run against its modules from inside the crate; the failure path
//! itself (`common::emergency::fail`, panic-on-fail) is exercised by the VM scenarios
//! `corrupt-config` and `fallback-*`. Each case asserts the message names the parameter,
//! file or path and says what would fix it.

use std::os::unix::fs::{symlink, PermissionsExt};

use crate::probe::DeviceSpec;
use stagehand_common::cmdline::Cmdline;
use stagehand_common::stage1_config::{FileSystem, Stage1Config};

use crate::attempts;
use crate::init_path::{resolve_init, InitError};
use crate::plan::{Plan, PlanError};

fn says(case: &str, msg: &str, words: &[&str]) {
    for w in words {
        assert!(msg.contains(w), "{case}: {w:?} missing from: {msg}");
    }
}

fn fs(mp: &str, dev: &str, t: &str) -> FileSystem {
    FileSystem {
        mount_point: mp.into(),
        device: dev.into(),
        fs_type: t.into(),
        options: Vec::new(),
    }
}

fn config(filesystems: Vec<FileSystem>) -> Stage1Config {
    Stage1Config {
        filesystems,
        ..Stage1Config::default()
    }
}

#[test]
fn command_lines_and_configs_that_cannot_give_a_root() {
    // (case, command line, configured filesystems, words of the error)
    let cases: Vec<(&str, &str, Vec<FileSystem>, &[&str])> = vec![
        (
            "no root anywhere",
            "quiet",
            vec![],
            &["no root filesystem", "root=/dev/", "boot entry"],
        ),
        (
            "empty root=",
            "root=",
            vec![],
            &["no root filesystem", "root="],
        ),
        (
            "root= only quoted nothing",
            "root=\"\"",
            vec![],
            &["no root filesystem"],
        ),
        (
            "relative mount point",
            "root=/dev/vda",
            vec![fs("nix", "/dev/vdb", "ext4")],
            &["\"nix\"", "not an absolute path", "rebuild the initrd"],
        ),
        (
            "empty mount point",
            "root=/dev/vda",
            vec![fs("", "/dev/vdb", "ext4")],
            &["\"\"", "not an absolute path"],
        ),
        (
            "empty resume=",
            "root=/dev/vda resume=",
            vec![],
            &["resume= is empty", "resume=/dev/vdb", "or drop it"],
        ),
    ];
    for (case, line, filesystems, words) in cases {
        let e = Plan::new(&Cmdline::parse(line), &config(filesystems)).expect_err(case);
        says(case, &e.to_string(), words);
        if case.contains("root") {
            assert_eq!(e, PlanError::NoRoot, "{case}");
        }
    }
}

#[test]
fn unusable_root_values_are_named_where_they_are_used() {
    // Not a device: the plan keeps it, the device lookup refuses it by name with the fix.
    for dev in ["nixos", "FOO=bar", "8:1"] {
        let p = Plan::new(
            &Cmdline::parse(&format!("root={dev}")),
            &Stage1Config::default(),
        )
        .expect(dev);
        let e = DeviceSpec::parse(&p.filesystems[0].device).expect_err(dev);
        says(dev, &e.to_string(), &[dev, "LABEL=", "root="]);
    }
    // Empty rootfstype=/rootflags= and a bad timeout are warnings; the boot goes on with
    // the configured values.
    let p = Plan::new(
        &Cmdline::parse("rootfstype= rd.device_timeout=soon"),
        &config(vec![fs("/", "/dev/vda", "ext4")]),
    )
    .expect("plan");
    assert_eq!(p.filesystems[0].fs_type, "ext4");
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("rootfstype= is empty")),
        "{:?}",
        p.warnings
    );
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("rd.device_timeout=soon is not a number of seconds")),
        "{:?}",
        p.warnings
    );
    let e = attempts::tries_from(Some("many")).expect_err("tries");
    says(
        "stagehand.tries",
        &e,
        &["stagehand.tries=many", "not a number", "using"],
    );
}

#[test]
fn a_corrupt_config_falls_back_to_the_command_line() {
    // main() boots on with the default config when stage1.cfg is refused: with root= on the
    // command line that is still a complete plan (no modules, the kernel's drivers).
    let p = Plan::new(
        &Cmdline::parse("root=LABEL=nixos init=/nix/var/nix/profiles/system-1-link/init"),
        &Stage1Config::default(),
    )
    .expect("fallback plan");
    assert_eq!(p.filesystems[0].device, "LABEL=nixos");
    assert!(p.modules.is_empty());
    assert_eq!(p.init, "/nix/var/nix/profiles/system-1-link/init");
}

/// A new root with one generation whose `init` is an executable file.
fn new_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let top = dir.path().join("nix/store/aaaa-nixos-system");
    std::fs::create_dir_all(&top).expect("mkdir");
    std::fs::write(top.join("init"), "#!/bin/sh\n").expect("init");
    std::fs::set_permissions(top.join("init"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::create_dir_all(dir.path().join("nix/var/nix/profiles")).expect("profiles");
    dir
}

#[test]
fn init_paths_that_do_not_lead_to_stage_2() {
    let root = new_root();
    let r = root.path();
    let profiles = r.join("nix/var/nix/profiles");
    symlink(
        "/nix/store/aaaa-nixos-system",
        profiles.join("system-1-link"),
    )
    .expect("link");
    // Sanity: the good path resolves.
    assert_eq!(
        resolve_init(r, "/nix/var/nix/profiles/system-1-link/init").expect("good"),
        "/nix/store/aaaa-nixos-system/init"
    );
    // A profile link that loops, one that climbs out of the root, one to a gone generation,
    // an init that is a directory, and one that is not executable.
    symlink("system-3-link", profiles.join("system-2-link")).expect("link");
    symlink("system-2-link", profiles.join("system-3-link")).expect("link");
    symlink(
        "../../../../../../../../../../usr/bin",
        profiles.join("system-4-link"),
    )
    .expect("link");
    symlink(
        "/nix/store/gone-nixos-system",
        profiles.join("system-5-link"),
    )
    .expect("link");
    std::fs::create_dir_all(r.join("nix/store/dddd-nixos-system/init")).expect("mkdir");
    std::fs::create_dir_all(r.join("nix/store/xxxx-nixos-system")).expect("mkdir");
    std::fs::write(r.join("nix/store/xxxx-nixos-system/init"), "").expect("write");
    symlink("init", r.join("nix/store/aaaa-nixos-system/self")).expect("link");
    std::fs::remove_file(r.join("nix/store/aaaa-nixos-system/self")).expect("rm");
    symlink("self", r.join("nix/store/aaaa-nixos-system/self")).expect("link");

    let cases: &[(&str, &str, &[&str])] = &[
        (
            "missing generation",
            "/nix/var/nix/profiles/system-9-link/init",
            &[
                "system-9-link does not exist",
                "pick another generation",
                "init=",
            ],
        ),
        (
            "profile links in a loop",
            "/nix/var/nix/profiles/system-2-link/init",
            &[
                "too many levels of symbolic links",
                "fix the profile links or init=",
            ],
        ),
        (
            "init itself a self-link",
            "/nix/store/aaaa-nixos-system/self",
            &["too many levels of symbolic links"],
        ),
        (
            "link to a garbage-collected generation",
            "/nix/var/nix/profiles/system-5-link/init",
            &[
                "/nix/store/gone-nixos-system does not exist",
                "pick another generation",
            ],
        ),
        (
            "init is a directory",
            "/nix/store/dddd-nixos-system/init",
            &["not an executable file"],
        ),
        (
            "init not executable",
            "/nix/store/xxxx-nixos-system/init",
            &[
                "/nix/store/xxxx-nixos-system/init",
                "not an executable file",
            ],
        ),
        ("no file name", "/", &["not an executable file"]),
        ("empty init=", "", &["not an executable file"]),
    ];
    for (case, init, words) in cases {
        let e = resolve_init(r, init).expect_err(case);
        says(case, &e.to_string(), words);
    }
    // `..` and absolute targets never leave the new root: the host's /usr/bin/env exists,
    // the root's does not.
    let e = resolve_init(r, "/nix/var/nix/profiles/system-4-link/env").expect_err("escape");
    assert!(
        matches!(&e, InitError::Missing { missing, .. } if missing == "/usr"),
        "{e:?}"
    );
    let e = resolve_init(r, "/../../../../usr/bin/env").expect_err("dotdot");
    assert!(
        matches!(&e, InitError::Missing { missing, .. } if missing == "/usr"),
        "{e:?}"
    );
}

#[test]
fn a_mount_with_the_wrong_type_says_what_to_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A regular file is no block device: the kernel refuses every type (ENOTBLK as root,
    // EPERM otherwise), so nothing gets mounted whoever runs this.
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 4096]).expect("image");
    let root = dir.path().join("mnt-root");
    let e = crate::sys::mount_filesystem(&root, &fs("/", "/dev/vda", "ext4"), Some(&img), None)
        .expect_err("not a filesystem");
    says(
        "wrong fs type",
        &e,
        &["disk.img", "on /", "type ext4", "fsType", "rootfstype="],
    );
    let e = crate::sys::mount_filesystem(&root, &fs("/", "/dev/vda", "auto"), Some(&img), None)
        .expect_err("blank device");
    says(
        "blank device",
        &e,
        &["disk.img", "no known filesystem signature", "fsType"],
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(!mounts.contains(&root.display().to_string()), "{mounts}");
}
