//! microinit's own options, and turning parsed `Options` into the typed `Config`.
//!
//! Owns: microinit's flag table (every flag with its `MICROINIT_*`/`CONSUL_*` twin and its section),
//! building `Config` from `Options` with messages that name the flag or variable the user used, and the
//! one-line warnings about options of a section that is off. Does not own: the parser (`flags`), the
//! dialects' tables and rules (`dialect`), nor the Consul section's meaning (`registration::consul_config`).

use std::path::PathBuf;
use std::time::Duration;

use super::flags::{spec, Kind::*, Section, Section::*, Spec};
use super::UsageError;
use crate::config::discovery::{self, DiscoveryConfig};
use crate::config::*;
use crate::consul::registration;
use crate::init::signals::parse_signal;

pub const MICROINIT: &[Spec] = &[
    spec("help", Some('h'), "", Help, "", "This help.", General),
    spec("version", None, "", Version, "", "Version.", General),
    spec("group", Some('g'), "MICROINIT_GROUP", Flag, "", "Forward signals to the app's whole process group, not only to its pid.", General),
    spec("rewrite", Some('r'), "MICROINIT_REWRITE", Repeat, "FROM:TO", "Rewrite signal FROM to TO before forwarding; TO=0 drops it. Repeatable; env: comma list.", General),
    spec("pdeathsig", Some('p'), "MICROINIT_PDEATHSIG", Value, "SIG", "Signal the app receives if microinit dies.", General),
    spec("remap-exit", Some('e'), "MICROINIT_REMAP_EXIT", Repeat, "CODE", "Report the app's exit code CODE as 0. Repeatable; env: comma list.", General),
    spec("grace", None, "MICROINIT_GRACE", Value, "DURATION", "After the app exited: what it left behind gets SIGTERM, then SIGKILL after this long (default 8s).", General),
    spec("stop-signal", None, "MICROINIT_STOP_SIGNAL", Repeat, "SIG", "Also treat SIG as a stop request (TERM and INT always are): deregister, drain, pre-stop, then forward. Match the image's STOPSIGNAL. Repeatable; env: comma list.", General),
    spec("stop-timeout", None, "MICROINIT_STOP_TIMEOUT", Value, "DURATION", "SIGKILL the app this long after a stop was forwarded to it (default: never; the orchestrator's deadline rules).", General),
    spec("verbose", Some('v'), "MICROINIT_VERBOSE", Flag, "", "More log output (-v info, -vv debug, -vvv trace). RUST_LOG also works.", General),
    spec("restart", None, "MICROINIT_RESTART", Value, "POLICY", "never (default), on-failure or always: restart the app with capped exponential backoff.", Restart),
    spec("max-restarts", None, "MICROINIT_MAX_RESTARTS", Value, "N", "Give up after N restarts and exit with the app's last status.", Restart),
    spec("pre-start", None, "MICROINIT_PRE_START", Value, "CMD", "Shell command run before the app starts; a failure stops the start. A JSON array [\"PROG\",\"ARG\"] runs with no shell.", General),
    spec("pre-stop", None, "MICROINIT_PRE_STOP", Value, "CMD", "Shell command run after deregistration, before SIGTERM is forwarded (or a JSON argv, no shell).", General),
    spec("post-stop", None, "MICROINIT_POST_STOP", Value, "CMD", "Shell command run after the app exited (or a JSON argv, no shell).", General),
    spec("hook-timeout", None, "MICROINIT_HOOK_TIMEOUT", Value, "DURATION", "Time limit of each hook (default 30s); a hook past it is killed.", General),
    spec("runtime-dir", None, "MICROINIT_RUNTIME_DIR", Value, "DIR", "The runtime volume's mount point (default /opt/files): every link into it must resolve.", Runtime),
    spec("require", None, "MICROINIT_REQUIRE", Repeat, "PATH", "A path that must exist before the app starts. Repeatable; env: colon list.", Runtime),
    spec("wait-runtime", None, "MICROINIT_WAIT_RUNTIME", Value, "DURATION", "Wait up to this long for a late runtime volume before failing.", Runtime),
    spec("no-runtime-check", None, "MICROINIT_NO_RUNTIME_CHECK", Flag, "", "Skip the runtime check.", General),
    spec("links-manifest", None, "MICROINIT_LINKS_MANIFEST", Value, "FILE", "The image's list of links into the runtime dir, checked at start instead of a scan (default /etc/microinit/runtime-links; written by `microinit check --write-manifest`).", Runtime),
    spec("scan-runtime-links", None, "MICROINIT_SCAN_RUNTIME_LINKS", Flag, "", "Without a manifest, scan the standard directories for links into the runtime dir at every start (costs what the image holds).", Runtime),
    spec("socket", None, "MICROINIT_SOCKET", Value, "PATH", "Control socket for `microinit status` & co (default /run/microinit.sock).", Control),
    spec("service-name", None, "MICROINIT_SERVICE_NAME", Value, "NAME", "Register the app in Consul under NAME (turns registration on).", Consul),
    spec("service-id", None, "MICROINIT_SERVICE_ID", Value, "ID", "Consul service id (default NAME-HOSTNAME[-CONTAINER][-PORT], unique per replica).", Consul),
    spec("service-port", None, "MICROINIT_SERVICE_PORT", Value, "PORT", "Service port to register.", Consul),
    spec("service-address", None, "MICROINIT_SERVICE_ADDRESS", Value, "ADDR", "Service address, e.g. the host's with a published port (default: IPv4 of --service-interface).", Consul),
    spec("service-interface", None, "MICROINIT_SERVICE_INTERFACE", Value, "NAME", "Interface whose IPv4 is registered (default: the one holding the default route).", Consul),
    spec("service-lan-address", None, "MICROINIT_SERVICE_LAN_ADDRESS", Value, "ADDR[:PORT]", "Tagged address `lan` (port defaults to the service port).", Consul),
    spec("service-wan-address", None, "MICROINIT_SERVICE_WAN_ADDRESS", Value, "ADDR[:PORT]", "Tagged address `wan` (port defaults to the service port).", Consul),
    spec("service-tags", None, "MICROINIT_SERVICE_TAGS", Value, "T1,T2", "Service tags, comma separated.", Consul),
    spec("service-meta", None, "MICROINIT_SERVICE_META", Value, "K=V,…", "Service meta, comma separated key=value pairs.", Consul),
    spec("service-file", None, "MICROINIT_SERVICE_FILE", Value, "PATH", "Service definition in Consul's JSON format.", Consul),
    spec("check-ttl", None, "MICROINIT_CHECK_TTL", Value, "DURATION", "TTL of the service check (default 10s); heartbeat every TTL/2.", Consul),
    spec("deregister-after", None, "MICROINIT_DEREGISTER_AFTER", Value, "DURATION", "Consul removes a service critical this long (default 1m, Consul's minimum).", Consul),
    spec("health-cmd", None, "MICROINIT_HEALTH_CMD", Value, "CMD", "Shell command run periodically: exit 0 passing, 1 warning, else critical. A JSON array [\"PROG\",\"ARG\"] runs with no shell.", Consul),
    spec("health-interval", None, "MICROINIT_HEALTH_INTERVAL", Value, "DURATION", "Interval of the health command (default 5s).", Consul),
    spec("health-timeout", None, "MICROINIT_HEALTH_TIMEOUT", Value, "DURATION", "Time limit of the health command (default 3s).", Consul),
    spec("ready", None, "MICROINIT_READY", Value, "WHEN", "First `passing` when: immediate, health (first passing health command), tcp:PORT, tcp:HOST:PORT, http://… (2xx), file:PATH, or fd:N (the app writes a line to fd N, s6 style).", Consul),
    spec("deregister-timeout", None, "MICROINIT_DEREGISTER_TIMEOUT", Value, "DURATION", "How long a stop waits for the agent to confirm the deregistration (default 2s).", Consul),
    spec("drain", None, "MICROINIT_DRAIN", Value, "DURATION", "Time between deregistering and forwarding SIGTERM (default 0s).", Consul),
    spec("wait-for", None, "MICROINIT_WAIT_FOR", Repeat, "TARGET", "Start the app only once TARGET is up: consul:NAME[:N][@TAG][?dc=DC] (N passing instances), tcp:HOST:PORT, http://… (2xx) or file:PATH. Repeatable; env: blank-separated list.", General),
    spec("wait-timeout", None, "MICROINIT_WAIT_TIMEOUT", Value, "DURATION", "Give up waiting for --wait-for targets after this long: exit 124 naming what is missing (default: wait for ever).", General),
    spec("watch", None, "MICROINIT_WATCH", Repeat, "NAME", "Watch a Consul service's passing instances (NAME[@TAG][?dc=DC]) or a KV key (kv:KEY) while the app runs. Repeatable; env: blank-separated list.", General),
    spec("on-change", None, "MICROINIT_ON_CHANGE", Value, "ACTION", "On a watched change: signal:SIG (to the app) or exec:PROGRAM ARG… (no shell; or exec:[\"PROGRAM\",\"ARG\"]); the list is in MICROINIT_WATCH_<NAME>.", General),
    spec("watch-file", None, "MICROINIT_WATCH_FILE", Value, "PATH", "Write the watched instances to PATH on each change (write + rename): host:port lines, or JSON if PATH ends in .json.", General),
    spec("watch-file-line", None, "MICROINIT_WATCH_FILE_LINE", Value, "TEMPLATE", "Line written per instance in a --watch-file (default {address}:{port}; also {id}, {node}), e.g. 'server {address}:{port};' for an nginx upstream. Instances whose named values are not plain text (letters, digits, . - _ :) are left out.", General),
    spec("watch-file-empty", None, "MICROINIT_WATCH_FILE_EMPTY", Value, "LINE", "Written to the --watch-file instead when no instance passes (nginx refuses an empty upstream), e.g. 'server 127.0.0.1:9 down;'.", General),
    spec("watch-debounce", None, "MICROINIT_WATCH_DEBOUNCE", Value, "DURATION", "Act on a change only after it has been quiet this long (default 50ms).", General),
    spec("metrics", None, "MICROINIT_METRICS", Value, "ADDR:PORT", "Serve Prometheus metrics at http://ADDR:PORT/metrics (off by default: nothing listens unless asked).", General),
    spec("consul-addr", None, "CONSUL_HTTP_ADDR", Value, "ADDR", "Consul agent: host:port, http://…, https://… (optionally with a path prefix) or unix:///path (default 127.0.0.1:8500).", Consul),
    spec("consul-token-file", None, "CONSUL_HTTP_TOKEN_FILE", Value, "PATH", "File holding the ACL token, re-read when the agent answers 403 (env CONSUL_HTTP_TOKEN also works; no flag, it would show in ps).", Consul),
    spec("consul-cacert", None, "CONSUL_CACERT", Value, "PATH", "PEM file of the CA that signed the agent's certificate (https).", Consul),
    spec("consul-capath", None, "CONSUL_CAPATH", Value, "DIR", "Directory of PEM CA certificates (https; CONSUL_CACERT wins).", Consul),
    spec("consul-client-cert", None, "CONSUL_CLIENT_CERT", Value, "PATH", "Client certificate for an agent with verify_incoming (with --consul-client-key).", Consul),
    spec("consul-client-key", None, "CONSUL_CLIENT_KEY", Value, "PATH", "Private key of the client certificate.", Consul),
    spec("consul-tls-server-name", None, "CONSUL_TLS_SERVER_NAME", Value, "NAME", "Name the agent's certificate must carry when the address does not (e.g. server.dc1.consul).", Consul),
    spec("consul-namespace", None, "CONSUL_NAMESPACE", Value, "NS", "Consul Enterprise namespace of the registration.", Consul),
    spec("consul-partition", None, "CONSUL_PARTITION", Value, "NAME", "Consul Enterprise admin partition of the registration.", Consul),
    spec("pass-consul-token", None, "MICROINIT_PASS_CONSUL_TOKEN", Flag, "", "Leave CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE and CONSUL_HTTP_AUTH in the environment of the app, hooks and health command (removed by default).", Consul),
    spec("consul-required", None, "MICROINIT_CONSUL_REQUIRED", Flag, "", "Make any registration failure fatal (exit 125) instead of logged.", Consul),
];
/// `microinit check` only.
#[rustfmt::skip]
pub const CHECK: &[Spec] = &[
    spec("json", None, "check --json", Flag, "", "Print the report as JSON.", General),
    spec("write-manifest", None, "MICROINIT_WRITE_MANIFEST", Flag, "", "Scan, and write the links manifest when the check passes (a Dockerfile RUN step).", General),
    spec("volume-manifest", None, "MICROINIT_VOLUME_MANIFEST", Value, "FILE", "The volume's list of files (filebox's symlinks.txt; default with --write-manifest /etc/microinit/volume-links.txt), used when the runtime dir is absent or empty, as at `docker build`.", General),
];

