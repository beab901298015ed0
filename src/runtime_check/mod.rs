//! The runtime check: before the app is spawned, prove that everything it needs from the runtime volume is
//! there, and say exactly what is missing. It costs what the app needs, not what the image holds.
//!
//! Owns: resolving CMD through PATH (with `which`) and its symlink chain, the `#!` interpreter of a script
//! (and the program behind `#!/usr/bin/env NAME`), an ELF program's interpreter (PT_INTERP) and its libraries
//! searched the way glibc's or musl's loader does (DT_RPATH/DT_RUNPATH with $ORIGIN, LD_LIBRARY_PATH,
//! /etc/ld.so.cache, /etc/ld-musl-ARCH.path, default directories), recursively; `--require` paths; the links
//! into the runtime directory (those of the image-time manifest, or a scan when asked); the volume's manifest at
//! `docker build`; waiting for a late volume; the report (text, JSON, stderr message, hints) and the
//! `microinit check` subcommand. Every bound on a hostile image (file sizes, entries, candidates) is reported
//! when reached.
//! Split by concern: `report`, `resolve` (paths in the image root), `program` (command, `#!`), `loader`
//! (PT_INTERP, DT_NEEDED, ld.so.cache), `links` (runtime-dir links, `--require`), `manifest` (the image-time
//! list of links), `volume` (the volume's state, its manifest, hints), `wait`, `files` (bounded reads), `elf`,
//! `which`.
//! Does not own: option parsing (`cli`), spawning the app (`init`).
//!
//! Every path is resolved inside `RuntimeCheckConfig::root` ("/" in production) with our own symlink walk, so
//! a dangling link is reported with its target and the check behaves the same in a chroot as in the image.

pub mod elf;
mod files;
mod links;
mod loader;
mod manifest;
mod program;
mod report;
mod resolve;
mod volume;
mod wait;
pub mod which;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::RuntimeCheckConfig;
use loader::LdCache;
use manifest::ManifestOut;
use resolve::Node;

pub use report::{Kind, Report};
pub use wait::{check_waiting, Waiter};

/// Linux follows at most this many symlinks in one lookup (MAXSYMLINKS) before ELOOP.
const MAX_LINKS: usize = 40;
/// The kernel nests `#!` interpreters at most this deep (BINPRM_MAX_RECURSION).
const MAX_SCRIPT_DEPTH: usize = 4;
/// The kernel reads this much of a file to find `#!` and the interpreter line (BINPRM_BUF_SIZE).
const SHEBANG_BYTES: usize = 256;
/// First read of every file: enough for the `#!` line, and for an ELF's headers and PT_INTERP in one go.
const HEAD_BYTES: usize = 1024;
/// Bounds on the work one check may do on a hostile image, each reported when reached: configuration file
/// size (ld.so.cache, ld-musl-ARCH.path, manifests), libraries in one link map, candidate paths tried by the
/// library search, directory entries read by the link scan, missing entries listed.
const MAX_CONFIG_FILE: u64 = 4 << 20;
const MAX_OBJECTS: usize = 1024;
const MAX_PROBES: usize = 2_000_000;
const MAX_SCAN_ENTRIES: usize = 1_000_000;
const MAX_MISSING: usize = 256;
/// Waiting for a late volume: first re-check after this, doubling up to the cap (inotify usually wakes sooner).
const WAIT_FIRST_POLL: Duration = Duration::from_millis(20);
const WAIT_MAX_POLL: Duration = Duration::from_secs(1);
/// The standard directories whose links into the runtime directory must all resolve.
const SCAN_DIRS: &[&str] = &[
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/lib",
    "/lib64",
    "/lib32",
    "/libx32",
    "/usr/lib",
    "/usr/lib64",
    "/usr/lib32",
    "/usr/local/lib",
];
const NO_SUCH_FILE: &str = "no such file";
const LD_CACHE: &str = "/etc/ld.so.cache";

/// Syscalls one check made on the image, by kind. `check --json` shows them ("work"), so tests count the
/// work without strace.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Work {
    lstat: u32,
    readlink: u32,
    stat: u32,
    open: u32,
    getdents: u32,
}

