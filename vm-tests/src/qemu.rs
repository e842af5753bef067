//! Running a VM: QEMU under TCG (KVM only where a real one exists), its serial console
//! read by a thread that timestamps every line, waits with deadlines on what the guest
//! prints, a hard time limit, and the whole console kept in a log file.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone)]
pub struct VmConfig {
    /// A PVH-bootable ELF `vmlinux` (or a bzImage).
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Raw disk images, attached as virtio-blk (`/dev/vda`, `/dev/vdb`, ...).
    pub drives: Vec<PathBuf>,
    pub append: String,
    pub memory_mb: u32,
    /// The VM is killed after this long, whatever it is doing.
    pub timeout: Duration,
    /// Where the complete console output is written.
    pub log: PathBuf,
    /// Copy the console to our stdout as it arrives (the demo).
    pub echo: bool,
}

/// One line of console output.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The text without the line ending and without ANSI escape sequences.
    pub text: String,
    /// When the line was complete, since QEMU was started.
    pub host: Duration,
}

impl Line {
    /// The kernel timestamp of a kmsg line (`[    1.234567] ...`), in seconds.
    pub fn kernel_time(&self) -> Option<f64> {
        kernel_time(&self.text)
    }
}

pub fn kernel_time(text: &str) -> Option<f64> {
    let rest = text.trim_start().strip_prefix('[')?;
    let (num, _) = rest.split_once(']')?;
    num.trim().parse().ok()
}

/// Drop ANSI escape sequences (systemd colours its status lines) and carriage returns.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters and intermediates, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[derive(Default)]
struct ConsoleState {
    lines: Vec<Line>,
    partial: Vec<u8>,
    eof: bool,
}

#[derive(Default)]
struct Console {
    state: Mutex<ConsoleState>,
    changed: Condvar,
}

impl Console {
    fn lock(&self) -> MutexGuard<'_, ConsoleState> {
        // A poisoned lock means the reader thread panicked mid-update; what it collected
        // is still the best record we have.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, chunk: &[u8], at: Duration) {
        let mut st = self.lock();
        for &b in chunk {
            if b == b'\n' {
                let raw = std::mem::take(&mut st.partial);
                let text = strip_ansi(&String::from_utf8_lossy(&raw));
                st.lines.push(Line { text, host: at });
            } else {
                st.partial.push(b);
            }
        }
        drop(st);
        self.changed.notify_all();
    }

    fn finish(&self, at: Duration) {
        let mut st = self.lock();
        if !st.partial.is_empty() {
            let raw = std::mem::take(&mut st.partial);
            let text = strip_ansi(&String::from_utf8_lossy(&raw));
            st.lines.push(Line { text, host: at });
        }
        st.eof = true;
        drop(st);
        self.changed.notify_all();
    }
}

pub struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<Console>,
    reader: Option<JoinHandle<()>>,
    started: Instant,
    hard_deadline: Instant,
    timeout: Duration,
    /// Index of the first line `wait_for` still looks at.
    cursor: usize,
    log: PathBuf,
    stderr_log: PathBuf,
    status: Option<ExitStatus>,
}

/// KVM only where the host has a hardware one: this machine kind's `/dev/kvm` is a
/// nested software backend that cannot boot a stock kernel (see shared/VM.md).
pub fn accelerator() -> &'static str {
    if Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists() {
        "kvm"
    } else {
        "tcg"
    }
}

impl VmConfig {
    fn qemu_args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-machine",
            "pc",
            "-accel",
            accelerator(),
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-chardev",
            "stdio,id=console,signal=off",
            "-serial",
            "chardev:console",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push("-m".into());
        a.push(self.memory_mb.to_string());
        a.push("-kernel".into());
        a.push(self.kernel.display().to_string());
        a.push("-initrd".into());
        a.push(self.initrd.display().to_string());
        a.push("-append".into());
        a.push(self.append.clone());
        for d in &self.drives {
            a.push("-drive".into());
            // QEMU's -drive syntax doubles commas inside values.
            a.push(format!(
                "file={},if=virtio,format=raw",
                d.display().to_string().replace(',', ",,")
            ));
        }
        a
    }
}

