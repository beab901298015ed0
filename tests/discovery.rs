//! Service discovery end to end (issue #11): the static binary as PID 1 of a fresh PID namespace, real
//! `consul agent -dev`s on loopback, the sigrec helper as the app (it records every signal it gets).

mod common;
#[path = "common/consul.rs"]
mod dev_agent;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, exit_code, helper, recorded, tempdir, wait_for, wait_ready, Pid1};
use dev_agent::DevAgent;

const SOON: Duration = Duration::from_secs(15);

/// microinit as PID 1 running sigrec; its control socket and the recorder's file.
struct App {
    pid1: Pid1,
    sock: PathBuf,
    rec: PathBuf,
}

impl App {
    /// `microinit ARGS -- sigrec FILE` as PID 1 (not waiting for the recorder: it may be held back).
    fn start(args: &[&str], env: &[(&str, &str)]) -> App {
        let dir = tempdir("disc");
        let sock = dir.join("ctl.sock");
        let rec = dir.join("sig");
        let sigrec = helper("sigrec");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--", sigrec.to_str().unwrap(), rec.to_str().unwrap()]);
        let mut env = env.to_vec();
        env.push(("MICROINIT_SOCKET", sock.to_str().unwrap()));
        App {
            pid1: Pid1::start(&all, &env),
            sock,
            rec,
        }
    }

    fn started(&self) -> bool {
        Path::new(&format!("{}.ready", self.rec.display())).exists()
    }

    /// `microinit SUBCOMMAND…` against this PID 1's socket: (exit code, stdout).
    fn client(&self, args: &[&str]) -> (i32, String) {
        client_at(&self.sock, args)
    }

    fn status(&self) -> serde_json::Value {
        let (code, out) = self.client(&["status", "--json"]);
        if code != 0 {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
    }

    fn health(&self) -> (i32, String) {
        health_at(&self.sock)
    }

    fn hups(&self) -> usize {
        recorded(&self.rec)
            .iter()
            .filter(|s| **s == libc::SIGHUP)
            .count()
    }

    /// Wait until the app recorded `n` SIGHUPs; fails if it got more.
    fn await_hups(&self, n: usize, why: &str) {
        let got = wait_for(SOON, || (self.hups() >= n).then(|| self.hups()));
        assert_eq!(got, Some(n), "SIGHUPs after {why}");
    }
}

/// `microinit SUBCOMMAND…` against the control socket `sock`: (exit code, stdout).
fn client_at(sock: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin())
        .args(args)
        .env("MICROINIT_SOCKET", sock)
        .output()
        .expect("run the client");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn health_at(sock: &Path) -> (i32, String) {
    client_at(sock, &["health"])
}

/// A watch on `web` that sends the app SIGHUP on every change.
fn hup_watch(agent: &DevAgent) -> App {
    App::start(
        &[
            "--watch",
            "web",
            "--on-change",
            "signal:HUP",
            "--consul-addr",
            &agent.addr(),
        ],
        &[],
    )
}

fn await_status(app: &App, what: &str, cond: impl Fn(&serde_json::Value) -> bool) {
    wait_for(SOON, || cond(&app.status()).then_some(()))
        .unwrap_or_else(|| panic!("status never showed {what}: {:#}", app.status()));
}

#[test]
fn the_app_starts_only_after_its_upstream_passes_and_status_shows_what_is_awaited() {
    let agent = DevAgent::start();
    let app = App::start(
        &["--wait-for", "consul:db:2", "--consul-addr", &agent.addr()],
        &[],
    );
    await_status(&app, "the wait for consul:db:2", |s| {
        s["app"]["state"]
            .as_str()
            .is_some_and(|t| t.starts_with("waiting for every upstream"))
            && s["discovery"]["wait_for"][0]["target"] == "consul:db:2"
            && s["discovery"]["wait_for"][0]["detail"] == "0 of 2 passing"
    });
    let (code, line) = app.health();
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("waiting for upstreams: consul:db:2"),
        "{line}"
    );

    agent.register_instance("db", "db-1", 5432, "passing");
    agent.register_instance("db", "db-2", 5433, "critical");
    await_status(&app, "1 of 2 passing", |s| {
        s["discovery"]["wait_for"][0]["detail"] == "1 of 2 passing"
    });
    assert!(
        !app.started(),
        "the app started with one of two instances passing"
    );

    agent.set_instance_check("db-2", "passing", "");
    wait_ready(&app.rec);
    await_status(&app, "the app running", |s| {
        s["app"]["state"] == "running" && s["discovery"]["waiting"] == false
    });
}

