//! The PID-1 core, with microinit as a real PID 1 (`unshare --pid --fork --mount-proc`).

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(20);

/// `init [INIT_ARGS] -- sigrec FILE [REC_ARGS]` as PID 1, once the recorder is ready.
fn recorder_under(init: &Path, init_args: &[&str], rec_args: &[&str]) -> (Pid1, PathBuf) {
    let f = tempdir("rec").join("sig");
    let rec = helper("sigrec");
    let mut args = init_args.to_vec();
    args.extend(["--", rec.to_str().unwrap(), f.to_str().unwrap()]);
    args.extend(rec_args);
    let p = Pid1::start_with(init, &args, &[]);
    wait_ready(&f);
    (p, f)
}

/// microinit [INIT_ARGS] -- sigrec FILE [REC_ARGS] as PID 1.
fn recorder(init_args: &[&str], rec_args: &[&str]) -> (Pid1, PathBuf) {
    recorder_under(&bin(), init_args, rec_args)
}

/// Send `sig` to PID 1 and wait until the app recorded `expect` (as the n-th signal).
fn send_and_await(p: &Pid1, file: &std::path::Path, sig: i32, expect: i32) {
    let before = recorded(file).len();
    p.signal(sig);
    let got = wait_for(T, || {
        let r = recorded(file);
        (r.len() > before).then_some(r)
    })
    .unwrap_or_else(|| panic!("signal {sig} never arrived"));
    assert_eq!(
        got[before], expect,
        "signal {sig} arrived as {}",
        got[before]
    );
}

#[test]
fn every_forwardable_signal_arrives_exactly_once() {
    let (p, f) = recorder(&[], &[]);
    let mut sent = Vec::new();
    // 1-64: 34 is glibc's SIGRTMIN, and musl (which microinit is built with) reserves 32-34 for itself, so
    // this proves microinit forwards them anyway. 32 and 33 are skipped only because this glibc helper's
    // own libc keeps them and never lets sigwaitinfo see them.
    for sig in 1..=64 {
        if matches!(
            sig,
            libc::SIGKILL | libc::SIGSTOP | libc::SIGCHLD | libc::SIGTERM | libc::SIGINT | 32 | 33
        ) {
            continue;
        }
        send_and_await(&p, &f, sig, sig);
        sent.push(sig);
    }
    // SIGINT, then SIGTERM (a second stop request goes through at once); the helper exits on TERM.
    send_and_await(&p, &f, libc::SIGINT, libc::SIGINT);
    p.signal(libc::SIGTERM);
    let (st, err) = p.wait(T);
    assert_eq!(exit_code(st), 0, "{err}");
    sent.extend([libc::SIGINT, libc::SIGTERM]);
    assert_eq!(recorded(&f), sent, "each signal exactly once, in order");
}

/// PID 1's minor page faults so far (field 10 of /proc/PID/stat).
fn minor_faults(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    after_comm.split(' ').nth(7).unwrap().parse().unwrap()
}

