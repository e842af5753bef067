//! md RAID assembly before the root is looked for (NixOS's `boot.swraid`, mdadm's
//! `--assemble --scan` in the scripted stage 1), without mdadm and without ioctls:
//!
//! 1. the device prober ([`crate::devices`]) reads each block device's md v1.x
//!    superblock ([`superblock`]) and keeps md members out of the filesystem lookup
//!    (libblkid calls them `linux_raid_member`; a v1.0 member would otherwise show the
//!    filesystem inside it at offset 0);
//! 2. [`assemble_arrays`] waits (inotify, the device timeout) until every array the
//!    config asks for has all its members, groups members by array UUID and judges
//!    each array as mdadm's `Assemble.c` does: the members with the highest event count
//!    are fresh, older ones are left out, and the array starts when its fresh members
//!    hold enough data slots (RAID1: one; RAID4/5: all but one; RAID6: all but two);
//! 3. it starts each array through sysfs (`Documentation/admin-guide/md.rst`): the name
//!    `mdN` into `/sys/module/md_mod/parameters/new_array`, `1.x` into
//!    `md/metadata_version`, each member's `MAJ:MIN` into `md/new_dev` (the kernel reads
//!    and checks the superblock again), `active` into `md/array_state`; then
//!    `/dev/md/NAME` links to `/dev/mdN`, and the prober finds the filesystem on it.

pub mod superblock;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stagehand_common::stage1_config::{MdArray, Stage1Options};

use crate::devices::Registry;
use superblock::{normalize_uuid, uuid_hex, MdSuper, Role};

/// A block device carrying an md superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Kernel name (`vda`, `nvme0n1p2`).
    pub device: String,
    pub sb: MdSuper,
}

/// Whether an array's present members can start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every data slot has a fresh member.
    Complete,
    /// Enough slots for the level, these missing.
    Degraded { missing: Vec<u16> },
    /// Not enough; the text says what is there and what is missing.
    TooDegraded(String),
}

/// One array's members as found, sorted out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub uuid: String,
    /// `set_name` of the freshest member.
    pub name: String,
    pub level: i32,
    pub raid_disks: u32,
    /// Fresh members holding a data slot, one per slot: these are started.
    pub fresh: Vec<Member>,
    /// Members left out, each with why (older event count, spare, faulty, same slot twice).
    pub left_out: Vec<(Member, String)>,
    pub verdict: Verdict,
}

/// Whether the data slots `present` hold every block of the array: `Err` says which
/// slots it lacks. The rule is mdadm's (and the kernel's, which refuses to start an array
/// that fails it): RAID1 needs one member, RAID4/5 all but one, RAID6 all but two, RAID10
/// one member of every group of slots that hold copies of the same blocks, linear and
/// RAID0 all of them.
fn enough(level: i32, raid_disks: u32, layout: u32, present: &[u16]) -> Result<(), String> {
    let have = present.len() as u32;
    let needed = match level {
        1 => 1.min(raid_disks),
        4 | 5 => raid_disks.saturating_sub(1),
        6 => raid_disks.saturating_sub(2),
        10 => return raid10_enough(raid_disks, layout, present),
        _ => raid_disks,
    };
    if have >= needed {
        Ok(())
    } else {
        Err(format!("{} needs {needed}", level_name(level)))
    }
}

/// RAID10 keeps `near × far` copies of each block on consecutive slots (modulo the slot
/// count): the copies of the blocks that start at slot `first` are on slots `first`,
/// `first + 1`, … `first + copies - 1`, and the next group of blocks starts `near` slots
/// further on, until it comes back to slot 0. The array can start when each such group
/// has a member. A layout with no copies is unreadable: then every slot is needed.
fn raid10_enough(raid_disks: u32, layout: u32, present: &[u16]) -> Result<(), String> {
    let near = layout & 0xff;
    let far = (layout >> 8) & 0xff;
    let copies = near * far;
    let all = || {
        if present.len() as u32 >= raid_disks {
            Ok(())
        } else {
            Err(format!(
                "RAID10 with layout {layout:#x} (no copies that can be counted) needs all of them"
            ))
        }
    };
    if copies == 0 || raid_disks == 0 {
        return all();
    }
    // Lookups by slot, and groups no wider than the array (more copies than slots wrap
    // around onto the same slots): at most `raid_disks`² steps for any superblock, however
    // damaged (`raid_disks` ≤ 960, checked when it was read).
    let mut held = vec![false; raid_disks as usize];
    for &s in present {
        if let Some(h) = held.get_mut(usize::from(s)) {
            *h = true;
        }
    }
    let span = copies.min(raid_disks);
    let mut first = 0u32;
    // At most `raid_disks` groups: `first` steps by `near` (≥ 1) modulo `raid_disks`.
    for _ in 0..raid_disks {
        let group = (0..span).map(|i| (first + i) % raid_disks);
        if !group
            .clone()
            .any(|slot| held.get(slot as usize).copied().unwrap_or(false))
        {
            let slots: Vec<String> = group.map(|s| s.to_string()).collect();
            return Err(format!(
                "RAID10 ({near} near × {far} far copies) needs one of slots {}, which hold \
                 the only copies of some blocks",
                slots.join(", ")
            ));
        }
        first = (first + near) % raid_disks;
        if first == 0 {
            return Ok(());
        }
    }
    Ok(())
}

