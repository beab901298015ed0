//! The runtime check: before the app is spawned, prove that everything it needs from the runtime volume is
//! there, and say exactly what is missing.
//!
//! Owns: resolving CMD through PATH (with `which`) and its symlink chain, the `#!` interpreter of a script
//! (and the program behind `#!/usr/bin/env NAME`), an ELF program's interpreter (PT_INTERP) and its libraries
//! searched the way glibc's or musl's loader does (DT_RPATH/DT_RUNPATH with $ORIGIN, LD_LIBRARY_PATH,
//! /etc/ld.so.cache, /etc/ld-musl-ARCH.path, default directories), recursively; symlinks into the runtime
//! directory from the standard directories; `--require` paths; waiting for a late volume; the report (text,
//! JSON, stderr message) and the `microinit check` subcommand.
//! Does not own: option parsing (`cli`), reading ELF files (`elf`), spawning the app (`supervisor`).
//!
//! Every path is resolved inside `RuntimeCheckConfig::root` ("/" in production) with our own symlink walk, so
//! a dangling link is reported with its target and the check behaves the same in a chroot as in the image.

pub mod elf;
pub mod which;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::RuntimeCheckConfig;
use elf::{Elf, Prefetched, SizedFile};
use which::LookupError;

/// Linux follows at most this many symlinks in one lookup (MAXSYMLINKS) before ELOOP.
const MAX_LINKS: usize = 40;
/// The kernel nests `#!` interpreters at most this deep (BINPRM_MAX_RECURSION).
const MAX_SCRIPT_DEPTH: usize = 4;
/// The kernel reads this much of a file to find `#!` and the interpreter line (BINPRM_BUF_SIZE).
const SHEBANG_BYTES: usize = 256;
/// First read of every file: enough for the `#!` line, and for an ELF's headers and PT_INTERP in one go.
const HEAD_BYTES: usize = 1024;
/// Bounds on what one check may read: ld.so.cache and ld-musl-ARCH.path sizes, library count, directory size.
const MAX_CONFIG_FILE: u64 = 4 << 20;
const MAX_OBJECTS: usize = 1024;
const MAX_DIR_ENTRIES: usize = 100_000;
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

/// What a report entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A link into the runtime directory (or the command's own link chain).
    Symlink,
    Command,
    /// An ELF program interpreter (PT_INTERP), i.e. the dynamic loader.
    Interpreter,
    Library,
    /// The interpreter named by a `#!` line (or the program behind `#!/usr/bin/env NAME`).
    ScriptInterpreter,
    /// A `--require` path.
    Require,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Symlink => "symlink",
            Kind::Command => "command",
            Kind::Interpreter => "interpreter",
            Kind::Library => "library",
            Kind::ScriptInterpreter => "script-interpreter",
            Kind::Require => "require",
        }
    }
}

#[derive(Debug, Clone)]
struct Resolved {
    kind: Kind,
    /// As named (the command as found in PATH, the library as found in a search directory).
    path: PathBuf,
    /// The real file after every symlink.
    found: PathBuf,
    needed_by: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Missing {
    kind: Kind,
    /// As named: the link, the path, or a bare library name when it was found nowhere.
    path: PathBuf,
    needed_by: Option<PathBuf>,
    /// The path after each symlink followed, up to where resolution failed.
    hops: Vec<PathBuf>,
    reason: String,
    /// Directories whose change may fix this (for `--wait-runtime`).
    watch: Vec<PathBuf>,
}

impl Missing {
    fn line(&self) -> String {
        format!("microinit: runtime missing: {}", self.describe())
    }

    /// "PATH [-> HOP…] [needed by X] (reason)".
    fn describe(&self) -> String {
        let mut s = self.path.display().to_string();
        // A loop has 40 hops: three show it well enough.
        for hop in self.hops.iter().take(3) {
            s.push_str(&format!(" -> {}", hop.display()));
        }
        if self.hops.len() > 3 {
            s.push_str(" -> ...");
        }
        if let Some(by) = &self.needed_by {
            s.push_str(&format!(" needed by {}", by.display()));
        }
        s.push_str(&format!(" ({})", self.reason));
        s
    }

