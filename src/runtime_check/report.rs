//! The runtime check's report: what resolved, what is missing, notes; rendered as text (for people and
//! stderr) or JSON (for scripts).
//!
//! Owns: the report entries, their de-duplication, the hint, text and JSON rendering.
//! Does not own: deciding what is missing (`resolve`, `program`, `loader`, `links`).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{Work, MAX_MISSING, NO_SUCH_FILE};
use crate::config::RuntimeCheckConfig;

/// What a report entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    pub(super) fn as_str(self) -> &'static str {
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
pub(super) struct Resolved {
    pub(super) kind: Kind,
    /// As named (the command as found in PATH, the library as found in a search directory).
    pub(super) path: PathBuf,
    /// The real file after every symlink.
    pub(super) found: PathBuf,
    pub(super) needed_by: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub(super) struct Missing {
    pub(super) kind: Kind,
    /// As named: the link, the path, or a bare library name when it was found nowhere.
    pub(super) path: PathBuf,
    pub(super) needed_by: Option<PathBuf>,
    /// The path after each symlink followed, up to where resolution failed.
    pub(super) hops: Vec<PathBuf>,
    pub(super) reason: String,
    /// Directories whose change may fix this (for `--wait-runtime`).
    pub(super) watch: Vec<PathBuf>,
}

impl Missing {
    pub(super) fn line(&self) -> String {
        format!("microinit: runtime missing: {}", escape(&self.describe()))
    }

