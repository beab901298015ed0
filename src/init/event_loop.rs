//! The PID-1 event loop: one thread, one poll, every event.
//!
//! Owns: the app's lifecycle (pre-start hook, spawn, restart policy, graceful stop, the sweep of leftovers,
//! the final status), signal forwarding, routing reaped pids to their owner, running the health command
//! and hooks, and talking to the registration worker and control clients. Does not own: how a child is
//! forked (`supervisor`), how exits are collected (`reaper`), HTTP (`registration`), the socket protocol
//! (`control`).
//!
//! Wakeups: the signalfd, the registration worker's eventfd, control sockets, the health command's output
//! pipe, and the nearest timer. With no registration, no health command, no control client and no timer,
//! the loop sleeps in read(2) on the signalfd (a connecting control client raises SIGIO), else in poll():
//! zero CPU while idle either way.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::policy::{ChildSignals, EndOfLife};
use crate::config::{Config, Dialect, DialectPolicy, Isolation, RestartPolicy, SupervisorConfig};
use crate::consul::registration::{self, CheckStatus, Registration};
use crate::control::health;
use crate::control::server::{ClientId, ControlServer};
use crate::control::status;
use crate::init::discovery::{self, Discovery};
use crate::init::exit_status::ExitStatus;
use crate::init::reaper;
use crate::init::signals::{self, signal_name, OriginalMask, Signals};
use crate::init::spawn::{self, SpawnSpec};
use crate::metrics::{self, Metrics};

mod control_handler;

/// How long a deregistration may hold up a stop: the worker's own bound (`--deregister-timeout`; it answers
/// by then, even for a black-holed agent) plus this margin in case the worker itself is stuck.
const DEREGISTER_MARGIN: Duration = Duration::from_millis(500);
/// After the final SIGKILL: how long to wait for the kernel to let the last processes go (D state).
const KILL_SETTLE: Duration = Duration::from_secs(2);
const RESTART_BACKOFF_BASE: Duration = Duration::from_millis(500);
const RESTART_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// An app that ran this long resets the backoff.
const RESTART_HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// Health command output kept for Consul's check Output.
const HEALTH_OUTPUT_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppState {
    /// `--wait-for` targets are not all up yet.
    Waiting,
    Starting,
    Running,
    Stopping,
    Restarting,
    Exited,
}

impl AppState {
    fn as_str(self) -> &'static str {
        match self {
            AppState::Waiting => "waiting",
            AppState::Starting => "starting",
            AppState::Running => "running",
            AppState::Stopping => "stopping",
            AppState::Restarting => "restarting",
            AppState::Exited => "exited",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HookKind {
    PreStart,
    PreStop,
    PostStop,
}

impl HookKind {
    fn name(self) -> &'static str {
        match self {
            HookKind::PreStart => "pre-start",
            HookKind::PreStop => "pre-stop",
            HookKind::PostStop => "post-stop",
        }
    }
}

/// Who a child pid belongs to (DESIGN.md: one reaper, exits routed by pid).
enum Owner {
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
        kind: HookKind,
        deadline: Instant,
        timed_out: bool,
    },
    /// `--on-change exec:…`.
    OnChange,
}

/// A stop request held back until deregistration, drain and the pre-stop hook are done.
struct PendingForward {
    signal: i32,
    /// Waiting for the worker's `Deregistered`, at most until this instant.
    deregister_until: Option<Instant>,
    /// Drain: forward no earlier than this (set once deregistered).
    not_before: Option<Instant>,
    pre_stop_started: bool,
}

/// Everything the loop knows; also what `microinit status` shows.
pub struct EventLoop {
    cfg: SupervisorConfig,
    /// The dialect's rules (end of life, what the child inherits, which signals are not forwarded …).
    policy: DialectPolicy,
    mask: OriginalMask,
    signals: Signals,
    is_pid1: bool,
    take_tty: bool,
    app_path: PathBuf,
    registration: Option<Registration>,
    health: Option<HealthSchedule>,
    drain: Duration,
    consul_required: bool,
    /// `microinit status` & co; None when off (`microinit exec`) or when the socket could not be bound.
    control: Option<ControlServer>,
    dialect: &'static str,
    /// Control clients waiting for Consul's answer to their `maintenance` request, oldest first.
    maintenance_replies: VecDeque<(ClientId, bool)>,

