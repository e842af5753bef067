//! Issue 17: NixOS's `nixos/tests/switch-test.nix` against our `switch-to-configuration`
//! under real systemd. Every specialisation of the original is a generation
//! ([`crate::switch_suite_configs`]); its test script is a table of steps
//! ([`crate::switch_suite_steps`]). One boot runs a whole sequence: a oneshot driver in the
//! guest runs each step, keeps its exit status and complete output, and at the end writes
//! them all to a second disk (the results disk, length-framed so nothing on the console can
//! garble them); the host reads that disk after the VM powered off and asserts each step.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::console::PROBE_DONE;
use crate::generation::{ldd, EtcEntry, SystemImage, PROBE_UNIT};
use crate::host::run;
use crate::qemu::Vm;
use crate::scenarios::{Inputs, Outcome, FIRST_LINE};
use crate::stage1_scenarios::static_busybox;
use crate::store::StoreBuilder;
use crate::switch_suite_configs::{configs, Config, Progs};
use crate::switch_suite_steps::{self as steps, Run, Seq, Step};
use crate::tree::{install_host_path, Node, Tree};
use crate::uefi_scenarios::build_stagehand;

const DRIVER_UNIT: &str = "stagehand-switch-suite.service";
const MARK: &str = "SUITE-STEP ";
const DONE: &str = "SUITE-DONE";
/// A whole sequence under TCG on a shared machine; steps take 1-5 s each.
const SUITE_LIMIT: std::time::Duration = std::time::Duration::from_secs(900);

/// Host programs the guest needs at their Debian paths (with their libraries): systemctl,
/// the mount and swap tools systemd runs, `flock` for the lock test, bash for activation
/// snippets, and the fstab generator that turns `/etc/fstab` into units.
const HOST_PROGRAMS: &[&str] = &[
    "/usr/bin/systemctl",
    "/usr/bin/mount",
    "/usr/bin/umount",
    "/usr/sbin/swapon",
    "/usr/sbin/swapoff",
    "/usr/bin/flock",
    "/usr/bin/bash",
    "/usr/lib/systemd/system-generators/systemd-fstab-generator",
];

/// `switch-suite-services`: the preamble, pre-switch checks, actions, init interface,
/// systemd restarts, an aborted switch, the lock, services, failing units, the unit file
/// parser, the activation script's lists.
pub fn switch_suite_services(inputs: &Inputs) -> Result<Outcome> {
    run_suite(inputs, "switch-suite-services", &steps::services())
}

/// `switch-suite-units`: fstab mounts, swaps, sockets, mount units, timers, targets,
/// paths, slices, D-Bus reloads, generators.
pub fn switch_suite_units(inputs: &Inputs) -> Result<Outcome> {
    run_suite(inputs, "switch-suite-units", &steps::unit_types())
}

/// The programs' store path and the guest-visible paths the driver needs.
struct Guest {
    progs: Progs,
    busybox_bin: String,
    probe: String,
    checks: BTreeMap<&'static str, String>,
}

