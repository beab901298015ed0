//! The one reaper: drains `waitpid(-1, WNOHANG)` until nothing is left.
//!
//! Owns: collecting every exit status in the namespace (or below us, as a subreaper). Does not own: what an
//! exit means; the caller routes each pid to its owner (app, health command, hook, or a stray orphan).

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::exit_status::ExitStatus;

/// What one drain found.
pub struct Drain {
    pub exited: Vec<(i32, ExitStatus)>,
    /// waitpid said ECHILD: we have no children at all any more.
    pub no_children: bool,
}

/// Reap every child that has exited, without blocking.
///
/// SIGCHLDs coalesce (one pending instance however many children died), so one wakeup must drain all.
pub fn drain() -> Drain {
    let mut exited = Vec::new();
    let no_children = loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => break false,
            Ok(ws) => {
                if let (Some(pid), Some(st)) = (ws.pid(), ExitStatus::from_wait(ws)) {
                    exited.push((pid.as_raw(), st));
                }
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => break true,
            Err(e) => {
                log::error!("waitpid failed: {e}");
                break false;
            }
        }
    };
    Drain {
        exited,
        no_children,
    }
}
