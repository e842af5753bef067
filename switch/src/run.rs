//! One `switch-to-configuration` run: check, lock, plan, print, apply.
//!
//! Order (NixOS's, with the boot loader moved to the end — NixOS makes the new generation
//! the boot default *before* activating it, so a generation whose activation fails still
//! boots next time):
//! 1. refuse a root that is not NixOS-shaped (`/etc/NIXOS` or os-release `ID`), take the lock,
//!    run the pre-switch check (`check` stops here);
//! 2. `boot`: write the boot entries, sync, done;
//! 3. refuse an incompatible init (`init-interface-version`, exit 100); plan the units from
//!    the running system's files and the new generation's; `dry-activate` prints the plan,
//!    dry-runs activation and stops;
//! 4. record the pending start/restart/reload lists, stop, activate (failure: exit 2, go
//!    on), fold in the activation's restart/reload requests, re-exec systemd if it changed,
//!    reload it, reload / restart / start, report failed units (exit 4) and new ones;
//! 5. `switch`: only when activation succeeded, make the generation the boot default.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::units::files::RootUnitFiles;
use crate::units::fstab::{self, Fstab};
use crate::units::rules::{self, UnitError};
use crate::units::{ActiveUnits, FileState, Gen, Pending, UnitFiles, UnitPlan};
use stagehand_activation::activate::{activate, Action, ActivateOptions};
use stagehand_common::rootfs::Root;

use super::loader::BootLoader;
use super::lock::{self, LOCK_PATH};
use super::manager::{ServiceManager, Verb};
use super::pending::{self, *};

/// The exit codes NixOS's `switch-to-configuration` uses.
pub mod exit {
    pub const OK: u8 = 0;
    /// Usage errors, not a NixOS root, failed pre-switch check or boot-loader install.
    pub const FAILED: u8 = 1;
    pub const ACTIVATION_FAILED: u8 = 2;
    pub const UNITS_FAILED: u8 = 4;
    /// The lock is held (NixOS exits with the errno, EWOULDBLOCK).
    pub const LOCKED: u8 = 11;
    /// The new init cannot take over the running system; reboot into it.
    pub const INCOMPATIBLE_INIT: u8 = 100;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchAction {
    Switch,
    Boot,
    Test,
    DryActivate,
    Check,
}

impl SwitchAction {
    pub fn parse(s: &str) -> Option<SwitchAction> {
        Some(match s {
            "switch" => Self::Switch,
            "boot" => Self::Boot,
            "test" => Self::Test,
            "dry-activate" => Self::DryActivate,
            "check" => Self::Check,
            _ => return None,
        })
    }

    /// `NIXOS_ACTION`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Switch => "switch",
            Self::Boot => "boot",
            Self::Test => "test",
            Self::DryActivate => "dry-activate",
            Self::Check => "check",
        }
    }

    fn activation(self) -> Action {
        match self {
            Self::Switch => Action::Switch,
            Self::Boot | Self::Check => Action::Boot,
            Self::Test => Action::Test,
            Self::DryActivate => Action::DryActivate,
        }
    }
}

/// Inputs that NixOS takes from its wrapper's environment (see [`SwitchOptions::from_env`]).
#[derive(Debug, Clone)]
pub struct SwitchOptions {
    pub root: PathBuf,
    /// The new generation as the system sees it.
    pub toplevel: PathBuf,
    pub action: SwitchAction,
    /// `PRE_SWITCH_CHECK`: run with `TOPLEVEL ACTION` appended, unless `NIXOS_NO_CHECK=1`.
    pub pre_switch_check: Option<String>,
    pub no_check: bool,
    /// `NIXOS_NO_SYNC=1`: skip `syncfs` of `/nix/store`.
    pub no_sync: bool,
    /// `DISTRO_ID` (default `nixos`).
    pub distro_id: String,
    /// `STC_DISPLAY_ALL_UNITS=1`: also print the targets that are always started.
    pub display_all_units: bool,
    /// What PID 1 runs (`/proc/1/exe`), to tell whether systemd changed; `None` = unknown
    /// (never re-exec).
    pub pid1_exe: Option<PathBuf>,
}

impl SwitchOptions {
    pub fn from_env(root: &Path, toplevel: &Path, action: SwitchAction) -> SwitchOptions {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let pid1_exe = if root == Path::new("/") {
            std::fs::read_link("/proc/1/exe").ok()
        } else {
            None
        };
        SwitchOptions {
            root: root.to_path_buf(),
            toplevel: toplevel.to_path_buf(),
            action,
            pre_switch_check: var("PRE_SWITCH_CHECK"),
            no_check: var("NIXOS_NO_CHECK").as_deref() == Some("1"),
            no_sync: var("NIXOS_NO_SYNC").as_deref() == Some("1"),
            distro_id: var("DISTRO_ID").unwrap_or_else(|| "nixos".into()),
            display_all_units: var("STC_DISPLAY_ALL_UNITS").as_deref() == Some("1"),
            pid1_exe,
        }
    }
}