/// Checks once: the command's exec chain (when `command` is not empty), `--require`, then the links into
/// the runtime directory (from the manifest; scanned only when asked or when the manifest is out of date).
pub fn check(command: &[OsString], cfg: &RuntimeCheckConfig) -> Report {
    let mut c = Checker::new(cfg);
    c.volume_manifest();
    if let Some(name) = command.first() {
        c.command(name);
    }
    for p in &cfg.require {
        c.require(p);
    }
    c.runtime_links();
    c.finish()
}

/// `microinit check [--json] [CMD ARGS...]`: prints the report to stdout; 0 when complete, 127 otherwise.
/// With `--write-manifest`, also writes the manifest of the image's links when the check passed (exit 1 when
/// it cannot be written).
pub fn check_main(json: bool, command: &[OsString], cfg: &RuntimeCheckConfig) -> i32 {
    let report = check_waiting(command, cfg);
    if let Some(e) = &report.write_error {
        eprintln!("microinit: {e}");
        return 1;
    }
    let out = if json {
        format!("{:#}\n", report.to_json())
    } else {
        report.render_text()
    };
    // A closed stdout (`microinit check | head -1`) must not turn into a panic.
    let _ = io::stdout().write_all(out.as_bytes());
    if report.is_ok() {
        0
    } else {
        127
    }
}

struct Checker<'a> {
    cfg: &'a RuntimeCheckConfig,
    report: Report,
    path_var: Option<OsString>,
    ld_library_path: Option<OsString>,
    /// /etc/ld.so.cache, indexed on first use.
    ld_cache: Option<LdCache>,
    /// lstat results of this check (see `node`), keyed by the path's bytes: the walk builds every path the
    /// same way, and hashing bytes costs less than hashing a Path (component by component).
    nodes: RefCell<HashMap<OsString, Result<Node, i32>>>,
    /// Whether each library search directory exists: a directory that is not there costs one walk, not one
    /// per library (the memo of failed lookups).
    dirs: HashMap<PathBuf, bool>,
    /// Candidate paths the library search may still try (MAX_PROBES).
    probes_left: usize,
    /// Directory entries the link scan may read (MAX_SCAN_ENTRIES; lower in the tests of the cap).
    scan_cap: usize,
    work: Cell<Work>,
    /// At `docker build` (runtime directory absent or empty): the files the volume's manifest says it has.
    volume_files: Option<HashSet<PathBuf>>,
    /// `check --write-manifest`: what the scan found, written by `finish` when the check passed.
    manifest_out: Option<ManifestOut>,
}

impl<'a> Checker<'a> {
    fn new(cfg: &'a RuntimeCheckConfig) -> Self {
        Checker {
            cfg,
            report: Report::new(cfg.runtime_dir.clone()),
            path_var: std::env::var_os("PATH"),
            ld_library_path: std::env::var_os("LD_LIBRARY_PATH"),
            ld_cache: None,
            nodes: RefCell::new(HashMap::new()),
            dirs: HashMap::new(),
            probes_left: MAX_PROBES,
            scan_cap: MAX_SCAN_ENTRIES,
            work: Cell::new(Work::default()),
            volume_files: None,
            manifest_out: None,
        }
    }

    fn count(&self, f: impl FnOnce(&mut Work)) {
        let mut w = self.work.get();
        f(&mut w);
        self.work.set(w);
    }

    /// A bound was reached: said in the report and, at start, in the log (never silent).
    fn capped(&mut self, note: String) {
        log::warn!("runtime check: {note}");
        self.report.notes.push(note);
    }