impl Vm {
    pub fn start(cfg: &VmConfig) -> Result<Vm> {
        if let Some(dir) = cfg.log.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut log = fs::File::create(&cfg.log)
            .with_context(|| format!("creating console log {}", cfg.log.display()))?;
        let stderr_log = cfg.log.with_extension("qemu-stderr.log");
        let stderr = fs::File::create(&stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        // `timeout` is the hard limit even if this harness dies; it and QEMU share a process
        // group (led by `timeout`) that Drop kills as a whole.
        let secs = cfg.timeout.as_secs().max(1);
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", &secs.to_string(), "qemu-system-x86_64"])
            .args(cfg.qemu_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .context("starting qemu-system-x86_64 under `timeout` (run vm-tests/setup-host)")?;
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().context("QEMU stdout")?;
        let console = Arc::new(Console::default());
        let echo = cfg.echo;
        let reader = {
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = match stdout.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let chunk = &buf[..n];
                    // The log is for people; a full disk must not stop the test itself.
                    let _ = log.write_all(chunk);
                    if echo {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(chunk);
                        let _ = out.flush();
                    }
                    console.push(chunk, started.elapsed());
                }
                let _ = log.flush();
                console.finish(started.elapsed());
            })
        };
        Ok(Vm {
            child,
            stdin,
            console,
            reader: Some(reader),
            started,
            hard_deadline: started + cfg.timeout,
            timeout: cfg.timeout,
            cursor: 0,
            log: cfg.log.clone(),
            stderr_log,
            status: None,
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Every complete line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.console.lock().lines.clone()
    }

    /// Type into the serial console.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let stdin = self.stdin.as_mut().context("the console input is closed")?;
        stdin.write_all(bytes)?;
        stdin.flush()?;
        Ok(())
    }

    /// Wait until a line after the previous match contains `needle`.
    pub fn wait_for(&mut self, needle: &str, within: Duration) -> Result<Line> {
        self.wait_for_line(&format!("{needle:?}"), within, |l| l.contains(needle))
    }

