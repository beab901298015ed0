//! Command line and environment → `Action`.
//!
//! Owns: the flag tables of the three dialects (microinit, tini, dumb-init: chosen by argv[0]), their env
//! twins, `--help`, and turning `Options` into the typed `Config`. Does not own: the meaning of the consul
//! and runtime-check options beyond their parsing (see `registration::consul_config`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::discovery::{self, DiscoveryConfig};
use crate::config::*;
use crate::consul::registration;
use crate::init::signals::parse_signal;

/// What this invocation is asked to do.
#[derive(Debug)]
pub enum Action {
    /// Supervise an app (the init).
    Run(Box<Config>),
    /// `microinit check [--json] [CMD…]`.
    Check {
        json: bool,
        command: Vec<OsString>,
        runtime: RuntimeCheckConfig,
    },
    /// `microinit exec -- CMD`: run CMD as a child subreaper (docker exec sessions, HEALTHCHECKs).
    Exec(Box<Config>),
    /// `status`, `signal`, `restart`, `maintenance`: talk to PID 1's control socket.
    Client {
        request: ClientRequest,
        socket: PathBuf,
    },
    /// Text for stdout, exit 0 (`--help`, `--version`, `tini -l`).
    Print(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    Status {
        json: bool,
    },
    Signal(String),
    Restart,
    Maintenance {
        on: bool,
        reason: Option<String>,
    },
    /// `microinit health`: exit 0 when the app is running and ready, 1 otherwise.
    Health,
}

/// A usage error: one line, exit code 2.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Boolean; stored as "1". Counted flags (-v) store the repeat count.
    Flag,
    /// Takes a value; the last one wins.
    Value,
    /// Takes a value; repeatable, every value kept.
    Repeat,
}

struct Spec {
    long: &'static str,
    short: Option<char>,
    /// The env twin, also the `Options` key.
    key: &'static str,
    kind: Kind,
    arg: &'static str,
    help: &'static str,
}

const fn spec(
    long: &'static str,
    short: Option<char>,
    key: &'static str,
    kind: Kind,
    arg: &'static str,
    help: &'static str,
) -> Spec {
    Spec {
        long,
        short,
        key,
        kind,
        arg,
        help,
    }
}

use Kind::*;

