//! Our binary formats: the envelope (magic, version, length, CRC) and the postcard
//! payloads inside it — the stage-1 config and the compiled activation plan. The CRC is
//! recomputed for half the inputs so the fuzzer also reaches the postcard decoders.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stagehand_activation::compiled::{CompiledPlan, PLAN_KIND};
use stagehand_common::envelope::{self, HEADER_LEN};
use stagehand_common::stage1_config::{Stage1Config, STAGE1_CONFIG_KIND};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        // A well-formed header around arbitrary payload bytes.
        let (kind, payload) = if mode & 2 == 0 {
            (STAGE1_CONFIG_KIND, rest)
        } else {
            (PLAN_KIND, rest)
        };
        bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(&kind.magic);
        bytes.extend_from_slice(&kind.version.to_le_bytes());
        bytes.extend_from_slice(&0u16.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        bytes.extend_from_slice(payload);
    }
    if let Ok(c) = Stage1Config::decode(&bytes) {
        // Whatever decodes must encode back to the same value.
        let again = c.encode().expect("re-encode stage-1 config");
        assert_eq!(Stage1Config::decode(&again).expect("decode re-encoded"), c);
    }
    if let Ok(p) = envelope::decode::<CompiledPlan>(PLAN_KIND, &bytes) {
        let again = envelope::encode(PLAN_KIND, &p).expect("re-encode plan");
        assert_eq!(
            envelope::decode::<CompiledPlan>(PLAN_KIND, &again).expect("decode"),
            p
        );
    }
});
