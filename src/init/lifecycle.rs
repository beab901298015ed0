//! The app's lifecycle as one value: a phase, and the rules that move it.
//!
//! Owns: every decision about the app between start-up and exit — when to spawn, when a received signal is
//! a stop request, the stop sequence (deregister, drain, pre-stop hook, forward), restarts and their
//! backoff, the way out (deregister, post-stop hook, leftovers, exit code). `Lifecycle::on(event, now)`
//! is pure: no syscalls, no clock; it returns the actions for the event loop to perform. Does not own:
//! performing anything (`event_loop`), which pid is whose (`event_loop`'s children table), the health
//! command's schedule (`health`), or what a dialect means (`cli` turns it into the `Policy` data here).
//!
//! Which errors are still fatal, phase by phase (the rule is stated where the phase starts, below):
//! - Waiting: the awaited thing not appearing by the deadline is fatal (127 for the runtime volume, 124 for
//!   `--wait-for` upstreams); a stop request exits 128+sig.
//! - PreStart: a failing or timed-out pre-start hook is fatal (the hook's status): the app never starts.
//! - Spawning: an exec failure ends the app like an exit (126/127), and the restart policy applies.
//! - Running, Stopping, Signalled, BackingOff: nothing is fatal any more but `--consul-required` (125); a
//!   failing hook or a slow Consul agent is logged and the sequence goes on.
//! - Exiting: nothing is fatal; every step is bounded, and the exit code is already decided.

use std::time::{Duration, Instant};

use crate::config::policy::EndOfLife;
use crate::config::{
    ConsulConfig, DialectPolicy, RestartPolicy, SignalSet, StopRules, SupervisorConfig,
};
use crate::init::exit_status::ExitStatus;
use crate::init::signals::signal_name;

/// After the final SIGKILL to leftovers: how long to wait for the kernel to let them go (D state).
pub const KILL_SETTLE: Duration = Duration::from_secs(2);
const RESTART_BACKOFF_BASE: Duration = Duration::from_millis(500);
const RESTART_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// An app that ran this long resets the backoff.
const RESTART_HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Every rule the lifecycle follows, as data: the dialects (`cli`) and the options fill it in.
#[derive(Debug, Clone)]
pub struct Policy {
    pub stop: StopRules,
    /// What happens to the app's leftovers (the dialect's rule).
    pub end_of_life: EndOfLife,
    /// Signal rewrites indexed by signal: `rewrite[s]` is what `s` is forwarded as; 0 drops it.
    pub rewrite: [u8; 65],
    /// Leftovers' time between SIGTERM and SIGKILL (`--grace`).
    pub grace: Duration,
    pub kill_settle: Duration,
    /// Consul registration is on: stops deregister first, the way out deregisters.
    pub consul: bool,
    /// `--consul-required`: a registration failure stops the app and exits 125.
    pub consul_required: bool,
    /// How long a deregistration may hold a stop up.
    pub deregister_bound: Duration,
    /// Time between deregistering (or marking the check critical) and forwarding the stop.
    pub drain: Duration,
    pub hooks: HookSet,
    pub hook_timeout: Duration,
    pub restart: RestartPolicy,
    pub max_restarts: Option<u32>,
    pub backoff: Backoff,
    /// Exit codes reported as 0 (`-e`).
    pub remap_exit: Vec<i32>,
    /// tini `-e`: a remapped code may be a 128+signal one too.
    pub remap_signal_deaths: bool,
}

/// Which hooks are configured (the loop holds their commands).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookSet {
    pub pre_start: bool,
    pub pre_stop: bool,
    pub post_stop: bool,
}

/// Capped exponential restart backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    /// A run at least this long resets the backoff to `base`.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: RESTART_BACKOFF_BASE,
            cap: RESTART_BACKOFF_CAP,
            healthy_after: RESTART_HEALTHY_AFTER,
        }
    }
}

impl Policy {
    /// The policy of a run; `deregister_bound` is the Consul worker's answer bound plus a margin.
    pub fn new(
        sup: &SupervisorConfig,
        dialect: &DialectPolicy,
        consul: Option<&ConsulConfig>,
        deregister_bound: Duration,
    ) -> Policy {
        let mut rewrite = identity_rewrites();
        for r in &sup.rewrites {
            if let (Ok(from), Ok(to)) = (usize::try_from(r.from), u8::try_from(r.to)) {
                if let Some(slot) = rewrite.get_mut(from) {
                    *slot = to;
                }
            }
        }
        Policy {
            stop: sup.stop,
            end_of_life: dialect.end_of_life,
            rewrite,
            grace: sup.grace,
            kill_settle: KILL_SETTLE,
            consul: consul.is_some(),
            consul_required: consul.is_some_and(|c| c.required),
            deregister_bound,
            drain: consul.map_or(Duration::ZERO, |c| c.drain),
            hooks: HookSet {
                pre_start: sup.hooks.pre_start.is_some(),
                pre_stop: sup.hooks.pre_stop.is_some(),
                post_stop: sup.hooks.post_stop.is_some(),
            },
            hook_timeout: sup.hooks.timeout,
            restart: sup.restart,
            max_restarts: sup.max_restarts,
            backoff: Backoff::default(),
            remap_exit: sup.remap_exit.clone(),
            remap_signal_deaths: dialect.remap_signal_deaths,
        }
    }