const MICROINIT: &[Spec] = &[
    spec("group", Some('g'), "MICROINIT_GROUP", Flag, "", "Forward signals to the app's whole process group, not only to its pid."),
    spec("rewrite", Some('r'), "MICROINIT_REWRITE", Repeat, "FROM:TO", "Rewrite signal FROM to TO before forwarding; TO=0 drops it. Repeatable; env: comma list."),
    spec("pdeathsig", Some('p'), "MICROINIT_PDEATHSIG", Value, "SIG", "Signal the app receives if microinit dies."),
    spec("remap-exit", Some('e'), "MICROINIT_REMAP_EXIT", Repeat, "CODE", "Report the app's exit code CODE as 0. Repeatable; env: comma list."),
    spec("grace", None, "MICROINIT_GRACE", Value, "DURATION", "After forwarding SIGTERM/SIGINT, and after the app exits for what it left behind: SIGKILL what is still alive after this long (default 8s)."),
    spec("verbose", Some('v'), "MICROINIT_VERBOSE", Flag, "", "More log output (-v info, -vv debug, -vvv trace). RUST_LOG also works."),
    spec("restart", None, "MICROINIT_RESTART", Value, "POLICY", "never (default), on-failure or always: restart the app with capped exponential backoff."),
    spec("max-restarts", None, "MICROINIT_MAX_RESTARTS", Value, "N", "Give up after N restarts and exit with the app's last status."),
    spec("pre-start", None, "MICROINIT_PRE_START", Value, "CMD", "Shell command run before the app starts; a failure stops the start."),
    spec("pre-stop", None, "MICROINIT_PRE_STOP", Value, "CMD", "Shell command run after deregistration, before SIGTERM is forwarded."),
    spec("post-stop", None, "MICROINIT_POST_STOP", Value, "CMD", "Shell command run after the app exited."),
    spec("hook-timeout", None, "MICROINIT_HOOK_TIMEOUT", Value, "DURATION", "Time limit of each hook (default 30s); a hook past it is killed."),
    spec("runtime-dir", None, "MICROINIT_RUNTIME_DIR", Value, "DIR", "The runtime volume's mount point (default /opt/files): every link into it must resolve."),
    spec("require", None, "MICROINIT_REQUIRE", Repeat, "PATH", "A path that must exist before the app starts. Repeatable; env: colon list."),
    spec("wait-runtime", None, "MICROINIT_WAIT_RUNTIME", Value, "DURATION", "Wait up to this long for a late runtime volume before failing."),
    spec("no-runtime-check", None, "MICROINIT_NO_RUNTIME_CHECK", Flag, "", "Skip the runtime check."),
    spec("socket", None, "MICROINIT_SOCKET", Value, "PATH", "Control socket for `microinit status` & co (default /run/microinit.sock)."),
    spec("service-name", None, "MICROINIT_SERVICE_NAME", Value, "NAME", "Register the app in Consul under NAME (turns registration on)."),
    spec("service-id", None, "MICROINIT_SERVICE_ID", Value, "ID", "Consul service id (default NAME-HOSTNAME)."),
    spec("service-port", None, "MICROINIT_SERVICE_PORT", Value, "PORT", "Service port to register."),
    spec("service-address", None, "MICROINIT_SERVICE_ADDRESS", Value, "ADDR", "Service address (default: first non-loopback IPv4)."),
    spec("service-tags", None, "MICROINIT_SERVICE_TAGS", Value, "T1,T2", "Service tags, comma separated."),
    spec("service-meta", None, "MICROINIT_SERVICE_META", Value, "K=V,…", "Service meta, comma separated key=value pairs."),
    spec("service-file", None, "MICROINIT_SERVICE_FILE", Value, "PATH", "Service definition in Consul's JSON format."),
    spec("check-ttl", None, "MICROINIT_CHECK_TTL", Value, "DURATION", "TTL of the service check (default 10s); heartbeat every TTL/2."),
    spec("deregister-after", None, "MICROINIT_DEREGISTER_AFTER", Value, "DURATION", "Consul removes a service critical this long (default 1m)."),
    spec("health-cmd", None, "MICROINIT_HEALTH_CMD", Value, "CMD", "Shell command run periodically: exit 0 passing, 1 warning, else critical."),
    spec("health-interval", None, "MICROINIT_HEALTH_INTERVAL", Value, "DURATION", "Interval of the health command (default 5s)."),
    spec("health-timeout", None, "MICROINIT_HEALTH_TIMEOUT", Value, "DURATION", "Time limit of the health command (default 3s)."),
    spec("ready", None, "MICROINIT_READY", Value, "WHEN", "First `passing` when: immediate, health (first passing health command), tcp:PORT or tcp:HOST:PORT."),
    spec("drain", None, "MICROINIT_DRAIN", Value, "DURATION", "Time between deregistering and forwarding SIGTERM (default 0s)."),
    spec("wait-for", None, "MICROINIT_WAIT_FOR", Repeat, "TARGET", "Start the app only once TARGET is up: consul:NAME[:N][@TAG][?dc=DC] (N passing instances), tcp:HOST:PORT, http://… (2xx) or file:PATH. Repeatable; env: blank-separated list."),
    spec("wait-timeout", None, "MICROINIT_WAIT_TIMEOUT", Value, "DURATION", "Give up waiting for --wait-for targets after this long: exit 124 naming what is missing (default: wait for ever)."),
    spec("watch", None, "MICROINIT_WATCH", Repeat, "NAME", "Watch a Consul service's passing instances (NAME[@TAG][?dc=DC]) or a KV key (kv:KEY) while the app runs. Repeatable; env: blank-separated list."),
    spec("on-change", None, "MICROINIT_ON_CHANGE", Value, "ACTION", "On a watched change: signal:SIG (to the app) or exec:PROGRAM ARG… (no shell; or exec:[\"PROGRAM\",\"ARG\"]); the list is in MICROINIT_WATCH_<NAME>."),
    spec("watch-file", None, "MICROINIT_WATCH_FILE", Value, "PATH", "Write the watched instances to PATH on each change (write + rename): host:port lines, or JSON if PATH ends in .json."),
    spec("watch-debounce", None, "MICROINIT_WATCH_DEBOUNCE", Value, "DURATION", "Act on a change only after it has been quiet this long (default 50ms)."),
    spec("metrics", None, "MICROINIT_METRICS", Value, "ADDR:PORT", "Serve Prometheus metrics at http://ADDR:PORT/metrics (off by default: nothing listens unless asked)."),
    spec("consul-addr", None, "CONSUL_HTTP_ADDR", Value, "ADDR", "Consul agent: host:port, http://… or https://… (default 127.0.0.1:8500)."),
    spec("consul-token-file", None, "CONSUL_HTTP_TOKEN_FILE", Value, "PATH", "File holding the ACL token (env CONSUL_HTTP_TOKEN also works; no flag, it would show in ps)."),
    spec("consul-cacert", None, "CONSUL_CACERT", Value, "PATH", "CA certificate for an https:// agent."),
    spec("consul-required", None, "MICROINIT_CONSUL_REQUIRED", Flag, "", "Make any registration failure fatal (exit 125) instead of logged."),
];

