//! PID 1 always answers: a stop request and `status` under load, end to end. microinit is the static binary
//! as PID 1 of a new PID namespace (`unshare --pid --fork --mount-proc`); the app, the signal storm and the
//! control-socket churn are tests/helpers/storm.c; `status` requests use the real client over the real
//! socket. Latencies are medians over several samples and bounds are relative to the quiet median measured
//! in the same run, so a loaded machine moves both. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::*;
use microinit::control::client::{call, TIMEOUT};
use microinit::control::protocol::{Reply, Request};

const T: Duration = Duration::from_secs(30);
/// Samples per condition: the median of 9 shrugs off four preemptions by the rest of a loaded machine.
const SAMPLES: usize = 9;
/// The tests of this file load the machine on purpose: one at a time, so that none measures another.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// glibc's SIGRTMIN (microinit forwards 32-64 alike; the storm helper is a glibc program).
const RTMIN: i32 = 34;

/// The app's records: (signal, CLOCK_MONOTONIC ns when it got it).
fn records(file: &Path) -> Vec<(i32, i64)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (s, t) = l.split_once(' ')?;
            Some((s.parse().ok()?, t.parse().ok()?))
        })
        .collect()
}

fn monotonic_ns() -> i64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

/// A helper process killed (and reaped) on drop.
struct Helper(Child);