    fn detail(&self) -> String {
        match self.hops.last() {
            Some(hop) if self.reason == NO_SUCH_FILE => {
                format!("dangling link -> {}", hop.display())
            }
            Some(hop) => format!("{} (via link -> {})", self.reason, hop.display()),
            None => self.reason.clone(),
        }
    }
}

/// The outcome of one check: everything resolved, everything missing, and notes on what could not be
/// checked (they never fail the check).
#[derive(Debug, Clone)]
pub struct Report {
    command: Option<PathBuf>,
    runtime_dir: PathBuf,
    resolved: Vec<Resolved>,
    missing: Vec<Missing>,
    notes: Vec<String>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty()
    }

    /// The stderr message when not ok: one "microinit: runtime missing: …" line per missing piece, then a
    /// hint naming the runtime directory and `--volumes-from`.
    pub fn missing_message(&self, cfg: &RuntimeCheckConfig) -> String {
        self.message(&cfg.runtime_dir)
    }

    fn message(&self, runtime_dir: &Path) -> String {
        let mut s = String::new();
        for m in &self.missing {
            s.push_str(&m.line());
            s.push('\n');
        }
        s.push_str(&format!(
            "microinit: hint: the runtime is expected in {} (--runtime-dir / MICROINIT_RUNTIME_DIR): start the \
             container with the runtime volume, e.g. `docker run --volumes-from filebox ...`; \
             --wait-runtime DURATION waits for a late volume, --no-runtime-check skips this check\n",
            runtime_dir.display()
        ));
        s
    }

    /// The `microinit check` report: everything resolved, notes, what is missing, and the verdict.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        match &self.command {
            Some(c) => s.push_str(&format!("microinit check: {}\n", c.display())),
            None => {
                s.push_str("microinit check: no command (runtime directory and --require only)\n")
            }
        }
        if !self.resolved.is_empty() {
            s.push_str("resolved:\n");
        }
        for r in &self.resolved {
            // A link already shown as the command, interpreter or library it is needs no second line.
            if r.kind == Kind::Symlink
                && self
                    .resolved
                    .iter()
                    .any(|o| o.kind != Kind::Symlink && o.path == r.path)
            {
                continue;
            }
            s.push_str(&format!("  {:<18} {}", r.kind.as_str(), r.path.display()));
            if r.found != r.path {
                s.push_str(&format!(" -> {}", r.found.display()));
            }
            if let Some(by) = &r.needed_by {
                s.push_str(&format!("  (needed by {})", by.display()));
            }
            s.push('\n');
        }
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        if self.is_ok() {
            s.push_str("result: ok, the runtime is complete\n");
        } else {
            s.push_str(&self.message(&self.runtime_dir));
            s.push_str(&format!(
                "result: {} missing (exit 127)\n",
                self.missing.len()
            ));
        }
        s
    }

    /// `microinit check --json`.
    pub fn to_json(&self) -> Value {
        let path = |p: &Path| Value::String(p.to_string_lossy().into_owned());
        let opt = |p: &Option<PathBuf>| p.as_deref().map_or(Value::Null, path);
        json!({
            "ok": self.is_ok(),
            "command": opt(&self.command),
            "resolved": self.resolved.iter().map(|r| json!({
                "kind": r.kind.as_str(),
                "path": path(&r.path),
                "found": path(&r.found),
                "needed_by": opt(&r.needed_by),
            })).collect::<Vec<_>>(),
            "missing": self.missing.iter().map(|m| json!({
                "kind": m.kind.as_str(),
                "path": path(&m.path),
                "needed_by": opt(&m.needed_by),
                "detail": m.detail(),
            })).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }

    fn add_resolved(&mut self, kind: Kind, path: &Path, found: &Path, needed_by: Option<&Path>) {
        if !self
            .resolved
            .iter()
            .any(|r| r.kind == kind && r.path == path)
        {
            let (path, found, needed_by) = (
                path.to_path_buf(),
                found.to_path_buf(),
                needed_by.map(Path::to_path_buf),
            );
            self.resolved.push(Resolved {
                kind,
                path,
                found,
                needed_by,
            });
        }
    }

    /// One entry per path: the first (most specific) report of a path wins.
    fn add_missing(&mut self, m: Missing) {
        if !self
            .missing
            .iter()
            .any(|o| o.path == m.path && o.needed_by == m.needed_by)
        {
            self.missing.push(m);
        }
    }
}

/// Checks once: the command's needs (when `command` is not empty), `--require`, then the links into the
/// runtime directory.
pub fn check(command: &[OsString], cfg: &RuntimeCheckConfig) -> Report {
    let mut c = Checker::new(cfg);
    if let Some(name) = command.first() {
        c.command(name);
    }
    for p in &cfg.require {
        c.require(p);
    }
    c.scan_runtime_links();
    c.report
}

/// Checks, and while something is missing and `cfg.wait` has not run out, waits for a change (inotify on
/// the directories concerned, with a capped backoff re-check because a volume mount raises no inotify event)
/// and checks again. Returns the last report.
pub fn check_waiting(command: &[OsString], cfg: &RuntimeCheckConfig) -> Report {
    let Some(wait) = cfg.wait else {
        return check(command, cfg);
    };
    let deadline = Instant::now() + wait;
    let mut w = Waiter::new(command, cfg, Instant::now());
    while !w.report().is_ok() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let timeout = w.next_check().min(deadline).saturating_duration_since(now);
        match &w.watch {
            Some(watch) => watch.wait(timeout),
            None => std::thread::sleep(timeout),
        }
        w.recheck(command, cfg, Instant::now());
    }
    w.into_report()
}

