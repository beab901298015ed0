//! tini and dumb-init: the only place that knows them.
//!
//! Owns: recognising the dialect from argv[0]; their flag tables and getopt behaviour; their environment
//! variables (`TINI_SUBREAPER`, `TINI_KILL_PROCESS_GROUP`, `TINI_VERBOSITY`, `DUMB_INIT_SETSID`,
//! `DUMB_INIT_DEBUG`) with their exact semantics; the exit codes and message shapes of their errors; and
//! their runtime rules as a `DialectPolicy` value (end of life, subreaper, signals, messages). Does not own:
//! acting on any of it (`init`, `main`), nor microinit's own options (`options`), which every dialect reads
//! too through the `MICROINIT_*`/`CONSUL_*` variables.
//!
//! Where tini or dumb-init behave differently from microinit, the genuine behaviour wins here: an image that
//! swaps the genuine binary for a symlink to microinit must not notice (tests/dialects.rs compares them).

use std::ffi::OsString;

use super::flags::{spec, FlagError, Kind, LongOptions, Section, Spec, Syntax};
use super::UsageError;
use crate::config::policy::{
    ChildSignals, EndOfLife, ExecFailure, LogStyle, PdeathsigTarget, Subreaper,
};
use crate::config::{escape, Config, Dialect, DialectPolicy, Isolation, Options, Rewrite};

/// The dialect argv[0] asks for: its file name starting with `tini` (tini-static too) or `dumb-init`.
pub fn of(argv0: &str) -> Dialect {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    if base.starts_with("tini") {
        Dialect::Tini
    } else if base.starts_with("dumb-init") {
        Dialect::DumbInit
    } else {
        Dialect::Microinit
    }
}

pub fn name(d: Dialect) -> &'static str {
    match d {
        Dialect::Microinit => "microinit",
        Dialect::Tini => "tini",
        Dialect::DumbInit => "dumb-init",
    }
}

/// tini parses with plain getopt, which permutes (options after the command are tini's until `--`) and
/// has no long options; dumb-init uses getopt_long with "+" (stop at the command, abbreviations allowed).
pub fn syntax(d: Dialect) -> Syntax {
    match d {
        Dialect::Microinit => Syntax {
            permute: false,
            long: LongOptions::Exact,
        },
        Dialect::Tini => Syntax {
            permute: true,
            long: LongOptions::No,
        },
        Dialect::DumbInit => Syntax {
            permute: false,
            long: LongOptions::Prefix,
        },
    }
}

// Keys of the dialects' own flags: not environment variables (their variables are read below with their
// own semantics), so the engine never reads them from the environment.
const TINI_S: &str = "tini -s";
const TINI_P: &str = "tini -p";
const TINI_V: &str = "tini -v";
const TINI_W: &str = "tini -w";
const TINI_G: &str = "tini -g";
const TINI_E: &str = "tini -e";
const DI_C: &str = "dumb-init -c";
const DI_R: &str = "dumb-init -r";
const DI_V: &str = "dumb-init -v";

const fn checked(mut s: Spec, check: fn(&str) -> bool) -> Spec {
    s.check = Some(check);
    s
}

use Kind::*;
use Section::General;

pub const TINI: &[Spec] = &[
    spec("", Some('h'), "", Help, "", "Print this help and exit.", General),
    spec("", Some('s'), TINI_S, Flag, "", "Become a child subreaper, so orphans are reaped when not PID 1 (env TINI_SUBREAPER, set to anything).", General),
    checked(spec("", Some('p'), TINI_P, Value, "SIGNAL", "When the parent of the init dies, the init gets SIGNAL (a name such as SIGKILL) and passes it on to the child.", General), tini_signal_ok),
    spec("", Some('v'), TINI_V, Flag, "", "More output; repeatable (env TINI_VERBOSITY=N sets the level, default 1).", General),
    spec("", Some('w'), TINI_W, Flag, "", "Log a warning for every zombie reaped.", General),
    spec("", Some('g'), TINI_G, Flag, "", "Signal the child's whole process group (env TINI_KILL_PROCESS_GROUP, set to anything).", General),
    checked(spec("", Some('e'), TINI_E, Repeat, "EXIT_CODE", "Report the child's status EXIT_CODE (0-255, 128+signal included) as 0; repeatable.", General), tini_code_ok),
    spec("", Some('l'), "", License, "", "Print the licence and exit.", General),
];

