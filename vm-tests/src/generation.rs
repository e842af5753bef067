//! NixOS-shaped system images: a root filesystem with merged /usr and the host's systemd
//! closure, a store holding one or more generations (toplevel, etc tree, users JSON,
//! activation manifest, bootspec), and the profile links that name them.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::host::run;
use serde_json::{json, Value};

pub use crate::declared::*;
use crate::store::{StoreBuilder, StorePath};
use crate::tree::{install_host_path, Node, Tree};

pub const PROFILES_DIR: &str = "/nix/var/nix/profiles";
pub const PROBE_UNIT: &str = "stagehand-probe.service";
/// The unit stage 2 writes into `/run/systemd/system` when the boot is being counted
/// (`stage2/src/bless_unit.rs`); the probe waits for it, so the machine powers off only
/// after the boot was marked good.
pub const BLESS_UNIT: &str = "stagehand-bless.service";

/// The host's systemd (Debian's 252) and every shared library it loads.
#[derive(Debug, Clone)]
pub struct HostSystemd {
    pub systemd: PathBuf,
    pub shutdown: PathBuf,
    /// Libraries and the dynamic loader, as `ldd` names them (host paths).
    pub libraries: Vec<PathBuf>,
    /// `252`, from `libsystemd-shared-252.so`.
    pub version: String,
}

impl HostSystemd {
    pub fn discover() -> Result<Self> {
        let systemd = PathBuf::from("/usr/lib/systemd/systemd");
        let shutdown = PathBuf::from("/usr/lib/systemd/systemd-shutdown");
        let mut libraries = BTreeSet::new();
        for bin in [&systemd, &shutdown] {
            if !bin.is_file() {
                bail!(
                    "{} is missing: the test image uses the host's systemd (run vm-tests/setup-host)",
                    bin.display()
                );
            }
            libraries.extend(ldd(bin)?);
        }
        let version = libraries
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .find_map(|n| n.strip_prefix("libsystemd-shared-")?.strip_suffix(".so"))
            .unwrap_or("unknown")
            .to_string();
        Ok(Self {
            systemd,
            shutdown,
            libraries: libraries.into_iter().collect(),
            version,
        })
    }
}

/// The shared-library closure of `bin` according to `ldd` (which follows RUNPATH and
/// transitive DT_NEEDED the way the loader will).
pub fn ldd(bin: &Path) -> Result<Vec<PathBuf>> {
    parse_ldd(&run(Command::new("ldd").arg(bin))?)
        .with_context(|| format!("reading `ldd {}`", bin.display()))
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("library {} not found", name.trim());
                }
                rest.split(" (").next().unwrap_or(rest).trim()
            }
            // The loader, or the vDSO (no file).
            None => line.split(" (").next().unwrap_or(line).trim(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    if libs.is_empty() {
        bail!("no libraries in ldd output (static binary?): {text:?}");
    }
    Ok(libs)
}

/// The kernel and initrd a generation's bootspec names (copied into the store).
#[derive(Debug, Clone)]
pub struct BootFiles {
    pub kernel: PathBuf,
    pub kernel_version: String,
    pub initrd: PathBuf,
}

/// Everything that distinguishes one generation.
#[derive(Debug, Clone)]
pub struct GenerationSpec {
    pub number: u32,
    pub hostname: String,
    pub label: String,
    /// `<toplevel>/init`: the static stage 2 binary.
    pub stage2: PathBuf,
    pub guest_probe: PathBuf,
    pub kernel_params: Vec<String>,
    pub boot: BootFiles,
    pub mutable_users: bool,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    pub etc: Vec<EtcEntry>,
    /// The static `stagehand` binary (host path), linked as the generation's
    /// `bin/switch-to-configuration` (it dispatches on that name).
    pub switch_to_configuration: Option<PathBuf>,
    /// More text files in the toplevel (`init-interface-version`, …), path → text.
    pub toplevel_files: Vec<(String, String)>,
    /// More keys of `activation.json` (`snippets`, `shell`, …), replacing the defaults.
    pub activation: serde_json::Map<String, Value>,
}