    /// "PATH [-> HOP…] [needed by X] (reason)".
    pub(super) fn describe(&self) -> String {
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

    pub(super) fn detail(&self) -> String {
        match self.hops.last() {
            Some(hop) if self.reason == NO_SUCH_FILE => {
                format!("dangling link -> {}", hop.display())
            }
            Some(hop) => format!("{} (via link -> {})", self.reason, hop.display()),
            None => self.reason.clone(),
        }
    }
}

/// What the runtime directory looked like when something was missing: it decides the hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Volume {
    /// Not looked at (nothing missing).
    Unknown,
    Absent,
    Empty,
    Mounted,
    /// Absent or empty, and the links were checked against the volume's own manifest (`docker build`).
    Manifest,
}

/// The outcome of one check: everything resolved, everything missing, and notes on what could not be
/// checked (they never fail the check).
#[derive(Debug, Clone)]
pub struct Report {
    pub(super) command: Option<PathBuf>,
    pub(super) runtime_dir: PathBuf,
    pub(super) resolved: Vec<Resolved>,
    pub(super) missing: Vec<Missing>,
    pub(super) notes: Vec<String>,
    /// Hints naming the fix for one missing entry (the link to add and where its file is in the volume).
    pub(super) hints: Vec<String>,
    pub(super) volume: Volume,
    /// Where the links into the runtime directory came from ("manifest", "scan", "volume-manifest", "none")
    /// and how many were checked.
    pub(super) links_source: &'static str,
    pub(super) links_checked: usize,
    /// Missing entries beyond MAX_MISSING, counted but not listed.
    pub(super) more_missing: usize,
    pub(super) work: Work,
    /// Libraries found nowhere, with the link that would let the loader find them.
    pub(super) suggested: Vec<(OsString, PathBuf)>,
    /// `check --write-manifest` could not write the manifest.
    pub(super) write_error: Option<String>,
    /// De-duplication keys: one lookup per entry instead of a walk over every entry so far.
    seen_resolved: HashSet<(Kind, PathBuf)>,
    seen_missing: HashSet<(PathBuf, Option<PathBuf>)>,
}

impl Report {
    pub(super) fn new(runtime_dir: PathBuf) -> Report {
        Report {
            command: None,
            runtime_dir,
            resolved: Vec::new(),
            missing: Vec::new(),
            notes: Vec::new(),
            hints: Vec::new(),
            volume: Volume::Unknown,
            links_source: "none",
            links_checked: 0,
            more_missing: 0,
            work: Work::default(),
            write_error: None,
            suggested: Vec::new(),
            seen_resolved: HashSet::new(),
            seen_missing: HashSet::new(),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.missing.is_empty()
    }

    /// The stderr message when not ok: one "microinit: runtime missing: …" line per missing piece, then
    /// hints that match the situation (volume not mounted, or mounted but a link missing).
    pub fn missing_message(&self, cfg: &RuntimeCheckConfig) -> String {
        self.message(&cfg.runtime_dir)
    }

    pub(super) fn message(&self, runtime_dir: &Path) -> String {
        let mut s = String::new();
        for m in &self.missing {
            s.push_str(&m.line());
            s.push('\n');
        }
        if self.more_missing > 0 {
            s.push_str(&format!(
                "microinit: runtime missing: ... and {} more (not listed)\n",
                self.more_missing
            ));
        }
        for h in &self.hints {
            s.push_str(&format!("microinit: hint: {}\n", escape(h)));
        }
        let dir = escape(&runtime_dir.display().to_string());
        let tail =
            "--wait-runtime DURATION waits for a late volume, --no-runtime-check skips this check";
        let general = match self.volume {
            Volume::Absent | Volume::Empty | Volume::Unknown => format!(
                "the runtime volume is not mounted: {dir} is {} (--runtime-dir / MICROINIT_RUNTIME_DIR); start \
                 the container with it, e.g. `docker run --volumes-from filebox ...`; {tail}",
                if self.volume == Volume::Empty { "empty" } else { "missing" }
            ),
            Volume::Mounted => format!(
                "the runtime volume is mounted at {dir} but the image and the volume do not match: add the \
                 links named above to the image (scripts/filebox.sh writes them to its links/ tree), or rebuild \
                 the volume with what they point at; {tail}"
            ),
            Volume::Manifest => format!(
                "{dir} is not mounted (as at `docker build`), so the image's links were checked against the \
                 volume's manifest (--volume-manifest): each link above points at nothing the volume provides; \
                 add the file to the volume (scripts/filebox.sh) or remove the link"
            ),
        };
        s.push_str(&format!("microinit: hint: {general}\n"));
        s
    }

    /// The `microinit check` report: everything resolved, notes, what is missing, and the verdict. Every
    /// name is escaped: a file name with a newline cannot forge a line of the report.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        match &self.command {
            Some(c) => s.push_str(&format!(
                "microinit check: {}\n",
                escape(&c.display().to_string())
            )),
            None => {
                s.push_str("microinit check: no command (runtime directory and --require only)\n")
            }
        }
        if !self.resolved.is_empty() {
            s.push_str("resolved:\n");
        }
        // A link already shown as the command, interpreter or library it is needs no second line.
        let shown: HashSet<&Path> = self
            .resolved
            .iter()
            .filter(|r| r.kind != Kind::Symlink)
            .map(|r| r.path.as_path())
            .collect();
        for r in &self.resolved {
            if r.kind == Kind::Symlink && shown.contains(r.path.as_path()) {
                continue;
            }
            let mut line = format!("  {:<18} {}", r.kind.as_str(), r.path.display());
            if r.found != r.path {
                line.push_str(&format!(" -> {}", r.found.display()));
            }
            if let Some(by) = &r.needed_by {
                line.push_str(&format!("  (needed by {})", by.display()));
            }
            s.push_str(&escape(&line));
            s.push('\n');
        }
        for n in &self.notes {
            s.push_str(&format!("note: {}\n", escape(n)));
        }
        s.push_str(&format!(
            "links into the runtime directory: {} checked (source: {})\n",
            self.links_checked, self.links_source
        ));
        if self.is_ok() {
            s.push_str("result: ok, the runtime is complete\n");
        } else {
            s.push_str(&self.message(&self.runtime_dir));
            s.push_str(&format!(
                "result: {} missing (exit 127)\n",
                self.missing.len() + self.more_missing
            ));
        }
        s
    }

    /// The part `microinit status` shows: the verdict and what is missing.
    pub fn summary(&self) -> crate::control::status::RuntimeCheck {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        crate::control::status::RuntimeCheck {
            ok: self.is_ok(),
            missing: self
                .missing
                .iter()
                .map(|m| crate::control::status::Missing {
                    kind: m.kind.as_str().into(),
                    path: path(&m.path),
                    needed_by: m.needed_by.as_deref().map(path),
                    detail: m.detail(),
                })
                .collect(),
        }
    }

