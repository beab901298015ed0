//! The behaviour that changes with the name microinit is called by, as plain data.
//!
//! Owns: the typed shape of a dialect's policy (end of life, subreaper, where the parent-death signal goes,
//! what the child inherits, the shape of its messages). Does not own: the values for tini and dumb-init
//! (`cli::dialect` is the only place that knows them) nor acting on them (`init`, `main`).

/// What happens when the app has exited for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOfLife {
    /// microinit: SIGTERM to every leftover, exit the moment the last one is reaped, SIGKILL at the grace.
    Sweep,
    /// tini and dumb-init: exit at once. As PID 1 the kernel then SIGKILLs the rest of the namespace; not as
    /// PID 1 leftovers keep running. `signal_group` (dumb-init in setsid mode) first sends SIGTERM, after the
    /// signal rewrites, to the app's process group.
    ExitAtOnce { signal_group: bool },
}

/// When the init registers as a child subreaper (PR_SET_CHILD_SUBREAPER) when it is not PID 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subreaper {
    /// microinit: always, so orphans of the app are reaped.
    Always,
    /// tini: only when asked (`-s`, `TINI_SUBREAPER`); otherwise warn that reaping will not work.
    Requested(bool),
    /// dumb-init: never.
    Never,
}

/// Who gets the `-p` parent-death signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PdeathsigTarget {
    /// microinit `--pdeathsig`: the app, when microinit dies.
    App,
    /// tini `-p`: the init itself when *its* parent dies; like any signal it is then forwarded to the app.
    Init,
}

/// The signal mask and dispositions the app starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildSignals {
    /// microinit and tini: the mask and ignored signals the init was started with.
    Inherited,
    /// dumb-init: every signal unblocked, and signals 1-31 at their default action (its parent installs a
    /// handler on each before forking, which exec resets to the default, so inherited ignores are lost).
    Reset,
}

/// How the init's own lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStyle {
    /// `microinit: warning: …` on stderr.
    Microinit,
    /// `[WARN  tini (PID)] …` on stderr for fatal/warn lines, info and below on stdout.
    Tini,
    /// `[dumb-init] …` on stderr.
    DumbInit,
}

/// How a failed exec of the app is reported and what the init exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecFailure {
    /// microinit's own one-line messages: 127 not found, 126 otherwise.
    Microinit,
    /// tini: `[FATAL tini (PID)] exec NAME failed: STRERROR`, 127 for ENOENT, 126 for EACCES, else 1.
    Tini,
    /// dumb-init: `[dumb-init] NAME: STRERROR`, always 2.
    DumbInit,
}

/// A dialect's rules, handed from `cli::dialect` to the init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialectPolicy {
    pub end_of_life: EndOfLife,
    pub subreaper: Subreaper,
    pub pdeathsig: PdeathsigTarget,
    pub child_signals: ChildSignals,
    /// dumb-init: `chdir("/")` after forking, so the init pins no directory (the app keeps the caller's).
    pub chdir_root: bool,
    /// Signals the init leaves unblocked at their default action, never forwarded (tini: the synchronous
    /// ones, FPE ILL SEGV BUS ABRT TRAP SYS, so a `kill -SEGV` of a tini that is not PID 1 kills it; both
    /// tools: 32 and 33, which glibc's sigfillset leaves out).
    pub default_action: &'static [i32],
    /// Signals the init neither forwards nor acts on (tini ignores SIGTTIN/SIGTTOU for itself).
    pub not_forwarded: &'static [i32],
    /// After a terminal stop (TSTP/TTIN/TTOU) was forwarded, stop the init too; SIGCONT resumes both.
    pub tty_stop_suspends_init: bool,
    /// Terminal-generated signals are forwarded even when the app is in the init's process group and so got
    /// them from the kernel already (dumb-init `-c` does that; microinit does not deliver them twice).
    pub forward_kernel_signals_to_shared_group: bool,
    /// tini `-e`: a remapped code may be a 128+signal one too (microinit remaps exit codes only).
    pub remap_signal_deaths: bool,
    pub log: LogStyle,
    pub exec_failure: ExecFailure,
}

