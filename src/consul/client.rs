//! A minimal blocking client for the Consul *agent* HTTP API (over `http` and `transport`).
//!
//! Owns: the HTTP calls microinit makes (register with `replace-existing-checks`, TTL check update, deregister,
//! service maintenance, "does the agent still know this service"), their timeouts, the credentials (token as
//! `X-Consul-Token`, re-read from `CONSUL_HTTP_TOKEN_FILE` when the agent answers 403; `CONSUL_HTTP_AUTH` as
//! basic auth), `CONSUL_NAMESPACE`/`CONSUL_PARTITION` as query parameters, and turning every failure into one
//! line that names the endpoint (and, for a 403, the ACL permission the token lacks). Every answer that is
//! not 2xx is an error naming its status, 3xx included: no redirect is followed (one could send the token
//! elsewhere, and the agent API never redirects, so a redirect means something in between is wrong). Does
//! not own: the HTTP exchange (`http`), the connection (`transport`), when to call what (`registration`), nor the service definition's
//! content. Nothing here panics on what Consul sends back, text from the agent is escaped before it reaches
//! a message, and the token never appears in one.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::consul_agent::{self, AgentConfig, Endpoint};
use crate::config::Secret;
use crate::consul::{http, transport};

/// Status of a TTL check, as Consul names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }
}

/// What kind of failure, so the caller can decide between retrying, re-registering and giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection: refused, connect timeout, name resolution, TLS failure. Worth retrying with backoff.
    Unreachable,
    /// Connected and sent, but no answer in time: the agent is slow and most likely executes the request
    /// later, however late. Retry later, not sooner.
    Busy,
    /// The agent dropped the connection (reset, broken pipe, closed before answering): Consul closes a
    /// connection over its per-address limit (`http_max_conns_per_client`) at once, without reading it.
    Dropped,
    /// 403: the token is unknown or lacks a permission. Retrying will not help.
    Denied,
    /// 404, or (Consul ≤ 1.9) a 500 on a check update for a check the agent does not know.
    NotFound,
    /// Any other HTTP error status.
    Status,
    /// A 2xx whose body is not what the API documents.
    BadResponse,
}

/// One failed call: a one-line message naming the endpoint. Never contains the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Default total timeout (connect + request + response) of every call.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(800);

/// Most of an answer's body that is read: a service JSON is a few KB; an error text is cut to one line.
const BODY_LIMIT: usize = 256 * 1024;

pub struct Client {
    connector: transport::Connector,
    /// The `Host` header: the agent's authority (`localhost` for a unix socket).
    host: String,
    /// A reverse proxy's path prefix ("/consul"), or "".
    prefix: String,
    /// The agent as the user wrote it, for messages and `status`.
    shown: String,
    /// `ns=…&partition=…` for every call, or "".
    scope: String,
    /// Behind a lock only because a 403 may swap in a rotated token from `token_file`.
    token: Mutex<Option<Secret>>,
    token_file: Option<PathBuf>,
    /// `Basic …` header value from CONSUL_HTTP_AUTH.
    basic_auth: Option<Secret>,
    /// The connection of our last call if the agent has not answered it yet, and since when (see
    /// [`UNANSWERED_PATIENCE`]).
    unanswered: Mutex<Option<(transport::Conn, Instant)>>,
}

/// At most one request of ours waits at the agent: while a call we gave up on (timeout) is still
/// unanswered, no other is sent (it fails at once as `Busy`), because an overloaded agent executes every
/// request it has read, however late, and each new one would only lengthen its backlog and take one more of
/// its connections from our address (Consul allows 200). The late answer or the agent closing the
/// connection ends the wait; so does this much time (a network that lost the connection never says so),
/// and a deregistration, which is always sent.
const UNANSWERED_PATIENCE: Duration = Duration::from_secs(10);