/// tini's flags, mapped onto the same keys (tini's own env vars are read too).
const TINI: &[Spec] = &[
    spec(
        "",
        Some('s'),
        "TINI_SUBREAPER",
        Flag,
        "",
        "Register as a process subreaper (silences the warning when not PID 1).",
    ),
    spec(
        "",
        Some('p'),
        "MICROINIT_PDEATHSIG",
        Value,
        "SIGNAL",
        "Trigger SIGNAL when parent dies.",
    ),
    spec(
        "",
        Some('v'),
        "MICROINIT_VERBOSE",
        Flag,
        "",
        "Generate more verbose output. Repeat up to 3 times.",
    ),
    spec(
        "",
        Some('w'),
        "TINI_WARN_ON_REAP",
        Flag,
        "",
        "Print a warning when processes are getting reaped.",
    ),
    spec(
        "",
        Some('g'),
        "TINI_KILL_PROCESS_GROUP",
        Flag,
        "",
        "Send signals to the child's process group.",
    ),
    spec(
        "",
        Some('e'),
        "MICROINIT_REMAP_EXIT",
        Repeat,
        "EXIT_CODE",
        "Remap EXIT_CODE (from 0 to 255) to 0.",
    ),
    spec(
        "",
        Some('l'),
        "TINI_LICENSE",
        Flag,
        "",
        "Show license and exit.",
    ),
];

/// dumb-init's flags.
const DUMB_INIT: &[Spec] = &[
    spec(
        "single-child",
        Some('c'),
        "DUMB_INIT_SINGLE_CHILD",
        Flag,
        "",
        "Run in single-child mode: no setsid, signals go to the child only.",
    ),
    spec(
        "rewrite",
        Some('r'),
        "MICROINIT_REWRITE",
        Repeat,
        "s:r",
        "Rewrite received signal s to new signal r before proxying; r=0 drops it.",
    ),
    spec(
        "verbose",
        Some('v'),
        "MICROINIT_VERBOSE",
        Flag,
        "",
        "Print debugging information to stderr.",
    ),
];

fn dialect_of(argv0: &str) -> Dialect {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    if base.starts_with("tini") {
        Dialect::Tini
    } else if base.starts_with("dumb-init") {
        Dialect::DumbInit
    } else {
        Dialect::Microinit
    }
}

fn specs(d: Dialect) -> &'static [Spec] {
    match d {
        Dialect::Microinit => MICROINIT,
        Dialect::Tini => TINI,
        Dialect::DumbInit => DUMB_INIT,
    }
}

