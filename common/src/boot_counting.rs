//! What stage 1, stage 2 and the boot crate share about boot counting: where its state and
//! the hand-offs between the stages live, and the `+LEFT[-DONE]` counter grammar of the
//! Boot Loader Specification, parsed here and nowhere else.
//!
//! The grammar names the counter at the end of a name: `<stem>+LEFT` or `<stem>+LEFT-DONE`,
//! LEFT and DONE decimal digits that fit a `u32`. systemd-boot's entry files carry it before
//! their suffix (`nixos-generation-5+2-1.conf`), stage 1's attempt files at the end
//! (`<toplevel basename>+2-1`), and the receipts write a counter as `+2-1`. The map of who
//! writes and reads what is in boot/README.md.

use std::fmt;

/// Expands to the runtime directory of the hand-offs, so that the paths below are spelled
/// out from one literal at compile time.
macro_rules! run_dir {
    () => {
        "/run/stagehand"
    };
}

/// The hand-offs' directory: a tmpfs that stage 1 moves into the new root with `/run`.
pub const RUN_DIR: &str = run_dir!();
/// What stage 1 decided and how long it took (stage 1 writes it, stage 2 and
/// `<toplevel>/init bless` read it).
pub const STAGE1_RECEIPT: &str = concat!(run_dir!(), "/stage1.json");
/// The boot receipt stage 2 writes: stage 1's part, stage 2's times, what was blessed.
pub const BOOT_RECEIPT: &str = concat!(run_dir!(), "/boot.json");
/// Where `<toplevel>/init bless` mounts a device ESP for its rename.
pub const ESP_MOUNT: &str = concat!(run_dir!(), "/esp");
/// Stage 1's per-generation attempt files, on the root filesystem (absolute; stage 1 joins it
/// under the new root).
pub const ATTEMPTS_DIR: &str = "/nix/var/nix/stagehand/boot-attempts";

/// A boot counter: `+LEFT` or `+LEFT-DONE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Counter {
    /// Tries left; 0 means the entry or generation is bad.
    pub left: u32,
    /// Tries done, when the name carries it (missing reads as 0).
    pub done: Option<u32>,
}

impl Counter {
    /// Parse a whole counter, `+LEFT` or `+LEFT-DONE`. Anything else (a sign, spaces, a
    /// number too large for a `u32`, an empty LEFT or DONE) is not a counter.
    pub fn parse(text: &str) -> Option<Counter> {
        Counter::parse_after_plus(text.strip_prefix('+')?)
    }

    /// `LEFT` or `LEFT-DONE`, what follows the `+`.
    fn parse_after_plus(tail: &str) -> Option<Counter> {
        let (left, done) = match tail.split_once('-') {
            Some((l, d)) => (l, Some(d)),
            None => (tail, None),
        };
        let number = |s: &str| -> Option<u32> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        Some(Counter {
            left: number(left)?,
            done: match done {
                Some(d) => Some(number(d)?),
                None => None,
            },
        })
    }

    pub fn done_or_zero(self) -> u32 {
        self.done.unwrap_or(0)
    }

    /// The counter after one more boot: LEFT−1 (not below 0), DONE+1.
    pub fn after_boot(self) -> Counter {
        Counter {
            left: self.left.saturating_sub(1),
            done: Some(self.done_or_zero().saturating_add(1)),
        }
    }
}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.done {
            Some(d) => write!(f, "+{}-{d}", self.left),
            None => write!(f, "+{}", self.left),
        }
    }
}

/// Split a trailing counter off `name`: `("stem", counter)`, the stem possibly empty.
/// `None` when `name` does not end in a counter; a `+` followed by anything else is part of
/// the name.
pub fn split_counter(name: &str) -> Option<(&str, Counter)> {
    let (stem, tail) = name.rsplit_once('+')?;
    Some((stem, Counter::parse_after_plus(tail)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(left: u32, done: Option<u32>) -> Counter {
        Counter { left, done }
    }

    #[test]
    fn the_grammar() {
        let cases: &[(&str, Option<(&str, Counter)>)] = &[
            ("abc-sys+2-1", Some(("abc-sys", c(2, Some(1))))),
            ("abc-sys+3", Some(("abc-sys", c(3, None)))),
            ("foo+09-01", Some(("foo", c(9, Some(1))))),
            ("a+1+2", Some(("a+1", c(2, None)))),
            ("+1-0", Some(("", c(1, Some(0))))),
            ("abc-sys", None),
            ("abc+x-1", None),
            ("abc+1-", None),
            ("abc+-1", None),
            ("abc+", None),
            ("abc+1-2-3", None),
            ("abc+ 1", None),
            ("abc++1", Some(("abc+", c(1, None)))),
            ("abc+99999999999", None),
            ("abc.good", None),
        ];
        for (name, want) in cases {
            assert_eq!(split_counter(name), *want, "{name}");
        }
        assert_eq!(Counter::parse("+2-1"), Some(c(2, Some(1))));
        assert_eq!(Counter::parse("2-1"), None);
        assert_eq!(Counter::parse("good"), None);
    }

    #[test]
    fn counters_print_as_parsed_and_count_down() {
        for text in ["+3", "+2-1", "+0-3"] {
            assert_eq!(
                Counter::parse(text).map(|c| c.to_string()).as_deref(),
                Some(text)
            );
        }
        assert_eq!(c(3, None).after_boot(), c(2, Some(1)));
        assert_eq!(c(0, Some(3)).after_boot(), c(0, Some(4)));
        assert_eq!(c(1, Some(u32::MAX)).after_boot(), c(0, Some(u32::MAX)));
    }

    #[test]
    fn paths_share_the_run_directory() {
        for p in [STAGE1_RECEIPT, BOOT_RECEIPT, ESP_MOUNT] {
            assert_eq!(
                std::path::Path::new(p).parent(),
                Some(std::path::Path::new(RUN_DIR))
            );
        }
        assert_eq!(STAGE1_RECEIPT, "/run/stagehand/stage1.json");
    }
}
