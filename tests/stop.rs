//! Stop requests in every phase, with microinit as a real PID 1 (`unshare --pid --fork --mount-proc`) and,
//! where deregistration matters, a real Consul dev agent: the orchestrator owns the stop deadline, a stop
//! request is honoured while waiting for the runtime volume and between fork and exec, `--stop-signal`
//! makes the image's STOPSIGNAL a full stop request, and `microinit restart` drains first. Needs root.

mod common;
#[path = "common/consul.rs"]
mod dev_agent;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use dev_agent::{wait_until, DevAgent};

const T: Duration = Duration::from_secs(20);

/// `microinit status --json` against the control socket of a Pid1 started with MICROINIT_SOCKET=`sock`.
fn status(sock: &Path) -> Option<serde_json::Value> {
    let out = Command::new(bin())
        .args(["status", "--json"])
        .env("MICROINIT_SOCKET", sock)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// `status` says the init waits for the runtime volume ("waiting for the runtime volume since 0.3 s").
fn is_waiting(s: &serde_json::Value) -> bool {
    s["app"]["state"]
        .as_str()
        .is_some_and(|t| t.starts_with("waiting for the runtime volume since "))
}

/// Wall-clock nanoseconds, comparable with `date +%s%N` in an app.
fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn an_app_that_drains_for_12_s_after_sigterm_exits_0_under_the_default_options() {
    let d = tempdir("drain12");
    let ready = d.join("ready");
    // The trap runs once the current `sleep 0.05` returns; it then drains for 12 s and exits 0.
    let app = format!(
        "trap 'sleep 12; exit 0' TERM; touch {r}; while :; do sleep 0.05; done",
        r = ready.display()
    );
    let p = Pid1::start(&["--", "sh", "-c", &app], &[]);
    wait_for(T, || ready.exists().then_some(())).expect("the app's trap is set");
    let start = Instant::now();
    p.signal(libc::SIGTERM);
    let (st, err) = p.wait(Duration::from_secs(60));
    let took = start.elapsed();
    assert_eq!(
        exit_code(st),
        0,
        "the app finished its drain instead of being killed: {err}"
    );
    assert!(
        took >= Duration::from_secs(12),
        "exited after {took:?}, before the app's drain ended"
    );
    assert!(
        !err.contains("SIGKILL"),
        "nothing was killed by default: {err}"
    );
}

#[test]
fn sigterm_during_a_runtime_wait_exits_143_at_once_and_status_answers_meanwhile() {
    let d = tempdir("rtwait");
    let sock = d.join("ctl.sock");
    let missing = d.join("volume/lib/libfoo.so");
    let p = Pid1::start(
        &[
            "--wait-runtime",
            "30s",
            "--require",
            missing.to_str().unwrap(),
            "--",
            "sleep",
            "1000",
        ],
        &[("MICROINIT_SOCKET", sock.to_str().unwrap())],
    );
    let s = wait_for(T, || status(&sock).filter(is_waiting))
        .expect("status answers during the runtime wait");
    assert!(s["app"]["pid"].is_null(), "the app is not started: {s}");
    let start = Instant::now();
    p.signal(libc::SIGTERM);
    let (st, err) = p.wait(T);
    let took = start.elapsed();
    assert_eq!(exit_code(st), 143, "{err}");
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} to honour SIGTERM during the wait"
    );
}

#[test]
fn a_runtime_volume_that_arrives_during_the_wait_starts_the_app() {
    let d = tempdir("rtarrive");
    let sock = d.join("ctl.sock");
    let needed = d.join("volume/lib/libfoo.so");
    let p = Pid1::start(
        &[
            "--wait-runtime",
            "30s",
            "--require",
            needed.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "exit 6",
        ],
        &[("MICROINIT_SOCKET", sock.to_str().unwrap())],
    );
    wait_for(T, || status(&sock).filter(is_waiting)).expect("waiting for the volume");
    std::fs::create_dir_all(needed.parent().unwrap()).unwrap();
    std::fs::write(&needed, "").unwrap();
    let (st, err) = p.wait(T);
    assert_eq!(
        exit_code(st),
        6,
        "the app ran once the volume was there: {err}"
    );
}

#[test]
fn a_runtime_volume_that_never_arrives_fails_with_127_and_the_report() {
    let d = tempdir("rtnever");
    let missing = d.join("volume/lib/libfoo.so");
    let (st, err) = Pid1::start(
        &[
            "--wait-runtime",
            "300ms",
            "--require",
            missing.to_str().unwrap(),
            "--",
            "true",
        ],
        &[],
    )
    .wait(T);
    assert_eq!(exit_code(st), 127, "{err}");
    assert!(
        err.contains("libfoo.so"),
        "the report names what is missing: {err}"
    );
}