    /// Wait until a line after the previous match satisfies `pred`; that line becomes the
    /// new starting point, so successive waits assert an order.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<Line> {
        let deadline = (Instant::now() + within).min(self.hard_deadline);
        let console = Arc::clone(&self.console);
        let mut st = console.lock();
        loop {
            if let Some(i) = st.lines[self.cursor..].iter().position(|l| pred(&l.text)) {
                let idx = self.cursor + i;
                self.cursor = idx + 1;
                return Ok(st.lines[idx].clone());
            }
            self.cursor = st.lines.len();
            if st.eof {
                drop(st);
                let status = self.reap();
                bail!(
                    "the VM stopped ({}) after {:.1} s before the console showed {what}",
                    status.map_or_else(|| "status unknown".into(), |s| s.to_string()),
                    self.started.elapsed().as_secs_f64()
                );
            }
            let now = Instant::now();
            if now >= deadline {
                let hard = now >= self.hard_deadline;
                bail!(
                    "the console did not show {what} within {:.0} s{}",
                    within.as_secs_f64(),
                    if hard {
                        format!(" (hit the VM's hard limit of {} s)", self.timeout.as_secs())
                    } else {
                        String::new()
                    }
                );
            }
            st = console
                .changed
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Wait for QEMU to exit by itself (poweroff, or panic with `-no-reboot panic=-1`).
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = (Instant::now() + within).min(self.hard_deadline);
        let console = Arc::clone(&self.console);
        let mut st = console.lock();
        while !st.eof {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "the VM was still running {:.0} s later",
                    within.as_secs_f64()
                );
            }
            st = console
                .changed
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        drop(st);
        self.reap()
            .context("QEMU closed its console but its exit status could not be read")
    }

    /// QEMU's exit status once its console is closed (it exits right after).
    fn reap(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.stdin = None;
            self.status = self.child.wait().ok();
        }
        self.status
    }

    /// The last `n` console lines and where the full log is, for failure reports.
    pub fn failure_context(&self, n: usize) -> String {
        let lines = self.lines();
        let start = lines.len().saturating_sub(n);
        let mut s = format!("last {} console lines:\n", lines.len() - start);
        for l in &lines[start..] {
            s.push_str(&format!("  | {}\n", l.text));
        }
        let stderr = fs::read_to_string(&self.stderr_log).unwrap_or_default();
        if !stderr.trim().is_empty() {
            s.push_str(&format!("QEMU stderr:\n{}\n", stderr.trim_end()));
        }
        s.push_str(&format!("full console log: {}", self.log.display()));
        s
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.status.is_none() {
            // Kill `timeout` and QEMU together (their process group).
            if let Some(pid) = i32::try_from(self.child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_timestamps() {
        assert_eq!(
            kernel_time("[    1.234567] stage1: started"),
            Some(1.234567)
        );
        assert_eq!(kernel_time("[  123.000001] x"), Some(123.000001));
        assert_eq!(kernel_time("STAGEHAND-PROBE done"), None);
        assert_eq!(kernel_time("[  OK  ] Reached target"), None);
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(
            strip_ansi("[\x1b[0;32m  OK  \x1b[0m] Reached target\r"),
            "[  OK  ] Reached target"
        );
    }

    #[test]
    fn console_splits_lines_across_chunks() {
        let c = Console::default();
        c.push(b"[    0.1] a\r\n[    0.2", Duration::from_millis(5));
        c.push(b"] b\nmenu without newline", Duration::from_millis(9));
        c.finish(Duration::from_millis(10));
        let st = c.lock();
        let texts: Vec<&str> = st.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            ["[    0.1] a", "[    0.2] b", "menu without newline"]
        );
        assert_eq!(st.lines[1].host, Duration::from_millis(9));
        assert!(st.eof);
    }

    /// The runner's waiting, ordering, exit and kill logic against a stand-in "VM" (a
    /// shell script) — no QEMU needed.
    fn fake_vm(script: &str, timeout: Duration) -> (Vm, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        let mut log_file = fs::File::create(&log).expect("log");
        let mut child = Command::new("timeout")
            .args([&timeout.as_secs().max(1).to_string(), "sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn");
        let mut stdout = child.stdout.take().expect("stdout");
        let console = Arc::new(Console::default());
        let started = Instant::now();
        let reader = {
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = log_file.write_all(&buf[..n]);
                    console.push(&buf[..n], started.elapsed());
                }
                console.finish(started.elapsed());
            })
        };
        let vm = Vm {
            stdin: child.stdin.take(),
            child,
            console,
            reader: Some(reader),
            started,
            hard_deadline: started + timeout,
            timeout,
            cursor: 0,
            stderr_log: log.with_extension("err"),
            log,
            status: None,
        };
        (vm, dir)
    }

    /// Processes whose process group is `pgid` (field 5 of /proc/PID/stat).
    fn group_members(pgid: u32) -> Vec<u32> {
        fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        // The command name is in parentheses and may contain spaces.
                        let after = s.rsplit_once(") ")?.1.to_string();
                        after.split(' ').nth(2)?.parse::<u32>().ok()
                    })
                    == Some(pgid)
            })
            .collect()
    }

    use std::os::unix::process::CommandExt;

    #[test]
    fn waits_in_order_and_sees_the_exit() {
        let (mut vm, _dir) = fake_vm(
            "echo one; echo two; echo one again; exit 3",
            Duration::from_secs(20),
        );
        vm.wait_for("two", Duration::from_secs(10)).expect("two");
        let l = vm
            .wait_for("one", Duration::from_secs(10))
            .expect("one after two");
        assert_eq!(l.text, "one again");
        let err = vm
            .wait_for("two", Duration::from_secs(10))
            .expect_err("no second two");
        assert!(err.to_string().contains("stopped"), "{err}");
        let status = vm.wait_exit(Duration::from_secs(10)).expect("exit");
        assert_eq!(status.code(), Some(3));
    }

    #[test]
    fn a_missing_marker_times_out_and_drop_kills_the_group() {
        // `timeout` (the group leader) runs sh, which starts a grandchild that must die too.
        let (mut vm, _dir) = fake_vm("sleep 100 & echo up; wait", Duration::from_secs(60));
        vm.wait_for("up", Duration::from_secs(10)).expect("up");
        let t = Instant::now();
        let err = vm
            .wait_for("never", Duration::from_millis(300))
            .expect_err("must time out");
        assert!(err.to_string().contains("did not show"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5));
        let pid = vm.child.id();
        let members = group_members(pid);
        assert!(members.len() >= 3, "timeout, sh and sleep run: {members:?}");
        // A pidfd becomes readable when its process exits, child of ours or not.
        let pidfds: Vec<_> = members
            .iter()
            .filter_map(|&p| rustix::process::Pid::from_raw(i32::try_from(p).ok()?))
            .map(|p| {
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                    .expect("pidfd_open")
            })
            .collect();
        let t = Instant::now();
        drop(vm);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "Drop waited {:?} for the VM's processes to end by themselves",
            t.elapsed()
        );
        for fd in &pidfds {
            let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
            let limit = rustix::event::Timespec {
                tv_sec: 10,
                tv_nsec: 0,
            };
            let ready = rustix::event::poll(&mut fds, Some(&limit)).expect("poll");
            assert_eq!(ready, 1, "a process of the VM's group survived Drop");
        }
    }

    #[test]
    fn reads_input_from_send() {
        let (mut vm, _dir) = fake_vm("read x; echo got $x", Duration::from_secs(20));
        vm.send(b"key\n").expect("send");
        vm.wait_for("got key", Duration::from_secs(10))
            .expect("echo");
    }
}
