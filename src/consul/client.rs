//! A minimal blocking client for the Consul *agent* HTTP API (ureq 2).
//!
//! Owns: the HTTP calls microinit makes (register with `replace-existing-checks`, TTL check update, deregister,
//! service maintenance, "does the agent still know this service"), their timeouts, the token (sent as
//! `Authorization: Bearer`), and turning every failure into one line that names the endpoint (and, for a 403,
//! the ACL permission the token lacks). Does not own: when to call what (`registration`), nor the service definition's
//! content. Nothing here panics on what Consul sends back, and the token never appears in a message.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::config::{ConsulAddr, Secret};

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
    /// No answer: connection refused, timeout, TLS failure. Worth retrying with backoff.
    Unreachable,
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

/// Connect timeout of every call: the agent is local, so a slow connect means it is not there.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Default total timeout (connect + request + response) of every call.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(800);

pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<Secret>,
}

impl Client {
    /// A client for the agent at `addr`. Fails only on a bad `cacert` or HTTPS without the `https` feature.
    pub fn new(
        addr: &ConsulAddr,
        token: Option<Secret>,
        cacert: Option<&Path>,
    ) -> Result<Client, String> {
        let builder = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            // The agent API never redirects; following one could send the token elsewhere.
            .redirects(0)
            // No idle keep-alive connection per instance: Consul allows 200 connections per client address
            // (http_max_conns_per_client), and hundreds of microinits behind one address (host networking)
            // would hold them all while idle. A heartbeat every TTL/2 pays one loopback/LAN connect instead.
            .max_idle_connections(0)
            .user_agent(concat!("microinit/", env!("CARGO_PKG_VERSION")));
        let builder = tls::configure(builder, addr, cacert)?;
        Ok(Client {
            agent: builder.build(),
            base: addr.base_url(),
            token,
        })
    }

    /// The agent's base URL (for status output and messages).
    pub fn base_url(&self) -> &str {
        &self.base
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
        self.call("PUT", &path, None, &write_perm(name), Some(timeout))
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
        self.request("GET", &path, None, perm, Some(timeout), true)
            .map(|(body, idx)| (body, idx.unwrap_or(0)))
    }

    /// One call; returns the body of a 2xx. `perm` is the ACL permission the call needs (for 403 messages).
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        perm: &str,
        timeout: Option<Duration>,
    ) -> Result<String, Error> {
        self.request(method, path, body, perm, timeout, false)
            .map(|(body, _)| body.unwrap_or_default())
    }

    /// `call`, also returning the `X-Consul-Index` header of the answer; with `not_found_ok` a 404 is the
    /// answer None instead of an error.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        perm: &str,
        timeout: Option<Duration>,
        not_found_ok: bool,
    ) -> Result<(Option<String>, Option<u64>), Error> {
        let index_of = |resp: &ureq::Response| {
            resp.header("X-Consul-Index")
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let mut req = self
            .agent
            .request(method, &format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            // Consul takes the token as X-Consul-Token or as a bearer token. Bearer it is: ureq logs every
            // request's headers at debug level (-vv, RUST_LOG=debug) and masks only Authorization (and Cookie).
            req = req.set("Authorization", &format!("Bearer {}", t.expose()));
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let result = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        match result {
            Ok(resp) => {
                let index = index_of(&resp);
                resp.into_string().map(|b| (Some(b), index)).map_err(|e| {
                    self.error(
                        ErrorKind::Unreachable,
                        method,
                        path,
                        &format!("reading the answer: {e}"),
                    )
                })
            }
            Err(ureq::Error::Status(404, resp)) if not_found_ok => Ok((None, index_of(&resp))),
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let text = first_line(&text);
                let (kind, detail) = match code {
                    403 => (ErrorKind::Denied, self.denied_detail(text, perm)),
                    404 => (ErrorKind::NotFound, format!("404 {text}")),
                    _ => (ErrorKind::Status, format!("{code} {text}")),
                };
                Err(self.error(kind, method, path, &detail))
            }
            Err(ureq::Error::Transport(t)) => {
                // The kind alone ("Network Error") hides the cause: add the message and the io error,
                // skipping the repetitions ureq puts into them.
                let kind = t.kind().to_string();
                let mut detail = kind.clone();
                let source = std::error::Error::source(&t).map(|s| s.to_string());
                for part in [t.message().map(String::from), source]
                    .into_iter()
                    .flatten()
                {
                    let part = part.strip_prefix(&format!("{kind}: ")).unwrap_or(&part);
                    if !detail.contains(part) {
                        detail.push_str(": ");
                        detail.push_str(part);
                    }
                }
                let detail = format!("agent unreachable ({detail})");
                Err(self.error(ErrorKind::Unreachable, method, path, &detail))
            }
        }
    }

    fn denied_detail(&self, text: &str, perm: &str) -> String {
        if text.contains("ACL not found") {
            return "403 ACL not found: Consul does not know the token \
                    (check CONSUL_HTTP_TOKEN / --consul-token-file)"
                .to_string();
        }
        match self.token {
            None => format!(
                "403 {text}: no token set and the anonymous token lacks {perm} \
                 (set CONSUL_HTTP_TOKEN or --consul-token-file)"
            ),
            Some(_) => format!("403 {text}: the token lacks {perm}"),
        }
    }

    fn error(&self, kind: ErrorKind, method: &str, path: &str, detail: &str) -> Error {
        let mut message = format!("consul {method} {}{path}: {detail}", self.base);
        // Defence in depth: nothing we build contains the token, but an agent could echo it back.
        if let Some(t) = &self.token {
            if !t.expose().is_empty() {
                message = message.replace(t.expose(), "<redacted>");
            }
        }
        Error { kind, message }
    }
}

