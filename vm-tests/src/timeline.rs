//! The boot timeline picture: one boot's receipt (`/run/stagehand/boot.json`, which carries
//! stage 1's part too) drawn as an SVG in the manner of `systemd-analyze plot`: one bar per
//! phase on a time axis that starts when the kernel does, each labelled with its name and
//! duration.
//!
//! The receipt's times are CLOCK_MONOTONIC microseconds. The console's `[   2.345678]`
//! printk stamps come from the kernel's `local_clock()`, which also counts from about the
//! kernel's start but is not the same clock: under QEMU's TCG the two differ by 60-70 ms.
//! Phases seen only on the console (systemd starting, the marker unit running) are moved
//! onto the receipt's clock by the offset the guest probe measures (its kmsg line's stamp
//! against CLOCK_MONOTONIC read right after writing it), see [`from_boot`].
//!
//! Pure: receipt in, SVG text out. It runs on the host (the demo) rather than in stage 2,
//! which would otherwise carry the drawing code in PID 1 of every boot for a picture nobody
//! looks at during the boot; the receipt is the interface.

use std::fmt::Write as _;

use serde_json::Value;

use crate::console::Phases;

/// Which part of the boot a bar belongs to (its colour and legend entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Kernel,
    Stage1,
    SwitchRoot,
    Stage2,
    Activation,
    Systemd,
}

impl Part {
    const ALL: [Part; 6] = [
        Part::Kernel,
        Part::Stage1,
        Part::SwitchRoot,
        Part::Stage2,
        Part::Activation,
        Part::Systemd,
    ];

    fn name(self) -> &'static str {
        match self {
            Part::Kernel => "kernel",
            Part::Stage1 => "stage 1 (initrd /init)",
            Part::SwitchRoot => "switch_root",
            Part::Stage2 => "stage 2",
            Part::Activation => "activation step",
            Part::Systemd => "systemd",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Part::Kernel => "#9e9e9e",
            Part::Stage1 => "#e57373",
            Part::SwitchRoot => "#ffb74d",
            Part::Stage2 => "#64b5f6",
            Part::Activation => "#4db6ac",
            Part::Systemd => "#ba68c8",
        }
    }
}

/// One bar: a phase, its part of the boot and its span in microseconds since the kernel
/// started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bar {
    pub label: String,
    pub part: Part,
    pub start_us: u64,
    pub end_us: u64,
}

impl Bar {
    pub fn duration_us(&self) -> u64 {
        self.end_us.saturating_sub(self.start_us)
    }

    /// `name (12.3 ms)`: what the picture shows next to the bar.
    pub fn caption(&self) -> String {
        format!("{} ({})", self.label, duration(self.duration_us()))
    }
}

/// Every phase of one boot, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    pub title: String,
    /// Which clock the axis is, and how console stamps were put on it.
    pub clock: String,
    pub bars: Vec<Bar>,
    /// When stage 2 wrote the receipt, right before it execs systemd.
    pub exec_us: Option<u64>,
}

/// The times of the receipt this module reads, in microseconds.
struct ReceiptTimes<'a> {
    stage1: &'a Value,
    stage2: &'a Value,
}

fn field_u64(v: &Value, path: &str) -> Result<u64, String> {
    v.get(path)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("the receipt has no number at {path}"))
}

fn spans<'a>(v: &'a Value, key: &str, at: &str) -> Result<Vec<(&'a str, u64, u64)>, String> {
    let list = v.get(key).and_then(Value::as_array).ok_or_else(|| {
        format!(
            "the receipt has no {at}.{key} (the list of step starts and ends); it was written \
             by a stage 1 or stage 2 older than the boot timeline"
        )
    })?;
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let name = s.get("name").and_then(Value::as_str);
            let start = s.get("start").and_then(Value::as_u64);
            let end = s.get("end").and_then(Value::as_u64);
            match (name, start, end) {
                (Some(n), Some(a), Some(b)) => Ok((n, a, b)),
                _ => Err(format!(
                    "{at}.{key}[{i}] is not {{\"name\": string, \"start\": µs, \"end\": µs}}: {s}"
                )),
            }
        })
        .collect()
}

