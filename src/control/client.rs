//! The client side of the control socket: `microinit status [--json]`, `signal SIG`, `restart`,
//! `maintenance on|off [--reason TEXT]`, run as `docker exec CONTAINER microinit …`.
//!
//! Owns: connecting with a time limit, one request/reply exchange (protocol in `control`), exit codes and the
//! human status table. Does not own: argument parsing (`cli`) nor anything PID 1 does.
//!
//! The status document PID 1 sends (every field is rendered; a missing one shows as "-"):
//! `{"microinit":{"version","pid","dialect"}, "app":{"pid","command":[..],"state","uptime_s","restarts",
//! "last_exit":{"code","signal","status"}|null}, "signals_forwarded", "zombies_reaped",
//! "runtime_check":{"ok","missing":[{"kind","path","needed_by","detail"}],..}|null,
//! "consul":{"agent","service_id","service_name","check_id","service_file","state","ready",
//! "check":{"status","output"},"last_heartbeat":{"unix","ok","error"}|null,"maintenance","maintenance_reason",
//! "last_error"}|null}` (`registration::Registration::status_json` and `RuntimeReport::to_json`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use serde_json::Value;

use crate::cli::ClientRequest;
use crate::control::server::{connect_nonblocking, Request};
use crate::init::signals::signal_name;

/// Exit codes of the client commands.
pub const EXIT_OK: i32 = 0;
/// PID 1 answered and refused or failed the command (including "permission denied").
pub const EXIT_FAILED: i32 = 1;
/// Nothing answers on the socket: not in a microinit container, or the wrong MICROINIT_SOCKET.
pub const EXIT_NO_SOCKET: i32 = 3;

/// Connect, send and receive must all fit in this.
const TIMEOUT: Duration = Duration::from_secs(5);
/// A reply larger than this is not from microinit.
const MAX_REPLY: u64 = 16 * 1024 * 1024;

/// Run one client command against the socket at `socket`; returns the process exit code.
pub fn client_main(cmd: ClientRequest, socket: &Path) -> i32 {
    let request = match &cmd {
        ClientRequest::Health => return super::health::health_main(socket),
        ClientRequest::Status { .. } => Request::Status,
        ClientRequest::Signal(sig) => Request::Signal(sig.clone()),
        ClientRequest::Restart => Request::Restart,
        ClientRequest::Maintenance { on, reason } => Request::Maintenance {
            on: *on,
            reason: reason.clone(),
        },
    };
    let reply = match call(socket, &request, TIMEOUT) {
        Ok(reply) => reply,
        Err((code, msg)) => {
            eprintln!("microinit: {msg}");
            return code;
        }
    };
    if reply.get("ok").and_then(Value::as_bool) != Some(true) {
        let msg = reply
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("PID 1 refused the command");
        eprintln!("microinit: {msg}");
        return EXIT_FAILED;
    }
    match cmd {
        ClientRequest::Status { json: true } => {
            println!("{:#}", reply.get("status").unwrap_or(&Value::Null));
        }
        ClientRequest::Status { json: false } => {
            print!(
                "{}",
                render_status(reply.get("status").unwrap_or(&Value::Null), unix_now())
            );
        }
        _ => println!(
            "{}",
            reply
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("done")
        ),
    }
    EXIT_OK
}

/// One exchange. The error is (exit code, one-line message).
pub(crate) fn call(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Value, (i32, String)> {
    let deadline = Instant::now() + timeout;
    let no_answer = || {
        format!(
            "microinit control socket at {} did not answer within {}s",
            socket.display(),
            timeout.as_secs_f64()
        )
    };
    let stream = connect(socket, deadline)?;
    let io_err = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            (EXIT_NO_SOCKET, no_answer())
        } else {
            (
                EXIT_FAILED,
                format!("control socket {}: {e}", socket.display()),
            )
        }
    };
    let mut line = request.to_json().to_string().into_bytes();
    line.push(b'\n');
    stream.set_nonblocking(false).map_err(io_err)?;
    stream
        .set_write_timeout(Some(remaining(deadline)))
        .map_err(io_err)?;
    let sent = (&stream).write_all(&line);
    // A refused peer's request is never read: PID 1 may have replied and closed before (or while) we wrote,
    // so read the reply even when the write failed, and only fall back to the write error.
    let reply = match (read_line(&stream, deadline), sent) {
        (Ok(reply), _) if !reply.is_empty() => reply,
        (Ok(_), Err(e)) | (Err(_), Err(e)) | (Err(e), Ok(())) => return Err(io_err(e)),
        (Ok(_), Ok(())) => {
            return Err((
                EXIT_FAILED,
                format!("control socket {} closed without a reply", socket.display()),
            ))
        }
    };
    let end = reply
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(reply.len());
    serde_json::from_slice(&reply[..end]).map_err(|e| {
        (
            EXIT_FAILED,
            format!(
                "control socket {} sent an unreadable reply: {e}",
                socket.display()
            ),
        )
    })
}