/// What happened: the exit code and every line printed (also written to stderr).
#[derive(Debug, Clone, Default)]
pub struct SwitchOutcome {
    pub code: u8,
    pub lines: Vec<String>,
    pub elapsed: Duration,
}

struct Say<'a> {
    lines: Vec<String>,
    out: &'a mut dyn Write,
}

impl Say<'_> {
    fn line(&mut self, s: impl Into<String>) {
        let s = s.into();
        // A closed stderr must not stop a switch half-way.
        let _ = writeln!(self.out, "{s}");
        self.lines.push(s);
    }

    fn units(&mut self, what: &str, units: &[&str]) {
        if !units.is_empty() {
            let mut sorted = units.to_vec();
            sorted.sort_by_key(|u| u.to_lowercase());
            self.line(format!("{what}: {}", sorted.join(", ")));
        }
    }
}

fn shown<'a>(plan: &'a UnitPlan, set: &'a BTreeSet<String>, all: bool) -> Vec<&'a str> {
    if all {
        set.iter().map(String::as_str).collect()
    } else {
        plan.shown(set).collect()
    }
}

fn vec(set: &BTreeSet<String>) -> Vec<String> {
    set.iter().cloned().collect()
}

/// Is this a system `switch-to-configuration` may touch?
fn is_nixos(root: &Root, distro_id: &str) -> bool {
    if matches!(
        root.lstat(Path::new("/etc/NIXOS")),
        Ok(Some(stagehand_common::rootfs::Node::File { .. }))
    ) {
        return true;
    }
    let text = root
        .read_opt(Path::new("/etc/os-release"))
        .ok()
        .flatten()
        .unwrap_or_default();
    String::from_utf8_lossy(&text).lines().any(|l| {
        l.strip_prefix("ID=")
            .is_some_and(|v| v.trim_matches('"') == distro_id)
    })
}

fn read_text(root: &Root, path: &Path) -> Option<String> {
    let b = root.read_opt(path).ok().flatten()?;
    Some(String::from_utf8_lossy(&b).into_owned())
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

fn run_check(cmd: &str, toplevel: &Path, action: SwitchAction) -> bool {
    let mut words = cmd.split_whitespace();
    let Some(prog) = words.next() else {
        return false;
    };
    std::process::Command::new(prog)
        .args(words)
        .arg(toplevel)
        .arg(action.as_str())
        .status()
        .is_ok_and(|s| s.success())
}

/// Run `switch-to-configuration ACTION` for `opts.toplevel`.
pub fn switch(
    opts: &SwitchOptions,
    manager: &mut dyn ServiceManager,
    loader: &mut dyn BootLoader,
    out: &mut dyn Write,
) -> SwitchOutcome {
    let start = Instant::now();
    let mut say = Say {
        lines: Vec::new(),
        out,
    };
    let code = run(opts, manager, loader, &mut say);
    SwitchOutcome {
        code,
        lines: say.lines,
        elapsed: start.elapsed(),
    }
}

fn run(
    opts: &SwitchOptions,
    manager: &mut dyn ServiceManager,
    loader: &mut dyn BootLoader,
    say: &mut Say<'_>,
) -> u8 {
    let root = match Root::open(&opts.root) {
        Ok(r) => r,
        Err(e) => {
            say.line(format!("cannot open the root {}: {e}", opts.root.display()));
            return exit::FAILED;
        }
    };
    let toplevel = match root.canonicalize(&opts.toplevel) {
        Ok(t)
            if root
                .lstat(&t.join("nixos-version"))
                .ok()
                .flatten()
                .is_some()
                || root
                    .lstat(&t.join("activation.json"))
                    .ok()
                    .flatten()
                    .is_some()
                || root.lstat(&t.join("boot.json")).ok().flatten().is_some() =>
        {
            t
        }
        Ok(t) => {
            say.line(format!(
                "{} is not a system generation (no nixos-version, boot.json or activation.json)",
                root.host_path(&t).display()
            ));
            return exit::FAILED;
        }
        Err(e) => {
            say.line(format!(
                "cannot resolve the generation {}: {e}",
                root.host_path(&opts.toplevel).display()
            ));
            return exit::FAILED;
        }
    };
    if !is_nixos(&root, &opts.distro_id) {
        say.line(format!(
            "This is not a NixOS installation! ({} has no /etc/NIXOS and os-release ID is not {})",
            root.path().display(),
            opts.distro_id
        ));
        return exit::FAILED;
    }
    let run_nixos = root.host_path(Path::new("/run/nixos"));
    if let Err(e) = std::fs::create_dir_all(&run_nixos).and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&run_nixos, std::fs::Permissions::from_mode(0o755))
    }) {
        say.line(format!("cannot create {}: {e}", run_nixos.display()));
        return exit::FAILED;
    }
    let _lock = match lock::take(&root.host_path(Path::new(LOCK_PATH))) {
        Ok(l) => l,
        Err(e) => {
            say.line(e.to_string());
            return match e {
                lock::LockError::Busy(_) => exit::LOCKED,
                lock::LockError::Io { .. } => exit::FAILED,
            };
        }
    };

    if !opts.no_check {
        if let Some(cmd) = &opts.pre_switch_check {
            if !run_check(cmd, &toplevel, opts.action) {
                say.line("Pre-switch checks failed");
                return exit::FAILED;
            }
        }
    }
    if opts.action == SwitchAction::Check {
        return exit::OK;
    }
    if opts.action == SwitchAction::Boot {
        return match loader.install(&root, &toplevel) {
            Ok(msg) => {
                say.line(msg);
                sync_store(&root, opts, say);
                exit::OK
            }
            Err(e) => {
                say.line(format!("Failed to install bootloader: {e}"));
                exit::FAILED
            }
        };
    }
    sync_store(&root, opts, say);

    let iv = |p: &Path| read_text(&root, &p.join("init-interface-version"));
    if let (Some(cur), Some(new)) = (iv(Path::new("/run/current-system")), iv(&toplevel)) {
        if cur != new {
            say.line(
                "Warning: the new NixOS configuration has an ‘init’ that is incompatible with \
                 the current configuration. The new configuration won't take effect until you \
                 reboot the system.",
            );
            return exit::INCOMPATIBLE_INIT;
        }
    }

    live_switch(opts, &root, &toplevel, manager, loader, say)
}

