//! The block-device layers between the disks and the filesystems, set up in one ordered
//! step after the modules are loaded and before the filesystems' devices are waited for:
//! the LUKS devices opened before LVM (`preLVM`, LVM on LUKS), the LVM volume groups,
//! then the LUKS devices that live on logical volumes (LUKS on LVM), as NixOS's scripted
//! stage 1 orders its luks and lvm hooks. Each layer waits for its own input devices
//! with the device registry's wait, and the devices it makes (`/dev/dm-N`, named by
//! `/dev/mapper/<name>` links) are probed like any disk, so `/dev/disk/by-uuid/…` of an
//! unlocked filesystem resolves.
//!
//! Natively, without `cryptsetup` or `lvm`: [`luks`] reads the header and opens a keyslot,
//! [`crypt`] holds the KDFs and ciphers, [`lvm`] reads the metadata, and [`dm`] makes the
//! device-mapper devices (the one place with `unsafe`).

pub mod crypt;
pub mod dm;
pub mod json;
pub mod luks;
pub mod lvm;
mod prompt;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use stagehand_common::emergency::{fail, FailurePolicy};
use stagehand_common::stage1_config::{LuksDevice, Stage1Options};
use zeroize::Zeroizing;

use crate::devices::Registry;
use crate::probe::DeviceSpec;
use crypt::Secret;

/// What the layers step does, from the config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LayerPlan {
    pub luks: Vec<LuksDevice>,
    pub lvm: bool,
    pub passphrase_tries: u32,
    pub reuse_passphrases: bool,
}

/// One layer, in the order they are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    Luks(&'a LuksDevice),
    Lvm,
}

impl LayerPlan {
    pub fn new(options: &Stage1Options) -> Self {
        Self {
            luks: options.luks.clone(),
            lvm: options.lvm,
            passphrase_tries: options.passphrase_tries.max(1),
            reuse_passphrases: options.reuse_passphrases,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.luks.is_empty() && !self.lvm
    }

    /// The layers in order: LUKS before LVM, LVM, LUKS after LVM.
    pub fn steps(&self) -> Vec<Step<'_>> {
        let mut steps: Vec<Step<'_>> = self
            .luks
            .iter()
            .filter(|l| l.pre_lvm)
            .map(Step::Luks)
            .collect();
        if self.lvm {
            steps.push(Step::Lvm);
        }
        steps.extend(self.luks.iter().filter(|l| !l.pre_lvm).map(Step::Luks));
        steps
    }
}

/// Set up every layer in order. Failures go to the failure path; "continue" there skips
/// the layer (the filesystem on it will then be reported missing). `wanted` are the
/// devices the filesystems name, for the missing-LV message.
pub fn run(
    plan: &LayerPlan,
    policy: &FailurePolicy,
    registry: &mut Registry,
    timeout: Duration,
    wanted: &[String],
) {
    if plan.is_empty() {
        return;
    }
    let control = match dm::Control::open() {
        Ok(c) => c,
        Err(e) => {
            fail(policy, "setting up device-mapper", &e);
            return;
        }
    };
    let mut state = State {
        plan,
        policy,
        control: &control,
        timeout,
        passphrases: Vec::new(),
    };
    for step in plan.steps() {
        match step {
            Step::Luks(dev) => state.open_luks(registry, dev),
            Step::Lvm => state.activate_lvm(registry, wanted),
        }
    }
}

struct State<'a> {
    plan: &'a LayerPlan,
    policy: &'a FailurePolicy,
    control: &'a dm::Control,
    timeout: Duration,
    /// Passphrases that opened a device, tried first on the next ones (reusePassphrases).
    passphrases: Vec<Secret>,
}

/// `major:minor` of a block device node, as a table names its devices.
fn devno_text(node: &Path) -> Option<String> {
    crate::sys::devno(node).map(|(a, b)| format!("{a}:{b}"))
}

/// Size of a block device (or file) in bytes.
fn size_of(file: &mut File) -> std::io::Result<u64> {
    file.seek(SeekFrom::End(0))
}

