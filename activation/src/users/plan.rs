//! The pure core of the users step: from the spec and the files as found, the new files.
//!
//! It runs on every activation, usually to find that nothing changes, so it is written to
//! do little per account: lines are parsed into fields borrowed from the files as read (no
//! `String` per field), lookups use a cheap hash, and a free id is found by scanning a
//! bitmap from where the previous search of the same range stopped (allocating 1000 ids was
//! quadratic before). The rules themselves are described in [`crate::users`].
//!
//! [`plan`] runs in phases, one function each: read the files, the declared groups, the
//! undeclared ones, `/etc/group`; the declared users (gid, uid, home, hash, shell), the
//! undeclared ones, `/etc/passwd`, `/etc/shadow`; subordinate ids, lingering; then which of
//! the files to write. The helpers live beside it: `lines` (file lines), `idmap` (the
//! `/var/lib/nixos` maps), `ids` (id allocation), `accounts`, `subids`, `fasthash`.

use std::borrow::Cow;
use std::fmt::Write as _;

use super::accounts::{Accounts, Out};
use super::fasthash::{FastMap, FastSet};
use super::idmap::{parse_map, to_json_map, IdMap};
use super::ids::{alloc_gid, alloc_uid, Ids};
use super::lines::{
    fields, parse_group, parse_passwd, push_line, text_of, GroupLine, IdField, PasswdLine,
};
use super::nss::IdsElsewhere;
use super::subids::plan_subordinate_ids;
use super::{
    Flavor, HomeAction, UserSpec, UsersError, UsersPlan, UsersSpec, UsersState, NOLOGIN, SET,
};
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

/// What every phase of [`plan`] reads: the inputs and the names the last run declared.
struct Ctx<'a> {
    spec: &'a UsersSpec,
    state: &'a UsersState,
    dry: bool,
    mutable: bool,
    /// `/var/lib/nixos/declarative-groups` and `declarative-users` as found.
    decl_groups: FastSet<&'a str>,
    decl_users: FastSet<&'a str>,
}

impl Ctx<'_> {
    /// NixOS's message for a change: `now`, or in dry mode `would`, then `what`.
    fn say(&self, p: &mut UsersPlan, now: &str, would: &str, what: String) {
        let verb = if self.dry { would } else { now };
        p.messages.push(format!("{verb} {what}"));
    }
}

/// The account files as found, their fields borrowed from the files.
struct Current<'a> {
    groups: Accounts<'a, GroupLine<'a>>,
    users: Accounts<'a, PasswdLine<'a>>,
    shadow: Vec<[&'a str; 9]>,
    /// Current hashes by name, needed only for plaintext `password`s.
    shadow_hash: FastMap<&'a str, &'a str>,
}

/// The names of a `declarative-{groups,users}` file (space-separated).
fn names_listed(text: &str) -> FastSet<&str> {
    text.split(' ').filter(|s| !s.is_empty()).collect()
}

