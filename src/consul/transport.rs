//! The connections under the Consul client: TCP or a unix socket, then TLS when the agent speaks HTTPS.
//!
//! Owns: opening one connection to the agent within the connect timeout (a host name is resolved on a
//! helper thread, so even a hanging DNS lookup is bounded), the socket timeouts that end every read and
//! write by the call's deadline, and (feature `https`) the rustls configuration: trusted CAs from
//! `CONSUL_CACERT`/`CONSUL_CAPATH`, the client certificate for mTLS, the server name to verify
//! (`CONSUL_TLS_SERVER_NAME`), and `CONSUL_HTTP_SSL_VERIFY=false`. Every certificate problem is found when
//! the client is built (at start), as a one-line error naming the variable and the file. Does not own: HTTP
//! (`http`) or what is asked (`client`).
//!
//! The server name to verify is the configured one, not the URL's host: a `server.dc1.consul` certificate
//! is reached at 127.0.0.1. A key that does not match its certificate is an error at start, never a panic.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::consul_agent::{AgentConfig, Endpoint};

pub use tls::Conn;

/// Connect timeout of every call (TLS handshake included): the agent is local, so a slow connect means it
/// is not there.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the agent is and how to speak to it; opens a fresh connection per call.
pub struct Connector {
    endpoint: Endpoint,
    tls: tls::Tls,
}

/// The connector for `agent`. Fails (one line naming the variable) on a certificate or key that cannot be
/// used, or an https:// agent in a build without TLS.
pub fn connector(agent: &AgentConfig) -> Result<Connector, String> {
    Ok(Connector {
        endpoint: agent.endpoint.clone(),
        tls: tls::settings(agent)?,
    })
}

impl Connector {
    /// A new connection (TLS handshake done) whose reads and writes end by `deadline`.
    pub fn connect(&self, deadline: Instant) -> io::Result<Conn> {
        let connect_by = deadline.min(Instant::now() + CONNECT_TIMEOUT);
        let stream = match &self.endpoint {
            Endpoint::Unix(path) => Stream::Unix(connect_unix(path, connect_by)?),
            Endpoint::Tcp { host, port } => Stream::Tcp(connect_tcp(host, *port, connect_by)?),
        };
        let mut conn = self.tls.wrap(Socket {
            stream,
            deadline: connect_by,
        })?;
        conn.set_deadline(deadline);
        Ok(conn)
    }
}

/// A connected socket whose every read and write ends by `deadline` (the timeout is set to the time left
/// before each one, so a slowly dripping agent cannot stretch a call).
pub struct Socket {
    stream: Stream,
    deadline: Instant,
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

/// The time left before `deadline`, or a timeout error when none is.
fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out());
    }
    Ok(left)
}

