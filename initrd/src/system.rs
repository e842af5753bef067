//! The initrd for an unmodified NixOS generation (`stagehand-initrd build --system
//! TOPLEVEL`): everything the spec needs is read from the toplevel as nixpkgs builds it.
//!
//! - filesystems: the generation's `etc/fstab`, the entries NixOS mounts in its initrd
//!   (see [`crate::fstab`]), in the fstab's order (NixOS writes it in mount order);
//! - kernel modules: `kernel-modules/lib/modules/<version>` (exactly one version): the
//!   modules of those filesystems' types, plus those asked for ([`SystemOptions`]: named,
//!   the [`GENERIC_MODULES`] set, or the drivers this host's disks use);
//! - firmware: `firmware` (`hardware.firmware`'s `lib/firmware`), for the modules that
//!   name some;
//! - our stage 1 as `/init` and our stage 2 at [`crate::STAGE2_PATH`].
//!
//! `kernel-params` is not read: the boot loader passes the command line. Nothing here is
//! specific to the generation beyond its kernel and filesystems, so one initrd serves
//! every generation that shares them.
//!
//! Every path is looked up inside `root` (`--root`, `/` by default), symlinks included
//! ([`crate::confined`]).

use std::fmt;
use std::path::{Path, PathBuf};

use stagehand_common::mounts::mountinfo::{self, Mount};
use stagehand_common::stage1_config::FileSystem;

use crate::confined::{self, ConfinedError};
use crate::fstab::{self, DeviceKind, LineError};
use crate::modules::{self, ModuleError, ModuleIndex};
use crate::{FullSpec, InitrdSpec, SpecExtras};

/// Disk and keyboard drivers for `--generic`: virtual machines, NVMe, SATA, SCSI, USB
/// and SD storage, and the keyboards the failure prompt reads from. Only those present
/// in the kernel's tree are taken (as optional modules: stage 1 loads each, and a driver
/// with no device simply binds to nothing).
pub const GENERIC_MODULES: &[&str] = &[
    // virtual machines (QEMU/KVM, cloud VMs)
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_scsi",
    "hv_storvsc",
    "vmw_pvscsi",
    "xen_blkfront",
    // NVMe, SATA (AHCI and legacy IDE mode), SCSI disks and CD-ROMs
    "nvme",
    "ahci",
    "ata_piix",
    "sd_mod",
    "sr_mod",
    // USB controllers and storage
    "xhci_pci",
    "ehci_pci",
    "ohci_pci",
    "uhci_hcd",
    "usb_storage",
    "uas",
    // SD cards and eMMC
    "sdhci_pci",
    "sdhci_acpi",
    "mmc_block",
    // keyboards
    "usbhid",
    "hid_generic",
    "atkbd",
];

/// What stage 1 tries for `fsType = auto` (stage1's `AUTO_TYPES`): with an `auto` entry,
/// the modules of these types are taken, as optional ones.
pub const AUTO_TYPES: &[&str] = &["ext4", "btrfs", "xfs", "f2fs", "vfat", "erofs", "squashfs"];

/// Modules a filesystem type needs beyond its own, loaded if present: vfat's default
/// code page (437) and I/O character set (iso8859-1); without them the mount fails.
const FS_EXTRAS: &[(&str, &[&str])] = &[("vfat", &["nls_cp437", "nls_iso8859_1"])];

