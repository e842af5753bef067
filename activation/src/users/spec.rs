//! The declared users and groups: NixOS's `update-users-groups.pl` JSON, or userborn's
//! schema, normalised into [`UsersSpec`] (which is what the compiled plan stores).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which input schema a spec came from; a few rules differ (see [`crate::users`]).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `update-users-groups.pl`'s `{ mutableUsers, users, groups }`.
    Perl,
    /// userborn's `{ users, groups, normalUidRange?, normalGidRange? }`.
    Userborn,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UsersSpec {
    pub flavor: Flavor,
    pub mutable_users: bool,
    pub users: Vec<UserSpec>,
    pub groups: Vec<GroupSpec>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct UserSpec {
    pub name: String,
    pub uid: Option<u32>,
    /// Primary group: a group name, or a numeric gid as digits.
    pub group: String,
    pub description: String,
    pub home: String,
    pub home_mode: u32,
    pub create_home: bool,
    pub is_system: bool,
    pub password: Option<String>,
    pub hashed_password_file: Option<String>,
    pub hashed_password: Option<String>,
    pub initial_password: Option<String>,
    pub initial_hashed_password: Option<String>,
    pub auto_subid: bool,
    pub sub_uids: Vec<(u32, u32)>,
    pub sub_gids: Vec<(u32, u32)>,
    /// Account expiry as days since 1970-01-01 (shadow field 8).
    pub expires: Option<i64>,
    pub shell: Option<String>,
    pub linger: Option<bool>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupSpec {
    pub name: String,
    pub gid: Option<u32>,
    pub members: Vec<String>,
}

/// The spec cannot be used.
#[derive(Debug)]
pub enum SpecError {
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
    Invalid {
        path: PathBuf,
        field: String,
        problem: String,
        fix: String,
    },
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, error } => write!(
                f,
                "{}: cannot read the users/groups spec: {error}; check the generation \
                 (nix-store --verify-path)",
                path.display()
            ),
            Self::Json { path, error } => write!(
                f,
                "{}: not a valid users/groups spec: {error}; it must be the JSON that \
                 users-groups.nix (or userborn.nix) generates",
                path.display()
            ),
            Self::Invalid {
                path,
                field,
                problem,
                fix,
            } => write!(f, "{}: {field}: {problem}; {fix}", path.display()),
        }
    }
}

impl std::error::Error for SpecError {}

// ---- update-users-groups.pl JSON ------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PerlSpec {
    mutable_users: bool,
    #[serde(default)]
    users: Vec<PerlUser>,
    #[serde(default)]
    groups: Vec<PerlGroup>,
}

/// A JSON value that is a string or a number (NixOS writes gids as digit strings, hand
/// written specs use numbers).
#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrNum {
    S(String),
    N(u64),
}