fn level_name(level: i32) -> String {
    match level {
        -1 => "linear".into(),
        l => format!("RAID{l}"),
    }
}

/// Sort out the members of one array (all with the same array UUID), as mdadm's
/// assembly does: the highest event count among the members holding a slot is the
/// array's state; members behind it missed writes and are left out.
pub fn judge(members: &[Member]) -> Option<Judged> {
    let first = members.first()?;
    let max_events = members
        .iter()
        .filter(|m| matches!(m.sb.role, Role::Active(_)))
        .map(|m| m.sb.events)
        .max()
        .unwrap_or(first.sb.events);
    let reference = members
        .iter()
        .find(|m| m.sb.events == max_events)
        .unwrap_or(first);
    let raid_disks = reference.sb.raid_disks;
    let level = reference.sb.level;
    let mut fresh: Vec<Member> = Vec::new();
    let mut left_out = Vec::new();
    for m in members {
        let why = match m.sb.role {
            Role::Active(slot) if u32::from(slot) >= raid_disks => {
                Some(format!("claims slot {slot} of a {raid_disks}-device array"))
            }
            Role::Active(_) if m.sb.events < max_events => Some(format!(
                "out of date (event count {} < {max_events}): it missed writes",
                m.sb.events
            )),
            Role::Active(slot) if fresh.iter().any(|f| f.sb.role == Role::Active(slot)) => {
                Some(format!("slot {slot} is already held by another member"))
            }
            Role::Active(_) => None,
            other => Some(format!("a {other} member holds no data")),
        };
        match why {
            None => fresh.push(m.clone()),
            Some(why) => left_out.push((m.clone(), why)),
        }
    }
    let present: Vec<u16> = fresh
        .iter()
        .filter_map(|m| match m.sb.role {
            Role::Active(s) => Some(s),
            _ => None,
        })
        .collect();
    let missing: Vec<u16> = (0..raid_disks)
        .filter_map(|s| u16::try_from(s).ok())
        .filter(|s| !present.contains(s))
        .collect();
    let have = present.len() as u32;
    let verdict = if missing.is_empty() && have > 0 {
        Verdict::Complete
    } else {
        let lacks = enough(level, raid_disks, reference.sb.layout, &present).and_then(|()| {
            if have == 0 {
                Err("no member holds data".to_owned())
            } else {
                Ok(())
            }
        });
        match lacks {
            Ok(()) => Verdict::Degraded { missing },
            Err(needs) => {
                let mut why = format!("{have} of {raid_disks} data slots present, {needs}");
                for (m, reason) in &left_out {
                    why.push_str(&format!("; {} left out: {reason}", m.device));
                }
                Verdict::TooDegraded(why)
            }
        }
    };
    Some(Judged {
        uuid: reference.sb.uuid_mdadm(),
        name: reference.sb.name.clone(),
        level,
        raid_disks,
        fresh,
        left_out,
        verdict,
    })
}

/// Members grouped by array UUID (32 hex digits), in device-name order.
pub fn group(members: &[Member]) -> BTreeMap<String, Vec<Member>> {
    let mut groups: BTreeMap<String, Vec<Member>> = BTreeMap::new();
    for m in members {
        groups
            .entry(uuid_hex(&m.sb.array_uuid))
            .or_default()
            .push(m.clone());
    }
    groups
}

/// What the config asks for, with UUIDs normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdWanted {
    pub arrays: Vec<(String, MdArray)>,
    pub scan: bool,
}