fn write_perm(name: &str) -> String {
    format!("service:write on service {name:?}")
}

/// The first line of an error body, trimmed and capped so a chatty agent cannot flood the log.
fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("").trim();
    match line.char_indices().nth(200) {
        Some((i, _)) => &line[..i],
        None => line,
    }
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

#[cfg(feature = "https")]
mod tls {
    use std::path::Path;
    use std::sync::Arc;

    use ureq::rustls;
    use ureq::rustls::pki_types::pem::PemObject;
    use ureq::rustls::pki_types::CertificateDer;

    /// With `CONSUL_CACERT`, trust exactly the CAs in that PEM file; otherwise ureq's built-in web roots.
    pub fn configure(
        builder: ureq::AgentBuilder,
        _addr: &crate::config::ConsulAddr,
        cacert: Option<&Path>,
    ) -> Result<ureq::AgentBuilder, String> {
        let Some(path) = cacert else {
            return Ok(builder);
        };
        let bad = |e: &dyn std::fmt::Display| format!("CONSUL_CACERT {}: {e}", path.display());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        if roots.is_empty() {
            return Err(bad(&"no PEM certificate in the file"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(builder.tls_config(Arc::new(config)))
    }
}

#[cfg(not(feature = "https"))]
mod tls {
    use std::path::Path;

    /// Without the `https` feature an https:// agent address is a configuration error, stated up front.
    pub fn configure(
        builder: ureq::AgentBuilder,
        addr: &crate::config::ConsulAddr,
        _cacert: Option<&Path>,
    ) -> Result<ureq::AgentBuilder, String> {
        if addr.scheme == "https" {
            return Err(format!(
                "CONSUL_HTTP_ADDR {}: this microinit was built without HTTPS support \
                 (rebuild with --features https, or use http://)",
                addr.base_url()
            ));
        }
        Ok(builder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn addr_of(l: &TcpListener) -> ConsulAddr {
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        ConsulAddr {
            scheme: "http".into(),
            host: "127.0.0.1".into(),
            port,
        }
    }

    /// Answer one request with `answer`, on a real socket (what a broken agent or proxy would send).
    fn answer_once(answer: &'static str) -> (ConsulAddr, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = addr_of(&l);
        let h = std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        (addr, h)
    }

    #[test]
    fn garbage_json_is_an_error_not_a_panic() {
        let (addr, h) = answer_once(
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{\"ID\": [1",
        );
        let c = Client::new(&addr, None, None).expect("client");
        let e = c
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
        let c = Client::new(&addr, Some(Secret::new("s3cr3t-token".into())), None).expect("client");
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
        h.join().expect("server thread");
    }

    #[test]
    fn refused_connection_is_unreachable() {
        // Bind then drop: the port is (almost certainly) closed, so the connect is refused.
        let addr = addr_of(&TcpListener::bind("127.0.0.1:0").expect("bind"));
        let c = Client::new(&addr, None, None).expect("client");
        let e = c
            .deregister("web-1", "web", CALL_TIMEOUT)
            .expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Unreachable, "{}", e.message);
        assert!(!e.message.contains('\n'));
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(encode("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(encode("a b/c?d&é"), "a%20b%2Fc%3Fd%26%C3%A9");
    }
}
