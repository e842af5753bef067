//! The runtime bless unit. When this boot is being counted — systemd-boot set
//! `LoaderBootCountPath` (the entry file carries `+LEFT-DONE`), or stage 1's own counter is
//! running for this generation (its receipt `/run/stagehand/stage1.json`, read through
//! `stagehand_boot::receipt`) — stage 2 writes
//! `/run/systemd/system/stagehand-bless.service` and pulls it into the boot, so a generation
//! is marked good once the system reached `boot-complete.target` without having to ship a
//! unit of its own. Without it, counting would retire a perfectly good generation after its
//! tries.
//!
//! The unit follows `systemd-bless-boot.service`: pulled in by the default target,
//! `Requires=` and `After=boot-complete.target` (which is not part of the boot transaction by
//! itself, per systemd.special(7); checks that must pass order themselves before it). It runs
//! `<toplevel>/init bless`: stage 2's own binary, which every generation has, calling the
//! same library code as `stagehand bless` plus the rename of stage 1's counter.
//! `boot-complete.target` is written as well when no unit directory has one (systemd's own
//! copy is not installed everywhere).

use std::path::{Path, PathBuf};

use stagehand_boot::receipt::Stage1Receipt;
use stagehand_common::rootfs::Root;

pub const UNIT: &str = "stagehand-bless.service";
pub const UNIT_DIR: &str = "/run/systemd/system";
/// The target whose `.wants/` pulls the unit in: the one every boot starts.
pub const WANTED_BY: &str = "default.target";
pub const BOOT_COMPLETE: &str = "boot-complete.target";
/// Where systemd looks for units, highest priority first (the `/run` one is ours).
pub const UNIT_PATH: [&str; 4] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// Who is counting this boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counting {
    /// systemd-boot: the booted entry's file name after its counter update.
    pub loader: Option<String>,
    /// Stage 1: the booted generation's store basename and its counter after this boot.
    pub stage1: Option<(String, String)>,
}

impl Counting {
    pub fn active(&self) -> bool {
        self.loader.is_some() || self.stage1.is_some()
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.loader {
            parts.push(format!("the boot loader counts {p}"));
        }
        if let Some((base, after)) = &self.stage1 {
            parts.push(format!("stage 1 counts {base} ({after})"));
        }
        parts.join(", ")
    }
}

/// Stage 1's counting, from its receipt: active when it counted this boot and the counter is
/// not already `good` (nor blessed by `stagehand.bless=stage2` just now).
pub fn stage1_counting(
    stage1: Option<&Stage1Receipt>,
    blessed_in_stage2: bool,
) -> Option<(String, String)> {
    let (base, after) = stage1?.counted_generation()?;
    (!blessed_in_stage2).then(|| (base.to_owned(), after.to_string()))
}

/// The unit. `init` is `<toplevel>/init`; `esp` is passed on from `stagehand.esp=`.
pub fn unit_text(init: &Path, esp: Option<&str>) -> String {
    let esp_arg = esp.map(|e| format!(" --esp {e}")).unwrap_or_default();
    format!(
        "# Written by Stagehand's stage 2 for this boot only: it is being counted.\n\
         [Unit]\n\
         Description=Mark this boot's generation good (Stagehand boot counting)\n\
         DefaultDependencies=no\n\
         Requires={BOOT_COMPLETE}\n\
         After=local-fs.target {BOOT_COMPLETE}\n\
         Conflicts=shutdown.target\n\
         Before=shutdown.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart={} bless{esp_arg}\n",
        init.display()
    )
}

/// systemd's `boot-complete.target`, for systems whose unit directories lack it.
pub const BOOT_COMPLETE_TEXT: &str =
    "# Written by Stagehand's stage 2: no unit directory had one.\n\
     [Unit]\n\
     Description=Boot Completion Check\n\
     Documentation=man:systemd.special(7)\n\
     Requires=sysinit.target\n\
     After=sysinit.target\n";

/// One file the unit needs, relative to the real root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitFile {
    Text { path: PathBuf, text: String },
    Link { path: PathBuf, target: String },
}

/// Everything to write: the unit, its wants link, and `boot-complete.target` when
/// `has_boot_complete` says no unit directory has it.
pub fn files(init: &Path, esp: Option<&str>, has_boot_complete: bool) -> Vec<UnitFile> {
    let dir = Path::new(UNIT_DIR);
    let mut v = vec![
        UnitFile::Text {
            path: dir.join(UNIT),
            text: unit_text(init, esp),
        },
        UnitFile::Link {
            path: dir.join(format!("{WANTED_BY}.wants")).join(UNIT),
            target: format!("../{UNIT}"),
        },
    ];
    if !has_boot_complete {
        v.push(UnitFile::Text {
            path: dir.join(BOOT_COMPLETE),
            text: BOOT_COMPLETE_TEXT.to_owned(),
        });
    }
    v
}

