//! A generation in nixpkgs' exact layout (issue 19): what `nixos-rebuild` puts in the store,
//! with no `activation.json` and no Perl.
//!
//! The toplevel holds `activate` and `dry-activate` as `activation-script.nix` generates
//! them (the text comes from `stagehand_testkit::nixos`), `init` = a stage-2 script doing what
//! `stage-2-init.sh` does, run by a bash in the store, `boot.json` (bootspec v1), `etc` → an
//! etc tree as `etc.nix` builds it (every entry a link to a store file, `.mode`/`.uid`/`.gid`
//! sidecars for copied ones, an `fstab`), `kernel`, `initrd`, `kernel-modules` (the Debian
//! kernel's needed modules as `.ko.xz` with a `modules.dep` made by `depmod -b`),
//! `kernel-params`, `firmware`, `sw` (a `buildEnv`-like tree of links), `systemd`,
//! `specialisation/` (empty), `init-interface-version`, `nixos-version`, `system`,
//! `configuration-name`, `extra-dependencies`, and `bin/switch-to-configuration` when the
//! spec names one.
//!
//! The users snippet calls `…-perl-…-env/bin/perl -w …-update-users-groups.pl
//! …-users-groups.json` and the etc snippet `…/bin/perl …-setup-etc.pl …-etc/etc`, exactly as
//! NixOS writes the calls; the JSON and the etc tree are in the store, the Perl and the two
//! scripts are not (their paths are named, never added). NixOS's own bash `init` therefore
//! boots such a generation with those two snippets failing (and the script going on, as it
//! does on NixOS); Stagehand's activation must do their work itself.
//!
//! The programs the scripts run are the host's (Debian's) bash, coreutils, util-linux, grep,
//! findutils, getent, nologin and kmod, each copied into a store path named like nixpkgs'
//! (`bash-5.2.15`, `util-linux-2.38.1-bin`, …) with its `ldd` closure at the Debian paths, the
//! way the harness copies systemd.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
#[cfg(test)]
use serde_json::{json, Value};
use stagehand_testkit::nixos::{
    builtin_snippets, early_mount_script, stage2_init_script, ActivateScript, BuiltinPaths,
    Snippet, Stage2Init, SPECIAL_FILESYSTEMS,
};

use crate::generation::{
    add_boot_files, add_guest_probe, add_switcher, bootspec, cmdline, insert_sidecars,
    kernel_params, ldd, node_dir, profile_link, store_name, switcher_entry, systemd_entries,
    test_etc, test_groups, test_users, unit_files, users_groups_json, BootFiles, EtcEntry, Group,
    SystemImage, User, MASKED_UNITS, SYSTEM,
};
pub use crate::nixos_tools::*;
use crate::scenarios::Expected;
use crate::store::{StoreBuilder, StorePath};
use crate::tree::{install_host_path, Node, Tree};

/// Where the third-party snippet ([`secrets_snippet`]) leaves its secret; the guest probe
/// reports it (`run.secret`, `run.secret.text`).
pub const SECRET_PATH: &str = "/run/secrets/stagehand-fixture";

/// Where the fixture's `boot.postBootCommands` ([`post_boot_commands`]) leaves its note; the
/// guest probe reports it (`run.postboot`).
pub const POST_BOOT_PATH: &str = "/run/stagehand-fixture-postboot";

/// The fixture's `local-cmds` file as `writeText` makes it from `boot.postBootCommands` and
/// an empty `powerManagement.powerUpCommands` (each followed by a newline): a note of which
/// file ran (`$0`), which `mkdir` stage 2's PATH finds, that `/run/booted-system` was
/// already set, and the user.
pub fn post_boot_commands() -> String {
    format!(
        "echo \"postboot script=$0 mkdir=$(command -v mkdir) \
         booted=$(readlink /run/booted-system) uid=$(id -u)\" > {POST_BOOT_PATH}\n\n"
    )
}

/// The activation script's PATH, in NixOS's order (of the packages the fixture has).
const ACTIVATION_PATH: &[&str] = &[
    "coreutils",
    "gnugrep",
    "findutils",
    "getent-glibc",
    "shadow",
    "util-linux",
];

/// Stage 2's PATH.
const STAGE2_PATH: &[&str] = &["coreutils", "util-linux"];

