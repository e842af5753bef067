//! `/etc/fstab` of the running system against the new generation's: which mount units to
//! remount, remount from scratch or unmount, and which swap devices to turn off. New
//! filesystems need nothing here: starting the active targets mounts them.

use std::collections::BTreeMap;

use super::name::mount_unit_for;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    pub device: String,
    pub fs_type: String,
    pub options: String,
}

impl Filesystem {
    /// `x-systemd.automount`: systemd's fstab generator makes an automount unit for it.
    pub fn automounted(&self) -> bool {
        self.options.split(',').any(|o| o == "x-systemd.automount")
    }
}

/// `a-b.mount` → `a-b.automount`.
fn automount_unit(mount_unit: &str) -> String {
    format!("{}.automount", mount_unit.trim_end_matches(".mount"))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fstab {
    /// Mount point → entry.
    pub filesystems: BTreeMap<String, Filesystem>,
    /// Swap devices.
    pub swaps: Vec<String>,
}

impl Fstab {
    pub fn parse(text: &str) -> Fstab {
        let mut t = Fstab::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut f = line.split_whitespace();
            let (Some(device), Some(mountpoint), Some(fs_type)) = (f.next(), f.next(), f.next())
            else {
                continue;
            };
            let options = f.next().unwrap_or("").to_string();
            if fs_type == "swap" {
                t.swaps.push(device.to_string());
            } else {
                t.filesystems.insert(
                    mountpoint.to_string(),
                    Filesystem {
                        device: device.to_string(),
                        fs_type: fs_type.to_string(),
                        options,
                    },
                );
            }
        }
        t
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FstabChanges {
    pub reload: Vec<String>,
    pub restart: Vec<String>,
    pub stop: Vec<String>,
    /// Changed, but never unmounted while running (`/`, `/nix`).
    pub skip: Vec<String>,
    pub swapoff: Vec<String>,
}

/// What changed between the running fstab and the new one.
pub fn diff(old: &Fstab, new: &Fstab) -> FstabChanges {
    let mut c = FstabChanges::default();
    for (mountpoint, o) in &old.filesystems {
        let unit = mount_unit_for(mountpoint);
        let Some(n) = new.filesystems.get(mountpoint) else {
            // An automounted filesystem goes with its automount unit (stopping only the
            // mount leaves the automount to mount it again at the next access).
            c.stop.push(if o.automounted() {
                automount_unit(&unit)
            } else {
                unit
            });
            continue;
        };
        let moved = o.fs_type != n.fs_type || o.device != n.device;
        let essential = matches!(mountpoint.as_str(), "/" | "/nix");
        match (moved, essential, o.options != n.options) {
            // `/` and `/nix` cannot be unmounted under a running system: remount if the
            // options changed, otherwise leave the change for the next boot.
            (true, true, true) => c.reload.push(unit),
            (true, true, false) => c.skip.push(unit),
            (true, false, _) => c.restart.push(unit),
            (false, _, true) => c.reload.push(unit),
            (false, _, false) => {}
        }
    }
    for dev in &old.swaps {
        if !new.swaps.contains(dev) {
            c.swapoff.push(dev.clone());
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "# generated\n\
        /dev/vda / ext4 defaults 0 1\n\
        /dev/vdb /nix ext4 defaults 0 2\n\
        /dev/vdc /srv ext4 defaults 0 2\n\
        /dev/vdd /data xfs noatime 0 2\n\
        /dev/vde /gone ext4 defaults 0 2\n\
        /dev/vdf /same ext4 defaults 0 2\n\
        /dev/vdz none swap defaults 0 0\n\
        /dev/vdy none swap defaults 0 0\n\
        broken line\n";
    const NEW: &str = "/dev/vda / ext4 noatime 0 1\n\
        /dev/vdx /nix ext4 defaults 0 2\n\
        /dev/vdc /srv btrfs defaults 0 2\n\
        /dev/vdd /data xfs relatime 0 2\n\
        /dev/vdf /same ext4 defaults 0 2\n\
        /dev/vdy none swap defaults 0 0\n";

    #[test]
    fn changes() {
        let (old, new) = (Fstab::parse(OLD), Fstab::parse(NEW));
        assert_eq!(old.filesystems.len(), 6);
        assert_eq!(old.swaps, ["/dev/vdz", "/dev/vdy"]);
        let c = diff(&old, &new);
        assert_eq!(c.reload, ["-.mount", "data.mount"]);
        assert_eq!(c.restart, ["srv.mount"]);
        assert_eq!(c.stop, ["gone.mount"]);
        assert_eq!(c.skip, ["nix.mount"]);
        assert_eq!(c.swapoff, ["/dev/vdz"]);
        assert_eq!(diff(&new, &new), FstabChanges::default());
    }

    /// switch-test.nix's automount steps: the removed entry stops the automount unit.
    #[test]
    fn a_removed_automount_stops_its_automount_unit() {
        let old = Fstab::parse(
            "/dev/vda / ext4 defaults 0 0\ntmpfs /testauto tmpfs x-systemd.automount 0 0\n",
        );
        let new = Fstab::parse("/dev/vda / ext4 defaults 0 0\n");
        assert_eq!(diff(&old, &new).stop, ["testauto.automount"]);
    }
}
