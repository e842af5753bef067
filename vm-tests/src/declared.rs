//! What a test generation declares — its users, groups, etc entries and kernel parameters —
//! shared by the demo generation ([`crate::generation`]) and the NixOS-layout fixture
//! ([`crate::nixos_generation`]).

use serde_json::{json, Value};

/// One user in the `update-users-groups.pl` JSON.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: Option<u32>,
    pub group: String,
    pub description: String,
    pub home: String,
    pub create_home: bool,
    pub is_system_user: bool,
    pub shell: String,
    pub hashed_password: Option<String>,
}

impl User {
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "uid": self.uid,
            "group": self.group,
            "description": self.description,
            "home": self.home,
            "homeMode": "700",
            "createHome": self.create_home,
            "isSystemUser": self.is_system_user,
            "shell": self.shell,
            "hashedPassword": self.hashed_password,
            "password": null,
            "hashedPasswordFile": null,
            "initialPassword": null,
            "initialHashedPassword": null,
            "autoSubUidGidRange": false,
            "subUidRanges": [],
            "subGidRanges": [],
            "expires": null,
            "linger": null,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub gid: Option<u32>,
    pub members: Vec<String>,
}

/// An `/etc` entry in the generation's etc tree.
#[derive(Debug, Clone)]
pub enum EtcEntry {
    /// `etc/<path>` is a symlink to a store file with this text.
    Text { path: String, text: String },
    /// `etc/<path>` is a symlink to this target as given (e.g. `/dev/null` masks).
    Link { path: String, target: String },
    /// `etc/<path>` is copied at activation, with `.mode`/`.uid`/`.gid` sidecars.
    Copied {
        path: String,
        text: String,
        mode: String,
        uid: String,
        gid: String,
    },
}

/// The kernel parameters of every test generation: the serial console, a failed boot that
/// ends the run (the kernel panics, QEMU exits), systemd's status lines.
pub const KERNEL_PARAMS: &[&str] = &[
    "console=ttyS0",
    "panic=-1",
    "boot.panic_on_fail",
    "systemd.show_status=1",
];

/// The platform (bootspec's `system`).
pub const SYSTEM: &str = "x86_64-linux";

/// [`KERNEL_PARAMS`] as a spec holds them.
pub fn kernel_params() -> Vec<String> {
    KERNEL_PARAMS.iter().map(|s| s.to_string()).collect()
}

/// The accounts every test generation declares: root, alice (normal, uid 1000), messagebus
/// (system user, uid allocated) and nobody. `login_shell` is root's and alice's (the
/// system users get `nologin`); `password` gives each name's `hashedPassword`.
pub fn test_users(login_shell: &str, password: impl Fn(&str) -> Option<String>) -> Vec<User> {
    let user = |name: &str, uid: Option<u32>, group: &str, home: &str, description: &str| {
        // Root is a system user with a login shell; alice is the one normal user.
        let system = name != "alice";
        User {
            name: name.into(),
            uid,
            group: group.into(),
            description: description.into(),
            home: home.into(),
            create_home: !system,
            is_system_user: system,
            shell: if system && name != "root" {
                "/run/current-system/sw/bin/nologin"
            } else {
                login_shell
            }
            .into(),
            hashed_password: password(name),
        }
    };
    vec![
        user("root", Some(0), "root", "/root", "System administrator"),
        user("alice", Some(1000), "users", "/home/alice", "Alice"),
        user(
            "messagebus",
            None,
            "messagebus",
            "/run/dbus",
            "D-Bus system message bus daemon user",
        ),
        user(
            "nobody",
            Some(65534),
            "nogroup",
            "/var/empty",
            "Unprivileged account (don't use!)",
        ),
    ]
}

/// The groups of [`test_users`]: alice is in wheel.
pub fn test_groups() -> Vec<Group> {
    let group = |name: &str, gid: Option<u32>, members: &[&str]| Group {
        name: name.into(),
        gid,
        members: members.iter().map(|m| m.to_string()).collect(),
    };
    vec![
        group("root", Some(0), &[]),
        group("wheel", Some(1), &["alice"]),
        group("users", Some(100), &[]),
        group("shadow", Some(318), &[]),
        group("messagebus", None, &[]),
        group("nogroup", Some(65534), &[]),
    ]
}

/// The etc entries every test generation has: `hostname`, `os-release` (`os_release`) and
/// `stagehand-secret`, a copied root-only file owned by alice naming the generation.
pub fn test_etc(hostname: &str, os_release: String, number: u32) -> Vec<EtcEntry> {
    vec![
        EtcEntry::Text {
            path: "hostname".into(),
            text: format!("{hostname}\n"),
        },
        EtcEntry::Text {
            path: "os-release".into(),
            text: os_release,
        },
        EtcEntry::Copied {
            path: "stagehand-secret".into(),
            text: format!("generation {number} secret\n"),
            mode: "0400".into(),
            uid: "alice".into(),
            gid: "+0".into(),
        },
    ]
}

impl EtcEntry {
    /// `etc/systemd/system/<path>` with `text` (a unit, or a drop-in below `<unit>.d/`).
    pub fn unit(path: &str, text: String) -> EtcEntry {
        EtcEntry::Text {
            path: format!("systemd/system/{path}"),
            text,
        }
    }
}

/// The users spec (`update-users-groups.pl`'s JSON) of `users` and `groups`.
pub fn users_groups_json(mutable_users: bool, users: &[User], groups: &[Group]) -> Value {
    json!({
        "mutableUsers": mutable_users,
        "users": users.iter().map(User::to_json).collect::<Vec<_>>(),
        "groups": groups.iter().map(|g| json!({
            "name": g.name, "gid": g.gid, "members": g.members,
        })).collect::<Vec<_>>(),
    })
}
