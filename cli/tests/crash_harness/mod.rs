//! The kill harness shared by the crash trials: run the real `stagehand` binary on a copy of a
//! root and SIGKILL it (`strace --inject`, at the entry of one system call, which therefore
//! never runs) before each of its file-system-mutating system calls in turn.
//!
//! Kill points: one uninterrupted run under `strace -e trace=<mutating calls>` lists every
//! mutating call in order (`openat` only with `O_CREAT`/`O_WRONLY`/`O_RDWR`/`O_TRUNC`, `write`
//! only to a file rather than stdout/stderr, plus the `clone`/`wait4` around each snippet);
//! trial k then runs the command on a fresh copy of the same root with
//! `-e inject=<call>:when=<n>:signal=SIGKILL`, where the k-th mutating call is the n-th call
//! of that name. The file system only changes at those calls, so the trials together visit
//! every state a kill of the process can leave behind. The roots live on tmpfs when there is
//! one: a kill (unlike a power cut, which the VM test covers) loses nothing unsynced.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_stagehand");

/// System calls that change the file system (or start/await a snippet, whose own writes are
/// then either done or not).
const MUTATING: &[&str] = &[
    "openat",
    "open",
    "creat",
    "write",
    "pwrite64",
    "writev",
    "fsync",
    "fdatasync",
    "syncfs",
    "sync",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "rmdir",
    "symlink",
    "symlinkat",
    "link",
    "linkat",
    "mkdir",
    "mkdirat",
    "chown",
    "fchown",
    "lchown",
    "fchownat",
    "chmod",
    "fchmod",
    "fchmodat",
    "truncate",
    "ftruncate",
    "fallocate",
    "copy_file_range",
    "sendfile",
    "clone",
    "clone3",
    "vfork",
    "wait4",
];

/// The trials kill the binary through `strace --inject`; without strace they would prove
/// nothing, so a missing strace fails the test instead of passing it silently.
pub fn require_strace() {
    let ok = Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "strace is not installed: run vm-tests/setup-host (apt-get install strace)"
    );
}

// ---------------------------------------------------------------------------------------------
// Trees: copy a template root per trial, snapshot a root for comparison.

/// Files that no command under test writes (the store, the bash copied in for snippets) are
/// hard-linked into each trial's root instead of copied.
pub fn shared(rel: &Path) -> bool {
    ["nix/store", "bin/bash", "lib", "lib64", "usr/lib"]
        .iter()
        .any(|p| rel.starts_with(p))
}

pub fn copy_tree(from: &Path, to: &Path, rel: &Path) {
    for e in std::fs::read_dir(from.join(rel)).expect("read template") {
        let e = e.expect("entry");
        let r = rel.join(e.file_name());
        let (src, dst) = (from.join(&r), to.join(&r));
        let md = std::fs::symlink_metadata(&src).expect("lstat");
        if md.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).expect("readlink"), &dst)
                .expect("symlink");
            std::os::unix::fs::lchown(&dst, Some(md.uid()), Some(md.gid())).expect("lchown");
            continue;
        }
        if md.is_dir() {
            std::fs::create_dir(&dst).expect("mkdir");
            copy_tree(from, to, &r);
        } else if shared(&r) {
            std::fs::hard_link(&src, &dst).expect("link");
            continue;
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
        std::os::unix::fs::chown(&dst, Some(md.uid()), Some(md.gid())).expect("chown");
        std::fs::set_permissions(&dst, md.permissions()).expect("chmod");
    }
}

/// A temporary directory on tmpfs when there is one: a kill loses nothing that was not
/// synced, so the trials need no disk, and `syncfs` on a real disk would make them slow.
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::tempdir_in(shm) {
            return t;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

pub fn clone_root(template: &Path) -> tempfile::TempDir {
    let t = scratch();
    copy_tree(template, t.path(), Path::new(""));
    std::fs::set_permissions(
        t.path(),
        std::fs::symlink_metadata(template)
            .expect("lstat")
            .permissions(),
    )
    .expect("chmod root");
    t
}

/// One line per path: type, mode, owner and contents (link target for a link). Shared
/// (hard-linked) files are compared by size only.
pub type Snapshot = BTreeMap<String, String>;

pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    snap_walk(root, Path::new(""), &mut out);
    out
}

pub fn snap_walk(root: &Path, rel: &Path, out: &mut Snapshot) {
    let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for e in rd {
        let e = e.expect("entry");
        let r = rel.join(e.file_name());
        let p = root.join(&r);
        let md = std::fs::symlink_metadata(&p).expect("lstat");
        let who = format!("{:04o} {}:{}", md.mode() & 0o7777, md.uid(), md.gid());
        let line = if md.file_type().is_symlink() {
            format!(
                "L -> {}",
                std::fs::read_link(&p).expect("readlink").display()
            )
        } else if md.is_dir() {
            snap_walk(root, &r, out);
            format!("D {who}")
        } else if md.nlink() > 1 {
            format!("F {who} shared, {} bytes", md.len())
        } else if r == Path::new("var/lib/stagehand/etc-cache") {
            // The etc step's no-change cache holds this run's inode numbers and time
            // stamps: compared by presence only (its checks are in tests/etc_cache.rs).
            format!("F {who} etc cache")
        } else if r.starts_with("boot") {
            // Menu labels carry the generation's build time, read from the toplevel's ctime,
            // which each clone of the fixture sets anew: a clone made a minute later is not
            // a different outcome.
            let c = std::fs::read(&p).expect("read");
            let text = mask_dates(&String::from_utf8_lossy(&c));
            format!("F {who} {text:?}")
        } else {
            let c = std::fs::read(&p).expect("read");
            format!("F {who} {:?}", String::from_utf8_lossy(&c))
        };
        out.insert(format!("/{}", r.display()), line);
    }
}

