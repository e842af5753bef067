//! The bad-input matrix for the boot-loader code: `boot.json`, EFI variables, boot entries and
//! a full or missing ESP. Every case asserts what the message says (the file or field, the
//! problem and what fixes it) and what is left behind (nothing half-written).

use std::io;
use std::path::Path;

use stagehand_boot::efivars::{self, EfiVars};
use stagehand_boot::esp::{self, BootFs, Space, SpaceProbe};
use stagehand_boot::install::{self, InstallOptions};
use stagehand_boot::sdboot::{self, EspState};
use stagehand_boot::spec;
use stagehand_common::rootfs::Root;
use stagehand_testkit::FakeRoot;

fn assert_says(case: &str, msg: &str, words: &[&str]) {
    for w in words {
        assert!(msg.contains(w), "{case}: {w:?} missing from: {msg}");
    }
}

// ---- boot.json, EFI variables, entries -------------------------------------------------------

#[test]
fn bad_boot_json_names_the_file_and_the_key() {
    let p = Path::new("/nix/store/x-system/boot.json");
    let v1 = |body: &str| format!("{{\"org.nixos.bootspec.v1\": {{{body}}}}}");
    let full = r#""init": "/nix/store/x/init", "initrd": "/nix/store/i/initrd",
        "kernel": "/nix/store/k/bzImage", "kernelParams": [], "label": "L",
        "system": "x86_64-linux", "toplevel": "/nix/store/x""#;
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "empty file",
            String::new(),
            &["not valid JSON", "rebuild it"],
        ),
        (
            "truncated",
            "{\"org.nixos.bootspec.v1\": {".into(),
            &["not valid JSON"],
        ),
        (
            "v2 only",
            "{\"org.nixos.bootspec.v2\": {}}".into(),
            &["org.nixos.bootspec.v1", "only bootspec v1"],
        ),
        ("an array", "[1, 2]".into(), &["org.nixos.bootspec.v1"]),
        (
            "kernel missing",
            v1(&full.replace("\"kernel\": \"/nix/store/k/bzImage\",", "")),
            &[
                "missing field `kernel`",
                "org.nixos.bootspec.v1",
                "RFC 0125",
            ],
        ),
        (
            "params not strings",
            v1(&full.replace("\"kernelParams\": []", "\"kernelParams\": [1]")),
            &["integer `1`, expected a string", "RFC 0125"],
        ),
        (
            "dev.stagehand.v1 initrd outside the store",
            format!(
                "{{\"dev.stagehand.v1\": {{\"initrd\": \"/etc/shadow\"}}, \
                 \"org.nixos.bootspec.v1\": {{{full}}}}}"
            ),
            &[
                "\"dev.stagehand.v1\".initrd",
                "/etc/shadow",
                "a file in /nix/store",
            ],
        ),
        (
            "dev.stagehand.v1 with a misspelt key",
            format!(
                "{{\"dev.stagehand.v1\": {{\"initrdd\": \"/nix/store/s/initrd\"}}, \
                 \"org.nixos.bootspec.v1\": {{{full}}}}}"
            ),
            &[
                "\"dev.stagehand.v1\".\"initrdd\" is not a known key",
                "remove it",
            ],
        ),
    ];
    for (case, json, words) in &cases {
        let e = spec::parse(p, json.as_bytes()).expect_err(case);
        let msg = e.to_string();
        assert_says(case, &msg, &["/nix/store/x-system/boot.json"]);
        assert_says(case, &msg, words);
    }
}

