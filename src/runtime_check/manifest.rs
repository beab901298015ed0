//! The image-time manifest of links into the runtime directory (`microinit check --write-manifest`, a
//! Dockerfile RUN step or scripts/filebox.sh): at start PID 1 checks exactly those links instead of scanning
//! the standard directories.
//!
//! Owns: the manifest's format, writing it, deciding whether it still describes the image.
//! Does not own: which links are checked (`links`).
//!
//! Format (text, one record a line, names escaped like the report so a newline in a name stays one line):
//!   microinit-links 1
//!   runtime-dir /opt/files
//!   dir MTIME|- PATH        each scanned directory with its mtime in seconds ("-": it did not exist)
//!   link PATH               each link into the runtime directory
//!
//! Validity: adding or removing a link changes its directory's mtime, so the manifest holds while every directory
//! still has the recorded mtime. Seconds only: image layers keep whole seconds (the tar format), and a pulled image
//! must not look changed. A change within the recorded second would not show: the manifest is written only once that
//! second is over (`settle`), so every later change lands in a later one. A build that clamps timestamps
//! (SOURCE_DATE_EPOCH) can give a changed directory its old mtime back; hence a second rule: every directory must be
//! strictly older than the manifest file (whose mtime is set past the newest directory when it is written). Clamping
//! makes them equal, so a clamped image falls back to the scan: correct, at the scan's cost.

use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::files::read_small;
use super::report::{escape_bytes, unescape_bytes};
use super::resolve::normalize;
use super::Checker;

const MAGIC: &[u8] = b"microinit-links 1";

/// What a scan found, as a manifest records it.
#[derive(Default)]
pub(super) struct ManifestOut {
    /// Each scanned directory (as named) and its mtime in seconds, `None` when absent.
    pub(super) dirs: Vec<(PathBuf, Option<i64>)>,
    pub(super) links: Vec<PathBuf>,
    /// A scan's directory mtimes to the nanosecond (seconds, nanoseconds), as `dirs`; empty when read back.
    pub(super) exact: Vec<Option<(i64, i64)>>,
}

/// A manifest read back.
pub(super) struct Manifest {
    runtime_dir: PathBuf,
    scan: ManifestOut,
    /// The manifest file's own mtime (seconds).
    mtime: i64,
}

fn path_of(escaped: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_bytes(escaped)))
}

fn parse(data: &[u8], mtime: i64) -> Result<Manifest, String> {
    let mut lines = data.split(|b| *b == b'\n');
    if lines.next() != Some(MAGIC) {
        return Err("not a manifest written by `microinit check --write-manifest`".into());
    }
    let mut m = Manifest {
        runtime_dir: PathBuf::new(),
        scan: ManifestOut::default(),
        mtime,
    };
    for (n, line) in lines.enumerate() {
        let bad = || format!("line {} is not a manifest record", n + 2);
        if line.is_empty() {
            continue;
        } else if let Some(rest) = line.strip_prefix(b"runtime-dir ") {
            m.runtime_dir = path_of(rest);
        } else if let Some(rest) = line.strip_prefix(b"dir ") {
            let sp = rest.iter().position(|b| *b == b' ').ok_or_else(bad)?;
            let stamp = match &rest[..sp] {
                b"-" => None,
                s => Some(
                    std::str::from_utf8(s)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(bad)?,
                ),
            };
            m.scan.dirs.push((path_of(&rest[sp + 1..]), stamp));
        } else if let Some(rest) = line.strip_prefix(b"link ") {
            m.scan.links.push(path_of(rest));
        } else {
            return Err(bad());
        }
    }
    Ok(m)
}

impl Manifest {
    pub(super) fn links(&self) -> &[PathBuf] {
        &self.scan.links
    }
}