impl MdWanted {
    /// `Ok(None)` when the config asks for no md assembly at all.
    pub fn from_options(options: &Stage1Options) -> Result<Option<Self>, MdError> {
        if options.md_arrays.is_empty() && !options.swraid {
            return Ok(None);
        }
        let mut arrays = Vec::new();
        for a in &options.md_arrays {
            let uuid = normalize_uuid(&a.uuid).ok_or_else(|| MdError::BadUuid(a.uuid.clone()))?;
            arrays.push((uuid, a.clone()));
        }
        Ok(Some(Self {
            arrays,
            scan: options.swraid,
        }))
    }

    /// Every array to wait for is complete (the configured ones found; with `scan`, every
    /// array seen).
    fn satisfied(&self, groups: &BTreeMap<String, Vec<Member>>) -> bool {
        let complete =
            |members: &[Member]| judge(members).is_some_and(|j| j.verdict == Verdict::Complete);
        self.arrays
            .iter()
            .all(|(u, _)| groups.get(u).is_some_and(|m| complete(m)))
            && (!self.scan || groups.values().all(|m| complete(m)))
    }
}

/// What went wrong; each message names the array and what would fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MdError {
    BadUuid(String),
    NoMembers {
        uuid: String,
        waited_ms: u128,
        seen: String,
    },
    TooDegraded {
        array: String,
        why: String,
    },
    DegradedRefused {
        array: String,
        missing: Vec<u16>,
    },
    Start {
        array: String,
        step: String,
    },
}

impl fmt::Display for MdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadUuid(u) => write!(
                f,
                "stage-1 config: md array UUID {u:?} is not 32 hex digits (as `mdadm --detail` \
                 prints it, xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx); rebuild the initrd with the \
                 right md_arrays"
            ),
            Self::NoMembers {
                uuid,
                waited_ms,
                seen,
            } => write!(
                f,
                "md array {uuid}: no member appeared within {waited_ms} ms. Block devices seen: \
                 {seen}. Check that the initrd has the disks' driver and that the UUID is the \
                 array's (`mdadm --detail --scan`), or raise rd.device_timeout="
            ),
            Self::TooDegraded { array, why } => write!(
                f,
                "md array {array} is too degraded to start: {why}. Connect the missing disks; \
                 if they are gone, start it from a rescue system with `mdadm --assemble --force` \
                 after checking `mdadm --examine` of each member"
            ),
            Self::DegradedRefused { array, missing } => write!(
                f,
                "md array {array} is missing slot(s) {missing:?} and allow_degraded is off; \
                 connect the missing disks, or boot it degraded with allow_degraded"
            ),
            Self::Start { array, step } => write!(
                f,
                "md array {array}: {step}; the initrd needs md_mod and the RAID level's \
                 module (raid1), see the kernel messages above"
            ),
        }
    }
}

/// One array stage 1 started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// `md127`
    pub device: String,
    /// `/dev/md/NAME`, when the array has a name.
    pub link: Option<String>,
    pub degraded: bool,
}

