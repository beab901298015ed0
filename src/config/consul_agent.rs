//! How to reach the Consul agent: the `CONSUL_*` client convention, with Consul's own precedence.
//!
//! Owns: turning `CONSUL_HTTP_ADDR` (host:port, http://, https://, unix:///path, with a path prefix),
//! `CONSUL_HTTP_SSL`, `CONSUL_HTTP_SSL_VERIFY`, `CONSUL_CACERT`, `CONSUL_CAPATH`, `CONSUL_CLIENT_CERT`,
//! `CONSUL_CLIENT_KEY`, `CONSUL_TLS_SERVER_NAME`, `CONSUL_HTTP_TOKEN`, `CONSUL_HTTP_TOKEN_FILE`,
//! `CONSUL_HTTP_AUTH`, `CONSUL_NAMESPACE` and `CONSUL_PARTITION` (and their flags) into [`AgentConfig`], and
//! naming every variable that is set but cannot be honoured (a warning logged at start, never silence).
//! Reads the token file (bounded, see `user_file`). Does not own: loading certificates or talking to the
//! agent (`consul::client`), nor the service definition (`consul::registration`).
//!
//! Consul's rules followed here (its Go client, `api.DefaultConfig` and `api.NewClient`): a token file wins
//! over `CONSUL_HTTP_TOKEN`; `https://` in the address or `CONSUL_HTTP_SSL=true` means TLS, and an explicit
//! `http://` never turns TLS off once `CONSUL_HTTP_SSL` asked for it; `CONSUL_CACERT` wins over
//! `CONSUL_CAPATH`; a client certificate is used only when both the certificate and the key are set.

use std::fmt::Write;
use std::path::PathBuf;

use crate::config::{user_file, Options, Secret};

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A host name or IP literal (IPv6 without brackets) and a port.
    Tcp { host: String, port: u16 },
    /// A unix stream socket (`unix:///path`): what Consul documents for local clients, and what Nomad hands
    /// its tasks.
    Unix(PathBuf),
}

/// TLS settings, used when [`AgentConfig::https`] is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file with the CA certificates to trust (`CONSUL_CACERT`).
    pub cacert: Option<PathBuf>,
    /// Directory of PEM files with CA certificates (`CONSUL_CAPATH`; unused when `cacert` is set).
    pub capath: Option<PathBuf>,
    /// Client certificate and key for mTLS (`verify_incoming` agents); both or neither.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name the agent's certificate must carry (`CONSUL_TLS_SERVER_NAME`), e.g. `server.dc1.consul`
    /// while the address names 127.0.0.1 or a container. Also sent as SNI.
    pub server_name: Option<String>,
    /// `CONSUL_HTTP_SSL_VERIFY=false` turns certificate verification off.
    pub verify: bool,
}

/// Everything the HTTP client needs to reach and authenticate to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub endpoint: Endpoint,
    /// TLS to the agent.
    pub https: bool,
    /// A reverse proxy's path prefix ("/consul"), or "".
    pub path_prefix: String,
    pub tls: TlsSettings,
    pub token: Option<Secret>,
    /// Where the token came from: re-read when the agent answers 403, so a rotated token is picked up.
    pub token_file: Option<PathBuf>,
    /// `CONSUL_HTTP_AUTH`: "user" or "user:password", sent as HTTP basic auth.
    pub basic_auth: Option<Secret>,
    pub namespace: Option<String>,
    pub partition: Option<String>,
    /// `--pass-consul-token`: leave [`CREDENTIAL_VARS`] in the environment of the app, hooks and health
    /// command. Off by default: they are microinit's credentials, and a health command that prints its
    /// environment would put the token into `status` and into Consul's check output.
    pub pass_token_to_children: bool,
    /// One line per variable that is set but cannot be honoured; logged when registration starts.
    pub warnings: Vec<String>,
}

/// The variables that hold agent credentials (the token file's path is one too: it leads to the token).
pub const CREDENTIAL_VARS: [&str; 3] = [
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_TOKEN_FILE",
    "CONSUL_HTTP_AUTH",
];

/// The address used when `CONSUL_HTTP_ADDR` is unset (Consul's default).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8500";

