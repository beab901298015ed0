//! The control socket and the lifecycle it drives, end to end: the static binary as PID 1 of a new PID
//! namespace (`unshare --pid --fork --mount-proc`), its socket in a private directory (MICROINIT_SOCKET), and
//! the same binary as the client inside the namespace (`nsenter -t PID -p -m`, the `docker exec` analogue).
//! Against a real Consul dev agent: `restart`, `maintenance`, the restart policy with a crashing app, the
//! pre-stop hook and `status`; without one: the socket's own rules, hostile clients and `microinit exec`.
//! Needs root.

mod common;
#[path = "common/consul.rs"]
mod dev_agent;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dev_agent::{wait_until, DevAgent};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// microinit as PID 1 with its control socket in `dir`, stderr collected as it comes (a full pipe would
/// block PID 1's logging).
struct Container {
    p: Pid1,
    dir: PathBuf,
    socket: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Container {
    /// `microinit ARGS` as PID 1; `dir` (from `tempdir`) holds the socket and the test's marker files.
    fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Container {
        // Other users must reach the socket file itself (the non-root test); its own mode stays 0600.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
        let socket = dir.join("control.sock");
        let sock = socket.to_string_lossy().to_string();
        let mut all_env = vec![("MICROINIT_SOCKET", sock.as_str())];
        all_env.extend_from_slice(env);
        let mut p = Pid1::start(args, &all_env);
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = p.child.stderr.take().expect("stderr pipe");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let c = Container {
            p,
            dir: dir.to_path_buf(),
            socket,
            stderr,
        };
        wait_for(T, || c.socket.exists().then_some(()))
            .unwrap_or_else(|| panic!("no control socket; stderr: {}", c.stderr()));
        c
    }

    /// `microinit ARGS` inside the namespace.
    fn client(&self, args: &[&str]) -> Output {
        self.client_as(None, args)
    }

    /// `microinit ARGS` inside the namespace, as root or (with `uid`) as another user.
    fn client_as(&self, uid: Option<u32>, args: &[&str]) -> Output {
        let mut c = self.p.nsenter();
        if let Some(uid) = uid {
            let id = uid.to_string();
            c.args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"]);
        }
        c.arg(bin())
            .args(args)
            .env("MICROINIT_SOCKET", &self.socket)
            .output()
            .expect("nsenter")
    }

    fn status(&self) -> Value {
        let out = self.client(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status --json: {out:?}; PID 1's stderr: {}",
            self.stderr()
        );
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
    }

    /// The host pid of a process of the namespace, given its pid inside (NSpid in /proc/PID/status).
    fn host_pid_of(&self, ns_pid: i64) -> Option<i32> {
        children(self.p.host_pid).into_iter().find(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|l| l.split_whitespace().last()?.parse::<i64>().ok())
                == Some(ns_pid)
        })
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.p.child.try_wait().unwrap()
    }

    /// Everything microinit wrote, once it has exited (the reader thread ends at EOF).
    fn final_stderr(&self) -> String {
        let _ = wait_for(Duration::from_secs(2), || {
            (Arc::strong_count(&self.stderr) == 1).then_some(())
        });
        self.stderr()
    }

    /// The exit code and stderr, once microinit is gone.
    fn wait(mut self, timeout: Duration) -> (i32, String) {
        let st = wait_for(timeout, || self.exited())
            .unwrap_or_else(|| panic!("microinit did not exit within {timeout:?}"));
        (exit_code(st), self.final_stderr())
    }

    /// SIGTERM to PID 1 (what `docker stop` sends) and the time until microinit has exited.
    fn stop(mut self) -> Duration {
        let start = Instant::now();
        self.p.signal(libc::SIGTERM);
        wait_for(T, || self.exited()).expect("microinit to exit after SIGTERM");
        start.elapsed()
    }
}