fn run_suite(inputs: &Inputs, name: &str, seq: &Seq) -> Result<Outcome> {
    let dir = inputs.scenario_dir(name)?;
    let (_, initrd) = inputs.initrd_in(&dir, |_| {})?;
    let stagehand = build_stagehand(inputs)?;
    let mut image = SystemImage::new(&inputs.systemd)?;
    for p in HOST_PROGRAMS {
        install_host_path(&mut image.root, Path::new(p))?;
        for lib in ldd(Path::new(p))? {
            install_host_path(&mut image.root, &lib)?;
        }
    }
    // systemd loads autofs4 at boot for automount units (Debian builds it as a module).
    let modules = crate::nixos_tools::KernelModules::build(
        &inputs.kernel.modules_dir,
        &inputs.kernel.version,
        &["autofs4"],
        &[],
        &dir.join("modules"),
    )?;
    image.root.insert(
        &format!("usr/lib/modules/{}", inputs.kernel.version),
        Node::Dir(crate::nixos_tools::host_dir_tree(&modules.modules_dir())?),
    )?;
    let busybox = static_busybox(&inputs.workspace.cache_dir())?;
    let bb = add_busybox(&mut image.store, &busybox)?;
    // The driver and the socket test name the guest probe's store path, which every
    // generation shares.
    let probe_store =
        crate::generation::add_guest_probe(&mut image.store, &inputs.bins.guest_probe)?;
    let probe = probe_store.join("bin/guest-probe");
    let mut guest = Guest {
        progs: Progs {
            bin: bb.clone(),
            probe: probe.clone(),
        },
        busybox_bin: bb.clone(),
        probe,
        checks: BTreeMap::new(),
    };
    for (check, text) in [
        (
            "succeeds",
            "config=\"$1\"\naction=\"$2\"\necho \"this should succeed (config: $config, action: $action)\"\n\
             [ \"$action\" = \"check\" ] || [ \"$action\" = \"test\" ]\n",
        ),
        (
            "failing",
            "config=\"$1\"\naction=\"$2\"\necho \"this should succeed (config: $config, action: $action)\"\n\
             [ \"$action\" = \"check\" ] || [ \"$action\" = \"test\" ] || exit 1\necho this will fail\nfalse\n",
        ),
    ] {
        let script = image
            .store
            .add_text(&format!("pre-switch-check-{check}"), text)?;
        guest
            .checks
            .insert(check, format!("{bb}/sh {}", script.as_str()));
    }
    let all = configs(&guest.progs);
    let numbers: BTreeMap<&str, u32> = all
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name, i as u32 + 1))
        .collect();
    let driver = image
        .store
        .add_text("switch-suite.sh", driver_script(seq, &guest, &numbers)?)?;
    for (i, cfg) in all.iter().enumerate() {
        let spec = generation_spec(
            inputs,
            i as u32 + 1,
            &initrd,
            &stagehand,
            cfg,
            &guest,
            driver.as_str(),
            &mut image.store,
        )?;
        image.add_generation(&spec)?;
    }
    // systemd re-executes itself from its compiled-in path; NixOS's patched systemd comes
    // back from the generation's. Without this link every switch after the first
    // re-execution would find a different systemd running and re-execute it again.
    let systemd_store = g1_systemd(&image)?;
    image.root.take("usr/lib/systemd/systemd");
    image.root.insert(
        "usr/lib/systemd/systemd",
        Node::symlink(format!("{systemd_store}/lib/systemd/systemd")),
    )?;
    let img = root_disk_sized(&image, &dir)?;
    let results = dir.join("results.img");
    std::fs::write(&results, vec![0u8; 8 << 20])
        .with_context(|| format!("writing {}", results.display()))?;

    let log = dir.join("console.log");
    let g1 = image
        .generations
        .first()
        .context("the suite has no generation")?
        .clone();
    let mut cfg = inputs.vm_config(
        &initrd,
        vec![img, results.clone()],
        g1.cmdline(),
        log.clone(),
    );
    cfg.timeout = SUITE_LIMIT;
    let mut out = Outcome {
        log: Some(log),
        ..Outcome::default()
    };
    let mut vm = Vm::start(&cfg)?;
    let waited = (|| -> Result<()> {
        vm.wait_for("stage1: switching root", FIRST_LINE)?;
        vm.wait_for(DONE, SUITE_LIMIT)?;
        vm.wait_for(PROBE_DONE, FIRST_LINE)?;
        vm.wait_exit(FIRST_LINE)?;
        Ok(())
    })();
    let elapsed = vm.elapsed().as_secs_f64();
    if let Err(e) = waited {
        out.failures.push(format!("{e:#}"));
        out.notes.push(vm.failure_context(40));
    }
    let bytes =
        std::fs::read(&results).with_context(|| format!("reading {}", results.display()))?;
    let got = parse_results(&bytes);
    check_steps(&mut out, seq, &got);
    out.notes.push(format!(
        "QEMU start → {} steps done, VM gone: {elapsed:.1} s",
        seq.steps.len()
    ));
    Ok(out)
}