impl StrOrNum {
    fn text(self) -> String {
        match self {
            Self::S(s) => s,
            Self::N(n) => n.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PerlUser {
    name: String,
    uid: Option<u32>,
    group: Option<StrOrNum>,
    #[serde(default)]
    description: String,
    home: Option<String>,
    home_mode: Option<String>,
    #[serde(default)]
    create_home: bool,
    #[serde(default)]
    is_system_user: bool,
    password: Option<String>,
    #[serde(alias = "passwordFile")]
    hashed_password_file: Option<String>,
    hashed_password: Option<String>,
    initial_password: Option<String>,
    initial_hashed_password: Option<String>,
    #[serde(default)]
    auto_sub_uid_gid_range: bool,
    #[serde(default)]
    sub_uid_ranges: Vec<PerlSubUid>,
    #[serde(default)]
    sub_gid_ranges: Vec<PerlSubGid>,
    expires: Option<String>,
    shell: Option<String>,
    linger: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PerlSubUid {
    start_uid: u32,
    count: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PerlSubGid {
    start_gid: u32,
    count: u32,
}

#[derive(Deserialize)]
struct PerlGroup {
    name: String,
    gid: Option<u32>,
    #[serde(default)]
    members: Vec<String>,
}

// ---- userborn JSON --------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UbSpec {
    #[serde(default)]
    users: Vec<UbUser>,
    #[serde(default)]
    groups: Vec<UbGroup>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UbUser {
    #[serde(default)]
    is_normal: bool,
    name: String,
    uid: Option<u32>,
    group: Option<StrOrNum>,
    description: Option<String>,
    home: Option<String>,
    shell: Option<String>,
    #[serde(default)]
    auto_sub_id_range: bool,
    #[serde(default)]
    sub_uid_ranges: Vec<UbRange>,
    #[serde(default)]
    sub_gid_ranges: Vec<UbRange>,
    password: Option<String>,
    hashed_password: Option<String>,
    hashed_password_file: Option<String>,
    initial_password: Option<String>,
    initial_hashed_password: Option<String>,
}

#[derive(Deserialize)]
struct UbRange {
    start: u32,
    count: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UbGroup {
    name: String,
    gid: Option<u32>,
    #[serde(default)]
    members: Vec<String>,
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (proleptic Gregorian), `None` if invalid.
pub fn date_to_days(date: &str) -> Option<i64> {
    let mut it = date.split('-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    stagehand_common::date::days_from_date(y, m, d)
}

fn default_shell_for(shell: Option<String>) -> Option<String> {
    shell.filter(|s| !s.is_empty())
}

impl UsersSpec {
    /// Parse either schema: a top-level `mutableUsers` key means update-users-groups.pl's.
    pub fn from_json(path: &Path, bytes: &[u8]) -> Result<UsersSpec, SpecError> {
        let json = |error| SpecError::Json {
            path: path.to_path_buf(),
            error,
        };
        // Which schema: NixOS's is tried first, in one typed pass. Only when that fails does
        // a second pass look for the key (skipping everything else without building it),
        // to tell which error to report — the probe's own (a syntax error), NixOS's (the key
        // is there), or none (userborn's schema, parsed next). This picks the same schema
        // and error as probing first, since NixOS's schema requires the key.
        /// Whether the key is there at all (even as `null`, which the typed pass refuses).
        #[derive(Default)]
        struct Present(bool);
        impl<'de> Deserialize<'de> for Present {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                serde::de::IgnoredAny::deserialize(d).map(|_| Present(true))
            }
        }
        #[derive(Deserialize)]
        struct Probe {
            #[serde(rename = "mutableUsers", default)]
            mutable_users: Present,
        }
        let spec = match serde_json::from_slice::<PerlSpec>(bytes) {
            Ok(p) => Self::from_perl(path, p)?,
            Err(perl_error) => {
                let probe: Probe = serde_json::from_slice(bytes).map_err(json)?;
                if probe.mutable_users.0 {
                    return Err(json(perl_error));
                }
                let u: UbSpec = serde_json::from_slice(bytes).map_err(json)?;
                Self::from_userborn(u)
            }
        };
        spec.validate(path)?;
        Ok(spec)
    }

    fn from_perl(path: &Path, p: PerlSpec) -> Result<UsersSpec, SpecError> {
        let mut users = Vec::with_capacity(p.users.len());
        for u in p.users {
            let invalid = |field: &str, problem: String, fix: &str| SpecError::Invalid {
                path: path.to_path_buf(),
                field: format!("users.{}.{field}", u.name),
                problem,
                fix: fix.to_owned(),
            };
            let home_mode = match &u.home_mode {
                None => 0o700,
                Some(m) => u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|v| *v <= 0o7777)
                    .ok_or_else(|| {
                        invalid(
                            "homeMode",
                            format!("{m:?} is not an octal mode"),
                            "use a mode like \"700\"",
                        )
                    })?,
            };
            let expires = match &u.expires {
                None => None,
                Some(d) => Some(date_to_days(d).ok_or_else(|| {
                    invalid(
                        "expires",
                        format!("{d:?} is not a date"),
                        "use the form YYYY-MM-DD",
                    )
                })?),
            };
            users.push(UserSpec {
                group: u.group.map(StrOrNum::text).unwrap_or_default(),
                description: u.description,
                home: u.home.unwrap_or_else(|| "/var/empty".to_owned()),
                home_mode,
                create_home: u.create_home,
                is_system: u.is_system_user,
                password: u.password,
                hashed_password_file: u.hashed_password_file,
                hashed_password: u.hashed_password,
                initial_password: u.initial_password,
                initial_hashed_password: u.initial_hashed_password,
                auto_subid: u.auto_sub_uid_gid_range,
                sub_uids: u
                    .sub_uid_ranges
                    .iter()
                    .map(|r| (r.start_uid, r.count))
                    .collect(),
                sub_gids: u
                    .sub_gid_ranges
                    .iter()
                    .map(|r| (r.start_gid, r.count))
                    .collect(),
                expires,
                shell: default_shell_for(u.shell),
                linger: u.linger,
                uid: u.uid,
                name: u.name,
            });
        }
        Ok(UsersSpec {
            flavor: Flavor::Perl,
            mutable_users: p.mutable_users,
            users,
            groups: p
                .groups
                .into_iter()
                .map(|g| GroupSpec {
                    name: g.name,
                    gid: g.gid,
                    members: g.members,
                })
                .collect(),
        })
    }

    /// userborn's schema in our terms: users are never deleted (mutable), a user without a
    /// group gets a group of its own name, homes are left to tmpfiles (as the userborn module
    /// does).
    fn from_userborn(u: UbSpec) -> UsersSpec {
        let mut groups: Vec<GroupSpec> = u
            .groups
            .into_iter()
            .map(|g| GroupSpec {
                name: g.name,
                gid: g.gid,
                members: g.members,
            })
            .collect();
        let mut have: HashSet<String> = groups.iter().map(|g| g.name.clone()).collect();
        let mut users = Vec::new();
        for x in u.users {
            let group = match x.group {
                Some(g) => g.text(),
                None => {
                    if have.insert(x.name.clone()) {
                        groups.push(GroupSpec {
                            name: x.name.clone(),
                            gid: None,
                            members: Vec::new(),
                        });
                    }
                    x.name.clone()
                }
            };
            users.push(UserSpec {
                uid: x.uid,
                group,
                description: x.description.unwrap_or_default(),
                home: x.home.unwrap_or_else(|| "/var/empty".to_owned()),
                home_mode: 0o700,
                create_home: false,
                is_system: !x.is_normal,
                password: x.password,
                hashed_password_file: x.hashed_password_file,
                hashed_password: x.hashed_password,
                initial_password: x.initial_password,
                initial_hashed_password: x.initial_hashed_password,
                auto_subid: x.auto_sub_id_range,
                sub_uids: x
                    .sub_uid_ranges
                    .iter()
                    .map(|r| (r.start, r.count))
                    .collect(),
                sub_gids: x
                    .sub_gid_ranges
                    .iter()
                    .map(|r| (r.start, r.count))
                    .collect(),
                expires: None,
                shell: default_shell_for(x.shell),
                linger: None,
                name: x.name,
            });
        }
        UsersSpec {
            flavor: Flavor::Userborn,
            mutable_users: true,
            users,
            groups,
        }
    }

    /// Refuse specs that would corrupt the account files (NixOS's module asserts most of
    /// these at evaluation time; a hand-written or damaged spec may still carry them).
    pub fn validate(&self, path: &Path) -> Result<(), SpecError> {
        let bad = |field: String, problem: String, fix: &str| SpecError::Invalid {
            path: path.to_path_buf(),
            field,
            problem,
            fix: fix.to_owned(),
        };
        let field_ok = |s: &str| !s.contains(':') && !s.contains('\n');
        let mut users = Identities::new("user", "uid");
        for u in &self.users {
            users.claim(&u.name, u.uid, &bad)?;
            for (field, value) in [
                ("description", u.description.as_str()),
                ("home", u.home.as_str()),
                ("group", u.group.as_str()),
                ("shell", u.shell.as_deref().unwrap_or("")),
            ] {
                if !field_ok(value) {
                    return Err(bad(
                        format!("users.{}.{field}", u.name),
                        format!("{value:?} contains ':' or a newline"),
                        "remove them: they would break /etc/passwd",
                    ));
                }
            }
            for (field, value) in [
                ("hashedPassword", &u.hashed_password),
                ("initialHashedPassword", &u.initial_hashed_password),
            ] {
                if value.as_deref().is_some_and(|v| !field_ok(v)) {
                    return Err(bad(
                        format!("users.{}.{field}", u.name),
                        "the hash contains ':' or a newline".into(),
                        "use a crypt(3) hash such as mkpasswd prints",
                    ));
                }
            }
            if !u.home.starts_with('/') {
                return Err(bad(
                    format!("users.{}.home", u.name),
                    format!("{:?} is not an absolute path", u.home),
                    "use an absolute path",
                ));
            }
        }
        let mut groups = Identities::new("group", "gid");
        for g in &self.groups {
            groups.claim(&g.name, g.gid, &bad)?;
            if let Some(m) = g.members.iter().find(|m| !name_ok(m)) {
                return Err(bad(
                    format!("groups.{}.members", g.name),
                    format!("{m:?} is not a valid user name"),
                    "list user names only",
                ));
            }
        }
        Ok(())
    }
}

/// A name the account files can hold: no separators, no control characters, no leading
/// `-` (it would read as an option to shadow's tools).
fn name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 256
        && !n.starts_with('-')
        && n.chars()
            .all(|c| !c.is_control() && !matches!(c, ':' | ',' | '/' | ' '))
}

/// The names and ids of one kind of account (users or groups) seen so far in a spec, so
/// that each kind gets the same checks: a valid name, declared once, an id of its own.
struct Identities<'a> {
    kind: &'static str,
    id_name: &'static str,
    names: HashSet<&'a str>,
    ids: BTreeMap<u32, &'a str>,
}

impl<'a> Identities<'a> {
    fn new(kind: &'static str, id_name: &'static str) -> Self {
        Self {
            kind,
            id_name,
            names: HashSet::new(),
            ids: BTreeMap::new(),
        }
    }

    fn claim(
        &mut self,
        name: &'a str,
        id: Option<u32>,
        bad: &dyn Fn(String, String, &str) -> SpecError,
    ) -> Result<(), SpecError> {
        let (kind, id_name) = (self.kind, self.id_name);
        if !name_ok(name) {
            return Err(bad(
                format!("{kind}s[].name"),
                format!("{name:?} is not a valid {kind} name"),
                "use letters, digits, '_', '-' and '.'",
            ));
        }
        if !self.names.insert(name) {
            return Err(bad(
                format!("{kind}s.{name}"),
                format!("the {kind} is declared twice"),
                &format!("declare each {kind} once"),
            ));
        }
        if let Some(id) = id {
            if let Some(other) = self.ids.insert(id, name) {
                return Err(bad(
                    format!("{kind}s.{name}.{id_name}"),
                    format!("{id_name} {id} is also the {id_name} of {kind} {other:?}"),
                    &format!("give every {kind} its own {id_name} (or none, to allocate one)"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(json: &str) -> String {
        match UsersSpec::from_json(Path::new("/u.json"), json.as_bytes()) {
            Ok(_) => "parsed".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_schema_and_the_error_reported() {
        // A syntax error is reported as such, even after a field of the wrong type.
        let e = error_of(r#"{"mutableUsers": true, "users": [{"name": 5}], "groups": ["#);
        assert!(e.contains("EOF while parsing"), "{e}");
        // NixOS's schema (the key is there, even as null): its own type errors.
        let e = error_of(r#"{"mutableUsers": true, "users": [{"name": 5}]}"#);
        assert!(e.contains("invalid type: integer `5`"), "{e}");
        let e = error_of(r#"{"mutableUsers": null, "users": []}"#);
        assert!(e.contains("invalid type: null, expected a boolean"), "{e}");
        // Without the key: userborn's schema.
        let spec = UsersSpec::from_json(Path::new("/u.json"), br#"{"users": [{"name": "a"}]}"#)
            .expect("userborn spec");
        assert_eq!(spec.flavor, Flavor::Userborn);
        let e = error_of(r#"{"users": [{"name": 5}]}"#);
        assert!(e.contains("invalid type: integer `5`"), "{e}");
    }

    #[test]
    fn dates() {
        assert_eq!(date_to_days("1970-01-01"), Some(0));
        assert_eq!(date_to_days("2000-03-01"), Some(11017));
        assert_eq!(date_to_days("2024-02-29"), Some(19782));
        assert_eq!(date_to_days("2023-02-29"), None);
        assert_eq!(date_to_days("2023-13-01"), None);
        assert_eq!(date_to_days("soon"), None);
        // Used to overflow (a panic in debug builds, a wrong day in release).
        assert_eq!(date_to_days("9223372036854775807-03-01"), None);
        assert_eq!(date_to_days("9999-12-31"), Some(2_932_896));
    }
}
