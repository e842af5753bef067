//! The pure core of the users step: from the spec and the files as found, the new files.
//!
//! It runs on every activation, usually to find that nothing changes, so it is written to
//! do little per account: lines are parsed into fields borrowed from the files as read (no
//! `String` per field), lookups use a cheap hash, and a free id is found by scanning a
//! bitmap from where the previous search of the same range stopped (allocating 1000 ids was
//! quadratic before). The rules themselves are described in [`crate::users`].

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::fmt::Write as _;
use std::hash::BuildHasherDefault;

use super::fasthash::{FastMap, FastSet};
use super::idmap::{parse_map, to_json_map};
use super::ids::{alloc_gid, alloc_uid, Ids};
use super::lines::{
    fields, parse_group, parse_passwd, push_line, text_of, GroupLine, IdField, PasswdLine,
};
use super::{Flavor, HomeAction, UsersError, UsersPlan, UsersSpec, UsersState, NOLOGIN, SET};
use crate::crypt;
use stagehand_common::rootfs::Perms;

/// NixOS's warning when the spec declares another id than the file has: the file's is kept.
/// `what` is (the id's name, the account kind, the file).
fn id_change_kept(
    dry: bool,
    what: (&str, &str, &str),
    name: &str,
    old: Option<u32>,
    new: Option<u32>,
) -> String {
    let (id, kind, file) = what;
    let verb = if dry {
        "would not apply"
    } else {
        "not applying"
    };
    format!(
        "{verb} {id} change of {kind} ‘{name}’ ({} -> {}) in {file}",
        id_text(old),
        id_text(new)
    )
}

fn id_text(id: Option<u32>) -> String {
    id.map(|i| i.to_string()).unwrap_or_default()
}

// ---- the plan ----------------------------------------------------------------------------------

/// Accounts by name in the order they were added, with an index for lookups (replacing an
/// entry of the same name, as a map insert would).
struct Accounts<'a, T> {
    list: Vec<T>,
    /// The names in the order they were first added (the spec's, usually sorted already).
    names: Vec<&'a str>,
    index: FastMap<&'a str, usize>,
}

impl<'a, T> Accounts<'a, T> {
    fn with_capacity(n: usize) -> Self {
        Accounts {
            list: Vec::with_capacity(n),
            names: Vec::with_capacity(n),
            index: FastMap::with_capacity_and_hasher(n, BuildHasherDefault::default()),
        }
    }

    fn insert(&mut self, name: &'a str, v: T) {
        match self.index.entry(name) {
            Entry::Occupied(e) => self.list[*e.get()] = v,
            Entry::Vacant(e) => {
                e.insert(self.list.len());
                self.list.push(v);
                self.names.push(name);
            }
        }
    }

    fn get(&self, name: &str) -> Option<&T> {
        self.index.get(name).map(|&i| &self.list[i])
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The names, sorted.
    fn sorted_names(&self) -> Vec<&'a str> {
        let mut v = self.names.clone();
        v.sort_unstable();
        v
    }

    /// The names that `other` does not have, sorted (usually none, so nothing to sort).
    fn sorted_names_not_in<U>(&self, other: &Accounts<U>) -> Vec<&'a str> {
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
struct Out<'a> {
    line: PasswdLine<'a>,
    hashed: Option<Cow<'a, str>>,
    expires: Option<i64>,
    /// Index of the declaring spec entry; `None` for a kept undeclared account.
    spec: Option<usize>,
}

