//! Which running units to stop, start, restart or reload when switching generations:
//! NixOS's `switch-to-configuration` rules, as a pure function of the active units and the
//! two generations' unit files.
//!
//! For every unit that is active (or activating) and has a file in the running system's
//! `/etc/systemd/system` (for an instance `foo@bar.service` without its own file, the
//! template `foo@.service`):
//! * the new generation has no file for it, or masks it → **stop** (unless the old unit says
//!   `X-StopOnRemoval=false`);
//! * a target → **start** it again after the reload (that starts new units it wants, and
//!   re-mounts new mounts), unless `RefuseManualStart`/`X-OnlyManualStart` or one of the
//!   sleep targets; `X-StopOnReconfiguration` also **stops** it first;
//! * otherwise the files are compared ([`compare`](super::compare)): a restart-worthy change
//!   goes through [`modified`], a reload-only change **reloads**.
//!
//! [`modified`] follows the unit's type and its `X-` switches: `.slice`, `.path` and the four
//! big targets are left alone (their settings apply on daemon-reload); `.socket` is left alone
//! (NixOS never found a safe way); `.mount` **restarts** (`/` and `/nix` **reload**);
//! services with `X-ReloadIfChanged` **reload**; `X-RestartIfChanged=false`,
//! `RefuseManualStop` or `X-OnlyManualStart` are **skipped** (reported, not touched);
//! `X-StopIfChanged=false` or a non-service **restarts**; otherwise the service is **stopped**
//! before activation and **started** after it — or, when it is socket-activated, its sockets
//! are stopped and only the sockets started again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::compare::{compare, Comparison};
use super::ini::{IniError, UnitInfo};
use super::name::{base_name, template_of, unit_type};

/// A unit systemd reports as loaded and not inactive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    /// `ActiveState`: active, activating, deactivating, reloading, failed.
    pub active: String,
    /// `SubState`: running, exited, auto-restart, …
    pub sub: String,
}

impl UnitState {
    pub fn new(active: &str, sub: &str) -> UnitState {
        UnitState {
            active: active.into(),
            sub: sub.into(),
        }
    }
}

pub type ActiveUnits = BTreeMap<String, UnitState>;

/// Which generation's unit directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Gen {
    /// The running system's `/etc/systemd/system` (read before activation replaces it).
    Old,
    /// `<toplevel>/etc/systemd/system`.
    New,
}

/// What is at a unit's file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    Missing,
    /// A link to `/dev/null`.
    Masked,
    Present,
}

#[derive(Debug)]
pub enum UnitError {
    Read { path: String, error: std::io::Error },
    Parse(IniError),
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitError::Read { path, error } => write!(f, "cannot read unit file {path}: {error}"),
            UnitError::Parse(e) => write!(f, "cannot parse unit file {e}"),
        }
    }
}

impl std::error::Error for UnitError {}

/// The unit files of both generations (a directory under a root, or a table in tests).
pub trait UnitFiles {
    fn state(&self, gen: Gen, name: &str) -> FileState;
    /// File `base` with its `base.d/*.conf` drop-ins, then (for a template instance
    /// `unit` != `base`) `unit.d/*.conf`.
    fn load(&self, gen: Gen, unit: &str, base: &str) -> Result<UnitInfo, UnitError>;
}

/// The decisions, as sets (each unit at most once per set; printed sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitPlan {
    /// Stopped before activation.
    pub stop: BTreeSet<String>,
    /// Changed but deliberately left running (`X-RestartIfChanged=false` and friends).
    pub skip: BTreeSet<String>,
    pub reload: BTreeSet<String>,
    pub restart: BTreeSet<String>,
    /// Started after the reload (targets, and services stopped above).
    pub start: BTreeSet<String>,
    /// Targets that are always started: not printed unless `STC_DISPLAY_ALL_UNITS=1`.
    pub quiet: BTreeSet<String>,
    /// Swap devices to turn off (`swapoff(2)`, not a unit stop: aliases would keep them).
    pub swapoff: Vec<String>,
}

