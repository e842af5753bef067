//! `/etc/passwd`, `group`, `shadow`, `subuid`, `subgid` and the `/var/lib/nixos` maps as
//! found on the machine, read by the users planner. The input is split on 0xff bytes into
//! the files of the set, then planned against a fixed spec.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_activation::users::{self, FileState, UsersSpec, UsersState, SET};
use std::path::Path;

const SPEC: &str = r#"{
  "mutableUsers": true,
  "users": [
    {"name": "root", "uid": 0, "group": "root", "description": "System administrator",
     "home": "/root", "homeMode": "700", "shell": "/bin/sh", "createHome": false, "isSystemUser": true,
     "hashedPassword": "!", "initialPassword": null, "initialHashedPassword": null,
     "password": null, "hashedPasswordFile": null, "expires": null, "subUidRanges": [],
     "subGidRanges": [], "autoSubUidGidRange": false, "linger": null},
    {"name": "alice", "uid": null, "group": "users", "description": "",
     "home": "/home/alice", "homeMode": "700", "shell": "/bin/sh", "createHome": false, "isSystemUser": false,
     "hashedPassword": null, "initialPassword": null, "initialHashedPassword": null,
     "password": null, "hashedPasswordFile": null, "expires": null, "subUidRanges": [],
     "subGidRanges": [], "autoSubUidGidRange": true, "linger": null}
  ],
  "groups": [
    {"name": "root", "gid": 0, "members": []},
    {"name": "users", "gid": 100, "members": ["alice"]},
    {"name": "wheel", "gid": null, "members": ["alice"]}
  ]
}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = UsersSpec::from_json(Path::new("users.json"), SPEC.as_bytes()) else {
        panic!("the fixed spec must parse");
    };
    let mut state = UsersState::default();
    let mut parts = data.split(|b| *b == 0xff);
    for p in SET {
        let contents = parts.next().map(<[u8]>::to_vec);
        state.files.insert(
            p.to_owned(),
            FileState {
                contents,
                perms: None,
            },
        );
    }
    let mut n = 0u32;
    let mut salt = || {
        n += 1;
        Ok(format!("salt{n}"))
    };
    let _ = users::plan(&spec, &state, false, &mut salt, &mut users::FilesOnly);
});
