//! Our stage 2 for a generation nixpkgs built.
//!
//! `init=` names the generation the boot loader chose. In a generation we built,
//! `<toplevel>/init` is our stage 2. In a generation nixpkgs built, it is NixOS's bash
//! stage-2 script. An initrd made by `stagehand-initrd build --system` carries our stage 2
//! at [`CARRIED`]; for such a generation stage 1 copies it to [`RUN_COPY`] (on `/run`,
//! which moves into the new root) and execs it there with `argv[0]` set to the
//! generation's `init` path, so stage 2 still learns the generation from `argv[0]` and
//! `init=` stays the boot loader's choice of generation. `stagehand.init=generation` on
//! the kernel command line runs the generation's own `init` instead (NixOS's script, the
//! fallback); `stagehand.init=carried` insists on ours even for a generation that has
//! `activation.json`.

use std::fmt;
use std::path::Path;

use stagehand_common::cmdline::Cmdline;

/// Where `stagehand-initrd` puts our stage 2 in the initrd.
pub const CARRIED: &str = "/stagehand/stage2";
/// Where stage 1 copies it before `switch_root` (a path inside the new root).
pub const RUN_COPY: &str = "/run/stagehand/stage2";
/// The kernel parameter that picks between them.
pub const PARAM: &str = "stagehand.init";

/// What stage 1 execs after `switch_root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage2 {
    /// The generation's own `init`.
    Generation,
    /// Our carried stage 2, with `argv[0]` = the generation's `init` path.
    Carried,
}

/// Why the choice was made, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Ours,
    NixosGeneration,
    Asked,
    NotCarried,
    NotNixos,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ours => "the generation has activation.json: its init is our stage 2",
            Self::NixosGeneration => {
                "the generation is NixOS's own (an activate script, no activation.json): \
                 running the stage 2 carried in the initrd"
            }
            Self::Asked => "as stagehand.init= on the kernel command line asks",
            Self::NotCarried => "this initrd carries no stage 2",
            Self::NotNixos => "the generation has neither activation.json nor an activate script",
        })
    }
}

/// Decide for the generation whose `init` resolved to `init` (a path inside `new_root`).
pub fn choose(new_root: &Path, init: &str, cmdline: &Cmdline, carried: bool) -> (Stage2, Reason) {
    let asked = cmdline.get(PARAM);
    match asked {
        Some("generation") => return (Stage2::Generation, Reason::Asked),
        Some("carried") if carried => return (Stage2::Carried, Reason::Asked),
        Some("carried") => {
            log::warn!("{PARAM}=carried, but {CARRIED} is not in this initrd; running init=");
            return (Stage2::Generation, Reason::NotCarried);
        }
        Some(other) => log::warn!(
            "{PARAM}={other} is not understood (generation or carried); choosing by the \
             generation"
        ),
        None => {}
    }
    let dir = Path::new(init).parent().unwrap_or(Path::new("/"));
    let has = |name: &str| {
        let inside = dir.join(name);
        new_root
            .join(inside.strip_prefix("/").unwrap_or(&inside))
            .exists()
    };
    if has("activation.json") {
        (Stage2::Generation, Reason::Ours)
    } else if !has("activate") {
        (Stage2::Generation, Reason::NotNixos)
    } else if !carried {
        (Stage2::Generation, Reason::NotCarried)
    } else {
        (Stage2::Carried, Reason::NixosGeneration)
    }
}

/// Copy the carried stage 2 from the initrd to `run_copy` (on the `/run` that moves into
/// the new root), executable, replacing what a previous attempt left.
pub fn install(carried: &Path, run_copy: &Path) -> Result<(), String> {
    let dir = run_copy.parent().unwrap_or(Path::new("/run"));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = run_copy.with_extension("tmp");
    std::fs::copy(carried, &tmp).map_err(|e| {
        format!(
            "cannot copy {} to {}: {e}",
            carried.display(),
            tmp.display()
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o555))
        .and_then(|()| std::fs::rename(&tmp, run_copy))
        .map_err(|e| format!("cannot install {}: {e}", run_copy.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for f in files {
            let p = d.path().join(f.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, "x").expect("write");
        }
        d
    }

    const INIT: &str = "/nix/store/aaa-nixos-system/init";

    #[test]
    fn a_nixos_generation_gets_the_carried_stage2() {
        let d = root_with(&[INIT, "/nix/store/aaa-nixos-system/activate"]);
        let none = Cmdline::parse("");
        assert_eq!(
            choose(d.path(), INIT, &none, true),
            (Stage2::Carried, Reason::NixosGeneration)
        );
        // Without a carried stage 2, NixOS's own init runs.
        assert_eq!(
            choose(d.path(), INIT, &none, false),
            (Stage2::Generation, Reason::NotCarried)
        );
        // The fallback the user can pick from the boot menu's command line.
        let own = Cmdline::parse("stagehand.init=generation");
        assert_eq!(
            choose(d.path(), INIT, &own, true),
            (Stage2::Generation, Reason::Asked)
        );
    }

    #[test]
    fn our_generations_and_foreign_roots_keep_their_init() {
        let ours = root_with(&[
            INIT,
            "/nix/store/aaa-nixos-system/activate",
            "/nix/store/aaa-nixos-system/activation.json",
        ]);
        let none = Cmdline::parse("");
        assert_eq!(
            choose(ours.path(), INIT, &none, true),
            (Stage2::Generation, Reason::Ours)
        );
        let carried = Cmdline::parse("stagehand.init=carried");
        assert_eq!(
            choose(ours.path(), INIT, &carried, true),
            (Stage2::Carried, Reason::Asked)
        );
        let plain = root_with(&["/sbin/init"]);
        assert_eq!(
            choose(plain.path(), "/sbin/init", &none, true),
            (Stage2::Generation, Reason::NotNixos)
        );
        let odd = Cmdline::parse("stagehand.init=bogus");
        assert_eq!(
            choose(plain.path(), "/sbin/init", &odd, true).0,
            Stage2::Generation
        );
    }

    #[test]
    fn install_copies_executable_and_replaces() {
        let d = tempfile::tempdir().expect("tempdir");
        let src = d.path().join("stage2");
        std::fs::write(&src, "new").expect("write");
        let dest = d.path().join("run/stagehand/stage2");
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::write(&dest, "old").expect("write");
        install(&src, &dest).expect("install");
        assert_eq!(std::fs::read_to_string(&dest).expect("read"), "new");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dest).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o555);
        let e = install(&d.path().join("missing"), &dest).expect_err("missing");
        assert!(e.contains("missing"), "{e}");
    }
}
