//! The lifecycle's rules, one behaviour per test: no processes, no clock, no root.

use super::*;
use crate::config::policy::{DialectPolicy, EndOfLife};
use crate::config::{RestartPolicy, SignalSet, StopRules};
use libc::{SIGHUP, SIGINT, SIGKILL, SIGQUIT, SIGTERM, SIGUSR1};

const TERM: Event = Event::Signal(SIGTERM);

fn policy() -> Policy {
    Policy {
        stop: StopRules::default(),
        end_of_life: EndOfLife::Sweep,
        rewrite: identity_rewrites(),
        grace: Duration::from_secs(8),
        kill_settle: Duration::from_secs(2),
        consul: false,
        consul_required: false,
        deregister_bound: Duration::from_millis(2500),
        drain: Duration::ZERO,
        hooks: HookSet::default(),
        hook_timeout: Duration::from_secs(30),
        restart: RestartPolicy::Never,
        max_restarts: None,
        backoff: Backoff::default(),
        remap_exit: Vec::new(),
        remap_signal_deaths: false,
    }
}

fn consul(drain_ms: u64) -> Policy {
    Policy {
        consul: true,
        drain: Duration::from_millis(drain_ms),
        ..policy()
    }
}

/// A fixed origin; every test speaks in milliseconds after it.
struct Clock(Instant);

