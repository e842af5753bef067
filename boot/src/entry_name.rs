//! Boot-entry file names with boot counters (`<id>+LEFT[-DONE].conf`), and tolerant parsing
//! of the entry IDs systemd-boot reports in `LoaderEntrySelected`.
//!
//! The counter is part of the file name (not its contents) because a rename is the file
//! operation most likely to be atomic on FAT, and it needs no NVRAM write per boot.

use std::fmt;

use stagehand_common::boot_counting;

/// The boot counter of an entry (the grammar is common's, shared with stage 1 and stage 2).
pub use stagehand_common::boot_counting::Counter;

/// What boot counting says about an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootState {
    /// No counter: counting is off for it, or it was blessed.
    Good,
    /// Tries left: still being assessed.
    Indeterminate,
    /// No tries left: failed to boot as often as it was allowed to.
    Bad,
}

impl fmt::Display for BootState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootState::Good => "good",
            BootState::Indeterminate => "indeterminate",
            BootState::Bad => "bad",
        })
    }
}

/// A parsed entry file name: `stem` + optional counter + suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryName {
    /// The name without counter and suffix, as written (case kept).
    pub stem: String,
    pub counter: Option<Counter>,
    /// `.conf` or `.efi` as written, or empty when the ID came without one.
    pub suffix: String,
}

impl EntryName {
    /// Parse a file name in `loader/entries/` (`.conf`) or `EFI/Linux/` (`.efi`). Anything
    /// else is not an entry file.
    pub fn from_file_name(name: &str) -> Option<EntryName> {
        let (base, suffix) = split_suffix(name)?;
        if base.is_empty() {
            return None;
        }
        let (stem, counter) = split_counter(base);
        Some(EntryName {
            stem: stem.to_string(),
            counter,
            suffix: suffix.to_string(),
        })
    }

    /// Parse an entry ID as a loader reports it. systemd-boot has used the file name minus
    /// `.conf`, the file name with `.conf` (`.efi` for UKIs), and since v258 the name with
    /// the counter stripped; any of those is accepted.
    pub fn from_id(id: &str) -> Option<EntryName> {
        let id = id.trim_end_matches('\0').trim();
        if id.is_empty() {
            return None;
        }
        let (base, suffix) = split_suffix(id).unwrap_or((id, ""));
        if base.is_empty() {
            return None;
        }
        let (stem, counter) = split_counter(base);
        Some(EntryName {
            stem: stem.to_string(),
            counter,
            suffix: suffix.to_string(),
        })
    }

    /// The key two names of the same entry share: the stem, lower-cased (FAT and
    /// systemd-boot compare case-insensitively).
    pub fn key(&self) -> String {
        self.stem.to_ascii_lowercase()
    }

    pub fn state(&self) -> BootState {
        match self.counter {
            None => BootState::Good,
            Some(c) if c.left == 0 => BootState::Bad,
            Some(_) => BootState::Indeterminate,
        }
    }

    /// The file name this parses from (counter included).
    pub fn file_name(&self) -> String {
        match self.counter {
            Some(c) => format!("{}{c}{}", self.stem, self.suffix),
            None => format!("{}{}", self.stem, self.suffix),
        }
    }

    /// The same entry marked good: no counter.
    pub fn blessed(&self) -> EntryName {
        EntryName {
            counter: None,
            ..self.clone()
        }
    }
}

/// Split `.conf`/`.efi` (any case) off a name.
fn split_suffix(name: &str) -> Option<(&str, &str)> {
    let dot = name.rfind('.')?;
    let suffix = &name[dot..];
    if suffix.eq_ignore_ascii_case(".conf") || suffix.eq_ignore_ascii_case(".efi") {
        Some((&name[..dot], suffix))
    } else {
        None
    }
}