    /// The hints that need a look at the volume, the manifest to write, the work counters.
    fn finish(mut self) -> Report {
        if !self.report.is_ok() {
            self.hints();
        } else if let Some(out) = self.manifest_out.take() {
            self.write_manifest(&out);
        }
        self.report.work = self.work.get();
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime_check::elf::tests::{build, Rng};
    use crate::runtime_check::elf::Class;
    use report::Missing;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::Path;
    use std::time::Instant;

    /// A root filesystem in a temporary directory, checked in-process through `RuntimeCheckConfig::root`.
    struct Root(PathBuf);

    impl Root {
        fn new(name: &str) -> Root {
            let dir = std::env::temp_dir()
                .join(format!("microinit-rc-unit-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Root(dir)
        }
        fn put(&self, p: &str, bytes: &[u8]) {
            let f = self.0.join(p.trim_start_matches('/'));
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(&f, bytes).unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fn link(&self, p: &str, target: &str) {
            let f = self.0.join(p.trim_start_matches('/'));
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            symlink(target, f).unwrap();
        }
        fn cfg(&self) -> RuntimeCheckConfig {
            RuntimeCheckConfig {
                enabled: true,
                runtime_dir: "/opt/files".into(),
                require: Vec::new(),
                wait: None,
                root: self.0.clone(),
                links_manifest: "/etc/microinit/runtime-links".into(),
                scan_links: true,
                volume_manifest: None,
                write_manifest: false,
            }
        }
        fn check(&self, cmd: &str) -> Report {
            check(&[OsString::from(cmd)], &self.cfg())
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn lines(r: &Report) -> Vec<String> {
        r.missing.iter().map(Missing::line).collect()
    }

    fn found(r: &Report, kind: Kind) -> Vec<(PathBuf, PathBuf)> {
        r.resolved
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| (e.path.clone(), e.found.clone()))
            .collect()
    }

    const MUSL: &str = "/lib/ld-musl-x86_64.so.1";
    const GLIBC: &str = "/lib64/ld-linux-x86-64.so.2";

    #[test]
    fn musl_reserved_names_and_path_file() {
        let root = Root::new("musl");
        root.put(
            "/usr/bin/prog",
            &build(
                Class::Elf64,
                false,
                Some(MUSL),
                &["libc.so", "libz.so.1"],
                None,
            ),
        );
        root.put(MUSL, &build(Class::Elf64, false, None, &[], None));
        root.put(
            "/opt/lib/libz.so.1",
            &build(Class::Elf64, false, None, &["libc.so"], None),
        );
        root.put(
            "/etc/ld-musl-x86_64.path",
            b"/usr/local/lib\n/opt/lib:/usr/lib\n",
        );
        let r = root.check("/usr/bin/prog");
        assert!(r.is_ok(), "{}", r.render_text());
        // libc.so is the loader itself: never searched.
        assert_eq!(
            found(&r, Kind::Library),
            [(
                PathBuf::from("/opt/lib/libz.so.1"),
                PathBuf::from("/opt/lib/libz.so.1")
            )]
        );
        fs::remove_file(root.0.join("etc/ld-musl-x86_64.path")).unwrap();
        let r = root.check("/usr/bin/prog");
        let l = lines(&r);
        // (LD_LIBRARY_PATH, set by cargo test, comes first.)
        assert!(
            l.len() == 1
                && l[0].starts_with(
                    "microinit: runtime missing: libz.so.1 needed by /usr/bin/prog (searched "
                ),
            "{l:?}"
        );
        assert!(l[0].ends_with(", /lib, /usr/local/lib, /usr/lib)"), "{l:?}");
    }

    #[test]
    fn runpath_is_not_inherited_by_glibc_but_is_by_musl() {
        for (interp, inherited) in [(GLIBC, false), (MUSL, true)] {
            let root = Root::new("runpath");
            root.put(
                "/opt/app/bin/prog",
                &build(
                    Class::Elf64,
                    false,
                    Some(interp),
                    &["liba.so"],
                    Some("$ORIGIN/../lib"),
                ),
            );
            root.link("/usr/bin/prog", "/opt/app/bin/prog");
            root.put(interp, &build(Class::Elf64, false, None, &[], None));
            root.put(
                "/opt/app/lib/liba.so",
                &build(Class::Elf64, false, None, &["libb.so"], None),
            );
            root.put(
                "/opt/app/lib/libb.so",
                &build(Class::Elf64, false, None, &[], None),
            );
            let r = root.check("/usr/bin/prog");
            let libs: Vec<PathBuf> = found(&r, Kind::Library)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            assert_eq!(
                libs[0],
                Path::new("/opt/app/bin/../lib/liba.so"),
                "{interp}: $ORIGIN is the real directory"
            );
            if inherited {
                assert!(r.is_ok(), "{}", r.render_text());
            } else {
                let l = lines(&r);
                assert_eq!(l.len(), 1, "{l:?}");
                assert!(l[0].starts_with("microinit: runtime missing: libb.so needed by /opt/app/lib/liba.so (searched "), "{l:?}");
                assert!(
                    !l[0].contains("/opt/app/lib,") && l[0].ends_with(", /lib, /usr/lib)"),
                    "{l:?}"
                );
            }
        }
    }

    #[test]
    fn big_endian_32_bit_program() {
        let root = Root::new("be32");
        root.put(
            "/bin/prog",
            &build(
                Class::Elf32,
                true,
                Some("/lib/ld.so.1"),
                &["libfoo.so.2"],
                None,
            ),
        );
        root.put("/lib/ld.so.1", &build(Class::Elf32, true, None, &[], None));
        // A 64-bit little-endian libfoo is skipped; the right one is found further down the path.
        root.put(
            "/lib/libfoo.so.2",
            &build(Class::Elf64, false, None, &[], None),
        );
        root.put(
            "/usr/lib/libfoo.so.2",
            &build(Class::Elf32, true, None, &[], None),
        );
        let r = root.check("/bin/prog");
        assert!(r.is_ok(), "{}", r.render_text());
        assert_eq!(
            found(&r, Kind::Library)[0].0,
            Path::new("/usr/lib/libfoo.so.2")
        );
    }

    /// The link scan reads at most MAX_SCAN_ENTRIES directory entries; reaching the cap is said in the report
    /// (and logged at start), never silent. The same code with a cap of 50, on 200 dangling links.
    #[test]
    fn the_link_scan_cap_is_reported_when_reached() {
        let root = Root::new("scan-cap");
        for i in 0..200 {
            root.link(
                &format!("/usr/bin/tool{i:03}"),
                &format!("/opt/files/tool{i:03}"),
            );
        }
        root.put("/opt/files/.keep", b"");
        let cfg = root.cfg();
        let scan = |cap: usize| {
            let mut c = Checker::new(&cfg);
            c.scan_cap = cap;
            c.runtime_links();
            c.finish()
        };
        let all = scan(MAX_SCAN_ENTRIES);
        assert_eq!(all.missing.len(), 200, "{}", all.render_text());
        assert!(
            !all.notes.iter().any(|n| n.contains("stopped")),
            "{:?}",
            all.notes
        );

        let capped = scan(50);
        assert!(!capped.is_ok());
        assert!(capped.missing.len() <= 50, "{}", capped.missing.len());
        assert!(
            capped.notes.iter().any(|n| n
                == "the link scan stopped after 50 directory entries (in /usr/bin): links after that were not checked"),
            "{:?}",
            capped.notes
        );
        assert!(
            capped
                .render_text()
                .contains("the link scan stopped after 50"),
            "{}",
            capped.render_text()
        );
    }

    /// 4 000 missing DT_NEEDED and a RUNPATH of 1 000 directories that do not exist: the search is linear
    /// (a directory is walked once), stops at its budget, says so, and the report stays bounded.
    #[test]
    fn a_hostile_library_search_is_bounded_and_reported() {
        let root = Root::new("hostile-search");
        let names: Vec<String> = (0..4000).map(|i| format!("libmissing{i}.so")).collect();
        let needed: Vec<&str> = names.iter().map(String::as_str).collect();
        // Short names: the ELF reader takes strings of up to 4 KiB, as a RUNPATH of 1 000 entries must fit.
        let digit = |i: usize| char::from(b"0123456789abcdefghijklmnopqrstuvwxyz"[i % 36]);
        let runpath: Vec<String> = (0..1000)
            .map(|i| format!("/{}{}", digit(i / 36), digit(i)))
            .collect();
        let prog = build(
            Class::Elf64,
            false,
            Some(GLIBC),
            &needed,
            Some(&runpath.join(":")),
        );
        root.put("/usr/bin/prog", &prog);
        root.put(GLIBC, &build(Class::Elf64, false, None, &[], None));
        let started = Instant::now();
        let r = root.check("/usr/bin/prog");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(!r.is_ok());
        assert_eq!(r.missing.len(), MAX_MISSING);
        assert!(r.more_missing > 0);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("library search stopped after")),
            "{:?}",
            r.notes
        );
        let text = r.render_text();
        assert!(
            text.contains(" more)") && !text.contains("/rr,"),
            "the 1 006 places are not all listed: {}",
            text.lines()
                .find(|l| l.contains("runtime missing"))
                .unwrap_or("")
        );
        assert!(text.len() < 1 << 20, "{} bytes", text.len());
    }

    /// The whole check (not only the ELF parser) over mutated programs, libraries and ld.so.cache files
    /// written to disk: it must always come back with a report.
    #[test]
    fn fuzz_check_over_mutated_files() {
        let root = Root::new("fuzz");
        let prog = build(
            Class::Elf64,
            false,
            Some(GLIBC),
            &["liba.so", "libb.so"],
            Some("$ORIGIN"),
        );
        let lib = build(
            Class::Elf64,
            false,
            None,
            &["libb.so"],
            Some("$ORIGIN/../x"),
        );
        let cache = fs::read("/etc/ld.so.cache").unwrap_or_default();
        root.put(GLIBC, &build(Class::Elf64, false, None, &[], None));
        root.put("/lib/libb.so", &lib);
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mutated = |base: &[u8], rng: &mut Rng| {
            let mut m = base.to_vec();
            for _ in 0..1 + rng.below(6) {
                let at = rng.below(m.len().clamp(1, 512));
                if let Some(b) = m.get_mut(at) {
                    *b = rng.next() as u8;
                }
            }
            if rng.below(4) == 0 {
                m.truncate(rng.below(m.len() + 1));
            }
            m
        };
        for _ in 0..300 {
            root.put("/usr/bin/prog", &mutated(&prog, &mut rng));
            root.put("/usr/bin/liba.so", &mutated(&lib, &mut rng));
            root.put("/etc/ld.so.cache", &mutated(&cache, &mut rng));
            let r = root.check("/usr/bin/prog");
            assert!(!r.render_text().is_empty() && r.to_json()["ok"].is_boolean());
        }
    }

    /// The check's cost on node in a microcontainer-shaped root (node and its libraries in /opt/files,
    /// links in /usr/bin, /lib64, /lib). Prints the figure; run with --release --nocapture for the number.
    #[test]
    fn check_cost_on_node() {
        let root = Root::new("cost");
        let files = root.0.join("opt/files");
        fs::create_dir_all(&files).unwrap();
        let libs = [
            "libdl.so.2",
            "libstdc++.so.6",
            "libm.so.6",
            "libgcc_s.so.1",
            "libpthread.so.0",
            "libc.so.6",
        ];
        let from_lib = |l: &str| Path::new("/lib/x86_64-linux-gnu").join(l);
        for (from, name) in libs.iter().map(|l| (from_lib(l), *l)).chain([
            (PathBuf::from("/usr/bin/node"), "node"),
            (PathBuf::from(GLIBC), "ld-linux-x86-64.so.2"),
        ]) {
            fs::copy(&from, files.join(name)).unwrap();
            let link = if name == "node" {
                "/usr/bin/node".to_string()
            } else if name.starts_with("ld-") {
                GLIBC.to_string()
            } else {
                format!("/lib/{name}")
            };
            root.link(&link, &format!("/opt/files/{name}"));
        }
        let cfg = root.cfg();
        let cmd = [OsString::from("/usr/bin/node")];
        let first = check(&cmd, &cfg);
        assert!(first.is_ok(), "{}", first.render_text());
        let runs = 200;
        let time = |cmd: &[OsString]| {
            let t = Instant::now();
            for _ in 0..runs {
                std::hint::black_box(check(cmd, &cfg));
            }
            t.elapsed() / runs
        };
        let (with_node, without) = (time(&cmd), time(&[]));
        eprintln!("runtime check: node + 6 libraries {with_node:?} per check; no command (links + require only) {without:?}");
    }
}