impl Clock {
    fn new() -> Clock {
        Clock(Instant::now())
    }
    fn ms(&self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
}

fn acts(a: Actions) -> Vec<Action> {
    a.as_slice().to_vec()
}

/// Started, exec'd at t=0: the app runs.
fn running(p: Policy, c: &Clock) -> Lifecycle {
    let (mut l, a) = Lifecycle::start(p, None, c.ms(0));
    assert_eq!(acts(a), [Action::Spawn]);
    let a = l.on(Event::Execed, c.ms(0));
    assert_eq!(acts(a), [Action::AppStarted]);
    l
}

fn exit_code(l: &Lifecycle) -> Option<i32> {
    match l.phase() {
        Phase::Done { code } => Some(code),
        _ => None,
    }
}

// ---- starting --------------------------------------------------------------------------------------

#[test]
fn without_hooks_the_app_is_spawned_at_once() {
    let c = Clock::new();
    let (l, a) = Lifecycle::start(policy(), None, c.ms(0));
    assert_eq!(acts(a), [Action::Spawn]);
    assert!(matches!(l.phase(), Phase::Spawning { stop: None, .. }));
}

#[test]
fn a_pre_start_hook_runs_before_the_app() {
    let c = Clock::new();
    let mut p = policy();
    p.hooks.pre_start = true;
    let (l, a) = Lifecycle::start(p, None, c.ms(0));
    assert_eq!(acts(a), [Action::StartHook(Hook::PreStart)]);
    assert_eq!(l.next_deadline(), Some(c.ms(30_000)));
}

#[test]
fn a_successful_pre_start_hook_spawns_the_app() {
    let c = Clock::new();
    let mut p = policy();
    p.hooks.pre_start = true;
    let (mut l, _) = Lifecycle::start(p, None, c.ms(0));
    let a = l.on(
        Event::HookExited {
            hook: Hook::PreStart,
            end: HookEnd::Exited(ExitStatus::Code(0)),
        },
        c.ms(5),
    );
    assert_eq!(acts(a), [Action::Spawn]);
}

#[test]
fn a_failing_pre_start_hook_exits_with_its_status_without_starting_the_app() {
    let c = Clock::new();
    let mut p = policy();
    p.hooks.pre_start = true;
    let (mut l, _) = Lifecycle::start(p, None, c.ms(0));
    l.on(Event::NoChildren, c.ms(4));
    let a = l.on(
        Event::HookExited {
            hook: Hook::PreStart,
            end: HookEnd::Exited(ExitStatus::Code(3)),
        },
        c.ms(5),
    );
    assert_eq!(acts(a), [Action::Exit(3)]);
}

#[test]
fn a_pre_start_hook_that_could_not_start_stops_the_start_with_its_code() {
    let c = Clock::new();
    let mut p = policy();
    p.hooks.pre_start = true;
    let (mut l, _) = Lifecycle::start(p, None, c.ms(0));
    l.on(Event::NoChildren, c.ms(1));
    let a = l.on(
        Event::HookExited {
            hook: Hook::PreStart,
            end: HookEnd::NotStarted(127),
        },
        c.ms(1),
    );
    assert_eq!(acts(a), [Action::Exit(127)]);
}

#[test]
fn a_pre_start_hook_past_its_timeout_is_killed_and_counts_as_failed() {
    let c = Clock::new();
    let mut p = policy();
    p.hooks.pre_start = true;
    p.hook_timeout = Duration::from_millis(200);
    let (mut l, _) = Lifecycle::start(p, None, c.ms(0));
    assert!(acts(l.on(Event::Tick, c.ms(199))).is_empty());
    assert_eq!(
        acts(l.on(Event::Tick, c.ms(200))),
        [Action::KillHook(Hook::PreStart)]
    );
    assert_eq!(l.next_deadline(), None, "killed once, not again");
    l.on(Event::NoChildren, c.ms(201));
    let a = l.on(
        Event::HookExited {
            hook: Hook::PreStart,
            end: HookEnd::Exited(ExitStatus::Code(0)),
        },
        c.ms(201),
    );
    assert_eq!(
        acts(a),
        [Action::Exit(0)],
        "even a 0 after the kill is a timeout, and the app does not start"
    );
}

#[test]
fn sigterm_during_the_pre_start_hook_exits_128_plus_15_without_starting_the_app() {
    let c = Clock::new();
    let mut p = policy();
    p.hooks.pre_start = true;
    let (mut l, _) = Lifecycle::start(p, None, c.ms(0));
    assert_eq!(
        acts(l.on(TERM, c.ms(10))),
        [Action::SignalLeftovers(SIGTERM)],
        "the hook is what is left"
    );
    let a = l.on(
        Event::HookExited {
            hook: Hook::PreStart,
            end: HookEnd::Exited(ExitStatus::Signal(SIGTERM)),
        },
        c.ms(11),
    );
    assert!(acts(a).is_empty(), "no spawn after the stop request");
    assert_eq!(acts(l.on(Event::NoChildren, c.ms(11))), [Action::Exit(143)]);
}

// ---- between fork and exec ---------------------------------------------------------------------------

#[test]
fn the_exec_makes_the_app_running_and_tells_the_worker() {
    let c = Clock::new();
    let l = running(policy(), &c);
    assert!(matches!(l.phase(), Phase::Running { .. }));
    assert!(l.app_running());
}

#[test]
fn signals_before_the_exec_are_held_and_delivered_after_it() {
    let c = Clock::new();
    let (mut l, _) = Lifecycle::start(policy(), None, c.ms(0));
    assert!(acts(l.on(Event::Signal(SIGHUP), c.ms(0))).is_empty());
    assert!(acts(l.on(Event::Signal(SIGUSR1), c.ms(0))).is_empty());
    assert_eq!(
        acts(l.on(Event::Execed, c.ms(1))),
        [
            Action::AppStarted,
            Action::ForwardHeld(SignalSet::empty().with(SIGHUP).with(SIGUSR1))
        ]
    );
}

#[test]
fn a_stop_request_before_the_exec_kills_the_child_and_exits_128_plus_the_signal() {
    let c = Clock::new();
    let (mut l, _) = Lifecycle::start(policy(), None, c.ms(0));
    assert_eq!(acts(l.on(TERM, c.ms(1))), [Action::KillUnexeced]);
    assert!(
        acts(l.on(Event::Execed, c.ms(1))).is_empty(),
        "an exec that won the race changes nothing: the SIGKILL is on its way"
    );
    l.on(Event::NoChildren, c.ms(2));
    let a = l.on(Event::AppExited(ExitStatus::Signal(SIGKILL)), c.ms(2));
    assert_eq!(acts(a), [Action::Exit(143)]);
}

#[test]
fn an_exec_failure_exits_with_its_code_like_an_app_exit() {
    let c = Clock::new();
    let (mut l, _) = Lifecycle::start(policy(), None, c.ms(0));
    l.on(Event::NoChildren, c.ms(1));
    let a = l.on(Event::AppExited(ExitStatus::Code(127)), c.ms(1));
    assert_eq!(acts(a), [Action::Exit(127)]);
}

// ---- stop requests -----------------------------------------------------------------------------------

#[test]
fn a_stop_request_without_consul_or_drain_is_forwarded_at_once() {
    let c = Clock::new();
    let mut l = running(policy(), &c);
    assert_eq!(acts(l.on(TERM, c.ms(5))), [Action::Forward(SIGTERM)]);
    assert_eq!(l.state_name(), "stopping");
}

#[test]
fn a_stop_request_with_consul_deregisters_before_forwarding() {
    let c = Clock::new();
    let mut l = running(consul(0), &c);
    assert_eq!(acts(l.on(TERM, c.ms(5))), [Action::Deregister]);
    assert_eq!(
        acts(l.on(Event::Deregistered, c.ms(6))),
        [Action::Forward(SIGTERM)]
    );
}

#[test]
fn the_drain_runs_between_the_deregistration_and_the_forward() {
    let c = Clock::new();
    let mut l = running(consul(1000), &c);
    l.on(TERM, c.ms(0));
    assert!(acts(l.on(Event::Deregistered, c.ms(10))).is_empty());
    assert_eq!(l.next_deadline(), Some(c.ms(1010)));
    assert!(acts(l.on(Event::Tick, c.ms(1009))).is_empty());
    assert_eq!(
        acts(l.on(Event::Tick, c.ms(1010))),
        [Action::Forward(SIGTERM)]
    );
}

#[test]
fn a_second_stop_request_during_deregistration_is_forwarded_at_once() {
    let c = Clock::new();
    let mut l = running(consul(5000), &c);
    l.on(TERM, c.ms(0));
    assert_eq!(
        acts(l.on(Event::Signal(SIGINT), c.ms(3))),
        [Action::Forward(SIGINT)]
    );
    assert!(
        acts(l.on(Event::Deregistered, c.ms(4))).is_empty(),
        "the late answer does not forward a second time"
    );
}

#[test]
fn a_deregistration_that_never_answers_holds_the_stop_only_until_its_bound() {
    let c = Clock::new();
    let mut l = running(consul(1000), &c);
    l.on(TERM, c.ms(0));
    assert_eq!(l.next_deadline(), Some(c.ms(2500)));
    assert_eq!(
        acts(l.on(Event::Tick, c.ms(2500))),
        [Action::Forward(SIGTERM)],
        "the drain is skipped: the bound already held the stop up"
    );
}

#[test]
fn the_pre_stop_hook_runs_after_the_drain_and_before_the_signal() {
    let c = Clock::new();
    let mut p = consul(100);
    p.hooks.pre_stop = true;
    let mut l = running(p, &c);
    l.on(TERM, c.ms(0));
    l.on(Event::Deregistered, c.ms(1));
    assert_eq!(
        acts(l.on(Event::Tick, c.ms(101))),
        [Action::StartHook(Hook::PreStop)]
    );
    let a = l.on(
        Event::HookExited {
            hook: Hook::PreStop,
            end: HookEnd::Exited(ExitStatus::Code(0)),
        },
        c.ms(150),
    );
    assert_eq!(acts(a), [Action::Forward(SIGTERM)]);
}

#[test]
fn a_failing_pre_stop_hook_still_forwards_the_stop() {
    let c = Clock::new();
    let mut p = policy();
    p.hooks.pre_stop = true;
    let mut l = running(p, &c);
    assert_eq!(
        acts(l.on(TERM, c.ms(0))),
        [Action::StartHook(Hook::PreStop)]
    );
    let a = l.on(
        Event::HookExited {
            hook: Hook::PreStop,
            end: HookEnd::Exited(ExitStatus::Code(4)),
        },
        c.ms(3),
    );
    assert_eq!(acts(a), [Action::Forward(SIGTERM)]);
}

#[test]
fn a_pre_stop_hook_past_its_timeout_is_killed_and_then_the_stop_forwarded() {
    let c = Clock::new();
    let mut p = policy();
    p.hooks.pre_stop = true;
    p.hook_timeout = Duration::from_millis(200);
    let mut l = running(p, &c);
    l.on(TERM, c.ms(0));
    assert_eq!(
        acts(l.on(Event::Tick, c.ms(200))),
        [Action::KillHook(Hook::PreStop)]
    );
    let a = l.on(
        Event::HookExited {
            hook: Hook::PreStop,
            end: HookEnd::Exited(ExitStatus::Signal(SIGKILL)),
        },
        c.ms(201),
    );
    assert_eq!(acts(a), [Action::Forward(SIGTERM)]);
}

#[test]
fn by_default_an_app_that_got_a_stop_is_never_killed() {
    let c = Clock::new();
    let mut l = running(policy(), &c);
    l.on(TERM, c.ms(0));
    assert_eq!(
        l.next_deadline(),
        None,
        "the orchestrator owns the deadline"
    );
    assert!(acts(l.on(Event::Tick, c.ms(3_600_000))).is_empty());
    assert!(l.app_running());
}

#[test]
fn the_opt_in_stop_timeout_kills_the_app_at_its_deadline() {
    let c = Clock::new();
    let mut p = policy();
    p.stop.stop_timeout = Some(Duration::from_secs(3));
    let mut l = running(p, &c);
    l.on(TERM, c.ms(100));
    assert_eq!(l.next_deadline(), Some(c.ms(3100)));
    assert!(acts(l.on(Event::Tick, c.ms(3099))).is_empty());
    assert_eq!(acts(l.on(Event::Tick, c.ms(3100))), [Action::KillApp]);
    assert_eq!(l.next_deadline(), None, "one SIGKILL");
}

#[test]
fn an_app_that_drains_after_sigterm_exits_with_its_own_status() {
    let c = Clock::new();
    let mut l = running(policy(), &c);
    l.on(TERM, c.ms(0));
    l.on(Event::NoChildren, c.ms(12_000));
    let a = l.on(Event::AppExited(ExitStatus::Code(0)), c.ms(12_000));
    assert_eq!(acts(a), [Action::Exit(0)]);
}

#[test]
fn a_configured_stop_signal_is_a_stop_request_with_deregistration_first() {
    let c = Clock::new();
    let mut p = consul(0);
    p.stop.stop_signals = p.stop.stop_signals.with(SIGQUIT);
    let mut l = running(p, &c);
    assert_eq!(
        acts(l.on(Event::Signal(SIGQUIT), c.ms(0))),
        [Action::Deregister]
    );
    assert_eq!(
        acts(l.on(Event::Deregistered, c.ms(1))),
        [Action::Forward(SIGQUIT)]
    );
}

#[test]
fn a_signal_that_is_not_a_stop_signal_is_forwarded_at_once() {
    let c = Clock::new();
    let mut l = running(consul(1000), &c);
    assert_eq!(
        acts(l.on(Event::Signal(SIGQUIT), c.ms(0))),
        [Action::Forward(SIGQUIT)]
    );
    assert!(matches!(l.phase(), Phase::Running { .. }));
}

#[test]
fn a_rewritten_stop_signal_goes_through_the_stop_sequence_and_is_forwarded_as_its_rewrite() {
    let c = Clock::new();
    let mut p = consul(0);
    p.rewrite[SIGTERM as usize] = SIGQUIT as u8;
    let mut l = running(p, &c);
    assert_eq!(acts(l.on(TERM, c.ms(0))), [Action::Deregister]);
    assert_eq!(
        acts(l.on(Event::Deregistered, c.ms(1))),
        [Action::Forward(SIGQUIT)]
    );
}

#[test]
fn a_stop_signal_rewritten_to_zero_is_dropped_entirely() {
    let c = Clock::new();
    let mut p = consul(0);
    p.rewrite[SIGTERM as usize] = 0;
    let mut l = running(p, &c);
    assert!(acts(l.on(TERM, c.ms(0))).is_empty());
    assert!(matches!(l.phase(), Phase::Running { .. }));
}

#[test]
fn a_repeated_stop_request_after_the_forward_goes_straight_through() {
    let c = Clock::new();
    let mut l = running(consul(0), &c);
    l.on(TERM, c.ms(0));
    l.on(Event::Deregistered, c.ms(1));
    assert_eq!(acts(l.on(TERM, c.ms(2))), [Action::Forward(SIGTERM)]);
}

#[test]
fn other_signals_during_the_stop_sequence_are_forwarded() {
    let c = Clock::new();
    let mut l = running(consul(1000), &c);
    l.on(TERM, c.ms(0));
    assert_eq!(
        acts(l.on(Event::Signal(SIGHUP), c.ms(1))),
        [Action::Forward(SIGHUP)]
    );
    assert!(matches!(l.phase(), Phase::Stopping { .. }));
}

#[test]
fn signals_while_no_app_runs_are_dropped() {
    let c = Clock::new();
    let mut p = policy();
    p.restart = RestartPolicy::Always;
    let mut l = running(p, &c);
    l.on(Event::AppExited(ExitStatus::Code(1)), c.ms(10));
    assert!(acts(l.on(Event::Signal(SIGHUP), c.ms(11))).is_empty());
    assert!(matches!(l.phase(), Phase::BackingOff { .. }));
}

// ---- the way out -------------------------------------------------------------------------------------

#[test]
fn the_way_out_deregisters_then_runs_post_stop_then_terminates_leftovers() {
    let c = Clock::new();
    let mut p = consul(0);
    p.hooks.post_stop = true;
    let mut l = running(p, &c);
    assert_eq!(
        acts(l.on(Event::AppExited(ExitStatus::Code(2)), c.ms(10))),
        [Action::Deregister]
    );
    assert_eq!(
        acts(l.on(Event::Deregistered, c.ms(11))),
        [Action::StartHook(Hook::PostStop)]
    );
    let a = l.on(
        Event::HookExited {
            hook: Hook::PostStop,
            end: HookEnd::Exited(ExitStatus::Code(0)),
        },
        c.ms(12),
    );
    assert_eq!(acts(a), [Action::SignalLeftovers(SIGTERM)]);
    assert_eq!(acts(l.on(Event::NoChildren, c.ms(13))), [Action::Exit(2)]);
}

#[test]
fn leftovers_get_sigterm_then_sigkill_after_the_grace() {
    let c = Clock::new();
    let mut p = policy();
    p.grace = Duration::from_millis(500);
    let mut l = running(p, &c);
    assert_eq!(
        acts(l.on(Event::AppExited(ExitStatus::Code(0)), c.ms(0))),
        [Action::SignalLeftovers(SIGTERM)]
    );
    assert!(acts(l.on(Event::Tick, c.ms(499))).is_empty());
    assert_eq!(
        acts(l.on(Event::Tick, c.ms(500))),
        [Action::SignalLeftovers(SIGKILL)]
    );
    assert_eq!(acts(l.on(Event::NoChildren, c.ms(501))), [Action::Exit(0)]);
}

#[test]
fn leftovers_that_survive_sigkill_are_given_up_after_the_settle_time() {
    let c = Clock::new();
    let mut p = policy();
    p.grace = Duration::from_millis(500);
    let mut l = running(p, &c);
    l.on(Event::AppExited(ExitStatus::Code(5)), c.ms(0));
    l.on(Event::Tick, c.ms(500));
    assert_eq!(l.next_deadline(), Some(c.ms(2500)));
    assert_eq!(acts(l.on(Event::Tick, c.ms(2500))), [Action::Exit(5)]);
}

#[test]
fn with_nothing_left_the_exit_is_immediate_and_nothing_is_signalled() {
    let c = Clock::new();
    let mut l = running(policy(), &c);
    l.on(Event::NoChildren, c.ms(1));
    assert_eq!(
        acts(l.on(Event::AppExited(ExitStatus::Signal(SIGTERM)), c.ms(1))),
        [Action::Exit(143)]
    );
}

#[test]
fn dumb_inits_end_of_life_signals_the_apps_group_and_exits_at_once() {
    let c = Clock::new();
    let mut p = policy();
    p.end_of_life = EndOfLife::ExitAtOnce { signal_group: true };
    let mut l = running(p, &c);
    assert_eq!(
        acts(l.on(Event::AppExited(ExitStatus::Code(0)), c.ms(1))),
        [Action::SignalAppGroup(SIGTERM), Action::Exit(0)]
    );
}

#[test]
fn tinis_end_of_life_exits_at_once_without_signalling() {
    let c = Clock::new();
    let mut p = policy();
    p.end_of_life = EndOfLife::ExitAtOnce {
        signal_group: false,
    };
    let mut l = running(p, &c);
    assert_eq!(
        acts(l.on(Event::AppExited(ExitStatus::Code(7)), c.ms(1))),
        [Action::Exit(7)]
    );
}

#[test]
fn a_deregistration_on_the_way_out_that_never_answers_is_given_up_at_its_bound() {
    let c = Clock::new();
    let mut l = running(consul(0), &c);
    l.on(Event::NoChildren, c.ms(0));
    l.on(Event::AppExited(ExitStatus::Code(0)), c.ms(0));
    assert!(acts(l.on(Event::Tick, c.ms(2499))).is_empty());
    assert_eq!(acts(l.on(Event::Tick, c.ms(2500))), [Action::Exit(0)]);
}

#[test]
fn remapped_exit_codes_are_reported_as_zero() {
    let c = Clock::new();
    let mut p = policy();
    p.remap_exit = vec![143];
    let mut l = running(p, &c);
    l.on(Event::NoChildren, c.ms(0));
    assert_eq!(
        acts(l.on(Event::AppExited(ExitStatus::Code(143)), c.ms(0))),
        [Action::Exit(0)]
    );
}

#[test]
fn a_stop_request_on_the_way_out_changes_nothing() {
    let c = Clock::new();
    let mut p = policy();
    p.hooks.post_stop = true;
    let mut l = running(p, &c);
    l.on(Event::AppExited(ExitStatus::Code(0)), c.ms(0));
    let before = l.phase();
    assert!(acts(l.on(TERM, c.ms(1))).is_empty());
    assert_eq!(l.phase(), before);
}

// ---- restarts ----------------------------------------------------------------------------------------

fn crashing(p: Policy) -> Policy {
    Policy {
        restart: RestartPolicy::OnFailure,
        ..p
    }
}

/// Crash at `at_ms` after running for `ran_ms`; returns the backoff chosen.
fn crash(l: &mut Lifecycle, c: &Clock, start_ms: u64, ran_ms: u64) -> Duration {
    let exit_at = c.ms(start_ms + ran_ms);
    l.on(Event::AppExited(ExitStatus::Code(1)), exit_at);
    let Phase::BackingOff { until } = l.phase() else {
        panic!("not backing off: {:?}", l.phase());
    };
    until - exit_at
}

/// Let the backoff run out and the exec happen at `at`.
fn respawn(l: &mut Lifecycle, at: Instant) {
    assert_eq!(acts(l.on(Event::Tick, at)), [Action::Spawn]);
    assert_eq!(acts(l.on(Event::Execed, at)), [Action::AppStarted]);
}

#[test]
fn on_failure_restarts_a_crashed_app_after_the_base_backoff() {
    let c = Clock::new();
    let mut l = running(crashing(policy()), &c);
    assert_eq!(crash(&mut l, &c, 0, 10), Duration::from_millis(500));
    assert_eq!(l.restarts(), 1);
    assert_eq!(l.state_name(), "restarting");
}

#[test]
fn on_failure_does_not_restart_an_app_that_exited_zero() {
    let c = Clock::new();
    let mut l = running(crashing(policy()), &c);
    l.on(Event::NoChildren, c.ms(10));
    assert_eq!(
        acts(l.on(Event::AppExited(ExitStatus::Code(0)), c.ms(10))),
        [Action::Exit(0)]
    );
}

#[test]
fn backoff_doubles_with_each_quick_crash() {
    let c = Clock::new();
    let mut l = running(crashing(policy()), &c);
    let mut t = 0;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let d = crash(&mut l, &c, t, 10);
        seen.push(d.as_millis());
        t += 10 + d.as_millis() as u64;
        respawn(&mut l, c.ms(t));
    }
    assert_eq!(seen, [500, 1000, 2000, 4000]);
}

