//! The health command: run every interval while the app runs, its output collected without blocking, its
//! verdict sent to the registration worker.
//!
//! Owns: the schedule, the time limit and the output pipe of the health command. Does not own: Consul
//! (`registration`) or the app's lifecycle (a health verdict never stops or restarts the app).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::{children::Owner, EventLoop};
use crate::config::ConsulConfig;
use crate::consul::registration::{self, CheckStatus};
use crate::init::exit_status::ExitStatus;
use crate::init::spawn;

/// Health command output kept for Consul's check Output.
const HEALTH_OUTPUT_MAX: usize = 4096;

pub(super) struct HealthSchedule {
    command: String,
    interval: Duration,
    timeout: Duration,
    next: Option<Instant>,
}

impl HealthSchedule {
    pub(super) fn from_config(c: &ConsulConfig) -> Option<HealthSchedule> {
        c.health_cmd.clone().map(|command| HealthSchedule {
            command,
            interval: c.health_interval,
            timeout: c.health_timeout,
            next: None,
        })
    }
}

impl EventLoop {
    /// The next run, or the running command's time limit.
    pub(super) fn health_deadline(&self) -> Option<Instant> {
        // Without a health check there is no health command among the children to look for.
        self.health.as_ref()?;
        let running = self.children.values().find_map(|o| match o {
            Owner::Health {
                deadline,
                timed_out: false,
                ..
            } => Some(*deadline),
            _ => None,
        });
        let next = self.health.as_ref().and_then(|h| h.next);
        running.into_iter().chain(next).min()
    }

    pub(super) fn health_app_started(&mut self) {
        if let Some(h) = &mut self.health {
            h.next = Some(Instant::now());
        }
    }

    pub(super) fn health_app_stopped(&mut self) {
        if let Some(h) = &mut self.health {
            h.next = None;
        }
    }

    pub(super) fn health_timers(&mut self, now: Instant) {
        let Some(h) = &self.health else {
            return; // no health check: no health command among the children either
        };
        if h.next.is_some_and(|t| now >= t) {
            self.start_health();
        }
        for (pid, owner) in self.children.iter_mut() {
            if let Owner::Health {
                deadline,
                timed_out,
                ..
            } = owner
            {
                if !*timed_out && now >= *deadline {
                    *timed_out = true;
                    log::warn!("health command (pid {pid}) timed out; killing its process group");
                    spawn::kill(-pid, libc::SIGKILL);
                }
            }
        }
    }

    /// Read the health command's output when poll said it is readable (`polled`: the poll set).
    pub(super) fn read_health_output(&mut self, polled: &[libc::pollfd]) {
        for owner in self.children.values_mut() {
            if let Owner::Health { output, buf, .. } = owner {
                let fd = output.as_raw_fd();
                if polled.iter().any(|p| p.fd == fd && p.revents != 0) {
                    read_capped(output.as_raw_fd(), buf);
                }
            }
        }
    }

    fn start_health(&mut self) {
        let Some(h) = &mut self.health else { return };
        h.next = None;
        if self
            .children
            .values()
            .any(|o| matches!(o, Owner::Health { .. }))
        {
            return; // the previous run is still going; its timeout will end it
        }
        let (command, timeout) = (h.command.clone(), h.timeout);
        // Blocking pipe; only PID 1's end is made non-blocking below. A non-blocking write end would make
        // a command printing more than the pipe holds (64 KiB) fail with EAGAIN instead of waiting for
        // PID 1 to read.
        let (r, w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => {
                log::error!("health command: cannot create a pipe: {e}");
                return;
            }
        };
        if let Err(e) = nix::fcntl::fcntl(
            r.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        ) {
            log::error!("health command: cannot make its pipe non-blocking: {e}");
            return;
        }
        match self.shell_spawn(&command, Some(w.as_raw_fd())) {
            // The exec result is not waited for: /bin/sh failing to start ends it with 126/127, critical.
            Ok(started) => {
                self.children.insert(
                    started.pid,
                    Owner::Health {
                        output: r,
                        buf: Vec::new(),
                        deadline: Instant::now() + timeout,
                        timed_out: false,
                        app_pid: self.app.as_ref().map(|a| a.pid),
                    },
                );
            }
            Err(e) => {
                self.send_health(
                    CheckStatus::Critical,
                    format!("health command could not start: {e}"),
                );
                self.schedule_health();
            }
        }
    }

    pub(super) fn on_health_exit(
        &mut self,
        status: ExitStatus,
        output: OwnedFd,
        mut buf: Vec<u8>,
        timed_out: bool,
        app_pid: Option<i32>,
    ) {
        read_capped(output.as_raw_fd(), &mut buf);
        if app_pid != self.app.as_ref().map(|a| a.pid) {
            // The app it checked exited meanwhile: a late "passing" would turn the check green while the
            // app is down (or vouch for a restarted app that is not ready yet).
            log::debug!("dropping the result of a health command for a previous app");
            // A restarted app's first run was skipped while this one was still going.
            self.schedule_health();
            return;
        }
        let mut text = String::from_utf8_lossy(&buf).into_owned();
        let check = if timed_out {
            text = format!(
                "health command timed out after {:?}\n{text}",
                self.health.as_ref().map(|h| h.timeout).unwrap_or_default()
            );
            CheckStatus::Critical
        } else {
            match status {
                ExitStatus::Code(0) => CheckStatus::Passing,
                ExitStatus::Code(1) => CheckStatus::Warning,
                _ => CheckStatus::Critical,
            }
        };
        self.send_health(check, text);
        self.schedule_health();
    }

    fn send_health(&self, status: CheckStatus, output: String) {
        self.tell_worker(registration::Command::Health { status, output });
    }

    fn schedule_health(&mut self) {
        if self.lifecycle.app_running() && self.app.is_some() {
            if let Some(h) = &mut self.health {
                h.next = Some(Instant::now() + h.interval);
            }
        }
    }
}

/// Read what is available (non-blocking) into `buf`, keeping at most HEALTH_OUTPUT_MAX bytes; the rest is
/// read and dropped so that the command never blocks on a full pipe.
fn read_capped(fd: RawFd, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    loop {
        match nix::unistd::read(fd, &mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = HEALTH_OUTPUT_MAX.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}
