//! Starting children with PID-1 hygiene, and signalling what we started.
//!
//! Owns: fork/exec (session or process group, terminal hand-over, parent-death signal, the original signal
//! mask restored between fork and exec, exec errors reported back through a close-on-exec pipe that the
//! event loop polls), and the enumeration of what is left to signal on the way out. Does not own: waiting for children (`reaper`) or
//! deciding when to spawn (`event_loop`).

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::config::Isolation;
use crate::init::signals::OriginalMask;

extern "C" {
    /// The C library's environment (what execv passes on).
    static environ: *const *const libc::c_char;
}

/// One child to start.
pub struct SpawnSpec<'a> {
    /// The resolved executable (see `which::resolve`).
    pub path: &'a Path,
    /// argv, argv[0] included.
    pub argv: &'a [OsString],
    pub isolation: Isolation,
    /// Make the child's group the terminal's foreground group (stdin is a TTY and this is the app).
    pub take_tty: bool,
    pub pdeathsig: Option<i32>,
    /// Both stdout and stderr go here (health command output); None keeps ours.
    pub output: Option<RawFd>,
    pub mask: OriginalMask,
    /// Signals 1-31 back to their default action, inherited ignores included (dumb-init's child).
    pub default_dispositions: bool,
    /// `--ready fd:N`: (the write end of the notification pipe, N): the child gets it as fd N.
    pub notify_fd: Option<(RawFd, i32)>,
    /// Variables added to (or replacing in) microinit's environment for this child; usually empty.
    pub extra_env: &'a [(String, String)],
}

/// Why a child could not be started.
#[derive(Debug)]
pub enum SpawnError {
    /// fork/pipe failed: microinit's own failure (exit 125).
    Fork(Errno),
    /// exec failed in the child: 127 for ENOENT, 126 otherwise (as shells do).
    Exec { path: PathBuf, errno: Errno },
    /// An argument held a NUL byte.
    BadArgument,
}

impl SpawnError {
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::Fork(_) => 125,
            SpawnError::Exec {
                errno: Errno::ENOENT,
                ..
            } => 127,
            SpawnError::Exec { .. } | SpawnError::BadArgument => 126,
        }
    }
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Fork(e) => write!(f, "cannot fork: {} (out of processes or memory?)", e.desc()),
            SpawnError::Exec { path, errno: Errno::ENOENT } => write!(
                f,
                "cannot execute {}: no such file or directory (a missing ELF interpreter or #! interpreter also gives this; run `microinit check {}`)",
                path.display(),
                path.display()
            ),
            SpawnError::Exec { path, errno } => write!(f, "cannot execute {}: {}", path.display(), errno.desc()),
            SpawnError::BadArgument => write!(f, "cannot execute: an argument contains a NUL byte"),
        }
    }
}

fn cstr(b: &[u8]) -> Result<CString, SpawnError> {
    CString::new(b).map_err(|_| SpawnError::BadArgument)
}

/// Remove `names` from microinit's own environment, which every child (app, hooks, health command) inherits
/// through exec. Call before any thread exists: setenv/unsetenv race with every other thread's getenv.
pub fn withhold_from_children(names: &[&str]) {
    for name in names {
        std::env::remove_var(name);
    }
}

/// A forked child whose exec has not been confirmed yet.
pub struct Started {
    pub pid: i32,
    /// Non-blocking, close-on-exec: reads EOF once exec succeeded, or the child's errno when it failed.
    /// The event loop polls it (`exec_outcome`): a child stopped before its exec (SIGSTOP from another
    /// process) must not hang PID 1 in a read.
    pub exec_pipe: OwnedFd,
}

/// What the exec-result pipe says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    /// Nothing yet: the child has not reached exec.
    Pending,
    /// The pipe closed on exec: the program runs.
    Execed,
    Failed(Errno),
}

/// Fork; the exec's outcome comes through `Started::exec_pipe`. Errors here are microinit's own (fork,
/// pipe, an argument with a NUL byte): nothing was started.
pub fn spawn(spec: &SpawnSpec<'_>) -> Result<Started, SpawnError> {
    // Everything the child needs is allocated before fork: after fork only async-signal-safe calls are
    // allowed, since the Consul worker thread may hold the allocator's lock at the moment of fork.
    let path = cstr(spec.path.as_os_str().as_bytes())?;
    let args: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // With extra variables, the child's environment is built here (no setenv: other threads may read it).
    let env: Vec<CString> = if spec.extra_env.is_empty() {
        Vec::new()
    } else {
        std::env::vars_os()
            .filter(|(k, _)| {
                !spec
                    .extra_env
                    .iter()
                    .any(|(x, _)| k.as_bytes() == x.as_bytes())
            })
            .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
            .chain(
                spec.extra_env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}").into_bytes()),
            )
            .map(|kv| cstr(&kv))
            .collect::<Result<_, _>>()?
    };
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: reading the process's environ pointer; it is only replaced by setenv, which nothing calls.
    let envp_ptr = if env.is_empty() {
        unsafe { environ }
    } else {
        envp.as_ptr()
    };
    // execvp's fallback for a file without #! or ELF magic (ENOEXEC): run it with /bin/sh.
    let sh = c"/bin/sh";
    let mut sh_argv: Vec<*const libc::c_char> = vec![sh.as_ptr(), path.as_ptr()];
    sh_argv.extend(args.iter().skip(1).map(|a| a.as_ptr()));
    sh_argv.push(std::ptr::null());

    // Both ends non-blocking from the start (one pipe2, no fcntl after it): the child's end takes one write
    // of 4 bytes into an empty pipe, which never blocks, and is gone at exec anyway.
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(SpawnError::Fork)?;
    let mask = spec.mask.0;
    // The clone(2) system call rather than the C library's fork(): every signal is blocked already (the
    // caller is PID 1's loop), so fork()'s blocking and restoring of the mask around the call (4 syscalls)
    // buys nothing, nor do its locks: the child touches no C library state (no malloc, no stdio), only
    // system calls on memory prepared above. SIGCHLD as the exit signal, no other flag: a plain fork.
    // SAFETY: the child branch only calls async-signal-safe functions on memory prepared above, then
    // execs or _exits.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) } as libc::pid_t;
    if pid < 0 {
        return Err(SpawnError::Fork(Errno::last()));
    }
    if pid == 0 {
        unsafe {
            child(
                spec,
                err_w.as_raw_fd(),
                &mask,
                path.as_ptr(),
                &argv,
                &sh_argv,
                envp_ptr,
            )
        }
    }
    drop(err_w);
    Ok(Started {
        pid,
        exec_pipe: err_r,
    })
}

