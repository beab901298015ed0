//! microinit: a tiny PID-1 init and supervisor for Docker microcontainers.
//!
//! main.rs only wires the stages: cli/env → Config → RuntimeCheck → spawn → EventLoop → exit status.

use std::io::Write;

use microinit::cli::{self, Action};
use microinit::config::policy::{self, LogStyle, PdeathsigTarget, Subreaper};
use microinit::config::{self, Config, Isolation};
use microinit::control::client as control_client;
use microinit::init::{event_loop, signals, spawn};
use microinit::runtime_check::{self, which};

fn main() {
    let code = run();
    // No explicit stdout flush: process::exit flushes it (std's runtime cleanup), and flushing here first
    // would set up stdout's buffer only to free it again on the exit path (an mmap/munmap pair with musl).
    std::process::exit(code);
}

fn run() -> i32 {
    let env = cli::Environment::capture();
    let action = match cli::parse(std::env::args_os().collect(), &|k| env.get(k)) {
        Ok(a) => a,
        Err(e) => {
            eprint!("{}", e.text);
            return e.code;
        }
    };
    match action {
        Action::Print { text, stderr } => {
            if stderr {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
            0
        }
        Action::Check {
            json,
            command,
            runtime,
        } => {
            init_logging(LogStyle::Microinit, 0);
            runtime_check::check_main(json, &command, &runtime)
        }
        Action::Client {
            request,
            json,
            socket,
        } => control_client::client_main(&request, json, &socket),
        Action::Health { socket } => microinit::control::health::health_main(&socket),
        Action::Run(cfg) | Action::Exec(cfg) => supervise(cfg),
    }
}

/// Log lines in the dialect's shape (tini sends info and below to stdout, as it does).
struct Logger {
    style: LogStyle,
    level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }
    fn log(&self, rec: &log::Record<'_>) {
        if !self.enabled(rec.metadata()) {
            return;
        }
        let (stdout, line) =
            self.style
                .line(rec.level(), &rec.args().to_string(), std::process::id());
        // One write(2) per line, so lines of concurrent writers do not interleave mid-line.
        let _ = if stdout {
            std::io::stdout().lock().write_all(line.as_bytes())
        } else {
            std::io::stderr().lock().write_all(line.as_bytes())
        };
    }
    fn flush(&self) {}
}

fn init_logging(style: LogStyle, verbosity: u8) {
    if style == LogStyle::Microinit && std::env::var_os("RUST_LOG").is_some() {
        // RUST_LOG's module filters are env_logger's; microinit's own mode honours them.
        env_logger::Builder::new()
            .filter_level(style.level(verbosity))
            .parse_default_env()
            .format(move |buf, rec| {
                let (_, line) =
                    style.line(rec.level(), &rec.args().to_string(), std::process::id());
                buf.write_all(line.as_bytes())
            })
            .init();
        return;
    }
    let level = style.level(verbosity);
    if log::set_boxed_logger(Box::new(Logger { style, level })).is_ok() {
        log::set_max_level(level);
    }
}

