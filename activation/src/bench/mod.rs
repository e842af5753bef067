//! `stagehand bench [--reps N] [--dir DIR]` (hidden): times the etc and users steps on
//! generated NixOS-shaped inputs inside temporary roots — first run, a re-run without
//! changes, and a run after about 10 % of the inputs changed. Not a test: it prints numbers.

use std::fmt::Write as _;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod activation;

use crate::etc::{self, EtcOptions};
use crate::users::{self, UsersSpec};
use stagehand_common::rootfs::Root;

/// One generated system size.
pub struct Size {
    pub etc_entries: usize,
    pub users: usize,
    pub groups: usize,
}

/// Typical and stress sizes (also used by `vm-tests bench` for whole-process runs).
pub const SIZES: [Size; 2] = [
    Size {
        etc_entries: 300,
        users: 30,
        groups: 60,
    },
    Size {
        etc_entries: 3000,
        users: 1000,
        groups: 1000,
    },
];

fn io<T>(r: std::io::Result<T>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Write an etc tree of `n` entries into the store under `root_dir` for generation `gen`:
/// about 5 % copied files with sidecars, the rest symlinks, spread over nested directories
/// (`a.d/b.d/file`), like NixOS's. With `changed`, every tenth entry points at new contents.
pub fn make_etc(root_dir: &Path, gen: &str, n: usize, changed: bool) -> Result<String, String> {
    let tree = format!("/nix/store/{gen}-etc/etc");
    let host_tree = root_dir.join(tree.trim_start_matches('/'));
    for i in 0..n {
        let rel = match i % 10 {
            0..=4 => format!("file{i}.conf"),
            5..=7 => format!("dir{}.d/file{i}", i % 37),
            _ => format!("dir{}.d/sub{}/file{i}", i % 37, i % 5),
        };
        let version = if changed && i % 10 == 3 { "new" } else { "old" };
        let src = format!("/nix/store/{version}{i:05}-source");
        let host_src = root_dir.join(src.trim_start_matches('/'));
        if !host_src.exists() {
            io(
                std::fs::write(&host_src, format!("entry {i} {version}\n")),
                "write source",
            )?;
        }
        let host_entry = host_tree.join(&rel);
        if let Some(parent) = host_entry.parent() {
            io(std::fs::create_dir_all(parent), "mkdir tree")?;
        }
        io(symlink(&src, &host_entry), "symlink")?;
        if i % 20 == 7 {
            for (ext, value) in [(".mode", "0640\n"), (".uid", "+0\n"), (".gid", "+0\n")] {
                let mut p = host_entry.clone().into_os_string();
                p.push(ext);
                io(std::fs::write(PathBuf::from(p), value), "sidecar")?;
            }
        }
    }
    Ok(tree)
}

pub fn make_users(n_users: usize, n_groups: usize, changed: bool) -> String {
    let mut groups = Vec::new();
    for g in 0..n_groups {
        let gid = if g < n_groups / 2 {
            format!("{}", 2000 + g)
        } else {
            "null".to_owned()
        };
        groups.push(format!(
            r#"{{"name": "group{g}", "gid": {gid}, "members": ["user{}"]}}"#,
            g % n_users.max(1)
        ));
    }
    groups.push(r#"{"name": "users", "gid": 100, "members": []}"#.to_owned());
    let mut users = Vec::new();
    for u in 0..n_users {
        let system = u % 3 == 0;
        let desc = if changed && u % 10 == 4 {
            "changed"
        } else {
            "a user"
        };
        users.push(format!(
            r#"{{"name": "user{u}", "uid": null, "group": "users", "description": "{desc} {u}",
                "home": "{home}", "homeMode": "700", "createHome": {create},
                "isSystemUser": {system}, "shell": "/run/current-system/sw/bin/bash",
                "hashedPassword": "$6$abcdefgh$0123456789", "autoSubUidGidRange": {sub}}}"#,
            home = if system {
                "/var/empty".to_owned()
            } else {
                format!("/home/user{u}")
            },
            create = !system,
            sub = !system && u % 2 == 0,
        ));
    }
    format!(
        r#"{{"mutableUsers": true, "users": [{}], "groups": [{}]}}"#,
        users.join(","),
        groups.join(",")
    )
}

