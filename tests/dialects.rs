//! Differential test: microinit called `tini` / `dumb-init` against the genuine tini 0.19 and dumb-init 1.2.5
//! (Debian's), in a matrix of scenarios, each as PID 1 (`unshare --pid --fork --mount-proc`) and not.
//!
//! What is compared is what an observer sees: the init's exit status; which signals the child (and a
//! leftover in its group) recorded, in order; whether the leftover is alive afterwards; the child's cwd,
//! blocked and ignored signals, process group, session and terminal foreground; the init's cwd and state
//! after a terminal stop; what arrived on the child's stdin; and the shape of stderr/stdout (tagged lines
//! such as `[WARN  tini (N)]` by tag, each tag once in order of first appearance, the lines scripts grep — exec failures, reaped zombies, getopt
//! errors — in full, free text as one `text…` item). A difference seen in three runs in a row fails the
//! test, listing every one.
//!
//! The genuine binaries are required (scripts/test.sh installs them); without them the test fails loudly.

mod common;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{bin, helper, tempdir};

/// Poll every millisecond: thousands of runs, a coarser poll would add up.
fn wait_for<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    common::poll_every(Duration::from_millis(1), timeout, f)
}

/// Sent after each test signal: once the child recorded it, everything sent before was handled (the init
/// and the child both dequeue the lowest-numbered pending signal first, and 40 is above every standard one).
const MARKER: i32 = 40;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Tool {
    Tini,
    DumbInit,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Tini => "tini",
            Tool::DumbInit => "dumb-init",
        }
    }
    fn genuine(self) -> &'static str {
        match self {
            Tool::Tini => "/usr/bin/tini",
            Tool::DumbInit => "/usr/bin/dumb-init",
        }
    }
}

