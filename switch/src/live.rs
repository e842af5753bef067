//! The live switch, after the checks: decide what happens to the running units (the pure
//! [`rules::plan`] plus the fstab diff), print it, apply it — stop, activate, reload systemd,
//! reload / restart / start, report — and only when the activation succeeded make the
//! generation the boot default. `dry-activate` prints the decision and dry-runs activation.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::loader::BootLoader;
use crate::manager::{ServiceManager, Verb};
use crate::options::{exit, SwitchAction, SwitchOptions};
use crate::pending::{self, *};
use crate::say::Say;
use crate::units::files::RootUnitFiles;
use crate::units::fstab::{self, Fstab, FstabChanges};
use crate::units::rules::{self, UnitError};
use crate::units::{ActiveUnits, FileState, Gen, Pending, UnitFiles, UnitPlan};
use stagehand_activation::activate::{activate, ActivateOptions};
use stagehand_common::rootfs::Root;

/// Everything after the checks: decide, print, apply (or, for `dry-activate`, print only).
pub(crate) fn live_switch(
    opts: &SwitchOptions,
    root: &Root,
    toplevel: &Path,
    manager: &mut dyn ServiceManager,
    loader: &mut dyn BootLoader,
    say: &mut Say<'_>,
) -> u8 {
    let before = Before::observe(root, toplevel, opts.pid1_exe.as_deref());
    let mut live = Live {
        opts,
        root,
        toplevel,
        files: RootUnitFiles::new(root, toplevel),
        manager,
        say,
        code: exit::OK,
    };
    let mut active = if before.unchanged {
        ActiveUnits::new()
    } else {
        match live.list_active() {
            Some(a) => a,
            None => return exit::FAILED,
        }
    };
    let mut plan = match decide_units(root, toplevel, &active, &live.files, live.is_live()) {
        Ok(p) => p,
        Err(e) => {
            live.say.line(e.to_string());
            return exit::FAILED;
        }
    };
    if opts.action == SwitchAction::DryActivate {
        live.print_dry_run(&mut plan, &active, before.reexec);
        return exit::OK;
    }

    live.record_pending(&plan);
    live.stop_units(&plan);
    let activated = live.activate();
    let requested = live.fold_activation_requests(&mut plan, &mut active, before.unchanged);
    if before.reexec {
        live.reexec_systemd();
    }
    // A no-op switch (the running generation again, nothing left over, nothing asked for)
    // leaves systemd alone: no reload, no target starts, no report of old failures.
    // Reloading and re-running sysinit-reactivation.target is what makes NixOS's no-op
    // switches slow.
    let no_op = before.same_generation && plan.is_empty() && !requested && !before.reexec;
    let touch_systemd = live.is_live() && !no_op;
    if touch_systemd {
        live.reload_systemd(before.same_generation);
        live.reload_user_units(&active);
    }
    live.reload_restart_start(&mut plan);
    if touch_systemd {
        live.report_units(&active);
    }
    if opts.action == SwitchAction::Switch {
        live.make_boot_default(loader, activated);
    }
    log_result(live.code, toplevel);
    live.code
}

/// What the running system is, before anything is decided.
struct Before {
    /// systemd itself (or its `system.conf`) changed: it must re-execute.
    reexec: bool,
    /// `/run/current-system` already is the generation we switch to.
    same_generation: bool,
    /// The running generation again, nothing left over, systemd unchanged: every unit file
    /// compares equal, so there is nothing to ask systemd (each question is a process start).
    unchanged: bool,
}

impl Before {
    fn observe(root: &Root, toplevel: &Path, pid1_exe: Option<&Path>) -> Before {
        let reexec = systemd_changed(root, toplevel, pid1_exe);
        let current = root.canonicalize(Path::new("/run/current-system")).ok();
        let same_generation = current.as_deref() == Some(toplevel);
        let unchanged =
            same_generation && pending::read_pending(root) == Pending::default() && !reexec;
        Before {
            reexec,
            same_generation,
            unchanged,
        }
    }
}