#[test]
fn bad_efi_variables_are_named_and_do_not_stop_the_install() {
    let r = FakeRoot::new();
    let dir = "/sys/firmware/efi/efivars";
    let var = |name: &str, bytes: &[u8]| {
        let h = r.host(&format!("{dir}/{name}-{}", efivars::LOADER_GUID));
        std::fs::create_dir_all(h.parent().expect("parent")).expect("mkdir");
        std::fs::write(h, bytes).expect("write");
    };
    var("LoaderEntrySelected", &[7, 0]); // shorter than the attribute header
    var("LoaderEntryDefault", &[7, 0, 0, 0, b'a', 0, b'b']); // odd UTF-16 length
    var("LoaderEntries", &[7, 0, 0, 0, 0x00, 0xd8, b'x', 0]); // lone surrogate
    let root = Root::open(r.path()).expect("root");
    let vars = EfiVars::new(&root, Path::new(dir));
    let cases: &[(&str, &[&str])] = &[
        (
            "LoaderEntrySelected",
            &["2 bytes", "4-byte attribute header"],
        ),
        ("LoaderEntryDefault", &["3 data bytes", "not UTF-16"]),
        ("LoaderEntries", &["not valid UTF-16LE"]),
    ];
    for (name, words) in cases {
        let e = if *name == "LoaderEntries" {
            vars.list(name).map(drop).expect_err(name)
        } else {
            vars.string(name).map(drop).expect_err(name)
        };
        let msg = e.to_string();
        assert_says(name, &msg, &[name, efivars::LOADER_GUID]);
        assert_says(name, &msg, words);
    }
}

#[test]
fn garbage_boot_entries_and_loader_conf_lines_leave_our_default() {
    let mut esp = EspState {
        loader_conf: Some(b"timeout\n\0\xff\ndefault\n# default x\ndefault nixos-generation-*\nconsole-mode keep extra words\n".to_vec()),
        ..EspState::default()
    };
    let entries: &[(&str, &[u8])] = &[
        (
            "nixos-generation-2.conf",
            b"title NixOS\nversion Generation 2\nsort-key nixos\nlinux /k\n",
        ),
        (
            "nixos-generation-1.conf",
            b"title NixOS\nversion Generation 1\nsort-key nixos\n",
        ),
        // Not UTF-8, no keys, a key without a value, a counter with junk.
        ("nixos-generation-3+x-y.conf", b"\xff\xfe\x00garbage\n"),
        ("junk.conf", b"version\n\ttitle\nlinux\n"),
        ("nixos-generation-.conf", b""),
        (".conf", b"title x\n"),
    ];
    for (name, text) in entries {
        esp.entry_texts.insert((*name).into(), text.to_vec());
    }
    // The newest well-formed entry stays the default; the unreadable ones sort after it.
    assert_eq!(
        sdboot::predicted_boot(&esp).as_deref(),
        Some("nixos-generation-2.conf")
    );
    // A loader.conf of NULs has no `default`: the first entry in menu order is chosen.
    esp.loader_conf = Some(b"\0\0\0".to_vec());
    assert_eq!(
        sdboot::predicted_boot(&esp).as_deref(),
        Some("nixos-generation-2.conf")
    );
}

/// A partition reporting `available` free bytes, as a full ESP does.
struct Full(u64);

impl SpaceProbe for Full {
    fn space(&self, _fs: &BootFs) -> io::Result<Space> {
        Ok(Space {
            available: self.0,
            cluster: 4096,
        })
    }
}

/// One generation with boot.json, kernel and initrd, linked as the system profile.
fn bootable(r: &FakeRoot) {
    let top = "/nix/store/aaaa-nixos-system-demo-26.05";
    r.write("/nix/store/kkkk-linux/bzImage", &"k".repeat(100_000));
    r.write("/nix/store/iiii-initrd/initrd", &"i".repeat(50_000));
    r.write(
        &format!("{top}/boot.json"),
        &format!(
            r#"{{"org.nixos.bootspec.v1": {{"init": "{top}/init", "initrd": "/nix/store/iiii-initrd/initrd",
                "kernel": "/nix/store/kkkk-linux/bzImage", "kernelParams": ["console=ttyS0"],
                "label": "NixOS", "system": "x86_64-linux", "toplevel": "{top}"}}}}"#
        ),
    );
    r.symlink("/nix/var/nix/profiles/system-1-link", top);
    r.symlink("/nix/var/nix/profiles/system", "system-1-link");
    std::fs::create_dir_all(r.host("/boot")).expect("esp");
}

