//! The md v1.x superblock parser and the array judgement behind stage 1's RAID assembly:
//! what stage 1 reads from every block device when md arrays are configured. The input
//! is one 4 KiB superblock block (parsed at the v1.2 position), then, as a disk image,
//! probed at every v1.x position; members made from it are grouped and judged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_stage1::btrfs;
use stagehand_stage1::md::{self, superblock, Member};
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let parsed = superblock::parse(data, 8, 2);
    let probed = superblock::probe(&mut Cursor::new(data));
    let _ = btrfs::parse_member(data);
    let mut members = Vec::new();
    if let Ok(Some(sb)) = parsed {
        let _ = (sb.uuid_mdadm(), sb.short_name(), sb.metadata_version());
        members.push(Member {
            device: "a".into(),
            sb,
        });
    }
    if let Ok(Some(sb)) = probed {
        members.push(Member {
            device: "b".into(),
            sb,
        });
    }
    for group in md::group(&members).values() {
        let _ = md::judge(group);
    }
});
