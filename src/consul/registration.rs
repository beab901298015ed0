//! The Consul registration lifecycle around the app, on ONE worker thread.
//!
//! Owns: parsing `ConsulConfig` from `Options`, the service definition (fields or `--service-file`, always
//! with a TTL check carrying DeregisterCriticalServiceAfter), and the worker: register when the app starts,
//! mark passing once ready (immediately, first passing health result, or a TCP port accepting), heartbeat at
//! TTL/2 and on every health result, re-register at once when the agent forgot the service, capped exponential
//! backoff with jitter while the agent is down, maintenance mode, and deregistration within
//! `--deregister-timeout` ([`DEREGISTER_BOUND`] by default) of the request. Does not own: spawning or reaping the health command, signals, or
//! the drain timer (the main loop does those and talks to the worker through [`Command`] / [`Event`] and the
//! eventfd of [`Registration::wake_fd`]). The HTTP calls themselves are in `consul`.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::eventfd::{EfdFlags, EventFd};
use serde_json::{json, Map, Value};

use crate::config::discovery::{parse_wait_target, WaitTarget};
use crate::config::{user_file, AgentConfig, ConsulConfig, Options, Readiness, ServiceSource};
pub use crate::consul::client::CheckStatus;
use crate::consul::client::{Client, ErrorKind};
use crate::consul::{address, identity};
use crate::control::status;
use crate::init::probes;

/// Default of `--deregister-timeout`: a deregistration request is answered ([`Event::Deregistered`]) within
/// this time after [`Registration::send`], even with a black-holed agent: a call in flight is capped by
/// `consul::CALL_TIMEOUT` (name resolution of a host name in CONSUL_HTTP_ADDR included), and the deregister
/// call gets whatever remains.
pub const DEREGISTER_BOUND: Duration = Duration::from_secs(2);
/// Consul raises a DeregisterCriticalServiceAfter below this to it (its reaper's floor).
const CONSUL_MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);
/// Kept free inside the bound for the event to reach the main loop.
const DEREGISTER_MARGIN: Duration = Duration::from_millis(100);
/// First retry delay after a failure; doubles up to `backoff_cap()`.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// First retry delay after the agent was busy (no answer in time, or a dropped connection): it may still hold
/// the request we gave up on and execute it later, so a retry within its backlog only adds to the backlog;
/// hundreds of instances doing that is the retry storm that keeps an overloaded agent overloaded.
const BUSY_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// A deregistration the agent dropped (a mass stop: over its per-address connection limit) is sent again
/// after a pause of this much plus up to as much again of jitter, while the bound leaves time for it.
const DEREGISTER_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// `--ready` probes: time limit (short: the worker answers a deregistration only between calls) and the
/// pause between attempts.
const READY_PROBE_TIMEOUT: Duration = Duration::from_millis(200);
const READY_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Tell the app (and the hooks and health command, which inherit PID 1's environment) the service ID it
/// is registered under, in `MICROINIT_SERVICE_ID`: the default ID is computed, and an app that looks
/// itself up in Consul must do so by ID (the name is shared by every replica). Call on PID 1's main thread
/// before any other thread exists: setenv is not thread-safe.
pub fn export_service_id(cfg: &ConsulConfig) {
    let (_, id, _) = service_definition(cfg);
    std::env::set_var("MICROINIT_SERVICE_ID", id);
}

/// What the main loop tells the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The app (or its restart) was spawned: register, and start the readiness condition.
    AppStarted { pid: i32 },
    /// A health command finished: exit 0 passing, 1 warning, anything else critical; its output.
    Health { status: CheckStatus, output: String },
    /// The app exited (maybe to be restarted): the check goes critical with this reason.
    AppDown { reason: String },
    /// `--ready fd:N`: the app wrote its readiness line.
    Ready,
    /// `microinit maintenance on|off`: answered with [`Event::MaintenanceResult`].
    Maintenance { on: bool, reason: Option<String> },
    /// Deregister now (SIGTERM or app exit): answered with [`Event::Deregistered`] within [`Registration::deregister_bound`].
    Deregister,
    /// Stop the worker thread (after `Deregister`, or when registration is no longer wanted).
    Shutdown,
}

/// What the worker tells the main loop (after making [`Registration::wake_fd`] readable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The answer to `Deregister`, also when it failed or ran out of time (the error is logged).
    Deregistered,
    /// `--consul-required` and registration failed: the main loop should shut the app down.
    Fatal(String),
    MaintenanceResult(Result<(), String>),
}

/// The handle the main loop keeps: command channel in, event channel + eventfd out, status snapshot.
pub struct Registration {
    commands: Sender<(Instant, Command)>,
    events: Receiver<Event>,
    wake: Arc<EventFd>,
    status: Arc<Mutex<Option<status::Consul>>>,
    deregister_bound: Duration,
}

impl Registration {
    /// Spawn the worker thread. Call with all signals blocked (the thread inherits the mask).
    pub fn start(cfg: ConsulConfig) -> std::io::Result<Registration> {
        let client = Client::new(&cfg.agent)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let wake = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (ev_tx, ev_rx) = mpsc::channel();
        let (definition, id, name) = service_definition(&cfg);
        for w in &cfg.agent.warnings {
            log::warn!("{w}");
        }
        // Not a log record: the operator sees it at every verbosity. A closed stderr is not an error.
        let _ = writeln!(
            std::io::stderr(),
            "microinit: {}",
            start_line(&cfg, &definition, &id, &name)
        );
        let status = Arc::new(Mutex::new(None));
        let deregister_bound = cfg.deregister_timeout;
        let worker = Worker {
            check_id: format!("microinit:{id}"),
            client,
            definition,
            id,
            name,
            commands: cmd_rx,
            pending: VecDeque::new(),
            events: ev_tx,
            wake: Arc::clone(&wake),
            status: Arc::clone(&status),
            phase: Phase::WaitingForApp,
            ready: false,
            app_up: false,
            registered: false,
            ever_registered: false,
            check: (
                CheckStatus::Critical,
                "microinit: waiting for the app to start".into(),
            ),
            last_health: None,
            maintenance: None,
            heartbeat_due: None,
            retry_due: None,
            probe_due: None,
            failures: 0,
            last_error: None,
            last_error_kind: None,
            last_heartbeat: None,
            last_delivered: None,
            critical_since: Some(Instant::now()),
            removed_by_consul: false,
            unconfirmed: false,
            registrations: 0,
            rng: seed(),
            cfg,
        };
        worker.warn_about_config();
        worker.publish();
        std::thread::Builder::new()
            .name("consul".into())
            .spawn(move || worker.run())?;
        Ok(Registration {
            commands: cmd_tx,
            events: ev_rx,
            wake,
            status,
            deregister_bound,
        })
    }

    /// Within this time after [`Command::Deregister`] the worker answers [`Event::Deregistered`].
    pub fn deregister_bound(&self) -> Duration {
        self.deregister_bound
    }

    /// Readable when events are queued; the main loop polls it and then calls [`Registration::take_events`].
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Queue a command (never blocks). If the worker is gone, the command is dropped: a `Deregister` is then
    /// still answered, so the main loop never waits for nothing.
    pub fn send(&self, cmd: Command) {
        if let Err(mpsc::SendError((_, cmd))) = self.commands.send((Instant::now(), cmd)) {
            log::debug!("consul worker gone; dropped {cmd:?}");
        }
    }

    /// Clear the eventfd and drain the queued events; never blocks.
    pub fn take_events(&self) -> Vec<Event> {
        // Read first, then drain: the worker queues before it writes, so nothing is lost in between.
        let _ = self.wake.read();
        self.events.try_iter().collect()
    }

    /// The state for `microinit status`: agent, service, check, last heartbeat, maintenance, last error
    /// (None only before the worker's first report, which `start` makes before it returns).
    pub fn status(&self) -> Option<status::Consul> {
        snapshot(&self.status)
    }

    /// A reader of the same status snapshot for another thread (the metrics listener): it never waits for
    /// the worker, which holds the lock only to replace the value.
    pub fn status_reader(&self) -> impl Fn() -> Option<status::Consul> + Send + 'static {
        let status = Arc::clone(&self.status);
        move || snapshot(&status)
    }
}