pub const DUMB_INIT: &[Spec] = &[
    spec("help", Some('h'), "", Help, "", "Print this help and exit.", General),
    spec("single-child", Some('c'), DI_C, Flag, "", "Keep the child in this session and signal only it, not its process group (env DUMB_INIT_SETSID=0).", General),
    checked(spec("rewrite", Some('r'), DI_R, Repeat, "S:R", "Turn received signal S (1-31) into R before passing it on; R=0 drops it. Repeatable.", General), dumb_init_rewrite_ok),
    spec("verbose", Some('v'), DI_V, Flag, "", "Debugging output on stderr (env DUMB_INIT_DEBUG=1).", General),
    spec("version", Some('V'), "", Version, "", "Print the version and exit.", General),
];

pub fn table(d: Dialect) -> &'static [Spec] {
    match d {
        Dialect::Microinit => &[],
        Dialect::Tini => TINI,
        Dialect::DumbInit => DUMB_INIT,
    }
}

/// tini -p takes the exact names of its table: "SIGTERM", not "TERM" nor "15".
const TINI_SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGILL", 4),
    ("SIGTRAP", 5),
    ("SIGABRT", 6),
    ("SIGBUS", 7),
    ("SIGFPE", 8),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGSEGV", 11),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGCHLD", 17),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGTTIN", 21),
    ("SIGTTOU", 22),
    ("SIGURG", 23),
    ("SIGXCPU", 24),
    ("SIGXFSZ", 25),
    ("SIGVTALRM", 26),
    ("SIGPROF", 27),
    ("SIGWINCH", 28),
    ("SIGSYS", 31),
];

fn tini_signal(s: &str) -> Option<i32> {
    TINI_SIGNALS.iter().find(|(n, _)| *n == s).map(|(_, v)| *v)
}

fn tini_signal_ok(s: &str) -> bool {
    tini_signal(s).is_some()
}

/// C's strtol(s, &end, 10) that must consume the whole string: leading blanks and a sign allowed; an
/// empty string is 0 (strtol reads nothing and stops at the terminator), blanks alone are not.
fn strtol_whole(s: &str) -> Option<i64> {
    if s.is_empty() {
        return Some(0);
    }
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Longer than any long: strtol saturates, which is out of 0..=255 either way.
    let v: i64 = digits.parse().unwrap_or(i64::MAX);
    Some(if neg { -v } else { v })
}

fn tini_code(s: &str) -> Option<i32> {
    strtol_whole(s)
        .filter(|c| (0..=255).contains(c))
        .map(|c| c as i32)
}

fn tini_code_ok(s: &str) -> bool {
    tini_code(s).is_some()
}

/// sscanf's "%d": blanks, a sign, at least one digit. Returns the number and what follows.
fn scanf_int(s: &str) -> Option<(i64, &str)> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let sign_len = usize::from(t.starts_with(['+', '-']));
    let end = t[sign_len..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(t.len(), |e| e + sign_len);
    if end == sign_len {
        return None;
    }
    let v = t[..end].parse::<i64>().unwrap_or(i64::MAX);
    Some((v, &t[end..]))
}

/// dumb-init -r: sscanf(arg, "%d:%d") with S in 1..=31 and R in 0..=31; anything after R is ignored.
fn dumb_init_rewrite(s: &str) -> Option<Rewrite> {
    let (from, rest) = scanf_int(s)?;
    let (to, _) = scanf_int(rest.strip_prefix(':')?)?;
    ((1..=31).contains(&from) && (0..=31).contains(&to)).then_some(Rewrite {
        from: from as i32,
        to: to as i32,
    })
}

