//! The service manager seam. The switch decides in pure code and talks to systemd only
//! through [`ServiceManager`]: [`Systemctl`] runs `systemctl` (which, as root, reaches PID 1
//! over its private socket — no D-Bus daemon needed), [`Offline`] is for a root that is not
//! running (an installer's `--root`), and tests use a fake.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::units::{ActiveUnits, UnitState};

/// A job verb, as `systemctl` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Stop,
    Start,
    Restart,
    Reload,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Stop => "stop",
            Verb::Start => "start",
            Verb::Restart => "restart",
            Verb::Reload => "reload",
        }
    }
}

pub trait ServiceManager {
    /// Loaded units that are not inactive (and not just following another unit).
    fn list_units(&mut self) -> Result<ActiveUnits, String>;
    /// Queue `verb` for every unit (job mode replace) and wait for the jobs. `Err` when any
    /// job failed; the manager has already told the user which.
    fn jobs(&mut self, verb: Verb, units: &[String]) -> Result<(), String>;
    fn daemon_reload(&mut self) -> Result<(), String>;
    fn daemon_reexec(&mut self) -> Result<(), String>;
    fn reset_failed(&mut self) -> Result<(), String>;
    /// Which of `units` are active or activating right now.
    fn active_now(&mut self, units: &[String]) -> Result<BTreeSet<String>, String>;
    /// `ExecMainStatus` of a service (for units in `auto-restart`).
    fn exec_main_status(&mut self, unit: &str) -> Option<i32>;
    /// Show the user why units failed (`systemctl status`).
    fn show_status(&mut self, units: &[String]);
    /// The queued jobs: unit → job state (`running` or `waiting`).
    fn list_jobs(&mut self) -> Result<BTreeMap<String, String>, String> {
        Ok(BTreeMap::new())
    }
    /// Wait this long (the switch's only sleep: letting systemd settle).
    fn pause(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
    /// Run `systemctl --user ARGS` in the user manager of `uid` (as that user, with its
    /// `XDG_RUNTIME_DIR`, so `systemctl` reaches the manager's private socket without a
    /// D-Bus daemon).
    fn user_manager(&mut self, uid: u32, gid: u32, args: &[&str]) -> Result<(), String> {
        let _ = (uid, gid, args);
        Ok(())
    }
    /// False for [`Offline`]: nothing is running, so there is nothing to switch live.
    fn is_live(&self) -> bool {
        true
    }
}

/// A root that no systemd is running (an image being prepared): no live units.
pub struct Offline;

impl ServiceManager for Offline {
    fn list_units(&mut self) -> Result<ActiveUnits, String> {
        Ok(ActiveUnits::new())
    }
    fn jobs(&mut self, _: Verb, _: &[String]) -> Result<(), String> {
        Ok(())
    }
    fn daemon_reload(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn daemon_reexec(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn reset_failed(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn active_now(&mut self, _: &[String]) -> Result<BTreeSet<String>, String> {
        Ok(BTreeSet::new())
    }
    fn exec_main_status(&mut self, _: &str) -> Option<i32> {
        None
    }
    fn show_status(&mut self, _: &[String]) {}
    fn pause(&mut self, _: Duration) {}
    fn is_live(&self) -> bool {
        false
    }
}

/// `systemctl` as a subprocess.
pub struct Systemctl {
    pub path: PathBuf,
}

impl Systemctl {
    /// The running generation's own `systemctl` (it speaks the running PID 1's protocol),
    /// else the new one's, else `$PATH`. `STAGEHAND_SYSTEMCTL` overrides.
    pub fn find(toplevel: &Path) -> Systemctl {
        if let Some(p) = std::env::var_os("STAGEHAND_SYSTEMCTL") {
            return Systemctl { path: p.into() };
        }
        let candidates = [
            PathBuf::from("/run/current-system/systemd/bin/systemctl"),
            toplevel.join("systemd/bin/systemctl"),
        ];
        let path = candidates
            .into_iter()
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("systemctl"));
        Systemctl { path }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.path);
        c.args(["--no-pager", "--no-ask-password"]);
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str], units: &[String]) -> Result<(), String> {
        let status = self
            .cmd()
            .args(args)
            .arg("--")
            .args(units)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", self.path.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("systemctl {} failed ({status})", args.join(" ")))
        }
    }