/// The host pids of `pid`'s children.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn status_shows_the_app_pid_state_and_counts() {
    // The subshell leaves an orphan that PID 1 must reap: zombies_reaped becomes 1.
    let pid1 = Container::start(
        &tempdir("status"),
        &["--", "sh", "-c", "(sleep 0.2 &); exec sleep 1000"],
        &[],
    );
    let s = wait_for(T, || {
        let s = pid1.status();
        (s["zombies_reaped"] == 1).then_some(s)
    })
    .expect("the orphan to be reaped");
    assert_eq!(s["microinit"]["pid"], 1);
    assert_eq!(s["microinit"]["dialect"], "microinit");
    assert_eq!(s["app"]["state"], "running");
    assert_eq!(s["app"]["restarts"], 0);
    assert_eq!(s["app"]["last_exit"], Value::Null);
    assert_eq!(s["signals_forwarded"], 0);
    assert_eq!(
        s["app"]["command"],
        serde_json::json!(["sh", "-c", "(sleep 0.2 &); exec sleep 1000"])
    );
    let app = s["app"]["pid"].as_i64().expect("app pid");
    let host = pid1
        .host_pid_of(app)
        .expect("the reported pid is a child of PID 1");
    let cmdline = std::fs::read(format!("/proc/{host}/cmdline")).expect("cmdline");
    assert_eq!(
        cmdline, b"sleep\x001000\x00",
        "pid {app} is the app (after its exec)"
    );

    let table = pid1.client(&["status"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("app pid") && l.ends_with(&format!(" {app}"))),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("state") && l.ends_with(" running")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("zombies reaped") && l.ends_with(" 1")),
        "{table}"
    );
}

#[test]
fn status_escapes_untrusted_text_in_the_table_and_keeps_it_exact_in_the_json() {
    // The app's command line is text from whoever wrote the image: here an OSC title sequence and a
    // newline followed by a forged row.
    let evil = "evil\u{1b}]0;pwned\u{7}\nstate              forged\u{202e}";
    let pid1 = Container::start(
        &tempdir("escape"),
        &["--", "sh", "-c", "exec sleep 1000", evil],
        &[],
    );
    let out = pid1.client(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).expect("the table is UTF-8");
    assert!(
        !table
            .chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
        "raw control characters reach the terminal: {table:?}"
    );
    assert_eq!(
        table.lines().filter(|l| l.starts_with("state ")).count(),
        1,
        "a forged row: {table}"
    );
    assert!(
        table.contains(
            r"sh -c 'exec sleep 1000' $'evil\x1b]0;pwned\x07\nstate              forged\u202e'"
        ),
        "{table}"
    );
    // --json keeps the exact text (serde_json escapes it), and it is valid UTF-8 JSON.
    assert_eq!(pid1.status()["app"]["command"][3], evil);
}

#[test]
fn signal_reaches_the_app_and_is_counted() {
    let dir = tempdir("signal");
    let marker = dir.join("usr1");
    // USR1 before the trap is set would kill the app (and PID 1's sweep would kill the client): wait for it.
    let script = format!(
        "trap 'echo got >> {m}' USR1; touch {m}.ready; while :; do sleep 0.05; done",
        m = marker.display()
    );
    let pid1 = Container::start(&dir, &["--", "sh", "-c", &script], &[]);
    wait_for(T, || dir.join("usr1.ready").exists().then_some(())).expect("the app's trap is set");
    let out = pid1.client(&["signal", "USR1"]);
    assert!(out.status.success(), "{out:?}; PID 1: {}", pid1.stderr());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SIGUSR1"),
        "{out:?}"
    );
    wait_for(T, || marker.exists().then_some(())).expect("the app's USR1 trap to run");
    assert_eq!(pid1.status()["signals_forwarded"], 1);
    assert_eq!(
        pid1.status()["app"]["state"],
        "running",
        "USR1 is trapped, the app lives on"
    );

    let out = pid1.client(&["signal", "NOPE"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad signal name is a usage error: {}",
        stderr(&out)
    );
}