    children: HashMap<i32, Owner>,
    app_pid: Option<i32>,
    /// The app's pid after it exited (dumb-init's end of life signals its group).
    last_app_pid: Option<i32>,
    app_started: Option<Instant>,
    state: AppState,
    /// A stop was requested (SIGTERM/SIGINT, fatal error): no more restarts.
    stopping: bool,
    pending_forward: Option<PendingForward>,
    /// SIGKILL the app at this instant (grace after a forwarded stop signal).
    kill_app_at: Option<Instant>,
    restart_requested: bool,
    respawn_at: Option<Instant>,
    backoff_step: u32,
    /// Set when the app is gone for good: what we exit with.
    final_status: Option<i32>,
    /// The sweep of leftovers: SIGKILL at the first instant, give up waiting at the second.
    sweep: Option<(Instant, Instant)>,
    sweep_started: bool,
    /// The app is gone for good and hooks are done: sweep leftovers, unless the reaper says there are none.
    sweep_due: bool,
    /// A SIGCHLD arrived (or we just started): drain waitpid before anything else.
    reap_due: bool,
    /// The last drain ended in ECHILD.
    no_children: bool,
    deregistering_until: Option<Instant>,
    /// Overrides the app's status (--consul-required failure: 125).
    forced_exit: Option<i32>,

    signals_forwarded: u64,
    zombies_reaped: u64,
    restarts: u32,
    last_exit: Option<ExitStatus>,
    runtime_check: Option<status::RuntimeCheck>,
    /// `--wait-for` / `--watch`.
    discovery: Option<Discovery>,
    /// An `--on-change exec:` came due while the previous one still ran: run it again when that one exits.
    on_change_again: Option<discovery::Action>,
    metrics: Option<Metrics>,
}

struct HealthSchedule {
    command: String,
    interval: Duration,
    timeout: Duration,
    next: Option<Instant>,
}

/// What the loop needs besides `Config` (set up by main before any thread exists).
pub struct Setup {
    pub mask: OriginalMask,
    pub signals: Signals,
    pub is_pid1: bool,
    pub app_path: PathBuf,
    pub runtime_check: Option<status::RuntimeCheck>,
}

impl EventLoop {
    pub fn new(cfg: Config, setup: Setup) -> std::io::Result<EventLoop> {
        let (drain, consul_required, health) = match &cfg.consul {
            Some(c) => (
                c.drain,
                c.required,
                c.health_cmd.clone().map(|command| HealthSchedule {
                    command,
                    interval: c.health_interval,
                    timeout: c.health_timeout,
                    next: None,
                }),
            ),
            None => (Duration::ZERO, false, None),
        };
        let registration = cfg
            .consul
            .map(|c| {
                registration::export_service_id(&c);
                Registration::start(c)
            })
            .transpose()?;
        let discovery = Discovery::start(cfg.discovery, Instant::now())?;
        // Like the control socket: a metrics port that cannot be bound must not keep the app from running.
        let metrics = cfg.metrics.as_deref().and_then(|addr| {
            let consul = registration
                .as_ref()
                .map(|r| Box::new(r.status_reader()) as metrics::ConsulStatus);
            Metrics::start(addr, consul)
                .map_err(|e| log::error!("{e}; no metrics will be served"))
                .ok()
        });
        // The app matters more than `microinit status`: a socket that cannot be bound is a warning only.
        let mut control = cfg.control.and_then(|c| {
            ControlServer::bind(&c)
                .map_err(|e| log::warn!("{e}; `microinit status` will not work in this container"))
                .ok()
        });
        if let Some(Err(e)) = control.as_mut().map(ControlServer::signal_on_connect) {
            log::debug!("control socket: no SIGIO on connect ({e}); polling it");
        }
        let dialect = match cfg.dialect {
            Dialect::Microinit => "microinit",
            Dialect::Tini => "tini",
            Dialect::DumbInit => "dumb-init",
        };
        let take_tty = cfg.supervisor.isolation != Isolation::None && spawn::stdin_is_tty();
        Ok(EventLoop {
            mask: setup.mask,
            signals: setup.signals,
            is_pid1: setup.is_pid1,
            take_tty,
            app_path: setup.app_path,
            registration,
            health,
            drain,
            consul_required,
            control,
            dialect,
            maintenance_replies: VecDeque::new(),
            policy: cfg.policy,
            cfg: cfg.supervisor,
            children: HashMap::new(),
            app_pid: None,
            last_app_pid: None,
            app_started: None,
            state: AppState::Starting,
            stopping: false,
            pending_forward: None,
            kill_app_at: None,
            restart_requested: false,
            respawn_at: None,
            backoff_step: 0,
            final_status: None,
            sweep: None,
            sweep_started: false,
            sweep_due: false,
            reap_due: true,
            no_children: false,
            deregistering_until: None,
            forced_exit: None,
            signals_forwarded: 0,
            zombies_reaped: 0,
            restarts: 0,
            last_exit: None,
            runtime_check: setup.runtime_check,
            discovery,
            on_change_again: None,
            metrics,
        })
    }

