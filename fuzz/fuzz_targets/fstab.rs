//! A NixOS generation's `etc/fstab` as `stagehand-initrd build --system` reads it: the
//! lines and their octal escapes, and the check of what stage 1 can mount.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_initrd::fstab;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = fstab::unescape(&text);
    if let Ok(entries) = fstab::parse(&text) {
        for e in &entries {
            let _ = e.needed_for_boot();
            let _ = fstab::to_filesystem(e);
        }
    }
});