/// `YYYY-MM-DD` and `YYYY-MM-DD HH:MM` replaced by `DATE`.
pub fn mask_dates(text: &str) -> String {
    fn shaped(b: &[u8], shape: &[u8]) -> bool {
        b.len() >= shape.len()
            && shape.iter().zip(b).all(|(s, c)| {
                if *s == b'9' {
                    c.is_ascii_digit()
                } else {
                    s == c
                }
            })
    }
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if shaped(&b[i..], b"9999-99-99 99:99") {
            out.extend_from_slice(b"DATE");
            i += 16;
        } else if shaped(&b[i..], b"9999-99-99") {
            out.extend_from_slice(b"DATE");
            i += 10;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn diff(a: &Snapshot, b: &Snapshot) -> String {
    let mut d = String::new();
    for (k, v) in a {
        match b.get(k) {
            None => d.push_str(&format!("  only after the crash and rerun: {k} {v}\n")),
            Some(w) if w != v => d.push_str(&format!("  {k}: {v}\n    uninterrupted: {w}\n")),
            _ => {}
        }
    }
    for (k, v) in b {
        if !a.contains_key(k) {
            d.push_str(&format!("  only after an uninterrupted run: {k} {v}\n"));
        }
    }
    d
}

// ---------------------------------------------------------------------------------------------
// Running the binary, under strace.

/// What to run: `stagehand ARGS --root ROOT`, optionally with the ESP (`ROOT/boot`) on a
/// tmpfs of `esp_kib` KiB (in a private mount namespace, copied in before and back out after
/// the run) so that the boot partition can be made too small for a plan.
#[derive(Clone, Copy)]
pub struct Cmd<'a> {
    pub args: &'a [&'a str],
    pub esp_kib: Option<u32>,
}

impl<'a> Cmd<'a> {
    pub fn new(args: &'a [&'a str]) -> Cmd<'a> {
        Cmd {
            args,
            esp_kib: None,
        }
    }
}

/// Exit status of the ESP wrapper when it could not set up or tear down the tmpfs.
const WRAPPER_FAILED: i32 = 99;

const ESP_TMPFS: &str = r#"root=$1 kib=$2; shift 2
stash=$(mktemp -d) || exit 99
cp -a "$root/boot/." "$stash/" &&
  mount -t tmpfs -o "size=${kib}k,mode=0755" crash-esp "$root/boot" &&
  cp -a "$stash/." "$root/boot/" || exit 99
"$@"; rc=$?
find "$stash" -mindepth 1 -delete &&
  cp -a "$root/boot/." "$stash/" && umount "$root/boot" &&
  find "$root/boot" -mindepth 1 -delete && cp -a "$stash/." "$root/boot/" || exit 99
rm -rf "$stash"
exit $rc"#;

/// `pre` (strace and its options, or nothing) `stagehand ARGS --root ROOT`.
fn command(root: &Path, pre: &[String], cmd: Cmd<'_>) -> Command {
    let mut argv: Vec<std::ffi::OsString> = pre.iter().map(Into::into).collect();
    argv.push(BIN.into());
    argv.extend(cmd.args.iter().map(Into::into));
    argv.push("--root".into());
    argv.push(root.into());
    let mut c = match cmd.esp_kib {
        Some(kib) => {
            let mut c = Command::new("unshare");
            c.args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                ESP_TMPFS,
                "sh",
            ])
            .arg(root)
            .arg(kib.to_string())
            .args(argv);
            c
        }
        None => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    c.stdin(std::process::Stdio::null());
    c
}

fn finished(status: std::process::ExitStatus) -> bool {
    matches!(status.code(), Some(c) if c != 128 + 9 && c != WRAPPER_FAILED)
}

pub fn run_ok(root: &Path, args: &[&str]) {
    run_cmd(root, Cmd::new(args));
}

/// `run_cmd`'s standard error, for the messages a test looks for.
pub fn run_stderr(root: &Path, cmd: Cmd<'_>) -> String {
    String::from_utf8_lossy(&run_cmd(root, cmd).stderr).into_owned()
}

