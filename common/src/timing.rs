//! Phase times for the boot receipt: each step of stage 1 and stage 2 records when it
//! started and ended on CLOCK_MONOTONIC, in microseconds. It counts from about the kernel's
//! start, as the `[   1.234567]` printk stamps do, but those come from the kernel's
//! `local_clock()`: close to CLOCK_MONOTONIC on hardware, 60-70 ms apart under QEMU's TCG.
//! Whoever mixes the two (the boot timeline) measures the offset.
//!
//! Stage 1 writes the list as JSON by hand ([`Spans::to_json`]: it has no JSON library);
//! stage 2 and the boot crate's receipts read and write the same form through serde:
//! `[{"name":"modules","start":1200345,"end":1260012}, ...]`.

use serde::{Deserialize, Serialize};

/// CLOCK_MONOTONIC in microseconds.
pub fn monotonic_us() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000)
        .saturating_add(ts.tv_nsec as u64 / 1000)
}

/// CPU time this process has used (all its threads, user and system, not its children),
/// in microseconds: CLOCK_PROCESS_CPUTIME_ID.
pub fn process_cpu_us() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000)
        .saturating_add(ts.tv_nsec as u64 / 1000)
}

/// One phase: its name and its start and end in microseconds of CLOCK_MONOTONIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Span {
    pub name: String,
    #[serde(rename = "start")]
    pub start_us: u64,
    #[serde(rename = "end")]
    pub end_us: u64,
}

/// The phases of one boot stage, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Spans(pub Vec<Span>);

impl Spans {
    /// Record `name` as running from `start_us` until now.
    pub fn since(&mut self, name: impl Into<String>, start_us: u64) {
        self.push(name, start_us, monotonic_us());
    }

    pub fn push(&mut self, name: impl Into<String>, start_us: u64, end_us: u64) {
        self.0.push(Span {
            name: name.into(),
            start_us,
            end_us: end_us.max(start_us),
        });
    }

    /// The JSON array described in the module docs.
    pub fn to_json(&self) -> String {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|s| {
                format!(
                    "{{\"name\":{},\"start\":{},\"end\":{}}}",
                    json_string(&s.name),
                    s.start_us,
                    s.end_us
                )
            })
            .collect();
        format!("[{}]", items.join(","))
    }
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_as_json() {
        let mut s = Spans::default();
        s.push("modules", 10, 25);
        s.push("mount \"/\"", 30, 20);
        assert_eq!(
            s.to_json(),
            r#"[{"name":"modules","start":10,"end":25},{"name":"mount \"/\"","start":30,"end":30}]"#
        );
        assert_eq!(Spans::default().to_json(), "[]");
        assert_eq!(json_string("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
    }

    #[test]
    fn since_ends_now() {
        let mut s = Spans::default();
        let t = monotonic_us();
        s.since("x", t);
        assert!(s.0[0].end_us >= t);
        assert!(monotonic_us() >= s.0[0].end_us);
    }
}
