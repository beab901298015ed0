//! Links into the runtime directory from the standard directories, and `--require` paths.
//!
//! Owns: which links are checked (the manifest's when it is valid, else a scan when asked or when the
//! manifest is out of date), the scan itself, `--require`.
//! Does not own: resolving one path (`resolve`), the manifest's format (`manifest`).
//!
//! The scan reads each directory with getdents64 into one buffer and readlinkat(2)s only entries of type
//! link: no allocation and no path building per entry; only a link whose target can point into the runtime
//! directory becomes a path.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::files::read_dir_raw;
use super::manifest::ManifestOut;
use super::report::Kind;
use super::resolve::normalize;
use super::{Checker, SCAN_DIRS};

/// At most this many multiarch directories (/usr/lib/x86_64-linux-gnu …) per base directory.
const MAX_MULTIARCH: usize = 64;

impl Checker<'_> {
    pub(super) fn require(&mut self, p: &Path) {
        match self.resolve(p) {
            Ok(c) => self.report.add_resolved(Kind::Require, p, &c.real, None),
            Err(u) => self.missing(Kind::Require, p, None, u),
        }
    }

    /// The image-wide guarantee, "every link into the runtime directory resolves", at the cost of the links:
    /// the manifest written at image build time lists them. Without one, the standard directories are
    /// scanned only when asked (`--scan-runtime-links`), since the scan costs what the image holds.
    pub(super) fn runtime_links(&mut self) {
        if self.cfg.write_manifest {
            self.report.links_source = "scan";
            self.manifest_out = Some(self.scan());
            return;
        }
        let file = self.cfg.links_manifest.clone();
        let why = match self.read_manifest(&file) {
            Ok(Some(m)) => match self.stale(&m) {
                None => {
                    self.report.links_source = "manifest";
                    for link in m.links() {
                        self.check_link(link);
                    }
                    return;
                }
                Some(why) => why,
            },
            Ok(None) if self.cfg.scan_links => {
                self.report.links_source = "scan";
                self.scan();
                return;
            }
            Ok(None) => return,
            Err(why) => why,
        };
        let note = format!(
            "links manifest {}: {why}; scanned the standard directories instead",
            file.display()
        );
        log::info!("runtime check: {note}");
        self.report.notes.push(note);
        self.report.links_source = "scan";
        self.scan();
    }

    pub(super) fn check_link(&mut self, link: &Path) {
        if self.report.is_missing(link) {
            return;
        }
        self.report.links_checked += 1;
        match self.resolve(link) {
            Ok(c) => self.report.add_resolved(Kind::Symlink, link, &c.real, None),
            Err(u) => self.missing(Kind::Symlink, link, None, u),
        }
    }

    /// Every link in the standard directories (and the multiarch ones) that points into the runtime
    /// directory is checked. Returns what a manifest records: the directories with their mtimes, the links.
    pub(super) fn scan(&mut self) -> ManifestOut {
        let runtime = normalize(&self.absolute(&self.cfg.runtime_dir));
        // A target can only lead into the runtime directory if it names the directory's last component,
        // unless the directory scanned lies under it: a byte search, before any path is built.
        let needle = runtime
            .file_name()
            .map_or(&[][..], |n| n.as_bytes())
            .to_vec();
        let mut buf = vec![0u8; 32 << 10];
        let mut dirs: Vec<PathBuf> = SCAN_DIRS.iter().map(PathBuf::from).collect();
        for base in ["/lib", "/usr/lib"] {
            let Ok(canon) = self.resolve(Path::new(base)) else {
                continue;
            };
            let mut found = Vec::new();
            let calls = read_dir_raw(&self.host(&canon.real), &mut buf, |_, name, _| {
                if name.to_bytes().windows(7).any(|w| w == b"-linux-") {
                    found.push(Path::new(base).join(OsStr::from_bytes(name.to_bytes())));
                }
                found.len() < MAX_MULTIARCH
            });
            self.count(|w| w.getdents += calls.unwrap_or(0));
            found.sort();
            dirs.extend(found);
        }
        let mut out = ManifestOut::default();
        let mut seen = HashSet::new();
        let mut left = self.scan_cap;
        let mut target = vec![0u8; libc::PATH_MAX as usize];
        for dir in dirs {
            // Before the directory is read: a change during the scan shows in it (`settle`).
            let exact = self.mtime_exact(&dir);
            out.dirs.push((dir.clone(), exact.map(|t| t.0)));
            out.exact.push(exact);
            // /bin is often a link to usr/bin: scan each real directory once, under its first name.
            let Ok(canon) = self.resolve(&dir) else {
                continue;
            };
            if !seen.insert(canon.real.clone()) {
                continue;
            }
            let real = canon.real;
            let under = needle.is_empty()
                || real
                    .components()
                    .any(|c| c.as_os_str().as_bytes() == needle);
            let (mut readlinks, mut stopped) = (0u32, false);
            let mut links = Vec::new();
            let calls = read_dir_raw(&self.host(&real), &mut buf, |fd, name, d_type| {
                if left == 0 {
                    stopped = true;
                    return false;
                }
                left -= 1;
                if d_type != libc::DT_LNK && d_type != libc::DT_UNKNOWN {
                    return true;
                }
                readlinks += 1;
                // SAFETY: fd is the open directory, name is NUL-terminated, target is writable for its
                // length; readlinkat does not NUL-terminate, the length it returns is used.
                let n = unsafe {
                    libc::readlinkat(fd, name.as_ptr(), target.as_mut_ptr().cast(), target.len())
                };
                let Ok(n) = usize::try_from(n) else {
                    return true;
                };
                let t = &target[..n];
                if !under && !t.windows(needle.len()).any(|w| w == needle) {
                    return true;
                }
                // An absolute target replaces the directory in join().
                if normalize(&real.join(OsStr::from_bytes(t))).starts_with(&runtime) {
                    links.push(dir.join(OsStr::from_bytes(name.to_bytes())));
                }
                true
            });
            self.count(|w| {
                w.getdents += calls.unwrap_or(0);
                w.readlink += readlinks;
            });
            for link in links {
                self.check_link(&link);
                out.links.push(link);
            }
            if stopped {
                self.capped(format!(
                    "the link scan stopped after {} directory entries (in {}): links after that were not \
                     checked",
                    self.scan_cap,
                    dir.display()
                ));
                break;
            }
        }
        out
    }
}