impl UnitPlan {
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty()
            && self.reload.is_empty()
            && self.restart.is_empty()
            && self.start.iter().all(|u| self.quiet.contains(u))
            && self.swapoff.is_empty()
    }

    /// `set` without the quiet targets (what is printed).
    pub fn shown<'a>(&'a self, set: &'a BTreeSet<String>) -> impl Iterator<Item = &'a str> + 'a {
        set.iter()
            .filter(|u| !self.quiet.contains(*u))
            .map(String::as_str)
    }

    fn add_reload(&mut self, unit: &str) {
        self.reload.insert(unit.to_string());
    }

    fn add_restart(&mut self, unit: &str) {
        self.restart.insert(unit.to_string());
        // A restart covers a reload.
        self.reload.remove(unit);
    }
}

/// The file a unit's settings come from: its own, or its template's when neither
/// generation has a file for the instance.
fn base_unit(files: &dyn UnitFiles, unit: &str) -> String {
    if files.state(Gen::Old, unit) == FileState::Missing
        && files.state(Gen::New, unit) == FileState::Missing
    {
        if let Some(t) = template_of(unit) {
            return t;
        }
    }
    unit.to_string()
}

/// Targets that cannot be restarted directly.
const BIG_TARGETS: &[&str] = &[
    "sysinit.target",
    "basic.target",
    "multi-user.target",
    "graphical.target",
];

const SLEEP_TARGETS: &[&str] = &["suspend.target", "hibernate.target", "hybrid-sleep.target"];

/// The diff of the active units (before activation). `pending` is what an interrupted
/// switch left to do (start/restart/reload lists), carried into the plan.
pub fn plan(
    active: &ActiveUnits,
    files: &dyn UnitFiles,
    pending: &Pending,
) -> Result<UnitPlan, UnitError> {
    let mut p = UnitPlan {
        start: pending.start.clone(),
        restart: pending.restart.clone(),
        reload: pending.reload.clone(),
        ..UnitPlan::default()
    };
    for (unit, st) in active {
        if !matches!(st.active.as_str(), "active" | "activating") {
            continue;
        }
        let base = base_unit(files, unit);
        if files.state(Gen::Old, &base) != FileState::Present {
            continue;
        }
        if files.state(Gen::New, &base) != FileState::Present {
            let old = files.load(Gen::Old, unit, &base)?;
            if old.bool("Unit", "X-StopOnRemoval", true) {
                p.stop.insert(unit.clone());
            }
            continue;
        }
        if unit_type(unit) == "target" {
            let new = files.load(Gen::New, unit, &base)?;
            let startable = !SLEEP_TARGETS.contains(&unit.as_str())
                && !new.bool("Unit", "RefuseManualStart", false)
                && !new.bool("Unit", "X-OnlyManualStart", false);
            if startable {
                p.start.insert(unit.clone());
                p.quiet.insert(unit.clone());
            }
            if new.bool("Unit", "X-StopOnReconfiguration", false) {
                p.stop.insert(unit.clone());
            }
            continue;
        }
        let old = files.load(Gen::Old, unit, &base)?;
        let new = files.load(Gen::New, unit, &base)?;
        match compare(&old, &new) {
            Comparison::Equal => {}
            Comparison::NeedsReload => {
                if !p.restart.contains(unit) {
                    p.add_reload(unit);
                }
            }
            Comparison::NeedsRestart => {
                modified(unit, &base, &new, active, files, &mut p, Mode::Diff)
            }
        }
    }
    Ok(p)
}

/// Where [`modified`] is called from: the unit diff (stop now, start later) or the
/// activation's restart list (activation already ran: restart instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Diff,
    ActivationList,
}

