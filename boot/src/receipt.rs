//! The hand-offs of boot counting, typed: stage 1's receipt ([`Stage1Receipt`],
//! `/run/stagehand/stage1.json`) and the boot receipt stage 2 writes from it ([`BootReceipt`],
//! `/run/stagehand/boot.json`, plus one kmsg line).
//!
//! Stage 1 writes its receipt by hand (it carries no JSON library; `stage1/src/attempts.rs`),
//! and a test there reads what it writes back through [`Stage1Receipt::read`]. The reader is
//! strict: an unknown key, a missing one or a value of the wrong kind is an error naming the
//! file and the field, so that a renamed key cannot silently turn counting off. A missing
//! receipt is normal: stage 1 did not run (or is not Stagehand's).
//!
//! Times are microseconds of CLOCK_MONOTONIC (see `common::timing`); `phases` lists each
//! step's start and end.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use stagehand_common::boot_counting::Counter;
pub use stagehand_common::boot_counting::{ATTEMPTS_DIR, BOOT_RECEIPT, RUN_DIR, STAGE1_RECEIPT};
use stagehand_common::timing::Spans;

/// The receipts' format version.
pub const VERSION: u32 = 1;

/// Why the booted generation was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// The generation `init=` names.
    #[serde(rename = "init=")]
    Requested,
    /// The requested one used up its tries; an older one booted instead.
    #[serde(rename = "fallback")]
    Fallback,
    /// The requested one used up its tries and nothing older qualified: it booted anyway.
    #[serde(rename = "exhausted")]
    Exhausted,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Requested => "init=",
            Reason::Fallback => "fallback",
            Reason::Exhausted => "exhausted",
        })
    }
}

/// The generation a fallback came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// Its toplevel's store basename.
    pub from: String,
    /// Its `system-N-link` number, when a profile link points at it.
    pub from_generation: Option<u32>,
    pub failed_boots: u32,
}

/// A generation's state in stage 1's attempt files, written `untried`, `good` or `+L-D`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CounterState {
    /// No attempt file: never booted under counting.
    Untried,
    /// `<base>.good`: marked good, not counted.
    Good,
    /// `<base>+LEFT-DONE`.
    Counting(Counter),
}

impl fmt::Display for CounterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CounterState::Untried => f.write_str("untried"),
            CounterState::Good => f.write_str("good"),
            CounterState::Counting(c) => c.fmt(f),
        }
    }
}

impl TryFrom<String> for CounterState {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "untried" => Ok(CounterState::Untried),
            "good" => Ok(CounterState::Good),
            other => Counter::parse(other)
                .map(CounterState::Counting)
                .ok_or_else(|| {
                    format!("{other:?} is not a counter state (untried, good or +LEFT-DONE)")
                }),
        }
    }
}

impl From<CounterState> for String {
    fn from(s: CounterState) -> String {
        s.to_string()
    }
}

/// The booted generation's counter before and after this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterChange {
    pub before: CounterState,
    pub after: CounterState,
}

/// Stage 1's times.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage1Times {
    #[serde(rename = "start")]
    pub start_us: u64,
    /// Loading the kernel modules.
    #[serde(rename = "modules")]
    pub modules_us: u64,
    /// Waiting for devices, fsck and mounts together.
    #[serde(rename = "mounts")]
    pub mounts_us: u64,
    /// Boot counting.
    #[serde(rename = "attempts")]
    pub attempts_us: u64,
    #[serde(rename = "end")]
    pub end_us: u64,
    #[serde(rename = "total")]
    pub total_us: u64,
    /// Inside `finit_module` (the kernel reading, checking and initialising modules).
    /// This and the next four are absent from the receipts of stage 1s before them.
    #[serde(
        rename = "finit_module",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub finit_module_us: Option<u64>,
    /// Blocked waiting for device nodes (the disk's driver).
    #[serde(
        rename = "device_wait",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub device_wait_us: Option<u64>,
    /// In the filesystem checkers (the `fsck …` phases).
    #[serde(rename = "fsck", default, skip_serializing_if = "Option::is_none")]
    pub fsck_us: Option<u64>,
    /// Stage 1's own work: `total` less `finit_module`, `fsck` and `device_wait`.
    #[serde(rename = "own", default, skip_serializing_if = "Option::is_none")]
    pub own_us: Option<u64>,
    /// CPU time stage 1 used (user and system, `finit_module` included, its checkers not).
    #[serde(rename = "cpu", default, skip_serializing_if = "Option::is_none")]
    pub cpu_us: Option<u64>,
    /// Of `cpu`, the part in user space: stage 1's own code rather than the kernel working
    /// for it (sampled at the clock tick, so approximate).
    #[serde(rename = "user_cpu", default, skip_serializing_if = "Option::is_none")]
    pub user_cpu_us: Option<u64>,
    /// Every step's start and end, in order (the boot timeline).
    pub phases: Spans,
}

