//! Activating a generation: the native replacement of `<toplevel>/activate`.
//!
//! Steps run in NixOS's order (names alphabetically, dependencies first; for a generation
//! read from its `activate` script, the script's order). Built-in steps are native code;
//! other snippets run with bash, one process per snippet, with `systemConfig` set,
//! `NIXOS_ACTION` exported and the ERR trap NixOS uses, so a failing command marks the
//! snippet failed while the snippet — and then the other steps — still run. A snippet that
//! calls `exit` stops activation there, as it stops NixOS's single script: no later step
//! runs and `/run/current-system` is not updated. Unlike NixOS's single script, shell
//! variables do not carry from one snippet to the next. At the end `/run/current-system` is
//! pointed at the generation (not in dry mode).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::fs::Mode;
use stagehand_common::mounts::mountinfo;
use stagehand_common::mounts::special::SPECIAL_FILESYSTEMS;

use crate::compiled::{self, CompiledPlan};
use crate::lock::{self, ActivationLock, LockError};
use crate::manifest::LoadError;
use crate::{etc, users};
use stagehand_common::rootfs::{self, Node, Root};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Boot,
    Switch,
    Test,
    DryActivate,
}

impl Action {
    /// The `NIXOS_ACTION` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Boot => "boot",
            Self::Switch => "switch",
            Self::Test => "test",
            Self::DryActivate => "dry-activate",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "boot" => Self::Boot,
            "switch" => Self::Switch,
            "test" => Self::Test,
            "dry-activate" => Self::DryActivate,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ActivateOptions {
    pub root: PathBuf,
    pub dry_run: bool,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Changed,
    Unchanged,
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Changed => f.write_str("changed"),
            Self::Unchanged => f.write_str("unchanged"),
            Self::Failed(m) => write!(f, "FAILED: {m}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StepReport {
    pub name: String,
    pub duration: Duration,
    pub outcome: Outcome,
    /// What the step did or would do, and its warnings.
    pub messages: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ActivationReport {
    pub steps: Vec<StepReport>,
    pub total: Duration,
    /// Whether `/run/current-system` now points at the generation.
    pub current_system_updated: bool,
    /// The snippet that called `exit` (or whose shell died), which stopped activation.
    pub stopped_by: Option<String>,
    /// Before the first step: opening the root, reading the compiled plan (or the
    /// generation's `activate` script), taking the activation lock.
    pub prepare: Duration,
    /// After the last step: joining the etc step's read-back thread before
    /// `/run/current-system` moves — what is left of its flush, and of reading back what the
    /// step changed when the clock tick has passed by then (never a wait for the clock: the
    /// thread is told to hurry, see [`etc::Recheck`]).
    pub readback_wait: Duration,
    /// How the etc step's read-back ended, when the step changed `/etc`: done, or left to the
    /// next run because the clock tick had not passed when the last step ended.
    pub etc_readback: Option<etc::ReadBack>,
}

impl ActivationReport {
    /// True when no step failed (the `activate` script's exit status 0).
    pub fn success(&self) -> bool {
        !self
            .steps
            .iter()
            .any(|s| matches!(s.outcome, Outcome::Failed(_)))
    }

    /// Same as [`ActivationReport::success`].
    pub fn is_success(&self) -> bool {
        self.success()
    }

    pub fn failed_steps(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
            .map(|s| s.name.as_str())
            .collect()
    }
}

/// Problems that stop activation before any step runs.
#[derive(Debug)]
pub enum ActivationError {
    Root {
        path: PathBuf,
        error: std::io::Error,
    },
    Load(LoadError),
    /// Another activation of the root holds the lock ([`crate::lock`]).
    Lock(LockError),
}

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root { path, error } => write!(
                f,
                "{}: cannot open the root to activate in: {error}",
                path.display()
            ),
            Self::Load(e) => e.fmt(f),
            Self::Lock(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ActivationError {}

impl From<LoadError> for ActivationError {
    fn from(e: LoadError) -> Self {
        Self::Load(e)
    }
}

/// Activate the generation `toplevel` (a path inside `opts.root`).
pub fn activate(
    toplevel: &Path,
    opts: &ActivateOptions,
) -> Result<ActivationReport, ActivationError> {
    let start = Instant::now();
    let root = Root::open(&opts.root).map_err(|error| ActivationError::Root {
        path: opts.root.clone(),
        error,
    })?;
    let compiled = compiled::load(&root, toplevel)?;
    let dry = opts.dry_run || opts.action == Action::DryActivate;
    // Held for the whole run, the etc step's read-back included.
    let held = if dry {
        None
    } else {
        Some(lock::lock(&root).map_err(ActivationError::Lock)?)
    };
    let ctx = Ctx {
        root: &root,
        lock: held.as_ref(),
        compiled: &compiled,
        dry,
        action: opts.action,
        etc_recheck: std::cell::RefCell::new(None),
        stopped: std::cell::RefCell::new(None),
    };
    log::info!(
        "activating {} ({}{})",
        compiled.toplevel,
        opts.action.as_str(),
        if dry { ", dry run" } else { "" }
    );
    let mut report = ActivationReport {
        prepare: start.elapsed(),
        ..ActivationReport::default()
    };
    // The etc step's remainder ([`etc::Recheck`]: flush its changes, read back what it
    // changed once the clock tick has passed, store the cache) runs on a thread of its own
    // while the later steps run. After the last step the thread is told to hurry (`hurry`,
    // then an unpark, as it may be parked waiting for the tick) and joined before
    // `/run/current-system` moves — under the lock, which is held until this function
    // returns. So the join waits for the flush and for a read-back already under way, never
    // for the clock. Handed over through `readback`, so that it can still run here (hurried
    // from the start) if no thread can be started.
    let readback: std::sync::Mutex<Option<etc::Recheck>> = std::sync::Mutex::new(None);
    let hurry = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let mut thread = None;
        for name in &compiled.order {
            let t = Instant::now();
            let (outcome, messages) = ctx.step(name);
            let duration = t.elapsed();
            log_step(name, &outcome, duration, &messages);
            report.steps.push(StepReport {
                name: name.clone(),
                duration,
                outcome,
                messages,
            });
            if let (Some(recheck), Some(tree)) = (ctx.etc_recheck.take(), &compiled.etc) {
                *lock_slot(&readback) = Some(recheck);
                let (slot, root, hurry) = (&readback, &root, &hurry);
                let spawned = std::thread::Builder::new()
                    .name("etc-readback".into())
                    .spawn_scoped(scope, move || {
                        lock_slot(slot).take().map(|r| r.finish(root, tree, hurry))
                    });
                match spawned {
                    Ok(h) => thread = Some(h),
                    Err(e) => log::debug!("etc read-back runs in line: {e}"),
                }
            }
            if let Some(why) = ctx.stopped.take() {
                log::error!(
                    "activation stopped: {why}; the remaining steps do not run and \
                     /run/current-system is not updated, as with NixOS's activate script"
                );
                report.stopped_by = Some(name.clone());
                break;
            }
        }
        let t = Instant::now();
        // Release: the read-back thread sees the flag once it is woken by the unpark.
        hurry.store(true, std::sync::atomic::Ordering::Release);
        if let Some(h) = thread {
            h.thread().unpark();
            match h.join() {
                Ok(r) => report.etc_readback = r,
                Err(_) => {
                    log::error!("the etc read-back panicked; the next run reads /etc afresh")
                }
            }
        }
        if let (Some(r), Some(tree)) = (lock_slot(&readback).take(), &compiled.etc) {
            report.etc_readback = Some(r.finish(&root, tree, &hurry));
        }
        report.readback_wait = t.elapsed();
        if let Some(r) = report.etc_readback {
            log::debug!(
                "waited {} µs for the etc read-back at the end: {}",
                report.readback_wait.as_micros(),
                match r {
                    etc::ReadBack::Done => "read back",
                    etc::ReadBack::LeftToNextRun =>
                        "left to the next run (the clock tick had not passed)",
                    etc::ReadBack::NotStored => "cache not stored",
                }
            );
        }
    });
    if !dry && report.stopped_by.is_none() {
        let t = Instant::now();
        let outcome = match point_current_system(&root, &compiled.toplevel) {
            Ok(true) => Outcome::Changed,
            Ok(false) => Outcome::Unchanged,
            Err(e) => Outcome::Failed(format!(
                "{}: {e}",
                root.host_path(Path::new("/run/current-system")).display()
            )),
        };
        report.current_system_updated = !matches!(outcome, Outcome::Failed(_));
        let duration = t.elapsed();
        log_step("current-system", &outcome, duration, &[]);
        report.steps.push(StepReport {
            name: "current-system".into(),
            duration,
            outcome,
            messages: Vec::new(),
        });
    }
    report.total = start.elapsed();
    let failed = report.failed_steps();
    if failed.is_empty() {
        log::info!("activation finished in {} µs", report.total.as_micros());
    } else {
        log::error!(
            "activation finished in {} µs; failed: {}",
            report.total.as_micros(),
            failed.join(", ")
        );
    }
    Ok(report)
}

/// The read-back hand-over slot; a panic while it was held leaves nothing inconsistent in
/// it (it only ever holds a whole `Recheck` or none).
fn lock_slot<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn log_step(name: &str, outcome: &Outcome, d: Duration, messages: &[String]) {
    for m in messages {
        log::info!("{name}: {m}");
    }
    match outcome {
        Outcome::Failed(m) => log::error!(
            "activation step {name}: failed after {} µs: {m}",
            d.as_micros()
        ),
        o => log::info!("activation step {name}: {o} in {} µs", d.as_micros()),
    }
}

fn point_current_system(root: &Root, toplevel: &str) -> std::io::Result<bool> {
    root.set_symlink(Path::new("/run/current-system"), toplevel.as_bytes())
}

struct Ctx<'a> {
    root: &'a Root,
    /// The root's activation lock; `None` in a dry run.
    lock: Option<&'a ActivationLock>,
    compiled: &'a CompiledPlan,
    dry: bool,
    action: Action,
    /// Left by the etc step when it changed `/etc`: handed to a thread of its own that runs
    /// alongside the later steps and is hurried at the end ([`etc::Recheck`]).
    etc_recheck: std::cell::RefCell<Option<etc::Recheck>>,
    /// Set by a snippet that called `exit`: why activation stops.
    stopped: std::cell::RefCell<Option<String>>,
}

type StepResult = (Outcome, Vec<String>);

fn changed(c: bool) -> Outcome {
    if c {
        Outcome::Changed
    } else {
        Outcome::Unchanged
    }
}

impl Ctx<'_> {
    fn step(&self, name: &str) -> StepResult {
        // A snippet named like a built-in whose text was not recognised (read from NixOS's
        // activate script) runs as the bash it is.
        if self.compiled.snippets.contains_key(name) {
            return self.snippet(name);
        }
        match name {
            "specialfs" => self.specialfs(),
            "users" => self.users(),
            "etc" => self.etc(),
            "hashes" => self.hashes(),
            "binsh" => self.link_step("/bin", "sh", self.compiled.binsh.as_deref()),
            "usrbinenv" => self.usrbinenv(),
            "modprobe" => self.modprobe(),
            "udevd" => self.udevd(),
            // Kept by NixOS for ordering only.
            "groups" | "stdio" | "var" => (Outcome::Unchanged, Vec::new()),
            other => self.snippet(other),
        }
    }

