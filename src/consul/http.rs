//! One HTTP/1.1 exchange with the agent over one fresh connection from `transport`.
//!
//! Owns: sending the request, reading the answer's status line and headers and a bounded body (by length,
//! chunked, or until the connection closes), keeping all of it within the call's deadline, and closing the
//! connection after every answered call (no idle connection is ever held; one whose answer did not come in
//! time goes back to the caller, see [`Failure::unanswered`]). Nothing follows a redirect here: the
//! answer, whatever its status, goes back to the caller. Does not own: what is asked and what an answer
//! means (`client`), nor the connection itself (`transport`).
//!
//! Why not ureq: microinit makes one request per fresh connection to one local agent, with its own
//! connections, no pool, no redirects, no proxy, no cookies, and reads three headers of the answer. ureq 3's
//! `Agent` layers cost 82 KB of the static binary for nothing used, and its protocol core alone
//! (`ureq-proto` with the `http` crate's request, URI and header-map types) another 66 KB, against a few KB
//! for this file (README, "Size": issue #14 asked for ureq or a measured reason for another way).

use std::io::{Read, Write};
use std::time::Instant;

use crate::consul::transport::{Conn, Connector};

/// Most bytes of an answer's status line and headers (Consul sends well under 1 KB).
const HEAD_LIMIT: usize = 64 * 1024;
/// How much is read from the connection at a time.
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

    fn io(connected: bool, e: &std::io::Error) -> Failure {
        Failure {
            connected,
            timed_out: e.kind() == std::io::ErrorKind::TimedOut,
            message: io_detail(e),
            unanswered: None,
        }
    }

    fn step(mut self, step: &str) -> Failure {
        self.message = format!("{step}: {}", self.message);
        self
    }
}

/// Send `request` (head and body, as they go on the wire) and read the answer, with at most `limit` bytes of
/// body, all by `deadline`. On a fresh connection, or after our earlier request on `behind` (a connection
/// whose answer did not come in time): that connection already holds one of the agent's connections from
/// our address, and the agent executes what it has read in order, so the request can be neither refused
/// over the agent's connection limit nor overtaken by the earlier one. The earlier answer, when it comes,
/// is read and set aside.
pub fn exchange(
    connector: &Connector,
    behind: Option<Conn>,
    request: &[u8],
    limit: usize,
    deadline: Instant,
) -> Result<Answer, Failure> {
    let earlier = behind.is_some();
    let mut conn = match behind {
        Some(mut conn) => {
            conn.set_deadline(deadline);
            conn
        }
        None => connector
            .connect(deadline)
            .map_err(|e| Failure::io(false, &e).step("connecting"))?,
    };
    conn.write_all(request)
        .and_then(|()| conn.flush())
        .map_err(|e| Failure::io(true, &e).step("sending the request"))?;
    let mut input = Input {
        conn,
        buf: Vec::new(),
        pos: 0,
    };
    let answered = if earlier {
        read_answer(&mut input, limit).and_then(|_| read_answer(&mut input, limit))
    } else {
        read_answer(&mut input, limit)
    };
    answered.map_err(|mut f| {
        // Only a wait for an answer's head ends as a timeout here (the body's errors are in the answer).
        if f.timed_out {
            f.unanswered = Some(input.conn);
        }
        f
    })
}

/// Read one answer (what is left in `input` after it stays there for the next one).
fn read_answer(input: &mut Input, limit: usize) -> Result<Answer, Failure> {
    let (status, headers) = loop {
        let (status, headers) = input.head().map_err(|f| f.step("reading the answer"))?;
        // An interim answer (100 Continue, 103 Early Hints) comes before the real one.
        if status >= 200 {
            break (status, headers);
        }
    };
    let header = |name: &str| {
        headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let too_large = || Failure::after_connect(format!("the answer is larger than {limit} bytes"));
    let body = if matches!(status, 204 | 304) {
        Ok(Vec::new())
    } else if header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        input.chunked(limit).and_then(|b| b.ok_or_else(too_large))
    } else if let Some(len) = header("content-length") {
        match len.parse::<usize>() {
            Ok(n) if n <= limit => input.exact(n),
            Ok(_) => Err(too_large()),
            Err(_) => Err(Failure::after_connect(format!(
                "content-length {len:?} is not a number"
            ))),
        }
    } else {
        input
            .until_closed(limit)
            .and_then(|b| b.ok_or_else(too_large))
    };
    Ok(Answer {
        status,
        index: header("x-consul-index").and_then(|v| v.parse().ok()),
        location: header("location"),
        body: body.map_err(|f| f.message),
    })
}