fn snapshot(status: &Mutex<Option<status::Consul>>) -> Option<status::Consul> {
    status
        .lock()
        .map(|v| v.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the first `AppStarted`.
    WaitingForApp,
    /// The app has started: keep the registration alive.
    Active,
    /// `--consul-required` and a failure: Fatal sent, nothing more is attempted except deregistration.
    Failed,
    /// Deregistered on request: nothing more is attempted.
    Deregistered,
}

struct Worker {
    cfg: ConsulConfig,
    client: Client,
    /// The definition without the check status, which is filled in at each registration.
    definition: Value,
    id: String,
    name: String,
    check_id: String,
    commands: Receiver<(Instant, Command)>,
    /// Commands taken off the channel while a multi-call operation checked for a pending deregistration.
    pending: VecDeque<(Instant, Command)>,
    events: Sender<Event>,
    wake: Arc<EventFd>,
    status: Arc<Mutex<Option<status::Consul>>>,
    phase: Phase,
    ready: bool,
    /// Between `AppStarted` and `AppDown`: only then may a health result speak for the app.
    app_up: bool,
    registered: bool,
    ever_registered: bool,
    /// What the TTL check should show in Consul.
    check: (CheckStatus, String),
    last_health: Option<(CheckStatus, String)>,
    /// Some(reason) while maintenance mode is wanted.
    maintenance: Option<Option<String>>,
    heartbeat_due: Option<Instant>,
    retry_due: Option<Instant>,
    probe_due: Option<Instant>,
    failures: u32,
    last_error: Option<String>,
    last_error_kind: Option<ErrorKind>,
    /// (unix seconds, error if the heartbeat failed).
    last_heartbeat: Option<(u64, Option<String>)>,
    /// The last status the agent accepted, and when: what the TTL check shows until it expires.
    last_delivered: Option<(Instant, CheckStatus)>,
    /// Since when `check` has been critical (None while it is not): tells Consul's own reaping
    /// (DeregisterCriticalServiceAfter) apart from an agent that forgot the service.
    critical_since: Option<Instant>,
    /// Consul removed the service after it stayed critical for deregister-after, as we asked it to: it is
    /// registered again once the check is no longer critical (the app is ready), never in a loop while the
    /// app stays down or crash-loops through its restarts.
    removed_by_consul: bool,
    /// The last registration request got no answer (timeout, reset): the agent may have executed it anyway,
    /// so the next attempt is a heartbeat, which tells (404: it did not), instead of one more registration
    /// for a slow agent to execute.
    unconfirmed: bool,
    /// Successful registrations (first one included), for `status` and the tests.
    registrations: u32,
    rng: u64,
}

impl Worker {
    fn run(mut self) {
        loop {
            let next = if let Some(c) = self.pending.pop_front() {
                Ok(c)
            } else {
                match [self.heartbeat_due, self.retry_due, self.probe_due]
                    .into_iter()
                    .flatten()
                    .min()
                {
                    Some(due) => self
                        .commands
                        .recv_timeout(due.saturating_duration_since(Instant::now())),
                    None => self
                        .commands
                        .recv()
                        .map_err(|_| RecvTimeoutError::Disconnected),
                }
            };
            match next {
                Ok((_, Command::Shutdown)) | Err(RecvTimeoutError::Disconnected) => break,
                Ok((sent, cmd)) => self.handle(sent, cmd),
                Err(RecvTimeoutError::Timeout) => self.tick(),
            }
            self.publish();
        }
        log::debug!("consul worker stopped");
    }

    fn handle(&mut self, sent: Instant, cmd: Command) {
        match cmd {
            Command::AppStarted { pid } => {
                if !matches!(self.phase, Phase::WaitingForApp | Phase::Active) {
                    return;
                }
                self.phase = Phase::Active;
                self.app_up = true;
                self.ready = self.cfg.readiness == Readiness::Immediate;
                let check = if self.ready {
                    self.last_health.clone().unwrap_or((
                        CheckStatus::Passing,
                        format!("microinit: app running (pid {pid})"),
                    ))
                } else {
                    (
                        CheckStatus::Critical,
                        format!("microinit: app started (pid {pid}), not ready yet"),
                    )
                };
                self.set_check(check);
                if let Readiness::Probe(_) = self.cfg.readiness {
                    self.probe_due = Some(Instant::now());
                }
                self.sync();
            }
            // After AppDown (a restart under way: the old app still runs its grace period), a passing health
            // result would turn the check green while the app is going away.
            Command::Health { .. } if !self.app_up => {}
            Command::Health { status, output } => {
                self.last_health = Some((status, output.clone()));
                if !self.ready
                    && self.cfg.readiness == Readiness::HealthCmd
                    && status == CheckStatus::Passing
                {
                    self.ready = true;
                }
                let check = if self.ready {
                    (status, output)
                } else {
                    (
                        CheckStatus::Critical,
                        format!("microinit: not ready yet; health: {output}"),
                    )
                };
                self.set_check(check);
                if self.phase == Phase::Active {
                    self.sync();
                }
            }
            Command::Ready => {
                if self.app_up && !self.ready && matches!(self.cfg.readiness, Readiness::Notify(_))
                {
                    self.ready = true;
                    let check = self.last_health.clone().unwrap_or((
                        CheckStatus::Passing,
                        "microinit: the app notified it is ready".into(),
                    ));
                    self.set_check(check);
                    if self.phase == Phase::Active {
                        self.sync();
                    }
                }
            }
            Command::AppDown { reason } => {
                self.app_up = false;
                self.ready = false;
                self.probe_due = None;
                self.last_health = None;
                self.set_check((CheckStatus::Critical, reason));
                if self.phase == Phase::Active {
                    self.sync();
                }
            }
            Command::Maintenance { on, reason } => {
                self.maintenance = on.then_some(reason);
                let result = if !self.registered {
                    Err(format!(
                        "service {:?} is not registered with Consul (yet){}; maintenance will be applied once it is",
                        self.id,
                        self.last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                    ))
                } else {
                    self.apply_maintenance().map_err(|e| e.message)
                };
                self.emit(Event::MaintenanceResult(result));
            }
            Command::Deregister => self.deregister(sent),
            // Handled by run().
            Command::Shutdown => {}
        }
    }

    /// The status the TTL check should show from now on; keeps `critical_since` in step.
    fn set_check(&mut self, check: (CheckStatus, String)) {
        match (check.0, self.check.0) {
            (CheckStatus::Critical, CheckStatus::Critical) => {}
            (CheckStatus::Critical, _) => self.critical_since = Some(Instant::now()),
            _ => self.critical_since = None,
        }
        self.check = check;
    }

    /// A timer fired: TCP readiness probe, retry after backoff, or heartbeat.
    fn tick(&mut self) {
        let now = Instant::now();
        if self.probe_due.is_some_and(|d| d <= now) {
            self.probe_ready();
        }
        if self.retry_due.is_some_and(|d| d <= now) || self.heartbeat_due.is_some_and(|d| d <= now)
        {
            self.sync();
        }
    }

    /// `--ready tcp:|http://|file:`: one shell-free probe (`init::probes`, bounded by its own timeout).
    fn probe_ready(&mut self) {
        let Readiness::Probe(target) = &self.cfg.readiness else {
            self.probe_due = None;
            return;
        };
        if probes::probe(target, READY_PROBE_TIMEOUT).is_err() {
            self.probe_due = Some(Instant::now() + READY_PROBE_INTERVAL);
            return;
        }
        self.probe_due = None;
        self.ready = true;
        let check = self
            .last_health
            .clone()
            .unwrap_or((CheckStatus::Passing, format!("microinit: {target} is up")));
        self.set_check(check);
        self.sync();
    }

    /// Bring Consul in line with `self.check`: register when not registered, else a heartbeat (TTL check
    /// update). A failed heartbeat is retried as a heartbeat; only the agent saying it does not know the
    /// check leads back to a registration.
    fn sync(&mut self) {
        if self.phase != Phase::Active {
            return;
        }
        self.retry_due = None;
        if self.registered || self.unconfirmed {
            self.heartbeat();
        } else if self.removed_by_consul && self.check.0 == CheckStatus::Critical {
            // Consul reaped the service because it stayed critical on purpose (app down, not ready):
            // registering it again now would only start the same countdown over (a churn loop).
            self.heartbeat_due = None;
        } else {
            self.register();
        }
    }

    fn heartbeat(&mut self) {
        let (status, output) = self.check.clone();
        match self
            .client
            .update_check(&self.check_id, &self.name, status, &output)
        {
            Ok(()) => {
                if self.last_error.is_some() && !self.unconfirmed {
                    log::info!(
                        "consul: heartbeats for {:?} go through again, after {} failed calls",
                        self.id,
                        self.failures
                    );
                }
                if std::mem::take(&mut self.unconfirmed) {
                    self.confirmed_registration("the registration was late but went through");
                    if self.maintenance.is_some() {
                        if let Err(e) = self.apply_maintenance() {
                            log::warn!("{e}");
                        }
                    }
                }
                self.last_heartbeat = Some((unix_now(), None));
                self.last_delivered = Some((Instant::now(), status));
                self.failures = 0;
                self.last_error = None;
                self.schedule_heartbeat();
            }
            Err(e) if e.kind == ErrorKind::NotFound => self.check_unknown(e),
            // Timeouts, refusals, other errors: the registration may well be intact (a stalled agent still
            // holds it), so the retry is a heartbeat again; re-registering here is what turned a slow agent
            // into a retry storm.
            Err(e) => {
                self.last_heartbeat = Some((unix_now(), Some(e.message.clone())));
                let busy = e.kind == ErrorKind::Busy;
                self.failed(e);
                // The agent holds the heartbeat we gave up on and executes it late, which keeps the TTL
                // alive as well as an answered one: the next one comes on the usual schedule. Retried
                // sooner, each instance would add calls to an overloaded agent's backlog (a storm).
                if busy && self.retry_due.is_some() {
                    self.retry_due = None;
                    self.schedule_heartbeat();
                }
            }
        }
    }

    /// The agent does not know our check: Consul reaped the service on purpose, or the agent forgot it.
    fn check_unknown(&mut self, e: crate::consul::client::Error) {
        self.last_heartbeat = Some((unix_now(), Some(e.message.clone())));
        self.registered = false;
        if std::mem::take(&mut self.unconfirmed) {
            // Our unanswered registration did not reach the agent (or not yet): send it again.
            self.register();
            return;
        }
        let deregister_after = effective_deregister_after(&self.cfg);
        if self.check.0 == CheckStatus::Critical
            && self
                .critical_since
                .is_some_and(|t| t.elapsed() >= deregister_after)
        {
            self.removed_by_consul = true;
            self.heartbeat_due = None;
            log::warn!(
                "consul: Consul removed service {:?} after its check stayed critical for {} \
                 (--deregister-after) because {:?}; it is registered again once the app is ready",
                self.id,
                human(deregister_after),
                self.check.1,
            );
            return;
        }
        let why = match self.client.service_known(&self.id, &self.name) {
            Ok(false) => "the agent does not know the service (restarted or lost its state)",
            Ok(true) => "the agent lost the TTL check",
            Err(_) => "the TTL check is unknown to the agent",
        };
        log::warn!("consul: {why}; registering {:?} again", self.id);
        // Two calls are behind us: a waiting deregistration goes first (its bound counts).
        if !self.stop_requested() {
            self.register();
        }
    }

    /// Register with the check CRITICAL, whatever the app's state: only a heartbeat makes it passing. A
    /// registration the agent executes late (it stalled, we gave up on the request, maybe deregistered
    /// meanwhile) can therefore never list a stopped instance as passing.
    fn register(&mut self) {
        if let Err(e) = self.client.register(&self.definition, &self.name) {
            // Only a request the agent took may be executed late; a refused connection never is.
            self.unconfirmed = matches!(e.kind, ErrorKind::Busy | ErrorKind::Dropped);
            self.failed(e);
            return;
        }
        self.confirmed_registration("critical until the first heartbeat");
        self.schedule_heartbeat();
        // The status, the output (and a maintenance mode dropped by replace-existing-checks) follow,
        // unless a deregistration is already waiting.
        if self.stop_requested() {
            return;
        }
        if self.maintenance.is_some() {
            if let Err(e) = self.apply_maintenance() {
                log::warn!("{e}");
            }
            if self.stop_requested() {
                return;
            }
        }
        self.heartbeat();
    }

    /// The agent holds our registration (it answered it, or a heartbeat found the check).
    fn confirmed_registration(&mut self, note: &str) {
        self.registrations = self.registrations.saturating_add(1);
        log::info!(
            "consul: registered service {:?} with {} ({note})",
            self.id,
            self.client.base_url()
        );
        self.registered = true;
        self.ever_registered = true;
        self.removed_by_consul = false;
        self.failures = 0;
        self.last_error = None;
        self.last_delivered = Some((Instant::now(), CheckStatus::Critical));
    }

    /// Next heartbeat in 40–50% of the TTL: jitter keeps hundreds of instances started together from
    /// hitting the agent in the same millisecond forever after.
    fn schedule_heartbeat(&mut self) {
        let jitter = 0.8 + (self.next_random() % 1000) as f64 / 5000.0;
        self.heartbeat_due = Some(Instant::now() + (self.cfg.check_ttl / 2).mul_f64(jitter));
    }

    fn apply_maintenance(&mut self) -> Result<(), crate::consul::client::Error> {
        let (on, reason) = match &self.maintenance {
            Some(r) => (true, r.as_deref()),
            None => (false, None),
        };
        self.client.maintenance(&self.id, &self.name, on, reason)
    }

    /// A call failed: record, log once per distinct message, maybe Fatal, schedule a retry with backoff.
    fn failed(&mut self, e: crate::consul::client::Error) {
        // One line per streak of failures of one kind: an overloaded agent fails calls with timeouts, resets
        // and broken pipes in turn, and hundreds of instances each logging every one of them bury the cause.
        let repeat = self.failures > 0 && self.last_error_kind == Some(e.kind);
        match e.kind {
            _ if repeat => log::debug!("{e}; retrying"),
            ErrorKind::Denied => log::error!("{e}"),
            _ => log::warn!(
                "{e}; retrying (until a call succeeds, further failures like this are logged at debug level)"
            ),
        }
        self.last_error = Some(e.message.clone());
        self.last_error_kind = Some(e.kind);
        // --consul-required: the first registration must succeed and an ACL denial is never tolerated;
        // an agent that restarts later is the resilience case and is retried.
        if self.cfg.required && (!self.ever_registered || e.kind == ErrorKind::Denied) {
            self.phase = Phase::Failed;
            self.heartbeat_due = None;
            self.probe_due = None;
            self.emit(Event::Fatal(e.message));
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let base = match e.kind {
            ErrorKind::Busy | ErrorKind::Dropped => BUSY_BACKOFF_BASE,
            _ => BACKOFF_BASE,
        };
        let exp = base.saturating_mul(1u32 << self.failures.saturating_sub(1).min(16));
        let delay = exp.min(self.backoff_cap());
        // Jitter in [50%, 100%] of the delay so many containers do not hammer a recovering agent in step.
        let jitter = 0.5 + (self.next_random() % 1000) as f64 / 2000.0;
        self.heartbeat_due = None;
        self.retry_due = Some(Instant::now() + delay.mul_f64(jitter));
    }

    /// Retries never wait longer than half a TTL, so a returning agent sees us again within one TTL.
    fn backoff_cap(&self) -> Duration {
        (self.cfg.check_ttl / 2).clamp(BACKOFF_BASE, Duration::from_secs(10))
    }

    fn deregister(&mut self, sent: Instant) {
        if self.phase == Phase::Deregistered {
            // SIGTERM deregistered already; the app's exit asks again.
            self.emit(Event::Deregistered);
            return;
        }
        let bound = self.cfg.deregister_timeout;
        let deadline = sent + bound.saturating_sub(DEREGISTER_MARGIN);
        // Only what the agent may hold: a registration it accepted, or one it never answered (it may still
        // execute it). After a refusal (an ACL denial) there is nothing to remove and nothing to reap.
        let at_agent = self.ever_registered || self.unconfirmed;
        self.phase = Phase::Deregistered;
        self.registered = false;
        self.unconfirmed = false;
        self.heartbeat_due = None;
        self.retry_due = None;
        self.probe_due = None;
        if !at_agent {
            log::debug!(
                "consul: {:?} is not registered; nothing to deregister",
                self.id
            );
        } else if deadline <= Instant::now() {
            log::warn!(
                "consul: no time left within the deregistration bound ({}) to deregister {:?}; {}",
                human(bound),
                self.id,
                self.what_consul_does_now()
            );
        } else {
            match self.deregister_until(deadline) {
                Ok(()) => log::info!("consul: deregistered service {:?}", self.id),
                Err(e) => {
                    let what = match e.kind {
                        ErrorKind::Unreachable | ErrorKind::Busy | ErrorKind::Dropped => format!(
                            "the agent did not answer within the deregistration bound ({}, \
                             --deregister-timeout)",
                            human(bound)
                        ),
                        _ => "the agent refused the deregistration".to_string(),
                    };
                    log::warn!("consul: {what}: {e}; {}", self.what_consul_does_now());
                    self.last_error = Some(e.message);
                }
            }
        }
        self.emit(Event::Deregistered);
    }

    /// The deregistration call, sent again while the agent drops it at once (busy, over its connection limit:
    /// a dropped request was never executed, unlike one that timed out, which uses up the bound anyway) and
    /// the bound leaves time for another attempt. A refused connection is not retried: no agent is there.
    fn deregister_until(&mut self, deadline: Instant) -> Result<(), crate::consul::client::Error> {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = self.client.deregister(&self.id, &self.name, remaining);
            match result {
                Err(e) if e.kind == ErrorKind::Dropped => {
                    let pause = DEREGISTER_RETRY_PAUSE
                        + DEREGISTER_RETRY_PAUSE
                            .mul_f64((self.next_random() % 1000) as f64 / 1000.0);
                    if Instant::now() + pause * 2 >= deadline {
                        return Err(e);
                    }
                    log::debug!("{e}; sending the deregistration again");
                    std::thread::sleep(pause);
                }
                r => return r,
            }
        }
    }

    /// What becomes of a service we could not deregister, in the agent's own terms.
    fn what_consul_does_now(&self) -> String {
        let after = human(effective_deregister_after(&self.cfg));
        let turns_critical = match self.last_delivered {
            Some((_, CheckStatus::Critical)) | None => "its TTL check is critical".to_string(),
            Some((at, _)) => format!(
                "its TTL check turns critical in {} (no heartbeat follows)",
                human((at + self.cfg.check_ttl).saturating_duration_since(Instant::now()))
            ),
        };
        format!(
            "if the agent does not execute the request later, {turns_critical} and Consul removes \
             the service {after} after it turned critical (--deregister-after)"
        )
    }

    /// Start-up warnings about values Consul would change behind our back.
    fn warn_about_config(&self) {
        if self.cfg.deregister_after < CONSUL_MIN_DEREGISTER_AFTER {
            log::warn!(
                "consul: --deregister-after {} is below Consul's minimum; using {}",
                human(self.cfg.deregister_after),
                human(CONSUL_MIN_DEREGISTER_AFTER)
            );
        }
    }

    /// Take queued commands off the channel; true if one of them ends our work (checked between calls).
    fn stop_requested(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(c) => self.pending.push_back(c),
                Err(TryRecvError::Empty) => break,
                // run() sees the disconnection on its next receive and stops.
                Err(TryRecvError::Disconnected) => return true,
            }
        }
        self.pending
            .iter()
            .any(|(_, c)| matches!(c, Command::Deregister | Command::Shutdown))
    }

    fn emit(&self, ev: Event) {
        // Status first, so whoever reacts to the event sees the state that caused it.
        self.publish();
        if self.events.send(ev).is_ok() {
            let _ = self.wake.write(1);
        }
    }

    fn publish(&self) {
        let state = match self.phase {
            Phase::WaitingForApp => "waiting for app",
            Phase::Active if self.registered => "registered",
            Phase::Active if self.ever_registered => "re-registering",
            Phase::Active => "registering",
            Phase::Failed => "failed",
            Phase::Deregistered => "deregistered",
        };
        let v = Some(status::Consul {
            agent: self.client.base_url().to_string(),
            service_id: self.id.clone(),
            service_name: self.name.clone(),
            check_id: self.check_id.clone(),
            service_file: match &self.cfg.service {
                ServiceSource::File { path, .. } => Some(path.display().to_string()),
                ServiceSource::Fields { .. } => None,
            },
            state: state.into(),
            ready: self.ready,
            check_status: self.check.0.as_str().into(),
            check_output: self.check.1.clone(),
            last_heartbeat: self
                .last_heartbeat
                .as_ref()
                .map(|(unix, error)| status::Heartbeat {
                    unix: *unix,
                    error: error.clone(),
                }),
            maintenance: self.maintenance.clone(),
            last_error: self.last_error.clone(),
            registrations: self.registrations,
        });
        match self.status.lock() {
            Ok(mut s) => *s = v,
            Err(p) => *p.into_inner() = v,
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: jitter only, no security needed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

/// A seed for jitter (xorshift): the clock and the pid, so containers started together differ.
pub(crate) fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// DeregisterCriticalServiceAfter as Consul applies it: never below its one-minute floor.
fn effective_deregister_after(cfg: &ConsulConfig) -> Duration {
    cfg.deregister_after.max(CONSUL_MIN_DEREGISTER_AFTER)
}

/// A duration for messages: "1m", "1m30s", "2s", "7.3s", "250ms".
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        match ms % 1000 {
            0 => format!("{}s", ms / 1000),
            r => format!("{}.{}s", ms / 1000, r / 100),
        }
    } else {
        match (ms / 1000) % 60 {
            0 => format!("{}m", ms / 60_000),
            s => format!("{}m{s}s", ms / 60_000),
        }
    }
}

