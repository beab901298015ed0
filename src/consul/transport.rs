//! The connections under the Consul client: TCP or a unix socket, then TLS when the agent speaks HTTPS.
//!
//! Owns: the ureq connector chain (unix socket → TCP → TLS) and resolver that `client` builds its agent
//! from, and (feature `https`) the rustls configuration: trusted CAs from `CONSUL_CACERT`/`CONSUL_CAPATH`,
//! the client certificate for mTLS, the server name to verify (`CONSUL_TLS_SERVER_NAME`), and
//! `CONSUL_HTTP_SSL_VERIFY=false`. Every certificate problem is found when the client is built (at start),
//! as a one-line error naming the variable and the file. Does not own: HTTP itself (ureq) or what is asked.
//!
//! Why a chain of our own instead of ureq's default one: the default has no unix sockets, cannot verify a
//! server name other than the URL's host (a `server.dc1.consul` certificate reached at 127.0.0.1), and its
//! rustls connector panics on a key that does not match its certificate, which must not happen in PID 1.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, TcpConnector, Transport,
};

use crate::config::consul_agent::{AgentConfig, Endpoint};

/// The connector chain and resolver for `agent`: unix socket or TCP, then TLS when `agent.https`.
pub fn connector(agent: &AgentConfig) -> Result<(impl Connector, AgentResolver), String> {
    let unix = match &agent.endpoint {
        Endpoint::Unix(p) => Some(p.clone()),
        Endpoint::Tcp { .. } => None,
    };
    let chain = UnixConnector(unix.clone())
        .chain(TcpConnector::default())
        .chain(tls::connector(agent)?);
    Ok((
        chain,
        AgentResolver {
            unix: unix.is_some(),
        },
    ))
}

/// Connects to the agent's unix socket when the address is `unix://…`; passes otherwise.
#[derive(Debug)]
struct UnixConnector(Option<PathBuf>);

impl Connector<()> for UnixConnector {
    type Out = UnixTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<UnixTransport>, ureq::Error> {
        let Some(path) = &self.0 else {
            return Ok(None);
        };
        let stream = connect_unix(path, details.timeout)?;
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(UnixTransport { stream, buffers }))
    }
}

/// A blocking connect(2) on a unix socket waits while the listener's backlog is full (a stalled agent):
/// connect non-blocking, where the kernel answers EAGAIN instead, and retry within the connect timeout.
fn connect_unix(path: &Path, timeout: NextTimeout) -> Result<UnixStream, ureq::Error> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let addr = UnixAddr::new(path).map_err(|e| ureq::Error::Io(e.into()))?;
    let deadline = timeout.not_zero().map(|d| std::time::Instant::now() + *d);
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| ureq::Error::Io(e.into()))?;
    loop {
        match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
            Ok(()) => break,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    return Err(ureq::Error::Timeout(ureq::Timeout::Connect));
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(ureq::Error::Io(e.into())),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

#[derive(Debug)]
struct UnixTransport {
    stream: UnixStream,
    buffers: LazyBuffers,
}

/// A std::io timeout error as ureq's timeout (so the message says which phase timed out).
fn io_error(e: std::io::Error, timeout: NextTimeout) -> ureq::Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ureq::Error::Timeout(timeout.reason)
        }
        _ => ureq::Error::Io(e),
    }
}

impl Transport for UnixTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let timeout = timeout.for_write();
        if timeout.after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        self.stream
            .set_write_timeout(timeout.not_zero().map(|d| *d))?;
        let output = &self.buffers.output()[..amount];
        self.stream
            .write_all(output)
            .map_err(|e| io_error(e, timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let timeout = timeout.for_read();
        if timeout.after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        self.stream
            .set_read_timeout(timeout.not_zero().map(|d| *d))?;
        let input = self.buffers.input_append_buf();
        let n = loop {
            match self.stream.read(input) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.map_err(|e| io_error(e, timeout))?,
            }
        };
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    /// Open unless the agent closed it: a non-blocking peek finds EOF (0) or nothing to read (EAGAIN).
    fn is_open(&mut self) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: recv into a 1-byte stack buffer on our own socket.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.stream),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
    }
}

/// Resolves nothing for a unix socket, an IP literal without the resolver's helper thread, and a host name
/// with ureq's resolver (bounded by the call's timeout).
#[derive(Debug)]
pub struct AgentResolver {
    unix: bool,
}