#[test]
fn a_full_esp_changes_nothing_and_says_what_to_free() {
    let r = FakeRoot::new();
    bootable(&r);
    let root = Root::open(r.path()).expect("root");
    let o = InstallOptions {
        efivars: None,
        ..InstallOptions::default()
    };
    let e = install::install(&root, &o, &Full(10_000)).expect_err("full");
    assert_says(
        "full ESP",
        &e.to_string(),
        &[
            "not enough space on",
            "/boot",
            "nothing was changed",
            "--limit",
            "nix-collect-garbage",
        ],
    );
    assert_eq!(
        std::fs::read_dir(r.host("/boot")).expect("ls").count(),
        0,
        "the ESP was written to"
    );
    // With room the same install works: the failure was the space, nothing else.
    install::install(&root, &o, &Full(u64::MAX / 2)).expect("install with room");
    assert!(r.host("/boot/loader/loader.conf").exists());
}

#[test]
fn a_missing_esp_and_a_broken_generation_are_named() {
    let r = FakeRoot::new();
    bootable(&r);
    std::fs::remove_dir(r.host("/boot")).expect("rmdir");
    let root = Root::open(r.path()).expect("root");
    let o = InstallOptions {
        efivars: None,
        ..InstallOptions::default()
    };
    let e = install::install(&root, &o, &esp::Statvfs).expect_err("no ESP");
    assert_says(
        "no ESP",
        &e.to_string(),
        &["/boot", "mount the ESP there or pass --esp"],
    );

    std::fs::create_dir_all(r.host("/boot")).expect("esp");
    std::fs::remove_file(r.host("/nix/store/kkkk-linux/bzImage")).expect("rm kernel");
    let e = install::install(&root, &o, &Full(u64::MAX / 2)).expect_err("kernel gone");
    assert_says("kernel gone", &e.to_string(), &["generation 1", "bzImage"]);
    assert_eq!(std::fs::read_dir(r.host("/boot")).expect("ls").count(), 0);
}

// ---- injected boot entries (issue #15 item 7) ------------------------------------------------

/// A boot.json whose v1 object is `full` with `from` replaced by `to`.
fn boot_json(top: &str, from: &str, to: &str) -> String {
    let full = format!(
        r#"{{"org.nixos.bootspec.v1": {{"init": "{top}/init", "initrd": "/nix/store/iiii-initrd/initrd",
            "kernel": "/nix/store/kkkk-linux/bzImage", "kernelParams": ["console=ttyS0"],
            "label": "NixOS", "system": "x86_64-linux", "toplevel": "{top}"}}}}"#
    );
    assert!(full.contains(from), "fixture has no {from:?}");
    full.replace(from, to)
}

