//! Loader emulation: a dynamic program's interpreter and its DT_NEEDED closure, searched the way glibc's or
//! musl's loader does (DT_RPATH/DT_RUNPATH with $ORIGIN, LD_LIBRARY_PATH, /etc/ld.so.cache,
//! /etc/ld-musl-ARCH.path, default directories).
//!
//! Owns: search order per loader, ld.so.cache parsing, musl's reserved names.
//! Does not own: reading ELF files (`elf`), resolving paths (`resolve`).

use std::cell::{Cell, OnceCell};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::elf::{self, Elf};
use super::files::read_small;
use super::program::Content;
use super::report::{join_paths, Kind, Missing};
use super::resolve::Unresolved;
use super::{Checker, LD_CACHE, MAX_OBJECTS, MAX_PROBES, NO_SUCH_FILE};

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

/// One place the loader looks for a library.
pub(super) enum Place {
    /// A directory: the candidate is DIR/NAME.
    Dir(PathBuf),
    /// /etc/ld.so.cache: the candidates are the paths it lists for NAME.
    Cache,
    /// A DT_NEEDED with a slash is opened as this path, no search.
    Path(PathBuf),
}

/// Where the loader looks for the libraries one object needs, prepared once per object: the order does not
/// depend on the name, so a library costs one pass over it and no directory is walked twice. What only a
/// missing library's report needs (the "searched" list, the directories to watch, the suggested place of a
/// link) is derived from it then, not at every start.
pub(super) struct Order {
    places: Vec<Place>,
    /// Whether each place exists in the image, learnt when the search first reaches it.
    there: Vec<Cell<Option<bool>>>,
    searched: [OnceCell<String>; 2],
    watch: OnceCell<Vec<PathBuf>>,
    /// Index of the place where a link to a missing library would be found.
    suggest: OnceCell<Option<usize>>,
}