    fn users(&self) -> StepResult {
        let mut msgs = Vec::new();
        let mut any = false;
        // The `users` snippet's `install -d -m 0700 /root` and `install -d -m 0755 /home`.
        for (dir, mode) in [("/root", 0o700), ("/home", 0o755)] {
            match self.ensure_dir_mode(dir, mode) {
                Ok(c) => any |= c,
                Err(e) => return (Outcome::Failed(format!("{dir}: {e}")), msgs),
            }
        }
        let Some(spec) = &self.compiled.users else {
            return (changed(any), msgs);
        };
        match users::update_users(self.root, spec, self.dry) {
            Ok(out) => {
                msgs.extend(out.messages);
                msgs.extend(out.warnings.iter().map(|w| format!("warning: {w}")));
                if out.errors.is_empty() {
                    (changed(any || out.changed), msgs)
                } else {
                    (Outcome::Failed(out.errors.join("; ")), msgs)
                }
            }
            Err(e) => (Outcome::Failed(e.to_string()), msgs),
        }
    }

    /// `install -d -m MODE DIR`: create it, or fix its mode.
    fn ensure_dir_mode(&self, dir: &str, mode: u32) -> std::io::Result<bool> {
        let current = self.root.lstat(Path::new(dir))?;
        let ok = matches!(current, Some(Node::Dir { mode: m, .. }) if m == mode);
        if ok || self.dry {
            return Ok(!ok);
        }
        let (fd, _, _) = self
            .root
            .dir(Path::new(dir), Some(Mode::from_raw_mode(mode)))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        Ok(true)
    }