/// A root process in the container running `kill -STOP -1` can catch PID 1's child between fork and exec;
/// PID 1 must not wait for that child's exec in a blocking read. The stopper helper starts from the
/// pre-start hook, so that it is spinning when the app is forked; an attempt where it stopped the app
/// after its exec proves nothing and is retried.
#[test]
fn a_child_sigstopped_before_exec_does_not_keep_pid_1_from_exiting_143_on_sigterm() {
    let stopper = helper("stopper");
    let exe = std::fs::canonicalize(bin()).unwrap();
    for attempt in 1..=150 {
        let marker = tempdir("stopper").join("verdict");
        let hook = format!(
            "{s} {m} {e} &",
            s = stopper.display(),
            m = marker.display(),
            e = exe.display()
        );
        let p = Pid1::start(&["--pre-start", &hook, "--", "sleep", "1000"], &[]);
        let verdict = wait_for(T, || std::fs::read_to_string(&marker).ok())
            .expect("the stopper stopped something");
        if verdict.trim() != "before-exec" {
            continue; // Pid1's Drop kills the namespace
        }
        let start = Instant::now();
        p.signal(libc::SIGTERM);
        let (st, err) = p.wait(T);
        assert_eq!(exit_code(st), 143, "attempt {attempt}: {err}");
        assert!(start.elapsed() < Duration::from_secs(5), "{err}");
        return;
    }
    panic!("the stopper never caught the child before its exec in 150 attempts");
}

// ---- against a real Consul agent -------------------------------------------------------------------

/// An app that, on SIG, asks the agent for its own service and writes the HTTP status line (and the
/// wall-clock time) to DIR/got, then exits 0.
fn consul_app(sig: &str, dir: &Path, port: &str, id: &str) -> String {
    format!(
        r#"trap 'now=$(date +%s%N)
      exec 3<>/dev/tcp/127.0.0.1/{port}
      printf "GET /v1/agent/service/{id} HTTP/1.0\r\n\r\n" >&3
      line=$(head -n1 <&3 | tr -d "\r")
      echo "$now $line" > {d}/got.tmp && mv {d}/got.tmp {d}/got
      exit 0' {sig}
touch {d}/ready
while :; do sleep 0.05 & wait $!; done"#,
        d = dir.display()
    )
}

fn consul_args<'a>(agent_addr: &'a str, name: &'a str, id: &'a str) -> Vec<&'a str> {
    vec![
        "--consul-addr",
        agent_addr,
        "--service-name",
        name,
        "--service-id",
        id,
        "--check-ttl",
        "4s",
    ]
}

#[test]
fn a_stop_signal_app_is_deregistered_before_it_receives_quit() {
    let agent = DevAgent::start();
    let d = tempdir("quit");
    let addr = agent.addr();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let app = consul_app("QUIT", &d, &port, "quit-1");
    let mut args = consul_args(&addr, "quit", "quit-1");
    args.extend(["--stop-signal", "QUIT", "--", "bash", "-c", &app]);
    let p = Pid1::start(&args, &[]);
    wait_until("quit passing", T, || agent.passing_instances("quit") == 1);
    wait_for(T, || d.join("ready").exists().then_some(())).expect("the app's trap is set");
    p.signal(libc::SIGQUIT);
    let (st, err) = p.wait(T);
    assert_eq!(exit_code(st), 0, "the app's trap exits 0: {err}");
    let got = std::fs::read_to_string(d.join("got")).expect("the app got QUIT");
    assert!(
        got.contains(" 404 "),
        "Consul still knew the service when the app got QUIT: {got:?}"
    );
}

#[test]
fn restart_with_a_drain_marks_the_check_critical_a_drain_before_the_app_gets_sigterm() {
    let agent = DevAgent::start();
    let d = tempdir("restart-drain");
    let sock = d.join("ctl.sock");
    let addr = agent.addr();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let app = consul_app("TERM", &d, &port, "rd-1");
    let mut args = consul_args(&addr, "rd", "rd-1");
    args.extend(["--drain", "1s", "--", "bash", "-c", &app]);
    let p = Pid1::start(&args, &[("MICROINIT_SOCKET", sock.to_str().unwrap())]);
    wait_until("rd passing", T, || agent.passing_instances("rd") == 1);
    wait_for(T, || d.join("ready").exists().then_some(())).expect("the app's trap is set");
    let out = Command::new(bin())
        .arg("restart")
        .env("MICROINIT_SOCKET", &sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The first moment this test sees the check critical (at or after the moment it became critical).
    let critical_seen = wait_for(T, || {
        (agent.check_status("microinit:rd-1", None).as_deref() == Some("critical")).then(now_ns)
    })
    .expect("the check goes critical");
    let got =
        wait_for(T, || std::fs::read_to_string(d.join("got")).ok()).expect("the app got SIGTERM");
    let term_at: u128 = got.split_whitespace().next().unwrap().parse().unwrap();
    let lead = Duration::from_nanos(term_at.saturating_sub(critical_seen) as u64);
    // The drain starts when the worker is told; Consul sets the check a few ms later.
    assert!(
        lead >= Duration::from_millis(900),
        "SIGTERM only {lead:?} after the check went critical"
    );
    assert!(
        got.contains(" 200 "),
        "a restart keeps the service registered: {got}"
    );
    drop(p);
}