fn sync_store(root: &Root, opts: &SwitchOptions, say: &mut Say<'_>) {
    if opts.no_sync {
        return;
    }
    // Just in case the new configuration hangs the system: its files are on disk first.
    if let Ok((fd, _, _)) = root.dir(Path::new("/nix/store"), None) {
        if let Err(e) = stagehand_common::rootfs::sync_fs(&fd) {
            say.line(format!("warning: syncfs of /nix/store failed: {e}"));
        }
    }
}

/// Everything after the checks: plan, print, apply (or, for `dry-activate`, print only).
fn live_switch(
    opts: &SwitchOptions,
    root: &Root,
    toplevel: &Path,
    manager: &mut dyn ServiceManager,
    loader: &mut dyn BootLoader,
    say: &mut Say<'_>,
) -> u8 {
    let dry = opts.action == SwitchAction::DryActivate;
    let files = RootUnitFiles::new(root, toplevel);
    let reexec = systemd_changed(root, toplevel, opts.pid1_exe.as_deref());
    let current = root.canonicalize(Path::new("/run/current-system")).ok();
    let same_generation = current.as_deref() == Some(toplevel);
    // The running generation again, nothing left over, systemd unchanged: every unit file
    // compares equal, so there is nothing to ask systemd (each question is a process start).
    let fast = same_generation && pending::read_pending(root) == Pending::default() && !reexec;
    let list = |manager: &mut dyn ServiceManager, say: &mut Say<'_>| match manager.list_units() {
        Ok(a) => Some(a),
        Err(e) => {
            say.line(format!("cannot list the running units: {e}"));
            None
        }
    };
    let mut active = if fast {
        ActiveUnits::new()
    } else {
        match list(manager, say) {
            Some(a) => a,
            None => return exit::FAILED,
        }
    };
    let mut plan = match plan_units(root, toplevel, &active, &files, manager.is_live()) {
        Ok(p) => p,
        Err(e) => {
            say.line(e.to_string());
            return exit::FAILED;
        }
    };
    let all = opts.display_all_units;

    if dry {
        say.units(
            "would stop the following units",
            &shown(&plan, &plan.stop, all),
        );
        say.units(
            "would NOT stop the following changed units",
            &shown(&plan, &plan.skip, all),
        );
        for dev in &plan.swapoff {
            say.line(format!("would stop swap device: {dev}"));
        }
        say.line("would activate the configuration...");
        if !run_activation(opts, toplevel, say) {
            say.line("dry activation reported failures");
        }
        let restart = pending::read_list(root, DRY_ACTIVATION_RESTART_LIST);
        let reload = pending::read_list(root, DRY_ACTIVATION_RELOAD_LIST);
        if let Err(e) =
            rules::fold_activation_requests(&mut plan, &restart, &reload, &active, &files)
        {
            say.line(e.to_string());
        }
        for l in [DRY_ACTIVATION_RESTART_LIST, DRY_ACTIVATION_RELOAD_LIST] {
            if let Err(e) = pending::remove(root, l) {
                say.line(e);
            }
        }
        if reexec {
            say.line("would restart systemd");
        }
        say.units(
            "would reload the following units",
            &shown(&plan, &plan.reload, all),
        );
        say.units(
            "would restart the following units",
            &shown(&plan, &plan.restart, all),
        );
        say.units(
            "would start the following units",
            &shown(&plan, &plan.start, all),
        );
        return exit::OK;
    }

    let mut code = exit::OK;
    let record = |say: &mut Say<'_>, plan: &UnitPlan| {
        for (path, set) in [
            (START_LIST, &plan.start),
            (RESTART_LIST, &plan.restart),
            (RELOAD_LIST, &plan.reload),
        ] {
            if let Err(e) = pending::write_list(root, path, set) {
                say.line(format!("warning: cannot record pending units: {e}"));
            }
        }
    };
    record(say, &plan);

    say.units(
        "stopping the following units",
        &shown(&plan, &plan.stop, all),
    );
    if !plan.stop.is_empty() && manager.jobs(Verb::Stop, &vec(&plan.stop)).is_err() {
        fail(&mut code, exit::UNITS_FAILED);
    }
    say.units(
        "NOT restarting the following changed units",
        &shown(&plan, &plan.skip, all),
    );
    for dev in &plan.swapoff {
        say.line(format!("stopping swap device: {dev}"));
        let ok = std::process::Command::new("swapoff")
            .arg(dev)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            say.line(format!("Failed to stop swapping to {dev}"));
        }
    }

    say.line("activating the configuration...");
    let activated = run_activation(opts, toplevel, say);
    if !activated {
        say.line("Failed to run activate script");
        fail(&mut code, exit::ACTIVATION_FAILED);
    }

    let restart_req = pending::read_list(root, ACTIVATION_RESTART_LIST);
    let reload_req = pending::read_list(root, ACTIVATION_RELOAD_LIST);
    let requested = !restart_req.is_empty() || !reload_req.is_empty();
    if requested && fast {
        match list(manager, say) {
            Some(a) => active = a,
            None => fail(&mut code, exit::UNITS_FAILED),
        }
    }
    if let Err(e) =
        rules::fold_activation_requests(&mut plan, &restart_req, &reload_req, &active, &files)
    {
        say.line(e.to_string());
    }
    record(say, &plan);
    for l in [ACTIVATION_RESTART_LIST, ACTIVATION_RELOAD_LIST] {
        if let Err(e) = pending::remove(root, l) {
            say.line(e);
        }
    }

    if reexec {
        say.line("restarting systemd...");
        if let Err(e) = manager.daemon_reexec() {
            say.line(format!("Failed to restart systemd: {e}"));
            fail(&mut code, exit::UNITS_FAILED);
        }
    }
    // A no-op switch (the running generation again, nothing left over, nothing asked for)
    // leaves systemd alone: no reload, no target starts, no report of old failures.
    // Reloading and re-running sysinit-reactivation.target is what makes NixOS's no-op
    // switches slow.
    let no_op = same_generation && plan.is_empty() && !requested && !reexec;
    if manager.is_live() && !no_op {
        if let Err(e) = manager.reset_failed() {
            say.line(format!("Failed to reset failed units: {e}"));
        }
        {
            if let Err(e) = manager.daemon_reload() {
                say.line(format!("Failed to reload systemd: {e}"));
                fail(&mut code, exit::UNITS_FAILED);
            }
            let reactivation = "sysinit-reactivation.target";
            if !same_generation && files.state(Gen::New, reactivation) == FileState::Present {
                say.line(format!("restarting {reactivation}"));
                if manager.jobs(Verb::Restart, &[reactivation.into()]).is_err() {
                    fail(&mut code, exit::UNITS_FAILED);
                }
            }
        }
    }

    if !plan.reload.is_empty() {
        let now = manager.active_now(&vec(&plan.reload)).unwrap_or_default();
        if let Err(e) = rules::reload_or_start(&mut plan, &|u| now.contains(u), &files) {
            say.line(e.to_string());
        }
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
            continue;
        }
        say.units(what, &shown(&plan, set, all));
        if manager.jobs(verb, &vec(set)).is_err() {
            fail(&mut code, exit::UNITS_FAILED);
        }
        if let Err(e) = pending::remove(root, path) {
            say.line(e);
        }
    }

    if manager.is_live() && !no_op {
        report_units(&active, manager, say, &mut code);
    }

    if opts.action == SwitchAction::Switch {
        if activated {
            match loader.install(root, toplevel) {
                Ok(msg) => say.line(msg),
                Err(e) => {
                    say.line(format!("Failed to install bootloader: {e}"));
                    fail(&mut code, exit::FAILED);
                }
            }
        } else {
            say.line(format!(
                "not making {} the boot default: its activation failed",
                toplevel.display()
            ));
        }
    }
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
    code
}

