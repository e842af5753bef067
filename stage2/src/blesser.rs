//! `<toplevel>/init bless [--esp DIR|DEVICE]`: what `stagehand-bless.service` runs once the
//! system reached `boot-complete.target`. Not PID 1; reports through kmsg (so the lines are
//! in the kernel log, the journal and on the console) and exits non-zero when a part failed.
//!
//! * stage 1's counter: `<base>+LEFT-DONE` in the boot-attempts directory becomes
//!   `<base>.good` (the booted generation from `/run/stagehand/stage1.json`), through the boot
//!   crate's `bless_generation`;
//! * the boot loader's counter: the entry named by `LoaderBootCountPath` loses its
//!   `+LEFT-DONE`, through the activation library's `bless` (what `stagehand bless` runs).
//!   The ESP is `--esp DIR` or `--esp DEVICE` (mounted under `/run/stagehand/esp` for the
//!   rename and unmounted after), else the first of `/boot`, `/efi`, `/boot/efi` that is a
//!   mount point with a `loader/` directory, else the partition systemd-boot names in
//!   `LoaderDevicePartUUID` (`/dev/disk/by-partuuid/…`).

use std::path::{Path, PathBuf};

use stagehand_boot::bless::{self, Decision};
use stagehand_boot::efivars::{self, EfiVars, EFIVARS_DIR};
use stagehand_boot::esp::BootFs;
use stagehand_boot::receipt::{Stage1Receipt, ATTEMPTS_DIR, STAGE1_RECEIPT};
/// Where a device ESP is mounted for the rename.
pub use stagehand_common::boot_counting::ESP_MOUNT;
use stagehand_common::mounts::mountinfo;
use stagehand_common::rootfs::Root;

use crate::bless_unit;
const ESP_DIRS: [&str; 3] = ["/boot", "/efi", "/boot/efi"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Esp {
    Dir(PathBuf),
    Device(PathBuf),
}

/// Where the ESP is: `explicit` (a `/dev/…` path is a device), else the first mounted
/// candidate directory that `has_loader`, else the loader's partition.
pub fn find_esp(
    explicit: Option<&str>,
    mount_points: &[String],
    has_loader: &dyn Fn(&Path) -> bool,
    part_uuid: Option<&str>,
) -> Option<Esp> {
    if let Some(e) = explicit {
        return Some(if e.starts_with("/dev/") {
            Esp::Device(PathBuf::from(e))
        } else {
            Esp::Dir(PathBuf::from(e))
        });
    }
    let mounted = ESP_DIRS
        .iter()
        .map(Path::new)
        .find(|d| mount_points.iter().any(|m| Path::new(m) == *d) && has_loader(d));
    if let Some(d) = mounted {
        return Some(Esp::Dir(d.to_path_buf()));
    }
    part_uuid
        .map(str::trim)
        .filter(|u| !u.is_empty() && u.bytes().any(|b| b != b'0' && b != b'-'))
        .map(|u| Esp::Device(Path::new("/dev/disk/by-partuuid").join(u.to_ascii_lowercase())))
}

/// Parse `bless [--esp X]`; `Err` is a usage message.
pub fn parse_args(args: &[String]) -> Result<Option<String>, String> {
    match args {
        [] => Ok(None),
        [flag, value] if flag == "--esp" => Ok(Some(value.clone())),
        _ => Err(format!(
            "usage: <toplevel>/init bless [--esp DIR|DEVICE] (got {args:?})"
        )),
    }
}

/// The subcommand; returns the exit status.
pub fn run(args: &[String]) -> i32 {
    let esp_arg = match parse_args(args) {
        Ok(e) => e,
        Err(e) => {
            log::error!("{e}");
            return 2;
        }
    };
    let mut status = 0;
    // Stage 1's counter.
    let stage1 = match Stage1Receipt::read(Path::new(STAGE1_RECEIPT)) {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot tell whether stage 1 counts this boot: {e}");
            status = 1;
            None
        }
    };
    match bless_unit::stage1_counting(stage1.as_ref(), false) {
        Some((base, _)) => match bless::bless_generation(Path::new(ATTEMPTS_DIR), &base) {
            Ok(done) => log::info!("generation marked good: {done}"),
            Err(e) => {
                log::error!("cannot mark generation {base} good: {e}");
                status = 1;
            }
        },
        None => log::debug!("stage 1 is not counting this boot"),
    }
    // The boot loader's counter.
    if let Err(e) = bless_loader_entry(esp_arg.as_deref()) {
        log::error!("cannot mark the boot entry good: {e}");
        status = 1;
    }
    status
}