/// What to put in beyond what the generation itself says.
#[derive(Debug, Clone)]
pub struct SystemOptions {
    /// Our stage-1 binary (`/init`).
    pub stage1: PathBuf,
    /// Our stage-2 binary ([`crate::STAGE2_PATH`]).
    pub stage2: PathBuf,
    /// Modules to load (required: one missing from the tree is an error).
    pub modules: Vec<String>,
    /// Modules to carry and try (NixOS's `boot.initrd.availableKernelModules`): one that
    /// is not in the tree or fails to load on this machine does not stop the boot.
    pub optional_modules: Vec<String>,
    /// Take the [`GENERIC_MODULES`] present in the tree.
    pub generic: bool,
    /// Take the drivers of the devices that hold this host's filesystems.
    pub host_only: Option<HostOnly>,
    /// Stage-1 options to carry (`--stage1-options`): NixOS keeps its LUKS devices
    /// (`boot.initrd.luks.devices`) and LVM switch in its own initrd's script, not in the
    /// toplevel, so they cannot be read from the generation and are given here. With LUKS
    /// devices or LVM, fstab devices under `/dev/mapper/` and `/dev/VG/LV` are accepted.
    pub stage1_options: stagehand_common::stage1_config::Stage1Options,
}

/// Where `--host-only` looks: the host's sysfs and mount table.
#[derive(Debug, Clone)]
pub struct HostOnly {
    /// `/sys` on a real host.
    pub sys_dir: PathBuf,
    /// The host's mounts (`/proc/self/mountinfo`).
    pub mounts: Vec<Mount>,
}

impl HostOnly {
    /// The running host's `/sys` and mount table.
    pub fn running() -> Result<Self, SystemError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|error| SystemError::HostOnly {
            problem: format!("cannot read {}: {error}", path.display()),
        })?;
        Ok(Self {
            sys_dir: PathBuf::from("/sys"),
            mounts: mountinfo::parse(&text),
        })
    }
}

/// The spec for a generation, and what was chosen and why.
#[derive(Debug, Clone)]
pub struct SystemSpec {
    pub spec: FullSpec,
    pub choice: Choice,
}

