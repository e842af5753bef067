//! Kernel modules as the initrd builder reads them: the module signature trailer, the
//! ELF section table and the `.modinfo` strings (depends, softdep, alias).
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_initrd::{elf, modules};

fuzz_target!(|data: &[u8]| {
    let _ = modules::parse_modinfo(data);
    let body = modules::strip_signature(data).unwrap_or(data);
    if let Ok(Some(section)) = elf::find_section(body, ".modinfo") {
        let _ = modules::parse_modinfo(&section);
    }
    let _ = elf::dynamic(body);
    let text = String::from_utf8_lossy(data);
    let _ = modules::normalize_name(&text);
    if let Some((pattern, name)) = text.split_once('\n') {
        let _ = stagehand_common::glob::matches(pattern.as_bytes(), name.as_bytes());
    }
});