    /// `microinit check --json`. Names are exact here (JSON escapes them), lossy only where not UTF-8.
    pub fn to_json(&self) -> Value {
        let path = |p: &Path| Value::String(p.to_string_lossy().into_owned());
        let opt = |p: &Option<PathBuf>| p.as_deref().map_or(Value::Null, path);
        let w = &self.work;
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
            "more_missing": self.more_missing,
            "notes": self.notes,
            "hints": self.hints,
            "links": {"source": self.links_source, "checked": self.links_checked},
            "work": {"lstat": w.lstat, "readlink": w.readlink, "stat": w.stat, "open": w.open,
                     "getdents": w.getdents},
        })
    }

    pub(super) fn add_resolved(
        &mut self,
        kind: Kind,
        path: &Path,
        found: &Path,
        needed_by: Option<&Path>,
    ) {
        if self.seen_resolved.insert((kind, path.to_path_buf())) {
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

    /// One entry per path: the first (most specific) report of a path wins. Beyond MAX_MISSING entries are
    /// counted, not kept (a hostile image may miss thousands of libraries).
    pub(super) fn add_missing(&mut self, m: Missing) {
        if self
            .seen_missing
            .insert((m.path.clone(), m.needed_by.clone()))
        {
            if self.missing.len() < MAX_MISSING {
                self.missing.push(m);
            } else {
                self.more_missing += 1;
            }
        }
    }

    /// A library found nowhere: `hints` names this link when the volume has the file.
    pub(super) fn suggest_link(&mut self, name: &OsStr, link: PathBuf) {
        if self.suggested.len() < MAX_MISSING {
            self.suggested.push((name.to_os_string(), link));
        }
    }

    pub(super) fn is_missing(&self, path: &Path) -> bool {
        self.seen_missing.contains(&(path.to_path_buf(), None))
    }
}

/// Escapes control characters and backslashes of a name for line-oriented text (the report, the manifest):
/// `\n`, `\t`, `\r`, `\\`, else `\xHH`. Everything else (UTF-8 included) is kept.
pub(super) fn escape_bytes(raw: &[u8], out: &mut Vec<u8>) {
    for &b in raw {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
}

/// The inverse of `escape_bytes`; an invalid escape is kept as written.
pub(super) fn unescape_bytes(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        let next = text.get(i + 1).copied();
        let (byte, used) = match (b, next) {
            (b'\\', Some(b'\\')) => (b'\\', 2),
            (b'\\', Some(b'n')) => (b'\n', 2),
            (b'\\', Some(b't')) => (b'\t', 2),
            (b'\\', Some(b'r')) => (b'\r', 2),
            (b'\\', Some(b'x')) => match text
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => (v, 4),
                None => (b, 1),
            },
            _ => (b, 1),
        };
        out.push(byte);
        i += used;
    }
    out
}

/// `escape_bytes` for text that is already a string.
pub(super) fn escape(s: &str) -> String {
    if !s.bytes().any(|b| b == b'\\' || b < 0x20 || b == 0x7f) {
        return s.to_string();
    }
    let mut out = Vec::with_capacity(s.len() + 8);
    escape_bytes(s.as_bytes(), &mut out);
    // Only ASCII bytes were replaced by ASCII: still UTF-8.
    String::from_utf8_lossy(&out).into_owned()
}

/// "a, b, c" without repeats (PATH often lists a directory twice), at most 16 named (a crafted RUNPATH may
/// list thousands).
pub(super) fn join_paths<'p>(paths: impl Iterator<Item = &'p Path>) -> String {
    const SHOWN: usize = 16;
    let mut seen = HashSet::new();
    let unique: Vec<&Path> = paths.filter(|p| seen.insert(*p)).collect();
    let mut s = unique
        .iter()
        .take(SHOWN)
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if unique.len() > SHOWN {
        s.push_str(&format!(" and {} more", unique.len() - SHOWN));
    }
    s
}