/// The wait for a late runtime volume without blocking, for a caller with its own event loop (PID 1 must
/// answer signals and `microinit status` meanwhile): poll `fd()` for input and call `recheck` when it is
/// readable or `next_check()` has passed; the caller owns the overall deadline. `check_waiting` is the
/// blocking form. (Added for issue 9's event loop; the checking itself stays in this module.)
pub struct Waiter {
    watch: Option<Watch>,
    next_check: Instant,
    poll: Duration,
    report: Report,
}

impl Waiter {
    /// Checks once and, while something is missing, arms the watches.
    pub fn new(command: &[OsString], cfg: &RuntimeCheckConfig, now: Instant) -> Waiter {
        let mut w = Waiter {
            watch: None,
            next_check: now,
            poll: WAIT_FIRST_POLL,
            report: check(command, cfg),
        };
        if !w.report.is_ok() {
            let first = w
                .report
                .missing
                .first()
                .map(Missing::describe)
                .unwrap_or_default();
            let wait = cfg.wait.unwrap_or_default();
            log::warn!("runtime incomplete, waiting up to {wait:?} for it (missing: {first})");
            w.recheck(command, cfg, now);
        }
        w
    }

    /// Re-arms the watches on what is missing, then checks again; true when the runtime is complete.
    pub fn recheck(
        &mut self,
        command: &[OsString],
        cfg: &RuntimeCheckConfig,
        now: Instant,
    ) -> bool {
        // Arm first, so a change between this check and the next wait is not missed.
        self.watch = Watch::new(&cfg.root, self.report.missing.iter().flat_map(|m| &m.watch));
        self.report = check(command, cfg);
        // A volume mount raises no inotify event: re-check on a capped backoff too.
        self.next_check = now + self.poll;
        self.poll = (self.poll * 2).min(WAIT_MAX_POLL);
        if self.report.is_ok() {
            self.watch = None;
        }
        self.report.is_ok()
    }

    /// Readable when a watched directory changed.
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        self.watch.as_ref().map(|w| w.fd.as_raw_fd())
    }

    pub fn next_check(&self) -> Instant {
        self.next_check
    }

    pub fn report(&self) -> &Report {
        &self.report
    }

    pub fn into_report(self) -> Report {
        self.report
    }
}

/// `microinit check [--json] [CMD ARGS...]`: prints the report to stdout; 0 when complete, 127 otherwise.
pub fn check_main(json: bool, command: &[OsString], cfg: &RuntimeCheckConfig) -> i32 {
    let report = check_waiting(command, cfg);
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

/// inotify on a few directories, for `check_waiting`.
struct Watch {
    fd: OwnedFd,
}

impl Watch {
    /// Watches the deepest existing ancestor of each path; `None` when inotify is unavailable.
    fn new<'a>(root: &Path, dirs: impl Iterator<Item = &'a PathBuf>) -> Option<Watch> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_CREATE
            | libc::IN_MOVED_TO
            | libc::IN_CLOSE_WRITE
            | libc::IN_ATTRIB
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF
            | libc::IN_ONLYDIR;
        let mut armed = HashSet::new();
        for dir in dirs.take(64) {
            let mut host = host_path(root, dir);
            while !host.is_dir() && host.pop() {}
            if armed.insert(host.clone()) {
                if let Ok(c) = CString::new(host.into_os_string().into_vec()) {
                    // SAFETY: valid fd and NUL-terminated path; failure just leaves that directory unwatched.
                    unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
                }
            }
        }
        Some(Watch { fd })
    }

    fn wait(&self, timeout: Duration) {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            self.fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        // EINTR or an error just means an earlier re-check.
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
    }
}