/// The idle loop learns of a control client through a kernel SIGIO on the listener: that one is ours, while
/// a SIGIO sent to PID 1 is the app's like any other signal.
#[test]
fn a_client_raises_no_sigio_in_the_app_but_a_sent_sigio_is_forwarded() {
    let dir = tempdir("sigio");
    let marker = dir.join("io");
    let script = format!(
        "trap 'echo got >> {m}' IO; touch {m}.ready; while :; do sleep 0.05; done",
        m = marker.display()
    );
    let pid1 = Container::start(&dir, &["--", "sh", "-c", &script], &[]);
    wait_for(T, || dir.join("io.ready").exists().then_some(())).expect("the app's trap is set");
    for _ in 0..3 {
        assert_eq!(pid1.status()["app"]["state"], "running");
    }
    assert_eq!(pid1.status()["signals_forwarded"], 0, "{}", pid1.stderr());
    assert!(!marker.exists(), "a control client raised SIGIO in the app");

    // Twice: the second finds the loop asleep in read(2), which must leave the control socket alone.
    for n in 1..=2 {
        pid1.p.signal(libc::SIGIO);
        let trapped = || {
            std::fs::read_to_string(&marker)
                .unwrap_or_default()
                .lines()
                .count()
        };
        wait_for(T, || (trapped() == n).then_some(())).expect("the app's IO trap to run");
    }
    assert_eq!(pid1.status()["signals_forwarded"], 2, "{}", pid1.stderr());
}

