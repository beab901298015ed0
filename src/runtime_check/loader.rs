//! Loader emulation: a dynamic program's interpreter and its DT_NEEDED closure, searched the way glibc's or
//! musl's loader does (DT_RPATH/DT_RUNPATH with $ORIGIN, LD_LIBRARY_PATH, /etc/ld.so.cache,
//! /etc/ld-musl-ARCH.path, default directories).
//!
//! Owns: search order per loader, ld.so.cache parsing, musl's reserved names.
//! Does not own: reading ELF files (`elf`), resolving paths (`resolve`).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::elf::{self, Elf};
use super::files::read_small;
use super::program::Content;
use super::report::{join_paths, Kind, Missing};
use super::resolve::Unresolved;
use super::{Checker, LD_CACHE, MAX_OBJECTS};

/// One loaded ELF object of a program's link map.
pub(super) struct Obj {
    pub(super) elf: Elf,
    /// Real path, for "needed by".
    pub(super) real: PathBuf,
    /// $ORIGIN: the real directory for the main program (the kernel's path), the directory the library was
    /// found in for libraries (glibc and musl do not canonicalise those).
    pub(super) origin: PathBuf,
    /// The object that first needed this one (glibc's l_loader, musl's needed_by).
    pub(super) loader: Option<usize>,
}

impl Obj {
    /// DT_RUNPATH, or DT_RPATH when there is no DT_RUNPATH (both loaders ignore RPATH then), split and
    /// $ORIGIN-expanded.
    pub(super) fn search_path(&self, runpath: bool) -> Vec<PathBuf> {
        let raw = match (runpath, &self.elf.runpath) {
            (true, r) => r.as_ref(),
            (false, None) => self.elf.rpath.as_ref(),
            (false, Some(_)) => None,
        };
        raw.map_or_else(Vec::new, |r| split_dirs(r, b":", &self.origin))
    }
}

/// Splits a search path at any of `seps`, dropping empty entries and expanding $ORIGIN / ${ORIGIN}.
pub(super) fn split_dirs(raw: &OsStr, seps: &[u8], origin: &Path) -> Vec<PathBuf> {
    let origin = origin.as_os_str().as_bytes();
    raw.as_bytes()
        .split(|b| seps.contains(b))
        .filter(|d| !d.is_empty())
        .map(|d| {
            let mut out = Vec::with_capacity(d.len());
            let mut rest = d;
            while !rest.is_empty() {
                if let Some(tail) = rest
                    .strip_prefix(b"${ORIGIN}")
                    .or_else(|| rest.strip_prefix(b"$ORIGIN"))
                {
                    out.extend_from_slice(origin);
                    rest = tail;
                } else {
                    out.push(rest[0]);
                    rest = &rest[1..];
                }
            }
            PathBuf::from(OsString::from_vec(out))
        })
        .collect()
}

/// Which loader runs the program, decided by its PT_INTERP.
pub(super) enum Flavor {
    Glibc,
    /// musl: the system path of /etc/ld-musl-ARCH.path (or its default).
    Musl {
        sys_path: Vec<PathBuf>,
    },
}

/// One program's link map while its libraries are being searched.
pub(super) struct LinkMap {
    pub(super) flavor: Flavor,
    pub(super) objs: Vec<Obj>,
    /// Library names already handled (loaded, satisfied by the loader itself, or reported missing).
    pub(super) names: HashSet<OsString>,
}

/// Where a library was found.
pub(super) struct Found {
    pub(super) named: PathBuf,
    pub(super) real: PathBuf,
    pub(super) elf: Elf,
}