/// Be the init: set up signals and reaping, check the runtime, then hand over to the event loop.
///
/// Not inlined, and the Config stays boxed until the loop takes it: inlined into `run` with the parser, the
/// stages' locals shared one ~12 KiB frame, whose pages PID 1 kept touched for its whole life (RssAnon).
#[inline(never)]
fn supervise(mut cfg: Box<Config>) -> i32 {
    init_logging(cfg.policy.log, cfg.verbosity);
    for w in &cfg.warnings {
        log::warn!("{w}");
    }
    // The agent credentials are microinit's: no child sees them unless --pass-consul-token says so.
    if cfg
        .consul
        .as_ref()
        .is_some_and(|c| !c.agent.pass_token_to_children)
    {
        spawn::withhold_from_children(&config::consul_agent::CREDENTIAL_VARS);
    }
    // Before any thread exists (the Consul worker inherits the mask): see signals::block_all.
    let mask = match signals::block_all() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("microinit: cannot block signals: {e}");
            return 125;
        }
    };
    // tini leaves its synchronous signals at their default action: a `kill -SEGV` ends a tini that is not
    // PID 1 (as PID 1 the kernel drops it). Rust's runtime installed handlers for SEGV and BUS: reset them.
    signals::leave_at_default(cfg.policy.default_action);
    if cfg.policy.pdeathsig == PdeathsigTarget::Init {
        // tini -p: the signal is for the init itself when its parent dies; it is then forwarded like any other.
        if let Some(sig) = cfg.supervisor.pdeathsig.take() {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
        }
    }
    let is_pid1 = std::process::id() == 1;
    if !is_pid1 {
        let wanted = match cfg.policy.subreaper {
            Subreaper::Always | Subreaper::Requested(true) => true,
            Subreaper::Requested(false) => {
                // Three lines, like tini's: scripts that filter this warning count on its shape.
                log::warn!("not running as PID 1, and not registered as a child subreaper.\nOrphaned processes will be re-parented elsewhere, so their zombies are not reaped here.\nUse -s or set TINI_SUBREAPER to register as a subreaper, or run as PID 1.");
                false
            }
            Subreaper::Never => false,
        };
        // Orphans of the app are reparented to the nearest subreaper: us, not the host's init.
        // SAFETY: prctl with integer arguments only.
        if wanted && unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            log::warn!("not PID 1 and cannot become a child subreaper: zombies of the app will not be reaped");
        }
    }
    let mut signals = match signals::Signals::open(cfg.policy.default_action) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("microinit: cannot open a signalfd: {e}");
            return 125;
        }
    };
    // Asked once (an ioctl): the loop hands the terminal to the app's group when there is one.
    let take_tty = cfg.supervisor.isolation != Isolation::None && spawn::stdin_is_tty();
    if cfg.supervisor.isolation == Isolation::Session && take_tty {
        // Give up our controlling terminal so the app's new session can take it (dumb-init does the same).
        // If we led the terminal's session, the kernel now sends SIGHUP and SIGCONT to our group: they are
        // blocked, and dropped right here since they are not meant for the app.
        // SAFETY: ioctl on fd 0 with no argument.
        unsafe { libc::ioctl(0, libc::TIOCNOTTY) };
        signals.discard_pending();
    }

    let name = cfg.supervisor.command[0].clone();
    let path_var = std::env::var_os("PATH");
    // tini and dumb-init exec a path as given and report the kernel's errno (ENOTDIR, ELOOP … too): leave
    // it to the exec in their modes; a name to search in PATH is resolved here as execvp would.
    let exec_as_given = cfg.policy.exec_failure != policy::ExecFailure::Microinit
        && std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str()).contains(&b'/');
    let resolve = || {
        if exec_as_given {
            Ok(std::path::PathBuf::from(&name))
        } else {
            which::resolve(&name, path_var.as_deref())
        }
    };
    let first = resolve();
    if let Err(e) = &first {
        // A dangling link is the runtime check's business (it names the volume and may wait for it);
        // anything else is a plain "not found" / "not executable".
        if !(cfg.runtime.enabled && e.is_dangling_link()) {
            return lookup_failed(&cfg, e, &name);
        }
    }
    let mut runtime_summary = None;
    let mut runtime_wait = None;
    if cfg.runtime.enabled {
        if cfg.runtime.wait.is_some() {
            // A late volume is waited for inside the event loop, which answers signals and `microinit
            // status` meanwhile.
            let waiter = runtime_check::Waiter::new(
                &cfg.supervisor.command,
                &cfg.runtime,
                std::time::Instant::now(),
            );
            runtime_summary = Some(waiter.report().summary());
            if !waiter.report().is_ok() {
                runtime_wait = Some(event_loop::RuntimeWait {
                    waiter,
                    cfg: cfg.runtime.clone(),
                });
            }
        } else {
            let report = runtime_check::check(&cfg.supervisor.command, &cfg.runtime);
            if !report.is_ok() {
                eprint!("{}", report.missing_message(&cfg.runtime));
                return 127;
            }
            runtime_summary = Some(report.summary());
        }
    }
    // Look again only when the first lookup failed (a dangling link the check then waited for): otherwise
    // nothing changed since, and walking PATH again would only repeat its stat(2) calls on the start-up path.
    // After a wait in the event loop, the loop looks again itself.
    let app_path = if runtime_wait.is_some() {
        first
    } else {
        first.or_else(|_| resolve())
    };
    if let (Err(e), None) = (&app_path, &runtime_wait) {
        return lookup_failed(&cfg, e, &name);
    }
    let setup = event_loop::Setup {
        mask,
        signals,
        is_pid1,
        take_tty,
        app_path,
        runtime_check: runtime_summary,
        runtime_wait,
    };
    match event_loop::EventLoop::new(cfg, setup) {
        Ok(l) => l.run(),
        Err(e) => {
            eprintln!("microinit: cannot start: {e}");
            125
        }
    }
}

/// The app cannot be executed: microinit's message, or the dialect's exec failure line and code.
fn lookup_failed(cfg: &Config, e: &which::LookupError, name: &std::ffi::OsStr) -> i32 {
    if cfg.policy.exec_failure == policy::ExecFailure::Microinit {
        eprintln!("microinit: {}", e.message(name));
        return e.exit_code();
    }
    let (code, line) = policy::exec_failure(
        cfg.policy.exec_failure,
        &name.to_string_lossy(),
        e.errno(),
        std::process::id(),
    );
    eprintln!("{line}");
    code
}