/// Parse argv (with argv[0]) and the environment (`env(key)`).
pub fn parse(
    argv: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Action, UsageError> {
    let mut args = argv.into_iter();
    let argv0 = args
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dialect = dialect_of(&argv0);
    let rest: Vec<OsString> = args.collect();

    if dialect == Dialect::Microinit {
        if let Some(first) = rest.first().and_then(|a| a.to_str()) {
            match first {
                "check" => return parse_check(&rest[1..], env),
                "exec" => return parse_exec(&rest[1..], env),
                "status" | "signal" | "restart" | "maintenance" | "health" => {
                    return parse_client(&rest, env)
                }
                _ => {}
            }
        }
    }

    let mut opts = env_options(specs(dialect), env);
    let mut extra = Extra::default();
    let command = parse_flags(dialect, specs(dialect), &rest, &mut opts, &mut extra)?;
    if extra.help {
        return Ok(Action::Print(help(dialect)));
    }
    if extra.version {
        return Ok(Action::Print(version(dialect)));
    }
    if opts.flag("TINI_LICENSE") {
        return Ok(Action::Print(LICENSE.to_string()));
    }
    if command.is_empty() {
        return Err(UsageError(format!(
            "no command given: usage is `{} [OPTIONS] [--] CMD [ARGS...]` (see --help)",
            dialect_name(dialect)
        )));
    }
    Ok(Action::Run(Box::new(build_config(
        dialect, command, &opts,
    )?)))
}

#[derive(Default)]
struct Extra {
    help: bool,
    version: bool,
    json: bool,
}

/// Env values first; flags override them later.
fn env_options(table: &[Spec], env: &dyn Fn(&str) -> Option<String>) -> Options {
    let mut opts = Options::default();
    // Every MICROINIT_*/CONSUL_* key is read in every dialect: a tini/dumb-init drop-in can use them too.
    for s in MICROINIT.iter().chain(table) {
        if let Some(v) = env(s.key) {
            opts.set(s.key, vec![v]);
        }
    }
    for key in [
        "CONSUL_HTTP_TOKEN",
        "TINI_VERBOSITY",
        "DUMB_INIT_SETSID",
        "RUST_LOG",
    ] {
        if let Some(v) = env(key) {
            opts.set(key, vec![v]);
        }
    }
    opts
}

/// Flags up to the command. Returns the command (may be empty).
fn parse_flags(
    dialect: Dialect,
    table: &[Spec],
    args: &[OsString],
    opts: &mut Options,
    extra: &mut Extra,
) -> Result<Vec<OsString>, UsageError> {
    let mut from_flags: std::collections::BTreeMap<&'static str, Vec<String>> = Default::default();
    let mut i = 0;
    let name = dialect_name(dialect);
    let unknown = |a: &str| UsageError(format!("unknown option {a}: see `{name} --help`"));
    while i < args.len() {
        let Some(a) = args[i].to_str() else { break };
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        // (spec, inline value) for every flag in this argument.
        let mut found: Vec<(&Spec, Option<String>)> = Vec::new();
        if let Some(long) = a.strip_prefix("--") {
            let (lname, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            match lname {
                "help" => extra.help = true,
                "version" => extra.version = true,
                "json" if extra_json_allowed(dialect) => extra.json = true,
                _ => match table.iter().find(|s| !s.long.is_empty() && s.long == lname) {
                    Some(s) => found.push((s, inline)),
                    None => return Err(unknown(a)),
                },
            }
        } else {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                match table.iter().find(|s| s.short == Some(c)) {
                    Some(s) if s.kind == Flag => found.push((s, None)),
                    Some(s) => {
                        // -pSIGTERM or -p SIGTERM.
                        let rest: String = chars[j + 1..].iter().collect();
                        found.push((s, (!rest.is_empty()).then_some(rest)));
                        j = chars.len();
                        continue;
                    }
                    None if c == 'h' => extra.help = true,
                    None if c == 'V' && dialect == Dialect::DumbInit => extra.version = true,
                    None => return Err(unknown(&format!("-{c}"))),
                }
                j += 1;
            }
        }
        i += 1;
        for (s, inline) in found {
            let value = match (s.kind, inline) {
                (Flag, Some(_)) => {
                    return Err(UsageError(format!("option --{} takes no value", s.long)))
                }
                (Flag, None) => {
                    let n = from_flags
                        .get(s.key)
                        .and_then(|v| v.last())
                        .and_then(|v| v.parse::<u32>().ok());
                    (n.unwrap_or(0) + 1).to_string()
                }
                (_, Some(v)) => v,
                (_, None) => {
                    let v = args.get(i).and_then(|v| v.to_str()).ok_or_else(|| {
                        UsageError(format!(
                            "option {a} needs a value ({}); see `{name} --help`",
                            s.arg
                        ))
                    })?;
                    i += 1;
                    v.to_string()
                }
            };
            let entry = from_flags.entry(s.key).or_default();
            if s.kind == Flag || s.kind == Value {
                entry.clear();
            }
            entry.push(value);
        }
    }
    for (k, v) in from_flags {
        opts.set(k, v);
    }
    Ok(args[i..].to_vec())
}

fn extra_json_allowed(d: Dialect) -> bool {
    d == Dialect::Microinit
}

fn dialect_name(d: Dialect) -> &'static str {
    match d {
        Dialect::Microinit => "microinit",
        Dialect::Tini => "tini",
        Dialect::DumbInit => "dumb-init",
    }
}

