//! What a switch prints: every line goes to the caller's stream (stderr, as NixOS prints it)
//! and is kept for the [`SwitchOutcome`](crate::options::SwitchOutcome).

use std::collections::BTreeSet;
use std::io::Write;

use crate::units::UnitPlan;

pub(crate) struct Say<'a> {
    pub(crate) lines: Vec<String>,
    out: &'a mut dyn Write,
}

impl<'a> Say<'a> {
    pub(crate) fn new(out: &'a mut dyn Write) -> Say<'a> {
        Say {
            lines: Vec::new(),
            out,
        }
    }

    pub(crate) fn line(&mut self, s: impl Into<String>) {
        let s = s.into();
        // A closed stderr must not stop a switch half-way.
        let _ = writeln!(self.out, "{s}");
        self.lines.push(s);
    }

    /// `what: a, b, c` (sorted as NixOS sorts them), nothing when `units` is empty.
    pub(crate) fn units(&mut self, what: &str, units: &[&str]) {
        if !units.is_empty() {
            let mut sorted = units.to_vec();
            sorted.sort_by_key(|u| u.to_lowercase());
            self.line(format!("{what}: {}", sorted.join(", ")));
        }
    }

    /// One of the plan's sets, without the always-started targets unless `all`.
    pub(crate) fn unit_set(
        &mut self,
        what: &str,
        plan: &UnitPlan,
        set: &BTreeSet<String>,
        all: bool,
    ) {
        let shown: Vec<&str> = if all {
            set.iter().map(String::as_str).collect()
        } else {
            plan.shown(set).collect()
        };
        self.units(what, &shown);
    }
}
