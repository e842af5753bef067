//! The users spec (`users-groups.json`, update-users-groups.pl's or userborn's input).
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_activation::users::UsersSpec;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("users-groups.json");
    if let Ok(spec) = UsersSpec::from_json(path, data) {
        let _ = spec.validate(path);
    }
});