fn parse_check(
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Action, UsageError> {
    let mut opts = env_options(MICROINIT, env);
    let mut extra = Extra::default();
    let command = parse_flags(Dialect::Microinit, MICROINIT, args, &mut opts, &mut extra)?;
    if extra.help {
        return Ok(Action::Print(
            "usage: microinit check [--json] [OPTIONS] [CMD [ARGS...]]\n\nRuns only the runtime check and prints what was resolved and what is missing.\nExit 0 when everything is there, 127 when something is missing.\n".into(),
        ));
    }
    let mut runtime = runtime_config(&opts)?;
    // An explicit `check` always checks, whatever MICROINIT_NO_RUNTIME_CHECK says.
    runtime.enabled = true;
    Ok(Action::Check {
        json: extra.json,
        command,
        runtime,
    })
}

fn parse_exec(
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Action, UsageError> {
    let mut opts = env_options(MICROINIT, env);
    let mut extra = Extra::default();
    let command = parse_flags(Dialect::Microinit, MICROINIT, args, &mut opts, &mut extra)?;
    if extra.help || command.is_empty() {
        return Err(UsageError(
            "usage: microinit exec [OPTIONS] -- CMD [ARGS...] (runs CMD as a child subreaper and passes its status through)".into(),
        ));
    }
    let mut cfg = build_config(Dialect::Microinit, command, &opts)?;
    // A docker exec session stays in the caller's session so the terminal keeps working; no registration,
    // no socket, no runtime check: those belong to PID 1.
    cfg.supervisor.isolation = Isolation::None;
    cfg.supervisor.warn_not_reaper = false;
    cfg.supervisor.restart = RestartPolicy::Never;
    cfg.supervisor.hooks = Hooks::default();
    cfg.consul = None;
    cfg.runtime.enabled = false;
    cfg.control = None;
    cfg.discovery = DiscoveryConfig::default();
    cfg.metrics = None;
    Ok(Action::Exec(Box::new(cfg)))
}

fn parse_client(
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Action, UsageError> {
    let words: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut socket = env("MICROINIT_SOCKET")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_SOCKET.into());
    let mut json = false;
    let mut reason = None;
    let mut positional = Vec::new();
    let mut it = words[1..].iter();
    while let Some(w) = it.next() {
        match w.as_str() {
            "--json" => json = true,
            "--socket" => {
                socket = it
                    .next()
                    .cloned()
                    .ok_or_else(|| UsageError("--socket needs a PATH".into()))?
            }
            "--reason" => {
                reason = Some(
                    it.next()
                        .cloned()
                        .ok_or_else(|| UsageError("--reason needs TEXT".into()))?,
                )
            }
            s if s.starts_with("--") => {
                return Err(UsageError(format!(
                    "unknown option {s} for `microinit {}`",
                    words[0]
                )));
            }
            _ => positional.push(w.clone()),
        }
    }
    let request = match (words[0].as_str(), positional.as_slice()) {
        ("status", []) => ClientRequest::Status { json },
        ("signal", [sig]) => {
            parse_signal(sig).map_err(UsageError)?;
            ClientRequest::Signal(sig.clone())
        }
        ("restart", []) => ClientRequest::Restart,
        ("health", []) => ClientRequest::Health,
        ("maintenance", [m]) if m == "on" || m == "off" => ClientRequest::Maintenance { on: m == "on", reason },
        (cmd, _) => {
            return Err(UsageError(format!(
                "bad arguments for `microinit {cmd}`: usage is `microinit status [--json]`, `microinit signal SIG`, `microinit restart`, `microinit maintenance on|off [--reason TEXT]` or `microinit health`"
            )))
        }
    };
    Ok(Action::Client {
        request,
        socket: PathBuf::from(socket),
    })
}

pub const DEFAULT_SOCKET: &str = "/run/microinit.sock";
const DEFAULT_GRACE: Duration = Duration::from_secs(8);

fn build_config(
    dialect: Dialect,
    command: Vec<OsString>,
    opts: &Options,
) -> Result<Config, UsageError> {
    let e = UsageError;
    let mut rewrites = Vec::new();
    for entry in opts.all("MICROINIT_REWRITE") {
        for item in entry.split(',').filter(|s| !s.trim().is_empty()) {
            let (from, to) = item.split_once(':').ok_or_else(|| {
                e(format!(
                    "bad rewrite {item:?}: use FROM:TO, e.g. TERM:QUIT or 15:0"
                ))
            })?;
            let from = parse_signal(from).map_err(e)?;
            let to = if to.trim() == "0" {
                0
            } else {
                parse_signal(to).map_err(e)?
            };
            rewrites.push(Rewrite { from, to });
        }
    }
    let mut remap_exit = Vec::new();
    for entry in opts.all("MICROINIT_REMAP_EXIT") {
        for item in entry.split(',').filter(|s| !s.trim().is_empty()) {
            let code: i32 = item
                .trim()
                .parse()
                .ok()
                .filter(|c| (0..=255).contains(c))
                .ok_or_else(|| {
                    e(format!(
                        "bad exit code {item:?}: use a number from 0 to 255"
                    ))
                })?;
            remap_exit.push(code);
        }
    }
    let pdeathsig = opts
        .get("MICROINIT_PDEATHSIG")
        .map(parse_signal)
        .transpose()
        .map_err(e)?;
    let grace = opts.duration("MICROINIT_GRACE", DEFAULT_GRACE).map_err(e)?;
    let restart = match opts.get("MICROINIT_RESTART").unwrap_or("never") {
        "never" | "no" => RestartPolicy::Never,
        "on-failure" => RestartPolicy::OnFailure,
        "always" => RestartPolicy::Always,
        other => {
            return Err(e(format!(
                "bad restart policy {other:?}: use never, on-failure or always"
            )))
        }
    };
    let max_restarts = opts
        .get("MICROINIT_MAX_RESTARTS")
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| e(format!("bad --max-restarts {v:?}: use a whole number")))
        })
        .transpose()?;
    let hooks = Hooks {
        pre_start: opts.get("MICROINIT_PRE_START").map(str::to_string),
        pre_stop: opts.get("MICROINIT_PRE_STOP").map(str::to_string),
        post_stop: opts.get("MICROINIT_POST_STOP").map(str::to_string),
        timeout: opts
            .duration("MICROINIT_HOOK_TIMEOUT", Duration::from_secs(30))
            .map_err(e)?,
    };

    let (isolation, signal_group) = match dialect {
        Dialect::Microinit => (Isolation::Session, opts.flag("MICROINIT_GROUP")),
        // tini puts the child in its own process group (not session) and signals the group only with -g.
        Dialect::Tini => (
            Isolation::ProcessGroup,
            opts.flag("TINI_KILL_PROCESS_GROUP") || opts.flag("MICROINIT_GROUP"),
        ),
        // dumb-init: setsid + group delivery by default; -c or DUMB_INIT_SETSID=0 means neither.
        Dialect::DumbInit => {
            let single =
                opts.flag("DUMB_INIT_SINGLE_CHILD") || opts.get("DUMB_INIT_SETSID") == Some("0");
            if single {
                (Isolation::None, false)
            } else {
                (Isolation::Session, true)
            }
        }
    };
    if dialect == Dialect::DumbInit && isolation == Isolation::Session {
        // dumb-init's default in setsid mode: a terminal stop becomes SIGSTOP for the group, since the
        // app's session has no job-control shell to ignore TSTP/TTIN/TTOU on its behalf.
        for sig in [libc::SIGTSTP, libc::SIGTTOU, libc::SIGTTIN] {
            if !rewrites.iter().any(|r| r.from == sig) {
                rewrites.push(Rewrite {
                    from: sig,
                    to: libc::SIGSTOP,
                });
            }
        }
    }
    let verbosity = opts
        .get("MICROINIT_VERBOSE")
        .or(opts.get("TINI_VERBOSITY"))
        .and_then(|v| v.parse::<u8>().ok())
        .unwrap_or(0);

    let supervisor = SupervisorConfig {
        command,
        signal_group,
        isolation,
        rewrites,
        pdeathsig,
        remap_exit,
        grace,
        warn_not_reaper: !opts.flag("TINI_SUBREAPER"),
        warn_on_reap: opts.flag("TINI_WARN_ON_REAP"),
        restart,
        max_restarts,
        hooks,
    };
    let consul = registration::consul_config(opts).map_err(e)?;
    let discovery =
        DiscoveryConfig::from_options(opts, || registration::agent_config(opts), parse_signal)
            .map_err(e)?;
    let metrics = opts
        .get("MICROINIT_METRICS")
        .map(|m| {
            discovery::host_port(m)
                .map(|_| m.to_string())
                .map_err(|err| e(format!("--metrics {m}: {err} (e.g. 0.0.0.0:9100)")))
        })
        .transpose()?;
    let socket = opts.get("MICROINIT_SOCKET").unwrap_or(DEFAULT_SOCKET);
    Ok(Config {
        dialect,
        verbosity,
        supervisor,
        runtime: runtime_config(opts)?,
        consul,
        control: Some(ControlConfig {
            socket: PathBuf::from(socket),
        }),
        discovery,
        metrics,
    })
}