    /// What `sig` is forwarded as; 0 when a rewrite drops it.
    pub fn rewritten(&self, sig: i32) -> i32 {
        usize::try_from(sig)
            .ok()
            .and_then(|s| self.rewrite.get(s))
            .map_or(sig, |&to| i32::from(to))
    }

    /// The exit code an app status stands for, after `-e`.
    fn exit_code(&self, status: ExitStatus) -> i32 {
        status.remapped(&self.remap_exit, self.remap_signal_deaths)
    }
}

/// The rewrite table that changes nothing.
fn identity_rewrites() -> [u8; 65] {
    let mut t = [0u8; 65];
    for (s, slot) in t.iter_mut().enumerate() {
        *slot = s as u8;
    }
    t
}

/// What a waiting phase waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaited {
    /// The runtime volume (`--wait-runtime`): every link into it resolves.
    RuntimeVolume,
    /// The `--wait-for` targets (`init::discovery`).
    Upstreams,
}

impl Awaited {
    pub fn describe(self) -> &'static str {
        match self {
            Awaited::RuntimeVolume => "the runtime volume",
            Awaited::Upstreams => "every upstream",
        }
    }

    /// microinit's exit code when the wait runs out.
    pub fn exit_code(self) -> i32 {
        match self {
            Awaited::RuntimeVolume => 127,
            Awaited::Upstreams => crate::config::discovery::WAIT_TIMEOUT_EXIT,
        }
    }
}

/// The hooks, by when they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    PreStart,
    PreStop,
    PostStop,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::PreStart => "pre-start",
            Hook::PreStop => "pre-stop",
            Hook::PostStop => "post-stop",
        }
    }
}

/// What a stop leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// A stop request: microinit exits once the app is gone.
    Exit,
    /// `microinit restart`: the app is started again at once once it is gone.
    Restart,
}

/// The steps of a stop before the signal is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopStep {
    /// Waiting for the worker's `Deregistered`, at most until `until`.
    Deregistering { until: Instant },
    /// Deregistered (or marked critical): clients stop coming; forward no earlier than `until`.
    Draining { until: Instant },
    /// The pre-stop hook runs; `deadline` is None once it was killed for running out of time.
    PreStop { deadline: Option<Instant> },
}

/// The steps of the way out, the app being gone for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStep {
    Deregistering {
        until: Instant,
    },
    PostStop {
        deadline: Option<Instant>,
    },
    /// SIGTERM went to what is left; SIGKILL at `kill_at`.
    Terminating {
        kill_at: Instant,
    },
    /// SIGKILL went to what is left; exit anyway at `give_up`.
    Killed {
        give_up: Instant,
    },
}

/// Where the app's life is. Each variant carries its own deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before anything starts: waiting for `what` since `since`, failing at `deadline`.
    Waiting {
        what: Awaited,
        since: Instant,
        deadline: Instant,
    },
    /// The pre-start hook runs.
    PreStart { deadline: Option<Instant> },
    /// Forked, exec not yet confirmed: the child still runs microinit's code. Signals other than stop
    /// requests are held until the exec (delivered before it, they would act on microinit's code);
    /// `stop` is the stop request that SIGKILLed it meanwhile.
    Spawning { held: SignalSet, stop: Option<i32> },
    /// The app runs its own code since `since`.
    Running { since: Instant },
    /// A stop was requested; `signal` (already rewritten) is forwarded after `step`.
    Stopping {
        signal: i32,
        intent: Intent,
        step: StopStep,
    },
    /// The stop was forwarded; SIGKILL at `kill_at` only when `--stop-timeout` asks for it.
    Signalled {
        signal: i32,
        intent: Intent,
        kill_at: Option<Instant>,
    },
    /// The app exited and the restart policy starts it again at `until`.
    BackingOff { until: Instant },
    /// The app is gone for good; microinit exits with `code` after `step`.
    Exiting { code: i32, step: ExitStep },
    /// The loop exits with `code`.
    Done { code: i32 },
}