/// Decide the new account files. Pure apart from `salt`, which supplies password salts.
pub fn plan(
    spec: &UsersSpec,
    state: &UsersState,
    dry: bool,
    salt: &mut dyn FnMut() -> Result<String, UsersError>,
) -> Result<UsersPlan, UsersError> {
    let mut p = UsersPlan::default();
    let say = |p: &mut UsersPlan, now: &str, would: &str, what: String| {
        let verb = if dry { would } else { now };
        p.messages.push(format!("{verb} {what}"));
    };
    let mutable = spec.mutable_users;

    let mut uid_map = parse_map(state, "/var/lib/nixos/uid-map")?;
    let mut gid_map = parse_map(state, "/var/lib/nixos/gid-map")?;
    let mut sub_map = parse_map(state, "/var/lib/nixos/auto-subuid-map")?;
    let decl_groups_cur = text_of(state, "/var/lib/nixos/declarative-groups");
    let decl_groups: FastSet<&str> = decl_groups_cur
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect();
    let decl_users_cur = text_of(state, "/var/lib/nixos/declarative-users");
    let decl_users: FastSet<&str> = decl_users_cur
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect();

    let mut gids = Ids {
        used: spec.groups.iter().filter_map(|g| g.gid).collect(),
        prev: gid_map.values().copied().collect(),
        resume: Vec::new(),
    };
    let mut uids = Ids {
        used: spec.users.iter().filter_map(|u| u.uid).collect(),
        prev: uid_map.values().copied().collect(),
        resume: Vec::new(),
    };

    let group_file = text_of(state, "/etc/group");
    let mut groups_cur: Accounts<GroupLine> = Accounts::with_capacity(spec.groups.len());
    for g in parse_group(&group_file) {
        if let Some(gid) = g.gid.id {
            gids.used.insert(gid);
        }
        groups_cur.insert(g.name, g);
    }
    let passwd_file = text_of(state, "/etc/passwd");
    let mut users_cur: Accounts<PasswdLine> = Accounts::with_capacity(spec.users.len());
    for u in parse_passwd(&passwd_file) {
        if let Some(uid) = u.uid.id {
            uids.used.insert(uid);
        }
        users_cur.insert(u.name, u);
    }
    let shadow_file = text_of(state, "/etc/shadow");
    let shadow_cur: Vec<[&str; 9]> = shadow_file
        .lines()
        .filter(|l| !l.is_empty())
        .map(fields::<9>)
        .collect();
    // Current hashes by name, needed only for plaintext `password`s.
    let mut shadow_hash: FastMap<&str, &str> = FastMap::default();
    if spec.users.iter().any(|u| u.password.is_some()) {
        for f in &shadow_cur {
            shadow_hash.insert(f[0], f[1]);
        }
    }

    // Groups.
    let mut groups_out: Accounts<GroupLine> =
        Accounts::with_capacity(spec.groups.len() + groups_cur.list.len());
    let mut members: Vec<&str> = Vec::new();
    for g in &spec.groups {
        members.clear();
        members.extend(g.members.iter().map(String::as_str));
        let (password, gid) = match groups_cur.get(&g.name) {
            Some(existing) => {
                let mut gid = g.gid.or(existing.gid.id);
                if gid != existing.gid.id && existing.gid.id.is_some() {
                    p.warnings.push(id_change_kept(
                        dry,
                        ("GID", "group", "/etc/group"),
                        &g.name,
                        existing.gid.id,
                        gid,
                    ));
                    gid = existing.gid.id;
                }
                let gid = match gid {
                    Some(gid) => gid,
                    None => alloc_gid(&mut p, &mut gids, &gid_map, &g.name, dry)?,
                };
                if mutable {
                    members.extend(
                        existing
                            .members
                            .split(',')
                            .filter(|m| !m.is_empty() && !decl_users.contains(m)),
                    );
                }
                (existing.password, gid)
            }
            None => {
                let gid = match g.gid {
                    Some(gid) => gid,
                    None => alloc_gid(&mut p, &mut gids, &gid_map, &g.name, dry)?,
                };
                ("x", gid)
            }
        };
        members.sort_unstable();
        members.dedup();
        gid_map.insert(Cow::Borrowed(g.name.as_str()), gid);
        groups_out.insert(
            &g.name,
            GroupLine {
                name: &g.name,
                password,
                gid: IdField::num(gid),
                members: Cow::Owned(members.join(",")),
            },
        );
    }
    let decl_groups_text = groups_out.sorted_names().join(" ");
    for name in groups_cur.sorted_names_not_in(&groups_out) {
        if !mutable || decl_groups.contains(name) {
            say(
                &mut p,
                "removing group",
                "would remove group",
                format!("‘{name}’"),
            );
        } else if let Some(g) = groups_cur.get(name) {
            groups_out.insert(name, g.clone());
        }
    }
    let mut glines: Vec<&GroupLine> = groups_out.list.iter().collect();
    glines.sort_unstable_by(|a, b| {
        a.gid
            .id
            .unwrap_or(0)
            .cmp(&b.gid.id.unwrap_or(0))
            .then(a.name.cmp(b.name))
    });
    let mut group_text = String::with_capacity(group_file.len() + 64);
    for g in &glines {
        group_text.push_str(g.name);
        group_text.push(':');
        group_text.push_str(g.password);
        group_text.push(':');
        g.gid.push_to(&mut group_text);
        group_text.push(':');
        group_text.push_str(&g.members);
        group_text.push('\n');
    }

    // Users.
    let mut users_out: Accounts<Out> =
        Accounts::with_capacity(spec.users.len() + users_cur.list.len());
    for (i, u) in spec.users.iter().enumerate() {
        let gid: u32 = if !u.group.is_empty() && u.group.bytes().all(|b| b.is_ascii_digit()) {
            u.group.parse().unwrap_or(65534)
        } else if let Some(gid) = groups_out.get(&u.group).and_then(|g| g.gid.id) {
            gid
        } else {
            p.warnings.push(format!(
                "users.{0}.group: user ‘{0}’ has unknown group ‘{1}’, so it gets gid 65534 \
                 (nogroup); declare users.groups.{1} or name an existing group",
                u.name, u.group
            ));
            65534
        };
        let existing = users_cur.get(&u.name);
        let mut hashed = u.hashed_password.as_deref().map(Cow::Borrowed);
        let uid = match existing {
            Some(ex) => {
                let mut uid = u.uid.or(ex.uid.id);
                if uid != ex.uid.id && ex.uid.id.is_some() {
                    p.warnings.push(id_change_kept(
                        dry,
                        ("UID", "user", "/etc/passwd"),
                        &u.name,
                        ex.uid.id,
                        uid,
                    ));
                    uid = ex.uid.id;
                }
                match uid {
                    Some(uid) => uid,
                    None => alloc_uid(&mut p, &mut uids, &uid_map, u, dry)?,
                }
            }
            None => {
                let uid = match u.uid {
                    Some(uid) => uid,
                    None => alloc_uid(&mut p, &mut uids, &uid_map, u, dry)?,
                };
                if hashed.is_none() {
                    if let Some(pw) = &u.initial_password {
                        hashed = Some(Cow::Owned(hash_with(pw, salt)?));
                    } else if let Some(h) = &u.initial_hashed_password {
                        hashed = Some(Cow::Borrowed(h));
                    }
                }
                uid
            }
        };
        if existing.is_some() && mutable && u.linger.is_some() {
            p.warnings.push(format!(
                "{} lingering setting of mutable user '{}'",
                if dry {
                    "would not apply"
                } else {
                    "not applying"
                },
                u.name
            ));
        }
        if u.create_home {
            let want = Perms {
                mode: u.home_mode,
                uid,
                gid,
            };
            match state.homes.get(&u.home) {
                Some(Some(have)) if *have == want => {}
                Some(Some(_)) => p.homes.push(HomeAction {
                    path: u.home.clone(),
                    create: false,
                    perms: want,
                }),
                _ => p.homes.push(HomeAction {
                    path: u.home.clone(),
                    create: true,
                    perms: want,
                }),
            }
        }
        if let Some(f) = &u.hashed_password_file {
            match state.password_files.get(f).and_then(Option::as_deref) {
                Some(text) => {
                    let text = text.strip_suffix('\n').unwrap_or(text);
                    if text.contains(':') || text.contains('\n') {
                        p.warnings.push(format!(
                            "password file ‘{f}’ of user ‘{}’ holds ':' or several lines, \
                             ignored; it must hold one crypt(3) hash",
                            u.name
                        ));
                    } else {
                        hashed = Some(Cow::Borrowed(text));
                    }
                }
                None => p
                    .warnings
                    .push(format!("password file ‘{f}’ does not exist")),
            }
        } else if let Some(pw) = &u.password {
            // Keep the current hash when it still matches: re-hashing would change
            // /etc/shadow on every run for nothing.
            hashed = match shadow_hash.get(u.name.as_str()) {
                Some(h) if crypt::verify(pw, h) => Some(Cow::Borrowed(*h)),
                _ => Some(Cow::Owned(hash_with(pw, salt)?)),
            };
        }
        let shell = match (&u.shell, existing) {
            (Some(s), _) => s.as_str(),
            (None, Some(ex)) => ex.shell,
            (None, None) => {
                p.warnings.push(format!(
                    "no declarative or previous shell for ‘{}’, setting shell to nologin",
                    u.name
                ));
                NOLOGIN
            }
        };
        uid_map.insert(Cow::Borrowed(u.name.as_str()), uid);
        users_out.insert(
            &u.name,
            Out {
                line: PasswdLine {
                    name: &u.name,
                    password: existing.map_or("x", |e| e.password),
                    uid: IdField::num(uid),
                    gid: IdField::num(gid),
                    description: &u.description,
                    home: &u.home,
                    shell,
                },
                hashed,
                expires: u.expires,
                spec: Some(i),
            },
        );
    }
    let decl_users_text = users_out.sorted_names().join(" ");
    let mut locked: FastSet<&str> = FastSet::default();
    for name in users_cur.sorted_names_not_in(&users_out) {
        let Some(cur) = users_cur.get(name) else {
            continue;
        };
        let was_declared = decl_users.contains(name);
        if spec.flavor == Flavor::Userborn && was_declared {
            // userborn never deletes an account; it locks it.
            say(
                &mut p,
                "locking user",
                "would lock user",
                format!("‘{name}’"),
            );
            locked.insert(name);
        } else if !mutable || was_declared {
            say(
                &mut p,
                "removing user",
                "would remove user",
                format!("‘{name}’"),
            );
            if state.lingering.contains(name) {
                p.linger.push((name.to_owned(), false));
            }
            continue;
        }
        users_out.insert(
            name,
            Out {
                line: cur.clone(),
                hashed: None,
                expires: None,
                spec: None,
            },
        );
    }
    let mut ulines: Vec<&Out> = users_out.list.iter().collect();
    ulines.sort_unstable_by(|a, b| {
        a.line
            .uid
            .id
            .unwrap_or(0)
            .cmp(&b.line.uid.id.unwrap_or(0))
            .then(a.line.name.cmp(b.line.name))
    });
    let mut passwd_text = String::with_capacity(passwd_file.len() + 64);
    for o in &ulines {
        let l = &o.line;
        passwd_text.push_str(l.name);
        passwd_text.push(':');
        passwd_text.push_str(l.password);
        passwd_text.push(':');
        l.uid.push_to(&mut passwd_text);
        passwd_text.push(':');
        l.gid.push_to(&mut passwd_text);
        passwd_text.push(':');
        push_line(&mut passwd_text, &[l.description, l.home, l.shell]);
    }

    // Shadow: existing lines keep their order and fields; new accounts are appended.
    let mut shadow_text = String::with_capacity(shadow_file.len() + 64);
    let mut seen: FastSet<&str> = FastSet::default();
    for f in &shadow_cur {
        let Some(o) = users_out.get(f[0]) else {
            continue;
        };
        if !seen.insert(f[0]) {
            continue;
        }
        let mut hash = Cow::Borrowed(f[1]);
        if !mutable {
            hash = Cow::Borrowed(o.hashed.as_deref().unwrap_or("!"));
        }
        if locked.contains(f[0]) && !hash.starts_with('!') {
            hash = Cow::Owned(format!("!*{hash}"));
        }
        match o.expires {
            Some(days) => {
                let days = days.to_string();
                push_line(
                    &mut shadow_text,
                    &[f[0], &hash, f[2], f[3], f[4], f[5], f[6], &days, f[8]],
                );
            }
            None => push_line(
                &mut shadow_text,
                &[f[0], &hash, f[2], f[3], f[4], f[5], f[6], f[7], f[8]],
            ),
        }
    }
    for o in &ulines {
        if seen.contains(o.line.name) {
            continue;
        }
        let hash = o.hashed.as_deref().unwrap_or("!");
        shadow_text.push_str(o.line.name);
        shadow_text.push(':');
        shadow_text.push_str(hash);
        shadow_text.push_str(":1:::::");
        if let Some(days) = o.expires {
            let _ = write!(shadow_text, "{days}");
        }
        shadow_text.push_str(":\n");
    }

    // Subordinate ids.
    let mut sub_uids = String::new();
    let mut sub_gids = String::new();
    let prev_starts: FastSet<u32> = sub_map.values().copied().collect();
    let mut starts_used: FastSet<u32> = FastSet::default();
    // Where the search for a free slot resumes: every slot below it is taken for good (the
    // sets only grow), as in [`Ids`].
    let mut next_slot: u64 = 0;
    for o in &ulines {
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

    // Linger, for declared users.
    for o in &ulines {
        let Some(u) = o.spec.and_then(|i| spec.users.get(i)) else {
            continue;
        };
        let Some(want) = u.linger else { continue };
        if mutable && users_cur.contains(&u.name) {
            continue;
        }
        if want != state.lingering.contains(&u.name) {
            say(
                &mut p,
                if want { "enabling" } else { "disabling" },
                if want {
                    "would enable"
                } else {
                    "would disable"
                },
                format!("lingering for user(s) '{}'", u.name),
            );
            p.linger.push((u.name.clone(), want));
        }
    }

    let (uid, gid, shadow_gid) = if state.euid == 0 {
        (
            0,
            0,
            groups_out.get("shadow").and_then(|g| g.gid.id).unwrap_or(0),
        )
    } else {
        (state.euid, state.egid, state.egid)
    };
    let plain = Perms {
        mode: 0o644,
        uid,
        gid,
    };
    let shadow_perms = Perms {
        mode: 0o640,
        uid,
        gid: shadow_gid,
    };
    let sub_map_text = format!("{}\n", to_json_map(&sub_map));
    let new_files: [(&str, String, Perms); 10] = [
        (SET[0], decl_groups_text, plain),
        (SET[1], to_json_map(&gid_map), plain),
        (SET[2], group_text, plain),
        (SET[3], decl_users_text, plain),
        (SET[4], to_json_map(&uid_map), plain),
        (SET[5], passwd_text, plain),
        (SET[6], shadow_text, shadow_perms),
        (SET[7], sub_uids, plain),
        (SET[8], sub_gids, plain),
        (SET[9], sub_map_text, plain),
    ];
    for (path, text, perms) in new_files {
        let cur = state.files.get(path);
        let same_bytes = cur.and_then(|f| f.contents.as_deref()) == Some(text.as_bytes());
        let same_perms = path != "/etc/shadow" || cur.and_then(|f| f.perms) == Some(perms);
        if !(same_bytes && same_perms) {
            p.writes.push((path.to_owned(), text.into_bytes(), perms));
        }
    }
    Ok(p)
}

fn hash_with(
    pw: &str,
    salt: &mut dyn FnMut() -> Result<String, UsersError>,
) -> Result<String, UsersError> {
    let s = salt()?;
    crypt::hash_with_salt(pw, &s, None)
        .ok_or_else(|| UsersError::Random(format!("salt {s:?} is not in the crypt alphabet")))
}