impl Client {
    /// A client for the agent `cfg` describes. Fails (one line naming the variable) on a certificate or key
    /// that cannot be used, or an https:// agent in a build without TLS.
    pub fn new(cfg: &AgentConfig) -> Result<Client, String> {
        // Every call is one fresh connection, closed after the answer: no idle keep-alive connection per
        // instance. Consul allows 200 connections per client address (http_max_conns_per_client), and
        // hundreds of microinits behind one address (host networking) would hold them all while idle. A
        // heartbeat every TTL/2 pays one loopback/LAN connect instead. No proxy variable is consulted: an
        // HTTP(S)_PROXY meant for the app must not reroute the agent.
        let connector = transport::connector(cfg)?;
        let authority = match &cfg.endpoint {
            Endpoint::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Endpoint::Tcp { host, port } => format!("{host}:{port}"),
            Endpoint::Unix(_) => "localhost".to_string(),
        };
        let mut scope = String::new();
        for (key, value) in [("ns", &cfg.namespace), ("partition", &cfg.partition)] {
            if let Some(v) = value {
                let sep = if scope.is_empty() { "" } else { "&" };
                scope.push_str(&format!("{sep}{key}={}", encode(v)));
            }
        }
        Ok(Client {
            connector,
            host: authority,
            prefix: cfg.path_prefix.clone(),
            shown: cfg.display(),
            scope,
            token: Mutex::new(cfg.token.clone()),
            token_file: cfg.token_file.clone(),
            basic_auth: cfg
                .basic_auth
                .as_ref()
                .map(|a| Secret::new(format!("Basic {}", base64(a.expose().as_bytes())))),
            unanswered: Mutex::new(None),
        })
    }

    /// The agent as the user wrote it (for status output and messages).
    pub fn base_url(&self) -> &str {
        &self.shown
    }

    /// `PUT /v1/agent/service/register?replace-existing-checks=true` with the full definition.
    pub fn register(&self, definition: &serde_json::Value, name: &str) -> Result<(), Error> {
        let path = "/v1/agent/service/register?replace-existing-checks=true";
        self.call("PUT", path, Some(definition), &write_perm(name), None)
            .map(drop)
    }

    /// `PUT /v1/agent/check/update/:check_id` with a status and the output shown in Consul.
    pub fn update_check(
        &self,
        check_id: &str,
        name: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), Error> {
        let path = format!("/v1/agent/check/update/{}", encode(check_id));
        let body = serde_json::json!({ "Status": status.as_str(), "Output": output });
        match self.call("PUT", &path, Some(&body), &write_perm(name), None) {
            Ok(_) => Ok(()),
            // Consul ≤ 1.9 answers an unknown check ID with 500 "CheckID … does not have associated TTL".
            Err(e)
                if e.kind == ErrorKind::Status
                    && e.message.contains("does not have associated TTL") =>
            {
                Err(Error {
                    kind: ErrorKind::NotFound,
                    ..e
                })
            }
            Err(e) => Err(e),
        }
    }

    /// `PUT /v1/agent/service/deregister/:id`, with its own total timeout (the caller's remaining bound).
    pub fn deregister(&self, service_id: &str, name: &str, timeout: Duration) -> Result<(), Error> {
        let path = format!("/v1/agent/service/deregister/{}", encode(service_id));
        // Sent even while an earlier call waits at the agent: after it, on its connection.
        self.exchange(&Request {
            timeout: Some(timeout),
            behind_earlier: true,
            ..Request::new("PUT", &path, None, &write_perm(name))
        })
        .map(drop)
    }

    /// `PUT /v1/agent/service/maintenance/:id?enable=…&reason=…`.
    pub fn maintenance(
        &self,
        service_id: &str,
        name: &str,
        enable: bool,
        reason: Option<&str>,
    ) -> Result<(), Error> {
        let mut path = format!(
            "/v1/agent/service/maintenance/{}?enable={enable}",
            encode(service_id)
        );
        if let Some(r) = reason {
            path.push_str("&reason=");
            path.push_str(&encode(r));
        }
        self.call("PUT", &path, None, &write_perm(name), None)
            .map(drop)
    }

