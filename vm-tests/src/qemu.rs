//! Running a VM: QEMU under TCG (KVM only where a real one exists), booted directly from a
//! kernel ([`VmConfig`]) or from a command line the caller built (firmware and boot disks),
//! its serial console read by a thread that keeps every byte with when it arrived, waits
//! with deadlines on what the guest prints — in whole lines, or in the raw stream for
//! screens drawn without newlines such as a boot menu — a hard time limit, and the whole
//! console kept in a log file.

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

    /// The kernel timestamp for a note: `1.234 s`, or `?` on a line without one.
    pub fn kernel_stamp(&self) -> String {
        self.kernel_time()
            .map_or("?".into(), |t| format!("{t:.3} s"))
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

/// Everything the guest wrote to the serial console so far.
#[derive(Default)]
struct ConsoleState {
    /// The bytes as they came: screens such as systemd-boot's menu are drawn with escapes
    /// and no newlines, so some waits must match the stream itself.
    bytes: Vec<u8>,
    /// (end offset in `bytes` of each read, when it arrived since QEMU start): enough to
    /// say when any byte arrived without a timestamp per byte.
    chunks: Vec<(usize, Duration)>,
    /// Where each complete line ends in `bytes` (its newline; at EOF also the end of an
    /// unterminated last line), so line waits look at each line once instead of
    /// rescanning the stream on every wake-up.
    line_ends: Vec<usize>,
    eof: bool,
}

impl ConsoleState {
    fn push(&mut self, chunk: &[u8], at: Duration) {
        let base = self.bytes.len();
        self.line_ends.extend(
            chunk
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b == b'\n')
                .map(|(i, _)| base + i),
        );
        self.bytes.extend_from_slice(chunk);
        self.chunks.push((self.bytes.len(), at));
    }

    fn finish(&mut self) {
        // The unterminated last line will never get its newline: it is complete now.
        if self.tail_start() < self.bytes.len() {
            self.line_ends.push(self.bytes.len());
        }
        self.eof = true;
    }

    /// When the byte at `offset` arrived (the last read's time past the end).
    fn arrival(&self, offset: usize) -> Duration {
        let i = self.chunks.partition_point(|&(end, _)| end <= offset);
        self.chunks
            .get(i)
            .or(self.chunks.last())
            .map_or(Duration::ZERO, |&(_, t)| t)
    }

    /// Where the bytes after the last complete line start.
    fn tail_start(&self) -> usize {
        self.line_ends.last().map_or(0, |&e| e + 1)
    }

    /// The line in `bytes[start..end]`, stamped with when its last byte (the newline, or
    /// the last character of an unterminated line) arrived.
    fn line_at(&self, start: usize, end: usize) -> Line {
        let raw = self.bytes.get(start..end).unwrap_or_default();
        let last = if end < self.bytes.len() {
            end
        } else {
            end.saturating_sub(1)
        };
        Line {
            text: strip_ansi(&String::from_utf8_lossy(raw)),
            host: self.arrival(last),
        }
    }

    /// Complete line `k` (`k < line_ends.len()`).
    fn complete_line(&self, k: usize) -> Line {
        let start = k
            .checked_sub(1)
            .and_then(|p| self.line_ends.get(p))
            .map_or(0, |&e| e + 1);
        let end = self.line_ends.get(k).copied().unwrap_or(self.bytes.len());
        self.line_at(start, end)
    }

    /// Every line so far, the unfinished last one included.
    fn lines(&self) -> Vec<Line> {
        let mut lines: Vec<Line> = (0..self.line_ends.len())
            .map(|k| self.complete_line(k))
            .collect();
        let tail = self.tail_start();
        if tail < self.bytes.len() {
            lines.push(self.line_at(tail, self.bytes.len()));
        }
        lines
    }
}

/// The first place `needle` occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Default)]
struct Console {
    state: Mutex<ConsoleState>,
    changed: Condvar,
}

/// How a wait on the console ended.
enum Waited<T> {
    Found(T),
    /// QEMU closed its console (it has exited or is about to).
    Closed,
    TimedOut,
}