/// What stage 1 leaves in [`STAGE1_RECEIPT`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage1Receipt {
    pub version: u32,
    /// The init stage 1 execs (a fallback's, when it fell back).
    pub init: String,
    /// `stagehand.tries=`; 0 when counting is off.
    pub tries: u32,
    /// The toplevel basename `init=` resolved to (only when counting).
    #[serde(default)]
    pub requested: Option<String>,
    /// The toplevel basename that boots (only when counting).
    #[serde(default)]
    pub booted: Option<String>,
    /// The booted `system-N-link` number, when one points at it.
    #[serde(default)]
    pub generation: Option<u32>,
    pub reason: Reason,
    #[serde(default)]
    pub fallback: Option<Fallback>,
    /// The requested generation's failed boots when it is [`Reason::Exhausted`].
    #[serde(default)]
    pub failed_boots: Option<u32>,
    #[serde(default)]
    pub counter: Option<CounterChange>,
    /// `false` when stage 1 did not count this boot.
    #[serde(default)]
    pub counting: Option<bool>,
    /// Stage 1's peak resident set size (`VmHWM`) in KiB, read just before the receipt
    /// was written (absent from older stage 1s' receipts).
    #[serde(default)]
    pub peak_rss_kib: Option<u64>,
    pub times_us: Stage1Times,
}

/// A receipt that is there but cannot be used.
#[derive(Debug)]
pub enum ReceiptError {
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not the receipt this reader knows: `field` is the path to the bad value (`None` when
    /// the document as a whole is wrong: not JSON, cut short, a key missing).
    Malformed {
        path: PathBuf,
        field: Option<String>,
        message: String,
    },
}

impl fmt::Display for ReceiptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceiptError::Read { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            ReceiptError::Malformed {
                path,
                field,
                message,
            } => {
                write!(f, "{}: ", path.display())?;
                if let Some(field) = field {
                    write!(f, "field {field}: ")?;
                }
                write!(
                    f,
                    "{message}; stage 1 (from the initrd) and stage 2 (from the generation) \
                     disagree on the receipt's format: rebuild the initrd with this \
                     generation's Stagehand"
                )
            }
        }
    }
}

impl std::error::Error for ReceiptError {}

impl Stage1Receipt {
    /// Read `path`: `Ok(None)` when there is none (stage 1 did not leave one).
    pub fn read(path: &Path) -> Result<Option<Stage1Receipt>, ReceiptError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(ReceiptError::Read {
                    path: path.to_owned(),
                    error,
                })
            }
        };
        Self::parse(path, &text).map(Some)
    }

    /// Parse the bytes of a receipt; `path` is only used in messages.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Stage1Receipt, ReceiptError> {
        let malformed = |field: Option<String>, message: String| ReceiptError::Malformed {
            path: path.to_owned(),
            field,
            message,
        };
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let r: Stage1Receipt = serde_path_to_error::deserialize(de).map_err(|e| {
            // `.` is the document itself, `?` a place the parser had not named yet.
            let field = Some(e.path().to_string()).filter(|p| p != "." && p != "?");
            malformed(field, e.inner().to_string())
        })?;
        if r.version != VERSION {
            return Err(malformed(
                Some("version".into()),
                format!("is {}, this stage 2 reads version {VERSION}", r.version),
            ));
        }
        Ok(r)
    }

    /// The generation whose stage-1 counter runs this boot and its counter after this boot;
    /// `None` when stage 1 did not count, or the generation is already good.
    pub fn counted_generation(&self) -> Option<(&str, Counter)> {
        match (&self.booted, &self.counter) {
            (
                Some(base),
                Some(CounterChange {
                    after: CounterState::Counting(c),
                    ..
                }),
            ) => Some((base, *c)),
            _ => None,
        }
    }
}