/// Does the new generation need systemd to re-execute itself?
fn systemd_changed(root: &Root, toplevel: &Path, pid1_exe: Option<&Path>) -> bool {
    let Some(running) = pid1_exe else {
        return false;
    };
    let canon = |p: &Path| root.canonicalize(p).ok();
    let new_systemd = canon(&toplevel.join("systemd/lib/systemd/systemd"));
    let Some(new_systemd) = new_systemd else {
        return false;
    };
    let conf = |p: &Path| canon(p).filter(|c| root.lstat(c).ok().flatten().is_some());
    running != new_systemd
        || conf(Path::new("/etc/systemd/system.conf"))
            != conf(&toplevel.join("etc/systemd/system.conf"))
}

/// Reads what the decision needs (the pending lists, both fstabs), then decides: the unit
/// rules' plan plus, on a live system, the fstab diff.
fn decide_units(
    root: &Root,
    toplevel: &Path,
    active: &ActiveUnits,
    files: &RootUnitFiles<'_>,
    live: bool,
) -> Result<UnitPlan, UnitError> {
    let pending = pending::read_pending(root);
    let mut plan = rules::plan(active, files, &pending)?;
    if !live {
        return Ok(plan);
    }
    let fstab = |p: &Path| Fstab::parse(&read_text(root, p).unwrap_or_default());
    let changes = fstab::diff(
        &fstab(Path::new("/etc/fstab")),
        &fstab(&toplevel.join("etc/fstab")),
    );
    add_fstab_changes(&mut plan, changes);
    Ok(plan)
}

/// Changed mounts and swaps join the unit decisions; a remount from scratch replaces a
/// remount.
fn add_fstab_changes(plan: &mut UnitPlan, changes: FstabChanges) {
    plan.reload.extend(changes.reload);
    for u in changes.restart {
        plan.reload.remove(&u);
        plan.restart.insert(u);
    }
    plan.stop.extend(changes.stop);
    plan.skip.extend(changes.skip);
    plan.swapoff = changes.swapoff;
}

pub(crate) fn read_text(root: &Root, path: &Path) -> Option<String> {
    let b = root.read_opt(path).ok().flatten()?;
    Some(String::from_utf8_lossy(&b).into_owned())
}

/// One live switch in progress: what it works on and the exit code so far.
struct Live<'r, 'o> {
    opts: &'r SwitchOptions,
    root: &'r Root,
    toplevel: &'r Path,
    files: RootUnitFiles<'r>,
    manager: &'r mut dyn ServiceManager,
    say: &'r mut Say<'o>,
    /// The first failure's exit code, `exit::OK` until then.
    code: u8,
}

impl Live<'_, '_> {
    fn is_live(&self) -> bool {
        self.manager.is_live()
    }

    /// Keep the first failure's code.
    fn fail(&mut self, code: u8) {
        if self.code == exit::OK {
            self.code = code;
        }
    }

    fn list_active(&mut self) -> Option<ActiveUnits> {
        match self.manager.list_units() {
            Ok(a) => Some(a),
            Err(e) => {
                self.say.line(format!("cannot list the running units: {e}"));
                None
            }
        }
    }

    fn show(&mut self, what: &str, plan: &UnitPlan, set: &BTreeSet<String>) {
        self.say
            .unit_set(what, plan, set, self.opts.display_all_units);
    }

