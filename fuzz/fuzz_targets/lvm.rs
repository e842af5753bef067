//! LVM2: the PV label, the metadata area header and its circular buffer, the metadata
//! text (LVM's config syntax) and the device-mapper tables made from it. The input is the
//! start of a device, and also taken as metadata text on its own.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_stage1::layers::lvm;
use std::io::Cursor;

fn tables(text: &str) {
    if let Ok(vg) = lvm::parse_vg(text) {
        for lv in &vg.lvs {
            let _ = lvm::table(&vg, lv, &|_| Some("8:0".to_owned()));
            let _ = lvm::dm_name(&vg.name, &lv.name);
            let _ = lvm::dm_uuid(&vg, lv);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(pv)) = lvm::read_pv(&mut Cursor::new(data)) {
        if let Some(text) = &pv.metadata {
            tables(text);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        tables(text);
    }
});