/// Decide the new account files. Pure apart from `salt`, which supplies password salts,
/// and `elsewhere`, asked whether a candidate for a new id is given out by another NSS
/// source ([`super::nss`]; [`super::nss::FilesOnly`] when there is none).
pub fn plan(
    spec: &UsersSpec,
    state: &UsersState,
    dry: bool,
    salt: &mut dyn FnMut() -> Result<String, UsersError>,
    elsewhere: &mut dyn IdsElsewhere,
) -> Result<UsersPlan, UsersError> {
    let mut p = UsersPlan::default();
    let mut uid_map = parse_map(state, "/var/lib/nixos/uid-map")?;
    let mut gid_map = parse_map(state, "/var/lib/nixos/gid-map")?;
    let mut sub_map = parse_map(state, "/var/lib/nixos/auto-subuid-map")?;
    let decl_groups_cur = text_of(state, "/var/lib/nixos/declarative-groups");
    let decl_users_cur = text_of(state, "/var/lib/nixos/declarative-users");
    let cx = Ctx {
        spec,
        state,
        dry,
        mutable: spec.mutable_users,
        decl_groups: names_listed(&decl_groups_cur),
        decl_users: names_listed(&decl_users_cur),
    };

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
    let passwd_file = text_of(state, "/etc/passwd");
    let shadow_file = text_of(state, "/etc/shadow");
    let cur = read_current(
        spec,
        (&group_file, &passwd_file, &shadow_file),
        &mut gids,
        &mut uids,
    );

    let mut groups_out =
        plan_declared_groups(&cx, &cur, &mut gids, &mut gid_map, elsewhere, &mut p)?;
    let decl_groups_text = groups_out.sorted_names().join(" ");
    plan_undeclared_groups(&cx, &cur, &mut groups_out, &mut p);
    let group_text = group_file_text(&groups_out, group_file.len());

    let mut users_out = plan_declared_users(
        &cx,
        &cur,
        &groups_out,
        &mut uids,
        &mut uid_map,
        (salt, elsewhere),
        &mut p,
    )?;
    let decl_users_text = users_out.sorted_names().join(" ");
    let locked = plan_undeclared_users(&cx, &cur, &mut users_out, &mut p);
    let ulines = by_uid(&users_out);
    let passwd_text = passwd_file_text(&ulines, passwd_file.len());
    let shadow_text = shadow_file_text(&cx, &cur, &users_out, &ulines, &locked, shadow_file.len());
    let (sub_uids, sub_gids) = plan_subordinate_ids(spec, &ulines, &mut sub_map)?;
    plan_linger(&cx, &cur, &ulines, &mut p);

    let sub_map_text = format!("{}\n", to_json_map(&sub_map));
    let texts = [
        decl_groups_text,
        to_json_map(&gid_map),
        group_text,
        decl_users_text,
        to_json_map(&uid_map),
        passwd_text,
        shadow_text,
        sub_uids,
        sub_gids,
        sub_map_text,
    ];
    plan_writes(&cx, &groups_out, texts, &mut p);
    Ok(p)
}

/// Parse the account files; every id they hold counts as used.
fn read_current<'a>(
    spec: &UsersSpec,
    (group_file, passwd_file, shadow_file): (&'a str, &'a str, &'a str),
    gids: &mut Ids,
    uids: &mut Ids,
) -> Current<'a> {
    let mut groups: Accounts<GroupLine> = Accounts::with_capacity(spec.groups.len());
    for g in parse_group(group_file) {
        if let Some(gid) = g.gid.id {
            gids.used.insert(gid);
        }
        groups.insert(g.name, g);
    }
    let mut users: Accounts<PasswdLine> = Accounts::with_capacity(spec.users.len());
    for u in parse_passwd(passwd_file) {
        if let Some(uid) = u.uid.id {
            uids.used.insert(uid);
        }
        users.insert(u.name, u);
    }
    let shadow: Vec<[&str; 9]> = shadow_file
        .lines()
        .filter(|l| !l.is_empty())
        .map(fields::<9>)
        .collect();
    let mut shadow_hash: FastMap<&str, &str> = FastMap::default();
    if spec.users.iter().any(|u| u.password.is_some()) {
        for f in &shadow {
            shadow_hash.insert(f[0], f[1]);
        }
    }
    Current {
        groups,
        users,
        shadow,
        shadow_hash,
    }
}

