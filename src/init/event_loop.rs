//! The PID-1 event loop: one thread, one poll, every event.
//!
//! Owns: waiting for events (signals, child exits, the exec-result pipe, the registration worker, control
//! clients, the runtime-volume watch, timers), turning each into a lifecycle event, and performing the
//! actions the lifecycle returns (spawn, signal, start a hook, tell the worker, exit). Does not own: the
//! decisions (`lifecycle`), how a child is forked (`spawn`), how exits are collected (`reaper`), HTTP
//! (`consul`), the socket protocol (`control`). Submodules: `children` (the pid → owner table and the
//! routing of exits), `health` (the health command), `hooks` (running the hooks), `control_handler`.
//!
//! Wakeups: the signalfd, the registration worker's eventfd, control sockets, the health command's output
//! pipe, the app's exec-result pipe, the runtime-volume watch, and the nearest timer. With nothing but
//! signals to wait for, the loop sleeps in read(2) on the signalfd (a connecting control client raises
//! SIGIO), else in poll(): zero CPU while idle either way.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::policy::ChildSignals;
use crate::config::{
    Config, Dialect, DialectPolicy, Isolation, RuntimeCheckConfig, SupervisorConfig,
};
use crate::consul::registration::{self, Registration};
use crate::control::server::{ClientId, ControlServer};
use crate::control::status;
use crate::init::discovery::{self, Discovery};
use crate::init::exit_status::ExitStatus;
use crate::init::lifecycle::{Action, Actions, Awaited, DownReason, Event, Lifecycle, Policy};
use crate::init::resident;
use crate::init::signals::{self, signal_name, OriginalMask, Signals};
use crate::init::spawn::{self, ExecOutcome, SpawnError, SpawnSpec};
use crate::runtime_check::{self, which::LookupError};

mod children;
mod control_handler;
mod health;
mod hooks;
mod upstreams;

use children::Owner;
use health::HealthSchedule;

/// How long a deregistration may hold up a stop: the worker's own bound (`--deregister-timeout`; it answers
/// by then, even for a black-holed agent) plus this margin in case the worker itself is stuck.
const DEREGISTER_MARGIN: Duration = Duration::from_millis(500);

/// The app process, from fork until it is reaped.
struct App {
    pid: i32,
    /// Until the exec is confirmed (or failed): polled, never read blocking.
    exec_pipe: Option<OwnedFd>,
    /// The dialect's exit code for a failed exec, when it differs from the child's own 126/127.
    exec_failure: Option<i32>,
    started: Instant,
}

/// `--wait-runtime`: the volume is late; the loop waits for it while answering signals and clients.
pub struct RuntimeWait {
    pub waiter: runtime_check::Waiter,
    pub cfg: RuntimeCheckConfig,
}

/// What the loop needs besides `Config` (set up by main before any thread exists).
pub struct Setup {
    pub mask: OriginalMask,
    pub signals: Signals,
    pub is_pid1: bool,
    /// The app is isolated and stdin is a terminal: its group becomes the terminal's foreground group.
    pub take_tty: bool,
    /// The resolved command, or why it could not be resolved (looked up again after a runtime wait).
    pub app_path: Result<PathBuf, LookupError>,
    pub runtime_check: Option<status::RuntimeCheck>,
    /// Set when the runtime volume is incomplete and `--wait-runtime` allows waiting for it.
    pub runtime_wait: Option<RuntimeWait>,
}

/// Everything the loop knows; also what `microinit status` shows.
pub struct EventLoop {
    cfg: SupervisorConfig,
    /// The dialect's rules (what the child inherits, which signals are not forwarded …); its end of life is
    /// the lifecycle's.
    policy: DialectPolicy,
    mask: OriginalMask,
    signals: Signals,
    is_pid1: bool,
    take_tty: bool,
    app_path: Result<PathBuf, LookupError>,
    registration: Option<Registration>,
    health: Option<HealthSchedule>,
    /// `microinit status` & co; None when off (`microinit exec`), when the socket could not be bound, and
    /// until the first actions (the app's spawn) were performed.
    control: Option<ControlServer>,
    /// The socket to bind once the first actions are done (`run`).
    control_cfg: Option<crate::config::ControlConfig>,
    dialect: &'static str,
    /// Control clients waiting for Consul's answer to their `maintenance` request, oldest first.
    maintenance_replies: VecDeque<(ClientId, bool)>,