#[test]
fn backoff_resets_after_a_healthy_run() {
    let c = Clock::new();
    let mut l = running(crashing(policy()), &c);
    let d1 = crash(&mut l, &c, 0, 10);
    respawn(&mut l, c.ms(510));
    let d2 = crash(&mut l, &c, 510, 10);
    assert_eq!(d2, 2 * d1);
    respawn(&mut l, c.ms(1520));
    let d3 = crash(&mut l, &c, 1520, 10_000);
    assert_eq!(d3, d1, "a run of 10 s counts as healthy");
}

#[test]
fn backoff_is_capped() {
    let c = Clock::new();
    let mut l = running(crashing(policy()), &c);
    let mut t = 0;
    let mut last = Duration::ZERO;
    for _ in 0..12 {
        last = crash(&mut l, &c, t, 1);
        t += 1 + last.as_millis() as u64;
        respawn(&mut l, c.ms(t));
    }
    assert_eq!(last, Duration::from_secs(30));
}

#[test]
fn max_restarts_gives_up_with_the_last_status() {
    let c = Clock::new();
    let mut p = crashing(policy());
    p.max_restarts = Some(1);
    let mut l = running(p, &c);
    crash(&mut l, &c, 0, 1);
    respawn(&mut l, c.ms(501));
    l.on(Event::NoChildren, c.ms(502));
    assert_eq!(
        acts(l.on(Event::AppExited(ExitStatus::Code(13)), c.ms(502))),
        [Action::Exit(13)]
    );
}

