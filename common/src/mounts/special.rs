//! The special filesystems of a NixOS system (`boot.specialFileSystems`, after systemd's
//! mount-setup): stage 1 mounts the early ones and moves them into the new root, stage 2
//! and the activation engine's `specialfs` step mount whatever is still missing.

use std::os::unix::fs::DirBuilderExt;

use super::options;

pub struct SpecialFs {
    pub target: &'static str,
    pub fstype: &'static str,
    pub options: &'static str,
    /// Mounted by stage 1 and passed on through `switch_root`.
    pub early: bool,
}

/// In mount order: `/dev` before what lives under it.
pub const SPECIAL_FILESYSTEMS: [SpecialFs; 6] = [
    SpecialFs {
        target: "/proc",
        fstype: "proc",
        options: "nosuid,noexec,nodev",
        early: true,
    },
    SpecialFs {
        target: "/sys",
        fstype: "sysfs",
        options: "nosuid,noexec,nodev",
        early: true,
    },
    SpecialFs {
        target: "/dev",
        fstype: "devtmpfs",
        options: "nosuid,strictatime,mode=755,size=5%",
        early: true,
    },
    SpecialFs {
        target: "/run",
        fstype: "tmpfs",
        options: "nosuid,nodev,strictatime,mode=755,size=25%",
        early: true,
    },
    SpecialFs {
        target: "/dev/shm",
        fstype: "tmpfs",
        options: "nosuid,nodev,strictatime,mode=1777,size=50%",
        early: false,
    },
    SpecialFs {
        target: "/dev/pts",
        fstype: "devpts",
        options: "noexec,nosuid,mode=620,ptmxmode=0666,gid=3",
        early: false,
    },
];

impl SpecialFs {
    /// Create the mount point and mount. A mount the kernel already made (devtmpfs with
    /// CONFIG_DEVTMPFS_MOUNT) answers EBUSY, which counts as done.
    pub fn mount(&self) -> Result<(), String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(self.target)
            .map_err(|e| format!("cannot create {}: {e}", self.target))?;
        let opts = options::parse(&[self.options.to_owned()]);
        let data = std::ffi::CString::new(opts.data)
            .map_err(|_| format!("options for {} contain a NUL byte", self.target))?;
        match rustix::mount::mount(
            self.fstype,
            self.target,
            self.fstype,
            opts.flags,
            Some(data.as_c_str()),
        ) {
            Ok(()) | Err(rustix::io::Errno::BUSY) => Ok(()),
            Err(e) => Err(format!(
                "cannot mount {} on {}: {e}",
                self.fstype, self.target
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_before_children_and_options_parse() {
        for (i, fs) in SPECIAL_FILESYSTEMS.iter().enumerate() {
            for later in &SPECIAL_FILESYSTEMS[i + 1..] {
                assert!(
                    !fs.target.starts_with(&format!("{}/", later.target)),
                    "{} before {}",
                    fs.target,
                    later.target
                );
            }
            let o = options::parse(&[fs.options.to_owned()]);
            assert!(
                !o.data.contains("nosuid"),
                "{}: generic options must become flags",
                fs.target
            );
        }
        // Everything stage 1 passes on must be mountable before the late ones.
        let early: Vec<bool> = SPECIAL_FILESYSTEMS.iter().map(|f| f.early).collect();
        assert!(early.windows(2).all(|w| w[0] || !w[1]), "early ones first");
    }
}