/// A socket timeout (EAGAIN from SO_RCVTIMEO/SO_SNDTIMEO) as the timeout it is.
fn named(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        return timed_out();
    }
    e
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = Some(left(self.deadline)?);
        match &mut self.stream {
            Stream::Tcp(s) => s.set_read_timeout(t).and_then(|()| s.read(buf)),
            Stream::Unix(s) => s.set_read_timeout(t).and_then(|()| s.read(buf)),
        }
        .map_err(named)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = Some(left(self.deadline)?);
        match &mut self.stream {
            Stream::Tcp(s) => s.set_write_timeout(t).and_then(|()| s.write(buf)),
            Stream::Unix(s) => s.set_write_timeout(t).and_then(|()| s.write(buf)),
        }
        .map_err(named)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket {
    /// Whether the agent has sent something on this connection or closed it (a late answer, EOF or a
    /// reset), without waiting: a call given up on holds its connection until then.
    pub fn answered(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let fd = match &self.stream {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        // An error polling our own socket: take it as done, so it is closed rather than kept.
        poll(&mut fds, PollTimeout::ZERO).map_or(true, |n| n > 0)
    }
}

/// Each address of `host` in turn until one accepts, all within `deadline`.
fn connect_tcp(host: &str, port: u16, deadline: Instant) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in resolve(host, port, deadline)? {
        match TcpStream::connect_timeout(&addr, left(deadline)?) {
            Ok(s) => {
                // Request and TLS records go out as soon as written.
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
}

/// An IP literal as it is; a host name through the system resolver on a helper thread, waited for until
/// `deadline` (getaddrinfo has no timeout of its own; a thread left behind ends with its lookup).
fn resolve(host: &str, port: u16, deadline: Instant) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let name = (host.to_string(), port);
    std::thread::spawn(move || {
        let _ = tx.send(name.to_socket_addrs().map(Vec::from_iter));
    });
    rx.recv_timeout(left(deadline)?)
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out resolving the host name"))?
}

/// A blocking connect(2) on a unix socket waits while the listener's backlog is full (a stalled agent):
/// connect non-blocking, where the kernel answers EAGAIN instead, and retry until `deadline`.
fn connect_unix(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let addr = UnixAddr::new(path)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    loop {
        match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
            Ok(()) => break,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                left(deadline)?;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

#[cfg(feature = "https")]
mod tls {
    use std::io::{self, Read, Write};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Instant;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{
        ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned,
    };

    use super::Socket;
    use crate::config::consul_agent::{AgentConfig, Endpoint};
    use crate::config::user_file;

    /// Most files a CONSUL_CAPATH directory may hold (a bound on start-up work, far above real use).
    const MAX_CAPATH_FILES: usize = 1000;

    /// Wraps the connection in TLS when the agent is https://.
    pub struct Tls(Option<(Arc<ClientConfig>, ServerName<'static>)>);

    pub fn settings(agent: &AgentConfig) -> Result<Tls, String> {
        if !agent.https {
            return Ok(Tls(None));
        }
        let name = agent
            .tls
            .server_name
            .clone()
            .unwrap_or_else(|| match &agent.endpoint {
                Endpoint::Tcp { host, .. } => host.clone(),
                // Consul's own certificates name `localhost` too.
                Endpoint::Unix(_) => "localhost".into(),
            });
        let name = ServerName::try_from(name.clone())
            .map_err(|_| format!("CONSUL_TLS_SERVER_NAME={name}: not a DNS name or IP address"))?;
        Ok(Tls(Some((Arc::new(client_config(agent)?), name))))
    }

    fn client_config(agent: &AgentConfig) -> Result<ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        let tls = &agent.tls;
        let builder = if !tls.verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            let mut roots = RootCertStore::empty();
            if let Some(path) = &tls.cacert {
                add_roots(&mut roots, "CONSUL_CACERT", path)?;
            } else if let Some(dir) = &tls.capath {
                let bad =
                    |e: &dyn std::fmt::Display| format!("CONSUL_CAPATH {}: {e}", dir.display());
                let mut entries: Vec<_> = std::fs::read_dir(dir)
                    .map_err(|e| bad(&e))?
                    .take(MAX_CAPATH_FILES)
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    // Subdirectories and what is not a regular file are skipped (symlinks are followed).
                    .filter(|p| p.is_file())
                    .collect();
                entries.sort();
                for p in &entries {
                    add_roots(&mut roots, "CONSUL_CAPATH", p)?;
                }
            }
            if roots.is_empty() {
                return Err(format!(
                    "{} is HTTPS but no CA to verify it with: set CONSUL_CACERT (or CONSUL_CAPATH) \
                     to the CA that signed the agent's certificate",
                    agent.display()
                ));
            }
            builder.with_root_certificates(roots)
        };
        match &tls.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some((cert_path, key_path)) => {
                let certs = pem_certs("CONSUL_CLIENT_CERT", cert_path)?;
                let key_pem = user_file::read("CONSUL_CLIENT_KEY", key_path, user_file::SMALL)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    format!(
                        "CONSUL_CLIENT_KEY {}: no PEM private key ({e})",
                        key_path.display()
                    )
                })?;
                builder.with_client_auth_cert(certs, key).map_err(|e| {
                    format!(
                        "CONSUL_CLIENT_CERT {} / CONSUL_CLIENT_KEY {}: {e} (does the key belong to the certificate?)",
                        cert_path.display(),
                        key_path.display()
                    )
                })
            }
        }
    }

    fn pem_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
        let pem = user_file::read(what, path, user_file::LARGE)?;
        let bad = |e: &dyn std::fmt::Display| format!("{what} {}: {e}", path.display());
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        if certs.is_empty() {
            return Err(bad(&"no PEM certificate in the file"));
        }
        Ok(certs)
    }

    fn add_roots(roots: &mut RootCertStore, what: &str, path: &Path) -> Result<(), String> {
        for cert in pem_certs(what, path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{what} {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// CONSUL_HTTP_SSL_VERIFY=false: any certificate is accepted, but the handshake's signatures are still
    /// checked (the connection is encrypted to whoever holds the presented certificate's key).
    #[derive(Debug)]
    struct NoVerification(Arc<CryptoProvider>);

    impl ServerCertVerifier for NoVerification {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    impl Tls {
        /// The connection as it is (plain HTTP), or after a TLS handshake within the socket's deadline.
        pub fn wrap(&self, sock: Socket) -> io::Result<Conn> {
            let Some((config, name)) = &self.0 else {
                return Ok(Conn::Plain(sock));
            };
            let conn = ClientConnection::new(Arc::clone(config), name.clone())
                .map_err(io::Error::other)?;
            let mut stream = StreamOwned::new(conn, sock);
            stream.conn.complete_io(&mut stream.sock)?;
            Ok(Conn::Tls(Box::new(stream)))
        }
    }

    /// One connection to the agent, plain or TLS.
    pub enum Conn {
        Plain(Socket),
        Tls(Box<StreamOwned<ClientConnection, Socket>>),
    }

    impl Conn {
        pub fn set_deadline(&mut self, deadline: Instant) {
            match self {
                Conn::Plain(s) => s.deadline = deadline,
                Conn::Tls(t) => t.sock.deadline = deadline,
            }
        }

        pub fn answered(&self) -> bool {
            match self {
                Conn::Plain(s) => s.answered(),
                Conn::Tls(t) => t.sock.answered(),
            }
        }
    }

    impl Read for Conn {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self {
                Conn::Plain(s) => s.read(buf),
                Conn::Tls(t) => t.read(buf),
            }
        }
    }

    impl Write for Conn {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match self {
                Conn::Plain(s) => s.write(buf),
                Conn::Tls(t) => t.write(buf),
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            match self {
                Conn::Plain(s) => s.flush(),
                Conn::Tls(t) => t.flush(),
            }
        }
    }
}

#[cfg(not(feature = "https"))]
mod tls {
    use super::Socket;
    use crate::config::consul_agent::AgentConfig;

    /// Without the `https` feature a connection is the socket itself.
    pub type Conn = Socket;

    /// Without the `https` feature: refuses an HTTPS agent up front.
    pub struct Tls;

    pub fn settings(agent: &AgentConfig) -> Result<Tls, String> {
        if agent.https {
            return Err(format!(
                "{}: this microinit is the plain build, without TLS; use the TLS build \
                 (microinit-https, the base-https image) or a plain http:// or unix:// agent address",
                agent.display()
            ));
        }
        Ok(Tls)
    }

    impl Tls {
        pub fn wrap(&self, sock: Socket) -> std::io::Result<Conn> {
            Ok(sock)
        }
    }

    impl Socket {
        pub fn set_deadline(&mut self, deadline: std::time::Instant) {
            self.deadline = deadline;
        }
    }
}