impl Console {
    fn lock(&self) -> MutexGuard<'_, ConsoleState> {
        // A poisoned lock means the reader thread panicked mid-update; what it collected
        // is still the best record we have.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, chunk: &[u8], at: Duration) {
        self.lock().push(chunk, at);
        self.changed.notify_all();
    }

    fn finish(&self) {
        self.lock().finish();
        self.changed.notify_all();
    }

    /// Block until `found` has an answer, the console closes, or `deadline` passes;
    /// `found` is asked again after every read.
    fn wait<T>(
        &self,
        deadline: Instant,
        mut found: impl FnMut(&ConsoleState) -> Option<T>,
    ) -> Waited<T> {
        let mut st = self.lock();
        loop {
            if let Some(v) = found(&st) {
                return Waited::Found(v);
            }
            if st.eof {
                return Waited::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Waited::TimedOut;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
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
    /// Index of the first complete line the line waits still look at.
    line_cursor: usize,
    /// Byte offset where the raw waits look from; raw and line waits keep separate places.
    raw_cursor: usize,
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

/// The arguments every VM shares: a `machine` with `memory_mb` MiB, no default devices or
/// display, no reboot (a reboot or a panic ends QEMU, which ends the test run), and the
/// first serial port on stdio, which the harness reads as the console.
pub fn base_args(machine: &str, memory_mb: u32) -> Vec<String> {
    let mut a: Vec<String> = [
        "-machine",
        machine,
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
    a.push(memory_mb.to_string());
    a
}

/// A path as a value inside a QEMU option list (`file=...`): commas are doubled.
pub fn option_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

impl VmConfig {
    fn qemu_args(&self) -> Vec<String> {
        let mut a = base_args("pc", self.memory_mb);
        a.push("-kernel".into());
        a.push(self.kernel.display().to_string());
        a.push("-initrd".into());
        a.push(self.initrd.display().to_string());
        a.push("-append".into());
        a.push(self.append.clone());
        for d in &self.drives {
            a.push("-drive".into());
            a.push(format!("file={},if=virtio,format=raw", option_path(d)));
        }
        a
    }
}

/// The emulator every VM runs in.
const QEMU: &str = "qemu-system-x86_64";

impl Vm {
    /// Boot a kernel directly, as `cfg` describes.
    pub fn start(cfg: &VmConfig) -> Result<Vm> {
        Self::spawn(QEMU, &cfg.qemu_args(), &cfg.log, cfg.timeout, cfg.echo)
    }

    /// Start QEMU with a command line the caller built (firmware, boot disks: what
    /// `VmConfig`'s direct kernel boot does not cover), the console kept in `log` and the
    /// VM killed after `timeout`.
    pub fn start_args(args: &[String], log: &Path, timeout: Duration) -> Result<Vm> {
        Self::spawn(QEMU, args, log, timeout, false)
    }

    /// Run `program args` under `timeout` with its stdout read as the console (the unit
    /// tests run a shell script here in place of QEMU).
    fn spawn(
        program: &str,
        args: &[String],
        log_path: &Path,
        timeout: Duration,
        echo: bool,
    ) -> Result<Vm> {
        if let Some(dir) = log_path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut log = fs::File::create(log_path)
            .with_context(|| format!("creating console log {}", log_path.display()))?;
        let stderr_log = log_path.with_extension("qemu-stderr.log");
        let stderr = fs::File::create(&stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        // `timeout` is the hard limit even if this harness dies; it and QEMU share a process
        // group (led by `timeout`) that Drop kills as a whole.
        let secs = timeout.as_secs().max(1);
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", &secs.to_string(), program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| {
            format!("starting {program} under `timeout` (run vm-tests/setup-host)")
        })?;
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().context("QEMU stdout")?;
        let console = Arc::new(Console::default());
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
                console.finish();
            })
        };
        Ok(Vm {
            child,
            stdin,
            console,
            reader: Some(reader),
            started,
            hard_deadline: started + timeout,
            timeout,
            line_cursor: 0,
            raw_cursor: 0,
            log: log_path.to_path_buf(),
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

    /// The console so far as lines (ANSI stripped), each stamped with when its newline
    /// arrived; the unfinished last line included, stamped with its last byte.
    pub fn lines(&self) -> Vec<Line> {
        self.console.lock().lines()
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

    /// Wait until a complete line after the previous match satisfies `pred`; that line
    /// becomes the new starting point, so successive waits assert an order. An unfinished
    /// line is not looked at: once passed over, it would never be looked at again.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<Line> {
        let deadline = self.deadline(within);
        let cursor = &mut self.line_cursor;
        let waited = self.console.wait(deadline, |st| {
            let complete = st.line_ends.len();
            let hit = (*cursor..complete)
                .map(|k| (k, st.complete_line(k)))
                .find(|(_, l)| pred(&l.text));
            *cursor = hit.as_ref().map_or(complete, |(k, _)| k + 1);
            hit.map(|(_, l)| l)
        });
        self.settle(waited, what, within)
    }

    /// Wait until the raw serial stream, after the previous raw match, contains `needle`
    /// (menus have no newlines, so this does not wait for one). Returns when the needle's
    /// last byte arrived.
    pub fn wait_raw(&mut self, needle: &str, within: Duration) -> Result<Duration> {
        let deadline = self.deadline(within);
        let cursor = &mut self.raw_cursor;
        let n = needle.as_bytes();
        let waited = self.console.wait(deadline, |st| {
            let Some(i) = find(st.bytes.get(*cursor..).unwrap_or_default(), n) else {
                // Keep the tail: the needle may straddle two reads.
                *cursor = st.bytes.len().saturating_sub(n.len()).max(*cursor);
                return None;
            };
            let end = *cursor + i + n.len();
            *cursor = end;
            Some(st.arrival(end.saturating_sub(1)))
        });
        self.settle(waited, &format!("{needle:?}"), within)
    }

    /// Wait for QEMU to exit by itself (poweroff, or panic with `-no-reboot panic=-1`).
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = self.deadline(within);
        if let Waited::TimedOut = self.console.wait(deadline, |st| st.eof.then_some(())) {
            bail!(
                "the VM was still running {:.0} s later",
                within.as_secs_f64()
            );
        }
        self.reap()
            .context("QEMU closed its console but its exit status could not be read")
    }

    /// `within` from now, but never past the VM's hard limit.
    fn deadline(&self, within: Duration) -> Instant {
        (Instant::now() + within).min(self.hard_deadline)
    }

    /// A wait's result, or why the console never showed `what`.
    fn settle<T>(&mut self, waited: Waited<T>, what: &str, within: Duration) -> Result<T> {
        match waited {
            Waited::Found(v) => Ok(v),
            Waited::Closed => {
                let status = self.reap();
                bail!(
                    "the VM stopped ({}) after {:.1} s before the console showed {what}",
                    status.map_or_else(|| "status unknown".into(), |s| s.to_string()),
                    self.started.elapsed().as_secs_f64()
                )
            }
            Waited::TimedOut => bail!(
                "the console did not show {what} within {:.0} s{}",
                within.as_secs_f64(),
                if Instant::now() >= self.hard_deadline {
                    format!(" (hit the VM's hard limit of {} s)", self.timeout.as_secs())
                } else {
                    String::new()
                }
            ),
        }
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
        let texts =
            |st: &ConsoleState| -> Vec<String> { st.lines().into_iter().map(|l| l.text).collect() };
        {
            // Before EOF the unfinished line is shown but is not a complete line.
            let st = c.lock();
            assert_eq!(st.line_ends.len(), 2);
            assert_eq!(
                texts(&st),
                ["[    0.1] a", "[    0.2] b", "menu without newline"]
            );
        }
        c.finish();
        let st = c.lock();
        assert_eq!(st.line_ends.len(), 3);
        assert_eq!(
            texts(&st),
            ["[    0.1] a", "[    0.2] b", "menu without newline"]
        );
        assert_eq!(st.lines()[1].host, Duration::from_millis(9));
        assert!(st.eof);
    }

    #[test]
    fn lines_from_the_raw_stream_keep_arrival_times() {
        let ms = Duration::from_millis;
        let bytes: &[u8] = b"\x1b[2J\x1b[1;1HNixOS (Generation 2)\x1b[2;1HNixOS (Generation 1)\r\n[    0.1] Linux\nhalf";
        let mut st = ConsoleState::default();
        st.push(&bytes[..20], ms(5));
        st.push(&bytes[20..60], ms(9));
        st.push(&bytes[60..], ms(12));
        let lines = st.lines();
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "NixOS (Generation 2)NixOS (Generation 1)",
                "[    0.1] Linux",
                "half"
            ]
        );
        assert_eq!(lines[0].host, ms(9));
        assert_eq!(lines[2].host, ms(12));
        assert_eq!(st.bytes, bytes);
        assert_eq!(find(bytes, b"Generation 1"), Some(43));
        assert_eq!(find(bytes, b"Generation 3"), None);
        assert_eq!(st.arrival(19), ms(5));
        assert_eq!(st.arrival(20), ms(9));
        assert_eq!(st.arrival(bytes.len()), ms(12));
    }

    /// The runner's waiting, ordering, exit and kill logic against a stand-in "VM" (a
    /// shell script run by the same spawn code as QEMU) — no QEMU needed.
    fn fake_vm(script: &str, timeout: Duration) -> (Vm, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        let args = ["-c".to_string(), script.to_string()];
        let vm = Vm::spawn("sh", &args, &log, timeout, false).expect("spawn");
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

    #[test]
    fn raw_waits_match_across_reads_without_a_newline() {
        let (mut vm, _dir) = fake_vm(
            "printf 'menu: Gener'; sleep 0.3; printf 'ation 1, Generation 2'; read x; echo got $x",
            Duration::from_secs(20),
        );
        let at = vm
            .wait_raw("Generation 1", Duration::from_secs(10))
            .expect("a needle split over two reads");
        assert!(at >= Duration::from_millis(300), "arrived at {at:?}");
        vm.wait_raw("Generation 2", Duration::from_secs(10))
            .expect("the next needle");
        // Each raw match moves the place on: the first needle is behind it now.
        let err = vm
            .wait_raw("Generation 1", Duration::from_millis(300))
            .expect_err("already matched");
        assert!(err.to_string().contains("did not show"), "{err}");
        // Line waits see complete lines only; lines() shows the unfinished one too.
        vm.wait_for("menu", Duration::from_millis(300))
            .expect_err("no newline yet");
        assert_eq!(
            vm.lines().last().map(|l| l.text.as_str()),
            Some("menu: Generation 1, Generation 2")
        );
        vm.send(b"key\n").expect("send");
        let l = vm
            .wait_for("got key", Duration::from_secs(10))
            .expect("the line completed");
        assert_eq!(l.text, "menu: Generation 1, Generation 2got key");
        let status = vm.wait_exit(Duration::from_secs(10)).expect("exit");
        assert!(status.success());
    }
}
