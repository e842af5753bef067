//! `/proc/self/mountinfo`, the kernel's mount table with one line per mount:
//! `id parent major:minor root mount-point per-mount-options [optional...] - type source super-options`.

/// One line of mountinfo, the fields Stagehand needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `(major, minor)` of the mounted device; major 0 for tmpfs, proc and other
    /// anonymous devices.
    pub devno: (u32, u32),
    /// Where it is mounted, with the kernel's octal escapes (`\040`) decoded.
    pub mount_point: String,
    /// Per-mount options (`rw,nosuid,relatime`): `ro` here means this mount is read-only.
    pub options: String,
}

impl Mount {
    pub fn is_read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Parse mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let (maj, min) = fields.nth(2)?.split_once(':')?;
            let mount_point = unescape_octal(fields.nth(1)?);
            let options = fields.next()?.to_owned();
            Some(Mount {
                devno: (maj.parse().ok()?, min.parse().ok()?),
                mount_point,
                options,
            })
        })
        .collect()
}

/// The running system's mounts (empty when `/proc` is not mounted).
pub fn read() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// The last (topmost) mount at `mount_point`.
pub fn find<'a>(mounts: &'a [Mount], mount_point: &str) -> Option<&'a Mount> {
    mounts.iter().rev().find(|m| m.mount_point == mount_point)
}

/// Undo the `\ooo` octal escapes mountinfo and fstab use for space, tab, newline and
/// backslash (`\040`, `\011`, `\012`, `\134`). `\777` is no byte and stays as written.
pub fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&byte) = b.get(i) {
        let digits = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (byte, digits) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                match u8::try_from(v) {
                    Ok(v) => out.push(v),
                    Err(_) => {
                        out.push(b'\\');
                        out.extend_from_slice(d);
                    }
                }
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                          23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw\n\
                          30 22 253:0 /nix/store /nix/store ro,relatime shared:1 - ext4 /dev/vda rw\n\
                          40 22 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw\n\
                          garbage\n";

    #[test]
    fn fields_and_escapes() {
        let m = parse(SAMPLE);
        let points: Vec<&str> = m.iter().map(|m| m.mount_point.as_str()).collect();
        assert_eq!(points, ["/", "/dev", "/nix/store", "/mnt/with space"]);
        assert_eq!(m[0].devno, (253, 0));
        assert_eq!(m[1].devno, (0, 5));
        assert!(!m[0].is_read_only());
        assert!(find(&m, "/nix/store").expect("store").is_read_only());
        assert!(find(&m, "/absent").is_none());
    }

    #[test]
    fn topmost_mount_wins() {
        let text = "1 0 8:1 / /nix/store rw - ext4 /dev/sda1 rw\n\
                    2 1 8:1 /nix/store /nix/store ro - ext4 /dev/sda1 rw\n";
        assert!(find(&parse(text), "/nix/store")
            .expect("store")
            .is_read_only());
    }
}