pub fn run_cmd(root: &Path, cmd: Cmd<'_>) -> std::process::Output {
    let out = command(root, &[], cmd).output().expect("run stagehand");
    assert!(
        finished(out.status),
        "stagehand {:?} died: {:?}\n{}",
        cmd.args,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A mutating system call, named by its name and its ordinal among calls of that name.
#[derive(Debug, Clone)]
pub struct KillPoint {
    pub call: String,
    pub nth: usize,
    pub line: String,
}

pub fn is_mutating(call: &str, line: &str) -> bool {
    match call {
        "openat" | "open" => ["O_CREAT", "O_WRONLY", "O_RDWR", "O_TRUNC"]
            .iter()
            .any(|f| line.contains(f)),
        // Log lines to stdout and stderr change nothing on disk.
        "write" | "writev" | "pwrite64" => {
            !(line.starts_with(&format!("{call}(1,")) || line.starts_with(&format!("{call}(2,")))
        }
        _ => true,
    }
}

/// Every mutating call `stagehand args` makes on a copy of `template`, in order.
pub fn kill_points(template: &Path, cmd: Cmd<'_>) -> Vec<KillPoint> {
    let dir = clone_root(template);
    let log = dir.path().join("..").join(format!(
        "{}.strace",
        dir.path().file_name().expect("name").to_string_lossy()
    ));
    let pre = [
        "strace".to_owned(),
        "-qq".to_owned(),
        "-s".to_owned(),
        "0".to_owned(),
        "-o".to_owned(),
        log.to_string_lossy().into_owned(),
        "-e".to_owned(),
        format!("trace={}", MUTATING.join(",")),
    ];
    let out = command(dir.path(), &pre, cmd).output().expect("strace");
    assert!(
        finished(out.status),
        "uninterrupted stagehand {:?} under strace: {:?}\n{}",
        cmd.args,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).expect("strace log");
    let _ = std::fs::remove_file(&log);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut points = Vec::new();
    for line in text.lines() {
        let Some((call, _)) = line.split_once('(') else {
            continue;
        };
        if !MUTATING.contains(&call) {
            continue;
        }
        let n = counts.entry(call.to_owned()).or_default();
        *n += 1;
        if is_mutating(call, line) {
            points.push(KillPoint {
                call: call.to_owned(),
                nth: *n,
                line: line.to_owned(),
            });
        }
    }
    points
}

/// Run `stagehand args` on `root` and kill it at `p`. The process group (strace, stagehand
/// and any snippet it started) is killed afterwards, as a power cut would.
pub fn run_killed(root: &Path, cmd: Cmd<'_>, p: &KillPoint) {
    let pre = [
        "strace".to_owned(),
        "-qq".to_owned(),
        "-o".to_owned(),
        "/dev/null".to_owned(),
        "-e".to_owned(),
        format!("trace={}", p.call),
        "-e".to_owned(),
        format!("inject={}:when={}:signal=SIGKILL", p.call, p.nth),
    ];
    let child = command(root, &pre, cmd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("strace");
    let group = rustix::process::Pid::from_child(&child);
    let out = child.wait_with_output().expect("wait");
    // Normally the group is gone; a snippet that outlived stagehand dies now.
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    // strace dies of the signal that killed stagehand; the ESP wrapper reports it as 137.
    assert!(
        out.status.signal() == Some(9) || out.status.code() == Some(128 + 9),
        "the kill point {} #{} ({}) was not reached: {:?}\n{}",
        p.call,
        p.nth,
        p.line,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kill `stagehand args` at each of its mutating calls, starting every trial from a copy of
/// `start`; after each kill `check` judges the root as left, then the command runs again and
/// must leave exactly `after`. Returns the number of trials; panics listing the first
/// failures.
pub fn run_trials(
    name: &str,
    start: &Path,
    cmd: Cmd<'_>,
    after: &Snapshot,
    check: &dyn Fn(&Path) -> Result<(), String>,
) -> usize {
    let points = kill_points(start, cmd);
    if std::env::var_os("CRASH_SHOW_POINTS").is_some() {
        for p in &points {
            eprintln!("{name}: {}", p.line);
        }
    }
    assert!(
        points.len() > 2,
        "{name}: only {} kill points",
        points.len()
    );
    let mut failures = Vec::new();
    for (k, p) in points.iter().enumerate() {
        let dir = clone_root(start);
        run_killed(dir.path(), cmd, p);
        let at = format!("{name} kill point {k} ({})", p.line);
        if let Err(e) = check(dir.path()) {
            failures.push(format!("{at}: {e}"));
            continue;
        }
        run_cmd(dir.path(), cmd);
        let d = diff(&snapshot(dir.path()), after);
        if !d.is_empty() {
            failures.push(format!("{at}: the rerun does not converge:\n{d}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} trials failed; the first ones:\n{}",
        failures.len(),
        points.len(),
        failures[..failures.len().min(5)].join("\n")
    );
    eprintln!("{name}: {} kill points, all consistent", points.len());
    points.len()
}

/// The root an uninterrupted `stagehand args` leaves, starting from a copy of `start`.
pub fn uninterrupted(start: &Path, cmd: Cmd<'_>) -> tempfile::TempDir {
    let done = clone_root(start);
    run_cmd(done.path(), cmd);
    done
}