/// The systemd store path the generations share.
fn g1_systemd(image: &SystemImage) -> Result<String> {
    let g = image
        .generations
        .first()
        .context("the suite has no generation")?;
    if image.generations.iter().any(|o| o.systemd != g.systemd) {
        bail!("the suite's generations differ in systemd");
    }
    Ok(g.systemd.as_str().to_string())
}

/// A 512 MiB root: some sixty generations and the host programs.
fn root_disk_sized(image: &SystemImage, dir: &Path) -> Result<PathBuf> {
    let img = dir.join("root.img");
    image
        .write_ext4(&img, 512, crate::scenarios::ROOT_LABEL)
        .context("building the disk image")?;
    Ok(img)
}

/// busybox with a link per applet, as `<store>/bin/<applet>`; returns that `bin`.
fn add_busybox(store: &mut StoreBuilder, busybox: &Path) -> Result<String> {
    let list = run(Command::new(busybox).arg("--list"))?;
    let mut t = Tree::new();
    t.insert("bin/busybox", Node::executable(busybox))?;
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/'))
    {
        if applet != "busybox" {
            t.insert(&format!("bin/{applet}"), Node::symlink("busybox"))?;
        }
    }
    Ok(store.add("busybox", Node::Dir(t))?.join("bin"))
}

#[allow(clippy::too_many_arguments)]
fn generation_spec(
    inputs: &Inputs,
    number: u32,
    initrd: &Path,
    stagehand: &Path,
    cfg: &Config,
    guest: &Guest,
    driver: &str,
    store: &mut StoreBuilder,
) -> Result<crate::generation::GenerationSpec> {
    let mut spec = inputs.generation(number, initrd, &inputs.bins.stage2);
    spec.label = format!("switch-test {}", cfg.name);
    spec.switch_to_configuration = Some(stagehand.to_path_buf());
    // systemd's status lines would only slow the serial console down.
    for p in spec.kernel_params.iter_mut() {
        if p == "systemd.show_status=1" {
            *p = "systemd.show_status=0".into();
        }
    }
    for (path, text) in &cfg.files {
        spec.etc.push(EtcEntry::Text {
            path: path.clone(),
            text: text.clone(),
        });
    }
    for (path, target) in &cfg.links {
        spec.etc.push(EtcEntry::Link {
            path: path.clone(),
            target: target.clone(),
        });
    }
    if let Some((name, script)) = &cfg.generator {
        let file = store.add(name, Node::bytes(script.clone().into_bytes(), 0o555))?;
        spec.etc.push(EtcEntry::Link {
            path: format!("systemd/system-generators/{name}"),
            target: file.as_str().to_string(),
        });
    }
    spec.etc.extend(driver_units(driver));
    spec.toplevel_files
        .push(("init-interface-version".into(), cfg.init_interface.into()));
    spec.activation
        .insert("shell".into(), json!("/usr/bin/bash"));
    spec.activation.insert(
        "path".into(),
        json!([guest.busybox_bin, "/usr/bin", "/usr/sbin"]),
    );
    if let Some(text) = &cfg.snippet {
        spec.activation.insert(
            "snippets".into(),
            json!([{ "name": "restart-and-reload-test", "deps": [], "text": text,
                     "supportsDryActivation": true }]),
        );
    }
    Ok(spec)
}