#[test]
fn restart_replaces_the_app_with_a_new_pid() {
    let pid1 = Container::start(&tempdir("restart"), &["--", "sleep", "1000"], &[]);
    let before = pid1.status()["app"]["pid"].as_i64().expect("app pid");
    let out = pid1.client(&["restart"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = wait_for(T, || {
        let s = pid1.status();
        let pid = s["app"]["pid"].as_i64()?;
        (pid != before && s["app"]["state"] == "running").then_some(s)
    })
    .expect("a new app pid after restart");
    assert_eq!(s["app"]["restarts"], 1);
    assert_eq!(
        s["app"]["last_exit"]["signal"],
        libc::SIGTERM,
        "the old app got SIGTERM: {s}"
    );
    assert!(
        pid1.host_pid_of(before).is_none(),
        "the old app is gone (reaped)"
    );
}

#[test]
fn maintenance_without_consul_is_refused_with_a_reason() {
    let pid1 = Container::start(&tempdir("maint"), &["--", "sleep", "1000"], &[]);
    let out = pid1.client(&["maintenance", "on", "--reason", "deploy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Consul registration is off"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_non_root_user_is_refused() {
    let pid1 = Container::start(&tempdir("nonroot"), &["--", "sleep", "1000"], &[]);
    let mode = std::fs::metadata(&pid1.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // First line of defence: the file mode (connect gets EACCES).
    let out = pid1.client_as(Some(65534), &["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("permission denied on microinit control socket"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    // Second line: SO_PEERCRED, even when the mode has been loosened.
    std::fs::set_permissions(&pid1.socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = pid1.client_as(Some(65534), &["signal", "KILL"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("permission denied: uid 65534"),
        "{}",
        stderr(&out)
    );
    let s = pid1.status();
    assert_eq!(
        (s["signals_forwarded"].as_i64(), s["app"]["state"].as_str()),
        (Some(0), Some("running"))
    );
}

#[test]
fn outside_a_container_no_socket_answers() {
    let dir = tempdir("nosocket");
    let socket = dir.join("missing.sock");
    let out = Command::new(bin())
        .arg("status")
        .env("MICROINIT_SOCKET", &socket)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        stderr(&out),
        format!(
            "microinit: no microinit control socket at {} (is this running inside a microinit container? set MICROINIT_SOCKET)\n",
            socket.display()
        )
    );
}

/// Clients that misbehave as long as `stop` is false: garbage, a 10 MB line, silent connections and a
/// slowloris trickle, each reconnecting when PID 1 cuts it off. `connections[i]` counts client i's connects.
fn hostile_clients(
    socket: &Path,
    stop: &Arc<AtomicBool>,
    connections: &Arc<[AtomicU32; 6]>,
) -> Vec<std::thread::JoinHandle<()>> {
    type Behaviour = fn(&mut UnixStream, &AtomicBool);
    let garbage: Behaviour = |s, stop| {
        while !stop.load(Ordering::Relaxed) && s.write_all(b"\x00\xff{{{not json").is_ok() {}
        let _ = s.write_all(b"\n");
    };
    let oversized: Behaviour = |s, _| {
        let _ = s.write_all(&vec![b'a'; 10 << 20]);
    };
    let silent: Behaviour = |s, _| {
        let _ = s.read(&mut [0u8; 1]);
    };
    let trickle: Behaviour = |s, stop| {
        while !stop.load(Ordering::Relaxed) && s.write_all(b"{").is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    [garbage, oversized, silent, silent, silent, trickle]
        .into_iter()
        .enumerate()
        .map(|(i, behave)| {
            let (socket, stop, connections) = (
                socket.to_path_buf(),
                Arc::clone(stop),
                Arc::clone(connections),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = UnixStream::connect(&socket) else {
                        break;
                    };
                    connections[i].fetch_add(1, Ordering::Relaxed);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    behave(&mut s, &stop);
                    // Drain the error reply, if any, until PID 1 closes the connection.
                    let _ = std::io::copy(&mut s, &mut std::io::sink());
                }
            })
        })
        .collect()
}

#[test]
fn hostile_clients_do_not_delay_sigterm_forwarding() {
    let quiet = Container::start(&tempdir("quiet"), &["--", "sleep", "1000"], &[]);
    let baseline = quiet.stop();

    let pid1 = Container::start(&tempdir("hostile"), &["--", "sleep", "1000"], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let connections: Arc<[AtomicU32; 6]> = Arc::new(Default::default());
    let clients = hostile_clients(&pid1.socket, &stop, &connections);
    // Under way: every one of them was cut off (the silent ones by the 2 s time limit) and came back.
    wait_for(T, || {
        connections
            .iter()
            .all(|c| c.load(Ordering::Relaxed) >= 2)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "every hostile client to be cut off once: connections {connections:?}; PID 1's stderr: {}",
            pid1.stderr()
        )
    });
    let status = pid1.status();
    assert_eq!(
        status["app"]["state"], "running",
        "a real client is still served under attack"
    );
    let under_attack = pid1.stop();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let connections: Vec<u32> = connections
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    eprintln!(
        "SIGTERM to exit: {baseline:?} without clients, {under_attack:?} under attack; connections {connections:?}"
    );
    // Blocking on any of these clients would cost at least their 2 s time limit: a 1 s margin shows it.
    assert!(
        under_attack < baseline + Duration::from_secs(1),
        "SIGTERM took {under_attack:?} under attack vs {baseline:?} without clients"
    );
}

/// Consul flags for service `name` (id `name-1`) with a short TTL.
fn consul_args(agent: &DevAgent, name: &str) -> Vec<String> {
    let id = format!("{name}-1");
    [
        "--consul-addr",
        &agent.addr(),
        "--service-name",
        name,
        "--service-id",
        &id,
        "--check-ttl",
        "4s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn check(agent: &DevAgent, check_id: &str) -> (String, String) {
    let c = &agent.checks(None)[check_id];
    (
        c["Status"].as_str().unwrap_or("absent").to_string(),
        c["Output"].as_str().unwrap_or_default().to_string(),
    )
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn restart_turns_the_check_critical_then_passing_once_ready() {
    let agent = DevAgent::start();
    let d = tempdir("restart-consul");
    // The app is ready 300 ms after it starts (it writes its pid to DIR/ready) and drains for 500 ms after
    // SIGTERM, still healthy, as real apps do; the health command passes while DIR/ready exists. A health
    // result from the draining app must not turn the check passing again.
    let app = format!(
        "trap 'sleep 0.5; rm -f {d}/ready; exit 0' TERM; sleep 0.3; echo $$ > {d}/ready.tmp; \
         mv {d}/ready.tmp {d}/ready; while :; do sleep 0.05 & wait $!; done",
        d = d.display()
    );
    let health = format!("test -e {}/ready", d.display());
    let mut args = consul_args(&agent, "rs");
    args.extend(
        ["--health-cmd", &health, "--health-interval", "100ms"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.extend(["--", "bash", "-c", &app].iter().map(|s| s.to_string()));
    let c = Container::start(&d, &strs(&args), &[]);
    wait_until("passing before the restart", T, || {
        check(&agent, "microinit:rs-1").0 == "passing"
    });
    let before = c.status()["app"]["pid"].as_i64().expect("app pid");

    let out = c.client(&["restart"]);
    assert!(out.status.success(), "{out:?}");
    // The check must go critical while the old app winds down and the new one is not ready yet.
    wait_until("critical after `microinit restart`", T, || {
        check(&agent, "microinit:rs-1").0 == "critical"
    });
    let mut seen: Vec<(String, String)> = Vec::new();
    wait_until("passing again after the restart", T, || {
        let now = check(&agent, "microinit:rs-1");
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        seen.last().is_some_and(|(s, _)| s == "passing")
    });
    assert!(
        seen.iter().any(|(_, o)| o.contains("not ready yet")),
        "the new app was reported not ready before it passed: {seen:?}"
    );
    let st = c.status();
    let after = st["app"]["pid"].as_i64().expect("new app pid");
    assert_ne!(after, before, "a new app instance: {st}");
    assert_eq!(
        std::fs::read_to_string(d.join("ready")).ok(),
        Some(format!("{after}\n")),
        "passing only once the new app is ready"
    );
    assert_eq!(st["app"]["restarts"], 1);
    assert_eq!(st["consul"]["state"], "registered");
    assert_eq!(st["consul"]["ready"], true);
    // The catalog (what clients query) follows the agent's local state by anti-entropy: poll it.
    wait_until("passing in the catalog", T, || {
        agent.passing_instances("rs") == 1
    });

    c.p.signal(libc::SIGTERM);
    let (code, err) = c.wait(T);
    assert_eq!(code, 0, "{err}");
    assert!(agent.service("rs-1", None).is_none(), "deregistered");
}

#[test]
fn maintenance_is_visible_in_consul() {
    let agent = DevAgent::start();
    let mut args = consul_args(&agent, "mt");
    args.extend(["--", "sleep", "1000"].iter().map(|s| s.to_string()));
    let c = Container::start(&tempdir("maint-consul"), &strs(&args), &[]);
    wait_until("passing", T, || agent.passing_instances("mt") == 1);

    // The answer waits for the agent's: once the client returns, Consul has the maintenance check.
    let out = c.client(&["maintenance", "on", "--reason", "deploy 42"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "maintenance on: the Consul agent applied it\n"
    );
    let maint = "_service_maintenance:mt-1";
    let m = agent.checks(None)[maint].clone();
    assert_eq!(
        (m["Status"].as_str(), m["Notes"].as_str()),
        (Some("critical"), Some("deploy 42"))
    );
    wait_until("out of the catalog's passing set", T, || {
        agent.passing_instances("mt") == 0
    });
    let st = c.status();
    assert_eq!(
        (
            &st["consul"]["maintenance"],
            &st["consul"]["maintenance_reason"]
        ),
        (&Value::Bool(true), &Value::from("deploy 42"))
    );
    let table = String::from_utf8_lossy(&c.client(&["status"]).stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("maintenance") && l.ends_with(" on (deploy 42)")),
        "{table}"
    );

    let out = c.client(&["maintenance", "off"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        agent.checks(None).get(maint).is_none(),
        "the maintenance check is gone once the client returns"
    );
    wait_until("passing again", T, || agent.passing_instances("mt") == 1);
    assert_eq!(c.status()["consul"]["maintenance"], false);
}

#[test]
fn crashing_app_is_critical_while_down_and_exits_with_its_last_status() {
    let agent = DevAgent::start();
    let d = tempdir("crash-consul");
    // Run n exits with 10+n after 500 ms up: the exit status must be the last run's (13), not the first's.
    let app = format!(
        "echo run >> {d}/runs; sleep 0.5; exit $((10 + $(wc -l < {d}/runs)))",
        d = d.display()
    );
    let mut args = consul_args(&agent, "cr");
    args.extend(
        [
            "--restart",
            "on-failure",
            "--max-restarts",
            "2",
            "--",
            "bash",
            "-c",
            &app,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut c = Container::start(&d, &strs(&args), &[]);
    // Every distinct (status, output) of the TTL check, in order, until microinit exits.
    let mut seen: Vec<(String, String)> = Vec::new();
    let exited = wait_for(T, || {
        let now = check(&agent, "microinit:cr-1");
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        c.exited()
    });
    assert!(exited.is_some(), "microinit did not give up: {seen:?}");
    let states: Vec<&str> = seen
        .iter()
        .filter(|(s, _)| s != "absent")
        .map(|(s, _)| s.as_str())
        .collect();
    let down = seen
        .iter()
        .filter(|(s, o)| s == "critical" && o.contains("exit code") && o.contains("restarting"))
        .count();
    assert_eq!(
        down, 2,
        "critical while down before each of the 2 restarts: {seen:?}"
    );
    let passing_runs = states
        .windows(2)
        .filter(|w| w[0] != "passing" && w[1] == "passing")
        .count()
        + usize::from(states.first() == Some(&"passing"));
    assert_eq!(
        passing_runs, 3,
        "passing during each of the 3 runs: {seen:?}"
    );
    let stderr = c.final_stderr();
    assert_eq!(
        exit_code(exited.unwrap()),
        13,
        "the last run's status: {stderr}"
    );
    assert!(stderr.contains("giving up after 2 restarts"), "{stderr}");
    assert!(
        agent.service("cr-1", None).is_none(),
        "deregistered at the end"
    );
}

#[test]
fn pre_stop_runs_after_deregistration_and_before_the_signal() {
    let agent = DevAgent::start();
    let d = tempdir("prestop-consul");
    let log = d.join("log");
    let port = agent.http_port;
    // The hook asks the agent for the service and records the HTTP status line.
    let hook = d.join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port}\n\
             printf 'GET /v1/agent/service/ps-1 HTTP/1.0\\r\\n\\r\\n' >&3\n\
             echo \"pre-stop: $(head -n1 <&3 | tr -d '\\r')\" >> {log}\n",
            log = log.display()
        ),
    )
    .unwrap();
    let ready = d.join("app-ready");
    let app = format!(
        "trap 'echo app: TERM >> {log}; exit 0' TERM; touch {ready}; while :; do sleep 0.05 & wait $!; done",
        log = log.display(),
        ready = ready.display()
    );
    let hook_cmd = format!("bash {}", hook.display());
    let mut args = consul_args(&agent, "ps");
    args.extend(
        ["--pre-stop", &hook_cmd, "--", "bash", "-c", &app]
            .iter()
            .map(|s| s.to_string()),
    );
    let c = Container::start(&d, &strs(&args), &[]);
    wait_until("passing", T, || agent.passing_instances("ps") == 1);
    // Readiness is immediate: the check passes as soon as bash started, maybe before it set its trap.
    wait_until("the app's trap", T, || ready.exists());
    c.p.signal(libc::SIGTERM);
    let (code, err) = c.wait(T);
    assert_eq!(code, 0, "{err}");
    let log = std::fs::read_to_string(&log).expect("hook and app wrote the log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].starts_with("pre-stop: HTTP/") && lines[0].contains(" 404"),
        "the hook ran after deregistration: {log}"
    );
    assert_eq!(
        lines[1], "app: TERM",
        "the hook ran before the app's SIGTERM"
    );
}

#[test]
fn status_reports_registration_and_never_the_token() {
    let master = "m4ster-t0ken-for-lifecycle";
    let agent = DevAgent::start_acl(master);
    let secret = agent.write_token(master, "tok");

    // -vvv: even trace logging (HTTP requests included) must not show it.
    let mut args = consul_args(&agent, "tok");
    args.extend(
        ["-vvv", "--", "sleep", "1000"]
            .iter()
            .map(|s| s.to_string()),
    );
    let c = Container::start(
        &tempdir("token"),
        &strs(&args),
        &[("CONSUL_HTTP_TOKEN", &secret)],
    );
    wait_until("passing with the token", T, || {
        agent
            .check_status("microinit:tok-1", Some(master))
            .as_deref()
            == Some("passing")
    });
    let mut outputs = Vec::new();
    // Right after registration the heartbeat is already there (the registration carried the status).
    let st = wait_for(T, || {
        let st = c.status();
        (st["consul"]["check"]["status"] == "passing").then_some(st)
    })
    .expect("status shows passing");
    outputs.push(st.to_string());
    let consul = &st["consul"];
    assert_eq!(consul["agent"], format!("http://{}", agent.addr()));
    assert_eq!(
        (
            consul["service_id"].as_str(),
            consul["service_name"].as_str(),
            consul["check_id"].as_str(),
            consul["state"].as_str()
        ),
        (
            Some("tok-1"),
            Some("tok"),
            Some("microinit:tok-1"),
            Some("registered")
        )
    );
    assert_eq!(consul["ready"], true);
    assert_eq!(consul["last_heartbeat"]["ok"], true, "{st}");
    assert!(consul["last_heartbeat"]["unix"].as_u64().is_some(), "{st}");
    assert!(consul["last_error"].is_null(), "{st}");
    assert_eq!(st["runtime_check"]["ok"], true, "{st}");
    assert_eq!(st["runtime_check"]["missing"], serde_json::json!([]));

    let table = c.client(&["status"]);
    let text = String::from_utf8_lossy(&table.stdout).into_owned();
    for (row, tail) in [
        ("last heartbeat", " ago)"),
        ("registration", " registered"),
        (
            "check",
            &format!(
                " passing: microinit: app running (pid {})",
                st["app"]["pid"]
            ),
        ),
        ("service id", " tok-1"),
        ("runtime check", " ok"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(row) && l.ends_with(tail)),
            "{row} …{tail} missing from\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("last heartbeat") && l.contains(" ok (")),
        "{text}"
    );
    outputs.push(text);
    outputs.push(String::from_utf8_lossy(&table.stderr).into_owned());
    // More token-carrying calls: maintenance on and off.
    for args in [&["maintenance", "on"][..], &["maintenance", "off"]] {
        let out = c.client(args);
        assert!(out.status.success(), "{out:?}");
        outputs.push(format!("{out:?}"));
    }
    c.p.signal(libc::SIGTERM);
    let (code, err) = c.wait(T);
    assert_eq!(code, 143, "sleep dies of SIGTERM");
    assert!(
        err.contains("registered service"),
        "trace logging is on: {err}"
    );
    outputs.push(err);
    for o in &outputs {
        assert!(!o.contains(&secret), "the token leaked:\n{o}");
    }

    // A token the agent does not know: the error is in status, the token is not.
    let mut args = consul_args(&agent, "tok");
    args.extend(
        ["-vvv", "--", "sleep", "1000"]
            .iter()
            .map(|s| s.to_string()),
    );
    let bad = "0ddba11-not-a-known-token";
    let c = Container::start(
        &tempdir("badtoken"),
        &strs(&args),
        &[("CONSUL_HTTP_TOKEN", bad)],
    );
    let st = wait_for(T, || {
        let st = c.status();
        (!st["consul"]["last_error"].is_null()).then_some(st)
    })
    .expect("an error in status");
    assert!(
        st["consul"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("403")),
        "{st}"
    );
    let table = c.client(&["status"]);
    c.p.signal(libc::SIGTERM);
    let (_, err) = c.wait(T);
    for o in [
        st.to_string(),
        format!("{table:?}"),
        String::from_utf8_lossy(&table.stdout).into_owned(),
        err,
    ] {
        assert!(!o.contains(bad), "the token leaked:\n{o}");
    }
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn exec_passes_status_reaps_its_orphans_and_forwards_signals() {
    // PID 1 with Consul settings in its environment: `exec` must not register, nor touch PID 1's socket.
    let c = Container::start(
        &tempdir("exec"),
        &["--", "sleep", "1000"],
        &[
            ("CONSUL_HTTP_ADDR", "127.0.0.1:1"),
            ("MICROINIT_SERVICE_NAME", "nope"),
        ],
    );
    let exec = |cmd: &[&str]| {
        let mut n = c.p.nsenter();
        n.arg(bin())
            .arg("exec")
            .arg("--")
            .args(cmd)
            .env("MICROINIT_SOCKET", &c.socket)
            .env_remove("RUST_LOG")
            .env("CONSUL_HTTP_ADDR", "127.0.0.1:1")
            .env("MICROINIT_SERVICE_NAME", "nope");
        n
    };
    let out = exec(&["sh", "-c", "exit 7"]).output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "no registration, no runtime check noise: {out:?}"
    );
    let out = exec(&["sh", "-c", "kill -USR1 $$"]).output().unwrap();
    assert_eq!(out.status.code(), Some(128 + libc::SIGUSR1), "{out:?}");

    // A session that leaves an orphan behind and then waits for signals.
    let f = c.dir.join("sig");
    let script = format!(
        "(sleep 1000 &); exec {} {}",
        helper("sigrec").display(),
        f.display()
    );
    let mut session = exec(&["sh", "-c", &script]).spawn().unwrap();
    wait_ready(&f);
    let nsenter = session.id() as i32;
    let exec_pid = wait_for(T, || children(nsenter).first().copied()).expect("exec under nsenter");
    assert_eq!(comm(exec_pid), "microinit");
    // The orphaned sleep was reparented to `exec` (a child subreaper), not to PID 1.
    let orphan = wait_for(T, || {
        children(exec_pid).into_iter().find(|&p| comm(p) == "sleep")
    })
    .expect("the orphan is exec's child");
    // Signals sent to exec reach CMD.
    unsafe { libc::kill(exec_pid, libc::SIGUSR1) };
    wait_for(T, || recorded(&f).contains(&libc::SIGUSR1).then_some(())).expect("USR1 reached CMD");
    unsafe { libc::kill(exec_pid, libc::SIGTERM) };
    let st = wait_for(T, || session.try_wait().unwrap()).expect("exec ended");
    assert_eq!(st.code(), Some(0), "sigrec exits 0 on SIGTERM");
    assert_eq!(recorded(&f), vec![libc::SIGUSR1, libc::SIGTERM]);
    assert!(
        !Path::new(&format!("/proc/{orphan}")).exists(),
        "the orphan was terminated and reaped by exec (no zombie left)"
    );
    let st = c.status();
    assert_eq!(
        st["zombies_reaped"], 0,
        "PID 1 reaped nothing of the session: {st}"
    );
    assert_eq!(
        st["app"]["state"], "running",
        "PID 1 still answers on its socket"
    );
}
