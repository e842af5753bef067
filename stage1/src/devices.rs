//! Finding block devices without udev.
//!
//! The kernel lists every block device in `/sys/class/block` and creates its node in
//! devtmpfs; we probe each new device once (superblock, partition table) with
//! [`crate::probe`], create the `/dev/disk/by-*` links udev would have made (so
//! stage 2 and systemd find them), and resolve `LABEL=`/`UUID=`/`PARTUUID=`/`PARTLABEL=`
//! and `/dev/disk/by-*` specs against what we found.
//!
//! Waiting is event-driven: one inotify watch on `/dev` wakes us when the kernel adds a
//! node. All devices the boot needs are waited for together, so a slow `/nix` disk does
//! not delay noticing the root disk, and the deadline is shared.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::md::superblock::{self as md_sb, MdSuper};
use crate::md::Member;
use crate::probe::{self, DeviceSpec, FsInfo, PartIds};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::inotify;

/// The partition-table identifiers of one partition, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartEntry {
    pub part_uuid: String,
    pub part_label: Option<String>,
}

impl PartEntry {
    fn ids(&self) -> PartIds<'_> {
        PartIds {
            part_uuid: &self.part_uuid,
            part_label: self.part_label.as_deref(),
        }
    }
}

/// What we know about one block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Kernel name, e.g. `vda1`; the node is `/dev/<name>`.
    pub name: String,
    pub fs: Option<FsInfo>,
    pub part: Option<PartEntry>,
    /// The md superblock, when the device is a member of an md array. A member's
    /// filesystem (visible at offset 0 with v1.0 metadata) is not offered for lookup:
    /// it belongs to the array device.
    pub md: Option<MdSuper>,
}

pub struct Registry {
    sys_block: PathBuf,
    dev: PathBuf,
    devices: BTreeMap<String, Device>,
    /// Partition entries of each whole disk, by partition number.
    tables: BTreeMap<String, BTreeMap<u32, PartEntry>>,
    /// Time [`Registry::wait_all`] spent blocked for new nodes (not scanning or probing).
    pub waited: Duration,
}

impl Registry {
    /// A registry over the real `/sys/class/block` and `/dev`.
    pub fn system() -> Self {
        Self::new(Path::new("/sys/class/block"), Path::new("/dev"))
    }