impl GenerationSpec {
    /// The demo generation: the test users (every password locked), a probe unit as the
    /// default target's only want, gettys masked, and one copied secret file.
    pub fn demo(number: u32, stage2: &Path, guest_probe: &Path, boot: BootFiles) -> Self {
        let hostname = "stagehand-demo".to_string();
        let mut users = test_users("/bin/sh", |_| Some("!".into()));
        for root in users.iter_mut().filter(|u| u.name == "root") {
            root.create_home = true;
        }
        Self {
            number,
            label: format!("Stagehand demo {number}"),
            stage2: stage2.into(),
            guest_probe: guest_probe.into(),
            kernel_params: kernel_params(),
            boot,
            mutable_users: false,
            users,
            groups: test_groups(),
            etc: test_etc(
                &hostname,
                format!(
                    "NAME=NixOS\nID=nixos\nVERSION_ID=\"stagehand-{number}\"\n\
                     PRETTY_NAME=\"Stagehand demo {number}\"\nHOME_URL=\"\"\n"
                ),
                number,
            ),
            hostname,
            switch_to_configuration: None,
            toplevel_files: Vec::new(),
            activation: serde_json::Map::new(),
        }
    }

    /// `nixos-system-<hostname>-<number>`
    pub fn toplevel_name(&self) -> String {
        format!("nixos-system-{}-{}", self.hostname, self.number)
    }

    pub fn users_groups_json(&self) -> Value {
        users_groups_json(self.mutable_users, &self.users, &self.groups)
    }
}

/// `/nix/var/nix/profiles/system-N-link`
pub fn profile_link(number: u32) -> String {
    format!("{PROFILES_DIR}/system-{number}-link")
}

/// A kernel command line: `init=<init>` and `params`.
pub fn cmdline(init: &str, params: &[String]) -> String {
    let mut parts = vec![format!("init={init}")];
    parts.extend(params.iter().cloned());
    parts.join(" ")
}

/// Where one generation's parts ended up in the store.
#[derive(Debug, Clone)]
pub struct BuiltGeneration {
    pub number: u32,
    pub toplevel: StorePath,
    pub etc: StorePath,
    pub systemd: StorePath,
    pub stage2: StorePath,
    pub guest_probe: StorePath,
    pub users_groups: StorePath,
    pub kernel_params: Vec<String>,
    pub hostname: String,
}

impl BuiltGeneration {
    /// `/nix/var/nix/profiles/system-N-link`
    pub fn profile_link(&self) -> String {
        profile_link(self.number)
    }

    /// The kernel command line a boot loader entry for this generation would carry
    /// (through the profile link, as the brief's entries do).
    pub fn cmdline(&self) -> String {
        cmdline(
            &format!("{}/init", self.profile_link()),
            &self.kernel_params,
        )
    }

    /// The generation's systemd binary (what PID 1 should be after stage 2).
    pub fn systemd_binary(&self) -> String {
        self.systemd.join("lib/systemd/systemd")
    }
}

pub(crate) fn unit_files(probe: &StorePath) -> Vec<(&'static str, String)> {
    vec![
        (
            "default.target",
            format!(
                "[Unit]\nDescription=Stagehand test system\nWants={PROBE_UNIT}\nAllowIsolate=yes\n"
            ),
        ),
        (
            PROBE_UNIT,
            format!(
                "[Unit]\n\
                 Description=Stagehand guest probe\n\
                 DefaultDependencies=no\n\
                 After={BLESS_UNIT}\n\
                 SuccessAction=poweroff-force\n\
                 FailureAction=poweroff-force\n\
                 \n\
                 [Service]\n\
                 Type=oneshot\n\
                 ExecStart={}\n\
                 StandardOutput=tty\n\
                 StandardError=tty\n\
                 TTYPath=/dev/console\n\
                 TTYReset=no\n\
                 TTYVHangup=no\n",
                probe.join("bin/guest-probe")
            ),
        ),
    ]
}

