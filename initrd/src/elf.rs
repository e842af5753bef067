//! The one ELF reader of the workspace, just enough ELF for what we do: the 64-bit
//! little-endian file header ([`FileHeader`]), the program headers (what `strip` keeps),
//! the section header table and the section-name string table (a kernel module's
//! `.modinfo`, a program's `.interp` and `.dynamic` for the closure). The vm-tests check a
//! decompressed `vmlinux` with [`FileHeader`] too. Why not the `object` crate: initrd/README.md.
//!
//! Reads go through [`Source`] so the module index can pull `.modinfo` out of thousands of
//! `.ko` files with a few small positioned reads each instead of reading whole files.

use std::fmt;

/// Something that can hand out byte ranges: a slice in memory or a file on disk.
pub trait Source {
    fn read_range(&self, offset: u64, len: usize) -> Result<Vec<u8>, ElfError>;
}

impl Source for [u8] {
    fn read_range(&self, offset: u64, len: usize) -> Result<Vec<u8>, ElfError> {
        let start = usize::try_from(offset).map_err(|_| ElfError::OutOfBounds)?;
        let end = start.checked_add(len).ok_or(ElfError::OutOfBounds)?;
        self.get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or(ElfError::OutOfBounds)
    }
}

impl Source for std::fs::File {
    fn read_range(&self, offset: u64, len: usize) -> Result<Vec<u8>, ElfError> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ElfError::OutOfBounds
            } else {
                ElfError::Io(e.to_string())
            }
        })?;
        Ok(buf)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfError {
    NotElf,
    /// ELF, but not ELF64 little-endian (the only kind an x86_64 kernel loads).
    WrongClass {
        class: u8,
        data: u8,
    },
    /// A header points outside the file.
    OutOfBounds,
    BadSectionTable(String),
    Io(String),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotElf => write!(f, "not an ELF file (no \\x7fELF magic)"),
            Self::WrongClass { class, data } => write!(
                f,
                "ELF class {class} / data encoding {data} is not 64-bit little-endian; \
                 modules must be built for x86_64"
            ),
            Self::OutOfBounds => write!(f, "ELF headers point past the end of the file"),
            Self::BadSectionTable(why) => write!(f, "ELF section table is broken: {why}"),
            Self::Io(e) => write!(f, "read error: {e}"),
        }
    }
}

impl std::error::Error for ElfError {}

const EHDR_LEN: usize = 64;
const SHDR_LEN: usize = 64;
const SHN_XINDEX: u16 = 0xffff;
/// Sections with no bytes in the file.
const SHT_NOBITS: u32 = 8;
/// An upper bound on what we are willing to read for one section: `.modinfo` is a few KiB.
const MAX_SECTION: u64 = 16 << 20;

/// Little-endian readers; callers check `at` against the length first.
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The fields of the ELF64 little-endian file header that we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// `e_type`: `ET_REL` (a kernel module), `ET_EXEC`, `ET_DYN`.
    pub kind: u16,
    pub phoff: u64,
    pub shoff: u64,
    pub phentsize: u16,
    pub phnum: u16,
    pub shentsize: u16,
    /// 0 with a non-zero `shoff`: more than 0xff00 sections, the count is in section 0.
    pub shnum: u16,
    pub shstrndx: u16,
}

pub const ET_EXEC: u16 = 2;
pub const ET_DYN: u16 = 3;
pub const PHDR_LEN: usize = 56;

impl FileHeader {
    /// Parse the file header at the start of `data` (at least its first 64 bytes).
    pub fn parse(data: &[u8]) -> Result<FileHeader, ElfError> {
        let ehdr = data.get(..EHDR_LEN).ok_or(ElfError::NotElf)?;
        if &ehdr[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        if ehdr[4] != 2 || ehdr[5] != 1 {
            return Err(ElfError::WrongClass {
                class: ehdr[4],
                data: ehdr[5],
            });
        }
        Ok(FileHeader {
            kind: u16_at(ehdr, 0x10),
            phoff: u64_at(ehdr, 0x20),
            shoff: u64_at(ehdr, 0x28),
            phentsize: u16_at(ehdr, 0x36),
            phnum: u16_at(ehdr, 0x38),
            shentsize: u16_at(ehdr, 0x3a),
            shnum: u16_at(ehdr, 0x3c),
            shstrndx: u16_at(ehdr, 0x3e),
        })
    }

    /// Where the section header table ends as the header counts it (`None` when that
    /// overflows); compare with the file length to see a truncated file.
    pub fn section_table_end(&self) -> Option<u64> {
        u64::from(self.shentsize)
            .checked_mul(u64::from(self.shnum))?
            .checked_add(self.shoff)
    }
}

/// One program header: the part of the file a segment maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramHeader {
    pub kind: u32,
    pub offset: u64,
    pub filesz: u64,
}