/// A scratch root, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(base: Option<&Path>, n: usize) -> Result<Scratch, String> {
        let base = base.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let p = base.join(format!("stagehand-bench-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        io(std::fs::create_dir_all(&p), "scratch dir")?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One timed run: wall-clock time, and the CPU time of this thread (user + system), which a
/// machine shared with other work inflates far less than the wall clock.
#[derive(Clone, Copy, Default)]
struct Sample {
    wall: Duration,
    cpu: Duration,
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn timed<T>(f: impl FnOnce() -> Result<T, String>) -> Result<(T, Sample), String> {
    let (w, c) = (Instant::now(), thread_cpu());
    let v = f()?;
    Ok((
        v,
        Sample {
            wall: w.elapsed(),
            cpu: thread_cpu().saturating_sub(c),
        },
    ))
}

#[derive(Default)]
struct Times {
    first: Vec<Sample>,
    again: Vec<Sample>,
    changed: Vec<Sample>,
    listing: Vec<Sample>,
    observe: Vec<Sample>,
    floor: Vec<Sample>,
}

/// "best wall / median CPU" in milliseconds.
fn cell(v: &[Sample]) -> String {
    let mut wall: Vec<Duration> = v.iter().map(|s| s.wall).collect();
    let mut cpu: Vec<Duration> = v.iter().map(|s| s.cpu).collect();
    wall.sort();
    cpu.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    format!(
        "{:.2} / {:.2}",
        ms(wall.first()),
        ms(cpu.get(cpu.len() / 2))
    )
}

fn sum(a: &[Sample], b: &[Sample]) -> Vec<Sample> {
    a.iter()
        .zip(b)
        .map(|(x, y)| Sample {
            wall: x.wall + y.wall,
            cpu: x.cpu + y.cpu,
        })
        .collect()
}

/// The least a first run can cost: one `mkdir` per directory and one `symlink` per link of
/// the tree, made in an empty directory with nothing checked, copied or flushed.
/// `dir` is made for it and must not exist.
fn floor_run(dir: &Path, listing: &etc::EtcTree) -> Result<Sample, String> {
    use rustix::fs::{Mode, OFlags};
    io(std::fs::create_dir(dir), "floor dir")?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = io(
        rustix::fs::open(dir, flags, Mode::empty()).map_err(Into::into),
        "floor dir",
    )?;
    let (_, t) = timed(|| {
        for e in &listing.entries {
            let made = match &e.kind {
                etc::EntryKind::Dir => {
                    rustix::fs::mkdirat(&fd, e.rel.as_str(), Mode::from_raw_mode(0o755))
                }
                etc::EntryKind::Symlink(t) => {
                    rustix::fs::symlinkat(t.as_str(), &fd, e.rel.as_str())
                }
                etc::EntryKind::File => continue,
            };
            io(made.map_err(Into::into), "floor")?;
        }
        Ok(())
    })?;
    Ok(t)
}

fn etc_run(root: &Root, tree: &str) -> Result<(Sample, Sample), String> {
    let (listing, list_time) =
        timed(|| etc::list_tree(root, Path::new(tree)).map_err(|e| e.to_string()))?;
    // Taken outside the timing, as `activate` takes it once for all steps.
    let held = crate::lock::lock(root).map_err(|e| e.to_string())?;
    let ((out, recheck), mut t) = timed(|| {
        etc::setup_etc_deferred(root, &listing, EtcOptions::default(), Some(&held))
            .map_err(|e| e.to_string())
    })?;
    if !out.issues.is_empty() {
        return Err(format!("etc issues: {:?}", out.issues));
    }
    // The step with its read-back as `activate` runs it when the later steps outlast the
    // clock tick: then the read-back is done, and its time is counted; the wait, which
    // `activate` spends on those steps (or skips, leaving the read-back to the next run),
    // is not.
    if let Some(recheck) = recheck {
        std::thread::sleep(Duration::from_millis(10));
        let (_, back) = timed(|| {
            let hurry = std::sync::atomic::AtomicBool::new(false);
            match recheck.finish(root, &listing, &hurry) {
                etc::ReadBack::Done => Ok(()),
                other => Err(format!("etc read-back: {other:?}")),
            }
        })?;
        t.wall += back.wall;
        t.cpu += back.cpu;
    }
    Ok((list_time, t))
}

fn users_run(root: &Root, spec: &UsersSpec) -> Result<Sample, String> {
    let (out, t) = timed(|| users::update_users(root, spec, false).map_err(|e| e.to_string()))?;
    if !out.errors.is_empty() {
        return Err(format!("users errors: {:?}", out.errors));
    }
    Ok(t)
}

/// `--prepare DIR [--stress]`: write one size's inputs into `DIR` (a root holding the etc
/// trees of generations `gena` and `genb` and the users specs `/a.json`, `/b.json`) and
/// stop, so that whole-process runs of `stagehand etc` / `stagehand users` can be timed or
/// traced from outside (hyperfine, strace).
fn prepare(dir: &Path, size: &Size) -> Result<(), String> {
    io(std::fs::create_dir_all(dir.join("nix/store")), "store")?;
    let a = make_etc(dir, "gena", size.etc_entries, false)?;
    let b = make_etc(dir, "genb", size.etc_entries, true)?;
    for (name, changed) in [("a.json", false), ("b.json", true)] {
        io(
            std::fs::write(dir.join(name), make_users(size.users, size.groups, changed)),
            "users spec",
        )?;
    }
    println!("{a}\n{b}\n/a.json\n/b.json");
    Ok(())
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut reps = 5usize;
    let mut base: Option<PathBuf> = None;
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut prepare_dir: Option<PathBuf> = None;
    let mut stress = false;
    let mut whole_activation = false;
    let mut before: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--prepare" => {
                prepare_dir = Some(PathBuf::from(
                    it.next().ok_or("--prepare needs a directory")?,
                ));
            }
            "--stress" => stress = true,
            "--reps" => {
                reps = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--reps needs a number")?;
            }
            "--dir" => {
                let d = PathBuf::from(it.next().ok_or("--dir needs a directory")?);
                dirs.push(d.clone());
                base = Some(d);
            }
            "--activate" => whole_activation = true,
            "--before" => {
                before = Some(PathBuf::from(it.next().ok_or("--before needs a binary")?));
            }
            "--sample" => {
                return activation::sample(Path::new(
                    it.next().ok_or("--sample needs a directory")?,
                ));
            }
            "--floor" => {
                return activation::floor_process(Path::new(
                    it.next().ok_or("--floor needs a root")?,
                ));
            }
            other => return Err(format!("usage: unknown bench argument {other:?}")),
        }
    }
    if let Some(dir) = prepare_dir {
        return prepare(&dir, &SIZES[usize::from(stress)]);
    }
    if whole_activation {
        if dirs.is_empty() {
            dirs.push(std::env::temp_dir());
        }
        return activation::run(reps, &dirs, before.as_deref());
    }
    let mut report = String::new();
    for size in &SIZES {
        let mut etc_t = Times::default();
        let mut users_t = Times::default();
        for rep in 0..reps.max(1) {
            let dir = Scratch::new(base.as_deref(), rep)?;
            let r = dir.0.as_path();
            io(std::fs::create_dir_all(r.join("nix/store")), "store")?;
            let gen_a = make_etc(r, "gena", size.etc_entries, false)?;
            let gen_b = make_etc(r, "genb", size.etc_entries, true)?;
            let root = io(Root::open(r), "root")?;
            // The generated inputs must be on disk before timing starts: the first run's
            // syncfs would otherwise pay for writing them, which a real store never needs.
            io(stagehand_common::rootfs::sync_fs(root.fd()), "sync")?;
            let spec_a = UsersSpec::from_json(
                Path::new("a.json"),
                make_users(size.users, size.groups, false).as_bytes(),
            )
            .map_err(|e| e.to_string())?;
            let spec_b = UsersSpec::from_json(
                Path::new("b.json"),
                make_users(size.users, size.groups, true).as_bytes(),
            )
            .map_err(|e| e.to_string())?;

            users_t.first.push(users_run(&root, &spec_a)?);
            io(stagehand_common::rootfs::sync_fs(root.fd()), "sync")?;
            users_t.again.push(users_run(&root, &spec_a)?);
            users_t.changed.push(users_run(&root, &spec_b)?);

            let (l, d) = etc_run(&root, &gen_a)?;
            etc_t.listing.push(l);
            etc_t.first.push(d);
            let listing = etc::list_tree(&root, Path::new(&gen_a)).map_err(|e| e.to_string())?;
            let (_state, t) = timed(|| etc::observe(&root, &listing).map_err(|e| e.to_string()))?;
            etc_t.observe.push(t);
            etc_t.floor.push(floor_run(&r.join("floor"), &listing)?);
            etc_t.again.push(etc_run(&root, &gen_a)?.1);
            etc_t.changed.push(etc_run(&root, &gen_b)?.1);
        }
        let _ = writeln!(
            report,
            "| etc, {} entries | {} | {} | {} | {} |",
            size.etc_entries,
            cell(&etc_t.first),
            cell(&etc_t.again),
            cell(&etc_t.changed),
            cell(&etc_t.listing),
        );
        let _ = writeln!(
            report,
            "| users, {} users / {} groups | {} | {} | {} | – |",
            size.users,
            size.groups,
            cell(&users_t.first),
            cell(&users_t.again),
            cell(&users_t.changed),
        );
        let _ = writeln!(
            report,
            "| **users + etc** | {} | {} | {} | – |",
            cell(&sum(&users_t.first, &etc_t.first)),
            cell(&sum(&users_t.again, &etc_t.again)),
            cell(&sum(&users_t.changed, &etc_t.changed)),
        );
        let _ = writeln!(
            report,
            "| (a full walk of /etc, what the no-change run costs without its cache) | – | {} | – | – |",
            cell(&etc_t.observe),
        );
        let _ = writeln!(
            report,
            "| (floor: only a mkdir or symlink per tree directory or link) | {} | – | – | – |",
            cell(&etc_t.floor),
        );
    }
    println!("milliseconds: best wall-clock time / median CPU time of the thread, of {reps} runs");
    println!("| input | first run | no-change run | 10 % changed | tree listing (compile time) |");
    println!("|---|---|---|---|---|");
    print!("{report}");
    Ok(())
}
