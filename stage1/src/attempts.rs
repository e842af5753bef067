//! Boot counting for loaders that cannot count (QEMU `-kernel`, kexec, extlinux).
//!
//! State lives on the root filesystem in [`ATTEMPTS_DIR`], one entry per generation toplevel
//! (named by the toplevel's store basename, e.g. `abc…-nixos-system-host-2`):
//!
//! - `<base>+LEFT-DONE` — an empty file, BLS-style: the generation is being tried, LEFT boots
//!   remain, DONE were started (`<base>+LEFT` is read as DONE = 0);
//! - `<base>.good` — the generation has been marked good (blessed); it is never counted again;
//! - nothing — the generation is untried: its first boot creates `<base>+(TRIES-1)-1`.
//!
//! Every boot of a generation that is not good moves its counter by one atomic rename
//! (LEFT−1, DONE+1) before `switch_root`. A generation whose counter shows LEFT = 0 is not
//! booted again: stage 1 boots the newest older `system-N-link` that is marked good, else the
//! newest older one that still has tries left (untried counts as having tries), and says so on
//! the console. When no generation qualifies the requested one boots anyway — never brick.
//!
//! The decision ([`decide`]) is pure over a listing of the state directory and the profile
//! links; [`apply`] is the one rename (or create) on disk. The counter grammar and the paths
//! are common's (`common/src/boot_counting.rs`), shared with stage 2 and the boot crate;
//! [`stage1_json`] writes the receipt that `stagehand_boot::receipt::Stage1Receipt` reads
//! (by hand: stage 1 carries no JSON library). boot/README.md maps it all.

use std::path::{Path, PathBuf};

use stagehand_common::boot_counting::split_counter;
pub use stagehand_common::boot_counting::{Counter, ATTEMPTS_DIR, STAGE1_RECEIPT};
use stagehand_common::timing::{json_string as json_str, monotonic_us, Spans};

/// The profile links, relative to the new root.
pub const PROFILES_DIR: &str = "nix/var/nix/profiles";
/// Tries when `stagehand.tries=` is malformed.
pub const DEFAULT_TRIES: u32 = 3;

/// What the state directory says about one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No entry: never booted under counting.
    Untried,
    /// `<base>.good`.
    Good,
    /// `<base>+LEFT-DONE`; `file` is the entry's name as found on disk.
    Counting { counter: Counter, file: String },
}

impl State {
    fn has_tries(&self) -> bool {
        match self {
            State::Untried | State::Good => true,
            State::Counting { counter, .. } => counter.left > 0,
        }
    }

    /// Short form for logs and the receipt: `untried`, `good`, `+LEFT-DONE`.
    pub fn describe(&self) -> String {
        match self {
            State::Untried => "untried".into(),
            State::Good => "good".into(),
            State::Counting { counter, .. } => counter.to_string(),
        }
    }
}

/// One `system-N-link` and the basename of the toplevel it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub number: u32,
    pub base: String,
}

/// Why the booted generation was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The generation `init=` names.
    Requested,
    /// The requested one used up its tries; `from` failed `failed_boots` times.
    Fallback {
        from: String,
        from_number: Option<u32>,
        failed_boots: u32,
    },
    /// The requested one used up its tries but no other generation qualifies.
    Exhausted { failed_boots: u32 },
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The toplevel basename to boot.
    pub base: String,
    pub number: Option<u32>,
    pub reason: Reason,
    pub before: State,
    pub after: State,
}

/// The state of `base` in a listing of the state directory. A `.good` marker wins over a
/// counter left behind; of several counters the one with the fewest tries left wins.
pub fn state_of(base: &str, entries: &[String]) -> State {
    if entries
        .iter()
        .any(|e| e.strip_suffix(".good") == Some(base))
    {
        return State::Good;
    }
    entries
        .iter()
        .filter_map(|e| {
            split_counter(e)
                .filter(|(b, _)| *b == base)
                .map(|(_, c)| (c, e))
        })
        .min_by_key(|(c, _)| (c.left, u32::MAX - c.done_or_zero()))
        .map_or(State::Untried, |(counter, file)| State::Counting {
            counter,
            file: file.clone(),
        })
}

