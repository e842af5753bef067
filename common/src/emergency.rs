//! The failure path of the boot binaries. Whatever went wrong is logged to kmsg and the
//! console, then the user gets NixOS's choices (shell, reboot, continue); with
//! `boot.panic_on_fail` PID 1 exits instead, so the kernel panics and `panic=N` reboots.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::termios::{self, LocalModes, OptionalActions};

/// Shells the failure path can offer, when the initrd carries one.
const SHELLS: &[&str] = &["/bin/sh", "/bin/ash", "/bin/bash"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailurePolicy {
    /// First line of the menu: what this program was doing.
    pub header: &'static str,
    pub panic_on_fail: bool,
    pub shell_on_fail: bool,
    pub console: Option<String>,
}

impl FailurePolicy {
    /// Before the command line is read: no shell, no panic.
    pub fn new(header: &'static str) -> Self {
        Self {
            header,
            panic_on_fail: false,
            shell_on_fail: false,
            console: None,
        }
    }
}

/// Report `message` about `step` and ask what to do. Returns only when the user chose to
/// continue; reboot, the `f` shell and panic-on-fail do not return, and the menu comes back
/// after an `i` shell exits.
pub fn fail(policy: &FailurePolicy, step: &str, message: &str) {
    log::error!("{step} failed: {message}");
    if policy.panic_on_fail {
        log::error!(
            "boot.panic_on_fail is set: stopping stage 1 (the kernel panics; panic=N reboots)"
        );
        // PID 1 exiting is the documented way to make the kernel panic.
        std::process::exit(1);
    }
    let shell = SHELLS.iter().find(|s| Path::new(s).exists()).copied();
    let shell = shell.filter(|_| policy.shell_on_fail);
    let console_path = console_path(policy);

    loop {
        let mut menu = format!("\n{}\n", policy.header);
        menu.push_str(&format!(
            "  {step}: {message}\nPress one of the following keys:\n"
        ));
        if shell.is_some() {
            menu.push_str("  i) to launch an interactive shell\n");
            menu.push_str(
                "  f) to start an interactive shell having pid 1 (needed if you want to start \
                 the next stage manually)\n",
            );
        }
        menu.push_str("  r) to reboot immediately\n  *) to ignore the error and continue\n");
        let key = ask(&console_path, &menu);
        match (key, shell) {
            (Some(b'r'), _) => reboot_from_menu(),
            (Some(b'i'), Some(sh)) => run_shell(sh, &console_path),
            (Some(b'f'), Some(sh)) => exec_shell(sh, &console_path),
            (Some(_), _) => {
                log::warn!("continuing after the failure of {step}");
                return;
            }
            (None, _) => {
                // No console to read from: say so and ask again later rather than spin.
                log::error!("no key could be read from {console_path}; asking again in 30 s");
                std::thread::sleep(Duration::from_secs(30));
            }
        }
    }
}

/// The terminal the user answers on: `console=`'s (the last one), else `/dev/console`.
/// Stage 1's passphrase prompt asks there too.
pub fn console_path(policy: &FailurePolicy) -> String {
    policy
        .console
        .as_deref()
        .map(|c| format!("/dev/{c}"))
        .filter(|p| Path::new(p).exists())
        .unwrap_or_else(|| "/dev/console".into())
}

/// Print `prompt` on the console and read one key without waiting for Enter.
fn ask(console: &str, prompt: &str) -> Option<u8> {
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(console)
        .ok()?;
    // The console may be gone or read-only; the prompt is also in kmsg.
    let _ = tty.write_all(prompt.as_bytes());
    let saved = termios::tcgetattr(tty.as_fd()).ok();
    if let Some(saved) = &saved {
        let mut raw = saved.clone();
        raw.local_modes
            .remove(LocalModes::ICANON | LocalModes::ECHO);
        let _ = termios::tcsetattr(tty.as_fd(), OptionalActions::Now, &raw);
    }
    let mut key = [0u8; 1];
    let got = tty.read(&mut key).ok().filter(|n| *n == 1).map(|_| key[0]);
    if let Some(saved) = &saved {
        let _ = termios::tcsetattr(tty.as_fd(), OptionalActions::Now, saved);
    }
    if let Some(k) = got {
        let _ = tty.write_all(format!("{}\n", k as char).as_bytes());
    }
    got
}

/// Flush the filesystems and restart the machine now. Returns only when the kernel refused
/// (no CAP_SYS_BOOT, which PID 1 has), with the message to show.
pub fn reboot() -> String {
    rustix::fs::sync();
    match rustix::system::reboot(rustix::system::RebootCommand::Restart) {
        Ok(()) => "reboot returned".into(),
        Err(e) => format!("cannot reboot: {e}"),
    }
}

/// The menu's `r`: reboot, and keep trying rather than return to a menu the user left.
fn reboot_from_menu() -> ! {
    log::warn!("rebooting");
    loop {
        let e = reboot();
        log::error!("{e}; trying again");
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn console_stdio(console: &str) -> Option<std::fs::File> {
    let fd = rustix::fs::open(console, OFlags::RDWR, Mode::empty()).ok()?;
    Some(std::fs::File::from(fd))
}

/// `i`: a shell in its own session; the menu comes back when it exits with an error.
fn run_shell(shell: &str, console: &str) {
    let Some(tty) = console_stdio(console) else {
        return;
    };
    let (Ok(out), Ok(err)) = (tty.try_clone(), tty.try_clone()) else {
        return;
    };
    let status = std::process::Command::new(shell)
        .stdin(tty)
        .stdout(out)
        .stderr(err)
        .status();
    if let Err(e) = status {
        log::error!("cannot start {shell}: {e}");
    }
}

/// `f`: replace PID 1 with a shell.
fn exec_shell(shell: &str, console: &str) {
    use std::os::unix::process::CommandExt;
    if let Some(tty) = console_stdio(console) {
        let _ = rustix::stdio::dup2_stdin(&tty);
        let _ = rustix::stdio::dup2_stdout(&tty);
        let _ = rustix::stdio::dup2_stderr(&tty);
    }
    let e = std::process::Command::new(shell).exec();
    log::error!("cannot execute {shell}: {e}");
}
