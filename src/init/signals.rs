//! Signal names, the init's signal mask, and the signalfd the main loop reads.
//!
//! Owns: parsing/naming signals, blocking every signal before any thread exists, and handing the original
//! mask to children. Does not own: what a signal means to the app (`event_loop` decides forwarding).

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::{SigSet, SigmaskHow};

const NAMES: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// The first real-time signal as glibc (and so most apps, and procps' `kill -l`) numbers it. musl says 35
/// and keeps 32-34 for itself, but the app may be a glibc program: microinit forwards 32-64 alike.
pub fn rtmin() -> i32 {
    34
}

/// The kernel's last signal (_NSIG - 1).
pub fn rtmax() -> i32 {
    64
}

/// Every signal 1-64. libc's sigfillset leaves out the ones the libc reserves (musl: 32-34), which would
/// leave them unblocked and, for PID 1, silently discarded instead of forwarded.
fn every_signal() -> SigSet {
    every_signal_but(&[])
}

/// Every signal 1-64 but `except`.
fn every_signal_but(except: &[i32]) -> SigSet {
    // SAFETY: an all-zero sigset_t is valid; the kernel's mask is its first 64 bits.
    let mut raw: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe { *(&mut raw as *mut libc::sigset_t).cast::<u64>() = !signal_bits(except) };
    // SAFETY: raw is initialised above.
    unsafe { SigSet::from_sigset_t_unchecked(raw) }
}

/// "TERM", "SIGTERM", "term", "15", "RTMIN+3", "SIGRTMAX-1" → the number. The error says what is accepted.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let bad = || {
        format!(
            "unknown signal {s:?}: use a name like TERM or SIGHUP, a number 1-{}, or RTMIN+N",
            rtmax()
        )
    };
    let up = s.trim().to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Ok(n) = name.parse::<i32>() {
        return if (1..=rtmax()).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    if let Some(i) = NAMES.iter().position(|n| *n == name) {
        return Ok(i as i32 + 1);
    }
    // Aliases the kernel headers define for the same numbers.
    match name {
        "IOT" => return Ok(libc::SIGABRT),
        "POLL" => return Ok(libc::SIGIO),
        "CLD" => return Ok(libc::SIGCHLD),
        _ => {}
    }
    let rt = |base: i32, rest: &str, sign: i32| -> Result<i32, String> {
        let off = if rest.is_empty() {
            0
        } else {
            rest.parse::<i32>().map_err(|_| bad())?
        };
        let n = base + sign * off;
        if (rtmin()..=rtmax()).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        }
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(rtmin(), rest.strip_prefix('+').unwrap_or(rest), 1);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(rtmax(), rest.strip_prefix('-').unwrap_or(rest), -1);
    }
    Err(bad())
}

/// "SIGTERM", "SIGRTMIN+3", or the number for anything unnamed.
pub fn signal_name(sig: i32) -> String {
    if (1..=31).contains(&sig) {
        format!("SIG{}", NAMES[sig as usize - 1])
    } else if (rtmin()..=rtmax()).contains(&sig) {
        format!("SIGRTMIN+{}", sig - rtmin())
    } else if (32..rtmin()).contains(&sig) {
        format!("SIG{sig}")
    } else {
        sig.to_string()
    }
}

/// The signal mask microinit was started with; children get it back between fork and exec.
#[derive(Clone, Copy)]
pub struct OriginalMask(pub libc::sigset_t);

impl OriginalMask {
    /// Nothing blocked (dumb-init unblocks every signal in its child).
    pub fn empty() -> OriginalMask {
        OriginalMask(*SigSet::empty().as_ref())
    }
}

/// Block every signal in this thread (and so in every thread spawned later, which inherit the mask).
///
/// Must run before any thread exists: a thread created earlier would keep an open mask and the kernel would
/// deliver process-directed signals to it with their default action (e.g. SIGTERM killing PID 1's worker).
pub fn block_all() -> nix::Result<OriginalMask> {
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&every_signal()),
        Some(&mut old),
    )?;
    Ok(OriginalMask(*old.as_ref()))
}