    lifecycle: Lifecycle,
    runtime_wait: Option<RuntimeWait>,
    /// A BTreeMap: a handful of entries, no hashing per reaped orphan and no random seed to fetch.
    children: BTreeMap<i32, Owner>,
    app: Option<App>,
    /// The last app's pid: its process group may outlive it (`Action::SignalAppGroup`).
    last_app_pid: Option<i32>,
    /// The reaper's buffer, kept between wakeups (empty outside `reap`).
    reaped: Vec<(i32, ExitStatus)>,
    /// The poll set's buffer, kept between wakeups like `reaped` (refilled in `wait_for_events`): with
    /// Consul on every wakeup polls, and a fresh list would allocate on each signal and reaped orphan.
    poll_fds: Vec<libc::pollfd>,
    /// A SIGCHLD arrived (or we just started, or signalled leftovers): drain waitpid before anything else.
    reap_due: bool,
    /// The start-up code's pages were unmapped (`resident`): once, when the app first runs.
    startup_code_released: bool,
    /// Set by `Action::Exit`.
    exit_code: Option<i32>,
    /// What the lifecycle asked for when it started; performed first thing in `run`.
    first_actions: Actions,

    signals_forwarded: u64,
    zombies_reaped: u64,
    runtime_check: Option<status::RuntimeCheck>,
    /// `--wait-for` / `--watch`.
    discovery: Option<Discovery>,
    /// An `--on-change exec:` came due while the previous one still ran: run it again when that one exits.
    on_change_again: Option<discovery::Action>,
    metrics: Option<crate::metrics::Metrics>,
    /// `--ready fd:N`: N, and the read end of the current app's notification pipe until it said ready.
    notify_fd: Option<i32>,
    notify_pipe: Option<OwnedFd>,
}