/// What has been read from the connection and not used yet: `buf[pos..]`.
struct Input {
    conn: Conn,
    buf: Vec<u8>,
    pos: usize,
}

impl Input {
    fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Read more from the connection; false at its end.
    fn fill(&mut self) -> Result<bool, Failure> {
        self.buf.drain(..self.pos);
        self.pos = 0;
        let start = self.buf.len();
        self.buf.resize(start + BUF, 0);
        let n = loop {
            match self.conn.read(&mut self.buf[start..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        self.buf.truncate(start + *n.as_ref().unwrap_or(&0));
        n.map(|n| n > 0).map_err(|e| Failure::io(true, &e))
    }

    /// Read more, where the connection's end is an error.
    fn need(&mut self) -> Result<(), Failure> {
        match self.fill()? {
            true => Ok(()),
            false => Err(Failure::after_connect(
                "the connection closed mid-answer".into(),
            )),
        }
    }

    /// The next line without its line end, of at most `max` bytes.
    fn line(&mut self, max: usize) -> Result<Vec<u8>, Failure> {
        loop {
            if let Some(i) = self.buffered().iter().position(|&b| b == b'\n') {
                let line = &self.buffered()[..i];
                let line = line.strip_suffix(b"\r").unwrap_or(line).to_vec();
                self.pos += i + 1;
                return Ok(line);
            }
            if self.buffered().len() > max {
                return Err(Failure::after_connect(format!(
                    "a line longer than {max} bytes"
                )));
            }
            self.need()?;
        }
    }

    /// The status code and the headers (names and values trimmed, lossy UTF-8) of one answer head.
    fn head(&mut self) -> Result<(u16, Vec<(String, String)>), Failure> {
        let first = self.line(HEAD_LIMIT)?;
        // "HTTP/1.1 200 OK"
        let status = first
            .strip_prefix(b"HTTP/1.")
            .filter(|rest| rest.get(1) == Some(&b' '))
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| std::str::from_utf8(code).ok()?.parse::<u16>().ok())
            .filter(|code| (100..600).contains(code))
            .ok_or_else(|| Failure::after_connect("not an HTTP/1 answer".into()))?;
        let mut headers = Vec::new();
        let mut size = first.len();
        loop {
            let line = self.line(HEAD_LIMIT)?;
            if line.is_empty() {
                return Ok((status, headers));
            }
            size += line.len();
            if size > HEAD_LIMIT {
                return Err(Failure::after_connect(format!(
                    "its head is larger than {HEAD_LIMIT} bytes"
                )));
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(Failure::after_connect(
                    "a header line without a colon".into(),
                ));
            };
            let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
            headers.push((text(&line[..colon]), text(&line[colon + 1..])));
        }
    }

    /// Exactly `n` bytes.
    fn exact(&mut self, n: usize) -> Result<Vec<u8>, Failure> {
        while self.buffered().len() < n {
            self.need()?;
        }
        let body = self.buffered()[..n].to_vec();
        self.pos += n;
        Ok(body)
    }

    /// A chunked body, decoded; None when it is larger than `limit`. Trailers are not read: the connection
    /// is closed after the answer anyway.
    fn chunked(&mut self, limit: usize) -> Result<Option<Vec<u8>>, Failure> {
        let mut body = Vec::new();
        loop {
            let line = self.line(1024)?;
            // "1a3f" or "1a3f;extension"
            let size = line.split(|&b| b == b';').next().unwrap_or(&[]);
            let size = std::str::from_utf8(size)
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or_else(|| {
                    Failure::after_connect("a chunk size that is not a hex number".into())
                })?;
            if size == 0 {
                return Ok(Some(body));
            }
            if size > limit - body.len() {
                return Ok(None);
            }
            body.extend(self.exact(size)?);
            if !self.line(2)?.is_empty() {
                return Err(Failure::after_connect(
                    "a chunk longer than its size".into(),
                ));
            }
        }
    }

    /// Everything until the connection closes; None when it is more than `limit` bytes.
    fn until_closed(&mut self, limit: usize) -> Result<Option<Vec<u8>>, Failure> {
        while self.fill()? {
            if self.buffered().len() > limit {
                return Ok(None);
            }
        }
        Ok(Some(self.buffered().to_vec()))
    }
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