/// One filesystem line of the generation's `/etc/fstab`.
#[derive(Debug, Clone)]
pub struct FstabEntry {
    pub device: String,
    pub mount_point: String,
    pub fs_type: String,
    pub options: Vec<String>,
}

/// Everything that distinguishes one NixOS-layout generation.
#[derive(Debug, Clone)]
pub struct NixosSpec {
    pub number: u32,
    pub hostname: String,
    /// `system.nixos.label`: the toplevel's name ends with it, `nixos-version` holds it.
    pub nixos_version: String,
    /// `boot.kernelParams` (`kernel-params`, bootspec); `init=` is the boot loader's.
    pub kernel_params: Vec<String>,
    pub boot: BootFiles,
    pub mutable_users: bool,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    pub etc: Vec<EtcEntry>,
    pub fstab: Vec<FstabEntry>,
    /// Snippets besides NixOS's own (third-party modules: sops-nix, agenix, …).
    pub extra_snippets: Vec<Snippet>,
    pub guest_probe: PathBuf,
    /// The static `stagehand` binary, linked as `bin/switch-to-configuration`.
    pub switch_to_configuration: Option<PathBuf>,
}

/// A SHA-512 crypt hash (of `alice-password`, salt `stagehandfixture`) for the normal user.
pub const ALICE_HASH: &str = "$6$stagehandfixture$GlZQhMqZRTGvLCTbxKfJBTwp43Lv8yB7wSecsUtmt53Z047dA0f/eOVY4D693gmaobeNMMWbXi1yV6Pdqg50P0";

/// The third-party snippet: a secrets manager's step in the manner of sops-nix's
/// `setupSecrets` (after `specialfs`): a root-only file under `/run/secrets` whose text
/// names `$systemConfig`, a variable only the activation script's prelude sets.
pub fn secrets_snippet() -> Snippet {
    let dir = SECRET_PATH.rsplit_once('/').map_or("/run", |(d, _)| d);
    Snippet::new(
        "setupSecrets",
        &format!(
            "# A secrets manager's step: this generation's secret, readable by root only.\n\
             echo \"setting up secrets...\"\n\
             install -m 0751 -d {dir}\n\
             (\n  \
             umask 0377\n  \
             printf 'stagehand-fixture-secret system=%s\\n' \"$systemConfig\" > {SECRET_PATH}.tmp\n\
             )\n\
             mv -f {SECRET_PATH}.tmp {SECRET_PATH}\n"
        ),
    )
    .after(&["specialfs"])
}

/// What [`secrets_snippet`] writes for `toplevel` (without the newline).
pub fn secret_text(toplevel: &str) -> String {
    format!("stagehand-fixture-secret system={toplevel}")
}

impl NixosSpec {
    /// The fixture system: root, alice (normal, uid 1000, a password hash, in wheel),
    /// messagebus (system user, uid allocated), nobody; their groups; a hostname, an
    /// os-release, a copied root-only file owned by alice, an fstab naming the root by label;
    /// the third-party secrets snippet.
    pub fn fixture(
        number: u32,
        boot: BootFiles,
        guest_probe: &Path,
        root_label: &str,
    ) -> NixosSpec {
        let hostname = "stagehand-nixos".to_string();
        let nixos_version = format!("25.11.{number}.stagehand");
        let password = |name: &str| match name {
            "root" => Some("!".into()),
            "alice" => Some(ALICE_HASH.into()),
            _ => None,
        };
        NixosSpec {
            number,
            kernel_params: kernel_params(),
            boot,
            mutable_users: false,
            users: test_users("/run/current-system/sw/bin/bash", password),
            groups: test_groups(),
            etc: test_etc(
                &hostname,
                format!(
                    "NAME=NixOS\nID=nixos\nVERSION_ID=\"25.11\"\n\
                     BUILD_ID=\"{nixos_version}\"\nPRETTY_NAME=\"NixOS 25.11 (Stagehand fixture)\"\n"
                ),
                number,
            ),
            fstab: vec![FstabEntry {
                device: format!("/dev/disk/by-label/{root_label}"),
                mount_point: "/".into(),
                fs_type: "ext4".into(),
                options: vec!["defaults".into()],
            }],
            extra_snippets: vec![secrets_snippet()],
            hostname,
            nixos_version,
            guest_probe: guest_probe.into(),
            switch_to_configuration: None,
        }
    }

    /// `nixos-system-<hostname>-<label>`
    pub fn toplevel_name(&self) -> String {
        format!("nixos-system-{}-{}", self.hostname, self.nixos_version)
    }

