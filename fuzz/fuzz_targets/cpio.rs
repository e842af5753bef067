//! Reading initrds: newc cpio archives (concatenated, NUL-padded) as `stagehand-initrd list`
//! and `append-secrets` read them. The first byte picks raw cpio or the whole
//! decompress-then-read path (gzip, zstd, xz segments).
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_initrd::cpio;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(entries) = cpio::read(rest) {
            for e in &entries {
                let _ = e.is_dir();
            }
        }
    } else {
        let _ = stagehand_initrd::list(rest);
    }
});