#[test]
fn a_stop_during_the_wait_exits_143_at_once_without_starting_the_app() {
    let agent = DevAgent::start();
    let app = App::start(
        &["--wait-for", "consul:never", "--consul-addr", &agent.addr()],
        &[],
    );
    await_status(&app, "the wait", |s| {
        s["app"]["state"]
            .as_str()
            .is_some_and(|t| t.starts_with("waiting for every upstream"))
    });
    let t = Instant::now();
    app.pid1.signal(libc::SIGTERM);
    let started = app.started();
    let (st, err) = app.pid1.wait(SOON);
    assert_eq!(exit_code(st), 143, "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the stop took {:?}",
        t.elapsed()
    );
    assert!(!started, "the app started");
}

#[test]
fn the_wait_times_out_with_124_naming_what_is_still_missing() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let dir = tempdir("disc-file");
    let present = dir.join("present");
    std::fs::write(&present, "").expect("write");
    let tcp = format!("tcp:127.0.0.1:{closed}");
    // The env twins: blank-separated targets.
    let targets = format!("{tcp} file:{} file:/nonexistent/ready", present.display());
    let app = App::start(
        &[],
        &[
            ("MICROINIT_WAIT_FOR", &targets),
            ("MICROINIT_WAIT_TIMEOUT", "1s"),
        ],
    );
    let (st, err) = app.pid1.wait(SOON);
    assert_eq!(exit_code(st), 124, "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(last.contains(&tcp) && last.contains("refused"), "{err}");
    assert!(last.contains("file:/nonexistent/ready"), "{err}");
    assert!(last.contains("--wait-timeout"), "{err}");
    assert!(
        !last.contains("present"),
        "an up target is not missing: {err}"
    );
}

#[test]
fn tcp_http_and_file_targets_hold_the_app_until_each_is_up() {
    let dir = tempdir("disc-probes");
    let flag = dir.join("flag");
    let http = TcpListener::bind("127.0.0.1:0").expect("bind");
    let http_port = http.local_addr().expect("addr").port();
    // Answers 503 until the flag file exists, then 200.
    let flag2 = flag.clone();
    std::thread::spawn(move || {
        for mut s in http.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let status = if flag2.exists() { "200 OK" } else { "503 Busy" };
            let _ = s.write_all(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes());
        }
    });
    let tcp_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let url = format!("http://127.0.0.1:{http_port}/ready");
    let tcp = format!("tcp:127.0.0.1:{tcp_port}");
    let file = format!("file:{}", flag.display());
    let app = App::start(
        &["--wait-for", &url, "--wait-for", &tcp, "--wait-for", &file],
        &[],
    );
    await_status(&app, "503 from the http target", |s| {
        s["discovery"]["wait_for"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("503"))
    });
    std::fs::write(&flag, "").expect("flag");
    await_status(&app, "http and file up", |s| {
        s["discovery"]["wait_for"][0]["up"] == true && s["discovery"]["wait_for"][2]["up"] == true
    });
    assert!(!app.started(), "started before the tcp target listened");
    let _listener = TcpListener::bind(("127.0.0.1", tcp_port)).expect("bind the tcp target");
    wait_ready(&app.rec);
}

#[test]
fn a_watch_signals_the_app_when_an_instance_registers_or_goes_critical_and_not_otherwise() {
    let agent = DevAgent::start();
    agent.register_instance("web", "web-1", 8001, "passing");
    let app = hup_watch(&agent);
    wait_ready(&app.rec);
    await_status(&app, "the watch's first answer", |s| {
        s["discovery"]["watches"][0]["value"][0]["port"] == 8001
    });
    assert_eq!(
        app.hups(),
        0,
        "the first answer is the baseline, not a change"
    );

    agent.register_instance("web", "web-2", 8002, "passing");
    app.await_hups(1, "a second instance registered");

    // Not changes of the passing set: a check's output, another service, a critical newcomer.
    agent.set_instance_check("web-1", "passing", "still fine");
    agent.register_instance("other", "other-1", 9000, "passing");
    agent.register_instance("web", "web-3", 8003, "critical");
    agent.set_instance_check("web-2", "critical", "down");
    app.await_hups(2, "an instance went critical");
    await_status(&app, "one passing instance", |s| {
        s["discovery"]["watches"][0]["value"]
            .as_array()
            .is_some_and(|v| v.len() == 1)
            && s["discovery"]["changes"] == 2
    });
    assert_eq!(app.hups(), 2, "no-op updates signalled the app");
}

