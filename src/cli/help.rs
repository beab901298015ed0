//! Help, usage and licence texts (microinit's own wording in every dialect).
//!
//! Owns: rendering a flag table as help, the short usage lines, the licence note. Does not own: the tables
//! (`options`, `dialect`) nor where a text is printed and with which exit code (`dialect`, `mod`).

use super::dialect;
use super::flags::Kind;
use super::options::MICROINIT;
use crate::config::Dialect;

/// The one-line usage (tini prints it on a usage error, before its exit 1).
pub fn usage(d: Dialect) -> String {
    let name = dialect::name(d);
    format!("usage: {name} [OPTIONS] [--] CMD [ARGS...]   (see `{name} -h`)\n")
}

/// dumb-init's answer to a malformed `-r`.
pub fn dumb_init_rewrite_usage() -> String {
    "dumb-init: -r wants S:R, two signal numbers, S from 1 to 31 and R from 0 to 31 (0 drops S); \
     repeatable. See --help.\n"
        .into()
}

pub const LICENSE: &str = "microinit is MIT licensed. It reimplements tini's command line; tini is MIT licensed, Copyright (c) 2015 Thomas Orozco.\n";

pub const CHECK_HELP: &str = "usage: microinit check [--json] [--write-manifest] [--volume-manifest FILE] [OPTIONS] [CMD [ARGS...]]\n\nRuns only the runtime check and prints what was resolved and what is missing.\nWith --write-manifest it scans the standard directories and, when every link resolves (against the\nvolume's manifest when the runtime dir is absent, as at `docker build`), writes the links manifest.\nExit 0 when everything is there, 127 when something is missing, 1 when the manifest cannot be written.\n";

pub fn help(d: Dialect) -> String {
    let name = dialect::name(d);
    let mut out = format!(
        "{name} (microinit {}) — a tiny PID-1 init and supervisor for Docker microcontainers\n\n\
         usage: {name} [OPTIONS] [--] CMD [ARGS...]\n",
        env!("CARGO_PKG_VERSION")
    );
    if d == Dialect::Microinit {
        out.push_str(
            "       microinit check [--json] [--write-manifest] [OPTIONS] [CMD...]   runtime check only\n\
             \x20      microinit status [--json] | signal SIG | restart | maintenance on|off [--reason TEXT]\n\
             \x20      microinit health                                exit 0 when the app is running and ready, else 1\n\
             \x20      microinit exec [OPTIONS] -- CMD [ARGS...]     run CMD as a child subreaper\n",
        );
        out.push_str("\noptions (each also read from the environment variable shown):\n");
    } else {
        out.push_str(
            "\nThis is microinit speaking this tool's command line (called by this name). The MICROINIT_* and\n\
             CONSUL_* variables of `microinit --help` work here too.\n\noptions:\n",
        );
    }
    let table = if d == Dialect::Microinit {
        MICROINIT
    } else {
        dialect::table(d)
    };
    for s in table {
        let short = s.short.map(|c| format!("-{c}")).unwrap_or_default();
        let long = if s.long.is_empty() {
            String::new()
        } else {
            format!("--{}", s.long)
        };
        let sep = if short.is_empty() || long.is_empty() {
            ""
        } else {
            ", "
        };
        let flag = format!("{short}{sep}{long} {}", s.arg);
        out.push_str(&format!("  {:<32} {}\n", flag.trim_end(), s.help));
        if d == Dialect::Microinit && matches!(s.kind, Kind::Flag | Kind::Value | Kind::Repeat) {
            out.push_str(&format!("  {:<32} [env {}]\n", "", s.key));
        }
    }
    if d == Dialect::Microinit {
        out.push_str(
            "\nSignals: every catchable signal (1-31 but SIGCHLD, and SIGRTMIN..SIGRTMAX) is forwarded to the app.\n\
             SIGKILL and SIGSTOP cannot be caught by any process, so they are never forwarded.\n\n\
             Exit status: the app's exit code n, or 128+s when it was killed by signal s; 2 usage error;\n\
             124 --wait-timeout ran out; 125 microinit itself failed (or --consul-required and registration\n\
             failed); 126 command not executable; 127 command not found or runtime missing (see `microinit check`); 3 (clients) no socket.\n",
        );
    } else {
        out.push_str(
            "\nExit status: the child's, or 128+s when a signal s ended it; 1 for a bad command line.\n",
        );
    }
    out
}
