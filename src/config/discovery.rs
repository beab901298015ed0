//! Service discovery options: what the app waits for before it starts (`--wait-for`), what it watches while
//! it runs (`--watch`), and what happens on a change (`--on-change`, `--watch-file` and the template of its
//! lines, `--watch-file-line`).
//!
//! Owns: the typed shape of those options and their parsing from `Options` (pure: no syscall, no file read,
//! no name resolution; an address is resolved when it is probed). Does not own: the Consul agent's address
//! and token (`AgentConfig::parse`, shared with registration), nor doing any of it
//! (`consul::watch`, `init::discovery`).

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::{AgentConfig, Options};

/// A Consul service query: passing instances of `name`, optionally with a tag, in a datacenter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceQuery {
    pub name: String,
    pub tag: Option<String>,
    pub dc: Option<String>,
}

impl fmt::Display for ServiceQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(t) = &self.tag {
            write!(f, "@{t}")?;
        }
        if let Some(dc) = &self.dc {
            write!(f, "?dc={dc}")?;
        }
        Ok(())
    }
}

/// One `--wait-for` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitTarget {
    /// At least `min` passing instances of a Consul service.
    Consul { query: ServiceQuery, min: u32 },
    /// A TCP connect to HOST:PORT succeeds.
    Tcp { host: String, port: u16 },
    /// An http:// URL answers a GET with a 2xx status.
    Http { url: String },
    /// A path exists.
    File(PathBuf),
}

impl fmt::Display for WaitTarget {
    /// The form the user wrote, for progress lines, the timeout message and `status`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitTarget::Consul { query, min: 1 } => write!(f, "consul:{query}"),
            WaitTarget::Consul { query, min } => {
                // NAME:N@TAG?dc=DC, the documented order.
                write!(f, "consul:{}:{min}", query.name)?;
                if let Some(t) = &query.tag {
                    write!(f, "@{t}")?;
                }
                if let Some(dc) = &query.dc {
                    write!(f, "?dc={dc}")?;
                }
                Ok(())
            }
            WaitTarget::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            WaitTarget::Http { url } => f.write_str(url),
            WaitTarget::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// What one `--watch` follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchTarget {
    /// The passing instances of a service.
    Service(ServiceQuery),
    /// The value of a KV key (`kv:KEY`).
    Kv { key: String, dc: Option<String> },
}

impl WatchTarget {
    /// A name for status, logs and the environment variable handed to `--on-change exec:`.
    pub fn label(&self) -> String {
        match self {
            WatchTarget::Service(q) => q.to_string(),
            WatchTarget::Kv { key, .. } => format!("kv:{key}"),
        }
    }
}

/// What happens after a watched set changed (and the debounce passed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnChange {
    /// Deliver this signal to the app by microinit's rules (group delivery, rewrites do not apply).
    Signal(i32),
    /// Run this program (argv, no shell), spawned and reaped by PID 1.
    Exec(Vec<OsString>),
}

/// Format of `--watch-file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchFileFormat {
    /// The file name does not end in `.json`: one `line` per passing instance (`--watch-file-line`, default
    /// `{address}:{port}`), `empty` instead when no instance line is written (`--watch-file-empty`), and a
    /// KV value as it is.
    Lines {
        line: LineTemplate,
        empty: Option<String>,
    },
    /// `{"LABEL": [{"id","node","address","port"}…], "kv:KEY": "value"|null}` (the name ends in `.json`).
    Json,
}

/// A `--watch-file-line` template: text and `{address}`, `{port}`, `{id}`, `{node}` placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTemplate(pub Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Field(Field),
}

/// An instance's value a line template can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Address,
    Port,
    Id,
    Node,
}

impl Field {
    const ALL: [(&'static str, Field); 4] = [
        ("address", Field::Address),
        ("port", Field::Port),
        ("id", Field::Id),
        ("node", Field::Node),
    ];

    pub fn name(self) -> &'static str {
        Field::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("", |(n, _)| n)
    }
}

impl Default for LineTemplate {
    /// `{address}:{port}`, the plain line format.
    fn default() -> LineTemplate {
        LineTemplate(vec![
            Piece::Field(Field::Address),
            Piece::Text(":".into()),
            Piece::Field(Field::Port),
        ])
    }
}

