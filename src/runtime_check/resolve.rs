//! Paths inside the image root: our own symlink walk (so a dangling link is reported with its chain and the
//! check behaves the same in a chroot as in the image), with a per-check memo of lstat/readlink results.
//!
//! Owns: image path ↔ host path, the kernel-like symlink walk (MAXSYMLINKS), the "missing"/"broken" entries.
//! Does not own: what a resolved file contains (`program`, `elf`).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::report::{Kind, Missing};
use super::{Checker, MAX_LINKS, NO_SUCH_FILE};

/// `p` (absolute, inside the image) as a path on this machine.
pub(super) fn host_path(root: &Path, p: &Path) -> PathBuf {
    if root == Path::new("/") {
        p.to_path_buf()
    } else {
        root.join(p.strip_prefix("/").unwrap_or(p))
    }
}

/// Removes "." and resolves ".." lexically (for comparing link targets, not for opening).
pub(super) fn normalize(p: &Path) -> PathBuf {
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

pub(super) fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => NO_SUCH_FILE.into(),
        Some(libc::EACCES) => "permission denied".into(),
        Some(libc::ENOTDIR) => "a path component is not a directory".into(),
        _ => e.to_string(),
    }
}

/// A path resolved inside the root: the real path and each step of its symlink chain (the path after each
/// link that was the whole path at that point).
pub(super) struct Canon {
    pub(super) real: PathBuf,
    pub(super) hops: Vec<PathBuf>,
}

/// Why a path did not resolve, with the chain followed so far and the first path that was not there.
pub(super) struct Unresolved {
    pub(super) hops: Vec<PathBuf>,
    pub(super) at: PathBuf,
    pub(super) reason: String,
}

/// One path's lstat, as far as resolving needs it.
#[derive(Clone)]
pub(super) enum Node {
    Link(PathBuf),
    Dir,
    Other,
}

impl Checker<'_> {
    pub(super) fn host(&self, p: &Path) -> PathBuf {
        host_path(&self.cfg.root, p)
    }

    /// Relative paths are relative to the working directory (in a test root: to its top).
    pub(super) fn absolute(&self, p: &Path) -> PathBuf {
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
    pub(super) fn node(&self, p: &Path) -> Result<Node, i32> {
        if let Some(n) = self.nodes.borrow().get(p.as_os_str()) {
            return n.clone();
        }
        let host = self.host(p);
        self.count(|w| w.lstat += 1);
        let node = match fs::symlink_metadata(&host) {
            Err(e) => Err(e),
            Ok(m) if m.file_type().is_symlink() => {
                self.count(|w| w.readlink += 1);
                fs::read_link(&host).map(Node::Link)
            }
            Ok(m) if m.is_dir() => Ok(Node::Dir),
            Ok(_) => Ok(Node::Other),
        }
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
        self.nodes
            .borrow_mut()
            .insert(p.as_os_str().to_os_string(), node.clone());
        node
    }

    /// Resolves `p` inside the root, following symlinks like the kernel (absolute targets restart at the
    /// root, at most MAX_LINKS links).
    pub(super) fn resolve(&self, p: &Path) -> Result<Canon, Unresolved> {
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

    pub(super) fn missing(
        &mut self,
        kind: Kind,
        path: &Path,
        needed_by: Option<&Path>,
        u: Unresolved,
    ) {
        // At `docker build` the volume is not there: a path into it is fine when the volume's manifest lists
        // it. The path being resolved when the walk stopped is the last hop (or the path itself).
        if let Some(files) = &self.volume_files {
            let target = normalize(&self.absolute(u.hops.last().map_or(path, PathBuf::as_path)));
            if files.contains(&target) {
                self.report.add_resolved(kind, path, &target, needed_by);
                return;
            }
        }
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
    pub(super) fn broken(
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
}