/// The driver's unit, the same in every generation (so no switch touches it), and the
/// probe (which powers the VM off) ordered after it.
fn driver_units(driver: &str) -> Vec<EtcEntry> {
    vec![
        EtcEntry::unit(
            DRIVER_UNIT,
            format!(
                "[Unit]\nDescription=switch-test.nix, ported\nDefaultDependencies=no\n\
                 After=default.target\n\n[Service]\nType=oneshot\n\
                 ExecStart=/usr/bin/bash {driver}\nTimeoutStartSec=infinity\n\
                 StandardOutput=tty\nStandardError=tty\nTTYPath=/dev/console\nTTYReset=no\n\
                 TTYVHangup=no\n"
            ),
        ),
        EtcEntry::Link {
            path: format!("systemd/system/default.target.wants/{DRIVER_UNIT}"),
            target: format!("../{DRIVER_UNIT}"),
        },
        EtcEntry::unit(
            &format!("{PROBE_UNIT}.d/after-driver.conf"),
            format!("[Unit]\nAfter={DRIVER_UNIT}\n"),
        ),
    ]
}

/// `'…'` for the shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `@STC(name)@`, `@CHECK(name)@` and `@PROBE@` in `text`, resolved.
fn resolve(text: &str, guest: &Guest, numbers: &BTreeMap<&str, u32>) -> Result<String> {
    let mut out = text.replace("@PROBE@", &guest.probe);
    for (tag, f) in [("@STC(", 0), ("@CHECK(", 1)] {
        while let Some(start) = out.find(tag) {
            let rest = &out[start + tag.len()..];
            let Some(end) = rest.find(")@") else {
                bail!("unterminated {tag} in {text:?}");
            };
            let name = &rest[..end];
            let value = if f == 0 {
                let n = numbers
                    .get(name)
                    .with_context(|| format!("no generation {name:?} for {text:?}"))?;
                format!(
                    "{}/bin/switch-to-configuration",
                    crate::generation::profile_link(*n)
                )
            } else {
                guest
                    .checks
                    .get(name)
                    .with_context(|| format!("no check {name:?}"))?
                    .clone()
            };
            out = format!("{}{value}{}", &out[..start], &rest[end + 2..]);
        }
    }
    Ok(out)
}

/// The driver: every step in order, its output and exit status framed into a log that
/// ends up on the results disk.
fn driver_script(seq: &Seq, guest: &Guest, numbers: &BTreeMap<&str, u32>) -> Result<String> {
    let bb = &guest.busybox_bin;
    let mut s = format!(
        "export PATH={bb}:/usr/bin:/usr/sbin SHELL={bb}/sh\n\
         mkdir -p /run/suite\n: > /run/suite/log\n\
         step() {{\n  idx=$1; shift\n  \"$@\" > /run/suite/out 2>&1 < /dev/null\n  rc=$?\n\
         \x20 len=$(wc -c < /run/suite/out)\n\
         \x20 {{ echo \"@@STEP $idx $rc $len\"; cat /run/suite/out; echo; }} >> /run/suite/log\n\
         \x20 echo \"{MARK}$idx exit=$rc\"\n}}\n"
    );
    for (i, step) in seq.steps.iter().enumerate() {
        let cmd = match &step.run {
            Run::Switch {
                config,
                action,
                env,
            } => {
                let stc = resolve(&format!("@STC({config})@"), guest, numbers)?;
                let env = resolve(env, guest, numbers)?;
                let env = if env.is_empty() {
                    String::new()
                } else {
                    let (k, v) = env.split_once('=').context("env is K=V")?;
                    format!("env {k}={} ", quote(v))
                };
                format!("{env}timeout 600 {stc} {action}")
            }
            Run::Shell(c) => format!("sh -c {}", quote(&resolve(c, guest, numbers)?)),
        };
        writeln!(s, "step {i} {cmd}")?;
    }
    writeln!(
        s,
        "echo @@END >> /run/suite/log\ncat /run/suite/log > /dev/vdb\nsync\necho {DONE}"
    )?;
    Ok(s)
}

/// One step's result from the results disk.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Got {
    pub exit: i32,
    pub output: String,
}

