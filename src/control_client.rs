//! The client side of the control socket: `microinit status [--json]`, `signal SIG`, `restart`,
//! `maintenance on|off [--reason TEXT]`, run as `docker exec CONTAINER microinit …`.
//!
//! Owns: connecting with a time limit, one request/reply exchange (protocol in `control`), exit codes and the
//! human status table. Does not own: argument parsing (`cli`) nor anything PID 1 does.
//!
//! The status document PID 1 sends (every field is rendered; a missing one shows as "-"):
//! `{"microinit":{"version","pid","dialect"}, "app":{"pid","command":[..],"state","uptime_s","restarts",
//! "last_exit":{"code","signal","status"}|null}, "signals_forwarded", "zombies_reaped",
//! "runtime_check":{"ok","missing":[..]}|null, "consul":{"agent","service_id","state","last_heartbeat_unix",
//! "last_heartbeat_result","maintenance","last_error"}|null}`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use serde_json::Value;

use crate::control::{connect_nonblocking, Request};

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    Status { json: bool },
    Signal(String),
    Restart,
    Maintenance { on: bool, reason: Option<String> },
}

/// Run one client command against the socket at `socket`; returns the process exit code.
pub fn client_main(cmd: ClientCommand, socket: &Path) -> i32 {
    let request = match &cmd {
        ClientCommand::Status { .. } => Request::Status,
        ClientCommand::Signal(sig) => Request::Signal(sig.clone()),
        ClientCommand::Restart => Request::Restart,
        ClientCommand::Maintenance { on, reason } => Request::Maintenance {
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
        ClientCommand::Status { json: true } => {
            println!("{:#}", reply.get("status").unwrap_or(&Value::Null));
        }
        ClientCommand::Status { json: false } => {
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
    (&stream).write_all(&line).map_err(io_err)?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut limited = (&stream).take(MAX_REPLY);
    loop {
        // A per-read timeout alone would let a trickling peer stretch the total: recompute each time.
        stream
            .set_read_timeout(Some(remaining(deadline)))
            .map_err(io_err)?;
        match limited.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
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
        let heartbeat = match consul["last_heartbeat_unix"].as_f64() {
            Some(t) => format!(
                "{} ({} ago)",
                text(&consul["last_heartbeat_result"]),
                human_duration((now_unix - t).max(0.0))
            ),
            None => "never".into(),
        };
        rows.extend([
            ("consul agent", text(&consul["agent"])),
            ("service id", text(&consul["service_id"])),
            ("registration", text(&consul["state"])),
            ("last heartbeat", heartbeat),
            ("maintenance", on_off(&consul["maintenance"])),
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
            signal_name(sig),
            text(&v["status"])
        ),
        (Some(code), None) => format!("exit code {code}, status {}", text(&v["status"])),
        (None, None) => format!("status {}", text(&v["status"])),
    }
}

fn signal_name(sig: i64) -> String {
    let rtmin = i64::from(libc::SIGRTMIN());
    match i32::try_from(sig)
        .ok()
        .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
    {
        Some(s) => s.as_str().to_string(),
        None if sig >= rtmin => format!("SIGRTMIN+{}", sig - rtmin),
        None => "?".into(),
    }
}

fn runtime_check(v: &Value) -> String {
    if !v.is_object() {
        return "not run".into();
    }
    let missing: Vec<String> = v["missing"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
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
