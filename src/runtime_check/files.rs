//! Bounded reads of files from a possibly hostile image.
//!
//! Owns: how the check reads a file (size caps, never blocking).
//! Does not own: what the bytes mean.

use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use super::resolve::io_reason;
use super::MAX_CONFIG_FILE;

/// Opens a file of the image for reading, only if it is a regular file. O_NONBLOCK: should the file be swapped
/// for a FIFO between the caller's stat and this open, the open must not block PID 1; the fstat afterwards
/// refuses anything that is not a regular file (a FIFO, a device) before a single byte is read.
pub(super) fn open_regular(path: &Path) -> io::Result<(File, fs::Metadata)> {
    let file = File::from(open_raw(path, libc::O_RDONLY | libc::O_NONBLOCK)?);
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

/// openat(2) with O_CLOEXEC, straight to the kernel: musl's open() follows an O_CLOEXEC open with an
/// fcntl(F_SETFD) for kernels older than 2.6.23, one syscall per file on the start-up path.
fn open_raw(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: NUL-terminated path; the returned fd is owned right below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            0,
        )
    };
    let fd = RawFd::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(io::Error::last_os_error)?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
    // One pread for the whole file (the size is known); a file that shrank meanwhile is cut where it ends.
    let mut buf = vec![0u8; size as usize];
    let n = read_head(&file, &mut buf).map_err(|e| io_reason(&e))?;
    buf.truncate(n);
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
    // O_NONBLOCK for the same reason as in open_regular; O_DIRECTORY refuses anything else.
    let fd = open_raw(dir, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NONBLOCK)?;
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
