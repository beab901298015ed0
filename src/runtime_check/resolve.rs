//! Paths inside the image root: our own symlink walk (so a dangling link is reported with its chain and the
//! check behaves the same in a chroot as in the image), with a per-check memo of lstat/readlink results.
//!
//! Owns: image path ↔ host path, the kernel-like symlink walk (MAXSYMLINKS), the "missing"/"broken" entries.
//! Does not own: what a resolved file contains (`program`, `elf`).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
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

/// Drops the last component of an absolute path in bytes ("/" stays "/").
fn pop(done: &mut Vec<u8>) {
    let cut = done.iter().rposition(|b| *b == b'/').unwrap_or(0);
    done.truncate(cut.max(1));
}

/// `base` (absolute) followed by `rest`, with "." and ".." applied lexically: where a link in the chain points.
fn lexical(base: &[u8], rest: &[u8]) -> PathBuf {
    let mut now = base.to_vec();
    for c in rest
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
    {
        if c == b".." {
            pop(&mut now);
        } else {
            if now.len() > 1 {
                now.push(b'/');
            }
            now.extend_from_slice(c);
        }
    }
    PathBuf::from(OsString::from_vec(now))
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
    ///
    /// On bytes, with one buffer for the path walked so far and one for what is left: this runs for every
    /// path the check looks at (each candidate library), so it allocates only for a link's target and the
    /// chain's hops, not per component.
    pub(super) fn resolve(&self, p: &Path) -> Result<Canon, Unresolved> {
        let as_path = |b: &[u8]| PathBuf::from(OsStr::from_bytes(b));
        // What is left to walk, a component at a time from the front ("/" and "." are no components).
        let mut todo: Vec<u8> = self.absolute(p).into_os_string().into_vec();
        let mut at = 0;
        // Room for the usual path from the start: growing it component by component was a realloc each.
        let mut done: Vec<u8> = Vec::with_capacity(todo.len().max(64) + 64);
        done.push(b'/');
        let mut hops = Vec::new();
        let mut links = 0;
        loop {
            while todo.get(at) == Some(&b'/') {
                at += 1;
            }
            if at >= todo.len() {
                break;
            }
            let end = todo[at..]
                .iter()
                .position(|b| *b == b'/')
                .map_or(todo.len(), |n| at + n);
            let part = at..end;
            at = end;
            match &todo[part.clone()] {
                b"." => continue,
                b".." => {
                    pop(&mut done);
                    continue;
                }
                _ => {}
            }
            let before = done.len();
            if done.len() > 1 {
                done.push(b'/');
            }
            done.extend_from_slice(&todo[part]);
            let node = match self.node(Path::new(OsStr::from_bytes(&done))) {
                Ok(n) => n,
                Err(errno) => {
                    let reason = io_reason(&io::Error::from_raw_os_error(errno));
                    return Err(Unresolved {
                        hops,
                        at: as_path(&done),
                        reason,
                    });
                }
            };
            // No component left ("." is none, as for Path::components).
            let rest_is_empty = todo[at..]
                .split(|b| *b == b'/')
                .all(|c| c.is_empty() || c == b".");
            match node {
                Node::Link(target) => {
                    links += 1;
                    if links > MAX_LINKS {
                        let reason = format!("symlink loop (more than {MAX_LINKS} links)");
                        return Err(Unresolved {
                            hops,
                            at: as_path(&done),
                            reason,
                        });
                    }
                    // The link's own name is not part of the path: its target replaces it (an absolute one
                    // restarts at the root).
                    done.truncate(before);
                    let target = target.as_os_str().as_bytes();
                    if target.first() == Some(&b'/') {
                        done.truncate(1);
                    }
                    let mut next = target.to_vec();
                    next.push(b'/');
                    next.extend_from_slice(&todo[at..]);
                    todo = next;
                    at = 0;
                    // Only a link that is the whole path so far is a hop of the chain ("a -> b"); a directory
                    // link on the way (/lib -> usr/lib) is not what the person named.
                    if rest_is_empty {
                        hops.push(lexical(&done, &todo));
                    }
                }
                Node::Dir => {}
                Node::Other if rest_is_empty => {}
                Node::Other => {
                    let reason = "a path component is not a directory".into();
                    return Err(Unresolved {
                        hops,
                        at: as_path(&done),
                        reason,
                    });
                }
            }
        }
        Ok(Canon {
            real: as_path(&done),
            hops,
        })
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