    /// `dry-activate`: what a switch would do, with the activation dry-run in between (its
    /// restart/reload requests are folded in, as a real switch would).
    fn print_dry_run(&mut self, plan: &mut UnitPlan, active: &ActiveUnits, reexec: bool) {
        self.show("would stop the following units", plan, &plan.stop);
        self.show(
            "would NOT stop the following changed units",
            plan,
            &plan.skip,
        );
        for dev in &plan.swapoff {
            self.say.line(format!("would stop swap device: {dev}"));
        }
        self.say.line("would activate the configuration...");
        if !run_activation(self.opts, self.toplevel, self.say) {
            self.say.line("dry activation reported failures");
        }
        let restart = pending::read_list(self.root, DRY_ACTIVATION_RESTART_LIST);
        let reload = pending::read_list(self.root, DRY_ACTIVATION_RELOAD_LIST);
        if let Err(e) =
            rules::fold_activation_requests(plan, &restart, &reload, active, &self.files)
        {
            self.say.line(e.to_string());
        }
        self.remove_lists(&[DRY_ACTIVATION_RESTART_LIST, DRY_ACTIVATION_RELOAD_LIST]);
        if reexec {
            self.say.line("would restart systemd");
        }
        self.show("would reload the following units", plan, &plan.reload);
        self.show("would restart the following units", plan, &plan.restart);
        self.show("would start the following units", plan, &plan.start);
    }

    /// Write what is still to start, restart and reload, so an interrupted switch resumes.
    fn record_pending(&mut self, plan: &UnitPlan) {
        for (path, set) in [
            (START_LIST, &plan.start),
            (RESTART_LIST, &plan.restart),
            (RELOAD_LIST, &plan.reload),
        ] {
            if let Err(e) = pending::write_list(self.root, path, set) {
                self.say
                    .line(format!("warning: cannot record pending units: {e}"));
            }
        }
    }

    fn remove_lists(&mut self, lists: &[&str]) {
        for l in lists {
            if let Err(e) = pending::remove(self.root, l) {
                self.say.line(e);
            }
        }
    }