/// Units that would wait for `.device` units udev never announces (no udev here).
pub(crate) const MASKED_UNITS: &[&str] = &[
    "serial-getty@.service",
    "getty@.service",
    "console-getty.service",
    "autovt@.service",
];

/// A whole disk image: root layout, store, generations, profile links.
#[derive(Debug, Clone)]
pub struct SystemImage {
    pub root: Tree,
    pub store: StoreBuilder,
    pub systemd: HostSystemd,
    pub generations: Vec<BuiltGeneration>,
    /// The generation `/nix/var/nix/profiles/system` points at.
    pub current: Option<u32>,
}

impl SystemImage {
    /// Merged /usr, the host systemd closure at its Debian paths, and the empty
    /// directories a booted system expects. `/etc` is empty: activation fills it.
    pub fn new(systemd: &HostSystemd) -> Result<Self> {
        let mut root = Tree::new();
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            root.dir_mut(target)?;
            root.insert(link, Node::symlink(target))?;
        }
        for bin in [&systemd.systemd, &systemd.shutdown] {
            install_host_path(&mut root, bin)?;
        }
        for lib in &systemd.libraries {
            install_host_path(&mut root, lib)?;
        }
        for dir in [
            "etc",
            "var",
            "run",
            "proc",
            "sys",
            "dev",
            "home",
            "nix/store",
        ] {
            root.dir_mut(dir)?;
        }
        root.dir_mut(PROFILES_DIR)?;
        root.insert("tmp", Node::Dir(Tree::with_mode(0o1777)))?;
        root.insert("root", Node::Dir(Tree::with_mode(0o700)))?;
        Ok(Self {
            root,
            store: StoreBuilder::new(),
            systemd: systemd.clone(),
            generations: Vec::new(),
            current: None,
        })
    }

    /// Add a generation to the store and its `system-N-link`; the first one added also
    /// becomes the current `system` profile.
    pub fn add_generation(&mut self, spec: &GenerationSpec) -> Result<BuiltGeneration> {
        let parts = GenerationParts::add(&mut self.store, spec, &self.systemd)?;
        let etc = add_etc(&mut self.store, spec, &parts.guest_probe)?;
        let toplevel = add_toplevel(&mut self.store, spec, &parts, &etc)?;
        let built = BuiltGeneration {
            number: spec.number,
            toplevel: toplevel.clone(),
            etc,
            systemd: parts.systemd,
            stage2: parts.stage2,
            guest_probe: parts.guest_probe,
            users_groups: parts.users_groups,
            kernel_params: spec.kernel_params.clone(),
            hostname: spec.hostname.clone(),
        };
        self.link_generation(spec.number, &toplevel)?;
        self.generations.push(built.clone());
        Ok(built)
    }

    /// Make `toplevel` (already in the store) generation `number`: its `system-N-link`,
    /// and the current `system` profile when it is the first one.
    pub fn link_generation(&mut self, number: u32, toplevel: &StorePath) -> Result<()> {
        self.root.insert(
            profile_link(number).trim_start_matches('/'),
            Node::symlink(toplevel.as_str()),
        )?;
        if self.current.is_none() {
            self.current = Some(number);
        }
        Ok(())
    }

    /// Point `/nix/var/nix/profiles/system` at generation `number`.
    pub fn set_current(&mut self, number: u32) -> Result<()> {
        if self
            .root
            .get(profile_link(number).trim_start_matches('/'))
            .is_none()
        {
            bail!("there is no generation {number} in this image");
        }
        self.current = Some(number);
        Ok(())
    }

    /// The complete root tree: base layout, store, profile links.
    pub fn tree(&self) -> Result<Tree> {
        let mut root = self.root.clone();
        self.store.install_into(&mut root)?;
        if let Some(n) = self.current {
            root.insert(
                &format!("{}/system", PROFILES_DIR.trim_start_matches('/')),
                Node::symlink(format!("system-{n}-link")),
            )?;
        }
        Ok(root)
    }

    /// Write the image as an ext4 filesystem (`mkfs.ext4 -d`, no root or loop devices).
    pub fn write_ext4(&self, out: &Path, size_mb: u32, label: &str) -> Result<()> {
        write_ext4(&self.tree()?, out, size_mb, label)
    }
}

