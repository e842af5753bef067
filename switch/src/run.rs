//! One `switch-to-configuration` run, top-down: the checks that may refuse it, then either
//! the boot entries alone (`boot`) or the live switch ([`crate::live`]).
//!
//! Order (NixOS's, with the boot loader moved to the end — NixOS makes the new generation
//! the boot default *before* activating it, so a generation whose activation fails still
//! boots next time):
//! 1. refuse a root that is not NixOS-shaped (`/etc/NIXOS` or os-release `ID`), take the lock,
//!    run the pre-switch check (`check` stops here);
//! 2. `boot`: write the boot entries, sync, done;
//! 3. refuse an incompatible init (`init-interface-version`, exit 100); decide the units from
//!    the running system's files and the new generation's; `dry-activate` prints the decision,
//!    dry-runs activation and stops;
//! 4. record the pending start/restart/reload lists, stop, activate (failure: exit 2, go
//!    on), fold in the activation's restart/reload requests, re-exec systemd if it changed,
//!    reload it, reload / restart / start, report failed units (exit 4) and new ones;
//! 5. `switch`: only when activation succeeded, make the generation the boot default.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use stagehand_common::rootfs::Root;

use crate::live::{live_switch, read_text};
use crate::loader::BootLoader;
use crate::lock::{self, SwitchLock, LOCK_PATH};
use crate::manager::ServiceManager;
use crate::options::{exit, SwitchAction, SwitchOptions, SwitchOutcome};
use crate::say::Say;

/// Run `switch-to-configuration ACTION` for `opts.toplevel`.
pub fn switch(
    opts: &SwitchOptions,
    manager: &mut dyn ServiceManager,
    loader: &mut dyn BootLoader,
    out: &mut dyn Write,
) -> SwitchOutcome {
    let start = Instant::now();
    let mut say = Say::new(out);
    let code = run(opts, manager, loader, &mut say).unwrap_or_else(|refused| refused);
    SwitchOutcome {
        code,
        lines: say.lines,
        elapsed: start.elapsed(),
    }
}

/// `Err` is a refusal's exit code, its message already printed.
fn run(
    opts: &SwitchOptions,
    manager: &mut dyn ServiceManager,
    loader: &mut dyn BootLoader,
    say: &mut Say<'_>,
) -> Result<u8, u8> {
    let root = open_root(&opts.root, say)?;
    let toplevel = resolve_generation(&root, &opts.toplevel, say)?;
    refuse_unless_nixos(&root, &opts.distro_id, say)?;
    let _lock = lock_out_other_switches(&root, say)?;
    pre_switch_check(opts, &toplevel, say)?;
    match opts.action {
        SwitchAction::Check => return Ok(exit::OK),
        SwitchAction::Boot => return Ok(install_boot_entries(opts, &root, &toplevel, loader, say)),
        SwitchAction::Switch | SwitchAction::Test | SwitchAction::DryActivate => {}
    }
    sync_store(&root, opts, say);
    refuse_incompatible_init(&root, &toplevel, say)?;
    Ok(live_switch(opts, &root, &toplevel, manager, loader, say))
}

fn open_root(path: &Path, say: &mut Say<'_>) -> Result<Root, u8> {
    Root::open(path).map_err(|e| {
        say.line(format!("cannot open the root {}: {e}", path.display()));
        exit::FAILED
    })
}

/// The generation, resolved inside the root; refused unless it looks like a system
/// generation (`nixos-version`, `activation.json` or `boot.json`).
fn resolve_generation(root: &Root, toplevel: &Path, say: &mut Say<'_>) -> Result<PathBuf, u8> {
    let t = root.canonicalize(toplevel).map_err(|e| {
        say.line(format!(
            "cannot resolve the generation {}: {e}",
            root.host_path(toplevel).display()
        ));
        exit::FAILED
    })?;
    let has = |name: &str| root.lstat(&t.join(name)).ok().flatten().is_some();
    if has("nixos-version") || has("activation.json") || has("boot.json") {
        return Ok(t);
    }
    say.line(format!(
        "{} is not a system generation (no nixos-version, boot.json or activation.json)",
        root.host_path(&t).display()
    ));
    Err(exit::FAILED)
}

fn refuse_unless_nixos(root: &Root, distro_id: &str, say: &mut Say<'_>) -> Result<(), u8> {
    if is_nixos(root, distro_id) {
        return Ok(());
    }
    say.line(format!(
        "This is not a NixOS installation! ({} has no /etc/NIXOS and os-release ID is not {})",
        root.path().display(),
        distro_id
    ));
    Err(exit::FAILED)
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

/// `/run/nixos` (mode 0755) and the lock in it, held until the switch ends.
fn lock_out_other_switches(root: &Root, say: &mut Say<'_>) -> Result<SwitchLock, u8> {
    let run_nixos = root.host_path(Path::new("/run/nixos"));
    if let Err(e) = std::fs::create_dir_all(&run_nixos).and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&run_nixos, std::fs::Permissions::from_mode(0o755))
    }) {
        say.line(format!("cannot create {}: {e}", run_nixos.display()));
        return Err(exit::FAILED);
    }
    lock::take(&root.host_path(Path::new(LOCK_PATH))).map_err(|e| {
        say.line(e.to_string());
        match e {
            lock::LockError::Busy(_) => exit::LOCKED,
            lock::LockError::Io { .. } => exit::FAILED,
        }
    })
}

