//! Recognising the snippets NixOS itself defines, by their exact text.

use super::parse::unquote;

/// What a recognised built-in snippet does, with the paths it passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builtin {
    /// Empty text (`stdio`, `var`, `groups`, or a users snippet under userborn).
    Empty,
    /// `install -d /root /home` and `update-users-groups.pl SPEC`.
    Users { spec: String },
    /// `setup-etc.pl TREE`.
    Etc { tree: String },
    /// `/bin/sh` → target.
    Binsh { target: String },
    /// `/usr/bin/env` → target, or removed (`None`).
    Usrbinenv { target: Option<String> },
    /// `specialMount` over the early mount script.
    Specialfs,
    /// The warning about unsupported password hashes.
    Hashes,
    /// `/proc/sys/kernel/modprobe` ← path.
    Modprobe { path: String },
    /// hotplug cleared, firmware search path ← path.
    Udevd { firmware: String },
}

/// Recognise a snippet NixOS defines by its exact text; `None` runs it as bash.
pub fn classify(name: &str, text: &str) -> Option<Builtin> {
    let lines = logical_lines(text);
    if lines.is_empty() {
        return Some(Builtin::Empty);
    }
    match name {
        "users" => users(&lines),
        "etc" => etc(&lines),
        "binsh" => binsh(&lines),
        "usrbinenv" => usrbinenv(&lines),
        "specialfs" => specialfs(&lines),
        "hashes" => hashes(&lines),
        "modprobe" => modprobe(&lines),
        "udevd" => udevd(&lines),
        _ => None,
    }
}

/// Lines without comments (whole-line, and ` # …` after a command when the command has
/// no quote), trimmed, blank ones dropped, backslash continuations joined.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let mut t = raw.trim();
        if t.starts_with('#') {
            continue;
        }
        if !t.contains(['"', '\'']) {
            if let Some(pos) = t.find(" #") {
                t = t.get(..pos).unwrap_or(t).trim_end();
            }
        }
        if let Some(head) = t.strip_suffix('\\') {
            pending.push_str(head.trim_end());
            pending.push(' ');
            continue;
        }
        pending.push_str(t);
        let line = std::mem::take(&mut pending);
        if !line.trim().is_empty() {
            out.push(line.trim().to_owned());
        }
    }
    if !pending.trim().is_empty() {
        out.push(pending.trim().to_owned());
    }
    out
}

/// A store path as nixpkgs interpolates it: absolute, no shell metacharacters.
fn path_token(t: &str) -> Option<String> {
    let t = unquote(t);
    let ok = t.starts_with('/')
        && !t.is_empty()
        && t.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '+' | '=' | ',' | '@')
        });
    ok.then_some(t)
}

/// `<perl> [-w] [-I DIR | -IDIR]... SCRIPT ARG` where SCRIPT ends in `script_suffix`.
fn perl_call(line: &str, script_suffix: &str) -> Option<String> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let (perl, rest) = tokens.split_first()?;
    if !path_token(perl)?.ends_with("/bin/perl") {
        return None;
    }
    let mut args = rest.iter();
    let mut positional = Vec::new();
    while let Some(a) = args.next() {
        if *a == "-w" {
            continue;
        }
        if *a == "-I" {
            path_token(args.next()?)?;
            continue;
        }
        if let Some(dir) = a.strip_prefix("-I") {
            path_token(dir)?;
            continue;
        }
        positional.push(path_token(a)?);
    }
    match positional.as_slice() {
        [script, arg] if script.ends_with(script_suffix) => Some(arg.clone()),
        _ => None,
    }
}

fn users(lines: &[String]) -> Option<Builtin> {
    let mut spec = None;
    for l in lines {
        match l.as_str() {
            "install -m 0700 -d /root" | "install -m 0755 -d /home" => {}
            other => {
                let s = perl_call(other, "update-users-groups.pl")?;
                if spec.replace(s).is_some() {
                    return None;
                }
            }
        }
    }
    spec.map(|spec| Builtin::Users { spec })
}

fn etc(lines: &[String]) -> Option<Builtin> {
    let mut tree = None;
    for l in lines {
        match l.as_str() {
            "echo \"setting up /etc...\"" => {}
            other => {
                let t = perl_call(other, "setup-etc.pl")?;
                if tree.replace(t).is_some() {
                    return None;
                }
            }
        }
    }
    tree.map(|tree| Builtin::Etc { tree })
}