impl Timeline {
    /// The phases a receipt records: the kernel up to `/init`, each stage-1 step,
    /// switch_root, each stage-2 step with the activation steps after the activation bar,
    /// up to the exec of systemd. A receipt without the phase lists is refused with the
    /// field that is missing.
    pub fn from_receipt(receipt: &Value) -> Result<Self, String> {
        let times = &receipt["times_us"];
        let t = ReceiptTimes {
            stage1: &times["stage1"],
            stage2: &times["stage2"],
        };
        if t.stage1.is_null() {
            return Err(
                "the receipt has no times_us.stage1: stage 2 found no stage1.json \
                        (booted without our stage 1?)"
                    .into(),
            );
        }
        let s1_start = field_u64(t.stage1, "start").map_err(|e| format!("stage 1: {e}"))?;
        let s1_end = field_u64(t.stage1, "end").map_err(|e| format!("stage 1: {e}"))?;
        let s2_start = field_u64(t.stage2, "start").map_err(|e| format!("stage 2: {e}"))?;
        let s2_end = field_u64(t.stage2, "end").map_err(|e| format!("stage 2: {e}"))?;

        let mut bars = vec![Bar {
            label: "kernel → /init".into(),
            part: Part::Kernel,
            start_us: 0,
            end_us: s1_start,
        }];
        let mut push = |label: &str, part, start_us, end_us| {
            bars.push(Bar {
                label: label.to_string(),
                part,
                start_us,
                end_us,
            })
        };
        for (name, a, b) in spans(t.stage1, "phases", "times_us.stage1")? {
            push(&format!("stage 1: {name}"), Part::Stage1, a, b);
        }
        push("switch_root → stage 2", Part::SwitchRoot, s1_end, s2_start);
        let steps = spans(t.stage2, "activation_phases", "times_us.stage2")?;
        for (name, a, b) in spans(t.stage2, "phases", "times_us.stage2")? {
            push(&format!("stage 2: {name}"), Part::Stage2, a, b);
            if name == "activation" {
                for &(step, a, b) in &steps {
                    push(&format!("activation: {step}"), Part::Activation, a, b);
                }
            }
        }

        let generation = match &receipt["generation"] {
            Value::Null => String::new(),
            g => format!("generation {g} "),
        };
        let toplevel = receipt["toplevel"].as_str().unwrap_or("?");
        Ok(Self {
            title: format!("Stagehand boot of {generation}{toplevel}"),
            clock: "times are CLOCK_MONOTONIC, from the boot receipt".into(),
            bars,
            exec_us: Some(s2_end),
        })
    }

    /// Add a phase seen elsewhere (the console's kernel stamps), in microseconds.
    pub fn push(&mut self, label: &str, part: Part, start_us: u64, end_us: u64) {
        self.bars.push(Bar {
            label: label.to_string(),
            part,
            start_us,
            end_us: end_us.max(start_us),
        });
    }

    /// One part's bars as text, `stage 2: special filesystems 2.1 ms, …` with their sum:
    /// the receipt's breakdown for a report.
    pub fn breakdown(&self, part: Part) -> String {
        let bars: Vec<&Bar> = self.bars.iter().filter(|b| b.part == part).collect();
        let total: u64 = bars.iter().map(|b| b.duration_us()).sum();
        // The labels repeat the part (`stage 2: remount / rw`); the line names it once.
        let each: Vec<String> = bars
            .iter()
            .map(|b| {
                let step = b
                    .label
                    .split_once(": ")
                    .map_or(b.label.as_str(), |(_, s)| s);
                format!("{step} {}", duration(b.duration_us()))
            })
            .collect();
        format!(
            "{}: {} — sum {}",
            part.name(),
            each.join(", "),
            duration(total)
        )
    }

    /// Where systemd's part starts: the exec at the end of stage 2.
    pub fn exec_systemd_us(&self) -> Option<u64> {
        self.exec_us
    }

    fn end_us(&self) -> u64 {
        self.bars.iter().map(|b| b.end_us).max().unwrap_or(0)
    }

