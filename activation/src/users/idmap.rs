//! The `/var/lib/nixos` id maps (`uid-map`, `gid-map`, `auto-subuid-map`): name → id JSON
//! objects, byte-compatible with the Perl script's.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use super::{UsersError, UsersState};

/// A name → id map, the names borrowed from the file where JSON allows it.
pub(super) type IdMap<'a> = BTreeMap<Cow<'a, str>, u32>;

pub(super) fn parse_map<'a>(state: &'a UsersState, path: &str) -> Result<IdMap<'a>, UsersError> {
    let Some(bytes) = state.files.get(path).and_then(|f| f.contents.as_deref()) else {
        return Ok(IdMap::new());
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(IdMap::new());
    }
    if let Some(entries) = parse_plain_map(bytes) {
        return Ok(entries
            .into_iter()
            .map(|(name, id)| (Cow::Borrowed(name), id))
            .collect());
    }
    let bad = |problem: String| UsersError::State {
        path: PathBuf::from(path),
        problem,
    };
    let value: BTreeMap<Name<'a>, MapId> = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("not a JSON object of name → id: {e}")))?;
    value
        .into_iter()
        .map(|(Name(name), id)| match id {
            MapId::Id(id) => Ok((name, id)),
            MapId::Bad(v) => Err(bad(format!("the id of {name:?} is {v}, not a number"))),
        })
        .collect()
}

/// The map as we (and Perl's canonical JSON) write it — `{"name":id,...}`, no spaces,
/// names without escapes and in sorted order, ids as plain numbers or digit strings —
/// read without the general JSON parser. `None` for anything else (which the general
/// parser then reads, or refuses with its message), so both read the same map.
fn parse_plain_map(bytes: &[u8]) -> Option<Vec<(&str, u32)>> {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = bytes.iter().position(|b| !ws(b))?;
    let end = bytes.iter().rposition(|b| !ws(b))?;
    let body = bytes
        .get(start..=end)?
        .strip_prefix(b"{")?
        .strip_suffix(b"}")?;
    let mut out: Vec<(&str, u32)> = Vec::with_capacity(body.len() / 16);
    if body.is_empty() {
        return Some(out);
    }
    for entry in body.split(|b| *b == b',') {
        let entry = entry.strip_prefix(b"\"")?;
        let close = entry.iter().position(|b| *b == b'"')?;
        let (name, rest) = entry.split_at(close);
        if name.iter().any(|b| *b == b'\\' || *b < 0x20) {
            return None;
        }
        let name = std::str::from_utf8(name).ok()?;
        let value = rest.strip_prefix(b"\":")?;
        let id: u32 = match value.strip_prefix(b"\"") {
            // A digit string: the general reader parses its text as a number.
            Some(quoted) => {
                let digits = quoted.strip_suffix(b"\"")?;
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                std::str::from_utf8(digits).ok()?.parse().ok()?
            }
            // A JSON number: no leading zeros.
            None => {
                if value.is_empty()
                    || !value.iter().all(u8::is_ascii_digit)
                    || (value.len() > 1 && value[0] == b'0')
                {
                    return None;
                }
                std::str::from_utf8(value).ok()?.parse().ok()?
            }
        };
        // Sorted and unique, so the map needs no reordering and no duplicate rule.
        if out.last().is_some_and(|(prev, _)| *prev >= name) {
            return None;
        }
        out.push((name, id));
    }
    Some(out)
}

pub(super) fn to_json_map(m: &IdMap<'_>) -> String {
    // Sorted keys: Perl's `canonical => 1`.
    serde_json::to_string(m).unwrap_or_else(|_| "{}".to_owned())
}

/// A map key, borrowed from the file unless it holds escapes.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Name<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// One value of a `/var/lib/nixos` id map, decoded straight from the JSON (no intermediate
/// `serde_json::Value` per entry). Perl's JSON module writes an id as a string when the
/// script once used it as one, so both forms occur in the wild.
enum MapId {
    Id(u32),
    /// Anything else, as text for the message.
    Bad(String),
}

impl<'de> serde::Deserialize<'de> for MapId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MapId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a uid or gid")
            }
            fn visit_u64<E>(self, n: u64) -> Result<MapId, E> {
                Ok(u32::try_from(n).map_or_else(|_| MapId::Bad(n.to_string()), MapId::Id))
            }
            fn visit_i64<E>(self, n: i64) -> Result<MapId, E> {
                Ok(u32::try_from(n).map_or_else(|_| MapId::Bad(n.to_string()), MapId::Id))
            }
            fn visit_f64<E>(self, n: f64) -> Result<MapId, E> {
                Ok(MapId::Bad(n.to_string()))
            }
            fn visit_str<E>(self, s: &str) -> Result<MapId, E> {
                Ok(s.parse()
                    .map_or_else(|_| MapId::Bad(format!("{s:?}")), MapId::Id))
            }
            fn visit_bool<E>(self, b: bool) -> Result<MapId, E> {
                Ok(MapId::Bad(b.to_string()))
            }
            fn visit_unit<E>(self) -> Result<MapId, E> {
                Ok(MapId::Bad("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::FileState;

    fn map_of(text: &str) -> Result<Vec<(String, u32)>, String> {
        let mut st = UsersState::default();
        st.files.insert(
            "/m".into(),
            FileState {
                contents: Some(text.as_bytes().to_vec()),
                perms: None,
            },
        );
        parse_map(&st, "/m")
            .map(|m| m.into_iter().map(|(k, v)| (k.into_owned(), v)).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn plain_maps_take_the_short_reader_and_others_read_the_same() {
        let canonical = "{\"a\":1,\"b\":\"2\",\"c\":30000}\n";
        assert_eq!(
            parse_plain_map(canonical.as_bytes()),
            Some(vec![("a", 1), ("b", 2), ("c", 30000)])
        );
        assert_eq!(parse_plain_map(b"{}"), Some(vec![]));
        let want = map_of(canonical).expect("map");
        // Whatever the short reader declines, the JSON parser reads to the same map.
        for other in [
            "{ \"a\": 1, \"b\": \"2\", \"c\": 30000 }",
            "{\"c\":30000,\"a\":1,\"b\":\"2\"}",
            "{\"\\u0061\":1,\"b\":2,\"c\":30000}",
            "{\"a\":1,\"b\":\"+2\",\"c\":30000}",
            "{\"a\":1,\"b\":2,\"c\":30000,\"a\":1}",
        ] {
            assert_eq!(parse_plain_map(other.as_bytes()), None, "{other}");
            assert_eq!(map_of(other).expect(other), want, "{other}");
        }
        // Refused by both: the general parser's message names the entry.
        for bad in [
            "{\"a\":01}",
            "{\"a\":1.5}",
            "{\"a\":-1}",
            "{\"a\":4294967296}",
            "{\"a\":\"x\"}",
        ] {
            assert_eq!(parse_plain_map(bad.as_bytes()), None, "{bad}");
            assert!(map_of(bad).is_err(), "{bad}");
        }
    }
}
