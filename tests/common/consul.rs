//! A real Consul dev agent on loopback for tests, and a tiny independent HTTP client to inspect it.
//!
//! std only, so it is shared by the integration tests (tests/consul.rs) and, via `#[path]`, by the unit
//! tests of src/consul/registration.rs. The consul binary: `CONSUL_BIN`, else scripts/install-consul.sh (cached).
#![allow(dead_code)] // each includer uses a different subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The consul binary, installed once per test process.
pub fn consul_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(b) = std::env::var_os("CONSUL_BIN") {
            return PathBuf::from(b);
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/install-consul.sh");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: {:?}",
            script.display(),
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("install-consul.sh printed nothing")
                .trim(),
        )
    })
    .clone()
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Poll `cond` until true; panic naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection to `addr` (an IPv4 loopback `ip:port`) from 127.0.0.2: Consul limits concurrent connections per
/// client address (200), and a test that runs hundreds of instances from 127.0.0.1 must still see the agent.
fn connect_as_observer(addr: &str) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let Ok(target) = addr.parse::<std::net::SocketAddrV4>() else {
        return TcpStream::connect(addr); // a host name: the ordinary way
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 2, 0))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(target))?;
    Ok(TcpStream::from(fd))
}

/// One HTTP/1.0 request; returns (status, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let s = connect_as_observer(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    http_on(s, addr, method, path, token, body)
}

/// `http` through a unix socket.
pub fn http_unix(
    sock: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    http_on(s, "localhost", method, path, token, body)
}