#[test]
fn a_crash_while_registered_marks_the_check_critical_with_the_status() {
    let c = Clock::new();
    let mut l = running(crashing(consul(0)), &c);
    assert_eq!(
        acts(l.on(Event::AppExited(ExitStatus::Code(3)), c.ms(1))),
        [Action::AppDown(DownReason::Exited(ExitStatus::Code(3)))]
    );
}

#[test]
fn a_stop_request_during_backoff_exits_128_plus_the_signal_without_restarting() {
    let c = Clock::new();
    let mut l = running(crashing(policy()), &c);
    crash(&mut l, &c, 0, 1);
    l.on(Event::NoChildren, c.ms(2));
    assert_eq!(acts(l.on(TERM, c.ms(3))), [Action::Exit(143)]);
}

#[test]
fn a_stop_request_during_backoff_deregisters_first_when_registered() {
    let c = Clock::new();
    let mut l = running(crashing(consul(0)), &c);
    crash(&mut l, &c, 0, 1);
    l.on(Event::NoChildren, c.ms(2));
    assert_eq!(
        acts(l.on(Event::Signal(SIGINT), c.ms(3))),
        [Action::Deregister]
    );
    assert_eq!(
        acts(l.on(Event::Deregistered, c.ms(4))),
        [Action::Exit(130)]
    );
}