#[test]
fn a_watch_resumes_after_the_agent_restarts() {
    let mut agent = DevAgent::start();
    let app = hup_watch(&agent);
    wait_ready(&app.rec);
    await_status(&app, "the first answer", |s| {
        s["discovery"]["watches"][0]["value"].is_array()
    });
    agent.restart();
    agent.register_instance("web", "web-1", 8001, "passing");
    app.await_hups(1, "an instance registered with the restarted agent");
    await_status(&app, "the watch healthy again", |s| {
        s["discovery"]["watches"][0]["error"].is_null()
    });
}

#[test]
fn on_change_exec_runs_a_program_without_a_shell_and_the_watch_file_is_replaced() {
    let agent = DevAgent::start();
    agent.register_instance("web", "web-1", 8001, "passing");
    let dir = tempdir("disc-exec");
    let out = dir.join("seen");
    let list = dir.join("upstreams.txt");
    // The JSON argv form (no shell is involved in starting it; this program happens to be sh, to append
    // the list it was handed in MICROINIT_WATCH_WEB to a file).
    let exec = format!(
        r#"exec:["/bin/sh","-c","printf '%s\n' \"$MICROINIT_WATCH_WEB\" >> {}"]"#,
        out.display()
    );
    let app = App::start(
        &[
            "--watch",
            "web",
            "--on-change",
            &exec,
            "--watch-file",
            list.to_str().unwrap(),
            "--consul-addr",
            &agent.addr(),
        ],
        &[],
    );
    // With --watch-file the app starts once the file holds the first answer.
    wait_ready(&app.rec);
    assert_eq!(std::fs::read_to_string(&list).unwrap(), "127.0.0.1:8001\n");
    agent.register_instance("web", "web-2", 8002, "passing");
    let seen = wait_for(SOON, || std::fs::read_to_string(&out).ok())
        .expect("the on-change program never ran");
    assert_eq!(seen, "127.0.0.1:8001,127.0.0.1:8002\n");
    assert_eq!(
        std::fs::read_to_string(&list).unwrap(),
        "127.0.0.1:8001\n127.0.0.1:8002\n"
    );
    assert_eq!(app.hups(), 0, "exec mode sends no signal");
}

#[test]
fn an_nginx_include_from_the_line_template_and_its_env_twins() {
    let agent = DevAgent::start();
    let dir = tempdir("disc-nginx");
    let conf = dir.join("upstreams.conf");
    let app = App::start(
        &[
            "--watch",
            "web",
            "--on-change",
            "signal:HUP",
            "--watch-file",
            conf.to_str().unwrap(),
            "--consul-addr",
            &agent.addr(),
        ],
        &[
            ("MICROINIT_WATCH_FILE_LINE", "server {address}:{port};"),
            ("MICROINIT_WATCH_FILE_EMPTY", "server 127.0.0.1:9 down;"),
        ],
    );
    // No instance yet: the app starts with a file nginx accepts (an upstream needs a server).
    wait_ready(&app.rec);
    let read = || std::fs::read_to_string(&conf).unwrap_or_default();
    assert_eq!(read(), "server 127.0.0.1:9 down;\n");
    agent.register_instance("web", "web-1", 8001, "passing");
    app.await_hups(1, "the first instance");
    assert_eq!(read(), "server 127.0.0.1:8001;\n");
    // An instance registered with an address that would end the directive and add one is left out.
    let (st, _) = agent.request(
        "PUT",
        "/v1/agent/service/register",
        None,
        Some(r#"{"ID":"evil","Name":"web","Address":"10.0.0.9; }\nserver 127.6.6.6","Port":80}"#),
    );
    assert_eq!(st, 200);
    app.await_hups(2, "the second instance");
    assert_eq!(read(), "server 127.0.0.1:8001;\n");
}

#[test]
fn health_is_1_during_a_crash_loop_and_its_backoff() {
    let dir = tempdir("disc-crash");
    let sock = dir.join("ctl.sock");
    let p = Pid1::start(
        &[
            "--restart",
            "on-failure",
            "--",
            "sh",
            "-c",
            "sleep 0.2; exit 3",
        ],
        &[("MICROINIT_SOCKET", sock.to_str().unwrap())],
    );
    let health = || health_at(&sock);
    // The first run is healthy until it fails; from its first crash on, the app is crash-looping.
    wait_for(SOON, || {
        let (_, line) = health();
        line.contains("restarting").then_some(())
    })
    .expect("the app never failed");
    let mut reasons = Vec::new();
    let end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < end {
        // Before PID 1 bound its socket too: every answer, even "no answer", is unhealthy.
        let (code, line) = health();
        assert_eq!(code, 1, "healthy during a crash loop: {line}");
        reasons.push(line);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        reasons.iter().any(|r| r.contains("crash loop")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not running (state: restarting)")),
        "{reasons:?}"
    );
    drop(p);
}

#[test]
fn health_is_0_once_the_app_is_ready_and_passing_in_consul() {
    let agent = DevAgent::start();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    // A shell-free HTTP readiness probe: the app is ready when GET /ready answers 2xx.
    let ready = format!("http://127.0.0.1:{port}/ready");
    let app = App::start(
        &[
            "--service-name",
            "api",
            "--service-id",
            "api-1",
            "--ready",
            &ready,
            "--consul-addr",
            &agent.addr(),
        ],
        &[],
    );
    wait_ready(&app.rec);
    let (code, line) = app.health();
    assert_eq!(code, 1, "healthy before ready: {line}");
    assert!(line.contains("not ready"), "{line}");
    let l = TcpListener::bind(("127.0.0.1", port)).expect("bind the app's port");
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
        }
    });
    let ok = wait_for(SOON, || {
        let (code, line) = app.health();
        (code == 0).then_some(line)
    })
    .expect("never healthy");
    assert!(ok.contains("passing in Consul"), "{ok}");
    assert_eq!(
        agent.check_status("microinit:api-1", None).as_deref(),
        Some("passing")
    );
}

