//! `boot.postBootCommands`, for both kinds of generation. Stage 2 runs it after activation
//! and `/run/booted-system`, before systemd, as NixOS's stage 2 runs
//! `@shell@ @postBootCommands@`. Its exit status is logged and otherwise ignored, as there.
//!
//! * A generation with a manifest carries it as `"postBootCommands"` in
//!   `<toplevel>/activation.json`; it runs as `shell -c TEXT` with the manifest's `shell`
//!   (else `binsh`, else `/bin/sh`) and `path`.
//! * A generation nixpkgs built has no manifest: the commands are a `writeText "local-cmds"`
//!   file named by its own `<toplevel>/init` (stage-2-init.sh after substitution), on the line
//!   after `# Run any user-specified commands.`. [`parse_init`] finds that line, strictly, and
//!   the file runs as `SHELL FILE` with the `PATH` of the script's `export … PATH="…"` line.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

/// What the shell runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// `shell -c TEXT` (the manifest's string).
    Text(String),
    /// `shell FILE` (NixOS's `local-cmds` store file, a path inside the root).
    File(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostBoot {
    pub script: Script,
    pub shell: String,
    pub path: Option<String>,
}

/// The comment stage-2-init.sh puts right above `@shell@ @postBootCommands@`.
const USER_COMMANDS_COMMENT: &str = "# Run any user-specified commands.";

/// nixpkgs' stage-2 init is about 5 KB; anything this big is not one, and stage 2 must not
/// read an unbounded file while booting.
pub const MAX_INIT_BYTES: u64 = 256 * 1024;

/// A `local-cmds` file larger than this is not checked for blankness: it is run.
const BLANK_CHECK_BYTES: u64 = 64 * 1024;

/// The snippet from a manifest's text; `None` when absent or blank. `file` names the
/// manifest in errors.
pub fn parse(file: &Path, text: &str) -> Result<Option<PostBoot>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "{}: not valid JSON: {e}; rebuild the generation",
            file.display()
        )
    })?;
    let field = |key: &str| -> Result<Option<&str>, String> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!(
                "{}: \"{key}\" must be a string, found {other}",
                file.display()
            )),
        }
    };
    let Some(text) = field("postBootCommands")?.filter(|t| !t.trim().is_empty()) else {
        return Ok(None);
    };
    let shell = field("shell")?
        .or(field("binsh")?)
        .unwrap_or("/bin/sh")
        .to_owned();
    let path = match v.get("path") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let dirs: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            Some(
                dirs.ok_or_else(|| {
                    format!("{}: \"path\" must be a list of strings", file.display())
                })?
                .join(":"),
            )
        }
        Some(_) => {
            return Err(format!(
                "{}: \"path\" must be a list of strings",
                file.display()
            ))
        }
    };
    Ok(Some(PostBoot {
        script: Script::Text(text.to_owned()),
        shell,
        path,
    }))
}