/// Why the check goes critical while the app is still registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// The app exited and the restart policy restarts it.
    Exited(ExitStatus),
    /// `microinit restart`.
    RestartRequested,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The awaited thing is there.
    AwaitDone,
    /// A signal for the app: received by PID 1 (SIGCHLD and our own SIGIO excluded) or asked for by
    /// `microinit signal`.
    Signal(i32),
    /// `microinit restart`.
    Restart,
    /// The app's exec succeeded (the exec-result pipe read EOF).
    Execed,
    AppExited(ExitStatus),
    HookExited {
        hook: Hook,
        end: HookEnd,
    },
    /// The Consul worker answered a deregistration.
    Deregistered,
    /// The Consul worker gave up on registration (fatal only with `--consul-required`).
    ConsulFatal,
    /// The reaper found no children at all (ECHILD).
    NoChildren,
    /// A deadline may have passed.
    Tick,
}

/// How a hook ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookEnd {
    Exited(ExitStatus),
    /// It could not be started (the loop has said why); the code it stands for.
    NotStarted(i32),
}

/// What the loop must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fork and exec the app; the exec's result comes back as `Execed` or `AppExited`.
    Spawn,
    StartHook(Hook),
    /// SIGKILL the hook's process group (it ran out of time).
    KillHook(Hook),
    /// Deliver a signal to the app by microinit's rules (pid or group); counted as forwarded.
    Forward(i32),
    /// Deliver these held signals to the app (after its exec).
    ForwardHeld(SignalSet),
    /// SIGKILL the app by microinit's rules (`--stop-timeout` ran out).
    KillApp,
    /// SIGKILL the forked child that has not exec'd yet (its pid only: it may not lead a group yet).
    KillUnexeced,
    /// The app runs: tell the Consul worker, start the health schedule.
    AppStarted,
    /// The check goes critical with this reason.
    AppDown(DownReason),
    /// Ask the Consul worker to deregister; it answers with `Deregistered`.
    Deregister,
    /// Signal every process left (kill(-1) as PID 1, our children as a subreaper).
    SignalLeftovers(i32),
    /// Signal the app's process group (it exited, its group may live on).
    SignalAppGroup(i32),
    /// The wait ran out: report what is missing.
    WaitFailed(Awaited),
    Exit(i32),
}

/// The actions of one event, in order; no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    buf: [Action; Actions::CAP],
    len: usize,
}

impl Actions {
    const CAP: usize = 4;

    fn new() -> Actions {
        Actions {
            buf: [Action::Spawn; Actions::CAP],
            len: 0,
        }
    }

    fn push(&mut self, a: Action) {
        // No event yields more than three; a fourth is a bug, caught by the tests in debug builds.
        debug_assert!(
            self.len < Actions::CAP,
            "too many actions: {self:?} + {a:?}"
        );
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = a;
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[Action] {
        &self.buf[..self.len]
    }

    /// The actions after the first, which the loop already performed: the `Forward(sig)` that
    /// `Lifecycle::forwards_at_once(sig)` promised.
    pub fn after_forward(self, sig: i32) -> impl Iterator<Item = Action> {
        debug_assert_eq!(self.as_slice().first(), Some(&Action::Forward(sig)));
        self.into_iter().skip(1)
    }
}

impl IntoIterator for Actions {
    type Item = Action;
    type IntoIter = std::iter::Take<std::array::IntoIter<Action, { Actions::CAP }>>;
    fn into_iter(self) -> Self::IntoIter {
        self.buf.into_iter().take(self.len)
    }
}

/// The lifecycle: the phase, plus what outlives phases (restart count, backoff, last exit).
#[derive(Debug, Clone)]
pub struct Lifecycle {
    phase: Phase,
    policy: Policy,
    restarts: u32,
    backoff_step: u32,
    last_exit: Option<ExitStatus>,
    /// `--consul-required` failed: the exit code is 125 whatever the app says.
    forced_exit: Option<i32>,
    /// The Consul worker was told the app started at least once: the way out deregisters.
    registered: bool,
    /// False once the reaper said ECHILD, until something is spawned again.
    children_left: bool,
    /// A second wait after the first one (the runtime volume, then the upstreams).
    next_wait: Option<(Awaited, Duration)>,
}

impl Lifecycle {
    /// The lifecycle at start-up: waiting for `wait` when given (what, for how long), else starting.
    pub fn start(
        policy: Policy,
        wait: Option<(Awaited, Duration)>,
        now: Instant,
    ) -> (Lifecycle, Actions) {
        let mut l = Lifecycle {
            phase: Phase::Done { code: 0 },
            policy,
            restarts: 0,
            backoff_step: 0,
            last_exit: None,
            forced_exit: None,
            registered: false,
            children_left: false,
            next_wait: None,
        };
        let mut out = Actions::new();
        match wait {
            Some((what, d)) => {
                l.phase = Phase::Waiting {
                    what,
                    since: now,
                    deadline: now + d,
                }
            }
            None => l.begin_start(now, &mut out),
        }
        (l, out)
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Wait for `what` too once the wait `start` began is over (each wait has its own time limit).
    pub fn then_wait(&mut self, what: Awaited, limit: Duration) {
        self.next_wait = Some((what, limit));
    }

    /// Restarts after a failure since the app last ran long enough to reset the backoff.
    pub fn crash_restarts(&self) -> u32 {
        self.backoff_step
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    pub fn last_exit(&self) -> Option<ExitStatus> {
        self.last_exit
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The app has been exec'd and not yet reaped.
    pub fn app_running(&self) -> bool {
        matches!(
            self.phase,
            Phase::Running { .. } | Phase::Stopping { .. } | Phase::Signalled { .. }
        )
    }

    /// The word `microinit status` shows.
    pub fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Waiting { .. } => "waiting",
            Phase::PreStart { .. } | Phase::Spawning { .. } => "starting",
            Phase::Running { .. } => "running",
            Phase::Stopping {
                intent: Intent::Restart,
                ..
            }
            | Phase::Signalled {
                intent: Intent::Restart,
                ..
            }
            | Phase::BackingOff { .. } => "restarting",
            Phase::Stopping { .. } | Phase::Signalled { .. } => "stopping",
            Phase::Exiting { .. } | Phase::Done { .. } => "exited",
        }
    }

    /// The nearest deadline of the current phase.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { deadline, .. } => Some(deadline),
            Phase::PreStart { deadline }
            | Phase::Stopping {
                step: StopStep::PreStop { deadline },
                ..
            }
            | Phase::Exiting {
                step: ExitStep::PostStop { deadline },
                ..
            } => deadline,
            Phase::Stopping {
                step: StopStep::Deregistering { until } | StopStep::Draining { until },
                ..
            }
            | Phase::BackingOff { until }
            | Phase::Exiting {
                step:
                    ExitStep::Deregistering { until }
                    | ExitStep::Terminating { kill_at: until }
                    | ExitStep::Killed { give_up: until },
                ..
            } => Some(until),
            Phase::Signalled { kill_at, .. } => kill_at,
            Phase::Spawning { .. } | Phase::Running { .. } | Phase::Done { .. } => None,
        }
    }

