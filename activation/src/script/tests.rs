//! The reader against scripts in the format nixpkgs' activation-script.nix writes.

use super::*;

const PERL: &str = "/nix/store/8x1-perl-5.40.0-env/bin/perl";

/// One snippet block exactly as activation-script.nix frames it.
fn block(name: &str, text: &str) -> String {
    format!(
        "#### Activation script snippet {name}:\n_localstatus=0\n{text}\n\n\
         if (( _localstatus > 0 )); then\n  \
         printf \"Activation script snippet '%s' failed (%s)\\n\" \"{name}\" \"$_localstatus\"\n\
         fi\n\n"
    )
}

fn script(blocks: &[(&str, &str)], dry: bool) -> String {
    let mut s = String::from(
        "#!/nix/store/4bj-bash-5.2p37/bin/bash\n\n\
         source /nix/store/q1z-lib.sh\n\n\
         systemConfig='/nix/store/aaa-nixos-system-demo-25.11'\n\n\
         export PATH=/empty\n\
         for i in /nix/store/c1-coreutils-9.5 /nix/store/g1-gnugrep-3.11; do\n    \
         PATH=$PATH:$i/bin:$i/sbin\ndone\n\n\
         _status=0\ntrap \"_status=1 _localstatus=\\$?\" ERR\n\n\
         # Ensure a consistent umask.\numask 0022\n\n",
    );
    for (name, text) in blocks {
        match text.strip_prefix("DRY-PLACEHOLDER") {
            Some(_) => s.push_str(&format!(
                "#### Activation script snippet {name} does not support dry activation.\n"
            )),
            None => s.push_str(&block(name, text)),
        }
    }
    if !dry {
        s.push_str(
            "\n# Make this configuration the current configuration.\n\
             # The readlink is there to ensure that when $systemConfig = /system\n\
             # (which is a symlink to the store), /run/current-system is still\n\
             # used as a garbage collection root.\n\
             ln -sfn \"$(readlink -f \"$systemConfig\")\" /run/current-system\n\n\
             exit $_status\n",
        );
    }
    s
}

fn users_text() -> String {
    format!(
        "install -m 0700 -d /root\ninstall -m 0755 -d /home\n\n{PERL} \\\n\
         -w /nix/store/u1-update-users-groups.pl /nix/store/u2-users-groups.json\n"
    )
}

fn etc_text() -> String {
    format!(
        "# Set up the statically computed bits of /etc.\necho \"setting up /etc...\"\n\
         {PERL} /nix/store/e1-setup-etc.pl /nix/store/e2-etc/etc\n"
    )
}

const BINSH: &str = "# Create the required /bin/sh symlink; otherwise lots of things\n\
    # (notably the system() function) won't work.\n\
    mkdir -p /bin\nchmod 0755 /bin\n\
    ln -sfn \"/nix/store/b1-bash-interactive-5.2p37/bin/sh\" /bin/.sh.tmp\n\
    mv /bin/.sh.tmp /bin/sh # atomically replace /bin/sh\n";

const USRBINENV: &str = "mkdir -p /usr/bin\nchmod 0755 /usr/bin\n\
    ln -sfn /nix/store/c1-coreutils-9.5/bin/env /usr/bin/.env.tmp\n\
    mv /usr/bin/.env.tmp /usr/bin/env # atomically replace /usr/bin/env\n";

const SPECIALFS: &str = "specialMount() {\n  local device=\"$1\"\n  local mountPoint=\"$2\"\n  \
    local options=\"$3\"\n  local fsType=\"$4\"\n\n  if mountpoint -q \"$mountPoint\"; then\n    \
    local options=\"remount,$options\"\n  else\n    mkdir -p \"$mountPoint\"\n    \
    chmod 0755 \"$mountPoint\"\n  fi\n  \
    mount -t \"$fsType\" -o \"$options\" \"$device\" \"$mountPoint\"\n}\n\
    source /nix/store/m1-mounts.sh\n";

