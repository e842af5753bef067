//! extlinux (U-Boot's `sysboot`/distro boot, syslinux): `extlinux/extlinux.conf` as NixOS's
//! `extlinux-conf-builder.sh` writes it, with kernels, initrds and device trees copied to
//! `nixos/` under names derived from their store paths.
//!
//! U-Boot cannot count boot attempts through this file, so a generation that fails is not
//! abandoned by the loader; stage 1's attempt counter covers that case.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::date;
use super::esp::{BootFs, EspError, FileInfo};
use super::gather::{GenerationBoot, Inputs};
use super::initrd_choice;
use super::plan::{Copy, FilePlan, Removal, Write};
use super::sdboot::{clean_name, is_debris, PlanError};
use super::spec::BootSpec;

pub const CONF: &str = "extlinux/extlinux.conf";
pub const FILES_DIR: &str = "nixos";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtlinuxConfig {
    /// Seconds; `None` waits forever, `Some(0)` boots the default without a menu.
    pub timeout: Option<u32>,
    /// Generations listed below the default (`-g`); NixOS's default is 20.
    pub configuration_limit: Option<usize>,
    /// Use `FDT <dtbs>/<name>` instead of `FDTDIR` (`-n`).
    pub dtb_name: Option<String>,
    /// Leave device trees to the firmware (`-r`).
    pub no_device_tree: bool,
}

impl Default for ExtlinuxConfig {
    fn default() -> Self {
        ExtlinuxConfig {
            timeout: Some(5),
            configuration_limit: Some(20),
            dtb_name: None,
            no_device_tree: false,
        }
    }
}

/// What is under the boot directory now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtlinuxState {
    pub files: Vec<FileInfo>,
    pub conf: Option<Vec<u8>>,
}

pub fn scan(fs: &BootFs) -> Result<ExtlinuxState, EspError> {
    Ok(ExtlinuxState {
        files: fs
            .list(FILES_DIR)
            .map_err(fs.err(FILES_DIR, "list"))?
            .unwrap_or_default(),
        conf: fs.read(CONF).map_err(fs.err(CONF, "read"))?,
    })
}

/// The `TIMEOUT` value and whether a menu is shown, as the builder's `-t` handling maps
/// seconds to U-Boot's centiseconds (U-Boot reads 0 as "forever").
fn timeout(t: Option<u32>) -> (u64, bool) {
    match t {
        None => (0, true),
        Some(0) => (1, false),
        Some(s) => (u64::from(s) * 10, true),
    }
}

/// Messages the renderer collects besides the text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Messages {
    pub warnings: Vec<String>,
    /// Which initrd each entry boots, when there was a choice.
    pub notes: Vec<String>,
}

/// The rendered file and, by file name under `nixos/`, the source of every file it names.
pub fn render(
    inputs: &Inputs,
    default: u64,
    cfg: &ExtlinuxConfig,
    msgs: &mut Messages,
) -> Result<(String, BTreeMap<String, PathBuf>), PlanError> {
    let mut gens: Vec<&GenerationBoot> = inputs.generations.iter().collect();
    gens.sort_by_key(|g| std::cmp::Reverse(g.number));
    let def = gens
        .iter()
        .find(|g| g.number == default)
        .copied()
        .ok_or(if gens.is_empty() {
            PlanError::NoGenerations
        } else {
            PlanError::DefaultMissing {
                generation: default,
            }
        })?;
    let (t, menu) = timeout(cfg.timeout);
    let mut out = String::from(
        "# Generated file, all changes will be lost on nixos-rebuild!\n\n\
         # Change this to e.g. nixos-42 to temporarily boot to an older configuration.\n\
         DEFAULT nixos-default\n\n",
    );
    out.push_str(&format!("TIMEOUT {t}\n"));
    if menu {
        out.push_str("MENU TITLE ------------------------------------------------------------\n");
    }
    let mut files = BTreeMap::new();
    add_entry(
        inputs, def, &def.spec, None, "default", cfg, &mut out, &mut files, msgs,
    )?;
    let limit = cfg.configuration_limit.unwrap_or(usize::MAX);
    for g in gens.iter().take(limit) {
        add_entry(
            inputs,
            g,
            &g.spec,
            None,
            &format!("{}-default", g.number),
            cfg,
            &mut out,
            &mut files,
            msgs,
        )?;
        // `ls specialisation | sort -n -r`: names are not numbers, so reverse byte order.
        for (name, s) in g.spec.specialisations.iter().rev() {
            let tag = format!("{}-{name}", g.number);
            add_entry(
                inputs,
                g,
                s,
                Some(name),
                &tag,
                cfg,
                &mut out,
                &mut files,
                msgs,
            )?;
        }
    }
    Ok((out, files))
}