/// Unblock `sigs` and give them their default action again (a dialect policy: tini leaves its synchronous
/// signals alone). Rust's runtime installed SEGV/BUS handlers for stack overflows; those go too.
pub fn leave_at_default(sigs: &[i32]) {
    if sigs.is_empty() {
        return;
    }
    for &s in sigs {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(s) {
            // SAFETY: SIG_DFL is always a valid disposition. (32-64 were never given another one.)
            unsafe { libc::signal(sig as i32, libc::SIG_DFL) };
        }
    }
    let set = signal_bits(sigs);
    // The raw syscall: musl's sigprocmask refuses to touch 32-34 (glibc's own 32 and 33 included).
    // SAFETY: set is 8 valid bytes, the old mask is not asked for.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_UNBLOCK,
            &set as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
}

/// The kernel's 64-bit signal mask with `sigs` set.
fn signal_bits(sigs: &[i32]) -> u64 {
    sigs.iter()
        .filter(|s| (1..=64).contains(*s))
        .fold(0u64, |m, s| m | 1u64 << (s - 1))
}

/// The non-blocking signalfd over every signal, and a blocking twin over the same queue.
pub struct Signals {
    fd: OwnedFd,
    /// Blocking: the idle loop sleeps in read(2) on it (`wait_batch`).
    wait_fd: OwnedFd,
}

/// signalfd4 over every signal.
fn open_signalfd(flags: libc::c_int, except: &[i32]) -> nix::Result<OwnedFd> {
    // A signal left at its default action must stay out: a signalfd read would dequeue it before the
    // kernel could act on it.
    let set = every_signal_but(except);
    // The raw syscall: musl's signalfd() wrapper drops 32-34 from the mask, so they would stay pending
    // unread (and unforwarded) forever.
    // SAFETY: set points to a valid sigset_t of at least 8 bytes; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            set.as_ref() as *const libc::sigset_t,
            8usize,
            flags,
        )
    };
    if fd < 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Signals read per wakeup. The kernel dequeues the lowest-numbered pending signal first, so a stop request
/// (SIGTERM, SIGINT, any standard signal) pending behind tens of thousands of queued real-time signals comes
/// out in the next read: bounding the batch bounds how long it waits for the current one to be forwarded
/// (eight forwards, a few µs each), and lets the loop look at its other fds between batches. Real-time
/// signals are still all read, once each, in their queue's order.
pub const BATCH: usize = 8;

const RECORD: usize = std::mem::size_of::<libc::signalfd_siginfo>();

/// Up to `BATCH` signals from one read(2), in the kernel's order; on the stack, so the forwarding path does
/// not allocate. Only what the loop uses of each record is kept (12 of 128 bytes), and the read buffer is not
/// zeroed first: zeroing and returning the 1 KiB of records was ~2 000 instructions of every wakeup.
pub struct Batch {
    /// The first `len` are written.
    items: MaybeUninit<[Received; BATCH]>,
    len: usize,
}

impl Batch {
    /// One read(2) of `fd` (EAGAIN or an error: an empty batch).
    fn read(fd: RawFd) -> Batch {
        let mut buf = MaybeUninit::<[libc::signalfd_siginfo; BATCH]>::uninit();
        let n = loop {
            // SAFETY: read(2) writes at most the buffer's size into it.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), RECORD * BATCH) };
            if n >= 0 || nix::errno::Errno::last() != nix::errno::Errno::EINTR {
                break n;
            }
        };
        // A signalfd returns whole records only.
        let len = usize::try_from(n).map_or(0, |n| n / RECORD);
        // SAFETY: the first `len` records were written by the kernel.
        let records: &[libc::signalfd_siginfo] =
            unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), len) };
        let mut b = Batch {
            items: MaybeUninit::uninit(),
            len,
        };
        let items = b.items.as_mut_ptr().cast::<Received>();
        for (i, info) in records.iter().enumerate() {
            // SAFETY: i < len <= BATCH: inside the array.
            unsafe {
                items.add(i).write(Received {
                    signo: info.ssi_signo as i32,
                    code: info.ssi_code,
                    fd: info.ssi_fd,
                })
            };
        }
        b
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Received> + '_ {
        // SAFETY: the first `len` items were written by `read`.
        let items =
            unsafe { std::slice::from_raw_parts(self.items.as_ptr().cast::<Received>(), self.len) };
        items.iter().copied()
    }
}