    /// Run until the app is gone for good and everything is reaped; returns microinit's exit code.
    pub fn run(mut self) -> i32 {
        if self.discovery.as_ref().is_some_and(Discovery::is_waiting) {
            self.state = AppState::Waiting;
        } else {
            self.start_app();
        }
        loop {
            self.publish_metrics();
            // waitpid only after a SIGCHLD: the kernel sends one for every child that dies (orphans
            // reparented to us included), so an idle or forwarding wakeup costs no extra syscall.
            if std::mem::take(&mut self.reap_due) {
                self.no_children = self.reap();
            }
            let no_children = self.no_children;
            if let Some(code) = self.finished(no_children) {
                if let Some(r) = &self.registration {
                    r.send(registration::Command::Shutdown);
                }
                // Unlink the control socket (its Drop), then leave the rest to exit(2): freeing the heap
                // first only makes musl's allocator munmap pages on the exit path, which as PID 1 the
                // namespace teardown (and `docker stop`) waits for. No other field has an effect on Drop.
                drop(self.control.take());
                std::mem::forget(self);
                return code;
            }
            if std::mem::take(&mut self.sweep_due) && !no_children {
                // Only when something is left: waitpid's ECHILD already proved the namespace empty.
                self.start_sweep();
            }
            self.on_timers(Instant::now());
            if self.sweep_due {
                // A timer decided the exit (e.g. --wait-timeout): act on it before sleeping.
                continue;
            }
            self.wait_for_events();
        }
    }

    /// The pre-start hook, or the app itself.
    fn start_app(&mut self) {
        self.state = AppState::Starting;
        match self.cfg.hooks.pre_start.clone() {
            Some(cmd) => self.start_hook(HookKind::PreStart, &cmd),
            None => self.spawn_app(),
        }
    }

    fn publish_metrics(&self) {
        if let Some(m) = &self.metrics {
            m.publish(metrics::Values {
                app_up: self.app_pid.is_some(),
                restarts: self.restarts,
                last_exit: self.last_exit.map(|s| s.code()),
                zombies_reaped: self.zombies_reaped,
                signals_forwarded: self.signals_forwarded,
                waiting_upstreams: self.state == AppState::Waiting,
                watch_changes: self.discovery.as_ref().map_or(0, Discovery::changes),
            });
        }
    }

    /// What `microinit health` reports (control::health::verdict over the loop's facts).
    fn health_verdict(&self) -> Result<String, String> {
        let consul = self.registration.as_ref().map(|r| {
            r.status()
                .map_or((false, "unknown".into()), |s| (s.ready, s.check_status))
        });
        health::verdict(&health::Facts {
            state: self.state.as_str().into(),
            pid: self.app_pid,
            waiting_for: (self.state == AppState::Waiting).then(|| {
                self.discovery
                    .as_ref()
                    .map(Discovery::missing)
                    .unwrap_or_default()
            }),
            crash_restarts: self.backoff_step,
            uptime: self.app_started.map(|t| t.elapsed()).unwrap_or_default(),
            consul,
        })
    }

    fn on_discovery(&mut self, actions: Vec<discovery::Action>) {
        for a in actions {
            match a {
                discovery::Action::StartApp => {
                    if self.state == AppState::Waiting && !self.stopping {
                        self.start_app();
                    }
                }
                discovery::Action::GiveUp { message, code } => {
                    eprintln!("microinit: {message}");
                    if self.final_status.is_none() {
                        self.stopping = true;
                        self.begin_exit(code);
                    }
                }
                discovery::Action::Signal(sig) => {
                    if self.app_pid.is_some() && !self.stopping {
                        log::info!("watch changed: sending {} to the app", signal_name(sig));
                        self.forward(sig);
                    }
                }
                exec @ discovery::Action::Exec { .. } => self.start_on_change(exec),
            }
        }
    }

    /// Spawn an `--on-change exec:` program (one at a time; a change meanwhile runs it again afterwards).
    fn start_on_change(&mut self, action: discovery::Action) {
        let discovery::Action::Exec { argv, env } = &action else {
            return;
        };
        if self.final_status.is_some() {
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
            isolation: Isolation::ProcessGroup,
            take_tty: false,
            pdeathsig: Some(libc::SIGKILL),
            output: None,
            mask: self.mask,
            default_dispositions: false,
            extra_env: env,
        };
        match spawn::spawn(&spec) {
            Ok(pid) => {
                log::info!("--on-change: started {} (pid {pid})", path.display());
                self.children.insert(pid, Owner::OnChange);
                self.no_children = false;
            }
            Err(e) => log::error!("--on-change: {e}"),
        }
    }

    fn finished(&self, no_children: bool) -> Option<i32> {
        let code = self.final_status?;
        let post_stop_running = self
            .children
            .values()
            .any(|o| matches!(o, Owner::Hook { .. }));
        if self.deregistering_until.is_some() || post_stop_running {
            return None;
        }
        let gave_up = self
            .sweep
            .is_some_and(|(_, give_up)| Instant::now() >= give_up);
        if gave_up {
            log::warn!("processes still alive after SIGKILL and {KILL_SETTLE:?}; exiting anyway");
        }
        if matches!(self.policy.end_of_life, EndOfLife::ExitAtOnce { .. }) {
            // tini and dumb-init leave what is left to the kernel: as PID 1 our exit SIGKILLs the namespace.
            return Some(code);
        }
        // ECHILD: the last descendant is reaped, nothing to wait for (no fixed sleep, unlike s6-overlay).
        (no_children || gave_up).then_some(code)
    }

