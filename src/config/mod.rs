//! The validated configuration of one microinit run.
//!
//! Owns: the typed shape of every option (flags and their `MICROINIT_*`/`CONSUL_*` env twins, already
//! merged by `cli`). Does not own: parsing argv or reading the environment (`cli`), nor acting on any of it.
//! Every other module takes the piece of `Config` it needs and nothing else.

pub mod discovery;

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub mod consul_agent;
pub mod policy;
pub mod user_file;

pub use consul_agent::AgentConfig;
pub use policy::DialectPolicy;

/// Which command-line dialect we were started with (chosen by argv[0] or the subcommand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Microinit,
    Tini,
    DumbInit,
}

/// How the app is placed in sessions / process groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// setsid(): own session and process group (microinit default, dumb-init default).
    Session,
    /// setpgid(0,0): own process group in our session (tini's behaviour).
    ProcessGroup,
    /// Stay in microinit's group (dumb-init with DUMB_INIT_SETSID=0).
    None,
}

/// What to do with a signal microinit receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    pub from: i32,
    /// 0 means: drop the signal (dumb-init semantics).
    pub to: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

/// Everything the PID-1 core needs to run and signal the app.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub command: Vec<OsString>,
    /// Deliver forwarded signals to the app's whole process group (`-g`).
    pub signal_group: bool,
    pub isolation: Isolation,
    pub rewrites: Vec<Rewrite>,
    /// Signal the app gets when microinit dies (`-p/--pdeathsig`).
    pub pdeathsig: Option<i32>,
    /// Exit codes of the app that are reported as 0 (`-e/--remap-exit`).
    pub remap_exit: Vec<i32>,
    /// After the app exited: how long what it left behind has between SIGTERM and SIGKILL (`--grace`).
    pub grace: Duration,
    /// Which signals are stop requests, and whether a forwarded stop is followed by a kill timer.
    pub stop: StopRules,
    /// tini -w: log every reaped zombie at warn level.
    pub warn_on_reap: bool,
    pub restart: RestartPolicy,
    pub max_restarts: Option<u32>,
    pub hooks: Hooks,
}

/// A set of signals 1-64, one bit each (no allocation, `Copy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalSet(u64);

impl SignalSet {
    pub const fn empty() -> SignalSet {
        SignalSet(0)
    }
    pub const fn with(self, sig: i32) -> SignalSet {
        if sig >= 1 && sig <= 64 {
            SignalSet(self.0 | 1 << (sig - 1))
        } else {
            self
        }
    }
    pub const fn contains(self, sig: i32) -> bool {
        sig >= 1 && sig <= 64 && self.0 & (1 << (sig - 1)) != 0
    }
}

/// The stop rules: data the lifecycle takes (`init::lifecycle::Policy`), like the dialect's end of life
/// (`policy::EndOfLife`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopRules {
    /// A received signal in this set is a stop request: deregister, drain, pre-stop hook, then forward it
    /// (rewritten if a rewrite applies). Default TERM and INT; `--stop-signal` adds one.
    pub stop_signals: SignalSet,
    /// SIGKILL the app this long after a stop was forwarded (`--stop-timeout`). None, the default, leaves
    /// the deadline to the orchestrator (`docker stop -t`, Kubernetes' grace period), as tini and dumb-init.
    pub stop_timeout: Option<Duration>,
}

