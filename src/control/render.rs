//! The human table of `microinit status`.
//!
//! Owns: how each field of the status document reads on a terminal, and escaping the untrusted text in it
//! (health output, agent errors, the command line, paths) so that a row stays one line and no escape
//! sequence reaches the operator's terminal. Does not own: the document (`status`) nor the JSON form.

use serde_json::Value;

use crate::control::status::{Consul, Discovery, Heartbeat, LastExit, RuntimeCheck, Status};
use crate::init::signals::signal_name;
// One escaping rule for the table and the logs (`text`).
pub use crate::text::for_terminal as esc;
use crate::text::{push_escaped, unsafe_char};

/// The table; `now_unix` dates the last heartbeat.
pub fn render_status(s: &Status, now_unix: f64) -> String {
    let app = &s.app;
    let mut rows: Vec<(&str, String)> = vec![
        (
            "microinit",
            format!(
                "{}, pid {}, dialect {}",
                esc(&s.microinit.version),
                s.microinit.pid,
                esc(&s.microinit.dialect)
            ),
        ),
        ("app pid", opt(app.pid)),
        ("command", command_line(&app.command)),
        ("state", esc(&app.state).into_owned()),
        (
            "uptime",
            app.uptime_s.map_or_else(|| "-".into(), human_duration),
        ),
        ("restarts", app.restarts.to_string()),
        (
            "last exit",
            app.last_exit.map_or_else(|| "-".into(), last_exit),
        ),
        ("signals forwarded", s.signals_forwarded.to_string()),
        ("zombies reaped", s.zombies_reaped.to_string()),
        (
            "runtime check",
            s.runtime_check
                .as_ref()
                .map_or_else(|| "not run".into(), runtime_check),
        ),
    ];
    match &s.consul {
        Some(c) => consul_rows(c, now_unix, &mut rows),
        None => rows.push(("consul", "not registering".into())),
    }
    if let Some(d) = &s.discovery {
        discovery_rows(d, &mut rows);
    }
    if let Some(h) = &s.health {
        let verdict = if h.ok { "healthy" } else { "unhealthy" };
        rows.push(("health", format!("{verdict}: {}", text(&h.reason))));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

fn discovery_rows(d: &Discovery, rows: &mut Vec<(&str, String)>) {
    for w in &d.wait_for {
        let state = if w.up {
            "up".to_string()
        } else {
            format!("waiting: {}", text(&w.detail))
        };
        rows.push(("wait for", format!("{} {state}", text(&w.target))));
    }
    for w in &d.watches {
        let seen = match &w.value {
            None => "no answer yet".to_string(),
            Some(Value::Array(v)) => format!("{} passing", v.len()),
            Some(Value::Null) => "key absent".to_string(),
            Some(v) => format!("{} bytes", v.as_str().map_or(0, str::len)),
        };
        let error = w
            .error
            .as_deref()
            .map_or_else(String::new, |e| format!(" (retrying: {})", text(e)));
        rows.push(("watch", format!("{} {seen}{error}", text(&w.watch))));
    }
    if !d.watches.is_empty() {
        rows.push(("watch changes", d.changes.to_string()));
    }
}

fn consul_rows(c: &Consul, now_unix: f64, rows: &mut Vec<(&str, String)>) {
    rows.extend([
        ("consul agent", text(&c.agent)),
        ("service", text(&c.service_name)),
        ("service id", text(&c.service_id)),
    ]);
    if let Some(file) = &c.service_file {
        rows.push(("service file", text(file)));
    }
    let maintenance = match &c.maintenance {
        None => "off".into(),
        Some(None) => "on".into(),
        Some(Some(reason)) => format!("on ({})", esc(reason)),
    };
    rows.extend([
        ("registration", text(&c.state)),
        ("registrations", c.registrations.to_string()),
        ("ready", if c.ready { "yes" } else { "no" }.into()),
        (
            "check",
            format!("{}: {}", text(&c.check_status), text(&c.check_output)),
        ),
        (
            "last heartbeat",
            c.last_heartbeat
                .as_ref()
                .map_or_else(|| "none yet".into(), |h| heartbeat(h, now_unix)),
        ),
        ("maintenance", maintenance),
        (
            "last error",
            c.last_error.as_deref().map_or_else(|| "-".into(), text),
        ),
    ]);
}

/// Escaped, and "-" for an empty string.
fn text(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        esc(s).into_owned()
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// "ok (4.0s ago)" / "failed (4.0s ago): why".
fn heartbeat(h: &Heartbeat, now_unix: f64) -> String {
    let ago = human_duration((now_unix - h.unix as f64).max(0.0));
    match &h.error {
        None => format!("ok ({ago} ago)"),
        Some(e) => format!("failed ({ago} ago): {}", text(e)),
    }
}

/// The argv as a shell would need it typed: plain words bare, others in single quotes, and words holding
/// control characters in bash's `$'…'` form, so the row stays one line and still reads back exactly.
fn command_line(args: &[String]) -> String {
    if args.is_empty() {
        return "-".into();
    }
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain {
                a.clone()
            } else if a.chars().any(unsafe_char) {
                ansi_c_quoted(a)
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect();
    quoted.join(" ")
}

/// bash's `$'…'` quoting, which reads every escape of `push_escaped` back.
fn ansi_c_quoted(a: &str) -> String {
    let mut out = String::from("$'");
    for c in a.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c => push_escaped(&mut out, c),
        }
    }
    out.push('\'');
    out
}

fn last_exit(e: LastExit) -> String {
    match e {
        LastExit::Signal(sig) => format!(
            "killed by signal {sig} ({}), status {}",
            signal_name(sig),
            e.status()
        ),
        LastExit::Code(code) => format!("exit code {code}, status {}", e.status()),
    }
}

fn runtime_check(r: &RuntimeCheck) -> String {
    // The path is what a person looks for in the runtime volume.
    let missing: Vec<String> = r
        .missing
        .iter()
        .map(|m| format!("{} ({})", esc(&m.path), esc(&m.kind)))
        .collect();
    match (r.ok, missing.is_empty()) {
        (true, true) => "ok".into(),
        (_, false) => format!("FAILED, missing: {}", missing.join(", ")),
        (false, true) => "FAILED".into(),
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
    use crate::control::status::tests::{full_status, minimal_status};
    use crate::control::status::Heartbeat;

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
            "registration       registered\n",
            "registrations      1\n",
            "ready              yes",
            "check              passing: microinit: app running (pid 7)",
            "last heartbeat     ok (4.0s ago)",
            "maintenance        on (deploy 42)",
            "last error         -\n",
            "restarts           2\n",
        ] {
            assert!(table.contains(expect), "{expect:?} missing from\n{table}");
        }
    }

    #[test]
    fn status_table_heartbeat_states_and_service_file() {
        let mut s = full_status();
        let c = s.consul.as_mut().unwrap();
        c.last_heartbeat = None;
        c.service_file = Some("/etc/web.json".into());
        c.maintenance = None;
        let table = render_status(&s, 1004.0);
        for expect in [
            "last heartbeat     none yet",
            "service file       /etc/web.json",
            "maintenance        off\n",
        ] {
            assert!(table.contains(expect), "{expect:?} missing from\n{table}");
        }
        s.consul.as_mut().unwrap().last_heartbeat = Some(Heartbeat {
            unix: 1000,
            error: Some("consul agent unreachable".into()),
        });
        let table = render_status(&s, 1064.0);
        assert!(
            table.contains("last heartbeat     failed (1m04s ago): consul agent unreachable"),
            "{table}"
        );
    }

    #[test]
    fn status_table_without_app_consul_or_runtime_check() {
        let table = render_status(&minimal_status(), 0.0);
        for expect in [
            "exit code 3, status 3",
            "consul             not registering",
            "runtime check      not run",
            "app pid            -\n",
            "command            -\n",
        ] {
            assert!(table.contains(expect), "{expect:?} missing from\n{table}");
        }
    }

    #[test]
    fn untrusted_text_cannot_break_a_row_or_reach_the_terminal_raw() {
        let mut s = full_status();
        s.app.command = vec![
            "sh".into(),
            "-c".into(),
            "echo 'hi'\n\u{1b}]0;pwned\u{7}".into(),
        ];
        let c = s.consul.as_mut().unwrap();
        c.check_output = "line one\nstate              forged\r\u{1b}[31mred\u{9b}2J".into();
        c.last_error = Some("agent said \u{202e}txt.exe".into());
        c.maintenance = Some(Some("tab\there".into()));
        s.runtime_check.as_mut().unwrap().missing[0].path = "/lib/\u{1b}[1mbold".into();
        let table = render_status(&s, 1004.0);
        assert!(
            !table
                .chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "raw control characters in\n{table:?}"
        );
        assert_eq!(
            table.lines().count(),
            render_status(&full_status(), 1004.0).lines().count(),
            "a row per field, whatever the text:\n{table}"
        );
        for expect in [
            r"check              passing: line one\nstate              forged\r\x1b[31mred\u009b2J",
            r"last error         agent said \u202etxt.exe",
            r"maintenance        on (tab\there)",
            r"/lib/\x1b[1mbold (interpreter)",
            r"command            sh -c $'echo \'hi\'\n\x1b]0;pwned\x07'",
        ] {
            assert!(table.contains(expect), "{expect:?} missing from\n{table}");
        }
    }

    #[test]
    fn durations_read_like_uptime() {
        assert_eq!(human_duration(42.34), "42.3s");
        assert_eq!(human_duration(61.0), "1m01s");
        assert_eq!(human_duration(3723.0), "1h02m03s");
        assert_eq!(human_duration(200_000.0), "2d07h33m");
    }
}
