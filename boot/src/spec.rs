//! What a generation's `boot.json` (bootspec v1, RFC 0125) tells the boot-loader code.
//!
//! Parsing goes through the `bootspec` crate so that we accept exactly what NixOS writes; this
//! module flattens it into the handful of fields entries need and reads the extensions that
//! change entries: `org.nixos.systemd-boot` (`sortKey`, `devicetree`) and our own
//! `dev.stagehand.v1` (`initrd`: the initrd Stagehand's NixOS module built for the
//! generation, used instead of the bootspec's).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use ::bootspec::generation::Generation as AnyGeneration;
use ::bootspec::v1::GenerationV1;
use ::bootspec::{BootJson, Extensions};

/// Key of the systemd-boot extension NixOS adds to `boot.json`.
pub const SYSTEMD_BOOT_EXTENSION: &str = "org.nixos.systemd-boot";
/// Key of Stagehand's extension: `{"initrd": "/nix/store/…"}`, set by `nix/module.nix`.
pub const STAGEHAND_EXTENSION: &str = "dev.stagehand.v1";
/// Key of the v1 document inside `boot.json`.
pub const V1_KEY: &str = "org.nixos.bootspec.v1";

/// One bootable configuration: a generation or one of its specialisations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSpec {
    /// `NixOS <codeName> <label> (Linux <modDirVersion>)`.
    pub label: String,
    /// Store path of the kernel image.
    pub kernel: PathBuf,
    /// Store path of the initrd; absent when the configuration boots without one.
    pub initrd: Option<PathBuf>,
    /// Program that appends secrets to a copy of the initrd (`initrdSecrets`).
    pub initrd_secrets: Option<PathBuf>,
    pub kernel_params: Vec<String>,
    /// `<toplevel>/init`: what stage 1 execs, passed as `init=`.
    pub init: PathBuf,
    pub toplevel: PathBuf,
    /// Nix system double, e.g. `x86_64-linux`.
    pub system: String,
    /// `org.nixos.systemd-boot.sortKey` (NixOS's default is `nixos`).
    pub sort_key: Option<String>,
    /// `org.nixos.systemd-boot.devicetree`: a device tree blob for systemd-boot to load.
    pub devicetree: Option<PathBuf>,
    /// `dev.stagehand.v1.initrd`: our initrd for this configuration (a store path); when
    /// present the entries boot it instead of [`BootSpec::initrd`].
    pub stagehand_initrd: Option<PathBuf>,
    /// Specialisations by name (empty for a specialisation itself: they do not nest).
    pub specialisations: BTreeMap<String, BootSpec>,
}

#[derive(Debug)]
pub enum SpecError {
    /// The file is not JSON at all.
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
    /// JSON, but no `org.nixos.bootspec.v1` object.
    NotV1 { path: PathBuf },
    /// The v1 object or an extension does not have the shape RFC 0125 gives it.
    Shape { path: PathBuf, detail: String },
    /// A field has the right type but a value that boot entries must not carry.
    Field {
        path: PathBuf,
        /// Where it is, e.g. `"org.nixos.bootspec.v1".kernel`.
        field: String,
        value: String,
        rule: &'static str,
    },
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Json { path, error } => write!(
                f,
                "{}: not valid JSON ({error}); the generation's boot.json is damaged, rebuild it",
                path.display()
            ),
            SpecError::NotV1 { path } => write!(
                f,
                "{}: no \"{V1_KEY}\" object; only bootspec v1 is understood (NixOS writes it \
                 since 23.05)",
                path.display()
            ),
            SpecError::Shape { path, detail } => write!(
                f,
                "{}: {detail}; the file does not follow bootspec v1 (RFC 0125)",
                path.display()
            ),
            SpecError::Field {
                path,
                field,
                value,
                rule,
            } => write!(
                f,
                "{}: {field} is {value:?}, but {rule}; the generation gets no boot entry, \
                 rebuild it from a trusted configuration",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SpecError {}

/// Parse the bytes of a `boot.json`; `path` is only used in messages.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<BootSpec, SpecError> {
    // A first pass as plain JSON tells "not JSON" and "not v1" apart, which the crate's
    // untagged enum reports only as "did not match any variant".
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|error| SpecError::Json {
            path: path.to_path_buf(),
            error,
        })?;
    if !value.get(V1_KEY).is_some_and(serde_json::Value::is_object) {
        return Err(SpecError::NotV1 {
            path: path.to_path_buf(),
        });
    }
    let doc: BootJson = match serde_json::from_value(value.clone()) {
        Ok(doc) => doc,
        Err(e) => {
            // The untagged enum only says "did not match any variant"; decoding v1 directly
            // names the missing or mistyped key.
            let detail = match serde_json::from_value::<GenerationV1>(value) {
                Err(v1) => format!("{v1} (in \"{V1_KEY}\" or a specialisation)"),
                Ok(_) => e.to_string(),
            };
            return Err(SpecError::Shape {
                path: path.to_path_buf(),
                detail,
            });
        }
    };
    let v1 = match doc.generation {
        AnyGeneration::V1(v1) => v1,
        // The enum is non-exhaustive; a later crate version may add schemas we do not know.
        #[allow(unreachable_patterns)]
        _ => {
            return Err(SpecError::NotV1 {
                path: path.to_path_buf(),
            })
        }
    };
    from_v1(path, &format!("\"{V1_KEY}\""), &v1, &doc.extensions, true)
}

