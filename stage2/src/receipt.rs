//! The boot receipt: `/run/stagehand/boot.json` and one kmsg line saying which generation
//! booted, why (init= or a fallback from stage 1's boot counting), the counters before and
//! after, and every phase's time in microseconds of CLOCK_MONOTONIC (see
//! `common::timing`; `phases` lists each step's start and end). Stage 1's part comes from
//! `/run/stagehand/stage1.json`.
//!
//! Also the interim bless: with `stagehand.bless=stage2` the booted generation's counter
//! `<base>+LEFT-DONE` in the boot-attempts directory is renamed to `<base>.good`.

use std::path::Path;

use serde_json::{json, Value};
use stagehand_common::timing::Spans;

pub const STAGE1_JSON: &str = "/run/stagehand/stage1.json";
pub const BOOT_JSON: &str = "/run/stagehand/boot.json";
/// Stage 1's boot-attempts directory (see `stage1/src/attempts.rs`).
pub const STATE_DIR: &str = "/nix/var/nix/stagehand/boot-attempts";

/// Stage 2's phase times.
#[derive(Debug, Clone, Default)]
pub struct Stage2Times {
    pub start_us: u64,
    pub activation_us: u64,
    /// Each activation step and its duration.
    pub steps: Vec<(String, u64)>,
    pub end_us: u64,
    /// Every step's start and end, in order (the boot timeline).
    pub phases: Spans,
    /// The activation steps' starts and ends, in order.
    pub activation_phases: Spans,
}

impl Stage2Times {
    /// Record the activation steps that ran back to back from `start_us`: each starts
    /// where the one before ended (the engine reports durations; what runs between two
    /// steps is one log line).
    pub fn record_activation_steps(&mut self, start_us: u64, steps: Vec<(String, u64)>) {
        let mut at = start_us;
        for (name, us) in &steps {
            self.activation_phases.push(name.clone(), at, at + us);
            at += us;
        }
        self.steps = steps;
    }
}

fn spans_json(spans: &Spans) -> Value {
    spans
        .0
        .iter()
        .map(|s| json!({"name": s.name, "start": s.start_us, "end": s.end_us}))
        .collect()
}

/// Stage 1's receipt, if it left a readable one.
pub fn read_stage1(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// The whole receipt.
pub fn build(
    mode: &str,
    stage1: Option<&Value>,
    toplevel: &str,
    blessed: Option<&str>,
    t: &Stage2Times,
) -> Value {
    let s1 = stage1.cloned().unwrap_or(Value::Null);
    let steps: serde_json::Map<String, Value> = t
        .steps
        .iter()
        .map(|(n, us)| (n.clone(), json!(us)))
        .collect();
    json!({
        "version": 1,
        "toplevel": toplevel,
        "mode": mode,
        "generation": s1.get("generation").cloned().unwrap_or(Value::Null),
        "reason": s1.get("reason").cloned().unwrap_or(json!("init=")),
        "fallback": s1.get("fallback").cloned().unwrap_or(Value::Null),
        "counter": s1.get("counter").cloned().unwrap_or(Value::Null),
        "blessed": blessed,
        "times_us": {
            "stage1": s1.get("times_us").cloned().unwrap_or(Value::Null),
            "stage2": {
                "start": t.start_us,
                "activation": t.activation_us,
                "activation_steps": steps,
                "end": t.end_us,
                "total": t.end_us.saturating_sub(t.start_us),
                "phases": spans_json(&t.phases),
                "activation_phases": spans_json(&t.activation_phases),
            },
        },
    })
}

/// The one kmsg line.
#[expect(
    clippy::indexing_slicing,
    reason = "indexing a serde_json::Value by key yields Null when the key or object is missing"
)]
pub fn summary(r: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "?".into(),
        v => v.to_string(),
    };
    let toplevel = s(&r["toplevel"]);
    let mut line = match &r["generation"] {
        Value::Null => format!("boot receipt: booted {toplevel}"),
        g => format!("boot receipt: booted generation {g} ({toplevel})"),
    };
    match r["reason"].as_str() {
        Some("fallback") => line.push_str(&format!(
            " as a fallback from generation {} after {} failed boots",
            s(&r["fallback"]["from_generation"]),
            s(&r["fallback"]["failed_boots"])
        )),
        Some(reason) => line.push_str(&format!(" by {reason}")),
        None => {}
    }
    if !r["counter"].is_null() {
        line.push_str(&format!(
            "; counter {} -> {}",
            s(&r["counter"]["before"]),
            s(&r["counter"]["after"])
        ));
    }
    if let Some(b) = r["blessed"].as_str() {
        line.push_str(&format!("; marked good ({b})"));
    }
    let s1 = &r["times_us"]["stage1"];
    if !s1.is_null() {
        line.push_str(&format!(
            "; stage1 {} us (modules {}, devices+fsck+mounts {}, counting {})",
            s(&s1["total"]),
            s(&s1["modules"]),
            s(&s1["mounts"]),
            s(&s1["attempts"])
        ));
    }
    let s2 = &r["times_us"]["stage2"];
    line.push_str(&format!(
        "; stage2 {} us (activation {})",
        s(&s2["total"]),
        s(&s2["activation"])
    ));
    line.push_str(&format!("; {BOOT_JSON}"));
    line
}