    /// The picture: a time axis from 0 (kernel start), one row per bar with its caption.
    pub fn to_svg(&self) -> String {
        const LEFT: f64 = 20.0;
        const CHART: f64 = 1000.0;
        const LABELS: f64 = 360.0;
        const TOP: f64 = 70.0;
        const ROW: f64 = 16.0;
        const BAR: f64 = 11.0;

        let total = self.end_us().max(1);
        let tick = tick_us(total);
        // The axis runs to the first tick at or after the end.
        let axis_end = total.div_ceil(tick) * tick;
        let scale = CHART / axis_end as f64;
        let x = |us: u64| LEFT + us as f64 * scale;
        let width = LEFT + CHART + LABELS;
        let chart_bottom = TOP + ROW * self.bars.len() as f64;
        let height = chart_bottom + 30.0;

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(
            s,
            r##"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="#ffffff"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="20" font-size="15" font-weight="bold">{}</text>"#,
            escape(&self.title)
        );
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="38">kernel start → last phase: {} · {}</text>"#,
            duration(total),
            escape(&self.clock)
        );
        let mut lx = LEFT;
        for part in Part::ALL {
            let _ = writeln!(
                s,
                r#"<rect x="{lx:.1}" y="46" width="10" height="10" fill="{}"/><text x="{:.1}" y="55">{}</text>"#,
                part.colour(),
                lx + 14.0,
                escape(part.name())
            );
            lx += 24.0 + 6.0 * part.name().chars().count() as f64;
        }
        // Grid and axis labels.
        let mut at = 0;
        while at <= axis_end {
            let gx = x(at);
            let _ = writeln!(
                s,
                r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{chart_bottom:.1}" stroke="#dddddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle" fill="#555555">{}</text>"##,
                chart_bottom + 14.0,
                axis_label(at, tick)
            );
            at += tick;
        }
        for (i, bar) in self.bars.iter().enumerate() {
            let y = TOP + ROW * i as f64 + (ROW - BAR) / 2.0;
            let bx = x(bar.start_us);
            // Bars shorter than a pixel still show as a hairline.
            let bw = (bar.duration_us() as f64 * scale).max(1.0);
            let _ = writeln!(
                s,
                r#"<rect x="{bx:.2}" y="{y:.1}" width="{bw:.2}" height="{BAR}" fill="{}"><title>{}</title></rect>"#,
                bar.part.colour(),
                escape(&bar.caption())
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.2}" y="{:.1}">{}</text>"#,
                bx + bw + 4.0,
                y + BAR - 2.0,
                escape(&bar.caption())
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Every bar the demo boot draws (activation steps besides, one per step the receipt
/// names): a phase that stops being recorded makes the boot-spine scenario fail.
pub const DEMO_PHASES: &[&str] = &[
    "kernel → /init",
    "stage 1: special filesystems",
    "stage 1: config",
    "stage 1: modules",
    "stage 1: devices",
    "stage 1: fsck /",
    "stage 1: mount /",
    "stage 1: find init=",
    "stage 1: boot counting",
    "switch_root → stage 2",
    "stage 2: special filesystems",
    "stage 2: remount / rw",
    "stage 2: read-only /nix/store",
    "stage 2: base directories",
    "stage 2: activation",
    "stage 2: booted-system",
    "stage 2: machine-id",
    "stage 2: bless",
    SYSTEMD_FIRST_LINE,
    SYSTEMD_TO_MARKER,
];

const SYSTEMD_FIRST_LINE: &str = "exec systemd → its first log line";
const SYSTEMD_TO_MARKER: &str = "systemd → stagehand-probe.service";

/// The demo boot's timeline: the receipt (the guest probe's `boot-receipt` line) and, from
/// the console's kernel stamps, systemd's first line and the marker unit's start.
/// `probe_monotonic_us` is CLOCK_MONOTONIC when the probe's `guest-probe: started` line was
/// stamped (its `started.monotonic-us` fact): the console stamps are shifted by the
/// difference. Without it they are taken as they are, and the picture says so.
pub fn from_boot(
    receipt_line: &str,
    console: &Phases,
    probe_monotonic_us: Option<u64>,
) -> Result<Timeline, String> {
    let receipt: Value = serde_json::from_str(receipt_line)
        .map_err(|e| format!("the guest's boot receipt is not JSON ({e}): {receipt_line}"))?;
    let mut t = Timeline::from_receipt(&receipt)?;
    let offset_us = match (probe_monotonic_us, console.probe_start) {
        (Some(mono), Some(stamp)) => {
            let offset = mono as f64 - stamp * 1e6;
            t.clock = format!(
                "times are CLOCK_MONOTONIC; console stamps shifted by {:+.1} ms onto it",
                offset / 1000.0
            );
            offset
        }
        _ => {
            t.clock = "times are CLOCK_MONOTONIC; console stamps (systemd) unshifted".into();
            0.0
        }
    };
    let us = |s: f64| (s * 1e6 + offset_us).round().max(0.0) as u64;
    if let (Some(exec), Some(first)) = (t.exec_systemd_us(), console.systemd_start) {
        t.push(SYSTEMD_FIRST_LINE, Part::Systemd, exec, us(first));
        if let Some(probe) = console.probe_start {
            t.push(SYSTEMD_TO_MARKER, Part::Systemd, us(first), us(probe));
        }
    }
    Ok(t)
}

/// What the picture of the demo boot lacks: each expected phase (and each activation step
/// of the receipt) without its caption `name (duration)` in `svg`, and bars out of order.
pub fn missing_demo_phases(t: &Timeline, svg: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let steps: Vec<&Bar> = t
        .bars
        .iter()
        .filter(|b| b.part == Part::Activation)
        .collect();
    if steps.is_empty() {
        missing.push("no activation step".to_string());
    }
    for label in DEMO_PHASES
        .iter()
        .map(|l| l.to_string())
        .chain(steps.iter().map(|b| b.label.clone()))
    {
        let shown = t
            .bars
            .iter()
            .find(|b| b.label == label)
            .is_some_and(|b| svg.contains(&format!(">{}</text>", escape(&b.caption()))));
        if !shown {
            missing.push(label);
        }
    }
    // Stage 1, switch_root, stage 2 and systemd follow each other in time.
    for w in t.bars.windows(2) {
        if w[1].part != Part::Activation && w[1].start_us < w[0].start_us {
            missing.push(format!(
                "{} starts before {}",
                w[1].caption(),
                w[0].caption()
            ));
        }
    }
    missing
}

/// A grid step giving at most ~20 lines over `total_us`: 1, 2 or 5 times a power of ten.
fn tick_us(total_us: u64) -> u64 {
    let mut base = 1u64;
    loop {
        for m in [1, 2, 5] {
            let t = base * m;
            if total_us / t <= 20 {
                return t;
            }
        }
        base *= 10;
    }
}

fn axis_label(us: u64, tick: u64) -> String {
    if tick >= 100_000 {
        format!("{:.1} s", us as f64 / 1e6)
    } else if tick >= 1000 {
        format!("{} ms", us / 1000)
    } else {
        format!("{us} µs")
    }
}

/// `812 µs`, `12.3 ms`, `1.234 s`.
pub fn duration(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{:.3} s", us as f64 / 1e6)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECEIPT: &str = r#"{
      "version": 1, "toplevel": "/nix/store/abc-nixos-system-demo", "generation": 1,
      "reason": "init=", "blessed": null,
      "times_us": {
        "stage1": {"start": 1500000, "modules": 60000, "mounts": 90000, "attempts": 200,
          "end": 1700000, "total": 200000,
          "phases": [
            {"name": "special filesystems", "start": 1500000, "end": 1503000},
            {"name": "config", "start": 1503000, "end": 1504000},
            {"name": "modules", "start": 1504000, "end": 1564000},
            {"name": "devices", "start": 1564000, "end": 1600000},
            {"name": "fsck /", "start": 1600000, "end": 1650000},
            {"name": "mount /", "start": 1650000, "end": 1654000},
            {"name": "find init=", "start": 1654000, "end": 1654100},
            {"name": "boot counting", "start": 1654100, "end": 1654300}
          ]},
        "stage2": {"start": 1720000, "activation": 30000, "end": 1760000, "total": 40000,
          "activation_steps": {"etc": 20000, "users": 9000},
          "phases": [
            {"name": "special filesystems", "start": 1720000, "end": 1721000},
            {"name": "remount / rw", "start": 1721000, "end": 1725000},
            {"name": "read-only /nix/store", "start": 1725000, "end": 1726000},
            {"name": "base directories", "start": 1726000, "end": 1726050},
            {"name": "activation", "start": 1726050, "end": 1756050},
            {"name": "booted-system", "start": 1756050, "end": 1756500},
            {"name": "machine-id", "start": 1756500, "end": 1757000},
            {"name": "bless", "start": 1757000, "end": 1757300}
          ],
          "activation_phases": [
            {"name": "users", "start": 1726100, "end": 1735100},
            {"name": "etc", "start": 1735100, "end": 1755100}
          ]}
      }
    }"#;

    fn receipt() -> Value {
        serde_json::from_str(RECEIPT).expect("fixture is JSON")
    }

    #[test]
    fn every_phase_is_a_bar_with_its_duration() {
        let mut t = Timeline::from_receipt(&receipt()).expect("timeline");
        let exec = t.exec_systemd_us().expect("exec");
        assert_eq!(exec, 1_760_000);
        t.push(
            "systemd → stagehand-probe.service",
            Part::Systemd,
            exec,
            2_900_000,
        );
        let captions: Vec<String> = t.bars.iter().map(Bar::caption).collect();
        assert_eq!(
            captions,
            [
                "kernel → /init (1.500 s)",
                "stage 1: special filesystems (3.0 ms)",
                "stage 1: config (1.0 ms)",
                "stage 1: modules (60.0 ms)",
                "stage 1: devices (36.0 ms)",
                "stage 1: fsck / (50.0 ms)",
                "stage 1: mount / (4.0 ms)",
                "stage 1: find init= (100 µs)",
                "stage 1: boot counting (200 µs)",
                "switch_root → stage 2 (20.0 ms)",
                "stage 2: special filesystems (1.0 ms)",
                "stage 2: remount / rw (4.0 ms)",
                "stage 2: read-only /nix/store (1.0 ms)",
                "stage 2: base directories (50 µs)",
                "stage 2: activation (30.0 ms)",
                "activation: users (9.0 ms)",
                "activation: etc (20.0 ms)",
                "stage 2: booted-system (450 µs)",
                "stage 2: machine-id (500 µs)",
                "stage 2: bless (300 µs)",
                "systemd → stagehand-probe.service (1.140 s)",
            ]
        );
        let svg = t.to_svg();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>\n"));
        for c in &captions {
            // Each caption twice: the hover title and the text next to the bar.
            assert_eq!(svg.matches(&escape(c)).count(), 2, "{c}");
        }
        assert_eq!(svg.matches("<rect ").count(), 1 + 6 + captions.len());
        // 0 to 3 s in 200 ms steps.
        assert!(svg.contains(">0.0 s</text>") && svg.contains(">3.0 s</text>"));
        assert!(svg.contains("generation 1 /nix/store/abc-nixos-system-demo"));
    }

    #[test]
    fn a_part_breaks_down_into_its_steps_with_their_sum() {
        let t = Timeline::from_receipt(&receipt()).expect("timeline");
        assert_eq!(
            t.breakdown(Part::Activation),
            "activation step: users 9.0 ms, etc 20.0 ms — sum 29.0 ms"
        );
        let stage2 = t.breakdown(Part::Stage2);
        assert!(stage2.starts_with("stage 2: special filesystems 1.0 ms, remount / rw 4.0 ms"));
        assert!(stage2.ends_with("— sum 37.3 ms"), "{stage2}");
    }

    #[test]
    fn bars_and_captions_stay_inside_the_picture() {
        let t = Timeline::from_receipt(&receipt()).expect("timeline");
        let svg = t.to_svg();
        let width: f64 = svg
            .split("width=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|w| w.parse().ok())
            .expect("width");
        for part in svg.split("<text x=\"").skip(1) {
            let x: f64 = part
                .split('"')
                .next()
                .and_then(|x| x.parse().ok())
                .expect("x");
            let text = part.split('>').nth(1).unwrap_or("");
            // About 6.5 px a character at 11 px.
            assert!(
                x + 6.5 * text.chars().count() as f64 <= width + 1.0,
                "{text} at {x}"
            );
        }
    }

    #[test]
    fn a_receipt_without_phase_lists_is_refused_by_name() {
        let mut r = receipt();
        r["times_us"]["stage2"]
            .as_object_mut()
            .expect("object")
            .remove("phases");
        let e = Timeline::from_receipt(&r).expect_err("no phases");
        assert!(e.contains("times_us.stage2.phases"), "{e}");
        r["times_us"]["stage1"] = Value::Null;
        let e = Timeline::from_receipt(&r).expect_err("no stage 1");
        assert!(e.contains("stage1.json"), "{e}");
        let mut r = receipt();
        r["times_us"]["stage1"]["phases"][2] = serde_json::json!({"name": "modules"});
        let e = Timeline::from_receipt(&r).expect_err("bad span");
        assert!(e.contains("times_us.stage1.phases[2]"), "{e}");
    }

    #[test]
    fn the_demo_check_finds_a_missing_phase() {
        let line = receipt().to_string();
        let console = Phases {
            systemd_start: Some(1.8),
            probe_start: Some(2.9),
            ..Phases::default()
        };
        let t = from_boot(&line, &console, None).expect("timeline");
        assert_eq!(
            t.bars.last().map(Bar::caption).as_deref(),
            Some("systemd → stagehand-probe.service (1.100 s)")
        );
        assert!(t.to_svg().contains("console stamps (systemd) unshifted"));
        // The probe read CLOCK_MONOTONIC 2.95 s when its line was stamped 2.9 s: systemd's
        // first line (1.8 s on the console) is at 1.85 s on the receipt's clock.
        let shifted = from_boot(&line, &console, Some(2_950_000)).expect("timeline");
        let first = &shifted.bars[shifted.bars.len() - 2];
        assert_eq!(
            (first.start_us, first.end_us),
            (1_760_000, 1_850_000),
            "{first:?}"
        );
        assert!(shifted.to_svg().contains("shifted by +50.0 ms"));
        let svg = t.to_svg();
        assert_eq!(missing_demo_phases(&t, &svg), Vec::<String>::new());

        // A stage 1 that stops recording fsck fails the check, by name.
        let mut r = receipt();
        let phases = r["times_us"]["stage1"]["phases"]
            .as_array_mut()
            .expect("list");
        phases.retain(|p| p["name"] != "fsck /");
        let t = from_boot(&r.to_string(), &console, None).expect("timeline");
        assert_eq!(missing_demo_phases(&t, &t.to_svg()), ["stage 1: fsck /"]);
        // So does a console without the marker unit, and a picture without a caption.
        let t = from_boot(&line, &Phases::default(), None).expect("timeline");
        assert_eq!(
            missing_demo_phases(&t, &t.to_svg()),
            [SYSTEMD_FIRST_LINE, SYSTEMD_TO_MARKER]
        );
        let t = from_boot(&line, &console, None).expect("timeline");
        let svg = t.to_svg().replace(">activation: etc (20.0 ms)<", "><");
        assert_eq!(missing_demo_phases(&t, &svg), ["activation: etc"]);
        assert!(from_boot("{", &console, None).is_err());
    }

    #[test]
    fn ticks_and_durations() {
        assert_eq!(tick_us(3_000_000), 200_000);
        assert_eq!(tick_us(15), 1);
        assert_eq!(tick_us(90_000), 5_000);
        assert_eq!(duration(999), "999 µs");
        assert_eq!(duration(12_345), "12.3 ms");
        assert_eq!(duration(2_500_000), "2.500 s");
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
