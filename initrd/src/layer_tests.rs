//! The LUKS and LVM options of the spec (issue #16): taken strictly from the JSON, copied
//! into the stage-1 config, and the modules the layers need put in the initrd.

use stagehand_common::stage1_config::Stage1Config;

use crate::tests::{spec, tree};
use crate::*;

#[test]
fn luks_and_lvm_options_are_strict() {
    let full: FullSpec = serde_json::from_str(
        r#"{"stage1": "/s", "stage1_options": {"lvm": true, "luks": [
            {"name": "cryptroot", "device": "/dev/disk/by-uuid/5ca1ab1e-0b5e-4d1e-9a7a-c0ffee000016",
             "key_file": "/etc/secrets/root.key", "key_file_size": 64, "key_file_offset": 16,
             "allow_discards": true, "bypass_workqueues": true, "pre_lvm": false}]}}"#,
    )
    .expect("json");
    let o = &full.extras.stage1_options;
    assert!(o.lvm && o.reuse_passphrases);
    assert_eq!(o.passphrase_tries, 3);
    let d = &o.luks[0];
    assert_eq!((d.key_file_size, d.key_file_offset), (Some(64), Some(16)));
    assert!(d.allow_discards && d.bypass_workqueues && !d.pre_lvm && !d.fallback_to_password);
    // pre_lvm defaults to true, as NixOS's preLVM.
    let full: FullSpec = serde_json::from_str(
        r#"{"stage1": "/s", "stage1_options": {"luks": [{"name": "a", "device": "/dev/vda"}]}}"#,
    )
    .expect("json");
    assert!(full.extras.stage1_options.luks[0].pre_lvm);
    for bad in [
        r#"{"stage1": "/s", "stage1_options": {"luks": [{"name": "a", "device": "/dev/vda", "keyFile": "/k"}]}}"#,
        r#"{"stage1": "/s", "stage1_options": {"luks": [{"name": "a"}]}}"#,
        r#"{"stage1": "/s", "stage1_options": {"lvm_enable": true}}"#,
    ] {
        let e = serde_json::from_str::<FullSpec>(bad)
            .expect_err(bad)
            .to_string();
        assert!(
            e.contains("keyFile") || e.contains("device") || e.contains("lvm_enable"),
            "{e}"
        );
    }
}

#[test]
fn layers_bring_their_modules() {
    let t = tree(
        &[
            ("kernel/drivers/md/dm-mod.ko", &["depends=", "name=dm_mod"]),
            (
                "kernel/drivers/md/dm-crypt.ko",
                &["depends=dm-mod", "name=dm_crypt"],
            ),
            ("kernel/crypto/ecb.ko", &["depends=", "name=ecb"]),
            ("kernel/crypto/xts.ko", &["depends=", "name=xts"]),
            ("kernel/crypto/essiv.ko", &["depends=", "name=essiv"]),
            ("kernel/fs/ext4.ko", &["depends=", "name=ext4"]),
        ],
        &[],
    );
    let names = |extras: &SpecExtras| -> Vec<(String, bool)> {
        let initrd = build_with(&spec(&t, &["ext4"], &[]), extras).expect("build");
        let config: Stage1Config = initrd.config;
        config
            .modules
            .iter()
            .map(|m| (m.name.clone(), m.optional))
            .collect()
    };
    let mut extras = SpecExtras::default();
    assert_eq!(names(&extras), [("ext4".to_owned(), false)]);
    extras.stage1_options.lvm = true;
    assert_eq!(
        names(&extras),
        [("ext4".to_owned(), false), ("dm_mod".to_owned(), false)]
    );
    extras.stage1_options.luks = vec![stagehand_common::stage1_config::LuksDevice::new(
        "root", "/dev/vda",
    )];
    let got = names(&extras);
    for (m, optional) in [
        ("dm_mod", false),
        ("dm_crypt", false),
        ("ecb", false),
        ("xts", false),
        ("essiv", true),
    ] {
        assert!(
            got.contains(&(m.to_owned(), optional)),
            "{m} missing from {got:?}"
        );
    }
    // aesni_intel is optional and absent from this kernel: a warning, not an error.
    assert!(!got.iter().any(|(m, _)| m == "aesni_intel"));
}

#[test]
fn fstab_takes_layer_devices_only_with_layers() {
    let entries = crate::fstab::parse(
        "/dev/mapper/cryptroot / ext4 defaults 0 1\n/dev/vg/nix /nix ext4 defaults 0 2\n",
    )
    .expect("fstab");
    for e in &entries {
        let err = crate::fstab::to_filesystem(e)
            .expect_err("no layers")
            .to_string();
        assert!(
            err.contains("--stage1-options") || err.contains("LVM volume"),
            "{err}"
        );
        let (fs, _) = crate::fstab::to_filesystem_with(e, true).expect("with layers");
        assert_eq!(fs.device, e.device);
    }
    // A udev link stays refused either way: stage 1 does not make it.
    let e = &crate::fstab::parse("/dev/disk/by-id/x / ext4 defaults 0 1\n").expect("fstab")[0];
    assert!(crate::fstab::to_filesystem_with(e, true).is_err());
}