/// `p` (absolute, inside the image) as a path on this machine.
fn host_path(root: &Path, p: &Path) -> PathBuf {
    if root == Path::new("/") {
        p.to_path_buf()
    } else {
        root.join(p.strip_prefix("/").unwrap_or(p))
    }
}

/// Removes "." and resolves ".." lexically (for comparing link targets, not for opening).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(s) => out.push(s),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => NO_SUCH_FILE.into(),
        Some(libc::EACCES) => "permission denied".into(),
        Some(libc::ENOTDIR) => "a path component is not a directory".into(),
        _ => e.to_string(),
    }
}

/// A path resolved inside the root: the real path and each step of its symlink chain (the path after each
/// link that was the whole path at that point).
struct Canon {
    real: PathBuf,
    hops: Vec<PathBuf>,
}

/// Why a path did not resolve, with the chain followed so far and the first path that was not there.
struct Unresolved {
    hops: Vec<PathBuf>,
    at: PathBuf,
    reason: String,
}

/// One path's lstat, as far as resolving needs it.
#[derive(Clone)]
enum Node {
    Link(PathBuf),
    Dir,
    Other,
}

/// What a file turned out to be.
enum Content {
    Elf(Elf),
    /// The `#!` line, without "#!" and the newline.
    Script(Vec<u8>),
    /// Neither ELF nor script (or not a regular file).
    Other,
    /// Could not be opened (typically permission denied as a non-root user).
    Unreadable(String),
}

/// One loaded ELF object of a program's link map.
struct Obj {
    elf: Elf,
    /// Real path, for "needed by".
    real: PathBuf,
    /// $ORIGIN: the real directory for the main program (the kernel's path), the directory the library was
    /// found in for libraries (glibc and musl do not canonicalise those).
    origin: PathBuf,
    /// The object that first needed this one (glibc's l_loader, musl's needed_by).
    loader: Option<usize>,
}

impl Obj {
    /// DT_RUNPATH, or DT_RPATH when there is no DT_RUNPATH (both loaders ignore RPATH then), split and
    /// $ORIGIN-expanded.
    fn search_path(&self, runpath: bool) -> Vec<PathBuf> {
        let raw = match (runpath, &self.elf.runpath) {
            (true, r) => r.as_ref(),
            (false, None) => self.elf.rpath.as_ref(),
            (false, Some(_)) => None,
        };
        raw.map_or_else(Vec::new, |r| split_dirs(r, b":", &self.origin))
    }
}

/// Splits a search path at any of `seps`, dropping empty entries and expanding $ORIGIN / ${ORIGIN}.
fn split_dirs(raw: &OsStr, seps: &[u8], origin: &Path) -> Vec<PathBuf> {
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
enum Flavor {
    Glibc,
    /// musl: the system path of /etc/ld-musl-ARCH.path (or its default).
    Musl {
        sys_path: Vec<PathBuf>,
    },
}

/// One program's link map while its libraries are being searched.
struct LinkMap {
    flavor: Flavor,
    objs: Vec<Obj>,
    /// Library names already handled (loaded, satisfied by the loader itself, or reported missing).
    names: HashSet<OsString>,
}

/// Where a library was found.
struct Found {
    named: PathBuf,
    real: PathBuf,
    elf: Elf,
}

struct Checker<'a> {
    cfg: &'a RuntimeCheckConfig,
    report: Report,
    path_var: Option<OsString>,
    ld_library_path: Option<OsString>,
    /// Parsed /etc/ld.so.cache (name → paths), loaded on first use.
    ld_cache: Option<HashMap<OsString, Vec<PathBuf>>>,
    /// lstat results of this check (see `node`).
    nodes: RefCell<HashMap<PathBuf, Result<Node, i32>>>,
}

impl<'a> Checker<'a> {
    fn new(cfg: &'a RuntimeCheckConfig) -> Self {
        Checker {
            cfg,
            report: Report {
                command: None,
                runtime_dir: cfg.runtime_dir.clone(),
                resolved: Vec::new(),
                missing: Vec::new(),
                notes: Vec::new(),
            },
            path_var: std::env::var_os("PATH"),
            ld_library_path: std::env::var_os("LD_LIBRARY_PATH"),
            ld_cache: None,
            nodes: RefCell::new(HashMap::new()),
        }
    }

    fn host(&self, p: &Path) -> PathBuf {
        host_path(&self.cfg.root, p)
    }

