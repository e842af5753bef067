//! efivarfs files: 4 attribute bytes, then UTF-16LE strings or NUL-separated lists
//! (LoaderEntries, LoaderEntrySelected, ...).
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_boot::efivars;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path =
        Path::new("/sys/firmware/efi/efivars/LoaderEntries-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f");
    if let Ok(v) = efivars::decode(path, data) {
        let _ = efivars::utf16_string(path, &v.data);
        let _ = efivars::utf16_list(path, &v.data);
    }
    let _ = efivars::utf16_string(path, data);
    let _ = efivars::utf16_list(path, data);
});
