//! The control socket end to end: the static binary as PID 1 of a new PID namespace
//! (`unshare --pid --fork --mount-proc`), its socket in a temp dir (MICROINIT_SOCKET), and the same binary as
//! the client inside the namespace (`nsenter -t PID -p -m`, the `docker exec` analogue). Needs root.
//!
//! The small harness below (binary lookup, PID-1 launcher, polling) belongs in tests/common once that lands.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let p = std::env::var_os("MICROINIT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("x86_64-unknown-linux-musl/release/microinit"));
    assert!(
        p.exists(),
        "{} missing: run `cargo build --release --target x86_64-unknown-linux-musl` first (or set MICROINIT_BIN)",
        p.display()
    );
    p
}

/// Poll `f` until it gives Some, failing the test with `what` after 15 s.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// microinit as PID 1 of its own PID namespace, serving its control socket in a private temp dir.
struct Pid1 {
    child: Child,
    host_pid: i32,
    dir: PathBuf,
    socket: PathBuf,
}

/// The private directory of one test (socket, marker files); created by `Pid1::start`.
fn test_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("microinit-ctl-it-{tag}-{}", std::process::id()))
}

impl Pid1 {
    fn start(tag: &str, app: &[&str]) -> Pid1 {
        let dir = test_dir(tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        // Other users must reach the socket file itself (the non-root test); its own mode stays 0600.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
        let socket = dir.join("control.sock");
        let mut child = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(bin())
            .arg("--")
            .args(app)
            .env("MICROINIT_SOCKET", &socket)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare");
        let upid = child.id();
        let host_pid = wait_for("microinit to start under unshare", || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("unshare exited early: {st}");
            }
            let s = std::fs::read_to_string(format!("/proc/{upid}/task/{upid}/children")).ok()?;
            s.split_whitespace().next()?.parse().ok()
        });
        let pid1 = Pid1 {
            child,
            host_pid,
            dir,
            socket,
        };
        wait_for("the control socket to appear", || {
            pid1.socket.exists().then_some(())
        });
        pid1
    }

    /// `microinit ARGS` inside the namespace, as root or (with `uid`) as another user.
    fn client(&self, uid: Option<u32>, args: &[&str]) -> Output {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.host_pid.to_string(), "-p", "-m", "--"]);
        if let Some(uid) = uid {
            let id = uid.to_string();
            c.args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"]);
        }
        c.arg(bin())
            .args(args)
            .env("MICROINIT_SOCKET", &self.socket);
        c.output().expect("run nsenter")
    }

    fn status(&self) -> Value {
        let out = self.client(None, &["status", "--json"]);
        assert!(
            out.status.success(),
            "status --json failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
    }

    /// The host pid of a process of the namespace, given its pid inside (NSpid in /proc/PID/status).
    fn host_pid_of(&self, ns_pid: i64) -> Option<i32> {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.host_pid)).ok()?;
        children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .find(|p| {
                let status =
                    std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|l| l.split_whitespace().last()?.parse::<i64>().ok())
                    == Some(ns_pid)
            })
    }

    /// SIGTERM to PID 1 (what `docker stop` sends) and the time until microinit has exited.
    fn stop(mut self) -> Duration {
        let start = Instant::now();
        // SAFETY: kill(2) with a pid we started.
        assert_eq!(unsafe { libc::kill(self.host_pid, libc::SIGTERM) }, 0);
        wait_for("microinit to exit after SIGTERM", || {
            self.child.try_wait().ok().flatten()
        });
        start.elapsed()
    }
}

impl Drop for Pid1 {
    fn drop(&mut self) {
        // --kill-child: killing unshare takes PID 1, and with it the namespace, down.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn status_shows_the_app_pid_state_and_counts() {
    // The subshell leaves an orphan that PID 1 must reap: zombies_reaped becomes 1.
    let pid1 = Pid1::start("status", &["sh", "-c", "(sleep 0.2 &); exec sleep 1000"]);
    let s = wait_for("the orphan to be reaped", || {
        let s = pid1.status();
        (s["zombies_reaped"] == 1).then_some(s)
    });
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

    let table = pid1.client(None, &["status"]);
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
fn signal_reaches_the_app_and_is_counted() {
    let marker = test_dir("signal").join("usr1");
    let script = format!(
        "trap 'echo got >> {}' USR1; while :; do sleep 0.05; done",
        marker.display()
    );
    let pid1 = Pid1::start("signal", &["sh", "-c", &script]);
    let out = pid1.client(None, &["signal", "USR1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SIGUSR1"),
        "{out:?}"
    );
    wait_for("the app's USR1 trap to run", || {
        marker.exists().then_some(())
    });
    assert_eq!(pid1.status()["signals_forwarded"], 1);
    assert_eq!(
        pid1.status()["app"]["state"],
        "running",
        "USR1 is trapped, the app lives on"
    );

    let out = pid1.client(None, &["signal", "NOPE"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad signal name is a usage error: {}",
        stderr(&out)
    );
}

#[test]
fn restart_replaces_the_app_with_a_new_pid() {
    let pid1 = Pid1::start("restart", &["sleep", "1000"]);
    let before = pid1.status()["app"]["pid"].as_i64().expect("app pid");
    let out = pid1.client(None, &["restart"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = wait_for("a new app pid after restart", || {
        let s = pid1.status();
        let pid = s["app"]["pid"].as_i64()?;
        (pid != before && s["app"]["state"] == "running").then_some(s)
    });
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
    let pid1 = Pid1::start("maint", &["sleep", "1000"]);
    let out = pid1.client(None, &["maintenance", "on", "--reason", "deploy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Consul registration is off"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_non_root_user_is_refused() {
    let pid1 = Pid1::start("nonroot", &["sleep", "1000"]);
    let mode = std::fs::metadata(&pid1.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // First line of defence: the file mode (connect gets EACCES).
    let out = pid1.client(Some(65534), &["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("permission denied on microinit control socket"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    // Second line: SO_PEERCRED, even when the mode has been loosened.
    std::fs::set_permissions(&pid1.socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = pid1.client(Some(65534), &["signal", "KILL"]);
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
    let dir = test_dir("nosocket");
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
    let quiet = Pid1::start("quiet", &["sleep", "1000"]);
    let baseline = quiet.stop();

    let pid1 = Pid1::start("hostile", &["sleep", "1000"]);
    let stop = Arc::new(AtomicBool::new(false));
    let connections: Arc<[AtomicU32; 6]> = Arc::new(Default::default());
    let clients = hostile_clients(&pid1.socket, &stop, &connections);
    // Under way: every one of them was cut off (the silent ones by the 2 s time limit) and came back.
    wait_for("every hostile client to be cut off once", || {
        connections
            .iter()
            .all(|c| c.load(Ordering::Relaxed) >= 2)
            .then_some(())
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