const HASHES: &str = "users=()\nwhile IFS=: read -r user hash _; do\n  \
    if [[ \"$hash\" = \"$\"* && ! \"$hash\" =~ ^\\$(y|gy|7|2b|2y|2a|6)\\$ ]]; then\n    \
    users+=(\"$user\")\n  fi\ndone </etc/shadow\n\n\
    if (( \"${#users[@]}\" )); then\n  echo \"\n\
    WARNING: The following user accounts rely on password hashing algorithms\n\
    that have been removed. They need to be renewed as soon as possible, as\n\
    they do prevent their users from logging in.\"\n  printf ' - %s\\n' \"${users[@]}\"\nfi\n";

const MODPROBE: &str = "# Allow the kernel to find our wrapped modprobe (which searches\n\
    # in the right location in the Nix store for kernel modules).\n\
    # We need this when the kernel (or some module) auto-loads a\n# module.\n\
    echo /nix/store/k1-kmod-31/bin/modprobe > /proc/sys/kernel/modprobe\n";

const UDEVD: &str = "# The deprecated hotplug uevent helper is not used anymore\n\
    if [ -e /proc/sys/kernel/hotplug ]; then\n  echo \"\" > /proc/sys/kernel/hotplug\nfi\n\n\
    # Allow the kernel to find our firmware.\n\
    if [ -e /sys/module/firmware_class/parameters/path ]; then\n  \
    echo -n \"/nix/store/f1-firmware/lib/firmware\" > /sys/module/firmware_class/parameters/path\n\
    fi\n";

const SECRETS: &str = "echo \"[sops] setting up secrets for $systemConfig\"\n\
    mkdir -p /run/secrets\nif (( _localstatus > 0 )); then\n  echo inner\nfi\n";

fn full() -> Vec<(&'static str, String)> {
    vec![
        ("binsh", BINSH.to_owned()),
        ("setupSecrets", SECRETS.to_owned()),
        ("users", users_text()),
        ("specialfs", SPECIALFS.to_owned()),
        ("etc", etc_text()),
        ("hashes", HASHES.to_owned()),
        ("modprobe", MODPROBE.to_owned()),
        ("udevd", UDEVD.to_owned()),
        ("usrbinenv", USRBINENV.to_owned()),
    ]
}

fn as_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(n, t)| (*n, t.as_str())).collect()
}

#[test]
fn parses_snippets_in_the_scripts_order_with_prelude_and_tail() {
    let text = script(&as_refs(&full()), false);
    let s = parse(text.as_bytes()).expect("parse");
    assert_eq!(s.shell, "/nix/store/4bj-bash-5.2p37/bin/bash");
    assert_eq!(
        s.system_config.as_deref(),
        Some("/nix/store/aaa-nixos-system-demo-25.11")
    );
    assert_eq!(
        s.prelude,
        "source /nix/store/q1z-lib.sh\nexport PATH=/empty\n\
         for i in /nix/store/c1-coreutils-9.5 /nix/store/g1-gnugrep-3.11; do\n    \
         PATH=$PATH:$i/bin:$i/sbin\ndone"
    );
    let names: Vec<&str> = s.snippets.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "binsh",
            "setupSecrets",
            "users",
            "specialfs",
            "etc",
            "hashes",
            "modprobe",
            "udevd",
            "usrbinenv"
        ]
    );
    // A snippet's own `if (( _localstatus > 0 ))` stays in its text.
    assert_eq!(s.snippets[1].text, SECRETS.trim_end());
    assert_eq!(s.snippets[1].line, 32);
    assert!(s.tail.is_empty(), "{:?}", s.tail);
}

