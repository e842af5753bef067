//! The peers' initrds for the guest kernel, built on this Debian host without installing
//! the kernel package: Debian's `dracut` (systemd inside the initrd) and `initramfs-tools`
//! (busybox scripts). dracut boots twice over: host-only (its default on Fedora/RHEL, the
//! fair build for one machine) and generic with our driver list; initramfs-tools boots with
//! our module list. Each tool's out-of-the-box generic image is built too, for its size.
//!
//! Both tools resolve modules through `modules.dep`, which the unpacked kernel package lacks
//! (the package's postinst runs depmod): the bench hard-links the module tree into a copy
//! and runs `depmod -b` on it. dracut takes that tree with `--kmoddir`; `mkinitramfs` only
//! knows `/lib/modules/VERSION` and `/boot/config-VERSION`, so it runs in a private mount
//! namespace (`unshare -m`) with the copy bound on `/usr/lib/modules` and the package's
//! `boot/` on `/boot`. The host itself is not changed (`vm-tests/bench-host` creates the
//! empty `/usr/lib/modules` mount point).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::host::{on_path, run};
use crate::kernel::Kernel;

/// The modules our initrd loads (scenarios::initrd_spec), given to the peers as their list.
pub const MODULES: [&str; 4] = ["virtio_pci", "virtio_blk", "ext4", "crc32c_generic"];

/// Which initrd a boot uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stagehand,
    /// `dracut --hostonly`: what dracut builds by default on Fedora/RHEL, for the machine it
    /// runs on. The bench host's root is ext4 on a virtio disk, like the guest's, so this
    /// is the fair dracut for the guest: only the dracut modules and drivers that root needs.
    DracutHostOnly,
    /// `dracut --no-hostonly` restricted to our driver list: still every dracut module
    /// (btrfs, crypt, dm, lvm, mdraid, nvdimm, qemu ...) with their hooks.
    DracutGeneric,
    InitramfsTools,
}

impl Kind {
    /// The initrds that boot, in the order each round boots them.
    pub const ALL: [Kind; 4] = [
        Kind::Stagehand,
        Kind::DracutHostOnly,
        Kind::DracutGeneric,
        Kind::InitramfsTools,
    ];

    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Stagehand => "stagehand",
            Kind::DracutHostOnly => "dracut host-only",
            Kind::DracutGeneric => "dracut generic",
            Kind::InitramfsTools => "initramfs-tools",
        }
    }

    /// The name in file names.
    pub fn slug(self) -> &'static str {
        match self {
            Kind::Stagehand => "stagehand",
            Kind::DracutHostOnly => "dracut-hostonly",
            Kind::DracutGeneric => "dracut-generic",
            Kind::InitramfsTools => "initramfs-tools",
        }
    }
}

/// One built initrd: where, how long the build took, what is in it.
#[derive(Debug, Clone)]
pub struct Built {
    pub label: String,
    pub path: PathBuf,
    pub build_time: Duration,
    pub bytes: u64,
    /// Entries `lsinitramfs` lists (files, directories, links; every appended archive).
    pub entries: usize,
    pub compression: String,
}

impl Built {
    pub fn measure(
        label: &str,
        path: &Path,
        build_time: Duration,
        compression: &str,
    ) -> Result<Built> {
        let bytes = fs::metadata(path)
            .with_context(|| format!("{} was not written", path.display()))?
            .len();
        Ok(Built {
            label: label.into(),
            path: path.into(),
            build_time,
            bytes,
            entries: count_entries(path)?,
            compression: compression.into(),
        })
    }
}

/// `lsinitramfs` (initramfs-tools-core) reads every cpio in the file, early microcode
/// archives and any compression included, so the three initrds are counted the same way.
pub fn count_entries(initrd: &Path) -> Result<usize> {
    let out = run(Command::new("lsinitramfs").arg(initrd))
        .with_context(|| format!("listing {}", initrd.display()))?;
    Ok(out.lines().filter(|l| !l.is_empty() && *l != ".").count())
}

/// The tools the bench needs beyond the test path's; `vm-tests/bench-host` installs them.
pub fn check_tools() -> Result<()> {
    let missing: Vec<&str> = [
        "dracut",
        "mkinitramfs",
        "lsinitramfs",
        "depmod",
        "unshare",
        "busybox",
        "hyperfine",
        "strace",
        "zstd",
    ]
    .into_iter()
    .filter(|t| !on_path(t))
    .collect();
    if !missing.is_empty() {
        bail!(
            "missing benchmark tools: {}; run vm-tests/bench-host (as root) first",
            missing.join(", ")
        );
    }
    if !Path::new("/usr/lib/modules").is_dir() {
        bail!(
            "/usr/lib/modules does not exist (mkinitramfs's mount point); run vm-tests/bench-host"
        );
    }
    Ok(())
}

