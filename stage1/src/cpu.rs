//! Modules for CPU features this machine lacks: not tried.
//!
//! A module written for a CPU feature (`crc32c_intel` needs SSE4.2, `aesni_intel` AES-NI)
//! declares it with `MODULE_DEVICE_TABLE(x86cpu, …)`, which puts `cpu:` aliases in its
//! `.modinfo` (`cpu:type:x86,ven*fam*mod*:feature:*0094*`), and refuses to load with
//! `ENODEV` on a CPU that matches none of them. The kernel describes the boot CPU in the
//! same language at [`CPU_MODALIAS`]
//! (`cpu:type:x86,ven0002fam000Fmod006B:feature:,0000,0002,…`: vendor, family, model,
//! then every feature bit it has as four upper-case hex digits), and udev/kmod autoload
//! such modules by `fnmatch`ing the aliases against it. The initrd builder records each
//! module's `cpu:` aliases in the stage-1 config; stage 1 does the same match and skips an
//! optional module that cannot load, instead of paying for `finit_module` to say ENODEV
//! (the module is read, its signature checked and relocated first: 41 ms for
//! `crc32c_intel` under QEMU's TCG).
//!
//! A required module is still tried when it does not match: a wrong decision here must not
//! turn a boot that would work into one without its disk driver, and a real ENODEV stops
//! the boot either way (its error then says that the CPU does not match).

use stagehand_common::glob;
use stagehand_common::stage1_config::Module;

/// The boot CPU's modalias (`drivers/base/cpu.c`, `CONFIG_GENERIC_CPU_AUTOPROBE`).
pub const CPU_MODALIAS: &str = "/sys/devices/system/cpu/modalias";

/// Does a module with `cpu_aliases` suit the CPU described by `modalias`? A module
/// without `cpu:` aliases suits every CPU; one with some needs one of them to match, as
/// kmod matches aliases (`fnmatch` without flags).
pub fn suits(cpu_aliases: &[String], modalias: &str) -> bool {
    let modalias = modalias.trim_end().as_bytes();
    cpu_aliases.is_empty()
        || cpu_aliases
            .iter()
            .any(|a| glob::matches(a.as_bytes(), modalias))
}

/// What to do with one module of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Load,
    /// Optional and made for CPU features this CPU lacks.
    Skip,
    /// Required, and none of its `cpu:` aliases matches: tried anyway (see the module docs).
    LoadMismatched,
}

/// The decision for `module` given the CPU's modalias (`None`: the kernel publishes none,
/// so every module is tried).
pub fn decide(module: &Module, modalias: Option<&str>) -> Decision {
    match modalias {
        Some(m) if !suits(&module.cpu_aliases, m) => {
            if module.optional {
                Decision::Skip
            } else {
                Decision::LoadMismatched
            }
        }
        _ => Decision::Load,
    }
}