/// What the harness does while the init runs.
#[derive(Clone, Debug)]
enum Act {
    /// Nothing: the child ends by itself.
    Wait,
    /// Wait until the recorder is ready, send each signal (each followed by the marker), then `end` to the
    /// init, which the recorder must see as `until` (its argument) to exit.
    Signals { sigs: Vec<i32>, end: i32 },
    /// A terminal stop (or CONT) sent to the init: states of the init and child, then SIGCONT, then end.
    Stop { sig: i32, end: i32 },
    /// Bytes written to the child's stdin (a pipe), then EOF.
    Stdin(&'static str),
    /// Bytes typed on the terminal (the init runs on a pty), then `end` to the init.
    Type { bytes: &'static [u8], end: i32 },
    /// The init runs under a shell that is SIGKILLed once the recorder is ready; then `end` to the init.
    KillParent { end: i32 },
}

#[derive(Clone, Debug)]
struct Case {
    tool: Tool,
    /// The init's arguments; "OBS" is the observer helper, "DIR" the case's directory.
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
    pid1: bool,
    tty: bool,
    act: Act,
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

impl Case {
    fn label(&self) -> String {
        format!(
            "{} {}{}{}{} [{}]",
            self.tool.name(),
            self.args.join(" "),
            self.env
                .iter()
                .map(|(k, v)| format!(" {k}={v:?}"))
                .collect::<String>(),
            if self.tty { " (tty)" } else { "" },
            if self.pid1 { " as PID 1" } else { "" },
            match &self.act {
                Act::Wait => "wait".to_string(),
                a => format!("{a:?}"),
            }
        )
    }
}

fn signal_name(s: i32) -> String {
    format!("{s}")
}

/// The lines of one stream reduced to their shape (see the module doc).
fn shape(text: &str, dirs: &[&Path]) -> String {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let mut l = line.to_string();
        for d in dirs {
            l = l.replace(&d.display().to_string(), "DIR");
        }
        // Numbers (pids) differ between any two runs.
        let mut norm = String::new();
        let mut in_num = false;
        for c in l.chars() {
            if c.is_ascii_digit() {
                if !in_num {
                    norm.push('N');
                }
                in_num = true;
            } else {
                in_num = false;
                norm.push(c);
            }
        }
        let tini_tag = ["FATAL", "WARN ", "INFO ", "DEBUG", "TRACE"]
            .iter()
            .find(|t| norm.starts_with(&format!("[{t} tini (N)] ")));
        let greppable = norm.contains(" exec ") && norm.contains(" failed: ")
            || norm.contains("Reaped zombie process with pid=N")
            || norm.contains("Not a valid option for -")
            || norm.contains(": invalid option -- ")
            || norm.contains(": unrecognized option ")
            || norm.contains("requires an argument")
            || (norm.starts_with("[dumb-init] ")
                && [
                    "No such file or directory",
                    "Permission denied",
                    "Exec format error",
                ]
                .iter()
                .any(|e| norm.ends_with(e)));
        let item = if greppable {
            norm
        } else if let Some(t) = tini_tag {
            format!("[{t} tini (N)] …")
        } else if norm.starts_with("[dumb-init] ") {
            "[dumb-init] …".into()
        } else {
            "text…".into()
        };
        // Tagged free text counts once, where it first appears: what each tool says at a level differs.
        if item.ends_with('…') && out.contains(&item) {
            continue;
        }
        out.push(item);
    }
    out.join(" | ")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn recorded(p: &Path) -> Vec<i32> {
    read(p).lines().filter_map(|l| l.parse().ok()).collect()
}

/// Stopped, running (R, S and D alike: which one is scheduling) or gone.
fn run_state(pid: i32) -> &'static str {
    match state(pid) {
        'T' | 't' => "stopped",
        '-' | 'Z' | 'X' => "gone",
        _ => "running",
    }
}

/// No signal pending for the process (it has handled everything sent so far).
fn idle(pid: i32) -> bool {
    read(Path::new(&format!("/proc/{pid}/status")))
        .lines()
        .filter(|l| l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
        .all(|l| l.trim_end().ends_with("0000000000000000"))
}

/// The state letter of a process (R, S, T, Z …) or '-' when it is gone.
fn state(pid: i32) -> char {
    let s = read(Path::new(&format!("/proc/{pid}/stat")));
    s.rfind(')')
        .and_then(|i| s[i + 2..].chars().next())
        .unwrap_or('-')
}

fn first_child(pid: i32) -> Option<i32> {
    read(Path::new(&format!("/proc/{pid}/task/{pid}/children")))
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// Run one case under `init` (a symlink named like the tool) and describe what an observer saw.
fn observe(init: &Path, case: &Case, obs: &Path) -> String {
    let dir = tempdir("dialects");
    // A file that is not executable, for the exec failure cases.
    std::fs::write(dir.join("plain"), "echo hi\n").unwrap();
    // An executable without #! or ELF magic: execvp runs it with /bin/sh.
    std::fs::write(dir.join("script"), "echo hi; exit 9\n").unwrap();
    std::fs::set_permissions(
        dir.join("script"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let subst = |a: &str| -> String {
        match a {
            "OBS" => obs.display().to_string(),
            "DIR" => dir.display().to_string(),
            _ => a.replace("DIR/", &format!("{}/", dir.display())),
        }
    };
    let args: Vec<String> = case.args.iter().map(|a| subst(a)).collect();
    let mut argv: Vec<OsString> = Vec::new();
    if case.pid1 {
        argv.extend(["unshare", "--pid", "--fork", "--mount-proc"].map(OsString::from));
        if !matches!(case.act, Act::KillParent { .. }) {
            argv.push("--kill-child".into());
        }
    }
    argv.push(init.into());
    argv.extend(args.iter().map(OsString::from));
    let mut cmd = if let Act::KillParent { .. } = case.act {
        // A parent that dies while the init runs: sh starts it in the background and waits.
        let line: Vec<String> = argv
            .iter()
            .map(|a| format!("'{}'", a.to_string_lossy()))
            .collect();
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(format!(
            "{} & echo $! > {}/launched.pid; wait",
            line.join(" "),
            dir.display()
        ));
        c
    } else {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    cmd.current_dir(&dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    for (k, v) in &case.env {
        cmd.env(k, v);
    }
    let mut master = None;
    if case.tty {
        let (mut m, mut s) = (0, 0);
        // SAFETY: openpty writes two fds.
        let r = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty");
        use std::os::fd::FromRawFd;
        // SAFETY: fresh fds we own.
        master = Some(unsafe { std::fs::File::from_raw_fd(m) });
        cmd.stdin(unsafe { Stdio::from_raw_fd(s) });
    } else if let Act::Stdin(_) = case.act {
        cmd.stdin(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null());
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let tty = case.tty;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The caller's own mask and ignores, to see what each init hands down: WINCH blocked, XFSZ
            // ignored.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGWINCH);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if tty {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn the init");
    let top = child.id() as i32;
    // The init's pid: our child, unshare's child, or the one sh started.
    let init_pid = || -> Option<i32> {
        let base = match case.act {
            Act::KillParent { .. } => read(&dir.join("launched.pid")).trim().parse().ok()?,
            _ => top,
        };
        if case.pid1 {
            first_child(base)
        } else {
            Some(base)
        }
    };
    let mut notes = String::new();
    let t = Duration::from_secs(5);
    let rec = dir.join("rec.sigs");
    let left = dir.join("leftover.sigs");
    // The marker came through, or the init is gone (a signal killed it): nothing more will come.
    let await_marker = |n: usize, init: i32| {
        wait_for(Duration::from_secs(3), || {
            let seen = recorded(&rec).iter().filter(|s| **s == MARKER).count() >= n;
            (seen || run_state(init) == "gone").then_some(seen)
        })
        .unwrap_or(false)
    };
    // A last marker (the `n`th) so everything sent before is recorded, then the signal that ends the child.
    let finish = |p: i32, n: usize, end: i32, notes: &mut String| {
        kill(p, MARKER);
        if !await_marker(n, p) {
            notes.push_str("marker not seen\n");
        }
        kill(p, end);
    };
    // Every act but Wait and Stdin drives a recorder: wait until it records, and find the init.
    let mut pid = None;
    if !matches!(case.act, Act::Wait | Act::Stdin(_)) {
        if wait_for(t, || dir.join("rec.ready").exists().then_some(())).is_some() {
            pid = wait_for(t, init_pid);
        } else {
            notes.push_str("recorder never ready\n");
        }
    }
    match (&case.act, pid) {
        (Act::Stdin(text), _) => {
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(text.as_bytes());
        }
        (Act::Signals { sigs, end }, Some(p)) => {
            // One round trip first: the init is past its start-up (a chdir after fork included).
            kill(p, MARKER);
            await_marker(1, p);
            for (i, s) in sigs.iter().enumerate() {
                kill(p, *s);
                kill(p, MARKER);
                if !await_marker(i + 2, p) {
                    let _ = writeln!(notes, "marker after {} not seen", signal_name(*s));
                    break;
                }
            }
            // Read last: an init that changes directory after forking has long done so by now.
            let cwd = std::fs::read_link(format!("/proc/{p}/cwd")).unwrap_or_default();
            let _ = writeln!(notes, "init cwd={}", cwd.display());
            kill(p, *end);
        }
        (Act::Stop { sig, end }, Some(p)) => {
            let c = first_child(p).unwrap_or(0);
            kill(p, *sig);
            kill(p, MARKER);
            // Settled: the child stopped or the marker came through (or a second passed, when the init
            // stopped itself with the marker still queued); an init stops itself right after forwarding.
            wait_for(Duration::from_secs(1), || {
                let marker = recorded(&rec).contains(&MARKER);
                (state(c) == 'T' || marker).then_some(())
            });
            // The init either stops itself or goes idle with nothing pending.
            wait_for(Duration::from_secs(1), || {
                (state(p) == 'T' || (state(p) == 'S' && idle(p))).then_some(())
            });
            let states =
                |when: &str| format!("{when}: init {} child {}\n", run_state(p), run_state(c));
            notes.push_str(&states(&format!("after {sig}")));
            kill(p, libc::SIGCONT);
            wait_for(Duration::from_secs(1), || {
                (state(p) != 'T' && state(c) != 'T').then_some(())
            });
            notes.push_str(&states("after CONT"));
            finish(p, 2, *end, &mut notes);
        }
        (Act::Type { bytes, end }, Some(p)) => {
            master.as_mut().unwrap().write_all(bytes).unwrap();
            // The terminal's signal comes from the line discipline, asynchronously: wait for it to
            // land (directly, or through the init) before the marker can mean anything.
            wait_for(Duration::from_secs(1), || {
                (!recorded(&rec).is_empty()).then_some(())
            });
            finish(p, 1, *end, &mut notes);
        }
        (Act::KillParent { end }, Some(p)) => {
            kill(top, libc::SIGKILL);
            let _ = child.wait();
            // The init's parent-death signal, if any, reaches the child through the init.
            wait_for(Duration::from_secs(1), || {
                (!recorded(&rec).is_empty()).then_some(())
            });
            finish(p, 1, *end, &mut notes);
        }
        _ => {}
    }
    // The exit: our child's status, or (under a killed parent) only that the init is gone.
    let status = if let Act::KillParent { .. } = case.act {
        let _ = child.kill();
        let _ = child.wait();
        let p = pid.unwrap_or(0);
        let gone = wait_for(t, || matches!(state(p), '-' | 'Z').then_some(()));
        if gone.is_some() {
            "gone".to_string()
        } else {
            kill(p, libc::SIGKILL);
            "still running".to_string()
        }
    } else {
        match wait_for(Duration::from_secs(8), || child.try_wait().unwrap()) {
            Some(st) => match (
                st.code(),
                std::os::unix::process::ExitStatusExt::signal(&st),
            ) {
                (Some(c), _) => format!("exit {c}"),
                (_, Some(s)) => format!("killed by {s}"),
                _ => "?".into(),
            },
            None => {
                if let Some(p) = pid {
                    kill(p, libc::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                "timeout".into()
            }
        }
    };
    // A leftover outlives a non-PID-1 init; give it a moment to record what the init sent on its way out.
    let left_pid: Option<i32> = read(&dir.join("leftover.pid")).trim().parse().ok();
    let mut left_alive = String::new();
    if let (Some(lp), false) = (left_pid, case.pid1) {
        wait_for(Duration::from_millis(300), || {
            (!recorded(&left).is_empty()).then_some(())
        });
        left_alive = format!(" alive={}", matches!(state(lp), 'S' | 'R' | 'T'));
        if read(Path::new(&format!("/proc/{lp}/cmdline"))).contains(&dir.display().to_string()) {
            kill(lp, libc::SIGKILL);
        }
    }
    if !case.pid1 {
        // What a non-PID-1 init left running (a child it no longer waits for) goes now.
        for role in ["exit", "die", "rec", "cat", "orphans"] {
            if let Ok(p) = read(&dir.join(format!("{role}.pid"))).trim().parse::<i32>() {
                // Only if it is still that observer (a pid may have been reused).
                let ours = read(Path::new(&format!("/proc/{p}/cmdline")))
                    .contains(&dir.display().to_string());
                if ours && p > 1 {
                    kill(p, libc::SIGKILL);
                }
            }
        }
    }
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let init_dir = init.parent().unwrap();
    let strip = |v: Vec<i32>| -> String {
        v.iter()
            .filter(|s| **s != MARKER)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut o = format!("status: {status}\n");
    o.push_str(&notes.replace(&dir.display().to_string(), "DIR"));
    for role in ["exit", "die", "rec", "cat", "left", "orphans"] {
        let info = read(&dir.join(format!("{role}.info")));
        if !info.is_empty() {
            let _ = writeln!(
                o,
                "{role}: {}",
                info.trim()
                    .replace('\n', "; ")
                    .replace(&dir.display().to_string(), "DIR")
            );
        }
    }
    if rec.exists() {
        let mut got = recorded(&rec);
        if let Act::Type { .. } = case.act {
            // A terminal's signal that also reaches the child through the init (dumb-init -c) may merge
            // with the kernel's while still pending, in the genuine tool too: count kinds, not instances.
            got.dedup();
        }
        let _ = writeln!(o, "child got: {}", strip(got));
    }
    // As PID 1 the leftover dies with the namespace the moment the init exits; whether it dequeued a
    // SIGTERM sent just before is a race in the genuine tools too (compared when not PID 1).
    if left_pid.is_some() && !case.pid1 {
        let _ = writeln!(o, "leftover got: {}{left_alive}", strip(recorded(&left)));
    }
    if dir.join("cat.out").exists() {
        let _ = writeln!(o, "stdin seen: {:?}", read(&dir.join("cat.out")));
    }
    let _ = writeln!(o, "stderr: {}", shape(&err, &[&dir, init_dir]));
    let _ = writeln!(o, "stdout: {}", shape(&out, &[&dir, init_dir]));
    let _ = std::fs::remove_dir_all(&dir);
    o
}

/// Every scenario of the matrix.
fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let mut add =
        |tool: Tool, args: &str, env: &[(&'static str, &'static str)], tty: bool, act: Act| {
            for pid1 in [false, true] {
                v.push(Case {
                    tool,
                    args: words(args),
                    env: env.to_vec(),
                    pid1,
                    tty,
                    act: act.clone(),
                });
            }
        };
    use Tool::*;
    // Command lines: errors, help texts, `--`, options after the command.
    for a in [
        "",
        "-x OBS DIR exit 0",
        "--help",
        "-h",
        "-l",
        "--version",
        "--version OBS DIR exit 0",
        "-p TERM OBS DIR exit 0",
        "-p SIGKILL -- OBS DIR exit 4",
        "-p",
        "-e 256 -- OBS DIR exit 0",
        "-e abc -- OBS DIR exit 0",
        "-e -- OBS DIR exit 0",
        "OBS DIR exit 7 -x",
        "OBS DIR exit 7 -- -x",
        "OBS DIR exit 7 -g",
        "-- -- OBS DIR exit 0",
        "-- OBS DIR exit 5",
        "-vvv -- OBS DIR exit 0",
        "-s -- OBS DIR exit 0",
    ] {
        add(Tini, a, &[], false, Act::Wait);
    }
    for a in [
        "",
        "-x OBS DIR exit 0",
        "--nope OBS DIR exit 0",
        "--help",
        "-h",
        "-V",
        "--version",
        "--ver OBS DIR exit 0",
        "--single-child=1 OBS DIR exit 0",
        "-r",
        "--rewrite",
        "-r 1:32 OBS DIR exit 0",
        "-r 0:1 OBS DIR exit 0",
        "-r 15 OBS DIR exit 0",
        "-r TERM:QUIT OBS DIR exit 0",
        "-r 15:3junk OBS DIR exit 0",
        "--rew=15:3 --sing OBS DIR exit 6",
        "OBS DIR exit 7 -x",
        "-- -- OBS DIR exit 0",
        "-- OBS DIR exit 5",
        "-v OBS DIR exit 0",
        "-cv OBS DIR exit 0",
    ] {
        add(DumbInit, a, &[], false, Act::Wait);
    }
    // Exit codes 0-255 and deaths by signal (all of them in the default modes, a sample in the others).
    for (tool, mode) in [(Tini, ""), (Tini, "-g"), (DumbInit, ""), (DumbInit, "-c")] {
        let all = mode.is_empty();
        for n in (0..=255).filter(|n| all || [0, 1, 2, 126, 127, 128, 143, 255].contains(n)) {
            add(
                tool,
                &format!("{mode} -- OBS DIR exit {n}"),
                &[],
                false,
                Act::Wait,
            );
        }
        for s in
            (1..=31).filter(|s| ![19, 20, 21, 22].contains(s) && (all || [2, 9, 15].contains(s)))
        {
            add(
                tool,
                &format!("{mode} -- OBS DIR die {s}"),
                &[],
                false,
                Act::Wait,
            );
        }
    }
    // tini -e with every code (and another code next to it), and with a death by signal.
    for n in 0..=255 {
        add(
            Tini,
            &format!("-e {n} -- OBS DIR exit {n}"),
            &[],
            false,
            Act::Wait,
        );
        add(
            Tini,
            &format!("-e {n} -- OBS DIR exit {}", (n + 1) % 256),
            &[],
            false,
            Act::Wait,
        );
    }
    add(Tini, "-e 143 -- OBS DIR die 15", &[], false, Act::Wait);
    add(Tini, "-e 3 -e 4 -- OBS DIR exit 4", &[], false, Act::Wait);
    // Every catchable signal sent to the init, in each mode (terminal stops below).
    let modes = [(Tini, ""), (Tini, "-g"), (DumbInit, ""), (DumbInit, "-c")];
    for (tool, mode) in modes {
        // Real-time ones too: 32 and 33 are glibc's own (its sigfillset leaves them out), 34-64 the app's.
        let realtime = [32, 33, 34, 50, 63, 64];
        for s in (1..=31)
            .filter(|s| ![9, 17, 19, 20, 21, 22].contains(s))
            .chain(realtime)
        {
            let act = if s == 15 {
                Act::Signals {
                    sigs: vec![],
                    end: 15,
                }
            } else {
                Act::Signals {
                    sigs: vec![s],
                    end: 15,
                }
            };
            add(tool, &format!("{mode} -- OBS DIR rec 15"), &[], false, act);
        }
        // Terminal stops and SIGCONT.
        for (s, tty) in [20, 21, 22, 18]
            .into_iter()
            .flat_map(|s| [(s, false), (s, true)])
        {
            let act = Act::Stop { sig: s, end: 15 };
            add(tool, &format!("{mode} -- OBS DIR rec 15"), &[], tty, act);
        }
        // On a terminal: SIGHUP and SIGCONT after the init gave the terminal up (dumb-init drops only the
        // kernel's own pair), and Ctrl-C typed.
        let act = Act::Signals {
            sigs: vec![1, 18],
            end: 15,
        };
        add(tool, &format!("{mode} -- OBS DIR rec 15"), &[], true, act);
        add(
            tool,
            &format!("{mode} -- OBS DIR rec 15"),
            &[],
            true,
            Act::Type {
                bytes: b"\x03",
                end: 15,
            },
        );
        // The end of life with a leftover in the child's group; signals to the group (-g).
        add(
            tool,
            &format!("{mode} -- OBS DIR left"),
            &[],
            false,
            Act::Wait,
        );
        // Orphans.
        add(
            tool,
            &format!("{mode} -- OBS DIR orphans 3"),
            &[],
            false,
            Act::Wait,
        );
        // Stdin passed through.
        add(
            tool,
            &format!("{mode} -- OBS DIR cat"),
            &[],
            false,
            Act::Stdin("hello\nworld\n"),
        );
    }
    // -r maps: swaps, drops, stops rewritten.
    for r in [
        "-r 10:12 -r 12:10",
        "-r 10:0",
        "-r 15:3",
        "-r 15:0",
        "-r 20:0",
        "-c -r 10:12",
        "-r 2:15",
    ] {
        // The signal that ends the recorder: SIGTERM as the child sees it (or SIGINT when TERM is dropped).
        let (end, until) = match r {
            "-r 15:3" => (15, 3),
            "-r 15:0" => (2, 2),
            "-r 2:15" => (2, 15),
            _ => (15, 15),
        };
        let act = Act::Signals {
            sigs: vec![10, 12],
            end,
        };
        add(
            DumbInit,
            &format!("{r} -- OBS DIR rec {until}"),
            &[],
            false,
            act,
        );
        add(
            DumbInit,
            &format!("{r} -- OBS DIR left"),
            &[],
            false,
            Act::Wait,
        );
    }
    add(
        DumbInit,
        "-r 20:0 -- OBS DIR rec 15",
        &[],
        false,
        Act::Stop { sig: 20, end: 15 },
    );
    // tini -w, -s and TINI_SUBREAPER / TINI_KILL_PROCESS_GROUP / TINI_VERBOSITY semantics.
    for a in ["-w", "-s -w", "-s"] {
        add(
            Tini,
            &format!("{a} -- OBS DIR orphans 3"),
            &[],
            false,
            Act::Wait,
        );
    }
    for val in ["", "0", "1"] {
        add(
            Tini,
            "-w -- OBS DIR orphans 3",
            &[("TINI_SUBREAPER", val)],
            false,
            Act::Wait,
        );
        add(
            Tini,
            "-- OBS DIR left",
            &[("TINI_KILL_PROCESS_GROUP", val)],
            false,
            Act::Wait,
        );
        add(
            Tini,
            "-- OBS DIR rec 15",
            &[("TINI_KILL_PROCESS_GROUP", val)],
            false,
            Act::Signals {
                sigs: vec![10],
                end: 15,
            },
        );
    }
    for val in ["", "0", "1", "2", "3", "x"] {
        add(
            Tini,
            "-- OBS DIR exit 0",
            &[("TINI_VERBOSITY", val)],
            false,
            Act::Wait,
        );
    }
    for val in ["", "0", "1", "true"] {
        add(
            DumbInit,
            "OBS DIR left",
            &[("DUMB_INIT_SETSID", val)],
            false,
            Act::Wait,
        );
        add(
            DumbInit,
            "OBS DIR exit 0",
            &[("DUMB_INIT_DEBUG", val)],
            false,
            Act::Wait,
        );
    }
    // -p: the init's own parent dies.
    add(
        Tini,
        "-p SIGUSR1 -- OBS DIR rec 15",
        &[],
        false,
        Act::KillParent { end: 15 },
    );
    // Exec failures: missing, not executable, a directory, an empty name.
    for tool in [Tini, DumbInit] {
        for a in [
            "/nonexistent",
            "nonexistent-command",
            "DIR/plain",
            "DIR",
            "/etc",
            "/etc/passwd/x",
            "DIR/script",
            "plain",
        ] {
            add(tool, &format!("-- {a}"), &[], false, Act::Wait);
        }
    }
    v
}

#[test]
fn microinit_called_tini_or_dumb_init_is_seen_to_behave_as_the_genuine_tools_do() {
    for t in [Tool::Tini, Tool::DumbInit] {
        assert!(
            Path::new(t.genuine()).exists(),
            "{} missing: `apt-get install tini dumb-init` (scripts/test.sh does)",
            t.genuine()
        );
    }
    let obs = helper("observer");
    // Both run through a symlink of the same name, so argv[0] (and getopt's messages) match.
    let links = tempdir("dialect-links");
    let mut paths = std::collections::HashMap::new();
    for t in [Tool::Tini, Tool::DumbInit] {
        for (side, target) in [
            ("genuine", PathBuf::from(t.genuine())),
            ("microinit", bin()),
        ] {
            let d = links.join(side);
            std::fs::create_dir_all(&d).unwrap();
            let l = d.join(t.name());
            symlink(&target, &l).unwrap();
            paths.insert((t, side), l);
        }
    }
    let cases = cases();
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let diffs = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(case) = cases.get(i) else { break };
                let t0 = Instant::now();
                // A difference must persist over three runs: on a loaded machine a stop or a terminal's
                // signal can land late for either side, while a real divergence shows every time.
                let (mut a, mut b) = (String::new(), String::new());
                for _ in 0..3 {
                    a = observe(&paths[&(case.tool, "genuine")], case, &obs);
                    b = observe(&paths[&(case.tool, "microinit")], case, &obs);
                    if a == b {
                        break;
                    }
                }
                if t0.elapsed() > Duration::from_secs(2) {
                    eprintln!(
                        "slow ({:.1} s): {}",
                        t0.elapsed().as_secs_f64(),
                        case.label()
                    );
                }
                if a != b {
                    diffs.lock().unwrap().push(format!(
                        "{}\n  genuine:\n    {}\n  microinit:\n    {}",
                        case.label(),
                        a.trim().replace('\n', "\n    "),
                        b.trim().replace('\n', "\n    ")
                    ));
                }
            });
        }
    });
    let diffs = diffs.into_inner().unwrap();
    eprintln!(
        "{} scenarios x 2 implementations compared in {:.1} s, {} differ",
        cases.len(),
        started.elapsed().as_secs_f64(),
        diffs.len()
    );
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

#[test]
fn microinit_features_stay_reachable_in_the_tini_mode_through_microinit_variables() {
    let d = tempdir("dialect-extras");
    let tini = d.join("tini");
    symlink(bin(), &tini).unwrap();
    let sock = d.join("ctl.sock");
    let mut init = Command::new(&tini)
        .args(["-s", "--", "sleep", "30"])
        .env("MICROINIT_SOCKET", &sock)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(10), || {
        let out = Command::new(bin())
            .args(["status", "--json"])
            .env("MICROINIT_SOCKET", &sock)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    kill(init.id() as i32, libc::SIGTERM);
    let st = init.wait().unwrap();
    let status = status.expect("`microinit status` answered the tini-mode init");
    let doc: serde_json::Value = serde_json::from_str(&status).expect("status --json is JSON");
    assert_eq!(doc["microinit"]["dialect"], "tini", "{status}");
    assert_eq!(st.code(), Some(143), "sleep ended by the forwarded SIGTERM");
    // Without the variable there is no socket: a drop-in creates nothing the genuine tool would not.
    let out = Command::new(&tini)
        .args(["-s", "--", "true"])
        .env_remove("MICROINIT_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
