//! fstab-style mount options split the way mount(8) splits them: the generic ones become
//! `MS_*` flags, `x-*` options are for userspace tools and dropped, the rest is the data
//! string the filesystem driver parses.

use rustix::mount::MountFlags;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MountFlags,
    /// Filesystem-specific options, comma-joined (`data=ordered,errors=remount-ro`).
    pub data: String,
}

pub fn parse(options: &[String]) -> MountOptions {
    let mut flags = MountFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for opt in options.iter().flat_map(|o| o.split(',')) {
        match opt {
            "" | "defaults" | "auto" | "noauto" | "nofail" | "user" | "nouser" | "users"
            | "_netdev" => {}
            o if o.starts_with("x-") || o.starts_with("comment=") => {}
            "ro" => flags |= MountFlags::RDONLY,
            "rw" => flags.remove(MountFlags::RDONLY),
            "nosuid" => flags |= MountFlags::NOSUID,
            "suid" => flags.remove(MountFlags::NOSUID),
            "nodev" => flags |= MountFlags::NODEV,
            "dev" => flags.remove(MountFlags::NODEV),
            "noexec" => flags |= MountFlags::NOEXEC,
            "exec" => flags.remove(MountFlags::NOEXEC),
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "async" => flags.remove(MountFlags::SYNCHRONOUS),
            "dirsync" => flags |= MountFlags::DIRSYNC,
            "noatime" => flags |= MountFlags::NOATIME,
            "atime" => flags.remove(MountFlags::NOATIME),
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "norelatime" => flags.remove(MountFlags::RELATIME),
            "strictatime" => flags |= MountFlags::STRICTATIME,
            "lazytime" => flags |= MountFlags::LAZYTIME,
            "silent" => flags |= MountFlags::SILENT,
            "bind" => flags |= MountFlags::BIND,
            "rbind" => flags |= MountFlags::BIND | MountFlags::REC,
            o => data.push(o),
        }
    }
    MountOptions {
        flags,
        data: data.join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_options_become_flags_and_x_options_vanish() {
        let o = parse(&[
            "defaults".into(),
            "noatime,nosuid".into(),
            "x-systemd.device-timeout=5s".into(),
            "data=ordered".into(),
            "errors=remount-ro".into(),
        ]);
        assert_eq!(o.flags, MountFlags::NOATIME | MountFlags::NOSUID);
        assert_eq!(o.data, "data=ordered,errors=remount-ro");
    }

    #[test]
    fn later_option_wins() {
        assert_eq!(
            parse(&["ro".into(), "rw".into()]).flags,
            MountFlags::empty()
        );
        assert_eq!(parse(&["rw,ro".into()]).flags, MountFlags::RDONLY);
        assert_eq!(parse(&[]).data, "");
    }
}