    pub fn new(sys_block: &Path, dev: &Path) -> Self {
        Self {
            sys_block: sys_block.to_owned(),
            dev: dev.to_owned(),
            devices: BTreeMap::new(),
            tables: BTreeMap::new(),
            waited: Duration::ZERO,
        }
    }

    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.values()
    }

    /// Probe every block device not seen before and create its `/dev/disk/by-*` links.
    /// Returns the names of the new devices.
    pub fn scan(&mut self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.sys_block) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        // Whole disks first, so a partition finds its disk's table.
        names.sort_by_key(|n| (self.sys_block.join(n).join("partition").exists(), n.clone()));
        let mut new = Vec::new();
        for name in names {
            if self.devices.contains_key(&name) || !self.dev.join(&name).exists() {
                continue;
            }
            if read_trimmed(&self.sys_block.join(&name).join("size")).as_deref() == Some("0") {
                // Empty loop devices and drives without media: nothing to find yet.
                continue;
            }
            let device = self.probe(&name);
            self.link(&device);
            new.push(name.clone());
            self.devices.insert(name, device);
        }
        new
    }

    fn probe(&mut self, name: &str) -> Device {
        let node = self.dev.join(name);
        let sys = self.sys_block.join(name);
        let mut fs = None;
        let mut part = None;
        let mut md = None;
        match File::open(&node) {
            Ok(mut file) => {
                md = match md_sb::probe(&mut file) {
                    Ok(md) => md,
                    Err(e) => {
                        log::warn!(
                            "{}: damaged md superblock, not used as an array member: {e}",
                            node.display()
                        );
                        None
                    }
                };
                fs = match probe::probe_filesystem(&mut file) {
                    Ok(_) if md.is_some() => None,
                    Ok(fs) => fs,
                    Err(e) if md.is_none() => {
                        log::warn!("cannot identify the filesystem on {}: {e}", node.display());
                        None
                    }
                    Err(_) => None,
                };
                let number = read_trimmed(&sys.join("partition")).and_then(|n| n.parse().ok());
                match number {
                    None => {
                        let table = partition_table(&mut file, &sys);
                        if !table.is_empty() {
                            self.tables.insert(name.to_owned(), table);
                        }
                    }
                    Some(n) => {
                        part = parent_disk(&sys)
                            .and_then(|disk| self.tables.get(&disk))
                            .and_then(|t| t.get(&n))
                            .cloned();
                    }
                }
            }
            Err(e) => log::warn!("cannot open {}: {e}", node.display()),
        }
        Device {
            name: name.to_owned(),
            fs,
            part,
            md,
        }
    }

    /// Create the links udev would: `/dev/disk/by-label/<label> -> ../../<name>` etc.
    fn link(&self, device: &Device) {
        let links =
            probe::by_links_ids(device.fs.as_ref(), device.part.as_ref().map(PartEntry::ids));
        for link in links {
            let Some(rel) = link.strip_prefix("/dev/") else {
                continue;
            };
            let path = self.dev.join(rel);
            let Some(dir) = path.parent() else { continue };
            if std::fs::create_dir_all(dir).is_err() {
                continue;
            }
            let target = format!("../../{}", device.name);
            // First come, first served, as udev without link priorities: a duplicate label
            // keeps pointing at the device found first.
            if std::os::unix::fs::symlink(&target, &path).is_err() && !path.exists() {
                log::warn!("cannot create {}", path.display());
            }
        }
    }

    /// The device node a spec names, if the device is known (or, for plain paths, exists).
    pub fn resolve(&self, spec: &DeviceSpec) -> Option<PathBuf> {
        match spec {
            DeviceSpec::Path(p) => {
                let p = Path::new(p);
                p.exists().then(|| p.to_owned())
            }
            _ => self
                .devices
                .values()
                .find(|d| spec.matches_ids(d.fs.as_ref(), d.part.as_ref().map(PartEntry::ids)))
                .map(|d| self.dev.join(&d.name)),
        }
    }

    /// The filesystem type found on a device node, for `fsType = auto`.
    pub fn fs_type(&self, node: &Path) -> Option<&'static str> {
        let name = std::fs::canonicalize(node).ok()?;
        let name = name.file_name()?.to_str()?;
        self.devices
            .get(name)
            .and_then(|d| d.fs.as_ref())
            .map(|f| f.fs_type)
    }

    /// The md array members found so far.
    pub fn md_members(&self) -> Vec<Member> {
        self.devices
            .values()
            .filter_map(|d| {
                d.md.as_ref().map(|sb| Member {
                    device: d.name.clone(),
                    sb: sb.clone(),
                })
            })
            .collect()
    }

    /// Wait until every spec resolves or `timeout` passes. Returns one answer per spec.
    pub fn wait_all(&mut self, specs: &[DeviceSpec], timeout: Duration) -> Vec<Option<PathBuf>> {
        let mut found = Vec::new();
        self.wait_until(timeout, |reg| {
            found = specs.iter().map(|s| reg.resolve(s)).collect();
            found.iter().all(Option::is_some)
        });
        found
    }

    /// Scan for new devices until `done` says so or `timeout` passes, woken by inotify
    /// on the device directory. Returns whether `done` was satisfied.
    pub fn wait_until(&mut self, timeout: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let start = Instant::now();
        let watch = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .and_then(|fd| {
                inotify::add_watch(&fd, &self.dev, inotify::WatchFlags::CREATE)?;
                Ok(fd)
            });
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        loop {
            // Scan after arming the watch, so a node created in between is not missed.
            self.scan();
            if done(self) {
                return true;
            }
            let Some(left) = timeout
                .checked_sub(start.elapsed())
                .filter(|l| !l.is_zero())
            else {
                return false;
            };
            let blocked = Instant::now();
            match &watch {
                Ok(fd) => {
                    let ts = Timespec {
                        tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
                        tv_nsec: left.subsec_nanos().into(),
                    };
                    let mut fds = [PollFd::new(fd, PollFlags::IN)];
                    let _ = poll(&mut fds, Some(&ts));
                    let mut reader = inotify::Reader::new(fd.as_fd(), &mut buf);
                    while reader.next().is_ok() {}
                }
                // Without inotify, fall back to looking again every 50 ms.
                Err(_) => std::thread::sleep(left.min(Duration::from_millis(50))),
            }
            self.waited += blocked.elapsed();
        }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// `/sys/class/block/vda1` links into `.../block/vda/vda1`: the disk is the parent dir.
fn parent_disk(sys: &Path) -> Option<String> {
    let real = std::fs::canonicalize(sys).ok()?;
    real.parent()?.file_name()?.to_str().map(str::to_owned)
}

fn partition_table(file: &mut File, sys: &Path) -> BTreeMap<u32, PartEntry> {
    let sector = read_trimmed(&sys.join("queue/logical_block_size"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let mut table = BTreeMap::new();
    if let Ok(Some(parts)) = probe::probe_gpt(file, sector) {
        for p in parts {
            let entry = PartEntry {
                part_uuid: p.part_uuid.clone(),
                part_label: p.ids().part_label.map(str::to_owned),
            };
            table.insert(p.number, entry);
        }
    } else if let Ok(Some(mbr)) = probe::probe_mbr(file) {
        for p in mbr.partitions {
            if let Some(uuid) = p.part_uuid {
                table.insert(
                    p.number,
                    PartEntry {
                        part_uuid: uuid,
                        part_label: None,
                    },
                );
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagehand_testkit::host::require_tool;
    use std::process::Command;

    /// A fake /sys/class/block and /dev: `vda` is an ext4 image labelled "nixos".
    /// A fake `/sys/class/block` and `/dev` under `t` whose one disk, `vda`, is an 8 MiB
    /// ext4 image made by `mkfs.ext4 ARGS`: `(sys, dev, /dev/vda)`.
    fn ext4_disk(t: &tempfile::TempDir, args: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
        let sys = t.path().join("sys");
        let dev = t.path().join("dev");
        std::fs::create_dir_all(sys.join("vda")).expect("mkdir");
        std::fs::create_dir_all(&dev).expect("mkdir");
        std::fs::write(sys.join("vda/size"), "16384\n").expect("write");
        let img = dev.join("vda");
        let ok = Command::new(require_tool("mkfs.ext4"))
            .args(["-q", "-F"])
            .args(args)
            .arg(&img)
            .arg("8M")
            .status()
            .expect("mkfs.ext4");
        assert!(ok.success());
        (sys, dev, img)
    }

    #[test]
    fn finds_by_label_and_uuid_and_links_like_udev() {
        let t = tempfile::tempdir().expect("tempdir");
        let (sys, dev, img) = ext4_disk(
            &t,
            &["-L", "nixos", "-U", "0b2d8d5e-6f3c-4b1a-9d7e-4f5a6b7c8d9e"],
        );
        let mut reg = Registry::new(&sys, &dev);
        let found = reg.wait_all(
            &[
                DeviceSpec::parse("LABEL=nixos").expect("spec"),
                DeviceSpec::parse("UUID=0B2D8D5E-6F3C-4B1A-9D7E-4F5A6B7C8D9E").expect("spec"),
                DeviceSpec::parse("/dev/disk/by-label/nixos").expect("spec"),
            ],
            Duration::from_secs(1),
        );
        assert!(
            found.iter().all(|f| f.as_deref() == Some(img.as_path())),
            "{found:?}"
        );
        assert_eq!(reg.fs_type(&img), Some("ext4"));
        let link = std::fs::read_link(dev.join("disk/by-label/nixos")).expect("by-label link");
        assert_eq!(link, Path::new("../../vda"));
        assert!(dev
            .join("disk/by-uuid/0b2d8d5e-6f3c-4b1a-9d7e-4f5a6b7c8d9e")
            .exists());
    }

    /// A device with an md superblock (the one real mdadm wrote, at 4 KiB) and an ext4
    /// superblock at 1 KiB, as a v1.0 member or a disk reused without `wipefs` looks: it
    /// is an array member, and its ext4 label must not resolve to it.
    #[test]
    fn md_members_are_not_filesystems() {
        let t = tempfile::tempdir().expect("tempdir");
        let (sys, dev, img) = ext4_disk(&t, &["-L", "inside"]);
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&img)
                .expect("open");
            f.seek(SeekFrom::Start(4096)).expect("seek");
            f.write_all(include_bytes!("md/testdata/mdadm-1.2-raid1-member0.sb"))
                .expect("write");
        }
        let mut reg = Registry::new(&sys, &dev);
        let found = reg.wait_all(
            &[DeviceSpec::parse("LABEL=inside").expect("spec")],
            Duration::from_millis(50),
        );
        assert_eq!(found, vec![None]);
        let members = reg.md_members();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].device, "vda");
        assert_eq!(members[0].sb.short_name(), "root");
        assert!(!dev.join("disk/by-label/inside").exists());
    }

    #[test]
    fn missing_label_times_out_with_none() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(t.path().join("sys")).expect("mkdir");
        std::fs::create_dir_all(t.path().join("dev")).expect("mkdir");
        let mut reg = Registry::new(&t.path().join("sys"), &t.path().join("dev"));
        let start = Instant::now();
        let found = reg.wait_all(
            &[DeviceSpec::parse("LABEL=absent").expect("spec")],
            Duration::from_millis(100),
        );
        assert_eq!(found, vec![None]);
        assert!(start.elapsed() >= Duration::from_millis(100));
    }
}