/// The CPU's modalias, when the kernel publishes one and some module needs it.
pub fn read_modalias(modules: &[Module]) -> Option<String> {
    if modules.iter().all(|m| m.cpu_aliases.is_empty()) {
        return None;
    }
    std::fs::read_to_string(CPU_MODALIAS)
        .ok()
        .filter(|m| m.starts_with("cpu:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/sys/devices/system/cpu/modalias` under QEMU 7.2's default `qemu64` CPU with TCG
    /// (read by a throwaway `/init` booting the Debian 6.1.0-57 kernel the VM tests use):
    /// SSE3 (0x80) and CX16 (0x8D), no SSSE3 (0x89), SSE4.2 (0x94), PCLMULQDQ (0x81),
    /// AES (0x99) or VMX (0x85); SVM (0xC2) yes.
    const TCG_QEMU64: &str = "cpu:type:x86,ven0002fam000Fmod006B:feature:,0000,0002,0003,\
        0004,0005,0006,0007,0008,0009,000B,000C,000D,000E,000F,0010,0011,0013,0017,0018,0019,\
        001A,0020,0022,0023,0024,0025,0026,0027,0028,0029,002B,002C,002D,002E,002F,0030,0031,\
        0034,0037,0038,003D,0064,006E,0070,0072,0074,0075,0079,007A,0080,008D,009F,00C0,00C2,\
        00C8,00ED,00F3,010F,0165,016C\n";

    /// The same file on the project's build machine (an Intel guest under KVM, model 0xCF).
    const HOST_INTEL: &str = "cpu:type:x86,ven0000fam0006mod00CF:feature:,0000,0001,0002,\
        0003,0004,0005,0006,0007,0008,0009,000B,000C,000D,000E,000F,0010,0011,0013,0017,0018,\
        0019,001A,001B,001C,002B,0034,003A,003B,003D,0068,006F,0070,0074,0075,0076,0078,0079,\
        007F,0080,0081,0089,008C,008D,0091,0093,0094,0095,0096,0097,0098,0099,009A,009B,009C,\
        009D,009E,009F,00C0,00C5,00C8,00E1,00EA,00ED,00F3,00FF,0114,0115,0120,0121,0123,0124,\
        0125,0126,0127,0128,0129,012A,012B,012D,0130,0131,0132,0133,0134,0135,0137,0138,013C,\
        013D,013E,013F,0140,0141,0142,0143,0144,0164,0165,016C,016E,017B,0184,0185,018A,018B,\
        018C,01C2,0201,0202,0206,0208,0209,020A,020B,020C,020E,0216,0219,021B,021C,0244,024E,\
        0250,0257,025D,0282,0286,0289,02AB,02AC\n";

    fn aliases(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    // The aliases below are `modinfo -F alias` of the Debian 6.1.0-57-amd64 modules.
    const CRC32C_INTEL: &str = "cpu:type:x86,ven*fam*mod*:feature:*0094*";
    const AESNI_INTEL: &str = "cpu:type:x86,ven*fam*mod*:feature:*0099*";
    const KVM_AMD: &str = "cpu:type:x86,ven*fam*mod*:feature:*00C2*";
    const SHA512_SSSE3: [&str; 3] = [
        "cpu:type:x86,ven*fam*mod*:feature:*0089*",
        "cpu:type:x86,ven*fam*mod*:feature:*009C*",
        "cpu:type:x86,ven*fam*mod*:feature:*0125*",
    ];
    const CORETEMP: &str = "cpu:type:x86,ven0000fam*mod*:feature:*01C0*";
    const INTEL_UNCORE_ICX: &str = "cpu:type:x86,ven0000fam0006mod006A:feature:*";

    #[test]
    fn feature_aliases_match_the_cpus_that_have_the_feature() {
        assert!(!suits(&aliases(&[CRC32C_INTEL]), TCG_QEMU64));
        assert!(suits(&aliases(&[CRC32C_INTEL]), HOST_INTEL));
        assert!(!suits(&aliases(&[AESNI_INTEL]), TCG_QEMU64));
        assert!(suits(&aliases(&[AESNI_INTEL]), HOST_INTEL));
        // SVM is what qemu64 has and this Intel host has not.
        assert!(suits(&aliases(&[KVM_AMD]), TCG_QEMU64));
        assert!(!suits(&aliases(&[KVM_AMD]), HOST_INTEL));
    }

    #[test]
    fn any_one_alias_is_enough() {
        // SSSE3, AVX or AVX2: the host has all three, qemu64 none.
        assert!(suits(&aliases(&SHA512_SSSE3), HOST_INTEL));
        assert!(!suits(&aliases(&SHA512_SSSE3), TCG_QEMU64));
        let mut avx2_only = HOST_INTEL.replace(",0089", "").replace(",009C", "");
        assert!(suits(&aliases(&SHA512_SSSE3), &avx2_only));
        avx2_only = avx2_only.replace(",0125", "");
        assert!(!suits(&aliases(&SHA512_SSSE3), &avx2_only));
    }

    #[test]
    fn vendor_family_and_model_count() {
        // Vendor 0 is Intel; qemu64 says AMD (2).
        assert!(!suits(&aliases(&[CORETEMP]), TCG_QEMU64));
        assert!(!suits(&aliases(&[INTEL_UNCORE_ICX]), HOST_INTEL));
        let icx = HOST_INTEL.replace("mod00CF", "mod006A");
        assert!(suits(&aliases(&[INTEL_UNCORE_ICX]), &icx));
    }

    #[test]
    fn a_feature_number_matches_whole_entries_only() {
        // 0x94 must not be found inside 0x940 or across the comma of ",0009,4…".
        let fake = "cpu:type:x86,ven0000fam0006mod0001:feature:,0009,0940,1094\n";
        assert!(!suits(&aliases(&[CRC32C_INTEL]), fake));
    }

    #[test]
    fn modules_without_cpu_aliases_suit_every_cpu() {
        assert!(suits(&[], TCG_QEMU64));
        assert!(suits(&[], ""));
    }

    fn module(optional: bool, cpu: &[&str]) -> Module {
        Module {
            name: "crc32c_intel".into(),
            path: "/lib/modules/crc32c_intel.ko".into(),
            params: String::new(),
            optional,
            cpu_aliases: aliases(cpu),
        }
    }

    #[test]
    fn optional_mismatches_are_skipped_required_ones_tried() {
        let m = module(true, &[CRC32C_INTEL]);
        assert_eq!(decide(&m, Some(TCG_QEMU64)), Decision::Skip);
        assert_eq!(decide(&m, Some(HOST_INTEL)), Decision::Load);
        // No modalias from the kernel: no basis to skip anything.
        assert_eq!(decide(&m, None), Decision::Load);
        let m = module(false, &[CRC32C_INTEL]);
        assert_eq!(decide(&m, Some(TCG_QEMU64)), Decision::LoadMismatched);
        assert_eq!(decide(&module(true, &[]), Some(TCG_QEMU64)), Decision::Load);
    }
}
