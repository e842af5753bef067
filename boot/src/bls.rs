//! Boot Loader Specification type #1 entry files: render, parse, sort, and predict which
//! entry systemd-boot boots by default.

use std::cmp::Ordering;

use stagehand_common::glob;

use super::entry_name::{BootState, EntryName};
use super::version;

/// The keys of a type #1 entry that we write or need for sorting. Keys we do not model are
/// kept in `other` so that parsing and rendering a foreign entry loses nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub title: Option<String>,
    pub version: Option<String>,
    pub machine_id: Option<String>,
    pub sort_key: Option<String>,
    pub linux: Option<String>,
    /// Used in order; the key may repeat.
    pub initrd: Vec<String>,
    /// Concatenated in order; the key may repeat.
    pub options: Vec<String>,
    pub devicetree: Option<String>,
    pub other: Vec<(String, String)>,
}

impl Entry {
    /// Render in NixOS's line order (`title, version, linux, initrd, options, machine-id,
    /// devicetree, sort-key`), one space between key and value, `\n` line ends.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| {
            out.push_str(k);
            out.push(' ');
            out.push_str(v);
            out.push('\n');
        };
        if let Some(v) = &self.title {
            line("title", v);
        }
        if let Some(v) = &self.version {
            line("version", v);
        }
        if let Some(v) = &self.linux {
            line("linux", v);
        }
        for v in &self.initrd {
            line("initrd", v);
        }
        for v in &self.options {
            line("options", v);
        }
        if let Some(v) = &self.machine_id {
            line("machine-id", v);
        }
        if let Some(v) = &self.devicetree {
            line("devicetree", v);
        }
        if let Some(v) = &self.sort_key {
            line("sort-key", v);
        }
        for (k, v) in &self.other {
            line(k, v);
        }
        out
    }

    /// Parse entry text the way loaders do: `#` comments and blank lines skipped, the first
    /// word is the key, the rest of the line (after the run of spaces/tabs) the value. Never
    /// fails: an unreadable line is simply not an entry key.
    pub fn parse(text: &str) -> Entry {
        let mut e = Entry::default();
        for raw in text.lines() {
            let line = raw.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.find([' ', '\t']) {
                Some(i) => (&line[..i], line[i..].trim()),
                None => (line, ""),
            };
            let v = value.to_string();
            match key {
                "title" => e.title = Some(v),
                "version" => e.version = Some(v),
                "machine-id" => e.machine_id = Some(v),
                "sort-key" => e.sort_key = Some(v),
                "linux" => e.linux = Some(v),
                "initrd" => e.initrd.push(v),
                "options" => e.options.push(v),
                "devicetree" => e.devicetree = Some(v),
                _ => e.other.push((key.to_string(), v)),
            }
        }
        e
    }
}

/// What the loader's menu order depends on for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MenuItem {
    pub name: EntryName,
    pub sort_key: Option<String>,
    pub machine_id: Option<String>,
    pub version: Option<String>,
}

impl MenuItem {
    pub fn new(file_name: &str, entry: &Entry) -> Option<MenuItem> {
        Some(MenuItem {
            name: EntryName::from_file_name(file_name)?,
            sort_key: entry.sort_key.clone(),
            machine_id: entry.machine_id.clone(),
            version: entry.version.clone(),
        })
    }
}

/// strcmp on UTF-8 where unset or empty sorts lowest (spec §Alphanumerical Order).
fn cmp_text(a: Option<&str>, b: Option<&str>) -> Ordering {
    a.unwrap_or("").as_bytes().cmp(b.unwrap_or("").as_bytes())
}

