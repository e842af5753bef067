//! fstab-style device names (`LABEL=`, `UUID=`, `PARTUUID=`, `PARTLABEL=`,
//! `/dev/disk/by-*/…`) and the `/dev/disk/by-*` link names udev would create.
//!
//! udev builds those links from libblkid values passed through `blkid_encode_string`
//! (util-linux `libblkid/src/encode.c`): ASCII letters, digits and `#+-.:=@_` stay,
//! valid multi-byte UTF-8 stays, every other byte (space, `/`, `\`, controls) becomes
//! `\xNN` with lowercase hex. The rules in systemd's `60-persistent-storage.rules` link
//! `by-label`/`by-uuid` from `ID_FS_LABEL_ENC`/`ID_FS_UUID_ENC`, `by-partuuid` from
//! `ID_PART_ENTRY_UUID` and `by-partlabel` from `ID_PART_ENTRY_NAME`.

use super::gpt::{GptPartition, MbrPartition};
use super::{FsInfo, ProbeError};

/// How an fstab entry, `root=` or `resume=` names a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A device path that is not one of the four content-based `/dev/disk/by-*`
    /// directories (`/dev/vda1`, `/dev/mapper/root`, `/dev/disk/by-id/…`). It names a
    /// node, not content, so [`DeviceSpec::matches`] never accepts it; the caller
    /// compares paths.
    Path(String),
    Label(String),
    Uuid(String),
    PartUuid(String),
    PartLabel(String),
}

/// The identifiers of a partition entry that device specs can refer to, whatever the
/// partition-table type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartIds<'a> {
    pub part_uuid: &'a str,
    /// GPT only; empty names count as none.
    pub part_label: Option<&'a str>,
}

impl GptPartition {
    pub fn ids(&self) -> PartIds<'_> {
        PartIds {
            part_uuid: &self.part_uuid,
            part_label: Some(self.part_label.as_str()).filter(|l| !l.is_empty()),
        }
    }
}

impl MbrPartition {
    /// `None` when the disk has no signature and so the partition has no PARTUUID.
    pub fn ids(&self) -> Option<PartIds<'_>> {
        self.part_uuid.as_deref().map(|part_uuid| PartIds {
            part_uuid,
            part_label: None,
        })
    }
}

type MakeSpec = fn(String) -> DeviceSpec;

const TAGS: [(&str, MakeSpec); 4] = [
    ("LABEL=", DeviceSpec::Label),
    ("UUID=", DeviceSpec::Uuid),
    ("PARTUUID=", DeviceSpec::PartUuid),
    ("PARTLABEL=", DeviceSpec::PartLabel),
];

const LINK_DIRS: [(&str, MakeSpec); 4] = [
    ("/dev/disk/by-label/", DeviceSpec::Label),
    ("/dev/disk/by-uuid/", DeviceSpec::Uuid),
    ("/dev/disk/by-partuuid/", DeviceSpec::PartUuid),
    ("/dev/disk/by-partlabel/", DeviceSpec::PartLabel),
];

impl DeviceSpec {
    /// Parse the device field of an fstab entry (or `root=`/`resume=`).
    ///
    /// Tags are upper case as in `mount(8)`; a value may be wrapped in double or
    /// single quotes as libblkid's tag parser allows. The kernel-only `root=` forms
    /// (`PARTUUID=…/PARTNROFF=n`, `major:minor`) are not understood: the first keeps
    /// the suffix in the value and so never matches, the second is rejected. A link under one of the four
    /// content-based `/dev/disk/by-*` directories becomes the matching tag with udev's
    /// `\xNN` escapes undone, because in stage 1 those links do not exist.
    pub fn parse(spec: &str) -> Result<Self, ProbeError> {
        let bad = || ProbeError::BadSpec(spec.to_string());
        for (tag, make) in TAGS {
            if let Some(value) = spec.strip_prefix(tag) {
                let value = unquote(value);
                if value.is_empty() {
                    return Err(bad());
                }
                return Ok(make(value.to_string()));
            }
        }
        if spec.starts_with('/') {
            for (dir, make) in LINK_DIRS {
                if let Some(name) = spec.strip_prefix(dir) {
                    if name.is_empty() || name.contains('/') {
                        return Err(bad());
                    }
                    return Ok(make(udev_unescape(name)));
                }
            }
            return Ok(Self::Path(spec.to_string()));
        }
        Err(bad())
    }

