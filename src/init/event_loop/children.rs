//! The children table: which child pid is whose, and where its exit goes.
//!
//! Owns: the pid → owner table and routing each reaped exit to its owner (the app, the health command, a
//! hook, or a stray orphan). Does not own: collecting exits (`reaper`, the one caller of waitpid) or what
//! an exit means for the app (`lifecycle`).

use std::os::fd::OwnedFd;
use std::time::Instant;

use super::EventLoop;
use crate::init::lifecycle::{Event, Hook, HookEnd};
use crate::init::reaper;
use crate::init::spawn::{self, ExecOutcome};

/// Who a child pid belongs to (DESIGN.md: one reaper, exits routed by pid).
pub(super) enum Owner {
    App,
    Health {
        output: OwnedFd,
        buf: Vec<u8>,
        deadline: Instant,
        timed_out: bool,
        /// The app instance it checks: a result that outlives it must not speak for its successor.
        app_pid: Option<i32>,
    },
    Hook {
        hook: Hook,
        /// Read once the hook is reaped: an exec failure of /bin/sh is reported as such.
        exec_pipe: OwnedFd,
    },
    /// An `--on-change exec:` program.
    OnChange,
}

impl EventLoop {
    /// Drain exits and route each to its owner; tell the lifecycle when no children are left.
    pub(super) fn reap(&mut self) {
        let mut exited = std::mem::take(&mut self.reaped);
        let no_children = reaper::drain(&mut exited);
        for &(pid, status) in &exited {
            log::debug!("reaped pid {pid} ({status})");
            match self.children.remove(&pid) {
                Some(Owner::App) => self.on_app_exit(status),
                Some(Owner::Health {
                    output,
                    buf,
                    timed_out,
                    app_pid,
                    ..
                }) => self.on_health_exit(status, output, buf, timed_out, app_pid),
                Some(Owner::Hook { hook, exec_pipe }) => {
                    let end = match spawn::exec_outcome(&exec_pipe) {
                        ExecOutcome::Failed(errno) => {
                            eprintln!(
                                "microinit: {} hook failed: could not start: cannot execute its program: {}",
                                hook.name(),
                                errno.desc()
                            );
                            HookEnd::NotStarted(status.code())
                        }
                        ExecOutcome::Execed | ExecOutcome::Pending => HookEnd::Exited(status),
                    };
                    self.dispatch(Event::HookExited { hook, end });
                }
                Some(Owner::OnChange) => self.on_change_exited(status),
                None => {
                    self.zombies_reaped += 1;
                    if self.cfg.warn_on_reap {
                        // tini -w's line, which scripts grep.
                        log::warn!("Reaped zombie process with pid={pid}");
                    }
                }
            }
        }
        exited.clear();
        self.reaped = exited;
        if no_children {
            self.dispatch(Event::NoChildren);
        }
    }
}
