//! The event loop's side of service discovery, the health bridge and metrics (issue #11).
//!
//! Owns: turning `init::discovery` actions into the loop's own (the lifecycle's `AwaitDone`, a signal for
//! the app, an `--on-change exec:` child), the facts `microinit health` judges, and the snapshot the metrics
//! thread serves. Does not own: the wait and watch logic (`init::discovery`), the network (`consul::watch`),
//! the health rule (`control::health`), nor the listener (`metrics`).

use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::OFlag;

use super::{children::Owner, EventLoop};
use crate::config::Isolation;
use crate::consul::registration;
use crate::control::health;
use crate::init::discovery::{self, Discovery};
use crate::init::lifecycle::{Awaited, Event, Phase};
use crate::init::signals::{signal_name, OriginalMask};
use crate::init::spawn::{self, SpawnSpec};
use crate::metrics;

/// `--wait-for` without `--wait-timeout` waits for ever: a deadline no container outlives (a far `Instant`
/// rather than none keeps the lifecycle's one deadline per wait).
pub(super) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl EventLoop {
    /// The worker threads woke the loop.
    pub(super) fn on_discovery_wake(&mut self) {
        let actions = self
            .discovery
            .as_mut()
            .map(|d| d.on_wake(Instant::now()))
            .unwrap_or_default();
        self.on_discovery(actions);
    }

    /// A discovery timer (progress line, debounce) is due.
    pub(super) fn discovery_timers(&mut self, now: Instant) {
        let due = self
            .discovery
            .as_ref()
            .and_then(Discovery::deadline)
            .is_some_and(|t| now >= t);
        if due {
            let actions = self
                .discovery
                .as_mut()
                .map(|d| d.on_timer(now))
                .unwrap_or_default();
            self.on_discovery(actions);
        }
    }

    fn on_discovery(&mut self, actions: Vec<discovery::Action>) {
        for a in actions {
            match a {
                discovery::Action::StartApp => self.upstreams_up(),
                discovery::Action::Signal(sig) => {
                    if self.lifecycle.app_running() {
                        log::info!("watch changed: sending {} to the app", signal_name(sig));
                        self.forward(sig);
                    }
                }
                exec @ discovery::Action::Exec { .. } => self.start_on_change(exec),
            }
        }
    }

    /// When the lifecycle waits for the upstreams and they are all up, end the wait. Also called when the
    /// runtime wait ends, since the upstreams may have come up during it.
    pub(super) fn upstreams_up(&mut self) {
        let waiting_for_upstreams = matches!(
            self.lifecycle.phase(),
            Phase::Waiting {
                what: Awaited::Upstreams,
                ..
            }
        );
        if waiting_for_upstreams && !self.discovery.as_ref().is_some_and(Discovery::is_waiting) {
            self.dispatch(Event::AwaitDone);
        }
    }

    /// `--wait-timeout` ran out: the one line naming what is missing.
    pub(super) fn upstreams_failed(&mut self) {
        if let Some(d) = &mut self.discovery {
            eprintln!("microinit: {}", d.timeout_message());
            d.abort_wait();
        }
    }

    /// Spawn an `--on-change exec:` program (one at a time; a change meanwhile runs it once more after it).
    fn start_on_change(&mut self, action: discovery::Action) {
        let discovery::Action::Exec { argv, env } = &action else {
            return;
        };
        if matches!(
            self.lifecycle.phase(),
            Phase::Exiting { .. } | Phase::Done { .. }
        ) {
            return;
        }
        if self.children.values().any(|o| matches!(o, Owner::OnChange)) {
            self.on_change_again = Some(action);
            return;
        }
        let name = &argv[0];
        let path =
            match crate::runtime_check::which::resolve(name, std::env::var_os("PATH").as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    log::error!("--on-change: {}", e.message(name));
                    return;
                }
            };
        let spec = SpawnSpec {
            path: &path,
            argv,
            // Own group, killed with microinit (pdeathsig): a reload helper must not outlive PID 1.
            isolation: Isolation::ProcessGroup,
            take_tty: false,
            pdeathsig: Some(libc::SIGKILL),
            output: None,
            mask: OriginalMask::empty(),
            default_dispositions: true,
            notify_fd: None,
            extra_env: env,
        };
        match spawn::spawn(&spec) {
            Ok(started) => {
                log::info!(
                    "--on-change: started {} (pid {})",
                    path.display(),
                    started.pid
                );
                // The exec-result pipe is dropped: an exec failure shows as the child's exit status
                // (126/127), logged when it is reaped.
                self.children.insert(started.pid, Owner::OnChange);
            }
            Err(e) => log::error!("--on-change: {e}"),
        }
    }

    /// An `--on-change` child was reaped.
    pub(super) fn on_change_exited(&mut self, status: crate::init::exit_status::ExitStatus) {
        if !status.success() {
            log::warn!("--on-change program {status}");
        }
        if let Some(again) = self.on_change_again.take() {
            self.start_on_change(again);
        }
    }

    /// `--ready fd:N`: a fresh pipe for the app about to be spawned (its write end, N); the read end is
    /// polled until the app writes its line. The write end is closed in PID 1 when the returned value drops
    /// after the spawn, so the app's exit reads as EOF.
    pub(super) fn notify_pipe_for_spawn(&mut self) -> Option<(OwnedFd, i32)> {
        let n = self.notify_fd?;
        match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
            Ok((r, w)) => {
                let _ = nix::fcntl::fcntl(
                    r.as_raw_fd(),
                    nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
                );
                self.notify_pipe = Some(r);
                Some((w, n))
            }
            Err(e) => {
                log::error!("--ready fd:{n}: cannot create a pipe: {e}");
                None
            }
        }
    }

    /// The notification pipe is readable: a line means ready (s6's rule); EOF first means the app closed it
    /// (or exited) without saying so.
    pub(super) fn on_notify_readable(&mut self) {
        let Some(r) = &self.notify_pipe else { return };
        // A line is short; a chatty app cannot make PID 1 read more than this per wakeup.
        let mut buf = [0u8; 512];
        match nix::unistd::read(r.as_raw_fd(), &mut buf) {
            Ok(0) => {
                log::warn!(
                    "--ready fd:{}: the app closed it without writing a line",
                    self.notify_fd.unwrap_or(0)
                );
                self.notify_pipe = None;
            }
            Ok(n) if buf[..n].contains(&b'\n') => {
                log::info!("the app notified it is ready");
                self.notify_pipe = None;
                if let Some(r) = &self.registration {
                    r.send(registration::Command::Ready);
                }
            }
            Ok(_) | Err(_) => {}
        }
    }

    /// What `microinit health` reports (`control::health::verdict` over the loop's facts).
    pub(super) fn health_verdict(&self) -> Result<String, String> {
        let consul = self.registration.as_ref().map(|r| {
            r.status()
                .map_or((false, "unknown".into()), |s| (s.ready, s.check_status))
        });
        let waiting_for_upstreams = matches!(
            self.lifecycle.phase(),
            Phase::Waiting {
                what: Awaited::Upstreams,
                ..
            }
        );
        let running = self.lifecycle.app_running();
        health::verdict(&health::Facts {
            state: self.lifecycle.state_name().into(),
            pid: self.app.as_ref().filter(|_| running).map(|a| a.pid),
            waiting_for: waiting_for_upstreams.then(|| {
                self.discovery
                    .as_ref()
                    .map(Discovery::missing)
                    .unwrap_or_default()
            }),
            crash_restarts: self.lifecycle.crash_restarts(),
            uptime: self
                .app
                .as_ref()
                .map(|a| a.started.elapsed())
                .unwrap_or_default(),
            consul,
        })
    }

    /// Store what the metrics thread serves (a few integers under an uncontended mutex; no syscall).
    pub(super) fn publish_metrics(&self) {
        if let Some(m) = &self.metrics {
            m.publish(metrics::Values {
                app_up: self.lifecycle.app_running(),
                restarts: self.lifecycle.restarts(),
                last_exit: self.lifecycle.last_exit().map(|s| s.code()),
                zombies_reaped: self.zombies_reaped,
                signals_forwarded: self.signals_forwarded,
                waiting_upstreams: self.discovery.as_ref().is_some_and(Discovery::is_waiting),
                watch_changes: self.discovery.as_ref().map_or(0, Discovery::changes),
            });
        }
    }
}