fn bless_loader_entry(esp_arg: Option<&str>) -> Result<(), String> {
    let root = Root::open(Path::new("/")).map_err(|e| format!("cannot open /: {e}"))?;
    let efivars_dir = Path::new(EFIVARS_DIR);
    let vars = EfiVars::new(&root, efivars_dir);
    let loader = efivars::loader_vars(&vars).map_err(|e| e.to_string())?;
    if loader.boot_count_path.is_none() && loader.entry_selected.is_none() {
        log::info!("nothing to bless: no boot loader variables (not booted by systemd-boot)");
        return Ok(());
    }
    let part_uuid = vars
        .string("LoaderDevicePartUUID")
        .map_err(|e| e.to_string())?;
    let mount_points: Vec<String> = mountinfo::read()
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    let esp = find_esp(
        esp_arg,
        &mount_points,
        &|d| d.join("loader").is_dir(),
        part_uuid.as_deref(),
    )
    .ok_or_else(|| {
        "cannot find the ESP: no /boot, /efi or /boot/efi mount with a loader/ directory and \
         no LoaderDevicePartUUID; mount the ESP there or boot with stagehand.esp=DEVICE"
            .to_owned()
    })?;
    let (dir, mounted) = match esp {
        Esp::Dir(d) => (d, false),
        Esp::Device(dev) => {
            std::fs::create_dir_all(ESP_MOUNT)
                .map_err(|e| format!("cannot create {ESP_MOUNT}: {e}"))?;
            rustix::mount::mount(
                &dev,
                ESP_MOUNT,
                "vfat",
                rustix::mount::MountFlags::NOSUID
                    | rustix::mount::MountFlags::NODEV
                    | rustix::mount::MountFlags::NOEXEC,
                None,
            )
            .map_err(|e| format!("cannot mount {} (vfat) on {ESP_MOUNT}: {e}", dev.display()))?;
            (PathBuf::from(ESP_MOUNT), true)
        }
    };
    let result = BootFs::open(&root, &dir)
        .map_err(|e| e.to_string())
        .and_then(|fs| bless::bless(&root, &fs, efivars_dir, false).map_err(|e| e.to_string()));
    if mounted {
        rustix::fs::sync();
        if let Err(e) = rustix::mount::unmount(ESP_MOUNT, rustix::mount::UnmountFlags::empty()) {
            log::warn!("cannot unmount {ESP_MOUNT}: {e}");
        }
    }
    match result? {
        Decision::Rename { dir, from, to } => {
            log::info!("boot entry marked good: renamed {dir}/{from} -> {dir}/{to}")
        }
        Decision::AlreadyGood { file } => log::info!("boot entry {file} is already good"),
        Decision::Nothing(why) => log::info!("nothing to bless: {why}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(m: &[&str]) -> Vec<String> {
        m.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn explicit_esp_wins_and_devices_are_told_apart() {
        let none = mounts(&[]);
        assert_eq!(
            find_esp(Some("/dev/vdb"), &none, &|_| true, None),
            Some(Esp::Device("/dev/vdb".into()))
        );
        assert_eq!(
            find_esp(Some("/mnt/esp"), &none, &|_| true, Some("x")),
            Some(Esp::Dir("/mnt/esp".into()))
        );
    }

    #[test]
    fn mounted_candidates_need_a_loader_directory() {
        let m = mounts(&["/", "/boot", "/efi"]);
        assert_eq!(
            find_esp(None, &m, &|_| true, None),
            Some(Esp::Dir("/boot".into()))
        );
        // /boot is an XBOOTLDR or ext4 /boot without loader/: the ESP is /efi.
        assert_eq!(
            find_esp(None, &m, &|d| d == Path::new("/efi"), None),
            Some(Esp::Dir("/efi".into()))
        );
        // Not mounted: a loader/ directory on the root filesystem is not the ESP.
        assert_eq!(find_esp(None, &mounts(&["/"]), &|_| true, None), None);
    }

    #[test]
    fn loader_partition_uuid_is_the_fallback() {
        let m = mounts(&["/"]);
        assert_eq!(
            find_esp(
                None,
                &m,
                &|_| false,
                Some("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
            ),
            Some(Esp::Device(
                "/dev/disk/by-partuuid/0fc63daf-8483-4772-8e79-3d69d8477de4".into()
            ))
        );
        assert_eq!(
            find_esp(
                None,
                &m,
                &|_| false,
                Some("00000000-0000-0000-0000-000000000000")
            ),
            None
        );
    }

    #[test]
    fn arguments() {
        assert_eq!(parse_args(&[]), Ok(None));
        assert_eq!(
            parse_args(&["--esp".into(), "/dev/vdb".into()]),
            Ok(Some("/dev/vdb".into()))
        );
        assert!(parse_args(&["--nope".into()])
            .expect_err("usage")
            .starts_with("usage"));
    }
}