/// The generation's post-boot commands (`toplevel` as the host reaches it): from
/// `activation.json` when there is one, else from the `init` script nixpkgs wrote.
pub fn read(toplevel: &Path) -> Result<Option<PostBoot>, String> {
    let file = toplevel.join("activation.json");
    match std::fs::read_to_string(&file) {
        Ok(text) => parse(&file, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // With `boot.stagehand.replaceInit` (nix/module.nix) `init` is our stage 2 and
            // NixOS's script was moved beside it.
            let moved = toplevel.join(MOVED_NIXOS_INIT);
            if moved.exists() {
                read_init(&moved)
            } else {
                read_init(&toplevel.join("init"))
            }
        }
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

/// Where the NixOS module puts nixpkgs' stage-2 script when our stage 2 becomes `init`.
pub const MOVED_NIXOS_INIT: &str = "nixos-stage-2-init";

/// Read a generation's stage-2 init (at most [`MAX_INIT_BYTES`]) and [`parse_init`] it. An
/// ELF program (our stage 2 as `init`, with no NixOS script beside it) has no
/// postBootCommands: `None`.
fn read_init(file: &Path) -> Result<Option<PostBoot>, String> {
    let f =
        std::fs::File::open(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_INIT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if bytes.len() as u64 > MAX_INIT_BYTES {
        return Err(format!(
            "{}: larger than {MAX_INIT_BYTES} bytes, not a NixOS stage-2 init; \
             its postBootCommands are not run",
            file.display()
        ));
    }
    if bytes.starts_with(b"\x7fELF") {
        return Ok(None);
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        format!(
            "{}: not UTF-8 text, not a NixOS stage-2 init; its postBootCommands are not run",
            file.display()
        )
    })?;
    parse_init(file, &text).map(Some)
}

/// The post-boot commands of a generation nixpkgs built, from the text of its `init`
/// (stage-2-init.sh with `@shell@`, `@path@` and `@postBootCommands@` substituted; `file`
/// names it in errors). Strict: the script must start `#! SHELL`, set `systemConfig=`, and
/// have the line `SHELL /nix/store/…-local-cmds` right after
/// `# Run any user-specified commands.`, with the same store SHELL as the `#!` line. Anything
/// else is refused with the line it stopped at: stage 2 never guesses what to run.
pub fn parse_init(file: &Path, text: &str) -> Result<PostBoot, String> {
    let f = file.display();
    let refuse = |line: usize, why: &str| {
        Err(format!(
            "{f}:{line}: {why}; not the shape of NixOS's stage-2 init, so its \
             postBootCommands are not run"
        ))
    };
    if text.len() as u64 > MAX_INIT_BYTES {
        return refuse(1, &format!("larger than {MAX_INIT_BYTES} bytes"));
    }
    let lines: Vec<&str> = text.split('\n').collect();
    let first = lines.first().copied().unwrap_or_default();
    // Only spaces are trimmed: a `\r` or a second word must be refused, not dropped.
    let Some(shell) = first.strip_prefix("#!").map(|s| s.trim_matches(' ')) else {
        return refuse(1, "no `#!` line");
    };
    if let Err(why) = store_path_word(shell) {
        return refuse(1, &format!("the `#!` shell {}", why));
    }
    if !lines.iter().any(|l| l.starts_with("systemConfig=")) {
        return refuse(1, "no `systemConfig=` line");
    }
    let marks: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim() == USER_COMMANDS_COMMENT)
        .map(|(i, _)| i)
        .collect();
    let mark = match marks.as_slice() {
        [] => {
            return refuse(
                lines.len(),
                &format!("no line `{USER_COMMANDS_COMMENT}` (searched to the end)"),
            )
        }
        [one] => *one,
        [_, second, ..] => {
            return refuse(second + 1, &format!("a second `{USER_COMMANDS_COMMENT}`"))
        }
    };
    let n = mark + 2;
    let line = lines.get(mark + 1).copied().unwrap_or_default();
    let words: Vec<&str> = line.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
    let [run_shell, script] = words.as_slice() else {
        return refuse(
            n,
            &format!("expected `SHELL /nix/store/…-local-cmds`, found {line:?}"),
        );
    };
    if let Err(why) = store_path_word(run_shell) {
        return refuse(n, &format!("the shell {why}"));
    }
    if run_shell != &shell {
        return refuse(
            n,
            &format!("the shell {run_shell:?} is not the `#!` shell {shell:?}"),
        );
    }
    if let Err(why) = store_path_word(script) {
        return refuse(n, &format!("the commands file {why}"));
    }
    if !script.ends_with("-local-cmds") || script.matches('/').count() != 3 {
        return refuse(
            n,
            &format!("the commands file {script:?} is not a store file `…-local-cmds`"),
        );
    }
    let path = match export_path(lines.get(..mark).unwrap_or_default()) {
        Ok(p) => p,
        Err((i, why)) => return refuse(i + 1, &why),
    };
    Ok(PostBoot {
        script: Script::File((*script).to_owned()),
        shell: shell.to_owned(),
        path,
    })
}

/// Why `word` is not a plain path inside `/nix/store` (no quoting, variables, `..` or
/// control characters: the shell would read it as written).
fn store_path_word(word: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "+-._?=/".contains(c);
    if let Some(c) = word.chars().find(|c| c.is_control()) {
        return Err(format!("{word:?} has the control character {c:?}"));
    }
    if !word.chars().all(plain) {
        return Err(format!("{word:?} is not a plain path"));
    }
    let rest = word.strip_prefix("/nix/store/").unwrap_or_default();
    if rest.is_empty()
        || rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("{word:?} is not a path inside /nix/store"));
    }
    Ok(())
}

