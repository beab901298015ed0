//! Command line and environment → `Action`.
//!
//! Owns: choosing what an invocation does (run, `check`, `exec`, the control clients, print a text) and the
//! usage errors' exit codes. The concerns live in their own files: `flags` (the parser), `options`
//! (microinit's table and the typed `Config`), `help` (texts), `dialect` (tini and dumb-init, the only
//! place that knows them). Does not own: the meaning of the Consul and runtime-check options beyond their
//! parsing (see `registration::consul_config`).

pub mod dialect;
pub mod flags;
pub mod help;
pub mod options;

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::*;
use crate::control::protocol::Request;
use crate::init::signals::parse_signal;
use flags::{Kind, Parsed};
pub use options::DEFAULT_SOCKET;
use options::{CHECK, MICROINIT};

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
    /// `status`, `signal`, `restart`, `maintenance`: talk to PID 1's control socket (`json`: `status --json`).
    Client {
        request: Request,
        json: bool,
        socket: PathBuf,
    },
    /// `microinit health`: exit 0 when the app is running and ready, 1 otherwise (`control::health`).
    Health { socket: PathBuf },
    /// A text to print, exit 0 (`--help`, `--version`, `tini -l`); dumb-init prints them on stderr.
    Print { text: String, stderr: bool },
}

/// A usage error: the text for stderr (complete lines) and the exit code (microinit 2, tini/dumb-init 1).
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError {
    pub code: i32,
    pub text: String,
}

impl UsageError {
    pub fn new(code: i32, text: String) -> UsageError {
        UsageError { code, text }
    }
    /// microinit's own one-line error, exit 2.
    pub(crate) fn microinit(msg: String) -> UsageError {
        UsageError::new(2, format!("microinit: {msg}\n"))
    }
}

/// The environment, read once at start for the option twins.
///
/// Every flag has an env twin, so parsing asks for ~100 keys: through getenv each lookup scans the whole
/// environment and copies the key (~100 k instructions at every start, a good part of microinit's start-up
/// cost). This keeps only the variables whose names could be a twin (`TWIN_PREFIXES`), in one pass; a key
/// outside those prefixes is looked up in the real environment, so nothing depends on the list being
/// complete.
pub struct Environment {
    twins: Vec<(OsString, OsString)>,
}

/// Name prefixes of every variable microinit reads as an option (its own, Consul's, tini's and dumb-init's).
const TWIN_PREFIXES: [&[u8]; 5] = [
    b"MICROINIT_",
    b"CONSUL_",
    b"TINI_",
    b"DUMB_INIT_",
    b"RUST_LOG",
];

fn is_twin(name: &[u8]) -> bool {
    // The prefixes start with different letters: the first byte picks the one to compare (this runs for
    // every variable and every key).
    TWIN_PREFIXES
        .iter()
        .find(|p| name.first() == p.first())
        .is_some_and(|p| name.starts_with(p))
}

impl Environment {
    /// The process's environment as it is now. Call before any thread exists (like every getenv user).
    pub fn capture() -> Environment {
        extern "C" {
            static environ: *const *const libc::c_char;
        }
        // SAFETY: environ is the C library's NULL-terminated array of NUL-terminated strings; no thread exists
        // yet that could change it while it is read, and nothing is kept pointing into it.
        let mut p = unsafe { environ };
        Environment::from_entries(std::iter::from_fn(|| unsafe {
            if p.is_null() || (*p).is_null() {
                return None;
            }
            let entry = std::ffi::CStr::from_ptr(*p).to_bytes();
            p = p.add(1);
            Some(entry)
        }))
    }

    /// From "NAME=VALUE" entries, in the environment's order.
    fn from_entries<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Environment {
        use std::os::unix::ffi::OsStringExt;
        let twins = entries
            .into_iter()
            .filter(|e| is_twin(e))
            // Like getenv: the name ends at the first '=' (an entry without one has no value).
            .filter_map(|e| {
                let eq = e.iter().position(|b| *b == b'=')?;
                Some((
                    OsString::from_vec(e[..eq].to_vec()),
                    OsString::from_vec(e[eq + 1..].to_vec()),
                ))
            })
            .collect();
        Environment { twins }
    }

    /// The value of `key`, as `std::env::var_os` would give it.
    pub fn get(&self, key: &str) -> Option<OsString> {
        if !is_twin(key.as_bytes()) {
            return std::env::var_os(key);
        }
        // The first entry wins, as with getenv.
        self.twins
            .iter()
            .find(|(k, _)| k.as_encoded_bytes() == key.as_bytes())
            .map(|(_, v)| v.clone())
    }
}