    /// Does a device with filesystem `fs` and GPT entry `part` satisfy this spec?
    /// UUIDs and PARTUUIDs compare case-insensitively (vfat serials print upper case,
    /// people type lower case); labels compare exactly, as udev's links do.
    pub fn matches(&self, fs: Option<&FsInfo>, part: Option<&GptPartition>) -> bool {
        self.matches_ids(fs, part.map(GptPartition::ids))
    }

    /// [`DeviceSpec::matches`] for any partition-table type (use
    /// [`MbrPartition::ids`] for MBR disks).
    pub fn matches_ids(&self, fs: Option<&FsInfo>, part: Option<PartIds<'_>>) -> bool {
        match self {
            Self::Path(_) => false,
            Self::Label(want) => fs.and_then(|f| f.label.as_deref()) == Some(want.as_str()),
            Self::Uuid(want) => fs
                .and_then(|f| f.uuid.as_deref())
                .is_some_and(|u| u.eq_ignore_ascii_case(want)),
            Self::PartUuid(want) => part.is_some_and(|p| p.part_uuid.eq_ignore_ascii_case(want)),
            Self::PartLabel(want) => part.and_then(|p| p.part_label) == Some(want.as_str()),
        }
    }
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// The `/dev/disk/by-label|by-uuid|by-partuuid|by-partlabel/…` links udev would create
/// for a device with filesystem `fs` on GPT entry `part`.
pub fn by_links(fs: Option<&FsInfo>, part: Option<&GptPartition>) -> Vec<String> {
    by_links_ids(fs, part.map(GptPartition::ids))
}

/// [`by_links`] for any partition-table type.
pub fn by_links_ids(fs: Option<&FsInfo>, part: Option<PartIds<'_>>) -> Vec<String> {
    let mut links = Vec::new();
    if let Some(fs) = fs {
        if let Some(label) = &fs.label {
            links.push(format!("/dev/disk/by-label/{}", udev_encode(label)));
        }
        if let Some(uuid) = &fs.uuid {
            links.push(format!("/dev/disk/by-uuid/{}", udev_encode(uuid)));
        }
    }
    if let Some(part) = part {
        links.push(format!(
            "/dev/disk/by-partuuid/{}",
            udev_encode(part.part_uuid)
        ));
        if let Some(label) = part.part_label {
            links.push(format!("/dev/disk/by-partlabel/{}", udev_encode(label)));
        }
    }
    links
}

/// libblkid's `blkid_encode_string`, which udev uses for link names.
pub fn udev_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let keep = if c.is_ascii() {
            c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c)
        } else {
            // libblkid rejects these code points as "invalid UTF-8" and escapes
            // their bytes: noncharacters U+FDD0..U+FDEF and U+xFFFF.
            let u = u32::from(c);
            !((0xFDD0..=0xFDEF).contains(&u) || u & 0xFFFF == 0xFFFF)
        };
        if keep {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out
}