impl Checker<'_> {
    /// A dynamically linked program: its interpreter, then its libraries breadth-first like the loader.
    pub(super) fn dynamic(&mut self, real: &Path, elf: Elf, interp: &Path) {
        let mut names = HashSet::new();
        match self.resolve(interp) {
            Err(u) => self.missing(Kind::Interpreter, interp, Some(real), u),
            Ok(c) => match self.inspect(&c.real) {
                Ok(Content::Elf(ld)) => {
                    self.report
                        .add_resolved(Kind::Interpreter, interp, &c.real, Some(real));
                    // glibc programs may list the loader itself in DT_NEEDED: it is already loaded.
                    names.extend(ld.soname);
                }
                Ok(Content::Unreadable(reason)) => {
                    self.report
                        .add_resolved(Kind::Interpreter, interp, &c.real, Some(real));
                    self.report
                        .notes
                        .push(format!("cannot read {} ({reason})", c.real.display()));
                }
                Ok(_) => self.broken(
                    Kind::Interpreter,
                    interp,
                    Some(real),
                    &c,
                    "not an ELF file".into(),
                ),
                Err(reason) => self.broken(Kind::Interpreter, interp, Some(real), &c, reason),
            },
        }
        // A missing loader is reported once, not again as a missing DT_NEEDED of the same name.
        names.extend(interp.file_name().map(OsStr::to_os_string));
        let flavor = match musl_arch(interp) {
            Some(arch) => Flavor::Musl {
                sys_path: self.musl_sys_path(interp, arch),
            },
            None => Flavor::Glibc,
        };
        let origin = real.parent().unwrap_or(Path::new("/")).to_path_buf();
        let main = Obj {
            elf,
            real: real.to_path_buf(),
            origin,
            loader: None,
        };
        let mut map = LinkMap {
            flavor,
            objs: vec![main],
            names,
        };
        let mut next = 0;
        while next < map.objs.len() {
            let needed = map.objs[next].elf.needed.clone();
            for name in needed {
                if map.names.contains(&name) || is_musl_self(&map.flavor, &name) {
                    continue;
                }
                map.names.insert(name.clone());
                if let Some(found) = self.search_library(&map, next, &name) {
                    let by = map.objs[next].real.clone();
                    self.report
                        .add_resolved(Kind::Library, &found.named, &found.real, Some(&by));
                    // Both loaders know a library by its soname too (another object may need it by that).
                    map.names.extend(found.elf.soname.clone());
                    if map.objs.len() < MAX_OBJECTS {
                        let origin = found.named.parent().unwrap_or(Path::new("/")).to_path_buf();
                        map.objs.push(Obj {
                            elf: found.elf,
                            real: found.real,
                            origin,
                            loader: Some(next),
                        });
                    }
                }
            }
            next += 1;
        }
    }

    /// The candidate files for library `name` needed by object `who`, in the loader's order, each with the
    /// directory (or "/etc/ld.so.cache") it comes from, for the report.
    pub(super) fn search_order(
        &mut self,
        map: &LinkMap,
        who: usize,
        name: &OsStr,
    ) -> Vec<(PathBuf, PathBuf)> {
        let needer = &map.objs[who];
        let env_dirs = |seps: &[u8]| {
            let origin = &map.objs[0].origin;
            self.ld_library_path
                .as_deref()
                .map_or_else(Vec::new, |v| split_dirs(v, seps, origin))
        };
        // From the needing object up to the program, through the objects that first needed each other.
        let up_chain = |runpath_first: bool| {
            let mut dirs = Vec::new();
            let mut at = Some(who);
            while let Some(i) = at {
                let o = &map.objs[i];
                dirs.extend(o.search_path(runpath_first && o.elf.runpath.is_some()));
                at = o.loader;
            }
            dirs
        };
        let in_dir = |dirs: Vec<PathBuf>| {
            dirs.into_iter()
                .map(|d| (d.clone(), d.join(name)))
                .collect::<Vec<_>>()
        };
        let mut out = Vec::new();
        match &map.flavor {
            Flavor::Musl { sys_path } => {
                out.extend(in_dir(env_dirs(b":\n")));
                // musl: DT_RUNPATH (else DT_RPATH) of the needing object and of each object above it.
                out.extend(in_dir(up_chain(true)));
                out.extend(in_dir(sys_path.clone()));
            }
            Flavor::Glibc => {
                // glibc: DT_RPATH up the chain unless the needing object has DT_RUNPATH, LD_LIBRARY_PATH,
                // its DT_RUNPATH, then (unless DF_1_NODEFLIB) ld.so.cache and the default directories.
                if needer.elf.runpath.is_none() {
                    out.extend(in_dir(up_chain(false)));
                }
                out.extend(in_dir(env_dirs(b":;")));
                out.extend(in_dir(needer.search_path(true)));
                if !needer.elf.nodeflib {
                    let default_dirs = glibc_default_dirs(&needer.elf);
                    out.extend(
                        self.ld_cache_lookup(name)
                            .into_iter()
                            .map(|p| (PathBuf::from(LD_CACHE), p)),
                    );
                    out.extend(in_dir(default_dirs));
                }
            }
        }
        out
    }

    /// Searches one library like the loader and reports it missing if nowhere to be found.
    pub(super) fn search_library(
        &mut self,
        map: &LinkMap,
        who: usize,
        name: &OsStr,
    ) -> Option<Found> {
        let by = map.objs[who].real.clone();
        let candidates = if name.as_bytes().contains(&b'/') {
            // A DT_NEEDED with a slash is opened as a path, no search.
            let p = self.absolute(Path::new(name));
            vec![(p.clone(), p)]
        } else {
            self.search_order(map, who, name)
        };
        let mut searched: Vec<PathBuf> = Vec::new();
        let mut dangling: Option<(PathBuf, Unresolved)> = None;
        let mut skipped: Vec<String> = Vec::new();
        for (label, cand) in candidates {
            if !searched.contains(&label) {
                searched.push(label);
            }
            let canon = match self.resolve(&cand) {
                Ok(c) => c,
                Err(u) => {
                    if dangling.is_none() && !u.hops.is_empty() {
                        dangling = Some((cand, u));
                    }
                    continue;
                }
            };
            match self.inspect(&canon.real) {
                Ok(Content::Elf(lib)) if map.objs[who].elf.compatible(&lib) => {
                    return Some(Found {
                        named: cand,
                        real: canon.real,
                        elf: lib,
                    });
                }
                // Both loaders skip a library of another class or machine and keep searching.
                Ok(Content::Elf(lib)) => skipped.push(format!(
                    "skipped incompatible {} ({})",
                    cand.display(),
                    lib.describe()
                )),
                // The loader cannot open it either, and keeps searching.
                Ok(Content::Unreadable(r)) => {
                    skipped.push(format!("cannot read {} ({r})", cand.display()))
                }
                // A file that is not a valid ELF stops the loader ("invalid ELF header"): report it as is.
                Ok(_) => {
                    self.broken(
                        Kind::Library,
                        &cand,
                        Some(&by),
                        &canon,
                        "not an ELF file".into(),
                    );
                    return None;
                }
                Err(reason) => {
                    self.broken(Kind::Library, &cand, Some(&by), &canon, reason);
                    return None;
                }
            }
        }
        if let Some((cand, u)) = dangling {
            self.missing(Kind::Library, &cand, Some(&by), u);
            return None;
        }
        let mut reason = format!(
            "searched {}",
            join_paths(searched.iter().map(PathBuf::as_path))
        );
        for s in skipped {
            reason.push_str("; ");
            reason.push_str(&s);
        }
        let watch = searched
            .iter()
            .filter(|d| d.as_os_str() != LD_CACHE)
            .cloned()
            .collect();
        let m = Missing {
            kind: Kind::Library,
            path: PathBuf::from(name),
            needed_by: Some(by),
            hops: Vec::new(),
            reason,
            watch,
        };
        self.report.add_missing(m);
        None
    }

    /// Paths /etc/ld.so.cache gives for `name` (none when the image has no cache, as busybox images don't).
    pub(super) fn ld_cache_lookup(&mut self, name: &OsStr) -> Vec<PathBuf> {
        if self.ld_cache.is_none() {
            let data = read_small(&self.host(Path::new(LD_CACHE))).unwrap_or_default();
            self.ld_cache = Some(parse_ld_cache(&data));
        }
        self.ld_cache
            .as_ref()
            .and_then(|c| c.get(name))
            .cloned()
            .unwrap_or_default()
    }

    /// musl's system path: PREFIX/etc/ld-musl-ARCH.path (PREFIX = the loader's directory minus its last
    /// component, "" for /lib/ld-musl-*.so.1), entries separated by ':' or newlines; else its default.
    pub(super) fn musl_sys_path(&self, interp: &Path, arch: &str) -> Vec<PathBuf> {
        let prefix = interp
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/"));
        let file = prefix.join(format!("etc/ld-musl-{arch}.path"));
        match read_small(&self.host(&file)) {
            Some(data) => split_dirs(OsStr::from_bytes(&data), b":\n", Path::new("/")),
            None => ["/lib", "/usr/local/lib", "/usr/lib"]
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

/// "x86_64" for /lib/ld-musl-x86_64.so.1; `None` for any other loader.
pub(super) fn musl_arch(interp: &Path) -> Option<&str> {
    let name = interp.file_name()?.to_str()?;
    name.strip_prefix("ld-musl-")?
        .split(".so")
        .next()
        .filter(|a| !a.is_empty())
}

/// musl's loader answers libc.so, libpthread.so, libm.so … itself: they are part of it (ldso/dynlink.c,
/// "reserved" names).
pub(super) fn is_musl_self(flavor: &Flavor, name: &OsStr) -> bool {
    let Flavor::Musl { .. } = flavor else {
        return false;
    };
    let Some(rest) = name.as_bytes().strip_prefix(b"lib") else {
        return false;
    };
    ["c.", "pthread.", "rt.", "m.", "dl.", "util.", "xnet."]
        .iter()
        .any(|r| rest.starts_with(r.as_bytes()))
}

/// glibc's built-in directories. They differ between distributions (Debian: multiarch + /lib, /usr/lib;
/// Fedora and upstream: /lib64, /usr/lib64), so the union is searched, multiarch first.
pub(super) fn glibc_default_dirs(elf: &Elf) -> Vec<PathBuf> {
    let triplet = match (elf.machine, elf.class, elf.big_endian) {
        (62, elf::Class::Elf64, _) => Some("x86_64-linux-gnu"),
        (62, elf::Class::Elf32, _) => Some("x86_64-linux-gnux32"),
        (3, _, _) => Some("i386-linux-gnu"),
        (183, _, _) => Some("aarch64-linux-gnu"),
        (40, _, _) => Some("arm-linux-gnueabihf"),
        (21, _, false) => Some("powerpc64le-linux-gnu"),
        (22, _, _) => Some("s390x-linux-gnu"),
        (243, _, _) => Some("riscv64-linux-gnu"),
        _ => None,
    };
    let mut dirs = Vec::new();
    if let Some(t) = triplet {
        dirs.push(PathBuf::from("/lib").join(t));
        dirs.push(PathBuf::from("/usr/lib").join(t));
    }
    if elf.class == elf::Class::Elf64 {
        dirs.push("/lib64".into());
        dirs.push("/usr/lib64".into());
    }
    dirs.push("/lib".into());
    dirs.push("/usr/lib".into());
    dirs
}

/// glibc's /etc/ld.so.cache ("glibc-ld.so.cache1.1", possibly after an old "ld.so-1.7.0" part): each entry
/// maps a library name to a path. Native byte order; anything out of bounds is skipped.
pub(super) fn parse_ld_cache(data: &[u8]) -> HashMap<OsString, Vec<PathBuf>> {
    const OLD: &[u8] = b"ld.so-1.7.0";
    const NEW: &[u8] = b"glibc-ld.so.cache1.1";
    let u32_at = |at: usize| -> Option<usize> {
        let b = data.get(at..at.checked_add(4)?)?;
        usize::try_from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).ok()
    };
    let cstr = |at: usize| -> Option<&[u8]> {
        let s = data.get(at..)?;
        Some(&s[..s.iter().position(|&b| b == 0)?])
    };
    let mut map: HashMap<OsString, Vec<PathBuf>> = HashMap::new();
    let mut base = 0usize;
    if data.starts_with(OLD) {
        // Old header (16 bytes) and 12-byte entries, then the new header aligned to 8.
        let Some(n) = u32_at(12) else { return map };
        base = n.saturating_mul(12).saturating_add(16 + 7) & !7;
    }
    if !data.get(base..).is_some_and(|d| d.starts_with(NEW)) {
        return map;
    }
    let Some(nlibs) = u32_at(base + 20) else {
        return map;
    };
    for i in 0..nlibs {
        let entry = base + 48 + i * 24;
        let (Some(key), Some(value)) = (u32_at(entry + 4), u32_at(entry + 8)) else {
            break;
        };
        if let (Some(k), Some(v)) = (cstr(base + key), cstr(base + value)) {
            map.entry(OsStr::from_bytes(k).into())
                .or_default()
                .push(PathBuf::from(OsStr::from_bytes(v)));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn ld_cache_of_this_machine() {
        let data = fs::read("/etc/ld.so.cache").expect("the test machine has an ld.so.cache");
        let cache = parse_ld_cache(&data);
        let libc = cache
            .get(OsStr::new("libc.so.6"))
            .expect("libc.so.6 is in the cache");
        assert!(
            libc.iter()
                .any(|p| p.ends_with("libc.so.6") && p.is_absolute()),
            "{libc:?}"
        );
        // Truncated or garbage caches give nothing, without panicking.
        for cut in [0, 10, 30, 60, data.len() / 2] {
            let _ = parse_ld_cache(&data[..cut]);
        }
    }

    #[test]
    fn origin_expansion() {
        let dirs = split_dirs(
            OsStr::new("$ORIGIN/../lib::${ORIGIN}:/abs"),
            b":",
            Path::new("/opt/x"),
        );
        assert_eq!(
            dirs,
            [
                PathBuf::from("/opt/x/../lib"),
                "/opt/x".into(),
                "/abs".into()
            ]
        );
    }
}