/// The store paths a generation's toplevel links to, apart from `etc`.
struct GenerationParts {
    stage2: StorePath,
    guest_probe: StorePath,
    systemd: StorePath,
    kernel: StorePath,
    initrd: StorePath,
    users_groups: StorePath,
    /// `stagehand`, when the generation has a `switch-to-configuration`.
    switcher: Option<StorePath>,
}

impl GenerationParts {
    fn add(
        store: &mut StoreBuilder,
        spec: &GenerationSpec,
        host_systemd: &HostSystemd,
    ) -> Result<GenerationParts> {
        let stage2 = store.add(
            "stagehand-stage2",
            node_dir(&[("bin/stage2", Node::executable(&spec.stage2))])?,
        )?;
        let guest_probe = add_guest_probe(store, &spec.guest_probe)?;
        let systemd = add_systemd(store, host_systemd)?;
        let (kernel, initrd) = add_boot_files(store, &spec.boot)?;
        let users_groups = store.add_text(
            "users-groups.json",
            serde_json::to_string_pretty(&spec.users_groups_json())?,
        )?;
        let switcher = add_switcher(store, spec.switch_to_configuration.as_deref())?;
        Ok(GenerationParts {
            stage2,
            guest_probe,
            systemd,
            kernel,
            initrd,
            users_groups,
            switcher,
        })
    }
}

/// `guest-probe` with the probe binary (host path `probe`) as `bin/guest-probe`.
pub(crate) fn add_guest_probe(store: &mut StoreBuilder, probe: &Path) -> Result<StorePath> {
    store.add(
        "guest-probe",
        node_dir(&[("bin/guest-probe", Node::executable(probe))])?,
    )
}

/// `linux-<version>/bzImage` and `initrd-linux-<version>/initrd`.
pub(crate) fn add_boot_files(
    store: &mut StoreBuilder,
    boot: &BootFiles,
) -> Result<(StorePath, StorePath)> {
    let version = &boot.kernel_version;
    let kernel = store.add(
        &format!("linux-{version}"),
        node_dir(&[("bzImage", Node::host_file(&boot.kernel, 0o444))])?,
    )?;
    let initrd = store.add(
        &format!("initrd-linux-{version}"),
        node_dir(&[("initrd", Node::host_file(&boot.initrd, 0o444))])?,
    )?;
    Ok((kernel, initrd))
}

/// `stagehand/bin/stagehand` when the generation has a `switch-to-configuration`.
pub(crate) fn add_switcher(
    store: &mut StoreBuilder,
    stagehand: Option<&Path>,
) -> Result<Option<StorePath>> {
    stagehand
        .map(|bin| {
            store.add(
                "stagehand",
                node_dir(&[("bin/stagehand", Node::executable(bin))])?,
            )
        })
        .transpose()
}

/// The toplevel's `bin/switch-to-configuration`: the `stagehand` binary, which dispatches
/// on the name it is called by.
pub(crate) fn switcher_entry(switcher: &StorePath) -> (&'static str, Node) {
    (
        "bin/switch-to-configuration",
        Node::symlink(switcher.join("bin/stagehand")),
    )
}

/// The host's `lib/systemd/systemd` and `systemd-shutdown` as a systemd store path holds them.
pub(crate) fn systemd_entries(host_systemd: &HostSystemd) -> Vec<(&'static str, Node)> {
    vec![
        (
            "lib/systemd/systemd",
            Node::executable(&host_systemd.systemd),
        ),
        (
            "lib/systemd/systemd-shutdown",
            Node::executable(&host_systemd.shutdown),
        ),
    ]
}