/// The `PATH="…"` of the last `export` line that sets it (stage-2-init.sh:
/// `export HOME=/root PATH="@path@"`); `None` when no line does. Errors carry the line index.
fn export_path(lines: &[&str]) -> Result<Option<String>, (usize, String)> {
    let mut found = None;
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("export ") else {
            continue;
        };
        // `PATH="` as a word of its own (not `MANPATH="`).
        let value = rest
            .split_once("PATH=\"")
            .filter(|(before, _)| before.is_empty() || before.ends_with(' '));
        let Some((_, value)) = value else {
            continue;
        };
        let Some((value, _)) = value.split_once('"') else {
            return Err((i, "`PATH=\"` without its closing quote".into()));
        };
        let bad = value.split(':').find(|d| {
            !d.starts_with('/') || d.chars().any(|c| c.is_control() || "$`\\".contains(c))
        });
        if let Some(d) = bad {
            return Err((
                i,
                format!("PATH entry {d:?} is not a plain absolute directory"),
            ));
        }
        found = Some(value.to_owned());
    }
    Ok(found)
}

/// Whether a `local-cmds` file (as the host reaches it) holds nothing but whitespace — the
/// default, `writeText` of an empty option — so running a shell for it can be skipped.
pub fn file_is_blank(file: &Path) -> Result<bool, String> {
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", file.display());
    let f = std::fs::File::open(file).map_err(cannot)?;
    let mut bytes = Vec::new();
    f.take(BLANK_CHECK_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    Ok(bytes.len() as u64 <= BLANK_CHECK_BYTES && bytes.iter().all(u8::is_ascii_whitespace))
}

impl PostBoot {
    /// The command: `shell -c TEXT` or `shell FILE`, chrooted into `root` when it is not `/`, with
    /// `systemConfig` (the in-root toplevel) exported for the snippet.
    pub fn command(&self, root: &Path, toplevel: &Path, trace: bool) -> Command {
        let mut cmd = Command::new(&self.shell);
        match &self.script {
            Script::Text(text) => cmd.arg("-c").arg(text),
            Script::File(file) => cmd.arg(file),
        };
        cmd.env("HOME", "/root")
            .env("systemConfig", toplevel)
            .stdin(Stdio::null());
        if trace {
            // boot.debugtrace: bash prints each command (`set -x`) when SHELLOPTS says so.
            cmd.env("SHELLOPTS", "xtrace");
        }
        if let Some(p) = &self.path {
            cmd.env("PATH", p);
        }
        if root != Path::new("/") {
            stagehand_common::chroot::chroot_command(&mut cmd, root);
        }
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_snippet_shell_and_path() {
        let m = Path::new("/t/activation.json");
        let p = parse(
            m,
            r#"{"version":1,"binsh":"/s/bash/bin/sh","path":["/a/bin","/b/bin"],
                "postBootCommands":"echo hi > /run/x\n"}"#,
        )
        .expect("parse")
        .expect("present");
        assert_eq!(p.shell, "/s/bash/bin/sh");
        assert_eq!(p.path.as_deref(), Some("/a/bin:/b/bin"));
        assert_eq!(p.script, Script::Text("echo hi > /run/x\n".into()));
        assert_eq!(parse(m, r#"{"version":1}"#).expect("parse"), None);
        assert_eq!(
            parse(m, r#"{"version":1,"postBootCommands":"  \n"}"#).expect("parse"),
            None
        );
        let d = parse(m, r#"{"postBootCommands":"true","shell":"/x/bash"}"#)
            .expect("parse")
            .expect("present");
        assert_eq!((d.shell.as_str(), d.path), ("/x/bash", None));
        let d = parse(m, r#"{"postBootCommands":"true"}"#)
            .expect("parse")
            .expect("present");
        assert_eq!(d.shell, "/bin/sh");
    }

    #[test]
    fn bad_manifests_name_the_file_and_field() {
        let m = Path::new("/t/activation.json");
        let e = parse(m, r#"{"postBootCommands":["x"]}"#).expect_err("type");
        assert!(
            e.contains("/t/activation.json") && e.contains("postBootCommands"),
            "{e}"
        );
        let e = parse(m, r#"{"postBootCommands":"x","path":"/bin"}"#).expect_err("path");
        assert!(e.contains("\"path\""), "{e}");
        assert!(parse(m, "{").expect_err("json").contains("not valid JSON"));
    }

    #[test]
    fn runs_with_system_config_and_path() {
        let t = tempfile::tempdir().expect("tempdir");
        let out = t.path().join("out");
        let p = PostBoot {
            script: Script::Text(format!("echo \"$systemConfig $HOME\" > {}", out.display())),
            shell: "/bin/sh".into(),
            path: Some("/usr/bin:/bin".into()),
        };
        let st = p
            .command(Path::new("/"), Path::new("/nix/store/abc-system"), false)
            .status()
            .expect("run");
        assert!(st.success());
        assert_eq!(
            std::fs::read_to_string(&out).expect("out"),
            "/nix/store/abc-system /root\n"
        );
        let missing = tempfile::tempdir().expect("tempdir");
        let e = read(missing.path()).expect_err("neither manifest nor init");
        assert!(e.contains("init") && e.contains("cannot read"), "{e}");
    }

    const BASH: &str = "/nix/store/0h3xkk8dm5ixlxdn3b9jwyl7w1xmbhvf-bash-5.2p37/bin/bash";
    const CMDS: &str = "/nix/store/7a5qm0n4w5wsk1ghx1pyqy7d3g9hm7ym-local-cmds";
    const TOP: &str = "/nix/store/4bh7n9s6zq0vqm2rjv6zpxm1bn2b1l8c-nixos-system-h-25.05";

    /// The init the VM fixture boots (testkit's rendering of stage-2-init.sh).
    fn fixture_init(path: &[String]) -> String {
        stagehand_testkit::nixos::stage2_init_script(&stagehand_testkit::nixos::Stage2Init {
            shell: BASH,
            system_config: TOP,
            path,
            early_mounts: "/nix/store/x9a1f5m3zvkbz1q3wqz1b2k3jx4nq0dy-mounts.sh",
            post_boot_commands: CMDS,
            systemd_executable: "/run/current-system/systemd/lib/systemd/systemd",
        })
    }

    /// The lines of a substituted nixpkgs stage-2-init.sh that the parser looks at, in their
    /// order and spelling (`#! @shell@`, `export HOME=/root PATH="@path@"`, the comment and
    /// `@shell@ @postBootCommands@`), with stand-ins for the rest of the script.
    fn nixpkgs_shaped_init() -> String {
        format!(
            "#! {BASH}\n\nsystemConfig={TOP}\n\n\
             export HOME=/root PATH=\"/nix/store/a-coreutils-9.5/bin:/nix/store/b-util-linux-2.39-bin/bin\"\n\n\
             if [ \"${{IN_NIXOS_SYSTEMD_STAGE1:-}}\" != true ]; then\n    echo -e \"\\e[1;32m<<< NixOS Stage 2 >>>\\e[0m\"\nfi\n\
             echo \"running activation script...\"\n$systemConfig/activate\n\n\n\
             # Record the boot configuration.\nln -sfn \"$systemConfig\" /run/booted-system\n\n\n\
             # Run any user-specified commands.\n{BASH} {CMDS}\n\n\n\
             if [ \"${{IN_NIXOS_SYSTEMD_STAGE1:-}}\" != true ]; then\n    exec /nix/store/s-systemd-257/lib/systemd/systemd \"$@\"\nfi\n"
        )
    }

    #[test]
    fn finds_the_local_cmds_of_a_nixos_init() {
        let f = Path::new("/t/init");
        let p = parse_init(f, &nixpkgs_shaped_init()).expect("nixpkgs-shaped init");
        assert_eq!(
            p,
            PostBoot {
                script: Script::File(CMDS.into()),
                shell: BASH.into(),
                path: Some(
                    "/nix/store/a-coreutils-9.5/bin:/nix/store/b-util-linux-2.39-bin/bin".into()
                ),
            }
        );
        let dirs = vec![
            "/nix/store/c-coreutils-9.1".to_owned(),
            "/nix/store/u-util-linux-2.38.1-bin".to_owned(),
        ];
        let p = parse_init(f, &fixture_init(&dirs)).expect("fixture init");
        assert_eq!(p.script, Script::File(CMDS.into()));
        assert_eq!(p.shell, BASH);
        assert_eq!(
            p.path.as_deref(),
            Some(
                "/nix/store/c-coreutils-9.1/bin:/nix/store/c-coreutils-9.1/sbin:\
                 /nix/store/u-util-linux-2.38.1-bin/bin:/nix/store/u-util-linux-2.38.1-bin/sbin"
            )
        );
        // Older nixpkgs set PATH with a function: no `export PATH="…"`, PATH is inherited.
        let old = nixpkgs_shaped_init().replace("export HOME=/root PATH=", "setPath ");
        assert_eq!(parse_init(f, &old).expect("old init").path, None);
    }

    #[test]
    fn refuses_inits_of_another_shape() {
        let f = Path::new("/g/init");
        let good = nixpkgs_shaped_init();
        let line = format!("{BASH} {CMDS}");
        let with = |replacement: &str| good.replace(&line, replacement);
        let cases: Vec<(&str, String, &[&str])> = vec![
            ("empty", String::new(), &["/g/init:1", "#!"]),
            ("binary", "\u{7f}ELF\u{2}\u{1}".into(), &["/g/init:1", "#!"]),
            (
                "no comment",
                good.replace("# Run any user-specified commands.\n", ""),
                &["/g/init:", "no line `# Run any user-specified commands.`"],
            ),
            (
                "two comments",
                format!("{good}# Run any user-specified commands.\n"),
                &["a second"],
            ),
            ("missing line", with(""), &["/g/init:19", "expected `SHELL"]),
            (
                "outside the store",
                with(&format!("{BASH} /etc/local-cmds")),
                &["/g/init:19", "\"/etc/local-cmds\"", "inside /nix/store"],
            ),
            (
                "dot-dot",
                with(&format!("{BASH} /nix/store/../etc/x-local-cmds")),
                &["inside /nix/store"],
            ),
            (
                "control character",
                with(&format!("{BASH} {CMDS}\r")),
                &["/g/init:19", "control character"],
            ),
            (
                "variable",
                with(&format!("{BASH} $HOME/local-cmds")),
                &["not a plain path"],
            ),
            (
                "another file",
                with(&format!("{BASH} /nix/store/x-evil")),
                &["not a store file `…-local-cmds`"],
            ),
            (
                "a file under a store path",
                with(&format!("{BASH} /nix/store/x-y/z-local-cmds")),
                &["not a store file"],
            ),
            (
                "another shell",
                with(&format!("/nix/store/z-dash/bin/dash {CMDS}")),
                &["is not the `#!` shell"],
            ),
            (
                "extra words",
                with(&format!("{BASH} {CMDS} || true")),
                &["expected `SHELL"],
            ),
            (
                "carriage return after the shell",
                good.replacen(&format!("#! {BASH}\n"), &format!("#! {BASH}\r\n"), 1),
                &["/g/init:1", "control character"],
            ),
            (
                "shell outside the store",
                good.replace(BASH, "/bin/bash"),
                &["/g/init:1", "inside /nix/store"],
            ),
            (
                "no systemConfig",
                good.replace("systemConfig=", "config="),
                &["systemConfig="],
            ),
            (
                "bad PATH",
                good.replace("PATH=\"/nix", "PATH=\"$X:/nix"),
                &["/g/init:5", "PATH entry"],
            ),
            (
                "huge",
                format!("{good}{}", "#\n".repeat(MAX_INIT_BYTES as usize)),
                &["larger than"],
            ),
        ];
        for (case, text, words) in cases {
            let e = parse_init(f, &text).expect_err(case);
            for w in words {
                assert!(e.contains(w), "{case}: {w:?} missing from: {e}");
            }
            assert!(e.contains("not run"), "{case}: {e}");
        }
    }

    #[test]
    fn reads_the_init_bounded_and_checks_blankness() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::write(t.path().join("init"), nixpkgs_shaped_init()).expect("init");
        let p = read(t.path()).expect("read").expect("present");
        assert_eq!(p.script, Script::File(CMDS.into()));
        // A manifest wins over the init.
        std::fs::write(t.path().join("activation.json"), r#"{"version":1}"#).expect("m");
        assert_eq!(read(t.path()).expect("manifest"), None);
        std::fs::remove_file(t.path().join("activation.json")).expect("rm");
        let huge = format!(
            "{}{}",
            nixpkgs_shaped_init(),
            " ".repeat(MAX_INIT_BYTES as usize)
        );
        std::fs::write(t.path().join("init"), huge).expect("huge");
        let e = read(t.path()).expect_err("huge");
        assert!(e.contains("larger than") && e.contains("/init"), "{e}");
        std::fs::write(t.path().join("init"), b"\xff\xfeinit").expect("binary");
        assert!(read(t.path()).expect_err("binary").contains("not UTF-8"));
        // A program as `init` (our stage 2, replaceInit without the script beside it): no
        // postBootCommands, and nothing to complain about.
        std::fs::write(t.path().join("init"), b"\x7fELF\x02\x01\x01\xff").expect("elf");
        assert_eq!(read(t.path()).expect("elf"), None);
        // With the NixOS module's replaceInit, NixOS's script is beside it and is read.
        std::fs::write(t.path().join(MOVED_NIXOS_INIT), nixpkgs_shaped_init()).expect("moved");
        let p = read(t.path()).expect("read").expect("present");
        assert_eq!(p.script, Script::File(CMDS.into()));
        std::fs::remove_file(t.path().join(MOVED_NIXOS_INIT)).expect("rm");

        let cmds = t.path().join("local-cmds");
        for (text, blank) in [
            ("\n\n", true),
            ("", true),
            (" \t\n", true),
            ("true\n", false),
        ] {
            std::fs::write(&cmds, text).expect("cmds");
            assert_eq!(file_is_blank(&cmds).expect("blank"), blank, "{text:?}");
        }
        std::fs::write(&cmds, " ".repeat(BLANK_CHECK_BYTES as usize + 1)).expect("big");
        assert!(!file_is_blank(&cmds).expect("big"));
        assert!(file_is_blank(&t.path().join("gone")).is_err());
    }

    #[test]
    fn runs_the_file_with_the_shell_and_path() {
        let t = tempfile::tempdir().expect("tempdir");
        let out = t.path().join("out");
        let cmds = t.path().join("local-cmds");
        std::fs::write(
            &cmds,
            format!("echo \"$0 $PATH $systemConfig\" > {}\n", out.display()),
        )
        .expect("cmds");
        let p = PostBoot {
            script: Script::File(cmds.to_string_lossy().into_owned()),
            shell: "/bin/sh".into(),
            path: Some("/usr/bin:/bin".into()),
        };
        let st = p
            .command(Path::new("/"), Path::new("/nix/store/abc-system"), false)
            .status()
            .expect("run");
        assert!(st.success());
        assert_eq!(
            std::fs::read_to_string(&out).expect("out"),
            format!("{} /usr/bin:/bin /nix/store/abc-system\n", cmds.display())
        );
    }
}
