//! One HTTP/1.1 exchange with the agent: ureq's sans-IO protocol core (`ureq-proto`, the HTTP code ureq
//! itself runs) driven over one fresh connection from `transport`.
//!
//! Owns: writing the request, reading the answer's head and a bounded body, keeping all of it within the
//! call's deadline, and closing the connection after every answered call (no idle connection is ever
//! held; one whose answer did not come in time goes back to the caller, see [`Failure::unanswered`]). Nothing
//! follows a redirect here: the answer, whatever its status, goes back to the caller. Does not own: what is
//! asked and what an answer means (`client`), nor the connection itself (`transport`).
//!
//! Why ureq-proto and not ureq's `Agent`: microinit makes one request per fresh connection, with its own
//! connections, no pool, no redirects, no proxy, no cookies; the agent's layers around the same protocol
//! code (configuration, pool, middleware chain, redirect handling, its transport and resolver traits) cost
//! about 60 KB of the static binary for nothing microinit used (README, "Size").

use std::io::{Read, Write};
use std::time::Instant;

use ureq_proto::client::state::RecvResponse;
use ureq_proto::client::{Call, RecvResponseResult, SendRequestResult};
use ureq_proto::http::Request;
use ureq_proto::BodyMode;

use crate::consul::transport::{Conn, Connector};

/// Most bytes of an answer's status line and headers (Consul sends well under 1 KB).
const HEAD_LIMIT: usize = 64 * 1024;
/// Size of the buffer requests are written through and bodies decoded into.
const BUF: usize = 16 * 1024;

/// What the agent answered.
pub struct Answer {
    pub status: u16,
    /// The `X-Consul-Index` header, when present and a number.
    pub index: Option<u64>,
    /// The `Location` header (a redirect's target, only ever shown).
    pub location: Option<String>,
    /// The body, or why it could not be read whole (including: larger than the limit).
    pub body: Result<Vec<u8>, String>,
}

/// Why an exchange failed: one line saying which step failed, and how far it got (the caller's retry
/// policy differs for an agent that is not there and one that is there but overloaded).
pub struct Failure {
    /// A connection was made: the agent is there, and may have read the request (and execute it late).
    pub connected: bool,
    /// A read or write ran out of time, rather than the agent closing or resetting the connection.
    pub timed_out: bool,
    pub message: String,
    /// The connection of a request sent whole whose answer did not come in time: the agent still holds
    /// the request (and one of its connections from our address) until it has executed it.
    pub unanswered: Option<Conn>,
}

impl Failure {
    fn after_connect(message: String) -> Failure {
        Failure {
            connected: true,
            timed_out: false,
            message,
            unanswered: None,
        }
    }

    fn io(connected: bool, step: &str, e: &std::io::Error) -> Failure {
        Failure {
            connected,
            timed_out: e.kind() == std::io::ErrorKind::TimedOut,
            message: format!("{step}: {}", io_detail(e)),
            unanswered: None,
        }
    }
}

/// Send `req` with `body` (the request's `content-length` says how long it is) and read the answer, with
/// at most `limit` bytes of body, all by `deadline`. On a fresh connection, or after our earlier request on
/// `behind` (a connection whose answer did not come in time): that connection already holds one of the
/// agent's connections from our address, and the agent executes what it has read in order, so the request
/// can be neither refused over the agent's connection limit nor overtaken by the earlier one. The earlier
/// answer, when it comes, is read and set aside.
pub fn exchange(
    connector: &Connector,
    behind: Option<Conn>,
    req: Request<()>,
    body: &[u8],
    limit: usize,
    deadline: Instant,
) -> Result<Answer, Failure> {
    let (request, call) = encode(req, body)?;
    let (mut conn, earlier) = match behind {
        Some(mut conn) => {
            conn.set_deadline(deadline);
            // Only its answer's shape matters (a status line, headers, a body): any request parses it.
            let placeholder = Request::put("/")
                .header("content-length", 0)
                .body(())
                .map_err(|e| Failure::after_connect(e.to_string()))?;
            (conn, Some(encode(placeholder, b"")?.1))
        }
        None => (
            connector
                .connect(deadline)
                .map_err(|e| Failure::io(false, "connecting", &e))?,
            None,
        ),
    };
    conn.write_all(&request)
        .and_then(|()| conn.flush())
        .map_err(|e| Failure::io(true, "sending the request", &e))?;
    let mut input = Vec::new();
    if let Some(earlier) = earlier {
        conn = read_answer(conn, earlier, &mut input, limit)?.0;
    }
    read_answer(conn, call, &mut input, limit).map(|(_, answer)| answer)
}

