//! Command lookup with execvp's rules: a name containing '/' is used as is, anything else is searched in
//! PATH (default "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").
//!
//! Owns: turning CMD into the path that will be executed and the 126/127 distinction. Does not own: what
//! that file needs at run time (`runtime_check`).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a command could not be resolved to an executable file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// Nothing by that name (exit 127). Carries every path tried.
    NotFound { tried: Vec<PathBuf> },
    /// Found, but not executable or a directory (exit 126).
    NotExecutable { path: PathBuf, reason: String },
}

impl LookupError {
    pub fn exit_code(&self) -> i32 {
        match self {
            LookupError::NotFound { .. } => 127,
            LookupError::NotExecutable { .. } => 126,
        }
    }

    /// The errno execvp would have failed with (dialects report it in their own words).
    pub fn errno(&self) -> i32 {
        match self {
            LookupError::NotFound { .. } => libc::ENOENT,
            LookupError::NotExecutable { .. } => libc::EACCES,
        }
    }

    /// Not found, but a candidate is a symlink whose target is missing: a runtime volume not mounted
    /// (or not yet), which the runtime check explains better than "not found".
    pub fn is_dangling_link(&self) -> bool {
        match self {
            LookupError::NotFound { tried } => tried.iter().any(|p| p.symlink_metadata().is_ok()),
            LookupError::NotExecutable { .. } => false,
        }
    }

    /// One line for stderr, naming what was tried and what to do.
    pub fn message(&self, name: &OsStr) -> String {
        match self {
            LookupError::NotFound { tried } if tried.len() == 1 => format!(
                "command not found: {:?} (no such file; check the path or the image's contents)",
                tried[0]
            ),
            LookupError::NotFound { tried } => {
                let mut dirs: Vec<String> = Vec::new();
                for d in tried.iter().filter_map(|p| p.parent()) {
                    let d = d.display().to_string();
                    if !dirs.contains(&d) {
                        dirs.push(d);
                    }
                }
                format!(
                    "command not found: {} (searched PATH={}); set PATH or give an absolute path",
                    name.to_string_lossy(),
                    dirs.join(":")
                )
            }
            LookupError::NotExecutable { path, reason } => format!(
                "command not executable: {} ({reason}); chmod +x it or run it through its interpreter",
                path.display()
            ),
        }
    }
}

/// Resolve `name` like execvp does, with `path_var` as PATH (None → DEFAULT_PATH).
pub fn resolve(name: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, LookupError> {
    if name.is_empty() {
        // execvp("") fails with ENOENT without searching (joined to a PATH entry it would name the directory).
        return Err(LookupError::NotFound {
            tried: vec![PathBuf::new()],
        });
    }
    if name.as_bytes().contains(&b'/') {
        let p = PathBuf::from(name);
        return check_executable(&p).map(|()| p);
    }
    let path_var: OsString = path_var
        .map(OsStr::to_os_string)
        .unwrap_or_else(|| DEFAULT_PATH.into());
    let mut tried = Vec::new();
    // execvp keeps searching after EACCES and reports it only if nothing later matches.
    let mut first_denied: Option<LookupError> = None;
    for dir in path_var.as_bytes().split(|b| *b == b':') {
        // An empty PATH element means the current directory (POSIX).
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(dir))
        };
        let candidate = dir.join(name);
        match check_executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e @ LookupError::NotExecutable { .. }) => {
                first_denied.get_or_insert(e);
            }
            Err(LookupError::NotFound { .. }) => {}
        }
        tried.push(candidate);
    }
    Err(first_denied.unwrap_or(LookupError::NotFound { tried }))
}

fn check_executable(p: &Path) -> Result<(), LookupError> {
    match std::fs::metadata(p) {
        Err(_) => Err(LookupError::NotFound {
            tried: vec![p.to_path_buf()],
        }),
        Ok(m) if m.is_dir() => Err(LookupError::NotExecutable {
            path: p.to_path_buf(),
            reason: "is a directory".into(),
        }),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err(LookupError::NotExecutable {
            path: p.to_path_buf(),
            reason: "no execute permission".into(),
        }),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_in_default_path() {
        let p = resolve(OsStr::new("sh"), None).unwrap();
        assert!(p.ends_with("sh"));
    }

    #[test]
    fn missing_names_every_dir_tried() {
        let e = resolve(
            OsStr::new("no-such-cmd-xyz"),
            Some(OsStr::new("/bin:/usr/bin")),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 127);
        let msg = e.message(OsStr::new("no-such-cmd-xyz"));
        assert!(
            msg.contains("no-such-cmd-xyz") && msg.contains("PATH=/bin:/usr/bin"),
            "{msg}"
        );
    }

    #[test]
    fn directory_is_not_executable() {
        let e = resolve(OsStr::new("/tmp"), None).unwrap_err();
        assert_eq!(e.exit_code(), 126);
    }
}