impl Signals {
    /// Over every signal but `except` (those left at their default action, see `leave_at_default`).
    pub fn open(except: &[i32]) -> nix::Result<Signals> {
        Ok(Signals {
            fd: open_signalfd(libc::SFD_NONBLOCK | libc::SFD_CLOEXEC, except)?,
            wait_fd: open_signalfd(libc::SFD_CLOEXEC, except)?,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The next batch of pending signals; never blocks (empty when none is pending). Standard signals
    /// coalesce in the kernel (one pending instance each); real-time signals queue, so each arrives here once
    /// per send. A full batch means more may be pending: the signalfd stays readable for the next wait.
    pub fn next_batch(&mut self) -> Batch {
        Batch::read(self.fd.as_raw_fd())
    }

    /// Like `next_batch`, but first sleeps until at least one signal is pending: the idle wait, one read(2)
    /// instead of poll(2) + read(2), which costs a few µs on the signal-forwarding path (scripts/bench.sh).
    pub fn wait_batch(&mut self) -> Batch {
        Batch::read(self.wait_fd.as_raw_fd())
    }

    /// Throw away every pending signal (start-up: the kernel's SIGHUP/SIGCONT after TIOCNOTTY).
    pub fn discard_pending(&mut self) {
        while self.next_batch().len == BATCH {}
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub signo: i32,
    /// si_code: SI_USER for kill(2), SI_KERNEL for terminal-generated signals, …
    pub code: i32,
    /// si_fd: the fd behind a SIGIO the kernel raised for an O_ASYNC file.
    pub fd: i32,
}

/// True for the signals that stop a process from a terminal (job control).
pub fn is_tty_stop(sig: i32) -> bool {
    matches!(sig, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU)
}

/// True for every signal microinit forwards: all catchable ones but SIGCHLD (which is ours: reaping).
pub fn is_forwardable(sig: i32) -> bool {
    sig != libc::SIGCHLD
        && sig != libc::SIGKILL
        && sig != libc::SIGSTOP
        && (1..=rtmax()).contains(&sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_numbers_and_rt() {
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("sigterm"), Ok(15));
        assert_eq!(parse_signal("9"), Ok(9));
        assert_eq!(parse_signal("SIGRTMIN+2"), Ok(rtmin() + 2));
        assert_eq!(parse_signal("RTMAX-1"), Ok(rtmax() - 1));
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("RTMIN+999").is_err());
    }

    #[test]
    fn names_round_trip() {
        for s in 1..=rtmax() {
            assert_eq!(parse_signal(&signal_name(s)), Ok(s), "{}", signal_name(s));
        }
    }

    #[test]
    fn a_stop_request_queued_behind_real_time_signals_comes_out_in_the_first_batch() {
        // In a thread of its own, with thread-directed signals: the test harness's other threads keep
        // their default dispositions, and a signalfd also reads its own thread's pending signals.
        std::thread::spawn(|| {
            block_all().expect("block");
            let mut signals = Signals::open(&[]).expect("signalfd");
            let tgkill = |sig: i32| {
                // SAFETY: signals this very thread, which blocks every signal.
                let r =
                    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), sig) };
                assert_eq!(r, 0, "tgkill {sig}");
            };
            let (rt_a, rt_b) = (rtmin() + 6, rtmin() + 7);
            for i in 0..200 {
                tgkill(if i % 2 == 0 { rt_a } else { rt_b });
            }
            tgkill(libc::SIGTERM);
            tgkill(libc::SIGUSR2);
            let first: Vec<i32> = signals.next_batch().iter().map(|s| s.signo).collect();
            assert_eq!(first.len(), BATCH);
            assert_eq!(&first[..2], &[libc::SIGUSR2, libc::SIGTERM]);
            let mut rt = first[2..].to_vec();
            loop {
                let batch = signals.next_batch();
                if batch.is_empty() {
                    break;
                }
                rt.extend(batch.iter().map(|s| s.signo));
            }
            assert_eq!(rt.iter().filter(|&&s| s == rt_a).count(), 100);
            assert_eq!(rt.iter().filter(|&&s| s == rt_b).count(), 100);
            assert_eq!(rt.len(), 200, "every real-time signal once: {rt:?}");
        })
        .join()
        .expect("signal thread");
    }

    #[test]
    fn forwardable_set() {
        assert!(is_forwardable(libc::SIGTERM));
        assert!(is_forwardable(rtmin()));
        assert!(!is_forwardable(libc::SIGCHLD));
        assert!(!is_forwardable(libc::SIGKILL));
    }
}