/// Split a trailing `+LEFT[-DONE]` off a name. A `+` followed by anything else is part of
/// the name, as is a number too large to be a counter.
fn split_counter(base: &str) -> (&str, Option<Counter>) {
    match boot_counting::split_counter(base) {
        Some((stem, counter)) => (stem, Some(counter)),
        None => (base, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(left: u32, done: Option<u32>) -> Option<Counter> {
        Some(Counter { left, done })
    }

    #[test]
    fn counters_in_file_names() {
        let cases: &[(&str, &str, Option<Counter>, BootState)] = &[
            ("foo.conf", "foo", None, BootState::Good),
            ("foo+3.conf", "foo", c(3, None), BootState::Indeterminate),
            (
                "foo+2-1.conf",
                "foo",
                c(2, Some(1)),
                BootState::Indeterminate,
            ),
            ("foo+0-3.conf", "foo", c(0, Some(3)), BootState::Bad),
            ("foo+0.conf", "foo", c(0, None), BootState::Bad),
            (
                "foo+09-01.conf",
                "foo",
                c(9, Some(1)),
                BootState::Indeterminate,
            ),
            (
                "nixos-generation-12+3.conf",
                "nixos-generation-12",
                c(3, None),
                BootState::Indeterminate,
            ),
            (
                "uki-6.1+1-2.efi",
                "uki-6.1",
                c(1, Some(2)),
                BootState::Indeterminate,
            ),
            // Not counters: the spec wants digits right before the suffix.
            ("foo+bar.conf", "foo+bar", None, BootState::Good),
            ("foo+3-x.conf", "foo+3-x", None, BootState::Good),
            ("foo+.conf", "foo+", None, BootState::Good),
            ("foo+3-.conf", "foo+3-", None, BootState::Good),
            (
                "foo+99999999999.conf",
                "foo+99999999999",
                None,
                BootState::Good,
            ),
            ("a+1+2.conf", "a+1", c(2, None), BootState::Indeterminate),
        ];
        for (name, stem, counter, state) in cases {
            let n = EntryName::from_file_name(name).expect(name);
            assert_eq!(&n.stem, stem, "{name}");
            assert_eq!(&n.counter, counter, "{name}");
            assert_eq!(n.state(), *state, "{name}");
        }
        assert_eq!(EntryName::from_file_name("foo.txt"), None);
        assert_eq!(EntryName::from_file_name(".conf"), None);
        assert_eq!(
            EntryName::from_file_name("loader.conf").map(|n| n.stem),
            Some("loader".into())
        );
    }

    #[test]
    fn names_round_trip_and_bless() {
        for name in ["foo.conf", "foo+3.conf", "foo+2-1.conf", "Foo+0-3.EFI"] {
            let n = EntryName::from_file_name(name).expect(name);
            assert_eq!(n.file_name(), name);
        }
        let n = EntryName::from_file_name("nixos-generation-5+1-2.conf").expect("parse");
        assert_eq!(n.blessed().file_name(), "nixos-generation-5.conf");
        assert_eq!(n.blessed().state(), BootState::Good);
    }

    /// Every form systemd-boot versions have used for `LoaderEntrySelected`.
    #[test]
    fn tolerant_entry_ids() {
        let want = "nixos-generation-5";
        for id in [
            "nixos-generation-5",
            "nixos-generation-5.conf",
            "nixos-generation-5+2-1",
            "nixos-generation-5+2-1.conf",
            "nixos-generation-5+3.conf",
            "NixOS-Generation-5.CONF",
            "nixos-generation-5.conf\0",
        ] {
            let n = EntryName::from_id(id).expect(id);
            assert_eq!(n.key(), want, "{id:?}");
        }
        let uki = EntryName::from_id("nixos-generation-5-abc+1.efi").expect("uki");
        assert_eq!(uki.key(), "nixos-generation-5-abc");
        assert_eq!(uki.counter, c(1, None));
        assert_eq!(EntryName::from_id(""), None);
        assert_eq!(EntryName::from_id("\0"), None);
        // Other names are kept whole.
        assert_eq!(
            EntryName::from_id("auto-windows").map(|n| n.key()),
            Some("auto-windows".into())
        );
    }
}