    /// The users spec as `users-groups.nix` writes it: `builtins.toJSON`, so one line with
    /// every object's keys sorted (serde_json's map is sorted: the workspace does not enable
    /// `preserve_order`).
    pub fn users_groups_json(&self) -> Result<String> {
        let v = users_groups_json(self.mutable_users, &self.users, &self.groups);
        Ok(serde_json::to_string(&v)?)
    }

    /// `/etc/fstab` in NixOS's layout: a header, the filesystems, the (no) swap devices.
    pub fn fstab_text(&self) -> String {
        let mut s = String::from(
            "# Made from the fileSystems and swapDevices options: change those, not this file.\n\
             #\n\
             # <file system> <mount point>   <type>  <options>       <dump>  <pass>\n\
             \n\
             # Filesystems.\n",
        );
        for f in &self.fstab {
            // fsck pass: the root first, the rest after it.
            let pass = if f.mount_point == "/" { 1 } else { 2 };
            s.push_str(&format!(
                "{} {} {} {} 0 {pass}\n",
                f.device,
                f.mount_point,
                f.fs_type,
                f.options.join(",")
            ));
        }
        s.push_str("\n\n# Swap devices.\n\n");
        s
    }
}

/// Where one NixOS-layout generation's parts ended up.
#[derive(Debug, Clone)]
pub struct BuiltNixos {
    pub number: u32,
    pub toplevel: StorePath,
    pub etc: StorePath,
    pub systemd: StorePath,
    pub tools: ToolPaths,
    pub kernel_params: Vec<String>,
    pub hostname: String,
    /// The `local-cmds` store file its `init` runs.
    pub post_boot: StorePath,
}

impl BuiltNixos {
    /// `/nix/var/nix/profiles/system-N-link`
    pub fn profile_link(&self) -> String {
        profile_link(self.number)
    }

    /// The kernel command line with `init=<init>` and the generation's parameters.
    pub fn cmdline(&self, init: &str) -> String {
        cmdline(init, &self.kernel_params)
    }

    /// What the probe should see once the generation is up and activated.
    pub fn expected(&self) -> Expected {
        Expected {
            toplevel: self.toplevel.to_string(),
            systemd: self.systemd.join("lib/systemd/systemd"),
            etc: self.etc.join("etc"),
            hostname: self.hostname.clone(),
        }
    }

    pub fn secret_text(&self) -> String {
        secret_text(self.toplevel.as_str())
    }

    /// What [`post_boot_commands`] writes when this generation boots, as the probe reports
    /// it: the file run with coreutils' `mkdir` first in PATH, as root, after
    /// `/run/booted-system` was set.
    pub fn post_boot_text(&self) -> Result<String> {
        let mkdir = self.tools.get("coreutils")?.join("bin/mkdir");
        Ok(format!(
            "postboot script={} mkdir={mkdir} booted={} uid=0",
            self.post_boot, self.toplevel
        ))
    }
}

/// Where systemd's units go in the etc tree: one entry, a link to the `system-units` store
/// directory, as NixOS's systemd module declares `environment.etc."systemd/system"`.
const UNITS_DIR: &str = "systemd/system";

/// `system-units`: every unit a link to its own store path (`unit-<name>/<name>`), masked
/// ones to `/dev/null`, `.wants/` links and drop-ins as given. `units` are the spec's etc
/// entries below [`UNITS_DIR`], relative to it.
fn add_units(
    store: &mut StoreBuilder,
    units: &[&EtcEntry],
    probe: &StorePath,
) -> Result<StorePath> {
    let mut dir = Tree::new();
    let mut unit = |dir: &mut Tree, rel: &str, text: String| -> Result<()> {
        let base = rel.rsplit('/').next().unwrap_or(rel);
        let path = store.add(
            &format!("unit-{}", store_name(base)),
            node_dir(&[(base, Node::text(text))])?,
        )?;
        dir.insert(rel, Node::symlink(path.join(base)))
    };
    for (name, text) in unit_files(probe) {
        unit(&mut dir, name, text)?;
    }
    for name in MASKED_UNITS {
        dir.insert(name, Node::symlink("/dev/null"))?;
    }
    for entry in units {
        match entry {
            EtcEntry::Text { path, text } => unit(&mut dir, path, text.clone())?,
            EtcEntry::Link { path, target } => dir.insert(path, Node::symlink(target))?,
            EtcEntry::Copied { path, .. } => {
                bail!("etc entry {UNITS_DIR}/{path}: units cannot be copied entries")
            }
        }
    }
    store.add("system-units", Node::Dir(dir))
}