    /// `GET /v1/agent/service/:id`: does the agent still know this service (it forgets on restart)?
    pub fn service_known(&self, service_id: &str, name: &str) -> Result<bool, Error> {
        let path = format!("/v1/agent/service/{}", encode(service_id));
        let perm = format!("service:read on service {name:?}");
        match self.call("GET", &path, None, &perm, None) {
            Ok(body) => match serde_json::from_str::<serde_json::Value>(&body) {
                Ok(v) if v.get("ID").and_then(|id| id.as_str()).is_some() => {
                    Ok(v["ID"].as_str() == Some(service_id))
                }
                _ => Err(self.error(
                    ErrorKind::BadResponse,
                    "GET",
                    &path,
                    "answer is not a service JSON object",
                )),
            },
            Err(e) if e.kind == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One call; returns the body of a 2xx. `perm` is the ACL permission the call needs (for 403 messages).
    /// A 403 with a token file re-reads the file once: a rotated token is used from then on.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        perm: &str,
        timeout: Option<Duration>,
    ) -> Result<String, Error> {
        let body = body.map(|b| b.to_string());
        self.exchange(&Request {
            timeout,
            ..Request::new(method, path, body.as_deref(), perm)
        })
        .map(|(text, _)| text.unwrap_or_default())
    }

    /// A blocking query (`GET path?…&index=I&wait=W`): the agent answers when the result changes past index
    /// `index`, or after `wait`. Returns the body (None for a 404, e.g. a KV key that does not exist, which
    /// is blocked on like any other answer) and the `X-Consul-Index` to pass next time (0 when the agent sent
    /// none). `path` already holds its query string. The HTTP timeout covers the wait plus the up to wait/16
    /// of jitter Consul adds to it.
    pub fn blocking_get(
        &self,
        path: &str,
        perm: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(Option<String>, u64), Error> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let path = format!("{path}{sep}index={index}&wait={}ms", wait.as_millis());
        let timeout = wait + wait / 16 + CALL_TIMEOUT;
        self.exchange(&Request {
            timeout: Some(timeout),
            not_found_ok: true,
            ..Request::new("GET", &path, None, perm)
        })
        .map(|(text, idx)| (text, idx.unwrap_or(0)))
    }

    /// One call, retried once with a re-read token after a 403; the body of a 2xx (None for a 404 when
    /// `not_found_ok`) and the answer's `X-Consul-Index`. While an earlier call waits at the agent, the
    /// call is not sent (`Busy`), unless `behind_earlier`: then it is sent after it, on its connection.
    fn exchange(&self, req: &Request<'_>) -> Result<(Option<String>, Option<u64>), Error> {
        let once = || self.call_once(req);
        match once() {
            Err(e) if e.kind == ErrorKind::Denied && self.reload_token() => once(),
            r => r,
        }
    }

    /// Re-read the token file; true if it now holds a different token.
    fn reload_token(&self) -> bool {
        let Some(path) = &self.token_file else {
            return false;
        };
        match consul_agent::read_token_file(path) {
            Ok(new) => {
                let mut token = self.token.lock().unwrap_or_else(|p| p.into_inner());
                if token.as_ref() == Some(&new) {
                    return false;
                }
                log::info!("consul: {} holds a new token; using it", path.display());
                *token = Some(new);
                true
            }
            Err(e) => {
                log::warn!("consul: re-reading the token after a 403: {e}");
                false
            }
        }
    }

    fn unanswered_lock(&self) -> std::sync::MutexGuard<'_, Option<(transport::Conn, Instant)>> {
        self.unanswered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Since when our last call has been waiting at the agent, if it still is (within the patience);
    /// otherwise its connection is closed.
    fn still_unanswered(&self) -> Option<Instant> {
        let mut waiting = self.unanswered_lock();
        match &*waiting {
            Some((conn, since)) if !conn.answered() && since.elapsed() < UNANSWERED_PATIENCE => {
                Some(*since)
            }
            _ => {
                *waiting = None;
                None
            }
        }
    }

    fn current_token(&self) -> Option<Secret> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn call_once(&self, req: &Request<'_>) -> Result<(Option<String>, Option<u64>), Error> {
        let Request {
            method,
            path,
            body,
            perm,
            timeout,
            not_found_ok,
            behind_earlier,
        } = *req;
        let token = self.current_token();
        let mut target = format!("{}{path}", self.prefix);
        if !self.scope.is_empty() {
            target.push(if path.contains('?') { '&' } else { '?' });
            target.push_str(&self.scope);
        }
        if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            let detail = "the path holds a space or a control character";
            return Err(self.error(ErrorKind::BadResponse, method, path, detail));
        }
        // The request head as HTTP/1.1 has it. No `connection: close`: a deregistration may follow an
        // unanswered call on its connection (see `http::exchange`); the connection is closed after use.
        let mut head = format!("{method} {target} HTTP/1.1\r\nhost: {}", self.host);
        head.push_str(concat!(
            "\r\nuser-agent: microinit/",
            env!("CARGO_PKG_VERSION"),
            "\r\n"
        ));
        let credentials = [
            ("x-consul-token", token.as_ref()),
            ("authorization", self.basic_auth.as_ref()),
        ];
        for (name, value) in credentials {
            let Some(value) = value.map(Secret::expose) else {
                continue;
            };
            // A line break in a token (file) would split the head into headers of the token's choosing.
            if value.bytes().any(|b| b < b' ' && b != b'\t' || b == 0x7f) {
                let detail = format!("the {name} value holds a control character");
                return Err(self.error(ErrorKind::BadResponse, method, path, &detail));
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if body.is_some() {
            head.push_str("content-type: application/json\r\n");
        }
        if method != "GET" {
            head.push_str(&format!("content-length: {}\r\n", body.map_or(0, str::len)));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body.unwrap_or("").as_bytes());
        let behind = match self.still_unanswered() {
            None => None,
            Some(_) if behind_earlier => self.unanswered_lock().take().map(|(conn, _)| conn),
            Some(since) => {
                let detail = format!(
                    "not sent: the agent has not answered our previous call yet ({} ms ago)",
                    since.elapsed().as_millis()
                );
                return Err(self.error(ErrorKind::Busy, method, path, &detail));
            }
        };
        let deadline = Instant::now() + timeout.unwrap_or(CALL_TIMEOUT);
        let answer = http::exchange(&self.connector, behind, &request, BODY_LIMIT, deadline)
            .map_err(|mut f| {
                if let Some(conn) = f.unanswered.take() {
                    *self.unanswered_lock() = Some((conn, Instant::now()));
                }
                let kind = match f {
                    http::Failure {
                        connected: false, ..
                    } => ErrorKind::Unreachable,
                    http::Failure {
                        timed_out: true, ..
                    } => ErrorKind::Busy,
                    _ => ErrorKind::Dropped,
                };
                let detail = format!(
                    "agent unreachable ({})",
                    crate::text::for_terminal(&f.message)
                );
                self.error(kind, method, path, &detail)
            })?;
        let (code, index) = (answer.status, answer.index);
        let text = answer
            .body
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        if (200..300).contains(&code) {
            return text.map(|t| (Some(t), index)).map_err(|e| {
                let detail = format!("reading the answer: {}", crate::text::for_terminal(&e));
                self.error(ErrorKind::Unreachable, method, path, &detail)
            });
        }
        if code == 404 && not_found_ok {
            return Ok((None, index));
        }
        let text = text.unwrap_or_default();
        let text = first_line(&text);
        let (kind, detail) = match code {
            403 => (
                ErrorKind::Denied,
                self.denied_detail(&text, perm, token.is_some()),
            ),
            404 => (ErrorKind::NotFound, format!("404 {text}")),
            300..=399 => (
                ErrorKind::Status,
                format!(
                    "{code} redirect to \"{}\", not followed (the agent API never redirects: is \
                     CONSUL_HTTP_ADDR a proxy or the wrong port?)",
                    first_line(answer.location.as_deref().unwrap_or(""))
                ),
            ),
            _ => (ErrorKind::Status, format!("{code} {text}")),
        };
        Err(self.error(kind, method, path, &detail))
    }

    fn denied_detail(&self, text: &str, perm: &str, has_token: bool) -> String {
        if text.contains("ACL not found") {
            return "403 ACL not found: Consul does not know the token \
                    (check CONSUL_HTTP_TOKEN / --consul-token-file)"
                .to_string();
        }
        if has_token {
            format!("403 {text}: the token lacks {perm}")
        } else {
            format!(
                "403 {text}: no token set and the anonymous token lacks {perm} \
                 (set CONSUL_HTTP_TOKEN or --consul-token-file)"
            )
        }
    }

    fn error(&self, kind: ErrorKind, method: &str, path: &str, detail: &str) -> Error {
        let mut message = format!("consul {method} {}{path}: {detail}", self.shown);
        // Defence in depth: nothing we build contains the token, but an agent could echo it back.
        if let Some(t) = self.current_token() {
            if !t.expose().is_empty() {
                message = message.replace(t.expose(), "<redacted>");
            }
        }
        Error { kind, message }
    }
}

/// Standard base64 with padding (RFC 4648), for the basic auth header.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One request to the agent, as [`Client::exchange`] sends it.
#[derive(Clone, Copy)]
struct Request<'a> {
    method: &'a str,
    /// The API path and its query string (the client adds its prefix and namespace/partition scope).
    path: &'a str,
    body: Option<&'a str>,
    /// The ACL permission the call needs (for 403 messages).
    perm: &'a str,
    /// The total time limit; None: `CALL_TIMEOUT`.
    timeout: Option<Duration>,
    /// A 404 is an answer (None), not an error: a blocking query on a KV key that does not exist yet.
    not_found_ok: bool,
    /// Sent even while an earlier call waits at the agent, after it on its connection (deregistration).
    behind_earlier: bool,
}

impl<'a> Request<'a> {
    fn new(method: &'a str, path: &'a str, body: Option<&'a str>, perm: &'a str) -> Self {
        Request {
            method,
            path,
            body,
            perm,
            timeout: None,
            not_found_ok: false,
            behind_earlier: false,
        }
    }
}

fn write_perm(name: &str) -> String {
    format!("service:write on service {name:?}")
}

/// The first line of an error body, trimmed, capped so a chatty agent cannot flood the log, and escaped
/// so it cannot drive the operator's terminal.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    let line = match line.char_indices().nth(200) {
        Some((i, _)) => &line[..i],
        None => line,
    };
    crate::text::for_terminal(line).into_owned()
}