    fn etc(&self) -> StepResult {
        let Some(tree) = &self.compiled.etc else {
            return (
                Outcome::Unchanged,
                vec!["no etc tree in this generation".into()],
            );
        };
        let opts = etc::EtcOptions {
            skip_resolv_conf: std::env::var_os("IN_NIXOS_ENTER").is_some(),
        };
        let done =
            etc::setup_etc_deferred(self.root, tree, opts, self.lock).map(|(out, recheck)| {
                *self.etc_recheck.borrow_mut() = recheck;
                out
            });
        match done {
            Ok(out) if out.issues.is_empty() => (changed(out.changed > 0), Vec::new()),
            Ok(out) => {
                let msgs: Vec<String> = out.issues.iter().map(ToString::to_string).collect();
                (Outcome::Failed(msgs.join("; ")), msgs)
            }
            Err(e) => (Outcome::Failed(e.to_string()), Vec::new()),
        }
    }

    fn specialfs(&self) -> StepResult {
        let mut msgs = Vec::new();
        let mut any = false;
        // Stage 2 (or the initrd) has mounted them already; only what is missing is done,
        // and only on the running system: under another root, directories are enough.
        let mounted = if self.root.is_host_root() {
            mountinfo::read()
        } else {
            Vec::new()
        };
        for fs in &SPECIAL_FILESYSTEMS {
            let (dir, fstype) = (fs.target, fs.fstype);
            if mountinfo::find(&mounted, dir).is_some() {
                continue;
            }
            let exists = matches!(self.root.lstat(Path::new(dir)), Ok(Some(Node::Dir { .. })));
            if self.dry {
                if self.root.is_host_root() {
                    msgs.push(format!("would mount {fstype} on {dir}"));
                    any = true;
                } else if !exists {
                    msgs.push(format!("would create {dir}"));
                    any = true;
                }
                continue;
            }
            if !exists {
                if let Err(e) = self
                    .root
                    .dir(Path::new(dir), Some(Mode::from_raw_mode(0o755)))
                {
                    return (Outcome::Failed(format!("{dir}: {e}")), msgs);
                }
                any = true;
            }
            if self.root.is_host_root() {
                if let Err(e) = fs.mount() {
                    return (Outcome::Failed(e), msgs);
                }
                msgs.push(format!("mounted {fstype} on {dir}"));
                any = true;
            }
        }
        (changed(any), msgs)
    }