/// Find, judge and start the md arrays the config asks for. Waits up to `timeout` for
/// arrays to be complete, then starts degraded ones that may start (with a warning).
/// The first array that cannot start is the error.
pub fn assemble_arrays(
    options: &Stage1Options,
    timeout: Duration,
) -> Result<Vec<Started>, MdError> {
    let Some(wanted) = MdWanted::from_options(options)? else {
        return Ok(Vec::new());
    };
    let start = Instant::now();
    let mut registry = Registry::system();
    registry.wait_until(timeout, |reg| wanted.satisfied(&group(&reg.md_members())));
    let groups = group(&registry.md_members());
    let mut todo: Vec<(Vec<Member>, Option<&MdArray>)> = Vec::new();
    for (uuid, cfg) in &wanted.arrays {
        match groups.get(uuid) {
            Some(members) => todo.push((members.clone(), Some(cfg))),
            None => {
                return Err(MdError::NoMembers {
                    uuid: cfg.uuid.clone(),
                    waited_ms: start.elapsed().as_millis(),
                    seen: registry
                        .devices()
                        .map(|d| d.name.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        }
    }
    if wanted.scan {
        for (uuid, members) in &groups {
            if !wanted.arrays.iter().any(|(u, _)| u == uuid) {
                todo.push((members.clone(), None));
            }
        }
    }
    let mut started = Vec::new();
    for (members, cfg) in todo {
        let Some(j) = judge(&members) else { continue };
        let label = array_label(&j, cfg);
        for (m, why) in &j.left_out {
            log::warn!("md array {label}: {} left out: {why}", m.device);
        }
        let degraded = match &j.verdict {
            Verdict::Complete => false,
            Verdict::Degraded { missing } => {
                if !cfg.is_none_or(|c| c.allow_degraded) {
                    return Err(MdError::DegradedRefused {
                        array: label,
                        missing: missing.clone(),
                    });
                }
                true
            }
            Verdict::TooDegraded(why) => {
                return Err(MdError::TooDegraded {
                    array: label,
                    why: why.clone(),
                })
            }
        };
        let s = start_array(&j, cfg, degraded, &label)?;
        started.push(s);
    }
    Ok(started)
}

/// `root (UUID 1c2b…:…)`, with the member devices, for messages.
fn array_label(j: &Judged, cfg: Option<&MdArray>) -> String {
    let name = cfg
        .and_then(|c| c.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| j.name.clone());
    let devices: Vec<String> = j
        .fresh
        .iter()
        .chain(j.left_out.iter().map(|(m, _)| m))
        .map(|m| m.device.clone())
        .collect();
    format!(
        "{name} (UUID {}, {} of {} devices, members found: {})",
        j.uuid,
        level_name(j.level),
        j.raid_disks,
        if devices.is_empty() {
            "none".into()
        } else {
            devices.join(", ")
        }
    )
}

const SYS_BLOCK: &str = "/sys/block";
const NEW_ARRAY: &str = "/sys/module/md_mod/parameters/new_array";

/// The first free `mdN` from 127 down, as mdadm numbers arrays it names itself.
fn free_md_name() -> Option<String> {
    (0..=127u32)
        .rev()
        .map(|n| format!("md{n}"))
        .find(|n| !Path::new(SYS_BLOCK).join(n).exists())
}

fn write_sys(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

fn start_array(
    j: &Judged,
    cfg: Option<&MdArray>,
    degraded: bool,
    label: &str,
) -> Result<Started, MdError> {
    let err = |step: String| MdError::Start {
        array: label.to_owned(),
        step,
    };
    let md = free_md_name().ok_or_else(|| err("no free md device number".into()))?;
    if !Path::new(NEW_ARRAY).exists() {
        return Err(err(format!(
            "{NEW_ARRAY} is missing: the md_mod module is not loaded"
        )));
    }
    write_sys(Path::new(NEW_ARRAY), &md).map_err(err)?;
    let sys = PathBuf::from(SYS_BLOCK).join(&md).join("md");
    let version = j
        .fresh
        .first()
        .map_or("1.2".into(), |m| m.sb.metadata_version());
    write_sys(&sys.join("metadata_version"), &version).map_err(err)?;
    for m in &j.fresh {
        let dev =
            std::fs::read_to_string(Path::new("/sys/class/block").join(&m.device).join("dev"))
                .map_err(|e| err(format!("reading the device number of {}: {e}", m.device)))?;
        write_sys(&sys.join("new_dev"), dev.trim())
            .map_err(|e| err(format!("adding member {}: {e}", m.device)))?;
    }
    write_sys(&sys.join("array_state"), "active").map_err(|e| err(format!("starting: {e}")))?;
    let name = cfg
        .and_then(|c| c.name.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| {
            j.fresh
                .first()
                .map(|m| m.sb.short_name().to_owned())
                .filter(|n| !n.is_empty())
        });
    let link = name.and_then(|n| {
        let _ = std::fs::create_dir_all("/dev/md");
        let path = format!("/dev/md/{n}");
        match std::os::unix::fs::symlink(format!("../{md}"), &path) {
            Ok(()) => Some(path),
            Err(e) => {
                log::warn!("cannot link {path} to /dev/{md}: {e}");
                None
            }
        }
    });
    let members: Vec<&str> = j.fresh.iter().map(|m| m.device.as_str()).collect();
    if degraded {
        let missing = match &j.verdict {
            Verdict::Degraded { missing } => format!("{missing:?}"),
            _ => String::new(),
        };
        log::warn!(
            "md array {label} started DEGRADED as /dev/{md} with {}: slot(s) {missing} missing; \
             once the disk is back or replaced, add it with `mdadm /dev/{md} --add DEVICE`",
            members.join(", ")
        );
    } else {
        log::info!(
            "md array {label} started as /dev/{md} with {}",
            members.join(", ")
        );
    }
    Ok(Started {
        device: md,
        link,
        degraded,
    })
}

#[cfg(test)]
mod tests;