/// The declared groups' lines: an existing group keeps its gid and password (and, with
/// `mutableUsers`, the members added by hand); a new one gets the declared gid or a free one.
fn plan_declared_groups<'a>(
    cx: &Ctx<'a>,
    cur: &Current<'a>,
    gids: &mut Ids,
    gid_map: &mut IdMap<'a>,
    elsewhere: &mut dyn IdsElsewhere,
    p: &mut UsersPlan,
) -> Result<Accounts<'a, GroupLine<'a>>, UsersError> {
    let spec = cx.spec;
    let mut groups_out: Accounts<GroupLine> =
        Accounts::with_capacity(spec.groups.len() + cur.groups.list.len());
    let mut members: Vec<&str> = Vec::new();
    for g in &spec.groups {
        members.clear();
        members.extend(g.members.iter().map(String::as_str));
        let (password, gid) = match cur.groups.get(&g.name) {
            Some(existing) => {
                let mut gid = g.gid.or(existing.gid.id);
                if gid != existing.gid.id && existing.gid.id.is_some() {
                    p.warnings.push(id_change_kept(
                        cx.dry,
                        ("GID", "group", "/etc/group"),
                        &g.name,
                        existing.gid.id,
                        gid,
                    ));
                    gid = existing.gid.id;
                }
                let gid = match gid {
                    Some(gid) => gid,
                    None => alloc_gid(p, gids, gid_map, &g.name, cx.dry, elsewhere)?,
                };
                if cx.mutable {
                    members.extend(
                        existing
                            .members
                            .split(',')
                            .filter(|m| !m.is_empty() && !cx.decl_users.contains(m)),
                    );
                }
                (existing.password, gid)
            }
            None => {
                let gid = match g.gid {
                    Some(gid) => gid,
                    None => alloc_gid(p, gids, gid_map, &g.name, cx.dry, elsewhere)?,
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
    Ok(groups_out)
}

/// Groups in the file but not in the spec: removed when `mutableUsers` is off or they were
/// declared before, kept otherwise.
fn plan_undeclared_groups<'a>(
    cx: &Ctx<'a>,
    cur: &Current<'a>,
    groups_out: &mut Accounts<'a, GroupLine<'a>>,
    p: &mut UsersPlan,
) {
    for name in cur.groups.sorted_names_not_in(groups_out) {
        if !cx.mutable || cx.decl_groups.contains(name) {
            cx.say(
                p,
                "removing group",
                "would remove group",
                format!("‘{name}’"),
            );
        } else if let Some(g) = cur.groups.get(name) {
            groups_out.insert(name, g.clone());
        }
    }
}

/// `/etc/group`, sorted by gid, then name.
fn group_file_text(groups_out: &Accounts<'_, GroupLine<'_>>, old_len: usize) -> String {
    let mut glines: Vec<&GroupLine> = groups_out.list.iter().collect();
    glines.sort_unstable_by(|a, b| {
        a.gid
            .id
            .unwrap_or(0)
            .cmp(&b.gid.id.unwrap_or(0))
            .then(a.name.cmp(b.name))
    });
    let mut group_text = String::with_capacity(old_len + 64);
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
    group_text
}

/// The declared users' lines and hashes, their homes and NixOS's warnings about them.
fn plan_declared_users<'a>(
    cx: &Ctx<'a>,
    cur: &Current<'a>,
    groups_out: &Accounts<'a, GroupLine<'a>>,
    uids: &mut Ids,
    uid_map: &mut IdMap<'a>,
    (salt, elsewhere): (
        &mut dyn FnMut() -> Result<String, UsersError>,
        &mut dyn IdsElsewhere,
    ),
    p: &mut UsersPlan,
) -> Result<Accounts<'a, Out<'a>>, UsersError> {
    let spec = cx.spec;
    let mut users_out: Accounts<Out> =
        Accounts::with_capacity(spec.users.len() + cur.users.list.len());
    for (i, u) in spec.users.iter().enumerate() {
        let gid = primary_gid(u, groups_out, p);
        let existing = cur.users.get(&u.name);
        let mut hashed = u.hashed_password.as_deref().map(Cow::Borrowed);
        let uid = user_uid(cx, u, existing, (uids, uid_map, &mut *elsewhere), p)?;
        if existing.is_none() && hashed.is_none() {
            if let Some(pw) = &u.initial_password {
                hashed = Some(Cow::Owned(hash_with(pw, salt)?));
            } else if let Some(h) = &u.initial_hashed_password {
                hashed = Some(Cow::Borrowed(h));
            }
        }
        if existing.is_some() && cx.mutable && u.linger.is_some() {
            p.warnings.push(format!(
                "{} lingering setting of mutable user '{}'",
                if cx.dry {
                    "would not apply"
                } else {
                    "not applying"
                },
                u.name
            ));
        }
        if u.create_home {
            plan_home(
                cx.state,
                u,
                Perms {
                    mode: u.home_mode,
                    uid,
                    gid,
                },
                p,
            );
        }
        let hashed = hash_from_file_or_password(cx, cur, u, hashed, salt, p)?;
        let shell = login_shell(u, existing, p);
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
    Ok(users_out)
}

/// The gid of `u`'s `group`: all digits is a gid; else the group's, or 65534 (nogroup) with
/// a warning when there is no such group.
fn primary_gid(u: &UserSpec, groups_out: &Accounts<'_, GroupLine<'_>>, p: &mut UsersPlan) -> u32 {
    if !u.group.is_empty() && u.group.bytes().all(|b| b.is_ascii_digit()) {
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
    }
}

/// `u`'s uid: an existing account keeps its own (a declared change is refused with a
/// warning); otherwise the declared one, else a free one.
fn user_uid(
    cx: &Ctx<'_>,
    u: &UserSpec,
    existing: Option<&PasswdLine<'_>>,
    (uids, uid_map, elsewhere): (&mut Ids, &IdMap<'_>, &mut dyn IdsElsewhere),
    p: &mut UsersPlan,
) -> Result<u32, UsersError> {
    match existing {
        Some(ex) => {
            let mut uid = u.uid.or(ex.uid.id);
            if uid != ex.uid.id && ex.uid.id.is_some() {
                p.warnings.push(id_change_kept(
                    cx.dry,
                    ("UID", "user", "/etc/passwd"),
                    &u.name,
                    ex.uid.id,
                    uid,
                ));
                uid = ex.uid.id;
            }
            match uid {
                Some(uid) => Ok(uid),
                None => alloc_uid(p, uids, uid_map, u, cx.dry, elsewhere),
            }
        }
        None => match u.uid {
            Some(uid) => Ok(uid),
            None => alloc_uid(p, uids, uid_map, u, cx.dry, elsewhere),
        },
    }
}

/// `createHome`: make the home, or fix its owner and mode, unless it already has `want`.
fn plan_home(state: &UsersState, u: &UserSpec, want: Perms, p: &mut UsersPlan) {
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

/// The hash that `hashedPasswordFile` (read on every run) or `password` gives `u`, else
/// `hashed` as decided so far.
fn hash_from_file_or_password<'a>(
    cx: &Ctx<'a>,
    cur: &Current<'a>,
    u: &'a UserSpec,
    mut hashed: Option<Cow<'a, str>>,
    salt: &mut dyn FnMut() -> Result<String, UsersError>,
    p: &mut UsersPlan,
) -> Result<Option<Cow<'a, str>>, UsersError> {
    if let Some(f) = &u.hashed_password_file {
        match cx.state.password_files.get(f).and_then(Option::as_deref) {
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
        hashed = match cur.shadow_hash.get(u.name.as_str()) {
            Some(h) if crypt::verify(pw, h) => Some(Cow::Borrowed(*h)),
            _ => Some(Cow::Owned(hash_with(pw, salt)?)),
        };
    }
    Ok(hashed)
}

/// The declared shell, else the current one, else nologin (with a warning).
fn login_shell<'a>(
    u: &'a UserSpec,
    existing: Option<&PasswdLine<'a>>,
    p: &mut UsersPlan,
) -> &'a str {
    match (&u.shell, existing) {
        (Some(s), _) => s.as_str(),
        (None, Some(ex)) => ex.shell,
        (None, None) => {
            p.warnings.push(format!(
                "no declarative or previous shell for ‘{}’, setting shell to nologin",
                u.name
            ));
            NOLOGIN
        }
    }
}

/// Users in the file but not in the spec: with userborn's schema a previously declared one
/// is locked; otherwise removed when `mutableUsers` is off or they were declared before,
/// kept otherwise. Returns the locked ones.
fn plan_undeclared_users<'a>(
    cx: &Ctx<'a>,
    cur: &Current<'a>,
    users_out: &mut Accounts<'a, Out<'a>>,
    p: &mut UsersPlan,
) -> FastSet<&'a str> {
    let mut locked: FastSet<&str> = FastSet::default();
    for name in cur.users.sorted_names_not_in(users_out) {
        let Some(c) = cur.users.get(name) else {
            continue;
        };
        let was_declared = cx.decl_users.contains(name);
        if cx.spec.flavor == Flavor::Userborn && was_declared {
            // userborn never deletes an account; it locks it.
            cx.say(p, "locking user", "would lock user", format!("‘{name}’"));
            locked.insert(name);
        } else if !cx.mutable || was_declared {
            cx.say(p, "removing user", "would remove user", format!("‘{name}’"));
            if cx.state.lingering.contains(name) {
                p.linger.push((name.to_owned(), false));
            }
            continue;
        }
        users_out.insert(
            name,
            Out {
                line: c.clone(),
                hashed: None,
                expires: None,
                spec: None,
            },
        );
    }
    locked
}

