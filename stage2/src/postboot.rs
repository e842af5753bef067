//! `boot.postBootCommands`: a shell snippet the generation's manifest may carry as
//! `"postBootCommands"` in `<toplevel>/activation.json`. Stage 2 runs it after activation
//! and `/run/booted-system`, before systemd, with the manifest's `shell` (else `binsh`,
//! else `/bin/sh`) and `path`, as NixOS's stage 2 runs `@shell@ @postBootCommands@`. Its
//! exit status is logged and otherwise ignored, as there.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostBoot {
    pub text: String,
    pub shell: String,
    pub path: Option<String>,
}

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
        text: text.to_owned(),
        shell,
        path,
    }))
}

/// Read the generation's manifest (`toplevel` as the host reaches it).
pub fn read(toplevel: &Path) -> Result<Option<PostBoot>, String> {
    let file = toplevel.join("activation.json");
    match std::fs::read_to_string(&file) {
        Ok(text) => parse(&file, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

impl PostBoot {
    /// The command: `shell -c text`, chrooted into `root` when it is not `/`, with
    /// `systemConfig` (the in-root toplevel) exported for the snippet.
    pub fn command(&self, root: &Path, toplevel: &Path, trace: bool) -> Command {
        let mut cmd = Command::new(&self.shell);
        cmd.arg("-c")
            .arg(&self.text)
            .env("HOME", "/root")
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
        assert_eq!(p.text, "echo hi > /run/x\n");
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
            text: format!("echo \"$systemConfig $HOME\" > {}", out.display()),
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
        assert_eq!(read(missing.path()).expect("read"), None);
    }
}