    /// Take one event; returns what the loop must do. An event the phase has no rule for changes nothing.
    pub fn on(&mut self, event: Event, now: Instant) -> Actions {
        let mut out = Actions::new();
        match event {
            Event::AwaitDone => {
                if let Phase::Waiting { what, since, .. } = self.phase {
                    log::info!(
                        "{} is complete after {:?}",
                        what.describe(),
                        now.saturating_duration_since(since)
                    );
                    match self.next_wait.take() {
                        Some((what, limit)) => {
                            self.phase = Phase::Waiting {
                                what,
                                since: now,
                                deadline: now + limit,
                            }
                        }
                        None => self.begin_start(now, &mut out),
                    }
                }
            }
            Event::Signal(sig) => self.on_signal(sig, now, &mut out),
            Event::Restart => self.on_restart(now, &mut out),
            Event::Execed => {
                if let Phase::Spawning { held, stop: None } = self.phase {
                    self.phase = Phase::Running { since: now };
                    self.registered |= self.policy.consul;
                    out.push(Action::AppStarted);
                    if held != SignalSet::empty() {
                        out.push(Action::ForwardHeld(held));
                    }
                }
            }
            Event::AppExited(status) => self.on_app_exit(status, now, &mut out),
            Event::HookExited { hook, end } => self.on_hook_exit(hook, end, now, &mut out),
            Event::Deregistered => match self.phase {
                Phase::Stopping {
                    signal,
                    intent,
                    step: StopStep::Deregistering { .. },
                } => self.drain_then_stop(signal, intent, now, &mut out),
                Phase::Exiting {
                    code,
                    step: ExitStep::Deregistering { .. },
                } => self.after_deregistered(code, now, &mut out),
                _ => {}
            },
            Event::ConsulFatal => self.on_consul_fatal(now, &mut out),
            Event::NoChildren => {
                self.children_left = false;
                if let Phase::Exiting {
                    code,
                    step: ExitStep::Terminating { .. } | ExitStep::Killed { .. },
                } = self.phase
                {
                    // ECHILD: the last descendant is reaped; nothing to wait for (no fixed sleep).
                    self.exit(code, &mut out);
                }
            }
            Event::Tick => self.on_tick(now, &mut out),
        }
        out
    }

    // ---- starting ----------------------------------------------------------------------------------

    /// Rule: from here on a failing pre-start hook is fatal (its status); the app never starts.
    fn begin_start(&mut self, now: Instant, out: &mut Actions) {
        if self.policy.hooks.pre_start {
            self.phase = Phase::PreStart {
                deadline: Some(now + self.policy.hook_timeout),
            };
            self.start_child(Action::StartHook(Hook::PreStart), out);
        } else {
            self.spawn(out);
        }
    }