#[test]
fn a_restart_marks_the_check_critical_drains_and_then_stops_the_app() {
    let c = Clock::new();
    let mut l = running(consul(1000), &c);
    assert_eq!(
        acts(l.on(Event::Restart, c.ms(0))),
        [Action::AppDown(DownReason::RestartRequested)]
    );
    assert_eq!(l.state_name(), "restarting");
    assert!(acts(l.on(Event::Tick, c.ms(999))).is_empty());
    assert_eq!(
        acts(l.on(Event::Tick, c.ms(1000))),
        [Action::Forward(SIGTERM)]
    );
}

#[test]
fn a_restart_starts_the_app_again_at_once_when_it_exited_and_counts_it() {
    let c = Clock::new();
    let mut l = running(policy(), &c);
    l.on(Event::Restart, c.ms(0));
    assert_eq!(
        acts(l.on(Event::AppExited(ExitStatus::Signal(SIGTERM)), c.ms(5))),
        [Action::Spawn]
    );
    assert_eq!(l.restarts(), 1);
    assert_eq!(l.last_exit(), Some(ExitStatus::Signal(SIGTERM)));
}

#[test]
fn a_stop_request_during_a_restart_deregisters_and_exits() {
    let c = Clock::new();
    let mut l = running(consul(1000), &c);
    l.on(Event::Restart, c.ms(0));
    assert_eq!(acts(l.on(TERM, c.ms(10))), [Action::Deregister]);
    l.on(Event::Deregistered, c.ms(11));
    l.on(Event::Tick, c.ms(1011));
    assert_eq!(
        acts(l.on(Event::AppExited(ExitStatus::Signal(SIGTERM)), c.ms(1020))),
        [Action::Deregister],
        "no respawn: the stop won"
    );
}

