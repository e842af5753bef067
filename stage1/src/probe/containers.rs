//! Containers of other block devices, as libblkid names them (`luks.c`, `lvm2.c`): a
//! LUKS header (`crypto_LUKS`, UUID and LUKS2 label) and an LVM2 physical-volume label
//! (`LVM2_member`, the PV UUID dashed as lvm2 prints it). Recognising them gives
//! `/dev/disk/by-uuid/<LUKS UUID>`, the name NixOS configurations use for encrypted
//! devices, and keeps a container from being taken for a blank disk.

use std::io::{Read, Seek};

use super::util::{be16, bytes, has_magic, label, le64};
use super::{Disk, FsInfo, ProbeError};

pub(super) fn probe_luks<R: Read + Seek>(
    disk: &mut Disk<'_, R>,
    found: &mut Vec<FsInfo>,
) -> Result<(), ProbeError> {
    let h = disk.head();
    if !has_magic(h, 0, b"LUKS\xba\xbe") || !matches!(be16(h, 6), 1 | 2) {
        return Ok(());
    }
    let uuid = label(bytes(h, 168, 40));
    let name = if be16(h, 6) == 2 {
        label(bytes(h, 24, 48))
    } else {
        None
    };
    found.push(FsInfo {
        fs_type: "crypto_LUKS",
        uuid,
        label: name,
        version: None,
    });
    Ok(())
}

pub(super) fn probe_lvm2<R: Read + Seek>(
    disk: &mut Disk<'_, R>,
    found: &mut Vec<FsInfo>,
) -> Result<(), ProbeError> {
    let h = disk.head();
    for sector in 0..4usize {
        let off = sector * 512;
        if has_magic(h, off, b"LABELONE")
            && has_magic(h, off + 24, b"LVM2 001")
            && le64(h, off + 8) == sector as u64
        {
            let pvh = off + usize::try_from(super::util::le32(h, off + 20)).unwrap_or(0);
            let raw = String::from_utf8_lossy(bytes(h, pvh, 32)).into_owned();
            found.push(FsInfo {
                fs_type: "LVM2_member",
                uuid: Some(crate::layers::lvm::format_uuid(&raw)),
                label: None,
                version: None,
            });
            break;
        }
    }
    Ok(())
}
