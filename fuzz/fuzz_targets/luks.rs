//! LUKS1 and LUKS2 headers (the binary headers, their checksums, the JSON metadata and its
//! keyslots, segments and digests): what stage 1 reads from an encrypted disk before it
//! asks for a passphrase. The input is the start of a device. Only parsing: unlocking runs
//! the header's KDF, whose cost the parser already bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_stage1::layers::{json, luks};
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let _ = luks::read_header(&mut Cursor::new(data));
    // The JSON area on its own, as if its checksum had matched.
    if let Ok(meta) = json::parse(data) {
        let _ = luks::parse_luks2_json(&[0u8; 4096], &meta);
    }
});