/// Stage 2's times.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage2Times {
    #[serde(rename = "start")]
    pub start_us: u64,
    #[serde(rename = "activation")]
    pub activation_us: u64,
    /// Each activation step's duration.
    #[serde(rename = "activation_steps")]
    pub activation_steps_us: BTreeMap<String, u64>,
    #[serde(rename = "end")]
    pub end_us: u64,
    #[serde(rename = "total")]
    pub total_us: u64,
    /// Every step's start and end, in order (the boot timeline).
    pub phases: Spans,
    /// The activation steps' starts and ends, in order.
    pub activation_phases: Spans,
}

impl Stage2Times {
    /// Times that start now (`start_us`).
    pub fn starting_at(start_us: u64) -> Stage2Times {
        Stage2Times {
            start_us,
            ..Stage2Times::default()
        }
    }

    /// Record the activation steps that ran back to back from `start_us`: each starts
    /// where the one before ended (the engine reports durations; what runs between two
    /// steps is one log line).
    pub fn record_activation_steps(&mut self, start_us: u64, steps: Vec<(String, u64)>) {
        let mut at = start_us;
        for (name, us) in steps {
            self.activation_phases.push(name.clone(), at, at + us);
            at += us;
            self.activation_steps_us.insert(name, us);
        }
    }

    /// Stage 2 ends at `end_us`.
    pub fn finish(&mut self, end_us: u64) {
        self.end_us = end_us;
        self.total_us = end_us.saturating_sub(self.start_us);
    }
}

/// Both stages' times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootTimes {
    /// `None` when stage 1 left no receipt.
    pub stage1: Option<Stage1Times>,
    pub stage2: Stage2Times,
}

/// What stage 2 leaves in [`BOOT_RECEIPT`]: which generation booted, why, its counter, what
/// was blessed, and every phase's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootReceipt {
    pub version: u32,
    pub toplevel: String,
    /// Stage 2's mode (after Stagehand's stage 1, direct, container, systemd initrd).
    pub mode: String,
    pub generation: Option<u32>,
    pub reason: Reason,
    pub fallback: Option<Fallback>,
    pub counter: Option<CounterChange>,
    /// What `stagehand.bless=stage2` marked good.
    pub blessed: Option<String>,
    /// Stage 1's peak resident set size in KiB, when its receipt says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage1_peak_rss_kib: Option<u64>,
    pub times_us: BootTimes,
}

impl BootReceipt {
    /// The receipt of this boot: stage 1's part (if it left one) and stage 2's.
    pub fn new(
        mode: &str,
        stage1: Option<&Stage1Receipt>,
        toplevel: &str,
        blessed: Option<&str>,
        stage2: Stage2Times,
    ) -> BootReceipt {
        BootReceipt {
            version: VERSION,
            toplevel: toplevel.to_owned(),
            mode: mode.to_owned(),
            generation: stage1.and_then(|s| s.generation),
            reason: stage1.map_or(Reason::Requested, |s| s.reason),
            fallback: stage1.and_then(|s| s.fallback.clone()),
            counter: stage1.and_then(|s| s.counter),
            blessed: blessed.map(str::to_owned),
            stage1_peak_rss_kib: stage1.and_then(|s| s.peak_rss_kib),
            times_us: BootTimes {
                stage1: stage1.map(|s| s.times_us.clone()),
                stage2,
            },
        }
    }