/// The menu order of the Boot Loader Specification §Sorting, with systemd-boot's
/// tie-breaks (`config_entry_compare`). `Less` = shown earlier.
pub fn compare(a: &MenuItem, b: &MenuItem) -> Ordering {
    // 1. Bad entries after everything else.
    let a_bad = a.name.state() == BootState::Bad;
    let b_bad = b.name.state() == BootState::Bad;
    a_bad
        .cmp(&b_bad)
        // 3. An entry with sort-key before one without.
        .then_with(|| b.sort_key.is_some().cmp(&a.sort_key.is_some()))
        .then_with(|| {
            // 2. Both with sort-key: sort-key up, machine-id up, version down.
            if a.sort_key.is_some() && b.sort_key.is_some() {
                cmp_text(a.sort_key.as_deref(), b.sort_key.as_deref())
                    .then_with(|| cmp_text(a.machine_id.as_deref(), b.machine_id.as_deref()))
                    .then_with(|| {
                        version::compare(
                            b.version.as_deref().unwrap_or(""),
                            a.version.as_deref().unwrap_or(""),
                        )
                    })
            } else {
                Ordering::Equal
            }
        })
        // 4. The file name without suffix (and counter), version order down.
        .then_with(|| version::compare(&b.name.stem, &a.name.stem))
        // 5. Same entry but for the counter: more tries left first, then fewer tries done.
        .then_with(|| match (a.name.counter, b.name.counter) {
            (Some(ac), Some(bc)) => bc
                .left
                .cmp(&ac.left)
                .then_with(|| ac.done_or_zero().cmp(&bc.done_or_zero())),
            _ => Ordering::Equal,
        })
}

/// Sort into menu order (stable, so equal items keep their order).
pub fn sort(items: &mut [MenuItem]) {
    items.sort_by(compare);
}