/// Variables read besides the tables' twins: Consul's env-only client variables (a secret in a flag would
/// show in ps), and RUST_LOG.
const EXTRA_ENV: &[&str] = &[
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_AUTH",
    "CONSUL_HTTP_SSL",
    "CONSUL_HTTP_SSL_VERIFY",
    "RUST_LOG",
];

fn env_options(env: &dyn Fn(&str) -> Option<OsString>) -> Result<Options, UsageError> {
    // Every MICROINIT_*/CONSUL_* key is read in every dialect: a tini/dumb-init drop-in can use them too.
    flags::env_options(&[MICROINIT], EXTRA_ENV, env).map_err(UsageError::microinit)
}

/// Parse argv (with argv[0]) and the environment (`env(key)`).
#[inline(never)] // its locals must not stay in the frame of the caller, which lives as long as PID 1
pub fn parse(
    argv: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Action, UsageError> {
    let mut args = argv.into_iter();
    let argv0 = args
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let d = dialect::of(&argv0);
    let rest: Vec<OsString> = args.collect();

    match (d, rest.first().and_then(|a| a.to_str())) {
        (Dialect::Microinit, Some("check")) => return parse_check(&rest[1..], env),
        (Dialect::Microinit, Some("exec")) => return parse_exec(&rest[1..], env),
        (Dialect::Microinit, Some("status" | "signal" | "restart" | "maintenance" | "health")) => {
            return parse_client(&rest, env)
        }
        // tini answers --version only when it is the one argument.
        (Dialect::Tini, Some("--version")) if rest.len() == 1 => {
            return Ok(print(d, Kind::Version))
        }
        _ => {}
    }

    let mut opts = env_options(env)?;
    let table: &[flags::Spec] = if d == Dialect::Microinit {
        MICROINIT
    } else {
        dialect::table(d)
    };
    let command = match flags::parse(&rest, &[table], dialect::syntax(d), &mut opts)
        .map_err(|e| dialect::flag_error(d, &argv0, e))?
    {
        Parsed::Print(kind) => return Ok(print(d, kind)),
        Parsed::Command(c) => c,
    };
    if command.is_empty() {
        return Err(dialect::no_command(d, &argv0));
    }
    let mut cfg = options::build_config(d, command, &opts)?;
    dialect::apply(d, &opts, env, &mut cfg);
    Ok(Action::Run(Box::new(cfg)))
}

fn print(d: Dialect, kind: Kind) -> Action {
    let stderr = dialect::help_on_stderr(d);
    match kind {
        Kind::Version => {
            let (text, stderr) = dialect::version(d);
            Action::Print { text, stderr }
        }
        Kind::License => Action::Print {
            text: help::LICENSE.into(),
            stderr,
        },
        _ => Action::Print {
            text: help::help(d),
            stderr,
        },
    }
}

fn parse_microinit(
    args: &[OsString],
    tables: &[&[flags::Spec]],
    opts: &mut Options,
) -> Result<Option<Vec<OsString>>, UsageError> {
    let syntax = dialect::syntax(Dialect::Microinit);
    match flags::parse(args, tables, syntax, opts)
        .map_err(|e| dialect::flag_error(Dialect::Microinit, "microinit", e))?
    {
        Parsed::Command(c) => Ok(Some(c)),
        Parsed::Print(_) => Ok(None),
    }
}

fn parse_check(
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Action, UsageError> {
    let mut opts =
        flags::env_options(&[MICROINIT, CHECK], EXTRA_ENV, env).map_err(UsageError::microinit)?;
    let Some(command) = parse_microinit(args, &[MICROINIT, CHECK], &mut opts)? else {
        return Ok(Action::Print {
            text: help::CHECK_HELP.into(),
            stderr: false,
        });
    };
    let mut runtime = options::runtime_config(&opts)?;
    // An explicit `check` always checks, whatever MICROINIT_NO_RUNTIME_CHECK says.
    runtime.enabled = true;
    runtime.write_manifest = opts.flag("MICROINIT_WRITE_MANIFEST");
    // The volume's manifest stands in for an absent volume only when building the image: with
    // --write-manifest (at its default place) or when named.
    runtime.volume_manifest = opts
        .get("MICROINIT_VOLUME_MANIFEST")
        .or(runtime
            .write_manifest
            .then_some("/etc/microinit/volume-links.txt"))
        .map(PathBuf::from);
    Ok(Action::Check {
        json: opts.is_set("check --json"),
        command,
        runtime,
    })
}

fn parse_exec(
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Action, UsageError> {
    let mut opts = env_options(env)?;
    let command = parse_microinit(args, &[MICROINIT], &mut opts)?;
    let Some(command) = command.filter(|c| !c.is_empty()) else {
        return Err(UsageError::microinit(
            "usage: microinit exec [OPTIONS] -- CMD [ARGS...] (runs CMD as a child subreaper and passes its status through)".into(),
        ));
    };
    let mut cfg = options::build_config(Dialect::Microinit, command, &opts)?;
    // A docker exec session stays in the caller's session so the terminal keeps working; no registration,
    // no socket, no runtime check: those belong to PID 1.
    cfg.supervisor.isolation = Isolation::None;
    cfg.supervisor.restart = RestartPolicy::Never;
    cfg.supervisor.hooks = Hooks::default();
    cfg.consul = None;
    cfg.runtime.enabled = false;
    cfg.control = None;
    Ok(Action::Exec(Box::new(cfg)))
}

fn parse_client(
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Action, UsageError> {
    let words: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut socket = env("MICROINIT_SOCKET")
        .map(|s| {
            s.into_string().map_err(|_| {
                UsageError::microinit("MICROINIT_SOCKET: the value is not valid UTF-8".into())
            })
        })
        .transpose()?
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
                    .ok_or_else(|| UsageError::microinit("--socket needs a PATH".into()))?
            }
            "--reason" => {
                reason = Some(
                    it.next()
                        .cloned()
                        .ok_or_else(|| UsageError::microinit("--reason needs TEXT".into()))?,
                )
            }
            s if s.starts_with("--") => {
                return Err(UsageError::microinit(format!(
                    "unknown option {} for `microinit {}`",
                    escape(s),
                    words[0]
                )));
            }
            _ => positional.push(w.clone()),
        }
    }
    let request = match (words[0].as_str(), positional.as_slice()) {
        ("health", []) => {
            return Ok(Action::Health {
                socket: PathBuf::from(socket),
            })
        }
        ("status", []) => Request::Status,
        ("signal", [sig]) => Request::Signal(parse_signal(sig).map_err(UsageError::microinit)?),
        ("restart", []) => Request::Restart,
        ("maintenance", [m]) if m == "on" || m == "off" => Request::Maintenance { on: m == "on", reason },
        (cmd, _) => {
            return Err(UsageError::microinit(format!(
                "bad arguments for `microinit {cmd}`: usage is `microinit status [--json]`, `microinit signal SIG`, `microinit restart`, `microinit maintenance on|off [--reason TEXT]` or `microinit health`"
            )))
        }
    };
    Ok(Action::Client {
        request,
        json,
        socket: PathBuf::from(socket),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::{PdeathsigTarget, Subreaper};
    use std::time::Duration;

    pub(super) fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Action, UsageError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(args.iter().map(OsString::from).collect(), &|k| {
            env.iter()
                .find(|(kk, _)| kk == k)
                .map(|(_, v)| OsString::from(v))
        })
    }

    pub(super) fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match run(args, env) {
            Ok(Action::Run(c)) => *c,
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn the_twin_prefixes_start_with_different_letters() {
        let mut first: Vec<u8> = TWIN_PREFIXES.iter().map(|p| p[0]).collect();
        first.sort_unstable();
        first.dedup();
        assert_eq!(
            first.len(),
            TWIN_PREFIXES.len(),
            "is_twin compares one prefix per letter"
        );
    }

    #[test]
    fn every_env_twin_is_in_the_start_up_snapshot() {
        let tables = [MICROINIT, CHECK, dialect::TINI, dialect::DUMB_INIT];
        let keys = tables
            .iter()
            .flat_map(|t| t.iter())
            .filter(|s| matches!(s.kind, Kind::Flag | Kind::Value | Kind::Repeat))
            .map(|s| s.key)
            // A flag without a twin has a key no variable can have ("check --json").
            .filter(|k| !k.contains(' '));
        for key in keys.chain(EXTRA_ENV.iter().copied()) {
            assert!(
                is_twin(key.as_bytes()),
                "{key} would be looked up with getenv"
            );
        }
    }

    #[test]
    fn the_snapshot_answers_like_getenv() {
        let env = Environment::from_entries([
            &b"PATH=/bin"[..],
            b"MICROINIT_GRACE=3s",
            b"MICROINIT_GRACE=9s",
            b"MICROINIT_VERBOSE=",
            b"MICROINIT_BROKEN",
            b"CONSUL_HTTP_ADDR=a=b",
            b"TINI_SUBREAPER=1",
        ]);
        let get = |k: &str| env.get(k).map(|v| v.into_string().unwrap());
        assert_eq!(
            get("MICROINIT_GRACE").as_deref(),
            Some("3s"),
            "the first one wins"
        );
        assert_eq!(get("MICROINIT_VERBOSE").as_deref(), Some(""));
        assert_eq!(get("MICROINIT_BROKEN"), None);
        assert_eq!(get("MICROINIT_GRAC"), None);
        assert_eq!(get("CONSUL_HTTP_ADDR").as_deref(), Some("a=b"));
        assert_eq!(get("TINI_SUBREAPER").as_deref(), Some("1"));
        assert_eq!(get("DUMB_INIT_SETSID"), None);
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
            assert_eq!(run(args, &[]).unwrap_err().code, 2, "{args:?}");
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
        assert!(c.supervisor.signal_group);
        assert_eq!(c.policy.subreaper, Subreaper::Requested(true));
        assert_eq!(c.supervisor.remap_exit, vec![143]);
        assert_eq!(c.supervisor.pdeathsig, Some(9));
        assert_eq!(c.policy.pdeathsig, PdeathsigTarget::Init);
        // Default 1, plus one per -v.
        assert_eq!(c.verbosity, 3);
        assert!(matches!(
            run(&["tini", "-l"], &[]),
            Ok(Action::Print { stderr: false, .. })
        ));
        assert!(matches!(
            run(&["tini", "--version"], &[]),
            Ok(Action::Print { stderr: false, .. })
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
                request: Request::Maintenance { on: true, .. },
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

#[cfg(test)]
mod dialect_tests {
    use super::tests::{config, run};
    use super::*;
    use crate::config::policy::{EndOfLife, Subreaper};

    #[test]
    fn tini_and_dumb_init_option_errors_exit_1_and_microinit_ones_exit_2() {
        for args in [
            &["tini", "-x", "true"][..],
            &["tini", "--help"],
            &["tini"],
            &["tini", "-p", "TERM", "true"],
            &["tini", "-e", "256", "true"],
            &["tini", "true", "-x"],
            &["dumb-init", "-r", "1:32", "true"],
            &["dumb-init", "-r", "TERM:QUIT", "true"],
            &["dumb-init", "--nope", "true"],
            &["dumb-init", "--ver", "true"],
            &["dumb-init"],
        ] {
            assert_eq!(run(args, &[]).unwrap_err().code, 1, "{args:?}");
        }
        assert_eq!(run(&["microinit", "-x", "true"], &[]).unwrap_err().code, 2);
    }

    #[test]
    fn tini_reads_options_after_the_command_until_a_double_dash() {
        let c = config(&["tini", "sleep", "-g", "5"], &[]);
        assert!(c.supervisor.signal_group);
        assert_eq!(c.supervisor.command, ["sleep", "5"]);
        let c = config(&["tini", "--", "sleep", "-g"], &[]);
        assert_eq!(c.supervisor.command, ["sleep", "-g"]);
        let c = config(&["tini", "--", "--", "x"], &[]);
        assert_eq!(c.supervisor.command, ["--", "x"]);
        let c = config(&["dumb-init", "sleep", "-c"], &[]);
        assert_eq!(c.supervisor.command, ["sleep", "-c"]);
    }

    #[test]
    fn tini_variables_count_by_presence_and_verbosity_is_read_like_atoi() {
        let c = config(
            &["tini", "true"],
            &[("TINI_SUBREAPER", ""), ("TINI_KILL_PROCESS_GROUP", "")],
        );
        assert_eq!(c.policy.subreaper, Subreaper::Requested(true));
        assert!(c.supervisor.signal_group);
        let c = config(&["tini", "-vvv", "true"], &[("TINI_VERBOSITY", "0")]);
        assert_eq!(c.verbosity, 0);
        let c = config(&["tini", "true"], &[("TINI_VERBOSITY", "2x")]);
        assert_eq!(c.verbosity, 2);
        let c = config(&["tini", "true"], &[]);
        assert_eq!(c.policy.subreaper, Subreaper::Requested(false));
        assert!(!c.supervisor.signal_group);
    }

    #[test]
    fn dumb_init_variables_take_exactly_0_and_1() {
        for (v, setsid) in [("0", false), ("", true), ("1", true), ("false", true)] {
            let c = config(&["dumb-init", "true"], &[("DUMB_INIT_SETSID", v)]);
            assert_eq!(c.supervisor.signal_group, setsid, "DUMB_INIT_SETSID={v:?}");
            assert_eq!(
                c.policy.end_of_life,
                EndOfLife::ExitAtOnce {
                    signal_group: setsid
                }
            );
        }
        for (v, debug) in [("1", 1), ("", 0), ("0", 0), ("true", 0)] {
            let c = config(&["dumb-init", "true"], &[("DUMB_INIT_DEBUG", v)]);
            assert_eq!(c.verbosity, debug, "DUMB_INIT_DEBUG={v:?}");
        }
    }

    #[test]
    fn dumb_init_keeps_the_last_rewrite_of_a_signal_and_its_own_before_the_env_ones() {
        let c = config(
            &["dumb-init", "-r", "15:3", "--rewrite=15:0", "true"],
            &[("MICROINIT_REWRITE", "TERM:USR1")],
        );
        let term: Vec<_> = c
            .supervisor
            .rewrites
            .iter()
            .filter(|r| r.from == 15)
            .collect();
        assert_eq!(
            term.len(),
            1,
            "one rule per signal: {:?}",
            c.supervisor.rewrites
        );
        assert_eq!(term[0].to, 0);
    }

    #[test]
    fn help_and_version_go_where_each_tool_prints_them() {
        assert!(matches!(
            run(&["dumb-init", "-h"], &[]),
            Ok(Action::Print { stderr: true, .. })
        ));
        assert!(matches!(
            run(&["dumb-init", "--version"], &[]),
            Ok(Action::Print { stderr: true, .. })
        ));
        assert!(matches!(
            run(&["tini", "-h"], &[]),
            Ok(Action::Print { stderr: false, .. })
        ));
    }

    #[test]
    fn a_non_utf8_microinit_variable_is_an_error_naming_it() {
        use std::os::unix::ffi::OsStringExt;
        let e = parse(vec!["microinit".into(), "true".into()], &|k| {
            (k == "MICROINIT_GRACE").then(|| OsString::from_vec(vec![b'1', 0xfe]))
        })
        .unwrap_err();
        assert_eq!(e.code, 2);
        assert!(
            e.text.starts_with("microinit: MICROINIT_GRACE: "),
            "{}",
            e.text
        );
    }

    #[test]
    fn errors_name_the_flag_the_user_typed_and_stay_on_one_line() {
        let e = run(&["microinit", "--grace", "so\non", "true"], &[]).unwrap_err();
        assert!(e.text.starts_with("microinit: --grace: "), "{}", e.text);
        assert_eq!(e.text.lines().count(), 1, "{}", e.text);
        let e = run(
            &["microinit", "true"],
            &[("MICROINIT_RESTART", "sometimes\x1b")],
        )
        .unwrap_err();
        assert!(
            e.text.contains("MICROINIT_RESTART") && !e.text.contains('\x1b'),
            "{}",
            e.text
        );
        let e = run(&["microinit", "--rewrite", "1", "true"], &[]).unwrap_err();
        assert!(e.text.contains("--rewrite"), "{}", e.text);
    }

    #[test]
    fn options_of_a_section_that_is_off_are_warned_about_in_one_line() {
        let c = config(
            &[
                "microinit",
                "--health-cmd",
                "true",
                "--max-restarts",
                "3",
                "true",
            ],
            &[
                ("MICROINIT_DRAIN", "1s"),
                ("CONSUL_HTTP_ADDR", "127.0.0.1:1"),
            ],
        );
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("--health-cmd") && c.warnings[0].contains("MICROINIT_DRAIN")
        );
        assert!(
            !c.warnings[0].contains("CONSUL_HTTP_ADDR"),
            "an image-wide Consul variable is no request"
        );
        assert!(c.warnings[1].contains("--max-restarts"));
        let c = config(
            &["microinit", "--no-runtime-check", "--require", "/x", "true"],
            &[],
        );
        assert!(
            c.warnings.iter().any(|w| w.contains("--require")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn in_the_dialects_the_runtime_check_and_socket_are_opt_in_through_microinit_variables() {
        let c = config(&["tini", "true"], &[]);
        assert!(!c.runtime.enabled && c.control.is_none());
        let c = config(
            &["dumb-init", "true"],
            &[("MICROINIT_REQUIRE", "/x"), ("MICROINIT_SOCKET", "/tmp/s")],
        );
        assert!(c.runtime.enabled && c.control.is_some());
    }
}