/// PID 1's resident file pages (RssFile), in bytes.
fn rss_file(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("RssFile:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("RssFile in /proc/PID/status");
    kib * 1024
}

#[test]
fn once_the_app_runs_pid_1_keeps_only_the_code_it_runs_mapped() {
    // Start-up maps nearly the whole binary (the kernel maps 64 KiB around each page touched); once the app
    // runs, PID 1 drops those mappings and its loop maps back only what it runs.
    let size = std::fs::metadata(bin()).unwrap().len();
    let (p, f) = recorder(&[], &[]);
    let bound = size * 3 / 4;
    let settled = wait_for(T, || (rss_file(p.host_pid) < bound).then_some(()));
    assert!(
        settled.is_some(),
        "RssFile stayed at {} bytes (binary {size} bytes, bound {bound})",
        rss_file(p.host_pid)
    );
    // Forwarding still works, and maps back only what it runs: with the steady state linked in one place
    // (scripts/build.sh), nothing at all, since the idle loop already runs in that window.
    let faults = minor_faults(p.host_pid);
    send_and_await(&p, &f, libc::SIGHUP, libc::SIGHUP);
    send_and_await(&p, &f, libc::SIGUSR1, libc::SIGUSR1);
    assert!(rss_file(p.host_pid) < bound, "{}", rss_file(p.host_pid));
    let binary = std::fs::read(bin()).unwrap();
    if binary.windows(12).any(|w| w == b".text.steady") {
        assert_eq!(
            minor_faults(p.host_pid),
            faults,
            "forwarding a signal faulted pages in: its code left the steady-state window \
             (scripts/steady-state.ld lists what the loop runs)"
        );
    }
    p.signal(libc::SIGTERM);
    let (st, err) = p.wait(T);
    assert_eq!(exit_code(st), 0, "{err}");
    assert_eq!(recorded(&f), [libc::SIGHUP, libc::SIGUSR1, libc::SIGTERM]);
}

fn run_pid1(args: &[&str]) -> (i32, String) {
    let (st, err) = Pid1::start(args, &[]).wait(T);
    (exit_code(st), err)
}

#[test]
fn the_exit_status_is_the_apps_code_or_128_plus_its_signal() {
    assert_eq!(run_pid1(&["--", "sh", "-c", "exit 7"]).0, 7);
    assert_eq!(
        run_pid1(&["--", "sh", "-c", "kill -USR1 $$"]).0,
        128 + libc::SIGUSR1
    );
    assert_eq!(run_pid1(&["-e", "3", "--", "sh", "-c", "exit 3"]).0, 0);
    assert_eq!(
        run_pid1(&["--remap-exit", "3", "--", "sh", "-c", "exit 4"]).0,
        4
    );
    let (code, err) = run_pid1(&["--", "/no/such/app"]);
    assert_eq!(code, 127);
    assert!(err.contains("/no/such/app"), "{err}");
    let (code, err) = run_pid1(&["--", "no-such-app-xyz"]);
    assert_eq!(code, 127);
    assert!(
        err.contains("no-such-app-xyz") && err.contains("PATH="),
        "{err}"
    );
    let d = tempdir("noexec");
    let f = d.join("app");
    std::fs::write(&f, "#!/bin/sh\n").unwrap();
    let (code, err) = run_pid1(&["--", f.to_str().unwrap()]);
    assert_eq!(code, 126);
    assert!(
        err.contains(f.to_str().unwrap()) && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn two_thousand_orphans_are_reaped() {
    let (p, _) = recorder(&[], &["--orphans", "2000"]);
    // Once the app is ready all 2000 grandchildren were created; none may stay a zombie.
    let settled = wait_for(T, || {
        let ps = p.processes();
        (ps.len() == 2 && ps.iter().all(|(_, st, _)| *st != 'Z')).then_some(())
    });
    assert!(
        settled.is_some(),
        "left in the namespace: {:?}",
        p.processes()
    );
    p.signal(libc::SIGTERM);
    assert_eq!(exit_code(p.wait(T).0), 0);
}

#[test]
fn orphans_of_an_nsenter_session_are_reaped() {
    let (p, _) = recorder(&[], &[]);
    // The outer subshells exit at once; the inner loops are orphaned into the namespace, i.e. to PID 1,
    // and wait for a go file so the test sees them alive before they exit.
    let go = tempdir("nsenter").join("go");
    let orphan = format!("while [ ! -e {} ]; do sleep 0.01; done", go.display());
    let script = format!("({orphan} &); ({orphan} &); ({orphan} &)");
    let st = p.nsenter().args(["sh", "-c", &script]).status().unwrap();
    assert!(st.success());
    let alive = wait_for(T, || {
        let n = p.processes().iter().filter(|(_, _, c)| c == "sh").count();
        (n == 3).then_some(())
    });
    assert!(alive.is_some(), "orphans not seen: {:?}", p.processes());
    std::fs::write(&go, "").unwrap();
    // They must vanish, not turn zombie.
    let settled = wait_for(T, || (p.processes().len() == 2).then_some(()));
    assert!(
        settled.is_some(),
        "left in the namespace: {:?}",
        p.processes()
    );
    p.signal(libc::SIGTERM);
    assert_eq!(exit_code(p.wait(T).0), 0);
}

/// The app (a shell) starts a grandchild recorder in its own process group, then becomes a recorder itself.
fn group_test(extra: &[&str]) -> (Vec<i32>, Vec<i32>) {
    let d = tempdir("group");
    let (a, g) = (d.join("app"), d.join("grand"));
    let rec = helper("sigrec");
    let script = format!(
        "{r} {g} & exec {r} {a}",
        r = rec.display(),
        g = g.display(),
        a = a.display()
    );
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["--", "sh", "-c", &script]);
    let p = Pid1::start(&args, &[]);
    wait_ready(&a);
    let grand = wait_ready(&g);
    let gpid = grand
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("pid=")
        .to_string();
    send_and_await(&p, &a, libc::SIGUSR1, libc::SIGUSR1);
    // Any group delivery happened in the same kill(2); USR2 sent now sorts after a pending USR1.
    let st = p.nsenter().args(["kill", "-USR2", &gpid]).status().unwrap();
    assert!(st.success());
    wait_for(T, || recorded(&g).contains(&libc::SIGUSR2).then_some(()))
        .expect("grandchild got USR2");
    let (app, grand) = (recorded(&a), recorded(&g));
    p.signal(libc::SIGKILL);
    (app, grand)
}

#[test]
fn signals_reach_grandchildren_only_with_the_group_flag() {
    let (app, grand) = group_test(&["-g"]);
    assert_eq!(app, vec![libc::SIGUSR1]);
    assert_eq!(grand, vec![libc::SIGUSR1, libc::SIGUSR2]);
    let (app, grand) = group_test(&[]);
    assert_eq!(app, vec![libc::SIGUSR1]);
    assert_eq!(grand, vec![libc::SIGUSR2]);
}

#[test]
fn a_rewritten_signal_arrives_as_its_rewrite_and_a_dropped_one_not_at_all() {
    let (p, f) = recorder(&["--rewrite", "USR1:USR2", "-r", "HUP:0"], &[]);
    send_and_await(&p, &f, libc::SIGUSR1, libc::SIGUSR2);
    // HUP sorts before QUIT: had it been forwarded it would be recorded first.
    p.signal(libc::SIGHUP);
    send_and_await(&p, &f, libc::SIGQUIT, libc::SIGQUIT);
    assert_eq!(recorded(&f), vec![libc::SIGUSR2, libc::SIGQUIT]);
    p.signal(libc::SIGTERM);
    assert_eq!(exit_code(p.wait(T).0), 0);
}

/// The orchestrator owns the stop deadline (`docker stop -t`, Kubernetes' grace period): microinit kills
/// an app it forwarded a stop to only when `--stop-timeout` (or its env twin) asks for it.
#[test]
fn the_opt_in_stop_timeout_kills_an_app_that_ignores_sigterm() {
    let f = tempdir("stop-timeout").join("sig");
    let rec = helper("sigrec");
    let p = Pid1::start(
        &[
            "--",
            rec.to_str().unwrap(),
            f.to_str().unwrap(),
            "--ignore-term",
        ],
        &[("MICROINIT_STOP_TIMEOUT", "300ms")],
    );
    wait_ready(&f);
    p.signal(libc::SIGTERM);
    let (st, err) = p.wait(T);
    assert_eq!(exit_code(st), 128 + libc::SIGKILL, "{err}");
    assert_eq!(recorded(&f), vec![libc::SIGTERM]);
    assert!(
        err.contains("--stop-timeout"),
        "the SIGKILL is announced: {err}"
    );
}

#[test]
fn leftovers_get_sigterm_when_the_app_exits_and_sigkill_after_the_grace() {
    let d = tempdir("leftover");
    let (l1, l2) = (d.join("l1"), d.join("l2"));
    let rec = helper("sigrec");
    // One leftover exits on TERM, one ignores it and needs the SIGKILL at the grace deadline.
    let script = format!(
        "{r} {l1} & {r} {l2} --ignore-term & until [ -e {l1}.ready ] && [ -e {l2}.ready ]; do sleep 0.01; done; exit 5",
        r = rec.display(),
        l1 = l1.display(),
        l2 = l2.display()
    );
    let (code, err) = run_pid1(&["--grace", "500ms", "--", "sh", "-c", &script]);
    assert_eq!(code, 5, "{err}");
    assert_eq!(recorded(&l1), vec![libc::SIGTERM]);
    assert_eq!(recorded(&l2), vec![libc::SIGTERM]);
}

#[test]
fn outside_pid_1_it_reaps_orphans_as_a_child_subreaper() {
    let d = tempdir("subreaper");
    let f = d.join("orphan");
    // The subshell exits at once; its sleep is orphaned and must be reparented to microinit, not to the
    // host's init, and reaped when it exits.
    let script = format!("(sleep 0.3 & echo $! > {f}); exec sleep 1", f = f.display());
    let mut child = Command::new(bin())
        .args(["--", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let orphan: i32 =
        wait_for(T, || std::fs::read_to_string(&f).ok()?.trim().parse().ok()).unwrap();
    let ppid = wait_for(T, || {
        let s = std::fs::read_to_string(format!("/proc/{orphan}/stat")).ok()?;
        let ppid: u32 = s[s.rfind(')')? + 2..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid != 0).then_some(ppid)
    });
    if let Some(ppid) = ppid {
        // Before the subshell exits the parent is the subshell; after, it must be microinit.
        let reparented = wait_for(T, || {
            let s = std::fs::read_to_string(format!("/proc/{orphan}/stat")).ok()?;
            let ppid: u32 = s[s.rfind(')')? + 2..]
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == child.id()).then_some(())
        });
        assert!(
            reparented.is_some() || !std::path::Path::new(&format!("/proc/{orphan}")).exists(),
            "ppid {ppid}"
        );
    }
    assert!(child.wait().unwrap().success());
    // Reaped: no /proc entry (a zombie keeps one).
    assert!(
        !std::path::Path::new(&format!("/proc/{orphan}")).exists(),
        "orphan {orphan} left as zombie"
    );
}

#[test]
fn the_app_gets_the_terminal_foreground_and_ctrl_c_reaches_it_once() {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    let d = tempdir("tty");
    let f = d.join("sig");
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = pty.slave.as_raw_fd();
    let mut cmd = Command::new("unshare");
    // setsid --ctty: PID 1 leads a session with the terminal as its controlling TTY, as `docker run -t` does.
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "setsid",
        "--ctty",
    ])
    .arg(bin())
    .args([
        "--",
        helper("sigrec").to_str().unwrap(),
        f.to_str().unwrap(),
    ]);
    unsafe {
        cmd.stdin(Stdio::from_raw_fd(libc::dup(slave)));
        cmd.stdout(Stdio::from_raw_fd(libc::dup(slave)));
    }
    let p = Pid1::spawn(cmd);
    let ready = wait_ready(&f);
    assert!(
        ready.contains("fg=1"),
        "app does not own the terminal's foreground: {ready}"
    );
    let mut master = std::fs::File::from(pty.master);
    // Ctrl-C: the kernel sends SIGINT to the foreground group, i.e. to the app, exactly once.
    master.write_all(&[0x03]).unwrap();
    wait_for(T, || recorded(&f).contains(&libc::SIGINT).then_some(()))
        .expect("Ctrl-C reached the app");
    p.signal(libc::SIGTERM);
    let (st, _) = p.wait(T);
    assert_eq!(exit_code(st), 0);
    assert_eq!(recorded(&f), vec![libc::SIGINT, libc::SIGTERM]);
}

fn dialect_link(name: &str) -> std::path::PathBuf {
    let d = tempdir(name);
    let l = d.join(name);
    symlink(bin(), &l).unwrap();
    l
}

#[test]
fn named_tini_it_takes_tinis_flags_and_forwards_to_the_group() {
    let tini = dialect_link("tini");
    let out = Command::new(&tini).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("tini version"));
    let st = Command::new(&tini)
        .args(["-s", "-e", "3", "--", "sh", "-c", "exit 3"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0));
    let (p, f) = recorder_under(&tini, &["-g", "-w"], &[]);
    send_and_await(&p, &f, libc::SIGHUP, libc::SIGHUP);
    p.signal(libc::SIGTERM);
    assert_eq!(exit_code(p.wait(T).0), 0);
}

