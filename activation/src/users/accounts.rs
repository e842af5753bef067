//! The accounts of one file by name, in the order they were added, with a fast index.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::hash::BuildHasherDefault;

use super::fasthash::FastMap;
use super::lines::PasswdLine;

/// Accounts by name in the order they were added, with an index for lookups (replacing an
/// entry of the same name, as a map insert would).
pub(super) struct Accounts<'a, T> {
    pub(super) list: Vec<T>,
    /// The names in the order they were first added (the spec's, usually sorted already).
    names: Vec<&'a str>,
    index: FastMap<&'a str, usize>,
}

impl<'a, T> Accounts<'a, T> {
    pub(super) fn with_capacity(n: usize) -> Self {
        Accounts {
            list: Vec::with_capacity(n),
            names: Vec::with_capacity(n),
            index: FastMap::with_capacity_and_hasher(n, BuildHasherDefault::default()),
        }
    }

    pub(super) fn insert(&mut self, name: &'a str, v: T) {
        match self.index.entry(name) {
            Entry::Occupied(e) => self.list[*e.get()] = v,
            Entry::Vacant(e) => {
                e.insert(self.list.len());
                self.list.push(v);
                self.names.push(name);
            }
        }
    }

    pub(super) fn get(&self, name: &str) -> Option<&T> {
        self.index.get(name).map(|&i| &self.list[i])
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The names, sorted.
    pub(super) fn sorted_names(&self) -> Vec<&'a str> {
        let mut v = self.names.clone();
        v.sort_unstable();
        v
    }

    /// The names that `other` does not have, sorted (usually none, so nothing to sort).
    pub(super) fn sorted_names_not_in<U>(&self, other: &Accounts<U>) -> Vec<&'a str> {
        let mut v: Vec<&'a str> = self
            .names
            .iter()
            .copied()
            .filter(|n| !other.contains(n))
            .collect();
        v.sort_unstable();
        v
    }
}

/// A passwd line of the new file and what goes with it into `/etc/shadow`.
pub(super) struct Out<'a> {
    pub(super) line: PasswdLine<'a>,
    pub(super) hashed: Option<Cow<'a, str>>,
    pub(super) expires: Option<i64>,
    /// Index of the declaring spec entry; `None` for a kept undeclared account.
    pub(super) spec: Option<usize>,
}