/// Write `files` under `root`: each text atomically, then the links (atomic symlink
/// replacement), so the wants link never points at a unit that is not there yet.
pub fn write(root: &Path, files: &[UnitFile]) -> Result<(), String> {
    for f in files {
        if let UnitFile::Text { path, text } = f {
            let host = root.join(path.strip_prefix("/").unwrap_or(path));
            stagehand_common::atomic::write_file(&host, text.as_bytes(), 0o644)
                .map_err(|e| e.to_string())?;
        }
    }
    let r = Root::open(root).map_err(|e| format!("cannot open {}: {e}", root.display()))?;
    for f in files {
        if let UnitFile::Link { path, target } = f {
            r.set_symlink(path, target.as_bytes()).map_err(|e| {
                format!(
                    "cannot link {} -> {target}: {e}",
                    r.host_path(path).display()
                )
            })?;
        }
    }
    Ok(())
}

/// Does any unit directory under `root` have `boot-complete.target` (a masked one counts)?
pub fn has_boot_complete(root: &Path) -> bool {
    UNIT_PATH.iter().any(|d| {
        let dir = root.join(d.trim_start_matches('/'));
        std::fs::symlink_metadata(dir.join(BOOT_COMPLETE)).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(fields: &str) -> Stage1Receipt {
        let text = format!(
            r#"{{"version":1,"init":"/nix/store/abc-sys-2/init","tries":3,{fields},
                "times_us":{{"start":1,"modules":0,"mounts":0,"attempts":0,"end":2,"total":1,
                            "phases":[]}}}}"#
        );
        Stage1Receipt::parse(Path::new("stage1.json"), text.as_bytes()).expect("receipt")
    }

    #[test]
    fn stage1_counting_only_while_a_counter_runs() {
        let s1 = receipt(
            r#""booted":"abc-sys-2","reason":"init=",
               "counter":{"before":"untried","after":"+2-1"}"#,
        );
        assert_eq!(
            stage1_counting(Some(&s1), false),
            Some(("abc-sys-2".into(), "+2-1".into()))
        );
        assert_eq!(stage1_counting(Some(&s1), true), None, "blessed in stage 2");
        let good = receipt(
            r#""booted":"abc","reason":"init=","counter":{"before":"good","after":"good"}"#,
        );
        assert_eq!(stage1_counting(Some(&good), false), None);
        let off = receipt(r#""reason":"init=","counting":false"#);
        assert_eq!(stage1_counting(Some(&off), false), None);
        assert_eq!(stage1_counting(None, false), None);
    }

    #[test]
    fn counting_is_active_for_either_counter() {
        assert!(!Counting::default().active());
        let c = Counting {
            loader: Some("\\loader\\entries\\nixos-generation-2+2-1.conf".into()),
            stage1: None,
        };
        assert!(c.active());
        assert_eq!(
            c.describe(),
            "the boot loader counts \\loader\\entries\\nixos-generation-2+2-1.conf"
        );
        let c = Counting {
            loader: None,
            stage1: Some(("abc".into(), "+0-1".into())),
        };
        assert!(c.active());
        assert_eq!(c.describe(), "stage 1 counts abc (+0-1)");
    }

    #[test]
    fn unit_runs_stage2_bless_after_boot_complete() {
        let init = Path::new("/nix/store/abc-system/init");
        let text = unit_text(init, Some("/dev/vdb"));
        for line in [
            "DefaultDependencies=no\n",
            "Requires=boot-complete.target\n",
            "After=local-fs.target boot-complete.target\n",
            "Type=oneshot\n",
            "ExecStart=/nix/store/abc-system/init bless --esp /dev/vdb\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from {text}");
        }
        assert!(unit_text(init, None).contains("ExecStart=/nix/store/abc-system/init bless\n"));
    }

    #[test]
    fn files_are_the_unit_its_wants_link_and_a_missing_target() {
        let init = Path::new("/nix/store/abc-system/init");
        let f = files(init, None, true);
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[1],
            UnitFile::Link {
                path: PathBuf::from(
                    "/run/systemd/system/default.target.wants/stagehand-bless.service"
                ),
                target: "../stagehand-bless.service".into(),
            }
        );
        let f = files(init, None, false);
        assert!(matches!(&f[2], UnitFile::Text { path, text }
            if path == Path::new("/run/systemd/system/boot-complete.target")
                && text.contains("Description=Boot Completion Check")));
    }

    #[test]
    fn written_under_a_root_and_rewritten_in_place() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        assert!(!has_boot_complete(root));
        let init = Path::new("/nix/store/abc-system/init");
        write(root, &files(init, None, has_boot_complete(root))).expect("write");
        let dir = root.join("run/systemd/system");
        let unit = std::fs::read_to_string(dir.join(UNIT)).expect("unit");
        assert!(unit.contains("ExecStart=/nix/store/abc-system/init bless\n"));
        let link = dir.join("default.target.wants").join(UNIT);
        assert_eq!(
            std::fs::read_link(&link).expect("link"),
            PathBuf::from("../stagehand-bless.service")
        );
        // The link resolves to the unit.
        assert_eq!(std::fs::read_to_string(&link).expect("via link"), unit);
        assert!(has_boot_complete(root));
        // A second boot's stage 2 (same /run only in tests) replaces without error.
        write(root, &files(init, Some("/dev/vdb"), true)).expect("rewrite");
        assert!(std::fs::read_to_string(dir.join(UNIT))
            .expect("unit")
            .contains("bless --esp /dev/vdb\n"));
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("list")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }
}