#[test]
fn a_restart_while_backing_off_starts_the_app_now() {
    let c = Clock::new();
    let mut l = running(crashing(policy()), &c);
    crash(&mut l, &c, 0, 1);
    assert_eq!(
        l.restart_answer(),
        Ok("the app was waiting to restart; starting it now")
    );
    assert_eq!(acts(l.on(Event::Restart, c.ms(2))), [Action::Spawn]);
    assert_eq!(l.restarts(), 2);
}

#[test]
fn a_restart_is_refused_before_the_app_runs_and_while_it_stops() {
    let c = Clock::new();
    let (mut l, _) = Lifecycle::start(policy(), None, c.ms(0));
    assert!(l.restart_answer().is_err(), "between fork and exec");
    assert!(acts(l.on(Event::Restart, c.ms(0))).is_empty());
    l.on(Event::Execed, c.ms(0));
    assert!(l.restart_answer().is_ok());
    l.on(TERM, c.ms(1));
    assert!(l.restart_answer().is_err(), "stopping");
    let before = l.phase();
    assert!(acts(l.on(Event::Restart, c.ms(2))).is_empty());
    assert_eq!(l.phase(), before);
}

// ---- waiting -----------------------------------------------------------------------------------------

fn waiting(c: &Clock) -> Lifecycle {
    let (l, a) = Lifecycle::start(
        policy(),
        Some((Awaited::RuntimeVolume, Duration::from_secs(30))),
        c.ms(0),
    );
    assert!(acts(a).is_empty());
    l
}

#[test]
fn sigterm_while_waiting_for_the_runtime_exits_143_at_once() {
    let c = Clock::new();
    let mut l = waiting(&c);
    assert_eq!(acts(l.on(TERM, c.ms(100))), [Action::Exit(143)]);
}

#[test]
fn the_runtime_arriving_ends_the_wait_and_starts_the_app() {
    let c = Clock::new();
    let mut l = waiting(&c);
    assert_eq!(l.state_name(), "waiting");
    assert_eq!(acts(l.on(Event::AwaitDone, c.ms(700))), [Action::Spawn]);
}

#[test]
fn a_wait_that_runs_out_reports_what_is_missing_and_exits_127() {
    let c = Clock::new();
    let mut l = waiting(&c);
    assert_eq!(l.next_deadline(), Some(c.ms(30_000)));
    assert_eq!(
        acts(l.on(Event::Tick, c.ms(30_000))),
        [
            Action::WaitFailed(Awaited::RuntimeVolume),
            Action::Exit(127)
        ]
    );
}

