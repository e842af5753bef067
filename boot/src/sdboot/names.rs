//! The names systemd-boot's entries and files get: which entry files are ours, the
//! `EFI/nixos/` name of a kernel or initrd, our own debris, and which of two files for one
//! entry the loader prefers.

use std::path::Component;

use super::ENTRY_PREFIX;
use crate::entry_name::EntryName;
use crate::esp::TMP_SUFFIX;
use crate::gather::{Source, STORE_DIR};

/// Is `stem` (file name without counter and suffix) one we write?
/// `nixos-generation-<N>` or `nixos-generation-<N>-specialisation-<name>`.
pub fn is_managed_stem(stem: &str) -> bool {
    let lower = stem.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix(ENTRY_PREFIX) else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    let tail = &rest[digits..];
    tail.is_empty()
        || tail
            .strip_prefix("-specialisation-")
            .is_some_and(|n| !n.is_empty())
}

/// File name in `EFI/nixos/` for a kernel, initrd or device tree: the store path with `/`
/// turned into `-` (`<hash>-linux-6.1-bzImage.efi`, like NixOS's builder), so each content
/// is stored once. The admin's initrd, from outside the store, is named by its content:
/// `stagehand-<first 32 hex digits of its SHA-256>-initrd.efi`.
pub fn efi_name(source: &Source) -> String {
    format!("{}.efi", clean_name(source))
}

/// How many hex digits of the digest name an admin's initrd (128 bits: collisions between
/// the few initrds one partition holds are out of the question).
const DIGEST_DIGITS: usize = 32;

/// `<hash>-<name>-<file>` from the resolved store path; `stagehand-<digest>-initrd` for the
/// admin's initrd (the only source `gather` admits from outside the store).
pub fn clean_name(source: &Source) -> String {
    if let Some(d) = &source.digest {
        return sanitize(&format!(
            "stagehand-{}-initrd",
            d.get(..DIGEST_DIGITS).unwrap_or(d)
        ));
    }
    let canon = &source.canonical;
    let rel = canon.strip_prefix(STORE_DIR).unwrap_or(canon);
    let parts: Vec<String> = rel
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    sanitize(&parts.join("-"))
}

/// Keep file names within what FAT and the BLS allow.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Specialisation names become part of a file name; the BLS allows `A-Za-z0-9+-_.`.
pub(super) fn valid_specialisation_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `N` from a managed stem, main entry or specialisation.
pub(super) fn generation_of_any(stem: &str) -> Option<u64> {
    if !is_managed_stem(stem) {
        return None;
    }
    let rest = stem.get(ENTRY_PREFIX.len()..)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A temporary left by an interrupted run of ours.
pub fn is_debris(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TMP_SUFFIX)
}

/// Lower is preferred: good, then most tries left, then fewest done.
pub(super) fn preference(n: &EntryName) -> (u8, std::cmp::Reverse<u32>, u32) {
    match n.counter {
        None => (0, std::cmp::Reverse(0), 0),
        Some(c) => (1, std::cmp::Reverse(c.left), c.done_or_zero()),
    }
}