    fn hashes(&self) -> StepResult {
        const GOOD: [&str; 7] = ["$y$", "$gy$", "$7$", "$2b$", "$2y$", "$2a$", "$6$"];
        let text = match self.root.read_opt(Path::new("/etc/shadow")) {
            Ok(t) => t.unwrap_or_default(),
            Err(e) => return (Outcome::Failed(format!("/etc/shadow: {e}")), Vec::new()),
        };
        let weak: Vec<String> = String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| {
                let mut f = l.split(':');
                let user = f.next()?;
                let hash = f.next()?;
                (hash.starts_with('$') && !GOOD.iter().any(|g| hash.starts_with(g)))
                    .then(|| user.to_owned())
            })
            .collect();
        let msgs = if weak.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "warning: these accounts use password hashing schemes that are no longer \
                 supported, their users cannot log in until they get a new password: {}",
                weak.join(", ")
            )]
        };
        (Outcome::Unchanged, msgs)
    }

    /// `mkdir -m 0755 -p DIR; ln -sfn TARGET DIR/.NAME.tmp; mv` (binsh, usrbinenv).
    fn link_step(&self, dir: &str, name: &str, target: Option<&str>) -> StepResult {
        let Some(target) = target else {
            return (Outcome::Unchanged, Vec::new());
        };
        let path = Path::new(dir).join(name);
        let current = self.root.lstat(&path);
        if matches!(&current, Ok(Some(Node::Symlink(t))) if t == target.as_bytes()) {
            return (Outcome::Unchanged, Vec::new());
        }
        if self.dry {
            return (
                Outcome::Changed,
                vec![format!("would link {} -> {target}", path.display())],
            );
        }
        let r = self
            .root
            .dir(Path::new(dir), Some(Mode::from_raw_mode(0o755)))
            .and_then(|(fd, _, _)| {
                rootfs::atomic_symlink(&fd, name.as_ref(), target.as_bytes())?;
                rootfs::fsync_dir(&fd)
            });
        match r {
            Ok(()) => (Outcome::Changed, Vec::new()),
            Err(e) => (
                Outcome::Failed(format!("{}: {e}", path.display())),
                Vec::new(),
            ),
        }
    }

    fn usrbinenv(&self) -> StepResult {
        match &self.compiled.usrbinenv {
            None => (Outcome::Unchanged, Vec::new()),
            Some(Some(t)) => self.link_step("/usr/bin", "env", Some(t)),
            Some(None) => {
                // environment.usrbinenv = null: remove it and the directories if empty.
                let env = Path::new("/usr/bin/env");
                match self.root.lstat(env) {
                    Ok(None) => return (Outcome::Unchanged, Vec::new()),
                    Ok(Some(_)) => {}
                    Err(e) => {
                        return (
                            Outcome::Failed(format!("{}: {e}", env.display())),
                            Vec::new(),
                        )
                    }
                }
                if self.dry {
                    return (Outcome::Changed, vec!["would remove /usr/bin/env".into()]);
                }
                let r = self
                    .root
                    .parent(env, None)
                    .and_then(|(d, n)| rootfs::unlink_at(&d, &n));
                if let Err(e) = r {
                    return (Outcome::Failed(format!("/usr/bin/env: {e}")), Vec::new());
                }
                for d in ["/usr/bin", "/usr"] {
                    if let Ok((parent, name)) = self.root.parent(Path::new(d), None) {
                        // Fails harmlessly when not empty (rmdir --ignore-fail-on-non-empty).
                        let _ = rustix::fs::unlinkat(
                            &parent,
                            name.as_os_str(),
                            rustix::fs::AtFlags::REMOVEDIR,
                        );
                    }
                }
                (Outcome::Changed, Vec::new())
            }
        }
    }

    /// Write `value` into a kernel parameter file under the root when it differs. A file
    /// that does not exist (no /proc or /sys under this root, or a kernel without the
    /// feature) is skipped.
    fn write_param(&self, path: &str, value: &str) -> Result<Option<bool>, String> {
        let p = Path::new(path);
        let current = match self.root.read_opt(p) {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("{path}: {e}")),
        };
        if String::from_utf8_lossy(&current).trim_end_matches('\n') == value {
            return Ok(Some(false));
        }
        if self.dry {
            return Ok(Some(true));
        }
        // Kernel parameter files are written in place: they cannot be renamed over.
        let r = self.root.parent(p, None).and_then(|(dir, name)| {
            let fd = rustix::fs::openat(
                &dir,
                name.as_os_str(),
                rustix::fs::OFlags::WRONLY
                    | rustix::fs::OFlags::TRUNC
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let mut f = std::fs::File::from(fd);
            f.write_all(value.as_bytes())
        });
        r.map(|()| Some(true)).map_err(|e| format!("{path}: {e}"))
    }

    fn modprobe(&self) -> StepResult {
        let Some(m) = &self.compiled.modprobe else {
            return (Outcome::Unchanged, Vec::new());
        };
        match self.write_param("/proc/sys/kernel/modprobe", m) {
            Ok(Some(c)) => (changed(c), Vec::new()),
            Ok(None) => (
                Outcome::Unchanged,
                vec!["no /proc/sys/kernel/modprobe under this root".into()],
            ),
            Err(e) => (Outcome::Failed(e), Vec::new()),
        }
    }

    fn udevd(&self) -> StepResult {
        let mut any = false;
        let mut msgs = Vec::new();
        match self.write_param("/proc/sys/kernel/hotplug", "") {
            Ok(c) => any |= c.unwrap_or(false),
            Err(e) => return (Outcome::Failed(e), msgs),
        }
        if let Some(fw) = &self.compiled.firmware {
            match self.write_param("/sys/module/firmware_class/parameters/path", fw) {
                Ok(Some(c)) => any |= c,
                Ok(None) => msgs.push("no firmware_class parameters under this root".into()),
                Err(e) => return (Outcome::Failed(e), msgs),
            }
        }
        (changed(any), msgs)
    }

    fn snippet(&self, name: &str) -> StepResult {
        let Some(s) = self.compiled.snippets.get(name) else {
            return (Outcome::Unchanged, Vec::new());
        };
        if s.text.trim().is_empty() {
            return (Outcome::Unchanged, Vec::new());
        }
        if self.dry && !s.supports_dry_activation {
            return (
                Outcome::Unchanged,
                vec![format!("snippet {name} does not support dry activation")],
            );
        }
        let shell = self
            .compiled
            .shell
            .clone()
            .or_else(|| self.compiled.binsh.clone())
            .unwrap_or_else(|| "/bin/sh".to_owned());
        let quoted = self.compiled.toplevel.replace('\'', "'\\''");
        // The snippet reports reaching its end through a pipe; a snippet that ends
        // without doing so called `exit` (or its shell was killed).
        let end = match EndSignal::new() {
            Ok(e) => e,
            Err(e) => {
                return (
                    Outcome::Failed(format!("cannot make a pipe for snippet '{name}': {e}")),
                    Vec::new(),
                )
            }
        };
        let script = format!(
            "systemConfig='{quoted}'\n_status=0\n_localstatus=0\n\
             trap \"_status=1 _localstatus=\\$?\" ERR\numask 0022\n{}\n\
             printf x >&{}\nexit $_localstatus\n",
            s.text,
            end.fd_number()
        );
        let mut cmd = Command::new(&shell);
        cmd.arg("-c")
            .arg(script)
            .env("NIXOS_ACTION", self.action.as_str())
            .stdin(Stdio::null());
        if let Some(path) = &self.compiled.path {
            cmd.env("PATH", path.join(":"));
        }
        if !self.root.is_host_root() {
            stagehand_common::chroot::chroot_command(&mut cmd, self.root.path());
        }
        let status = cmd.status();
        let reached_end = end.reached();
        match status {
            Ok(st) if !reached_end => {
                let how = st.code().map_or_else(
                    || "its shell was killed".to_owned(),
                    |c| format!("it called exit {c}"),
                );
                *self.stopped.borrow_mut() = Some(format!("snippet '{name}': {how}"));
                if st.success() {
                    (
                        Outcome::Changed,
                        vec![format!("{how}: activation stops here")],
                    )
                } else {
                    (
                        Outcome::Failed(format!(
                            "Activation script snippet '{name}' stopped activation: {how}"
                        )),
                        Vec::new(),
                    )
                }
            }
            Ok(st) if st.success() => (Outcome::Changed, Vec::new()),
            Ok(st) => (
                Outcome::Failed(format!(
                    "Activation script snippet '{name}' failed ({})",
                    st.code()
                        .map_or_else(|| "killed".to_owned(), |c| c.to_string())
                )),
                Vec::new(),
            ),
            Err(e) => (
                Outcome::Failed(format!("cannot run {shell} for snippet '{name}': {e}")),
                Vec::new(),
            ),
        }
    }
}

/// A pipe whose write end a snippet inherits and writes one byte to when it reaches its
/// end. Read without blocking after the shell has exited, so a daemon the snippet left
/// running (holding the write end) cannot make activation wait.
struct EndSignal {
    read: rustix::fd::OwnedFd,
    write: Option<rustix::fd::OwnedFd>,
}

impl EndSignal {
    fn new() -> std::io::Result<EndSignal> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // Only the write end crosses exec.
        rustix::io::fcntl_setfd(&write, rustix::io::FdFlags::empty())?;
        rustix::fs::fcntl_setfl(&read, rustix::fs::OFlags::NONBLOCK)?;
        Ok(EndSignal {
            read,
            write: Some(write),
        })
    }

    fn fd_number(&self) -> i32 {
        use rustix::fd::AsRawFd;
        self.write.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// Whether the byte arrived (call after the shell exited).
    fn reached(mut self) -> bool {
        self.write = None;
        let mut buf = [0u8; 1];
        matches!(rustix::io::read(&self.read, &mut buf), Ok(1))
    }
}