#[test]
fn named_dumb_init_it_takes_dumb_inits_rewrites_and_single_child_mode() {
    let di = dialect_link("dumb-init");
    let (p, f) = recorder_under(&di, &["-r", "10:12"], &[]);
    send_and_await(&p, &f, libc::SIGUSR1, libc::SIGUSR2);
    p.signal(libc::SIGTERM);
    assert_eq!(exit_code(p.wait(T).0), 0);
    let st = Command::new(&di)
        .args(["--single-child", "sh", "-c", "exit 4"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(4));
}

#[test]
fn bad_input_is_reported_in_one_line_with_exit_2() {
    for args in [
        &["--no-such-flag", "true"][..],
        &[],
        &["--"],
        &["-p", "SIGBOGUS", "true"],
        &["--rewrite", "TERM:NOPE", "true"],
        &["--grace", "soon", "true"],
        &["--restart", "sometimes", "true"],
    ] {
        let out = Command::new(bin()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("microinit: "), "{err}");
    }
}

#[test]
fn an_empty_command_name_is_not_found_and_exits_127() {
    let out = Command::new(bin()).arg("").output().unwrap();
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn restart_policy_backs_off_and_honours_max() {
    let d = tempdir("restart");
    let f = d.join("runs");
    // Each run records when it started (ns) and exits with 10 + its number: the last status must win.
    let script = format!(
        "date +%s%N >> {f}; exit $((10 + $(wc -l < {f})))",
        f = f.display()
    );
    let (code, err) = run_pid1(&[
        "--restart",
        "on-failure",
        "--max-restarts",
        "3",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let starts: Vec<u128> = std::fs::read_to_string(&f)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().expect("date +%s%N"))
        .collect();
    assert_eq!(starts.len(), 4, "first run + 3 restarts: {err}");
    assert_eq!(code, 14, "the last run's status: {err}");
    assert!(err.contains("giving up after 3 restarts"), "{err}");
    // Exponential backoff (0.5 s, 1 s, 2 s). Timers only ever fire late, so each pause is at least its
    // delay; a loaded machine can stretch a pause but not shrink one, hence lower bounds plus one margin
    // that a constant delay cannot meet.
    let gaps: Vec<f64> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e9)
        .collect();
    for (gap, min) in gaps.iter().zip([0.45, 0.95, 1.95]) {
        assert!(*gap >= min, "a backoff shorter than scheduled: {gaps:?}");
    }
    assert!(gaps[2] > gaps[0] + 0.75, "backoff does not grow: {gaps:?}");
    // on-failure does not restart a clean exit.
    let (code, _) = run_pid1(&[
        "--restart",
        "on-failure",
        "--",
        "sh",
        "-c",
        &format!("echo run >> {}.ok", f.display()),
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(format!("{}.ok", f.display()))
            .unwrap()
            .lines()
            .count(),
        1
    );
}

#[test]
fn hooks_run_in_order_and_failures_are_reported() {
    let d = tempdir("hooks");
    let log = d.join("log");
    let l = log.display();
    let (code, err) = run_pid1(&[
        "--pre-start",
        &format!("echo pre-start >> {l}"),
        "--post-stop",
        &format!("echo post-stop >> {l}"),
        "--",
        "sh",
        "-c",
        &format!("echo app >> {l}"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pre-start\napp\npost-stop\n"
    );
    // A failing pre-start hook: the app never starts, its status is ours.
    let (code, err) = run_pid1(&[
        "--pre-start",
        "exit 9",
        "--",
        "sh",
        "-c",
        &format!("echo app >> {l}.2"),
    ]);
    assert_eq!(code, 9);
    assert!(err.contains("pre-start hook failed"), "{err}");
    assert!(!std::path::Path::new(&format!("{l}.2")).exists());
    // A hook past its timeout is killed and reported; the app still runs.
    let (code, err) = run_pid1(&[
        "--hook-timeout",
        "200ms",
        "--post-stop",
        "sleep 30",
        "--",
        "sh",
        "-c",
        "exit 0",
    ]);
    assert_eq!(code, 0);
    assert!(err.contains("post-stop hook failed: timed out"), "{err}");

    // Pre-stop: a failing one and one past its timeout are reported, and the app still gets its SIGTERM.
    for (hook, report) in [
        ("exit 4", "pre-stop hook failed: exit code 4"),
        ("sleep 30", "pre-stop hook failed: timed out after 200ms"),
    ] {
        let f = d.join(format!("sig-{}", hook.replace(' ', "-")));
        let p = Pid1::start(
            &[
                "--hook-timeout",
                "200ms",
                "--pre-stop",
                hook,
                "--",
                helper("sigrec").to_str().unwrap(),
                f.to_str().unwrap(),
            ],
            &[],
        );
        wait_ready(&f);
        p.signal(libc::SIGTERM);
        let (st, err) = p.wait(T);
        assert_eq!(exit_code(st), 0, "{err}");
        assert!(err.contains(report), "{hook}: {err}");
        assert_eq!(recorded(&f), vec![libc::SIGTERM], "{hook}");
    }
}

#[test]
fn app_gets_the_mask_and_dispositions_microinit_was_started_with() {
    use std::os::unix::process::CommandExt;
    let status_of = |via_microinit: bool| {
        let mut cmd = if via_microinit {
            let mut c = Command::new(bin());
            c.arg("--");
            c
        } else {
            Command::new("env")
        };
        cmd.args(["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]);
        // Started with SIGUSR1 ignored and SIGHUP blocked (as from a shell's `trap '' USR1`, or nohup).
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGUSR1, libc::SIG_IGN);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGHUP);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        String::from_utf8(cmd.output().unwrap().stdout).unwrap()
    };
    let direct = status_of(false);
    assert!(direct.contains("SigBlk:\t0000000000000001"), "{direct}");
    // microinit blocks everything and Rust's runtime ignores SIGPIPE inside it: the app sees neither.
    assert_eq!(status_of(true), direct);
}

#[test]
fn sigterm_during_the_pre_start_hook_exits_without_starting_the_app() {
    let d = tempdir("prestart-term");
    let app_ran = d.join("app");
    let p = Pid1::start(
        &[
            "--pre-start",
            "exec sleep 30",
            "--",
            "sh",
            "-c",
            &format!("touch {}", app_ran.display()),
        ],
        &[],
    );
    let hook_running = wait_for(T, || {
        p.processes()
            .iter()
            .any(|(_, _, c)| c == "sleep")
            .then_some(())
    });
    assert!(hook_running.is_some(), "{:?}", p.processes());
    p.signal(libc::SIGTERM);
    let (st, err) = p.wait(T);
    assert_eq!(exit_code(st), 128 + libc::SIGTERM, "{err}");
    assert!(
        !app_ran.exists(),
        "the app must not start after a stop request"
    );
    assert!(
        !err.contains("hook failed"),
        "our own sweep is not a hook failure: {err}"
    );
}