/// Percent-encode a path segment or query value (everything but RFC 3986 unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Options;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn agent(pairs: &[(&str, &str)]) -> AgentConfig {
        let mut o = Options::default();
        for (k, v) in pairs {
            o.set(k, vec![v.to_string()]);
        }
        AgentConfig::parse(&o).expect("agent config")
    }

    fn addr_of(l: &TcpListener) -> String {
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        format!("127.0.0.1:{port}")
    }

    /// Answer one request with `answer` on a real loopback socket (what a broken agent or a proxy would
    /// send); the thread returns the request it read.
    fn answer_once(
        answer: impl AsRef<[u8]> + Send + 'static,
    ) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = addr_of(&l);
        let h = std::thread::spawn(move || {
            let mut req = Vec::new();
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 8192];
                // Headers and a small body arrive together on loopback; read until the blank line.
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(answer.as_ref());
            }
            String::from_utf8_lossy(&req).into_owned()
        });
        (addr, h)
    }

    fn client(addr: &str, more: &[(&str, &str)]) -> Client {
        let mut pairs = vec![("CONSUL_HTTP_ADDR", addr)];
        pairs.extend_from_slice(more);
        Client::new(&agent(&pairs)).expect("client")
    }

    #[test]
    fn garbage_json_is_an_error_not_a_panic() {
        let (addr, h) = answer_once(
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{\"ID\": [1",
        );
        let e = client(&addr, &[])
            .service_known("web-1", "web")
            .expect_err("garbage must be an error");
        assert_eq!(e.kind, ErrorKind::BadResponse);
        assert!(
            e.message.contains("/v1/agent/service/web-1"),
            "{}",
            e.message
        );
        h.join().expect("server thread");
    }

    #[test]
    fn token_never_in_messages_even_when_echoed() {
        let (addr, h) = answer_once(
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 35\r\nConnection: close\r\n\r\nPermission denied for s3cr3t-token!",
        );
        let c = client(&addr, &[("CONSUL_HTTP_TOKEN", "s3cr3t-token")]);
        let e = c
            .register(&serde_json::json!({"Name": "web"}), "web")
            .expect_err("403");
        assert_eq!(e.kind, ErrorKind::Denied);
        assert!(!e.message.contains("s3cr3t-token"), "{}", e.message);
        assert!(
            e.message.contains("service:write on service \"web\""),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("/v1/agent/service/register"),
            "{}",
            e.message
        );
        let request = h.join().expect("server thread");
        assert!(
            request.contains("x-consul-token: s3cr3t-token\r\n"),
            "{request}"
        );
    }

    #[test]
    fn a_redirect_is_an_error_naming_the_status_and_is_not_followed() {
        for status in [
            "301 Moved Permanently",
            "302 Found",
            "307 Temporary Redirect",
            "308 Permanent Redirect",
        ] {
            // The Location points at a listener that would record a followed request.
            let follow = TcpListener::bind("127.0.0.1:0").expect("bind");
            follow.set_nonblocking(true).expect("nonblocking");
            let answer = format!(
                "HTTP/1.1 {status}\r\nLocation: http://{}/v1/agent/service/register\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n",
                addr_of(&follow)
            );
            let (addr, h) = answer_once(answer);
            let e = client(&addr, &[("CONSUL_HTTP_TOKEN", "tok")])
                .register(&serde_json::json!({"Name": "web"}), "web")
                .expect_err("a redirect is an error");
            let code = &status[..3];
            assert_eq!(e.kind, ErrorKind::Status, "{}", e.message);
            assert!(
                e.message
                    .contains(&format!(": {code} redirect to \"http://")),
                "{}",
                e.message
            );
            assert!(e.message.contains("not followed"), "{}", e.message);
            h.join().expect("server thread");
            assert!(
                follow.accept().is_err(),
                "{status}: the redirect was followed"
            );
        }
    }

    #[test]
    fn any_non_2xx_status_is_an_error_with_the_agents_text_escaped() {
        let (addr, h) = answer_once(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 17\r\nConnection: close\r\n\r\nboom\x1b[2J\xff\r\nsecond",
        );
        let e = client(&addr, &[])
            .deregister("web-1", "web", CALL_TIMEOUT)
            .expect_err("500");
        assert_eq!(e.kind, ErrorKind::Status);
        assert!(
            e.message.ends_with(": 500 boom\\x1b[2J\u{fffd}"),
            "{:?}",
            e.message
        );
        h.join().expect("server thread");
    }

    #[test]
    fn namespace_partition_and_basic_auth_reach_the_agent() {
        let (addr, h) =
            answer_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        client(
            &format!("http://{addr}/prefix"),
            &[
                ("CONSUL_NAMESPACE", "team a"),
                ("CONSUL_PARTITION", "p1"),
                ("CONSUL_HTTP_AUTH", "user:pass"),
            ],
        )
        .maintenance("web-1", "web", true, Some("why"))
        .expect("200");
        let request = h.join().expect("server thread");
        assert!(
            request.starts_with(
                "PUT /prefix/v1/agent/service/maintenance/web-1?enable=true&reason=why&ns=team%20a&partition=p1 HTTP/1.1\r\n"
            ),
            "{request}"
        );
        assert!(
            request.contains("authorization: Basic dXNlcjpwYXNz\r\n"),
            "{request}"
        );
    }

    #[test]
    fn chunked_close_delimited_and_after_100_continue_answers_are_read_whole() {
        let json = r#"{"ID": "web-1", "Service": "web"}"#;
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            &json[..5],
            json.len() - 5,
            &json[5..]
        );
        let to_eof = format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{json}");
        let after_100 = format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{json}",
            json.len()
        );
        for answer in [chunked, to_eof, after_100] {
            let (addr, h) = answer_once(answer.clone());
            let known = client(&addr, &[]).service_known("web-1", "web");
            assert_eq!(known, Ok(true), "{answer}");
            h.join().expect("server thread");
        }
    }

    #[test]
    fn an_answer_larger_than_the_limit_is_an_error() {
        let body = "x".repeat(BODY_LIMIT + 1);
        let (addr, h) = answer_once(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        let e = client(&addr, &[])
            .service_known("web-1", "web")
            .expect_err("too large");
        assert_eq!(e.kind, ErrorKind::Unreachable, "{}", e.message);
        assert!(e.message.contains("larger than"), "{}", e.message);
        let _ = h.join();
    }

    #[test]
    fn a_silent_agent_times_out_within_the_calls_bound() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = addr_of(&l);
        let start = std::time::Instant::now();
        // The connection is accepted (backlog) and never answered.
        let e = client(&addr, &[])
            .deregister("web-1", "web", Duration::from_millis(300))
            .expect_err("no answer");
        // Busy, not Unreachable: the agent holds the request and may execute it late.
        assert_eq!(e.kind, ErrorKind::Busy, "{}", e.message);
        assert!(e.message.contains("timed out"), "{}", e.message);
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        drop(l);
    }

    #[test]
    fn no_call_is_sent_while_the_agent_holds_one_unanswered_except_a_deregistration() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = addr_of(&l);
        let c = client(&addr, &[]);
        let update = || c.update_check("c", "web", CheckStatus::Passing, "ok");
        let first = update().expect_err("no answer");
        assert_eq!(first.kind, ErrorKind::Busy, "{}", first.message);
        let (held, _) = l.accept().expect("the first call connected");
        let second = update().expect_err("not sent");
        assert_eq!(second.kind, ErrorKind::Busy, "{}", second.message);
        assert!(second.message.contains("not sent"), "{}", second.message);
        assert!(l.accept().is_err(), "a second connection was opened");
        // The agent closes the old connection (it answered, or gave up): calls go out again.
        drop(held);
        let third = update().expect_err("no answer again");
        assert!(third.message.contains("timed out"), "{}", third.message);
        assert!(l.accept().is_ok(), "the third call was not sent");
    }

    #[test]
    fn a_deregistration_goes_after_the_unanswered_call_on_its_connection() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = addr_of(&l);
        // A slow agent: it answers the first request only once the second has arrived, then both in order.
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("/v1/agent/service/deregister/web-1") {
                let n = s.read(&mut buf).expect("read");
                assert!(n > 0, "closed before the deregistration came");
                seen.extend_from_slice(&buf[..n]);
            }
            let ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
            s.write_all(format!("{ok}{ok}").as_bytes()).expect("answer");
            l.set_nonblocking(true).expect("nonblocking");
            (
                String::from_utf8_lossy(&seen).into_owned(),
                l.accept().is_err(),
            )
        });
        let c = client(&addr, &[]);
        let e = c
            .update_check("c", "web", CheckStatus::Passing, "ok")
            .expect_err("no answer in time");
        assert_eq!(e.kind, ErrorKind::Busy, "{}", e.message);
        c.deregister("web-1", "web", Duration::from_secs(5))
            .expect("answered after the earlier call");
        let (seen, one_connection) = h.join().expect("server thread");
        assert!(one_connection, "a second connection was opened");
        let update = seen.find("/v1/agent/check/update/c").expect("update sent");
        let dereg = seen
            .find("/v1/agent/service/deregister/web-1")
            .expect("dereg sent");
        assert!(update < dereg, "{seen}");
    }

    #[test]
    fn a_connection_closed_unanswered_is_dropped() {
        // What Consul does over its per-address connection limit: accept, then close at once.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = addr_of(&l);
        let h = std::thread::spawn(move || drop(l.accept()));
        let e = client(&addr, &[])
            .deregister("web-1", "web", CALL_TIMEOUT)
            .expect_err("dropped");
        assert_eq!(e.kind, ErrorKind::Dropped, "{}", e.message);
        h.join().expect("server thread");
    }

    #[test]
    fn a_token_with_a_line_break_is_refused_before_anything_is_sent() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        l.set_nonblocking(true).expect("nonblocking");
        let c = client(&addr_of(&l), &[]);
        *c.token.lock().expect("lock") = Some(Secret::new("tok\r\nx-evil: 1".into()));
        let e = c
            .deregister("web-1", "web", CALL_TIMEOUT)
            .expect_err("refused");
        assert_eq!(e.kind, ErrorKind::BadResponse, "{}", e.message);
        assert!(e.message.contains("control character"), "{}", e.message);
        assert!(l.accept().is_err(), "a request was sent");
    }

    #[test]
    fn refused_connection_is_unreachable() {
        // Bind then drop: the port is (almost certainly) closed, so the connect is refused.
        let addr = addr_of(&TcpListener::bind("127.0.0.1:0").expect("bind"));
        let e = client(&addr, &[])
            .deregister("web-1", "web", CALL_TIMEOUT)
            .expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Unreachable, "{}", e.message);
        assert!(!e.message.contains('\n'));
    }

    #[test]
    fn percent_encoding_and_base64() {
        assert_eq!(encode("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(encode("a b/c?d&é"), "a%20b%2Fc%3Fd%26%C3%A9");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }
}