/// The request line, the headers and the body, gathered to be written at once, and the call that reads
/// the answer.
fn encode(req: Request<()>, body: &[u8]) -> Result<(Vec<u8>, Call<RecvResponse>), Failure> {
    let proto = |e: ureq_proto::Error| Failure::after_connect(e.to_string());
    let mut out = vec![0u8; BUF];
    let mut request = Vec::new();
    let mut call = Call::new(req).map_err(proto)?.proceed();
    while !call.can_proceed() {
        let n = call.write(&mut out).map_err(proto)?;
        request.extend_from_slice(&out[..n]);
    }
    let call = match call.proceed().map_err(proto)? {
        Some(SendRequestResult::RecvResponse(call)) => call,
        Some(SendRequestResult::SendBody(mut call)) => {
            let mut rest = body;
            while !call.can_proceed() {
                let (used, n) = call.write(rest, &mut out).map_err(proto)?;
                request.extend_from_slice(&out[..n]);
                rest = &rest[used..];
            }
            call.proceed()
                .ok_or_else(|| Failure::after_connect("request body not sent whole".into()))?
        }
        // Never asked for (no `Expect: 100-continue`).
        Some(SendRequestResult::Await100(_)) | None => {
            return Err(Failure::after_connect("request not sent".into()))
        }
    };
    Ok((request, call))
}

/// Read one answer off `conn` (what is left of `input` after it stays there for the next one); the
/// connection comes back with it, or in the failure when the answer did not come in time.
fn read_answer(
    mut conn: Conn,
    mut call: Call<RecvResponse>,
    input: &mut Vec<u8>,
    limit: usize,
) -> Result<(Conn, Answer), Failure> {
    let proto = |e: ureq_proto::Error| Failure::after_connect(e.to_string());
    let response = loop {
        let (used, response) = call.try_response(input, false).map_err(proto)?;
        input.drain(..used);
        if let Some(r) = response {
            break r;
        }
        if input.len() >= HEAD_LIMIT {
            return Err(Failure::after_connect(format!(
                "reading the answer: its head is larger than {HEAD_LIMIT} bytes"
            )));
        }
        let n = match read_more(&mut conn, input) {
            Ok(n) => n,
            Err(e) => {
                let mut f = Failure::io(true, "reading the answer", &e);
                if f.timed_out {
                    f.unanswered = Some(conn);
                }
                return Err(f);
            }
        };
        if n == 0 {
            return Err(Failure::after_connect(
                "reading the answer: the connection closed before an answer".into(),
            ));
        }
    };
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let mut answer = Answer {
        status: response.status().as_u16(),
        index: header("x-consul-index").and_then(|v| v.trim().parse().ok()),
        location: header("location"),
        body: Ok(Vec::new()),
    };
    if let Some(RecvResponseResult::RecvBody(mut call)) = call.proceed() {
        let mut out = vec![0u8; BUF];
        // Until EOF when the agent sends neither a length nor chunks.
        let to_eof = call.body_mode() == BodyMode::CloseDelimited;
        let mut body = Vec::new();
        answer.body = loop {
            let (used, n) = match call.read(input, &mut out) {
                Ok(r) => r,
                Err(e) => break Err(e.to_string()),
            };
            input.drain(..used);
            body.extend_from_slice(&out[..n]);
            if body.len() > limit {
                break Err(format!("the answer is larger than {limit} bytes"));
            }
            if !to_eof && call.can_proceed() {
                break Ok(body);
            }
            if used == 0 && n == 0 {
                match read_more(&mut conn, input) {
                    Ok(0) if to_eof => break Ok(body),
                    Ok(0) => break Err("the connection closed mid-answer".into()),
                    Ok(_) => {}
                    Err(e) => break Err(io_detail(&e)),
                }
            }
        };
    }
    Ok((conn, answer))
}

/// Append what the connection has to `input`; 0 at EOF.
fn read_more(conn: &mut impl Read, input: &mut Vec<u8>) -> std::io::Result<usize> {
    let start = input.len();
    input.resize(start + BUF, 0);
    let n = loop {
        match conn.read(&mut input[start..]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    input.truncate(start + *n.as_ref().unwrap_or(&0));
    n
}

/// An io error in one line, with its source chain (rustls' reason behind a TLS failure).
fn io_detail(e: &std::io::Error) -> String {
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let part = s.to_string();
        if !detail.contains(&part) {
            detail.push_str(": ");
            detail.push_str(&part);
        }
        source = s.source();
    }
    detail
}