impl AgentConfig {
    /// The agent as the user would write it, for messages and `status` (never a credential).
    pub fn display(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(path) => format!("unix://{}", path.display()),
            Endpoint::Tcp { host, port } => {
                let scheme = if self.https { "https" } else { "http" };
                let mut s = String::new();
                let _ = if host.contains(':') {
                    write!(s, "{scheme}://[{host}]:{port}")
                } else {
                    write!(s, "{scheme}://{host}:{port}")
                };
                s.push_str(&self.path_prefix);
                s
            }
        }
    }

    /// Parse the agent section of the options. Pure but for reading the token file.
    pub fn parse(opts: &Options) -> Result<AgentConfig, String> {
        let addr = opts.get("CONSUL_HTTP_ADDR").unwrap_or(DEFAULT_ADDR);
        let (endpoint, addr_https, path_prefix) = parse_addr(addr)?;
        let ssl = go_bool(opts, "CONSUL_HTTP_SSL")?;
        let verify = go_bool(opts, "CONSUL_HTTP_SSL_VERIFY")?.unwrap_or(true);
        let https = addr_https || ssl == Some(true);
        let mut warnings = Vec::new();
        let path = |key: &str| opts.get(key).map(PathBuf::from);

        let cacert = path("CONSUL_CACERT");
        let mut capath = path("CONSUL_CAPATH");
        if cacert.is_some() && capath.is_some() {
            warnings.push(
                "CONSUL_CAPATH is not used: CONSUL_CACERT is set and takes precedence (as in Consul)"
                    .to_string(),
            );
            capath = None;
        }
        let client_cert = match (path("CONSUL_CLIENT_CERT"), path("CONSUL_CLIENT_KEY")) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                warnings.push(
                    "CONSUL_CLIENT_CERT is not used: CONSUL_CLIENT_KEY is unset, so no client certificate \
                     is sent (set both)"
                        .to_string(),
                );
                None
            }
            (None, Some(_)) => {
                warnings.push(
                    "CONSUL_CLIENT_KEY is not used: CONSUL_CLIENT_CERT is unset, so no client certificate \
                     is sent (set both)"
                        .to_string(),
                );
                None
            }
        };
        let tls = TlsSettings {
            cacert,
            capath,
            client_cert,
            server_name: opts.get("CONSUL_TLS_SERVER_NAME").map(String::from),
            verify,
        };
        if !https {
            for key in [
                "CONSUL_CACERT",
                "CONSUL_CAPATH",
                "CONSUL_CLIENT_CERT",
                "CONSUL_CLIENT_KEY",
                "CONSUL_TLS_SERVER_NAME",
                "CONSUL_HTTP_SSL_VERIFY",
            ] {
                if opts.get(key).is_some() {
                    warnings.push(format!(
                        "{key} is not used: the agent address {addr} is plain HTTP \
                         (use https:// or CONSUL_HTTP_SSL=true for TLS)"
                    ));
                }
            }
        } else if !verify {
            warnings.push(
                "CONSUL_HTTP_SSL_VERIFY=false: the agent's certificate is not verified, so anyone on the \
                 path can pose as the agent and read the token"
                    .to_string(),
            );
        }

        // Consul's own precedence: a token file wins over CONSUL_HTTP_TOKEN.
        let token_file = path("CONSUL_HTTP_TOKEN_FILE");
        let token = match &token_file {
            Some(p) => Some(read_token_file(p)?),
            None => opts
                .get("CONSUL_HTTP_TOKEN")
                .map(|t| Secret::new(t.trim().to_string())),
        };
        let basic_auth = opts
            .get("CONSUL_HTTP_AUTH")
            .map(|a| Secret::new(a.to_string()));
        Ok(AgentConfig {
            endpoint,
            https,
            path_prefix,
            tls,
            token,
            token_file,
            basic_auth,
            namespace: opts.get("CONSUL_NAMESPACE").map(String::from),
            partition: opts.get("CONSUL_PARTITION").map(String::from),
            pass_token_to_children: opts.flag("MICROINIT_PASS_CONSUL_TOKEN"),
            warnings,
        })
    }
}

/// The token in `path` (bounded read of a regular file, trimmed, not empty).
pub fn read_token_file(path: &std::path::Path) -> Result<Secret, String> {
    let t = user_file::read_text("CONSUL_HTTP_TOKEN_FILE", path, user_file::SMALL)?;
    let t = t.trim();
    if t.is_empty() {
        return Err(format!(
            "CONSUL_HTTP_TOKEN_FILE {}: the file is empty",
            path.display()
        ));
    }
    Ok(Secret::new(t.to_string()))
}