fn http_on(
    mut s: impl Read + Write,
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("X-Consul-Token: {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub struct DevAgent {
    child: Option<Child>,
    pub http_port: u16,
    /// False for `start_on`: a restart or retry must keep the HTTP port.
    http_port_fixed: bool,
    ports: [u16; 3],
    extra: Vec<String>,
    pub log: PathBuf,
    /// The HTTP API's unix socket, when it listens on one instead of TCP (`start_unix`).
    unix: Option<PathBuf>,
}

/// Certificates made by `consul tls ca create` / `consul tls cert create` for a TLS agent.
pub struct TlsFiles {
    pub dir: PathBuf,
    /// The CA that signed the agent's and the client's certificates.
    pub ca: PathBuf,
    /// A client certificate and its key, signed by `ca` (for `verify_incoming`).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Another CA, which signed nothing the agent holds.
    pub wrong_ca: PathBuf,
}

impl TlsFiles {
    /// A CA, a server certificate (`server.dc1.consul`, `localhost`, 127.0.0.1), a client certificate, and a
    /// second unrelated CA, all made by the consul binary in `dir`.
    pub fn create(dir: &Path) -> TlsFiles {
        let run = |cwd: &Path, args: &[&str]| {
            std::fs::create_dir_all(cwd).expect("mkdir tls dir");
            let out = Command::new(consul_bin())
                .args(args)
                .current_dir(cwd)
                .output()
                .expect("run consul tls");
            assert!(out.status.success(), "consul {args:?}: {out:?}");
        };
        run(dir, &["tls", "ca", "create"]);
        run(dir, &["tls", "cert", "create", "-server"]);
        run(dir, &["tls", "cert", "create", "-client"]);
        let other = dir.join("other");
        run(&other, &["tls", "ca", "create"]);
        TlsFiles {
            dir: dir.to_path_buf(),
            ca: dir.join("consul-agent-ca.pem"),
            client_cert: dir.join("dc1-client-consul-0.pem"),
            client_key: dir.join("dc1-client-consul-0-key.pem"),
            wrong_ca: other.join("consul-agent-ca.pem"),
        }
    }
}

impl DevAgent {
    pub fn start() -> DevAgent {
        Self::start_with(&[])
    }

    /// A dev agent with extra `consul agent` arguments (e.g. `-hcl` for ACLs).
    pub fn start_with(extra: &[&str]) -> DevAgent {
        Self::new(free_port(), false, extra)
    }

    /// A dev agent with ACLs on, default deny, and `master` as its master token.
    pub fn start_acl(master: &str) -> DevAgent {
        let hcl = format!(
            r#"acl {{ enabled = true default_policy = "deny" tokens {{ master = "{master}" }} }}"#
        );
        Self::start_with(&["-hcl", &hcl])
    }

    /// A new ACL token allowed exactly `service:write` on `service`; returns its secret.
    pub fn write_token(&self, master: &str, service: &str) -> String {
        // One policy per token: a second token for the same service must not collide on the name.
        static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{service}-write-{n}");
        let policy = serde_json::json!({
            "Name": name,
            "Rules": format!("service \"{service}\" {{ policy = \"write\" }}"),
        });
        // Right after start the ACL system answers 500 "in legacy mode" until the leader has set it up.
        let mut answer = (0, String::new());
        wait_until(
            "the ACL system out of legacy mode",
            Duration::from_secs(30),
            || {
                answer = self.request(
                    "PUT",
                    "/v1/acl/policy",
                    Some(master),
                    Some(&policy.to_string()),
                );
                !answer.1.contains("legacy mode")
            },
        );
        let (st, body) = answer;
        assert_eq!(st, 200, "create policy: {body}");
        let token = serde_json::json!({"Policies": [{"Name": name}]});
        let (st, body) = self.request(
            "PUT",
            "/v1/acl/token",
            Some(master),
            Some(&token.to_string()),
        );
        assert_eq!(st, 200, "create token: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("token JSON");
        v["SecretID"].as_str().expect("SecretID").to_string()
    }

    /// Delete the token whose secret is `secret` (the agent answers 403 "ACL not found" to it from then on).
    pub fn revoke_token(&self, master: &str, secret: &str) {
        let (st, body) = self.request("GET", "/v1/acl/token/self", Some(secret), None);
        assert_eq!(st, 200, "read token: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("token JSON");
        let accessor = v["AccessorID"].as_str().expect("AccessorID");
        let (st, body) = self.request(
            "DELETE",
            &format!("/v1/acl/token/{accessor}"),
            Some(master),
            None,
        );
        assert_eq!(st, 200, "delete token: {body}");
    }

    /// A dev agent whose HTTP API listens only on the unix socket `sock` (no TCP HTTP listener at all).
    pub fn start_unix(sock: &Path) -> DevAgent {
        let hcl = format!(r#"addresses {{ http = "unix://{}" }}"#, sock.display());
        let mut a = DevAgent {
            child: None,
            http_port: free_port(),
            http_port_fixed: false,
            ports: [free_port(), free_port(), free_port()],
            extra: vec!["-hcl".into(), hcl],
            log: std::env::temp_dir().join(format!("microinit-consul-unix-{}.log", free_port())),
            unix: Some(sock.to_path_buf()),
        };
        a.spawn();
        a
    }

    /// A dev agent with an HTTPS listener on `https_port` that requires a client certificate
    /// (`verify_incoming`), with the certificates in `tls`; plain HTTP stays on loopback for inspection.
    pub fn start_tls(tls: &TlsFiles, https_port: u16) -> DevAgent {
        let hcl = format!(
            r#"ports {{ https = {https_port} }} ca_file = "{}" cert_file = "{}" key_file = "{}" verify_incoming = true"#,
            tls.ca.display(),
            tls.dir.join("dc1-server-consul-0.pem").display(),
            tls.dir.join("dc1-server-consul-0-key.pem").display(),
        );
        Self::start_with(&["-hcl", &hcl])
    }

    /// A dev agent whose HTTP API listens on `http_port` (for "agent down at start, then up").
    pub fn start_on(http_port: u16, extra: &[&str]) -> DevAgent {
        Self::new(http_port, true, extra)
    }

    fn new(http_port: u16, http_port_fixed: bool, extra: &[&str]) -> DevAgent {
        let mut a = DevAgent {
            child: None,
            http_port,
            http_port_fixed,
            ports: [free_port(), free_port(), free_port()],
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: std::env::temp_dir().join(format!("microinit-consul-{http_port}.log")),
            unix: None,
        };
        a.spawn();
        a
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    fn spawn(&mut self) {
        for attempt in 0..3 {
            if attempt > 0 {
                // A port raced with someone else: pick new ones (but keep a fixed HTTP port).
                self.ports = [free_port(), free_port(), free_port()];
                if !self.http_port_fixed {
                    self.http_port = free_port();
                }
            }
            let log = std::fs::File::create(&self.log).expect("create consul log");
            let [lan, wan, server] = self.ports;
            let mut child = Command::new(consul_bin())
                .args([
                    "agent",
                    "-dev",
                    "-bind",
                    "127.0.0.1",
                    "-client",
                    "127.0.0.1",
                ])
                .args(["-node", &format!("dev-{}", self.ports[2])])
                .args([
                    "-http-port",
                    &self.http_port.to_string(),
                    "-dns-port",
                    "-1",
                    "-grpc-port",
                    "-1",
                ])
                .args([
                    "-serf-lan-port",
                    &lan.to_string(),
                    "-serf-wan-port",
                    &wan.to_string(),
                ])
                .args(["-server-port", &server.to_string()])
                .args(&self.extra)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .expect("spawn consul agent");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if self.is_ours_and_has_leader() {
                    self.child = Some(child);
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!(
            "consul dev agent did not come up on port {} (log: {})",
            self.http_port,
            self.log.display()
        );
    }

    /// The leader is the server RPC address, and the server port is ours alone: this proves the agent
    /// answering on our HTTP port is the one we started (ports are picked racily), without needing a token.
    fn is_ours_and_has_leader(&self) -> bool {
        let ours = format!("\"127.0.0.1:{}\"", self.ports[2]);
        matches!(self.try_request("GET", "/v1/status/leader", None, None), Ok((200, body)) if body.trim() == ours)
    }

    /// Stall the agent (SIGSTOP) or let it go on (SIGCONT): the kernel still completes TCP handshakes and
    /// buffers requests, which the agent executes when it runs again, however late.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            nix::sys::signal::kill(pid, sig).expect("signal the consul agent");
        }
    }

    /// SIGKILL the agent (it forgets every service: dev mode keeps nothing on disk).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill and start again on the same ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, None, None)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        self.try_request(method, path, token, body)
            .unwrap_or((0, String::new()))
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        match &self.unix {
            Some(sock) => http_unix(sock, method, path, token, body),
            None => http(&self.addr(), method, path, token, body),
        }
    }

    /// `/v1/agent/checks` (optionally with a token) as JSON.
    pub fn checks(&self, token: Option<&str>) -> serde_json::Value {
        let (_, body) = self.request("GET", "/v1/agent/checks", token, None);
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    }

    /// The local agent's view of one service, if it knows it.
    pub fn service(&self, id: &str, token: Option<&str>) -> Option<serde_json::Value> {
        match self.request("GET", &format!("/v1/agent/service/{id}"), token, None) {
            (200, body) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Status of a check on the local agent ("passing", …), if it exists.
    pub fn check_status(&self, check_id: &str, token: Option<&str>) -> Option<String> {
        self.checks(token)
            .get(check_id)?
            .get("Status")?
            .as_str()
            .map(String::from)
    }

    /// Register instance `id` of service `name` at 127.0.0.1:`port` with a TTL check `ID-ttl` in `status`.
    pub fn register_instance(&self, name: &str, id: &str, port: u16, status: &str) {
        let def = serde_json::json!({
            "Name": name, "ID": id, "Address": "127.0.0.1", "Port": port,
            "Check": {"CheckID": format!("{id}-ttl"), "TTL": "1h", "Status": status},
        });
        let (st, body) = self.request(
            "PUT",
            "/v1/agent/service/register",
            None,
            Some(&def.to_string()),
        );
        assert_eq!(st, 200, "register {id}: {body}");
    }

    /// Set the TTL check of an instance registered by `register_instance`.
    pub fn set_instance_check(&self, id: &str, status: &str, output: &str) {
        let body = serde_json::json!({"Status": status, "Output": output}).to_string();
        let (st, answer) = self.request(
            "PUT",
            &format!("/v1/agent/check/update/{id}-ttl"),
            None,
            Some(&body),
        );
        assert_eq!(st, 200, "update {id}: {answer}");
    }

    /// Instances of `name` that pass all their checks, according to the catalog (what clients see).
    pub fn passing_instances(&self, name: &str) -> usize {
        let (status, body) = self.get(&format!("/v1/health/service/{name}?passing"));
        if status != 200 {
            return 0;
        }
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    }
}

impl Drop for DevAgent {
    fn drop(&mut self) {
        self.kill();
    }
}
