//! The two ways in: `stagehand switch-to-configuration [--root DIR] ACTION TOPLEVEL`, and
//! `TOPLEVEL/bin/switch-to-configuration ACTION` (a link to the `stagehand` binary; the
//! binary dispatches on the name it was started as and finds the generation from the path,
//! as stage 2 does with `TOPLEVEL/init`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use stagehand_switch::loader::BootLoaderCommand;
use stagehand_switch::manager::{Offline, ServiceManager, Systemctl};
use stagehand_switch::{exit, switch, SwitchAction, SwitchOptions};

use crate::{SwitchActionArg, SwitchArgs};

/// The name the binary answers to.
pub const NAME: &str = "switch-to-configuration";

pub const USAGE: &str = "Usage: switch-to-configuration [check|switch|boot|test|dry-activate]
check:        run pre-switch checks and exit
switch:       make the configuration the boot default and activate now
boot:         make the configuration the boot default
test:         activate the configuration, but don't make it the boot default
dry-activate: show what would be done if this configuration were activated
(as a stagehand subcommand: stagehand switch-to-configuration [--root DIR] ACTION TOPLEVEL)";

/// `switch-to-configuration --help`'s after-text: NixOS's exit statuses, which both ways in
/// keep (a usage error is 1 here, not 2: 2 means the activation failed).
pub const EXIT_STATUS: &str = "\
Exit status (NixOS's):
  0    success
  1    usage error, not a NixOS root, failed pre-switch check or boot-loader install
  2    the activation failed
  4    units failed to start, restart or reload
  11   another switch holds the lock
  100  the new init cannot take over the running system; reboot into it";

/// `<toplevel>/bin/switch-to-configuration` → `<toplevel>`, with every link resolved (the
/// last component is not followed: it is a link to the stagehand binary).
pub fn toplevel_from_argv0(argv0: &Path) -> Result<PathBuf, String> {
    let top = argv0
        .parent()
        .and_then(Path::parent)
        .filter(|_| argv0.is_absolute())
        .ok_or_else(|| {
            format!(
                "started as {argv0:?}: run it by its full path, \
                 /nix/var/nix/profiles/system/bin/switch-to-configuration ACTION"
            )
        })?;
    std::fs::canonicalize(top).map_err(|e| format!("cannot resolve {}: {e}", top.display()))
}

/// `TOPLEVEL/bin/switch-to-configuration ACTION`: NixOS's interface exactly, one ACTION and
/// nothing else (not even `--help`), its usage text and exit 1 on anything else. Kept off
/// clap on purpose: NixOS's program has no options to offer.
pub fn multicall(argv0: &Path, args: &[OsString]) -> u8 {
    let action = match args {
        [a] => a.to_str().and_then(SwitchAction::parse),
        _ => None,
    };
    let Some(action) = action else {
        eprintln!("{USAGE}");
        return exit::FAILED;
    };
    match toplevel_from_argv0(argv0) {
        Ok(top) => go(Path::new("/"), &top, action),
        Err(e) => {
            eprintln!("{NAME}: {e}");
            exit::FAILED
        }
    }
}

/// `stagehand switch-to-configuration [--root DIR] ACTION TOPLEVEL` (clap checked it).
pub fn subcommand(a: &SwitchArgs) -> u8 {
    let action = match a.action {
        SwitchActionArg::Switch => SwitchAction::Switch,
        SwitchActionArg::Boot => SwitchAction::Boot,
        SwitchActionArg::Test => SwitchAction::Test,
        SwitchActionArg::DryActivate => SwitchAction::DryActivate,
        SwitchActionArg::Check => SwitchAction::Check,
    };
    go(&a.root.root, &a.toplevel, action)
}

fn go(root: &Path, toplevel: &Path, action: SwitchAction) -> u8 {
    let live_root = root == Path::new("/");
    if live_root && !rustix::process::geteuid().is_root() {
        eprintln!("{NAME} must be run as the root user");
        return exit::FAILED;
    }
    // Snippets, the boot-loader command and the pre-switch check all see the action.
    std::env::set_var("NIXOS_ACTION", action.as_str());
    let opts = SwitchOptions::from_env(root, toplevel, action);
    // A live switch needs a running systemd; anything else (an image under --root, a
    // container without systemd) is switched offline: files only.
    let mut systemctl;
    let mut offline = Offline;
    let manager: &mut dyn ServiceManager = if live_root && Path::new("/run/systemd/system").is_dir()
    {
        systemctl = Systemctl::find(toplevel);
        &mut systemctl
    } else {
        &mut offline
    };
    let mut loader = BootLoaderCommand::from_env();
    let outcome = switch(&opts, manager, &mut loader, &mut std::io::stderr());
    log::info!(
        "{NAME} {} finished in {:.1} ms (status {})",
        action.as_str(),
        outcome.elapsed.as_secs_f64() * 1000.0,
        outcome.code
    );
    outcome.code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toplevel_comes_from_the_path_not_the_link_target() {
        let t = tempfile::tempdir().expect("tempdir");
        let top = t.path().join("nix/store/abc-system");
        std::fs::create_dir_all(top.join("bin")).expect("mkdir");
        std::os::unix::fs::symlink(
            "/usr/bin/stagehand",
            top.join("bin/switch-to-configuration"),
        )
        .expect("ln");
        let profile = t.path().join("system-2-link");
        std::os::unix::fs::symlink(&top, &profile).expect("ln");
        let argv0 = profile.join("bin/switch-to-configuration");
        let got = toplevel_from_argv0(&argv0).expect("toplevel");
        assert_eq!(got, std::fs::canonicalize(&top).expect("canon"));
        let e = toplevel_from_argv0(Path::new("switch-to-configuration")).expect_err("relative");
        assert!(e.contains("full path"), "{e}");
        assert_eq!(
            multicall(Path::new("/x/bin/switch-to-configuration"), &[]),
            exit::FAILED
        );
    }
}