/// Consul parses Go durations; milliseconds keep sub-second values exact.
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The registration body (agent API format) with our TTL check last in `Checks`, plus the service ID and name.
fn service_definition(cfg: &ConsulConfig) -> (Value, String, String) {
    let (mut def, mut checks, id, name) = match &cfg.service {
        ServiceSource::Fields {
            name,
            id,
            port,
            address,
            tagged_addresses,
            tags,
            meta,
        } => {
            let mut def = json!({ "ID": id, "Name": name, "Tags": tags });
            let meta: Map<String, Value> =
                meta.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            def["Meta"] = Value::Object(meta);
            if let Some(p) = port {
                def["Port"] = json!(p);
            }
            if let Some(a) = address {
                def["Address"] = json!(a);
            }
            if let Some(t) = tagged_addresses {
                def["TaggedAddresses"] = t.clone();
            }
            (def, Vec::new(), id.clone(), name.clone())
        }
        ServiceSource::File { definition, .. } => split_file_definition(definition),
    };
    checks.push(json!({
        "CheckID": format!("microinit:{id}"),
        "Name": "microinit: app health (TTL)",
        "TTL": go_duration(cfg.check_ttl),
        "DeregisterCriticalServiceAfter": go_duration(effective_deregister_after(cfg)),
        "Status": "critical",
    }));
    def["Checks"] = Value::Array(checks);
    (def, id, name)
}

