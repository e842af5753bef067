//! Subordinate ids (`/etc/subuid`, `/etc/subgid`) and the `auto-subuid-map` slots.

use std::borrow::Cow;
use std::fmt::Write as _;

use super::accounts::Out;
use super::fasthash::FastSet;
use super::idmap::IdMap;
use super::{UsersError, UsersSpec};

/// `/etc/subuid` and `/etc/subgid`: the declared ranges, and for `autoSubUidGidRange` the
/// remembered slot if still free, else the first slot no one has or had.
pub(super) fn plan_subordinate_ids<'a>(
    spec: &'a UsersSpec,
    ulines: &[&Out<'_>],
    sub_map: &mut IdMap<'a>,
) -> Result<(String, String), UsersError> {
    let mut sub_uids = String::new();
    let mut sub_gids = String::new();
    let prev_starts: FastSet<u32> = sub_map.values().copied().collect();
    let mut starts_used: FastSet<u32> = FastSet::default();
    // Where the search for a free slot resumes: every slot below it is taken for good (the
    // sets only grow), as in [`super::ids::Ids`].
    let mut next_slot: u64 = 0;
    for o in ulines {
        let Some(u) = o.spec.and_then(|i| spec.users.get(i)) else {
            continue;
        };
        for (start, count) in &u.sub_uids {
            let _ = writeln!(sub_uids, "{}:{start}:{count}", u.name);
        }
        for (start, count) in &u.sub_gids {
            let _ = writeln!(sub_gids, "{}:{start}:{count}", u.name);
        }
        if u.auto_subid {
            let start = match sub_map.get(u.name.as_str()) {
                Some(s) if !starts_used.contains(s) => *s,
                _ => loop {
                    let s = 100_000u64 + next_slot * 65_536;
                    let Ok(s) = u32::try_from(s) else {
                        return Err(UsersError::OutOfIds {
                            what: "subordinate id ranges",
                            min: 100_000,
                            max: u32::MAX,
                        });
                    };
                    if !starts_used.contains(&s) && !prev_starts.contains(&s) {
                        break s;
                    }
                    next_slot += 1;
                },
            };
            starts_used.insert(start);
            sub_map.insert(Cow::Borrowed(u.name.as_str()), start);
            let _ = writeln!(sub_uids, "{}:{start}:65536", u.name);
            let _ = writeln!(sub_gids, "{}:{start}:65536", u.name);
        }
    }
    // Like Perl's `join("\n", @lines) . "\n"`: no lines is one empty line.
    if sub_uids.is_empty() {
        sub_uids.push('\n');
    }
    if sub_gids.is_empty() {
        sub_gids.push('\n');
    }
    Ok((sub_uids, sub_gids))
}
