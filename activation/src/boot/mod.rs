//! Generations, boot-loader entries and rollback.
//!
//! * [`profile`] — the system profile (`/nix/var/nix/profiles/system-N-link`): list, add,
//!   switch, roll back.
//! * [`spec`] — the parts of `boot.json` (bootspec v1) that entries need.
//! * [`cli`] — `stagehand generations | rollback | install-bootloader | bless`.

pub mod cli;
pub mod date;
pub mod profile;
pub mod spec;