/// The etc tree (`…-etc/etc`) as etc.nix builds it: every entry a link to its own store
/// file (`etc-<name>`), sidecars as plain files, the fstab, `systemd/system` a link to the
/// units' directory.
fn add_etc(store: &mut StoreBuilder, spec: &NixosSpec, probe: &StorePath) -> Result<StorePath> {
    let prefix = format!("{UNITS_DIR}/");
    let rebase = |e: &EtcEntry| -> Option<EtcEntry> {
        let mut e = e.clone();
        let path = match &mut e {
            EtcEntry::Text { path, .. }
            | EtcEntry::Link { path, .. }
            | EtcEntry::Copied { path, .. } => path,
        };
        *path = path.strip_prefix(&prefix)?.to_string();
        Some(e)
    };
    let unit_entries: Vec<EtcEntry> = spec.etc.iter().filter_map(rebase).collect();
    let units = add_units(store, &unit_entries.iter().collect::<Vec<_>>(), probe)?;
    let mut etc = Tree::new();
    etc.insert(UNITS_DIR, Node::symlink(units.as_str()))?;
    let mut text_entry = |etc: &mut Tree, path: &str, text: &str| -> Result<()> {
        let file = store.add_text(&format!("etc-{}", store_name(path)), text.to_string())?;
        etc.insert(path, Node::symlink(file.as_str()))
    };
    text_entry(&mut etc, "fstab", &spec.fstab_text())?;
    for entry in spec.etc.iter().filter(|e| rebase(e).is_none()) {
        match entry {
            EtcEntry::Text { path, text } => text_entry(&mut etc, path, text)?,
            EtcEntry::Link { path, target } => etc.insert(path, Node::symlink(target))?,
            EtcEntry::Copied {
                path,
                text,
                mode,
                uid,
                gid,
            } => {
                text_entry(&mut etc, path, text)?;
                insert_sidecars(&mut etc, path, mode, uid, gid)?;
            }
        }
    }
    store.add("etc", node_dir(&[("etc", Node::Dir(etc))])?)
}

/// The host's `systemctl`, which NixOS's systemd package has as `bin/systemctl` (where
/// switch-to-configuration looks for it first).
const HOST_SYSTEMCTL: &str = "/usr/bin/systemctl";

/// `systemd-<version>`: the host's systemd and systemd-shutdown (`lib/systemd/`) and
/// systemctl (`bin/`), with systemctl's libraries at their host paths.
fn add_nixos_systemd(image: &mut SystemImage) -> Result<StorePath> {
    let systemctl = Path::new(HOST_SYSTEMCTL);
    if !systemctl.is_file() {
        bail!("{HOST_SYSTEMCTL} is missing (Debian package systemd): run vm-tests/setup-host");
    }
    for lib in ldd(systemctl)? {
        install_host_path(&mut image.root, &lib)?;
    }
    let mut entries = systemd_entries(&image.systemd);
    entries.push(("bin/systemctl", Node::executable(systemctl)));
    image.store.add(
        &format!("systemd-{}", image.systemd.version),
        node_dir(&entries)?,
    )
}