/// Keep the first failure's code.
fn fail(code: &mut u8, c: u8) {
    if *code == exit::OK {
        *code = c;
    }
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

/// The unit diff plus the fstab diff.
fn plan_units(
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
    plan.reload.extend(changes.reload);
    for u in changes.restart {
        plan.reload.remove(&u);
        plan.restart.insert(u);
    }
    plan.stop.extend(changes.stop);
    plan.skip.extend(changes.skip);
    plan.swapoff = changes.swapoff;
    Ok(plan)
}

/// Failed units (and services stuck restarting after a failure) make the switch fail;
/// units that were not running before are listed as new.
fn report_units(
    before: &ActiveUnits,
    manager: &mut dyn ServiceManager,
    say: &mut Say<'_>,
    code: &mut u8,
) {
    let now = match manager.list_units() {
        Ok(n) => n,
        Err(e) => {
            say.line(format!("cannot list the units after switching: {e}"));
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
            && manager.exec_main_status(unit).is_some_and(|s| s != 0)
        {
            failed.push(unit.clone());
            continue;
        }
        if !before.contains_key(unit) && !unit.ends_with(".scope") {
            new.push(unit.as_str());
        }
    }
    say.units("the following new units were started", &new);
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(String::as_str).collect();
        say.units("warning: the following units failed", &names);
        manager.show_status(&failed);
        if *code == exit::OK {
            *code = exit::UNITS_FAILED;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::BootLoaderCommand;
    use crate::units::UnitState;
    use stagehand_boot::spec;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink;
    use std::rc::Rc;

    type Log = Rc<RefCell<Vec<String>>>;

    /// systemd as a table of unit states; every call is logged, jobs change the states.
    struct FakeSystemd {
        units: BTreeMap<String, UnitState>,
        log: Log,
        /// Units whose start fails.
        broken: BTreeSet<String>,
        /// How often the units were listed.
        lists: usize,
    }

    impl ServiceManager for FakeSystemd {
        fn list_units(&mut self) -> Result<ActiveUnits, String> {
            self.lists += 1;
            Ok(self.units.clone())
        }
        fn jobs(&mut self, verb: Verb, units: &[String]) -> Result<(), String> {
            self.log
                .borrow_mut()
                .push(format!("{} {}", verb.as_str(), units.join(" ")));
            let mut ok = true;
            for u in units {
                match verb {
                    Verb::Stop => {
                        self.units.remove(u);
                    }
                    _ if self.broken.contains(u) => {
                        self.units
                            .insert(u.clone(), UnitState::new("failed", "failed"));
                        ok = false;
                    }
                    _ => {
                        self.units
                            .insert(u.clone(), UnitState::new("active", "running"));
                    }
                }
            }
            ok.then_some(()).ok_or_else(|| "job failed".into())
        }
        fn daemon_reload(&mut self) -> Result<(), String> {
            self.log.borrow_mut().push("daemon-reload".into());
            Ok(())
        }
        fn daemon_reexec(&mut self) -> Result<(), String> {
            self.log.borrow_mut().push("daemon-reexec".into());
            Ok(())
        }
        fn reset_failed(&mut self) -> Result<(), String> {
            Ok(())
        }
        fn active_now(&mut self, units: &[String]) -> Result<BTreeSet<String>, String> {
            Ok(units
                .iter()
                .filter(|u| self.units.contains_key(*u))
                .cloned()
                .collect())
        }
        fn exec_main_status(&mut self, _: &str) -> Option<i32> {
            None
        }
        fn show_status(&mut self, units: &[String]) {
            self.log
                .borrow_mut()
                .push(format!("status {}", units.join(" ")));
        }
    }

    /// Logs the call, then does what the native installer does.
    struct LoggingLoader {
        log: Log,
        inner: BootLoaderCommand,
    }

    impl BootLoader for LoggingLoader {
        fn install(&mut self, root: &Root, toplevel: &Path) -> Result<String, String> {
            self.log
                .borrow_mut()
                .push(format!("install-bootloader {}", toplevel.display()));
            self.inner.install(root, toplevel)
        }
    }

    const A: &str = "/nix/store/aaaa-nixos-system-a";
    const B: &str = "/nix/store/bbbb-nixos-system-b";

    /// A NixOS-shaped root: generations A (current, running) and B, each with units, a
    /// systemd-boot ESP whose default is A.
    fn system(b_activation: &str) -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        let r = t.path();
        let w = |p: &str, text: &str| {
            let p = r.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        };
        for (top, label, activation, units) in [
            (
                A,
                "A",
                r#"{"version": 1}"#,
                &[
                    ("a.service", "[Service]\nExecStart=/a1\n"),
                    ("b.service", "[Service]\nExecStart=/b\n"),
                    ("c.service", "[Service]\nExecStart=/c\n"),
                    (
                        "default.target",
                        "[Unit]\nWants=a.service b.service c.service\n",
                    ),
                ][..],
            ),
            (
                B,
                "B",
                b_activation,
                &[
                    ("a.service", "[Service]\nExecStart=/a2\n"),
                    ("c.service", "[Service]\nExecStart=/c\n"),
                    ("d.service", "[Service]\nExecStart=/d\n"),
                    (
                        "default.target",
                        "[Unit]\nWants=a.service c.service d.service\n",
                    ),
                ][..],
            ),
        ] {
            w(
                &format!("{top}/boot.json"),
                &spec::fixture::sample_json(top, label, &[]),
            );
            w(&format!("{top}/nixos-version"), "26.05\n");
            w(&format!("{top}/activation.json"), activation);
            for (name, text) in units {
                w(&format!("{top}/etc/systemd/system/{name}"), text);
            }
            std::fs::create_dir_all(r.join(&top[1..]).join("kernel-modules")).expect("mkdir");
        }
        w("/nix/store/kkkk-linux-6.1/bzImage", "kernel");
        w("/nix/store/iiii-initrd-linux-6.1/initrd", "initrd");
        w("/etc/NIXOS", "");
        std::fs::create_dir_all(r.join("nix/var/nix/profiles")).expect("mkdir");
        symlink(A, r.join("nix/var/nix/profiles/system-1-link")).expect("ln");
        symlink(B, r.join("nix/var/nix/profiles/system-2-link")).expect("ln");
        symlink("system-2-link", r.join("nix/var/nix/profiles/system")).expect("ln");
        // The running system: generation A's units in /etc, A current.
        std::fs::create_dir_all(r.join("etc/systemd")).expect("mkdir");
        symlink(
            format!("{A}/etc/systemd/system"),
            r.join("etc/systemd/system"),
        )
        .expect("ln");
        std::fs::create_dir_all(r.join("run")).expect("mkdir");
        symlink(A, r.join("run/current-system")).expect("ln");
        std::fs::create_dir_all(r.join("boot/loader/entries")).expect("mkdir");
        let root = Root::open(r).expect("root");
        BootLoaderCommand::Native {
            esp: PathBuf::from("/boot"),
        }
        .install(&root, Path::new(A))
        .expect("install generation A as the default");
        assert_eq!(default_entry(r), "nixos-generation-1+3.conf");
        t
    }

    /// The entry systemd-boot boots by default: the one with the default sort key.
    fn default_entry(r: &Path) -> String {
        let dir = r.join("boot/loader/entries");
        let mut found = Vec::new();
        for e in std::fs::read_dir(&dir).expect("ls") {
            let e = e.expect("entry");
            let text = std::fs::read_to_string(e.path()).expect("read");
            if text.contains("\nsort-key nixos\n") {
                found.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        assert_eq!(found.len(), 1, "{found:?}");
        found.remove(0)
    }

    fn running() -> BTreeMap<String, UnitState> {
        ["a.service", "b.service", "c.service", "default.target"]
            .iter()
            .map(|u| (u.to_string(), UnitState::new("active", "running")))
            .collect()
    }

    fn opts(t: &tempfile::TempDir, action: SwitchAction) -> SwitchOptions {
        SwitchOptions {
            root: t.path().to_path_buf(),
            toplevel: PathBuf::from("/nix/var/nix/profiles/system-2-link"),
            action,
            pre_switch_check: None,
            no_check: false,
            no_sync: true,
            distro_id: "nixos".into(),
            display_all_units: false,
            pid1_exe: None,
        }
    }

    fn go(
        t: &tempfile::TempDir,
        action: SwitchAction,
    ) -> (SwitchOutcome, Vec<String>, FakeSystemd) {
        let log = Log::default();
        let mut sd = FakeSystemd {
            units: running(),
            log: log.clone(),
            broken: BTreeSet::new(),
            lists: 0,
        };
        let mut loader = LoggingLoader {
            log: log.clone(),
            inner: BootLoaderCommand::Native {
                esp: PathBuf::from("/boot"),
            },
        };
        let out = switch(&opts(t, action), &mut sd, &mut loader, &mut std::io::sink());
        let calls = log.borrow().clone();
        (out, calls, sd)
    }

    #[test]
    fn switch_stops_activates_starts_and_only_then_moves_the_boot_default() {
        let t = system(r#"{"version": 1}"#);
        let (out, calls, sd) = go(&t, SwitchAction::Switch);
        assert_eq!(out.code, exit::OK, "{:#?}", out.lines);
        assert_eq!(
            calls,
            [
                "stop a.service b.service",
                "daemon-reload",
                "start a.service default.target",
                format!("install-bootloader {B}").as_str(),
            ],
            "{:#?}",
            out.lines
        );
        assert!(out
            .lines
            .contains(&"stopping the following units: a.service, b.service".into()));
        assert!(out
            .lines
            .contains(&"starting the following units: a.service".into()));
        assert!(
            out.lines
                .contains(&"the following new units were started: a.service".into())
                || sd.units.contains_key("a.service")
        );
        assert_eq!(default_entry(t.path()), "nixos-generation-2+3.conf");
        let current = std::fs::read_link(t.path().join("run/current-system")).expect("link");
        assert_eq!(current, Path::new(B));
        // Nothing left pending.
        assert!(!t.path().join("run/nixos/start-list").exists());
        assert!(!sd.units.contains_key("b.service"));
    }

    #[test]
    fn failed_activation_leaves_the_boot_default_alone() {
        let t = system(r#"{"version": 99}"#);
        let (out, calls, _) = go(&t, SwitchAction::Switch);
        assert_eq!(out.code, exit::ACTIVATION_FAILED, "{:#?}", out.lines);
        assert!(
            !calls.iter().any(|c| c.starts_with("install-bootloader")),
            "{calls:?}"
        );
        assert_eq!(default_entry(t.path()), "nixos-generation-1+3.conf");
        assert!(out
            .lines
            .iter()
            .any(|l| l.contains("not making") && l.contains("activation failed")));
    }

    #[test]
    fn boot_only_moves_the_default_and_test_never_does() {
        let t = system(r#"{"version": 1}"#);
        let (out, calls, _) = go(&t, SwitchAction::Test);
        assert_eq!(out.code, exit::OK, "{:#?}", out.lines);
        assert!(!calls.iter().any(|c| c.starts_with("install-bootloader")));
        assert_eq!(default_entry(t.path()), "nixos-generation-1+3.conf");

        let t = system(r#"{"version": 1}"#);
        let (out, calls, _) = go(&t, SwitchAction::Boot);
        assert_eq!(out.code, exit::OK, "{:#?}", out.lines);
        assert_eq!(calls, [format!("install-bootloader {B}")]);
        assert_eq!(default_entry(t.path()), "nixos-generation-2+3.conf");
        // No activation: /run/current-system still names A.
        let current = std::fs::read_link(t.path().join("run/current-system")).expect("link");
        assert_eq!(current, Path::new(A));
    }

    #[test]
    fn dry_activate_prints_and_changes_nothing() {
        let t = system(r#"{"version": 1}"#);
        let (out, calls, _) = go(&t, SwitchAction::DryActivate);
        assert_eq!(out.code, exit::OK);
        assert!(calls.is_empty(), "{calls:?}");
        assert!(out
            .lines
            .contains(&"would stop the following units: a.service, b.service".into()));
        assert!(out
            .lines
            .contains(&"would start the following units: a.service".into()));
        let current = std::fs::read_link(t.path().join("run/current-system")).expect("link");
        assert_eq!(current, Path::new(A));
        assert!(!t.path().join("run/nixos/start-list").exists());
    }

    #[test]
    fn a_second_switch_is_refused_while_one_runs() {
        let t = system(r#"{"version": 1}"#);
        std::fs::create_dir_all(t.path().join("run/nixos")).expect("mkdir");
        let held = lock::take(&t.path().join("run/nixos/switch-to-configuration.lock"))
            .expect("first switch");
        let (out, calls, _) = go(&t, SwitchAction::Switch);
        assert_eq!(out.code, exit::LOCKED);
        assert!(calls.is_empty());
        assert!(
            out.lines[0].contains("another switch-to-configuration is running"),
            "{:?}",
            out.lines
        );
        drop(held);
        assert_eq!(go(&t, SwitchAction::Switch).0.code, exit::OK);
    }

    #[test]
    fn interrupted_switch_resumes_and_failures_exit_4() {
        let t = system(r#"{"version": 1}"#);
        let root = Root::open(t.path()).expect("root");
        // A crash after the stop left d.service and e.service to start.
        pending::write_list(
            &root,
            START_LIST,
            &["e.service".to_string()].into_iter().collect(),
        )
        .expect("record");
        let log = Log::default();
        let mut sd = FakeSystemd {
            units: running(),
            log: log.clone(),
            broken: ["e.service".to_string()].into_iter().collect(),
            lists: 0,
        };
        let mut loader = LoggingLoader {
            log: log.clone(),
            inner: BootLoaderCommand::Native {
                esp: PathBuf::from("/boot"),
            },
        };
        let out = switch(
            &opts(&t, SwitchAction::Test),
            &mut sd,
            &mut loader,
            &mut std::io::sink(),
        );
        assert_eq!(out.code, exit::UNITS_FAILED, "{:#?}", out.lines);
        assert!(log
            .borrow()
            .contains(&"start a.service default.target e.service".to_string()));
        assert!(out
            .lines
            .contains(&"warning: the following units failed: e.service".into()));
        assert!(log.borrow().contains(&"status e.service".to_string()));
    }

    #[test]
    fn no_op_switch_touches_no_unit_and_skips_the_reload() {
        let t = system(r#"{"version": 1}"#);
        std::fs::remove_file(t.path().join("run/current-system")).expect("rm");
        symlink(B, t.path().join("run/current-system")).expect("ln");
        std::fs::remove_file(t.path().join("etc/systemd/system")).expect("rm");
        symlink(
            format!("{B}/etc/systemd/system"),
            t.path().join("etc/systemd/system"),
        )
        .expect("ln");
        let log = Log::default();
        let mut units = running();
        units.remove("b.service");
        units.insert("d.service".into(), UnitState::new("active", "running"));
        let mut sd = FakeSystemd {
            units,
            log: log.clone(),
            broken: BTreeSet::new(),
            lists: 0,
        };
        let mut loader = LoggingLoader {
            log: log.clone(),
            inner: BootLoaderCommand::Native {
                esp: PathBuf::from("/boot"),
            },
        };
        let out = switch(
            &opts(&t, SwitchAction::Test),
            &mut sd,
            &mut loader,
            &mut std::io::sink(),
        );
        assert_eq!(out.code, exit::OK, "{:#?}", out.lines);
        // Not one question to systemd, let alone a job.
        assert!(log.borrow().is_empty(), "{:?}", log.borrow());
        assert_eq!(sd.lists, 0);
        // An activation that asks for a restart turns it into a real (small) switch.
        std::fs::write(
            t.path().join("run/nixos/activation-restart-list"),
            "c.service\n",
        )
        .expect("request");
        let out = switch(
            &opts(&t, SwitchAction::Test),
            &mut sd,
            &mut loader,
            &mut std::io::sink(),
        );
        assert_eq!(out.code, exit::OK, "{:#?}", out.lines);
        assert_eq!(
            *log.borrow(),
            ["daemon-reload", "restart c.service"],
            "{:#?}",
            out.lines
        );
    }

    #[test]
    fn not_nixos_and_not_a_generation_are_refused() {
        let t = system(r#"{"version": 1}"#);
        std::fs::remove_file(t.path().join("etc/NIXOS")).expect("rm");
        let (out, calls, _) = go(&t, SwitchAction::Switch);
        assert_eq!(out.code, exit::FAILED);
        assert!(out.lines[0].contains("This is not a NixOS installation"));
        assert!(calls.is_empty());
        std::fs::write(t.path().join("etc/os-release"), "ID=\"nixos\"\n").expect("w");
        let mut o = opts(&t, SwitchAction::Test);
        o.toplevel = PathBuf::from("/nix/store");
        let out = switch(
            &o,
            &mut crate::manager::Offline,
            &mut BootLoaderCommand::Native {
                esp: PathBuf::from("/boot"),
            },
            &mut std::io::sink(),
        );
        assert_eq!(out.code, exit::FAILED);
        assert!(
            out.lines[0].contains("is not a system generation"),
            "{:?}",
            out.lines
        );
    }
}