#[test]
fn metrics_are_served_only_when_asked() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let app = App::start(&["--metrics", &addr], &[]);
    wait_ready(&app.rec);
    assert_eq!(app.client(&["signal", "HUP"]).0, 0);
    let scrape = || {
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.contains("microinit_signals_forwarded_total 1")
            .then_some(out)
    };
    let page = wait_for(SOON, scrape).expect("no metrics page with the forwarded signal");
    assert!(page.contains("microinit_app_up 1"), "{page}");

    let plain = App::start(&[], &[]);
    wait_ready(&plain.rec);
    assert!(
        listening_sockets(plain.pid1.host_pid).is_empty(),
        "microinit listens on TCP without --metrics"
    );
    assert_eq!(listening_sockets(app.pid1.host_pid).len(), 1);
}

/// Inodes of TCP sockets in LISTEN state that `pid` holds open.
fn listening_sockets(pid: i32) -> Vec<String> {
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            // st 0A is LISTEN; the inode is the 10th field.
            if f.get(3) == Some(&"0A") && f.get(9).is_some_and(|i| held.iter().any(|h| h == i)) {
                out.push(f[9].to_string());
            }
        }
    }
    out
}

#[test]
fn a_hook_given_as_a_json_argv_runs_without_a_shell() {
    let dir = tempdir("disc-argv");
    // A shell would split this name at the blank and the semicolon; an argv keeps it whole.
    let odd = dir.join("pre start;x");
    let hook = serde_json::json!(["touch", odd.to_str().unwrap()]).to_string();
    let app = App::start(&["--pre-start", &hook], &[]);
    wait_ready(&app.rec);
    assert!(
        odd.exists(),
        "the argv hook did not create {}",
        odd.display()
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "anything else was created"
    );
}

#[test]
fn an_app_is_ready_when_it_writes_a_line_to_its_notification_fd() {
    let agent = DevAgent::start();
    let dir = tempdir("disc-notify");
    let sock = dir.join("ctl.sock");
    let flag = dir.join("go");
    // s6 style: the app writes a line to fd 5 once it is ready.
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.02; done; echo ready >&5; exec sleep 100",
        flag.display()
    );
    let _p = Pid1::start(
        &[
            "--service-name",
            "api",
            "--service-id",
            "api-n",
            "--ready",
            "fd:5",
            "--consul-addr",
            &agent.addr(),
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[("MICROINIT_SOCKET", sock.to_str().unwrap())],
    );
    let health = || health_at(&sock);
    let not_ready = wait_for(SOON, || {
        let (code, line) = health();
        (code == 1 && line.contains("not ready")).then_some(())
    });
    assert!(
        not_ready.is_some(),
        "never reported not ready: {:?}",
        health()
    );
    // "Not ready" can be answered before the registration reached the agent: await the check, which
    // must be there critical (a registration starts critical) while the app has not written its line.
    let check = || agent.check_status("microinit:api-n", None);
    let registered = wait_for(SOON, check);
    assert_eq!(registered.as_deref(), Some("critical"));
    assert_eq!(health().0, 1, "ready before the app wrote its line");
    std::fs::write(&flag, "").expect("flag");
    let ok = wait_for(SOON, || (health().0 == 0).then_some(()));
    assert!(ok.is_some(), "never ready: {:?}", health());
    assert_eq!(check().as_deref(), Some("passing"));
}
