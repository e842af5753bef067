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
    /// userborn's `{ users, groups? }` (as userborn.nix writes it).
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
    /// Not JSON, or JSON of the wrong shape for the schema it was read as.
    Json {
        path: PathBuf,
        /// Where in the document (`users[3].uid`), empty for the whole document.
        at: String,
        /// The schema it was read as; `None` when it is not JSON at all.
        flavor: Option<Flavor>,
        error: serde_json::Error,
    },
    /// JSON, but neither schema: an array, `{}`, or an object without `users`.
    NotASpec { path: PathBuf, problem: String },
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
            Self::Json {
                path,
                at,
                flavor,
                error,
            } => {
                write!(f, "{}: not a valid users/groups spec: ", path.display())?;
                if !at.is_empty() {
                    write!(f, "{at}: ")?;
                }
                let hint = match flavor {
                    None => "it must be the JSON that users-groups.nix (or userborn.nix) generates",
                    Some(Flavor::Perl) => {
                        "read as the users-groups.json that NixOS's users-groups.nix generates \
                         (it has mutableUsers): fix or remove the key"
                    }
                    Some(Flavor::Userborn) => {
                        "read as userborn's config (there is no mutableUsers key): fix or remove \
                         the key, or add mutableUsers, users and groups for users-groups.nix's \
                         schema"
                    }
                };
                write!(f, "{error}; {hint}")
            }
            Self::NotASpec { path, problem } => write!(
                f,
                "{}: not a users/groups spec: {problem}; pass the users-groups.json that \
                 users-groups.nix generates (an object with mutableUsers, users and groups) \
                 or userborn's config (users and groups)",
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

/// Every key users-groups.nix writes is required at the top level, and no key is unknown at
/// any level: a misspelt key is an error, not a default.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PerlSpec {
    mutable_users: bool,
    users: Vec<PerlUser>,
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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PerlSubUid {
    start_uid: u32,
    count: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PerlSubGid {
    start_gid: u32,
    count: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PerlGroup {
    name: String,
    gid: Option<u32>,
    #[serde(default)]
    members: Vec<String>,
}

// ---- userborn JSON --------------------------------------------------------------------------

/// `users` is required (it is what tells this schema apart from an arbitrary object);
/// `groups` may be left out.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UbSpec {
    users: Vec<UbUser>,
    #[serde(default)]
    groups: Vec<UbGroup>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
struct UbRange {
    start: u32,
    count: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UbGroup {
    name: String,
    gid: Option<u32>,
    #[serde(default)]
    members: Vec<String>,
}

/// The document read as `flavor`'s schema, with the position of the first error in it.
fn typed<T: serde::de::DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    flavor: Flavor,
) -> Result<T, SpecError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        SpecError::Json {
            path: path.to_path_buf(),
            at: if at == "." { String::new() } else { at },
            flavor: Some(flavor),
            error: e.into_inner(),
        }
    })
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
    /// Parse either schema. The document must be a JSON object; one with `mutableUsers` is
    /// update-users-groups.pl's schema, one with `users` but no `mutableUsers` userborn's.
    /// Both are read strictly (required keys, types, no unknown keys), so a misspelt
    /// `mutableUsers` fails as an unknown key of userborn's schema instead of switching
    /// schema, and an empty or foreign object is refused instead of wiping the accounts.
    pub fn from_json(path: &Path, bytes: &[u8]) -> Result<UsersSpec, SpecError> {
        // A first pass reads the top-level keys only (skipping the values without building
        // them): it reports syntax errors as such, whatever the schema, and picks the schema.
        let top: BTreeMap<String, serde::de::IgnoredAny> =
            serde_json::from_slice(bytes).map_err(|error| {
                if error.classify() == serde_json::error::Category::Data {
                    SpecError::NotASpec {
                        path: path.to_path_buf(),
                        problem: format!("the top level is not a JSON object ({error})"),
                    }
                } else {
                    SpecError::Json {
                        path: path.to_path_buf(),
                        at: String::new(),
                        flavor: None,
                        error,
                    }
                }
            })?;
        let spec = if top.contains_key("mutableUsers") {
            Self::from_perl(path, typed(path, bytes, Flavor::Perl)?)?
        } else if top.contains_key("users") {
            Self::from_userborn(typed(path, bytes, Flavor::Userborn)?)
        } else {
            let keys: Vec<String> = top.keys().map(|k| format!("{k:?}")).collect();
            return Err(SpecError::NotASpec {
                path: path.to_path_buf(),
                problem: if keys.is_empty() {
                    "it is an empty object: the key users is missing".to_owned()
                } else {
                    format!("the key users is missing (it has {})", keys.join(", "))
                },
            });
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
        if self.users.is_empty() && self.groups.is_empty() {
            return Err(bad(
                "users, groups".into(),
                "the spec declares no user and no group (applied, it would empty /etc/group \
                 and lock or remove every account)"
                    .into(),
                "pass the generation's users-groups.json: NixOS always declares at least the \
                 root group",
            ));
        }
        let field_ok = |s: &str| !s.contains(':') && !s.contains('\n');
        let mut users = Identities::new("user", "uid");
        for (index, u) in self.users.iter().enumerate() {
            users.claim(index, &u.name, u.uid, &bad)?;
            if !u.group.is_empty() && u.group.bytes().all(|b| b.is_ascii_digit()) {
                let gid = u.group.parse::<u32>().ok().filter(|&g| g != NO_ID);
                if gid.is_none() {
                    return Err(bad(
                        format!("users.{}.group", u.name),
                        format!("gid {} is not below 4294967295 ((gid_t)-1)", u.group),
                        "name the group, or use a gid below 4294967295",
                    ));
                }
            }
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
        for (index, g) in self.groups.iter().enumerate() {
            groups.claim(index, &g.name, g.gid, &bad)?;
            for m in &g.members {
                if let Some(why) = name_problem(m) {
                    return Err(bad(
                        format!("groups.{}.members", g.name),
                        format!("{m:?} is not a valid user name: {why}"),
                        NAME_FIX,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `(uid_t)-1`: chown(2) and setresuid(2) read it as "leave unchanged", so no account
/// may have it (NixOS's ids are C ints; we refuse what the kernel cannot use).
const NO_ID: u32 = u32::MAX;

/// What makes `n` unusable as a user or group name, by NixOS's rule (users-groups.nix
/// asserts the regex, which mirrors shadow's `is_valid_name`, and a length below 32); and
/// `.`/`..`, which the regex lets through but shadow refuses (a home `/home/..`).
fn name_problem(n: &str) -> Option<&'static str> {
    let first_ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.');
    let rest_ok = |b: u8| first_ok(b) || b == b'-';
    if n.is_empty() {
        Some("it is empty")
    } else if n.len() > 31 {
        Some("it is longer than 31 characters")
    } else if n == "." || n == ".." {
        Some("'.' and '..' are path components, not names")
    } else if !(first_ok(n.as_bytes()[0]) && n.bytes().all(rest_ok)) {
        Some("it does not match [a-zA-Z0-9_.][a-zA-Z0-9_.-]*")
    } else {
        None
    }
}

/// How to fix a name [`name_problem`] refuses.
const NAME_FIX: &str = "use 1 to 31 of the characters a-z A-Z 0-9 _ . and - (not first), \
                        as users-groups.nix requires";

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

    /// `name` and `id` of the `index`th declared account of this kind.
    fn claim(
        &mut self,
        index: usize,
        name: &'a str,
        id: Option<u32>,
        bad: &dyn Fn(String, String, &str) -> SpecError,
    ) -> Result<(), SpecError> {
        let (kind, id_name) = (self.kind, self.id_name);
        if let Some(why) = name_problem(name) {
            return Err(bad(
                format!("{kind}s[{index}].name"),
                format!("{name:?} is not a valid {kind} name: {why}"),
                NAME_FIX,
            ));
        }
        if id == Some(NO_ID) {
            return Err(bad(
                format!("{kind}s.{name}.{id_name}"),
                format!("{id_name} {NO_ID} is ({id_name}_t)-1, which chown and setuid read as \"no change\""),
                &format!("use a {id_name} below {NO_ID}, or none to allocate one"),
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