/// `where_` names the v1 object in messages (the top one or a specialisation's).
fn from_v1(
    path: &Path,
    where_: &str,
    v1: &GenerationV1,
    extensions: &Extensions,
    with_specialisations: bool,
) -> Result<BootSpec, SpecError> {
    let b = &v1.bootspec;
    let (sort_key, devicetree) = systemd_boot_extension(path, extensions)?;
    let stagehand_initrd = stagehand_extension(path, extensions)?;
    let field = |name: &str| format!("{where_}.{name}");
    // Label, parameters, init and sort key are copied into entry lines: a control character
    // (a newline above all) would let boot.json add `linux`/`initrd`/`options` lines.
    plain_text(path, field("label"), &b.label)?;
    for (i, p) in b.kernel_params.iter().enumerate() {
        plain_text(path, field(&format!("kernelParams[{i}]")), p)?;
    }
    plain_text(path, field("init"), &b.init.to_string_lossy())?;
    if let Some(key) = &sort_key {
        plain_text(path, format!("\"{SYSTEMD_BOOT_EXTENSION}\".sortKey"), key)?;
    }
    // Kernel, initrd and device tree are copied onto the boot partition, which anyone can
    // read: only store paths, never e.g. /etc/shadow.
    store_path(path, field("kernel"), &b.kernel)?;
    if let Some(initrd) = &b.initrd {
        store_path(path, field("initrd"), initrd)?;
    }
    if let Some(dt) = &devicetree {
        store_path(path, format!("\"{SYSTEMD_BOOT_EXTENSION}\".devicetree"), dt)?;
    }
    if let Some(initrd) = &stagehand_initrd {
        store_path(path, format!("\"{STAGEHAND_EXTENSION}\".initrd"), initrd)?;
    }
    let mut specialisations = BTreeMap::new();
    if with_specialisations {
        for (name, s) in &v1.specialisations {
            let child_where = format!("\"org.nixos.specialisation.v1\".{:?}.\"{V1_KEY}\"", name.0);
            let mut child = from_v1(path, &child_where, &s.generation, &s.extensions, false)?;
            // NixOS copies the parent's extensions into each child's document, but a
            // hand-written child may lack them; entries of one generation should sort together.
            if child.sort_key.is_none() {
                child.sort_key.clone_from(&sort_key);
            }
            specialisations.insert(name.0.clone(), child);
        }
    }
    Ok(BootSpec {
        label: b.label.clone(),
        kernel: b.kernel.clone(),
        initrd: b.initrd.clone(),
        initrd_secrets: b.initrd_secrets.clone(),
        kernel_params: b.kernel_params.clone(),
        init: b.init.clone(),
        toplevel: b.toplevel.0.clone(),
        system: b.system.clone(),
        sort_key,
        devicetree,
        stagehand_initrd,
        specialisations,
    })
}

/// Refuse text with control characters (newline, carriage return, NUL, escape...).
fn plain_text(path: &Path, field: String, value: &str) -> Result<(), SpecError> {
    if value.chars().any(char::is_control) {
        return Err(SpecError::Field {
            path: path.to_path_buf(),
            field,
            value: value.to_string(),
            rule: "it must not contain control characters such as a newline (it is written \
                   into a boot entry line)",
        });
    }
    Ok(())
}