pub const DEFAULT_SOCKET: &str = "/run/microinit.sock";
const DEFAULT_GRACE: Duration = Duration::from_secs(8);

/// Every item of a repeatable, comma-separated option, with the name the user gave it by.
fn items<'a>(opts: &'a Options, key: &'a str) -> impl Iterator<Item = &'a str> {
    opts.all(key)
        .iter()
        .flat_map(|e| e.split(','))
        .filter(|s| !s.trim().is_empty())
}

/// microinit's configuration from `opts`, for the dialect `d` (its own rules are applied afterwards).
pub fn build_config(
    d: Dialect,
    command: Vec<std::ffi::OsString>,
    opts: &Options,
) -> Result<Config, UsageError> {
    let e = UsageError::microinit;
    let mut rewrites = Vec::new();
    let src = |k| opts.source(k).to_string();
    for item in items(opts, "MICROINIT_REWRITE") {
        let bad = |m: String| e(format!("{}: {m}", src("MICROINIT_REWRITE")));
        let (from, to) = item.split_once(':').ok_or_else(|| {
            bad(format!(
                "bad rewrite {:?}: use FROM:TO, e.g. TERM:QUIT or 15:0",
                escape(item)
            ))
        })?;
        let from = parse_signal(from).map_err(bad)?;
        let to = if to.trim() == "0" {
            0
        } else {
            parse_signal(to).map_err(bad)?
        };
        rewrites.push(Rewrite { from, to });
    }
    let mut remap_exit = Vec::new();
    for item in items(opts, "MICROINIT_REMAP_EXIT") {
        let code: i32 = item
            .trim()
            .parse()
            .ok()
            .filter(|c| (0..=255).contains(c))
            .ok_or_else(|| {
                e(format!(
                    "{}: bad exit code {:?}: use a number from 0 to 255",
                    src("MICROINIT_REMAP_EXIT"),
                    escape(item)
                ))
            })?;
        remap_exit.push(code);
    }
    let pdeathsig = opts
        .get("MICROINIT_PDEATHSIG")
        .map(parse_signal)
        .transpose()
        .map_err(|m| e(format!("{}: {m}", src("MICROINIT_PDEATHSIG"))))?;
    let grace = opts.duration("MICROINIT_GRACE", DEFAULT_GRACE).map_err(e)?;
    let mut stop = StopRules::default();
    for item in items(opts, "MICROINIT_STOP_SIGNAL") {
        let bad = |m: String| e(format!("{}: {m}", src("MICROINIT_STOP_SIGNAL")));
        let sig = parse_signal(item).map_err(bad)?;
        if !crate::init::signals::is_forwardable(sig) {
            return Err(bad(format!(
                "{} cannot be forwarded to the app; use the image's STOPSIGNAL, e.g. QUIT",
                crate::init::signals::signal_name(sig)
            )));
        }
        stop.stop_signals = stop.stop_signals.with(sig);
    }
    if opts.get("MICROINIT_STOP_TIMEOUT").is_some() {
        stop.stop_timeout = Some(
            opts.duration("MICROINIT_STOP_TIMEOUT", Duration::ZERO)
                .map_err(e)?,
        );
    }
    let restart = match opts.get("MICROINIT_RESTART").unwrap_or("never") {
        "never" | "no" => RestartPolicy::Never,
        "on-failure" => RestartPolicy::OnFailure,
        "always" => RestartPolicy::Always,
        other => {
            return Err(e(format!(
                "{}: bad restart policy {:?}: use never, on-failure or always",
                src("MICROINIT_RESTART"),
                escape(other)
            )))
        }
    };
    let max_restarts = opts
        .get("MICROINIT_MAX_RESTARTS")
        .map(|v| {
            v.parse::<u32>().map_err(|_| {
                e(format!(
                    "{}: bad number {:?}: use a whole number",
                    src("MICROINIT_MAX_RESTARTS"),
                    escape(v)
                ))
            })
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
    let verbosity = opts
        .get("MICROINIT_VERBOSE")
        .and_then(|v| v.parse::<u8>().ok())
        .unwrap_or(0);
    let supervisor = SupervisorConfig {
        command,
        signal_group: opts.flag("MICROINIT_GROUP"),
        isolation: Isolation::Session,
        rewrites,
        pdeathsig,
        remap_exit,
        grace,
        stop,
        warn_on_reap: false,
        restart,
        max_restarts,
        hooks,
    };
    let consul = registration::consul_config(opts).map_err(e)?;
    let discovery = DiscoveryConfig::from_options(opts, || AgentConfig::parse(opts), parse_signal)
        .map_err(e)?;
    let metrics = opts
        .get("MICROINIT_METRICS")
        .map(|m| {
            discovery::host_port(m)
                .map(|_| m.to_string())
                .map_err(|err| e(format!("--metrics {m}: {err} (e.g. 0.0.0.0:9100)")))
        })
        .transpose()?;
    let mut runtime = runtime_config(opts)?;
    // The extras microinit adds (runtime check, control socket) are there by default in its own mode; when
    // it speaks as tini or dumb-init they are opt-in through their variables, so a drop-in prints, creates
    // and costs nothing the genuine tool would not.
    let extras_by_default = d == Dialect::Microinit;
    if !extras_by_default {
        runtime.enabled = [
            "MICROINIT_RUNTIME_DIR",
            "MICROINIT_REQUIRE",
            "MICROINIT_WAIT_RUNTIME",
            "MICROINIT_LINKS_MANIFEST",
            "MICROINIT_SCAN_RUNTIME_LINKS",
        ]
        .iter()
        .any(|k| opts.is_set(k))
            && !opts.flag("MICROINIT_NO_RUNTIME_CHECK");
    }
    let control = match opts.get("MICROINIT_SOCKET") {
        Some(s) => Some(ControlConfig {
            socket: PathBuf::from(s),
        }),
        None if extras_by_default => Some(ControlConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
        }),
        None => None,
    };
    let mut cfg = Config {
        dialect: d,
        policy: DialectPolicy::MICROINIT,
        warnings: Vec::new(),
        verbosity,
        supervisor,
        runtime,
        consul,
        control,
        discovery,
        metrics,
    };
    cfg.warnings = section_warnings(opts, &cfg);
    Ok(cfg)
}

/// One line per section that is off but was given options: they would otherwise be ignored silently.
fn section_warnings(opts: &Options, cfg: &Config) -> Vec<String> {
    let off = |section: Section| match section {
        Consul => cfg.consul.is_none(),
        Restart => cfg.supervisor.restart == RestartPolicy::Never,
        Runtime => !cfg.runtime.enabled,
        General | Control => false,
    };
    let why = |section: Section| match section {
        Consul => "Consul registration is off (set --service-name or --service-file)",
        Restart => "--restart is never",
        Runtime => "the runtime check is off",
        General | Control => "",
    };
    let mut out = Vec::new();
    for section in [Consul, Restart, Runtime] {
        if !off(section) {
            continue;
        }
        let given: Vec<&str> = MICROINIT
            .iter()
            .filter(|s| s.section == section && opts.is_set(s.key))
            // CONSUL_HTTP_ADDR & co are the Consul CLI's own variables, often set image-wide: only a
            // flag counts as asking microinit for something.
            .filter(|s| !s.key.starts_with("CONSUL_") || opts.source(s.key).starts_with('-'))
            .map(|s| opts.source(s.key))
            .collect();
        if !given.is_empty() {
            out.push(format!("{} ignored: {}", given.join(", "), why(section)));
        }
    }
    out
}

pub fn runtime_config(opts: &Options) -> Result<RuntimeCheckConfig, UsageError> {
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
        .map_err(|m| {
            UsageError::microinit(format!("{}: {m}", opts.source("MICROINIT_WAIT_RUNTIME")))
        })?;
    Ok(RuntimeCheckConfig {
        enabled: !opts.flag("MICROINIT_NO_RUNTIME_CHECK"),
        runtime_dir: PathBuf::from(opts.get("MICROINIT_RUNTIME_DIR").unwrap_or("/opt/files")),
        require,
        wait,
        root: PathBuf::from("/"),
        links_manifest: PathBuf::from(
            opts.get("MICROINIT_LINKS_MANIFEST")
                .unwrap_or("/etc/microinit/runtime-links"),
        ),
        scan_links: opts.flag("MICROINIT_SCAN_RUNTIME_LINKS"),
        volume_manifest: None,
        write_manifest: false,
    })
}
