//! Resume from hibernation: which device holds the image. Stage 1 writes that device's
//! `MAJOR:MINOR` to `/sys/power/resume` before anything is mounted writable (or checked
//! by fsck); the kernel then restores the image and never returns, or finds none and
//! the boot goes on. NixOS: `boot.resumeDevice`, else the first of the swap devices whose
//! signature is `swsuspend`.

/// Where to look, decided from the command line and the config before any device is seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumePlan {
    /// `noresume`, or the kernel has no hibernation support.
    Off,
    /// A device named by `resume=` or `boot.resumeDevice`, in any device-spec form.
    Device(String),
    /// `resume=MAJOR:MINOR`: nothing to wait for or probe.
    Devno(u32, u32),
    /// The configured swap devices: the first with a swsuspend signature.
    Candidates(Vec<String>),
    /// No swap devices configured: any block device with a swsuspend signature.
    AnySwsuspend,
}

impl ResumePlan {
    /// `resume=` (wins) or the configured device, else the configured candidates.
    pub fn new(
        cmdline_resume: Option<&str>,
        noresume: bool,
        configured: Option<&str>,
        candidates: &[String],
    ) -> Result<Self, String> {
        if noresume {
            return Ok(Self::Off);
        }
        if let Some(r) = cmdline_resume {
            if let Some(devno) = parse_devno(r) {
                return Ok(Self::Devno(devno.0, devno.1));
            }
            if r.is_empty() {
                return Err("resume= is empty; name the swap device (resume=/dev/vdb, \
                            resume=LABEL=swap, resume=254:16) or drop it"
                    .into());
            }
            return Ok(Self::Device(r.to_owned()));
        }
        match configured {
            Some(d) if !d.is_empty() => Ok(Self::Device(d.to_owned())),
            _ if !candidates.is_empty() => Ok(Self::Candidates(candidates.to_vec())),
            _ => Ok(Self::AnySwsuspend),
        }
    }

    /// Device specs stage 1 should wait for on behalf of resume (with the filesystems).
    pub fn waits(&self) -> Vec<String> {
        match self {
            Self::Device(d) => vec![d.clone()],
            Self::Candidates(c) => c.clone(),
            _ => Vec::new(),
        }
    }
}

/// `MAJOR:MINOR` in decimal, the form `/sys/power/resume` takes.
pub fn parse_devno(s: &str) -> Option<(u32, u32)> {
    let (maj, min) = s.split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

/// A block device as found by the device scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen<'a> {
    pub name: &'a str,
    pub fs_type: Option<&'a str>,
    pub devno: (u32, u32),
}

/// The decision once devices are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeChoice {
    /// Write `devno` to `/sys/power/resume`; `what` says which device and why.
    Resume { devno: (u32, u32), what: String },
    /// Nothing to resume from; `why` is for the debug log.
    Nothing { why: String },
}

