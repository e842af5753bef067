//! Optional stripping of the programs and shared libraries copied into the initrd, in the
//! manner of ELFkickers' `sstrip`: keep exactly the bytes the program headers map (what
//! the kernel and the dynamic loader read to run it) and drop the rest of the file —
//! section headers, `.shstrtab`, `.symtab`/`.strtab`, debug sections, `.comment`,
//! `.gnu_debuglink`. Everything that runs (code, data, `.dynamic`, `.dynsym`, notes, TLS
//! templates, RELRO) sits inside a segment, so it stays.
//!
//! Only executables and shared objects (`ET_EXEC`, `ET_DYN`) are touched: kernel modules
//! (`ET_REL`) are linked from their sections at load time. A file with bytes that neither a
//! segment nor a section accounts for (a payload appended to a binary) is left alone, as
//! is anything not 64-bit little-endian ELF.

use crate::elf::{u16_at, u32_at, u64_at, ElfError};

const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EHDR_LEN: u64 = 64;
const PHDR_LEN: u64 = 56;
const SHDR_LEN: u64 = 64;
const SHT_NOBITS: u32 = 8;

/// The end of a table of `count` entries of `size` bytes at `offset`, if inside `len`.
fn table_end(offset: u64, count: u64, size: u64, len: u64) -> Result<u64, ElfError> {
    count
        .checked_mul(size)
        .and_then(|n| n.checked_add(offset))
        .filter(|&end| end <= len)
        .ok_or(ElfError::OutOfBounds)
}

/// `data` cut down to its segments, or `None` when there is nothing to strip or the file
/// is not one this strips (see the module docs). An error means a broken ELF header.
pub fn strip(data: &[u8]) -> Result<Option<Vec<u8>>, ElfError> {
    if data.len() < EHDR_LEN as usize || &data[..4] != b"\x7fELF" {
        return Ok(None);
    }
    if data[4] != 2 || data[5] != 1 || !matches!(u16_at(data, 0x10), ET_EXEC | ET_DYN) {
        return Ok(None);
    }
    let len = data.len() as u64;
    let phoff = u64_at(data, 0x20);
    let shoff = u64_at(data, 0x28);
    let phentsize = u64::from(u16_at(data, 0x36));
    let phnum = u64::from(u16_at(data, 0x38));
    let shentsize = u64::from(u16_at(data, 0x3a));
    let shnum = u64::from(u16_at(data, 0x3c));
    if phnum == 0 || phentsize != PHDR_LEN {
        return Ok(None);
    }

    // What the loader reads: the ELF header, the program headers, every segment's bytes.
    let mut keep = table_end(phoff, phnum, PHDR_LEN, len)?.max(EHDR_LEN);
    for i in 0..phnum {
        let ph = (phoff + i * PHDR_LEN) as usize;
        let offset = u64_at(data, ph + 8);
        let filesz = u64_at(data, ph + 32);
        let end = offset
            .checked_add(filesz)
            .filter(|&e| e <= len)
            .ok_or(ElfError::OutOfBounds)?;
        keep = keep.max(end);
    }

    // What the sections describe; bytes past both are someone's payload.
    let mut described = keep;
    if shoff != 0 {
        if shentsize != SHDR_LEN || shnum == 0 {
            // No section count in the header (more than 0xff00 sections) or an odd
            // header size: too unusual to judge, leave it.
            return Ok(None);
        }
        described = described.max(table_end(shoff, shnum, SHDR_LEN, len)?);
        for i in 0..shnum {
            let sh = (shoff + i * SHDR_LEN) as usize;
            if u32_at(data, sh + 4) == SHT_NOBITS {
                continue;
            }
            let end = u64_at(data, sh + 24).saturating_add(u64_at(data, sh + 32));
            if end <= len {
                described = described.max(end);
            }
        }
    }
    if described < len || (keep == len && shoff == 0) {
        return Ok(None);
    }
    let mut out = data[..keep as usize].to_vec();
    // No section header table any more: e_shoff, e_shnum, e_shstrndx = 0.
    out[0x28..0x30].fill(0);
    out[0x3c..0x40].fill(0);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    /// A real program from this machine, cut down, still runs.
    #[test]
    fn a_stripped_host_program_runs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for (program, arg) in [("/usr/bin/true", "--version"), ("/usr/bin/ls", "--version")] {
            let data = std::fs::read(program).expect("host program");
            let stripped = strip(&data).expect("strip").expect("something to strip");
            assert!(stripped.len() < data.len(), "{program}");
            // No section headers left; the closure reader sees a file without sections.
            assert_eq!(
                crate::elf::find_section(stripped.as_slice(), ".dynamic"),
                Ok(None)
            );
            let path = tmp.path().join(program.rsplit('/').next().unwrap_or("p"));
            std::fs::write(&path, &stripped).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            let out = Command::new(&path).arg(arg).output().expect("run");
            assert!(out.status.success(), "{program}: {out:?}");
            // Stripping twice changes nothing more.
            assert_eq!(strip(&stripped).expect("strip"), None);
        }
    }

    /// A shared library cut down still loads: `ls` runs against a stripped libc.
    #[test]
    fn a_stripped_host_library_loads() {
        let libc = "/lib/x86_64-linux-gnu/libc.so.6";
        // libc6 is in every Debian x86-64 system, CI's included.
        let data = std::fs::read(libc).unwrap_or_else(|e| panic!("{libc}: {e}"));
        let tmp = tempfile::tempdir().expect("tempdir");
        let stripped = strip(&data).expect("strip").expect("something to strip");
        std::fs::write(tmp.path().join("libc.so.6"), &stripped).expect("write");
        let out = Command::new("/usr/bin/ls")
            .arg("/")
            .env("LD_LIBRARY_PATH", tmp.path())
            .env("LD_DEBUG", "libs")
            .output()
            .expect("run");
        assert!(out.status.success(), "{out:?}");
        // The loader really took the stripped copy.
        let debug = String::from_utf8_lossy(&out.stderr);
        let ours = format!("{}/libc.so.6", tmp.path().display());
        assert!(debug.contains(&format!("calling init: {ours}")), "{debug}");
    }

    #[test]
    fn leaves_other_files_alone() {
        assert_eq!(strip(b"#!/bin/sh\necho hi\n"), Ok(None));
        // A kernel module (ET_REL) needs its sections.
        let ko = crate::elf::tests::tiny_elf(&[(".modinfo", b"license=GPL\0")]);
        assert_eq!(strip(&ko), Ok(None));
        // A payload appended to a program is kept, so the program is not touched.
        let mut data = std::fs::read("/usr/bin/true").expect("host program");
        data.extend_from_slice(b"appended payload");
        assert_eq!(strip(&data), Ok(None));
        // A truncated program is an error, not a panic.
        let data = std::fs::read("/usr/bin/true").expect("host program");
        assert!(strip(&data[..100]).is_err());
    }
}