/// A unit whose file changed in a way that needs more than a reload.
fn modified(
    unit: &str,
    base: &str,
    new: &UnitInfo,
    active: &ActiveUnits,
    files: &dyn UnitFiles,
    p: &mut UnitPlan,
    mode: Mode,
) {
    let ty = unit_type(unit);
    if BIG_TARGETS.contains(&unit) || ty == "slice" || ty == "path" || ty == "socket" {
        return;
    }
    if ty == "mount" {
        if unit == "-.mount" || unit == "nix.mount" {
            p.add_reload(unit);
        } else {
            p.add_restart(unit);
        }
        return;
    }
    let taken_down = match mode {
        Mode::Diff => p.stop.contains(unit),
        Mode::ActivationList => p.restart.contains(unit),
    };
    if new.bool("Service", "X-ReloadIfChanged", false) && !p.restart.contains(unit) && !taken_down {
        p.add_reload(unit);
        return;
    }
    if !new.bool("Service", "X-RestartIfChanged", true)
        || new.bool("Unit", "RefuseManualStop", false)
        || new.bool("Unit", "X-OnlyManualStart", false)
    {
        p.skip.insert(unit.to_string());
        return;
    }
    if !new.bool("Service", "X-StopIfChanged", true) || ty != "service" {
        p.add_restart(unit);
        return;
    }
    // Stop now, start after activation. A socket-activated service (one with an active
    // socket) is started again by its socket instead.
    let mut sockets: Vec<String> = new
        .all("Service", "Sockets")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(str::to_string)
        .collect();
    if sockets.is_empty() {
        sockets.push(format!("{}.socket", base_name(base)));
    }
    let mut socket_activated = false;
    for socket in sockets.iter().filter(|s| active.contains_key(*s)) {
        match mode {
            Mode::Diff => p.stop.insert(socket.clone()),
            Mode::ActivationList => p.restart.insert(socket.clone()),
        };
        if files.state(Gen::New, socket) == FileState::Present {
            match mode {
                Mode::Diff => p.start.insert(socket.clone()),
                Mode::ActivationList => p.restart.insert(socket.clone()),
            };
            socket_activated = true;
        }
    }
    if new.bool("Service", "X-NotSocketActivated", false) {
        socket_activated = false;
    }
    match mode {
        Mode::Diff => {
            if !socket_activated {
                p.start.insert(unit.to_string());
            }
            p.stop.insert(unit.to_string());
        }
        Mode::ActivationList => {
            p.restart.insert(unit.to_string());
        }
    }
    p.reload.remove(unit);
}

/// What an interrupted switch left to do, or what activation asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    pub start: BTreeSet<String>,
    pub restart: BTreeSet<String>,
    pub reload: BTreeSet<String>,
}

/// Fold the activation's requests (`/run/nixos/activation-{restart,reload}-list`, read
/// after activation, so `Gen::New` files are the installed ones) into the plan.
pub fn fold_activation_requests(
    p: &mut UnitPlan,
    restart: &[String],
    reload: &[String],
    active: &ActiveUnits,
    files: &dyn UnitFiles,
) -> Result<(), UnitError> {
    for unit in restart {
        if !active.contains_key(unit) {
            p.start.insert(unit.clone());
            continue;
        }
        let base = if files.state(Gen::New, unit) == FileState::Missing {
            template_of(unit).unwrap_or_else(|| unit.clone())
        } else {
            unit.clone()
        };
        // The activation asked for it: a unit without a file still gets restarted.
        let new = match files.state(Gen::New, &base) {
            FileState::Present => files.load(Gen::New, unit, &base)?,
            _ => UnitInfo::default(),
        };
        modified(unit, &base, &new, active, files, p, Mode::ActivationList);
    }
    for unit in reload {
        if active.contains_key(unit) && !p.restart.contains(unit) && !p.stop.contains(unit) {
            p.add_reload(unit);
        }
    }
    Ok(())
}