impl EventLoop {
    /// Boxed, and the Config taken boxed: the loop (~2.3 KiB) and the Config (~1.7 KiB) are not copied
    /// through the frames of main's stages, whose stack pages PID 1 keeps for its whole life (RssAnon).
    pub fn new(cfg: Box<Config>, setup: Setup) -> std::io::Result<Box<EventLoop>> {
        let cfg = *cfg;
        let health = cfg.consul.as_ref().and_then(HealthSchedule::from_config);
        let notify_fd = match cfg.consul.as_ref().map(|c| &c.readiness) {
            Some(crate::config::Readiness::Notify(n)) => Some(*n),
            _ => None,
        };
        let consul = cfg.consul.clone();
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
                .map(|r| Box::new(r.status_reader()) as crate::metrics::ConsulStatus);
            crate::metrics::Metrics::start(addr, consul)
                .map_err(|e| log::error!("{e}; no metrics will be served"))
                .ok()
        });
        let deregister_bound = registration
            .as_ref()
            .map_or(Duration::ZERO, |r| r.deregister_bound() + DEREGISTER_MARGIN);
        let policy = Policy::new(
            &cfg.supervisor,
            &cfg.policy,
            consul.as_ref(),
            deregister_bound,
        );
        let dialect = match cfg.dialect {
            Dialect::Microinit => "microinit",
            Dialect::Tini => "tini",
            Dialect::DumbInit => "dumb-init",
        };
        let runtime = setup
            .runtime_wait
            .as_ref()
            .map(|w| (Awaited::RuntimeVolume, w.cfg.wait.unwrap_or_default()));
        // The upstreams are awaited after the runtime volume (their threads start at once either way).
        let upstreams = discovery.as_ref().filter(|d| d.is_waiting()).map(|d| {
            (
                Awaited::Upstreams,
                d.wait_timeout().unwrap_or(upstreams::FOREVER),
            )
        });
        let (first_wait, second_wait) = match runtime {
            Some(r) => (Some(r), upstreams),
            None => (upstreams, None),
        };
        // The lifecycle's first actions are performed by `run`; here it only takes its first phase.
        let (mut lifecycle, first) = Lifecycle::start(policy, first_wait, Instant::now());
        if let Some((what, limit)) = second_wait {
            lifecycle.then_wait(what, limit);
        }
        Ok(Box::new(EventLoop {
            mask: setup.mask,
            signals: setup.signals,
            is_pid1: setup.is_pid1,
            take_tty: setup.take_tty,
            app_path: setup.app_path,
            registration,
            health,
            control: None,
            control_cfg: cfg.control,
            dialect,
            maintenance_replies: VecDeque::new(),
            policy: cfg.policy,
            cfg: cfg.supervisor,
            lifecycle,
            runtime_wait: setup.runtime_wait,
            children: BTreeMap::new(),
            app: None,
            last_app_pid: None,
            reaped: Vec::new(),
            poll_fds: Vec::new(),
            reap_due: true,
            startup_code_released: false,
            exit_code: None,
            signals_forwarded: 0,
            zombies_reaped: 0,
            first_actions: first,
            runtime_check: setup.runtime_check,
            discovery,
            on_change_again: None,
            metrics,
            notify_fd,
            notify_pipe: None,
        }))
    }

    /// Run until the lifecycle says exit; returns microinit's exit code.
    pub fn run(mut self: Box<Self>) -> i32 {
        self.perform_all(self.first_actions);
        // The socket is bound after the app was forked, so its set-up (a dozen syscalls) runs while the app
        // execs, not before: before the first wait, so `microinit status` answers in every phase.
        // The app matters more than `microinit status`: a socket that cannot be bound is a warning only.
        self.control = self.control_cfg.take().and_then(|c| {
            ControlServer::bind(&c)
                .map_err(|e| log::warn!("{e}; `microinit status` will not work in this container"))
                .ok()
        });
        loop {
            if !self.startup_code_released && self.lifecycle.app_running() {
                // Once, as the steady state begins: the loop maps back only the code it runs (resident.rs).
                self.startup_code_released = true;
                let n = resident::release_read_only_segments();
                log::debug!("unmapped {} KiB of start-up code and constants", n / 1024);
            }
            self.publish_metrics();
            // waitpid only after a SIGCHLD: the kernel sends one for every child that dies (orphans
            // reparented to us included), so an idle or forwarding wakeup costs no extra syscall.
            if std::mem::take(&mut self.reap_due) {
                self.reap();
            }
            if let Some(code) = self.exit_code {
                log::trace!("exiting with {code}");
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
            self.on_timers(Instant::now());
            if self.exit_code.is_none() && !self.reap_due {
                self.wait_for_events();
            }
        }
    }

    // ---- the lifecycle -------------------------------------------------------------------------------

    fn dispatch(&mut self, ev: Event) {
        if ev != Event::Execed && self.app.as_ref().is_some_and(|a| a.exec_pipe.is_some()) {
            // The kernel closes the pipe during execve, before the app runs a single instruction: whatever
            // the app did before this event (a signal it provoked, a client it told "ready") the pipe
            // already says so. Look first, so the lifecycle does not take a running app for a child that
            // has not exec'd yet (which a stop request would SIGKILL).
            self.on_exec_pipe();
        }
        let actions = self.lifecycle.on(ev, Instant::now());
        self.perform_all(actions);
    }

    fn perform_all(&mut self, actions: impl IntoIterator<Item = Action>) {
        for a in actions {
            self.perform(a);
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Spawn => self.spawn_app(),
            Action::StartHook(hook) => self.start_hook(hook),
            Action::KillHook(hook) => self.kill_hook(hook),
            Action::Forward(sig) => self.forward(sig),
            Action::ForwardHeld(set) => {
                for sig in (1..=signals::rtmax()).filter(|s| set.contains(*s)) {
                    self.forward(sig);
                }
            }
            Action::KillApp => self.kill_app(libc::SIGKILL),
            Action::KillUnexeced => {
                if let Some(app) = &self.app {
                    log::info!(
                        "stop request before the app's exec: killing pid {}",
                        app.pid
                    );
                    spawn::kill(app.pid, libc::SIGKILL);
                }
            }
            Action::AppStarted => self.on_app_started(),
            Action::AppDown(reason) => {
                let reason = match reason {
                    DownReason::Exited(status) => format!("app {status}; restarting"),
                    DownReason::RestartRequested => "restart requested (microinit restart)".into(),
                };
                self.tell_worker(registration::Command::AppDown { reason });
            }
            Action::Deregister => self.tell_worker(registration::Command::Deregister),
            Action::SignalLeftovers(sig) => {
                self.signal_everything(sig);
                // Nothing left means no SIGCHLD will come: let waitpid's ECHILD say so.
                self.reap_due = true;
            }
            Action::SignalAppGroup(sig) => {
                if let Some(pid) = self.last_app_pid {
                    spawn::kill(-pid, sig);
                }
            }
            Action::WaitFailed(Awaited::RuntimeVolume) => {
                if let Some(w) = &self.runtime_wait {
                    eprint!("{}", w.waiter.report().missing_message(&w.cfg));
                }
            }
            Action::WaitFailed(Awaited::Upstreams) => self.upstreams_failed(),
            Action::Exit(code) => self.exit_code = Some(code),
        }
    }

    fn tell_worker(&self, cmd: registration::Command) {
        if let Some(r) = &self.registration {
            r.send(cmd);
        }
    }

    // ---- waiting -------------------------------------------------------------------------------------

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
        let exec_pipe = self
            .app
            .as_ref()
            .and_then(|a| a.exec_pipe.as_ref())
            .map(AsRawFd::as_raw_fd);
        let runtime_watch = self.runtime_wait.as_ref().and_then(|w| w.waiter.fd());
        // Only a configured health check has a health command to look for among the children.
        let health_running = self.health.is_some()
            && self
                .children
                .values()
                .any(|o| matches!(o, Owner::Health { .. }));
        // Nothing to wait for but signals (a new control client raises SIGIO): sleep in read(2) on the
        // signalfd as catatonit does. poll(2) would add its wake-up and a second syscall to the
        // signal-forwarding path (scripts/bench.sh).
        if timeout == -1
            && self.registration.is_none()
            && self.discovery.is_none()
            && self.notify_pipe.is_none()
            && !health_running
            && exec_pipe.is_none()
            && runtime_watch.is_none()
            && self
                .control
                .as_ref()
                .is_none_or(ControlServer::may_sleep_in_read)
        {
            self.wait_in_read();
            return;
        }
        let mut fds = std::mem::take(&mut self.poll_fds);
        fds.clear();
        fds.push(libc::pollfd {
            fd: self.signals.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let mut watch = |fd: RawFd| {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
        };
        if let Some(r) = &self.registration {
            watch(r.wake_fd().as_raw_fd());
        }
        // A child stopped before its exec (SIGSTOP from another process) leaves this pipe silent: it is one
        // fd among the others, so PID 1 goes on answering signals and clients.
        if let Some(fd) = exec_pipe {
            watch(fd);
        }
        if let Some(fd) = runtime_watch {
            watch(fd);
        }
        let discovery_fd = self.discovery.as_ref().map(|d| d.wake_fd().as_raw_fd());
        if let Some(fd) = discovery_fd {
            watch(fd);
        }
        let notify_fd = self.notify_pipe.as_ref().map(AsRawFd::as_raw_fd);
        if let Some(fd) = notify_fd {
            watch(fd);
        }
        for owner in self.children.values() {
            if let Owner::Health { output, .. } = owner {
                watch(output.as_raw_fd());
            }
        }
        if let Some(c) = &self.control {
            c.push_poll_fds(&mut fds);
        }
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            self.poll_fds = fds;
            return; // EINTR: cannot happen with every signal blocked, but harmless
        }
        // On a timeout (n == 0) nothing is ready, but the control server still has its turn: the end of a
        // rest of its listener is one of the loop's deadlines.
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
                for ev in r.take_events() {
                    self.on_worker_event(ev);
                }
            }
        }
        if exec_pipe.is_some_and(ready) {
            self.on_exec_pipe();
        }
        if runtime_watch.is_some_and(ready) {
            self.recheck_runtime();
        }
        if discovery_fd.is_some_and(ready) {
            self.on_discovery_wake();
        }
        if notify_fd.is_some_and(ready) {
            self.on_notify_readable();
        }
        self.read_health_output(&fds);
        self.serve_control(&fds);
        self.poll_fds = fds;
    }

    /// The idle wait: one batch of signals, then the control socket if a SIGIO came with it. A function of
    /// its own, linked next to what it calls on the way to kill(2) (scripts/steady-state.ld).
    #[inline(never)]
    fn wait_in_read(&mut self) {
        let batch = self.signals.wait_batch();
        for s in batch.iter() {
            self.on_signal(s);
        }
        self.serve_control(&[]);
    }

    /// The nearest timer, if any. Runs on every wakeup, so it allocates nothing; and it is plain code, not
    /// an array iterator, whose out-of-line std code would keep a window of the binary mapped that nothing
    /// else in the steady state runs (`resident`).
    fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.lifecycle.next_deadline();
        next = earliest(
            next,
            self.runtime_wait.as_ref().map(|w| w.waiter.next_check()),
        );
        next = earliest(next, self.health_deadline());
        next = earliest(
            next,
            self.control.as_ref().and_then(ControlServer::deadline),
        );
        earliest(next, self.discovery.as_ref().and_then(Discovery::deadline))
    }

    fn on_timers(&mut self, now: Instant) {
        if self.lifecycle.next_deadline().is_some_and(|t| now >= t) {
            self.dispatch(Event::Tick);
        }
        if self
            .runtime_wait
            .as_ref()
            .is_some_and(|w| now >= w.waiter.next_check())
        {
            self.recheck_runtime();
        }
        if let Some(c) = &mut self.control {
            c.expire(now);
        }
        self.health_timers(now);
        self.discovery_timers(now);
    }

    // ---- the runtime volume --------------------------------------------------------------------------

    fn recheck_runtime(&mut self) {
        let Some(w) = &mut self.runtime_wait else {
            return;
        };
        let complete = w.waiter.recheck(&self.cfg.command, &w.cfg, Instant::now());
        self.runtime_check = Some(w.waiter.report().summary());
        if !complete {
            return;
        }
        self.runtime_wait = None;
        // The volume brought the command (or its link target): look it up again.
        let path_var = std::env::var_os("PATH");
        self.app_path = runtime_check::which::resolve(&self.cfg.command[0], path_var.as_deref());
        self.dispatch(Event::AwaitDone);
        // Next in line: the upstreams, which may be up already.
        self.upstreams_up();
    }

    /// For `microinit status`: what the lifecycle waits for and since when.
    fn waiting_for(&self) -> Option<(Awaited, Instant)> {
        match self.lifecycle.phase() {
            crate::init::lifecycle::Phase::Waiting { what, since, .. } => Some((what, since)),
            _ => None,
        }
    }

    // ---- signals -------------------------------------------------------------------------------------

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
        if self.app.as_ref().is_some_and(|a| a.exec_pipe.is_none())
            && self.lifecycle.forwards_at_once(sig)
        {
            // The app gets the signal first, then PID 1 does the bookkeeping: woken after a long idle, every
            // line of code it runs before kill(2) is a cache miss on the way to the app (scripts/bench.sh).
            // The exec is confirmed, so `dispatch` would have nothing to look at first.
            self.forward(sig);
            let actions = self.lifecycle.on(Event::Signal(sig), Instant::now());
            self.perform_all(actions.after_forward(sig));
        } else {
            self.dispatch(Event::Signal(sig));
        }
        if signals::is_tty_stop(sig) && self.policy.tty_stop_suspends_init {
            // Job control as dumb-init does: the app stopped, so stop ourselves too; SIGCONT resumes both.
            // (As PID 1 the kernel ignores this, which is harmless.)
            spawn::kill(std::process::id() as i32, libc::SIGSTOP);
        }
    }

    /// Deliver to the app by our rules (pid or group).
    fn forward(&mut self, sig: i32) {
        let Some(pid) = self.app.as_ref().map(|a| a.pid) else {
            log::debug!("no app running; {} not forwarded", signal_name(sig));
            return;
        };
        log::debug!("forwarding {} to {}", signal_name(sig), pid);
        self.signals_forwarded += 1;
        self.kill_app(sig);
    }

    fn kill_app(&self, sig: i32) {
        if let Some(app) = &self.app {
            // The app leads its own group unless isolation is None; only then is the group ours too.
            let group = self.cfg.signal_group && self.cfg.isolation != Isolation::None;
            spawn::kill(if group { -app.pid } else { app.pid }, sig);
        }
    }

    fn signal_everything(&self, sig: i32) {
        if self.is_pid1 {
            // kill(-1) from PID 1 reaches every process of the namespace but PID 1 itself.
            spawn::kill(-1, sig);
        } else if spawn::has_children() {
            // As a subreaper, kill(-1) would reach the whole host: only what was reparented to us. Reading
            // every /proc/PID/stat of the host costs ~4 syscalls per process, so only when there is a child.
            for pid in spawn::children_of(std::process::id() as i32) {
                spawn::kill(pid, sig);
            }
        }
    }

    // ---- the app -------------------------------------------------------------------------------------

    fn spawn_app(&mut self) {
        let path = match &self.app_path {
            Ok(p) => p.clone(),
            Err(e) => {
                eprintln!("microinit: {}", e.message(&self.cfg.command[0]));
                let code = e.exit_code();
                self.dispatch(Event::AppExited(ExitStatus::Code(code)));
                return;
            }
        };
        let notify = self.notify_pipe_for_spawn();
        let spec = SpawnSpec {
            path: &path,
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
            notify_fd: notify.as_ref().map(|(w, n)| (w.as_raw_fd(), *n)),
            extra_env: &[],
        };
        match spawn::spawn(&spec) {
            Ok(started) => {
                if self.policy.chdir_root {
                    // dumb-init: the init pins no directory (the app keeps the caller's).
                    if let Err(e) = nix::unistd::chdir("/") {
                        log::debug!("cannot chdir to /: {e}");
                    }
                }
                self.children.insert(started.pid, Owner::App);
                self.last_app_pid = Some(started.pid);
                self.app = Some(App {
                    pid: started.pid,
                    exec_pipe: Some(started.exec_pipe),
                    exec_failure: None,
                    started: Instant::now(),
                });
            }
            Err(e) => {
                eprintln!("microinit: {e}");
                self.reap_due = true;
                self.dispatch(Event::AppExited(ExitStatus::Code(e.exit_code())));
            }
        }
    }

    /// The exec-result pipe is readable: the app execed, or its exec failed (its exit follows).
    fn on_exec_pipe(&mut self) {
        let Some(pipe) = self.app.as_ref().and_then(|a| a.exec_pipe.as_ref()) else {
            return;
        };
        let outcome = spawn::exec_outcome(pipe);
        if outcome == ExecOutcome::Pending {
            return;
        }
        let failure = match outcome {
            ExecOutcome::Failed(errno) => self.report_exec_failure(errno),
            _ => None,
        };
        if let Some(app) = &mut self.app {
            app.exec_pipe = None;
            app.exec_failure = failure;
        }
        if outcome == ExecOutcome::Execed {
            self.dispatch(Event::Execed);
        }
    }

    /// Says why the exec failed, in the dialect's words. The child exits with microinit's own code (127 or
    /// 126); a dialect with other codes (tini, dumb-init) has its code returned here, to stand for it.
    fn report_exec_failure(&self, errno: nix::errno::Errno) -> Option<i32> {
        let style = self.policy.exec_failure;
        if style != crate::config::policy::ExecFailure::Microinit {
            let name = self.cfg.command[0].to_string_lossy();
            let (code, line) =
                crate::config::policy::exec_failure(style, &name, errno as i32, std::process::id());
            eprintln!("{line}");
            return Some(code);
        }
        if let Ok(path) = &self.app_path {
            let e = SpawnError::Exec {
                path: path.clone(),
                errno,
            };
            eprintln!("microinit: {e}");
        }
        None
    }

    fn on_app_started(&mut self) {
        let Some(app) = &self.app else { return };
        let pid = app.pid;
        if let Ok(path) = &self.app_path {
            log::info!("started {} as pid {pid}", path.display());
        }
        self.tell_worker(registration::Command::AppStarted { pid });
        self.health_app_started();
    }

    fn on_app_exit(&mut self, mut status: ExitStatus) {
        let Some(mut app) = self.app.take() else {
            return;
        };
        if let Some(pipe) = app.exec_pipe.take() {
            // Exited before the loop saw the pipe: an exec failure is there to read (never blocks: the
            // child is gone, so the pipe holds its errno or is at EOF).
            if let ExecOutcome::Failed(errno) = spawn::exec_outcome(&pipe) {
                app.exec_failure = self.report_exec_failure(errno);
            }
        }
        if let Some(code) = app.exec_failure {
            status = ExitStatus::Code(code);
        }
        log::info!("app (pid {}) ended: {status}", app.pid);
        self.health_app_stopped();
        self.dispatch(Event::AppExited(status));
    }

    // ---- registration worker -------------------------------------------------------------------------

    fn on_worker_event(&mut self, ev: registration::Event) {
        match ev {
            registration::Event::Deregistered => self.dispatch(Event::Deregistered),
            registration::Event::Fatal(msg) => {
                eprintln!("microinit: {msg}");
                self.dispatch(Event::ConsulFatal);
            }
            registration::Event::MaintenanceResult(r) => self.on_maintenance_result(r),
        }
    }
}

/// The earlier of two optional instants (`Option`'s own ordering puts None first).
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