    /// The one kmsg line.
    pub fn summary(&self) -> String {
        let mut line = match self.generation {
            None => format!("boot receipt: booted {}", self.toplevel),
            Some(g) => format!("boot receipt: booted generation {g} ({})", self.toplevel),
        };
        let or_unknown = |n: Option<u32>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        match self.reason {
            Reason::Fallback => line.push_str(&format!(
                " as a fallback from generation {} after {} failed boots",
                or_unknown(self.fallback.as_ref().and_then(|f| f.from_generation)),
                or_unknown(self.fallback.as_ref().map(|f| f.failed_boots))
            )),
            reason => line.push_str(&format!(" by {reason}")),
        }
        if let Some(c) = &self.counter {
            line.push_str(&format!("; counter {} -> {}", c.before, c.after));
        }
        if let Some(b) = &self.blessed {
            line.push_str(&format!("; marked good ({b})"));
        }
        if let Some(s1) = &self.times_us.stage1 {
            line.push_str(&format!(
                "; stage1 {} us (modules {}, devices+fsck+mounts {}, counting {}",
                s1.total_us, s1.modules_us, s1.mounts_us, s1.attempts_us
            ));
            if let Some(own) = s1.own_us {
                line.push_str(&format!("; own work {own}"));
                if let Some(user) = s1.user_cpu_us {
                    line.push_str(&format!(", of it {user} in user space"));
                }
            }
            if let Some(kib) = self.stage1_peak_rss_kib {
                line.push_str(&format!("; peak RSS {kib} KiB"));
            }
            line.push(')');
        }
        let s2 = &self.times_us.stage2;
        line.push_str(&format!(
            "; stage2 {} us (activation {})",
            s2.total_us, s2.activation_us
        ));
        line.push_str(&format!("; {BOOT_RECEIPT}"));
        line
    }