/// `PRE_SWITCH_CHECK TOPLEVEL ACTION`, unless `NIXOS_NO_CHECK=1`.
fn pre_switch_check(opts: &SwitchOptions, toplevel: &Path, say: &mut Say<'_>) -> Result<(), u8> {
    if opts.no_check {
        return Ok(());
    }
    match &opts.pre_switch_check {
        Some(cmd) if !run_check(cmd, toplevel, opts.action) => {
            say.line("Pre-switch checks failed");
            Err(exit::FAILED)
        }
        _ => Ok(()),
    }
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

/// `boot`: the generation becomes the boot default; nothing runs.
fn install_boot_entries(
    opts: &SwitchOptions,
    root: &Root,
    toplevel: &Path,
    loader: &mut dyn BootLoader,
    say: &mut Say<'_>,
) -> u8 {
    match loader.install(root, toplevel) {
        Ok(msg) => {
            say.line(msg);
            sync_store(root, opts, say);
            exit::OK
        }
        Err(e) => {
            say.line(format!("Failed to install bootloader: {e}"));
            exit::FAILED
        }
    }
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

/// A new init that cannot take over the running system (its `init-interface-version`
/// differs) only takes effect after a reboot.
fn refuse_incompatible_init(root: &Root, toplevel: &Path, say: &mut Say<'_>) -> Result<(), u8> {
    let iv = |p: &Path| read_text(root, &p.join("init-interface-version"));
    if let (Some(cur), Some(new)) = (iv(Path::new("/run/current-system")), iv(toplevel)) {
        if cur != new {
            say.line(
                "Warning: the new NixOS configuration has an ‘init’ that is incompatible with \
                 the current configuration. The new configuration won't take effect until you \
                 reboot the system.",
            );
            return Err(exit::INCOMPATIBLE_INIT);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::BootLoaderCommand;
    use crate::manager::Verb;
    use crate::pending::{self, START_LIST};
    use crate::units::{ActiveUnits, UnitState};
    use stagehand_boot::spec;
    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};
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
        fn pause(&mut self, _: std::time::Duration) {}
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

    /// A fake systemd with `units` running (`broken` fail to start) and a logging boot
    /// loader, sharing one log of what the switch asked of them.
    struct Harness {
        log: Log,
        sd: FakeSystemd,
        loader: LoggingLoader,
    }

    impl Harness {
        fn new(units: BTreeMap<String, UnitState>, broken: &[&str]) -> Harness {
            let log = Log::default();
            Harness {
                sd: FakeSystemd {
                    units,
                    log: log.clone(),
                    broken: broken.iter().map(|u| u.to_string()).collect(),
                    lists: 0,
                },
                loader: LoggingLoader {
                    log: log.clone(),
                    inner: BootLoaderCommand::Native {
                        esp: PathBuf::from("/boot"),
                    },
                },
                log,
            }
        }

        fn switch(&mut self, t: &tempfile::TempDir, action: SwitchAction) -> SwitchOutcome {
            switch(
                &opts(t, action),
                &mut self.sd,
                &mut self.loader,
                &mut std::io::sink(),
            )
        }
    }

    fn go(
        t: &tempfile::TempDir,
        action: SwitchAction,
    ) -> (SwitchOutcome, Vec<String>, FakeSystemd) {
        let mut h = Harness::new(running(), &[]);
        let out = h.switch(t, action);
        let calls = h.log.borrow().clone();
        (out, calls, h.sd)
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
        let mut h = Harness::new(running(), &["e.service"]);
        let log = h.log.clone();
        let out = h.switch(&t, SwitchAction::Test);
        assert_eq!(out.code, exit::UNITS_FAILED, "{:#?}", out.lines);
        assert!(log
            .borrow()
            .contains(&"start a.service default.target e.service".to_string()));
        assert!(out
            .lines
            .contains(&"warning: the following units failed: e.service".into()));
        assert!(log.borrow().contains(&"status e.service".to_string()));
    }

    /// switch-test.nix's unitWithRequirementModified → …Nostart → unitWithTemplate: a
    /// pending reload of a unit that is no longer running becomes a start, and the reload
    /// list must say so (it used to keep the unit, so every later switch tried to reload,
    /// then start, a unit that no longer existed, and failed with exit 4).
    #[test]
    fn a_reload_turned_into_a_start_is_not_left_pending() {
        let t = system(r#"{"version": 1}"#);
        let root = Root::open(t.path()).expect("root");
        let c: BTreeSet<String> = ["c.service".to_string()].into_iter().collect();
        pending::write_list(&root, pending::RELOAD_LIST, &c).expect("record");
        let mut units = running();
        units.remove("c.service");
        let mut h = Harness::new(units, &[]);
        let log = h.log.clone();
        let out = h.switch(&t, SwitchAction::Test);
        assert_eq!(out.code, exit::OK, "{:#?}", out.lines);
        assert!(
            log.borrow()
                .contains(&"start a.service c.service default.target".to_string()),
            "{:?}",
            log.borrow()
        );
        assert!(!log.borrow().iter().any(|c| c.starts_with("reload")));
        for list in [pending::RELOAD_LIST, START_LIST, pending::RESTART_LIST] {
            assert!(
                pending::read_list(&root, list).is_empty(),
                "{list} left behind"
            );
        }
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
        let mut units = running();
        units.remove("b.service");
        units.insert("d.service".into(), UnitState::new("active", "running"));
        let mut h = Harness::new(units, &[]);
        let log = h.log.clone();
        let out = h.switch(&t, SwitchAction::Test);
        assert_eq!(out.code, exit::OK, "{:#?}", out.lines);
        // Not one question to systemd, let alone a job.
        assert!(log.borrow().is_empty(), "{:?}", log.borrow());
        assert_eq!(h.sd.lists, 0);
        // An activation that asks for a restart turns it into a real (small) switch.
        std::fs::write(
            t.path().join("run/nixos/activation-restart-list"),
            "c.service\n",
        )
        .expect("request");
        let out = h.switch(&t, SwitchAction::Test);
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