/// `system-N-link` → N.
pub fn profile_number(name: &str) -> Option<u32> {
    let n = name.strip_prefix("system-")?.strip_suffix("-link")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The state after one more boot of a generation in `state`.
fn after_boot(state: &State, tries: u32) -> State {
    match state {
        State::Good => State::Good,
        State::Untried => State::Counting {
            counter: Counter {
                left: tries.max(1) - 1,
                done: Some(1),
            },
            file: String::new(),
        },
        State::Counting { counter, .. } => State::Counting {
            counter: counter.after_boot(),
            file: String::new(),
        },
    }
}

/// Decide which generation boots. `requested` is the basename of the toplevel `init=`
/// resolved to; `entries` the state directory's names; `profiles` the `system-N-link`s.
pub fn decide(requested: &str, profiles: &[Profile], entries: &[String], tries: u32) -> Choice {
    let number_of = |base: &str| {
        profiles
            .iter()
            .filter(|p| p.base == base)
            .map(|p| p.number)
            .max()
    };
    let before = state_of(requested, entries);
    let failed_boots = match &before {
        State::Counting { counter, .. } if counter.left == 0 => counter.done_or_zero(),
        _ => {
            return Choice {
                base: requested.into(),
                number: number_of(requested),
                reason: Reason::Requested,
                after: after_boot(&before, tries),
                before,
            }
        }
    };
    let from_number = number_of(requested);
    let mut older: Vec<&Profile> = profiles
        .iter()
        .filter(|p| p.base != requested && from_number.is_none_or(|n| p.number < n))
        .collect();
    older.sort_by_key(|p| std::cmp::Reverse(p.number));
    let pick = older
        .iter()
        .find(|p| state_of(&p.base, entries) == State::Good)
        .or_else(|| {
            older
                .iter()
                .find(|p| state_of(&p.base, entries).has_tries())
        });
    match pick {
        Some(p) => {
            let state = state_of(&p.base, entries);
            Choice {
                base: p.base.clone(),
                number: Some(p.number),
                reason: Reason::Fallback {
                    from: requested.into(),
                    from_number,
                    failed_boots,
                },
                after: after_boot(&state, tries),
                before: state,
            }
        }
        None => Choice {
            base: requested.into(),
            number: from_number,
            reason: Reason::Exhausted { failed_boots },
            after: before.clone(),
            before,
        },
    }
}

/// `stagehand.tries=N`; absent or 0 means no counting. `Err` names a malformed value.
///
/// Counting is opt-in: a generation is only ever marked good by something that runs after
/// it booted (`stagehand.bless=stage2` today), so counting without a blesser would retire a
/// perfectly good generation after N boots. Whoever writes the boot entry with
/// `stagehand.tries=` must also arrange the blessing.
pub fn tries_from(value: Option<&str>) -> Result<u32, String> {
    match value {
        None => Ok(0),
        Some(v) => v.trim().parse().map_err(|_| {
            format!("stagehand.tries={v} is not a number; using {DEFAULT_TRIES} tries")
        }),
    }
}

/// Record the boot of `choice` on disk: one atomic rename (or an exclusive create for an
/// untried generation), then fsync of the directory. Returns the new entry's name, if any.
pub fn apply(state_dir: &Path, choice: &Choice) -> Result<Option<String>, String> {
    let State::Counting { counter, .. } = &choice.after else {
        return Ok(None);
    };
    let new_name = format!("{}{counter}", choice.base);
    let new_path = state_dir.join(&new_name);
    match &choice.before {
        State::Good => return Ok(None),
        State::Untried => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .create(state_dir)
                .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o755));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&new_path)
                .map_err(|e| format!("cannot create {}: {e}", new_path.display()))?;
            file.sync_all()
                .map_err(|e| format!("cannot sync {}: {e}", new_path.display()))?;
        }
        State::Counting { file, .. } => {
            if *file == new_name {
                return Ok(Some(new_name));
            }
            let old = state_dir.join(file);
            std::fs::rename(&old, &new_path).map_err(|e| {
                format!(
                    "cannot rename {} to {}: {e}",
                    old.display(),
                    new_path.display()
                )
            })?;
        }
    }
    sync_dir(state_dir)?;
    Ok(Some(new_name))
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

/// The names in the state directory (none when it does not exist yet).
pub fn list_state(state_dir: &Path) -> Result<Vec<String>, String> {
    match std::fs::read_dir(state_dir) {
        Ok(rd) => Ok(rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot list {}: {e}", state_dir.display())),
    }
}

/// The `system-N-link`s in `profiles_dir` with the basename of their targets.
pub fn list_profiles(profiles_dir: &Path) -> Vec<Profile> {
    let Ok(rd) = std::fs::read_dir(profiles_dir) else {
        return Vec::new();
    };
    let mut out: Vec<Profile> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let number = profile_number(e.file_name().to_str()?)?;
            let target = std::fs::read_link(e.path()).ok()?;
            let base = target.file_name()?.to_str()?.to_owned();
            Some(Profile { number, base })
        })
        .collect();
    out.sort_by_key(|p| p.number);
    out
}