    /// Write the receipt to `path` as pretty JSON, atomically.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| format!("cannot encode the boot receipt: {e}"))?
            + "\n";
        stagehand_common::atomic::write_file(path, text.as_bytes(), 0o644)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const FALLBACK: &str = r#"{"version":1,"init":"/nix/store/a/init","tries":1,"requested":"b",
        "booted":"a","generation":1,"reason":"fallback",
        "fallback":{"from":"b","from_generation":2,"failed_boots":1},
        "counter":{"before":"untried","after":"+0-1"},
        "times_us":{"start":10,"modules":1,"mounts":2,"attempts":3,"end":40,"total":30,
                    "phases":[{"name":"modules","start":11,"end":12}]}}"#;

    fn parse(text: &str) -> Result<Stage1Receipt, ReceiptError> {
        Stage1Receipt::parse(Path::new("/run/stagehand/stage1.json"), text.as_bytes())
    }

    #[test]
    fn stage1_receipt_is_typed() {
        let r = parse(FALLBACK).expect("parse");
        assert_eq!(r.reason, Reason::Fallback);
        assert_eq!(
            r.counter,
            Some(CounterChange {
                before: CounterState::Untried,
                after: CounterState::Counting(Counter {
                    left: 0,
                    done: Some(1)
                }),
            })
        );
        assert_eq!(r.times_us.phases.0[0].name, "modules");
        assert_eq!(
            r.counted_generation(),
            Some((
                "a",
                Counter {
                    left: 0,
                    done: Some(1)
                }
            ))
        );
        let off = parse(
            r#"{"version":1,"init":"/init","tries":0,"reason":"init=","counting":false,
                "times_us":{"start":1,"modules":0,"mounts":0,"attempts":0,"end":2,"total":1,
                            "phases":[]}}"#,
        )
        .expect("not counting");
        assert_eq!(off.counted_generation(), None);
        let good = FALLBACK.replace(r#""after":"+0-1""#, r#""after":"good""#);
        assert_eq!(parse(&good).expect("good").counted_generation(), None);
    }

    /// Every way a receipt can be wrong names the file and the field.
    #[test]
    fn malformed_receipts_name_the_file_and_the_field() {
        let cases = [
            (
                "renamed key",
                FALLBACK.replace("\"booted\"", "\"boted\""),
                "boted",
            ),
            (
                "missing key",
                FALLBACK.replace("\"tries\":1,", ""),
                "missing field `tries`",
            ),
            (
                "bad counter",
                FALLBACK.replace("+0-1", "+zero"),
                "counter.after",
            ),
            (
                "bad reason",
                FALLBACK.replace("\"fallback\",", "\"because\","),
                "reason",
            ),
            (
                "bad phase",
                FALLBACK.replace("\"end\":12", "\"end\":\"12\""),
                "times_us.phases[0].end",
            ),
            (
                "unknown time",
                FALLBACK.replace("\"total\":30", "\"total\":30,\"resume\":1"),
                "resume",
            ),
            (
                "version",
                FALLBACK.replace("\"version\":1", "\"version\":2"),
                "version",
            ),
            ("cut short", FALLBACK[..60].to_owned(), "EOF while parsing"),
            (
                "not an object",
                "[]".into(),
                "expected struct Stage1Receipt",
            ),
            ("empty", String::new(), "EOF while parsing"),
        ];
        for (case, text, field) in cases {
            let e = parse(&text).expect_err(case).to_string();
            assert!(e.starts_with("/run/stagehand/stage1.json: "), "{case}: {e}");
            assert!(e.contains(field), "{case}: {field} missing from {e}");
            assert!(e.contains("rebuild the initrd"), "{case}: {e}");
        }
    }

    #[test]
    fn a_missing_receipt_is_none() {
        let t = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            Stage1Receipt::read(&t.path().join("stage1.json")),
            Ok(None)
        ));
        let p = t.path().join("stage1.json");
        std::fs::write(&p, b"\xff\xfe\x00\x01").expect("write");
        assert!(matches!(
            Stage1Receipt::read(&p),
            Err(ReceiptError::Malformed { .. })
        ));
        std::fs::write(&p, FALLBACK).expect("write");
        assert!(matches!(Stage1Receipt::read(&p), Ok(Some(_))));
    }

    #[test]
    fn boot_receipt_and_summary() {
        let s1 = parse(FALLBACK).expect("parse");
        let mut t = Stage2Times::starting_at(50);
        t.activation_us = 20;
        t.phases.push("activation", 60, 80);
        t.record_activation_steps(61, vec![("users".into(), 4), ("etc".into(), 5)]);
        t.finish(90);
        let r = BootReceipt::new(
            "after Stagehand's stage 1",
            Some(&s1),
            "/nix/store/a",
            None,
            t.clone(),
        );
        let v: Value = serde_json::to_value(&r).expect("json");
        assert_eq!(v["mode"], json!("after Stagehand's stage 1"));
        assert_eq!(v["reason"], json!("fallback"));
        assert_eq!(v["generation"], json!(1));
        assert_eq!(v["counter"], json!({"before": "untried", "after": "+0-1"}));
        assert_eq!(v["fallback"]["from_generation"], json!(2));
        assert_eq!(v["blessed"], Value::Null);
        assert_eq!(v["times_us"]["stage1"]["total"], json!(30));
        assert_eq!(
            v["times_us"]["stage1"]["phases"],
            json!([{"name": "modules", "start": 11, "end": 12}])
        );
        assert_eq!(v["times_us"]["stage2"]["total"], json!(40));
        assert_eq!(v["times_us"]["stage2"]["activation_steps"]["etc"], json!(5));
        assert_eq!(
            v["times_us"]["stage2"]["phases"],
            json!([{"name": "activation", "start": 60, "end": 80}])
        );
        assert_eq!(
            v["times_us"]["stage2"]["activation_phases"],
            json!([
                {"name": "users", "start": 61, "end": 65},
                {"name": "etc", "start": 65, "end": 70}
            ])
        );
        let line = r.summary();
        assert!(
            line.starts_with(
                "boot receipt: booted generation 1 (/nix/store/a) as a fallback from generation 2 \
                 after 1 failed boots; counter untried -> +0-1; stage1 30 us (modules 1, \
                 devices+fsck+mounts 2, counting 3); stage2 40 us (activation 20); \
                 /run/stagehand/boot.json"
            ),
            "{line}"
        );
        let r = BootReceipt::new("direct", None, "/nix/store/a", Some("x"), t);
        let v: Value = serde_json::to_value(&r).expect("json");
        assert_eq!(v["reason"], json!("init="));
        assert_eq!(v["times_us"]["stage1"], Value::Null);
        assert_eq!(
            r.summary(),
            "boot receipt: booted /nix/store/a by init=; marked good (x); stage2 40 us \
             (activation 20); /run/stagehand/boot.json"
        );
    }

    #[test]
    fn boot_receipt_is_written_atomically_and_reads_back() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("run/stagehand/boot.json");
        let r = BootReceipt::new(
            "direct",
            Some(&parse(FALLBACK).expect("parse")),
            "/nix/store/a",
            None,
            Stage2Times::starting_at(5),
        );
        r.write(&p).expect("write");
        let text = std::fs::read_to_string(&p).expect("read");
        assert!(text.ends_with("}\n"), "{text}");
        let back: BootReceipt = serde_json::from_str(&text).expect("typed");
        assert_eq!(back, r);
    }
}