    // ---- waiting ---------------------------------------------------------------------------------

    fn wait_for_events(&mut self) {
        let timeout = match self.next_deadline() {
            None => -1,
            Some(t) => {
                let d = t.saturating_duration_since(Instant::now());
                // Round up: waking a hair early would spin until the deadline passes.
                d.as_millis().min(i32::MAX as u128) as i32
                    + i32::from(d.subsec_nanos() % 1_000_000 != 0)
            }
        };
        // Nothing to wait for but signals (a new control client raises SIGIO): sleep in read(2) on the
        // signalfd as catatonit does. poll(2) would add its wake-up and a second syscall to the
        // signal-forwarding path (scripts/bench.sh).
        let health_running = self
            .children
            .values()
            .any(|o| matches!(o, Owner::Health { .. }));
        if timeout == -1
            && self.registration.is_none()
            && self.discovery.is_none()
            && !health_running
            && self
                .control
                .as_ref()
                .is_none_or(ControlServer::may_sleep_in_read)
        {
            self.wait_in_read();
            return;
        }
        let mut fds = vec![libc::pollfd {
            fd: self.signals.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(r) = &self.registration {
            fds.push(libc::pollfd {
                fd: r.wake_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let Some(d) = &self.discovery {
            fds.push(libc::pollfd {
                fd: d.wake_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        for owner in self.children.values() {
            if let Owner::Health { output, .. } = owner {
                fds.push(libc::pollfd {
                    fd: output.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        if let Some(c) = &self.control {
            c.push_poll_fds(&mut fds);
        }
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n <= 0 {
            // Timeout or EINTR (cannot happen with every signal blocked, but harmless). A control client past
            // its time limit is dropped by on_timers.
            return;
        }
        let ready = |fd: RawFd| fds.iter().any(|p| p.fd == fd && p.revents != 0);
        if ready(self.signals.raw_fd()) {
            // One batch: the rest (a storm) waits for the next turn, after the other fds had theirs.
            let batch = self.signals.next_batch();
            for s in batch.iter() {
                self.on_signal(s);
            }
        }
        if let Some(r) = &self.registration {
            if ready(r.wake_fd().as_raw_fd()) {
                let events = r.take_events();
                for ev in events {
                    self.on_worker_event(ev);
                }
            }
        }
        let discovery_woke = self
            .discovery
            .as_ref()
            .is_some_and(|d| ready(d.wake_fd().as_raw_fd()));
        if discovery_woke {
            let actions = self
                .discovery
                .as_mut()
                .map(|d| d.on_wake(Instant::now()))
                .unwrap_or_default();
            self.on_discovery(actions);
        }
        for owner in self.children.values_mut() {
            if let Owner::Health { output, buf, .. } = owner {
                if ready(output.as_raw_fd()) {
                    read_capped(output.as_raw_fd(), buf);
                }
            }
        }
        self.serve_control(&fds);
    }

    /// The idle wait: one batch of signals, then the control socket if a SIGIO came with it.
    fn wait_in_read(&mut self) {
        let batch = self.signals.wait_batch();
        for s in batch.iter() {
            self.on_signal(s);
        }
        self.serve_control(&[]);
    }

    /// The nearest timer, if any. Runs on every wakeup, so it allocates nothing.
    fn next_deadline(&self) -> Option<Instant> {
        let sweep = self.sweep.map(|(kill, give_up)| {
            if self.sweep_started && Instant::now() >= kill {
                give_up
            } else {
                kill
            }
        });
        let (deregister, drain) = self
            .pending_forward
            .as_ref()
            .map_or((None, None), |p| (p.deregister_until, p.not_before));
        let child_deadlines = self.children.values().filter_map(|owner| match owner {
            Owner::Health {
                deadline,
                timed_out: false,
                ..
            }
            | Owner::Hook {
                deadline,
                timed_out: false,
                ..
            } => Some(*deadline),
            _ => None,
        });
        [
            self.kill_app_at,
            self.respawn_at,
            self.deregistering_until,
            sweep,
            deregister,
            drain,
            self.health.as_ref().and_then(|h| h.next),
            self.control.as_ref().and_then(ControlServer::deadline),
            self.discovery.as_ref().and_then(Discovery::deadline),
        ]
        .into_iter()
        .flatten()
        .chain(child_deadlines)
        .min()
    }

    // ---- timers ----------------------------------------------------------------------------------

    fn on_timers(&mut self, now: Instant) {
        if self.kill_app_at.is_some_and(|t| now >= t) {
            self.kill_app_at = None;
            if let Some(pid) = self.app_pid {
                log::warn!(
                    "app (pid {pid}) still running after the {:?} grace; sending SIGKILL",
                    self.cfg.grace
                );
                self.kill_app(libc::SIGKILL);
            }
        }
        if self.respawn_at.is_some_and(|t| now >= t) {
            self.respawn_at = None;
            self.spawn_app();
        }
        if self.deregistering_until.is_some_and(|t| now >= t) {
            log::warn!("Consul deregistration did not finish within its bound; going on");
            self.deregistering_until = None;
        }
        self.advance_pending_forward(now);
        if let Some(c) = &mut self.control {
            c.expire(now);
        }
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
        if let Some((kill_at, _)) = self.sweep {
            if now >= kill_at && !self.sweep_started {
                self.sweep_started = true;
                log::warn!("processes left after the app exited are still alive after {:?}; sending SIGKILL", self.cfg.grace);
                self.signal_everything(libc::SIGKILL);
            }
        }
        let health_due = self
            .health
            .as_ref()
            .and_then(|h| h.next)
            .is_some_and(|t| now >= t);
        if health_due {
            self.start_health();
        }
        for (pid, owner) in self.children.iter_mut() {
            let (deadline, timed_out, what) = match owner {
                Owner::Health {
                    deadline,
                    timed_out,
                    ..
                } => (*deadline, timed_out, "health command"),
                Owner::Hook {
                    deadline,
                    timed_out,
                    kind,
                } => (*deadline, timed_out, kind.name()),
                Owner::App | Owner::OnChange => continue,
            };
            if !*timed_out && now >= deadline {
                *timed_out = true;
                log::warn!("{what} (pid {pid}) timed out; killing its process group");
                spawn::kill(-pid, libc::SIGKILL);
            }
        }
    }

    // ---- signals ---------------------------------------------------------------------------------

    fn on_signal(&mut self, s: signals::Received) {
        let sig = s.signo;
        if sig == libc::SIGIO {
            if let Some(c) = &mut self.control {
                // Whatever poll saw, look at the listener: this SIGIO may be a connection's, or hide one.
                c.on_sigio();
                if c.is_connect(&s) {
                    return; // ours, not the app's
                }
            }
        }
        if sig == libc::SIGCHLD {
            self.reap_due = true;
            return;
        }
        if !signals::is_forwardable(sig) || self.policy.not_forwarded.contains(&sig) {
            return;
        }
        // Without our own process group the terminal's signals (Ctrl-C, sent by the kernel to the whole
        // foreground group) already reached the app; forwarding would deliver them twice.
        if self.cfg.isolation == Isolation::None
            && s.code == libc::SI_KERNEL
            && !self.policy.forward_kernel_signals_to_shared_group
        {
            return;
        }
        self.deliver(sig);
        if signals::is_tty_stop(sig) && self.policy.tty_stop_suspends_init {
            // Job control as dumb-init does: the app stopped, so stop ourselves too; SIGCONT resumes both.
            // (As PID 1 the kernel ignores this, which is harmless.)
            spawn::kill(std::process::id() as i32, libc::SIGSTOP);
        }
    }

    /// A signal for the app, received or asked for (`microinit signal`): rewrite, then stop or forward.
    fn deliver(&mut self, sig: i32) {
        let to = self
            .cfg
            .rewrites
            .iter()
            .find(|r| r.from == sig)
            .map_or(sig, |r| r.to);
        if to == 0 {
            log::info!("dropping {} (rewrite to 0)", signal_name(sig));
            return;
        }
        let is_stop_request = sig == libc::SIGTERM || sig == libc::SIGINT;
        if is_stop_request {
            self.request_stop(to);
        } else {
            self.forward(to);
        }
    }

    /// SIGTERM/SIGINT: deregister, drain, pre-stop hook, then forward; a second one goes through at once.
    fn request_stop(&mut self, signal: i32) {
        if self.pending_forward.is_some() {
            log::info!("second {}: forwarding now", signal_name(signal));
            self.pending_forward = None;
            self.forward_stop(signal);
            return;
        }
        if self.final_status.is_some() {
            return; // already on the way out; the sweep is in charge.
        }
        if self.stopping && self.app_pid.is_some() {
            // Deregistered and forwarded once already: a repeated stop request goes straight through.
            self.forward(signal);
            return;
        }
        self.stopping = true;
        self.state = AppState::Stopping;
        if self.app_pid.is_none() {
            // Between restarts (or before the first start, waiting for upstreams included): nothing to
            // forward to; exit with what we have.
            self.respawn_at = None;
            if let Some(d) = &mut self.discovery {
                d.abort_wait();
            }
            let status = self.last_exit.map_or(128 + signal, |s| {
                s.remapped(&self.cfg.remap_exit, self.policy.remap_signal_deaths)
            });
            self.begin_exit(status);
            return;
        }
        let deregister_until = self.registration.as_ref().map(|r| {
            r.send(registration::Command::Deregister);
            Instant::now() + r.deregister_bound() + DEREGISTER_MARGIN
        });
        self.pending_forward = Some(PendingForward {
            signal,
            deregister_until,
            not_before: deregister_until
                .is_none()
                .then(|| Instant::now() + self.drain),
            pre_stop_started: false,
        });
        self.advance_pending_forward(Instant::now());
    }

    fn advance_pending_forward(&mut self, now: Instant) {
        let Some(p) = &mut self.pending_forward else {
            return;
        };
        if let Some(until) = p.deregister_until {
            if now < until {
                return;
            }
            log::warn!("deregistration not confirmed within its bound; forwarding anyway");
            p.deregister_until = None;
            p.not_before = Some(now);
        }
        if p.not_before.is_some_and(|t| now < t) {
            return;
        }
        if !p.pre_stop_started {
            p.pre_stop_started = true;
            if let Some(cmd) = self.cfg.hooks.pre_stop.clone() {
                self.start_hook(HookKind::PreStop, &cmd);
                return;
            }
        }
        if self.children.values().any(|o| {
            matches!(
                o,
                Owner::Hook {
                    kind: HookKind::PreStop,
                    ..
                }
            )
        }) {
            return;
        }
        let signal = p.signal;
        self.pending_forward = None;
        self.forward_stop(signal);
    }

    fn forward_stop(&mut self, signal: i32) {
        self.forward(signal);
        if self.app_pid.is_some() && self.kill_app_at.is_none() && self.policy.kill_after_grace {
            self.kill_app_at = Some(Instant::now() + self.cfg.grace);
        }
    }

    /// Deliver to the app by our rules (pid or group).
    fn forward(&mut self, sig: i32) {
        let Some(pid) = self.app_pid else {
            log::debug!("no app running; {} not forwarded", signal_name(sig));
            return;
        };
        log::debug!("forwarding {} to {}", signal_name(sig), pid);
        self.signals_forwarded += 1;
        self.kill_app(sig);
    }

    fn kill_app(&self, sig: i32) {
        if let Some(pid) = self.app_pid {
            // The app leads its own group unless isolation is None; only then is the group ours too.
            let group = self.cfg.signal_group && self.cfg.isolation != Isolation::None;
            spawn::kill(if group { -pid } else { pid }, sig);
        }
    }

    // ---- the app -----------------------------------------------------------------------------------

    fn spawn_app(&mut self) {
        let spec = SpawnSpec {
            path: &self.app_path,
            argv: &self.cfg.command,
            isolation: self.cfg.isolation,
            take_tty: self.take_tty,
            pdeathsig: self.cfg.pdeathsig,
            output: None,
            mask: match self.policy.child_signals {
                ChildSignals::Inherited => self.mask,
                ChildSignals::Reset => OriginalMask::empty(),
            },
            default_dispositions: self.policy.child_signals == ChildSignals::Reset,
            extra_env: &[],
        };
        match spawn::spawn(&spec) {
            Ok(pid) => {
                log::info!("started {} as pid {pid}", self.app_path.display());
                if self.policy.chdir_root {
                    // dumb-init: the init pins no directory (the app keeps the caller's).
                    if let Err(e) = nix::unistd::chdir("/") {
                        log::debug!("cannot chdir to /: {e}");
                    }
                }
                self.children.insert(pid, Owner::App);
                self.no_children = false;
                self.app_pid = Some(pid);
                self.app_started = Some(Instant::now());
                self.state = AppState::Running;
                if let Some(r) = &self.registration {
                    r.send(registration::Command::AppStarted { pid });
                }
                if let Some(h) = &mut self.health {
                    h.next = Some(Instant::now());
                }
            }
            Err(e) => {
                let code = match (&e, self.policy.exec_failure) {
                    (spawn::SpawnError::Exec { errno, .. }, style)
                        if style != crate::config::policy::ExecFailure::Microinit =>
                    {
                        let name = self.cfg.command[0].to_string_lossy();
                        let (code, line) = crate::config::policy::exec_failure(
                            style,
                            &name,
                            *errno as i32,
                            std::process::id(),
                        );
                        eprintln!("{line}");
                        code
                    }
                    _ => {
                        eprintln!("microinit: {e}");
                        e.exit_code()
                    }
                };
                let status = ExitStatus::Code(code);
                self.last_exit = Some(status);
                self.after_app_exit(status);
            }
        }
    }

    fn on_app_exit(&mut self, status: ExitStatus) {
        log::info!("app (pid {}) ended: {status}", self.app_pid.unwrap_or(0));
        self.last_app_pid = self.app_pid.take();
        self.kill_app_at = None;
        self.last_exit = Some(status);
        self.after_app_exit(status);
    }

    fn after_app_exit(&mut self, status: ExitStatus) {
        let ran_for = self
            .app_started
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        if let Some(h) = &mut self.health {
            h.next = None;
        }
        let policy_restarts = match self.cfg.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !status.success(),
            RestartPolicy::Always => true,
        };
        let under_max = self.cfg.max_restarts.is_none_or(|m| self.restarts < m);
        if !self.stopping && (self.restart_requested || (policy_restarts && under_max)) {
            let delay = if self.restart_requested {
                Duration::ZERO
            } else {
                if ran_for >= RESTART_HEALTHY_AFTER {
                    self.backoff_step = 0;
                }
                let d = RESTART_BACKOFF_BASE
                    .saturating_mul(1 << self.backoff_step.min(16))
                    .min(RESTART_BACKOFF_CAP);
                self.backoff_step += 1;
                d
            };
            self.restart_requested = false;
            self.restarts += 1;
            self.state = AppState::Restarting;
            if let Some(r) = &self.registration {
                r.send(registration::Command::AppDown {
                    reason: format!("app {status}; restarting"),
                });
            }
            log::warn!("app {status}; restart {} in {delay:?}", self.restarts);
            self.respawn_at = Some(Instant::now() + delay);
            return;
        }
        if policy_restarts && !under_max && !self.stopping {
            log::warn!("app {status}; giving up after {} restarts", self.restarts);
        }
        self.begin_exit(status.remapped(&self.cfg.remap_exit, self.policy.remap_signal_deaths));
    }

    /// The app is gone for good: deregister, post-stop hook, then sweep what is left.
    fn begin_exit(&mut self, code: i32) {
        self.state = AppState::Exited;
        self.final_status = Some(self.forced_exit.unwrap_or(code));
        self.pending_forward = None;
        if let Some(r) = &self.registration {
            r.send(registration::Command::Deregister);
            self.deregistering_until =
                Some(Instant::now() + r.deregister_bound() + DEREGISTER_MARGIN);
        }
        if let (EndOfLife::ExitAtOnce { signal_group: true }, Some(pid)) =
            (self.policy.end_of_life, self.last_app_pid)
        {
            // dumb-init: SIGTERM (after the rewrites, so `-r 15:0` sends nothing) to the app's group.
            let to = self
                .cfg
                .rewrites
                .iter()
                .find(|r| r.from == libc::SIGTERM)
                .map_or(libc::SIGTERM, |r| r.to);
            if to != 0 {
                spawn::kill(-pid, to);
            }
        }
        match self.cfg.hooks.post_stop.clone() {
            Some(cmd) => self.start_hook(HookKind::PostStop, &cmd),
            None => self.sweep_due = self.policy.end_of_life == EndOfLife::Sweep,
        }
    }

    /// SIGTERM to whatever the app left behind; SIGKILL at the grace deadline.
    fn start_sweep(&mut self) {
        let now = Instant::now();
        self.sweep = Some((now + self.cfg.grace, now + self.cfg.grace + KILL_SETTLE));
        self.signal_everything(libc::SIGTERM);
    }

    fn signal_everything(&self, sig: i32) {
        if self.is_pid1 {
            // kill(-1) from PID 1 reaches every process of the namespace but PID 1 itself.
            spawn::kill(-1, sig);
        } else {
            // As a subreaper, kill(-1) would reach the whole host: only what was reparented to us.
            for pid in spawn::children_of(std::process::id() as i32) {
                spawn::kill(pid, sig);
            }
        }
    }

    // ---- reaping -----------------------------------------------------------------------------------

    /// Drain exits and route each to its owner. Returns true when no children are left.
    fn reap(&mut self) -> bool {
        let drain = reaper::drain();
        for (pid, status) in drain.exited {
            match self.children.remove(&pid) {
                Some(Owner::App) => self.on_app_exit(status),
                Some(Owner::Health {
                    output,
                    mut buf,
                    timed_out,
                    app_pid,
                    ..
                }) => {
                    read_capped(output.as_raw_fd(), &mut buf);
                    if app_pid == self.app_pid {
                        self.on_health_result(status, buf, timed_out);
                    } else {
                        // The app it checked exited meanwhile: a late "passing" would turn the check green
                        // while the app is down (or vouch for a restarted app that is not ready yet).
                        log::debug!("dropping the result of a health command for a previous app");
                        // A restarted app's first run was skipped while this one was still going.
                        self.schedule_health();
                    }
                }
                Some(Owner::Hook {
                    kind, timed_out, ..
                }) => self.on_hook_exit(kind, status, timed_out),
                Some(Owner::OnChange) => {
                    if !status.success() {
                        log::warn!("--on-change program {status}");
                    }
                    if let Some(again) = self.on_change_again.take() {
                        self.start_on_change(again);
                    }
                }
                None => {
                    self.zombies_reaped += 1;
                    if self.cfg.warn_on_reap {
                        log::warn!("Reaped zombie process with pid={pid}");
                    } else {
                        log::debug!("reaped orphan pid {pid} ({status})");
                    }
                }
            }
        }
        drain.no_children
    }

    // ---- health command and hooks -----------------------------------------------------------------

    fn shell_spawn(&self, cmd: &str, output: Option<RawFd>) -> Result<i32, spawn::SpawnError> {
        let argv: Vec<OsString> = vec!["sh".into(), "-c".into(), cmd.into()];
        spawn::spawn(&SpawnSpec {
            path: std::path::Path::new("/bin/sh"),
            argv: &argv,
            // Own group: a timeout kills the command and whatever it started.
            isolation: Isolation::ProcessGroup,
            take_tty: false,
            pdeathsig: Some(libc::SIGKILL),
            output,
            mask: self.mask,
            default_dispositions: false,
            extra_env: &[],
        })
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
        let (r, w) = match nix::unistd::pipe2(
            nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK,
        ) {
            Ok(p) => p,
            Err(e) => {
                log::error!("health command: cannot create a pipe: {e}");
                return;
            }
        };
        match self.shell_spawn(&command, Some(w.as_raw_fd())) {
            Ok(pid) => {
                self.children.insert(
                    pid,
                    Owner::Health {
                        output: r,
                        buf: Vec::new(),
                        deadline: Instant::now() + timeout,
                        timed_out: false,
                        app_pid: self.app_pid,
                    },
                );
                self.no_children = false;
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

    fn on_health_result(&mut self, status: ExitStatus, buf: Vec<u8>, timed_out: bool) {
        let mut output = String::from_utf8_lossy(&buf).into_owned();
        let check = if timed_out {
            output = format!(
                "health command timed out after {:?}\n{output}",
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
        self.send_health(check, output);
        self.schedule_health();
    }

    fn send_health(&self, status: CheckStatus, output: String) {
        if let Some(r) = &self.registration {
            r.send(registration::Command::Health { status, output });
        }
    }

    fn schedule_health(&mut self) {
        if self.app_pid.is_some() {
            if let Some(h) = &mut self.health {
                h.next = Some(Instant::now() + h.interval);
            }
        }
    }

    fn start_hook(&mut self, kind: HookKind, cmd: &str) {
        match self.shell_spawn(cmd, None) {
            Ok(pid) => {
                log::info!("{} hook started (pid {pid})", kind.name());
                let deadline = Instant::now() + self.cfg.hooks.timeout;
                self.children.insert(
                    pid,
                    Owner::Hook {
                        kind,
                        deadline,
                        timed_out: false,
                    },
                );
                self.no_children = false;
            }
            Err(e) => self.on_hook_failed(kind, &format!("could not start: {e}"), e.exit_code()),
        }
    }

    fn on_hook_exit(&mut self, kind: HookKind, status: ExitStatus, timed_out: bool) {
        if status.success() && !timed_out {
            log::info!("{} hook done", kind.name());
            self.after_hook(kind);
        } else {
            let what = if timed_out {
                format!("timed out after {:?}", self.cfg.hooks.timeout)
            } else {
                status.to_string()
            };
            self.on_hook_failed(kind, &what, status.code());
        }
    }

    fn on_hook_failed(&mut self, kind: HookKind, what: &str, code: i32) {
        if kind == HookKind::PreStart && self.final_status.is_some() {
            // Ended by our own sweep: a stop request arrived while the hook ran; the exit is under way.
            log::info!("pre-start hook ended by the stop request ({what})");
            return;
        }
        eprintln!("microinit: {} hook failed: {what}", kind.name());
        if kind == HookKind::PreStart {
            // A failed pre-start means the app's preconditions do not hold: do not start it.
            eprintln!("microinit: not starting the app; exiting with the hook's status {code}");
            self.stopping = true;
            self.begin_exit(code);
        } else {
            self.after_hook(kind);
        }
    }

    fn after_hook(&mut self, kind: HookKind) {
        match kind {
            HookKind::PreStart if self.final_status.is_none() => self.spawn_app(),
            HookKind::PreStart => {}
            HookKind::PreStop => self.advance_pending_forward(Instant::now()),
            HookKind::PostStop => self.sweep_due = true,
        }
    }

    // ---- registration worker -------------------------------------------------------------------------

    fn on_worker_event(&mut self, ev: registration::Event) {
        match ev {
            registration::Event::Deregistered => {
                self.deregistering_until = None;
                if let Some(p) = &mut self.pending_forward {
                    if p.deregister_until.take().is_some() {
                        p.not_before = Some(Instant::now() + self.drain);
                    }
                }
                self.advance_pending_forward(Instant::now());
            }
            registration::Event::Fatal(msg) => {
                eprintln!("microinit: {msg}");
                if self.consul_required && self.final_status.is_none() {
                    eprintln!(
                        "microinit: --consul-required: stopping the app; exit status will be 125"
                    );
                    self.stopping = true;
                    self.forced_exit = Some(125);
                    if self.app_pid.is_some() {
                        self.forward_stop(libc::SIGTERM);
                    } else {
                        self.respawn_at = None;
                        self.begin_exit(125);
                    }
                }
            }
            registration::Event::MaintenanceResult(r) => self.on_maintenance_result(r),
        }
    }
}

/// Read what is available (non-blocking) into `buf`, keeping at most HEALTH_OUTPUT_MAX bytes.
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