/// The toplevel basename of a resolved init path (`/nix/store/<base>/init`); `None` when
/// init is not directly inside a store path (nothing to count).
pub fn toplevel_base(init: &str) -> Option<String> {
    let dir = Path::new(init).parent()?;
    if dir.parent() != Some(Path::new("/nix/store")) {
        return None;
    }
    dir.file_name()?.to_str().map(str::to_owned)
}

/// The state directory inside the new root.
pub fn state_dir(new_root: &Path) -> PathBuf {
    new_root.join(ATTEMPTS_DIR.trim_start_matches('/'))
}

/// Phase times of stage 1, microseconds of CLOCK_MONOTONIC.
#[derive(Debug, Clone, Default)]
pub struct Times {
    pub start_us: u64,
    /// Every step's start and end, in order (the boot timeline).
    pub phases: Spans,
    pub modules_us: u64,
    /// Waiting for devices, fsck and mounts (one phase in `root::mount_all`).
    pub mounts_us: u64,
    pub attempts_us: u64,
    pub end_us: u64,
    /// Time inside `finit_module` (the kernel reading, checking and initialising modules).
    pub finit_us: u64,
    /// Time blocked waiting for device nodes to appear (the disk's driver probing).
    pub device_wait_us: u64,
    /// Stage 1's peak resident set (`VmHWM`, through getrusage), read just before the
    /// receipt is written.
    pub peak_rss_kib: Option<u64>,
    /// Of that, in user space ([`crate::sys::Usage::user_cpu_us`]): stage 1's own code.
    pub user_cpu_us: Option<u64>,
    /// CPU time stage 1 used from `start_us` to the receipt (user and system,
    /// `finit_module` included, its checkers not): what of `total` was not spent waiting.
    pub cpu_us: u64,
    /// The process CPU clock at `start_us`.
    pub cpu_start_us: u64,
}

impl Times {
    /// Time in the filesystem checkers: the `fsck …` phases.
    pub fn fsck_us(&self) -> u64 {
        self.phases
            .0
            .iter()
            .filter(|p| p.name.starts_with("fsck "))
            .map(|p| p.end_us.saturating_sub(p.start_us))
            .sum()
    }

    /// Stage 1's own work: from its start to the receipt, less what the kernel and the
    /// checkers spend for it (`finit_module`, fsck) and the wait for the disk.
    pub fn own_us(&self) -> u64 {
        self.end_us
            .saturating_sub(self.start_us)
            .saturating_sub(self.finit_us)
            .saturating_sub(self.fsck_us())
            .saturating_sub(self.device_wait_us)
    }
}

/// The JSON stage 1 leaves in [`STAGE1_RECEIPT`] for stage 2 and the blesser: the form
/// `stagehand_boot::receipt::Stage1Receipt` reads (a test here holds the two together).
pub fn stage1_json(
    requested: Option<&str>,
    choice: Option<&Choice>,
    init: &str,
    tries: u32,
    times: &Times,
) -> String {
    let opt_num = |n: Option<u32>| n.map_or("null".to_string(), |n| n.to_string());
    let mut s = String::from("{\"version\":1");
    s.push_str(&format!(",\"init\":{}", json_str(init)));
    s.push_str(&format!(",\"tries\":{tries}"));
    match (requested, choice) {
        (Some(req), Some(c)) => {
            let (reason, from, from_number, failed) = match &c.reason {
                Reason::Requested => ("init=", None, None, 0),
                Reason::Fallback {
                    from,
                    from_number,
                    failed_boots,
                } => ("fallback", Some(from.as_str()), *from_number, *failed_boots),
                Reason::Exhausted { failed_boots } => ("exhausted", None, None, *failed_boots),
            };
            s.push_str(&format!(",\"requested\":{}", json_str(req)));
            s.push_str(&format!(",\"booted\":{}", json_str(&c.base)));
            s.push_str(&format!(",\"generation\":{}", opt_num(c.number)));
            s.push_str(&format!(",\"reason\":{}", json_str(reason)));
            if let Some(from) = from {
                s.push_str(&format!(
                    ",\"fallback\":{{\"from\":{},\"from_generation\":{},\"failed_boots\":{failed}}}",
                    json_str(from),
                    opt_num(from_number)
                ));
            } else if failed > 0 {
                s.push_str(&format!(",\"failed_boots\":{failed}"));
            }
            s.push_str(&format!(
                ",\"counter\":{{\"before\":{},\"after\":{}}}",
                json_str(&c.before.describe()),
                json_str(&c.after.describe())
            ));
        }
        _ => s.push_str(",\"reason\":\"init=\",\"counting\":false"),
    }
    if let Some(kib) = times.peak_rss_kib {
        s.push_str(&format!(",\"peak_rss_kib\":{kib}"));
    }
    s.push_str(&format!(
        ",\"times_us\":{{\"start\":{},\"modules\":{},\"mounts\":{},\"attempts\":{},\"end\":{},\"total\":{},\"finit_module\":{},\"device_wait\":{},\"fsck\":{},\"own\":{},\"cpu\":{}{},\"phases\":{}}}",
        times.start_us,
        times.modules_us,
        times.mounts_us,
        times.attempts_us,
        times.end_us,
        times.end_us.saturating_sub(times.start_us),
        times.finit_us,
        times.device_wait_us,
        times.fsck_us(),
        times.own_us(),
        times.cpu_us,
        times
            .user_cpu_us
            .map_or_else(String::new, |u| format!(",\"user_cpu\":{u}")),
        times.phases.to_json()
    ));
    s.push_str("}\n");
    s
}