#[test]
fn every_builtin_is_recognised_with_its_paths() {
    let text = script(&as_refs(&full()), false);
    let s = parse(text.as_bytes()).expect("parse");
    let got: Vec<(String, Option<Builtin>)> = s
        .snippets
        .iter()
        .map(|x| (x.name.clone(), classify(&x.name, &x.text)))
        .collect();
    let want = [
        (
            "binsh",
            Some(Builtin::Binsh {
                target: "/nix/store/b1-bash-interactive-5.2p37/bin/sh".into(),
            }),
        ),
        ("setupSecrets", None),
        (
            "users",
            Some(Builtin::Users {
                spec: "/nix/store/u2-users-groups.json".into(),
            }),
        ),
        ("specialfs", Some(Builtin::Specialfs)),
        (
            "etc",
            Some(Builtin::Etc {
                tree: "/nix/store/e2-etc/etc".into(),
            }),
        ),
        ("hashes", Some(Builtin::Hashes)),
        (
            "modprobe",
            Some(Builtin::Modprobe {
                path: "/nix/store/k1-kmod-31/bin/modprobe".into(),
            }),
        ),
        (
            "udevd",
            Some(Builtin::Udevd {
                firmware: "/nix/store/f1-firmware/lib/firmware".into(),
            }),
        ),
        (
            "usrbinenv",
            Some(Builtin::Usrbinenv {
                target: Some("/nix/store/c1-coreutils-9.5/bin/env".into()),
            }),
        ),
    ];
    let want: Vec<(String, Option<Builtin>)> =
        want.into_iter().map(|(n, b)| (n.to_owned(), b)).collect();
    assert_eq!(got, want);
}

#[test]
fn older_nixpkgs_forms_are_recognised_too() {
    // 2020-era texts: perl with -I include paths, mkdir -m, the direct /bin/sh link,
    // the one-line rmdir.
    let users = format!(
        "{PERL} -w \\\n  -I/nix/store/p1-FileSlurp/lib/perl5/site_perl \\\n  \
         -I /nix/store/p2-JSON/lib/perl5/site_perl \\\n  \
         /nix/store/u1-update-users-groups.pl /nix/store/u3-users-groups.json"
    );
    assert_eq!(
        classify("users", &users),
        Some(Builtin::Users {
            spec: "/nix/store/u3-users-groups.json".into()
        })
    );
    assert_eq!(
        classify(
            "binsh",
            "mkdir -m 0755 -p /bin\nln -sfn /nix/store/b2-bash/bin/sh /bin/sh\n"
        ),
        Some(Builtin::Binsh {
            target: "/nix/store/b2-bash/bin/sh".into()
        })
    );
    assert_eq!(
        classify(
            "usrbinenv",
            "rm -f /usr/bin/env\nrmdir --ignore-fail-on-non-empty /usr/bin /usr\n"
        ),
        Some(Builtin::Usrbinenv { target: None })
    );
    assert_eq!(
        classify(
            "usrbinenv",
            "rm -f /usr/bin/env\n\
             if test -d /usr/bin; then rmdir --ignore-fail-on-non-empty /usr/bin; fi\n\
             if test -d /usr; then rmdir --ignore-fail-on-non-empty /usr; fi\n"
        ),
        Some(Builtin::Usrbinenv { target: None })
    );
    assert_eq!(classify("groups", "\n\n"), Some(Builtin::Empty));
}