/// Key lookup as Consul does it: case-insensitive.
fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// A validated `--service-file` definition, split into (service without checks, its own checks, id, name).
/// `parse_service_file` has checked the shape, so this cannot fail.
fn split_file_definition(definition: &Value) -> (Value, Vec<Value>, String, String) {
    let mut obj = definition.as_object().cloned().unwrap_or_default();
    let name = get_ci(&obj, "name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let id = get_ci(&obj, "id")
        .and_then(Value::as_str)
        .unwrap_or(&name)
        .to_string();
    let mut checks = Vec::new();
    obj.retain(|k, v| {
        if k.eq_ignore_ascii_case("checks") {
            checks.extend(v.as_array().cloned().unwrap_or_default());
            false
        } else if k.eq_ignore_ascii_case("check") {
            checks.push(v.take());
            false
        } else {
            !k.eq_ignore_ascii_case("id")
        }
    });
    obj.insert("ID".into(), json!(id));
    (Value::Object(obj), checks, id, name)
}

/// Read a service definition in Consul's JSON format: `{"service": {...}}` (config-file style) or the bare
/// service object (API style); keys in any case, as Consul accepts them; `${VAR}` taken from the environment.
fn parse_service_file(path: &Path) -> Result<Value, String> {
    let text = user_file::read_text("--service-file", path, user_file::LARGE)?;
    let what = format!("--service-file {}", path.display());
    let text = user_file::interpolate(&what, &text, &|k| std::env::var(k).ok())?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("--service-file {}: not valid JSON: {e}", path.display()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("--service-file {}: expected a JSON object", path.display()))?;
    let service = match get_ci(obj, "service") {
        Some(s) if obj.len() == 1 => s.clone(),
        _ => v.clone(),
    };
    let sobj = service.as_object().ok_or_else(|| {
        format!(
            "--service-file {}: \"service\" must be a JSON object",
            path.display()
        )
    })?;
    match get_ci(sobj, "name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => {}
        _ => {
            return Err(format!(
                "--service-file {}: the service has no \"name\"",
                path.display()
            ))
        }
    }
    if let Some(id) = get_ci(sobj, "id") {
        if !id.is_string() {
            return Err(format!(
                "--service-file {}: \"id\" must be a string",
                path.display()
            ));
        }
    }
    if get_ci(sobj, "checks").is_some_and(|c| !c.is_array()) {
        return Err(format!(
            "--service-file {}: \"checks\" must be an array",
            path.display()
        ));
    }
    Ok(service)
}

/// The port the service is registered with, from the flags or the service file.
fn service_port(service: &ServiceSource) -> Option<u16> {
    match service {
        ServiceSource::Fields { port, .. } => *port,
        ServiceSource::File { definition, .. } => definition
            .as_object()
            .and_then(|o| get_ci(o, "port"))
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0),
    }
}

