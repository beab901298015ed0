//! A minimal, defensive ELF reader: just what a dynamic loader looks at before mapping a file.
//!
//! Owns: reading the ELF header, the program headers, PT_INTERP, the dynamic section and the few strings it
//! names (DT_NEEDED, DT_RPATH, DT_RUNPATH, DT_SONAME), for 32- and 64-bit files of either byte order. Every
//! read is a bounded `pread` at an offset checked against the file size; the file is never read whole (a
//! 100 MB binary costs a handful of small reads), and garbage yields an `ElfError`, never a panic.
//! Does not own: deciding where libraries are, or what a missing one means (`runtime_check`).

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileExt;

/// The kernel refuses program header tables larger than this (fs/binfmt_elf.c: load_elf_phdrs).
const MAX_PHDR_BYTES: u64 = 65536;
/// Real dynamic sections hold a few dozen entries; anything past this is not a file a loader would accept.
const MAX_DYNAMIC_BYTES: u64 = 65536;
/// PT_INTERP is a path: the kernel caps it at PATH_MAX.
const MAX_INTERP_BYTES: u64 = 4096;
/// Longest DT_NEEDED / DT_RUNPATH string we accept.
const MAX_STRING_BYTES: u64 = 4096;
/// Strings are read in chunks of this size until their NUL (most names fit in one).
const STRING_CHUNK: u64 = 256;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_SONAME: u64 = 14;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
const DT_FLAGS_1: u64 = 0x6fff_fffb;
const DF_1_NODEFLIB: u64 = 0x800;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

/// Something that can be read at an offset: a `File` in production, a byte slice in tests and fuzzing.
pub trait ReadAt {
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

/// An open file with its size taken once (so every bound is checked against the same number).
pub struct SizedFile<'a> {
    pub file: &'a File,
    pub size: u64,
}

impl ReadAt for SizedFile<'_> {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self.file, buf, offset)
    }
}

/// A file whose first bytes were already read (to look for `#!` or ELF magic): reads that fall inside them
/// (ELF header, program headers and PT_INTERP, for most files) cost no syscall.
pub struct Prefetched<'a> {
    pub file: SizedFile<'a>,
    pub head: &'a [u8],
}

impl ReadAt for Prefetched<'_> {
    fn size(&self) -> u64 {
        self.file.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let inside = offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= self.head.len() as u64);
        if inside {
            self.head.read_at(buf, offset)
        } else {
            self.file.read_at(buf, offset)
        }
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Elf32,
    Elf64,
}

/// What a loader needs to know about one ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf {
    pub class: Class,
    pub big_endian: bool,
    pub machine: u16,
    /// PT_INTERP: the program interpreter (dynamic loader) path; `None` for static programs and libraries.
    pub interp: Option<OsString>,
    pub needed: Vec<OsString>,
    pub rpath: Option<OsString>,
    pub runpath: Option<OsString>,
    pub soname: Option<OsString>,
    /// DF_1_NODEFLIB: the loader skips ld.so.cache and the default directories for this object's needs.
    pub nodeflib: bool,
}

impl Elf {
    /// Whether a loader running `self` would accept `other` as one of its libraries (same class, byte order
    /// and machine; glibc and musl skip anything else and keep searching).
    pub fn compatible(&self, other: &Elf) -> bool {
        self.class == other.class
            && self.big_endian == other.big_endian
            && self.machine == other.machine
    }

    /// "ELF64 LE x86-64"-style description, for "skipped incompatible" notes.
    pub fn describe(&self) -> String {
        let bits = match self.class {
            Class::Elf32 => "ELF32",
            Class::Elf64 => "ELF64",
        };
        let order = if self.big_endian { "BE" } else { "LE" };
        format!("{bits} {order} machine {}", self.machine)
    }
}

#[derive(Debug)]
pub enum ElfError {
    /// No `\x7fELF` magic.
    NotElf,
    Io(io::Error),
    /// A structure extends past the end of the file (a partial copy, typically).
    Truncated {
        what: &'static str,
        end: u64,
        size: u64,
    },
    Malformed(String),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::NotElf => f.write_str("not an ELF file"),
            ElfError::Io(e) => write!(f, "read error: {e}"),
            ElfError::Truncated { what, end, size } => {
                write!(f, "truncated ELF: {what} would end at byte {end} but the file has {size} bytes (partial copy?)")
            }
            ElfError::Malformed(m) => write!(f, "malformed ELF: {m}"),
        }
    }
}