impl DialectPolicy {
    /// microinit's own behaviour.
    pub const MICROINIT: DialectPolicy = DialectPolicy {
        end_of_life: EndOfLife::Sweep,
        subreaper: Subreaper::Always,
        pdeathsig: PdeathsigTarget::App,
        child_signals: ChildSignals::Inherited,
        chdir_root: false,
        default_action: &[],
        not_forwarded: &[],
        tty_stop_suspends_init: true,
        forward_kernel_signals_to_shared_group: false,
        remap_signal_deaths: false,
        log: LogStyle::Microinit,
        exec_failure: ExecFailure::Microinit,
    };
}

impl LogStyle {
    /// The log level for a verbosity: microinit 0 warn … 3 trace; tini 0 fatal only, 1 warn (its default),
    /// 2 info, 3 debug, 4 trace; dumb-init errors only, or everything with -v / DUMB_INIT_DEBUG=1.
    pub fn level(self, verbosity: u8) -> log::LevelFilter {
        use log::LevelFilter::*;
        match (self, verbosity) {
            (LogStyle::Microinit, 0) | (LogStyle::Tini, 1) => Warn,
            (LogStyle::Microinit, 1) | (LogStyle::Tini, 2) => Info,
            (LogStyle::Microinit, 2) | (LogStyle::Tini, 3) => Debug,
            (LogStyle::Tini | LogStyle::DumbInit, 0) => Error,
            (LogStyle::DumbInit, _) => Debug,
            _ => Trace,
        }
    }

    /// One log line in the dialect's shape, and whether it goes to stdout (tini's info and below do).
    pub fn line(self, level: log::Level, msg: &str, pid: u32) -> (bool, String) {
        use log::Level::*;
        match self {
            LogStyle::Microinit => {
                let l = match level {
                    Error => "error",
                    Warn => "warning",
                    Info => "info",
                    Debug => "debug",
                    Trace => "trace",
                };
                (false, format!("microinit: {l}: {msg}\n"))
            }
            LogStyle::Tini => {
                let l = match level {
                    Error => "FATAL",
                    Warn => "WARN ",
                    Info => "INFO ",
                    Debug => "DEBUG",
                    Trace => "TRACE",
                };
                (level > Warn, format!("[{l} tini ({pid})] {msg}\n"))
            }
            LogStyle::DumbInit => (false, format!("[dumb-init] {msg}\n")),
        }
    }
}

impl Default for DialectPolicy {
    fn default() -> Self {
        DialectPolicy::MICROINIT
    }
}

/// errno → the exit code and the one line a dialect reports a failed exec of `name` with (no newline).
pub fn exec_failure(style: ExecFailure, name: &str, errno: i32, pid: u32) -> (i32, String) {
    let err = std::io::Error::from_raw_os_error(errno);
    // strerror's text without Rust's " (os error N)" suffix.
    let text = err.to_string();
    let text = text
        .rsplit_once(" (os error")
        .map_or(text.as_str(), |(t, _)| t);
    let name = crate::config::escape(name);
    match style {
        ExecFailure::Tini => {
            let code = match errno {
                libc::ENOENT => 127,
                libc::EACCES => 126,
                _ => 1,
            };
            (
                code,
                format!("[FATAL tini ({pid})] exec {name} failed: {text}"),
            )
        }
        ExecFailure::DumbInit => (2, format!("[dumb-init] {name}: {text}")),
        ExecFailure::Microinit => {
            let code = if errno == libc::ENOENT { 127 } else { 126 };
            (code, format!("microinit: cannot execute {name}: {text}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_exec_is_reported_in_each_dialects_shape_and_code() {
        assert_eq!(
            exec_failure(ExecFailure::Tini, "nope", libc::ENOENT, 7),
            (
                127,
                "[FATAL tini (7)] exec nope failed: No such file or directory".into()
            )
        );
        assert_eq!(exec_failure(ExecFailure::Tini, "/", libc::EACCES, 7).0, 126);
        assert_eq!(exec_failure(ExecFailure::Tini, "x", libc::ENOTDIR, 7).0, 1);
        assert_eq!(
            exec_failure(ExecFailure::DumbInit, "/etc", libc::EACCES, 7),
            (2, "[dumb-init] /etc: Permission denied".into())
        );
    }
}
