//! The kernel command line (`/proc/cmdline`) and the device specs it carries (`root=`,
//! `resume=`): stage 1 parses both before anything else.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_common::cmdline::Cmdline;
use stagehand_stage1::probe::DeviceSpec;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let c = Cmdline::parse(&text);
    for key in [
        "init",
        "root",
        "resume",
        "console",
        "rootfstype",
        "rootflags",
    ] {
        let _ = c.get(key);
        let _ = c.get_all(key).count();
        let _ = c.flag(key);
    }
    for (k, v) in c.iter() {
        let _ = DeviceSpec::parse(k);
        if let Some(v) = v {
            let _ = DeviceSpec::parse(v);
        }
    }
    let _ = DeviceSpec::parse(&text);
});
