//! Reading NixOS's own `<toplevel>/activate` (and `dry-activate`), so a generation that
//! nixpkgs built — with no `activation.json` — is activated natively.
//!
//! nixpkgs' activation-script.nix writes one bash script: a shebang, a prelude
//! (`systemConfig=…`, the `PATH` loop over store paths, `_status=0`, the ERR trap,
//! `umask 0022`, sometimes `source …/lib.sh`), then one block per snippet, already in
//! dependency order:
//!
//! ```text
//! #### Activation script snippet NAME:
//! _localstatus=0
//! <text>
//!
//! if (( _localstatus > 0 )); then
//!   printf "Activation script snippet '%s' failed (%s)\n" "NAME" "$_localstatus"
//! fi
//! ```
//!
//! and a tail that points `/run/current-system` at the generation (older versions also
//! link the gcroot) and `exit $_status`. In `dry-activate` a snippet without
//! `supportsDryActivation` is one line, `#### Activation script snippet NAME does not
//! support dry activation.`, and there is no tail.
//!
//! [`parse`] splits the script into its snippets in the script's order; [`classify`]
//! recognises the snippets NixOS itself defines (users, etc, binsh, usrbinenv, specialfs,
//! hashes, modprobe, udevd, and the empty ones) by matching their text line by line against
//! the forms nixpkgs has generated, capturing the store paths they pass on. A snippet
//! whose text does not match exactly — a module overrode it, a newer nixpkgs changed it —
//! is run as bash with the script's own prelude: never dropped, never guessed.

mod builtins;
mod parse;
mod plan;

pub use builtins::{classify, Builtin};
pub use parse::{looks_like_activate_script, parse, ActivateScript, ScriptError, ScriptSnippet};
pub use plan::{from_script, ACTIVATE_NAME, DRY_ACTIVATE_NAME};

#[cfg(test)]
mod tests;