/// What is registered and when it turns passing, in one line for the operator at start.
fn start_line(cfg: &ConsulConfig, definition: &Value, id: &str, name: &str) -> String {
    let field = |key| definition.as_object().and_then(|o| get_ci(o, key));
    let at = match (
        field("address")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty()),
        field("port").and_then(Value::as_u64),
    ) {
        (Some(a), Some(p)) => format!(" at {a}:{p}"),
        (Some(a), None) => format!(" at {a}"),
        (None, Some(p)) => format!(" on port {p} of the agent's address"),
        (None, None) => String::new(),
    };
    let when = match &cfg.readiness {
        Readiness::Immediate => "as soon as the app starts".to_string(),
        Readiness::HealthCmd => "when the health command first passes".to_string(),
        Readiness::Probe(WaitTarget::Tcp { host, port }) => {
            format!("when {host}:{port} accepts connections")
        }
        Readiness::Probe(WaitTarget::Http { url }) => format!("when GET {url} answers 2xx"),
        Readiness::Probe(t) => format!("when {t} is up"),
        Readiness::Notify(n) => format!("when the app writes a line to fd {n}"),
    };
    let line = format!(
        "consul: registering {name:?} (id {id:?}){at} with {}; passing {when}",
        cfg.agent.display()
    );
    crate::text::for_terminal(&line).into_owned()
}

/// The default service ID (see `identity`), from this host's name and container.
fn default_id(name: &str, port: Option<u16>) -> Result<String, String> {
    let host = nix::unistd::gethostname()
        .map_err(|e| format!("MICROINIT_SERVICE_ID unset and gethostname failed: {e}"))?;
    Ok(identity::default_service_id(
        name,
        &host.to_string_lossy(),
        identity::container_id().as_deref(),
        port,
    ))
}

/// `TaggedAddresses` from `--service-lan-address` / `--service-wan-address`, if any is set.
fn tagged_addresses(opts: &Options, port: Option<u16>) -> Result<Option<Value>, String> {
    let mut map = Map::new();
    for (tag, key) in [
        ("lan", "MICROINIT_SERVICE_LAN_ADDRESS"),
        ("wan", "MICROINIT_SERVICE_WAN_ADDRESS"),
    ] {
        if let Some(v) = opts.get(key) {
            map.insert(tag.into(), address::tagged(key, v, port)?);
        }
    }
    Ok((!map.is_empty()).then_some(Value::Object(map)))
}