    /// Rule: from here on an exec failure is the app's exit (126/127) and the restart policy decides.
    fn spawn(&mut self, out: &mut Actions) {
        self.phase = Phase::Spawning {
            held: SignalSet::empty(),
            stop: None,
        };
        self.start_child(Action::Spawn, out);
    }

    fn start_child(&mut self, a: Action, out: &mut Actions) {
        self.children_left = true;
        out.push(a);
    }

    // ---- signals and requests ------------------------------------------------------------------------

    /// True when `Event::Signal(sig)` would, now, begin with `Action::Forward(sig)`: the signal itself, not
    /// rewritten, delivered before anything else. The loop may then deliver it the moment it arrives and hand
    /// the event over afterwards (`Actions::after_forward`): the app gets the signal before the bookkeeping,
    /// which a long-idle PID 1 would otherwise run on cold caches first. Pure; mirrors `on_signal` (the tests
    /// compare the two in every phase).
    pub fn forwards_at_once(&self, sig: i32) -> bool {
        if self.policy.rewritten(sig) != sig {
            return false;
        }
        if !self.policy.stop.stop_signals.contains(sig) {
            return self.app_running();
        }
        match self.phase {
            // begin_stop's short way: nothing to deregister, no drain, no pre-stop hook.
            Phase::Running { .. }
            | Phase::Stopping {
                intent: Intent::Restart,
                ..
            } => !self.registered && self.policy.drain.is_zero() && !self.policy.hooks.pre_stop,
            Phase::Stopping {
                intent: Intent::Exit,
                ..
            }
            | Phase::Signalled { .. } => true,
            _ => false,
        }
    }

    fn on_signal(&mut self, sig: i32, now: Instant, out: &mut Actions) {
        let to = self.policy.rewritten(sig);
        if to == 0 {
            log::info!("dropping {} (rewrite to 0)", signal_name(sig));
            return;
        }
        if !self.policy.stop.stop_signals.contains(sig) {
            let running = self.app_running();
            match &mut self.phase {
                Phase::Spawning { held, stop: None } => *held = held.with(to),
                _ if running => out.push(Action::Forward(to)),
                _ => log::debug!("no app running; {} not forwarded", signal_name(sig)),
            }
            return;
        }
        match self.phase {
            Phase::Waiting { what, .. } => {
                log::info!(
                    "{} while waiting for {}: exiting",
                    signal_name(sig),
                    what.describe()
                );
                self.exit(128 + sig, out);
            }
            Phase::PreStart { .. } => {
                log::info!(
                    "{} during the pre-start hook: not starting the app",
                    signal_name(sig)
                );
                self.begin_exit(128 + sig, now, out);
            }
            Phase::Spawning { stop: None, .. } => {
                // Still microinit's own code in the child: nothing of the app to stop gracefully.
                self.phase = Phase::Spawning {
                    held: SignalSet::empty(),
                    stop: Some(sig),
                };
                out.push(Action::KillUnexeced);
            }
            Phase::Running { .. } => self.begin_stop(to, Intent::Exit, now, out),
            Phase::Stopping {
                intent: Intent::Restart,
                ..
            } => {
                // A restart under way becomes a stop: deregister (the restart only marked it critical).
                log::info!("{} during a restart: stopping instead", signal_name(sig));
                self.begin_stop(to, Intent::Exit, now, out);
            }
            Phase::Stopping {
                intent: Intent::Exit,
                ..
            } => {
                log::info!("second stop request ({}): forwarding now", signal_name(sig));
                self.forward_stop(to, Intent::Exit, now, out);
            }
            Phase::Signalled { kill_at, .. } => {
                // Deregistered and forwarded once already: a repeated stop request goes straight through.
                self.phase = Phase::Signalled {
                    signal: to,
                    intent: Intent::Exit,
                    kill_at,
                };
                out.push(Action::Forward(to));
            }
            Phase::BackingOff { .. } => {
                log::info!(
                    "{} while waiting to restart the app: exiting",
                    signal_name(sig)
                );
                self.begin_exit(128 + sig, now, out);
            }
            // On the way out already; every step there is bounded.
            Phase::Spawning { stop: Some(_), .. } | Phase::Exiting { .. } | Phase::Done { .. } => {}
        }
    }

    fn on_restart(&mut self, now: Instant, out: &mut Actions) {
        match self.phase {
            Phase::Running { .. } => {
                log::info!("restart requested: marking the app down, draining, then stopping it");
                let sig = match self.policy.rewritten(libc::SIGTERM) {
                    0 => libc::SIGTERM,
                    s => s,
                };
                self.begin_stop(sig, Intent::Restart, now, out);
            }
            Phase::BackingOff { .. } => {
                log::info!("restart requested while backing off: starting the app now");
                self.restarts += 1;
                self.spawn(out);
            }
            _ => {}
        }
    }