#[test]
fn the_upstreams_are_awaited_after_the_runtime_with_their_own_limit_and_exit_124() {
    let c = Clock::new();
    let mut l = waiting(&c);
    l.then_wait(Awaited::Upstreams, Duration::from_secs(5));
    assert_eq!(
        acts(l.on(Event::AwaitDone, c.ms(700))),
        [],
        "not started yet"
    );
    assert!(matches!(
        l.phase(),
        Phase::Waiting {
            what: Awaited::Upstreams,
            ..
        }
    ));
    assert_eq!(l.next_deadline(), Some(c.ms(5_700)));
    assert_eq!(
        acts(l.on(Event::Tick, c.ms(5_700))),
        [Action::WaitFailed(Awaited::Upstreams), Action::Exit(124)]
    );
}

#[test]
fn the_upstreams_being_up_starts_the_app_and_a_stop_before_exits_128_plus_signal() {
    let c = Clock::new();
    let (mut l, a) = Lifecycle::start(
        policy(),
        Some((Awaited::Upstreams, Duration::from_secs(60))),
        c.ms(0),
    );
    assert_eq!(acts(a), []);
    assert_eq!(acts(l.on(Event::AwaitDone, c.ms(10))), [Action::Spawn]);
    let (mut l, _) = Lifecycle::start(
        policy(),
        Some((Awaited::Upstreams, Duration::from_secs(60))),
        c.ms(0),
    );
    assert_eq!(
        acts(l.on(Event::Signal(SIGINT), c.ms(10))),
        [Action::Exit(130)]
    );
}

// ---- Consul required ---------------------------------------------------------------------------------

#[test]
fn a_required_registration_that_fails_stops_the_app_and_exits_125() {
    let c = Clock::new();
    let mut p = consul(0);
    p.consul_required = true;
    let mut l = running(p, &c);
    assert_eq!(
        acts(l.on(Event::ConsulFatal, c.ms(5))),
        [Action::Forward(SIGTERM)]
    );
    assert_eq!(
        acts(l.on(Event::AppExited(ExitStatus::Signal(SIGTERM)), c.ms(6))),
        [Action::Deregister]
    );
    l.on(Event::NoChildren, c.ms(6));
    assert_eq!(
        acts(l.on(Event::Deregistered, c.ms(7))),
        [Action::Exit(125)]
    );
}

#[test]
fn a_registration_failure_without_required_changes_nothing() {
    let c = Clock::new();
    let mut l = running(consul(0), &c);
    let before = l.phase();
    assert!(acts(l.on(Event::ConsulFatal, c.ms(5))).is_empty());
    assert_eq!(l.phase(), before);
}

// ---- illegal transitions and phase queries -----------------------------------------------------------

#[test]
fn events_a_phase_has_no_rule_for_leave_the_phase_unchanged() {
    let c = Clock::new();
    let out_of_place = [
        Event::AwaitDone,
        Event::Execed,
        Event::Deregistered,
        Event::HookExited {
            hook: Hook::PreStart,
            end: HookEnd::Exited(ExitStatus::Code(0)),
        },
        Event::HookExited {
            hook: Hook::PostStop,
            end: HookEnd::Exited(ExitStatus::Code(0)),
        },
        Event::Tick,
    ];
    for ev in out_of_place {
        let mut l = running(consul(0), &c);
        let before = l.phase();
        assert!(acts(l.on(ev, c.ms(1))).is_empty(), "{ev:?}");
        assert_eq!(l.phase(), before, "{ev:?} moved a running app");
    }
    let mut l = waiting(&c);
    for ev in [
        Event::Execed,
        Event::AppExited(ExitStatus::Code(0)),
        Event::Deregistered,
        Event::Restart,
        Event::Signal(SIGHUP),
    ] {
        let before = l.phase();
        assert!(acts(l.on(ev, c.ms(1))).is_empty(), "{ev:?}");
        assert_eq!(l.phase(), before, "{ev:?} moved a waiting lifecycle");
    }
}

#[test]
fn nothing_moves_a_finished_lifecycle() {
    let c = Clock::new();
    let mut l = waiting(&c);
    l.on(TERM, c.ms(1));
    let done = l.phase();
    for ev in [
        TERM,
        Event::AwaitDone,
        Event::Restart,
        Event::AppExited(ExitStatus::Code(1)),
        Event::NoChildren,
        Event::Tick,
    ] {
        assert!(acts(l.on(ev, c.ms(100_000))).is_empty(), "{ev:?}");
        assert_eq!(l.phase(), done);
    }
    assert_eq!(exit_code(&l), Some(143));
}

#[test]
fn a_running_app_has_no_deadline() {
    let c = Clock::new();
    let l = running(consul(1000), &c);
    assert_eq!(l.next_deadline(), None);
}

#[test]
fn the_status_word_names_each_phase() {
    let c = Clock::new();
    assert_eq!(waiting(&c).state_name(), "waiting");
    let (l, _) = Lifecycle::start(policy(), None, c.ms(0));
    assert_eq!(l.state_name(), "starting");
    let mut l = running(policy(), &c);
    assert_eq!(l.state_name(), "running");
    l.on(TERM, c.ms(0));
    assert_eq!(l.state_name(), "stopping");
    l.on(Event::AppExited(ExitStatus::Code(0)), c.ms(1));
    assert_eq!(l.state_name(), "exited");
}

