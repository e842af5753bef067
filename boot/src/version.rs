//! Version comparison of the UAPI Version Format Specification (UAPI.10), which the Boot
//! Loader Specification uses to order `version` fields and entry names.
//!
//! The algorithm follows systemd's `strverscmp_improved`, which is what systemd-boot runs:
//! where the prose of the specification and that code could differ (a numeric segment
//! against an alphabetic one), we side with the code because the point is to predict the
//! loader's menu order.

use std::cmp::Ordering;

/// Characters that take part in a comparison; everything else is a separator and skipped.
fn is_version_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

/// Compare two version strings (`Less` = older).
pub fn compare(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        a = skip_separators(a);
        b = skip_separators(b);

        // `~` sorts lower than anything, even the end of the string (`1~rc1` < `1`).
        let (at, bt) = (a.first() == Some(&b'~'), b.first() == Some(&b'~'));
        if at || bt {
            if at != bt {
                return if at {
                    Ordering::Less
                } else {
                    Ordering::Greater
                };
            }
            a = &a[1..];
            b = &b[1..];
        }

        // Apart from `~`, the string with more left is newer.
        match (a.is_empty(), b.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            (false, false) => {}
        }

        // `-` (release separator), then `^` (patched release), then `.` (point release):
        // each sorts lower than whatever the other string has at that place.
        for sep in [b'-', b'^', b'.'] {
            let (asep, bsep) = (a.first() == Some(&sep), b.first() == Some(&sep));
            if asep || bsep {
                if asep != bsep {
                    return if asep {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    };
                }
                a = &a[1..];
                b = &b[1..];
            }
        }

        let a_digit = a.first().is_some_and(u8::is_ascii_digit);
        let b_digit = b.first().is_some_and(u8::is_ascii_digit);
        if a_digit || b_digit {
            let (an, arest) = split_while(a, u8::is_ascii_digit);
            let (bn, brest) = split_while(b, u8::is_ascii_digit);
            // A number is newer than no number (e.g. `1.1` > `1.a`).
            match (an.is_empty(), bn.is_empty()) {
                (true, false) => return Ordering::Less,
                (false, true) => return Ordering::Greater,
                _ => {}
            }
            let an = strip_zeros(an);
            let bn = strip_zeros(bn);
            // Without leading zeros, a longer number is bigger; equal lengths compare as text.
            let ord = an.len().cmp(&bn.len()).then_with(|| an.cmp(bn));
            if ord != Ordering::Equal {
                return ord;
            }
            a = arest;
            b = brest;
        } else {
            let (aw, arest) = split_while(a, u8::is_ascii_alphabetic);
            let (bw, brest) = split_while(b, u8::is_ascii_alphabetic);
            // Byte order puts every capital before every lower-case letter (`B` < `a`), and a
            // longer word with the same start is newer.
            let ord = aw.cmp(bw);
            if ord != Ordering::Equal {
                return ord;
            }
            a = arest;
            b = brest;
        }
    }
}

fn skip_separators(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|c| !is_version_char(**c)).count();
    &s[n..]
}

fn split_while(s: &[u8], pred: impl Fn(&u8) -> bool) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|c| pred(c)).count();
    s.split_at(n)
}

fn strip_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|c| **c == b'0').count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::{Equal, Greater, Less};

    /// Every example of the Version Format Specification, "Examples" section.
    #[test]
    fn specification_examples() {
        let cases: &[(&str, &str, Ordering)] = &[
            ("11", "11", Equal),
            ("systemd-123", "systemd-123", Equal),
            ("bar-123", "foo-123", Less),
            ("123a", "123", Greater),
            ("123.a", "123", Greater),
            ("123.a", "123.b", Less),
            ("123a", "123.a", Greater),
            ("11α", "11β", Equal),
            ("B", "a", Less),
            ("A", "a", Less),
            ("", "0", Less),
            ("0.", "0", Greater),
            ("0.0", "0", Greater),
            ("0", "~", Greater),
            ("", "~", Greater),
            ("1_", "1", Equal),
            ("_1", "1", Equal),
            ("1_", "1.2", Less),
            ("1_2_3", "1.3.3", Greater),
            ("1+", "1", Equal),
            ("+1", "1", Equal),
            ("1+", "1.2", Less),
            ("1+2+3", "1.3.3", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), *want, "{a:?} vs {b:?}");
            assert_eq!(compare(b, a), want.reverse(), "{b:?} vs {a:?}");
        }
    }

    /// The specification's chain: each entry is smaller than every entry to its right.
    #[test]
    fn specification_chain_is_strictly_increasing() {
        let chain = [
            "122.1",
            "123~rc1-1",
            "123",
            "123-a",
            "123-a.1",
            "123-1",
            "123-1.1",
            "123^post1",
            "123.a-1",
            "123.1-1",
            "123a-1",
            "124-1",
        ];
        for (i, a) in chain.iter().enumerate() {
            for (j, b) in chain.iter().enumerate() {
                assert_eq!(compare(a, b), i.cmp(&j), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn generations_and_kernels_order_numerically() {
        assert_eq!(compare("Generation 10 x", "Generation 9 x"), Greater);
        assert_eq!(
            compare("nixos-generation-10", "nixos-generation-9"),
            Greater
        );
        assert_eq!(compare("6.1.0-18-amd64", "6.1.0-9-amd64"), Greater);
        assert_eq!(compare("007", "7"), Equal);
        // Long numbers do not overflow anything.
        assert_eq!(
            compare("99999999999999999999999999", "99999999999999999999999998"),
            Greater
        );
    }
}