impl Helper {
    fn start(args: &[&str]) -> Helper {
        Helper(
            Command::new(helper("storm"))
                .args(args)
                .spawn()
                .expect("storm helper"),
        )
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// microinit as PID 1 supervising `storm app FILE`, its control socket at `socket`; returns once the app is
/// ready.
fn start(dir: &Path, socket: &Path, app_args: &[&str], env: &[(&str, &str)]) -> (Pid1, PathBuf) {
    let file = dir.join(format!("app-{}", monotonic_ns()));
    let storm = helper("storm");
    let mut args = vec!["--", storm.to_str().unwrap(), "app", file.to_str().unwrap()];
    args.extend_from_slice(app_args);
    let mut all_env = vec![("MICROINIT_SOCKET", socket.to_str().unwrap())];
    all_env.extend_from_slice(env);
    let p = Pid1::start(&args, &all_env);
    wait_ready(&file);
    (p, file)
}

/// SIGTERM to PID 1 → the app has it; PID 1 then exits 0 with the app.
fn sigterm_latency(p: Pid1, file: &Path) -> Duration {
    let sent = monotonic_ns();
    p.signal(libc::SIGTERM);
    let got = wait_for(T, || {
        records(file)
            .iter()
            .find(|r| r.0 == libc::SIGTERM)
            .map(|r| r.1)
    })
    .expect("the app got SIGTERM");
    let (st, err) = p.wait(T);
    assert_eq!(exit_code(st), 0, "{err}");
    Duration::from_nanos((got - sent).max(0) as u64)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The SIGTERM latency of a fresh PID 1 with `load` started against it (given its host pid) once its app is
/// ready.
fn latency_sample(dir: &Path, socket: &Path, load: &dyn Fn(i32) -> Vec<Helper>) -> Duration {
    let (p, file) = start(dir, socket, &[], &[]);
    let _load = load(p.host_pid);
    sigterm_latency(p, &file)
}

/// The connections a churn helper made so far.
fn churned(count: &Path) -> u64 {
    std::fs::read_to_string(count)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn sigterm_reaches_the_app_within_10x_the_quiet_latency_under_socket_churn_and_a_signal_storm() {
    let _serial = one_at_a_time();
    let dir = tempdir("latency");
    let socket = dir.join("control.sock");
    let quiet = |_: i32| Vec::new();
    // Two processes connecting and hanging up in a loop (before the fix: SIGTERM 5.8-16.8 s late).
    let churn = |_: i32| {
        let counts = [dir.join("churn-a"), dir.join("churn-b")];
        let churners = counts
            .iter()
            .map(|c| Helper::start(&["churn", socket.to_str().unwrap(), c.to_str().unwrap()]))
            .collect();
        // Under way against this PID 1: 2000 connections each.
        wait_for(T, || {
            counts.iter().all(|c| churned(c) >= 2000).then_some(())
        })
        .expect("both churn processes at work");
        churners
    };
    // 10 000 real-time signals a second to PID 1, each forwarded to the app.
    let storm = |pid: i32| {
        let h = Helper::start(&[
            "signals",
            &pid.to_string(),
            "10000",
            &(RTMIN + 5).to_string(),
        ]);
        std::thread::sleep(Duration::from_millis(100)); // under way: about 1000 signals so far
        vec![h]
    };
    // Interleaved rounds: a load spike from the rest of the machine hits every condition alike.
    let mut samples: [Vec<Duration>; 3] = Default::default();
    for _ in 0..SAMPLES {
        for (i, load) in [&quiet as &dyn Fn(i32) -> Vec<Helper>, &churn, &storm]
            .into_iter()
            .enumerate()
        {
            samples[i].push(latency_sample(&dir, &socket, load));
        }
    }
    eprintln!("SIGTERM → app samples (quiet, churn, storm): {samples:?}");
    let [quiet, churn, storm] = samples.map(median);
    eprintln!(
        "SIGTERM → app, median of {SAMPLES}: quiet {quiet:?}, connect/close churn {churn:?}, 10 000 signals/s {storm:?}"
    );
    // 10× the quiet median, but never below 5 ms: on 2 cores the storm's sender and the app's own handling of
    // 10 000 signals/s hold the CPUs, so even a quiet machine measured 0.9 ms against a 87 µs quiet median.
    // The failure this guards against was seconds (5.8-16.8 s under churn, 8.4 s behind queued signals).
    let bound = (quiet * 10).max(Duration::from_millis(5));
    for (what, d) in [("socket churn", churn), ("a signal storm", storm)] {
        assert!(
            d <= bound,
            "SIGTERM took {d:?} to reach the app under {what}, over {bound:?} (10× the quiet {quiet:?}, at least 5 ms)"
        );
    }
}

#[test]
fn twenty_thousand_status_requests_during_a_signal_storm_are_all_answered() {
    let _serial = one_at_a_time();
    let dir = tempdir("status-storm");
    let socket = dir.join("control.sock");
    let (p, file) = start(&dir, &socket, &[], &[]);
    let _storm = Helper::start(&[
        "signals",
        &p.host_pid.to_string(),
        "10000",
        &(RTMIN + 5).to_string(),
    ]);
    wait_for(T, || (records(&file).len() >= 1000).then_some(()))
        .expect("the storm reaches the app");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let socket = socket.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for _ in 0..5000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match call(&socket, &Request::Status, TIMEOUT) {
                        Ok(Reply::Status(s)) if s.app.state == "running" => {}
                        other => failures.push(format!("{other:?}")),
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    drop(_storm);
    let forwarded = records(&file).len();
    let (st, err) = {
        p.signal(libc::SIGTERM);
        p.wait(T)
    };
    assert_eq!(exit_code(st), 0, "{err}");
    eprintln!("20 000 status requests answered while the app got {forwarded} storm signals");
    assert!(
        failures.is_empty(),
        "{} of 20 000 status requests failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

#[test]
fn sigterm_behind_60000_queued_real_time_signals_reaches_the_app_promptly_and_none_is_lost() {
    let _serial = one_at_a_time();
    const EACH: usize = 15_000;
    let sigs = [RTMIN + 1, RTMIN + 2, RTMIN + 3, RTMIN + 4];
    let dir = tempdir("rt-queue");
    // --stay: the app outlives SIGTERM (it exits on SIGUSR2), so it can count what follows.
    let (p, file) = start(
        &dir,
        &dir.join("control.sock"),
        &["--stay"],
        &[("MICROINIT_GRACE", "120s")],
    );
    // Stopped from the parent namespace (the one place a PID 1 can be stopped from), PID 1 reads nothing
    // while the queue fills.
    p.signal(libc::SIGSTOP);
    let stat = format!("/proc/{}/stat", p.host_pid);
    wait_for(T, || {
        let s = std::fs::read_to_string(&stat).ok()?;
        (s[s.rfind(')')? + 2..].starts_with('T')).then_some(())
    })
    .expect("PID 1 stopped");
    // In blocks, lowest first: the kernel dequeues the lowest-numbered pending signal by walking one list
    // of all of them, so interleaved numbers make each read(2) quadratic (a kernel cost any init pays).
    for s in sigs {
        for _ in 0..EACH {
            p.signal(s);
        }
    }
    let queued: usize = std::fs::read_to_string(format!("/proc/{}/status", p.host_pid))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("SigQ:"))
        .and_then(|q| q.trim().split('/').next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        queued >= EACH * sigs.len(),
        "only {queued} signals queued (RLIMIT_SIGPENDING?): the scenario needs 60 000"
    );
    p.signal(libc::SIGCONT);
    // PID 1 is busy forwarding the queue: now the stop request.
    let rt_seen = |r: &[(i32, i64)]| r.iter().filter(|x| sigs.contains(&x.0)).count();
    wait_for(T, || (rt_seen(&records(&file)) >= 100).then_some(())).expect("forwarding under way");
    let sent = monotonic_ns();
    p.signal(libc::SIGTERM);
    let got = wait_for(T, || {
        records(&file)
            .iter()
            .find(|r| r.0 == libc::SIGTERM)
            .map(|r| r.1)
    })
    .expect("the app got SIGTERM");
    let latency = Duration::from_nanos((got - sent).max(0) as u64);
    let before_term = rt_seen(
        &records(&file)
            .into_iter()
            .take_while(|r| r.0 != libc::SIGTERM)
            .collect::<Vec<_>>(),
    );
    // Every real-time signal still arrives, once.
    let all = wait_for(T, || {
        std::thread::sleep(Duration::from_millis(50)); // parsing 60 000 lines is not free
        let r = records(&file);
        (rt_seen(&r) >= EACH * sigs.len()).then_some(r)
    })
    .unwrap_or_else(|| panic!("only {} of 60 000 arrived", rt_seen(&records(&file))));
    p.signal(libc::SIGUSR2);
    let (st, err) = p.wait(T);
    eprintln!(
        "SIGTERM behind 60 000 queued RT signals reached the app after {latency:?} ({before_term} RT signals before it)"
    );
    assert_eq!(exit_code(st), 0, "{err}");
    for s in sigs {
        assert_eq!(
            all.iter().filter(|r| r.0 == s).count(),
            EACH,
            "signal {s} arrived a wrong number of times"
        );
    }
    // Before the fix the whole queue went first (8.4 s); now one batch does. 1 s is a hang detector.
    assert!(
        latency < Duration::from_secs(1),
        "SIGTERM waited {latency:?} behind the queue"
    );
    assert!(
        before_term < EACH * sigs.len() / 2,
        "SIGTERM came after {before_term} of the queued signals"
    );
}