impl State<'_> {
    /// Wait for one device (the layer's input) and return its node; on a timeout, the
    /// failure path names it.
    fn wait_for(&self, registry: &mut Registry, device: &str, what: &str) -> Option<PathBuf> {
        let spec = match DeviceSpec::parse(device) {
            Ok(s) => s,
            Err(e) => {
                fail(self.policy, what, &format!("{device}: {e}"));
                return None;
            }
        };
        let found = registry.wait_all(std::slice::from_ref(&spec), self.timeout);
        match found.into_iter().next().flatten() {
            Some(node) => Some(node),
            None => {
                fail(
                    self.policy,
                    what,
                    &format!(
                        "device {device} did not appear within {} ms; check the device in the \
                         LUKS settings (boot.initrd.luks.devices) and that the initrd has the \
                         disk's driver",
                        self.timeout.as_millis()
                    ),
                );
                None
            }
        }
    }

    fn open_luks(&mut self, registry: &mut Registry, dev: &LuksDevice) {
        let what = format!("opening LUKS device {} ({})", dev.name, dev.device);
        let Some(node) = self.wait_for(registry, &dev.device, &what) else {
            return;
        };
        let header_node = match &dev.header {
            None => node.clone(),
            Some(h) if Path::new(h).is_file() => PathBuf::from(h),
            Some(h) => match self.wait_for(registry, h, &format!("{what}: its header")) {
                Some(n) => n,
                None => return,
            },
        };
        let mut header_file = match File::open(&header_node) {
            Ok(f) => f,
            Err(e) => {
                fail(
                    self.policy,
                    &what,
                    &format!("cannot open {}: {e}", header_node.display()),
                );
                return;
            }
        };
        let header = match luks::read_header(&mut header_file) {
            Ok(h) => h,
            Err(e) => {
                fail(
                    self.policy,
                    &what,
                    &format!("{}: {e}", header_node.display()),
                );
                return;
            }
        };
        log::info!(
            "{} is LUKS{} {} ({} keyslot(s), {})",
            node.display(),
            header.version,
            header.uuid,
            header.keyslots.len(),
            header
                .keyslots
                .first()
                .map_or(String::new(), |k| k.kdf.name())
        );
        let Some(key) = self.volume_key(dev, &node, &header, &mut header_file) else {
            return;
        };
        match self.create_crypt(dev, &node, &header, &key) {
            Ok(link) => log::info!(
                "opened {} as {} ({})",
                dev.device,
                link.display(),
                header.segment.cipher
            ),
            Err(e) => fail(self.policy, &what, &e),
        }
    }

    /// The volume key: from the key file, from a passphrase that opened an earlier
    /// device, or asked for on the console.
    fn volume_key(
        &mut self,
        dev: &LuksDevice,
        node: &Path,
        header: &luks::Header,
        header_file: &mut File,
    ) -> Option<Secret> {
        let what = format!("unlocking {} ({})", dev.name, dev.device);
        if let Some(path) = &dev.key_file {
            let problem = match read_key_file(path, dev.key_file_offset, dev.key_file_size) {
                Ok(key) => match header.unlock(header_file, &key) {
                    Ok(Some(vk)) => {
                        log::info!("key file {path} opened {}", dev.name);
                        return Some(vk);
                    }
                    Ok(None) => format!("key file {path} does not open {}", node.display()),
                    Err(e) => format!("{}: {e}", node.display()),
                },
                Err(e) => e,
            };
            if !dev.fallback_to_password {
                fail(
                    self.policy,
                    &what,
                    &format!(
                        "{problem}; check keyFile/keyFileSize/keyFileOffset and the initrd \
                         secret, or set fallbackToPassword to be asked for a passphrase"
                    ),
                );
                return None;
            }
            log::warn!("{problem}; asking for a passphrase instead");
        }
        if self.plan.reuse_passphrases {
            for p in &self.passphrases {
                if let Ok(Some(vk)) = header.unlock(header_file, p) {
                    log::info!("a passphrase given before opened {}", dev.name);
                    return Some(vk);
                }
            }
        }
        let console = stagehand_common::emergency::console_path(self.policy);
        let tries = self.plan.passphrase_tries;
        for attempt in 1..=tries {
            let prompt = format!("Passphrase for {} ({}): ", node.display(), dev.name);
            log::info!("asking for the passphrase of {} on {console}", dev.name);
            let Some(pass) = prompt::ask(&console, &prompt) else {
                fail(
                    self.policy,
                    &what,
                    &format!("cannot read a passphrase from {console}"),
                );
                return None;
            };
            match header.unlock(header_file, &pass) {
                Ok(Some(vk)) => {
                    if self.plan.reuse_passphrases {
                        self.passphrases.push(pass);
                    }
                    return Some(vk);
                }
                Ok(None) => {
                    let left = tries - attempt;
                    let line = format!(
                        "wrong passphrase for {} ({}); {left} {} left",
                        node.display(),
                        dev.name,
                        if left == 1 { "try" } else { "tries" }
                    );
                    log::warn!("{line}");
                }
                Err(e) => {
                    fail(self.policy, &what, &format!("{}: {e}", node.display()));
                    return None;
                }
            }
        }
        fail(
            self.policy,
            &what,
            &format!(
                "{tries} wrong passphrases for {} ({}); check the keyboard layout and Caps \
                 Lock, then reboot to try again",
                node.display(),
                dev.name
            ),
        );
        None
    }

    fn create_crypt(
        &self,
        dev: &LuksDevice,
        node: &Path,
        header: &luks::Header,
        key: &[u8],
    ) -> Result<PathBuf, String> {
        let seg = &header.segment;
        let mut data =
            File::open(node).map_err(|e| format!("cannot open {}: {e}", node.display()))?;
        let size =
            size_of(&mut data).map_err(|e| format!("cannot size {}: {e}", node.display()))?;
        let bytes = match seg.size {
            Some(s) => s,
            None => size.checked_sub(seg.offset).ok_or_else(|| {
                format!(
                    "{} ({size} bytes) is smaller than the LUKS data offset {}",
                    node.display(),
                    seg.offset
                )
            })?,
        };
        let sector = u64::from(seg.sector_size);
        let length = bytes / sector * sector / 512;
        if length == 0 {
            return Err(format!("{} holds no encrypted data", node.display()));
        }
        let devno =
            devno_text(node).ok_or_else(|| format!("{} is not a device", node.display()))?;
        let mut opts: Vec<String> = Vec::new();
        let flag = |f: &str| header.flags.iter().any(|x| x == f);
        if dev.allow_discards || flag("allow-discards") {
            opts.push("allow_discards".into());
        }
        if dev.bypass_workqueues || flag("no-read-workqueue") {
            opts.push("no_read_workqueue".into());
        }
        if dev.bypass_workqueues || flag("no-write-workqueue") {
            opts.push("no_write_workqueue".into());
        }
        if seg.sector_size != 512 {
            opts.push(format!("sector_size:{}", seg.sector_size));
        }
        let mut hex = Zeroizing::new(String::with_capacity(key.len() * 2));
        for b in key {
            for nibble in [b >> 4, b & 15] {
                hex.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
            }
        }
        let mut params = format!(
            "{} {} {} {devno} {}",
            seg.cipher,
            hex.as_str(),
            seg.iv_tweak,
            seg.offset / 512
        );
        if !opts.is_empty() {
            params.push_str(&format!(" {} {}", opts.len(), opts.join(" ")));
        }
        let target = dm::Target {
            start: 0,
            length,
            kind: "crypt",
            params,
        };
        // cryptsetup's naming, which systemd and udev rules recognise.
        let uuid = format!(
            "CRYPT-LUKS{}-{}-{}",
            header.version,
            header.uuid.replace('-', ""),
            dev.name
        );
        self.control
            .create(&dev.name, &uuid, std::slice::from_ref(&target), false)
    }

    fn activate_lvm(&mut self, registry: &mut Registry, wanted: &[String]) {
        // The PVs: every device with an LVM label, once every volume group seen has all
        // of its PVs (or the deadline passes).
        let mut groups: BTreeMap<String, (lvm::VolumeGroup, BTreeMap<String, PathBuf>)> =
            BTreeMap::new();
        let mut pvs_seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        let complete =
            |groups: &BTreeMap<String, (lvm::VolumeGroup, BTreeMap<String, PathBuf>)>| {
                !groups.is_empty()
                    && groups
                        .values()
                        .all(|(vg, found)| vg.pvs.iter().all(|p| found.contains_key(&p.id)))
            };
        // Done waiting when every VG seen is complete, or when every device the boot
        // names is already there without LVM (LVM enabled, the root elsewhere: no reason
        // to wait for PVs that may never come).
        let specs: Vec<DeviceSpec> = wanted
            .iter()
            .filter_map(|w| DeviceSpec::parse(w).ok())
            .collect();
        registry.wait_until(self.timeout, |reg| {
            for d in reg.devices() {
                let node = Path::new("/dev").join(&d.name);
                let is_pv = d.fs.as_ref().is_some_and(|f| f.fs_type == "LVM2_member");
                if !is_pv || pvs_seen.values().any(|n| n == &node) {
                    continue;
                }
                let Ok(mut f) = File::open(&node) else {
                    continue;
                };
                match lvm::read_pv(&mut f) {
                    Ok(Some(pv)) => {
                        log::info!("{} is LVM physical volume {}", node.display(), pv.uuid);
                        if let Some(text) = &pv.metadata {
                            match lvm::parse_vg(text) {
                                Ok(vg) => {
                                    let entry = groups
                                        .entry(vg.name.clone())
                                        .or_insert_with(|| (vg.clone(), BTreeMap::new()));
                                    if vg.seqno > entry.0.seqno {
                                        entry.0 = vg;
                                    }
                                }
                                Err(e) => log::warn!("{}: {e}", node.display()),
                            }
                        }
                        pvs_seen.insert(pv.uuid, node);
                    }
                    Ok(None) => {}
                    Err(e) => log::warn!("{}: {e}", node.display()),
                }
            }
            for (vg, found) in groups.values_mut() {
                for pv in &vg.pvs {
                    if let Some(n) = pvs_seen.get(&pv.id) {
                        found.insert(pv.id.clone(), n.clone());
                    }
                }
            }
            complete(&groups)
                || (!specs.is_empty() && specs.iter().all(|s| reg.resolve(s).is_some()))
        });
        if groups.is_empty() {
            log::warn!(
                "LVM: no volume group found within {} ms",
                self.timeout.as_millis()
            );
        }
        for (vg, found) in groups.values() {
            let missing: Vec<&str> = vg
                .pvs
                .iter()
                .filter(|p| !found.contains_key(&p.id))
                .map(|p| p.id.as_str())
                .collect();
            if !missing.is_empty() {
                log::warn!(
                    "volume group {} is missing physical volume(s) {}; its logical volumes on them are not activated",
                    vg.name,
                    missing.join(", ")
                );
            }
            let device = |key: &str| {
                let pv = vg.pvs.iter().find(|p| p.key == key)?;
                devno_text(found.get(&pv.id)?)
            };
            for lv in vg.lvs.iter().filter(|l| l.visible) {
                let name = lvm::dm_name(&vg.name, &lv.name);
                let result = lvm::table(vg, lv, &device).and_then(|targets| {
                    self.control
                        .create(&name, &lvm::dm_uuid(vg, lv), &targets, false)
                });
                match result {
                    Ok(link) => {
                        let dir = Path::new("/dev").join(&vg.name);
                        let _ = std::fs::create_dir_all(&dir);
                        let _ = std::os::unix::fs::symlink(
                            format!("../mapper/{name}"),
                            dir.join(&lv.name),
                        );
                        log::info!("activated {}/{} as {}", vg.name, lv.name, link.display());
                    }
                    Err(e) => log::warn!("not activating {}/{}: {e}", vg.name, lv.name),
                }
            }
        }
        // A filesystem or LUKS device naming an LV that is not there: say which and why,
        // rather than wait for it until the deadline.
        for device in wanted {
            let Some((vg_name, lv_name)) = lv_reference(device, groups.keys().map(String::as_str))
            else {
                continue;
            };
            let Some((vg, _)) = groups.get(&vg_name) else {
                continue;
            };
            if vg.lvs.iter().any(|l| l.name == lv_name) {
                continue;
            }
            let have: Vec<&str> = vg
                .lvs
                .iter()
                .filter(|l| l.visible)
                .map(|l| l.name.as_str())
                .collect();
            fail(
                self.policy,
                "activating LVM",
                &format!(
                    "{device} names logical volume {lv_name} of volume group {vg_name}, which \
                     has no such volume (it has: {}); fix the device in fileSystems (or \
                     boot.initrd.luks.devices), or create the volume with lvcreate",
                    if have.is_empty() {
                        "none".to_owned()
                    } else {
                        have.join(", ")
                    }
                ),
            );
        }
    }
}