impl Resolver for AgentResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut out = self.empty();
        let port = uri.port_u16().unwrap_or(0);
        let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
        if self.unix {
            // The unix connector ignores it; ureq wants an address for its pool key and logs.
            out.push(SocketAddr::from(([127, 0, 0, 1], port)));
            return Ok(out);
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            out.push(SocketAddr::new(ip, port));
            return Ok(out);
        }
        DefaultResolver::default().resolve(uri, config, timeout)
    }
}

#[cfg(feature = "https")]
mod tls {
    use std::io::{Read, Write};
    use std::path::Path;
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{
        ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned,
    };
    use ureq::unversioned::transport::{
        Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport,
        TransportAdapter,
    };

    use crate::config::consul_agent::{AgentConfig, Endpoint};
    use crate::config::user_file;

    /// Most files a CONSUL_CAPATH directory may hold (a bound on start-up work, far above real use).
    const MAX_CAPATH_FILES: usize = 1000;

    /// Wraps the connection in TLS when the URL is https://.
    #[derive(Debug)]
    pub struct TlsConnector(Option<(Arc<ClientConfig>, ServerName<'static>)>);

    pub fn connector(agent: &AgentConfig) -> Result<TlsConnector, String> {
        if !agent.https {
            return Ok(TlsConnector(None));
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
        Ok(TlsConnector(Some((Arc::new(client_config(agent)?), name))))
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

    impl<In: Transport> Connector<In> for TlsConnector {
        type Out = Either<In, TlsTransport>;

        fn connect(
            &self,
            details: &ConnectionDetails,
            chained: Option<In>,
        ) -> Result<Option<Self::Out>, ureq::Error> {
            let Some(inner) = chained else {
                return Ok(None);
            };
            let Some((config, name)) = self.0.as_ref().filter(|_| details.needs_tls()) else {
                return Ok(Some(Either::A(inner)));
            };
            let mut conn = ClientConnection::new(Arc::clone(config), name.clone())
                .map_err(|e| ureq::Error::Io(std::io::Error::other(e)))?;
            let mut sock = TransportAdapter::new(inner.boxed(), details.current_time.clone());
            sock.set_timeout(details.timeout);
            conn.complete_io(&mut sock)?;
            Ok(Some(Either::B(TlsTransport {
                buffers: LazyBuffers::new(
                    details.config.input_buffer_size(),
                    details.config.output_buffer_size(),
                ),
                stream: StreamOwned::new(conn, sock),
            })))
        }
    }

    pub struct TlsTransport {
        buffers: LazyBuffers,
        stream: StreamOwned<ClientConnection, TransportAdapter>,
    }

    impl std::fmt::Debug for TlsTransport {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("TlsTransport")
        }
    }

    impl Transport for TlsTransport {
        fn buffers(&mut self) -> &mut dyn Buffers {
            &mut self.buffers
        }

        fn transmit_output(
            &mut self,
            amount: usize,
            timeout: NextTimeout,
        ) -> Result<(), ureq::Error> {
            self.stream.get_mut().set_timeout(timeout);
            let output = &self.buffers.output()[..amount];
            self.stream.write_all(output)?;
            Ok(())
        }

        fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
            self.stream.get_mut().set_timeout(timeout);
            let input = self.buffers.input_append_buf();
            let n = self.stream.read(input)?;
            self.buffers.input_appended(n);
            Ok(n > 0)
        }

        fn is_open(&mut self) -> bool {
            self.stream.get_mut().get_mut().is_open()
        }

        fn is_tls(&self) -> bool {
            true
        }
    }
}

#[cfg(not(feature = "https"))]
mod tls {
    use ureq::unversioned::transport::{ConnectionDetails, Connector, Transport};

    use crate::config::consul_agent::AgentConfig;

    /// Without the `https` feature: passes plain connections, and refuses an HTTPS agent up front.
    #[derive(Debug)]
    pub struct NoTls;

    pub fn connector(agent: &AgentConfig) -> Result<NoTls, String> {
        if agent.https {
            return Err(format!(
                "{}: this microinit is the plain build, without TLS; use the TLS build \
                 (microinit-https, the base-https image) or a plain http:// or unix:// agent address",
                agent.display()
            ));
        }
        Ok(NoTls)
    }

    impl<In: Transport> Connector<In> for NoTls {
        type Out = In;

        fn connect(
            &self,
            _details: &ConnectionDetails,
            chained: Option<In>,
        ) -> Result<Option<In>, ureq::Error> {
            Ok(chained)
        }
    }
}