fn dumb_init_rewrite_ok(s: &str) -> bool {
    dumb_init_rewrite(s).is_some()
}

/// A flag error in the dialect's words and exit code (tini and dumb-init: 1; microinit: 2).
pub fn flag_error(d: Dialect, argv0: &str, e: FlagError) -> UsageError {
    let argv0 = escape(argv0);
    let short = |f: &str| f.trim_start_matches('-').chars().next().unwrap_or('-');
    let text = match (d, e) {
        (Dialect::Microinit, e) => {
            let msg = match e {
                FlagError::Unknown(a) | FlagError::Ambiguous(a) => {
                    format!("unknown option {}: see `microinit --help`", escape(&a))
                }
                FlagError::MissingValue(f) => {
                    format!("option {f} needs a value; see `microinit --help`")
                }
                FlagError::NoValueAllowed(f) => format!("option {f} takes no value"),
                FlagError::BadValue { flag, value, .. } => {
                    format!("{flag}: bad value {:?}", escape(&value))
                }
            };
            return UsageError::new(2, format!("microinit: {msg}\n"));
        }
        // glibc getopt's own lines, then (tini) the usage on stderr.
        (Dialect::Tini, FlagError::BadValue { flag, value, .. }) => {
            // tini checks -p and -e itself and prints a fatal line, no usage.
            return UsageError::new(
                1,
                format!(
                    "[FATAL tini ({})] Not a valid option for {flag}: {}\n",
                    std::process::id(),
                    escape(&value)
                ),
            );
        }
        (Dialect::Tini, FlagError::MissingValue(f)) => {
            format!(
                "{argv0}: option requires an argument -- '{}'\n{}",
                short(&f),
                super::help::usage(d)
            )
        }
        (
            Dialect::Tini,
            FlagError::Unknown(f) | FlagError::Ambiguous(f) | FlagError::NoValueAllowed(f),
        ) => {
            format!(
                "{argv0}: invalid option -- '{}'\n{}",
                short(&f),
                super::help::usage(d)
            )
        }
        (Dialect::DumbInit, FlagError::BadValue { .. }) => super::help::dumb_init_rewrite_usage(),
        (Dialect::DumbInit, FlagError::Unknown(f)) if f.starts_with("--") => {
            format!("{argv0}: unrecognized option '{}'\n", escape(&f))
        }
        (Dialect::DumbInit, FlagError::Unknown(f)) => {
            format!("{argv0}: invalid option -- '{}'\n", short(&f))
        }
        (Dialect::DumbInit, FlagError::Ambiguous(f)) => {
            format!("{argv0}: option '{}' is ambiguous\n", escape(&f))
        }
        (Dialect::DumbInit, FlagError::MissingValue(f)) if f.starts_with("--") => {
            format!("{argv0}: option '{f}' requires an argument\n")
        }
        (Dialect::DumbInit, FlagError::MissingValue(f)) => {
            format!("{argv0}: option requires an argument -- '{}'\n", short(&f))
        }
        (Dialect::DumbInit, FlagError::NoValueAllowed(f)) => {
            format!("{argv0}: option '{f}' doesn't allow an argument\n")
        }
    };
    UsageError::new(1, text)
}

/// No command after the options.
pub fn no_command(d: Dialect, argv0: &str) -> UsageError {
    match d {
        Dialect::Microinit => UsageError::new(
            2,
            "microinit: no command given: usage is `microinit [OPTIONS] [--] CMD [ARGS...]` (see --help)\n"
                .into(),
        ),
        Dialect::Tini => UsageError::new(1, super::help::usage(d)),
        Dialect::DumbInit => UsageError::new(
            1,
            format!(
                "usage: {0} [OPTIONS] CMD [ARGS...]\nSee {0} --help.\n",
                escape(argv0)
            ),
        ),
    }
}