/// Pick the resume device. `found` is, for [`ResumePlan::Device`] and
/// [`ResumePlan::Candidates`], the device each waited-for spec resolved to (same order as
/// [`ResumePlan::waits`]); `all` is every device seen, in name order.
pub fn choose(plan: &ResumePlan, found: &[Option<Seen<'_>>], all: &[Seen<'_>]) -> ResumeChoice {
    let nothing = |why: String| ResumeChoice::Nothing { why };
    match plan {
        ResumePlan::Off => nothing("resume is off (noresume)".into()),
        ResumePlan::Devno(maj, min) => ResumeChoice::Resume {
            devno: (*maj, *min),
            what: format!("resume={maj}:{min}"),
        },
        // A named device is handed to the kernel whatever its signature: the kernel
        // checks for an image itself, as NixOS leaves it to do for boot.resumeDevice.
        ResumePlan::Device(spec) => match found.first().and_then(Option::as_ref) {
            Some(d) => ResumeChoice::Resume {
                devno: d.devno,
                what: format!("{spec} ({})", d.name),
            },
            None => nothing(format!("resume device {spec} did not appear")),
        },
        ResumePlan::Candidates(specs) => specs
            .iter()
            .zip(found)
            .find_map(|(spec, d)| {
                let d = d.as_ref()?;
                (d.fs_type == Some("swsuspend")).then(|| ResumeChoice::Resume {
                    devno: d.devno,
                    what: format!("{spec} ({}, swsuspend signature)", d.name),
                })
            })
            .unwrap_or_else(|| {
                nothing("no configured swap device holds a hibernation image".into())
            }),
        ResumePlan::AnySwsuspend => all
            .iter()
            .find(|d| d.fs_type == Some("swsuspend"))
            .map(|d| ResumeChoice::Resume {
                devno: d.devno,
                what: format!("{} (swsuspend signature)", d.name),
            })
            .unwrap_or_else(|| nothing("no device holds a hibernation image".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(name: &'a str, t: Option<&'a str>, devno: (u32, u32)) -> Seen<'a> {
        Seen {
            name,
            fs_type: t,
            devno,
        }
    }

    #[test]
    fn plan_from_cmdline_and_config() {
        let cands = vec!["/dev/vdb".to_string()];
        assert_eq!(
            ResumePlan::new(Some("LABEL=swap"), false, Some("/dev/vdc"), &cands),
            Ok(ResumePlan::Device("LABEL=swap".into()))
        );
        assert_eq!(
            ResumePlan::new(Some("254:16"), false, None, &[]),
            Ok(ResumePlan::Devno(254, 16))
        );
        assert_eq!(
            ResumePlan::new(None, false, Some("/dev/vdc"), &cands),
            Ok(ResumePlan::Device("/dev/vdc".into()))
        );
        assert_eq!(
            ResumePlan::new(None, false, None, &cands),
            Ok(ResumePlan::Candidates(cands.clone()))
        );
        assert_eq!(
            ResumePlan::new(None, false, None, &[]),
            Ok(ResumePlan::AnySwsuspend)
        );
        assert_eq!(
            ResumePlan::new(Some("/dev/vdb"), true, None, &[]),
            Ok(ResumePlan::Off)
        );
        assert!(ResumePlan::new(Some(""), false, None, &[]).is_err());
    }

    #[test]
    fn named_device_resumes_whatever_its_signature() {
        let plan = ResumePlan::Device("/dev/vdb".into());
        assert_eq!(plan.waits(), ["/dev/vdb"]);
        let d = seen("vdb", Some("swap"), (254, 16));
        assert_eq!(
            choose(&plan, &[Some(d.clone())], std::slice::from_ref(&d)),
            ResumeChoice::Resume {
                devno: (254, 16),
                what: "/dev/vdb (vdb)".into()
            }
        );
        assert!(matches!(
            choose(&plan, &[None], &[]),
            ResumeChoice::Nothing { .. }
        ));
    }

    #[test]
    fn candidates_need_a_swsuspend_signature() {
        let plan = ResumePlan::Candidates(vec!["/dev/vdb".into(), "LABEL=swap2".into()]);
        let plain = seen("vdb", Some("swap"), (254, 16));
        let image = seen("vdc", Some("swsuspend"), (254, 32));
        let choice = choose(
            &plan,
            &[Some(plain.clone()), Some(image.clone())],
            &[plain.clone(), image],
        );
        assert_eq!(
            choice,
            ResumeChoice::Resume {
                devno: (254, 32),
                what: "LABEL=swap2 (vdc, swsuspend signature)".into()
            }
        );
        assert!(matches!(
            choose(&plan, &[Some(plain), None], &[]),
            ResumeChoice::Nothing { .. }
        ));
    }

    #[test]
    fn without_configuration_the_first_swsuspend_device_wins() {
        let all = [
            seen("vda", Some("ext4"), (254, 0)),
            seen("vdb", Some("swsuspend"), (254, 16)),
            seen("vdc", Some("swsuspend"), (254, 32)),
        ];
        assert_eq!(
            choose(&ResumePlan::AnySwsuspend, &[], &all),
            ResumeChoice::Resume {
                devno: (254, 16),
                what: "vdb (swsuspend signature)".into()
            }
        );
        assert!(matches!(
            choose(&ResumePlan::AnySwsuspend, &[], &all[..1]),
            ResumeChoice::Nothing { .. }
        ));
        assert!(matches!(
            choose(&ResumePlan::Off, &[], &all),
            ResumeChoice::Nothing { .. }
        ));
        assert_eq!(
            choose(&ResumePlan::Devno(8, 3), &[], &[]),
            ResumeChoice::Resume {
                devno: (8, 3),
                what: "resume=8:3".into()
            }
        );
    }
}