/// Undo udev's `\xNN` escapes (either hex case). A backslash not followed by `x` and
/// two hex digits is kept as is. Bytes that do not form UTF-8 become U+FFFD.
pub fn udev_unescape(s: &str) -> String {
    let src = s.as_bytes();
    let mut out = Vec::with_capacity(src.len());
    let mut i = 0;
    while let Some(&byte) = src.get(i) {
        if byte == b'\\' && src.get(i + 1) == Some(&b'x') {
            let hex = src
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(byte);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(uuid: Option<&str>, label: Option<&str>) -> FsInfo {
        FsInfo {
            fs_type: "ext4",
            uuid: uuid.map(str::to_string),
            label: label.map(str::to_string),
            version: None,
        }
    }

    fn part(uuid: &str, label: &str) -> GptPartition {
        GptPartition {
            number: 1,
            part_uuid: uuid.into(),
            part_label: label.into(),
            type_guid: String::new(),
            first_lba: 2048,
            last_lba: 4095,
            attributes: 0,
        }
    }

    #[test]
    fn parses_tags_and_links() {
        let p = |s| DeviceSpec::parse(s).expect("valid spec");
        assert_eq!(p("LABEL=nixos"), DeviceSpec::Label("nixos".into()));
        assert_eq!(p("LABEL=\"my root\""), DeviceSpec::Label("my root".into()));
        assert_eq!(p("UUID=ABCD-1234"), DeviceSpec::Uuid("ABCD-1234".into()));
        assert_eq!(p("PARTUUID=0a-01"), DeviceSpec::PartUuid("0a-01".into()));
        assert_eq!(p("PARTLABEL=ESP"), DeviceSpec::PartLabel("ESP".into()));
        assert_eq!(
            p("/dev/disk/by-label/my\\x20root\\x2fa"),
            DeviceSpec::Label("my root/a".into())
        );
        assert_eq!(p("/dev/disk/by-uuid/x"), DeviceSpec::Uuid("x".into()));
        assert_eq!(
            p("/dev/disk/by-partuuid/y"),
            DeviceSpec::PartUuid("y".into())
        );
        assert_eq!(
            p("/dev/disk/by-partlabel/EFI\\x20System"),
            DeviceSpec::PartLabel("EFI System".into())
        );
        assert_eq!(p("/dev/vda1"), DeviceSpec::Path("/dev/vda1".into()));
        assert_eq!(
            p("/dev/disk/by-id/virtio-x"),
            DeviceSpec::Path("/dev/disk/by-id/virtio-x".into())
        );
        for bad in [
            "",
            "LABEL=",
            "UUID=\"\"",
            "vda1",
            "label=x",
            "/dev/disk/by-label/",
        ] {
            assert!(
                DeviceSpec::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn matching() {
        let f = fs(Some("abcd-1234"), Some("root"));
        let g = part("8f3c1e2a-0000-4000-8000-000000000001", "nixos root");
        let m = |s: &str, f: Option<&FsInfo>, p: Option<&GptPartition>| {
            DeviceSpec::parse(s).expect("valid spec").matches(f, p)
        };
        assert!(m("UUID=ABCD-1234", Some(&f), None));
        assert!(m("LABEL=root", Some(&f), None));
        assert!(!m("LABEL=Root", Some(&f), None));
        assert!(!m("LABEL=root", None, Some(&g)));
        assert!(m(
            "PARTUUID=8F3C1E2A-0000-4000-8000-000000000001",
            None,
            Some(&g)
        ));
        assert!(m("/dev/disk/by-partlabel/nixos\\x20root", None, Some(&g)));
        assert!(!m("PARTLABEL=nixos", None, Some(&g)));
        assert!(!m("/dev/vda1", Some(&f), Some(&g)));
        // An empty GPT name is no label at all.
        assert!(!DeviceSpec::PartLabel(String::new()).matches(None, Some(&part("x", ""))));
    }

    #[test]
    fn encodes_like_blkid() {
        assert_eq!(udev_encode("my root/a"), "my\\x20root\\x2fa");
        assert_eq!(udev_encode("a\\b"), "a\\x5cb");
        assert_eq!(udev_encode("ok#+-.:=@_Z9"), "ok#+-.:=@_Z9");
        assert_eq!(udev_encode("grüß"), "grüß");
        assert_eq!(udev_encode("\u{FDD0}"), "\\xef\\xb7\\x90");
        assert_eq!(udev_unescape(&udev_encode("a b/c\\d ü")), "a b/c\\d ü");
        assert_eq!(udev_unescape("lone\\x2"), "lone\\x2");
        assert_eq!(udev_unescape("\\X41"), "\\X41");
    }

    #[test]
    fn links() {
        let f = fs(Some("abcd-1234"), Some("my root"));
        let g = part("8f3c1e2a-0000-4000-8000-000000000001", "EFI System");
        assert_eq!(
            by_links(Some(&f), Some(&g)),
            vec![
                "/dev/disk/by-label/my\\x20root",
                "/dev/disk/by-uuid/abcd-1234",
                "/dev/disk/by-partuuid/8f3c1e2a-0000-4000-8000-000000000001",
                "/dev/disk/by-partlabel/EFI\\x20System",
            ]
        );
        assert!(by_links(None, Some(&part("u", ""))).len() == 1);
        assert!(by_links(None, None).is_empty());
    }
}
