//! Shared test helpers: the static binary, compiled C helpers, PID namespaces, polling with deadlines.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// CARGO_TARGET_DIR, or <manifest>/target.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// The static musl release binary (scripts/test.sh builds it), or MICROINIT_BIN.
pub fn bin() -> PathBuf {
    let p = std::env::var_os("MICROINIT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("x86_64-unknown-linux-musl/release/microinit"));
    assert!(
        p.exists(),
        "{} missing: run scripts/test.sh, or `cargo build --release --target x86_64-unknown-linux-musl` first",
        p.display()
    );
    p
}

/// A C helper from tests/helpers/NAME.c, compiled statically once per test run.
pub fn helper(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/helpers/{name}.c"));
    let dir = target_dir().join("test-helpers");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    let fresh = |o: &Path| {
        let (Ok(a), Ok(b)) = (std::fs::metadata(o), std::fs::metadata(&src)) else {
            return false;
        };
        a.modified().unwrap() >= b.modified().unwrap()
    };
    if !fresh(&out) {
        // Build under a unique name and rename: test threads may race here.
        let tmp = dir.join(format!("{name}.{}.{}", std::process::id(), unique()));
        let st = Command::new("cc")
            .args(["-O2", "-static", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success(), "cc failed for {}", src.display());
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

fn unique() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// A fresh empty directory under /tmp.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "microinit-{tag}-{}-{}",
        std::process::id(),
        unique()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Poll `f` every few ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(Duration::from_millis(5), timeout, f)
}

/// Poll `f` every `interval` until it returns Some or `timeout` passes.
pub fn poll_every<T>(
    interval: Duration,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// microinit running as PID 1 of a new PID namespace (`unshare --pid --fork --mount-proc`).
pub struct Pid1 {
    pub child: Child,
    /// microinit's pid as the host sees it (the child of `unshare`).
    pub host_pid: i32,
}

impl Pid1 {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Pid1 {
        Pid1::start_with(&bin(), args, env)
    }

    /// `init ARGS` as PID 1: microinit under another name (tini, dumb-init links).
    pub fn start_with(init: &Path, args: &[&str], env: &[(&str, &str)]) -> Pid1 {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(init)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        Pid1::spawn(cmd)
    }

    pub fn spawn(mut cmd: Command) -> Pid1 {
        // A private control socket: the default /run/microinit.sock is shared by every test on the host.
        if !cmd.get_envs().any(|(k, _)| k == "MICROINIT_SOCKET") {
            cmd.env("MICROINIT_SOCKET", tempdir("ctl").join("microinit.sock"));
        }
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("unshare");
        let upid = child.id();
        // 0 when microinit already exited (a fast app): nothing left to signal.
        let host_pid = wait_for(Duration::from_secs(10), || {
            let s = std::fs::read_to_string(format!("/proc/{upid}/task/{upid}/children")).ok();
            if let Some(pid) = s.and_then(|s| s.split_whitespace().next()?.parse().ok()) {
                return Some(pid);
            }
            child.try_wait().ok().flatten().map(|_| 0)
        })
        .expect("microinit did not start under unshare");
        Pid1 { child, host_pid }
    }

    pub fn signal(&self, sig: i32) {
        assert_eq!(
            unsafe { libc::kill(self.host_pid, sig) },
            0,
            "kill microinit"
        );
    }

    /// Wait for exit with a deadline; kills it and fails when it does not come.
    pub fn wait(mut self, timeout: Duration) -> (ExitStatus, String) {
        let st = wait_for(timeout, || self.child.try_wait().unwrap());
        let Some(st) = st else {
            let _ = self.child.kill();
            panic!("microinit did not exit within {timeout:?}");
        };
        let mut err = String::new();
        use std::io::Read;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (st, err)
    }

    /// A command run inside the namespace (the `docker exec` analogue).
    pub fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.host_pid.to_string(), "-p", "-m", "--"]);
        c
    }

    /// Processes of the namespace as (host pid, state, comm), read from the host's /proc.
    pub fn processes(&self) -> Vec<(i32, char, String)> {
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", self.host_pid)).ok();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() != ns {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let state = stat[close + 2..].chars().next().unwrap_or('?');
            out.push((pid, state, stat[open + 1..close].to_string()));
        }
        out
    }
}

impl Drop for Pid1 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The signals a sigrec helper recorded in FILE.
pub fn recorded(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Wait until sigrec wrote FILE.ready; returns its contents.
pub fn wait_ready(file: &Path) -> String {
    let ready = PathBuf::from(format!("{}.ready", file.display()));
    wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&ready).ok()
    })
    .expect("helper never became ready")
}

pub fn exit_code(st: ExitStatus) -> i32 {
    st.code()
        .unwrap_or_else(|| panic!("exited by signal: {st:?}"))
}