impl Order {
    fn new(places: Vec<Place>) -> Order {
        Order {
            there: places.iter().map(|_| Cell::new(None)).collect(),
            places,
            searched: Default::default(),
            watch: OnceCell::new(),
            suggest: OnceCell::new(),
        }
    }

    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        self.places.iter().filter_map(|p| match p {
            Place::Dir(d) => Some(d),
            _ => None,
        })
    }

    /// "searched …" for the report: without ld.so.cache, or with it (named only when it listed the name).
    fn searched(&self, cache: bool) -> &str {
        self.searched[usize::from(cache)].get_or_init(|| {
            join_paths(self.places.iter().filter_map(|p| match p {
                Place::Dir(d) | Place::Path(d) => Some(d.as_path()),
                Place::Cache => cache.then_some(Path::new(LD_CACHE)),
            }))
        })
    }

    /// --wait-runtime watches these (inotify takes 64 at most).
    fn watch(&self) -> Vec<PathBuf> {
        self.watch
            .get_or_init(|| self.dirs().take(64).cloned().collect())
            .clone()
    }
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
            // The search order depends on the needing object, not on the name: built once per object.
            let order = self.search_order(&map, next);
            for name in needed {
                if map.names.contains(&name) || is_musl_self(&map.flavor, &name) {
                    continue;
                }
                map.names.insert(name.clone());
                if let Some(found) = self.search_library(&map, next, &name, &order) {
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
                    } else if map.objs.len() == MAX_OBJECTS {
                        self.capped(format!(
                            "{} loads more than {MAX_OBJECTS} libraries: the libraries of the rest were not checked",
                            real.display()
                        ));
                        map.objs.truncate(MAX_OBJECTS - 1);
                    }
                }
            }
            next += 1;
        }
    }

    /// Where the loader looks for a library needed by object `who`, in its order.
    pub(super) fn search_order(&mut self, map: &LinkMap, who: usize) -> Order {
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
        let mut out: Vec<Place> = Vec::new();
        match &map.flavor {
            Flavor::Musl { sys_path } => {
                out.extend(env_dirs(b":\n").into_iter().map(Place::Dir));
                // musl: DT_RUNPATH (else DT_RPATH) of the needing object and of each object above it.
                out.extend(up_chain(true).into_iter().map(Place::Dir));
                out.extend(sys_path.iter().cloned().map(Place::Dir));
            }
            Flavor::Glibc => {
                // glibc: DT_RPATH up the chain unless the needing object has DT_RUNPATH, LD_LIBRARY_PATH,
                // its DT_RUNPATH, then (unless DF_1_NODEFLIB) ld.so.cache and the default directories.
                if needer.elf.runpath.is_none() {
                    out.extend(up_chain(false).into_iter().map(Place::Dir));
                }
                out.extend(env_dirs(b":;").into_iter().map(Place::Dir));
                out.extend(needer.search_path(true).into_iter().map(Place::Dir));
                if !needer.elf.nodeflib {
                    out.push(Place::Cache);
                    out.extend(glibc_default_dirs(&needer.elf).into_iter().map(Place::Dir));
                }
            }
        }
        Order::new(out)
    }

    /// One candidate path may be tried: false once MAX_PROBES were (reported once).
    fn probe(&mut self) -> bool {
        if self.probes_left == 0 {
            return false;
        }
        self.probes_left -= 1;
        if self.probes_left == 0 {
            self.capped(format!(
                "the library search stopped after {MAX_PROBES} candidate paths: libraries not found by then \
                 were not checked"
            ));
        }
        true
    }

    /// Whether place `i` of `order` exists in the image: learnt once per order (a directory through the
    /// per-check memo of `dir_exists`), so a search over many places and names stays linear.
    fn place_there(&mut self, order: &Order, i: usize) -> bool {
        let Place::Dir(d) = &order.places[i] else {
            return true;
        };
        if let Some(there) = order.there[i].get() {
            return there;
        }
        let there = self.dir_exists(d);
        order.there[i].set(Some(there));
        there
    }

    /// Whether a search directory exists, walked once per check.
    fn dir_exists(&mut self, dir: &Path) -> bool {
        if let Some(&there) = self.dirs.get(dir) {
            return there;
        }
        let there = self.resolve(dir).is_ok();
        self.dirs.insert(dir.to_path_buf(), there);
        there
    }

    /// Searches one library like the loader and reports it missing if nowhere to be found. Linear in the
    /// places searched: a directory that is not there is skipped from the memo, ld.so.cache is one lookup.
    pub(super) fn search_library(
        &mut self,
        map: &LinkMap,
        who: usize,
        name: &OsStr,
        order: &Order,
    ) -> Option<Found> {
        let by = map.objs[who].real.clone();
        let slash = name.as_bytes().contains(&b'/');
        let direct;
        let places = if slash {
            direct = [Place::Path(self.absolute(Path::new(name)))];
            &direct[..]
        } else {
            &order.places
        };
        let mut dangling: Option<(PathBuf, Unresolved)> = None;
        let mut skipped: Vec<String> = Vec::new();
        // ld.so.cache is named in the report only when it listed the library.
        let mut cache_listed = false;
        for (i, place) in places.iter().enumerate() {
            // A directory the image does not have is skipped.
            if !slash && !self.place_there(order, i) {
                if !self.probe() {
                    return None;
                }
                continue;
            }
            let candidates = match place {
                Place::Dir(d) => vec![d.join(name)],
                Place::Cache => self.ld_cache_lookup(name),
                Place::Path(p) => vec![p.clone()],
            };
            cache_listed |= matches!(place, Place::Cache) && !candidates.is_empty();
            for cand in candidates {
                if !self.probe() {
                    return None;
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
        }
        if let Some((cand, u)) = dangling {
            self.missing(Kind::Library, &cand, Some(&by), u);
            return None;
        }
        if let (true, [Place::Path(p)]) = (slash, places) {
            let p = p.clone();
            let u = Unresolved {
                hops: Vec::new(),
                at: p.clone(),
                reason: NO_SUCH_FILE.into(),
            };
            self.missing(Kind::Library, &p, Some(&by), u);
            return None;
        }
        let mut reason = format!("searched {}", order.searched(cache_listed));
        for s in skipped.iter().take(8) {
            reason.push_str("; ");
            reason.push_str(s);
        }
        let watch = order.watch();
        let m = Missing {
            kind: Kind::Library,
            path: PathBuf::from(name),
            needed_by: Some(by),
            hops: Vec::new(),
            reason,
            watch,
        };
        self.report.add_missing(m);
        // Where a link to the library would be found: the first searched directory the image has.
        let suggest = match order.suggest.get() {
            Some(s) => *s,
            None => {
                let dirs = || {
                    (0..order.places.len()).filter(|i| matches!(order.places[*i], Place::Dir(_)))
                };
                let s = dirs()
                    .find(|i| self.place_there(order, *i))
                    .or(dirs().next());
                *order.suggest.get_or_init(|| s)
            }
        };
        if let Some(Place::Dir(dir)) = suggest.map(|i| &order.places[i]) {
            self.report.suggest_link(name, dir.join(name));
        }
        None
    }

    /// Paths /etc/ld.so.cache gives for `name` (none when the image has no cache, as busybox images don't).
    pub(super) fn ld_cache_lookup(&mut self, name: &OsStr) -> Vec<PathBuf> {
        if self.ld_cache.is_none() {
            self.count(|w| w.open += 1);
            let data = match read_small(&self.host(Path::new(LD_CACHE))) {
                Ok(d) => d.map(|(d, _)| d).unwrap_or_default(),
                Err(why) => {
                    self.capped(format!("ignored {LD_CACHE}: {why}"));
                    Vec::new()
                }
            };
            self.ld_cache = Some(LdCache::parse(data));
        }
        self.ld_cache
            .as_ref()
            .map_or_else(Vec::new, |c| c.lookup(name.as_bytes()))
    }

    /// musl's system path: PREFIX/etc/ld-musl-ARCH.path (PREFIX = the loader's directory minus its last
    /// component, "" for /lib/ld-musl-*.so.1), entries separated by ':' or newlines; else its default.
    pub(super) fn musl_sys_path(&mut self, interp: &Path, arch: &str) -> Vec<PathBuf> {
        let prefix = interp
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/"));
        let file = prefix.join(format!("etc/ld-musl-{arch}.path"));
        self.count(|w| w.open += 1);
        match read_small(&self.host(&file)) {
            Ok(Some((data, _))) => split_dirs(OsStr::from_bytes(&data), b":\n", Path::new("/")),
            Ok(None) => ["/lib", "/usr/local/lib", "/usr/lib"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            Err(why) => {
                // musl's loader gives up on the path file too and uses no system path then.
                self.capped(format!("ignored {}: {why}", file.display()));
                Vec::new()
            }
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

/// glibc's /etc/ld.so.cache ("glibc-ld.so.cache1.1", possibly after an old "ld.so-1.7.0" part): entries that map a
/// library name to a path (native byte order), sorted by ldconfig in descending `libcmp` order. A lookup is the
/// loader's own binary search (dl-cache.c): O(log n) comparisons, nothing built beforehand, nothing allocated but
/// the answer. On a crafted file the entry count is capped by the file size and every string read is bounded
/// (NAME_MAX, PATH_MAX); an unsorted file gives wrong answers as it does to the loader, never unbounded work.
pub(super) struct LdCache {
    data: Vec<u8>,
    /// Where the "glibc-ld.so.cache1.1" part starts: string offsets count from there.
    base: usize,
    nlibs: usize,
}

/// NAME_MAX + 1 and PATH_MAX: no library name or path the loader could open is longer.
const CACHE_NAME_MAX: usize = 256;
const CACHE_PATH_MAX: usize = 4096;

impl LdCache {
    pub(super) fn parse(data: Vec<u8>) -> LdCache {
        const OLD: &[u8] = b"ld.so-1.7.0";
        const NEW: &[u8] = b"glibc-ld.so.cache1.1";
        let none = |data| LdCache {
            data,
            base: 0,
            nlibs: 0,
        };
        let mut base = 0usize;
        if data.starts_with(OLD) {
            // Old header (16 bytes) and 12-byte entries, then the new header aligned to 8.
            let Some(n) = u32_at(&data, 12) else {
                return none(data);
            };
            base = n.saturating_mul(12).saturating_add(16 + 7) & !7;
        }
        if !data.get(base..).is_some_and(|d| d.starts_with(NEW)) {
            return none(data);
        }
        let Some(nlibs) = u32_at(&data, base + 20) else {
            return none(data);
        };
        // 48-byte header, 24-byte entries: a count beyond what the file holds is a lie.
        let nlibs = nlibs.min(data.len().saturating_sub(base + 48) / 24);
        LdCache { data, base, nlibs }
    }

    /// (name, path) of entry `i`, each bounded; `None` when out of bounds or unterminated.
    fn entry(&self, i: usize) -> Option<(&[u8], &[u8])> {
        let at = self.base + 48 + i * 24;
        let key = self.base.checked_add(u32_at(&self.data, at + 4)?)?;
        let value = self.base.checked_add(u32_at(&self.data, at + 8)?)?;
        Some((
            cstr(&self.data, key, CACHE_NAME_MAX)?,
            cstr(&self.data, value, CACHE_PATH_MAX)?,
        ))
    }

    /// Every path the cache gives for `name`, in the cache's order.
    pub(super) fn lookup(&self, name: &[u8]) -> Vec<PathBuf> {
        use std::cmp::Ordering;
        let cmp = |i: usize| self.entry(i).map(|(k, _)| libcmp(name, k));
        let (mut left, mut right) = (0usize, self.nlibs);
        while left < right {
            let middle = left + (right - left) / 2;
            match cmp(middle) {
                // Descending order: a smaller name lies further right.
                Some(Ordering::Less) => left = middle + 1,
                Some(Ordering::Greater) => right = middle,
                // An unreadable entry ends the search, as a crafted file deserves.
                None => return Vec::new(),
                Some(Ordering::Equal) => {
                    // The first of the equal entries, then all of them in order.
                    let mut first = middle;
                    while first > 0 && cmp(first - 1) == Some(Ordering::Equal) {
                        first -= 1;
                    }
                    return (first..self.nlibs)
                        .map_while(|i| self.entry(i).filter(|(k, _)| libcmp(name, k).is_eq()))
                        .map(|(_, v)| PathBuf::from(OsStr::from_bytes(v)))
                        .collect();
                }
            }
        }
        Vec::new()
    }
}

fn u32_at(data: &[u8], at: usize) -> Option<usize> {
    let b = data.get(at..at.checked_add(4)?)?;
    usize::try_from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).ok()
}

/// glibc's `_dl_cache_libcmp`: byte order, except that runs of digits compare as numbers ("libfoo.so.10" after
/// "libfoo.so.9"), and a digit sorts after a non-digit.
fn libcmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut i, mut j) = (0, 0);
    while i < a.len() {
        let (x, y) = (a[i], b.get(j).copied().unwrap_or(0));
        match (x.is_ascii_digit(), y.is_ascii_digit()) {
            (true, true) => {
                let number = |s: &[u8], mut k: usize| {
                    let mut v: u64 = 0;
                    while let Some(d) = s.get(k).filter(|d| d.is_ascii_digit()) {
                        v = v.saturating_mul(10).saturating_add(u64::from(d - b'0'));
                        k += 1;
                    }
                    (v, k)
                };
                let ((va, ni), (vb, nj)) = (number(a, i), number(b, j));
                if va != vb {
                    return va.cmp(&vb);
                }
                (i, j) = (ni, nj);
            }
            (true, false) => return Ordering::Greater,
            (false, true) => return Ordering::Less,
            (false, false) if x != y => return x.cmp(&y),
            (false, false) => (i, j) = (i + 1, j + 1),
        }
    }
    0u8.cmp(&b.get(j).copied().unwrap_or(0))
}

/// The NUL-terminated string at `at`, if it ends within `max` bytes and the file.
fn cstr(data: &[u8], at: usize, max: usize) -> Option<&[u8]> {
    let s = data.get(at..)?;
    let s = &s[..s.len().min(max)];
    Some(&s[..s.iter().position(|&b| b == 0)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn ld_cache_of_this_machine() {
        let data = fs::read("/etc/ld.so.cache").expect("the test machine has an ld.so.cache");
        let libc = LdCache::parse(data.clone()).lookup(b"libc.so.6");
        assert!(
            libc.iter()
                .any(|p| p.ends_with("libc.so.6") && p.is_absolute()),
            "{libc:?}"
        );
        let cache = LdCache::parse(data.clone());
        assert!(cache.lookup(b"libnot-there.so.1").is_empty());
        // The binary search finds every name the cache holds, with its path: the order is glibc's.
        assert!(cache.nlibs > 10);
        for i in 0..cache.nlibs {
            let (k, v) = cache.entry(i).unwrap();
            let found = cache.lookup(k);
            assert!(
                found.contains(&PathBuf::from(OsStr::from_bytes(v))),
                "{}: {found:?}",
                String::from_utf8_lossy(k)
            );
        }
        // Truncated or garbage caches give nothing, without panicking.
        for cut in [0, 10, 30, 60, data.len() / 2] {
            let _ = LdCache::parse(data[..cut].to_vec()).lookup(b"libc.so.6");
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
