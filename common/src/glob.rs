//! Shell-style wildcard matching as `fnmatch(3)` does it with no flags, on bytes.
//!
//! Two users with the same semantics: systemd-boot's `default` pattern in `loader.conf`
//! (systemd matches it with `fnmatch(pattern, id, 0)`), and kernel module aliases, which kmod
//! matches with `fnmatch(pattern, alias, 0)` too. So `*`, `?`, `[...]` (with `!`/`^`
//! negation and ranges, `]` first in a class is literal, an unclosed `[` is literal) and a
//! backslash escaping the next character outside classes. No `FNM_PATHNAME`: `/` is an
//! ordinary character. Bytes, not characters: both inputs are ASCII in practice.
//!
//! Iterative, with one backtrack point (the last `*` seen): once the matcher passes a later
//! `*` it never returns to an earlier one, which is correct because `*` matches anything.
//! So the work is at most `pattern.len() * text.len()` steps and no pattern can make it
//! exponential.

/// Does `text` match `pattern`?
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // (index of the `*` in the pattern, index in the text it has been tried against)
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = text.get(t) {
        if let Some(step) = step(pattern, p, c) {
            match step {
                Step::Star => {
                    star = Some((p, t));
                    p += 1;
                }
                Step::Consumed(next) => {
                    p = next;
                    t += 1;
                }
            }
            continue;
        }
        // Mismatch: let the last `*` swallow one more byte, or fail.
        let Some((sp, st)) = star else {
            return false;
        };
        p = sp + 1;
        t = st + 1;
        star = Some((sp, st + 1));
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|c| *c == b'*'))
}

enum Step {
    /// A `*` at the current position: it matches nothing yet.
    Star,
    /// The text byte matched; the pattern continues at this index.
    Consumed(usize),
}

/// Match one text byte `c` against the pattern element at `p`; `None` on a mismatch or at
/// the end of the pattern.
fn step(pattern: &[u8], p: usize, c: u8) -> Option<Step> {
    match *pattern.get(p)? {
        b'*' => Some(Step::Star),
        b'?' => Some(Step::Consumed(p + 1)),
        b'[' => match class(pattern, p, c) {
            Some((true, next)) => Some(Step::Consumed(next)),
            Some((false, _)) => None,
            // An unclosed `[` is a literal.
            None => (c == b'[').then_some(Step::Consumed(p + 1)),
        },
        b'\\' => match pattern.get(p + 1) {
            Some(&escaped) => (escaped == c).then_some(Step::Consumed(p + 2)),
            // A trailing backslash is a literal.
            None => (c == b'\\').then_some(Step::Consumed(p + 1)),
        },
        literal => (literal == c).then_some(Step::Consumed(p + 1)),
    }
}

/// Match `c` against the bracket expression starting at `pattern[start] == '['`. Returns
/// whether it matched and the index after `]`, or `None` if the bracket is not closed.
fn class(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *pattern.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        match (pattern.get(i + 1), pattern.get(i + 2)) {
            (Some(b'-'), Some(&hi)) if hi != b']' => {
                matched |= lo <= c && c <= hi;
                i += 3;
            }
            _ => {
                matched |= lo == c;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn m(p: &str, t: &str) -> bool {
        matches(p.as_bytes(), t.as_bytes())
    }

    #[test]
    fn fnmatch_semantics() {
        assert!(m("nixos-generation-*", "nixos-generation-5+3"));
        assert!(m("*", ""));
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[!a-c]x", "bx"));
        assert!(!m("[^a-c]x", "bx"));
        assert!(m("[!a-c]x", "dx"));
        assert!(m("x[0-9]y", "x5y"));
        assert!(m("[a-]", "-"));
        assert!(m("[]]", "]"));
        assert!(m("[!]]", "a"));
        assert!(!m("[!]]", "]"));
        assert!(m("[", "["));
        assert!(m("a[b", "a[b"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "a"));
        assert!(m("a\\", "a\\"));
        assert!(!m("abc", "abcd"));
        assert!(!m("abcd", "abc"));
        assert!(m("a/*", "a/b/c"), "no FNM_PATHNAME: * crosses /");
        assert!(m(
            "pci:v00008086d*sv*sd*bc*sc*i*",
            "pci:v00008086d00001234sv0sd0bc01sc06i01"
        ));
    }

    #[test]
    fn hostile_patterns_finish_quickly() {
        let text = "a".repeat(20_000);
        let start = Instant::now();
        assert!(!m(&format!("{}b", "a*".repeat(1_000)), &text));
        assert!(!m(&format!("*{}b", "a".repeat(1_000)), &text));
        assert!(!m(&"*a".repeat(5_000).replace("*a*a", "*a*[b]"), &text));
        assert!(m(&"*a".repeat(1_000), &text));
        // Exponential backtracking would never finish; the bound is generous for a debug
        // build on a loaded machine.
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
    }
}