#[allow(clippy::too_many_arguments)]
fn add_entry(
    inputs: &Inputs,
    g: &GenerationBoot,
    spec: &BootSpec,
    specialisation: Option<&str>,
    tag: &str,
    cfg: &ExtlinuxConfig,
    out: &mut String,
    files: &mut BTreeMap<String, PathBuf>,
    msgs: &mut Messages,
) -> Result<(), PlanError> {
    let choice = initrd_choice::choose(inputs, g, spec, specialisation);
    // The default generation is listed twice (`nixos-default` and `nixos-N-default`); say
    // its choice once.
    if let Some(n) = choice.note {
        if !msgs.notes.contains(&n) {
            msgs.notes.push(n);
        }
    }
    // The builder skips a configuration without an initrd; so do we, but say so.
    let Some(initrd) = &choice.initrd else {
        msgs.warnings.push(format!(
            "generation {} ({tag}) has no initrd and gets no extlinux entry",
            g.number
        ));
        return Ok(());
    };
    let mut name = |p: &PathBuf| -> Result<String, PlanError> {
        let src = inputs
            .sources
            .get(p)
            .ok_or_else(|| PlanError::Unmeasured { path: p.clone() })?;
        let n = clean_name(src);
        files.insert(n.clone(), p.clone());
        Ok(n)
    };
    let kernel = name(&spec.kernel)?;
    let initrd = name(initrd)?;
    out.push_str(&format!("\nLABEL nixos-{tag}\n"));
    if tag == "default" {
        out.push_str("  MENU LABEL NixOS - Default\n");
    } else {
        let version = g
            .nixos_version
            .get(&spec.toplevel)
            .map(String::as_str)
            .unwrap_or("");
        out.push_str(&format!(
            "  MENU LABEL NixOS - Configuration {tag} ({} - {version})\n",
            date::date_minutes(g.built)
        ));
    }
    out.push_str(&format!("  LINUX ../{FILES_DIR}/{kernel}\n"));
    out.push_str(&format!("  INITRD ../{FILES_DIR}/{initrd}\n"));
    // `echo "APPEND init=$path/init $extraParams"`: a space even without parameters.
    out.push_str(&format!(
        "  APPEND init={} {}\n",
        spec.init.display(),
        spec.kernel_params.join(" ")
    ));
    if cfg.no_device_tree {
        return Ok(());
    }
    match g.dtbs.get(&spec.toplevel) {
        Some(dtbs) => {
            let d = name(dtbs)?;
            match &cfg.dtb_name {
                Some(n) => out.push_str(&format!("  FDT ../{FILES_DIR}/{d}/{n}\n")),
                None => out.push_str(&format!("  FDTDIR ../{FILES_DIR}/{d}\n")),
            }
        }
        None => {
            if let Some(n) = &cfg.dtb_name {
                msgs.warnings.push(format!(
                    "generation {} ({tag}): device tree {n} was asked for, but the \
                     configuration has no dtbs",
                    g.number
                ));
            }
        }
    }
    Ok(())
}

/// Plan `/boot` for extlinux: copy what the file names, write it, remove what it no longer
/// names under `nixos/`.
pub fn plan(
    inputs: &Inputs,
    default: u64,
    cfg: &ExtlinuxConfig,
    state: &ExtlinuxState,
) -> Result<FilePlan, PlanError> {
    let mut msgs = Messages {
        warnings: inputs.skipped.clone(),
        notes: Vec::new(),
    };
    let (text, files) = render(inputs, default, cfg, &mut msgs)?;
    let mut fp = FilePlan {
        dirs: vec!["extlinux".into(), FILES_DIR.into()],
        warnings: msgs.warnings,
        notes: msgs.notes,
        ..FilePlan::default()
    };
    let present: BTreeMap<&str, &FileInfo> =
        state.files.iter().map(|f| (f.name.as_str(), f)).collect();
    for (name, key) in &files {
        let src = inputs
            .sources
            .get(key)
            .ok_or_else(|| PlanError::Unmeasured { path: key.clone() })?;
        // Trees are compared by presence only (as the builder does); files also by size.
        let ok = present
            .get(name.as_str())
            .is_some_and(|f| f.dir == src.tree && (src.tree || f.size == src.size));
        if !ok {
            // A wrong file of that name is replaced by the copy.
            fp.copies.push(Copy {
                source: src.canonical.clone(),
                dest: format!("{FILES_DIR}/{name}"),
                size: src.size,
                files: src.files,
                tree: src.tree,
            });
        }
    }
    if state.conf.as_deref() != Some(text.as_bytes()) {
        fp.writes.push(Write {
            dest: CONF.into(),
            contents: text.into_bytes(),
        });
    }
    // Any file the current configuration names may be what boots now: it goes only after
    // the new configuration is written.
    let old_conf = state
        .conf
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    for f in &state.files {
        if (!f.name.starts_with('.') && !files.contains_key(&f.name)) || is_debris(&f.name) {
            fp.removals.push(Removal {
                path: format!("{FILES_DIR}/{}", f.name),
                size: f.size,
                tree: f.dir,
                boots_now: !is_debris(&f.name) && old_conf.contains(f.name.as_str()),
            });
        }
    }
    Ok(fp)
}

