//! Runs inside the test VM as `stagehand-probe.service` and prints what a user of the
//! booted system could check by hand, one fact per line:
//!
//! ```text
//! STAGEHAND-PROBE <key>=<value>
//! ```
//!
//! A fact that cannot be read is printed as `<key>=error: <why>`; the probe itself never
//! fails, so the host always gets the full list followed by `STAGEHAND-PROBE done`.
//! It also writes one line to `/dev/kmsg` when it starts, so the host can read the
//! kernel's timestamp of "systemd ran our unit".
//!
//! std (and the raw-syscall clock of `stagehand_common`) only: it is linked statically and
//! needs nothing from the guest's /usr.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

const PREFIX: &str = "STAGEHAND-PROBE";

fn emit(key: &str, value: Result<String, String>) {
    let value = value.unwrap_or_else(|e| format!("error: {e}"));
    // One write per line, so the kernel's console output cannot split it.
    let line = format!("{PREFIX} {key}={value}\n");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

fn readlink(path: &str) -> Result<String, String> {
    fs::read_link(path)
        .map(|p| p.display().to_string())
        .map_err(|e| format!("{path}: {e}"))
}

fn read_trimmed(path: &str) -> Result<String, String> {
    fs::read_to_string(path)
        .map(|s| s.trim_end().to_string())
        .map_err(|e| format!("{path}: {e}"))
}

/// The `/etc/passwd` (or group) line of `name`.
fn db_line(db: &str, name: &str) -> Result<String, String> {
    let text = fs::read_to_string(db).map_err(|e| format!("{db}: {e}"))?;
    db_line_in(&text, name).ok_or_else(|| format!("no {name} in {db}"))
}

/// `mode=0400 uid=1000 gid=0` of a path (not following a final symlink).
fn ownership(path: &str) -> Result<String, String> {
    let md = fs::symlink_metadata(path).map_err(|e| format!("{path}: {e}"))?;
    let kind = if md.file_type().is_symlink() {
        "symlink"
    } else if md.is_dir() {
        "dir"
    } else {
        "file"
    };
    Ok(format!(
        "{kind} mode={:04o} uid={} gid={}",
        md.mode() & 0o7777,
        md.uid(),
        md.gid()
    ))
}

/// `ro ext4` / `rw tmpfs` for the topmost mount at `mount_point`, from /proc/self/mountinfo.
fn mount_state(mount_point: &str) -> Result<String, String> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    mount_state_in(&text, mount_point)
}

fn mount_state_in(mountinfo: &str, mount_point: &str) -> Result<String, String> {
    // Fields: id parent major:minor root mount-point mount-options [optional...] - fstype
    // source super-options. Mounts stack: the last line for a mount point is what is seen.
    let found = mountinfo
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(mount_point))
        .ok_or_else(|| format!("{mount_point} is not a mount point"))?;
    let opts = found.split(' ').nth(5).unwrap_or("");
    let ro = opts.split(',').any(|o| o == "ro");
    let fstype = found
        .split(" - ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or("?");
    Ok(format!("{} {fstype}", if ro { "ro" } else { "rw" }))
}

/// `SOURCE FS-ROOT` of the topmost mount at `mount_point` (`/dev/vda2 /`, `/dev/vda /@` for
/// a btrfs subvolume, `/dev/md127 /`): which device and which part of it is mounted.
fn mount_source(mount_point: &str) -> Result<String, String> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    mount_source_in(&text, mount_point)
}

fn mount_source_in(mountinfo: &str, mount_point: &str) -> Result<String, String> {
    let found = mountinfo
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(mount_point))
        .ok_or_else(|| format!("{mount_point} is not a mount point"))?;
    let fs_root = found.split(' ').nth(3).unwrap_or("?");
    let source = found
        .split(" - ")
        .nth(1)
        .and_then(|r| r.split(' ').nth(1))
        .unwrap_or("?");
    Ok(format!("{source} {fs_root}"))
}

/// The line of `name` in a passwd/group-style database.
fn db_line_in(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find(|l| l.split(':').next() == Some(name))
        .map(str::to_string)
}

fn log_to_kmsg(msg: &str) {
    if let Ok(mut f) = fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = f.write_all(format!("<6>guest-probe: {msg}\n").as_bytes());
    }
}

