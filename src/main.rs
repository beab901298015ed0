//! microinit: a tiny PID-1 init and supervisor for Docker microcontainers.
//!
//! main.rs only wires the stages: cli/env → Config → RuntimeCheck → spawn → EventLoop → exit status.

use std::io::Write;

use microinit::cli::{self, Action, UsageError};
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
    let action = match cli::parse(std::env::args_os().collect(), &|k| std::env::var(k).ok()) {
        Ok(a) => a,
        Err(UsageError(msg)) => {
            eprintln!("microinit: {msg}");
            return 2;
        }
    };
    match action {
        Action::Print(text) => {
            print!("{text}");
            0
        }
        Action::Check {
            json,
            command,
            runtime,
        } => {
            init_logging(0);
            runtime_check::check_main(json, &command, &runtime)
        }
        Action::Client { request, socket } => control_client::client_main(request, &socket),
        Action::Run(cfg) | Action::Exec(cfg) => supervise(*cfg),
    }
}

fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .format(|buf, rec| {
            let level = match rec.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            writeln!(buf, "microinit: {level}: {}", rec.args())
        })
        .init();
}

/// Be the init: set up signals and reaping, check the runtime, then hand over to the event loop.
fn supervise(cfg: Config) -> i32 {
    init_logging(cfg.verbosity);
    // Before any thread exists (the Consul worker inherits the mask): see signals::block_all.
    let mask = match signals::block_all() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("microinit: cannot block signals: {e}");
            return 125;
        }
    };
    let is_pid1 = std::process::id() == 1;
    if !is_pid1 {
        // Orphans of the app are reparented to the nearest subreaper: us, not the host's init.
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if r != 0 {
            log::warn!("not PID 1 and cannot become a child subreaper: zombies of the app will not be reaped");
        } else if cfg.supervisor.warn_not_reaper && cfg.dialect == config::Dialect::Tini {
            log::info!("not running as PID 1; registered as a child subreaper instead");
        }
    }
    let mut signals = match signals::Signals::open() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("microinit: cannot open a signalfd: {e}");
            return 125;
        }
    };
    if cfg.supervisor.isolation == Isolation::Session && spawn::stdin_is_tty() {
        // Give up our controlling terminal so the app's new session can take it (dumb-init does the same).
        // If we led the terminal's session, the kernel now sends SIGHUP and SIGCONT to our group: they are
        // blocked, and dropped right here since they are not meant for the app.
        // SAFETY: ioctl on fd 0 with no argument.
        unsafe { libc::ioctl(0, libc::TIOCNOTTY) };
        let _ = signals.drain();
    }

    let name = cfg.supervisor.command[0].clone();
    let path_var = std::env::var_os("PATH");
    let resolve = || which::resolve(&name, path_var.as_deref());
    let first = resolve();
    if let Err(e) = &first {
        // A dangling link is the runtime check's business (it names the volume and may wait for it);
        // anything else is a plain "not found" / "not executable".
        if !(cfg.runtime.enabled && e.is_dangling_link()) {
            eprintln!("microinit: {}", e.message(&name));
            return e.exit_code();
        }
    }
    let mut runtime_json = None;
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
            runtime_json = Some(waiter.report().to_json());
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
            runtime_json = Some(report.to_json());
        }
    }
    // The runtime check may have brought the command (a link into the volume): look again after it; with
    // the check off nothing changed since the first lookup, and walking PATH again would only repeat its
    // stat(2) calls on the start-up path. After a wait, the event loop looks again itself.
    let app_path = if cfg.runtime.enabled && runtime_wait.is_none() {
        resolve()
    } else {
        first
    };
    if let (Err(e), None) = (&app_path, &runtime_wait) {
        eprintln!("microinit: {}", e.message(&name));
        return e.exit_code();
    }
    let setup = event_loop::Setup {
        mask,
        signals,
        is_pid1,
        app_path,
        runtime_check: runtime_json,
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
