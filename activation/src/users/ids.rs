//! Allocating uids and gids as `update-users-groups.pl`'s `allocId` does, without its
//! quadratic walk.

use super::fasthash::FastSet;
use super::idmap::IdMap;
use super::nss::{IdDb, IdsElsewhere};
use super::{UserSpec, UsersError, UsersPlan};

/// A set of ids: a bitmap for the ids the allocator hands out (all below 32768), a hash set
/// for the rest.
pub(super) struct IdSet {
    low: Vec<u64>,
    high: FastSet<u32>,
}

impl IdSet {
    const LOW: u32 = 32768;

    fn new() -> Self {
        IdSet {
            low: vec![0; (Self::LOW / 64) as usize],
            high: FastSet::default(),
        }
    }

    pub(super) fn contains(&self, id: u32) -> bool {
        if id < Self::LOW {
            self.low[(id / 64) as usize] & (1 << (id % 64)) != 0
        } else {
            self.high.contains(&id)
        }
    }

    pub(super) fn insert(&mut self, id: u32) {
        if id < Self::LOW {
            self.low[(id / 64) as usize] |= 1 << (id % 64);
        } else {
            self.high.insert(id);
        }
    }
}

impl FromIterator<u32> for IdSet {
    fn from_iter<I: IntoIterator<Item = u32>>(it: I) -> Self {
        let mut s = IdSet::new();
        for id in it {
            s.insert(id);
        }
        s
    }
}

/// Id allocation state, as in `allocId`: `used` are ids taken in this run (declared, in the
/// files, or handed out), `prev` ids ever recorded in the map.
pub(super) struct Ids {
    pub(super) used: IdSet,
    pub(super) prev: IdSet,
    /// Per searched range and direction, where the last search stopped. Every id it passed
    /// was marked used and `used` only grows, so a later search would only step over them
    /// again: starting there gives the same id without the quadratic walk.
    pub(super) resume: Vec<((u32, u32, bool), u32)>,
}

impl Ids {
    /// A free id in `min..=max`: not used in this run, never recorded in the map, and not
    /// given out by another NSS source (`elsewhere`, asked last, as `allocId` asks
    /// `getpwuid`/`getgrgid`).
    fn alloc(
        &mut self,
        min: u32,
        max: u32,
        up: bool,
        what: &'static str,
        (db, elsewhere): (IdDb, &mut dyn IdsElsewhere),
    ) -> Result<u32, UsersError> {
        let key = (min, max, up);
        let mut id = self
            .resume
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(if up { min } else { max }, |(_, at)| *at);
        while (min..=max).contains(&id) {
            let free =
                !self.used.contains(id) && !self.prev.contains(id) && !elsewhere.taken(db, id);
            self.used.insert(id);
            if free {
                match self.resume.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, at)) => *at = id,
                    None => self.resume.push((key, id)),
                }
                return Ok(id);
            }
            id = match if up {
                id.checked_add(1)
            } else {
                id.checked_sub(1)
            } {
                Some(next) => next,
                None => break,
            };
        }
        Err(UsersError::OutOfIds { what, min, max })
    }
}

pub(super) fn alloc_gid(
    p: &mut UsersPlan,
    gids: &mut Ids,
    gid_map: &IdMap<'_>,
    name: &str,
    dry: bool,
    elsewhere: &mut dyn IdsElsewhere,
) -> Result<u32, UsersError> {
    if let Some(&prev) = gid_map.get(name) {
        // Unlike `allocId`, a remembered id that another source gives out now is not
        // revived: it would belong to two groups.
        if !gids.used.contains(prev) && !elsewhere.taken(IdDb::Group, prev) {
            p.messages.push(format!(
                "{} group '{name}' with GID {prev}",
                if dry { "would revive" } else { "reviving" }
            ));
            gids.used.insert(prev);
            return Ok(prev);
        }
    }
    gids.alloc(400, 999, false, "GIDs", (IdDb::Group, elsewhere))
}

pub(super) fn alloc_uid(
    p: &mut UsersPlan,
    uids: &mut Ids,
    uid_map: &IdMap<'_>,
    u: &UserSpec,
    dry: bool,
    elsewhere: &mut dyn IdsElsewhere,
) -> Result<u32, UsersError> {
    let (min, max, up) = if u.is_system {
        (400, 999, false)
    } else {
        (1000, 29999, true)
    };
    if let Some(&prev) = uid_map.get(u.name.as_str()) {
        if (min..=max).contains(&prev)
            && !uids.used.contains(prev)
            && !elsewhere.taken(IdDb::Passwd, prev)
        {
            p.messages.push(format!(
                "{} user '{}' with UID {prev}",
                if dry { "would revive" } else { "reviving" },
                u.name
            ));
            uids.used.insert(prev);
            return Ok(prev);
        }
    }
    uids.alloc(min, max, up, "UIDs", (IdDb::Passwd, elsewhere))
}