#[test]
fn rewrites_from_the_configuration_fill_the_table_and_leave_the_rest_alone() {
    let sup = crate::config::SupervisorConfig {
        command: vec!["app".into()],
        signal_group: false,
        isolation: crate::config::Isolation::Session,
        pdeathsig: None,
        remap_exit: Vec::new(),
        grace: Duration::from_secs(8),
        stop: StopRules::default(),
        warn_on_reap: false,
        restart: RestartPolicy::Never,
        max_restarts: None,
        hooks: crate::config::Hooks::default(),
        rewrites: vec![
            crate::config::Rewrite {
                from: SIGTERM,
                to: SIGQUIT,
            },
            crate::config::Rewrite {
                from: SIGHUP,
                to: 0,
            },
        ],
    };
    let p = Policy::new(
        &sup,
        &DialectPolicy::MICROINIT,
        None,
        Duration::from_secs(1),
    );
    assert_eq!(p.rewritten(SIGTERM), SIGQUIT);
    assert_eq!(p.rewritten(SIGHUP), 0);
    assert_eq!(p.rewritten(SIGUSR1), SIGUSR1);
    assert_eq!(p.rewritten(64), 64);
}

// ---- forwarding at once ----------------------------------------------------------------------------

/// A lifecycle in every phase, under the policies that change what a signal does first.
fn one_of_each_phase(c: &Clock) -> Vec<(&'static str, Lifecycle)> {
    let with = |f: fn(&mut Policy)| {
        let mut p = policy();
        f(&mut p);
        p
    };
    let after = |mut l: Lifecycle, events: &[Event]| {
        for ev in events {
            l.on(*ev, c.ms(10));
        }
        l
    };
    let wait = Some((Awaited::RuntimeVolume, Duration::from_secs(30)));
    vec![
        ("waiting", Lifecycle::start(policy(), wait, c.ms(0)).0),
        (
            "pre-start",
            Lifecycle::start(with(|p| p.hooks.pre_start = true), None, c.ms(0)).0,
        ),
        ("spawning", Lifecycle::start(policy(), None, c.ms(0)).0),
        ("running", running(policy(), c)),
        ("running, registered", running(consul(0), c)),
        (
            "running, drain",
            running(with(|p| p.drain = Duration::from_secs(1)), c),
        ),
        (
            "running, pre-stop hook",
            running(with(|p| p.hooks.pre_stop = true), c),
        ),
        (
            "running, TERM rewritten to QUIT",
            running(with(|p| p.rewrite[SIGTERM as usize] = SIGQUIT as u8), c),
        ),
        (
            "running, HUP dropped",
            running(with(|p| p.rewrite[SIGHUP as usize] = 0), c),
        ),
        (
            "running, QUIT a stop signal",
            running(
                with(|p| p.stop.stop_signals = p.stop.stop_signals.with(SIGQUIT)),
                c,
            ),
        ),
        ("deregistering", after(running(consul(0), c), &[TERM])),
        ("restarting", after(running(policy(), c), &[Event::Restart])),
        (
            "restarting, registered",
            after(running(consul(0), c), &[Event::Restart]),
        ),
        ("signalled", after(running(policy(), c), &[TERM])),
        (
            "backing off",
            after(
                running(with(|p| p.restart = RestartPolicy::Always), c),
                &[Event::AppExited(ExitStatus::Code(1))],
            ),
        ),
        (
            "exiting",
            after(
                running(policy(), c),
                &[Event::AppExited(ExitStatus::Code(0))],
            ),
        ),
    ]
}

#[test]
fn forwarding_at_once_is_promised_exactly_when_the_forward_comes_first_in_every_phase() {
    let c = Clock::new();
    let mut promised = 0;
    for (name, l) in one_of_each_phase(&c) {
        for sig in 1..=64 {
            let first = l
                .clone()
                .on(Event::Signal(sig), c.ms(20))
                .as_slice()
                .first()
                .copied();
            assert_eq!(
                l.forwards_at_once(sig),
                first == Some(Action::Forward(sig)),
                "{name}, signal {sig}: first action {first:?}"
            );
            promised += usize::from(l.forwards_at_once(sig));
        }
    }
    assert!(promised > 0);
}

#[test]
fn a_plain_stop_request_to_a_running_app_is_forwarded_at_once_and_a_registered_one_is_not() {
    let c = Clock::new();
    assert!(running(policy(), &c).forwards_at_once(SIGTERM));
    assert!(running(policy(), &c).forwards_at_once(SIGUSR1));
    assert!(!running(consul(0), &c).forwards_at_once(SIGTERM));
    assert!(running(consul(0), &c).forwards_at_once(SIGUSR1));
}

#[test]
fn what_follows_a_forward_done_at_once_is_the_rest_of_the_actions() {
    let c = Clock::new();
    let mut l = running(policy(), &c);
    let a = l.on(Event::Signal(SIGUSR1), c.ms(5));
    assert_eq!(a.after_forward(SIGUSR1).count(), 0);
    assert!(matches!(l.phase(), Phase::Running { .. }));
}
