//! The control socket's wire protocol, shared by PID 1 (`server`) and `microinit status` & co (`client`).
//!
//! Owns: the requests and replies, their one-line JSON forms and the size limits of both. Does not own: the
//! status document's fields (`status`), sockets (`server`, `client`) nor what a request does (`init`).
//!
//! One connection carries one exchange: the client writes one request line, PID 1 writes one reply line and
//! closes. Requests: `{"cmd":"status"}`, `{"cmd":"signal","signal":"TERM"}`, `{"cmd":"restart"}`,
//! `{"cmd":"maintenance","on":true,"reason":"…"}`. Replies: `{"ok":true,"status":{…}}`,
//! `{"ok":true,"message":"…"}` or `{"ok":false,"error":"…"}`. A request may also end at the client's
//! half-close instead of a newline (socat, `nc -U`).

use serde_json::{json, Map, Value};

use crate::control::status::Status;
use crate::init::signals::{parse_signal, signal_name};

/// Longest request line in bytes (without the newline). A real request is under 2 KiB; the rest of the room
/// is for a maintenance reason.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Longest maintenance reason in bytes: Consul stores it in the check's notes and shows it in its UI.
pub const MAX_REASON: usize = 4096;
/// A reply larger than this is not from microinit (a status document is a few KiB).
pub const MAX_REPLY: usize = 16 << 20;

/// What a client asks PID 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    /// Deliver this signal to the app by PID 1's rules (rewrites, group delivery, stop requests).
    Signal(i32),
    /// A planned restart of the app.
    Restart,
    /// Consul maintenance mode on or off.
    Maintenance {
        on: bool,
        reason: Option<String>,
    },
}

/// PID 1's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(Box<Status>),
    /// Done (or under way); the text says what happened.
    Done(String),
    /// Refused or failed; the text says why, in one line.
    Failed(String),
}

impl Request {
    /// The request line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let v = match self {
            Request::Status => json!({"cmd": "status"}),
            // By name: readable for someone talking to the socket with socat.
            Request::Signal(sig) => json!({"cmd": "signal", "signal": signal_name(*sig)}),
            Request::Restart => json!({"cmd": "restart"}),
            Request::Maintenance { on, reason } => {
                json!({"cmd": "maintenance", "on": on, "reason": reason})
            }
        };
        line(&v)
    }

    /// A request line (without its newline). The error is one line for the client, starting "bad request".
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        if line.len() > MAX_REQUEST {
            return Err(format!(
                "bad request: {} bytes, at most {MAX_REQUEST}",
                line.len()
            ));
        }
        let v = json(line).map_err(|e| format!("bad request: not JSON ({e})"))?;
        match v.get("cmd").and_then(Value::as_str) {
            Some("status") => Ok(Request::Status),
            Some("signal") => {
                let name = v.get("signal").and_then(Value::as_str).ok_or(
                    "bad request: \"signal\" needs a string field \"signal\" (a name like TERM or a number)",
                )?;
                parse_signal(name)
                    .map(Request::Signal)
                    .map_err(|e| format!("bad request: {e}"))
            }
            Some("restart") => Ok(Request::Restart),
            Some("maintenance") => {
                let on = v
                    .get("on")
                    .and_then(Value::as_bool)
                    .ok_or("bad request: \"maintenance\" needs a boolean field \"on\"")?;
                let reason = match v.get("reason") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(r)) if r.len() > MAX_REASON => {
                        return Err(format!(
                            "bad request: the maintenance reason is {} bytes, at most {MAX_REASON}",
                            r.len()
                        ))
                    }
                    Some(Value::String(r)) => Some(r.clone()),
                    Some(_) => {
                        return Err("bad request: \"reason\" must be a string".into());
                    }
                };
                Ok(Request::Maintenance { on, reason })
            }
            Some(other) => Err(format!(
                "bad request: unknown cmd {other:?} (status, signal, restart, maintenance)"
            )),
            None => Err("bad request: no string field \"cmd\"".into()),
        }
    }
}

impl Reply {
    /// The reply line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let v = match self {
            Reply::Status(s) => json!({"ok": true, "status": s.to_json()}),
            Reply::Done(message) => json!({"ok": true, "message": message}),
            Reply::Failed(error) => json!({"ok": false, "error": error}),
        };
        line(&v)
    }

    /// A reply line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Reply, String> {
        if line.len() > MAX_REPLY {
            return Err(format!(
                "reply of {} bytes, at most {MAX_REPLY}",
                line.len()
            ));
        }
        let v = json(line).map_err(|e| format!("not JSON ({e})"))?;
        let obj: &Map<String, Value> = v.as_object().ok_or("not a JSON object")?;
        let text = |key: &str| {
            obj.get(key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("no string field {key:?}"))
        };
        match obj.get("ok").and_then(Value::as_bool) {
            Some(false) => text("error").map(Reply::Failed),
            Some(true) => match obj.get("status") {
                Some(s) => Status::from_json(s).map(|s| Reply::Status(Box::new(s))),
                None => text("message").map(Reply::Done),
            },
            None => Err("no boolean field \"ok\"".into()),
        }
    }
}