fn malformed<T>(msg: String) -> Result<T, ElfError> {
    Err(ElfError::Malformed(msg))
}

/// Reads `len` bytes at `offset`, or says which structure does not fit in the file.
fn read_exact<R: ReadAt + ?Sized>(
    src: &R,
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<Vec<u8>, ElfError> {
    let size = src.size();
    let end = offset
        .checked_add(len)
        .ok_or_else(|| ElfError::Malformed(format!("{what} offset {offset:#x} overflows")))?;
    if end > size {
        return Err(ElfError::Truncated { what, end, size });
    }
    // len <= size here, and every caller caps len far below usize::MAX.
    let mut buf = vec![0u8; len as usize];
    let mut done = 0usize;
    while done < buf.len() {
        match src.read_at(&mut buf[done..], offset + done as u64) {
            // The file shrank under us since its size was taken.
            Ok(0) => {
                return Err(ElfError::Truncated {
                    what,
                    end,
                    size: offset + done as u64,
                })
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ElfError::Io(e)),
        }
    }
    Ok(buf)
}

/// Field access in the file's byte order; callers slice within buffers whose length they checked.
#[derive(Clone, Copy)]
struct Endian {
    big: bool,
}

impl Endian {
    fn u16(self, b: &[u8], at: usize) -> u16 {
        let a = [b[at], b[at + 1]];
        if self.big {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    }
    fn u32(self, b: &[u8], at: usize) -> u32 {
        let a = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if self.big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }
    fn u64(self, b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        if self.big {
            u64::from_be_bytes(a)
        } else {
            u64::from_le_bytes(a)
        }
    }
    /// A word of the file's class: 4 bytes for ELF32, 8 for ELF64.
    fn word(self, class: Class, b: &[u8], at: usize) -> u64 {
        match class {
            Class::Elf32 => u64::from(self.u32(b, at)),
            Class::Elf64 => self.u64(b, at),
        }
    }
}

/// One program header, reduced to the fields we use.
struct Phdr {
    p_type: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Parses the headers of the ELF file in `src`. `Err(NotElf)` when it has no ELF magic.
pub fn parse<R: ReadAt + ?Sized>(src: &R) -> Result<Elf, ElfError> {
    let size = src.size();
    let ident = read_exact(src, 0, size.min(16), "e_ident")?;
    if ident.len() < 4 || ident[..4] != *b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if ident.len() < 16 {
        return Err(ElfError::Truncated {
            what: "e_ident",
            end: 16,
            size,
        });
    }
    let class = match ident[4] {
        1 => Class::Elf32,
        2 => Class::Elf64,
        c => {
            return malformed(format!(
                "unknown class {c} (EI_CLASS must be 1 for 32-bit or 2 for 64-bit)"
            ))
        }
    };
    let e = match ident[5] {
        1 => Endian { big: false },
        2 => Endian { big: true },
        d => return malformed(format!("unknown byte order {d} (EI_DATA must be 1 or 2)")),
    };
    if ident[6] != 1 {
        return malformed(format!(
            "unknown version {} (EI_VERSION must be 1)",
            ident[6]
        ));
    }
    let (ehsize, phentsize) = match class {
        Class::Elf32 => (52u64, 32u64),
        Class::Elf64 => (64, 56),
    };
    let eh = read_exact(src, 0, ehsize, "ELF header")?;
    let e_type = e.u16(&eh, 16);
    let machine = e.u16(&eh, 18);
    let (phoff, e_phentsize, phnum) = match class {
        Class::Elf32 => (u64::from(e.u32(&eh, 28)), e.u16(&eh, 42), e.u16(&eh, 44)),
        Class::Elf64 => (e.u64(&eh, 32), e.u16(&eh, 54), e.u16(&eh, 56)),
    };
    if e_type != ET_EXEC && e_type != ET_DYN {
        return malformed(format!(
            "type {e_type} is not an executable or shared object"
        ));
    }
    if u64::from(e_phentsize) != phentsize {
        return malformed(format!(
            "program header size {e_phentsize}, expected {phentsize}"
        ));
    }
    let ph_bytes = u64::from(phnum) * phentsize;
    if phnum == 0 {
        return malformed("no program headers".into());
    }
    if ph_bytes > MAX_PHDR_BYTES {
        return malformed(format!(
            "{phnum} program headers (the kernel accepts at most {MAX_PHDR_BYTES} bytes)"
        ));
    }
    let table = read_exact(src, phoff, ph_bytes, "program headers")?;
    let phdrs: Vec<Phdr> = table
        .chunks_exact(phentsize as usize)
        .map(|p| match class {
            Class::Elf32 => Phdr {
                p_type: e.u32(p, 0),
                offset: u64::from(e.u32(p, 4)),
                vaddr: u64::from(e.u32(p, 8)),
                filesz: u64::from(e.u32(p, 16)),
            },
            Class::Elf64 => Phdr {
                p_type: e.u32(p, 0),
                offset: e.u64(p, 8),
                vaddr: e.u64(p, 16),
                filesz: e.u64(p, 32),
            },
        })
        .collect();

    let mut elf = Elf {
        class,
        big_endian: e.big,
        machine,
        interp: None,
        needed: Vec::new(),
        rpath: None,
        runpath: None,
        soname: None,
        nodeflib: false,
    };
    // Like the kernel, only the first PT_INTERP counts.
    if let Some(ph) = phdrs.iter().find(|p| p.p_type == PT_INTERP) {
        elf.interp = Some(read_interp(src, ph)?);
    }
    if let Some(ph) = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC) {
        read_dynamic(src, e, class, ph, &phdrs, &mut elf)?;
    }
    Ok(elf)
}

fn read_interp<R: ReadAt + ?Sized>(src: &R, ph: &Phdr) -> Result<OsString, ElfError> {
    if ph.filesz < 2 || ph.filesz > MAX_INTERP_BYTES {
        return malformed(format!(
            "PT_INTERP size {} (must be 2..{MAX_INTERP_BYTES})",
            ph.filesz
        ));
    }
    let mut buf = read_exact(src, ph.offset, ph.filesz, "PT_INTERP")?;
    // The kernel refuses an interpreter path without a terminating NUL (ENOEXEC).
    if buf.last() != Some(&0) {
        return malformed("PT_INTERP path is not NUL-terminated".into());
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if len == 0 {
        return malformed("empty PT_INTERP path".into());
    }
    buf.truncate(len);
    Ok(OsString::from_vec(buf))
}

fn read_dynamic<R: ReadAt + ?Sized>(
    src: &R,
    e: Endian,
    class: Class,
    ph: &Phdr,
    phdrs: &[Phdr],
    elf: &mut Elf,
) -> Result<(), ElfError> {
    if ph.filesz > MAX_DYNAMIC_BYTES {
        return malformed(format!(
            "dynamic section of {} bytes (at most {MAX_DYNAMIC_BYTES} accepted)",
            ph.filesz
        ));
    }
    let dynamic = read_exact(src, ph.offset, ph.filesz, "dynamic section")?;
    let entsize = match class {
        Class::Elf32 => 8,
        Class::Elf64 => 16,
    };
    let half = entsize / 2;
    let (mut strtab, mut strsz) = (None, None);
    let (mut needed, mut rpath, mut runpath, mut soname) = (Vec::new(), None, None, None);
    for d in dynamic.chunks_exact(entsize) {
        let tag = e.word(class, d, 0);
        let val = e.word(class, d, half);
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed.push(val),
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_SONAME => soname = Some(val),
            DT_RPATH => rpath = Some(val),
            DT_RUNPATH => runpath = Some(val),
            DT_FLAGS_1 => elf.nodeflib = val & DF_1_NODEFLIB != 0,
            _ => {}
        }
    }
    if needed.is_empty() && rpath.is_none() && runpath.is_none() && soname.is_none() {
        return Ok(());
    }
    let Some(strtab) = strtab else {
        return malformed("dynamic section names strings but has no DT_STRTAB".into());
    };
    // DT_STRTAB is a virtual address: find the loaded segment that holds it to get a file offset.
    let Some(stroff) = phdrs.iter().filter(|p| p.p_type == PT_LOAD).find_map(|p| {
        let rel = strtab.checked_sub(p.vaddr)?;
        (rel < p.filesz)
            .then(|| p.offset.checked_add(rel))
            .flatten()
    }) else {
        return malformed(format!(
            "DT_STRTAB address {strtab:#x} is not in any loaded segment"
        ));
    };
    let string = |off: u64| read_string(src, stroff, strsz, off);
    elf.needed = needed.into_iter().map(string).collect::<Result<_, _>>()?;
    elf.rpath = rpath.map(string).transpose()?;
    elf.runpath = runpath.map(string).transpose()?;
    elf.soname = soname.map(string).transpose()?;
    Ok(())
}

/// The NUL-terminated string at `off` in the string table at file offset `stroff`, read chunk by chunk.
fn read_string<R: ReadAt + ?Sized>(
    src: &R,
    stroff: u64,
    strsz: Option<u64>,
    off: u64,
) -> Result<OsString, ElfError> {
    if strsz.is_some_and(|sz| off >= sz) {
        return malformed(format!("string offset {off:#x} beyond DT_STRSZ"));
    }
    let start = stroff
        .checked_add(off)
        .ok_or_else(|| ElfError::Malformed(format!("string offset {off:#x} overflows")))?;
    // The string may not run past DT_STRSZ, the end of the file, or our cap.
    let limit = strsz
        .map_or(u64::MAX, |sz| sz - off)
        .min(src.size().saturating_sub(start))
        .min(MAX_STRING_BYTES);
    let mut out = Vec::new();
    while (out.len() as u64) < limit {
        let len = STRING_CHUNK.min(limit - out.len() as u64);
        let chunk = read_exact(src, start + out.len() as u64, len, "string table")?;
        if let Some(nul) = chunk.iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..nul]);
            return Ok(OsString::from_vec(out));
        }
        out.extend_from_slice(&chunk);
    }
    malformed(format!(
        "unterminated string at string table offset {off:#x}"
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a small but complete ELF image: header, PT_LOAD covering everything, PT_INTERP, PT_DYNAMIC
    /// with DT_NEEDED/RUNPATH/SONAME and a string table, in either class and byte order.
    pub(crate) fn build(
        class: Class,
        big: bool,
        interp: Option<&str>,
        needed: &[&str],
        runpath: Option<&str>,
    ) -> Vec<u8> {
        let (ehsize, phent, dynent) = match class {
            Class::Elf32 => (52usize, 32usize, 8usize),
            Class::Elf64 => (64, 56, 16),
        };
        let put = |buf: &mut Vec<u8>, at: usize, v: u64, width: usize| {
            let bytes = if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            let src = if big {
                &bytes[8 - width..]
            } else {
                &bytes[..width]
            };
            buf[at..at + width].copy_from_slice(src);
        };
        let word = match class {
            Class::Elf32 => 4,
            Class::Elf64 => 8,
        };
        // Strings: "\0" then each name.
        let mut strtab = vec![0u8];
        let mut add = |s: &str| {
            let off = strtab.len() as u64;
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
            off
        };
        let mut dyns: Vec<(u64, u64)> = needed.iter().map(|n| (DT_NEEDED, add(n))).collect();
        if let Some(r) = runpath {
            dyns.push((DT_RUNPATH, add(r)));
        }
        dyns.push((DT_SONAME, add("libself.so.1")));
        let nph = 3;
        let interp_off = ehsize + nph * phent;
        let interp_bytes = interp.map(|s| format!("{s}\0")).unwrap_or_default();
        let str_off = interp_off + interp_bytes.len();
        dyns.push((DT_STRTAB, 0x1000 + str_off as u64));
        dyns.push((DT_STRSZ, strtab.len() as u64));
        dyns.push((DT_NULL, 0));
        let dyn_off = str_off + strtab.len();
        let total = dyn_off + dyns.len() * dynent;
        let mut b = vec![0u8; total];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = if class == Class::Elf32 { 1 } else { 2 };
        b[5] = if big { 2 } else { 1 };
        b[6] = 1;
        put(&mut b, 16, u64::from(ET_DYN), 2);
        put(&mut b, 18, 62, 2);
        let (phoff_at, phentsize_at) = if class == Class::Elf32 {
            (28, 42)
        } else {
            (32, 54)
        };
        put(&mut b, phoff_at, ehsize as u64, word);
        put(&mut b, phentsize_at, phent as u64, 2);
        put(&mut b, phentsize_at + 2, nph as u64, 2);
        let phdr = |b: &mut Vec<u8>, i: usize, t: u32, off: usize, len: usize| {
            let at = ehsize + i * phent;
            put(b, at, u64::from(t), 4);
            let (o, v, f) = if class == Class::Elf32 {
                (4, 8, 16)
            } else {
                (8, 16, 32)
            };
            put(b, at + o, off as u64, word);
            put(b, at + v, 0x1000 + off as u64, word);
            put(b, at + f, len as u64, word);
        };
        phdr(&mut b, 0, PT_LOAD, 0, total);
        if interp.is_some() {
            phdr(&mut b, 1, PT_INTERP, interp_off, interp_bytes.len());
        }
        phdr(&mut b, 2, PT_DYNAMIC, dyn_off, dyns.len() * dynent);
        b[interp_off..str_off].copy_from_slice(interp_bytes.as_bytes());
        b[str_off..dyn_off].copy_from_slice(&strtab);
        for (i, (tag, val)) in dyns.iter().enumerate() {
            let at = dyn_off + i * dynent;
            put(&mut b, at, *tag, word);
            put(&mut b, at + word, *val, word);
        }
        b
    }

    #[test]
    fn all_classes_and_byte_orders() {
        for class in [Class::Elf32, Class::Elf64] {
            for big in [false, true] {
                let img = build(
                    class,
                    big,
                    Some("/lib/ld-musl-x86_64.so.1"),
                    &["libc.so", "libz.so.1"],
                    Some("$ORIGIN/../lib"),
                );
                let elf = parse(&img[..]).unwrap_or_else(|e| panic!("{class:?} big={big}: {e}"));
                assert_eq!(elf.class, class);
                assert_eq!(elf.big_endian, big);
                assert_eq!(elf.machine, 62);
                assert_eq!(
                    elf.interp.as_deref(),
                    Some("/lib/ld-musl-x86_64.so.1".as_ref())
                );
                assert_eq!(
                    elf.needed,
                    vec![OsString::from("libc.so"), OsString::from("libz.so.1")]
                );
                assert_eq!(elf.runpath.as_deref(), Some("$ORIGIN/../lib".as_ref()));
                assert_eq!(elf.soname.as_deref(), Some("libself.so.1".as_ref()));
            }
        }
    }

    #[test]
    fn real_binaries_on_this_machine() {
        let node = File::open("/usr/bin/node").expect("/usr/bin/node is part of the test machine");
        let size = node.metadata().unwrap().len();
        let elf = parse(&SizedFile { file: &node, size }).unwrap();
        assert_eq!(
            elf.interp.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2".as_ref())
        );
        assert!(
            elf.needed.iter().any(|n| n == "libstdc++.so.6"),
            "{:?}",
            elf.needed
        );
        let bb = std::fs::read("/bin/busybox").expect("busybox-static is installed for the tests");
        let elf = parse(&bb[..]).unwrap();
        assert!(
            elf.interp.is_none() && elf.needed.is_empty(),
            "busybox-static needs nothing: {elf:?}"
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let good = build(Class::Elf64, false, Some("/lib/ld.so"), &["liba.so"], None);
        assert!(matches!(parse(&b""[..]), Err(ElfError::NotElf)));
        assert!(matches!(parse(&b"#!/bin/sh\n"[..]), Err(ElfError::NotElf)));
        assert!(matches!(
            parse(&good[..10]),
            Err(ElfError::Truncated { .. })
        ));
        for cut in [20, 64, 100, good.len() - 1] {
            let err = parse(&good[..cut]).unwrap_err();
            assert!(
                matches!(err, ElfError::Truncated { .. } | ElfError::Malformed(_)),
                "cut {cut}: {err}"
            );
        }
        let mut bad = good.clone();
        bad[4] = 3;
        assert!(parse(&bad[..])
            .unwrap_err()
            .to_string()
            .contains("unknown class 3"));
        let mut bad = good.clone();
        bad[56] = 0xff; // e_phnum low byte: 255 * 56 bytes run past the file
        assert!(matches!(
            parse(&bad[..]),
            Err(ElfError::Truncated {
                what: "program headers",
                ..
            })
        ));
    }

    /// A tiny deterministic xorshift generator: reproducible fuzzing without a crate.
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Interesting values for header fields: zero, all ones, sign bits, just-past-the-end.
    const EXTREMES: [u64; 8] = [0, 1, 0x7f, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff, u64::MAX];

    /// A mutated view of a (possibly large) real binary: patches over the original bytes plus a length, so
    /// a mutation costs nothing however big the file is.
    struct Mutated<'a> {
        base: &'a [u8],
        patches: Vec<(u64, u8)>,
        len: u64,
    }

    impl ReadAt for Mutated<'_> {
        fn size(&self) -> u64 {
            self.len
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let n = self.base[..self.len as usize].read_at(buf, offset)?;
            for &(at, b) in &self.patches {
                if at >= offset && at < offset + n as u64 {
                    buf[(at - offset) as usize] = b;
                }
            }
            Ok(n)
        }
    }

    fn mutate<'a>(rng: &mut Rng, base: &'a [u8], hot: &[(usize, usize)]) -> Mutated<'a> {
        let mut m = Mutated {
            base,
            patches: Vec::new(),
            len: base.len() as u64,
        };
        for _ in 0..1 + rng.below(4) {
            // Most mutations hit the bytes the parser reads (headers, dynamic section, strings).
            let (start, len) = hot[rng.below(hot.len())];
            let at = (start + rng.below(len)) as u64;
            match rng.below(4) {
                0 => m.patches.push((
                    at,
                    base.get(at as usize).copied().unwrap_or(0) ^ (1 << rng.below(8)),
                )),
                1 => m.patches.push((at, rng.next() as u8)),
                2 => {
                    let v = EXTREMES[rng.below(EXTREMES.len())].to_le_bytes();
                    let w = [2, 4, 8][rng.below(3)];
                    m.patches.extend(
                        v.iter()
                            .take(w)
                            .enumerate()
                            .map(|(i, b)| (at + i as u64, *b)),
                    );
                }
                // Truncation, mostly inside the hot range (a partial copy).
                _ => m.len = m.len.min(at),
            }
        }
        m
    }

    /// Deterministic mutation fuzzing over real binaries of this machine (true, node, libstdc++) and
    /// synthetic files of every class and byte order: the parser must return
    /// (Ok or Err) without panicking, and whatever it returns must respect its caps.
    /// ELF_FUZZ_ITERATIONS raises the count for a longer run.
    #[test]
    fn fuzz_mutated_binaries() {
        let mut corpus: Vec<Vec<u8>> = Vec::new();
        for class in [Class::Elf32, Class::Elf64] {
            for big in [false, true] {
                corpus.push(build(
                    class,
                    big,
                    Some("/lib/ld-linux.so.2"),
                    &["libstdc++.so.6", "libc.so.6"],
                    Some("$ORIGIN"),
                ));
            }
        }
        for path in [
            "/bin/true",
            "/usr/bin/node",
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
        ] {
            if let Ok(bytes) = std::fs::read(path) {
                corpus.push(bytes);
            }
        }
        let iterations: usize = std::env::var("ELF_FUZZ_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50_000);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let hots: Vec<_> = corpus.iter().map(|c| hot_ranges(c)).collect();
        let (mut ok, mut err) = (0usize, 0usize);
        for i in 0..iterations {
            let k = i % corpus.len();
            let input = mutate(&mut rng, &corpus[k], &hots[k]);
            match parse(&input) {
                Ok(elf) => {
                    ok += 1;
                    assert!(elf.needed.len() as u64 <= MAX_DYNAMIC_BYTES / 8);
                    for s in elf
                        .needed
                        .iter()
                        .chain(&elf.rpath)
                        .chain(&elf.runpath)
                        .chain(&elf.interp)
                    {
                        assert!(s.len() as u64 <= MAX_STRING_BYTES);
                    }
                }
                Err(e) => {
                    err += 1;
                    assert!(!e.to_string().is_empty());
                }
            }
        }
        eprintln!("elf fuzz: {iterations} mutated inputs, {ok} parsed, {err} rejected");
        // Both outcomes must occur, or the mutations are not reaching the parser.
        assert!(
            ok > iterations / 20 && err > iterations / 20,
            "ok {ok}, err {err}"
        );
    }

    /// Byte ranges of `img` that the parser reads: the header, the program headers, and each segment's
    /// first bytes (where PT_INTERP and PT_DYNAMIC point).
    fn hot_ranges(img: &[u8]) -> Vec<(usize, usize)> {
        let mut hot = vec![(0usize, 64usize.min(img.len()).max(1))];
        if let Ok(elf) = parse(img) {
            let e = Endian {
                big: elf.big_endian,
            };
            let (phoff, n, ent) = match elf.class {
                Class::Elf32 => (e.u32(img, 28) as usize, e.u16(img, 44) as usize, 32),
                Class::Elf64 => (e.u64(img, 32) as usize, e.u16(img, 56) as usize, 56),
            };
            hot.push((phoff, n * ent));
            for i in 0..n {
                let p = &img[phoff + i * ent..];
                let (t, off, sz) = match elf.class {
                    Class::Elf32 => (e.u32(p, 0), e.u32(p, 4) as usize, e.u32(p, 16) as usize),
                    Class::Elf64 => (e.u32(p, 0), e.u64(p, 8) as usize, e.u64(p, 32) as usize),
                };
                if t == PT_INTERP || t == PT_DYNAMIC {
                    hot.push((off, sz.max(1)));
                }
            }
        }
        hot
    }
}