/// For callers that only want the text.
pub fn render_text(
    inputs: &Inputs,
    default: u64,
    cfg: &ExtlinuxConfig,
) -> Result<String, PlanError> {
    let mut m = Messages::default();
    render(inputs, default, cfg, &mut m).map(|(t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gather::Source;
    use crate::sdboot::tests::inputs;
    use std::path::Path;

    fn with_versions(mut i: Inputs) -> Inputs {
        for g in &mut i.generations {
            let tops: Vec<PathBuf> = std::iter::once(g.spec.toplevel.clone())
                .chain(g.spec.specialisations.values().map(|s| s.toplevel.clone()))
                .collect();
            for t in tops {
                g.nixos_version.insert(t, "26.05.20260101.abcdef".into());
            }
        }
        i
    }

    #[test]
    fn extlinux_conf_snapshot() {
        let i = with_versions(inputs(2));
        let text = render_text(&i, 2, &ExtlinuxConfig::default()).expect("render");
        assert_eq!(
            text,
            "# Generated file, all changes will be lost on nixos-rebuild!

# Change this to e.g. nixos-42 to temporarily boot to an older configuration.
DEFAULT nixos-default

TIMEOUT 50
MENU TITLE ------------------------------------------------------------

LABEL nixos-default
  MENU LABEL NixOS - Default
  LINUX ../nixos/kkkk-linux-6.1-bzImage
  INITRD ../nixos/sys2-initrd-initrd
  APPEND init=/nix/store/sys2/init console=ttyS0 loglevel=4

LABEL nixos-2-default
  MENU LABEL NixOS - Configuration 2-default (2026-01-03 00:00 - 26.05.20260101.abcdef)
  LINUX ../nixos/kkkk-linux-6.1-bzImage
  INITRD ../nixos/sys2-initrd-initrd
  APPEND init=/nix/store/sys2/init console=ttyS0 loglevel=4

LABEL nixos-2-debug
  MENU LABEL NixOS - Configuration 2-debug (2026-01-03 00:00 - 26.05.20260101.abcdef)
  LINUX ../nixos/kkkk-linux-6.1-bzImage
  INITRD ../nixos/dbg2-initrd-initrd
  APPEND init=/nix/store/dbg2/init console=ttyS0 loglevel=4

LABEL nixos-1-default
  MENU LABEL NixOS - Configuration 1-default (2026-01-02 00:00 - 26.05.20260101.abcdef)
  LINUX ../nixos/kkkk-linux-6.1-bzImage
  INITRD ../nixos/sys1-initrd-initrd
  APPEND init=/nix/store/sys1/init console=ttyS0 loglevel=4
"
        );
    }

    #[test]
    fn timeouts_and_device_trees() {
        let mut i = with_versions(inputs(1));
        let dtbs = PathBuf::from("/nix/store/kkkk-linux-6.1/dtbs");
        i.sources.insert(
            dtbs.clone(),
            Source {
                canonical: dtbs.clone(),
                size: 100,
                files: 3,
                tree: true,
                digest: None,
            },
        );
        let top = i.generations[0].spec.toplevel.clone();
        i.generations[0].dtbs.insert(top, dtbs);
        let cfg = ExtlinuxConfig {
            timeout: Some(0),
            configuration_limit: Some(0),
            ..ExtlinuxConfig::default()
        };
        let text = render_text(&i, 1, &cfg).expect("render");
        assert!(
            text.contains("\nTIMEOUT 1\n\nLABEL nixos-default\n"),
            "{text}"
        );
        assert!(!text.contains("MENU TITLE"));
        assert!(
            text.ends_with("  FDTDIR ../nixos/kkkk-linux-6.1-dtbs\n"),
            "{text}"
        );
        assert!(!text.contains("nixos-1-default"));
        let cfg = ExtlinuxConfig {
            timeout: None,
            dtb_name: Some("board.dtb".into()),
            ..ExtlinuxConfig::default()
        };
        let text = render_text(&i, 1, &cfg).expect("render");
        assert!(text.contains("\nTIMEOUT 0\nMENU TITLE"), "{text}");
        assert!(
            text.contains("  FDT ../nixos/kkkk-linux-6.1-dtbs/board.dtb\n"),
            "{text}"
        );
    }

    #[test]
    fn plan_copies_once_and_removes_unreferenced() {
        let i = with_versions(inputs(2));
        let state = ExtlinuxState {
            files: vec![
                FileInfo {
                    name: "kkkk-linux-6.1-bzImage".into(),
                    dir: false,
                    size: 9000,
                },
                FileInfo {
                    name: "old-initrd".into(),
                    dir: false,
                    size: 10,
                },
                FileInfo {
                    name: "old-dtbs".into(),
                    dir: true,
                    size: 0,
                },
            ],
            conf: None,
        };
        let fp = plan(&i, 2, &ExtlinuxConfig::default(), &state).expect("plan");
        let copies: Vec<&str> = fp.copies.iter().map(|c| c.dest.as_str()).collect();
        assert_eq!(
            copies,
            [
                "nixos/dbg2-initrd-initrd",
                "nixos/sys1-initrd-initrd",
                "nixos/sys2-initrd-initrd"
            ]
        );
        let removed: Vec<(&str, bool)> = fp
            .removals
            .iter()
            .map(|r| (r.path.as_str(), r.tree))
            .collect();
        assert_eq!(
            removed,
            [("nixos/old-initrd", false), ("nixos/old-dtbs", true)]
        );
        assert_eq!(fp.writes.len(), 1);
        assert_eq!(fp.writes[0].dest, CONF);
    }

    #[test]
    fn extlinux_boots_the_admin_initrd_where_the_kernel_matches() {
        let i = with_versions(crate::sdboot::tests::with_admin_initrd(Some("6.6.0")));
        let fp = plan(&i, 3, &ExtlinuxConfig::default(), &ExtlinuxState::default()).expect("plan");
        let text = String::from_utf8(fp.writes[0].contents.clone()).expect("utf8");
        let ours = "stagehand-0123456789abcdef0123456789abcdef-initrd";
        // Generation 1 runs Linux 6.6.0: ours; 2 and 3 run 6.1.0: their own.
        let block = |label: &str| -> String {
            let start = text.find(&format!("LABEL {label}\n")).expect(label);
            text[start..].split("\n\n").next().unwrap_or("").to_string()
        };
        assert!(
            block("nixos-1-default").contains(&format!("  INITRD ../nixos/{ours}\n")),
            "{text}"
        );
        assert!(
            block("nixos-default").contains("  INITRD ../nixos/sys3-initrd-initrd\n"),
            "{text}"
        );
        assert!(
            block("nixos-2-debug").contains("  INITRD ../nixos/dbg2-initrd-initrd\n"),
            "{text}"
        );
        assert!(fp.copies.iter().any(|c| c.dest == format!("nixos/{ours}")
            && c.source == Path::new("/root/stagehand-initrd")));
        // The default generation is listed twice but its choice is said once.
        let n3 = fp
            .notes
            .iter()
            .filter(|n| n.starts_with("generation 3:"))
            .count();
        assert_eq!(n3, 1, "{:?}", fp.notes);
        assert!(
            fp.notes
                .iter()
                .any(|n| n.contains("generation 3: keeps its own initrd")
                    && n.contains("Linux 6.1.0, --initrd's for Linux 6.6.0")),
            "{:?}",
            fp.notes
        );
    }

    #[test]
    fn extlinux_prefers_the_modules_extension() {
        let mut i = with_versions(crate::sdboot::tests::with_admin_initrd(Some("6.1.0")));
        let ext = PathBuf::from("/nix/store/eeee-stagehand-initrd/initrd");
        i.sources.insert(
            ext.clone(),
            Source {
                canonical: ext.clone(),
                size: 5,
                files: 1,
                tree: false,
                digest: None,
            },
        );
        i.generations[0].spec.stagehand_initrd = Some(ext);
        let text = render_text(&i, 3, &ExtlinuxConfig::default()).expect("render");
        assert!(text.contains("LABEL nixos-default\n  MENU LABEL NixOS - Default\n  LINUX ../nixos/kkkk-linux-6.1-bzImage\n  INITRD ../nixos/eeee-stagehand-initrd-initrd\n"), "{text}");
        assert!(
            text.contains("  INITRD ../nixos/stagehand-0123456789abcdef0123456789abcdef-initrd\n"),
            "{text}"
        );
    }
}