/// The dialect's options and variables applied on top of microinit's configuration.
pub fn apply(d: Dialect, opts: &Options, env: &dyn Fn(&str) -> Option<OsString>, cfg: &mut Config) {
    let present = |k: &str| env(k).is_some();
    let sup = &mut cfg.supervisor;
    match d {
        Dialect::Microinit => {}
        Dialect::Tini => {
            // tini's variables count by their presence: `TINI_SUBREAPER=` enables it.
            let subreaper = opts.is_set(TINI_S) || present("TINI_SUBREAPER");
            sup.isolation = Isolation::ProcessGroup;
            sup.signal_group |= opts.is_set(TINI_G) || present("TINI_KILL_PROCESS_GROUP");
            if let Some(sig) = opts.get(TINI_P).and_then(tini_signal) {
                sup.pdeathsig = Some(sig);
            }
            sup.remap_exit
                .extend(opts.all(TINI_E).iter().filter_map(|c| tini_code(c)));
            sup.warn_on_reap = opts.is_set(TINI_W);
            // Default 1 (warnings), one more per -v; TINI_VERBOSITY replaces it, read as atoi reads.
            let flags: u8 = opts.get(TINI_V).and_then(|v| v.parse().ok()).unwrap_or(0);
            cfg.verbosity = match env("TINI_VERBOSITY") {
                Some(v) => atoi(&v.to_string_lossy()).clamp(0, 255) as u8,
                None => 1u8.saturating_add(flags),
            };
            cfg.policy = DialectPolicy {
                end_of_life: EndOfLife::ExitAtOnce {
                    signal_group: false,
                },
                subreaper: Subreaper::Requested(subreaper),
                pdeathsig: PdeathsigTarget::Init,
                child_signals: ChildSignals::Inherited,
                chdir_root: false,
                // Its synchronous signals, and glibc's own 32 and 33, which its sigfillset leaves out.
                default_action: &[
                    libc::SIGFPE,
                    libc::SIGILL,
                    libc::SIGSEGV,
                    libc::SIGBUS,
                    libc::SIGABRT,
                    libc::SIGTRAP,
                    libc::SIGSYS,
                    32,
                    33,
                ],
                not_forwarded: &[libc::SIGTTIN, libc::SIGTTOU],
                tty_stop_suspends_init: false,
                forward_kernel_signals_to_shared_group: true,
                remap_signal_deaths: true,
                log: LogStyle::Tini,
                exec_failure: ExecFailure::Tini,
            };
        }
        Dialect::DumbInit => {
            let setsid = !opts.is_set(DI_C)
                && env("DUMB_INIT_SETSID").is_none_or(|v| v.as_encoded_bytes() != b"0");
            let debug = opts.is_set(DI_V)
                || env("DUMB_INIT_DEBUG").is_some_and(|v| v.as_encoded_bytes() == b"1");
            sup.isolation = if setsid {
                Isolation::Session
            } else {
                Isolation::None
            };
            sup.signal_group = setsid;
            // Its rewrites come first (the first match wins); the last -r for a signal is the one it keeps.
            let mut rewrites: Vec<Rewrite> = Vec::new();
            for r in opts
                .all(DI_R)
                .iter()
                .rev()
                .filter_map(|r| dumb_init_rewrite(r))
            {
                if !rewrites.iter().any(|x| x.from == r.from) {
                    rewrites.push(r);
                }
            }
            if setsid {
                // In setsid mode a terminal stop becomes SIGSTOP for the group (unless rewritten), since the
                // child's new session has no job-control shell to ignore TSTP/TTIN/TTOU on its behalf.
                for sig in [libc::SIGTSTP, libc::SIGTTOU, libc::SIGTTIN] {
                    if !rewrites.iter().any(|r| r.from == sig) {
                        rewrites.push(Rewrite {
                            from: sig,
                            to: libc::SIGSTOP,
                        });
                    }
                }
            }
            // MICROINIT_REWRITE entries for the signals left; one rule per signal, so the order of the list
            // cannot matter to whoever reads it.
            let env_rules: Vec<Rewrite> = std::mem::take(&mut sup.rewrites);
            for r in env_rules {
                if !rewrites.iter().any(|x| x.from == r.from) {
                    rewrites.push(r);
                }
            }
            sup.rewrites = rewrites;
            cfg.verbosity = u8::from(debug);
            cfg.policy = DialectPolicy {
                end_of_life: EndOfLife::ExitAtOnce {
                    signal_group: setsid,
                },
                subreaper: Subreaper::Never,
                pdeathsig: PdeathsigTarget::App,
                child_signals: ChildSignals::Reset,
                chdir_root: true,
                // glibc's own 32 and 33: its sigfillset leaves them out, so they keep their default action.
                default_action: &[32, 33],
                not_forwarded: &[],
                tty_stop_suspends_init: true,
                forward_kernel_signals_to_shared_group: true,
                remap_signal_deaths: false,
                log: LogStyle::DumbInit,
                exec_failure: ExecFailure::DumbInit,
            };
        }
    }
}

