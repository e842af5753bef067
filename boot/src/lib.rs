//! Stagehand's boot loader side: generations, boot-loader entries, rollback, boot counting.
//!
//! * [`profile`] — the system profile (`/nix/var/nix/profiles/system-N-link`): list, add,
//!   switch, roll back.
//! * [`spec`] — the parts of `boot.json` (bootspec v1) that entries need.
//! * [`gather`] — reads generations and measures their boot files (the only I/O planners see).
//! * [`sdboot`] / [`extlinux`] — pure planners: generations + partition state → [`plan::FilePlan`].
//! * [`initrd_choice`] — which initrd an entry boots: the bootspec's, our NixOS module's
//!   (`dev.stagehand.v1`), or the admin's `--initrd` where its kernel matches.
//! * [`install`] — `install-bootloader` as one library call (for `switch`/`boot`).
//! * [`esp`] — the executor: free-space check, temp + fsync + rename, syncfs.
//! * [`bls`], [`version`], [`entry_name`] — Boot Loader Specification entries, menu order,
//!   UAPI version comparison, boot-counter file names and tolerant entry IDs.
//! * [`efivars`] — systemd-boot's loader variables from efivarfs.
//! * [`bless`] — mark the booted entry (and stage 1's counted generation) good once the
//!   system reached boot-complete.
//! * [`receipt`] — the typed hand-offs of boot counting: stage 1's receipt and the boot
//!   receipt stage 2 writes.

pub mod bless;
pub mod bls;
pub mod date;
pub mod efivars;
pub mod entry_name;
pub mod esp;
pub mod extlinux;
pub mod gather;
pub mod initrd_choice;
pub mod install;
pub mod plan;
pub mod profile;
pub mod receipt;
pub mod sdboot;
pub mod spec;
pub mod version;
