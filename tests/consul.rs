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
        let port = agent_addr.rsplit(':').next().expect("port");
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(microinit_bin())
            .args([
                "--consul-addr",
                agent_addr,
                "--service-id",
                id,
                "--check-ttl",
                "4s",
            ])
            .args(args)
            .args(["--", "bash", "-c", APP, "app"])
            .arg(dir)
            .args([port, id])
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare (needs root)");
        Run {
            unshare,
            dir: dir.clone(),
        }
    }

    fn stop_app(&self) {
        std::fs::write(self.dir.join("stop"), "").expect("touch stop");
    }

    /// microinit's PID in our namespace: the only child of unshare.
    fn microinit_pid(&self) -> i32 {
        let children = format!("/proc/{0}/task/{0}/children", self.unshare.id());
        let mut pid = 0;
        wait_until("microinit forked by unshare", SOON, || {
            pid = std::fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
                .unwrap_or(0);
            pid > 0
        });
        pid
    }

    fn wait(mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.unshare.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.unshare.kill();
                panic!("microinit did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
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
    let pid = run.microinit_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM to microinit");
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
