//! Bounded reads of files from a possibly hostile image.
//!
//! Owns: how the check reads a file (size caps, never blocking).
//! Does not own: what the bytes mean.

use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::resolve::io_reason;
use super::MAX_CONFIG_FILE;

/// Opens a file of the image for reading, only if it is a regular file. O_NONBLOCK: should the file be swapped
/// for a FIFO between the caller's stat and this open, the open must not block PID 1; the fstat afterwards
/// refuses anything that is not a regular file (a FIFO, a device) before a single byte is read.
pub(super) fn open_regular(path: &Path) -> io::Result<(File, fs::Metadata)> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(if meta.is_dir() {
            "is a directory"
        } else {
            "not a regular file"
        }));
    }
    Ok((file, meta))
}

/// A small configuration file (ld.so.cache, ld-musl-ARCH.path, manifests) and its mtime in seconds.
/// Ok(None): absent. Err: present but unusable (not a regular file, larger than the cap, unreadable), with
/// the reason for the report.
pub(super) fn read_small(path: &Path) -> Result<Option<(Vec<u8>, i64)>, String> {
    // No stat first: a missing file is the common case and costs one failed open.
    let (file, meta) = match open_regular(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(io_reason(&e)),
    };
    let size = meta.len();
    if size > MAX_CONFIG_FILE {
        return Err(format!("larger than {} MiB", MAX_CONFIG_FILE >> 20));
    }
    let mut buf = Vec::with_capacity(size as usize);
    // take(): the size may grow after the fstat; the cap holds anyway.
    io::Read::read_to_end(&mut io::Read::take(file, MAX_CONFIG_FILE), &mut buf)
        .map_err(|e| io_reason(&e))?;
    Ok(Some((buf, meta.mtime())))
}

/// Reads a directory with getdents64 into `buf` (one buffer for a whole scan: no allocation per entry) and
/// calls `f(directory fd, name, d_type)` for each entry but "." and ".."; `f` returns false to stop.
/// Returns the number of getdents64 calls.
pub(super) fn read_dir_raw(
    dir: &Path,
    buf: &mut [u8],
    mut f: impl FnMut(RawFd, &CStr, u8) -> bool,
) -> io::Result<u32> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // O_NONBLOCK for the same reason as in open_regular; O_DIRECTORY refuses anything else.
    // SAFETY: NUL-terminated path; the fd is owned right below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut calls = 0;
    loop {
        calls += 1;
        // SAFETY: buf is writable for its length; the kernel fills it with linux_dirent64 records.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        let Ok(n) = usize::try_from(n) else {
            return Err(io::Error::last_os_error());
        };
        if n == 0 {
            return Ok(calls);
        }
        // linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name (NUL-terminated).
        let mut at = 0;
        while at + 19 < n {
            let reclen = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
            if reclen < 20 || at + reclen > n {
                break;
            }
            let d_type = buf[at + 18];
            if let Ok(name) = CStr::from_bytes_until_nul(&buf[at + 19..at + reclen]) {
                let dots = matches!(name.to_bytes(), b"." | b"..");
                if !dots && !f(fd.as_raw_fd(), name, d_type) {
                    return Ok(calls);
                }
            }
            at += reclen;
        }
    }
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
