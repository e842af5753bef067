//! NixOS's `<toplevel>/activate` and `dry-activate` scripts: split into snippets, each
//! snippet's text matched against the built-ins' forms (stage 2 reads these at boot for a
//! generation nixpkgs built).
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_activation::script::{classify, looks_like_activate_script, parse};

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_activate_script(data);
    if let Ok(script) = parse(data) {
        for s in &script.snippets {
            for name in [
                s.name.as_str(),
                "users",
                "etc",
                "binsh",
                "usrbinenv",
                "specialfs",
                "hashes",
                "modprobe",
                "udevd",
            ] {
                let _ = classify(name, &s.text);
            }
        }
    }
});