    /// Relative paths are relative to the working directory (in a test root: to its top).
    fn absolute(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        let cwd = if self.cfg.root == Path::new("/") {
            std::env::current_dir().ok()
        } else {
            None
        };
        cwd.unwrap_or_else(|| PathBuf::from("/")).join(p)
    }

    /// lstat (and readlink for a link) of an image path, remembered for the rest of this check: libraries
    /// share directories, so most lookups are answered without a syscall. Err: the errno.
    fn node(&self, p: &Path) -> Result<Node, i32> {
        if let Some(n) = self.nodes.borrow().get(p) {
            return n.clone();
        }
        let host = self.host(p);
        let node = match fs::symlink_metadata(&host) {
            Err(e) => Err(e),
            Ok(m) if m.file_type().is_symlink() => fs::read_link(&host).map(Node::Link),
            Ok(m) if m.is_dir() => Ok(Node::Dir),
            Ok(_) => Ok(Node::Other),
        }
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
        self.nodes
            .borrow_mut()
            .insert(p.to_path_buf(), node.clone());
        node
    }

    /// Resolves `p` inside the root, following symlinks like the kernel (absolute targets restart at the
    /// root, at most MAX_LINKS links).
    fn resolve(&self, p: &Path) -> Result<Canon, Unresolved> {
        fn push_rev(todo: &mut Vec<OsString>, p: &Path) {
            let parts: Vec<OsString> = p
                .components()
                .filter_map(|c| match c {
                    Component::Normal(s) => Some(s.to_os_string()),
                    Component::ParentDir => Some("..".into()),
                    _ => None,
                })
                .collect();
            todo.extend(parts.into_iter().rev());
        }
        let mut todo = Vec::new();
        push_rev(&mut todo, &self.absolute(p));
        let mut done = PathBuf::from("/");
        let mut hops = Vec::new();
        let mut links = 0;
        while let Some(part) = todo.pop() {
            if part == ".." {
                done.pop();
                continue;
            }
            let next = done.join(&part);
            let node = match self.node(&next) {
                Ok(n) => n,
                Err(errno) => {
                    let reason = io_reason(&io::Error::from_raw_os_error(errno));
                    return Err(Unresolved {
                        hops,
                        at: next,
                        reason,
                    });
                }
            };
            if let Node::Link(target) = node {
                links += 1;
                if links > MAX_LINKS {
                    let reason = format!("symlink loop (more than {MAX_LINKS} links)");
                    return Err(Unresolved {
                        hops,
                        at: next,
                        reason,
                    });
                }
                // Only a link that is the whole path so far is a hop of the chain ("a -> b"); a directory
                // link on the way (/lib -> usr/lib) is not what the person named.
                let whole = todo.is_empty();
                if target.is_absolute() {
                    done = PathBuf::from("/");
                }
                push_rev(&mut todo, &target);
                if whole {
                    let mut now = done.clone();
                    for t in todo.iter().rev() {
                        if t == ".." {
                            now.pop();
                        } else {
                            now.push(t);
                        }
                    }
                    hops.push(now);
                }
            } else if !todo.is_empty() && !matches!(node, Node::Dir) {
                let reason = "a path component is not a directory".into();
                return Err(Unresolved {
                    hops,
                    at: next,
                    reason,
                });
            } else {
                done = next;
            }
        }
        Ok(Canon { real: done, hops })
    }

    fn missing(&mut self, kind: Kind, path: &Path, needed_by: Option<&Path>, u: Unresolved) {
        let watch = vec![u.at.parent().unwrap_or(Path::new("/")).to_path_buf()];
        let (path, needed_by) = (path.to_path_buf(), needed_by.map(Path::to_path_buf));
        self.report.add_missing(Missing {
            kind,
            path,
            needed_by,
            hops: u.hops,
            reason: u.reason,
            watch,
        });
    }

    /// A file that is there but unusable (corrupt, not ELF): re-checked when its directory changes.
    fn broken(
        &mut self,
        kind: Kind,
        path: &Path,
        needed_by: Option<&Path>,
        canon: &Canon,
        reason: String,
    ) {
        let watch = vec![canon.real.parent().unwrap_or(Path::new("/")).to_path_buf()];
        let (path, needed_by, hops) = (
            path.to_path_buf(),
            needed_by.map(Path::to_path_buf),
            canon.hops.clone(),
        );
        self.report.add_missing(Missing {
            kind,
            path,
            needed_by,
            hops,
            reason,
            watch,
        });
    }

