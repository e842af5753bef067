//! Which initrd an entry boots, for both planners: the generation's own (bootspec
//! `initrd`), the one Stagehand's NixOS module recorded in `boot.json`
//! (`dev.stagehand.v1.initrd`), or the admin's `install-bootloader --initrd`.
//!
//! Order: the extension wins (it was built from that very configuration); then the admin's
//! initrd, but only where its modules were built for the configuration's kernel (an initrd
//! whose modules do not match the kernel cannot load them, and the root would never
//! appear); otherwise the generation keeps its own initrd and a note says why. A
//! configuration without an initrd (`boot.initrd.enable = false`) keeps booting without one.

use std::path::PathBuf;

use crate::gather::{GenerationBoot, Inputs};
use crate::spec::{BootSpec, STAGEHAND_EXTENSION};

/// Where an entry's initrd comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The bootspec's own `initrd`.
    Bootspec,
    /// `dev.stagehand.v1.initrd` in `boot.json`.
    Extension,
    /// `install-bootloader --initrd`.
    Admin,
}

/// The initrd one entry boots, as a key of [`Inputs::sources`], and what to tell the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub initrd: Option<PathBuf>,
    pub from: From,
    /// Only when there was a choice to make (an extension, or `--initrd`).
    pub note: Option<String>,
}

/// The initrd of `spec`: generation `g` itself, or its specialisation of that name.
pub fn choose(
    inputs: &Inputs,
    g: &GenerationBoot,
    spec: &BootSpec,
    specialisation: Option<&str>,
) -> Choice {
    let who = who(g, specialisation);
    if let Some(ext) = &spec.stagehand_initrd {
        return Choice {
            initrd: Some(ext.clone()),
            from: From::Extension,
            note: Some(format!(
                "{who}: initrd {} (boot.json {STAGEHAND_EXTENSION})",
                ext.display()
            )),
        };
    }
    let own = |note: Option<String>| Choice {
        initrd: spec.initrd.clone(),
        from: From::Bootspec,
        note,
    };
    let Some(ours) = &inputs.ours else {
        return own(None);
    };
    let Some(theirs) = &spec.initrd else {
        return own(Some(format!(
            "{who}: boots without an initrd (its configuration has none), --initrd is not used"
        )));
    };
    let kernel = g.modules_version.get(&spec.toplevel);
    let admin = |why: String| Choice {
        initrd: Some(ours.path.clone()),
        from: From::Admin,
        note: Some(format!("{who}: initrd {} ({why})", ours.path.display())),
    };
    match (&ours.kernel_version, kernel) {
        (None, _) => admin("--initrd; it holds no kernel modules, so any kernel".into()),
        (Some(v), Some(k)) if v == k => admin(format!("--initrd, modules for Linux {v}")),
        (Some(v), Some(k)) => own(Some(format!(
            "{who}: keeps its own initrd {}: its kernel modules are for Linux {k}, --initrd's \
             for Linux {v} (build an initrd from this generation to use Stagehand with it)",
            theirs.display()
        ))),
        (Some(v), None) => own(Some(format!(
            "{who}: keeps its own initrd {}: its kernel version is unknown (no single \
             directory in {}), --initrd's modules are for Linux {v}",
            theirs.display(),
            spec.toplevel.join("kernel-modules/lib/modules").display()
        ))),
    }
}

fn who(g: &GenerationBoot, specialisation: Option<&str>) -> String {
    match specialisation {
        Some(n) => format!("generation {} (specialisation {n})", g.number),
        None => format!("generation {}", g.number),
    }
}
