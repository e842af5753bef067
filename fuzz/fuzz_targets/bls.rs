//! Boot Loader Specification entries and `loader.conf` as found on the ESP: parsed,
//! named (boot counters), sorted into menu order and the default chosen. Input: entry
//! texts separated by 0xff bytes; the first part is `loader.conf`, each further part an
//! entry whose file name is its first line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_boot::bls::{self, Entry};
use stagehand_boot::entry_name::EntryName;
use stagehand_boot::sdboot::{self, EspState};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0xff);
    let conf = parts.next().unwrap_or_default();
    let mut esp = EspState {
        loader_conf: Some(conf.to_vec()),
        ..EspState::default()
    };
    for part in parts {
        let text = String::from_utf8_lossy(part);
        let (name, body) = text.split_once('\n').unwrap_or((&text, ""));
        let entry = Entry::parse(body);
        let _ = entry.render();
        let _ = bls::MenuItem::new(name, &entry);
        if let Some(n) = EntryName::from_file_name(name) {
            let _ = n.state();
            let again = EntryName::from_file_name(&n.file_name());
            assert!(again.is_some(), "re-parsing {:?}", n.file_name());
            let _ = n.blessed();
        }
        let _ = EntryName::from_id(name);
        esp.entry_texts
            .insert(name.to_string(), body.as_bytes().to_vec());
    }
    let _ = sdboot::predicted_boot(&esp);
    let _ = sdboot::entry_statuses(&esp);
    let conf_text = String::from_utf8_lossy(conf);
    let _ = stagehand_common::glob::matches(conf_text.as_bytes(), b"nixos-generation-12+3-1.conf");
});
