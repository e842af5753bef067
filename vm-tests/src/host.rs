//! The host tools the harness runs (apt, dpkg, e2fsprogs, mtools, ldd, cargo): finding
//! them, and running one to completion with what it printed kept in any error, so a
//! failure report says which tool failed and why without a rerun by hand.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Whether `tool` is on PATH or in the sbin directories a non-root PATH may lack.
pub fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(tool).is_file())
}

/// Run `cmd` with no input (a tool must not wait on the harness's terminal) and return
/// its stdout; a failure names the command line, its exit status and its output.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = command_line(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{shown}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let printed: Vec<&str> = [stderr.trim(), stdout.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            if printed.is_empty() {
                "it printed nothing".to_string()
            } else {
                printed.join("\n")
            }
        );
    }
    Ok(stdout)
}

/// `cmd` as it would be typed, for messages.
fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_stdout_and_reports_failures_with_their_output() {
        let ok = run(Command::new("sh").args(["-c", "echo hello"])).expect("sh runs");
        assert_eq!(ok, "hello\n");
        let err = run(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .expect_err("exit 3 is a failure");
        let msg = err.to_string();
        assert!(
            msg.starts_with("`sh -c echo out; echo err >&2; exit 3` failed"),
            "{msg}"
        );
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("err\nout"), "{msg}");
        let missing = run(&mut Command::new("/nonexistent/tool")).expect_err("no such tool");
        assert!(
            format!("{missing:#}").starts_with("running `/nonexistent/tool`"),
            "{missing:#}"
        );
    }

    #[test]
    fn finds_tools_in_sbin_too() {
        assert!(on_path("sh"));
        assert!(!on_path("no-such-tool-stagehand"));
    }
}