impl Default for StopRules {
    fn default() -> Self {
        StopRules {
            stop_signals: SignalSet::empty().with(libc::SIGTERM).with(libc::SIGINT),
            stop_timeout: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub pre_start: Option<String>,
    pub pre_stop: Option<String>,
    pub post_stop: Option<String>,
    pub timeout: Duration,
}

/// Options of the runtime check (issue: symlinked runtime from the volume).
#[derive(Debug, Clone)]
pub struct RuntimeCheckConfig {
    pub enabled: bool,
    /// The volume's mount point; symlinks into it from the standard directories must resolve.
    pub runtime_dir: PathBuf,
    /// Extra paths that must exist (`--require`).
    pub require: Vec<PathBuf>,
    /// Wait this long for a late volume before failing.
    pub wait: Option<Duration>,
    /// Filesystem root the check resolves paths against ("/" in production; tests may point elsewhere).
    pub root: PathBuf,
    /// The image's manifest of links into the runtime dir (`check --write-manifest` writes it).
    pub links_manifest: PathBuf,
    /// Without a valid manifest, scan the standard directories for links into the runtime dir.
    pub scan_links: bool,
    /// `microinit check` only: the volume's own list of files (filebox's symlinks.txt), used when the runtime
    /// dir is absent or empty, as at `docker build`. Never at start: a container must have the real volume.
    pub volume_manifest: Option<PathBuf>,
    /// `microinit check --write-manifest`: scan, and write the links manifest when the check passes.
    pub write_manifest: bool,
}

/// A secret (Consul token). Never printed: Debug and Display redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    /// The only way to read the value: for the HTTP header, nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// When the service is first marked passing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// As soon as the app is spawned.
    Immediate,
    /// When the health command first passes.
    HealthCmd,
    /// When a shell-free probe first passes: a TCP connect (`tcp:`), an HTTP GET answering 2xx (`http://`),
    /// a file existing (`file:`).
    Probe(discovery::WaitTarget),
    /// When the app writes a line to this file descriptor (s6's notification-fd): microinit gives the app
    /// the write end of a pipe as fd N.
    Notify(i32),
}

/// The service definition to register.
#[derive(Debug, Clone)]
pub enum ServiceSource {
    /// Built from MICROINIT_SERVICE_* variables.
    Fields {
        name: String,
        id: String,
        port: Option<u16>,
        address: Option<String>,
        /// Consul's `TaggedAddresses` (`lan`, `wan`), when given.
        tagged_addresses: Option<serde_json::Value>,
        tags: Vec<String>,
        meta: Vec<(String, String)>,
    },
    /// A service definition in Consul's JSON format (`--service-file`), already parsed.
    File {
        path: PathBuf,
        definition: serde_json::Value,
    },
}

/// Options of Consul registration; `None` in `Config` when registration is off.
#[derive(Debug, Clone)]
pub struct ConsulConfig {
    /// How to reach and authenticate to the agent (the `CONSUL_*` convention).
    pub agent: AgentConfig,
    pub service: ServiceSource,
    pub check_ttl: Duration,
    pub deregister_after: Duration,
    pub health_cmd: Option<String>,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub readiness: Readiness,
    /// Time between deregistering and forwarding SIGTERM.
    pub drain: Duration,
    /// How long a stop waits for the agent to confirm the deregistration (`--deregister-timeout`).
    pub deregister_timeout: Duration,
    /// Any registration failure is fatal instead of logged.
    pub required: bool,
}

/// The control socket (`microinit status` & friends).
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub socket: PathBuf,
}

/// A whole supervising run.
#[derive(Debug, Clone)]
pub struct Config {
    pub dialect: Dialect,
    /// What the dialect changes (end of life, subreaper, messages …), as data.
    pub policy: DialectPolicy,
    /// One line each, logged once logging is set up (options of a section that is off, …).
    pub warnings: Vec<String>,
    /// 0 warn, 1 info, 2 debug, 3+ trace (RUST_LOG overrides).
    pub verbosity: u8,
    pub supervisor: SupervisorConfig,
    pub runtime: RuntimeCheckConfig,
    pub consul: Option<ConsulConfig>,
    /// None: no control socket (e.g. `microinit exec`).
    pub control: Option<ControlConfig>,
    /// `--wait-for`, `--watch` & co (empty when unused).
    pub discovery: discovery::DiscoveryConfig,
    /// `--metrics ADDR:PORT`: serve Prometheus text there; None: nothing listens.
    pub metrics: Option<String>,
}

/// Raw option values, keyed by the env var name of each option (`MICROINIT_GRACE`, `CONSUL_HTTP_ADDR`, …).
///
/// `cli` fills it from the environment first and then from flags (a flag wins over its env twin; a repeatable
/// flag given on the command line replaces the env values). Each section of `Config` is then parsed from it,
/// so a flag and its env twin can never disagree in meaning.
#[derive(Debug, Clone, Default)]
pub struct Options {
    values: std::collections::BTreeMap<String, Vec<String>>,
    /// The spelling the user gave each key with (`--grace`, `-g`, `MICROINIT_GRACE`), for messages.
    origin: std::collections::BTreeMap<String, String>,
}