impl Checker<'_> {
    /// The mtime (seconds) of an image directory, following links; `None` when absent.
    pub(super) fn mtime(&self, dir: &Path) -> Option<i64> {
        self.mtime_exact(dir).map(|t| t.0)
    }

    /// The mtime (seconds, nanoseconds) of an image directory, following links; `None` when absent.
    pub(super) fn mtime_exact(&self, dir: &Path) -> Option<(i64, i64)> {
        self.count(|w| w.stat += 1);
        fs::metadata(self.host(dir))
            .ok()
            .map(|m| (m.mtime(), m.mtime_nsec()))
    }

    /// The same-second gap: a link made after the scan but within the second its directory's recorded
    /// mtime falls in would leave that mtime's seconds as recorded, and the manifest would pass at start
    /// without the link. So the manifest is written only once that second is over (waiting up to a second,
    /// at image build time only): from then on any change gives its directory a later second. A change
    /// between the scan and that moment shows in the nanoseconds and fails the write (run it again).
    fn settle(&self, out: &ManifestOut) -> io::Result<()> {
        // The file system stamps changes from the kernel's coarse clock, which lags the precise one by up
        // to a tick: the second is over when that clock says so.
        let now = || {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: t is a valid out-pointer; on failure it stays zero, which ends the wait below.
            unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut t) };
            t
        };
        let newest = out.dirs.iter().filter_map(|d| d.1).max();
        // The current second is waited out, and the next one when a directory is already dated in it (a
        // fine-grained stamp can run a tick ahead of the coarse clock). A directory dated further ahead gets
        // an earlier mtime from any change made now, which shows anyway.
        while let Some(newest) = newest {
            let t = now();
            if newest < t.tv_sec || newest > t.tv_sec + 1 {
                break;
            }
            let left = 1_000_000_000 - t.tv_nsec.clamp(0, 999_999_999);
            std::thread::sleep(Duration::from_nanos(u64::try_from(left).unwrap_or(0)));
        }
        for ((dir, _), exact) in out.dirs.iter().zip(&out.exact) {
            if self.mtime_exact(dir) != *exact {
                return Err(io::Error::other(format!(
                    "{} changed while the manifest was being written; run the check again",
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// Ok(None): no manifest. Err: one that cannot be used, with the reason.
    pub(super) fn read_manifest(&self, file: &Path) -> Result<Option<Manifest>, String> {
        self.count(|w| w.open += 1);
        match read_small(&self.host(file))? {
            None => Ok(None),
            Some((data, mtime)) => parse(&data, mtime).map(Some),
        }
    }

    /// Why the manifest no longer describes the image, if it does not.
    pub(super) fn stale(&self, m: &Manifest) -> Option<String> {
        let runtime = normalize(&self.absolute(&self.cfg.runtime_dir));
        if m.runtime_dir != runtime {
            return Some(format!(
                "written for the runtime directory {}",
                m.runtime_dir.display()
            ));
        }
        if m.scan.dirs.is_empty() {
            return Some("it lists no directories".into());
        }
        for (dir, stamp) in &m.scan.dirs {
            let now = self.mtime(dir);
            if now != *stamp {
                return Some(format!("{} changed after it was written", dir.display()));
            }
            if now.is_some_and(|t| t >= m.mtime) {
                return Some(format!(
                    "{} is not older than the manifest (timestamps clamped by the build?)",
                    dir.display()
                ));
            }
        }
        None
    }

    /// `check --write-manifest`, after a check that passed.
    pub(super) fn write_manifest(&mut self, out: &ManifestOut) {
        let file = self.cfg.links_manifest.clone();
        match self.write_manifest_file(&file, out) {
            Ok(()) => self.report.notes.push(format!(
                "wrote {}: {} links into {}, {} directories",
                file.display(),
                out.links.len(),
                self.cfg.runtime_dir.display(),
                out.dirs.len()
            )),
            Err(e) => {
                self.report.write_error = Some(format!(
                    "cannot write the links manifest {}: {e}",
                    file.display()
                ))
            }
        }
    }

    fn write_manifest_file(&self, file: &Path, out: &ManifestOut) -> io::Result<()> {
        self.settle(out)?;
        let mut text = MAGIC.to_vec();
        let runtime = normalize(&self.absolute(&self.cfg.runtime_dir));
        text.extend_from_slice(b"\nruntime-dir ");
        escape_bytes(runtime.as_os_str().as_bytes(), &mut text);
        text.push(b'\n');
        for (dir, stamp) in &out.dirs {
            match stamp {
                Some(t) => text.extend_from_slice(format!("dir {t} ").as_bytes()),
                None => text.extend_from_slice(b"dir - "),
            }
            escape_bytes(dir.as_os_str().as_bytes(), &mut text);
            text.push(b'\n');
        }
        for link in &out.links {
            text.extend_from_slice(b"link ");
            escape_bytes(link.as_os_str().as_bytes(), &mut text);
            text.push(b'\n');
        }
        let host = self.host(file);
        if let Some(parent) = host.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut tmp = host.clone().into_os_string();
        tmp.push(".tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&text)?;
        // Strictly newer than every directory it describes (see the module doc), even within the second
        // the links were made in.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let newest = out.dirs.iter().filter_map(|d| d.1).max().unwrap_or(0);
        let stamp = now.max(u64::try_from(newest).unwrap_or(0) + 1);
        f.set_modified(UNIX_EPOCH + Duration::from_secs(stamp))?;
        drop(f);
        fs::rename(&tmp, &host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_a_newline_survives_the_manifest() {
        let mut text = MAGIC.to_vec();
        text.extend_from_slice(b"\nruntime-dir /opt/files\ndir 5 /usr/bin\ndir - /lib32\nlink ");
        escape_bytes(b"/usr/bin/a\nresult: ok", &mut text);
        text.push(b'\n');
        let m = parse(&text, 9).unwrap();
        assert_eq!(m.links(), [PathBuf::from("/usr/bin/a\nresult: ok")]);
        assert_eq!(
            m.scan.dirs,
            [("/usr/bin".into(), Some(5)), ("/lib32".into(), None)]
        );
    }

    #[test]
    fn a_file_that_is_not_a_manifest_is_refused() {
        assert!(parse(b"/usr/bin/node -> /opt/files/node\n", 0).is_err());
        assert!(parse(b"microinit-links 1\ndir x /usr/bin\n", 0).is_err());
        assert!(parse(b"microinit-links 1\nbogus\n", 0).is_err());
    }
}