/// C's atoi: blanks, a sign, digits; stops at the first other character; 0 when there is no number.
fn atoi(s: &str) -> i64 {
    scanf_int(s).map_or(0, |(v, _)| v)
}

pub fn version(d: Dialect) -> (String, bool) {
    let v = env!("CARGO_PKG_VERSION");
    match d {
        Dialect::Microinit => (format!("microinit {v}\n"), false),
        Dialect::Tini => (format!("tini version 0.19.0 (microinit {v})\n"), false),
        // dumb-init prints its version on stderr.
        Dialect::DumbInit => (format!("dumb-init v1.2.5 (microinit {v})\n"), true),
    }
}

/// tini -h prints to stdout, dumb-init -h to stderr.
pub fn help_on_stderr(d: Dialect) -> bool {
    d == Dialect::DumbInit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tini_exit_codes_are_read_as_strtol_reads_them() {
        assert_eq!(tini_code("143"), Some(143));
        assert_eq!(tini_code(" +5"), Some(5));
        assert_eq!(tini_code(""), Some(0));
        assert_eq!(tini_code(" "), None);
        assert_eq!(tini_code("256"), None);
        assert_eq!(tini_code("-1"), None);
        assert_eq!(tini_code("5x"), None);
        assert_eq!(tini_code("99999999999999999999999"), None);
    }

    #[test]
    fn dumb_init_rewrites_are_read_as_sscanf_reads_them() {
        assert_eq!(dumb_init_rewrite("15:3"), Some(Rewrite { from: 15, to: 3 }));
        assert_eq!(
            dumb_init_rewrite(" 15: 0junk"),
            Some(Rewrite { from: 15, to: 0 })
        );
        assert_eq!(dumb_init_rewrite("1:31"), Some(Rewrite { from: 1, to: 31 }));
        for bad in [
            "0:1",
            "32:1",
            "1:32",
            "1:-1",
            "TERM:QUIT",
            "15",
            "15 :3",
            ":3",
        ] {
            assert_eq!(dumb_init_rewrite(bad), None, "{bad}");
        }
    }

    #[test]
    fn tini_parent_death_signals_are_exact_names_only() {
        assert_eq!(tini_signal("SIGKILL"), Some(9));
        assert_eq!(tini_signal("KILL"), None);
        assert_eq!(tini_signal("9"), None);
        assert_eq!(tini_signal("SIGIO"), None);
    }

    #[test]
    fn the_dialect_follows_the_file_name_of_argv0() {
        assert_eq!(of("/usr/bin/tini-static"), Dialect::Tini);
        assert_eq!(of("dumb-init"), Dialect::DumbInit);
        assert_eq!(of("/sbin/microinit"), Dialect::Microinit);
        assert_eq!(of("/tini/bin/init"), Dialect::Microinit);
    }
}