    /// Opens a resolved file and looks at its first bytes (and ELF headers). Err: corrupt ELF.
    fn inspect(&self, real: &Path) -> Result<Content, String> {
        let host = self.host(real);
        let meta = fs::metadata(&host).map_err(|e| io_reason(&e))?;
        if meta.is_dir() {
            return Err("is a directory".into());
        }
        if !meta.is_file() {
            return Ok(Content::Other);
        }
        // O_NONBLOCK: should the file be swapped for a FIFO after the stat, the open must not block PID 1.
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&host)
        {
            Ok(f) => f,
            Err(e) => return Ok(Content::Unreadable(io_reason(&e))),
        };
        let mut head = [0u8; HEAD_BYTES];
        let n = read_head(&file, &mut head).map_err(|e| format!("read error: {e}"))?;
        let head = &head[..n];
        if head.starts_with(b"\x7fELF") {
            let file = SizedFile {
                file: &file,
                size: meta.len(),
            };
            return match elf::parse(&Prefetched { file, head }) {
                Ok(elf) => Ok(Content::Elf(elf)),
                Err(e) => Err(e.to_string()),
            };
        }
        if let Some(line) = head[..n.min(SHEBANG_BYTES)].strip_prefix(b"#!") {
            let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
            return Ok(Content::Script(line[..end].to_vec()));
        }
        Ok(Content::Other)
    }

    /// The command: looked up in PATH with execvp's rules, then checked with everything it needs.
    fn command(&mut self, name: &OsStr) {
        self.report.command = Some(PathBuf::from(name));
        if let Some(path) = self.lookup(name, Kind::Command, None) {
            self.report.command = Some(path.clone());
            self.program(&path, Kind::Command, None, 0);
        }
    }

    /// `which::resolve` inside the root. On failure, reports the first dangling link among the candidates
    /// (the usual microcontainer failure) or else everything searched.
    fn lookup(&mut self, name: &OsStr, kind: Kind, needed_by: Option<&Path>) -> Option<PathBuf> {
        let root = self.cfg.root.clone();
        let has_slash = name.as_bytes().contains(&b'/');
        let (name_host, path_host) = if root == Path::new("/") {
            (name.to_os_string(), self.path_var.clone())
        } else {
            let name_host = if has_slash {
                self.host(&self.absolute(Path::new(name))).into_os_string()
            } else {
                name.into()
            };
            let dirs = self
                .path_var
                .clone()
                .unwrap_or_else(|| which::DEFAULT_PATH.into());
            let mapped: Vec<OsString> = dirs
                .as_bytes()
                .split(|b| *b == b':')
                .map(|d| {
                    self.host(&self.absolute(Path::new(OsStr::from_bytes(d))))
                        .into()
                })
                .collect();
            (
                name_host,
                Some(OsString::from_vec(mapped.join(OsStr::new(":")).into_vec())),
            )
        };
        let image = |p: &Path| -> PathBuf {
            match p.strip_prefix(&root) {
                Ok(rel) if root != Path::new("/") => Path::new("/").join(rel),
                _ => p.to_path_buf(),
            }
        };
        match which::resolve(&name_host, path_host.as_deref()) {
            Ok(p) => Some(image(&p)),
            Err(LookupError::NotExecutable { path, reason }) => {
                let path = image(&path);
                self.report.notes.push(format!(
                    "{} is not executable ({reason}): exec will fail with 126",
                    path.display()
                ));
                None
            }
            Err(LookupError::NotFound { tried }) => {
                let tried: Vec<PathBuf> = tried.iter().map(|p| image(p)).collect();
                for t in &tried {
                    match self.resolve(t) {
                        // Only under a test root: `which` followed an absolute link out of the root, our
                        // walk keeps it inside and finds the file.
                        Ok(_) if root != Path::new("/") => return Some(t.clone()),
                        Err(u) if !u.hops.is_empty() => {
                            self.missing(kind, t, needed_by, u);
                            return None;
                        }
                        _ => {}
                    }
                }
                let reason = match tried.as_slice() {
                    [_] => NO_SUCH_FILE.to_string(),
                    _ => format!(
                        "searched PATH: {}",
                        join_paths(tried.iter().filter_map(|t| t.parent()))
                    ),
                };
                let watch = tried
                    .iter()
                    .filter_map(|t| t.parent())
                    .map(Path::to_path_buf)
                    .collect();
                let (path, needed_by) = (PathBuf::from(name), needed_by.map(Path::to_path_buf));
                self.report.add_missing(Missing {
                    kind,
                    path,
                    needed_by,
                    hops: Vec::new(),
                    reason,
                    watch,
                });
                None
            }
        }
    }

    /// A program (the command, or a script's interpreter): resolve it, then check its interpreter and
    /// libraries (ELF) or its `#!` interpreter (script).
    fn program(&mut self, named: &Path, kind: Kind, needed_by: Option<&Path>, depth: usize) {
        let canon = match self.resolve(named) {
            Ok(c) => c,
            Err(u) => return self.missing(kind, named, needed_by, u),
        };
        let content = match self.inspect(&canon.real) {
            Ok(c) => c,
            Err(reason) => return self.broken(kind, named, needed_by, &canon, reason),
        };
        let real = canon.real.clone();
        if kind == Kind::Command && !canon.hops.is_empty() {
            self.report.add_resolved(Kind::Symlink, named, &real, None);
        }
        self.report.add_resolved(kind, named, &real, needed_by);
        match content {
            Content::Elf(elf) => {
                // No PT_INTERP: a static program (or static-pie); the kernel runs it without any loader.
                if let Some(interp) = elf.interp.clone() {
                    self.dynamic(&real, elf, Path::new(&interp));
                }
            }
            Content::Script(_) if depth >= MAX_SCRIPT_DEPTH => self.broken(
                kind,
                named,
                needed_by,
                &canon,
                format!("more than {MAX_SCRIPT_DEPTH} nested #! interpreters (the kernel refuses)"),
            ),
            Content::Script(line) => self.script(&canon, &line, depth),
            Content::Other => self.report.notes.push(format!(
                "{} is neither an ELF file nor a #! script: nothing it needs can be checked",
                real.display()
            )),
            Content::Unreadable(reason) => self.report.notes.push(format!(
                "cannot read {} ({reason}): what it needs was not checked",
                real.display()
            )),
        }
    }

    /// `#!interp [arg]`: the kernel takes one interpreter path (no PATH search) and one optional argument.
    fn script(&mut self, script: &Canon, line: &[u8], depth: usize) {
        let real = script.real.as_path();
        let line = line.trim_ascii();
        let split = line
            .iter()
            .position(|b| *b == b' ' || *b == b'\t')
            .unwrap_or(line.len());
        let (interp, arg) = (&line[..split], line[split..].trim_ascii());
        if interp.is_empty() {
            return self.broken(
                Kind::ScriptInterpreter,
                real,
                None,
                script,
                "#! line names no interpreter".into(),
            );
        }
        let interp = Path::new(OsStr::from_bytes(interp));
        self.program(interp, Kind::ScriptInterpreter, Some(real), depth + 1);
        // `#!/usr/bin/env NAME`: env searches PATH for NAME, which is what the script really needs.
        if interp.file_name() == Some(OsStr::new("env")) {
            if let Some(prog) = env_program(arg) {
                if let Some(path) =
                    self.lookup(OsStr::from_bytes(prog), Kind::ScriptInterpreter, Some(real))
                {
                    self.program(&path, Kind::ScriptInterpreter, Some(real), depth + 1);
                }
            }
        }
    }

    /// A dynamically linked program: its interpreter, then its libraries breadth-first like the loader.
    fn dynamic(&mut self, real: &Path, elf: Elf, interp: &Path) {
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
    fn search_order(&mut self, map: &LinkMap, who: usize, name: &OsStr) -> Vec<(PathBuf, PathBuf)> {
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
    fn search_library(&mut self, map: &LinkMap, who: usize, name: &OsStr) -> Option<Found> {
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
    fn ld_cache_lookup(&mut self, name: &OsStr) -> Vec<PathBuf> {
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
    fn musl_sys_path(&self, interp: &Path, arch: &str) -> Vec<PathBuf> {
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

    fn require(&mut self, p: &Path) {
        match self.resolve(p) {
            Ok(c) => self.report.add_resolved(Kind::Require, p, &c.real, None),
            Err(u) => self.missing(Kind::Require, p, None, u),
        }
    }

    /// Every symlink in the standard directories that points into the runtime directory must resolve.
    fn scan_runtime_links(&mut self) {
        let runtime = normalize(&self.absolute(&self.cfg.runtime_dir));
        let mut dirs: Vec<PathBuf> = SCAN_DIRS.iter().map(PathBuf::from).collect();
        // Multiarch directories (/usr/lib/x86_64-linux-gnu and the like).
        for base in ["/lib", "/usr/lib"] {
            let Ok(canon) = self.resolve(Path::new(base)) else {
                continue;
            };
            if let Ok(entries) = fs::read_dir(self.host(&canon.real)) {
                for e in entries.flatten().take(MAX_DIR_ENTRIES) {
                    if e.file_name().as_bytes().windows(7).any(|w| w == b"-linux-") {
                        dirs.push(Path::new(base).join(e.file_name()));
                    }
                }
            }
        }
        let mut seen = HashSet::new();
        for dir in dirs {
            // /bin is often a link to usr/bin: scan each real directory once, under its first name.
            let Ok(canon) = self.resolve(&dir) else {
                continue;
            };
            if !seen.insert(canon.real.clone()) {
                continue;
            }
            let Ok(entries) = fs::read_dir(self.host(&canon.real)) else {
                continue;
            };
            for entry in entries.flatten().take(MAX_DIR_ENTRIES) {
                if !entry.file_type().is_ok_and(|t| t.is_symlink()) {
                    continue;
                }
                let Ok(target) = fs::read_link(entry.path()) else {
                    continue;
                };
                if !normalize(&canon.real.join(&target)).starts_with(&runtime) {
                    continue;
                }
                let link = dir.join(entry.file_name());
                if self.report.missing.iter().any(|m| m.path == link) {
                    continue;
                }
                match self.resolve(&link) {
                    Ok(c) => self
                        .report
                        .add_resolved(Kind::Symlink, &link, &c.real, None),
                    Err(u) => self.missing(Kind::Symlink, &link, None, u),
                }
            }
        }
    }
}

/// The program `#!/usr/bin/env ARG` runs. Without -S the kernel passes ARG as one word, and env looks for a
/// program of exactly that name; with -S env splits it, skipping options and VAR=value assignments.
fn env_program(arg: &[u8]) -> Option<&[u8]> {
    let split = arg
        .strip_prefix(b"-S")
        .or_else(|| arg.strip_prefix(b"--split-string"));
    match split {
        None if arg.is_empty() || arg.starts_with(b"-") => None,
        None => Some(arg),
        Some(rest) => rest
            .split(|b| *b == b' ' || *b == b'\t')
            .find(|w| !w.is_empty() && !w.starts_with(b"-") && !w.contains(&b'=')),
    }
}

/// "x86_64" for /lib/ld-musl-x86_64.so.1; `None` for any other loader.
fn musl_arch(interp: &Path) -> Option<&str> {
    let name = interp.file_name()?.to_str()?;
    name.strip_prefix("ld-musl-")?
        .split(".so")
        .next()
        .filter(|a| !a.is_empty())
}

/// musl's loader answers libc.so, libpthread.so, libm.so … itself: they are part of it (ldso/dynlink.c,
/// "reserved" names).
fn is_musl_self(flavor: &Flavor, name: &OsStr) -> bool {
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
fn glibc_default_dirs(elf: &Elf) -> Vec<PathBuf> {
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
fn parse_ld_cache(data: &[u8]) -> HashMap<OsString, Vec<PathBuf>> {
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

/// A small configuration file (ld.so.cache, ld-musl-ARCH.path), or `None` when absent or oversized.
fn read_small(path: &Path) -> Option<Vec<u8>> {
    let f = File::open(path).ok()?;
    if f.metadata().ok()?.len() > MAX_CONFIG_FILE {
        return None;
    }
    let mut buf = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(f, MAX_CONFIG_FILE), &mut buf).ok()?;
    Some(buf)
}

/// Reads up to `buf.len()` bytes from the start of the file.
fn read_head(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// "a, b, c" without repeats (PATH often lists a directory twice).
fn join_paths<'p>(paths: impl Iterator<Item = &'p Path>) -> String {
    let mut seen = HashSet::new();
    paths
        .filter(|p| seen.insert(*p))
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime_check::elf::tests::{build, Rng};
    use crate::runtime_check::elf::Class;
    use std::os::unix::fs::{symlink, PermissionsExt};

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
    fn env_shebang_program() {
        assert_eq!(env_program(b"node"), Some(&b"node"[..]));
        assert_eq!(env_program(b"-S node --harmony"), Some(&b"node"[..]));
        assert_eq!(
            env_program(b"-S NODE_ENV=production node"),
            Some(&b"node"[..])
        );
        assert_eq!(env_program(b"-i"), None);
        assert_eq!(env_program(b""), None);
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
