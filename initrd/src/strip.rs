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

use crate::elf::{self, ElfError, FileHeader, ET_DYN, ET_EXEC, PHDR_LEN};

const EHDR_LEN: u64 = 64;
const SHDR_LEN: u16 = 64;
const SHT_NOBITS: u32 = 8;

/// `data` cut down to its segments, or `None` when there is nothing to strip or the file
/// is not one this strips (see the module docs). An error means a broken ELF header.
pub fn strip(data: &[u8]) -> Result<Option<Vec<u8>>, ElfError> {
    let header = match FileHeader::parse(data) {
        Ok(h) => h,
        Err(ElfError::NotElf | ElfError::WrongClass { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !matches!(header.kind, ET_EXEC | ET_DYN) {
        return Ok(None);
    }
    if header.phnum == 0 || usize::from(header.phentsize) != PHDR_LEN {
        return Ok(None);
    }
    let len = data.len() as u64;

    // What the loader reads: the ELF header, the program headers, every segment's bytes.
    let programs = elf::program_headers(data, &header)?;
    // Inside the file (program_headers checked), so no overflow.
    let table_end = header.phoff + u64::from(header.phnum) * PHDR_LEN as u64;
    let mut keep = table_end.max(EHDR_LEN);
    for ph in programs {
        let end = ph
            .offset
            .checked_add(ph.filesz)
            .filter(|&e| e <= len)
            .ok_or(ElfError::OutOfBounds)?;
        keep = keep.max(end);
    }

    // What the sections describe; bytes past both are someone's payload.
    let mut described = keep;
    if header.shoff != 0 {
        if header.shentsize != SHDR_LEN || header.shnum == 0 {
            // No section count in the header (more than 0xff00 sections) or an odd
            // header size: too unusual to judge, leave it.
            return Ok(None);
        }
        let sections = elf::section_headers(data, &header)?;
        described = described.max(header.section_table_end().ok_or(ElfError::OutOfBounds)?);
        for sh in sections.iter().filter(|sh| sh.kind != SHT_NOBITS) {
            let end = sh.offset.saturating_add(sh.size);
            if end <= len {
                described = described.max(end);
            }
        }
    }
    if described < len || (keep == len && header.shoff == 0) {
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
