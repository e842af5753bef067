//! The Nix files (`flake.nix`, `nix/*.nix`) parse. Debian's Nix (2.8) cannot evaluate
//! nixpkgs, so this is the check that runs everywhere: `nix-instantiate --parse` on every
//! file, which catches syntax errors but not wrong option names or types (nix/README.md says
//! what is verified and how). Needs `nix-instantiate` (vm-tests/setup-host installs nix-bin).

use std::path::{Path, PathBuf};
use std::process::Command;

use stagehand_testkit::host::require_tool;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Every `.nix` file under `dir`, recursively.
fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            nix_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "nix") {
            out.push(p);
        }
    }
}

/// `nix-instantiate --parse FILE`: `Err(stderr)` when it does not parse.
fn parse(tool: &Path, file: &Path) -> Result<(), String> {
    let out = Command::new(tool)
        .arg("--parse")
        .arg(file)
        // Nix wants a writable home and state dir for nothing but its own bookkeeping.
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()));
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn every_nix_file_parses() {
    let tool = require_tool("nix-instantiate");
    let root = repo();
    let mut files = vec![root.join("flake.nix")];
    nix_files(&root.join("nix"), &mut files);
    // The files the flake and the README name must all be there: an empty walk would pass.
    for want in ["flake.nix", "nix/package.nix", "nix/module.nix"] {
        assert!(
            files.iter().any(|f| f == &root.join(want)),
            "{want} is missing: {files:?}"
        );
    }
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            parse(&tool, f)
                .err()
                .map(|e| format!("{}:\n{e}", f.display()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_check_fails_on_a_syntax_error() {
    // So that `every_nix_file_parses` passing means something.
    let tool = require_tool("nix-instantiate");
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.nix");
    std::fs::write(&bad, "{ config, ... }: { boot.stagehand.enable = true; ").expect("write");
    let e = parse(&tool, &bad).expect_err("an unclosed brace parses");
    assert!(e.contains("syntax error"), "{e}");
}

/// `cli/tests/nix/module-stub.nix` evaluated with `args` (a Nix attribute set).
fn module_with(args: &str) -> serde_json::Value {
    let tool = require_tool("nix-instantiate");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nix");
    let out = Command::new(tool)
        .current_dir(&dir)
        .args(["--eval", "--strict", "--json", "--expr"])
        .arg(format!("import ./module-stub.nix {args}"))
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("run nix-instantiate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn s<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string: {v}"))
}

const PKG: &str = "/nix/store/00000000000000000000000000000000-stagehand-0.1.0";
const STORE: &str = "/nix/store/00000000000000000000000000000000";

#[test]
fn the_module_builds_the_initrd_from_the_configuration() {
    let m = module_with("{ }");
    assert_eq!(m["enabledBy"], true);
    assert_eq!(
        m["options"],
        serde_json::json!(["enable", "extraModules", "lvm", "package", "replaceInit"])
    );
    // The initrd: from the configuration's fstab, modules tree and firmware (not from the
    // toplevel), NixOS's module lists plus the extra ones, once each and in order.
    assert_eq!(
        s(&m, "inputsScript"),
        format!(
            "mkdir -p $out/etc\n\
             ln -s {STORE}-etc-fstab $out/etc/fstab\n\
             ln -s {STORE}-linux-6.6.7-modules $out/kernel-modules\n\
             ln -s {STORE}-firmware/lib/firmware $out/firmware\n"
        )
    );
    assert_eq!(
        s(&m, "initrdScript"),
        format!(
            "mkdir $out\n\
             stagehand-initrd build \\\n  \
             --system {STORE}-stagehand-initrd-inputs \\\n  \
             --generic \\\n  \
             --modules 'dm_mod,virtio_net,ahci' \\\n  \
             --optional-modules 'sd_mod' \\\n  \
             --stage1-options {STORE}-stagehand-stage1-options.json \\\n  \
             --stage1 {PKG}/bin/stage1 \\\n  \
             --stage2 {PKG}/bin/stage2 \\\n  \
             -o $out/initrd\n"
        )
    );
    assert_eq!(m["initrdTools"], serde_json::json!(["stagehand-0.1.0"]));
    // Every boot loader boots it, and boot.json names it for `install-bootloader`.
    assert_eq!(
        m["bootspec"],
        serde_json::json!({"dev.stagehand.v1": {"initrd": format!("{STORE}-stagehand-initrd-6.6.7/initrd")}})
    );
    // Secrets: appended by stagehand-initrd at install time, quoted, null = same path.
    assert_eq!(m["appenderPriority"], 50);
    assert!(
        s(&m, "appender").ends_with(&format!(
            "exec {PKG}/bin/stagehand-initrd append-secrets \"$1\" \
             '/etc/secret key=/root/it'\\''s secret' \
             '/etc/ssh/ssh_host_ed25519_key=/etc/ssh/ssh_host_ed25519_key'\n"
        )),
        "{}",
        s(&m, "appender")
    );
    // Our stage 2 becomes init; NixOS's script is kept beside it.
    assert_eq!(m["builderCommands"]["condition"], true);
    assert_eq!(
        m["builderCommands"]["content"],
        format!("mv $out/init $out/nixos-stage-2-init\ncp {PKG}/bin/stage2 $out/init\n")
    );
    // The scripted layout is asked for with a default (an explicit setting wins).
    assert_eq!(
        m["systemdInitrd"],
        serde_json::json!({"priority": 1000, "content": false})
    );
    assert_eq!(m["assertions"], serde_json::json!([true, true]));
    assert_eq!(m["packages"], serde_json::json!(["stagehand-0.1.0"]));
}

#[test]
fn the_module_without_secrets_init_swap_or_with_the_systemd_initrd() {
    let m = module_with("{ replaceInit = false; secrets = { }; systemdInitrd = true; }");
    assert_eq!(m["builderCommands"]["condition"], false);
    let appender = s(&m, "appender");
    assert!(appender.ends_with("fi\nexit 0\n"), "{appender}");
    assert!(!appender.contains("append-secrets"), "{appender}");
    // The systemd initrd is refused by the first assertion.
    assert_eq!(m["assertions"], serde_json::json!([false, true]));
}

/// The stage-1 options the module hands `stagehand-initrd build --stage1-options`, read
/// the way the tool reads them (strictly: an unknown key would fail the initrd build).
fn stage1_options(m: &serde_json::Value) -> stagehand_common::stage1_config::Stage1Options {
    serde_json::from_value(m["stage1Options"].clone())
        .unwrap_or_else(|e| panic!("the module's stage-1 options are refused: {e}\n{m}"))
}

#[test]
fn without_luks_or_lvm_the_stage1_options_are_the_defaults() {
    let m = module_with("{ }");
    assert_eq!(
        stage1_options(&m),
        stagehand_common::stage1_config::Stage1Options::default()
    );
}

#[test]
fn luks_devices_and_lvm_come_from_nixos_options() {
    let m = module_with(
        r#"{ rootDevice = "/dev/mapper/vg-root"; swraid = true;
             mdadmConf = "MAILADDR root\nARRAY /dev/md/root metadata=1.2 name=nixos:root UUID=1c2b3d4e:5f607182:93a4b5c6:d7e8f901\n";
             secrets = { "/keyfile" = null; };
             luksDevices = { cryptroot = { device = "/dev/disk/by-uuid/4d1f"; header = null;
               keyFile = "/keyfile"; keyFileSize = 4096; keyFileOffset = 512;
               allowDiscards = true; bypassWorkqueues = true; preLVM = true;
               fallbackToPassword = true; }; }; }"#,
    );
    let o = stage1_options(&m);
    assert_eq!(o.luks.len(), 1);
    let d = &o.luks[0];
    assert_eq!(
        (d.name.as_str(), d.device.as_str(), d.key_file.as_deref()),
        ("cryptroot", "/dev/disk/by-uuid/4d1f", Some("/keyfile"))
    );
    assert_eq!(
        (d.key_file_size, d.key_file_offset),
        (Some(4096), Some(512))
    );
    assert!(d.allow_discards && d.bypass_workqueues && d.pre_lvm && d.fallback_to_password);
    // /dev/mapper/vg-root is no LUKS device: an LVM volume, so LVM is on by default.
    assert!(o.lvm, "{m}");
    assert!(o.swraid && o.reuse_passphrases);
    // mdadm.conf's ARRAY lines become the arrays stage 1 waits for.
    assert_eq!(o.md_arrays.len(), 1, "{m}");
    assert_eq!(o.md_arrays[0].uuid, "1c2b3d4e:5f607182:93a4b5c6:d7e8f901");
    assert!(o.md_arrays[0].allow_degraded);
    assert!(m["assertions"]
        .as_array()
        .expect("list")
        .iter()
        .all(|a| a == true));

    // The LUKS device itself under /dev/mapper is no reason for LVM.
    let m = module_with(
        r#"{ rootDevice = "/dev/mapper/cryptroot";
             luksDevices = { cryptroot = { device = "/dev/vda2"; header = null; keyFile = null;
               keyFileSize = null; keyFileOffset = null; allowDiscards = false;
               bypassWorkqueues = false; preLVM = true; fallbackToPassword = false; }; }; }"#,
    );
    assert!(!stage1_options(&m).lvm);
}

#[test]
fn luks_features_stage1_lacks_are_refused_at_evaluation() {
    let m = module_with(
        r#"{ luksDevices = { c2 = { device = "/dev/vda2"; header = null; keyFile = "/dev/sdb1";
               keyFileSize = null; keyFileOffset = null; allowDiscards = false;
               bypassWorkqueues = false; preLVM = false; fallbackToPassword = false;
               fido2.credential = "ab"; preOpenCommands = "mount x"; }; }; }"#,
    );
    let failed: Vec<&str> = m["assertions"]
        .as_array()
        .expect("list")
        .iter()
        .zip(m["assertionMessages"].as_array().expect("list"))
        .filter(|(a, _)| *a == false)
        .filter_map(|(_, msg)| msg.as_str())
        .collect();
    assert_eq!(failed.len(), 3, "{failed:#?}");
    assert!(failed[0].contains("c2 uses a YubiKey, GPG card or FIDO2 token"));
    assert!(failed[1].contains("preOpenCommands"));
    assert!(failed[2].contains("keyFile (/dev/sdb1) must be one of boot.initrd.secrets"));
    // LUKS on LVM (preLVM = false) needs LVM.
    assert!(stage1_options(&m).lvm);
}