/// The boot-counting step: after `init` (a resolved `/nix/store/<base>/init`) is known,
/// count this boot or pick a fallback, write [`STAGE1_RECEIPT`], and return the init to exec.
/// Problems with the state are logged and never stop the boot.
pub fn count_boot(
    new_root: &Path,
    cmdline: &stagehand_common::cmdline::Cmdline,
    init: String,
    times: &mut Times,
) -> String {
    let t = monotonic_us();
    let tries = tries_from(cmdline.get("stagehand.tries")).unwrap_or_else(|e| {
        log::warn!("{e}");
        DEFAULT_TRIES
    });
    let requested = toplevel_base(&init);
    let mut init = init;
    let mut choice = None;
    match (&requested, tries) {
        (_, 0) => {}
        (None, _) => log::info!("boot counting skipped: {init} is not <store path>/init"),
        (Some(req), _) => match list_state(&state_dir(new_root)) {
            Err(e) => log::warn!("boot counting skipped: {e}"),
            Ok(entries) => {
                let profiles = list_profiles(&new_root.join(PROFILES_DIR));
                let c = decide(req, &profiles, &entries, tries);
                let gen = |n: Option<u32>, base: &str| {
                    n.map_or_else(|| base.to_string(), |n| n.to_string())
                };
                match &c.reason {
                    Reason::Requested => {}
                    Reason::Fallback {
                        from,
                        from_number,
                        failed_boots,
                    } => {
                        log::warn!(
                            "generation {} failed {failed_boots} boots; booting generation {} instead",
                            gen(*from_number, from),
                            gen(c.number, &c.base)
                        );
                    }
                    Reason::Exhausted { failed_boots } => log::warn!(
                        "generation {} failed {failed_boots} boots and no older generation is \
                         left to try; booting it anyway",
                        gen(c.number, &c.base)
                    ),
                }
                let mut ok = true;
                if matches!(c.reason, Reason::Fallback { .. }) {
                    let fallback = format!("/nix/store/{}/init", c.base);
                    match crate::init_path::resolve_init(new_root, &fallback) {
                        Ok(i) => init = i,
                        Err(e) => {
                            log::error!("cannot boot the fallback generation: {e}; booting {init}");
                            ok = false;
                        }
                    }
                }
                if ok {
                    match apply(&state_dir(new_root), &c) {
                        Ok(_) => log::info!(
                            "boot attempt of generation {}: {} -> {}",
                            gen(c.number, &c.base),
                            c.before.describe(),
                            c.after.describe()
                        ),
                        Err(e) => log::warn!("cannot record the boot attempt: {e}"),
                    }
                    choice = Some(c);
                }
            }
        },
    }
    times.attempts_us = monotonic_us().saturating_sub(t);
    times.phases.since("boot counting", t);
    let usage = crate::sys::usage();
    times.peak_rss_kib = usage.map(|u| u.peak_rss_kib);
    times.user_cpu_us = usage.map(|u| u.user_cpu_us);
    times.cpu_us = stagehand_common::timing::process_cpu_us().saturating_sub(times.cpu_start_us);
    times.end_us = monotonic_us();
    let text = stage1_json(requested.as_deref(), choice.as_ref(), &init, tries, times);
    if let Err(e) =
        stagehand_common::atomic::write_file(Path::new(STAGE1_RECEIPT), text.as_bytes(), 0o644)
    {
        log::warn!("cannot write the stage-1 receipt: {e}");
    }
    init
}

#[cfg(test)]
mod tests;