/// Add a NixOS-layout generation to `image` (its store paths, the libraries of the copied
/// programs, `system-N-link`; the first generation added becomes `system`).
pub fn add_nixos_generation(
    image: &mut SystemImage,
    tools: &HostTools,
    modules: &KernelModules,
    spec: &NixosSpec,
) -> Result<BuiltNixos> {
    let paths = tools.add_to(image)?;
    let systemd_version = image.systemd.version.clone();
    let systemd = add_nixos_systemd(image)?;
    let store = &mut image.store;
    let probe = add_guest_probe(store, &spec.guest_probe)?;
    let version = &spec.boot.kernel_version;
    let (kernel, initrd) = add_boot_files(store, &spec.boot)?;
    if &modules.version != version {
        bail!(
            "the kernel modules are for {}, the generation boots {version}",
            modules.version
        );
    }
    let kernel_modules = store.add("kernel-modules", Node::Dir(host_dir_tree(&modules.root)?))?;
    let firmware = store.add(
        "firmware",
        node_dir(&[("lib/firmware", Node::Dir(Tree::new()))])?,
    )?;
    let users_json = store.add_text("users-groups.json", spec.users_groups_json()?)?;
    let etc = add_etc(store, spec, &probe)?;
    let early_mounts = store.add_text("mounts.sh", early_mount_script(SPECIAL_FILESYSTEMS))?;
    let post_boot = store.add_text("local-cmds", post_boot_commands())?;
    let sw = tools.system_path(store, &paths)?;
    // Named by the scripts, absent from the image: there is no Perl here.
    let absent = |name: &str| StoreBuilder::path_of(name, &Node::text(format!("absent {name}")));
    let perl = absent("perl-5.40.0-env")?;
    let builtins = BuiltinPaths {
        bash_interactive: paths.get("bash")?.to_string(),
        coreutils: paths.get("coreutils")?.to_string(),
        users_perl: perl.to_string(),
        update_users_groups: absent("update-users-groups.pl")?.to_string(),
        users_groups_json: users_json.to_string(),
        etc_perl: perl.to_string(),
        setup_etc: absent("setup-etc.pl")?.to_string(),
        etc: etc.to_string(),
        early_mounts: early_mounts.to_string(),
        kmod: paths.get("kmod")?.to_string(),
        firmware: firmware.to_string(),
    };
    let mut snippets = builtin_snippets(&builtins);
    snippets.extend(spec.extra_snippets.iter().cloned());
    let bash = paths.get("bash")?.join("bin/bash");
    let activation_path = paths.list(ACTIVATION_PATH)?;
    let stage2_path = paths.list(STAGE2_PATH)?;
    let switcher = add_switcher(store, spec.switch_to_configuration.as_deref())?;
    let kernel_params = spec.kernel_params.clone();
    let toplevel_tree = |top: &str| -> Result<Node> {
        let script = ActivateScript {
            shell: &bash,
            path: &activation_path,
            system_config: top,
            snippets: &snippets,
        };
        let activate = script.activate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let dry = script.dry_activate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let init = stage2_init_script(&Stage2Init {
            shell: &bash,
            system_config: top,
            path: &stage2_path,
            early_mounts: early_mounts.as_str(),
            post_boot_commands: post_boot.as_str(),
            systemd_executable: "/run/current-system/systemd/lib/systemd/systemd",
        });
        let label = format!("NixOS Stagehand {} (Linux {version})", spec.nixos_version);
        let bootspec = bootspec(top, &kernel, &initrd, &kernel_params, &label);
        let mut entries = vec![
            ("activate", Node::bytes(activate.into_bytes(), 0o555)),
            ("dry-activate", Node::bytes(dry.into_bytes(), 0o555)),
            ("init", Node::bytes(init.into_bytes(), 0o555)),
            (
                "boot.json",
                // jq's output: sorted keys, two-space indent, a final newline.
                Node::text(format!("{}\n", serde_json::to_string_pretty(&bootspec)?)),
            ),
            ("etc", Node::symlink(etc.join("etc"))),
            ("sw", Node::symlink(sw.as_str())),
            ("systemd", Node::symlink(systemd.as_str())),
            ("kernel", Node::symlink(kernel.join("bzImage"))),
            ("kernel-modules", Node::symlink(kernel_modules.as_str())),
            ("initrd", Node::symlink(initrd.join("initrd"))),
            ("firmware", Node::symlink(firmware.join("lib/firmware"))),
            // `echo -n`: none of these ends with a newline.
            ("kernel-params", Node::text(kernel_params.join(" "))),
            ("configuration-name", Node::text("")),
            (
                "init-interface-version",
                Node::text(format!("systemd {systemd_version}")),
            ),
            ("nixos-version", Node::text(spec.nixos_version.clone())),
            ("system", Node::text(SYSTEM)),
            ("extra-dependencies", Node::text("")),
            ("specialisation", Node::Dir(Tree::new())),
        ];
        entries.extend(switcher.as_ref().map(switcher_entry));
        node_dir(&entries)
    };
    let toplevel = store.add_self_referential(&spec.toplevel_name(), toplevel_tree)?;
    image.link_generation(spec.number, &toplevel)?;
    Ok(BuiltNixos {
        number: spec.number,
        toplevel,
        etc,
        systemd,
        tools: paths,
        kernel_params: spec.kernel_params.clone(),
        hostname: spec.hostname.clone(),
        post_boot,
    })
}

