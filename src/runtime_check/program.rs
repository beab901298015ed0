//! Programs: the command found through PATH like execvp, what a file is (ELF or `#!` script), and the
//! interpreter of a script (also the program behind `#!/usr/bin/env NAME`).
//!
//! Owns: the command lookup inside the root, `#!` parsing with the kernel's limits.
//! Does not own: PATH search rules (`which`), ELF parsing (`elf`), library search (`loader`).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::elf::{self, Elf, Prefetched, SizedFile};
use super::files::{open_regular, read_head};
use super::report::{join_paths, Kind, Missing};
use super::resolve::{io_reason, Canon};
use super::which::{self, LookupError};
use super::{Checker, HEAD_BYTES, MAX_SCRIPT_DEPTH, NO_SUCH_FILE, SHEBANG_BYTES};

/// What a file turned out to be.
pub(super) enum Content {
    Elf(Elf),
    /// The `#!` line, without "#!" and the newline.
    Script(Vec<u8>),
    /// Neither ELF nor script (or not a regular file).
    Other,
    /// Could not be opened (typically permission denied as a non-root user).
    Unreadable(String),
}

impl Checker<'_> {
    /// Opens a resolved file and looks at its first bytes (and ELF headers). Err: corrupt ELF.
    pub(super) fn inspect(&self, real: &Path) -> Result<Content, String> {
        let host = self.host(real);
        self.count(|w| w.stat += 1);
        let meta = fs::metadata(&host).map_err(|e| io_reason(&e))?;
        if meta.is_dir() {
            return Err("is a directory".into());
        }
        // A FIFO or a device is never opened (a FIFO would block, a device may act on open).
        if !meta.is_file() {
            return Ok(Content::Other);
        }
        self.count(|w| w.open += 1);
        let (file, size) = match open_regular(&host) {
            Ok((f, m)) => (f, m.len()),
            Err(e) => return Ok(Content::Unreadable(io_reason(&e))),
        };
        let mut head = [0u8; HEAD_BYTES];
        let n = read_head(&file, &mut head).map_err(|e| format!("read error: {e}"))?;
        let head = &head[..n];
        if head.starts_with(b"\x7fELF") {
            let file = SizedFile { file: &file, size };
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
    pub(super) fn command(&mut self, name: &OsStr) {
        self.report.command = Some(PathBuf::from(name));
        if let Some(path) = self.lookup(name, Kind::Command, None) {
            self.report.command = Some(path.clone());
            self.program(&path, Kind::Command, None, 0);
        }
    }

    /// `which::resolve` inside the root. On failure, reports the first dangling link among the candidates
    /// (the usual microcontainer failure) or else everything searched.
    pub(super) fn lookup(
        &mut self,
        name: &OsStr,
        kind: Kind,
        needed_by: Option<&Path>,
    ) -> Option<PathBuf> {
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
    pub(super) fn program(
        &mut self,
        named: &Path,
        kind: Kind,
        needed_by: Option<&Path>,
        depth: usize,
    ) {
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
    pub(super) fn script(&mut self, script: &Canon, line: &[u8], depth: usize) {
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
}

/// The program `#!/usr/bin/env ARG` runs. Without -S the kernel passes ARG as one word, and env looks for a
/// program of exactly that name; with -S env splits it, skipping options and VAR=value assignments.
pub(super) fn env_program(arg: &[u8]) -> Option<&[u8]> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
