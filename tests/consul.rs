//! Consul registration end to end: the static microinit binary as PID 1 of a fresh PID namespace
//! (`unshare --pid --fork --mount-proc`), a real `consul agent -dev` on loopback, a bash test app.

#[path = "common/consul.rs"]
mod dev_agent;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dev_agent::{wait_until, DevAgent};

const SOON: Duration = Duration::from_secs(10);

/// MICROINIT_BIN, else <target dir>/x86_64-unknown-linux-musl/release/microinit.
fn microinit_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("MICROINIT_BIN") {
        return PathBuf::from(b);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let bin = target.join("x86_64-unknown-linux-musl/release/microinit");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --release --target x86_64-unknown-linux-musl` or set MICROINIT_BIN",
        bin.display()
    );
    bin
}

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("microinit-consul-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir scratch");
    d
}

/// The test app: runs until DIR/stop exists, then exits with $EXIT_CODE (or kills itself with $CRASH_SIG).
/// On SIGTERM it asks the agent for its own service and writes the HTTP status line to DIR/on_sigterm.
const APP: &str = r#"
dir=$1 port=$2 id=$3
trap 'exec 3<>/dev/tcp/127.0.0.1/$port
      printf "GET /v1/agent/service/%s HTTP/1.0\r\n\r\n" "$id" >&3
      head -n1 <&3 | tr -d "\r" > "$dir/on_sigterm.tmp" && mv "$dir/on_sigterm.tmp" "$dir/on_sigterm"
      exit 0' TERM
# Written after the trap is set: a test that sends SIGTERM waits for this file first.
printf %s "${MICROINIT_SERVICE_ID:-}" > "$dir/service_id"
while [ ! -e "$dir/stop" ]; do sleep 0.05 & wait $!; done
if [ -n "${CRASH_SIG:-}" ]; then kill -"$CRASH_SIG" $$; fi
exit "${EXIT_CODE:-0}"
"#;

struct Run {
    unshare: Child,
    dir: PathBuf,
}

impl Run {
    /// `microinit ARGS -- bash -c APP` as PID 1, registering service `id` with `agent_addr`.
    fn start(
        dir: &PathBuf,
        agent_addr: &str,
        id: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Run {
        Self::start_on_host(None, dir, agent_addr, id, args, env)
    }

    /// As `start`, in a UTS namespace of its own with `hostname` when given (a container's own hostname).
    fn start_on_host(
        hostname: Option<&str>,
        dir: &PathBuf,
        agent_addr: &str,
        id: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Run {
        let port = agent_addr.rsplit(':').next().expect("port");
        let mut unshare = Command::new("unshare");
        // --kill-child: a test that fails half-way leaves no microinit behind.
        unshare.args(["--pid", "--fork", "--mount-proc", "--kill-child"]);
        if let Some(h) = hostname {
            // sh sets the name and execs microinit, which so stays PID 1 of the new namespace.
            unshare.args(["--uts", "sh", "-c", "hostname \"$0\" && exec \"$@\"", h]);
        }
        let unshare = unshare
            .arg(microinit_bin())
            .args(["--consul-addr", agent_addr, "--check-ttl", "4s"])
            // An empty id: let microinit pick its default.
            .args(["--service-id", id].into_iter().filter(|_| !id.is_empty()))
            .args(args)
            .args(["--", "bash", "-c", APP, "app"])
            .arg(dir)
            .args([port, id])
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).expect("create stderr log"))
            .spawn()
            .expect("spawn unshare (needs root)");
        Run {
            unshare,
            dir: dir.clone(),
        }
    }
    /// What microinit logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    fn stop_app(&self) {
        std::fs::write(self.dir.join("stop"), "").expect("touch stop");
    }

    /// microinit's PID in our namespace: the only child of unshare, once forked.
    fn child_pid(&self) -> Option<i32> {
        let children = format!("/proc/{0}/task/{0}/children", self.unshare.id());
        std::fs::read_to_string(children)
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
    }

    fn microinit_pid(&self) -> i32 {
        let mut pid = None;
        wait_until("microinit forked by unshare", SOON, || {
            pid = self.child_pid();
            pid.is_some()
        });
        pid.unwrap_or(0)
    }

    /// SIGTERM to microinit (what `docker stop` sends).
    fn sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.microinit_pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM to microinit");
    }

    fn wait(mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.unshare.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.unshare.kill();
                panic!(
                    "microinit did not exit within {timeout:?}; stderr:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A test that fails half-way must not leave its PID namespace running: unshare's --kill-child takes
/// microinit (and with it the namespace) down when unshare dies.
impl Drop for Run {
    fn drop(&mut self) {
        if let Ok(None) = self.unshare.try_wait() {
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
    }
}

fn passing(agent: &DevAgent, name: &str) -> bool {
    agent.passing_instances(name) == 1
}

#[test]
fn passing_when_ready_then_deregistered_after_exit() {
    let agent = DevAgent::start();
    let dir = scratch("exit");
    let args = [
        "--service-name",
        "it-exit",
        "--service-port",
        "8080",
        "--service-tags",
        "a,b",
        // Nothing listens on 8080: without this, readiness would wait for the port.
        "--ready",
        "immediate",
    ];
    let run = Run::start(
        &dir,
        &agent.addr(),
        "it-exit-1",
        &args,
        &[("EXIT_CODE", "3")],
    );
    wait_until("it-exit passing", SOON, || passing(&agent, "it-exit"));
    let s = agent.service("it-exit-1", None).expect("registered");
    assert_eq!(
        (s["Port"].as_u64(), s["Tags"].clone()),
        (Some(8080), serde_json::json!(["a", "b"]))
    );
    run.stop_app();
    let st = run.wait(SOON);
    assert_eq!(
        st.code(),
        Some(3),
        "microinit must exit with the app's status"
    );
    assert!(
        agent.service("it-exit-1", None).is_none(),
        "still registered after microinit exited"
    );
}

#[test]
fn deregistered_after_crash() {
    let agent = DevAgent::start();
    let dir = scratch("crash");
    let run = Run::start(
        &dir,
        &agent.addr(),
        "it-crash-1",
        &["--service-name", "it-crash"],
        &[("CRASH_SIG", "SEGV")],
    );
    wait_until("it-crash passing", SOON, || passing(&agent, "it-crash"));
    run.stop_app();
    let st = run.wait(SOON);
    assert_eq!(st.code(), Some(128 + 11), "SIGSEGV → 139");
    assert!(
        agent.service("it-crash-1", None).is_none(),
        "still registered after a crash"
    );
}

#[test]
fn sigterm_deregisters_before_the_app_gets_it() {
    let agent = DevAgent::start();
    let dir = scratch("term");
    let run = Run::start(
        &dir,
        &agent.addr(),
        "it-term-1",
        &["--service-name", "it-term"],
        &[],
    );
    wait_until("it-term passing", SOON, || passing(&agent, "it-term"));
    wait_until("the app's SIGTERM trap set", SOON, || {
        dir.join("service_id").exists()
    });
    run.sigterm();
    let st = run.wait(SOON);
    assert_eq!(st.code(), Some(0), "the app's trap exits 0");
    let seen =
        std::fs::read_to_string(dir.join("on_sigterm")).expect("the app recorded what Consul said");
    assert!(
        seen.contains(" 404 "),
        "Consul still knew the service when the app got SIGTERM: {seen:?}"
    );
    assert!(agent.service("it-term-1", None).is_none());
}

#[test]
fn health_command_states_reach_consul() {
    let agent = DevAgent::start();
    let dir = scratch("health");
    let rc = dir.join("rc");
    std::fs::write(&rc, "1").expect("write rc");
    // The health command exits with the number in DIR/rc and prints it.
    let cmd = format!("r=$(cat {0}); echo \"rc is $r\"; exit $r", rc.display());
    let args = [
        "--service-name",
        "it-health",
        "--health-cmd",
        &cmd,
        "--health-interval",
        "200ms",
    ];
    let run = Run::start(&dir, &agent.addr(), "it-health-1", &args, &[]);
    let check = |status: &str, output: &str| {
        let c = &agent.checks(None)["microinit:it-health-1"];
        c["Status"] == status && c["Output"].as_str().is_some_and(|o| o.contains(output))
    };
    // Readiness defaults to "health": a warning before the first pass keeps it critical.
    wait_until("critical before the first pass", SOON, || {
        check("critical", "rc is 1")
    });
    for (code, status) in [
        ("0", "passing"),
        ("1", "warning"),
        ("2", "critical"),
        ("0", "passing"),
    ] {
        std::fs::write(&rc, code).expect("write rc");
        wait_until(status, SOON, || check(status, &format!("rc is {code}")));
    }
    run.stop_app();
    assert_eq!(run.wait(SOON).code(), Some(0));
    assert!(agent.service("it-health-1", None).is_none());
}

/// The pipe holds 64 KiB: a command printing more must block until PID 1 reads, not fail with EAGAIN (only
/// PID 1's end of the pipe is non-blocking).
#[test]
fn a_health_command_printing_more_than_64_kib_passes() {
    let agent = DevAgent::start();
    let dir = scratch("health-big");
    let cmd = "head -c 100000 /dev/zero | tr '\\0' x || exit 2";
    let args = [
        "--service-name",
        "it-hbig",
        "--health-cmd",
        cmd,
        "--health-interval",
        "200ms",
    ];
    let run = Run::start(&dir, &agent.addr(), "it-hbig-1", &args, &[]);
    wait_until("passing with 100 000 bytes of output", SOON, || {
        agent.check_status("microinit:it-hbig-1", None).as_deref() == Some("passing")
    });
    run.stop_app();
    assert_eq!(run.wait(SOON).code(), Some(0));
}

#[test]
fn black_holed_agent_delays_exit_by_at_most_the_bound() {
    // Listening, never accepting: every request hangs until its timeout.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = hole.local_addr().expect("addr").to_string();
    let dir = scratch("hole");
    std::fs::write(dir.join("stop"), "").expect("touch stop"); // the app exits at once
    let t0 = Instant::now();
    let run = Run::start(
        &dir,
        &addr,
        "it-hole-1",
        &["--service-name", "it-hole"],
        &[],
    );
    assert_eq!(run.wait(SOON).code(), Some(0));
    // Documented bound: 2 s for deregistration, plus process start-up and teardown.
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "exit took {took:?} with a black-holed agent"
    );
    drop(hole);
}

#[test]
fn consul_required_and_agent_down_exits_125() {
    let port = dev_agent::free_port();
    let dir = scratch("required");
    let run = Run::start(
        &dir,
        &format!("127.0.0.1:{port}"),
        "it-req-1",
        &["--service-name", "it-req", "--consul-required"],
        &[],
    );
    assert_eq!(run.wait(SOON).code(), Some(125));
}

/// The app keeps a line of microinit's stderr: wait for it (the start line, a warning, a retry).
fn wait_stderr(run: &Run, what: &str, needle: &str) {
    wait_until(what, SOON, || run.log().contains(needle));
}

/// The check's output as Consul shows it (empty when the check is unknown).
fn check_output(agent: &DevAgent, check: &str) -> String {
    agent.checks(None)[check]["Output"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A health command whose output changes on every run: each new output in Consul is a check update that
/// went through (a heartbeat), without sleeping for a TTL.
const TICKING_HEALTH: &str = "cat /proc/sys/kernel/random/uuid";

fn heartbeats_arrive(agent: &DevAgent, check: &str) {
    let first = check_output(agent, check);
    wait_until("a new check update", SOON, || {
        let now = check_output(agent, check);
        !now.is_empty() && now != first
    });
}

#[test]
fn a_unix_socket_agent_gets_registration_heartbeats_and_deregistration() {
    let dir = scratch("unix");
    // The agent has no TCP HTTP listener at all: everything goes through the socket.
    let agent = DevAgent::start_unix(&dir.join("consul.sock"));
    let addr = format!("unix://{}", dir.join("consul.sock").display());
    let args = [
        "--service-name",
        "it-unix",
        "--health-cmd",
        TICKING_HEALTH,
        "--health-interval",
        "100ms",
    ];
    let run = Run::start(&dir, &addr, "it-unix-1", &args, &[]);
    wait_until("it-unix passing", SOON, || passing(&agent, "it-unix"));
    heartbeats_arrive(&agent, "microinit:it-unix-1");
    wait_stderr(
        &run,
        "the start line",
        &format!("with {addr}; passing when"),
    );
    run.stop_app();
    assert_eq!(run.wait(SOON).code(), Some(0));
    assert!(
        agent.service("it-unix-1", None).is_none(),
        "still registered after exit"
    );
}

#[test]
fn a_one_off_command_with_a_service_port_is_never_passing() {
    let agent = DevAgent::start();
    let dir = scratch("oneoff");
    let port = dev_agent::free_port().to_string();
    // Image defaults (service name and port in the environment), and a command that never listens.
    let run = Run::start(
        &dir,
        &agent.addr(),
        "it-oneoff-1",
        &[],
        &[
            ("MICROINIT_SERVICE_NAME", "it-oneoff"),
            ("MICROINIT_SERVICE_PORT", &port),
        ],
    );
    wait_stderr(
        &run,
        "the start line naming the readiness",
        &format!("passing when 127.0.0.1:{port} accepts connections"),
    );
    wait_until("it-oneoff registered", SOON, || {
        agent.service("it-oneoff-1", None).is_some()
    });
    // Two TTL-halves of heartbeats later it is still not passing (the check is critical, not missing).
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(
            agent.passing_instances("it-oneoff"),
            0,
            "a one-off command became passing"
        );
        assert_eq!(
            agent.check_status("microinit:it-oneoff-1", None).as_deref(),
            Some("critical")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The same configuration with something listening on the port does pass: readiness is the port.
    let listener = std::net::TcpListener::bind(format!("127.0.0.1:{port}")).expect("bind port");
    wait_until("passing once the port accepts", SOON, || {
        passing(&agent, "it-oneoff")
    });
    drop(listener);
    run.stop_app();
    assert_eq!(run.wait(SOON).code(), Some(0));
    assert!(agent.service("it-oneoff-1", None).is_none());
}

#[test]
fn no_token_reaches_the_app_hooks_or_health_command_unless_passed_explicitly() {
    let agent = DevAgent::start();
    let dir = scratch("secrets");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "file-token-41414141\n").expect("write token file");
    let secrets = [
        ("CONSUL_HTTP_TOKEN", "env-token-42424242"),
        ("CONSUL_HTTP_TOKEN_FILE", token_file.to_str().expect("utf8")),
        ("CONSUL_HTTP_AUTH", "user:password-43434343"),
    ];
    let hook = format!("env > {}", dir.join("hook-env").display());
    for (pass, id) in [(false, "it-secret-1"), (true, "it-secret-2")] {
        let _ = std::fs::remove_file(dir.join("stop"));
        let mut args = vec![
            "--service-name",
            "it-secret",
            "--health-cmd",
            // Consul keeps 4 KB of check output: the lines that matter, not the test harness's variables.
            "env | grep -e CONSUL -e 424242 -e 434343 -e ^PATH=",
            "--health-interval",
            "200ms",
            "--pre-start",
            &hook,
        ];
        if pass {
            args.push("--pass-consul-token");
        }
        let run = Run::start(&dir, &agent.addr(), id, &args, &secrets);
        let check = format!("microinit:{id}");
        // The health command's output (its whole environment) is the check's output in Consul.
        wait_until("the health output in Consul", SOON, || {
            check_output(&agent, &check).contains("PATH=")
        });
        let seen = [
            check_output(&agent, &check),
            std::fs::read_to_string(dir.join("hook-env")).expect("hook env"),
        ];
        for text in &seen {
            // The file's path leads to the token; its name covers CONSUL_HTTP_TOKEN_FILE too.
            for secret in ["42424242", "43434343", "CONSUL_HTTP_TOKEN"] {
                assert_eq!(
                    text.contains(secret),
                    pass,
                    "{secret} with --pass-consul-token={pass}: {text}"
                );
            }
        }
        run.stop_app();
        assert_eq!(run.wait(SOON).code(), Some(0));
    }
}

#[test]
fn a_rotated_token_file_is_picked_up_when_the_agent_refuses_the_old_token() {
    let master = "it-master-secret";
    let agent = DevAgent::start_acl(master);
    let dir = scratch("rotate");
    let token_file = dir.join("token");
    let old = agent.write_token(master, "it-rotate");
    std::fs::write(&token_file, &old).expect("write token");
    let args = [
        "--service-name",
        "it-rotate",
        "--health-cmd",
        TICKING_HEALTH,
        "--health-interval",
        "200ms",
    ];
    let env = [("CONSUL_HTTP_TOKEN_FILE", token_file.to_str().expect("utf8"))];
    let run = Run::start(&dir, &agent.addr(), "it-rotate-1", &args, &env);
    let check = "microinit:it-rotate-1";
    let status = || agent.check_status(check, Some(master));
    wait_until("passing with the first token", SOON, || {
        status().as_deref() == Some("passing")
    });
    // Rotation as a secrets manager does it: the new token into the file, then the old one revoked.
    let new = agent.write_token(master, "it-rotate");
    std::fs::write(&token_file, &new).expect("rotate token");
    agent.revoke_token(master, &old);
    wait_stderr(&run, "the new token noticed", "holds a new token; using it");
    let output = || {
        agent.checks(Some(master))[check]["Output"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let after = output();
    wait_until("heartbeats with the new token", SOON, || output() != after);
    assert_eq!(status().as_deref(), Some("passing"));
    run.stop_app();
    assert_eq!(run.wait(SOON).code(), Some(0));
    assert!(
        agent.service("it-rotate-1", Some(master)).is_none(),
        "deregistration with the new token failed"
    );
    assert!(!run_stderr(&dir).contains(&new) && !run_stderr(&dir).contains(&old));
}

fn run_stderr(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
}

#[test]
fn an_acl_denial_deregisters_nothing_and_promises_no_reaping() {
    let master = "it-master-secret";
    let agent = DevAgent::start_acl(master);
    let dir = scratch("denied");
    std::fs::write(dir.join("stop"), "").expect("touch stop"); // the app exits at once
                                                               // A token for another service: registering this one is denied.
    let token = agent.write_token(master, "someone-else");
    let run = Run::start(
        &dir,
        &agent.addr(),
        "it-denied-1",
        &["--service-name", "it-denied", "--ready", "immediate"],
        &[("CONSUL_HTTP_TOKEN", &token)],
    );
    assert_eq!(run.wait(SOON).code(), Some(0));
    let err = run_stderr(&dir);
    assert!(err.contains("403"), "{err}");
    assert!(!err.contains("deregister"), "{err}");
    assert!(!err.contains("reap"), "{err}");
}

#[test]
fn redirects_from_the_agent_address_are_errors_naming_the_status() {
    // A tiny loopback server that answers every request with a redirect (a real agent never does).
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in server.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 301 Moved Permanently\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let dir = scratch("redirect");
    let run = Run::start(
        &dir,
        &addr,
        "it-redirect-1",
        &["--service-name", "it-redirect", "--consul-required"],
        &[],
    );
    assert_eq!(run.wait(SOON).code(), Some(125));
    let err = run_stderr(&dir);
    assert!(
        err.contains("/v1/agent/service/register?replace-existing-checks=true: 301 redirect to \"http://127.0.0.1:1/elsewhere\", not followed"),
        "{err}"
    );
}

/// `microinit ARGS -- true` (not as PID 1: these fail before anything starts), bounded.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Command::new(microinit_bin())
        .args(args)
        .args(["--", "true"])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn microinit");
    let deadline = Instant::now() + SOON;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("microinit {args:?} {env:?} blocked");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    assert_eq!(status.code(), Some(2), "{args:?} {env:?}: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn unusable_files_and_addresses_are_one_line_errors_at_once() {
    let dir = scratch("badfiles");
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let fifo = fifo.to_str().expect("utf8");
    let name = ["--service-name", "it-bad"];
    for (args, env, needle) in [
        (
            &name[..],
            &[("CONSUL_HTTP_TOKEN_FILE", "/dev/zero")][..],
            "CONSUL_HTTP_TOKEN_FILE /dev/zero: is a character device",
        ),
        (
            &name[..],
            &[("CONSUL_HTTP_TOKEN_FILE", fifo)][..],
            "is a FIFO; name a regular file",
        ),
        (
            &["--service-file", "/dev/zero"][..],
            &[][..],
            "--service-file /dev/zero: is a character device",
        ),
        (
            &["--service-file", fifo][..],
            &[][..],
            "is a FIFO; name a regular file",
        ),
        (
            &["--service-name", "it-bad", "--consul-addr", "[::1"][..],
            &[][..],
            "CONSUL_HTTP_ADDR=[::1: unclosed [ in an IPv6 address",
        ),
        (
            &name[..],
            &[("CONSUL_HTTP_SSL", "maybe")][..],
            "CONSUL_HTTP_SSL=maybe: not a boolean",
        ),
    ] {
        let err = refused(args, env);
        assert!(err.contains(needle), "{args:?} {env:?}: {err}");
    }
}

#[cfg(not(feature = "https"))]
#[test]
fn the_plain_build_refuses_an_https_agent_naming_the_tls_build() {
    let err = refused(
        &[
            "--service-name",
            "it-bad",
            "--consul-addr",
            "https://127.0.0.1:8501",
        ],
        &[],
    );
    assert!(err.contains("the plain build, without TLS"), "{err}");
}

#[cfg(feature = "https")]
mod tls {
    use super::*;
    use dev_agent::TlsFiles;

    /// A verify_incoming agent with its certificates, and the microinit environment that reaches it.
    fn agent(name: &str) -> (DevAgent, TlsFiles, String, PathBuf) {
        let dir = scratch(name);
        let tls = TlsFiles::create(&dir.join("tls"));
        let port = dev_agent::free_port();
        let agent = DevAgent::start_tls(&tls, port);
        (agent, tls, format!("https://127.0.0.1:{port}"), dir)
    }

    fn s(p: &std::path::Path) -> &str {
        p.to_str().expect("utf8")
    }

    #[test]
    fn mtls_with_a_server_name_registers_and_deregisters() {
        let (agent, tls, addr, dir) = agent("mtls");
        let env = [
            ("CONSUL_CACERT", s(&tls.ca)),
            ("CONSUL_CLIENT_CERT", s(&tls.client_cert)),
            ("CONSUL_CLIENT_KEY", s(&tls.client_key)),
            // The address names 127.0.0.1; the name to verify is the agent's standard one.
            ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
        ];
        let run = Run::start(
            &dir,
            &addr,
            "it-mtls-1",
            &["--service-name", "it-mtls"],
            &env,
        );
        wait_until("it-mtls passing over mTLS", SOON, || {
            passing(&agent, "it-mtls")
        });
        run.stop_app();
        assert_eq!(run.wait(SOON).code(), Some(0));
        assert!(agent.service("it-mtls-1", None).is_none());
    }

    #[test]
    fn a_wrong_ca_a_wrong_server_name_or_no_client_certificate_is_refused_cleanly() {
        let (agent, tls, addr, dir) = agent("tlsbad");
        let client = [
            ("CONSUL_CLIENT_CERT", s(&tls.client_cert)),
            ("CONSUL_CLIENT_KEY", s(&tls.client_key)),
        ];
        for (extra, needle) in [
            (
                ("CONSUL_CACERT", s(&tls.wrong_ca)),
                "invalid peer certificate",
            ),
            (
                ("CONSUL_TLS_SERVER_NAME", "server.dc2.consul"),
                "invalid peer certificate",
            ),
        ] {
            let mut env = client.to_vec();
            if extra.0 != "CONSUL_CACERT" {
                env.push(("CONSUL_CACERT", s(&tls.ca)));
            }
            env.push(extra);
            let run = Run::start(
                &dir,
                &addr,
                "it-tlsbad-1",
                &["--service-name", "it-tlsbad", "--consul-required"],
                &env,
            );
            assert_eq!(run.wait(SOON).code(), Some(125), "{extra:?}");
            let err = run_stderr(&dir);
            assert!(err.contains(needle), "{extra:?}: {err}");
            assert!(agent.service("it-tlsbad-1", None).is_none());
        }
        // Right CA, no client certificate: the agent (verify_incoming) refuses the handshake.
        let run = Run::start(
            &dir,
            &addr,
            "it-tlsbad-1",
            &["--service-name", "it-tlsbad", "--consul-required"],
            &[("CONSUL_CACERT", s(&tls.ca))],
        );
        assert_eq!(run.wait(SOON).code(), Some(125));
        assert!(agent.service("it-tlsbad-1", None).is_none());
    }

    #[test]
    fn ssl_verify_false_reaches_the_agent_without_a_ca_and_says_so() {
        let (agent, tls, addr, dir) = agent("noverify");
        let env = [
            ("CONSUL_HTTP_SSL_VERIFY", "false"),
            ("CONSUL_CLIENT_CERT", s(&tls.client_cert)),
            ("CONSUL_CLIENT_KEY", s(&tls.client_key)),
        ];
        let run = Run::start(
            &dir,
            &addr,
            "it-noverify-1",
            &["--service-name", "it-noverify"],
            &env,
        );
        wait_until("it-noverify passing", SOON, || {
            passing(&agent, "it-noverify")
        });
        wait_stderr(
            &run,
            "the warning",
            "CONSUL_HTTP_SSL_VERIFY=false: the agent's certificate is not verified",
        );
        run.stop_app();
        assert_eq!(run.wait(SOON).code(), Some(0));
        assert!(agent.service("it-noverify-1", None).is_none());
    }
}

/// Registrations microinit reports in its log (every one is logged at info).
fn registrations(log: &str) -> usize {
    log.matches("consul: registered service").count()
}

#[test]
fn two_replicas_with_one_hostname_and_different_ports_are_two_instances() {
    let agent = DevAgent::start();
    // Both share this machine's hostname, as replicas with --network host do; no --service-id.
    let runs: Vec<Run> = ["8001", "8002"]
        .iter()
        .map(|port| {
            let dir = scratch(&format!("replica-{port}"));
            // Nothing listens on the port: readiness would otherwise wait for it.
            let args = [
                "--service-name",
                "it-replica",
                "--service-port",
                port,
                "--ready",
                "immediate",
            ];
            Run::start(&dir, &agent.addr(), "", &args, &[])
        })
        .collect();
    wait_until("both replicas passing", SOON, || {
        agent.passing_instances("it-replica") == 2
    });
    // Each app is told its own ID, the one it is registered under.
    let ids: Vec<String> = runs
        .iter()
        .map(|r| std::fs::read_to_string(r.dir.join("service_id")).unwrap_or_default())
        .collect();
    assert_ne!(ids[0], ids[1]);
    for id in &ids {
        assert!(agent.service(id, None).is_some(), "{id:?} not registered");
    }
    let mut runs = runs.into_iter();
    let first = runs.next().expect("first replica");
    first.stop_app();
    assert_eq!(first.wait(SOON).code(), Some(0));
    assert_eq!(
        agent.passing_instances("it-replica"),
        1,
        "stopping one replica must leave the other registered"
    );
    for r in runs {
        r.stop_app();
        assert_eq!(r.wait(SOON).code(), Some(0));
    }
    assert_eq!(agent.passing_instances("it-replica"), 0);
}

/// Sockets connected from 127.0.0.1 to `port` on 127.0.0.1 (microinit's, not the tests' own, which come from
/// 127.0.0.2), in any state but TIME-WAIT: a call given up on and closed stays in FIN-WAIT while the stalled
/// agent holds its end, so every request still waiting at the agent is counted.
fn connections_to(port: &str) -> usize {
    let port: u16 = port.parse().expect("agent port");
    let remote = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 3 && f[1].starts_with("0100007F:") && f[2] == remote && f[3] != "06")
        .count()
}

#[test]
fn a_heartbeat_that_times_out_is_retried_as_a_heartbeat_not_a_registration() {
    let agent = DevAgent::start();
    let dir = scratch("stall");
    let run = Run::start(
        &dir,
        &agent.addr(),
        "it-stall-1",
        &["--service-name", "it-stall"],
        &[],
    );
    wait_until("it-stall passing", SOON, || passing(&agent, "it-stall"));
    // Heartbeats are due every ~2 s (TTL 4 s): a 5 s stall makes at least one time out (800 ms per call).
    // Retried while it still waited, they would pile up at the agent, which executes them all once it runs
    // again: at most one request of an instance may wait there.
    agent.signal(nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(5));
    let waiting = connections_to(agent.addr().rsplit(':').next().unwrap_or(""));
    agent.signal(nix::sys::signal::Signal::SIGCONT);
    assert_eq!(
        waiting, 1,
        "requests of one instance waiting at the stalled agent"
    );
    wait_until("a heartbeat failure in the log", SOON, || {
        run.log().contains("/v1/agent/check/update/")
    });
    wait_until("passing again after the stall", SOON, || {
        agent.check_status("microinit:it-stall-1", None).as_deref() == Some("passing")
    });
    // One more heartbeat period: a late re-registration would show up by now.
    std::thread::sleep(Duration::from_secs(2));
    let log = run.log();
    assert_eq!(
        registrations(&log),
        1,
        "the service still existed: no re-registration expected\n{log}"
    );
    run.stop_app();
    assert_eq!(run.wait(SOON).code(), Some(0));
    assert!(agent.service("it-stall-1", None).is_none());
}

/// A stalled agent, as microinit sees it, in front of a real one: while holding, registration requests are
/// read and kept unanswered (microinit times out and gives up on them); everything else passes through.
/// `replay` then hands the kept requests to the agent, as a stalled agent executes its backlog late.
struct StallingProxy {
    addr: String,
    held: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl StallingProxy {
    fn start(agent: &str) -> StallingProxy {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = l.local_addr().expect("proxy addr").to_string();
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (agent, keep) = (agent.to_string(), held.clone());
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let (agent, keep) = (agent.clone(), keep.clone());
                std::thread::spawn(move || {
                    let req = read_request(&mut c);
                    if req.starts_with(b"PUT /v1/agent/service/register") {
                        keep.lock().expect("held").push(req);
                        std::thread::sleep(Duration::from_secs(5)); // never answered in time
                        return;
                    }
                    if let Ok(mut a) = std::net::TcpStream::connect(&agent) {
                        let mut resp = Vec::new();
                        let _ = a.write_all(&with_close(&req));
                        let _ = a.read_to_end(&mut resp);
                        let _ = c.write_all(&resp);
                    }
                });
            }
        });
        StallingProxy { addr, held }
    }

    /// Send every kept request to the agent now; returns how many.
    fn replay(&self, agent: &str) -> usize {
        use std::io::{Read, Write};
        let held = std::mem::take(&mut *self.held.lock().expect("held"));
        for req in &held {
            let mut a = std::net::TcpStream::connect(agent).expect("connect agent");
            a.write_all(&with_close(req)).expect("replay");
            let _ = a.read_to_end(&mut Vec::new());
        }
        held.len()
    }
}

/// One HTTP/1.1 request: headers, then Content-Length bytes of body.
fn read_request(c: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return buf;
            }
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The request with `Connection: close`, so the agent ends the answer by closing.
fn with_close(req: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(req);
    text.replacen("\r\n", "\r\nConnection: close\r\n", 1)
        .into_bytes()
}

#[test]
fn a_registration_replayed_after_the_deregistration_never_shows_passing() {
    let agent = DevAgent::start();
    let proxy = StallingProxy::start(&agent.addr());
    let dir = scratch("replay");
    let run = Run::start(
        &dir,
        &proxy.addr,
        "it-replay-1",
        &["--service-name", "it-replay"],
        &[],
    );
    wait_until("a registration given up on", SOON, || {
        run.log().contains("/v1/agent/service/register")
    });
    run.sigterm();
    assert_eq!(run.wait(SOON).code(), Some(0));
    // The agent executes the registrations microinit gave up on, after the deregistration.
    assert!(proxy.replay(&agent.addr()) > 0, "nothing to replay");
    assert!(
        agent.service("it-replay-1", None).is_some(),
        "the replayed registration did not reach the agent"
    );
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let st = agent.check_status("microinit:it-replay-1", None);
        assert_eq!(
            st.as_deref(),
            Some("critical"),
            "a replayed registration must leave a stopped instance critical (Consul reaps it)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_missed_deregistration_bound_says_what_consul_will_do() {
    let agent = DevAgent::start();
    let dir = scratch("missed");
    let run = Run::start(
        &dir,
        &agent.addr(),
        "it-missed-1",
        // The app's SIGTERM trap asks the stalled agent and hangs: the opt-in stop timeout ends it.
        &["--service-name", "it-missed", "--stop-timeout", "500ms"],
        &[],
    );
    wait_until("it-missed passing", SOON, || passing(&agent, "it-missed"));
    agent.signal(nix::sys::signal::Signal::SIGSTOP);
    run.sigterm();
    let log_dir = run.dir.clone();
    run.wait(SOON);
    agent.signal(nix::sys::signal::Signal::SIGCONT);
    let log = std::fs::read_to_string(log_dir.join("stderr")).unwrap_or_default();
    assert!(
        log.contains("the agent did not answer within the deregistration bound (2s")
            && log.contains("its TTL check turns critical in")
            && log.contains("Consul removes the service 1m after it turned critical"),
        "the missed bound must be explained\n{log}"
    );
    assert!(!log.contains("will reap"), "{log}");
}

#[test]
fn five_hundred_instances_behind_one_address_all_pass() {
    // More than Consul's 200 connections per client address (http_max_conns_per_client): no instance holds
    // one while idle. MICROINIT_TEST_INSTANCES changes the count.
    let instances: usize = std::env::var("MICROINIT_TEST_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    // At info level, as a production agent logs: a dev agent logs at debug, and Consul 1.8 then writes one
    // line for every service and check it holds on each sync, which every registration and every change of
    // a check's status triggers. With 500 instances that is ~1 000 lines per change (585 MB in 2 minutes),
    // and on a loaded machine the agent's CPU went to its log instead of its API (395 of 500 passing after
    // 120 s at debug level; README, "Connections").
    let agent = DevAgent::start_with(&["-log-level", "info"]);
    let dir = scratch("many");
    let t0 = Instant::now();
    let mut children: Vec<Child> = (0..instances)
        .map(|i| {
            // Not PID 1 here: 500 PID namespaces add nothing to what is measured (the agent's side).
            Command::new(microinit_bin())
                .args(["--consul-addr", &agent.addr(), "--service-name", "it-many"])
                .args([
                    "--service-port",
                    &(20000 + i).to_string(),
                    "--ready",
                    "immediate",
                ])
                .arg("--socket")
                .arg(dir.join(format!("ctl-{i}.sock")))
                .args(["--no-runtime-check", "--", "sleep", "1000"])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("stderr-{i}"))).expect("stderr log"))
                .spawn()
                .expect("spawn microinit")
        })
        .collect();
    let mut passing = 0;
    let all = (|| {
        // A bound that proves no hang on a loaded machine running the other tests in parallel: 120 s for 500,
        // in proportion for another count (alone, 500 take 7–15 s here; the issue's target is 60 s for 250).
        let deadline = Instant::now() + Duration::from_millis(240 * instances as u64);
        while Instant::now() < deadline {
            passing = agent.passing_instances("it-many");
            if passing == instances {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    })();
    let took = t0.elapsed();
    // Stopped in waves of 25, as a rolling update would: each wave's deregistrations fit the agent's pace
    // (all of them at once is the mass-stop case, measured by scripts/cluster-e2e.sh).
    for wave in children.chunks_mut(25) {
        for c in wave.iter() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for c in wave.iter_mut() {
            let _ = c.wait();
        }
    }
    assert!(all, "only {passing} of {instances} passing after {took:?}");
    eprintln!("{instances} instances passing after {took:?}");
    // Every instance deregistered, or (a loaded agent) said exactly that it did not get an answer in time.
    let (_, left) = agent.get("/v1/agent/services");
    let left: serde_json::Value = serde_json::from_str(&left).unwrap_or_default();
    let left = left.as_object().cloned().unwrap_or_default();
    for id in left.keys().filter(|id| id.starts_with("it-many-")) {
        let port: usize = id
            .rsplit('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let log =
            std::fs::read_to_string(dir.join(format!("stderr-{}", port.saturating_sub(20000))))
                .unwrap_or_default();
        assert!(
            log.contains("did not answer within the deregistration bound"),
            "{id} still registered after SIGTERM and no word about it:\n{log}"
        );
    }
}

/// Slow (about 2.5 minutes: Consul's own 1m minimum plus its 30 s reaper), so not in the default run:
/// `cargo test --test consul -- --ignored`.
#[test]
#[ignore]
fn an_app_kept_down_is_removed_by_consul_once_and_not_registered_again_in_a_loop() {
    let agent = DevAgent::start();
    let dir = scratch("churn");
    std::fs::write(dir.join("stop"), "").expect("touch stop"); // the app exits 1 at once, every time
    let never = dev_agent::free_port().to_string();
    let run = Run::start(
        &dir,
        &agent.addr(),
        "it-churn-1",
        &[
            "--service-name",
            "it-churn",
            "--restart",
            "always",
            "--ready",
            &format!("tcp:{never}"),
            "--deregister-after",
            "1m",
        ],
        &[("EXIT_CODE", "1")],
    );
    wait_until("registered (critical)", SOON, || {
        agent.service("it-churn-1", None).is_some()
    });
    wait_until(
        "Consul's reaper removing it",
        Duration::from_secs(150),
        || run.log().contains("Consul removed service"),
    );
    // Past at least one more restart (backoff caps at 30 s): a churn loop would register it again.
    std::thread::sleep(Duration::from_secs(40));
    let log = run.log();
    assert_eq!(registrations(&log), 1, "{log}");
    assert!(agent.service("it-churn-1", None).is_none());
    assert!(
        log.contains("because \"app exit code 1; restarting\"") || log.contains("not ready yet"),
        "the warning names the real cause\n{log}"
    );
    run.sigterm();
    run.wait(SOON);
}

#[test]
fn two_replicas_from_one_service_file_are_two_instances_at_their_own_addresses() {
    let agent = DevAgent::start();
    let shared = scratch("svcfile");
    let file = shared.join("svc.json");
    // No id, no address: what two replicas of one image would carry.
    std::fs::write(&file, r#"{"service": {"name": "it-file", "port": 8080}}"#).expect("write");
    let file = file.to_string_lossy().to_string();
    let runs: Vec<Run> = ["replica-a", "replica-b"]
        .iter()
        .map(|host| {
            let dir = scratch(&format!("svcfile-{host}"));
            let args = [
                "--service-file",
                file.as_str(),
                "--service-interface",
                "lo",
                "--ready",
                "immediate",
            ];
            Run::start_on_host(Some(host), &dir, &agent.addr(), "", &args, &[])
        })
        .collect();
    wait_until("both replicas passing", SOON, || {
        agent.passing_instances("it-file") == 2
    });
    for (run, host) in runs.iter().zip(["replica-a", "replica-b"]) {
        let id = std::fs::read_to_string(run.dir.join("service_id")).expect("the app got its ID");
        assert!(id.starts_with(&format!("it-file-{host}")), "{id}");
        let s = agent.service(&id, None).expect("registered under that ID");
        assert_eq!(
            s["Address"], "127.0.0.1",
            "the address of --service-interface"
        );
    }
    let mut runs = runs.into_iter();
    let first = runs.next().expect("first");
    first.stop_app();
    assert_eq!(first.wait(SOON).code(), Some(0));
    assert_eq!(
        agent.passing_instances("it-file"),
        1,
        "stopping one replica must keep the other"
    );
    for r in runs {
        r.stop_app();
        r.wait(SOON);
    }
}
