//! Asking for a passphrase on the console: the prompt, echo off while it is typed, one
//! line read, the terminal restored. The bytes read live in a [`Secret`] only.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use rustix::termios::{self, LocalModes, OptionalActions};
use zeroize::{Zeroize, Zeroizing};

use super::crypt::Secret;

/// cryptsetup's limit for an interactive passphrase.
const MAX_PASSPHRASE: usize = 512;

/// Print `prompt` on `console` and read one line with echo off. `None`: the console
/// cannot be opened or read (no keyboard: nobody can answer).
pub fn ask(console: &str, prompt: &str) -> Option<Secret> {
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(console)
        .ok()?;
    // Echo goes off before the prompt is shown: the line discipline echoes a byte when it
    // arrives, so a passphrase typed as soon as the prompt appears would otherwise show.
    let saved = termios::tcgetattr(tty.as_fd()).ok();
    if let Some(saved) = &saved {
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ICANON);
        // `Now`, not `Flush`: a passphrase typed ahead of the prompt is kept.
        let _ = termios::tcsetattr(tty.as_fd(), OptionalActions::Now, &quiet);
    }
    let _ = tty.write_all(prompt.as_bytes());
    let mut line: Secret = Zeroizing::new(Vec::with_capacity(64));
    let mut byte = [0u8; 1];
    let mut ok = false;
    loop {
        match tty.read(&mut byte) {
            Ok(1) => match byte[0] {
                b'\n' | b'\r' => {
                    ok = true;
                    break;
                }
                b => {
                    if line.len() < MAX_PASSPHRASE {
                        line.push(b);
                    }
                }
            },
            // End of input: what was typed is the answer if anything was.
            Ok(_) => {
                ok = !line.is_empty();
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // The last byte read was the newline or a passphrase byte: wipe it too.
    byte.zeroize();
    if let Some(saved) = &saved {
        let _ = termios::tcsetattr(tty.as_fd(), OptionalActions::Now, saved);
    }
    let _ = tty.write_all(b"\n");
    ok.then_some(line)
}