/// Read up to the first newline (or EOF). Stopping at the newline matters: a server that closes with our
/// request unread makes the kernel report ECONNRESET after its reply, instead of EOF.
fn read_line(stream: &UnixStream, deadline: Instant) -> std::io::Result<Vec<u8>> {
    let mut reply = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut limited = stream.take(MAX_REPLY);
    while !reply.contains(&b'\n') {
        // A per-read timeout alone would let a trickling peer stretch the total: recompute each time.
        stream.set_read_timeout(Some(remaining(deadline)))?;
        match limited.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(reply)
}

fn connect(socket: &Path, deadline: Instant) -> Result<UnixStream, (i32, String)> {
    loop {
        match connect_nonblocking(socket) {
            Ok(stream) => return Ok(stream),
            // The listen backlog is full (PID 1 is serving its maximum of clients): retry until the deadline.
            Err(Errno::EAGAIN) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(Errno::EACCES) | Err(Errno::EPERM) => {
                return Err((
                    EXIT_FAILED,
                    format!(
                        "permission denied on microinit control socket {}: only root or the user microinit runs as may use it",
                        socket.display()
                    ),
                ))
            }
            Err(_) => {
                return Err((
                    EXIT_NO_SOCKET,
                    format!(
                        "no microinit control socket at {} (is this running inside a microinit container? set MICROINIT_SOCKET)",
                        socket.display()
                    ),
                ))
            }
        }
    }
}

fn remaining(deadline: Instant) -> Duration {
    // A zero timeout means "block forever" to setsockopt: never pass it.
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The human table of `microinit status`. `now_unix` dates the last heartbeat.
pub(crate) fn render_status(s: &Value, now_unix: f64) -> String {
    let mi = &s["microinit"];
    let app = &s["app"];
    let mut rows: Vec<(&str, String)> = vec![
        (
            "microinit",
            format!(
                "{}, pid {}, dialect {}",
                text(&mi["version"]),
                text(&mi["pid"]),
                text(&mi["dialect"])
            ),
        ),
        ("app pid", text(&app["pid"])),
        ("command", command_line(&app["command"])),
        ("state", text(&app["state"])),
        (
            "uptime",
            app["uptime_s"]
                .as_f64()
                .map(human_duration)
                .unwrap_or_else(|| "-".into()),
        ),
        ("restarts", text(&app["restarts"])),
        ("last exit", last_exit(&app["last_exit"])),
        ("signals forwarded", text(&s["signals_forwarded"])),
        ("zombies reaped", text(&s["zombies_reaped"])),
        ("runtime check", runtime_check(&s["runtime_check"])),
    ];
    let consul = &s["consul"];
    if consul.is_object() {
        let check = &consul["check"];
        let mut maintenance = on_off(&consul["maintenance"]);
        if let Some(reason) = consul["maintenance_reason"].as_str() {
            maintenance.push_str(&format!(" ({reason})"));
        }
        rows.extend([
            ("consul agent", text(&consul["agent"])),
            ("service", text(&consul["service_name"])),
            ("service id", text(&consul["service_id"])),
        ]);
        if !consul["service_file"].is_null() {
            rows.push(("service file", text(&consul["service_file"])));
        }
        rows.extend([
            ("registration", text(&consul["state"])),
            ("ready", yes_no(&consul["ready"])),
            (
                "check",
                format!("{}: {}", text(&check["status"]), text(&check["output"])),
            ),
            (
                "last heartbeat",
                heartbeat(&consul["last_heartbeat"], now_unix),
            ),
            ("maintenance", maintenance),
            ("last error", text(&consul["last_error"])),
        ]);
    } else {
        rows.push(("consul", "not registering".into()));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// A scalar for the table: strings bare, null as "-", anything else as compact JSON.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn yes_no(v: &Value) -> String {
    match v {
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        other => text(other),
    }
}

/// `{"unix","ok","error"}` → "ok (4.0s ago)" / "failed (4.0s ago): why"; null → "none yet".
fn heartbeat(v: &Value, now_unix: f64) -> String {
    let Some(t) = v["unix"].as_f64() else {
        return "none yet".into();
    };
    let ago = human_duration((now_unix - t).max(0.0));
    match v["ok"].as_bool() {
        Some(true) => format!("ok ({ago} ago)"),
        _ => format!("failed ({ago} ago): {}", text(&v["error"])),
    }
}

fn on_off(v: &Value) -> String {
    match v {
        Value::Bool(true) => "on".into(),
        Value::Bool(false) => "off".into(),
        other => text(other),
    }
}

/// The argv, quoted where a shell would need it.
fn command_line(v: &Value) -> String {
    let Some(args) = v.as_array() else {
        return text(v);
    };
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            let a = a
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| a.to_string());
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect();
    if quoted.is_empty() {
        "-".into()
    } else {
        quoted.join(" ")
    }
}

fn last_exit(v: &Value) -> String {
    if !v.is_object() {
        return "-".into();
    }
    match (v["code"].as_i64(), v["signal"].as_i64()) {
        (_, Some(sig)) => format!(
            "killed by signal {sig} ({}), status {}",
            i32::try_from(sig).map_or_else(|_| "?".into(), signal_name),
            text(&v["status"])
        ),
        (Some(code), None) => format!("exit code {code}, status {}", text(&v["status"])),
        (None, None) => format!("status {}", text(&v["status"])),
    }
}

fn runtime_check(v: &Value) -> String {
    if !v.is_object() {
        return "not run".into();
    }
    // Each entry is {"kind","path",..}; the path is what a person looks for in the runtime volume.
    let missing: Vec<String> = v["missing"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match (m["path"].as_str(), m["kind"].as_str()) {
            (Some(p), Some(k)) => format!("{p} ({k})"),
            _ => text(m),
        })
        .collect();
    match (v["ok"].as_bool(), missing.is_empty()) {
        (Some(true), true) => "ok".into(),
        (_, false) => format!("FAILED, missing: {}", missing.join(", ")),
        (_, true) => "FAILED".into(),
    }
}

/// 42.3 → "42.3s", 3723 → "1h02m03s", 200000 → "2d07h33m".
fn human_duration(secs: f64) -> String {
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let s = secs as u64;
    let (d, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h) {
        (0, 0) => format!("{m}m{sec:02}s"),
        (0, _) => format!("{h}h{m:02}m{sec:02}s"),
        _ => format!("{d}d{h:02}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::server::testing::{serve_until, Recorder, TempDir};
    use crate::control::server::{ControlServer, Limits};
    use serde_json::json;
    use std::os::unix::net::UnixListener;

    fn full_status() -> Value {
        json!({
            "microinit": {"version": "0.1.0", "pid": 1, "dialect": "tini"},
            "app": {"pid": 7, "command": ["node", "server.js", "--name", "it's here"], "state": "running",
                    "uptime_s": 3723.4, "restarts": 2,
                    "last_exit": {"code": null, "signal": 15, "status": 143}},
            "signals_forwarded": 12, "zombies_reaped": 3,
            "runtime_check": {"ok": false, "missing": [
                {"kind": "interpreter", "path": "/lib/ld-musl-x86_64.so.1", "needed_by": "/opt/files/node", "detail": "x"},
                {"kind": "library", "path": "/opt/files/lib/libstdc++.so.6", "needed_by": null, "detail": "y"}]},
            "consul": {"agent": "http://127.0.0.1:8500", "service_id": "web-1", "service_name": "web",
                       "check_id": "microinit:web-1", "service_file": null, "state": "registered", "ready": true,
                       "check": {"status": "passing", "output": "microinit: app running (pid 7)"},
                       "last_heartbeat": {"unix": 1000, "ok": true, "error": null},
                       "maintenance": true, "maintenance_reason": "deploy 42", "last_error": null}
        })
    }

    #[test]
    fn status_table_shows_every_field() {
        let table = render_status(&full_status(), 1004.0);
        for expect in [
            "0.1.0, pid 1, dialect tini",
            "node server.js --name 'it'\\''s here'",
            "running",
            "1h02m03s",
            "killed by signal 15 (SIGTERM), status 143",
            "signals forwarded  12",
            "zombies reaped     3",
            "FAILED, missing: /lib/ld-musl-x86_64.so.1 (interpreter), /opt/files/lib/libstdc++.so.6 (library)",
            "consul agent       http://127.0.0.1:8500",
            "service            web\n",
            "service id         web-1",
            "registration       registered",
            "ready              yes",
            "check              passing: microinit: app running (pid 7)",
            "last heartbeat     ok (4.0s ago)",
            "maintenance        on (deploy 42)",
        ] {
            assert!(table.contains(expect), "{expect:?} missing from\n{table}");
        }
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("restarts ") && l.ends_with(" 2")),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("last error ") && l.ends_with(" -")),
            "{table}"
        );
    }

    #[test]
    fn status_table_heartbeat_states_and_service_file() {
        let mut s = full_status();
        s["consul"]["last_heartbeat"] = Value::Null;
        s["consul"]["service_file"] = json!("/etc/web.json");
        s["consul"]["maintenance"] = json!(false);
        s["consul"]["maintenance_reason"] = Value::Null;
        let table = render_status(&s, 1004.0);
        for expect in [
            "last heartbeat     none yet",
            "service file       /etc/web.json",
            "maintenance        off\n",
        ] {
            assert!(table.contains(expect), "{expect:?} missing from\n{table}");
        }
        s["consul"]["last_heartbeat"] =
            json!({"unix": 1000, "ok": false, "error": "consul agent unreachable"});
        let table = render_status(&s, 1064.0);
        assert!(
            table.contains("last heartbeat     failed (1m04s ago): consul agent unreachable"),
            "{table}"
        );
    }

    #[test]
    fn status_table_survives_nulls_and_missing_fields() {
        let s = json!({"microinit": {"version": "0.1.0", "pid": 1, "dialect": "microinit"},
                       "app": {"pid": null, "command": [], "state": "exited", "uptime_s": null, "restarts": 0,
                               "last_exit": {"code": 3, "signal": null, "status": 3}},
                       "runtime_check": null, "consul": null});
        let table = render_status(&s, 0.0);
        assert!(table.contains("exit code 3, status 3"), "{table}");
        assert!(table.contains("not registering"), "{table}");
        assert!(table.contains("runtime check      not run"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("zombies reaped") && l.ends_with(" -")),
            "{table}"
        );
        // Not even an object: still a table, never a panic.
        assert!(render_status(&Value::Null, 0.0).contains("state"));
    }

    #[test]
    fn durations_read_like_uptime() {
        assert_eq!(human_duration(42.34), "42.3s");
        assert_eq!(human_duration(61.0), "1m01s");
        assert_eq!(human_duration(3723.0), "1h02m03s");
        assert_eq!(human_duration(200_000.0), "2d07h33m");
    }

    #[test]
    fn no_socket_is_exit_3_with_one_clear_line() {
        let dir = TempDir::new("nosocket");
        let (code, msg) = call(&dir.sock(), &Request::Status, TIMEOUT).expect_err("nothing there");
        assert_eq!(code, EXIT_NO_SOCKET);
        assert_eq!(
            msg,
            format!(
                "no microinit control socket at {} (is this running inside a microinit container? set MICROINIT_SOCKET)",
                dir.sock().display()
            )
        );
        // A socket file nobody listens on (left by a dead PID 1) is the same case.
        drop(UnixListener::bind(dir.sock()).expect("bind"));
        assert_eq!(
            client_main(ClientRequest::Restart, &dir.sock()),
            EXIT_NO_SOCKET
        );
    }

    #[test]
    fn a_socket_that_never_answers_times_out_with_exit_3() {
        let dir = TempDir::new("mute");
        // Listening but never accepting: the connection sits in the backlog like with a hung PID 1.
        let _mute = UnixListener::bind(dir.sock()).expect("bind");
        let started = Instant::now();
        let (code, msg) =
            call(&dir.sock(), &Request::Status, Duration::from_millis(300)).expect_err("no answer");
        assert_eq!(code, EXIT_NO_SOCKET);
        assert!(msg.contains("did not answer"), "{msg}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the client must give up near its timeout"
        );
    }

    #[test]
    fn client_and_server_agree() {
        let dir = TempDir::new("agree");
        let mut server = ControlServer::bind_with(&dir.sock(), Limits::default()).expect("bind");
        let mut h = Recorder::default();
        let path = dir.sock();
        let client = std::thread::spawn(move || {
            let status = call(&path, &Request::Status, TIMEOUT);
            let sig = client_main(ClientRequest::Signal("SIGRTMIN+2".into()), &path);
            let maint = client_main(
                ClientRequest::Maintenance {
                    on: true,
                    reason: Some("deploy".into()),
                },
                &path,
            );
            let refused = client_main(
                ClientRequest::Maintenance {
                    on: true,
                    reason: Some("fail".into()),
                },
                &path,
            );
            let bad_sig = client_main(ClientRequest::Signal("NOPE".into()), &path);
            (status, sig, maint, refused, bad_sig)
        });
        serve_until(&mut server, &mut h, |_| client.is_finished());
        let (status, sig, maint, refused, bad_sig) = client.join().expect("client");
        let status = status.expect("status reply");
        assert_eq!(status["status"]["app"]["pid"], 42);
        assert_eq!(
            (sig, maint, refused, bad_sig),
            (EXIT_OK, EXIT_OK, EXIT_FAILED, EXIT_FAILED)
        );
        assert_eq!(h.signals, vec![libc::SIGRTMIN() + 2]);
        assert_eq!(h.maintenance, vec![(true, Some("deploy".into()))]);
    }
}