/// Before reloading: a unit that is no longer active (a dependency was stopped) is started
/// instead — unless it refuses manual starts — because a reload of an inactive unit fails.
pub fn reload_or_start(
    p: &mut UnitPlan,
    is_active: &dyn Fn(&str) -> bool,
    files: &dyn UnitFiles,
) -> Result<(), UnitError> {
    let inactive: Vec<String> = p.reload.iter().filter(|u| !is_active(u)).cloned().collect();
    for unit in inactive {
        p.reload.remove(&unit);
        let refuses = match files.state(Gen::New, &unit) {
            FileState::Present => {
                files
                    .load(Gen::New, &unit, &unit)?
                    .bool("Unit", "RefuseManualStart", false)
            }
            _ => false,
        };
        if !refuses {
            p.start.insert(unit);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Unit files as a table: `(gen, path)` → text, `None` = masked. Drop-ins are
    /// `name.d/x.conf` paths.
    #[derive(Default)]
    pub struct Table(pub HashMap<(Gen, String), Option<String>>);

    impl Table {
        pub fn put(&mut self, gen: Gen, name: &str, text: Option<&str>) {
            self.0.insert((gen, name.into()), text.map(str::to_string));
        }
    }

    impl UnitFiles for Table {
        fn state(&self, gen: Gen, name: &str) -> FileState {
            match self.0.get(&(gen, name.to_string())) {
                None => FileState::Missing,
                Some(None) => FileState::Masked,
                Some(Some(_)) => FileState::Present,
            }
        }
        fn load(&self, gen: Gen, unit: &str, base: &str) -> Result<UnitInfo, UnitError> {
            let mut info = UnitInfo::default();
            let text = |n: &str| self.0.get(&(gen, n.to_string())).cloned().flatten();
            let main = text(base).ok_or_else(|| UnitError::Read {
                path: base.into(),
                error: std::io::ErrorKind::NotFound.into(),
            })?;
            info.apply(base, &main).map_err(UnitError::Parse)?;
            let mut dirs = vec![format!("{base}.d/")];
            if unit != base {
                dirs.push(format!("{unit}.d/"));
            }
            for dir in dirs {
                let mut dropins: Vec<&String> = self
                    .0
                    .keys()
                    .filter(|(g, n)| *g == gen && n.starts_with(&dir) && n.ends_with(".conf"))
                    .map(|(_, n)| n)
                    .collect();
                dropins.sort();
                for d in dropins {
                    info.apply(d, &text(d).unwrap_or_default())
                        .map_err(UnitError::Parse)?;
                }
            }
            Ok(info)
        }
    }

    const SVC: &str = "[Unit]\nDescription=svc\n[Service]\nExecStart=/bin/a\n";

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// One row: the unit's old file, new file, running state, and what the plan must say.
    struct Row {
        name: &'static str,
        unit: &'static str,
        old: Option<&'static str>,
        /// `Some(None)` masks it in the new generation.
        new: Option<Option<&'static str>>,
        state: &'static str,
        stop: &'static [&'static str],
        start: &'static [&'static str],
        restart: &'static [&'static str],
        reload: &'static [&'static str],
        skip: &'static [&'static str],
    }

    const fn row(name: &'static str, unit: &'static str) -> Row {
        Row {
            name,
            unit,
            old: Some(SVC),
            new: Some(Some(SVC)),
            state: "active",
            stop: &[],
            start: &[],
            restart: &[],
            reload: &[],
            skip: &[],
        }
    }

    #[test]
    fn table_of_rules() {
        let changed = "[Unit]\nDescription=svc\n[Service]\nExecStart=/bin/b\n";
        let rows = [
            row("unchanged service", "a.service"),
            Row {
                new: Some(Some("[Unit]\nDescription=other words\n[Service]\nExecStart=/bin/a\n")),
                ..row("description only", "a.service")
            },
            Row {
                new: Some(Some(changed)),
                stop: &["a.service"],
                start: &["a.service"],
                ..row("changed service: stop, then start", "a.service")
            },
            Row {
                new: Some(Some(changed)),
                state: "failed",
                ..row("failed units are left alone", "a.service")
            },
            Row {
                new: Some(Some(changed)),
                state: "activating",
                stop: &["a.service"],
                start: &["a.service"],
                ..row("activating counts as running", "a.service")
            },
            Row {
                new: None,
                stop: &["a.service"],
                ..row("removed", "a.service")
            },
            Row {
                new: Some(None),
                stop: &["a.service"],
                ..row("masked", "a.service")
            },
            Row {
                old: Some("[Unit]\nX-StopOnRemoval=false\n[Service]\nExecStart=/bin/a\n"),
                new: None,
                ..row("removed but X-StopOnRemoval=false", "a.service")
            },
            Row {
                old: None,
                new: Some(Some(changed)),
                ..row("not ours (no old file)", "a.service")
            },
            Row {
                new: Some(Some("[Service]\nExecStart=/bin/b\nX-ReloadIfChanged=true\n")),
                reload: &["a.service"],
                ..row("X-ReloadIfChanged", "a.service")
            },
            Row {
                new: Some(Some("[Service]\nExecStart=/bin/b\nX-RestartIfChanged=false\n")),
                skip: &["a.service"],
                ..row("X-RestartIfChanged=false", "a.service")
            },
            Row {
                new: Some(Some("[Unit]\nX-OnlyManualStart=true\n[Service]\nExecStart=/bin/b\n")),
                skip: &["a.service"],
                ..row("X-OnlyManualStart", "a.service")
            },
            Row {
                new: Some(Some("[Unit]\nRefuseManualStop=yes\n[Service]\nExecStart=/bin/b\n")),
                skip: &["a.service"],
                ..row("RefuseManualStop", "a.service")
            },
            Row {
                new: Some(Some("[Service]\nExecStart=/bin/b\nX-StopIfChanged=false\n")),
                restart: &["a.service"],
                ..row("X-StopIfChanged=false", "a.service")
            },
            Row {
                new: Some(Some("[Unit]\nDescription=svc\nX-Reload-Triggers=/nix/store/x\n[Service]\nExecStart=/bin/a\n")),
                reload: &["a.service"],
                ..row("reload trigger", "a.service")
            },
            Row {
                old: Some("[Unit]\n"),
                new: Some(Some("[Unit]\nWants=d.service\n")),
                start: &["default.target"],
                ..row("active target is started again", "default.target")
            },
            Row {
                old: Some("[Unit]\n"),
                new: Some(Some("[Unit]\nX-StopOnReconfiguration=true\n")),
                start: &["x.target"],
                stop: &["x.target"],
                ..row("X-StopOnReconfiguration", "x.target")
            },
            Row {
                old: Some("[Unit]\n"),
                new: Some(Some("[Unit]\nRefuseManualStart=yes\n")),
                ..row("target refusing manual start", "y.target")
            },
            Row {
                old: Some("[Unit]\n"),
                new: Some(Some("[Unit]\n")),
                ..row("sleep target", "suspend.target")
            },
            Row {
                old: Some("[Mount]\nWhat=/dev/a\nOptions=rw\n"),
                new: Some(Some("[Mount]\nWhat=/dev/a\nOptions=ro\n")),
                reload: &["srv.mount"],
                ..row("mount options: remount", "srv.mount")
            },
            Row {
                old: Some("[Mount]\nWhat=/dev/a\n"),
                new: Some(Some("[Mount]\nWhat=/dev/b\n")),
                restart: &["srv.mount"],
                ..row("mount device: restart", "srv.mount")
            },
            Row {
                old: Some("[Mount]\nWhat=/dev/a\n"),
                new: Some(Some("[Mount]\nWhat=/dev/b\n")),
                reload: &["nix.mount"],
                ..row("/nix is never unmounted", "nix.mount")
            },
            Row {
                old: Some("[Socket]\nListenStream=1\n"),
                new: Some(Some("[Socket]\nListenStream=2\n")),
                ..row("sockets are left alone", "a.socket")
            },
            Row {
                old: Some("[Slice]\nMemoryMax=1\n"),
                new: Some(Some("[Slice]\nMemoryMax=2\n")),
                ..row("slices apply on reload", "a.slice")
            },
            Row {
                old: Some("[Timer]\nOnCalendar=daily\n"),
                new: Some(Some("[Timer]\nOnCalendar=weekly\n")),
                restart: &["a.timer"],
                ..row("non-services restart", "a.timer")
            },
        ];
        for r in &rows {
            let mut t = Table::default();
            if let Some(o) = r.old {
                t.put(Gen::Old, r.unit, Some(o));
            }
            if let Some(n) = r.new {
                t.put(Gen::New, r.unit, n);
            }
            let mut active = ActiveUnits::new();
            active.insert(r.unit.into(), UnitState::new(r.state, "running"));
            let p = plan(&active, &t, &Pending::default()).expect(r.name);
            assert_eq!(p.stop, set(r.stop), "{}: stop", r.name);
            assert_eq!(p.start, set(r.start), "{}: start", r.name);
            assert_eq!(p.restart, set(r.restart), "{}: restart", r.name);
            assert_eq!(p.reload, set(r.reload), "{}: reload", r.name);
            assert_eq!(p.skip, set(r.skip), "{}: skip", r.name);
        }
    }

    #[test]
    fn socket_activated_service_restarts_through_its_socket() {
        let mut t = Table::default();
        t.put(Gen::Old, "d.service", Some(SVC));
        t.put(
            Gen::New,
            "d.service",
            Some("[Service]\nExecStart=/bin/new\n"),
        );
        t.put(Gen::Old, "d.socket", Some("[Socket]\nListenStream=1\n"));
        t.put(Gen::New, "d.socket", Some("[Socket]\nListenStream=1\n"));
        let mut active = ActiveUnits::new();
        active.insert("d.service".into(), UnitState::new("active", "running"));
        active.insert("d.socket".into(), UnitState::new("active", "listening"));
        let p = plan(&active, &t, &Pending::default()).expect("plan");
        assert_eq!(p.stop, set(&["d.service", "d.socket"]));
        assert_eq!(p.start, set(&["d.socket"]));
        // Opting out: the service is started itself, its socket too.
        t.put(
            Gen::New,
            "d.service",
            Some("[Service]\nExecStart=/bin/new\nX-NotSocketActivated=yes\n"),
        );
        let p = plan(&active, &t, &Pending::default()).expect("plan");
        assert_eq!(p.start, set(&["d.service", "d.socket"]));
    }

    #[test]
    fn template_instances_use_the_template_and_instance_dropins() {
        let mut t = Table::default();
        t.put(Gen::Old, "getty@.service", Some(SVC));
        t.put(Gen::New, "getty@.service", Some(SVC));
        t.put(
            Gen::New,
            "getty@tty1.service.d/override.conf",
            Some("[Service]\nExecStart=\nExecStart=/bin/other\n"),
        );
        let mut active = ActiveUnits::new();
        active.insert(
            "getty@tty1.service".into(),
            UnitState::new("active", "running"),
        );
        active.insert(
            "getty@tty2.service".into(),
            UnitState::new("active", "running"),
        );
        let p = plan(&active, &t, &Pending::default()).expect("plan");
        assert_eq!(p.stop, set(&["getty@tty1.service"]));
        assert_eq!(p.start, set(&["getty@tty1.service"]));
    }

    #[test]
    fn pending_work_and_activation_requests() {
        let mut t = Table::default();
        t.put(Gen::Old, "a.service", Some(SVC));
        t.put(Gen::New, "a.service", Some(SVC));
        t.put(
            Gen::New,
            "r.service",
            Some("[Service]\nExecStart=/r\nX-ReloadIfChanged=true\n"),
        );
        let mut active = ActiveUnits::new();
        active.insert("a.service".into(), UnitState::new("active", "running"));
        active.insert("r.service".into(), UnitState::new("active", "running"));
        let pending = Pending {
            start: set(&["left-over.service"]),
            ..Pending::default()
        };
        let mut p = plan(&active, &t, &pending).expect("plan");
        assert_eq!(p.start, set(&["left-over.service"]));
        fold_activation_requests(
            &mut p,
            &["a.service".into(), "new.service".into(), "r.service".into()],
            &["a.service".into(), "gone.service".into()],
            &active,
            &t,
        )
        .expect("fold");
        // Activation already ran: a running unit is restarted, not stopped and started.
        assert_eq!(p.restart, set(&["a.service"]));
        assert_eq!(p.start, set(&["left-over.service", "new.service"]));
        assert_eq!(
            p.reload,
            set(&["r.service"]),
            "restart covers a.service's reload"
        );
        assert!(p.stop.is_empty());

        let mut p = UnitPlan {
            reload: set(&["a.service", "r.service"]),
            ..UnitPlan::default()
        };
        t.put(
            Gen::New,
            "a.service",
            Some("[Unit]\nRefuseManualStart=yes\n[Service]\nExecStart=/a\n"),
        );
        reload_or_start(&mut p, &|_| false, &t).expect("reload check");
        assert!(p.reload.is_empty());
        assert_eq!(p.start, set(&["r.service"]));
    }
}