/// `dir/lib/modules/VERSION`: the kernel's modules hard-linked (copied across file
/// systems) with the `modules.dep` family from `depmod -b`; made once.
pub fn modules_tree(kernel: &Kernel, dir: &Path) -> Result<PathBuf> {
    let tree = dir.join("lib/modules").join(&kernel.version);
    if tree.join("modules.dep").is_file() {
        return Ok(tree);
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let parent = dir.join("lib/modules");
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let linked = run(Command::new("cp")
        .arg("-al")
        .arg(&kernel.modules_dir)
        .arg(&parent));
    if linked.is_err() {
        run(Command::new("cp")
            .arg("-a")
            .arg(&kernel.modules_dir)
            .arg(&parent))
        .context("copying the kernel's modules")?;
    }
    run(Command::new("depmod")
        .arg("-b")
        .arg(dir)
        .arg(&kernel.version))
    .context("depmod on the copied module tree")?;
    Ok(tree)
}

/// How dracut is asked to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DracutBuild {
    /// `--hostonly` (dracut's default mode, `sloppy`), plus our driver list because the
    /// host's own kernel may have them built in. `--no-hostonly-cmdline`: the host's
    /// `root=UUID=…` must not be baked in; the guest's command line names its root.
    HostOnly,
    /// `--no-hostonly --drivers <ours>`: every dracut module, our kernel modules only.
    GenericOurDrivers,
    /// `--no-hostonly` as it comes: the distribution-style generic image (for its size).
    GenericDefault,
}

/// dracut for the guest kernel's module tree; dracut's default compression (gzip).
pub fn dracut(kernel: &Kernel, modules: &Path, out: &Path, build: DracutBuild) -> Result<Duration> {
    let mut cmd = Command::new("dracut");
    cmd.args(["--force", "--kver", &kernel.version])
        .arg("--kmoddir")
        .arg(modules);
    match build {
        DracutBuild::HostOnly => {
            cmd.args(["--hostonly", "--no-hostonly-cmdline", "--add-drivers"])
                .arg(MODULES.join(" "));
        }
        DracutBuild::GenericOurDrivers => {
            cmd.args(["--no-hostonly", "--drivers"])
                .arg(MODULES.join(" "));
        }
        DracutBuild::GenericDefault => {
            cmd.arg("--no-hostonly");
        }
    }
    cmd.arg(out);
    timed(&mut cmd).context("building the dracut initrd")
}

/// `mkinitramfs` with a configuration directory of our own: the host's defaults
/// (`MODULES=most`, zstd) or, `minimal`, `MODULES=list` with [`MODULES`].
pub fn initramfs_tools(
    kernel: &Kernel,
    modules_root: &Path,
    work: &Path,
    out: &Path,
    minimal: bool,
) -> Result<Duration> {
    let conf = work.join(if minimal { "conf-list" } else { "conf-most" });
    for d in ["conf.d", "hooks", "scripts"] {
        fs::create_dir_all(conf.join(d))?;
    }
    let modules_setting = if minimal { "list" } else { "most" };
    fs::write(
        conf.join("initramfs.conf"),
        format!(
            "MODULES={modules_setting}\nBUSYBOX=auto\nKEYMAP=n\nCOMPRESS=zstd\nDEVICE=\n\
             NFSROOT=auto\nRUNSIZE=10%\nFSTYPE=auto\n"
        ),
    )?;
    let list = if minimal {
        MODULES.join("\n") + "\n"
    } else {
        String::new()
    };
    fs::write(conf.join("modules"), list)?;
    let boot = kernel.root.join("boot");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "sh",
        "-c",
        "mount --bind \"$1\" /usr/lib/modules && mount --bind \"$2\" /boot && \
         exec mkinitramfs -d \"$3\" -o \"$4\" \"$5\"",
        "sh",
    ])
    .arg(modules_root.join("lib/modules"))
    .arg(boot)
    .arg(&conf)
    .arg(out)
    .arg(&kernel.version);
    timed(&mut cmd).context("building the initramfs-tools initrd (as root, in `unshare -m`)")
}

/// What the host's root is (`ext4 on /dev/vda`), from `findmnt`: dracut's host-only build
/// takes its drivers and dracut modules from it, so the report says what it was.
pub fn host_root() -> Result<String> {
    let out = run(Command::new("findmnt").args(["-n", "-o", "FSTYPE,SOURCE", "/"]))
        .context("asking findmnt for the host's root")?;
    let mut fields = out.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(fs), Some(dev)) => Ok(format!("{fs} on {dev}")),
        _ => bail!("findmnt printed no root filesystem: {out:?}"),
    }
}

fn timed(cmd: &mut Command) -> Result<Duration> {
    let t = Instant::now();
    run(cmd)?;
    Ok(t.elapsed())
}
