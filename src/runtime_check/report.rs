//! The runtime check's report: what resolved, what is missing, notes; rendered as text (for people and
//! stderr) or JSON (for scripts).
//!
//! Owns: the report entries, their de-duplication, the hint, text and JSON rendering.
//! Does not own: deciding what is missing (`resolve`, `program`, `loader`, `links`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::NO_SUCH_FILE;
use crate::config::RuntimeCheckConfig;

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
        format!("microinit: runtime missing: {}", self.describe())
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

/// The outcome of one check: everything resolved, everything missing, and notes on what could not be
/// checked (they never fail the check).
#[derive(Debug, Clone)]
pub struct Report {
    pub(super) command: Option<PathBuf>,
    pub(super) runtime_dir: PathBuf,
    pub(super) resolved: Vec<Resolved>,
    pub(super) missing: Vec<Missing>,
    pub(super) notes: Vec<String>,
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

    pub(super) fn message(&self, runtime_dir: &Path) -> String {
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

    pub(super) fn add_resolved(
        &mut self,
        kind: Kind,
        path: &Path,
        found: &Path,
        needed_by: Option<&Path>,
    ) {
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
    pub(super) fn add_missing(&mut self, m: Missing) {
        if !self
            .missing
            .iter()
            .any(|o| o.path == m.path && o.needed_by == m.needed_by)
        {
            self.missing.push(m);
        }
    }
}

/// "a, b, c" without repeats (PATH often lists a directory twice).
pub(super) fn join_paths<'p>(paths: impl Iterator<Item = &'p Path>) -> String {
    let mut seen = HashSet::new();
    paths
        .filter(|p| seen.insert(*p))
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