/// The program headers of `data`, whose file header is `header`; an error when the table
/// is not inside the file or its entries are not 56 bytes.
pub fn program_headers(data: &[u8], header: &FileHeader) -> Result<Vec<ProgramHeader>, ElfError> {
    if usize::from(header.phentsize) != PHDR_LEN {
        return Err(ElfError::OutOfBounds);
    }
    let start = usize::try_from(header.phoff).map_err(|_| ElfError::OutOfBounds)?;
    let end = usize::from(header.phnum)
        .checked_mul(PHDR_LEN)
        .and_then(|n| n.checked_add(start))
        .ok_or(ElfError::OutOfBounds)?;
    let table = data.get(start..end).ok_or(ElfError::OutOfBounds)?;
    Ok(table
        .chunks_exact(PHDR_LEN)
        .map(|ph| ProgramHeader {
            kind: u32_at(ph, 0),
            offset: u64_at(ph, 8),
            filesz: u64_at(ph, 32),
        })
        .collect())
}

/// One section header, as much of it as we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionHeader {
    pub name: u32,
    pub kind: u32,
    pub offset: u64,
    pub size: u64,
    pub link: u32,
}

/// The section headers of `data` as the file header counts them (no `SHN_XINDEX` lookup:
/// `shnum == 0` gives none); an error when the table is not inside the file.
pub fn section_headers(data: &[u8], header: &FileHeader) -> Result<Vec<SectionHeader>, ElfError> {
    if header.shoff == 0 {
        return Ok(Vec::new());
    }
    if usize::from(header.shentsize) != SHDR_LEN {
        return Err(ElfError::BadSectionTable(format!(
            "section header size is {}, expected {SHDR_LEN}",
            header.shentsize
        )));
    }
    let start = usize::try_from(header.shoff).map_err(|_| ElfError::OutOfBounds)?;
    let end = usize::from(header.shnum)
        .checked_mul(SHDR_LEN)
        .and_then(|n| n.checked_add(start))
        .ok_or(ElfError::OutOfBounds)?;
    let table = data.get(start..end).ok_or(ElfError::OutOfBounds)?;
    Ok(table.chunks_exact(SHDR_LEN).map(parse_shdr).collect())
}

fn parse_shdr(b: &[u8]) -> SectionHeader {
    SectionHeader {
        name: u32_at(b, 0),
        kind: u32_at(b, 4),
        offset: u64_at(b, 24),
        size: u64_at(b, 32),
        link: u32_at(b, 40),
    }
}

fn section_bytes<S: Source + ?Sized>(src: &S, sh: &SectionHeader) -> Result<Vec<u8>, ElfError> {
    if sh.kind == SHT_NOBITS {
        return Ok(Vec::new());
    }
    if sh.size > MAX_SECTION {
        return Err(ElfError::BadSectionTable(format!(
            "a section claims {} bytes",
            sh.size
        )));
    }
    src.read_range(sh.offset, sh.size as usize)
}

/// The section headers and the section-name string table.
type SectionTable = (Vec<SectionHeader>, Vec<u8>);

/// The section header table and the section-name string table, or `None` for a file
/// without sections.
fn section_table<S: Source + ?Sized>(src: &S) -> Result<Option<SectionTable>, ElfError> {
    let ehdr = match src.read_range(0, EHDR_LEN) {
        Ok(h) => h,
        Err(ElfError::OutOfBounds) => return Err(ElfError::NotElf),
        Err(e) => return Err(e),
    };
    let header = FileHeader::parse(&ehdr)?;
    let shoff = header.shoff;
    let shentsize = usize::from(header.shentsize);
    let mut shnum = u64::from(header.shnum);
    let mut shstrndx = u32::from(header.shstrndx);
    if shoff == 0 {
        return Ok(None);
    }
    if shentsize != SHDR_LEN {
        return Err(ElfError::BadSectionTable(format!(
            "section header size is {shentsize}, expected {SHDR_LEN}"
        )));
    }
    // More than 0xff00 sections: the real count and string-table index live in section 0.
    if shnum == 0 || shstrndx == u32::from(SHN_XINDEX) {
        let first = parse_shdr(&src.read_range(shoff, SHDR_LEN)?);
        if shnum == 0 {
            shnum = first.size;
        }
        if shstrndx == u32::from(SHN_XINDEX) {
            shstrndx = first.link;
        }
    }
    if shnum > 1 << 20 {
        return Err(ElfError::BadSectionTable(format!("{shnum} sections")));
    }
    let table = src.read_range(shoff, shnum as usize * SHDR_LEN)?;
    let headers: Vec<SectionHeader> = table.chunks_exact(SHDR_LEN).map(parse_shdr).collect();
    let strtab = headers.get(shstrndx as usize).ok_or_else(|| {
        ElfError::BadSectionTable(format!("string table index {shstrndx} >= {shnum}"))
    })?;
    let names = section_bytes(src, strtab)?;
    Ok(Some((headers, names)))
}

