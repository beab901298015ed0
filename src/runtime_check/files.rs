//! Bounded reads of files from a possibly hostile image.
//!
//! Owns: how the check reads a file (size caps, never blocking).
//! Does not own: what the bytes mean.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::MAX_CONFIG_FILE;

/// A small configuration file (ld.so.cache, ld-musl-ARCH.path), or `None` when absent or oversized.
pub(super) fn read_small(path: &Path) -> Option<Vec<u8>> {
    let f = File::open(path).ok()?;
    if f.metadata().ok()?.len() > MAX_CONFIG_FILE {
        return None;
    }
    let mut buf = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(f, MAX_CONFIG_FILE), &mut buf).ok()?;
    Some(buf)
}

/// Reads up to `buf.len()` bytes from the start of the file.
pub(super) fn read_head(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