/// A service file gets what the flags would give, for every key it leaves out: the default ID (two replicas
/// from one file must not share one), the container's address (else the agent advertises its own) and the
/// tagged addresses of the flags. What the file says wins.
fn fill_file_defaults(opts: &Options, definition: &mut Value) -> Result<(), String> {
    let Some(obj) = definition.as_object_mut() else {
        return Ok(());
    };
    let port = get_ci(obj, "port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok());
    if get_ci(obj, "id").is_none() {
        let name = get_ci(obj, "name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let id = default_id(name, port)?;
        obj.insert("ID".into(), json!(id));
    }
    if get_ci(obj, "address").is_none() {
        let address = match opts.get("MICROINIT_SERVICE_ADDRESS") {
            Some(a) => Some(a.to_string()),
            None => address::select(opts.get("MICROINIT_SERVICE_INTERFACE"))?,
        };
        if let Some(a) = address {
            obj.insert("Address".into(), json!(a));
        }
    }
    if get_ci(obj, "tagged_addresses").is_none() && get_ci(obj, "taggedaddresses").is_none() {
        if let Some(t) = tagged_addresses(opts, port)? {
            obj.insert("TaggedAddresses".into(), t);
        }
    }
    Ok(())
}

fn nonzero(opts: &Options, key: &str, default: Duration) -> Result<Duration, String> {
    let d = opts.duration(key, default)?;
    if d.is_zero() {
        return Err(format!("{key}: must be more than 0"));
    }
    Ok(d)
}

/// Every value of a comma-list option (repeated flags and commas both separate), trimmed, empty ones dropped.
fn comma_list(opts: &Options, key: &str) -> Vec<String> {
    opts.all(key)
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Parse the Consul section of the configuration. `None` when neither a service name nor a service file is set.
pub fn consul_config(opts: &Options) -> Result<Option<ConsulConfig>, String> {
    let name = opts.get("MICROINIT_SERVICE_NAME");
    let file = opts.get("MICROINIT_SERVICE_FILE").map(PathBuf::from);
    let service = match (name, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(
                "MICROINIT_SERVICE_NAME and MICROINIT_SERVICE_FILE are exclusive: \
                        put the name into the service file"
                    .into(),
            )
        }
        (None, Some(path)) => {
            let mut definition = parse_service_file(&path)?;
            fill_file_defaults(opts, &mut definition)?;
            ServiceSource::File { definition, path }
        }
        (Some(name), None) => {
            let port = match opts.get("MICROINIT_SERVICE_PORT") {
                None => None,
                Some(p) => Some(p.parse::<u16>().map_err(|_| {
                    format!("MICROINIT_SERVICE_PORT={p}: not a port number (0-65535)")
                })?),
            };
            let id = match opts.get("MICROINIT_SERVICE_ID") {
                Some(id) => id.to_string(),
                None => default_id(name, port)?,
            };
            let address = match opts.get("MICROINIT_SERVICE_ADDRESS") {
                Some(a) => Some(a.to_string()),
                None => address::select(opts.get("MICROINIT_SERVICE_INTERFACE"))?,
            };
            let meta = comma_list(opts, "MICROINIT_SERVICE_META")
                .into_iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => {
                        Ok((k.trim().to_string(), v.trim().to_string()))
                    }
                    _ => Err(format!("MICROINIT_SERVICE_META: {kv:?} is not key=value")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            ServiceSource::Fields {
                name: name.to_string(),
                id,
                port,
                address,
                tagged_addresses: tagged_addresses(opts, port)?,
                tags: comma_list(opts, "MICROINIT_SERVICE_TAGS"),
                meta,
            }
        }
    };
    let health_cmd = opts.get("MICROINIT_HEALTH_CMD").map(String::from);
    let readiness = match opts.get("MICROINIT_READY") {
        None if health_cmd.is_some() => Readiness::HealthCmd,
        // A service with a port is ready when the port accepts: a one-off command in an image that sets
        // the service variables (`docker run image node migrate.js`) never shows as a passing instance.
        None => match service_port(&service) {
            Some(port) => Readiness::Probe(WaitTarget::Tcp {
                host: "127.0.0.1".into(),
                port,
            }),
            None => Readiness::Immediate,
        },
        Some("immediate") => Readiness::Immediate,
        Some("health") if health_cmd.is_some() => Readiness::HealthCmd,
        Some("health") => {
            return Err("MICROINIT_READY=health needs MICROINIT_HEALTH_CMD (--health-cmd)".into())
        }
        Some(t) if t.starts_with("tcp:") || t.starts_with("http://") || t.starts_with("file:") => {
            // tcp:PORT is the app's own port on loopback.
            let t = match t.strip_prefix("tcp:") {
                Some(port) if port.parse::<u16>().is_ok() => format!("tcp:127.0.0.1:{port}"),
                _ => t.to_string(),
            };
            match parse_wait_target(&t) {
                Ok(target) => Readiness::Probe(target),
                Err(e) => {
                    return Err(format!(
                        "MICROINIT_READY={t}: {e}; use tcp:PORT, tcp:HOST:PORT, http://… or file:PATH"
                    ))
                }
            }
        }
        Some(t) if t.starts_with("fd:") => match t[3..].parse::<i32>() {
            // 0-2 are the app's stdio.
            Ok(n) if (3..=1023).contains(&n) => Readiness::Notify(n),
            _ => return Err(format!("MICROINIT_READY={t}: use fd:N with N from 3 to 1023")),
        },
        Some(other) => {
            return Err(format!(
                "MICROINIT_READY={other}: use immediate, health, tcp:PORT, tcp:HOST:PORT, http://…, file:PATH or fd:N"
            ))
        }
    };
    let agent = AgentConfig::parse(opts)?;
    // Build a client once here so a TLS problem (a bad CA, a key that does not match its certificate, https
    // in the plain build) stops microinit before the app starts.
    Client::new(&agent)?;
    Ok(Some(ConsulConfig {
        agent,
        service,
        check_ttl: nonzero(opts, "MICROINIT_CHECK_TTL", Duration::from_secs(10))?,
        deregister_after: nonzero(opts, "MICROINIT_DEREGISTER_AFTER", Duration::from_secs(60))?,
        health_cmd,
        health_interval: nonzero(opts, "MICROINIT_HEALTH_INTERVAL", Duration::from_secs(5))?,
        health_timeout: nonzero(opts, "MICROINIT_HEALTH_TIMEOUT", Duration::from_secs(3))?,
        readiness,
        drain: opts.duration("MICROINIT_DRAIN", Duration::ZERO)?,
        deregister_timeout: nonzero(opts, "MICROINIT_DEREGISTER_TIMEOUT", DEREGISTER_BOUND)?,
        required: opts.flag("MICROINIT_CONSUL_REQUIRED"),
    }))
}

#[cfg(test)]
#[path = "../../tests/common/consul.rs"]
pub(crate) mod dev_agent; // also used by `watch`'s tests

#[cfg(test)]
impl Registration {
    /// The status as `microinit status --json` shows it.
    fn status_json(&self) -> Value {
        self.status().map_or(Value::Null, |s| s.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::dev_agent::{free_port, wait_until, DevAgent};
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    const SOON: Duration = Duration::from_secs(10);

    pub(super) fn options(pairs: &[(&str, &str)]) -> Options {
        let mut o = Options::default();
        for (k, v) in pairs {
            o.set(k, vec![v.to_string()]);
        }
        o
    }

    fn config(addr: &str, pairs: &[(&str, &str)]) -> ConsulConfig {
        let mut o = options(pairs);
        o.set("CONSUL_HTTP_ADDR", vec![addr.to_string()]);
        consul_config(&o)
            .expect("valid config")
            .expect("registration on")
    }

    /// Wait (polling the eventfd, as the main loop does) until an event matching `want` arrives.
    pub(super) fn wait_event(
        reg: &Registration,
        timeout: Duration,
        want: impl Fn(&Event) -> bool,
    ) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = reg.take_events().into_iter().find(|e| want(e)) {
                return e;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no matching event within {timeout:?}; status {}",
                reg.status_json()
            );
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(reg.wake_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(ms));
        }
    }

    #[test]
    fn config_defaults_and_errors() {
        assert!(consul_config(&options(&[])).expect("ok").is_none());
        let c = consul_config(&options(&[("MICROINIT_SERVICE_NAME", "web")]))
            .expect("ok")
            .expect("on");
        assert_eq!(c.agent.display(), "http://127.0.0.1:8500");
        assert_eq!(
            (c.check_ttl, c.deregister_after),
            (Duration::from_secs(10), Duration::from_secs(60))
        );
        assert_eq!(c.readiness, Readiness::Immediate);
        let ServiceSource::Fields { id, address, .. } = &c.service else {
            panic!("fields expected")
        };
        let host = nix::unistd::gethostname().expect("hostname");
        assert!(
            id.starts_with(&format!("web-{}", host.to_string_lossy())),
            "{id}"
        );
        // The default address is the default route's interface's IPv4 (none on a loopback-only host).
        if let Some(a) = address {
            let ip: std::net::Ipv4Addr = a.parse().expect("an IPv4 address");
            assert!(!ip.is_loopback(), "{ip}");
        }
        // With a port, the port is part of the default ID: replicas sharing a hostname differ by it.
        let with_port = |p: &str| {
            let c = consul_config(&options(&[
                ("MICROINIT_SERVICE_NAME", "web"),
                ("MICROINIT_SERVICE_PORT", p),
            ]))
            .expect("ok")
            .expect("on");
            match c.service {
                ServiceSource::Fields { id, .. } => id,
                ServiceSource::File { .. } => unreachable!(),
            }
        };
        assert!(with_port("8001").ends_with("-8001"));
        assert_ne!(with_port("8001"), with_port("8002"));

        let mut o = options(&[
            ("MICROINIT_SERVICE_NAME", "w"),
            ("MICROINIT_HEALTH_CMD", "true"),
        ]);
        o.set("CONSUL_HTTP_ADDR", vec!["https://127.0.0.1".into()]);
        // https: refused at start either way, naming why (no TLS in the plain build; no CA in the TLS one).
        match consul_config(&o) {
            Err(e) if cfg!(feature = "https") => {
                assert!(e.contains("no CA to verify it with"), "{e}")
            }
            Err(e) => assert!(e.contains("the plain build, without TLS"), "{e}"),
            other => panic!("https with feature={}: {other:?}", cfg!(feature = "https")),
        }
        let c = config(
            "http://h:1/",
            &[
                ("MICROINIT_SERVICE_NAME", "w"),
                ("MICROINIT_READY", "tcp:80"),
            ],
        );
        assert_eq!(
            (c.agent.display(), c.readiness),
            (
                "http://h:1".into(),
                Readiness::Probe(WaitTarget::Tcp {
                    host: "127.0.0.1".into(),
                    port: 80
                })
            )
        );

        for (k, v, needle) in [
            ("CONSUL_HTTP_ADDR", "ftp://x", "unknown scheme"),
            ("CONSUL_HTTP_ADDR", "h:99999", "bad port"),
            ("MICROINIT_SERVICE_PORT", "http", "MICROINIT_SERVICE_PORT"),
            ("MICROINIT_SERVICE_META", "novalue", "key=value"),
            ("MICROINIT_SERVICE_INTERFACE", "nope0", "nope0"),
            ("MICROINIT_SERVICE_WAN_ADDRESS", "h:x", "ADDR:PORT"),
            ("MICROINIT_DEREGISTER_TIMEOUT", "0s", "more than 0"),
            ("MICROINIT_READY", "health", "MICROINIT_HEALTH_CMD"),
            ("MICROINIT_READY", "tcp:", "tcp:PORT"),
            ("MICROINIT_CHECK_TTL", "0s", "more than 0"),
            (
                "CONSUL_HTTP_TOKEN_FILE",
                "/nonexistent/token",
                "/nonexistent/token",
            ),
            (
                "MICROINIT_SERVICE_FILE",
                "/nonexistent/svc.json",
                "exclusive",
            ),
        ] {
            let e =
                consul_config(&options(&[("MICROINIT_SERVICE_NAME", "w"), (k, v)])).expect_err(k);
            assert!(e.contains(needle), "{k}={v}: {e}");
        }
    }

    #[test]
    fn fields_exact_health_states_maintenance_and_deregister() {
        let agent = DevAgent::start();
        let cfg = config(
            &agent.addr(),
            &[
                ("MICROINIT_SERVICE_NAME", "web"),
                ("MICROINIT_SERVICE_ID", "web-1"),
                ("MICROINIT_SERVICE_PORT", "8080"),
                ("MICROINIT_SERVICE_ADDRESS", "10.1.2.3"),
                ("MICROINIT_SERVICE_TAGS", "blue, v2,,canary"),
                ("MICROINIT_SERVICE_META", "team=core, version=1.2=3"),
                ("MICROINIT_HEALTH_CMD", "true"),
            ],
        );
        let reg = Registration::start(cfg).expect("start");
        reg.send(Command::AppStarted { pid: 42 });
        wait_until("web-1 registered", SOON, || {
            agent.service("web-1", None).is_some()
        });
        let s = agent.service("web-1", None).expect("service");
        assert_eq!(s["Service"], "web");
        assert_eq!(s["Port"], 8080);
        assert_eq!(s["Address"], "10.1.2.3");
        assert_eq!(s["Tags"], json!(["blue", "v2", "canary"]));
        assert_eq!(s["Meta"], json!({"team": "core", "version": "1.2=3"}));
        // Readiness is the health command: critical until it first passes.
        assert_eq!(
            agent.check_status("microinit:web-1", None).as_deref(),
            Some("critical")
        );
        assert_eq!(agent.passing_instances("web"), 0);

        for (status, word) in [
            (CheckStatus::Passing, "passing"),
            (CheckStatus::Warning, "warning"),
            (CheckStatus::Critical, "critical"),
        ] {
            reg.send(Command::Health {
                status,
                output: format!("health says {word}"),
            });
            wait_until(word, SOON, || {
                let c = &agent.checks(None)["microinit:web-1"];
                c["Status"] == word && c["Output"] == format!("health says {word}")
            });
        }
        reg.send(Command::Health {
            status: CheckStatus::Passing,
            output: "ok".into(),
        });
        wait_until("passing in the catalog", SOON, || {
            agent.passing_instances("web") == 1
        });

        reg.send(Command::Maintenance {
            on: true,
            reason: Some("upgrade now".into()),
        });
        let ev = wait_event(&reg, SOON, |e| matches!(e, Event::MaintenanceResult(_)));
        assert_eq!(ev, Event::MaintenanceResult(Ok(())));
        let maint = agent.checks(None)["_service_maintenance:web-1"].clone();
        assert_eq!(
            (maint["Status"].as_str(), maint["Notes"].as_str()),
            (Some("critical"), Some("upgrade now"))
        );
        assert_eq!(reg.status_json()["maintenance"], true);
        reg.send(Command::Maintenance {
            on: false,
            reason: None,
        });
        let ev = wait_event(&reg, SOON, |e| matches!(e, Event::MaintenanceResult(_)));
        assert_eq!(ev, Event::MaintenanceResult(Ok(())));
        assert!(agent
            .checks(None)
            .get("_service_maintenance:web-1")
            .is_none());

        reg.send(Command::AppDown {
            reason: "app exited with status 3".into(),
        });
        wait_until("critical after AppDown", SOON, || {
            agent.checks(None)["microinit:web-1"]["Output"] == "app exited with status 3"
        });
        reg.send(Command::Deregister);
        wait_event(&reg, DEREGISTER_BOUND, |e| *e == Event::Deregistered);
        assert!(
            agent.service("web-1", None).is_none(),
            "still registered after Deregistered"
        );
        let st = reg.status_json();
        assert_eq!(st["state"], "deregistered");
        assert_eq!(st["service_id"], "web-1");
        assert_eq!(st["last_heartbeat"]["ok"], true);
        reg.send(Command::Shutdown);
    }

    #[test]
    fn a_service_file_without_id_or_address_gets_the_same_defaults_as_the_flags() {
        let dir = std::env::temp_dir().join(format!("microinit-svcdef-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("svc.json");
        std::fs::write(&file, r#"{"service": {"name": "web", "port": 8080}}"#).expect("write");
        let file_s = file.to_string_lossy().to_string();
        let parse = |extra: &[(&str, &str)]| {
            let mut pairs = vec![("MICROINIT_SERVICE_FILE", file_s.as_str())];
            pairs.extend_from_slice(extra);
            let c = consul_config(&options(&pairs)).expect("ok").expect("on");
            service_definition(&c).0
        };
        let flags = consul_config(&options(&[
            ("MICROINIT_SERVICE_NAME", "web"),
            ("MICROINIT_SERVICE_PORT", "8080"),
            ("MICROINIT_SERVICE_INTERFACE", "lo"),
        ]))
        .expect("ok")
        .expect("on");
        let def = parse(&[
            ("MICROINIT_SERVICE_INTERFACE", "lo"),
            ("MICROINIT_SERVICE_WAN_ADDRESS", "203.0.113.9:30080"),
        ]);
        assert_eq!(def["ID"], json!(service_definition(&flags).1));
        assert_eq!(def["Address"], "127.0.0.1");
        assert_eq!(
            def["TaggedAddresses"],
            json!({"wan": {"Address": "203.0.113.9", "Port": 30080}})
        );
        // What the file says wins over the defaults.
        std::fs::write(
            &file,
            r#"{"service": {"name": "web", "id": "mine", "address": "10.9.9.9"}}"#,
        )
        .expect("write");
        let def = parse(&[("MICROINIT_SERVICE_ADDRESS", "10.0.0.1")]);
        let obj = def.as_object().expect("object");
        assert_eq!(
            (
                def["ID"].as_str(),
                get_ci(obj, "address").and_then(Value::as_str)
            ),
            (Some("mine"), Some("10.9.9.9"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn service_file_and_tcp_readiness() {
        let agent = DevAgent::start();
        let dir = std::env::temp_dir().join(format!("microinit-svcfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("svc.json");
        std::fs::write(
            &file,
            r#"{"service": {"name": "filesvc", "id": "filesvc-7", "port": 7070, "tags": ["from-file"],
                "meta": {"origin": "file"}, "enable_tag_override": true}}"#,
        )
        .expect("write service file");
        let listener_port = free_port();
        let ready = format!("tcp:{listener_port}");
        let file_s = file.to_string_lossy().to_string();
        let cfg = config(
            &agent.addr(),
            &[
                ("MICROINIT_SERVICE_FILE", file_s.as_str()),
                ("MICROINIT_READY", &ready),
            ],
        );
        let reg = Registration::start(cfg).expect("start");
        reg.send(Command::AppStarted { pid: 7 });
        wait_until("filesvc-7 registered", SOON, || {
            agent.service("filesvc-7", None).is_some()
        });
        let s = agent.service("filesvc-7", None).expect("service");
        assert_eq!(
            (s["Service"].as_str(), s["Port"].as_u64()),
            (Some("filesvc"), Some(7070))
        );
        assert_eq!(
            (s["Tags"].clone(), s["Meta"].clone()),
            (json!(["from-file"]), json!({"origin": "file"}))
        );
        assert_eq!(s["EnableTagOverride"], true);
        // Nothing listens yet: not ready, so critical.
        assert_eq!(
            agent.check_status("microinit:filesvc-7", None).as_deref(),
            Some("critical")
        );
        let _listener =
            std::net::TcpListener::bind(("127.0.0.1", listener_port)).expect("bind readiness port");
        wait_until("passing once the port accepts", SOON, || {
            agent.passing_instances("filesvc") == 1
        });
        reg.send(Command::Deregister);
        wait_event(&reg, DEREGISTER_BOUND, |e| *e == Event::Deregistered);
        assert!(agent.service("filesvc-7", None).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn agent_down_at_start_then_up_then_restarted() {
        let port = free_port();
        let ttl = "3s";
        let cfg = config(
            &format!("127.0.0.1:{port}"),
            &[
                ("MICROINIT_SERVICE_NAME", "late"),
                ("MICROINIT_SERVICE_ID", "late-1"),
                ("MICROINIT_CHECK_TTL", ttl),
            ],
        );
        let reg = Registration::start(cfg).expect("start");
        reg.send(Command::AppStarted { pid: 1 });
        wait_until("a recorded error while the agent is down", SOON, || {
            reg.status_json()["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("unreachable"))
        });
        let mut agent = DevAgent::start_on(port, &[]);
        wait_until("registered once the agent is up", SOON, || {
            agent.passing_instances("late") == 1
        });
        // The agent shows the check passing before the worker has read the agent's answer: await it.
        wait_until("the recorded error cleared", SOON, || {
            reg.status_json()["last_error"].is_null()
        });

        // Dev mode forgets everything: the next heartbeat (≤ TTL/2) or retry must re-register.
        agent.restart();
        let back = Instant::now();
        wait_until("re-registered after an agent restart", SOON, || {
            agent.service("late-1", None).is_some()
        });
        let took = back.elapsed();
        assert!(
            took <= Duration::from_secs(3),
            "re-registration took {took:?}, more than one TTL ({ttl})"
        );
        wait_until("passing again", SOON, || {
            agent.check_status("microinit:late-1", None).as_deref() == Some("passing")
        });
        reg.send(Command::Deregister);
        wait_event(&reg, DEREGISTER_BOUND, |e| *e == Event::Deregistered);
        assert!(agent.service("late-1", None).is_none());
    }

    #[test]
    fn black_holed_agent_deregisters_within_bound() {
        // Listening but never accepting: connects succeed (kernel backlog), requests get no answer.
        let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = hole.local_addr().expect("addr").port();
        let cfg = config(
            &format!("127.0.0.1:{port}"),
            &[("MICROINIT_SERVICE_NAME", "hole")],
        );
        let reg = Registration::start(cfg).expect("start");
        reg.send(Command::AppStarted { pid: 1 });
        // Let the register call get stuck in flight, the worst case for the bound.
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        reg.send(Command::Deregister);
        wait_event(&reg, Duration::from_secs(5), |e| *e == Event::Deregistered);
        let took = t0.elapsed();
        assert!(
            took <= DEREGISTER_BOUND,
            "Deregistered after {took:?} (> {DEREGISTER_BOUND:?})"
        );
        assert!(reg.status_json()["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("deregister")));
        drop(hole);
    }

    #[test]
    fn acl_token_file_works_and_missing_or_bad_token_is_clear() {
        let master = "b1gb0ss-master-token";
        let agent = DevAgent::start_acl(master);
        let secret = agent.write_token(master, "acl-web");
        let dir = std::env::temp_dir().join(format!("microinit-acl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{secret}\n")).expect("write token");
        let tf = token_file.to_string_lossy().to_string();
        let base = [
            ("MICROINIT_SERVICE_NAME", "acl-web"),
            ("MICROINIT_SERVICE_ID", "acl-web-1"),
        ];

        // With the token from a file: registered and passing.
        let cfg = config(
            &agent.addr(),
            &[base[0], base[1], ("CONSUL_HTTP_TOKEN_FILE", tf.as_str())],
        );
        let reg = Registration::start(cfg).expect("start");
        reg.send(Command::AppStarted { pid: 1 });
        wait_until("registered with the token", SOON, || {
            agent
                .check_status("microinit:acl-web-1", Some(master))
                .as_deref()
                == Some("passing")
        });
        assert!(
            !reg.status_json().to_string().contains(&secret),
            "token in status"
        );
        reg.send(Command::Deregister);
        wait_event(&reg, DEREGISTER_BOUND, |e| *e == Event::Deregistered);
        assert!(agent.service("acl-web-1", Some(master)).is_none());

        // Without a token: one clear error naming the permission; the worker keeps retrying (app unaffected).
        let reg = Registration::start(config(&agent.addr(), &base)).expect("start");
        reg.send(Command::AppStarted { pid: 1 });
        wait_until("a denial", SOON, || {
            !reg.status_json()["last_error"].is_null()
        });
        let err = reg.status_json()["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            err.contains("403") && err.contains("service:write on service \"acl-web\""),
            "{err}"
        );
        assert!(
            err.contains("no token set") && err.contains("/v1/agent/service/register"),
            "{err}"
        );
        reg.send(Command::Shutdown);

        // A bad token with --consul-required: Fatal, and the token is in no message.
        let bad = "not-a-real-token-0123456789";
        let mut o = options(&[
            base[0],
            base[1],
            ("CONSUL_HTTP_TOKEN", bad),
            ("MICROINIT_CONSUL_REQUIRED", "1"),
        ]);
        o.set("CONSUL_HTTP_ADDR", vec![agent.addr()]);
        let reg = Registration::start(consul_config(&o).expect("ok").expect("on")).expect("start");
        reg.send(Command::AppStarted { pid: 1 });
        let Event::Fatal(msg) = wait_event(&reg, SOON, |e| matches!(e, Event::Fatal(_))) else {
            unreachable!()
        };
        assert!(
            msg.contains("ACL not found") || msg.contains("403"),
            "{msg}"
        );
        assert!(
            !msg.contains(bad) && !reg.status_json().to_string().contains(bad),
            "token leaked: {msg}"
        );
        assert_eq!(reg.status_json()["state"], "failed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// HTTPS to the agent with `CONSUL_CACERT` (only in builds with the `https` feature).
#[cfg(all(test, feature = "https"))]
mod https_tests {
    use super::dev_agent::{consul_bin, free_port, wait_until, DevAgent};
    use super::tests::{options, wait_event};
    use super::*;

    #[test]
    fn https_agent_with_cacert_and_unknown_ca_is_clear() {
        let dir = std::env::temp_dir().join(format!("microinit-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for args in [
            &["tls", "ca", "create"][..],
            &["tls", "cert", "create", "-server"][..],
        ] {
            let st = std::process::Command::new(consul_bin())
                .args(args)
                .current_dir(&dir)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("consul tls");
            assert!(st.success(), "consul {args:?}");
        }
        let https_port = free_port();
        let p = |f: &str| dir.join(f).to_string_lossy().to_string();
        let hcl = format!(
            r#"ports {{ https = {https_port} }} cert_file = "{}" key_file = "{}" ca_file = "{}""#,
            p("dc1-server-consul-0.pem"),
            p("dc1-server-consul-0-key.pem"),
            p("consul-agent-ca.pem")
        );
        let agent = DevAgent::start_with(&["-hcl", &hcl]);
        // The server certificate names localhost (and server.dc1.consul), so that is the host we use.
        let addr = format!("https://localhost:{https_port}");
        let ca = p("consul-agent-ca.pem");
        let mut o = options(&[
            ("MICROINIT_SERVICE_NAME", "tls-web"),
            ("MICROINIT_SERVICE_ID", "tls-web-1"),
        ]);
        o.set("CONSUL_HTTP_ADDR", vec![addr.clone()]);
        o.set("CONSUL_CACERT", vec![ca]);
        let reg = Registration::start(consul_config(&o).expect("ok").expect("on")).expect("start");
        reg.send(Command::AppStarted { pid: 1 });
        wait_until("registered over https", Duration::from_secs(10), || {
            agent.passing_instances("tls-web") == 1
        });
        reg.send(Command::Deregister);
        wait_event(&reg, DEREGISTER_BOUND, |e| *e == Event::Deregistered);
        assert!(agent.service("tls-web-1", None).is_none());

        // Without CONSUL_CACERT (no web roots are built in) nothing could verify the agent: refused at start.
        let mut o = options(&[("MICROINIT_SERVICE_NAME", "tls-web")]);
        o.set("CONSUL_HTTP_ADDR", vec![addr]);
        let e = consul_config(&o).expect_err("no CA");
        assert!(e.contains("no CA to verify it with"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_service_port_without_ready_means_ready_when_the_port_accepts() {
        let fields = consul_config(&options(&[
            ("MICROINIT_SERVICE_NAME", "w"),
            ("MICROINIT_SERVICE_PORT", "8080"),
        ]))
        .expect("ok")
        .expect("on");
        assert_eq!(
            fields.readiness,
            Readiness::Probe(WaitTarget::Tcp {
                host: "127.0.0.1".into(),
                port: 8080
            })
        );
        let (def, id, name) = service_definition(&fields);
        let line = start_line(&fields, &def, &id, &name);
        assert!(
            line.ends_with(
                "with http://127.0.0.1:8500; passing when 127.0.0.1:8080 accepts connections"
            ),
            "{line}"
        );

        // A service file: its port, with ${VAR} from the environment (PATH is always set).
        let dir = std::env::temp_dir().join(format!("microinit-svcport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("svc.json");
        std::fs::write(
            &file,
            r#"{"Name": "f", "Port": ${MICROINIT_TEST_NO_SUCH_VAR:-9090}, "Meta": {"path": "${PATH}"}}"#,
        )
        .expect("write");
        let f = file.to_string_lossy().to_string();
        let c = consul_config(&options(&[("MICROINIT_SERVICE_FILE", f.as_str())]))
            .expect("ok")
            .expect("on");
        assert_eq!(
            c.readiness,
            Readiness::Probe(WaitTarget::Tcp {
                host: "127.0.0.1".into(),
                port: 9090
            })
        );
        let ServiceSource::File { definition, .. } = &c.service else {
            panic!("file expected")
        };
        assert_eq!(
            definition["Meta"]["path"].as_str(),
            std::env::var("PATH").ok().as_deref()
        );
        // An explicit --ready wins; a health command without --ready keeps health readiness.
        for (extra, want) in [
            (("MICROINIT_READY", "immediate"), Readiness::Immediate),
            (("MICROINIT_HEALTH_CMD", "true"), Readiness::HealthCmd),
        ] {
            let c = consul_config(&options(&[
                ("MICROINIT_SERVICE_NAME", "w"),
                ("MICROINIT_SERVICE_PORT", "8080"),
                extra,
            ]))
            .expect("ok")
            .expect("on");
            assert_eq!(c.readiness, want, "{extra:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