    /// Before activation: stop the units, report the skipped ones, turn off removed swaps.
    fn stop_units(&mut self, plan: &UnitPlan) {
        self.show("stopping the following units", plan, &plan.stop);
        if !plan.stop.is_empty() && self.manager.jobs(Verb::Stop, &vec(&plan.stop)).is_err() {
            self.fail(exit::UNITS_FAILED);
        }
        self.show(
            "NOT restarting the following changed units",
            plan,
            &plan.skip,
        );
        for dev in &plan.swapoff {
            self.say.line(format!("stopping swap device: {dev}"));
            let ok = std::process::Command::new("swapoff")
                .arg(dev)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                self.say.line(format!("Failed to stop swapping to {dev}"));
            }
        }
    }

    /// Run the activation; `false` (and exit 2 later) when it failed. The switch goes on.
    fn activate(&mut self) -> bool {
        self.say.line("activating the configuration...");
        let activated = run_activation(self.opts, self.toplevel, self.say);
        if !activated {
            self.say.line("Failed to run activate script");
            self.fail(exit::ACTIVATION_FAILED);
        }
        activated
    }

    /// The units the activation asked to restart or reload join the decisions (recorded
    /// again); `true` when it asked for any.
    fn fold_activation_requests(
        &mut self,
        plan: &mut UnitPlan,
        active: &mut ActiveUnits,
        units_not_listed: bool,
    ) -> bool {
        let restart = pending::read_list(self.root, ACTIVATION_RESTART_LIST);
        let reload = pending::read_list(self.root, ACTIVATION_RELOAD_LIST);
        let requested = !restart.is_empty() || !reload.is_empty();
        // The fast path skipped listing the units; the requests need to know which run.
        if requested && units_not_listed {
            match self.list_active() {
                Some(a) => *active = a,
                None => self.fail(exit::UNITS_FAILED),
            }
        }
        if let Err(e) =
            rules::fold_activation_requests(plan, &restart, &reload, active, &self.files)
        {
            self.say.line(e.to_string());
        }
        self.record_pending(plan);
        self.remove_lists(&[ACTIVATION_RESTART_LIST, ACTIVATION_RELOAD_LIST]);
        requested
    }

    fn reexec_systemd(&mut self) {
        self.say.line("restarting systemd...");
        if let Err(e) = self.manager.daemon_reexec() {
            self.say.line(format!("Failed to restart systemd: {e}"));
            self.fail(exit::UNITS_FAILED);
        }
    }

    /// Forget old failures, reload the unit files, re-run `sysinit-reactivation.target` of a
    /// new generation.
    fn reload_systemd(&mut self, same_generation: bool) {
        if let Err(e) = self.manager.reset_failed() {
            self.say.line(format!("Failed to reset failed units: {e}"));
        }
        if let Err(e) = self.manager.daemon_reload() {
            self.say.line(format!("Failed to reload systemd: {e}"));
            self.fail(exit::UNITS_FAILED);
        }
        let reactivation = "sysinit-reactivation.target";
        if !same_generation && self.files.state(Gen::New, reactivation) == FileState::Present {
            self.say.line(format!("restarting {reactivation}"));
            if self
                .manager
                .jobs(Verb::Restart, &[reactivation.into()])
                .is_err()
            {
                self.fail(exit::UNITS_FAILED);
            }
        }
    }

    /// After the reload: units to reload that are not running are started instead; then
    /// reload, restart, start, each list removed once its jobs ran.
    fn reload_restart_start(&mut self, plan: &mut UnitPlan) {
        if !plan.reload.is_empty() {
            let now = self
                .manager
                .active_now(&vec(&plan.reload))
                .unwrap_or_default();
            if let Err(e) = rules::reload_or_start(plan, &|u| now.contains(u), &self.files) {
                self.say.line(e.to_string());
            }
            // The pending lists follow: a unit moved from reload to start (or dropped) must
            // not be reloaded by the next switch.
            self.record_pending(plan);
        }
        for (verb, what, path) in [
            (Verb::Reload, "reloading the following units", RELOAD_LIST),
            (
                Verb::Restart,
                "restarting the following units",
                RESTART_LIST,
            ),
            (Verb::Start, "starting the following units", START_LIST),
        ] {
            let set = match verb {
                Verb::Reload => &plan.reload,
                Verb::Restart => &plan.restart,
                _ => &plan.start,
            };
            if set.is_empty() {
                self.remove_lists(&[path]);
                continue;
            }
            self.show(what, plan, set);
            if self.manager.jobs(verb, &vec(set)).is_err() {
                self.fail(exit::UNITS_FAILED);
            }
            self.remove_lists(&[path]);
        }
    }

    /// Failed units (and services stuck restarting after a failure) make the switch fail;
    /// units that were not running before are listed as new.
    fn report_units(&mut self, before: &ActiveUnits) {
        let now = match settle(&mut *self.manager, before) {
            Ok(n) => n,
            Err(e) => {
                self.say
                    .line(format!("cannot list the units after switching: {e}"));
                return;
            }
        };
        let mut failed = Vec::new();
        let mut new = Vec::new();
        for (unit, st) in &now {
            if st.active == "failed" {
                failed.push(unit.clone());
                continue;
            }
            if st.sub == "auto-restart"
                && unit.ends_with(".service")
                && self.manager.exec_main_status(unit).is_some_and(|s| s != 0)
            {
                failed.push(unit.clone());
                continue;
            }
            if !before.contains_key(unit) && !unit.ends_with(".scope") {
                new.push(unit.as_str());
            }
        }
        self.say.units("the following new units were started", &new);
        if !failed.is_empty() {
            let names: Vec<&str> = failed.iter().map(String::as_str).collect();
            self.say
                .units("warning: the following units failed", &names);
            self.manager.show_status(&failed);
            self.fail(exit::UNITS_FAILED);
        }
    }

    /// Re-run the per-user activation in every running user manager, as NixOS does after
    /// the daemon reload: the manager re-executes itself (it picks up changed user units)
    /// and `nixos-activation.service` restarts. A failure is reported, not fatal (NixOS
    /// ignores the user run's exit status too).
    fn reload_user_units(&mut self, active: &ActiveUnits) {
        let passwd = read_text(self.root, Path::new("/etc/passwd")).unwrap_or_default();
        for (uid, name, gid) in user_managers(active, &passwd) {
            self.say.line(format!("reloading user units for {name}..."));
            // The manager may not answer while it re-executes; the restart below waits.
            let _ = self.manager.user_manager(uid, gid, &["daemon-reexec"]);
            if let Err(e) =
                self.manager
                    .user_manager(uid, gid, &["restart", "nixos-activation.service"])
            {
                self.say
                    .line(format!("Failed to run user activation for {name}: {e}"));
            }
        }
    }

    /// `switch` only: the generation becomes the boot default once its activation succeeded.
    fn make_boot_default(&mut self, loader: &mut dyn BootLoader, activated: bool) {
        if !activated {
            self.say.line(format!(
                "not making {} the boot default: its activation failed",
                self.toplevel.display()
            ));
            return;
        }
        match loader.install(self.root, self.toplevel) {
            Ok(msg) => self.say.line(msg),
            Err(e) => {
                self.say.line(format!("Failed to install bootloader: {e}"));
                self.fail(exit::FAILED);
            }
        }
    }
}