/// `@@STEP idx rc len\n<len bytes>\n` frames up to `@@END`.
pub(crate) fn parse_results(bytes: &[u8]) -> BTreeMap<usize, Got> {
    let mut out = BTreeMap::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let header = String::from_utf8_lossy(&bytes[pos..pos + nl]).into_owned();
        pos += nl + 1;
        let mut w = header.split_whitespace();
        if w.next() != Some("@@STEP") {
            break;
        }
        let nums: Vec<i64> = w.filter_map(|x| x.parse().ok()).collect();
        let [idx, rc, len] = nums[..] else { break };
        let (Ok(idx), Ok(len)) = (usize::try_from(idx), usize::try_from(len)) else {
            break;
        };
        let Some(body) = bytes.get(pos..pos + len) else {
            break;
        };
        out.insert(
            idx,
            Got {
                exit: rc as i32,
                output: String::from_utf8_lossy(body).into_owned(),
            },
        );
        pos += len + 1;
    }
    out
}

/// What is wrong with one step's result (empty: it passed).
pub(crate) fn judge(step: &Step, got: &Got) -> Vec<String> {
    let mut bad = Vec::new();
    if !step.exit.accepts(got.exit) {
        bad.push(format!("exit {} (want {:?})", got.exit, step.exit));
    }
    for c in &step.contains {
        if !got.output.contains(c.as_str()) {
            bad.push(format!("lacks {c:?}"));
        }
    }
    for (a, b) in &step.ordered {
        let at = |s: &str| got.output.find(s);
        if !matches!((at(a), at(b)), (Some(x), Some(y)) if x < y) {
            bad.push(format!("{a:?} does not come before {b:?}"));
        }
    }
    for l in &step.lacks {
        if got.output.contains(l.as_str()) {
            bad.push(format!("has {l:?}"));
        }
    }
    bad
}

fn describe(step: &Step) -> String {
    match &step.run {
        Run::Switch {
            config,
            action,
            env,
        } if env.is_empty() => format!("{config} {action}"),
        Run::Switch {
            config,
            action,
            env,
        } => format!("{env} {config} {action}"),
        Run::Shell(c) => format!("`{c}`"),
    }
}

/// Every step judged; per subtest, how many steps passed.
fn check_steps(out: &mut Outcome, seq: &Seq, got: &BTreeMap<usize, Got>) {
    let mut per: Vec<(&str, usize, usize)> = Vec::new();
    for (i, step) in seq.steps.iter().enumerate() {
        let bad = match got.get(&i) {
            Some(g) => judge(step, g),
            None => vec!["no result (the driver did not get here)".into()],
        };
        match per.last_mut() {
            Some((name, n, ok)) if *name == step.subtest => {
                *n += 1;
                *ok += usize::from(bad.is_empty());
            }
            _ => per.push((step.subtest, 1, usize::from(bad.is_empty()))),
        }
        if !bad.is_empty() {
            let output = got.get(&i).map(|g| g.output.as_str()).unwrap_or("");
            out.failures.push(format!(
                "[{}] step {i} ({}): {}\n--- output ---\n{output}---",
                step.subtest,
                describe(step),
                bad.join("; ")
            ));
        } else if let Some(why) = step.ours {
            out.notes
                .push(format!("[{}] step {i}: ours: {why}", step.subtest));
        }
    }
    for (name, n, ok) in per {
        out.notes.push(format!(
            "subtest {name:?}: {ok}/{n} steps pass{}",
            if ok == n { "" } else { " — FAILING" }
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_frames_parse() {
        let log = b"@@STEP 0 0 6\nhello\n\n@@STEP 1 4 0\n\n@@STEP 2 0 3\na\nb\n@@END\n\0\0\0";
        let got = parse_results(log);
        assert_eq!(got[&0].output, "hello\n");
        assert_eq!(got[&1].exit, 4);
        assert_eq!(got[&1].output, "");
        assert_eq!(got[&2].output, "a\nb");
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }
}
