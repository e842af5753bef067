//! A generation's `boot.json` (bootspec v1 and the systemd-boot extension).
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_boot::spec;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = spec::parse(Path::new("/nix/store/x-system/boot.json"), data);
});