/// A boolean as Go's strconv.ParseBool reads it (what Consul uses for CONSUL_HTTP_SSL*); unset is None.
fn go_bool(opts: &Options, key: &str) -> Result<Option<bool>, String> {
    match opts.get(key) {
        None => Ok(None),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
        Some(v) => Err(format!("{key}={v}: not a boolean; use true or false")),
    }
}

/// `CONSUL_HTTP_ADDR` / `--consul-addr`: (endpoint, https given by the scheme, path prefix).
fn parse_addr(s: &str) -> Result<(Endpoint, bool, String), String> {
    let shown = crate::text::for_terminal(s);
    let bad = |why: &str| {
        format!(
            "CONSUL_HTTP_ADDR={shown}: {why}; use host:port, http://host:port, https://host:port \
             or unix:///path/to/socket"
        )
    };
    let (scheme, rest) = match s.split_once("://") {
        Some(("http", r)) => ("http", r),
        Some(("https", r)) => ("https", r),
        Some(("unix", r)) => {
            if !r.starts_with('/') {
                return Err(bad(
                    "a unix socket needs an absolute path (unix:///run/consul.sock)",
                ));
            }
            return Ok((Endpoint::Unix(PathBuf::from(r)), false, String::new()));
        }
        Some((other, _)) => {
            return Err(bad(&format!(
                "unknown scheme {:?}",
                crate::text::for_terminal(other)
            )))
        }
        None => ("http", s),
    };
    // Consul splits a reverse proxy's path prefix off the address ("http://host:8500/consul").
    let (hostport, prefix) = match rest.split_once('/') {
        Some((h, p)) => (h, p.trim_end_matches('/')),
        None => (rest, ""),
    };
    let prefix = if prefix.is_empty() {
        String::new()
    } else if prefix
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#'))
    {
        format!("/{prefix}")
    } else {
        return Err(bad(
            "the path prefix may hold only printable ASCII without ? or #",
        ));
    };
    let default_port = if scheme == "https" { 8501 } else { 8500 };
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in an IPv6 address"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address inside [ ]"));
        }
        match after {
            "" => (host, None),
            p => (
                host,
                Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            ),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(bad("an IPv6 address needs brackets: [::1]:8500"))
            }
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
    {
        return Err(bad(
            "the host may hold only letters, digits, '-', '.' and '_'",
        ));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("bad port"))?,
    };
    Ok((
        Endpoint::Tcp {
            host: host.to_string(),
            port,
        },
        scheme == "https",
        prefix,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<AgentConfig, String> {
        let mut o = Options::default();
        for (k, v) in pairs {
            o.set(k, vec![v.to_string()]);
        }
        AgentConfig::parse(&o)
    }

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn address_forms_follow_consuls_convention() {
        for (addr, endpoint, https, prefix, shown) in [
            (
                "127.0.0.1:8500",
                tcp("127.0.0.1", 8500),
                false,
                "",
                "http://127.0.0.1:8500",
            ),
            (
                "consul",
                tcp("consul", 8500),
                false,
                "",
                "http://consul:8500",
            ),
            (
                "https://consul",
                tcp("consul", 8501),
                true,
                "",
                "https://consul:8501",
            ),
            (
                "http://[::1]:18500/",
                tcp("::1", 18500),
                false,
                "",
                "http://[::1]:18500",
            ),
            (
                "https://h:1/consul/v/",
                tcp("h", 1),
                true,
                "/consul/v",
                "https://h:1/consul/v",
            ),
            (
                "unix:///run/consul/http.sock",
                Endpoint::Unix("/run/consul/http.sock".into()),
                false,
                "",
                "unix:///run/consul/http.sock",
            ),
        ] {
            let c = parse(&[("CONSUL_HTTP_ADDR", addr)]).expect(addr);
            assert_eq!(
                (&c.endpoint, c.https, c.path_prefix.as_str(), c.display()),
                (&endpoint, https, prefix, shown.to_string()),
                "{addr}"
            );
        }
        assert_eq!(
            parse(&[]).expect("default").display(),
            "http://127.0.0.1:8500"
        );
    }

    #[test]
    fn bad_addresses_are_one_line_errors_naming_the_variable() {
        for (addr, why) in [
            ("[::1", "unclosed ["),
            ("[::1]x", "junk after ]"),
            ("::1", "needs brackets"),
            ("ftp://h", "unknown scheme \"ftp\""),
            ("unix://run/sock", "absolute path"),
            ("h:0", "bad port"),
            ("h:99999", "bad port"),
            (":8500", "no host"),
            ("h\x1b[2J:1", "the host may hold only"),
        ] {
            let e = parse(&[("CONSUL_HTTP_ADDR", addr)]).expect_err(addr);
            assert!(e.starts_with("CONSUL_HTTP_ADDR="), "{e}");
            assert!(e.contains(why), "{addr}: {e}");
            assert!(!e.contains('\n') && !e.contains('\x1b'), "{e:?}");
        }
    }

    #[test]
    fn consul_http_ssl_turns_tls_on_even_with_an_http_scheme() {
        let c = parse(&[
            ("CONSUL_HTTP_ADDR", "http://h:8501"),
            ("CONSUL_HTTP_SSL", "true"),
        ])
        .expect("ssl");
        assert!(c.https);
        assert_eq!(c.display(), "https://h:8501");
        let c =
            parse(&[("CONSUL_HTTP_ADDR", "https://h"), ("CONSUL_HTTP_SSL", "0")]).expect("https");
        assert!(c.https, "the address's https wins over CONSUL_HTTP_SSL=0");
        let e = parse(&[("CONSUL_HTTP_SSL", "yes please")]).expect_err("bad bool");
        assert_eq!(
            e,
            "CONSUL_HTTP_SSL=yes please: not a boolean; use true or false"
        );
    }

    #[test]
    fn tls_variables_that_cannot_be_honoured_are_warnings() {
        let c = parse(&[
            ("CONSUL_CACERT", "/ca.pem"),
            ("CONSUL_CLIENT_CERT", "/c.pem"),
        ])
        .expect("plain");
        assert!(!c.https);
        assert!(
            c.warnings.iter().any(|w| w.starts_with(
                "CONSUL_CACERT is not used: the agent address 127.0.0.1:8500 is plain HTTP"
            )),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings.iter().any(
                |w| w.starts_with("CONSUL_CLIENT_CERT is not used: CONSUL_CLIENT_KEY is unset")
            ),
            "{:?}",
            c.warnings
        );
        let c = parse(&[
            ("CONSUL_HTTP_ADDR", "https://h"),
            ("CONSUL_CACERT", "/ca.pem"),
            ("CONSUL_CAPATH", "/cas"),
            ("CONSUL_CLIENT_CERT", "/c.pem"),
            ("CONSUL_CLIENT_KEY", "/k.pem"),
            ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
        ])
        .expect("tls");
        assert_eq!(
            c.tls,
            TlsSettings {
                cacert: Some("/ca.pem".into()),
                capath: None,
                client_cert: Some(("/c.pem".into(), "/k.pem".into())),
                server_name: Some("server.dc1.consul".into()),
                verify: true,
            }
        );
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].starts_with("CONSUL_CAPATH is not used"));
        let c = parse(&[
            ("CONSUL_HTTP_ADDR", "https://h"),
            ("CONSUL_HTTP_SSL_VERIFY", "false"),
        ])
        .expect("insecure");
        assert!(!c.tls.verify);
        assert!(c.warnings[0]
            .starts_with("CONSUL_HTTP_SSL_VERIFY=false: the agent's certificate is not verified"));
    }

    #[test]
    fn token_file_wins_over_the_token_variable_and_must_be_a_regular_file() {
        let dir = std::env::temp_dir().join(format!("microinit-agentcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, " from-file\n").expect("write");
        let f = file.to_str().expect("utf8");
        let c = parse(&[
            ("CONSUL_HTTP_TOKEN", "from-env"),
            ("CONSUL_HTTP_TOKEN_FILE", f),
        ])
        .expect("token");
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("from-file"));
        assert_eq!(c.token_file.as_deref(), Some(file.as_path()));
        let c = parse(&[
            ("CONSUL_HTTP_TOKEN", "from-env"),
            ("CONSUL_HTTP_AUTH", "u:p"),
        ])
        .expect("env");
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("from-env"));
        assert_eq!(c.basic_auth.as_ref().map(Secret::expose), Some("u:p"));
        assert!(
            !format!("{c:?}").contains("from-env"),
            "Debug leaks the token"
        );
        let e = parse(&[("CONSUL_HTTP_TOKEN_FILE", "/dev/zero")]).expect_err("dev zero");
        assert_eq!(
            e,
            "CONSUL_HTTP_TOKEN_FILE /dev/zero: is a character device; name a regular file"
        );
    }
}