    /// What `microinit restart` gets as an answer in this phase (before `Event::Restart` is taken).
    pub fn restart_answer(&self) -> Result<&'static str, &'static str> {
        match self.phase {
            Phase::Running { .. } => Ok("restarting the app: the check goes critical, then after the drain the app gets the stop signal and starts again once it exited"),
            Phase::Stopping { intent: Intent::Restart, .. } | Phase::Signalled { intent: Intent::Restart, .. } => {
                Ok("a restart is already under way")
            }
            Phase::BackingOff { .. } => Ok("the app was waiting to restart; starting it now"),
            Phase::Waiting { .. } | Phase::PreStart { .. } | Phase::Spawning { .. } => {
                Err("the app is not running yet; nothing to restart")
            }
            Phase::Stopping { .. } | Phase::Signalled { .. } | Phase::Exiting { .. } | Phase::Done { .. } => {
                Err("microinit is stopping; not restarting the app")
            }
        }
    }

    fn on_consul_fatal(&mut self, now: Instant, out: &mut Actions) {
        if !self.policy.consul_required || self.forced_exit.is_some() {
            return;
        }
        if matches!(self.phase, Phase::Exiting { .. } | Phase::Done { .. }) {
            return;
        }
        log::error!("--consul-required: stopping the app; exit status will be 125");
        self.forced_exit = Some(125);
        match self.phase {
            Phase::Running { .. } | Phase::Stopping { .. } => {
                // The worker gave up: no deregistration to wait for.
                self.forward_stop(libc::SIGTERM, Intent::Exit, now, out)
            }
            Phase::Signalled {
                signal, kill_at, ..
            } => {
                self.phase = Phase::Signalled {
                    signal,
                    intent: Intent::Exit,
                    kill_at,
                }
            }
            Phase::Spawning { stop: None, .. } => {
                self.phase = Phase::Spawning {
                    held: SignalSet::empty(),
                    stop: Some(libc::SIGTERM),
                };
                out.push(Action::KillUnexeced);
            }
            _ => self.begin_exit(125, now, out),
        }
    }

    // ---- the stop sequence ---------------------------------------------------------------------------

    /// Rule: from a stop request on, nothing is fatal; each step is bounded and the signal is forwarded
    /// at the end of the sequence, or at once on a second request.
    fn begin_stop(&mut self, signal: i32, intent: Intent, now: Instant, out: &mut Actions) {
        if self.registered {
            match intent {
                Intent::Exit => {
                    out.push(Action::Deregister);
                    self.phase = Phase::Stopping {
                        signal,
                        intent,
                        step: StopStep::Deregistering {
                            until: now + self.policy.deregister_bound,
                        },
                    };
                    return;
                }
                // A planned restart keeps the service registered, critical while it is down.
                Intent::Restart => out.push(Action::AppDown(DownReason::RestartRequested)),
            }
        }
        self.drain_then_stop(signal, intent, now, out);
    }

    fn drain_then_stop(&mut self, signal: i32, intent: Intent, now: Instant, out: &mut Actions) {
        if self.policy.drain.is_zero() {
            self.pre_stop_then_forward(signal, intent, now, out);
        } else {
            self.phase = Phase::Stopping {
                signal,
                intent,
                step: StopStep::Draining {
                    until: now + self.policy.drain,
                },
            };
        }
    }

    fn pre_stop_then_forward(
        &mut self,
        signal: i32,
        intent: Intent,
        now: Instant,
        out: &mut Actions,
    ) {
        if self.policy.hooks.pre_stop {
            self.phase = Phase::Stopping {
                signal,
                intent,
                step: StopStep::PreStop {
                    deadline: Some(now + self.policy.hook_timeout),
                },
            };
            self.start_child(Action::StartHook(Hook::PreStop), out);
        } else {
            self.forward_stop(signal, intent, now, out);
        }
    }

    fn forward_stop(&mut self, signal: i32, intent: Intent, now: Instant, out: &mut Actions) {
        out.push(Action::Forward(signal));
        self.phase = Phase::Signalled {
            signal,
            intent,
            kill_at: self.policy.stop.stop_timeout.map(|t| now + t),
        };
    }

    // ---- the app's exit ------------------------------------------------------------------------------