/// `systemd-<version>` with the host's `lib/systemd/systemd` and `systemd-shutdown`.
pub(crate) fn add_systemd(
    store: &mut StoreBuilder,
    host_systemd: &HostSystemd,
) -> Result<StorePath> {
    store.add(
        &format!("systemd-{}", host_systemd.version),
        node_dir(&systemd_entries(host_systemd))?,
    )
}

/// A copied etc entry's sidecars next to it: `<path>.mode`, `.uid`, `.gid`, one line each
/// (etc.nix writes them with `echo`).
pub(crate) fn insert_sidecars(
    etc: &mut Tree,
    path: &str,
    mode: &str,
    uid: &str,
    gid: &str,
) -> Result<()> {
    etc.insert(&format!("{path}.mode"), Node::text(format!("{mode}\n")))?;
    etc.insert(&format!("{path}.uid"), Node::text(format!("{uid}\n")))?;
    etc.insert(&format!("{path}.gid"), Node::text(format!("{gid}\n")))
}

/// Bootspec v1 (`boot.json`) for `toplevel`, with no specialisations.
pub(crate) fn bootspec(
    toplevel: &str,
    kernel: &StorePath,
    initrd: &StorePath,
    kernel_params: &[String],
    label: &str,
) -> Value {
    json!({
        "org.nixos.bootspec.v1": {
            "system": SYSTEM,
            "init": format!("{toplevel}/init"),
            "initrd": initrd.join("initrd"),
            "kernel": kernel.join("bzImage"),
            "kernelParams": kernel_params,
            "label": label,
            "toplevel": toplevel,
        },
        "org.nixos.specialisation.v1": {},
    })
}

/// The etc tree in the store: every entry a link to a store file, sidecars as plain files,
/// the test units and the masked ones. Returns the store path that holds `etc/`.
fn add_etc(
    store: &mut StoreBuilder,
    spec: &GenerationSpec,
    guest_probe: &StorePath,
) -> Result<StorePath> {
    let mut etc = Tree::new();
    for entry in &spec.etc {
        match entry {
            EtcEntry::Text { path, text } => {
                let file = store.add_text(&store_name(path), text.clone())?;
                etc.insert(path, Node::symlink(file.as_str()))?;
            }
            EtcEntry::Link { path, target } => etc.insert(path, Node::symlink(target))?,
            EtcEntry::Copied {
                path,
                text,
                mode,
                uid,
                gid,
            } => {
                let file = store.add_text(&store_name(path), text.clone())?;
                etc.insert(path, Node::symlink(file.as_str()))?;
                insert_sidecars(&mut etc, path, mode, uid, gid)?;
            }
        }
    }
    for (name, text) in unit_files(guest_probe) {
        let file = store.add_text(&store_name(name), text)?;
        etc.insert(
            &format!("systemd/system/{name}"),
            Node::symlink(file.as_str()),
        )?;
    }
    for name in MASKED_UNITS {
        etc.insert(
            &format!("systemd/system/{name}"),
            Node::symlink("/dev/null"),
        )?;
    }
    store.add("etc", node_dir(&[("etc", Node::Dir(etc))])?)
}