#[test]
fn control_characters_and_paths_outside_the_store_are_refused_in_boot_json() {
    let p = Path::new("/nix/store/x-system/boot.json");
    let top = "/nix/store/x-system";
    let text_rule = "must not contain control characters";
    let store_rule = "must be a file in /nix/store";
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "newline in the label",
            r#""label": "NixOS""#,
            r#""label": "NixOS\nlinux /EFI/evil.efi\noptions init=/bin/sh""#,
            &["\"org.nixos.bootspec.v1\".label", text_rule],
        ),
        (
            "newline in a kernel parameter",
            r#"["console=ttyS0"]"#,
            r#"["console=ttyS0", "quiet\ninitrd /EFI/evil.efi"]"#,
            &["\"org.nixos.bootspec.v1\".kernelParams[1]", text_rule],
        ),
        (
            "carriage return in a kernel parameter",
            r#"["console=ttyS0"]"#,
            r#"["console=ttyS0\r"]"#,
            &["kernelParams[0]", text_rule],
        ),
        (
            "kernel outside the store",
            "/nix/store/kkkk-linux/bzImage",
            "/etc/shadow",
            &[
                "\"org.nixos.bootspec.v1\".kernel",
                "/etc/shadow",
                store_rule,
            ],
        ),
        (
            "kernel escaping the store through ..",
            "/nix/store/kkkk-linux/bzImage",
            "/nix/store/kkkk-linux/../../../etc/shadow",
            &[
                "\"org.nixos.bootspec.v1\".kernel",
                "../etc/shadow",
                store_rule,
            ],
        ),
        (
            "initrd escaping the store through ..",
            "/nix/store/iiii-initrd/initrd",
            "/nix/store/../etc/shadow",
            &["\"org.nixos.bootspec.v1\".initrd", store_rule],
        ),
        (
            "the store directory itself",
            "/nix/store/kkkk-linux/bzImage",
            "/nix/store/x/..",
            &["kernel", store_rule],
        ),
        (
            "a relative kernel",
            "/nix/store/kkkk-linux/bzImage",
            "nix/store/kkkk-linux/bzImage",
            &["kernel", store_rule],
        ),
    ];
    for (case, from, to, words) in cases {
        let json = boot_json(top, from, to);
        let e = spec::parse(p, json.as_bytes()).expect_err(case);
        let msg = e.to_string();
        assert_says(
            case,
            &msg,
            &["/nix/store/x-system/boot.json", "no boot entry"],
        );
        assert_says(case, &msg, words);
    }
    // A `..` that stays inside the store is only spelling; symlinks are checked at install.
    let json = boot_json(
        top,
        "/nix/store/kkkk-linux/bzImage",
        "/nix/store/zzzz/../kkkk-linux/bzImage",
    );
    spec::parse(p, json.as_bytes()).expect("a .. inside the store");

    // A specialisation is checked the same way and named as such.
    let special = format!(
        r#"{{"org.nixos.bootspec.v1": {{"init": "{top}/init", "kernel": "/nix/store/k/bzImage",
            "kernelParams": [], "label": "L", "system": "x86_64-linux", "toplevel": "{top}"}},
          "org.nixos.specialisation.v1": {{"debug": {{"org.nixos.bootspec.v1": {{
            "init": "{top}/init", "kernel": "/nix/store/k/bzImage", "kernelParams": [],
            "label": "L\u0000", "system": "x86_64-linux", "toplevel": "{top}"}}}}}}}}"#
    );
    let e = spec::parse(p, special.as_bytes()).expect_err("specialisation");
    assert_says(
        "specialisation",
        &e.to_string(),
        &[
            "\"org.nixos.specialisation.v1\".\"debug\"",
            ".label",
            text_rule,
        ],
    );
    // The systemd-boot extension's sort key and device tree too.
    let ext = |key: &str, value: &str| {
        boot_json(
            top,
            "}}",
            &format!(r#"}}, "org.nixos.systemd-boot": {{"{key}": "{value}"}}}}"#),
        )
    };
    let e = spec::parse(p, ext("sortKey", "nixos\\nlinux /x").as_bytes()).expect_err("sortKey");
    assert_says("sortKey", &e.to_string(), &["sortKey", text_rule]);
    let e = spec::parse(p, ext("devicetree", "/etc/shadow").as_bytes()).expect_err("dtb");
    assert_says("devicetree", &e.to_string(), &["devicetree", store_rule]);
}

/// Everything under the ESP, for checking what reached it.
fn esp_files(r: &FakeRoot) -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).expect("ls") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                let rel = p.strip_prefix(base).expect("under").display().to_string();
                out.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    let mut out = Vec::new();
    walk(&r.host("/boot"), &r.host("/boot"), &mut out);
    out
}