/// Refuse a path that is not inside the Nix store, spelled out: `..` components are
/// resolved first, so `/nix/store/../../etc/shadow` is refused too. Symlinks are resolved
/// later, inside the root, when the file is measured (`gather`).
fn store_path(path: &Path, field: String, value: &Path) -> Result<(), SpecError> {
    let refuse = || SpecError::Field {
        path: path.to_path_buf(),
        field: field.clone(),
        value: value.display().to_string(),
        rule: "it must be a file in /nix/store (it is copied onto the boot partition)",
    };
    let text = value.to_string_lossy();
    if !value.is_absolute() || text.chars().any(char::is_control) {
        return Err(refuse());
    }
    let mut normal: Vec<&std::ffi::OsStr> = Vec::new();
    for c in value.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            Component::Normal(n) => normal.push(n),
            Component::Prefix(_) => return Err(refuse()),
        }
    }
    // `nix`, `store`, the store object, and at least that object (a file) itself.
    let in_store = normal.len() >= 3 && normal[0] == "nix" && normal[1] == "store";
    if !in_store {
        return Err(refuse());
    }
    Ok(())
}

/// `sortKey` and `devicetree` of the `org.nixos.systemd-boot` extension, when present.
fn systemd_boot_extension(
    path: &Path,
    extensions: &Extensions,
) -> Result<(Option<String>, Option<PathBuf>), SpecError> {
    let Some(ext) = extensions.get(SYSTEMD_BOOT_EXTENSION) else {
        return Ok((None, None));
    };
    let field = |key: &str| -> Result<Option<String>, SpecError> {
        match ext.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(SpecError::Shape {
                path: path.to_path_buf(),
                detail: format!("\"{SYSTEMD_BOOT_EXTENSION}\".{key} must be a string, not {other}"),
            }),
        }
    };
    Ok((field("sortKey")?, field("devicetree")?.map(PathBuf::from)))
}

/// `dev.stagehand.v1`, read strictly: an object whose only key is `initrd`, a string (the
/// store-path check is the caller's, shared with the bootspec's own paths). It is ours, so
/// an unknown key is a mistake (a typo, or a newer module than this tool), not a
/// forward-compatible extra: it is refused rather than silently booting the wrong initrd.
fn stagehand_extension(path: &Path, extensions: &Extensions) -> Result<Option<PathBuf>, SpecError> {
    let Some(ext) = extensions.get(STAGEHAND_EXTENSION) else {
        return Ok(None);
    };
    let shape = |detail: String| SpecError::Shape {
        path: path.to_path_buf(),
        detail,
    };
    let serde_json::Value::Object(map) = ext else {
        return Err(shape(format!(
            "\"{STAGEHAND_EXTENSION}\" must be an object {{\"initrd\": \"/nix/store/…\"}}, not {ext}"
        )));
    };
    if let Some(key) = map.keys().find(|k| k.as_str() != "initrd") {
        return Err(shape(format!(
            "\"{STAGEHAND_EXTENSION}\".{key:?} is not a known key (the only one is \"initrd\"); \
             remove it, or update stagehand to the version of the NixOS module that wrote it"
        )));
    }
    match map.get("initrd") {
        Some(serde_json::Value::String(s)) => Ok(Some(PathBuf::from(s))),
        Some(other) => Err(shape(format!(
            "\"{STAGEHAND_EXTENSION}\".initrd must be a string (a store path), not {other}"
        ))),
        None => Err(shape(format!(
            "\"{STAGEHAND_EXTENSION}\" has no \"initrd\" key; it is the extension's only content"
        ))),
    }
}

/// Fixtures for tests in this crate and the crates above it.
#[doc(hidden)]
pub mod fixture {

