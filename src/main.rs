//! microinit: wiring only. See the module docs for what each stage owns.
#![allow(dead_code)] // skeleton: removed once every stage is wired

mod config;
mod elf;
mod runtime_check;
mod which;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

fn main() {
    std::process::exit(temporary_runtime_check_main());
}

/// TEMPORARY (runtime-check branch, until the lead's cli lands): exercises the runtime check end to end.
///   microinit check [--json] [OPTS] [--] [CMD ARGS...]   → check_main
///   microinit [OPTS] -- CMD ARGS...                       → check, then exec CMD (no supervision)
/// OPTS: --runtime-dir DIR, --require PATH (repeatable), --wait-runtime DURATION, --no-runtime-check;
/// env twins MICROINIT_RUNTIME_DIR, MICROINIT_REQUIRE (colon-separated), MICROINIT_WAIT_RUNTIME,
/// MICROINIT_NO_RUNTIME_CHECK.
fn temporary_runtime_check_main() -> i32 {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let subcommand = args.first().is_some_and(|a| a == "check");
    if subcommand {
        args.remove(0);
    }
    let mut opts = config::Options::default();
    let env = |k: &str| std::env::var(k).ok();
    if let Some(v) = env("MICROINIT_RUNTIME_DIR") {
        opts.set("MICROINIT_RUNTIME_DIR", vec![v]);
    }
    if let Some(v) = env("MICROINIT_REQUIRE") {
        opts.set(
            "MICROINIT_REQUIRE",
            v.split(':').map(String::from).collect(),
        );
    }
    if let Some(v) = env("MICROINIT_WAIT_RUNTIME") {
        opts.set("MICROINIT_WAIT_RUNTIME", vec![v]);
    }
    if let Some(v) = env("MICROINIT_NO_RUNTIME_CHECK") {
        opts.set("MICROINIT_NO_RUNTIME_CHECK", vec![v]);
    }
    let mut json = false;
    let mut require_flags = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        let mut value = || {
            i += 1;
            args.get(i)
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        match a.as_str() {
            "--json" => json = true,
            "--runtime-dir" => opts.set("MICROINIT_RUNTIME_DIR", vec![value()]),
            "--require" => require_flags.push(value()),
            "--wait-runtime" => opts.set("MICROINIT_WAIT_RUNTIME", vec![value()]),
            "--no-runtime-check" => opts.set("MICROINIT_NO_RUNTIME_CHECK", vec!["1".into()]),
            "--" => {
                i += 1;
                break;
            }
            _ => break,
        }
        i += 1;
    }
    if !require_flags.is_empty() {
        opts.set("MICROINIT_REQUIRE", require_flags);
    }
    let command = args.split_off(i.min(args.len()));
    let wait = match opts.get("MICROINIT_WAIT_RUNTIME") {
        None => None,
        Some(_) => match opts.duration("MICROINIT_WAIT_RUNTIME", std::time::Duration::ZERO) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("microinit: {e}");
                return 2;
            }
        },
    };
    let cfg = config::RuntimeCheckConfig {
        enabled: !opts.flag("MICROINIT_NO_RUNTIME_CHECK"),
        runtime_dir: opts
            .get("MICROINIT_RUNTIME_DIR")
            .unwrap_or("/opt/files")
            .into(),
        require: opts
            .all("MICROINIT_REQUIRE")
            .iter()
            .filter(|s| !s.is_empty())
            .map(Into::into)
            .collect(),
        wait,
        root: "/".into(),
    };
    if subcommand {
        return runtime_check::check_main(json, &command, &cfg);
    }
    let Some(program) = command.first() else {
        eprintln!("microinit: usage: microinit [OPTIONS] -- CMD [ARGS...] | microinit check [--json] [CMD...]");
        return 2;
    };
    if cfg.enabled {
        let report = runtime_check::check_waiting(&command, &cfg);
        if !report.is_ok() {
            eprint!("{}", report.missing_message(&cfg));
            return 127;
        }
    }
    let err = std::process::Command::new(program)
        .args(&command[1..])
        .exec();
    eprintln!(
        "microinit: cannot exec {}: {err}",
        program.to_string_lossy()
    );
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}