/// The NUL-terminated string at `at` in a string table.
fn str_at(table: &[u8], at: usize) -> Option<&[u8]> {
    let rest = table.get(at..)?;
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The contents of the section called `name`, or `None` when the file has no such section.
pub fn find_section<S: Source + ?Sized>(src: &S, name: &str) -> Result<Option<Vec<u8>>, ElfError> {
    let Some((headers, names)) = section_table(src)? else {
        return Ok(None);
    };
    for sh in &headers {
        if str_at(&names, sh.name as usize) == Some(name.as_bytes()) {
            return section_bytes(src, sh).map(Some);
        }
    }
    Ok(None)
}

/// What the dynamic loader needs to run a program or library.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// `PT_INTERP` (from the `.interp` section): the dynamic loader's path.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` sonames, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` entries (colon-separated in the file).
    pub runpath: Vec<String>,
    /// `DT_RPATH` entries; the loader ignores them when there is a RUNPATH.
    pub rpath: Vec<String>,
}

const SHT_DYNAMIC: u32 = 6;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// The interpreter and dynamic entries of an ELF file; all empty for a static binary or
/// a relocatable object.
pub fn dynamic<S: Source + ?Sized>(src: &S) -> Result<Dynamic, ElfError> {
    let mut out = Dynamic::default();
    let Some((headers, names)) = section_table(src)? else {
        return Ok(out);
    };
    for sh in &headers {
        if str_at(&names, sh.name as usize) == Some(b".interp".as_slice()) {
            let bytes = section_bytes(src, sh)?;
            let text = str_at(&bytes, 0).unwrap_or_default();
            out.interpreter = Some(String::from_utf8_lossy(text).into_owned());
        }
        if sh.kind != SHT_DYNAMIC {
            continue;
        }
        let strtab = headers.get(sh.link as usize).ok_or_else(|| {
            ElfError::BadSectionTable(format!("dynamic string table index {}", sh.link))
        })?;
        let strings = section_bytes(src, strtab)?;
        let entries = section_bytes(src, sh)?;
        let text = |v: u64| {
            let s = usize::try_from(v)
                .ok()
                .and_then(|at| str_at(&strings, at))
                .unwrap_or_default();
            String::from_utf8_lossy(s).into_owned()
        };
        let paths = |v: u64| -> Vec<String> {
            text(v)
                .split(':')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        };
        for e in entries.chunks_exact(16) {
            let tag = u64_at(e, 0);
            let val = u64_at(e, 8);
            match tag {
                DT_NULL => break,
                DT_NEEDED => out.needed.push(text(val)),
                DT_RUNPATH => out.runpath.extend(paths(val)),
                DT_RPATH => out.rpath.extend(paths(val)),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Tiny ELF files for tests here and in the crates that read initrds (`inspect`'s
/// `fake_module`).
#[doc(hidden)]
pub mod fixture {
    use super::*;

    /// A minimal ELF64 LE relocatable with a null section, `.shstrtab` and the given
    /// sections. Used by other modules' tests to make fake `.ko` files.
    pub fn tiny_elf(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let typed: Vec<(&str, u32, u32, &[u8])> =
            sections.iter().map(|(n, d)| (*n, 1, 0, *d)).collect();
        tiny_elf_typed(&typed)
    }

    /// Like [`tiny_elf`] with (name, sh_type, sh_link, data); section `i` of the list has
    /// index `i + 1` in the file.
    pub fn tiny_elf_typed(sections: &[(&str, u32, u32, &[u8])]) -> Vec<u8> {
        let mut shstr = vec![0u8];
        let mut name_offsets = Vec::new();
        for (n, ..) in sections {
            name_offsets.push(shstr.len() as u32);
            shstr.extend_from_slice(n.as_bytes());
            shstr.push(0);
        }
        let shstr_name = shstr.len() as u32;
        shstr.extend_from_slice(b".shstrtab\0");

        let mut body = Vec::new();
        let mut placed = Vec::new();
        for (.., data) in sections {
            placed.push((EHDR_LEN + body.len(), data.len()));
            body.extend_from_slice(data);
        }
        let shstr_off = EHDR_LEN + body.len();
        body.extend_from_slice(&shstr);
        while body.len() & 7 != 0 {
            body.push(0);
        }
        let shoff = EHDR_LEN + body.len();
        let shnum = sections.len() + 2;

        let mut out = vec![0u8; EHDR_LEN];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[0x10] = 1; // ET_REL
        out[0x12] = 62; // EM_X86_64
        out[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        out[0x34] = EHDR_LEN as u8;
        out[0x3a] = SHDR_LEN as u8;
        out[0x3c..0x3e].copy_from_slice(&(shnum as u16).to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&((shnum - 1) as u16).to_le_bytes());
        out.extend_from_slice(&body);

        let shdr = |name: u32, kind: u32, link: u32, off: usize, size: usize| {
            let mut h = vec![0u8; SHDR_LEN];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[40..44].copy_from_slice(&link.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        out.extend_from_slice(&[0u8; SHDR_LEN]);
        for (i, (off, len)) in placed.iter().enumerate() {
            let (_, kind, link, _) = sections[i];
            out.extend_from_slice(&shdr(name_offsets[i], kind, link, *off, *len));
        }
        out.extend_from_slice(&shdr(shstr_name, 3, 0, shstr_off, shstr.len()));
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub use super::fixture::{tiny_elf, tiny_elf_typed};

    #[test]
    fn file_program_and_section_headers_of_a_host_program() {
        let data = std::fs::read("/usr/bin/true").expect("host program");
        let header = FileHeader::parse(&data).expect("ELF64 LE");
        assert!(matches!(header.kind, ET_EXEC | ET_DYN));
        let programs = program_headers(&data, &header).expect("program headers");
        assert_eq!(programs.len(), usize::from(header.phnum));
        const PT_LOAD: u32 = 1;
        assert!(programs.iter().any(|ph| ph.kind == PT_LOAD));
        let sections = section_headers(&data, &header).expect("section headers");
        assert_eq!(sections.len(), usize::from(header.shnum));
        assert!(header.section_table_end().expect("end") <= data.len() as u64);
        // Cut inside the program headers: an error, not a panic.
        let cut = &data[..usize::try_from(header.phoff).expect("small") + 10];
        assert_eq!(program_headers(cut, &header), Err(ElfError::OutOfBounds));
        assert_eq!(FileHeader::parse(&data[..63]), Err(ElfError::NotElf));
        let mut elf32 = data[..64].to_vec();
        elf32[4] = 1;
        assert_eq!(
            FileHeader::parse(&elf32),
            Err(ElfError::WrongClass { class: 1, data: 1 })
        );
    }

    #[test]
    fn finds_a_section_by_name() {
        let elf = tiny_elf(&[(".text", b"\x90\x90"), (".modinfo", b"name=x\0")]);
        let got = find_section(elf.as_slice(), ".modinfo").expect("parse");
        assert_eq!(got.as_deref(), Some(&b"name=x\0"[..]));
        assert_eq!(find_section(elf.as_slice(), ".data").expect("parse"), None);
    }

    #[test]
    fn reads_interpreter_needed_and_runpath() {
        let dynstr = b"\0libfoo.so.1\0libc.so.6\0$ORIGIN/../lib:/opt/lib\0";
        let mut dynamic_bytes = Vec::new();
        for (tag, val) in [(1u64, 1u64), (1, 13), (29, 23), (0, 0), (1, 1)] {
            dynamic_bytes.extend_from_slice(&tag.to_le_bytes());
            dynamic_bytes.extend_from_slice(&val.to_le_bytes());
        }
        let elf = tiny_elf_typed(&[
            (".interp", 1, 0, b"/lib64/ld-linux-x86-64.so.2\0"),
            (".dynstr", 3, 0, dynstr),
            (".dynamic", SHT_DYNAMIC, 2, &dynamic_bytes),
        ]);
        let d = dynamic(elf.as_slice()).expect("parse");
        assert_eq!(
            d.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(d.needed, ["libfoo.so.1", "libc.so.6"]);
        assert_eq!(d.runpath, ["$ORIGIN/../lib", "/opt/lib"]);
        assert!(d.rpath.is_empty());
        let none = dynamic(tiny_elf(&[(".text", b"\xc3")]).as_slice()).expect("parse");
        assert_eq!(none, Dynamic::default());
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert_eq!(
            find_section(&b"hello"[..], ".modinfo"),
            Err(ElfError::NotElf)
        );
        let elf = tiny_elf(&[(".modinfo", b"name=x\0")]);
        let cut = &elf[..elf.len() - 10];
        assert_eq!(find_section(cut, ".modinfo"), Err(ElfError::OutOfBounds));
        let mut bad = elf.clone();
        bad[4] = 1;
        assert!(matches!(
            find_section(bad.as_slice(), ".modinfo"),
            Err(ElfError::WrongClass { .. })
        ));
    }
}