#[test]
fn a_changed_builtin_text_runs_as_bash() {
    // Each is a real override seen in the wild: one line more or different.
    let cases = [
        ("users", format!("{}\necho extra", users_text())),
        ("etc", format!("{}\nmkdir -p /root/.kube", etc_text())),
        (
            "etc",
            "echo \"setting up /etc...\"\n/nix/store/n1-nixos-core/bin/nixos-core setup-etc /nix/store/e2-etc/etc".into(),
        ),
        ("binsh", "mkdir -p /bin\nln -sfn /nix/store/b2-bash/bin/bash /bin/sh\nchmod 0755 /bin/bash".into()),
        ("binsh", "mkdir -p /bin\nln -sfn /nix/store/b2-bash/bin/sh /bin/.sh.tmp\n".into()),
        ("usrbinenv", "mkdir -p /usr/bin\nln -sfn /nix/store/c1/bin/env /usr/bin/.env.tmp\nmv -f /usr/bin/.env.tmp /usr/bin/env".into()),
        ("specialfs", SPECIALFS.replace("local options=\"remount,$options\"", "return 0")),
        ("hashes", HASHES.replace("printf", "echo")),
        ("modprobe", "echo $(which modprobe) > /proc/sys/kernel/modprobe".into()),
        ("modprobe", "mkdir -p /lib/modules\necho /nix/store/k1/bin/modprobe > /proc/sys/kernel/modprobe".into()),
        ("udevd", UDEVD.replace("/sys/module/firmware_class/parameters/path ]", "/x ]")),
        ("users", format!("{PERL} -w /nix/store/u1-update-users-groups.pl /nix/store/u2.json; rm -rf /")),
        ("users", format!("{PERL} -w /nix/store/u1-update-users-groups.pl $(cat /x)")),
        ("setupSecrets", "true".into()),
    ];
    for (name, text) in cases {
        assert_eq!(classify(name, &text), None, "{name}: {text}");
    }
}

#[test]
fn dry_activate_marks_snippets_without_support() {
    let text = script(
        &[
            ("setupSecrets", "DRY-PLACEHOLDER"),
            ("users", &users_text()),
            ("etc", "DRY-PLACEHOLDER"),
        ],
        true,
    );
    let s = parse(text.as_bytes()).expect("parse");
    let flags: Vec<(&str, bool)> = s
        .snippets
        .iter()
        .map(|x| (x.name.as_str(), x.dry_placeholder))
        .collect();
    assert_eq!(
        flags,
        [("setupSecrets", true), ("users", false), ("etc", true)]
    );
    assert!(s.tail.is_empty());
}

#[test]
fn a_snippet_that_calls_exit_is_kept_whole() {
    let text = script(&[("early", "echo one\nexit 3\necho never")], false);
    let s = parse(text.as_bytes()).expect("parse");
    assert_eq!(s.snippets[0].text, "echo one\nexit 3\necho never");
    assert_eq!(classify("early", &s.snippets[0].text), None);
}

#[test]
fn unusual_tail_lines_are_kept_to_run() {
    let mut text = script(&[("a", "true")], false);
    text = text.replace("exit $_status", "touch /run/extra\nexit $_status");
    let s = parse(text.as_bytes()).expect("parse");
    assert_eq!(s.tail, ["touch /run/extra"]);
}

#[test]
fn damaged_scripts_are_refused_with_the_line() {
    let good = script(&[("a", "true"), ("b", "true")], false);
    let no_status = good.replacen("_localstatus=0\n", "", 1);
    let e = parse(no_status.as_bytes()).expect_err("no _localstatus");
    assert!(e.to_string().starts_with("line 18: snippet \"a\""), "{e}");
    let no_check = good.replacen("if (( _localstatus > 0 )); then", "if true; then", 1);
    let e = parse(no_check.as_bytes()).expect_err("no check");
    assert!(e.to_string().contains("snippet \"a\""), "{e}");
    let twice = good
        .replace("snippet b:", "snippet a:")
        .replace("\"b\"", "\"a\"");
    let e = parse(twice.as_bytes()).expect_err("duplicate");
    assert!(e.to_string().contains("\"a\" appears twice"), "{e}");
    assert_eq!(
        parse(b"echo hi\n").expect_err("no shebang"),
        ScriptError::NoShebang
    );
    assert_eq!(
        parse(b"#!/bin/bash\n\xff\n").expect_err("binary"),
        ScriptError::NotText
    );
    assert!(!looks_like_activate_script(b"\x7fELF..."));
    assert!(looks_like_activate_script(good.as_bytes()));
}
