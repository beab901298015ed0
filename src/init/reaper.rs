//! The one reaper: drains `waitpid(-1, WNOHANG)` until nothing is left.
//!
//! Owns: collecting every exit status in the namespace (or below us, as a subreaper). Does not own: what an
//! exit means; the caller routes each pid to its owner (app, health command, hook, or a stray orphan).

use nix::errno::Errno;

use crate::init::exit_status::ExitStatus;

/// Reap every child that has exited, without blocking, appending each (pid, status) to `exited` (the caller
/// keeps one buffer for every wakeup, so reaping allocates nothing once it has grown). Returns true when
/// waitpid said ECHILD: we have no children at all any more.
///
/// SIGCHLDs coalesce (one pending instance however many children died), so one wakeup must drain all.
/// libc's waitpid, not nix's: nix cannot represent a death by a real-time signal and reports EINVAL,
/// which would leave that zombie (and the app's status) behind.
pub fn drain(exited: &mut Vec<(i32, ExitStatus)>) -> bool {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            0 => return false,
            p if p > 0 => {
                if let Some(st) = ExitStatus::from_raw(status) {
                    exited.push((p, st));
                }
            }
            _ => match Errno::last() {
                Errno::EINTR => continue,
                Errno::ECHILD => return true,
                e => {
                    log::error!("waitpid failed: {e}");
                    return false;
                }
            },
        }
    }
}