fn runtime_config(opts: &Options) -> Result<RuntimeCheckConfig, UsageError> {
    let require = opts
        .all("MICROINIT_REQUIRE")
        .iter()
        .flat_map(|v| v.split(':'))
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    let wait = opts
        .get("MICROINIT_WAIT_RUNTIME")
        .map(parse_duration)
        .transpose()
        .map_err(|m| UsageError(format!("MICROINIT_WAIT_RUNTIME/--wait-runtime: {m}")))?;
    Ok(RuntimeCheckConfig {
        enabled: !opts.flag("MICROINIT_NO_RUNTIME_CHECK"),
        runtime_dir: PathBuf::from(opts.get("MICROINIT_RUNTIME_DIR").unwrap_or("/opt/files")),
        require,
        wait,
        root: PathBuf::from("/"),
    })
}

fn version(d: Dialect) -> String {
    let v = env!("CARGO_PKG_VERSION");
    match d {
        Dialect::Microinit => format!("microinit {v}\n"),
        Dialect::Tini => format!("tini version 0.19.0 (microinit {v})\n"),
        Dialect::DumbInit => format!("dumb-init v1.2.5 (microinit {v})\n"),
    }
}

const LICENSE: &str = "microinit is MIT licensed. It reimplements tini's command line; tini is MIT licensed, Copyright (c) 2015 Thomas Orozco.\n";