    fn output(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .cmd()
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.path.display()))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `systemctl list-units --plain --no-legend --full` lines: `UNIT LOAD ACTIVE SUB DESC…`,
/// some prefixed with a status mark (`●`) for failed or not-found units.
pub fn parse_list_units(text: &str) -> ActiveUnits {
    let mut units = ActiveUnits::new();
    for line in text.lines() {
        let mut f = line.split_whitespace().peekable();
        if matches!(f.peek(), Some(&("●" | "*" | "○"))) {
            f.next();
        }
        let (Some(unit), Some(_load), Some(active), Some(sub)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if active == "inactive" {
            continue;
        }
        units.insert(unit.to_string(), UnitState::new(active, sub));
    }
    units
}

impl ServiceManager for Systemctl {
    fn list_units(&mut self) -> Result<ActiveUnits, String> {
        let out = self
            .cmd()
            .args(["list-units", "--plain", "--no-legend", "--full"])
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.path.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} list-units failed ({}); is systemd running?",
                self.path.display(),
                out.status
            ));
        }
        Ok(parse_list_units(&String::from_utf8_lossy(&out.stdout)))
    }

    fn jobs(&mut self, verb: Verb, units: &[String]) -> Result<(), String> {
        if units.is_empty() {
            return Ok(());
        }
        self.run(&[verb.as_str()], units)
    }

    fn daemon_reload(&mut self) -> Result<(), String> {
        self.run(&["daemon-reload"], &[])
    }

    fn daemon_reexec(&mut self) -> Result<(), String> {
        self.run(&["daemon-reexec"], &[])
    }

    fn reset_failed(&mut self) -> Result<(), String> {
        self.run(&["reset-failed"], &[])
    }

    fn active_now(&mut self, units: &[String]) -> Result<BTreeSet<String>, String> {
        if units.is_empty() {
            return Ok(BTreeSet::new());
        }
        let mut args = vec!["is-active", "--"];
        args.extend(units.iter().map(String::as_str));
        // One line per unit, in order; the exit status only says whether all were active.
        let out = self.output(&args)?;
        Ok(units
            .iter()
            .zip(out.lines())
            .filter(|(_, s)| matches!(s.trim(), "active" | "activating" | "reloading"))
            .map(|(u, _)| u.clone())
            .collect())
    }

    fn exec_main_status(&mut self, unit: &str) -> Option<i32> {
        self.output(&["show", "-p", "ExecMainStatus", "--value", "--", unit])
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn show_status(&mut self, units: &[String]) {
        // Informational only: its exit status is non-zero exactly because the units failed.
        let _ = self.run(&["status", "--full"], units);
    }

    fn list_jobs(&mut self) -> Result<BTreeMap<String, String>, String> {
        Ok(parse_list_jobs(&self.output(&[
            "list-jobs",
            "--plain",
            "--no-legend",
            "--full",
        ])?))
    }

    fn user_manager(&mut self, uid: u32, gid: u32, args: &[&str]) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let status = Command::new(&self.path)
            .args(["--user", "--no-pager", "--no-ask-password"])
            .args(args)
            .env_clear()
            .env("XDG_RUNTIME_DIR", format!("/run/user/{uid}"))
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {} as uid {uid}: {e}", self.path.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "systemctl --user {} as uid {uid} failed ({status})",
                args.join(" ")
            ))
        }
    }
}

/// `systemctl list-jobs --plain --no-legend --full` lines: `JOB UNIT TYPE STATE`.
pub fn parse_list_jobs(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[..] {
                [id, unit, _, state, ..] if id.parse::<u64>().is_ok() => {
                    Some((unit.to_string(), state.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_units_output() {
        let text = "-.mount loaded active mounted Root Mount\n\
            a.service loaded active running A service with a long description\n\
            ● b.service loaded failed failed B\n\
            c.service loaded activating start C\n\
            d.service loaded inactive dead D\n\
            garbage\n";
        let u = parse_list_units(text);
        assert_eq!(
            u.keys().map(String::as_str).collect::<Vec<_>>(),
            ["-.mount", "a.service", "b.service", "c.service"]
        );
        assert_eq!(u["b.service"], UnitState::new("failed", "failed"));
        assert_eq!(u["c.service"].sub, "start");
    }

    #[test]
    fn list_jobs_output() {
        let j = parse_list_jobs(
            "41 stagehand-probe.service start waiting
             40 a.service      start running
No jobs running.
",
        );
        assert_eq!(j.len(), 2);
        assert_eq!(j["a.service"], "running");
        assert_eq!(j["stagehand-probe.service"], "waiting");
    }
}