/// `ln -sfn TARGET DIR/.NAME.tmp` + `mv DIR/.NAME.tmp DIR/NAME` (or the old direct
/// `ln -sfn TARGET DIR/NAME`), after `mkdir -m 0755 -p DIR` or `mkdir -p DIR; chmod 0755 DIR`.
fn atomic_link(lines: &[String], dir: &str, name: &str) -> Option<String> {
    let mut target = None;
    let tmp = format!("{dir}/.{name}.tmp");
    let mkdirs = [
        format!("mkdir -m 0755 -p {dir}"),
        format!("mkdir -p {dir}"),
        format!("chmod 0755 {dir}"),
    ];
    let mv = format!("mv {tmp} {dir}/{name}");
    let mut moved = false;
    for l in lines {
        if mkdirs.contains(l) {
            continue;
        }
        if *l == mv {
            moved = true;
            continue;
        }
        let rest = l.strip_prefix("ln -sfn ")?;
        let (t, dest) = rest.rsplit_once(' ')?;
        let t = path_token(t)?;
        if dest == tmp || dest == format!("{dir}/{name}") {
            if target.replace((t, dest == tmp)).is_some() {
                return None;
            }
        } else {
            return None;
        }
    }
    let (t, via_tmp) = target?;
    (via_tmp == moved).then_some(t)
}

fn binsh(lines: &[String]) -> Option<Builtin> {
    atomic_link(lines, "/bin", "sh").map(|target| Builtin::Binsh { target })
}

fn usrbinenv(lines: &[String]) -> Option<Builtin> {
    if let Some(target) = atomic_link(lines, "/usr/bin", "env") {
        return Some(Builtin::Usrbinenv {
            target: Some(target),
        });
    }
    let removal_forms: [&[&str]; 2] = [
        &[
            "rm -f /usr/bin/env",
            "if test -d /usr/bin; then rmdir --ignore-fail-on-non-empty /usr/bin; fi",
            "if test -d /usr; then rmdir --ignore-fail-on-non-empty /usr; fi",
        ],
        &[
            "rm -f /usr/bin/env",
            "rmdir --ignore-fail-on-non-empty /usr/bin /usr",
        ],
    ];
    removal_forms
        .iter()
        .any(|form| lines.iter().map(String::as_str).eq(form.iter().copied()))
        .then_some(Builtin::Usrbinenv { target: None })
}

fn specialfs(lines: &[String]) -> Option<Builtin> {
    const FUNCTION: &[&str] = &[
        "local device=\"$1\"",
        "local mountPoint=\"$2\"",
        "local options=\"$3\"",
        "local fsType=\"$4\"",
        "if mountpoint -q \"$mountPoint\"; then",
        "local options=\"remount,$options\"",
        "else",
        "mkdir -m 0755 -p \"$mountPoint\"",
        "mkdir -p \"$mountPoint\"",
        "chmod 0755 \"$mountPoint\"",
        "fi",
        "mount -t \"$fsType\" -o \"$options\" \"$device\" \"$mountPoint\"",
        "}",
    ];
    let (first, rest) = lines.split_first()?;
    let (last, middle) = rest.split_last()?;
    let sourced = last.strip_prefix("source ").and_then(path_token);
    (first == "specialMount() {"
        && sourced.is_some()
        && middle.iter().all(|l| FUNCTION.contains(&l.as_str())))
    .then_some(Builtin::Specialfs)
}

fn hashes(lines: &[String]) -> Option<Builtin> {
    // The scheme list inside the regex line comes from libxcrypt's build; the rest is
    // fixed text.
    const FORM: &[&str] = &[
        "users=()",
        "while IFS=: read -r user hash _; do",
        "*",
        "users+=(\"$user\")",
        "fi",
        "done </etc/shadow",
        "if (( \"${#users[@]}\" )); then",
        "echo \"",
        "WARNING: The following user accounts rely on password hashing algorithms",
        "that have been removed. They need to be renewed as soon as possible, as",
        "they do prevent their users from logging in.\"",
        "printf ' - %s\\n' \"${users[@]}\"",
        "fi",
    ];
    (lines.len() == FORM.len()
        && lines.iter().zip(FORM).all(|(l, f)| {
            if *f == "*" {
                l.starts_with("if [[ \"$hash\" = \"$\"* && ! \"$hash\" =~ ^")
                    && l.ends_with("]]; then")
            } else {
                l == f
            }
        }))
    .then_some(Builtin::Hashes)
}

fn modprobe(lines: &[String]) -> Option<Builtin> {
    match lines {
        [only] => {
            let p = only
                .strip_prefix("echo ")?
                .strip_suffix(" > /proc/sys/kernel/modprobe")?;
            path_token(p).map(|path| Builtin::Modprobe { path })
        }
        _ => None,
    }
}

fn udevd(lines: &[String]) -> Option<Builtin> {
    match lines {
        [a, b, c, d, e, f] => {
            let fixed = a == "if [ -e /proc/sys/kernel/hotplug ]; then"
                && b == "echo \"\" > /proc/sys/kernel/hotplug"
                && c == "fi"
                && d == "if [ -e /sys/module/firmware_class/parameters/path ]; then"
                && f == "fi";
            let firmware = e
                .strip_prefix("echo -n ")?
                .strip_suffix(" > /sys/module/firmware_class/parameters/path")
                .and_then(path_token)?;
            fixed.then_some(Builtin::Udevd { firmware })
        }
        _ => None,
    }
}