/// Generation 2 (current, good) on top of [`bootable`]'s generation 1, whose boot.json is
/// replaced by `gen1_json`.
fn two_generations(r: &FakeRoot, gen1_json: &str) {
    bootable(r);
    let top1 = "/nix/store/aaaa-nixos-system-demo-26.05";
    r.write(&format!("{top1}/boot.json"), gen1_json);
    let top2 = "/nix/store/bbbb-nixos-system-demo-26.05";
    r.write(&format!("{top2}/boot.json"), &boot_json(top2, "x", "x"));
    r.symlink("/nix/var/nix/profiles/system-2-link", top2);
    std::fs::remove_file(r.host("/nix/var/nix/profiles/system")).expect("rm profile");
    r.symlink("/nix/var/nix/profiles/system", "system-2-link");
}

#[test]
fn an_injecting_generation_gets_no_entry_and_the_others_still_do() {
    let top1 = "/nix/store/aaaa-nixos-system-demo-26.05";
    let shadow = "root:$6$secret-hash:19000:0:99999:7:::\n";
    let bad: &[(&str, String, &[&str])] = &[
        (
            "newline in the label",
            boot_json(
                top1,
                r#""label": "NixOS""#,
                r#""label": "NixOS\ninitrd /x""#,
            ),
            &[".label"],
        ),
        (
            "newline in a parameter",
            boot_json(top1, r#""console=ttyS0""#, r#""a\noptions init=/bin/sh""#),
            &[".kernelParams[0]"],
        ),
        (
            "kernel is /etc/shadow",
            boot_json(top1, "/nix/store/kkkk-linux/bzImage", "/etc/shadow"),
            &[".kernel", "/etc/shadow"],
        ),
        (
            "kernel in the store, linked to /etc/shadow",
            boot_json(
                top1,
                "/nix/store/kkkk-linux/bzImage",
                "/nix/store/evil/bzImage",
            ),
            &["/nix/store/evil/bzImage", "resolves to /etc/shadow"],
        ),
    ];
    for (case, json, words) in bad {
        let r = FakeRoot::new();
        r.write("/etc/shadow", shadow);
        r.symlink("/nix/store/evil/bzImage", "/etc/shadow");
        two_generations(&r, json);
        let root = Root::open(r.path()).expect("root");
        let o = InstallOptions {
            efivars: None,
            ..InstallOptions::default()
        };
        let report = install::install(&root, &o, &Full(u64::MAX / 2)).expect(case);
        let warnings = report.plan.warnings.join("\n");
        assert_says(case, &warnings, &["generation 1"]);
        assert_says(case, &warnings, words);
        let files = esp_files(&r);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("loader/entries/nixos-generation-2")),
            "{case}: {names:?}"
        );
        for (name, bytes) in &files {
            let text = String::from_utf8_lossy(bytes);
            assert!(
                !name.contains("generation-1") && !text.contains("secret-hash"),
                "{case}: {name} on the ESP"
            );
            if name.ends_with(".conf") && name.contains("entries/") {
                let linux = text.lines().filter(|l| l.starts_with("linux")).count();
                let options = text.lines().filter(|l| l.starts_with("options")).count();
                assert_eq!((linux, options), (1, 1), "{case}: {name}:\n{text}");
            }
        }

        // The same generation as the current one: the install stops, names it, writes nothing.
        let r = FakeRoot::new();
        r.write("/etc/shadow", shadow);
        r.symlink("/nix/store/evil/bzImage", "/etc/shadow");
        bootable(&r);
        r.write(&format!("{top1}/boot.json"), json);
        let root = Root::open(r.path()).expect("root");
        let e = install::install(&root, &o, &Full(u64::MAX / 2)).expect_err(case);
        assert_says(case, &e.to_string(), &["generation 1"]);
        assert_says(case, &e.to_string(), words);
        assert!(esp_files(&r).is_empty(), "{case}: the ESP was written to");
    }
}