/// The toplevel: `init`, `etc`, `systemd`, kernel and initrd links, `boot.json`,
/// `activation.json`, and `bin/switch-to-configuration` when there is one.
fn add_toplevel(
    store: &mut StoreBuilder,
    spec: &GenerationSpec,
    parts: &GenerationParts,
    etc: &StorePath,
) -> Result<StorePath> {
    let etc_dir = etc.join("etc");
    let mut activation = json!({
        "version": 1,
        "etc": etc_dir,
        "usersGroups": parts.users_groups.as_str(),
        "snippets": [],
    });
    if let Some(obj) = activation.as_object_mut() {
        obj.extend(spec.activation.clone());
    }
    let kernel_params = spec.kernel_params.clone();
    let toplevel_tree = |toplevel: &str| -> Result<Node> {
        let bootspec = bootspec(
            toplevel,
            &parts.kernel,
            &parts.initrd,
            &kernel_params,
            &spec.label,
        );
        let mut entries = vec![
            ("init", Node::symlink(parts.stage2.join("bin/stage2"))),
            ("etc", Node::symlink(etc_dir.clone())),
            ("systemd", Node::symlink(parts.systemd.as_str())),
            ("kernel", Node::symlink(parts.kernel.join("bzImage"))),
            ("initrd", Node::symlink(parts.initrd.join("initrd"))),
            (
                "boot.json",
                Node::text(serde_json::to_string_pretty(&bootspec)?),
            ),
            (
                "activation.json",
                Node::text(serde_json::to_string_pretty(&activation)?),
            ),
            (
                "nixos-version",
                Node::text(format!("stagehand-{}", spec.number)),
            ),
            ("kernel-params", Node::text(kernel_params.join(" "))),
        ];
        entries.extend(parts.switcher.as_ref().map(switcher_entry));
        for (path, text) in &spec.toplevel_files {
            entries.push((path.as_str(), Node::text(text.clone())));
        }
        node_dir(&entries)
    };
    store.add_self_referential(&spec.toplevel_name(), toplevel_tree)
}

impl SystemImage {
    /// Write `/nix` as its own filesystem (`nix_out`, label `nix_label`) and the rest as
    /// the root (`root_out`, with an empty `/nix` to mount it on).
    pub fn write_ext4_split_nix(
        &self,
        root_out: &Path,
        root_label: &str,
        nix_out: &Path,
        nix_label: &str,
        size_mb: u32,
    ) -> Result<()> {
        let (root, nix) = self.split_nix()?;
        write_ext4(&root, root_out, size_mb, root_label)?;
        write_ext4(&nix, nix_out, size_mb, nix_label)
    }

    fn split_nix(&self) -> Result<(Tree, Tree)> {
        let mut root = self.tree()?;
        let nix = match root.take("nix") {
            Some(Node::Dir(t)) => t,
            other => bail!("the image's /nix is not a directory: {other:?}"),
        };
        root.dir_mut("nix")?;
        Ok((root, nix))
    }
}

/// A store-path name for an etc entry (`systemd/system/x.service` → `x.service`).
pub(crate) fn store_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-._?=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(crate) fn node_dir(entries: &[(&str, Node)]) -> Result<Node> {
    let mut t = Tree::new();
    for (path, node) in entries {
        t.insert(path, node.clone())?;
    }
    Ok(Node::Dir(t))
}

