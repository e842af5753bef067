//! systemd unit files as `switch-to-configuration` compares them: section → key → the values
//! in the order they were set, drop-ins applied. An empty assignment (`ExecStart=`) clears
//! what came before, as systemd does. `[Install]` is dropped: it only matters to
//! `systemctl enable`, never to a running unit.

use std::collections::BTreeMap;
use std::fmt;

/// One parsed unit: `section -> key -> values`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitInfo {
    pub sections: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniError {
    /// The file, for the message.
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for IniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

impl std::error::Error for IniError {}

impl UnitInfo {
    /// Apply one file (the unit, then each drop-in in name order) on top of what is there.
    pub fn apply(&mut self, file: &str, text: &str) -> Result<(), IniError> {
        let mut section: Option<String> = None;
        let mut lines = text.lines().enumerate();
        while let Some((i, raw)) = lines.next() {
            let mut line = raw.trim().to_string();
            // A trailing backslash continues the value on the next line (systemd joins the
            // pieces with a space); comment lines inside a continuation are skipped and the
            // value goes on after them, as systemd's parser does.
            while line.ends_with('\\') {
                line.pop();
                let next = lines
                    .by_ref()
                    .map(|(_, l)| l.trim())
                    .find(|l| !is_comment(l));
                match next {
                    Some(next) => {
                        line.push(' ');
                        line.push_str(next);
                    }
                    None => break,
                }
            }
            if line.is_empty() || is_comment(&line) {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let name = rest.strip_suffix(']').ok_or_else(|| IniError {
                    file: file.into(),
                    line: i + 1,
                    message: format!("section header {line:?} has no closing ']'"),
                })?;
                section = Some(name.to_string());
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(IniError {
                    file: file.into(),
                    line: i + 1,
                    message: format!("{line:?} is neither [Section] nor Key=Value"),
                });
            };
            let Some(sec) = &section else {
                return Err(IniError {
                    file: file.into(),
                    line: i + 1,
                    message: format!("{key:?} comes before any [Section]"),
                });
            };
            if sec == "Install" {
                continue;
            }
            let values = self
                .sections
                .entry(sec.clone())
                .or_default()
                .entry(key.trim().to_string())
                .or_default();
            let value = value.trim();
            if value.is_empty() {
                values.clear();
            } else {
                values.push(value.to_string());
            }
        }
        // A section header alone still makes the section exist (its presence is compared).
        if let Some(sec) = section {
            if sec != "Install" {
                self.sections.entry(sec).or_default();
            }
        }
        Ok(())
    }

    pub fn parse(file: &str, text: &str) -> Result<UnitInfo, IniError> {
        let mut u = UnitInfo::default();
        u.apply(file, text)?;
        Ok(u)
    }

    /// The last value of `section.key`.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(section)?
            .get(key)?
            .last()
            .map(String::as_str)
    }

    /// All values of `section.key`, in order.
    pub fn all(&self, section: &str, key: &str) -> &[String] {
        self.sections
            .get(section)
            .and_then(|s| s.get(key))
            .map_or(&[], Vec::as_slice)
    }

    /// A boolean setting, systemd's spellings, `default` when unset or unrecognised.
    pub fn bool(&self, section: &str, key: &str, default: bool) -> bool {
        match self
            .get(section, key)
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("1" | "yes" | "y" | "true" | "t" | "on") => true,
            Some("0" | "no" | "n" | "false" | "f" | "off") => false,
            _ => default,
        }
    }
}

fn is_comment(line: &str) -> bool {
    line.starts_with('#') || line.starts_with(';')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_values_resets_and_install_dropped() {
        let mut u = UnitInfo::parse(
            "a.service",
            "# comment\n[Unit]\nDescription=A\nAfter=x.service\nAfter=y.service\n\n\
             [Service]\nExecStart=/bin/a \\\n  --flag\nEnvironment=A=1\n\
             [Install]\nWantedBy=multi-user.target\n",
        )
        .expect("parse");
        assert_eq!(u.all("Unit", "After"), ["x.service", "y.service"]);
        assert_eq!(u.get("Service", "ExecStart"), Some("/bin/a  --flag"));
        assert_eq!(u.get("Service", "Environment"), Some("A=1"));
        assert!(!u.sections.contains_key("Install"));
        u.apply(
            "a.service.d/override.conf",
            "[Service]\nExecStart=\nExecStart=/bin/b\n",
        )
        .expect("drop-in");
        assert_eq!(u.all("Service", "ExecStart"), ["/bin/b"]);
        // Escapes are kept as written (a device name, not something to decode).
        let u = UnitInfo::parse("m", "[Unit]\nAfter=dev-disk-by\\x2dlabel-root.device\n")
            .expect("parse");
        assert_eq!(
            u.get("Unit", "After"),
            Some("dev-disk-by\\x2dlabel-root.device")
        );
    }

    /// switch-test.nix's `unitWithMultilineValue`: comment lines inside a continued value
    /// are skipped and the value goes on (this used to end the value and then refuse
    /// `blah blah` as neither a section nor a key, failing the switch).
    #[test]
    fn comments_inside_a_continuation() {
        let u = UnitInfo::parse(
            "test.service",
            "[Service]\nExecStart=/bin/true \\\n# ignored\n; ignored\n  blah blah\nType=simple\n",
        )
        .expect("parse");
        assert_eq!(u.get("Service", "ExecStart"), Some("/bin/true  blah blah"));
        assert_eq!(u.get("Service", "Type"), Some("simple"));
    }

    #[test]
    fn booleans_and_errors() {
        let u = UnitInfo::parse("x", "[Service]\nA=yes\nB=0\nC=maybe\nD=On\n").expect("parse");
        assert!(u.bool("Service", "A", false));
        assert!(!u.bool("Service", "B", true));
        assert!(u.bool("Service", "C", true));
        assert!(u.bool("Service", "D", false));
        assert!(!u.bool("Service", "missing", false));
        let e = UnitInfo::parse("bad.service", "[Unit]\nnonsense\n").expect_err("bad");
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("bad.service:2: "), "{e}");
        let e = UnitInfo::parse("bad.service", "Key=1\n").expect_err("no section");
        assert!(e.to_string().contains("before any [Section]"), "{e}");
        let e = UnitInfo::parse("bad.service", "[Unit\n").expect_err("header");
        assert!(e.to_string().contains("closing"), "{e}");
    }
}