/// The probe unit and `default.target` as plain files in `/usr/lib/systemd/system` of the
/// image (Debian's systemd looks there too): for booting with NixOS's own `init`, whose etc
/// snippet (Perl) cannot run here, so `/etc/systemd/system` never appears.
pub fn install_units_outside_etc(image: &mut SystemImage, probe: &Path) -> Result<()> {
    let probe = add_guest_probe(&mut image.store, probe)?;
    for (name, text) in unit_files(&probe) {
        image
            .root
            .insert(&format!("usr/lib/systemd/system/{name}"), Node::text(text))?;
    }
    Ok(())
}

/// A host `Value` check used by tests: every object's keys in sorted order.
#[cfg(test)]
fn keys_sorted(v: &Value) -> bool {
    match v {
        Value::Object(m) => {
            let keys: Vec<&String> = m.keys().collect();
            keys.windows(2).all(|w| w[0] < w[1]) && m.values().all(keys_sorted)
        }
        Value::Array(a) => a.iter().all(keys_sorted),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::HostSystemd;
    use stagehand_testkit::nixos::BUILTIN_ORDER;
    use std::collections::BTreeSet;
    use std::fs;

    #[test]
    fn debian_versions_become_upstream_ones() {
        assert_eq!(upstream_version("5.2.15-2+b8").as_deref(), Some("5.2.15"));
        assert_eq!(
            upstream_version("1:2.38.1-5+deb12u3").as_deref(),
            Some("2.38.1")
        );
        assert_eq!(
            upstream_version("30+20221128-1").as_deref(),
            Some("30+20221128")
        );
        assert_eq!(upstream_version("9.1").as_deref(), Some("9.1"));
        assert_eq!(upstream_version("").as_deref(), None);
        assert_eq!(upstream_version("a/b-1").as_deref(), None);
    }

    fn spec(dir: &Path) -> NixosSpec {
        let f = |n: &str| {
            let p = dir.join(n);
            fs::write(&p, n).expect("write");
            p
        };
        let boot = BootFiles {
            kernel: f("vmlinuz"),
            kernel_version: "6.1.0-57-amd64".into(),
            initrd: f("initrd"),
        };
        NixosSpec::fixture(1, boot, &f("probe"), "stagehand-root")
    }

    #[test]
    fn users_json_is_tojson_shaped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = spec(dir.path()).users_groups_json().expect("json");
        assert!(!text.contains('\n') && !text.contains(": "), "{text}");
        let v: Value = serde_json::from_str(&text).expect("parse");
        assert!(keys_sorted(&v), "{text}");
        let alice = v["users"]
            .as_array()
            .and_then(|u| u.iter().find(|u| u["name"] == "alice"))
            .expect("alice");
        assert_eq!(alice["hashedPassword"], ALICE_HASH);
        assert_eq!(alice["shell"], "/run/current-system/sw/bin/bash");
        let want_keys = [
            "autoSubUidGidRange",
            "createHome",
            "description",
            "expires",
            "group",
            "hashedPassword",
            "hashedPasswordFile",
            "home",
            "homeMode",
            "initialHashedPassword",
            "initialPassword",
            "isSystemUser",
            "linger",
            "name",
            "password",
            "shell",
            "subGidRanges",
            "subUidRanges",
            "uid",
        ];
        let keys: Vec<&str> = alice
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, want_keys);
        let wheel = v["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["name"] == "wheel"))
            .expect("wheel");
        assert_eq!(
            wheel,
            &json!({"gid": 1, "members": ["alice"], "name": "wheel"})
        );
    }

    #[test]
    fn fstab_names_the_root_by_label() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = spec(dir.path()).fstab_text();
        assert!(
            text.contains("\n/dev/disk/by-label/stagehand-root / ext4 defaults 0 1\n"),
            "{text}"
        );
    }

    #[test]
    fn the_probe_reports_the_secret_the_snippet_writes() {
        let probe = include_str!("bin/guest-probe.rs");
        assert!(probe.contains(&format!("\"{SECRET_PATH}\"")));
        assert!(probe.contains(&format!("\"{POST_BOOT_PATH}\"")));
        let s = secrets_snippet();
        assert!(s.text.contains(SECRET_PATH) && s.text.contains("\"$systemConfig\""));
        assert_eq!(s.deps, ["specialfs"]);
    }

    /// The whole toplevel with stand-ins for the host programs (the real ones are used by
    /// the VM scenarios): its entries, the scripts' references, nothing Perl in the image.
    #[test]
    fn toplevel_has_nixpkgs_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let spec = spec(d);
        let fake = d.join("fakebin");
        fs::write(&fake, b"#!fake").expect("write");
        let mut packages = Vec::new();
        for p in TOOL_PACKAGES {
            let mut t = Tree::new();
            for b in p.bins {
                let name = b.rsplit('/').next().expect("name");
                t.insert(&format!("bin/{name}"), Node::executable(&fake))
                    .expect("insert");
            }
            for (l, target) in p.links {
                t.insert(&format!("bin/{l}"), Node::symlink(*target))
                    .expect("insert");
            }
            packages.push((p.name, format!("{}-1.0{}", p.name, p.suffix), t));
        }
        let tools = HostTools {
            packages,
            libraries: BTreeSet::new(),
        };
        let moddir = d.join("mods/lib/modules/6.1.0-57-amd64");
        fs::create_dir_all(moddir.join("kernel")).expect("mkdir");
        fs::write(moddir.join("kernel/ext4.ko.xz"), b"xz").expect("write");
        fs::write(moddir.join("modules.dep"), b"kernel/ext4.ko.xz:\n").expect("write");
        let modules = KernelModules {
            version: "6.1.0-57-amd64".into(),
            root: d.join("mods"),
        };
        let systemd = HostSystemd {
            systemd: fake.clone(),
            shutdown: fake.clone(),
            libraries: vec![],
            version: "252".into(),
        };
        let mut image = SystemImage::new(&systemd).expect("image");
        let g = add_nixos_generation(&mut image, &tools, &modules, &spec).expect("generation");
        let tree = image.tree().expect("tree");
        let top = g.toplevel.as_str().trim_start_matches('/').to_string();
        let text = |rel: &str| match tree.get(&format!("{top}/{rel}")) {
            Some(Node::File {
                source: crate::tree::Source::Bytes(b),
                ..
            }) => String::from_utf8(b.clone()).expect("utf8"),
            other => panic!("{rel}: {other:?}"),
        };
        assert!(g
            .toplevel
            .as_str()
            .ends_with("-nixos-system-stagehand-nixos-25.11.1.stagehand"));
        assert_eq!(text("init-interface-version"), "systemd 252");
        assert_eq!(text("system"), "x86_64-linux");
        assert_eq!(
            text("kernel-params"),
            "console=ttyS0 panic=-1 boot.panic_on_fail systemd.show_status=1"
        );
        assert!(tree.get(&format!("{top}/activation.json")).is_none());
        assert_eq!(
            tree.get(&format!("{top}/specialisation")),
            Some(&Node::Dir(Tree::new()))
        );
        let activate = text("activate");
        let bash = g.tools.get("bash").expect("bash").join("bin/bash");
        assert!(activate.starts_with(&format!(
            "#!{bash}\n\nsystemConfig='{}'\n\nexport PATH=/empty\nfor i in /nix/store/",
            g.toplevel
        )));
        // The users and etc calls name a Perl that is not in the image, and the JSON and
        // the etc tree that are.
        let perl_call = activate
            .lines()
            .find(|l| l.contains("/bin/perl \\"))
            .expect("users call");
        let perl = perl_call
            .trim_end_matches(" \\")
            .trim_end_matches("/bin/perl");
        assert!(perl.ends_with("-perl-5.40.0-env"), "{perl_call}");
        assert!(tree.get(perl.trim_start_matches('/')).is_none());
        let users_line = activate
            .lines()
            .find(|l| l.starts_with("-w /nix/store/"))
            .expect("-w line");
        let json = users_line.rsplit(' ').next().expect("json path");
        assert!(json.ends_with("-users-groups.json"));
        assert!(tree.get(json.trim_start_matches('/')).is_some());
        assert!(activate.contains(&format!("{perl}/bin/perl /nix/store/")));
        assert!(activate.contains(&format!("-setup-etc.pl {}/etc\n", g.etc)));
        // Snippets in NixOS's order, the third-party one at its place.
        let order: Vec<&str> = activate
            .lines()
            .filter_map(|l| l.strip_prefix("#### Activation script snippet "))
            .map(|l| l.trim_end_matches(':'))
            .collect();
        // NixOS's built-ins with the third-party snippet at its name's place.
        let mut want = BUILTIN_ORDER.to_vec();
        let at = want.iter().position(|n| *n == "udevd").expect("udevd");
        want.insert(at, "setupSecrets");
        assert_eq!(order, want);
        let dry = text("dry-activate");
        assert!(dry.contains("#### Activation script snippet users:\n"));
        assert!(dry.contains(
            "#### Activation script snippet setupSecrets does not support dry activation.\n"
        ));
        let init = text("init");
        assert!(init.starts_with(&format!("#! {bash}\n\nsystemConfig={}\n", g.toplevel)));
        assert!(init.contains("\n$systemConfig/activate\n"));
        // Our stage 2 finds the post-boot commands in this init, as in nixpkgs' own.
        let pb = stagehand_stage2::postboot::parse_init(Path::new("init"), &init)
            .expect("stage 2 parses the fixture's init");
        assert_eq!(
            pb.script,
            stagehand_stage2::postboot::Script::File(g.post_boot.to_string())
        );
        assert_eq!(pb.shell, bash);
        let coreutils = g.tools.get("coreutils").expect("coreutils");
        assert!(pb
            .path
            .as_deref()
            .is_some_and(|p| p.starts_with(&format!("{}:", coreutils.join("bin")))));
        assert!(matches!(
            tree.get(g.post_boot.as_str().trim_start_matches('/')),
            Some(Node::File { source: crate::tree::Source::Bytes(b), .. })
                if *b == post_boot_commands().into_bytes()
        ));
        let bootspec: Value = serde_json::from_str(&text("boot.json")).expect("bootspec");
        let v1 = &bootspec["org.nixos.bootspec.v1"];
        assert_eq!(v1["init"], format!("{}/init", g.toplevel));
        assert_eq!(v1["toplevel"], g.toplevel.as_str());
        assert_eq!(bootspec["org.nixos.specialisation.v1"], json!({}));
        // Links: etc, sw (with bash), kernel-modules (with modules.dep).
        assert_eq!(
            tree.get(&format!("{top}/etc")),
            Some(&Node::symlink(g.etc.join("etc")))
        );
        let Some(Node::Symlink(sw)) = tree.get(&format!("{top}/sw")) else {
            panic!("sw")
        };
        assert_eq!(
            tree.get(&format!("{}/bin/bash", sw.trim_start_matches('/'))),
            Some(&Node::symlink(bash.clone()))
        );
        let Some(Node::Symlink(km)) = tree.get(&format!("{top}/kernel-modules")) else {
            panic!("kernel-modules")
        };
        assert!(tree
            .get(&format!(
                "{}/lib/modules/6.1.0-57-amd64/modules.dep",
                km.trim_start_matches('/')
            ))
            .is_some());
        // The etc tree: fstab and the copied entry's sidecars.
        let etc = g.etc.join("etc");
        let etc = etc.trim_start_matches('/');
        assert!(
            matches!(tree.get(&format!("{etc}/fstab")), Some(Node::Symlink(t)) if t.ends_with("-etc-fstab"))
        );
        assert_eq!(
            tree.get(&format!("{etc}/stagehand-secret.uid")),
            Some(&Node::text("alice\n"))
        );
        let Some(Node::Symlink(units)) = tree.get(&format!("{etc}/systemd/system")) else {
            panic!("systemd/system is not a link")
        };
        assert!(units.ends_with("-system-units"), "{units}");
        let units = units.trim_start_matches('/');
        assert!(matches!(
            tree.get(&format!("{units}/{}", crate::generation::PROBE_UNIT)),
            Some(Node::Symlink(t)) if t.ends_with("-unit-stagehand-probe.service/stagehand-probe.service")
        ));
        assert_eq!(
            tree.get(&format!("{units}/getty@.service")),
            Some(&Node::symlink("/dev/null"))
        );
        assert_eq!(
            tree.get("nix/var/nix/profiles/system-1-link"),
            Some(&Node::symlink(g.toplevel.as_str()))
        );
        // No Perl anywhere in the store.
        let Some(Node::Dir(store)) = tree.get("nix/store") else {
            panic!("no store")
        };
        let perl: Vec<&String> = store
            .entries()
            .map(|(name, _)| name)
            .filter(|n| n.contains("perl") || n.ends_with(".pl"))
            .collect();
        assert!(perl.is_empty(), "{perl:?}");
    }
}