/// What [`spec_from_system`] chose, for the user to read.
#[derive(Debug, Clone, Default)]
pub struct Choice {
    /// The generation, resolved (as the system sees it).
    pub toplevel: PathBuf,
    pub kernel_version: String,
    /// The fstab read (as the system sees it).
    pub fstab: PathBuf,
    /// The mounts, with their fstab line numbers.
    pub mounts: Vec<(usize, FileSystem)>,
    /// Entries left out: (line, mount point or device, why).
    pub skipped: Vec<(usize, String, String)>,
    /// Modules asked for (required), by source.
    pub modules: Vec<(String, String)>,
    /// Modules loaded when present, by source.
    pub optional_modules: Vec<(String, String)>,
    /// The firmware directory, if the generation has one.
    pub firmware: Option<PathBuf>,
    /// Things worth knowing that did not stop the build.
    pub notes: Vec<String>,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "system {}", self.toplevel.display())?;
        writeln!(f, "kernel {}", self.kernel_version)?;
        for (line, fs) in &self.mounts {
            writeln!(
                f,
                "mount {} {} {} {} (fstab line {line})",
                fs.mount_point,
                fs.device,
                fs.fs_type,
                if fs.options.is_empty() {
                    "-".to_owned()
                } else {
                    fs.options.join(",")
                }
            )?;
        }
        for (line, what, why) in &self.skipped {
            writeln!(f, "skip {what}: {why} (fstab line {line})")?;
        }
        let list = |v: &[(String, String)]| {
            if v.is_empty() {
                return "none".to_owned();
            }
            v.iter()
                .map(|(m, why)| format!("{m} ({why})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "modules {}", list(&self.modules))?;
        writeln!(f, "optional modules {}", list(&self.optional_modules))?;
        match &self.firmware {
            Some(p) => writeln!(f, "firmware from {}", p.display())?,
            None => writeln!(
                f,
                "firmware none (the generation has no firmware directory)"
            )?,
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub enum SystemError {
    /// The toplevel is given as a relative path under a root that is not `/`.
    NotAbsolute {
        path: PathBuf,
    },
    /// A path of the generation that cannot be followed inside the root.
    Path(ConfinedError),
    /// Something every generation has is missing.
    NotAGeneration {
        toplevel: PathBuf,
        missing: &'static str,
        error: Box<ConfinedError>,
    },
    /// `kernel-modules/lib/modules` does not hold exactly one version.
    KernelVersions {
        dir: PathBuf,
        found: Vec<String>,
    },
    /// The fstab cannot be read.
    FstabRead {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A line of the fstab is malformed, or names something stage 1 cannot mount.
    Fstab {
        path: PathBuf,
        error: LineError,
    },
    Module(ModuleError),
    /// `--host-only` could not read the host.
    HostOnly {
        problem: String,
    },
}

impl fmt::Display for SystemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAbsolute { path } => write!(
                f,
                "system {}: give the toplevel as an absolute path as the system sees it \
                 (e.g. /nix/var/nix/profiles/system) when --root is not /",
                path.display()
            ),
            Self::Path(e) => write!(f, "system: {e}"),
            Self::NotAGeneration {
                toplevel,
                missing,
                error,
            } => write!(
                f,
                "system {}: no {missing} ({error}); is it a NixOS generation (a \
                 …-nixos-system-… store path or a system-N-link)?",
                toplevel.display()
            ),
            Self::KernelVersions { dir, found } if found.is_empty() => write!(
                f,
                "system: {} holds no kernel version directory; the generation's kernel has \
                 no modules tree",
                dir.display()
            ),
            Self::KernelVersions { dir, found } => write!(
                f,
                "system: {} holds {} kernel versions ({}); a generation has exactly one, so \
                 the kernel-modules tree is broken",
                dir.display(),
                found.len(),
                found.join(", ")
            ),
            Self::FstabRead { path, error } => {
                write!(f, "system fstab {}: {error}", path.display())
            }
            Self::Fstab { path, error } => write!(f, "system fstab {}: {error}", path.display()),
            Self::Module(e) => write!(f, "system modules: {e}"),
            Self::HostOnly { problem } => write!(
                f,
                "--host-only: {problem}; name the disk drivers with --modules or use --generic"
            ),
        }
    }
}

impl std::error::Error for SystemError {}

impl From<ConfinedError> for SystemError {
    fn from(e: ConfinedError) -> Self {
        Self::Path(e)
    }
}

impl From<ModuleError> for SystemError {
    fn from(e: ModuleError) -> Self {
        Self::Module(e)
    }
}

/// `name` in the directory of the running executable (where `cargo build` and packages
/// put `stage1` and `stage2` next to `stagehand-initrd`), if it is a file there.
pub fn next_to_executable(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.is_file().then_some(p)
}

/// The spec that builds our initrd for the generation `toplevel` (as the system under
/// `root` sees it: `/nix/var/nix/profiles/system`, `/nix/store/…-nixos-system-…`).
pub fn spec_from_system(
    root: &Path,
    toplevel: &Path,
    options: &SystemOptions,
) -> Result<SystemSpec, SystemError> {
    let toplevel = if toplevel.is_absolute() {
        toplevel.to_owned()
    } else if root == Path::new("/") {
        std::path::absolute(toplevel).map_err(|_| SystemError::NotAbsolute {
            path: toplevel.to_owned(),
        })?
    } else {
        return Err(SystemError::NotAbsolute {
            path: toplevel.to_owned(),
        });
    };
    let top = confined::resolve(root, &toplevel)?;
    let mut choice = Choice {
        toplevel: top.clone(),
        ..Choice::default()
    };
    let part = |rel: &str, missing: &'static str| {
        confined::resolve(root, &top.join(rel)).map_err(|error| match error {
            e if e.is_not_found() => SystemError::NotAGeneration {
                toplevel: top.clone(),
                missing,
                error: Box::new(e),
            },
            e => SystemError::Path(e),
        })
    };

    // The kernel's modules: exactly one version.
    let lib_modules = part("kernel-modules/lib/modules", "kernel-modules/lib/modules")?;
    let lib_modules_host = confined::host_path(root, &lib_modules);
    let versions = kernel_versions(root, &lib_modules)?;
    let [version] = versions.as_slice() else {
        return Err(SystemError::KernelVersions {
            dir: lib_modules_host,
            found: versions,
        });
    };
    choice.kernel_version = version.clone();
    let modules_dir = confined::resolve_host(root, &lib_modules.join(version))?;
    let index = ModuleIndex::open_in_root(&modules_dir, Some(root))?;

    // The filesystems.
    let fstab_path = part("etc/fstab", "etc/fstab")?;
    choice.fstab = fstab_path.clone();
    let fstab_host = confined::host_path(root, &fstab_path);
    let text =
        crate::input::read_regular_text(&fstab_host).map_err(|error| SystemError::FstabRead {
            path: fstab_host.clone(),
            error,
        })?;
    let fstab_err = |error: LineError| SystemError::Fstab {
        path: fstab_host.clone(),
        error,
    };
    let entries = fstab::parse(&text).map_err(fstab_err)?;

    let mut required = Picks::default();
    let mut optional = Picks::default();
    let layers = !options.stage1_options.luks.is_empty() || options.stage1_options.lvm;
    let (filesystems, block_mounts) = boot_filesystems(
        layers,
        &entries,
        &index,
        version,
        &mut required,
        &mut optional,
        &mut choice,
    )
    .map_err(fstab_err)?;
    if !filesystems.iter().any(|fs| fs.mount_point == "/") {
        choice.notes.push(
            "the fstab has no / entry: stage 1 takes the root from root= on the command line"
                .into(),
        );
    }

    asked_modules(
        options,
        &index,
        &block_mounts,
        &mut required,
        &mut optional,
        &mut choice,
    )?;
    // A module asked for both ways is required.
    optional
        .0
        .retain(|(m, _)| !required.0.iter().any(|(r, _)| r == m));

    let firmware = match confined::resolve(root, &top.join("firmware")) {
        Ok(p) => Some(p),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    choice.firmware = firmware.clone();
    choice.modules = required.0.clone();
    choice.optional_modules = optional.0.clone();

    let mut extras = SpecExtras {
        stage2: Some(options.stage2.clone()),
        root: Some(root.to_owned()),
        stage1_options: options.stage1_options.clone(),
        ..SpecExtras::default()
    };
    // The storage layers the boot filesystems sit on: every md array found is assembled
    // when one is on an md device (NixOS's `boot.swraid`; the array list of
    // `mdadm.conf` is not in the toplevel), and btrfs devices are scanned before mounting
    // so a multi-device btrfs mounts. Their modules come with the options at build time.
    if filesystems.iter().any(|f| fstab::is_md_device(&f.device)) {
        extras.stage1_options.swraid = true;
        choice
            .notes
            .push("an md array holds a boot filesystem: stage 1 assembles every array it finds (md_mod, raid1)".into());
    }
    if filesystems.iter().any(|f| f.fs_type == "btrfs") {
        extras.stage1_options.btrfs_scan = true;
    }
    extras.firmware_dirs = firmware
        .iter()
        .map(|p| confined::host_path(root, p))
        .collect();
    let spec = InitrdSpec {
        stage1: options.stage1.clone(),
        modules_dir: Some(modules_dir),
        modules: required.names(),
        optional_modules: optional.names(),
        filesystems,
        device_timeout_ms: crate::default_device_timeout_ms(),
        panic_on_fail: false,
        extra_files: Vec::new(),
        compression: crate::Compression::default(),
        keep_module_signatures: false,
        compression_level: None,
    };
    Ok(SystemSpec {
        spec: FullSpec { spec, extras },
        choice,
    })
}

/// The fstab entries stage 1 mounts, as the spec's filesystems, with the modules their
/// types need; the mount points on block devices (for `--host-only`).
fn boot_filesystems(
    layers: bool,
    entries: &[fstab::Entry],
    index: &ModuleIndex,
    version: &str,
    required: &mut Picks,
    optional: &mut Picks,
    choice: &mut Choice,
) -> Result<(Vec<FileSystem>, Vec<String>), LineError> {
    let mut filesystems = Vec::new();
    let mut block_mounts = Vec::new();
    for e in entries {
        if e.is_swap() {
            choice.skipped.push((
                e.line,
                e.device.clone(),
                "swap is not mounted by stage 1".into(),
            ));
            continue;
        }
        if !e.needed_for_boot() {
            choice.skipped.push((
                e.line,
                e.mount_point.clone(),
                "not needed for boot (systemd mounts it)".into(),
            ));
            continue;
        }
        let (fs, kind) = fstab::to_filesystem_with(e, layers)?;
        if kind == DeviceKind::Block {
            block_mounts.push(fs.mount_point.clone());
            if fs.fs_type == "auto" {
                for t in AUTO_TYPES {
                    for m in fs_modules(index, t) {
                        optional.add(&m, &format!("fsType auto of {}", fs.mount_point));
                    }
                }
            } else {
                let found = fs_modules(index, &fs.fs_type);
                if found.is_empty() && !index.is_builtin(&fs.fs_type) {
                    return Err(LineError {
                        line: e.line,
                        text: e.text.clone(),
                        problem: format!(
                            "the kernel {version} has no module for {} (no {}.ko, nothing \
                             with alias fs-{}) and does not list it in modules.builtin",
                            fs.fs_type, fs.fs_type, fs.fs_type
                        ),
                        fix: format!(
                            "use a kernel with {} support, or another filesystem type",
                            fs.fs_type
                        ),
                    });
                }
                if found.is_empty() {
                    choice
                        .notes
                        .push(format!("{} is built into the kernel", fs.fs_type));
                }
                for m in found {
                    required.add(&m, &format!("{} of {}", fs.fs_type, fs.mount_point));
                }
                for (t, extras) in FS_EXTRAS {
                    if *t == fs.fs_type {
                        for m in *extras {
                            if index.path_of(m).is_some() {
                                optional.add(m, &format!("{t} of {}", fs.mount_point));
                            }
                        }
                    }
                }
            }
        }
        choice.mounts.push((e.line, fs.clone()));
        filesystems.push(fs);
    }
    Ok((filesystems, block_mounts))
}

/// The modules asked for on the command line: `--modules`, `--optional-modules`,
/// `--generic`, `--host-only`.
fn asked_modules(
    options: &SystemOptions,
    index: &ModuleIndex,
    block_mounts: &[String],
    required: &mut Picks,
    optional: &mut Picks,
    choice: &mut Choice,
) -> Result<(), SystemError> {
    for m in &options.modules {
        required.add(&modules::normalize_name(m), "--modules");
    }
    for m in &options.optional_modules {
        optional.add(&modules::normalize_name(m), "--optional-modules");
    }
    if options.generic {
        for m in GENERIC_MODULES {
            if index.path_of(m).is_some() {
                optional.add(m, "--generic");
            }
        }
    }
    if let Some(host) = &options.host_only {
        let before = optional.0.len();
        host_only_modules(host, block_mounts, index, optional, &mut choice.notes)?;
        if optional.0.len() == before {
            choice.notes.push(
                "--host-only found no loadable driver for this host's boot disks (built into \
                 the kernel, or not on a block device)"
                    .into(),
            );
        }
    }
    if !options.generic
        && options.host_only.is_none()
        && options.modules.is_empty()
        && options.optional_modules.is_empty()
    {
        choice.notes.push(
            "no disk drivers were asked for (--generic, --host-only or --modules): the \
             kernel must have the disk's driver built in"
                .into(),
        );
    }
    Ok(())
}

/// Module names with why each was taken, in the order first asked for.
#[derive(Default)]
struct Picks(Vec<(String, String)>);

impl Picks {
    fn add(&mut self, name: &str, why: &str) {
        if !self.0.iter().any(|(n, _)| n == name) {
            self.0.push((name.to_owned(), why.to_owned()));
        }
    }

    fn names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// The version directories in `lib/modules`, sorted.
fn kernel_versions(root: &Path, lib_modules: &Path) -> Result<Vec<String>, SystemError> {
    let host = confined::host_path(root, lib_modules);
    let io = |error| {
        SystemError::Path(ConfinedError::Io {
            root: root.to_owned(),
            path: lib_modules.to_owned(),
            error,
        })
    };
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(&host).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // A version may itself be a link into another store path (buildEnv).
        match confined::resolve_host(root, &lib_modules.join(name)) {
            Ok(p) if p.is_dir() => versions.push(name.to_owned()),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    versions.sort();
    Ok(versions)
}

/// The module files that provide filesystem type `t`: a module of that name, else the
/// modules with alias `fs-T` (what the kernel's `request_module("fs-%s")` asks for; ext4
/// provides `fs-ext3` and `fs-ext2`, isofs `fs-iso9660`). Empty when none is a file
/// (possibly built in).
fn fs_modules(index: &ModuleIndex, t: &str) -> Vec<String> {
    let name = modules::normalize_name(t);
    if index.path_of(&name).is_some() {
        return vec![name];
    }
    if index.is_builtin(&name) {
        return Vec::new();
    }
    index.resolve_alias(&format!("fs-{t}")).unwrap_or_default()
}

/// Drivers of the devices under the host's mounts at `mount_points`, as dracut's
/// host-only mode finds them: from the device's sysfs node up to the root of the device
/// tree, each level's bound driver (`driver/module`) and the modules matching its
/// `modalias`. Only modules that are files in the tree count (built-in drivers need
/// nothing).
fn host_only_modules(
    host: &HostOnly,
    mount_points: &[String],
    index: &ModuleIndex,
    picks: &mut Picks,
    notes: &mut Vec<String>,
) -> Result<(), SystemError> {
    let devices_root =
        std::fs::canonicalize(host.sys_dir.join("devices")).map_err(|e| SystemError::HostOnly {
            problem: format!("cannot read {}/devices: {e}", host.sys_dir.display()),
        })?;
    for mp in mount_points {
        let Some(mount) = mountinfo::find(&host.mounts, mp) else {
            notes.push(format!(
                "--host-only: {mp} is not mounted on this host; its drivers are not known"
            ));
            continue;
        };
        let (major, minor) = mount.devno;
        if major == 0 {
            notes.push(format!(
                "--host-only: {mp} is on device {major}:{minor}, which has no sysfs node \
                 (btrfs, a network or memory filesystem); add its disk's drivers with --modules"
            ));
            continue;
        }
        let link = host.sys_dir.join(format!("dev/block/{major}:{minor}"));
        let node = std::fs::canonicalize(&link).map_err(|e| SystemError::HostOnly {
            problem: format!("cannot follow {} (the device of {mp}): {e}", link.display()),
        })?;
        let why = format!("--host-only, {mp}");
        let mut level = Some(node.as_path());
        while let Some(dir) = level {
            if !dir.starts_with(&devices_root) || dir == devices_root {
                break;
            }
            if let Some(module) = std::fs::read_link(dir.join("driver/module"))
                .ok()
                .and_then(|m| m.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            {
                let module = modules::normalize_name(&module);
                if index.path_of(&module).is_some() {
                    picks.add(&module, &why);
                }
            }
            if let Ok(alias) = std::fs::read_to_string(dir.join("modalias")) {
                let alias = alias.trim();
                if !alias.is_empty() {
                    match index.resolve_alias(alias) {
                        Ok(found) => {
                            for m in found {
                                picks.add(&m, &why);
                            }
                        }
                        Err(e) => notes.push(format!(
                            "--host-only: the alias {alias} was not resolved: {e}"
                        )),
                    }
                }
            }
            level = dir.parent();
        }
    }
    Ok(())
}