/// The new accounts sorted by uid, then name: the order of `/etc/passwd`.
fn by_uid<'o, 'a>(users_out: &'o Accounts<'a, Out<'a>>) -> Vec<&'o Out<'a>> {
    let mut ulines: Vec<&Out> = users_out.list.iter().collect();
    ulines.sort_unstable_by(|a, b| {
        a.line
            .uid
            .id
            .unwrap_or(0)
            .cmp(&b.line.uid.id.unwrap_or(0))
            .then(a.line.name.cmp(b.line.name))
    });
    ulines
}

/// `/etc/passwd` from the accounts in [`by_uid`] order.
fn passwd_file_text(ulines: &[&Out<'_>], old_len: usize) -> String {
    let mut passwd_text = String::with_capacity(old_len + 64);
    for o in ulines {
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
    passwd_text
}

/// `/etc/shadow`: existing lines keep their order and fields; new accounts are appended.
fn shadow_file_text(
    cx: &Ctx<'_>,
    cur: &Current<'_>,
    users_out: &Accounts<'_, Out<'_>>,
    ulines: &[&Out<'_>],
    locked: &FastSet<&str>,
    old_len: usize,
) -> String {
    let mut shadow_text = String::with_capacity(old_len + 64);
    let mut seen: FastSet<&str> = FastSet::default();
    for f in &cur.shadow {
        let Some(o) = users_out.get(f[0]) else {
            continue;
        };
        if !seen.insert(f[0]) {
            continue;
        }
        let mut hash = Cow::Borrowed(f[1]);
        if !cx.mutable {
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
    for o in ulines {
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
    shadow_text
}

/// Lingering, for declared users (not for existing mutable ones): changed where it differs.
fn plan_linger(cx: &Ctx<'_>, cur: &Current<'_>, ulines: &[&Out<'_>], p: &mut UsersPlan) {
    for o in ulines {
        let Some(u) = o.spec.and_then(|i| cx.spec.users.get(i)) else {
            continue;
        };
        let Some(want) = u.linger else { continue };
        if cx.mutable && cur.users.contains(&u.name) {
            continue;
        }
        if want != cx.state.lingering.contains(&u.name) {
            cx.say(
                p,
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
}

/// The files of [`SET`] whose contents (or, for `/etc/shadow`, owner and mode) differ from
/// what is there are written: `texts` in the order of [`SET`].
fn plan_writes(
    cx: &Ctx<'_>,
    groups_out: &Accounts<'_, GroupLine<'_>>,
    texts: [String; 10],
    p: &mut UsersPlan,
) {
    let state = cx.state;
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
    let [decl_groups, gid_map, group, decl_users, uid_map, passwd, shadow, sub_uids, sub_gids, sub_map] =
        texts;
    let new_files: [(&str, String, Perms); 10] = [
        (SET[0], decl_groups, plain),
        (SET[1], gid_map, plain),
        (SET[2], group, plain),
        (SET[3], decl_users, plain),
        (SET[4], uid_map, plain),
        (SET[5], passwd, plain),
        (SET[6], shadow, shadow_perms),
        (SET[7], sub_uids, plain),
        (SET[8], sub_gids, plain),
        (SET[9], sub_map, plain),
    ];
    for (path, text, perms) in new_files {
        let cur = state.files.get(path);
        let same_bytes = cur.and_then(|f| f.contents.as_deref()) == Some(text.as_bytes());
        let same_perms = path != "/etc/shadow" || cur.and_then(|f| f.perms) == Some(perms);
        if !(same_bytes && same_perms) {
            p.writes.push((path.to_owned(), text.into_bytes(), perms));
        }
    }
}

fn hash_with(
    pw: &str,
    salt: &mut dyn FnMut() -> Result<String, UsersError>,
) -> Result<String, UsersError> {
    let s = salt()?;
    crypt::hash_with_salt(pw, &s, None)
        .ok_or_else(|| UsersError::Random(format!("salt {s:?} is not in the crypt alphabet")))
}