    /// A boot.json as NixOS writes it (keys sorted by `jq --sort-keys`).
    pub fn sample_json(toplevel: &str, label: &str, specs: &[(&str, &str)]) -> String {
        let v1 = |top: &str, label: &str| {
            format!(
                r#""org.nixos.bootspec.v1": {{
    "init": "{top}/init",
    "initrd": "/nix/store/iiii-initrd-linux-6.1/initrd",
    "kernel": "/nix/store/kkkk-linux-6.1/bzImage",
    "kernelParams": ["console=ttyS0", "loglevel=4"],
    "label": "{label}",
    "system": "x86_64-linux",
    "toplevel": "{top}"
  }},
  "org.nixos.systemd-boot": {{ "sortKey": "nixos" }}"#
            )
        };
        let mut s = String::from("{\n  ");
        s.push_str(&v1(toplevel, label));
        s.push_str(",\n  \"org.nixos.specialisation.v1\": {");
        for (i, (name, top)) in specs.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!("\n    \"{name}\": {{ {} }}", v1(top, label)));
        }
        s.push_str("\n  }\n}\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::sample_json;
    use super::*;

    #[test]
    fn parses_nixos_boot_json_with_specialisations() {
        let json = sample_json(
            "/nix/store/aaaa-nixos-system-x-26.05",
            "NixOS 26.05 (Linux 6.1)",
            &[("debug", "/nix/store/dddd-nixos-system-x-26.05")],
        );
        let spec = parse(Path::new("/x/boot.json"), json.as_bytes()).expect("parse");
        assert_eq!(spec.label, "NixOS 26.05 (Linux 6.1)");
        assert_eq!(
            spec.init,
            PathBuf::from("/nix/store/aaaa-nixos-system-x-26.05/init")
        );
        assert_eq!(spec.kernel_params, vec!["console=ttyS0", "loglevel=4"]);
        assert_eq!(spec.sort_key.as_deref(), Some("nixos"));
        let debug = spec.specialisations.get("debug").expect("specialisation");
        assert_eq!(
            debug.toplevel,
            PathBuf::from("/nix/store/dddd-nixos-system-x-26.05")
        );
        assert!(debug.specialisations.is_empty());
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let p = Path::new("/nix/store/x/boot.json");
        let e = parse(p, b"{nope").expect_err("not json");
        assert!(e
            .to_string()
            .starts_with("/nix/store/x/boot.json: not valid JSON"));
        let e = parse(p, b"{\"org.nixos.bootspec.v2\": {}}").expect_err("not v1");
        assert!(e
            .to_string()
            .contains("no \"org.nixos.bootspec.v1\" object"));
        let e = parse(p, b"{\"org.nixos.bootspec.v1\": {\"label\": 1}}").expect_err("shape");
        assert!(e.to_string().contains("does not follow bootspec v1"), "{e}");
        let bad_ext = sample_json("/nix/store/a", "L", &[])
            .replace("{ \"sortKey\": \"nixos\" }", "{ \"sortKey\": 7 }");
        let e = parse(p, bad_ext.as_bytes()).expect_err("extension");
        assert!(e.to_string().contains("sortKey must be a string"), "{e}");
    }

    fn with_stagehand_extension(ext: &str) -> String {
        sample_json("/nix/store/a", "L", &[]).replace(
            "\"org.nixos.systemd-boot\"",
            &format!("\"dev.stagehand.v1\": {ext},\n  \"org.nixos.systemd-boot\""),
        )
    }

    #[test]
    fn the_stagehand_extension_names_the_initrd() {
        let p = Path::new("/x/boot.json");
        let spec = parse(p, sample_json("/nix/store/a", "L", &[]).as_bytes()).expect("parse");
        assert_eq!(spec.stagehand_initrd, None);
        let json =
            with_stagehand_extension(r#"{"initrd": "/nix/store/ssss-stagehand-initrd/initrd"}"#);
        let spec = parse(p, json.as_bytes()).expect("parse");
        assert_eq!(
            spec.stagehand_initrd,
            Some(PathBuf::from("/nix/store/ssss-stagehand-initrd/initrd"))
        );
    }

    #[test]
    fn a_bad_stagehand_extension_names_the_file_and_the_key() {
        let p = Path::new("/nix/store/x/boot.json");
        for (ext, words) in [
            (
                r#"{"initrd": "/etc/shadow"}"#,
                &["\"dev.stagehand.v1\".initrd", "/etc/shadow", "/nix/store"][..],
            ),
            (
                r#"{"initrd": "/nix/store/../../etc/shadow"}"#,
                &["\"dev.stagehand.v1\".initrd", "/nix/store"][..],
            ),
            (
                r#"{"initrd": 7}"#,
                &["\"dev.stagehand.v1\".initrd must be a string"][..],
            ),
            (
                r#"{"initrd": "/nix/store/s/initrd", "initrdd": "x"}"#,
                &["\"dev.stagehand.v1\".\"initrdd\" is not a known key"][..],
            ),
            (r#"{}"#, &["\"dev.stagehand.v1\" has no \"initrd\" key"][..]),
            (
                r#""/nix/store/s/initrd""#,
                &["\"dev.stagehand.v1\" must be an object"][..],
            ),
        ] {
            let e = parse(p, with_stagehand_extension(ext).as_bytes()).expect_err(ext);
            let msg = e.to_string();
            assert!(msg.starts_with("/nix/store/x/boot.json: "), "{ext}: {msg}");
            for w in words {
                assert!(msg.contains(w), "{ext}: {msg} lacks {w}");
            }
        }
    }
}