/// Stage `tree` in a temporary directory next to `out` and make an ext4 image of it.
pub fn write_ext4(tree: &Tree, out: &Path, size_mb: u32, label: &str) -> Result<()> {
    let parent = out
        .parent()
        .with_context(|| format!("{} has no parent directory", out.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(parent)
        .context("creating a staging directory")?;
    tree.write_to(staging.path())
        .context("writing the image tree to the staging directory")?;
    match fs::remove_file(out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing old {}", out.display())),
    }
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d"])
        .arg(staging.path())
        .arg(out)
        .arg(format!("{size_mb}M")))
    .context("building the ext4 image (install e2fsprogs)")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007f64c1ef1000)\n\
            \tlibsystemd-shared-252.so => /usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so (0x1)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            parse_ldd(text).expect("parse"),
            vec![
                PathBuf::from("/usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").expect_err("missing lib");
        assert!(err.to_string().contains("libfoo.so.1"), "{err}");
        assert!(parse_ldd("\tnot a dynamic executable\n").is_err());
    }

    fn fake_systemd(dir: &Path) -> HostSystemd {
        let bin = dir.join("systemd");
        fs::write(&bin, b"#!fake").expect("write");
        HostSystemd {
            systemd: bin.clone(),
            shutdown: bin,
            libraries: vec![],
            version: "252".into(),
        }
    }

    fn demo_image(dir: &Path, stage2: &str) -> (SystemImage, BuiltGeneration) {
        let file = |n: &str| {
            let p = dir.join(n);
            fs::write(&p, if n == "stage2" { stage2 } else { n }).expect("write");
            p
        };
        let boot = BootFiles {
            kernel: file("vmlinuz"),
            kernel_version: "6.1.0-56-amd64".into(),
            initrd: file("initrd"),
        };
        let spec = GenerationSpec::demo(1, &file("stage2"), &file("probe"), boot);
        let mut image = SystemImage::new(&fake_systemd(dir)).expect("image");
        let g = image.add_generation(&spec).expect("generation");
        (image, g)
    }

    #[test]
    fn generation_has_the_nixos_shape() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (image, g) = demo_image(dir.path(), "stage2");
        let tree = image.tree().expect("tree");
        let top = g.toplevel.as_str().trim_start_matches('/');
        assert!(g
            .toplevel
            .as_str()
            .ends_with("-nixos-system-stagehand-demo-1"));
        assert_eq!(
            tree.get(&format!("{top}/init")),
            Some(&Node::symlink(g.stage2.join("bin/stage2")))
        );
        assert_eq!(
            tree.get("nix/var/nix/profiles/system-1-link"),
            Some(&Node::symlink(g.toplevel.as_str()))
        );
        assert_eq!(
            tree.get("nix/var/nix/profiles/system"),
            Some(&Node::symlink("system-1-link"))
        );
        assert_eq!(tree.get("lib64"), Some(&Node::symlink("usr/lib64")));
        // bootspec names the toplevel it lives in.
        let Some(Node::File {
            source: crate::tree::Source::Bytes(b),
            ..
        }) = tree.get(&format!("{top}/boot.json"))
        else {
            panic!("boot.json missing")
        };
        let spec: Value = serde_json::from_slice(b).expect("json");
        let v1 = &spec["org.nixos.bootspec.v1"];
        assert_eq!(v1["toplevel"], g.toplevel.as_str());
        assert_eq!(v1["init"], format!("{}/init", g.toplevel));
        assert_eq!(v1["label"], "Stagehand demo 1");
        // etc tree: links into the store, sidecars as files.
        let etc = g.etc.join("etc");
        let etc = etc.trim_start_matches('/');
        match tree.get(&format!("{etc}/hostname")) {
            Some(Node::Symlink(t)) => {
                assert!(t.starts_with("/nix/store/") && t.ends_with("-hostname"))
            }
            other => panic!("hostname entry: {other:?}"),
        }
        assert_eq!(
            tree.get(&format!("{etc}/stagehand-secret.mode")),
            Some(&Node::text("0400\n"))
        );
        assert_eq!(
            tree.get(&format!("{etc}/systemd/system/serial-getty@.service")),
            Some(&Node::symlink("/dev/null"))
        );
        assert_eq!(
            g.cmdline(),
            "init=/nix/var/nix/profiles/system-1-link/init console=ttyS0 panic=-1 \
             boot.panic_on_fail systemd.show_status=1"
        );
    }

    #[test]
    fn two_generations_share_unchanged_store_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut image, one) = demo_image(dir.path(), "stage2");
        let boot = BootFiles {
            kernel: dir.path().join("vmlinuz"),
            kernel_version: "6.1.0-56-amd64".into(),
            initrd: dir.path().join("initrd"),
        };
        let mut spec = GenerationSpec::demo(
            2,
            &dir.path().join("stage2"),
            &dir.path().join("probe"),
            boot,
        );
        spec.etc.push(EtcEntry::Text {
            path: "motd".into(),
            text: "two\n".into(),
        });
        let two = image.add_generation(&spec).expect("second generation");
        assert_ne!(one.toplevel, two.toplevel);
        assert_ne!(one.etc, two.etc);
        assert_eq!(one.systemd, two.systemd);
        assert_eq!(one.stage2, two.stage2);
        assert!(image.set_current(3).is_err());
        image.set_current(2).expect("current");
        let tree = image.tree().expect("tree");
        assert_eq!(
            tree.get("nix/var/nix/profiles/system"),
            Some(&Node::symlink("system-2-link"))
        );
        assert_eq!(
            tree.get("nix/var/nix/profiles/system-1-link"),
            Some(&Node::symlink(one.toplevel.as_str()))
        );
        let (root, nix) = image.split_nix().expect("split");
        assert_eq!(root.get("nix"), Some(&Node::Dir(Tree::new())));
        assert!(nix
            .get(two.toplevel.as_str().trim_start_matches("/nix/"))
            .is_some());
        assert!(nix.get("var/nix/profiles/system").is_some());
    }

    /// The text of unit `name` in generation `g`'s etc tree; empty when there is none.
    fn unit_text(tree: &Tree, g: &BuiltGeneration, name: &str) -> String {
        let etc = g.etc.join("etc");
        let path = format!("{}/systemd/system/{name}", etc.trim_start_matches('/'));
        let Some(Node::Symlink(target)) = tree.get(&path) else {
            return String::new();
        };
        match tree.get(target.trim_start_matches('/')) {
            Some(Node::File {
                source: crate::tree::Source::Bytes(b),
                ..
            }) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("{name} -> {target}: {other:?}"),
        }
    }

    #[test]
    fn the_probe_waits_for_stage2s_bless_unit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (image, g) = demo_image(dir.path(), "stage2");
        let tree = image.tree().expect("tree");
        // The generation ships no bless unit: stage 2 writes one when the boot is counted.
        assert_eq!(unit_text(&tree, &g, BLESS_UNIT), "");
        assert_eq!(unit_text(&tree, &g, "boot-complete.target"), "");
        let probe = unit_text(&tree, &g, PROBE_UNIT);
        assert!(probe.contains("After=stagehand-bless.service\n"), "{probe}");
        let default = unit_text(&tree, &g, "default.target");
        assert!(
            default.contains(&format!("Wants={PROBE_UNIT}\n")),
            "{default}"
        );
    }

    #[test]
    fn users_json_has_the_update_users_groups_shape() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x");
        let boot = BootFiles {
            kernel: p.clone(),
            kernel_version: "v".into(),
            initrd: p.clone(),
        };
        let v = GenerationSpec::demo(1, &p, &p, boot).users_groups_json();
        assert_eq!(v["mutableUsers"], false);
        let alice = v["users"]
            .as_array()
            .and_then(|u| u.iter().find(|u| u["name"] == "alice"))
            .expect("alice");
        assert_eq!(alice["uid"], 1000);
        assert_eq!(alice["isSystemUser"], false);
        assert_eq!(alice["group"], "users");
        let mb = v["users"]
            .as_array()
            .and_then(|u| u.iter().find(|u| u["name"] == "messagebus"))
            .expect("messagebus");
        assert!(mb["uid"].is_null());
        let groups: Vec<&str> = v["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .filter_map(|g| g["name"].as_str())
            .collect();
        for g in ["root", "wheel", "users", "shadow", "nogroup"] {
            assert!(groups.contains(&g), "{g} missing from {groups:?}");
        }
    }

    #[test]
    fn same_inputs_same_store_paths_and_a_changed_init_changes_the_toplevel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, a) = demo_image(dir.path(), "stage2");
        let (_, b) = demo_image(dir.path(), "stage2");
        assert_eq!(a.toplevel, b.toplevel);
        let (_, c) = demo_image(dir.path(), "a different stage2");
        assert_ne!(a.toplevel, c.toplevel);
        assert_eq!(a.etc, c.etc);
    }
}