    fn on_app_exit(&mut self, status: ExitStatus, now: Instant, out: &mut Actions) {
        match self.phase {
            Phase::Spawning {
                stop: Some(sig), ..
            } => {
                self.last_exit = Some(status);
                self.begin_exit(128 + sig, now, out);
            }
            Phase::Spawning { stop: None, .. } => self.exited_on_its_own(status, None, now, out),
            Phase::Running { since } => {
                self.exited_on_its_own(status, Some(now.saturating_duration_since(since)), now, out)
            }
            Phase::Stopping {
                intent: Intent::Restart,
                ..
            }
            | Phase::Signalled {
                intent: Intent::Restart,
                ..
            } => {
                self.last_exit = Some(status);
                self.restarts += 1;
                log::info!(
                    "app {status}; restarting it as requested (restart {})",
                    self.restarts
                );
                self.spawn(out);
            }
            Phase::Stopping { .. } | Phase::Signalled { .. } => {
                self.last_exit = Some(status);
                self.begin_exit(self.policy.exit_code(status), now, out);
            }
            Phase::Waiting { .. }
            | Phase::PreStart { .. }
            | Phase::BackingOff { .. }
            | Phase::Exiting { .. }
            | Phase::Done { .. } => {}
        }
    }

    /// The app ended without being asked to: the restart policy decides.
    fn exited_on_its_own(
        &mut self,
        status: ExitStatus,
        ran_for: Option<Duration>,
        now: Instant,
        out: &mut Actions,
    ) {
        self.last_exit = Some(status);
        let policy_restarts = match self.policy.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !status.success(),
            RestartPolicy::Always => true,
        };
        let under_max = self.policy.max_restarts.is_none_or(|m| self.restarts < m);
        if policy_restarts && under_max {
            let b = self.policy.backoff;
            if ran_for.is_some_and(|r| r >= b.healthy_after) {
                self.backoff_step = 0;
            }
            let delay = b
                .base
                .saturating_mul(1 << self.backoff_step.min(16))
                .min(b.cap);
            self.backoff_step += 1;
            self.restarts += 1;
            log::warn!("app {status}; restart {} in {delay:?}", self.restarts);
            if self.registered {
                out.push(Action::AppDown(DownReason::Exited(status)));
            }
            self.phase = Phase::BackingOff { until: now + delay };
            return;
        }
        if policy_restarts {
            log::warn!("app {status}; giving up after {} restarts", self.restarts);
        }
        self.begin_exit(self.policy.exit_code(status), now, out);
    }

    // ---- hooks ---------------------------------------------------------------------------------------

    fn on_hook_exit(&mut self, hook: Hook, end: HookEnd, now: Instant, out: &mut Actions) {
        let (deadline, running) = match (hook, self.phase) {
            (Hook::PreStart, Phase::PreStart { deadline }) => (deadline, true),
            (
                Hook::PreStop,
                Phase::Stopping {
                    step: StopStep::PreStop { deadline },
                    ..
                },
            ) => (deadline, true),
            (
                Hook::PostStop,
                Phase::Exiting {
                    step: ExitStep::PostStop { deadline },
                    ..
                },
            ) => (deadline, true),
            _ => (None, false),
        };
        if !running {
            // A hook the phase moved on from (a stop request ended the pre-start hook, the app exited
            // during pre-stop): nothing waits for it any more.
            log::info!("{} hook ended after its phase ({end:?})", hook.name());
            return;
        }
        let failed = match end {
            // Killed for its timeout: whatever status the kill left, it failed.
            HookEnd::Exited(s) if deadline.is_none() => Some((
                format!("timed out after {:?}", self.policy.hook_timeout),
                s.code(),
            )),
            HookEnd::Exited(s) if s.success() => None,
            HookEnd::Exited(s) => Some((s.to_string(), s.code())),
            // The loop already said why it could not start.
            HookEnd::NotStarted(code) => Some((String::new(), code)),
        };
        match &failed {
            None => log::info!("{} hook done", hook.name()),
            Some((what, _)) if what.is_empty() => {}
            Some((what, _)) if hook == Hook::PreStart => {
                log::error!("{} hook failed: {what}", hook.name())
            }
            Some((what, _)) => log::warn!("{} hook failed: {what}", hook.name()),
        }
        match self.phase {
            Phase::PreStart { .. } => match failed {
                None => self.spawn(out),
                Some((_, code)) => {
                    // The app's preconditions do not hold: do not start it.
                    log::error!("not starting the app; exiting with the hook's status {code}");
                    self.begin_exit(code, now, out);
                }
            },
            Phase::Stopping { signal, intent, .. } => self.forward_stop(signal, intent, now, out),
            Phase::Exiting { code, .. } => self.leftovers(code, now, out),
            _ => {}
        }
    }

    // ---- the way out ---------------------------------------------------------------------------------

    /// Rule: from here on nothing is fatal and the exit code is decided; every step is bounded.
    fn begin_exit(&mut self, code: i32, now: Instant, out: &mut Actions) {
        let code = self.forced_exit.unwrap_or(code);
        if self.registered {
            out.push(Action::Deregister);
            self.phase = Phase::Exiting {
                code,
                step: ExitStep::Deregistering {
                    until: now + self.policy.deregister_bound,
                },
            };
        } else {
            self.after_deregistered(code, now, out);
        }
    }

    fn after_deregistered(&mut self, code: i32, now: Instant, out: &mut Actions) {
        if self.policy.hooks.post_stop {
            self.phase = Phase::Exiting {
                code,
                step: ExitStep::PostStop {
                    deadline: Some(now + self.policy.hook_timeout),
                },
            };
            self.start_child(Action::StartHook(Hook::PostStop), out);
        } else {
            self.leftovers(code, now, out);
        }
    }

    fn leftovers(&mut self, code: i32, now: Instant, out: &mut Actions) {
        match self.policy.end_of_life {
            EndOfLife::Sweep if self.children_left => {
                out.push(Action::SignalLeftovers(libc::SIGTERM));
                self.phase = Phase::Exiting {
                    code,
                    step: ExitStep::Terminating {
                        kill_at: now + self.policy.grace,
                    },
                };
            }
            // waitpid's ECHILD already proved the namespace empty.
            EndOfLife::Sweep
            | EndOfLife::ExitAtOnce {
                signal_group: false,
            } => self.exit(code, out),
            // dumb-init: SIGTERM after the rewrites (`-r 15:0` sends nothing) to the app's group.
            EndOfLife::ExitAtOnce { signal_group: true } => {
                match self.policy.rewritten(libc::SIGTERM) {
                    0 => {}
                    sig => out.push(Action::SignalAppGroup(sig)),
                }
                self.exit(code, out);
            }
        }
    }

    fn exit(&mut self, code: i32, out: &mut Actions) {
        self.phase = Phase::Done { code };
        out.push(Action::Exit(code));
    }

    // ---- deadlines -----------------------------------------------------------------------------------

    fn on_tick(&mut self, now: Instant, out: &mut Actions) {
        if self.next_deadline().is_none_or(|d| now < d) {
            return;
        }
        match self.phase {
            Phase::Waiting { what, .. } => {
                out.push(Action::WaitFailed(what));
                self.exit(what.exit_code(), out);
            }
            Phase::PreStart { .. } => {
                self.phase = Phase::PreStart { deadline: None };
                out.push(Action::KillHook(Hook::PreStart));
            }
            Phase::Stopping {
                signal,
                intent,
                step,
            } => match step {
                StopStep::Deregistering { .. } => {
                    log::warn!(
                        "deregistration not confirmed within {:?}; stopping the app anyway",
                        self.policy.deregister_bound
                    );
                    self.pre_stop_then_forward(signal, intent, now, out);
                }
                StopStep::Draining { .. } => self.pre_stop_then_forward(signal, intent, now, out),
                StopStep::PreStop { .. } => {
                    self.phase = Phase::Stopping {
                        signal,
                        intent,
                        step: StopStep::PreStop { deadline: None },
                    };
                    out.push(Action::KillHook(Hook::PreStop));
                }
            },
            Phase::Signalled { signal, intent, .. } => {
                log::warn!(
                    "app still running {:?} after {}; sending SIGKILL (--stop-timeout)",
                    self.policy.stop.stop_timeout.unwrap_or_default(),
                    signal_name(signal)
                );
                self.phase = Phase::Signalled {
                    signal,
                    intent,
                    kill_at: None,
                };
                out.push(Action::KillApp);
            }
            Phase::BackingOff { .. } => self.spawn(out),
            Phase::Exiting { code, step } => match step {
                ExitStep::Deregistering { .. } => {
                    log::warn!(
                        "Consul deregistration did not finish within {:?}; going on",
                        self.policy.deregister_bound
                    );
                    self.after_deregistered(code, now, out);
                }
                ExitStep::PostStop { .. } => {
                    self.phase = Phase::Exiting {
                        code,
                        step: ExitStep::PostStop { deadline: None },
                    };
                    out.push(Action::KillHook(Hook::PostStop));
                }
                ExitStep::Terminating { .. } => {
                    log::warn!(
                        "processes left after the app exited are still alive after {:?}; sending SIGKILL",
                        self.policy.grace
                    );
                    out.push(Action::SignalLeftovers(libc::SIGKILL));
                    self.phase = Phase::Exiting {
                        code,
                        step: ExitStep::Killed {
                            give_up: now + self.policy.kill_settle,
                        },
                    };
                }
                ExitStep::Killed { .. } => {
                    log::warn!(
                        "processes still alive after SIGKILL and {:?}; exiting anyway",
                        self.policy.kill_settle
                    );
                    self.exit(code, out);
                }
            },
            Phase::Spawning { .. } | Phase::Running { .. } | Phase::Done { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests;