/// The running user managers (`user@UID.service`, active) as `(uid, name, gid)`, names and
/// groups from `passwd`; a uid without an account is skipped.
pub(crate) fn user_managers(active: &ActiveUnits, passwd: &str) -> Vec<(u32, String, u32)> {
    let accounts: Vec<(u32, &str, u32)> = passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            match f[..] {
                [name, _, uid, gid, ..] => Some((uid.parse().ok()?, name, gid.parse().ok()?)),
                _ => None,
            }
        })
        .collect();
    active
        .iter()
        .filter(|(_, st)| st.active == "active")
        .filter_map(|(unit, _)| {
            unit.strip_prefix("user@")?
                .strip_suffix(".service")?
                .parse()
                .ok()
        })
        .filter_map(|uid: u32| {
            let (_, name, gid) = accounts.iter().find(|(u, _, _)| *u == uid)?;
            Some((uid, name.to_string(), *gid))
        })
        .collect()
}

/// How long the units must look the same before the report, and the most we wait.
const SETTLE_QUIET: Duration = Duration::from_millis(250);
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Wait for systemd to settle before the failed units are reported (a service that fails
/// just after its start job finished would otherwise be missed): no running job for a unit
/// that was not already changing state when the switch began (a job queued before us, such
/// as the one of the unit running this switch, is not ours to wait for), and two listings
/// [`SETTLE_QUIET`] apart that agree. At most [`SETTLE_LIMIT`]; the last listing is returned.
pub(crate) fn settle(
    manager: &mut dyn ServiceManager,
    before: &ActiveUnits,
) -> Result<ActiveUnits, String> {
    let was_changing = |u: &str| {
        before.get(u).is_some_and(|st| {
            matches!(
                st.active.as_str(),
                "activating" | "deactivating" | "reloading"
            )
        })
    };
    let mut last = manager.list_units()?;
    let mut waited = Duration::ZERO;
    while waited < SETTLE_LIMIT {
        manager.pause(SETTLE_QUIET);
        waited += SETTLE_QUIET;
        let busy = manager
            .list_jobs()?
            .iter()
            .any(|(unit, state)| state == "running" && !was_changing(unit));
        let now = manager.list_units()?;
        let same = now == last;
        last = now;
        if same && !busy {
            break;
        }
    }
    Ok(last)
}

fn vec(set: &BTreeSet<String>) -> Vec<String> {
    set.iter().cloned().collect()
}

fn run_activation(opts: &SwitchOptions, toplevel: &Path, say: &mut Say<'_>) -> bool {
    let a = ActivateOptions {
        root: opts.root.clone(),
        dry_run: opts.action == SwitchAction::DryActivate,
        action: opts.action.activation(),
    };
    match activate(toplevel, &a) {
        Ok(report) => report.success(),
        Err(e) => {
            say.line(format!("activation: {e}"));
            false
        }
    }
}

fn log_result(code: u8, toplevel: &Path) {
    if code == exit::OK {
        log::info!(
            "finished switching to system configuration {}",
            toplevel.display()
        );
    } else {
        log::error!(
            "switching to system configuration {} failed (status {code})",
            toplevel.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::UnitState;
    use std::collections::BTreeMap;

    /// systemd as a script: the n-th listing and the jobs after the n-th pause.
    #[derive(Default)]
    struct Scripted {
        lists: Vec<ActiveUnits>,
        jobs: Vec<BTreeMap<String, String>>,
        listed: usize,
        paused: Duration,
        pauses: usize,
    }

    fn at<T: Clone + Default>(v: &[T], i: usize) -> T {
        v.get(i.min(v.len().saturating_sub(1)))
            .cloned()
            .unwrap_or_default()
    }

    impl ServiceManager for Scripted {
        fn list_units(&mut self) -> Result<ActiveUnits, String> {
            self.listed += 1;
            Ok(at(&self.lists, self.listed - 1))
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
        fn list_jobs(&mut self) -> Result<BTreeMap<String, String>, String> {
            Ok(at(&self.jobs, self.pauses - 1))
        }
        fn pause(&mut self, d: Duration) {
            self.paused += d;
            self.pauses += 1;
        }
    }

    fn units(v: &[(&str, &str, &str)]) -> ActiveUnits {
        v.iter()
            .map(|(u, a, s)| (u.to_string(), UnitState::new(a, s)))
            .collect()
    }

    fn jobs(v: &[(&str, &str)]) -> BTreeMap<String, String> {
        v.iter()
            .map(|(u, s)| (u.to_string(), s.to_string()))
            .collect()
    }

    /// switch-test.nix's autorestartServiceFailing: the service's start job is done while
    /// it still runs; it fails a moment later. The report must see the failure.
    #[test]
    fn settle_sees_a_service_that_fails_after_its_start() {
        let running = units(&[("autorestart.service", "active", "running")]);
        let failed = units(&[("autorestart.service", "activating", "auto-restart")]);
        let mut m = Scripted {
            lists: vec![running, failed.clone(), failed.clone()],
            ..Scripted::default()
        };
        let got = settle(&mut m, &ActiveUnits::new()).expect("settle");
        assert_eq!(got, failed);
        assert_eq!(m.paused, SETTLE_QUIET * 2);
    }

    /// A running job of ours keeps us waiting even when the listings agree; a job that was
    /// under way before the switch (the unit running it) and waiting jobs do not.
    #[test]
    fn settle_waits_for_our_jobs_only() {
        let before = units(&[("driver.service", "activating", "start")]);
        let same = units(&[("a.service", "active", "running")]);
        let mut m = Scripted {
            lists: vec![same.clone()],
            jobs: vec![
                jobs(&[("a.service", "running"), ("driver.service", "running")]),
                jobs(&[("driver.service", "running"), ("probe.service", "waiting")]),
            ],
            ..Scripted::default()
        };
        assert_eq!(settle(&mut m, &before).expect("settle"), same);
        assert_eq!(m.pauses, 2);
    }

    #[test]
    fn settle_is_bounded() {
        let mut m = Scripted {
            lists: vec![ActiveUnits::new()],
            jobs: vec![jobs(&[("stuck.service", "running")])],
            ..Scripted::default()
        };
        settle(&mut m, &ActiveUnits::new()).expect("settle");
        assert_eq!(m.paused, SETTLE_LIMIT);
    }

    #[test]
    fn running_user_managers_with_their_accounts() {
        let active = units(&[
            ("user@1000.service", "active", "running"),
            ("user@1001.service", "active", "running"),
            ("user@1002.service", "deactivating", "stop-sigterm"),
            ("user-runtime-dir@1000.service", "active", "exited"),
            ("user@.service", "active", "running"),
        ]);
        let passwd = "root:x:0:0::/root:/bin/sh\nalice:x:1000:100::/home/alice:/bin/sh\n\
                      carol:x:1002:100::/home/carol:/bin/sh\nbroken\n";
        assert_eq!(
            user_managers(&active, passwd),
            vec![(1000, "alice".to_string(), 100)]
        );
    }
}