/// Every discovery option; `Default` is "none of it".
#[derive(Debug, Clone, Default)]
pub struct DiscoveryConfig {
    pub wait_for: Vec<WaitTarget>,
    /// Give up waiting after this long (exit [`WAIT_TIMEOUT_EXIT`]); None waits for ever.
    pub wait_timeout: Option<Duration>,
    pub watches: Vec<WatchTarget>,
    pub on_change: Option<OnChange>,
    pub watch_file: Option<(PathBuf, WatchFileFormat)>,
    /// Quiet time after the last change before acting on it.
    pub debounce: Duration,
    /// The agent for `consul:` waits and watches; None when there are none.
    pub agent: Option<AgentConfig>,
}

/// Exit status when `--wait-timeout` ran out (as coreutils' `timeout`).
pub const WAIT_TIMEOUT_EXIT: i32 = 124;
/// Default `--watch-debounce`.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

impl DiscoveryConfig {
    pub fn uses_consul(&self) -> bool {
        !self.watches.is_empty()
            || self
                .wait_for
                .iter()
                .any(|t| matches!(t, WaitTarget::Consul { .. }))
    }

    /// Parse the discovery options. `agent` is called only when a Consul wait or watch needs the agent.
    /// `parse_signal` is the one signal-name parser (`init::signals`), passed in so config stays a leaf.
    pub fn from_options(
        opts: &Options,
        agent: impl FnOnce() -> Result<AgentConfig, String>,
        parse_signal: impl Fn(&str) -> Result<i32, String>,
    ) -> Result<DiscoveryConfig, String> {
        let wait_for = words(opts, "MICROINIT_WAIT_FOR")
            .map(|w| parse_wait_target(&w).map_err(|e| format!("--wait-for {w}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let wait_timeout = opts
            .get("MICROINIT_WAIT_TIMEOUT")
            .map(|_| opts.duration("MICROINIT_WAIT_TIMEOUT", Duration::ZERO))
            .transpose()?;
        if wait_timeout.is_some() && wait_for.is_empty() {
            return Err("--wait-timeout (MICROINIT_WAIT_TIMEOUT) needs --wait-for".into());
        }
        let watches = words(opts, "MICROINIT_WATCH")
            .map(|w| parse_watch(&w).map_err(|e| format!("--watch {w}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let on_change = opts
            .get("MICROINIT_ON_CHANGE")
            .map(|v| parse_on_change(v, &parse_signal).map_err(|e| format!("--on-change {v}: {e}")))
            .transpose()?;
        let watch_file = watch_file(opts)?;
        if watches.is_empty() && (on_change.is_some() || watch_file.is_some()) {
            return Err("--on-change and --watch-file need at least one --watch NAME".into());
        }
        if !watches.is_empty() && on_change.is_none() && watch_file.is_none() {
            return Err(
                "--watch needs --on-change signal:SIG|exec:PROGRAM ARGS… or --watch-file PATH \
                 (what should happen on a change?)"
                    .into(),
            );
        }
        let debounce = opts.duration("MICROINIT_WATCH_DEBOUNCE", DEFAULT_DEBOUNCE)?;
        let mut cfg = DiscoveryConfig {
            wait_for,
            wait_timeout,
            watches,
            on_change,
            watch_file,
            debounce,
            agent: None,
        };
        if cfg.uses_consul() {
            cfg.agent = Some(agent()?);
        }
        Ok(cfg)
    }
}

/// `--watch-file PATH` with its format: JSON for a `.json` name, else lines shaped by `--watch-file-line` and
/// `--watch-file-empty` (which make no sense without a line file).
fn watch_file(opts: &Options) -> Result<Option<(PathBuf, WatchFileFormat)>, String> {
    let line = opts
        .get("MICROINIT_WATCH_FILE_LINE")
        .map(|t| parse_line_template(t).map_err(|e| format!("--watch-file-line {t}: {e}")))
        .transpose()?;
    let empty = opts.get("MICROINIT_WATCH_FILE_EMPTY").map(String::from);
    let shaped = line.is_some() || empty.is_some();
    match opts.get("MICROINIT_WATCH_FILE") {
        None if shaped => {
            Err("--watch-file-line and --watch-file-empty need --watch-file PATH".into())
        }
        None => Ok(None),
        Some(p) if p.ends_with(".json") && shaped => Err(format!(
            "--watch-file {p} is written as JSON (its name ends in .json); \
             --watch-file-line and --watch-file-empty shape a line file"
        )),
        Some(p) if p.ends_with(".json") => Ok(Some((PathBuf::from(p), WatchFileFormat::Json))),
        Some(p) => Ok(Some((
            PathBuf::from(p),
            WatchFileFormat::Lines {
                line: line.unwrap_or_default(),
                empty,
            },
        ))),
    }
}

/// `server {address}:{port};`: text with placeholders in braces; at least one, each one known.
pub fn parse_line_template(s: &str) -> Result<LineTemplate, String> {
    let known = || {
        Field::ALL
            .iter()
            .map(|(n, _)| format!("{{{n}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut pieces = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let brace = rest.find(['{', '}']).unwrap_or(rest.len());
        if brace > 0 {
            pieces.push(Piece::Text(rest[..brace].into()));
        }
        rest = &rest[brace..];
        let Some(inner) = rest.strip_prefix('{') else {
            if rest.is_empty() {
                break;
            }
            return Err(format!(
                "a '}}' without its '{{'; placeholders: {}",
                known()
            ));
        };
        let (name, after) = inner
            .split_once('}')
            .ok_or_else(|| format!("a '{{' without its '}}'; placeholders: {}", known()))?;
        let field = Field::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
            .ok_or_else(|| format!("unknown placeholder {{{name}}}; use {}", known()))?;
        pieces.push(Piece::Field(field));
        rest = after;
    }
    if !pieces.iter().any(|p| matches!(p, Piece::Field(_))) {
        return Err(format!("names no instance value; use {}", known()));
    }
    Ok(LineTemplate(pieces))
}

/// Values of a repeatable option: every flag value, and in the env twin whitespace separates them (a URL
/// or a service name holds no blank).
fn words<'a>(opts: &'a Options, key: &str) -> impl Iterator<Item = String> + 'a {
    opts.all(key)
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(String::from)
}

/// `consul:NAME[:N][@TAG][?dc=DC]`, `tcp:HOST:PORT`, `http://…`, `file:PATH`.
pub fn parse_wait_target(s: &str) -> Result<WaitTarget, String> {
    if let Some(rest) = s.strip_prefix("consul:") {
        let (query, min) = parse_service(rest, true)?;
        return Ok(WaitTarget::Consul { query, min });
    }
    if let Some(rest) = s.strip_prefix("tcp:") {
        let (host, port) = host_port(rest)?;
        return Ok(WaitTarget::Tcp { host, port });
    }
    if s.starts_with("http://") {
        split_url(s)?;
        return Ok(WaitTarget::Http { url: s.into() });
    }
    if s.starts_with("https://") {
        return Err(
            "https:// is not probed (no TLS in the probe); use http:// or tcp:HOST:PORT".into(),
        );
    }
    if let Some(path) = s.strip_prefix("file:") {
        if path.is_empty() {
            return Err("empty path; use file:/path/to/file".into());
        }
        return Ok(WaitTarget::File(PathBuf::from(path)));
    }
    Err(
        "use consul:NAME[:N][@TAG][?dc=DC], tcp:HOST:PORT, http://HOST[:PORT]/PATH or file:PATH"
            .into(),
    )
}

/// `NAME[@TAG][?dc=DC]` or `kv:KEY[?dc=DC]`.
pub fn parse_watch(s: &str) -> Result<WatchTarget, String> {
    if let Some(rest) = s.strip_prefix("kv:") {
        let (key, dc) = split_dc(rest)?;
        if key.is_empty() {
            return Err("empty key; use kv:KEY".into());
        }
        return Ok(WatchTarget::Kv {
            key: key.into(),
            dc,
        });
    }
    let (query, _) = parse_service(s, false)?;
    Ok(WatchTarget::Service(query))
}

/// `signal:SIG` or `exec:PROGRAM ARG…` (words split on blanks) / `exec:["PROGRAM","ARG",…]` (JSON).
pub fn parse_on_change(
    s: &str,
    parse_signal: &dyn Fn(&str) -> Result<i32, String>,
) -> Result<OnChange, String> {
    if let Some(sig) = s.strip_prefix("signal:") {
        return parse_signal(sig).map(OnChange::Signal);
    }
    if let Some(cmd) = s.strip_prefix("exec:") {
        return parse_argv(cmd).map(OnChange::Exec);
    }
    Err("use signal:SIG (e.g. signal:HUP) or exec:PROGRAM ARG…".into())
}

/// An argv with no shell: a JSON array of strings (`["nginx","-s","reload"]`, Docker's exec form) or words
/// separated by blanks (`nginx -s reload`; no quoting, no variables, no globbing).
pub fn parse_argv(s: &str) -> Result<Vec<OsString>, String> {
    let s = s.trim();
    let argv: Vec<OsString> = if s.starts_with('[') {
        // As a `Value`, the one JSON type microinit parses (a typed `Vec<String>` would link a second parser).
        let v: serde_json::Value =
            serde_json::from_str(s).map_err(|e| format!("not a JSON array of strings ({e})"))?;
        let words: Option<Vec<&str>> = v
            .as_array()
            .and_then(|a| a.iter().map(serde_json::Value::as_str).collect());
        words
            .ok_or("not a JSON array of strings")?
            .into_iter()
            .map(OsString::from)
            .collect()
    } else {
        s.split_whitespace().map(OsString::from).collect()
    };
    match argv.first() {
        None => Err("no program given".into()),
        Some(p) if p.is_empty() => Err("empty program name".into()),
        Some(_) => Ok(argv),
    }
}

/// A command given as a JSON array of strings (Docker's exec form), if it is one: `--health-cmd` and the
/// hooks take it as an argv with no shell. Anything else (`[ -f /x ]` included, which is not JSON) is None:
/// a shell command.
pub fn json_argv(s: &str) -> Option<Vec<OsString>> {
    let s = s.trim();
    if !s.starts_with('[') {
        return None;
    }
    parse_argv(s).ok()
}

fn parse_service(s: &str, with_count: bool) -> Result<(ServiceQuery, u32), String> {
    let (s, dc) = split_dc(s)?;
    let (s, tag) = match s.split_once('@') {
        Some((s, t)) if !t.is_empty() => (s, Some(t.to_string())),
        Some(_) => return Err("empty tag after @".into()),
        None => (s, None),
    };
    let (name, min) = match s.split_once(':') {
        Some((n, c)) if with_count => (
            n,
            c.parse::<u32>()
                .ok()
                .filter(|c| *c >= 1)
                .ok_or_else(|| format!("{c:?} is not a count of instances (1 or more)"))?,
        ),
        _ => (s, 1),
    };
    // Consul service names are DNS labels; refusing anything else keeps them safe in a URL path.
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!(
            "{name:?} is not a service name (letters, digits, '-', '_', '.')"
        ));
    }
    Ok((
        ServiceQuery {
            name: name.into(),
            tag,
            dc,
        },
        min,
    ))
}

fn split_dc(s: &str) -> Result<(&str, Option<String>), String> {
    match s.split_once('?') {
        None => Ok((s, None)),
        Some((head, q)) => match q.strip_prefix("dc=") {
            Some(dc) if !dc.is_empty() => Ok((head, Some(dc.to_string()))),
            _ => Err(format!("{q:?}: the only query is ?dc=DATACENTER")),
        },
    }
}

/// `HOST:PORT` (`[v6]:PORT` too).
pub fn host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: use HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?;
    if host.is_empty() {
        return Err(format!("{s:?}: no host; use HOST:PORT"));
    }
    Ok((host.into(), port))
}

/// An http:// URL → (host, port, path-and-query).
pub fn split_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err("user:password@ in a probe URL is not supported".into());
    }
    let (host, port) = if authority.ends_with(']') || !authority.contains(':') {
        (authority.trim_start_matches('[').trim_end_matches(']'), 80)
    } else {
        let (h, p) = host_port(authority)?;
        return Ok((h, p, path.into()));
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok((host.into(), port, path.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(s: &str) -> Result<i32, String> {
        match s {
            "HUP" => Ok(1),
            _ => Err(format!("unknown signal {s}")),
        }
    }

    fn opts(pairs: &[(&str, &[&str])]) -> Options {
        let mut o = Options::default();
        for (k, v) in pairs {
            o.set(k, v.iter().map(|s| s.to_string()).collect());
        }
        o
    }

    fn agent() -> Result<AgentConfig, String> {
        AgentConfig::parse(&Options::default())
    }

    #[test]
    fn every_wait_target_form_parses_and_prints_as_written() {
        for s in [
            "consul:db",
            "consul:db:3",
            "consul:db@primary",
            "consul:db:2@primary?dc=eu-1",
            "tcp:redis:6379",
            "tcp:[::1]:80",
            "http://127.0.0.1:8080/ready?x=1",
            "file:/run/secrets/ready",
        ] {
            let t = parse_wait_target(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            let shown = t.to_string().replace("tcp:::1", "tcp:[::1]");
            assert_eq!(shown, s);
        }
        assert_eq!(
            parse_wait_target("consul:db:2@primary?dc=eu-1"),
            Ok(WaitTarget::Consul {
                query: ServiceQuery {
                    name: "db".into(),
                    tag: Some("primary".into()),
                    dc: Some("eu-1".into())
                },
                min: 2
            })
        );
        assert_eq!(split_url("http://h/x"), Ok(("h".into(), 80, "/x".into())));
        assert_eq!(split_url("http://h:81"), Ok(("h".into(), 81, "/".into())));
    }

    #[test]
    fn malformed_wait_targets_are_refused_with_the_fix() {
        for (s, hint) in [
            ("consul:", "not a service name"),
            ("consul:db:0", "count"),
            ("consul:db/../x", "not a service name"),
            ("consul:db?zone=1", "?dc="),
            ("tcp:redis", "HOST:PORT"),
            ("tcp:redis:99999", "port"),
            ("https://x/", "http://"),
            ("file:", "empty path"),
            ("redis:6379", "consul:NAME"),
        ] {
            let e = parse_wait_target(s).expect_err(s);
            assert!(e.contains(hint), "{s}: {e}");
        }
    }

    #[test]
    fn argv_form_takes_json_or_blank_separated_words() {
        assert_eq!(
            parse_argv(r#"["/bin/echo","a b"]"#),
            Ok(vec!["/bin/echo".into(), "a b".into()])
        );
        assert_eq!(
            parse_argv("nginx -s  reload"),
            Ok(vec!["nginx".into(), "-s".into(), "reload".into()])
        );
        assert!(parse_argv("  ").is_err());
        assert_eq!(json_argv(r#"["true"]"#), Some(vec!["true".into()]));
        assert_eq!(
            json_argv("[ -f /ready ]"),
            None,
            "a shell test command stays a shell command"
        );
        assert_eq!(json_argv("echo [1]"), None);
        assert!(parse_argv("[1,2]").is_err());
        assert!(parse_argv(r#"[""]"#).is_err());
    }

    #[test]
    fn options_and_env_twins_build_the_config() {
        let o = opts(&[
            (
                "MICROINIT_WAIT_FOR",
                &["consul:db:2 tcp:cache:11211", "file:/x"],
            ),
            ("MICROINIT_WAIT_TIMEOUT", &["30s"]),
            ("MICROINIT_WATCH", &["web@v2", "kv:config/app"]),
            ("MICROINIT_ON_CHANGE", &["signal:HUP"]),
            ("MICROINIT_WATCH_FILE", &["/run/upstreams.json"]),
        ]);
        let c = DiscoveryConfig::from_options(&o, agent, sig).expect("valid");
        assert_eq!(c.wait_for.len(), 3);
        assert_eq!(c.wait_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.on_change, Some(OnChange::Signal(1)));
        assert_eq!(
            c.watch_file,
            Some((PathBuf::from("/run/upstreams.json"), WatchFileFormat::Json))
        );
        assert_eq!(c.watches[1].label(), "kv:config/app");
        assert!(c.agent.is_some());
        assert_eq!(c.debounce, DEFAULT_DEBOUNCE);
    }

    #[test]
    fn line_templates_name_known_placeholders() {
        let t = parse_line_template("server {address}:{port};").expect("nginx");
        assert_eq!(
            t.0,
            [
                Piece::Text("server ".into()),
                Piece::Field(Field::Address),
                Piece::Text(":".into()),
                Piece::Field(Field::Port),
                Piece::Text(";".into()),
            ]
        );
        assert_eq!(
            parse_line_template("{address}:{port}"),
            Ok(LineTemplate::default())
        );
        assert!(parse_line_template("{id}{node}").is_ok());
        for (s, hint) in [
            ("server {host}:{port};", "unknown placeholder {host}"),
            ("server {address", "without its '}'"),
            ("server }{address}", "without its '{'"),
            ("server 10.0.0.1:80;", "names no instance value"),
            ("", "names no instance value"),
        ] {
            let e = parse_line_template(s).expect_err(s);
            assert!(
                e.contains(hint) && e.contains("{address}, {port}, {id}, {node}"),
                "{s}: {e}"
            );
        }
    }

    #[test]
    fn the_line_options_shape_a_line_file_only() {
        let o = opts(&[
            ("MICROINIT_WATCH", &["web"]),
            ("MICROINIT_WATCH_FILE", &["/run/upstreams.conf"]),
            ("MICROINIT_WATCH_FILE_LINE", &["server {address}:{port};"]),
            ("MICROINIT_WATCH_FILE_EMPTY", &["server 127.0.0.1:9 down;"]),
        ]);
        let c = DiscoveryConfig::from_options(&o, agent, sig).expect("valid");
        let Some((_, WatchFileFormat::Lines { line, empty })) = c.watch_file else {
            panic!("not a line file: {:?}", c.watch_file);
        };
        assert_eq!(line.0.len(), 5);
        assert_eq!(empty.as_deref(), Some("server 127.0.0.1:9 down;"));
        for (file, key, value) in [
            ("/run/u.json", "MICROINIT_WATCH_FILE_LINE", "{address}"),
            ("/run/u.json", "MICROINIT_WATCH_FILE_EMPTY", "x"),
            ("", "MICROINIT_WATCH_FILE_LINE", "{address}"),
            ("/run/u", "MICROINIT_WATCH_FILE_LINE", "{adress}"),
        ] {
            let mut pairs = vec![
                ("MICROINIT_WATCH", &["web"][..]),
                ("MICROINIT_ON_CHANGE", &["signal:HUP"][..]),
                (key, std::slice::from_ref(&value)),
            ];
            let file = [file];
            if !file[0].is_empty() {
                pairs.push(("MICROINIT_WATCH_FILE", &file[..]));
            }
            let e = DiscoveryConfig::from_options(&opts(&pairs), agent, sig).expect_err(key);
            assert!(e.contains("--watch-file"), "{e}");
        }
    }

    #[test]
    fn the_agent_is_only_parsed_when_consul_is_used() {
        let o = opts(&[("MICROINIT_WAIT_FOR", &["tcp:a:1"])]);
        let c = DiscoveryConfig::from_options(&o, || Err("must not be called".into()), sig)
            .expect("valid");
        assert!(c.agent.is_none());
        let none = DiscoveryConfig::from_options(&Options::default(), || Err("no".into()), sig)
            .expect("valid");
        assert!(none.wait_for.is_empty() && none.watches.is_empty());
    }

    #[test]
    fn options_that_make_no_sense_alone_are_refused() {
        for pairs in [
            &[("MICROINIT_WAIT_TIMEOUT", &["5s"][..])][..],
            &[("MICROINIT_ON_CHANGE", &["signal:HUP"][..])],
            &[("MICROINIT_WATCH", &["web"][..])],
            &[
                ("MICROINIT_WATCH", &["web"][..]),
                ("MICROINIT_ON_CHANGE", &["signal:NOPE"][..]),
            ],
            &[
                ("MICROINIT_WATCH", &["web"][..]),
                ("MICROINIT_ON_CHANGE", &["reload"][..]),
            ],
        ] {
            assert!(
                DiscoveryConfig::from_options(&opts(pairs), agent, sig).is_err(),
                "{pairs:?}"
            );
        }
    }
}
