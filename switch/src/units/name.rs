//! Unit names: template instances, the name without its type, and the mount unit for a path
//! (what `systemd-escape --path --suffix=mount` prints).

/// For an instance `foo@bar.service`, the template `foo@.service`; `None` otherwise.
pub fn template_of(unit: &str) -> Option<String> {
    let (stem, suffix) = unit.rsplit_once('.')?;
    let (prefix, instance) = stem.split_once('@')?;
    if instance.is_empty() {
        return None;
    }
    Some(format!("{prefix}@.{suffix}"))
}

/// `foo.service` → `foo` (the name a socket-activated service's socket shares).
pub fn base_name(unit: &str) -> &str {
    unit.rsplit_once('.').map_or(unit, |(stem, _)| stem)
}

/// The unit type: `service`, `target`, `mount`, …
pub fn unit_type(unit: &str) -> &str {
    unit.rsplit_once('.').map_or("", |(_, t)| t)
}

/// The mount unit systemd generates for mount point `path`.
pub fn mount_unit_for(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return "-.mount".to_string();
    }
    let joined = parts.join("/");
    let mut out = String::new();
    for (i, b) in joined.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push_str(".mount");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_base_names() {
        assert_eq!(
            template_of("getty@tty1.service").as_deref(),
            Some("getty@.service")
        );
        assert_eq!(
            template_of("foo@a.b.service").as_deref(),
            Some("foo@.service")
        );
        assert_eq!(template_of("getty@.service"), None);
        assert_eq!(template_of("sshd.service"), None);
        assert_eq!(base_name("sshd.service"), "sshd");
        assert_eq!(base_name("x"), "x");
        assert_eq!(unit_type("local-fs.target"), "target");
    }

    #[test]
    fn mount_units_match_systemd_escape() {
        // Expected values: `systemd-escape --path --suffix=mount PATH`.
        assert_eq!(mount_unit_for("/"), "-.mount");
        assert_eq!(mount_unit_for("/nix"), "nix.mount");
        assert_eq!(mount_unit_for("/nix/store"), "nix-store.mount");
        assert_eq!(mount_unit_for("//var//lib/"), "var-lib.mount");
        assert_eq!(mount_unit_for("/mnt/my-disk"), "mnt-my\\x2ddisk.mount");
        assert_eq!(mount_unit_for("/mnt/a b"), "mnt-a\\x20b.mount");
        assert_eq!(mount_unit_for("/.snapshots"), "\\x2esnapshots.mount");
        assert_eq!(mount_unit_for("/srv/a.b"), "srv-a.b.mount");
    }
}