fn line(v: &Value) -> Vec<u8> {
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// A JSON line as a value. Through `from_str` like every other JSON microinit reads: one instance of
/// serde_json's parser in the binary, not a second one for byte slices (~3 KB).
fn json(line: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(line).map_err(|e| e.to_string())?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status::tests::full_status;

    fn without_newline(mut line: Vec<u8>) -> Vec<u8> {
        assert_eq!(line.pop(), Some(b'\n'), "a line ends with its newline");
        assert!(!line.contains(&b'\n'), "one line only");
        line
    }

    #[test]
    fn every_request_survives_a_round_trip_as_one_line() {
        for r in [
            Request::Status,
            Request::Signal(libc::SIGTERM),
            Request::Signal(crate::init::signals::rtmin() + 3),
            Request::Signal(33),
            Request::Restart,
            Request::Maintenance {
                on: true,
                reason: Some("deploy\n42 \u{1b}[2J \"quoted\"".into()),
            },
            Request::Maintenance {
                on: false,
                reason: None,
            },
        ] {
            let line = without_newline(r.to_line());
            assert_eq!(Request::parse(&line), Ok(r));
        }
    }

    #[test]
    fn every_reply_survives_a_round_trip_as_one_line() {
        for r in [
            Reply::Status(Box::new(full_status())),
            Reply::Done("SIGHUP delivered".into()),
            Reply::Failed("no app running\nsecond line stays in the string".into()),
        ] {
            let line = without_newline(r.to_line());
            assert_eq!(Reply::parse(&line), Ok(r));
        }
    }

    #[test]
    fn a_signal_travels_by_name_and_numbers_are_accepted_too() {
        let line = String::from_utf8(Request::Signal(libc::SIGHUP).to_line()).unwrap();
        assert_eq!(line, "{\"cmd\":\"signal\",\"signal\":\"SIGHUP\"}\n");
        assert_eq!(
            Request::parse(br#"{"cmd":"signal","signal":"10"}"#),
            Ok(Request::Signal(libc::SIGUSR1))
        );
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason_naming_the_field() {
        for (bad, expect) in [
            (&b"\x00\xffgarbage"[..], "not JSON"),
            (br#"{"cmd":"reboot"}"#, "unknown cmd"),
            (br#"{"cmd":"signal"}"#, "\"signal\""),
            (br#"{"cmd":"signal","signal":"NOPE"}"#, "unknown signal"),
            (br#"{"cmd":"signal","signal":"0"}"#, "unknown signal"),
            (br#"{"cmd":"maintenance","on":"yes"}"#, "\"on\""),
            (
                br#"{"cmd":"maintenance","on":true,"reason":7}"#,
                "\"reason\"",
            ),
            (br#"[1,2]"#, "\"cmd\""),
            (br#"{"cmd":1}"#, "\"cmd\""),
        ] {
            let err = Request::parse(bad).expect_err("must be refused");
            assert!(err.starts_with("bad request: "), "{err:?}");
            assert!(err.contains(expect), "{err:?} should mention {expect}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    #[test]
    fn requests_and_reasons_over_their_limits_are_refused() {
        let reason = |n: usize| {
            Request::Maintenance {
                on: true,
                reason: Some("r".repeat(n)),
            }
            .to_line()
        };
        let at_limit = without_newline(reason(MAX_REASON));
        assert!(Request::parse(&at_limit).is_ok());
        let over = without_newline(reason(MAX_REASON + 1));
        let err = Request::parse(&over).expect_err("reason too long");
        assert!(err.contains("at most 4096"), "{err}");

        let mut huge = br#"{"cmd":"status","pad":""#.to_vec();
        huge.resize(MAX_REQUEST + 1, b'x');
        let err = Request::parse(&huge).expect_err("line too long");
        assert!(err.contains(&format!("at most {MAX_REQUEST}")), "{err}");
    }

    #[test]
    fn replies_that_are_not_ours_are_named() {
        for (bad, expect) in [
            (&b"HTTP/1.0 200 OK"[..], "not JSON"),
            (b"[]", "not a JSON object"),
            (br#"{"status":{}}"#, "\"ok\""),
            (br#"{"ok":false}"#, "\"error\""),
            (br#"{"ok":true}"#, "\"message\""),
            (br#"{"ok":true,"status":{"app":7}}"#, "status document"),
        ] {
            let err = Reply::parse(bad).expect_err("must be refused");
            assert!(err.contains(expect), "{err:?} should mention {expect}");
        }
    }
}
