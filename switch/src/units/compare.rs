//! Does a changed unit file need a restart, a reload, or nothing? NixOS's rules: any
//! difference restarts, except that `[Unit]` keys which do not affect a running unit are
//! ignored, a changed `X-Reload-Triggers` reloads, and a mount whose only change is
//! `[Mount] Options` is remounted (reloaded).

use super::ini::UnitInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Comparison {
    Equal,
    NeedsReload,
    NeedsRestart,
}

/// `[Unit]` keys whose change never requires touching the running unit (the list
/// `switch-to-configuration` uses; `X-Reload-Triggers` is handled separately).
pub const IGNORED_UNIT_KEYS: &[&str] = &[
    "Description",
    "Documentation",
    "OnFailure",
    "OnSuccess",
    "OnFailureJobMode",
    "IgnoreOnIsolate",
    "StopWhenUnneeded",
    "RefuseManualStart",
    "RefuseManualStop",
    "AllowIsolate",
    "CollectMode",
    "SourcePath",
];

const RELOAD_TRIGGERS: &str = "X-Reload-Triggers";

/// What one differing key asks for.
fn key_change(
    section: &str,
    key: &str,
    old: Option<&Vec<String>>,
    new: Option<&Vec<String>>,
) -> Comparison {
    if section == "Unit" {
        if key == RELOAD_TRIGGERS {
            // A trigger that disappeared asks for nothing (as in NixOS); a new or changed one
            // reloads.
            return if new.is_some() {
                Comparison::NeedsReload
            } else {
                Comparison::Equal
            };
        }
        if IGNORED_UNIT_KEYS.contains(&key) {
            return Comparison::Equal;
        }
    }
    if section == "Mount" && key == "Options" && old.is_some() && new.is_some() {
        return Comparison::NeedsReload;
    }
    Comparison::NeedsRestart
}

/// Compare the unit as it is running (`old`) with the new generation's (`new`).
pub fn compare(old: &UnitInfo, new: &UnitInfo) -> Comparison {
    let mut result = Comparison::Equal;
    let empty = Default::default();
    let names = old.sections.keys().chain(new.sections.keys());
    for section in names {
        let (o, n) = (old.sections.get(section), new.sections.get(section));
        // A section other than [Unit] appearing or disappearing is a change even when empty.
        if section != "Unit" && (o.is_none() || n.is_none()) {
            return Comparison::NeedsRestart;
        }
        let (o, n) = (o.unwrap_or(&empty), n.unwrap_or(&empty));
        for key in o.keys().chain(n.keys()) {
            let (ov, nv) = (o.get(key), n.get(key));
            if ov == nv {
                continue;
            }
            result = result.max(key_change(section, key, ov, nv));
            if result == Comparison::NeedsRestart {
                return result;
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(text: &str) -> UnitInfo {
        UnitInfo::parse("test", text).expect("parse")
    }

    #[test]
    fn table() {
        use Comparison::*;
        let cases: &[(&str, &str, &str, Comparison)] = &[
            ("both empty", "", "", Equal),
            ("empty [Unit] dropped", "[Unit]\n", "", Equal),
            (
                "trigger dropped",
                "[Unit]\nX-Reload-Triggers=a\n",
                "",
                Equal,
            ),
            ("other empty section dropped", "[Foo]\n", "", NeedsRestart),
            ("section added", "", "[Service]\n", NeedsRestart),
            (
                "trigger added",
                "",
                "[Unit]\nX-Reload-Triggers=a\n",
                NeedsReload,
            ),
            (
                "trigger changed",
                "[Unit]\nX-Reload-Triggers=a\n",
                "[Unit]\nX-Reload-Triggers=b\n",
                NeedsReload,
            ),
            (
                "description only",
                "[Unit]\nDescription=a\n",
                "[Unit]\nDescription=b\n",
                Equal,
            ),
            (
                "ignored key added",
                "[Unit]\n",
                "[Unit]\nDocumentation=man:x\n",
                Equal,
            ),
            (
                "After changed",
                "[Unit]\nAfter=a\n",
                "[Unit]\nAfter=b\n",
                NeedsRestart,
            ),
            (
                "ExecStart changed",
                "[Service]\nExecStart=/a\n",
                "[Service]\nExecStart=/b\n",
                NeedsRestart,
            ),
            (
                "value order matters",
                "[Service]\nE=1\nE=2\n",
                "[Service]\nE=2\nE=1\n",
                NeedsRestart,
            ),
            (
                "key removed",
                "[Service]\nA=1\nB=2\n",
                "[Service]\nA=1\n",
                NeedsRestart,
            ),
            (
                "mount options",
                "[Mount]\nOptions=rw\n",
                "[Mount]\nOptions=ro\n",
                NeedsReload,
            ),
            (
                "mount options added",
                "[Mount]\nWhat=/dev/a\n",
                "[Mount]\nWhat=/dev/a\nOptions=ro\n",
                NeedsRestart,
            ),
            (
                "mount type",
                "[Mount]\nType=ext4\n",
                "[Mount]\nType=btrfs\n",
                NeedsRestart,
            ),
            (
                "install ignored",
                "[Install]\nWantedBy=a\n",
                "[Install]\nWantedBy=b\n",
                Equal,
            ),
            (
                "trigger and restart",
                "[Unit]\nX-Reload-Triggers=a\n[Service]\nA=1\n",
                "[Unit]\nX-Reload-Triggers=b\n[Service]\nA=2\n",
                NeedsRestart,
            ),
            (
                "same",
                "[Unit]\nAfter=a\n[Service]\nExecStart=/a\n",
                "[Unit]\nAfter=a\n[Service]\nExecStart=/a\n",
                Equal,
            ),
        ];
        for (name, old, new, want) in cases {
            assert_eq!(compare(&u(old), &u(new)), *want, "{name}");
        }
    }
}
