//! Superblock and partition-table probes: what stage 1 reads from every block device to
//! find `root=` and the `/dev/disk/by-*` names. The input is a disk image.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_stage1::probe::{self, by_links};
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let fs = probe::probe_filesystem(&mut Cursor::new(data))
        .ok()
        .flatten();
    let parts = probe::probe_gpt(&mut Cursor::new(data), 512).ok().flatten();
    let _ = probe::probe_gpt(&mut Cursor::new(data), 4096);
    let _ = probe::probe_mbr(&mut Cursor::new(data));
    let _ = by_links(fs.as_ref(), parts.as_ref().and_then(|p| p.first()));
});
