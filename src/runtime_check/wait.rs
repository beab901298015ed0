//! Waiting for a late runtime volume: re-check on inotify events on the directories concerned, with a
//! capped backoff because a mount raises no inotify event.
//!
//! Owns: the wait loop and its inotify set.
//! Does not own: the check itself.

use std::collections::HashSet;
use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::report::{Missing, Report};
use super::resolve::host_path;
use super::{check, WAIT_FIRST_POLL, WAIT_MAX_POLL};
use crate::config::RuntimeCheckConfig;

/// Checks, and while something is missing and `cfg.wait` has not run out, waits for a change (inotify on
/// the directories concerned, with a capped backoff re-check because a volume mount raises no inotify event)
/// and checks again. Returns the last report. The blocking form of `Waiter`.
pub fn check_waiting(command: &[OsString], cfg: &RuntimeCheckConfig) -> Report {
    let Some(wait) = cfg.wait else {
        return check(command, cfg);
    };
    let deadline = Instant::now() + wait;
    let mut w = Waiter::new(command, cfg, Instant::now());
    while !w.report().is_ok() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let timeout = w.next_check().min(deadline).saturating_duration_since(now);
        match &w.watch {
            Some(watch) => watch.wait(timeout),
            None => std::thread::sleep(timeout),
        }
        w.recheck(command, cfg, Instant::now());
    }
    w.into_report()
}

/// The wait for a late runtime volume without blocking, for a caller with its own event loop (PID 1 must
/// answer signals and `microinit status` meanwhile): poll `fd()` for input and call `recheck` when it is
/// readable or `next_check()` has passed; the caller owns the overall deadline. (A small API added for
/// issue 9's event loop; how the check and the watches work stays this module's business.)
pub struct Waiter {
    watch: Option<Watch>,
    next_check: Instant,
    poll: Duration,
    report: Report,
}

impl Waiter {
    /// Checks once and, while something is missing, arms the watches.
    pub fn new(command: &[OsString], cfg: &RuntimeCheckConfig, now: Instant) -> Waiter {
        let mut w = Waiter {
            watch: None,
            next_check: now,
            poll: WAIT_FIRST_POLL,
            report: check(command, cfg),
        };
        if !w.report.is_ok() {
            let first = w
                .report
                .missing
                .first()
                .map(Missing::describe)
                .unwrap_or_default();
            let wait = cfg.wait.unwrap_or_default();
            log::warn!("runtime incomplete, waiting up to {wait:?} for it (missing: {first})");
            w.recheck(command, cfg, now);
        }
        w
    }

    /// Re-arms the watches on what is missing, then checks again; true when the runtime is complete.
    pub fn recheck(
        &mut self,
        command: &[OsString],
        cfg: &RuntimeCheckConfig,
        now: Instant,
    ) -> bool {
        // Arm first, so a change between this check and the next wait is not missed.
        self.watch = Watch::new(&cfg.root, self.report.missing.iter().flat_map(|m| &m.watch));
        self.report = check(command, cfg);
        // A volume mount raises no inotify event: re-check on a capped backoff too.
        self.next_check = now + self.poll;
        self.poll = (self.poll * 2).min(WAIT_MAX_POLL);
        if self.report.is_ok() {
            self.watch = None;
        }
        self.report.is_ok()
    }

    /// Readable when a watched directory changed.
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        self.watch.as_ref().map(|w| w.fd.as_raw_fd())
    }

    pub fn next_check(&self) -> Instant {
        self.next_check
    }

    pub fn report(&self) -> &Report {
        &self.report
    }

    pub fn into_report(self) -> Report {
        self.report
    }
}

/// inotify on a few directories, for `check_waiting`.
pub(super) struct Watch {
    pub(super) fd: OwnedFd,
}

impl Watch {
    /// Watches the deepest existing ancestor of each path; `None` when inotify is unavailable.
    pub(super) fn new<'a>(root: &Path, dirs: impl Iterator<Item = &'a PathBuf>) -> Option<Watch> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_CREATE
            | libc::IN_MOVED_TO
            | libc::IN_CLOSE_WRITE
            | libc::IN_ATTRIB
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF
            | libc::IN_ONLYDIR;
        let mut armed = HashSet::new();
        for dir in dirs.take(64) {
            let mut host = host_path(root, dir);
            while !host.is_dir() && host.pop() {}
            if armed.insert(host.clone()) {
                if let Ok(c) = CString::new(host.into_os_string().into_vec()) {
                    // SAFETY: valid fd and NUL-terminated path; failure just leaves that directory unwatched.
                    unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
                }
            }
        }
        Some(Watch { fd })
    }

    pub(super) fn wait(&self, timeout: Duration) {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            self.fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        // EINTR or an error just means an earlier re-check.
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
    }
}