impl Options {
    /// Set from the environment: the variable is its own name.
    pub fn set(&mut self, key: &str, values: Vec<String>) {
        self.values.insert(key.to_string(), values);
        self.origin.remove(key);
    }
    /// Set from a flag: messages about `key` name `flag`, the spelling the user typed.
    pub fn set_from(&mut self, key: &str, values: Vec<String>, flag: &str) {
        self.values.insert(key.to_string(), values);
        self.origin.insert(key.to_string(), flag.to_string());
    }
    /// How the user spelled `key`: the flag they used, or the environment variable.
    pub fn source<'a>(&'a self, key: &'a str) -> &'a str {
        self.origin.get(key).map_or(key, String::as_str)
    }
    /// True when `key` has a non-empty value.
    pub fn is_set(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
    /// The last value given for `key`, if any (empty strings count as unset).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .and_then(|v| v.last())
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
    /// Every value given for a repeatable option.
    pub fn all(&self, key: &str) -> &[String] {
        self.values.get(key).map(Vec::as_slice).unwrap_or(&[])
    }
    /// A boolean option: "1", "true", "yes", "on" (any case) are true; unset is false.
    pub fn flag(&self, key: &str) -> bool {
        self.get(key)
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false)
    }
    /// A duration option, or `default` when unset. The error names the option.
    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_duration(v).map_err(|e| format!("{}: {e}", self.source(key))),
        }
    }
}

/// `s` for a one-line message: control characters (newlines, escape sequences) shown escaped, so a value
/// echoed back cannot forge extra lines or drive the terminal.
pub fn escape(s: &str) -> String {
    crate::text::for_terminal(s).into_owned()
}

/// "250ms", "10s", "1m", "2h", "1m30s" or a bare number of seconds ("1.5").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration; use e.g. 500ms, 10s, 1m".into());
    }
    // Exact decimal arithmetic in nanoseconds: no float parsing (its tables cost ~14 KB of the binary).
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.len() + frac.len() == 0 || frac.contains('.') || int.len() > 12 {
            return Err(format!("bad duration {s:?}; use e.g. 500ms, 10s, 1m"));
        }
        let scale: u128 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            // A bare number is seconds, like "2" or "0.5", when it is the whole duration.
            "" if num.len() == s.len() => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("bad duration unit in {s:?}; use ms, s, m or h")),
        };
        // Digits past the nanosecond do not matter.
        let frac = &frac[..frac.len().min(12)];
        let digits = |d: &str| d.bytes().fold(0u128, |n, b| n * 10 + u128::from(b - b'0'));
        let frac_ns = digits(frac) * scale / 10u128.pow(frac.len() as u32);
        total += digits(int) * scale + frac_ns;
        rest = tail;
    }
    if total > 1_000_000_000 * 1_000_000_000 {
        return Err(format!("duration out of range: {s:?} (at most 1e9 s)"));
    }
    Ok(Duration::new(
        (total / 1_000_000_000) as u64,
        (total % 1_000_000_000) as u32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1").is_err());
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(".5m"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h0.5ms"), Ok(Duration::new(3600, 500_000)));
        assert_eq!(parse_duration("0.0000000019"), Ok(Duration::from_nanos(1)));
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("5ms3").is_err());
        assert!(parse_duration(".").is_err());
        assert!(parse_duration("1000000001").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn options_last_value_wins_and_empty_is_unset() {
        let mut o = Options::default();
        o.set("A", vec!["1".into(), "2".into()]);
        o.set("B", vec!["".into()]);
        assert_eq!(o.get("A"), Some("2"));
        assert_eq!(o.get("B"), None);
        assert!(!o.flag("B"));
        assert_eq!(o.all("A").len(), 2);
    }

    #[test]
    fn escaping_keeps_an_echoed_value_on_one_line() {
        assert_eq!(escape("a\nb\x1b[31m"), "a\\nb\\x1b[31m");
        assert_eq!(escape("grüße 10s"), "grüße 10s");
    }

    #[test]
    fn a_message_names_the_flag_the_user_typed_or_the_variable() {
        let mut o = Options::default();
        o.set("MICROINIT_GRACE", vec!["soon".into()]);
        let e = o.duration("MICROINIT_GRACE", Duration::ZERO).unwrap_err();
        assert!(e.starts_with("MICROINIT_GRACE: "), "{e}");
        o.set_from("MICROINIT_GRACE", vec!["soon".into()], "--grace");
        let e = o.duration("MICROINIT_GRACE", Duration::ZERO).unwrap_err();
        assert!(e.starts_with("--grace: "), "{e}");
    }

    #[test]
    fn secret_is_redacted() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
    }
}