/// The child side of `spawn`; never returns.
unsafe fn child(
    spec: &SpawnSpec<'_>,
    err_w: RawFd,
    mask: &libc::sigset_t,
    path: *const libc::c_char,
    argv: &[*const libc::c_char],
    sh_argv: &[*const libc::c_char],
    envp: *const *const libc::c_char,
) -> ! {
    match spec.isolation {
        Isolation::Session => {
            libc::setsid();
            if spec.take_tty {
                // Make the terminal ours: the new session has none. Fails harmlessly when another session
                // still holds it (microinit was not its session leader).
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
        }
        Isolation::ProcessGroup => {
            libc::setpgid(0, 0);
            if spec.take_tty {
                // Every signal is still blocked here, so tcsetpgrp from what is for a moment a background
                // group does not stop us with SIGTTOU.
                libc::tcsetpgrp(0, libc::getpid());
            }
        }
        Isolation::None => {}
    }
    if let Some(sig) = spec.pdeathsig {
        libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0);
    }
    if let Some(fd) = spec.output {
        libc::dup2(fd, 1);
        libc::dup2(fd, 2);
    }
    if let Some((fd, n)) = spec.notify_fd {
        // dup2 gives fd N without close-on-exec; when the pipe already is fd N, clear the flag instead.
        if fd == n {
            libc::fcntl(fd, libc::F_SETFD, 0);
        } else {
            libc::dup2(fd, n);
        }
    }
    // Rust's runtime ignores SIGPIPE before main, and an ignored disposition survives exec: give the app
    // the default back, as std::process::Command does (handlers need nothing: exec resets them).
    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    if spec.default_dispositions {
        for s in 1..=31 {
            libc::signal(s, libc::SIG_DFL);
        }
    }
    // The app gets the mask microinit was started with, not our all-blocked one (which exec keeps).
    libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
    libc::execve(path, argv.as_ptr(), envp);
    let mut errno = *libc::__errno_location();
    if errno == libc::ENOEXEC {
        libc::execve(sh_argv[0], sh_argv.as_ptr(), envp);
        errno = *libc::__errno_location();
    }
    let bytes = errno.to_ne_bytes();
    libc::write(err_w, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(if errno == libc::ENOENT { 127 } else { 126 });
}

/// One non-blocking read of the exec-result pipe. The child writes its errno with one write(2) of 4 bytes
/// (atomic on a pipe), so a read sees all of it or nothing.
pub fn exec_outcome(exec_pipe: &OwnedFd) -> ExecOutcome {
    let mut buf = [0u8; 4];
    loop {
        return match nix::unistd::read(exec_pipe.as_raw_fd(), &mut buf) {
            Ok(0) => ExecOutcome::Execed,
            Ok(4) => ExecOutcome::Failed(Errno::from_raw(i32::from_ne_bytes(buf))),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => ExecOutcome::Pending,
            // A short read or an error cannot come from our child; treat the program as started.
            Ok(_) | Err(_) => ExecOutcome::Execed,
        };
    }
}

/// Send `sig` to `pid`; ESRCH (already gone) is not an error worth reporting.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let r = unsafe { libc::kill(pid, sig) };
    if r != 0 && Errno::last() != Errno::ESRCH {
        log::warn!(
            "kill({pid}, {}) failed: {}",
            crate::init::signals::signal_name(sig),
            Errno::last().desc()
        );
    }
}

/// Whether we have any child at all (running or a zombie, orphans reparented to us included). WNOWAIT: the
/// status stays for the reaper, which alone collects it; ECHILD means none.
pub fn has_children() -> bool {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid fills `info`, which outlives the call; no pointer is kept.
    let r = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    !(r == -1 && Errno::last() == Errno::ECHILD)
}

/// Our direct children according to /proc (orphans reparented to us included).
///
/// Used only when we are a subreaper and not PID 1: kill(-1) would then reach the whole host.
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat_ppid(*pid) == Some(parent))
        .collect()
}

/// The parent pid from /proc/PID/stat, read with one read(2) into a stack buffer.
fn stat_ppid(pid: i32) -> Option<i32> {
    use std::io::Read;
    let mut buf = [0u8; 512];
    let n = std::fs::File::open(format!("/proc/{pid}/stat"))
        .ok()?
        .read(&mut buf)
        .ok()?;
    let s = &buf[..n];
    // comm may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &s[s.iter().rposition(|b| *b == b')')? + 1..];
    let field = rest
        .split(|b| *b == b' ')
        .filter(|f| !f.is_empty())
        .nth(1)?;
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// True when fd 0 is a terminal.
pub fn stdin_is_tty() -> bool {
    // Not std::io::stdin(): that sets up a 28 KiB buffered reader (an mmap PID 1 keeps) just to get fd 0.
    // SAFETY: isatty only reads the fd's state.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}