/// The (VG, LV) a device path names, when it is `/dev/VG/LV` or `/dev/mapper/VG-LV` of
/// one of `vgs`.
pub fn lv_reference<'a>(
    device: &str,
    vgs: impl Iterator<Item = &'a str>,
) -> Option<(String, String)> {
    let vgs: Vec<&str> = vgs.collect();
    if let Some(dm) = device.strip_prefix("/dev/mapper/") {
        // Split at the first single dash (a doubled one is part of a name).
        let b = dm.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b.get(i) == Some(&b'-') {
                if b.get(i + 1) == Some(&b'-') {
                    i += 2;
                    continue;
                }
                let vg = dm.get(..i)?.replace("--", "-");
                let lv = dm.get(i + 1..)?.replace("--", "-");
                return vgs.contains(&vg.as_str()).then_some((vg, lv));
            }
            i += 1;
        }
        return None;
    }
    let rest = device.strip_prefix("/dev/")?;
    let (vg, lv) = rest.split_once('/')?;
    (vgs.contains(&vg) && !lv.contains('/')).then(|| (vg.to_owned(), lv.to_owned()))
}

/// The key in a key file: `size` bytes (all when `None`) from `offset`.
fn read_key_file(path: &str, offset: Option<u64>, size: Option<u64>) -> Result<Secret, String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open key file {path}: {e}"))?;
    f.seek(SeekFrom::Start(offset.unwrap_or(0)))
        .map_err(|e| format!("cannot seek in key file {path}: {e}"))?;
    // cryptsetup's default key file size limit is 8 MiB.
    let limit = size.unwrap_or(8 << 20);
    let mut key = Zeroizing::new(Vec::new());
    f.take(limit)
        .read_to_end(&mut key)
        .map_err(|e| format!("cannot read key file {path}: {e}"))?;
    if let Some(want) = size {
        if (key.len() as u64) < want {
            return Err(format!(
                "key file {path} has {} bytes from offset {}, keyFileSize asks for {want}",
                key.len(),
                offset.unwrap_or(0)
            ));
        }
    }
    if key.is_empty() {
        return Err(format!("key file {path} is empty"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests;
