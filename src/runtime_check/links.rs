//! Links into the runtime directory from the standard directories, and `--require` paths.
//!
//! Owns: the link scan, `--require`.
//! Does not own: resolving one path (`resolve`).

use std::collections::HashSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::report::Kind;
use super::resolve::normalize;
use super::{Checker, MAX_DIR_ENTRIES, SCAN_DIRS};

impl Checker<'_> {
    pub(super) fn require(&mut self, p: &Path) {
        match self.resolve(p) {
            Ok(c) => self.report.add_resolved(Kind::Require, p, &c.real, None),
            Err(u) => self.missing(Kind::Require, p, None, u),
        }
    }

    /// Every symlink in the standard directories that points into the runtime directory must resolve.
    pub(super) fn scan_runtime_links(&mut self) {
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