/// `guest-probe connect PATH`: connect to a Unix stream socket, print what the other end
/// says until it hangs up (the switch suite's socket test; the guest has no socat).
fn connect(path: &str) -> std::process::ExitCode {
    use std::io::Read;
    let mut reply = String::new();
    match std::os::unix::net::UnixStream::connect(path)
        .and_then(|mut s| s.read_to_string(&mut reply))
    {
        Ok(_) => {
            print!("{reply}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("guest-probe: cannot talk to {path}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `guest-probe serve-hello`: a socket-activated service (`StandardInput=socket`, so the
/// listening socket is stdin) that answers every connection with `hello` — what
/// switch-test.nix's Python server does.
fn serve_hello() -> std::process::ExitCode {
    use std::io::Write;
    use std::os::fd::AsFd;
    let fd = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("guest-probe: no socket on stdin: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let listener = std::os::unix::net::UnixListener::from(fd);
    for conn in listener.incoming() {
        match conn {
            Ok(mut c) => {
                let _ = c.write_all(b"hello");
            }
            Err(e) => {
                eprintln!("guest-probe: accept: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    std::process::ExitCode::SUCCESS
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match &args[..] {
        [_, verb, path] if verb == "connect" => return connect(path),
        [_, verb] if verb == "serve-hello" => return serve_hello(),
        _ => {}
    }
    probe();
    std::process::ExitCode::SUCCESS
}

fn probe() {
    log_to_kmsg("started");
    // CLOCK_MONOTONIC right after that kmsg line got its printk stamp: the host lines the
    // boot receipt's clock up with the console's stamps by this pair (under emulation the
    // two clocks differ by tens of milliseconds).
    emit(
        "started.monotonic-us",
        Ok(stagehand_common::timing::monotonic_us().to_string()),
    );
    emit("pid1.comm", read_trimmed("/proc/1/comm"));
    emit("pid1.exe", readlink("/proc/1/exe"));
    emit("ppid", Ok(std::os::unix::process::parent_id().to_string()));
    emit("booted-system", readlink("/run/booted-system"));
    emit("current-system", readlink("/run/current-system"));
    emit("passwd.alice", db_line("/etc/passwd", "alice"));
    emit("passwd.messagebus", db_line("/etc/passwd", "messagebus"));
    emit("group.wheel", db_line("/etc/group", "wheel"));
    emit("group.shadow", db_line("/etc/group", "shadow"));
    emit("etc.hostname.link", readlink("/etc/hostname"));
    emit("etc.hostname", read_trimmed("/etc/hostname"));
    emit("hostname", read_trimmed("/proc/sys/kernel/hostname"));
    emit("etc.static.link", readlink("/etc/static"));
    // The whole account databases (names only for shadow), `|` between lines.
    for db in ["/etc/passwd", "/etc/group", "/etc/subuid", "/etc/subgid"] {
        emit(
            &format!("db{}", db.replace('/', ".")),
            read_trimmed(db).map(|t| t.replace('\n', "|")),
        );
    }
    emit(
        "db.etc.shadow.names",
        read_trimmed("/etc/shadow").map(|t| {
            let names: Vec<&str> = t.lines().filter_map(|l| l.split(':').next()).collect();
            names.join("|")
        }),
    );
    emit("etc.secret", ownership("/etc/stagehand-secret"));
    emit("etc.shadow", ownership("/etc/shadow"));
    emit("etc.machine-id", ownership("/etc/machine-id"));
    // A third-party activation snippet's secret (the NixOS-layout fixture's setupSecrets).
    emit("run.secret", ownership("/run/secrets/stagehand-fixture"));
    emit(
        "run.secret.text",
        read_trimmed("/run/secrets/stagehand-fixture"),
    );
    // What the NixOS-layout fixture's boot.postBootCommands wrote.
    emit(
        "run.postboot",
        read_trimmed("/run/stagehand-fixture-postboot"),
    );
    // alice's password field (a fixture hash, not a secret), to see it reached /etc/shadow.
    emit(
        "shadow.alice",
        db_line("/etc/shadow", "alice").map(|l| l.split(':').nth(1).unwrap_or("").to_string()),
    );
    emit("bin.sh.link", readlink("/bin/sh"));
    emit("usr.bin.env.link", readlink("/usr/bin/env"));
    emit("nix-store.mount", mount_state("/nix/store"));
    emit("root.mount", mount_state("/"));
    emit("root.source", mount_source("/"));
    emit(
        "uptime",
        read_trimmed("/proc/uptime").map(|u| u.split(' ').next().unwrap_or("").to_string()),
    );
    // Stage 2's boot receipt on one line (pretty JSON has no newline inside a string), for
    // the host's boot timeline.
    emit(
        "boot-receipt",
        read_trimmed("/run/stagehand/boot.json")
            .map(|r| r.lines().map(str::trim).collect::<Vec<_>>().join(" ")),
    );
    log_to_kmsg("done");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{PREFIX} done\n").as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 254:0 /nix/store /nix/store rw,relatime shared:2 - ext4 /dev/vda rw
24 23 254:0 /nix/store /nix/store ro,nosuid,nodev,relatime shared:3 - ext4 /dev/vda rw
25 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=4k
";

    #[test]
    fn the_topmost_mount_counts() {
        assert_eq!(
            mount_state_in(MOUNTINFO, "/nix/store").as_deref(),
            Ok("ro ext4")
        );
        assert_eq!(mount_state_in(MOUNTINFO, "/").as_deref(), Ok("rw ext4"));
        assert_eq!(
            mount_state_in(MOUNTINFO, "/dev").as_deref(),
            Ok("rw devtmpfs")
        );
        assert!(mount_state_in(MOUNTINFO, "/nix").is_err());
        assert_eq!(mount_source_in(MOUNTINFO, "/").as_deref(), Ok("/dev/vda /"));
        assert_eq!(
            mount_source_in("30 1 0:31 /@ / rw - btrfs /dev/vda rw,subvol=/@\n", "/").as_deref(),
            Ok("/dev/vda /@")
        );
    }

    #[test]
    fn finds_whole_names_only() {
        let passwd = "root:x:0:0::/root:/bin/sh\nalice2:x:1001:100::/:/bin/sh\nalice:x:1000:100::/:/bin/sh\n";
        assert_eq!(
            db_line_in(passwd, "alice").as_deref(),
            Some("alice:x:1000:100::/:/bin/sh")
        );
        assert_eq!(db_line_in(passwd, "bob"), None);
    }
}