fn help(d: Dialect) -> String {
    let name = dialect_name(d);
    let mut out = format!(
        "{name} {} — a tiny PID-1 init and supervisor for Docker microcontainers\n\n\
         usage: {name} [OPTIONS] [--] CMD [ARGS...]\n",
        env!("CARGO_PKG_VERSION")
    );
    if d == Dialect::Microinit {
        out.push_str(
            "       microinit check [--json] [OPTIONS] [CMD...]   runtime check only\n\
             \x20      microinit status [--json] | signal SIG | restart | maintenance on|off [--reason TEXT]\n\
             \x20      microinit health                                exit 0 when the app is running and ready, else 1\n\
             \x20      microinit exec [OPTIONS] -- CMD [ARGS...]     run CMD as a child subreaper\n",
        );
    }
    out.push_str("\noptions (each also read from the environment variable shown):\n");
    for s in specs(d) {
        let short = s.short.map(|c| format!("-{c}, ")).unwrap_or_default();
        let long = if s.long.is_empty() {
            String::new()
        } else {
            format!("--{}", s.long)
        };
        let flag = format!("{short}{long} {}", s.arg);
        out.push_str(&format!(
            "  {:<32} {}\n  {:<32} [env {}]\n",
            flag.trim_end(),
            s.help,
            "",
            s.key
        ));
    }
    out.push_str(
        "  -h, --help                       This help.\n\
         \x20 --version                        Version.\n\n\
         Signals: every catchable signal (1-31 but SIGCHLD, and SIGRTMIN..SIGRTMAX) is forwarded to the app.\n\
         SIGKILL and SIGSTOP cannot be caught by any process, so they are never forwarded.\n\n\
         Exit status: the app's exit code n, or 128+s when it was killed by signal s; 2 usage error;\n\
         124 --wait-timeout ran out; 125 microinit itself failed (or --consul-required and registration\n\
         failed); 126 command not\n\
         executable; 127 command not found or runtime missing (see `microinit check`); 3 (clients) no socket.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Action, UsageError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(args.iter().map(OsString::from).collect(), &|k| {
            env.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone())
        })
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match run(args, env) {
            Ok(Action::Run(c)) => *c,
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn flags_and_env_twins() {
        let c = config(
            &[
                "microinit",
                "-g",
                "--rewrite",
                "TERM:QUIT",
                "--",
                "app",
                "-x",
            ],
            &[("MICROINIT_GRACE", "3s")],
        );
        assert!(c.supervisor.signal_group);
        assert_eq!(c.supervisor.rewrites, vec![Rewrite { from: 15, to: 3 }]);
        assert_eq!(c.supervisor.grace, Duration::from_secs(3));
        assert_eq!(
            c.supervisor.command,
            vec![OsString::from("app"), OsString::from("-x")]
        );
        let c = config(
            &["microinit", "app"],
            &[
                ("MICROINIT_REWRITE", "15:0,HUP:USR1"),
                ("MICROINIT_GROUP", "1"),
            ],
        );
        assert_eq!(
            c.supervisor.rewrites,
            vec![Rewrite { from: 15, to: 0 }, Rewrite { from: 1, to: 10 }]
        );
        assert!(c.supervisor.signal_group);
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for args in [
            &["microinit", "--nope", "x"][..],
            &["microinit"],
            &["microinit", "--"],
            &["microinit", "-p", "SIGNOPE", "x"],
            &["microinit", "--rewrite", "15", "x"],
            &["microinit", "-e", "300", "x"],
            &["microinit", "--grace"],
            &["microinit", "status", "extra"],
        ] {
            assert!(matches!(run(args, &[]), Err(UsageError(_))), "{args:?}");
        }
    }

    #[test]
    fn tini_dialect() {
        let c = config(
            &[
                "/sbin/tini",
                "-s",
                "-g",
                "-e",
                "143",
                "-vv",
                "-p",
                "SIGKILL",
                "--",
                "app",
            ],
            &[],
        );
        assert_eq!(c.dialect, Dialect::Tini);
        assert_eq!(c.supervisor.isolation, Isolation::ProcessGroup);
        assert!(c.supervisor.signal_group && !c.supervisor.warn_not_reaper);
        assert_eq!(c.supervisor.remap_exit, vec![143]);
        assert_eq!(c.supervisor.pdeathsig, Some(9));
        assert_eq!(c.verbosity, 2);
        assert!(matches!(run(&["tini", "-l"], &[]), Ok(Action::Print(_))));
        assert!(matches!(
            run(&["tini", "--version"], &[]),
            Ok(Action::Print(_))
        ));
    }

    #[test]
    fn dumb_init_dialect() {
        let c = config(&["dumb-init", "-r", "15:3", "app"], &[]);
        assert_eq!(c.supervisor.isolation, Isolation::Session);
        assert!(c.supervisor.signal_group);
        assert!(c.supervisor.rewrites.contains(&Rewrite { from: 15, to: 3 }));
        assert!(c.supervisor.rewrites.contains(&Rewrite {
            from: libc::SIGTSTP,
            to: libc::SIGSTOP
        }));
        let c = config(&["dumb-init", "--single-child", "app"], &[]);
        assert_eq!(c.supervisor.isolation, Isolation::None);
        let c = config(&["dumb-init", "app"], &[("DUMB_INIT_SETSID", "0")]);
        assert!(!c.supervisor.signal_group);
    }

    #[test]
    fn subcommands() {
        assert!(matches!(
            run(&["microinit", "check", "--json", "node"], &[]),
            Ok(Action::Check { json: true, .. })
        ));
        assert!(matches!(
            run(&["microinit", "maintenance", "on", "--reason", "x"], &[]),
            Ok(Action::Client {
                request: ClientRequest::Maintenance { on: true, .. },
                ..
            })
        ));
        assert!(matches!(
            run(&["microinit", "exec", "--", "sh"], &[]),
            Ok(Action::Exec(_))
        ));
        // After `--` a word like `status` is the app, not a subcommand.
        assert!(matches!(
            run(&["microinit", "--", "status"], &[]),
            Ok(Action::Run(_))
        ));
    }
}
