//! The runtime volume itself: whether it is mounted, its own manifest at `docker build` time, and the hints
//! that depend on it.
//!
//! Owns: the volume's state (absent, empty, mounted), reading the volume manifest (filebox's symlinks.txt),
//! the hints naming the fix.
//! Does not own: the links checked (`links`), the wording of the general hint (`report`).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::files::{read_dir_raw, read_small};
use super::report::Volume;
use super::resolve::normalize;
use super::Checker;

impl Checker<'_> {
    /// Absent, empty, or mounted (anything in it): one getdents64 at most.
    fn volume_state(&self) -> Volume {
        let dir = self.host(&self.absolute(&self.cfg.runtime_dir));
        let mut buf = [0u8; 1024];
        let mut any = false;
        match read_dir_raw(&dir, &mut buf, |_, _, _| {
            any = true;
            false
        }) {
            Err(_) => Volume::Absent,
            Ok(calls) => {
                self.count(|w| w.getdents += calls);
                if any {
                    Volume::Mounted
                } else {
                    Volume::Empty
                }
            }
        }
    }

    /// At `docker build` the runtime directory is absent or empty. When the image carries the volume's own
    /// manifest (scripts/filebox.sh puts symlinks.txt at /etc/microinit/volume-links.txt in its links/
    /// tree), paths into the runtime directory are checked against what the volume will provide.
    pub(super) fn volume_manifest(&mut self) {
        // Only `check` at image build time names one; the file first, then the volume's state.
        let Some(file) = self.cfg.volume_manifest.clone() else {
            return;
        };
        self.count(|w| w.open += 1);
        let read = read_small(&self.host(&file));
        if matches!(read, Ok(None)) {
            return;
        }
        let state = self.volume_state();
        if state == Volume::Mounted {
            return;
        }
        let data = match read {
            Ok(d) => d.map(|(data, _)| data).unwrap_or_default(),
            Err(why) => {
                let note = format!("ignored the volume manifest {}: {why}", file.display());
                return self.capped(note);
            }
        };
        // "LINK -> TARGET" lines: the targets are the volume's files. A bare path is a file too.
        let files: HashSet<PathBuf> = data
            .split(|b| *b == b'\n')
            .map(|line| {
                let at = line.windows(4).rposition(|w| w == b" -> ");
                line[at.map_or(0, |i| i + 4)..].trim_ascii()
            })
            .filter(|t| !t.is_empty())
            .map(|t| normalize(&self.absolute(Path::new(OsStr::from_bytes(t)))))
            .collect();
        self.report.notes.push(format!(
            "{} is {} (as at `docker build`): paths into it were checked against the volume manifest {} \
             ({} files); what those files need is checked when the volume is mounted",
            self.cfg.runtime_dir.display(),
            if state == Volume::Empty { "empty" } else { "absent" },
            file.display(),
            files.len()
        ));
        self.report.volume = Volume::Manifest;
        self.volume_files = Some(files);
    }

    /// Something is missing: say whether the volume is there, and for each library found nowhere whose file
    /// the mounted volume has, the link to add.
    pub(super) fn hints(&mut self) {
        if self.report.volume != Volume::Manifest {
            self.report.volume = self.volume_state();
        }
        if self.report.volume != Volume::Mounted {
            return;
        }
        let dir = normalize(&self.absolute(&self.cfg.runtime_dir));
        for (name, link) in std::mem::take(&mut self.report.suggested) {
            let file = dir.join(&name);
            self.count(|w| w.stat += 1);
            if fs::metadata(self.host(&file)).is_ok_and(|m| m.is_file()) {
                self.report.hints.push(format!(
                    "the volume has {} at {}, but the image has no link where the loader looks: add the link \
                     {} -> {} to the image",
                    Path::new(&name).display(),
                    file.display(),
                    link.display(),
                    file.display()
                ));
            }
        }
    }
}
