//! The stage-1 decisions end to end, without a VM: a kernel command line, a compiled
//! config, a fake `/sys/class/block` and `/dev` holding real filesystem images (made by
//! `mkfs.ext4` and `mkswap`), and what stage 1 would then do — the filesystems and their
//! order, the devices each resolves to, which get checked by which program, and where it
//! resumes from. The system calls themselves are exercised by the VM tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stagehand_testkit::host::require_tool;

use crate::probe::DeviceSpec;
use stagehand_common::cmdline::Cmdline;
use stagehand_common::stage1_config::{FileSystem, Stage1Config};

use crate::devices::Registry;
use crate::fsck::{self, Skip};
use crate::plan::Plan;
use crate::resume::{self, ResumeChoice};
use crate::sys::is_block_device;

/// A fake machine: `/sys/class/block/<name>/size` and `/dev/<name>` for each image.
struct Machine {
    _dir: tempfile::TempDir,
    sys: PathBuf,
    dev: PathBuf,
}

impl Machine {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = dir.path().join("sys/class/block");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&sys).expect("mkdir");
        std::fs::create_dir_all(&dev).expect("mkdir");
        Self {
            _dir: dir,
            sys,
            dev,
        }
    }

    /// Add a disk `name` of `mb` MiB and run `make` on its image.
    fn disk(&self, name: &str, mb: u64, make: impl FnOnce(&Path)) {
        std::fs::create_dir_all(self.sys.join(name)).expect("mkdir");
        std::fs::write(self.sys.join(name).join("size"), format!("{}\n", mb * 2048)).expect("size");
        let img = self.dev.join(name);
        let f = std::fs::File::create(&img).expect("image");
        f.set_len(mb << 20).expect("truncate");
        make(&img);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fs(mp: &str, dev: &str, t: &str, opts: &[&str]) -> FileSystem {
    FileSystem {
        mount_point: mp.into(),
        device: dev.into(),
        fs_type: t.into(),
        options: opts.iter().map(|o| o.to_string()).collect(),
    }
}

#[test]
fn cmdline_config_and_devices_give_the_whole_boot() {
    let m = Machine::new();
    m.disk("vda", 16, |img| {
        run(Command::new(require_tool("mkfs.ext4"))
            .args([
                "-q",
                "-F",
                "-L",
                "nixos",
                "-U",
                "6a1c3a3e-1111-4222-8333-944455556666",
            ])
            .arg(img));
    });
    m.disk("vdb", 16, |img| {
        run(Command::new(require_tool("mkfs.ext4"))
            .args(["-q", "-F", "-L", "nix"])
            .arg(img));
    });
    // A swap device holding a hibernation image: mkswap, then the kernel's swsuspend
    // signature where "SWAPSPACE2" was (the last 10 bytes of the first page).
    m.disk("vdc", 1, |img| {
        run(Command::new(require_tool("mkswap"))
            .args(["-q", "-L", "swap"])
            .arg(img));
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(img)
            .expect("open");
        f.seek(SeekFrom::Start(4096 - 10)).expect("seek");
        f.write_all(b"S1SUSPEND\0").expect("write");
    });

    let config = Stage1Config {
        filesystems: vec![
            fs(
                "/",
                "/dev/disk/by-label/old-root",
                "ext4",
                &["x-initrd.mount"],
            ),
            fs("/nix", "/dev/disk/by-label/nix", "auto", &["noatime"]),
            fs("/home", "/nix/persist/home", "none", &["bind"]),
            fs("/tmp", "tmpfs", "tmpfs", &["mode=1777"]),
        ],
        ..Stage1Config::default()
    };
    let cmdline = Cmdline::parse(
        "BOOT_IMAGE=/k init=/nix/var/nix/profiles/system-7-link/init root=UUID=6A1C3A3E-1111-4222-8333-944455556666 \
         rootflags=commit=60 ro rd.device_timeout=0.5 console=ttyS0,115200 boot.trace quiet",
    );
    let plan = Plan::new(&cmdline, &config).expect("plan");
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    assert_eq!(plan.init, "/nix/var/nix/profiles/system-7-link/init");
    assert_eq!(plan.device_timeout_ms, 500);
    assert!(plan.trace);
    assert_eq!(plan.console.as_deref(), Some("ttyS0"));
    let mps: Vec<&str> = plan
        .filesystems
        .iter()
        .map(|f| f.mount_point.as_str())
        .collect();
    assert_eq!(mps, ["/", "/nix", "/home", "/tmp"]);
    assert_eq!(
        plan.filesystems[0].options,
        ["x-initrd.mount", "commit=60", "ro"]
    );

    // The waits: only block devices, plus nothing for resume (any swsuspend device).
    let block: Vec<&FileSystem> = plan
        .filesystems
        .iter()
        .filter(|f| is_block_device(&f.device))
        .collect();
    assert_eq!(block.len(), 2);
    assert!(plan.resume.waits().is_empty());
    let specs: Vec<DeviceSpec> = block
        .iter()
        .map(|f| DeviceSpec::parse(&f.device).expect("spec"))
        .collect();
    let mut reg = Registry::new(&m.sys, &m.dev);
    let found = reg.wait_all(&specs, Duration::from_millis(plan.device_timeout_ms.into()));
    assert_eq!(
        found,
        vec![Some(m.dev.join("vda")), Some(m.dev.join("vdb"))]
    );

    // fsck: the root as configured (ext4), /nix as probed (auto → ext4); the initrd has
    // fsck.ext4 only.
    let in_initrd = |p: &str| p == "/bin/fsck.ext4";
    for (fs, node) in block.iter().zip(&found) {
        let node = node.as_deref().expect("found");
        let t = match fs.fs_type.as_str() {
            "auto" => reg.fs_type(node),
            t => Some(t),
        };
        assert_eq!(t, Some("ext4"), "{}", fs.mount_point);
        let cmd = fsck::decide(&plan.fsck, true, t, false, in_initrd).expect("checked");
        assert_eq!(
            (cmd.program.as_str(), cmd.args.as_slice()),
            ("/bin/fsck.ext4", &["-a".to_string()][..])
        );
    }
    // The bind mount and the tmpfs are not checked.
    for fs in &plan.filesystems[2..] {
        assert_eq!(
            fsck::decide(&plan.fsck, false, Some(&fs.fs_type), false, in_initrd),
            Err(Skip::NotABlockDevice)
        );
    }

    // Resume: the one device with a swsuspend signature.
    assert_eq!(reg.fs_type(&m.dev.join("vdc")), Some("swsuspend"));
    let all: Vec<resume::Seen<'_>> = reg
        .devices()
        .enumerate()
        .map(|(i, d)| resume::Seen {
            name: &d.name,
            fs_type: d.fs.as_ref().map(|f| f.fs_type),
            devno: (254, 16 * i as u32),
        })
        .collect();
    assert_eq!(
        resume::choose(&plan.resume, &[], &all),
        ResumeChoice::Resume {
            devno: (254, 32),
            what: "vdc (swsuspend signature)".into()
        }
    );
    // `noresume` and a named device.
    let p = Plan::new(&Cmdline::parse("root=LABEL=nixos noresume"), &config).expect("plan");
    assert!(matches!(
        resume::choose(&p.resume, &[], &all),
        ResumeChoice::Nothing { .. }
    ));
    let p = Plan::new(
        &Cmdline::parse("root=LABEL=nixos resume=LABEL=swap"),
        &config,
    )
    .expect("plan");
    assert_eq!(p.resume.waits(), ["LABEL=swap"]);
    let swap = reg.wait_all(
        &[DeviceSpec::parse("LABEL=swap").expect("spec")],
        Duration::from_millis(100),
    );
    // A swsuspend device keeps the swap header's label.
    assert_eq!(swap, vec![Some(m.dev.join("vdc"))]);
}

#[test]
fn a_missing_root_resolves_to_nothing_within_the_deadline() {
    let m = Machine::new();
    let plan = Plan::new(
        &Cmdline::parse("root=LABEL=nope rd.device_timeout=0.2"),
        &Stage1Config::default(),
    )
    .expect("plan");
    let mut reg = Registry::new(&m.sys, &m.dev);
    let t = std::time::Instant::now();
    let found = reg.wait_all(
        &[DeviceSpec::parse(&plan.filesystems[0].device).expect("spec")],
        Duration::from_millis(plan.device_timeout_ms.into()),
    );
    assert_eq!(found, vec![None]);
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(t.elapsed() < Duration::from_secs(5));
}