/// Which item systemd-boot boots without EFI-variable overrides: the first in menu order
/// whose ID matches the `loader.conf` `default` glob, or the first item without a `default`.
/// Both sides are lower-cased, as systemd-boot does; the ID is matched with and without its
/// suffix because loader versions disagree on which one the ID is. `items` must be sorted.
pub fn select_default(items: &[MenuItem], default_glob: Option<&str>) -> Option<usize> {
    let Some(pattern) = default_glob else {
        return if items.is_empty() { None } else { Some(0) };
    };
    let pattern = pattern.to_ascii_lowercase();
    items
        .iter()
        .position(|i| {
            let with_suffix = i.name.file_name().to_ascii_lowercase();
            let without = format!(
                "{}{}",
                i.name.stem,
                i.name.counter.map(|c| c.to_string()).unwrap_or_default()
            )
            .to_ascii_lowercase();
            glob::matches(pattern.as_bytes(), without.as_bytes())
                || glob::matches(pattern.as_bytes(), with_suffix.as_bytes())
        })
        // systemd-boot falls back to the first entry when the pattern matches nothing.
        .or(if items.is_empty() { None } else { Some(0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(
        file: &str,
        sort_key: Option<&str>,
        machine_id: Option<&str>,
        version: Option<&str>,
    ) -> MenuItem {
        MenuItem {
            name: EntryName::from_file_name(file).expect(file),
            sort_key: sort_key.map(str::to_string),
            machine_id: machine_id.map(str::to_string),
            version: version.map(str::to_string),
        }
    }

    fn order(mut items: Vec<MenuItem>) -> Vec<String> {
        sort(&mut items);
        items.iter().map(|i| i.name.file_name()).collect()
    }

    #[test]
    fn bad_entries_sort_last() {
        let got = order(vec![
            item("a+0-3.conf", Some("fedora"), None, Some("9")),
            item("b.conf", None, None, None),
            item("c+2-1.conf", Some("fedora"), None, Some("1")),
        ]);
        assert_eq!(got, ["c+2-1.conf", "b.conf", "a+0-3.conf"]);
    }

    #[test]
    fn sort_key_up_machine_id_up_version_down() {
        let got = order(vec![
            item("f1.conf", Some("fedora"), Some("bb"), Some("6.1")),
            item("f2.conf", Some("fedora"), Some("aa"), Some("6.1")),
            item("f3.conf", Some("fedora"), Some("aa"), Some("6.10")),
            item("d1.conf", Some("debian"), Some("ff"), Some("5.0")),
            item("n1.conf", Some("nixos"), None, Some("1")),
        ]);
        assert_eq!(got, ["d1.conf", "f3.conf", "f2.conf", "f1.conf", "n1.conf"]);
    }

    #[test]
    fn entries_with_sort_key_first_then_file_names_version_down() {
        let got = order(vec![
            item(
                "6a9857a393724b7a981ebb5b8495b9ea-3.8.0-2.fc19.x86_64.conf",
                None,
                None,
                None,
            ),
            item(
                "6a9857a393724b7a981ebb5b8495b9ea-3.10.0-1.fc19.x86_64.conf",
                None,
                None,
                None,
            ),
            item("zzz.conf", Some("fedora"), None, Some("1")),
        ]);
        assert_eq!(
            got,
            [
                "zzz.conf",
                "6a9857a393724b7a981ebb5b8495b9ea-3.10.0-1.fc19.x86_64.conf",
                "6a9857a393724b7a981ebb5b8495b9ea-3.8.0-2.fc19.x86_64.conf",
            ]
        );
    }

    #[test]
    fn unset_and_empty_compare_lowest_and_equal() {
        let got = order(vec![
            item("x.conf", Some("k"), Some("ab"), Some("1")),
            item("y.conf", Some("k"), None, Some("1")),
            item("z.conf", Some("k"), Some(""), Some("1")),
        ]);
        // y and z tie on machine-id and version; the name decides, version order down.
        assert_eq!(got, ["z.conf", "y.conf", "x.conf"]);
    }

    /// The spec's note: entries differing only in the counter sort by tries.
    #[test]
    fn counters_break_ties() {
        let got = order(vec![
            item("e+0-5.conf", None, None, None),
            item("e+0-3.conf", None, None, None),
            item("e+1-2.conf", None, None, None),
            item("e+2-1.conf", None, None, None),
        ]);
        assert_eq!(
            got,
            ["e+2-1.conf", "e+1-2.conf", "e+0-3.conf", "e+0-5.conf"]
        );
    }

    #[test]
    fn generations_newest_first() {
        let got = order(
            (1..=11)
                .map(|n| {
                    item(
                        &format!("nixos-generation-{n}.conf"),
                        Some("nixos"),
                        None,
                        Some(&format!("Generation {n} NixOS, built on 2026-01-01")),
                    )
                })
                .collect(),
        );
        assert_eq!(got[0], "nixos-generation-11.conf");
        assert_eq!(got[1], "nixos-generation-10.conf");
        assert_eq!(got[10], "nixos-generation-1.conf");
    }

    /// The known systemd-boot trap (systemd#15256): an exact `default` keeps a bad entry
    /// selected; a glob over every generation falls back to the next good one.
    #[test]
    fn glob_default_skips_a_bad_entry_but_an_exact_one_does_not() {
        let mut items = vec![
            item(
                "nixos-generation-2+0-3.conf",
                Some("nixos"),
                None,
                Some("Generation 2"),
            ),
            item(
                "nixos-generation-1.conf",
                Some("nixos"),
                None,
                Some("Generation 1"),
            ),
            item("other-os.conf", Some("zzz"), None, Some("1")),
        ];
        sort(&mut items);
        let glob = select_default(&items, Some("nixos-generation-*")).expect("match");
        assert_eq!(items[glob].name.stem, "nixos-generation-1");
        let exact = select_default(&items, Some("nixos-generation-2+0-3")).expect("match");
        assert_eq!(items[exact].name.stem, "nixos-generation-2");
        assert_eq!(select_default(&items, None), Some(0));
        assert_eq!(select_default(&[], Some("x")), None);
        // Upper case in either place does not matter.
        let up = select_default(&items, Some("NIXOS-GENERATION-1*")).expect("match");
        assert_eq!(items[up].name.stem, "nixos-generation-1");
    }

    #[test]
    fn parse_and_render() {
        let text = "# comment\ntitle  Fedora 19 (Rawhide)\nsort-key\tfedora\n\nversion 3.8.0\n\
                    options root=UUID=x quiet\noptions rw\nlinux /a/linux\ninitrd /a/initrd\n\
                    initrd /a/ucode\narchitecture x64\n";
        let e = Entry::parse(text);
        assert_eq!(e.title.as_deref(), Some("Fedora 19 (Rawhide)"));
        assert_eq!(e.sort_key.as_deref(), Some("fedora"));
        assert_eq!(e.options, ["root=UUID=x quiet", "rw"]);
        assert_eq!(e.initrd, ["/a/initrd", "/a/ucode"]);
        assert_eq!(e.other, [("architecture".to_string(), "x64".to_string())]);
        assert_eq!(Entry::parse(&e.render()), e);
    }
}