/// Write `value` to `path` as pretty JSON, atomically.
pub fn write_atomic(path: &Path, value: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())? + "\n";
    stagehand_common::atomic::write_file(path, text.as_bytes())
}

/// Is `name` a `<base>+LEFT[-DONE]` counter of `base`?
fn is_counter_of(name: &str, base: &str) -> bool {
    name.strip_prefix(base)
        .and_then(|t| t.strip_prefix('+'))
        .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
}

/// Mark `base` good in `state_dir`: its counter is renamed to `<base>.good` (created when
/// there is none), other counters of it removed, the directory fsynced. Returns what was done.
pub fn bless(state_dir: &Path, base: &str) -> Result<String, String> {
    let good = state_dir.join(format!("{base}.good"));
    if good.exists() {
        return Ok(format!("{base} already good"));
    }
    std::fs::create_dir_all(state_dir)
        .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    let mut counters: Vec<String> = std::fs::read_dir(state_dir)
        .map_err(|e| format!("cannot list {}: {e}", state_dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_counter_of(n, base))
        .collect();
    counters.sort();
    let done = match counters.split_first() {
        Some((first, rest)) => {
            std::fs::rename(state_dir.join(first), &good)
                .map_err(|e| format!("cannot rename {first} to {}: {e}", good.display()))?;
            for r in rest {
                let _ = std::fs::remove_file(state_dir.join(r));
            }
            format!("{first} -> {base}.good")
        }
        None => {
            std::fs::File::create(&good)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("cannot create {}: {e}", good.display()))?;
            format!("created {base}.good")
        }
    };
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", state_dir.display()))?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bless_renames_the_counter() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("boot-attempts");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("a-sys+0-1"), "").expect("write");
        std::fs::write(dir.join("a-sys-2+1-0"), "").expect("write");
        assert_eq!(
            bless(&dir, "a-sys").expect("bless"),
            "a-sys+0-1 -> a-sys.good"
        );
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("list")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        assert_eq!(names, ["a-sys-2+1-0", "a-sys.good"]);
        assert_eq!(bless(&dir, "a-sys").expect("bless"), "a-sys already good");
        assert_eq!(bless(&dir, "b").expect("bless"), "created b.good");
    }

    #[test]
    fn receipt_and_summary() {
        let s1: Value = serde_json::from_str(
            r#"{"version":1,"init":"/nix/store/a/init","tries":1,"requested":"b","booted":"a",
                "generation":1,"reason":"fallback",
                "fallback":{"from":"b","from_generation":2,"failed_boots":1},
                "counter":{"before":"untried","after":"+0-1"},
                "times_us":{"start":10,"modules":1,"mounts":2,"attempts":3,"end":40,"total":30}}"#,
        )
        .expect("json");
        let mut t = Stage2Times {
            start_us: 50,
            activation_us: 20,
            end_us: 90,
            ..Stage2Times::default()
        };
        t.phases.push("activation", 60, 80);
        t.record_activation_steps(61, vec![("users".into(), 4), ("etc".into(), 5)]);
        let r = build(
            "after Stagehand's stage 1",
            Some(&s1),
            "/nix/store/a",
            None,
            &t,
        );
        assert_eq!(r["mode"], json!("after Stagehand's stage 1"));
        assert_eq!(r["times_us"]["stage2"]["total"], json!(40));
        assert_eq!(r["times_us"]["stage2"]["activation_steps"]["etc"], json!(5));
        assert_eq!(
            r["times_us"]["stage2"]["phases"],
            json!([{"name": "activation", "start": 60, "end": 80}])
        );
        assert_eq!(
            r["times_us"]["stage2"]["activation_phases"],
            json!([
                {"name": "users", "start": 61, "end": 65},
                {"name": "etc", "start": 65, "end": 70}
            ])
        );
        let line = summary(&r);
        assert!(
            line.starts_with(
                "boot receipt: booted generation 1 (/nix/store/a) as a fallback from generation 2 \
                 after 1 failed boots; counter untried -> +0-1; stage1 30 us"
            ),
            "{line}"
        );
        let r = build("direct", None, "/nix/store/a", Some("x"), &t);
        assert!(summary(&r).starts_with(
            "boot receipt: booted /nix/store/a by init=; marked good (x); stage2 40 us"
        ));
    }

    #[test]
    fn counters_of_a_base() {
        assert!(is_counter_of("a+1-2", "a"));
        assert!(is_counter_of("a+3", "a"));
        assert!(!is_counter_of("a-2+1-0", "a"));
        assert!(!is_counter_of("a.good", "a"));
        assert!(!is_counter_of("a+", "a"));
    }
}
