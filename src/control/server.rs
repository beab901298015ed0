//! The control socket served by PID 1 (`microinit status`, `signal`, `restart`, `maintenance`).
//!
//! Owns: the Unix socket at `ControlConfig::socket` (mode 0600, stale file replaced at bind, removed on drop),
//! the peer check (SO_PEERCRED: root or our own uid), the connections (one request, one reply, then close;
//! the forms are `protocol`'s) and the per-client limits (request size, time, number of clients, accepts per
//! wakeup). Everything is non-blocking and driven by the main loop: `push_poll_fds` / `deadline` say what to
//! wait for, `serve` / `expire` do a bounded amount of work and hand back the requests read, and the loop
//! answers each with `reply` (at once, or later for an answer that takes time). So no client can delay
//! signal forwarding or reaping, and no request reaches into the loop.
//!
//! Does not own: what the requests do (`init`), the client side (`client`), nor the poll loop itself.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt::PeerCredentials, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::{umask, Mode};

use crate::config::ControlConfig;
use crate::control::protocol::{self, Reply, Request};
use crate::init::signals::Received;

/// Per-client limits. A client that breaks one is sent an error (best effort) and disconnected.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line in bytes (without the newline).
    pub max_request: usize,
    /// From accept to the complete request, and from the loop's answer to its last byte sent.
    pub timeout: Duration,
    /// From the complete request to the loop's answer (one that waits for Consul takes up to its HTTP
    /// timeouts). Below the client's own 5 s, so that the client hears why.
    pub answer_timeout: Duration,
    /// Clients served at once; further connections wait in the listen backlog.
    pub max_clients: usize,
    /// Connections accepted per wakeup, whether they stay or hang up at once: a process that connects and
    /// closes in a loop must not keep PID 1 accepting while a SIGTERM waits in the signalfd.
    pub accepts_per_wakeup: usize,
    /// After a wakeup that used up `accepts_per_wakeup` with more connections waiting, the listener rests
    /// this long. Without it, PID 1 under connect/close churn never sleeps: the scheduler then treats it as
    /// a CPU hog, and a SIGTERM waits for PID 1's next turn on the CPU (measured: ~10 ms on a loaded 2-core
    /// machine). Resting, PID 1 is a sleeper that a signal wakes at once; the churn fills the backlog and
    /// gets EAGAIN, which raises no SIGIO.
    pub accept_pause: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request: protocol::MAX_REQUEST,
            timeout: Duration::from_secs(2),
            answer_timeout: Duration::from_secs(4),
            max_clients: 8,
            accepts_per_wakeup: 8,
            accept_pause: Duration::from_millis(5),
        }
    }
}

/// Which connection a request came on: `reply` answers there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientId(u64);

/// A request read from a client, waiting for the loop's answer.
#[derive(Debug)]
pub struct Incoming {
    pub client: ClientId,
    pub request: Request,
}

enum Phase {
    Reading(Vec<u8>),
    /// The request went to the loop; the client is not polled until `reply`.
    Waiting,
    Writing {
        reply: Vec<u8>,
        sent: usize,
    },
}

struct Client {
    id: ClientId,
    stream: UnixStream,
    deadline: Instant,
    phase: Phase,
}

/// What `Client::advance` leaves behind.
#[derive(PartialEq, Eq)]
enum Next {
    Keep,
    Close,
}

/// The listening socket and its clients.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    /// (dev, inode) of the socket file we created: removed on drop only if it is still ours.
    inode: (u64, u64),
    our_uid: u32,
    limits: Limits,
    clients: Vec<Client>,
    next_id: u64,
    /// The listener raises SIGIO on a connection (`signal_on_connect` worked).
    signals_connect: bool,
    /// A connection may wait in the backlog that no pending SIGIO announces: a SIGIO was taken off the
    /// signalfd (`on_sigio`), or accepting stopped before accept(2) said EAGAIN. Cleared only by that EAGAIN,
    /// so the loop never sleeps in read(2) on the signalfd while a client waits unseen.
    accept_due: bool,
    /// The listener rests until then (`Limits::accept_pause`): not polled, not accepted from.
    accept_paused_until: Option<Instant>,
}

impl ControlServer {
    /// PID 1's socket: every connection raises SIGIO (see `may_sleep_in_read`), which PID 1 blocks and
    /// reads from its signalfd. When that cannot be set up the listener is polled instead.
    pub fn bind(cfg: &ControlConfig) -> io::Result<ControlServer> {
        Self::bind_inner(&cfg.socket, Limits::default(), true)
    }

    /// A socket that is polled only (no SIGIO): for a process that does not block SIGIO.
    pub fn bind_with(path: &Path, limits: Limits) -> io::Result<ControlServer> {
        Self::bind_inner(path, limits, false)
    }

    /// The common case (no socket file, its directory there) costs socket, the SIGIO set-up, bind, listen,
    /// rename and one lstat: what is only needed when something is in the way (a stale file, a missing
    /// directory) is done after the call that finds it.
    fn bind_inner(path: &Path, limits: Limits, sigio: bool) -> io::Result<ControlServer> {
        // sun_path is 108 bytes including the terminating NUL, and the temporary name adds one; std's error
        // would not name the variable.
        if path.as_os_str().len() >= 107 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "control socket path {} is too long (max 106 bytes); set MICROINIT_SOCKET to a shorter path",
                    path.display()
                ),
            ));
        }
        let bind_error = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot bind control socket {}: {e} (set MICROINIT_SOCKET to a writable path)",
                    path.display()
                ),
            )
        };
        let fd: OwnedFd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| bind_error(e.into()))?;
        // Before listen(2): then every connection raises SIGIO, and none can wait in the backlog unannounced.
        let signals_connect = sigio
            && signal_on_connect(&fd)
                .map_err(|e| log::debug!("control socket: no SIGIO on connect ({e}); polling it"))
                .is_ok();
        // Bound under a temporary name and renamed into place once listening: bind(2) creates the file before
        // listen(2), and a client that sees the file in between would be refused ("no control socket").
        let mut tmp = path.as_os_str().to_owned();
        tmp.push("~");
        let tmp = PathBuf::from(tmp);
        let addr = UnixAddr::new(&tmp).map_err(|e| bind_error(e.into()))?;
        // The socket file takes its mode from the umask at bind time: 0600 from the first instant, no
        // chmod race. The main thread is the only one creating files, so the brief umask change is safe.
        let old = umask(Mode::from_bits_truncate(0o177));
        let mut bound = socket::bind(fd.as_raw_fd(), &addr);
        if bound == Err(Errno::ENOENT) {
            // Scratch images have no /run: create it like an init system would.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                umask(old);
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(|e| {
                        annotate(e, "cannot create the directory of control socket", path)
                    })?;
                umask(Mode::from_bits_truncate(0o177));
                bound = socket::bind(fd.as_raw_fd(), &addr);
            }
        }
        if bound == Err(Errno::EADDRINUSE)
            && std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.file_type().is_socket())
        {
            // A temporary name left by a microinit that died between bind and rename.
            let _ = std::fs::remove_file(&tmp);
            bound = socket::bind(fd.as_raw_fd(), &addr);
        }
        umask(old);
        bound.map_err(|e| bind_error(e.into()))?;
        // SAFETY: listen(2) on our own bound socket; -1 is the kernel's largest backlog, as std asks for.
        if unsafe { libc::listen(fd.as_raw_fd(), -1) } != 0 {
            return Err(bind_error(io::Error::last_os_error()));
        }
        let listener = UnixListener::from(fd);
        // Into place without replacing anything; only a file already there is looked at (a stale socket is
        // removed, a live server's or a non-socket is refused).
        if let Err(e) = rename_noreplace(&tmp, path) {
            let renamed = if e == Errno::EEXIST || e == Errno::EINVAL || e == Errno::ENOSYS {
                remove_stale(path).and_then(|()| std::fs::rename(&tmp, path).map_err(bind_error))
            } else {
                Err(bind_error(e.into()))
            };
            if let Err(e) = renamed {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        let meta = std::fs::symlink_metadata(path)?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
            our_uid: nix::unistd::geteuid().as_raw(),
            limits,
            clients: Vec::new(),
            next_id: 0,
            signals_connect,
            // Without SIGIO the backlog is looked at on the first turn (a client may have connected since
            // listen); with it, every connection since listen raised one.
            accept_due: !signals_connect,
            accept_paused_until: None,
        })
    }

    /// True for the SIGIO that `signal_on_connect` asked for (a positive si_code only comes from the
    /// kernel, never from kill(2) or sigqueue(3), so a SIGIO sent to us is still forwarded).
    pub fn is_connect(&self, s: &Received) -> bool {
        s.signo == libc::SIGIO && s.code > 0 && s.fd == self.listener.as_raw_fd()
    }

    /// Any SIGIO taken off the signalfd, a connection's or a sent one: SIGIO is a standard signal, so one
    /// sent with kill(2) and a connection's coalesce into one. The next `serve` accepts.
    pub fn on_sigio(&mut self) {
        self.accept_due = true;
    }

    /// The loop may sleep in read(2) on its signalfd: no client to poll, and every connection to come raises
    /// a SIGIO that is still pending.
    pub fn may_sleep_in_read(&self) -> bool {
        self.signals_connect && self.clients.is_empty() && !self.accept_due
    }

    /// Append the fds to poll: the listener (POLLIN) while there is room for a client, each client POLLIN
    /// while its request is read and POLLOUT while a reply that did not fit in one send is written.
    pub fn push_poll_fds(&self, fds: &mut Vec<libc::pollfd>) {
        let pollfd = |fd, events| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        if self.clients.len() < self.limits.max_clients && self.accept_paused_until.is_none() {
            fds.push(pollfd(self.listener.as_raw_fd(), libc::POLLIN));
        }
        for c in &self.clients {
            match c.phase {
                Phase::Reading(_) => fds.push(pollfd(c.stream.as_raw_fd(), libc::POLLIN)),
                Phase::Writing { .. } => fds.push(pollfd(c.stream.as_raw_fd(), libc::POLLOUT)),
                Phase::Waiting => {}
            }
        }
    }

    /// The earliest client time limit or end of a rest, so the loop wakes up for it.
    pub fn deadline(&self) -> Option<Instant> {
        self.clients
            .iter()
            .map(|c| c.deadline)
            .chain(self.accept_paused_until)
            .min()
    }

    /// Serve the fds `polled` reports ready (other entries are ignored; any revents counts: HUP and ERR are
    /// found out by the read), and accept when a connection is ready or may be due. Bounded work: at most
    /// `max_request` bytes read per client and `accepts_per_wakeup` accepts. Returns the requests read,
    /// each to be answered with `reply`.
    pub fn serve(&mut self, polled: &[libc::pollfd], now: Instant) -> Vec<Incoming> {
        let ready = |fd: i32| polled.iter().any(|p| p.fd == fd && p.revents != 0);
        let mut incoming = Vec::new();
        let limits = self.limits;
        self.clients.retain_mut(|c| {
            !ready(c.stream.as_raw_fd()) || c.advance(&limits, &mut incoming) == Next::Keep
        });
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
        }
        if (self.accept_due || ready(self.listener.as_raw_fd()))
            && self.accept_paused_until.is_none()
        {
            self.accept(now, &mut incoming);
        }
        incoming
    }

    /// Answer the request that came on `client`. A client that is gone (timed out, hung up) is skipped.
    pub fn reply(&mut self, client: ClientId, reply: &Reply) {
        let Some(i) = self.clients.iter().position(|c| c.id == client) else {
            log::debug!("control socket: the client left before its reply");
            return;
        };
        let c = &mut self.clients[i];
        if !matches!(c.phase, Phase::Waiting) {
            return;
        }
        c.phase = Phase::Writing {
            reply: reply.to_line(),
            sent: 0,
        };
        c.deadline = Instant::now() + self.limits.timeout;
        if c.write() == Next::Close {
            self.clients.swap_remove(i);
        }
    }

    /// Drop clients past their time limit, telling them why (best effort).
    pub fn expire(&mut self, now: Instant) {
        let (timeout, answer_timeout) = (self.limits.timeout, self.limits.answer_timeout);
        self.clients.retain(|c| {
            if c.deadline > now {
                return true;
            }
            let why = match c.phase {
                Phase::Reading(_) => "no complete request",
                Phase::Waiting => "no answer from PID 1",
                Phase::Writing { .. } => {
                    log::debug!("control socket: client timed out");
                    return false;
                }
            };
            let limit = match c.phase {
                Phase::Waiting => answer_timeout,
                _ => timeout,
            };
            let msg = format!("timed out: {why} within {}ms", limit.as_millis());
            let _ = send_nonblocking(&c.stream, &Reply::Failed(msg).to_line());
            log::debug!("control socket: client timed out ({why})");
            false
        });
    }

    fn accept(&mut self, now: Instant, incoming: &mut Vec<Incoming>) {
        // Cleared below only when accept(2) says the backlog is empty.
        self.accept_due = true;
        // Every connection counts, kept or closed at once.
        for _ in 0..self.limits.accepts_per_wakeup {
            if self.clients.len() >= self.limits.max_clients {
                return; // the listener is polled again once a client is done
            }
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_due = false;
                    return;
                }
                Err(e) => {
                    // EMFILE and friends: leave the connection queued, retry after a rest (the listener
                    // stays readable: polling it now would spin).
                    log::warn!("control socket: accept failed: {e}");
                    self.accept_paused_until = Some(now + self.limits.accept_pause);
                    return;
                }
            };
            // accept4 does not pass O_NONBLOCK on to the new socket.
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let phase = match self.check_peer(&stream) {
                Ok(()) => Phase::Reading(Vec::new()),
                Err(msg) => {
                    log::warn!("control socket: {msg}");
                    Phase::Writing {
                        reply: Reply::Failed(msg).to_line(),
                        sent: 0,
                    }
                }
            };
            self.next_id += 1;
            let mut client = Client {
                id: ClientId(self.next_id),
                stream,
                deadline: now + self.limits.timeout,
                phase,
            };
            // The request (or room for the refusal) is usually there already: save a poll round trip.
            if client.advance(&self.limits, incoming) == Next::Keep {
                self.clients.push(client);
            }
        }
        // The budget is spent and more may wait: a flood, not a client.
        self.accept_paused_until = Some(now + self.limits.accept_pause);
    }

    fn check_peer(&self, stream: &UnixStream) -> Result<(), String> {
        let cred = socket::getsockopt(stream, PeerCredentials).map_err(|e| {
            format!("refused a client: cannot read its credentials (SO_PEERCRED: {e})")
        })?;
        if peer_allowed(cred.uid(), self.our_uid) {
            Ok(())
        } else {
            Err(format!(
                "permission denied: uid {} (pid {}) may not use the microinit control socket; only root or uid {} may",
                cred.uid(),
                cred.pid(),
                self.our_uid
            ))
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        // Only unlink what we bound: another process may have replaced the file since.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.inode {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Client {
    /// Read the request and hand it over, or write the reply: as far as the socket allows without blocking.
    fn advance(&mut self, limits: &Limits, incoming: &mut Vec<Incoming>) -> Next {
        if let Phase::Reading(buf) = &mut self.phase {
            let refusal = match read_request(&mut self.stream, buf, limits.max_request) {
                Ok(None) => return Next::Keep,
                Ok(Some(Ok(line))) => match Request::parse(&line) {
                    Ok(request) => {
                        self.phase = Phase::Waiting;
                        self.deadline = Instant::now() + limits.answer_timeout;
                        incoming.push(Incoming {
                            client: self.id,
                            request,
                        });
                        return Next::Keep;
                    }
                    Err(msg) => msg,
                },
                Ok(Some(Err(msg))) => msg,
                Err(_) => return Next::Close,
            };
            self.phase = Phase::Writing {
                reply: Reply::Failed(refusal).to_line(),
                sent: 0,
            };
        }
        self.write()
    }

    /// Send what the socket takes of the reply; Close once all of it is out (or the peer is gone).
    fn write(&mut self) -> Next {
        let Phase::Writing { reply, sent } = &mut self.phase else {
            return Next::Keep;
        };
        while *sent < reply.len() {
            match send_nonblocking(&self.stream, &reply[*sent..]) {
                Ok(n) => *sent += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Next::Keep,
                Err(_) => return Next::Close,
            }
        }
        Next::Close
    }
}

/// Read what is available. `Ok(None)`: need more. `Ok(Some(Ok(line)))`: a complete request (up to the first
/// newline, or everything before EOF). `Ok(Some(Err(_)))`: over the size limit. `Err`: the peer is gone.
fn read_request(
    stream: &mut UnixStream,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<Result<Vec<u8>, String>>> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Never read past the limit: a 10 MB line costs us at most `max + 1` bytes of work.
        let room = (max + 1 - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) if buf.is_empty() => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(0) => return Ok(Some(Ok(std::mem::take(buf)))),
            Ok(n) => {
                let start = buf.len();
                buf.extend_from_slice(&chunk[..n]);
                if let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
                    buf.truncate(start + pos);
                    return Ok(Some(Ok(std::mem::take(buf))));
                }
                if buf.len() > max {
                    return Ok(Some(Err(format!(
                        "request too large: over {max} bytes without a newline"
                    ))));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// MSG_NOSIGNAL: PID 1 has SIGPIPE blocked for its signalfd, and a blocked SIGPIPE is queued rather than
/// ignored, so a client hanging up early would otherwise show up as a signal to forward.
fn send_nonblocking(stream: &UnixStream, buf: &[u8]) -> Result<usize, Errno> {
    socket::send(
        stream.as_raw_fd(),
        buf,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    )
}

/// Root may always talk to us; otherwise only our own uid (a non-root microinit).
fn peer_allowed(peer_uid: u32, our_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == our_uid
}

/// A stale socket (nobody answers) is replaced; a live one or a non-socket file is an error.
/// Have the kernel raise SIGIO (si_code POLL_IN, si_fd the listener) when a client connects, so that the loop
/// can sleep in read(2) on its signalfd while no client is connected (see `may_sleep_in_read`). Only for a
/// process that blocks SIGIO: a default SIGIO would kill it.
fn signal_on_connect(fd: &OwnedFd) -> io::Result<()> {
    // <fcntl.h>'s F_SETSIG (10 on every Linux architecture); the libc crate leaves it out for musl.
    const F_SETSIG: libc::c_int = 10;
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on our own socket; results are checked. The socket was made non-blocking: F_SETFL keeps
    // that and adds O_ASYNC (no F_GETFL needed).
    let ok = unsafe {
        libc::fcntl(fd, libc::F_SETOWN, libc::getpid()) == 0
            && libc::fcntl(fd, F_SETSIG, libc::SIGIO) == 0
            && libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK | libc::O_ASYNC) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// rename(2) that fails with EEXIST instead of replacing `to` (renameat2 RENAME_NOREPLACE; EINVAL or ENOSYS
/// where the file system or kernel lacks it).
fn rename_noreplace(from: &Path, to: &Path) -> Result<(), Errno> {
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(from.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let to = std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // RENAME_NOREPLACE from <linux/fs.h>.
    const RENAME_NOREPLACE: libc::c_uint = 1;
    // SAFETY: two valid NUL-terminated paths; the raw syscall (musl has no renameat2 wrapper in every version).
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(annotate(e, "cannot inspect control socket", path)),
        Ok(meta) => meta,
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it (set MICROINIT_SOCKET to another path)",
                path.display()
            ),
        ));
    }
    match connect_nonblocking(path) {
        // EAGAIN: a live server whose backlog is full.
        Ok(_) | Err(Errno::EAGAIN) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another process answers on control socket {}; set MICROINIT_SOCKET to another path",
                path.display()
            ),
        )),
        Err(_) => std::fs::remove_file(path).map_err(|e| annotate(e, "cannot remove stale control socket", path)),
    }
}

/// Connect without ever blocking (a full backlog gives EAGAIN instead of a wait). The stream is
/// non-blocking and close-on-exec.
pub(crate) fn connect_nonblocking(path: &Path) -> Result<UnixStream, Errno> {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// A loop that answers like PID 1 (a recorder) around a real socket, for the unit tests of `control`.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::control::status::tests::full_status;

    /// Records what it was asked to do and answers; `pad` makes status replies as large as wanted, and
    /// `defer` leaves requests unanswered in `deferred` (an answer that takes time, like Consul's).
    #[derive(Default)]
    pub struct Recorder {
        pub signals: Vec<i32>,
        pub restarts: u32,
        pub maintenance: Vec<(bool, Option<String>)>,
        pub pad: usize,
        pub defer: bool,
        pub deferred: Vec<ClientId>,
    }

    impl Recorder {
        pub fn answer(&mut self, request: Request) -> Reply {
            match request {
                Request::Status => {
                    let mut s = full_status();
                    s.app.pid = Some(42);
                    s.app.restarts = self.restarts;
                    s.signals_forwarded = self.signals.len() as u64;
                    s.app.state = "x".repeat(self.pad.max(1));
                    Reply::Status(Box::new(s))
                }
                Request::Signal(sig) => {
                    self.signals.push(sig);
                    Reply::Done(format!("sent signal {sig} to pid 42"))
                }
                Request::Restart => {
                    self.restarts += 1;
                    Reply::Done("restarting".into())
                }
                Request::Maintenance { reason, .. } if reason.as_deref() == Some("fail") => {
                    Reply::Failed("consul said no".into())
                }
                Request::Maintenance { on, reason } => {
                    self.maintenance.push((on, reason));
                    Reply::Done(format!("maintenance {on}"))
                }
            }
        }
    }

    /// A fresh directory under the system temp dir, removed on drop.
    pub struct TempDir(pub PathBuf);
    impl TempDir {
        pub fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("microinit-ctl-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }
        pub fn sock(&self) -> PathBuf {
            self.0.join("c.sock")
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// One turn of the main loop as PID 1 drives it: poll (at most until the server's deadline or
    /// `max_wait`), serve the ready fds, answer the requests, expire the late clients.
    pub fn turn(server: &mut ControlServer, rec: &mut Recorder, max_wait: Duration) {
        let mut fds = Vec::new();
        server.push_poll_fds(&mut fds);
        let wait = server
            .deadline()
            .map(|d| d.saturating_duration_since(Instant::now()).min(max_wait))
            .unwrap_or(max_wait);
        // SAFETY: a valid array of pollfd for the duration of the call.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis() as i32,
            )
        };
        assert!(n >= 0, "poll: {}", io::Error::last_os_error());
        let now = Instant::now();
        for Incoming { client, request } in server.serve(&fds, now) {
            if rec.defer {
                rec.deferred.push(client);
            } else {
                let reply = rec.answer(request);
                server.reply(client, &reply);
            }
        }
        server.expire(now);
    }

    /// Drive the server until `done` holds; panics after 20 s so a hang fails the test instead of stalling.
    pub fn serve_until(
        server: &mut ControlServer,
        rec: &mut Recorder,
        mut done: impl FnMut(&ControlServer, &Recorder) -> bool,
    ) {
        let give_up = Instant::now() + Duration::from_secs(20);
        while !done(server, rec) {
            assert!(
                Instant::now() < give_up,
                "server loop: condition not reached within 20s"
            );
            turn(server, rec, Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::thread;

    /// Send raw bytes on a new connection (then half-close if asked), return everything the server sent.
    fn raw_exchange(
        server: &mut ControlServer,
        rec: &mut Recorder,
        path: &Path,
        payload: Vec<u8>,
        half_close: bool,
    ) -> String {
        let path = path.to_path_buf();
        let client = thread::spawn(move || {
            let mut s = UnixStream::connect(&path).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            // The server may close before taking it all (oversized requests): that is the point.
            let _ = s.write_all(&payload);
            if half_close {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        });
        serve_until(server, rec, |_, _| client.is_finished());
        client.join().expect("client thread")
    }

    fn reply(text: &str) -> Reply {
        let line = text.lines().next().unwrap_or_default();
        Reply::parse(line.as_bytes()).unwrap_or_else(|e| panic!("reply {text:?}: {e}"))
    }

    fn failed(text: &str) -> String {
        match reply(text) {
            Reply::Failed(e) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn only_root_or_our_uid_may_connect() {
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(65534, 0));
        assert!(!peer_allowed(1001, 1000));
    }

    #[test]
    fn requests_reach_the_loop_and_its_replies_reach_the_client() {
        let dir = TempDir::new("commands");
        let mut server = ControlServer::bind_with(&dir.sock(), Limits::default()).expect("bind");
        let mut rec = Recorder::default();
        let path = dir.sock();
        let exchange = |server: &mut ControlServer, rec: &mut Recorder, line: &[u8], half| {
            raw_exchange(server, rec, &path, line.to_vec(), half)
        };

        let Reply::Status(status) = reply(&exchange(
            &mut server,
            &mut rec,
            b"{\"cmd\":\"status\"}\n",
            false,
        )) else {
            panic!("a status reply")
        };
        assert_eq!(status.app.pid, Some(42));

        let sig = reply(&exchange(
            &mut server,
            &mut rec,
            b"{\"cmd\":\"signal\",\"signal\":\"USR1\"}\n",
            false,
        ));
        assert!(matches!(sig, Reply::Done(_)), "{sig:?}");
        assert_eq!(rec.signals, vec![libc::SIGUSR1]);

        let bad = failed(&exchange(
            &mut server,
            &mut rec,
            b"{\"cmd\":\"signal\",\"signal\":\"NOPE\"}\n",
            false,
        ));
        assert!(bad.contains("unknown signal"), "{bad}");
        assert_eq!(
            rec.signals.len(),
            1,
            "an unknown signal never reaches the loop"
        );

        let restart = reply(&exchange(
            &mut server,
            &mut rec,
            b"{\"cmd\":\"restart\"}\n",
            false,
        ));
        assert_eq!(restart, Reply::Done("restarting".into()));
        assert_eq!(rec.restarts, 1);

        let refused = failed(&exchange(
            &mut server,
            &mut rec,
            b"{\"cmd\":\"maintenance\",\"on\":true,\"reason\":\"fail\"}\n",
            false,
        ));
        assert_eq!(refused, "consul said no");

        // No newline: a request ended by half-closing the connection counts too (socat, nc -U).
        let eof = reply(&exchange(
            &mut server,
            &mut rec,
            b"{\"cmd\":\"maintenance\",\"on\":false}",
            true,
        ));
        assert!(matches!(eof, Reply::Done(_)), "{eof:?}");
        assert_eq!(rec.maintenance, vec![(false, None)]);
        assert!(
            server.clients.is_empty(),
            "every connection is closed after its reply"
        );
    }

    #[test]
    fn a_reply_can_come_later_and_a_client_past_its_time_limit_is_told() {
        let dir = TempDir::new("deferred");
        let limits = Limits {
            answer_timeout: Duration::from_millis(400),
            ..Limits::default()
        };
        let mut server = ControlServer::bind_with(&dir.sock(), limits).expect("bind");
        let mut rec = Recorder {
            defer: true,
            ..Recorder::default()
        };
        let ask = |path: PathBuf| {
            thread::spawn(move || {
                let mut s = UnixStream::connect(&path).expect("connect");
                s.write_all(b"{\"cmd\":\"restart\"}\n").expect("write");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                out
            })
        };
        let later = ask(dir.sock());
        serve_until(&mut server, &mut rec, |_, r| r.deferred.len() == 1);
        // Some turns with nothing to say: the client waits and is not polled meanwhile.
        for _ in 0..3 {
            turn(&mut server, &mut rec, Duration::from_millis(10));
        }
        assert!(!later.is_finished());
        assert!(
            server.poll_fds_for_test().len() == 1,
            "only the listener is polled while the loop owes an answer"
        );
        let client = rec.deferred.pop().unwrap();
        server.reply(client, &Reply::Done("done later".into()));
        assert_eq!(
            reply(&later.join().unwrap()),
            Reply::Done("done later".into())
        );
        server.reply(client, &Reply::Done("twice".into())); // gone: nothing happens

        let never = ask(dir.sock());
        serve_until(&mut server, &mut rec, |s, _| {
            s.clients.is_empty() && never.is_finished()
        });
        let err = failed(&never.join().unwrap());
        assert_eq!(err, "timed out: no answer from PID 1 within 400ms");
    }

    #[test]
    fn a_connection_announced_only_by_a_sigio_is_accepted() {
        // The race of a SIGIO read after poll(2) returned: the listener was not ready when poll looked, the
        // connection's SIGIO is taken off the signalfd afterwards, and no second SIGIO will come.
        let dir = TempDir::new("sigio");
        let mut server = ControlServer::bind_with(&dir.sock(), Limits::default()).expect("bind");
        let mut rec = Recorder::default();
        assert!(server.serve(&[], Instant::now()).is_empty());
        assert!(!server.accept_due, "the backlog was seen empty");

        let mut s = UnixStream::connect(dir.sock()).expect("connect");
        s.write_all(b"{\"cmd\":\"status\"}\n").expect("write");
        // What poll reported before the connection: nothing ready.
        assert!(
            server.serve(&[], Instant::now()).is_empty(),
            "without its SIGIO the connection is not looked for"
        );
        server.on_sigio();
        assert!(!server.may_sleep_in_read());
        let incoming = server.serve(&[], Instant::now());
        assert_eq!(
            incoming.len(),
            1,
            "the SIGIO alone gets the connection served"
        );
        assert!(matches!(incoming[0].request, Request::Status));
        server.reply(incoming[0].client, &rec.answer(Request::Status));
        let mut out = String::new();
        s.read_to_string(&mut out).expect("reply");
        assert!(matches!(reply(&out), Reply::Status(_)));
    }

    #[test]
    fn connections_that_hang_up_at_once_count_against_the_accepts_per_wakeup_and_a_flood_rests_the_listener(
    ) {
        let dir = TempDir::new("churn");
        let mut server = ControlServer::bind_with(&dir.sock(), Limits::default()).expect("bind");
        let listener = server.listener.as_raw_fd();
        assert!(server.serve(&[], Instant::now()).is_empty());
        for _ in 0..20 {
            drop(UnixStream::connect(dir.sock()).expect("connect"));
        }
        server.on_sigio();
        let mut wakeups = 0;
        while server.accept_due {
            let now = Instant::now();
            assert!(server.serve(&[], now).is_empty());
            assert!(server.clients.is_empty(), "a hung-up client is not kept");
            wakeups += 1;
            assert!(wakeups < 10, "accepting never ends");
            if !server.accept_due {
                break;
            }
            // A full budget with more waiting: the listener rests, not polled, and nothing is accepted
            // (the backlog keeps the rest) until the loop wakes at the end of the rest.
            let rest = server.deadline().expect("a wakeup at the end of the rest");
            assert_eq!(rest, now + Limits::default().accept_pause);
            assert!(server.poll_fds_for_test().iter().all(|p| p.fd != listener));
            server.on_sigio();
            assert!(server.serve(&[], Instant::now()).is_empty());
            assert_eq!(server.deadline(), Some(rest), "still resting");
            std::thread::sleep(rest.saturating_duration_since(Instant::now()));
        }
        // 8 + 8 + 4: each wakeup returns to the loop (and its signals) after 8 connections.
        assert_eq!(wakeups, 3);
        assert_eq!(server.deadline(), None, "no rest once the backlog is empty");
        assert!(server.poll_fds_for_test().iter().any(|p| p.fd == listener));
    }

    #[test]
    fn garbage_gets_an_error_and_the_connection_is_closed() {
        let dir = TempDir::new("garbage");
        let mut server = ControlServer::bind_with(&dir.sock(), Limits::default()).expect("bind");
        let mut rec = Recorder::default();
        let out = raw_exchange(
            &mut server,
            &mut rec,
            &dir.sock(),
            b"\x00\x01GET / HTTP/1.0\r\n\r\n".to_vec(),
            false,
        );
        assert!(failed(&out).starts_with("bad request"), "{out}");
        assert_eq!(out.lines().count(), 1, "one reply line, then EOF");
        assert!(server.clients.is_empty());
    }

    #[test]
    fn a_10mb_line_is_cut_off_at_the_size_limit() {
        let dir = TempDir::new("oversized");
        let mut server = ControlServer::bind_with(&dir.sock(), Limits::default()).expect("bind");
        let mut rec = Recorder::default();
        let out = raw_exchange(
            &mut server,
            &mut rec,
            &dir.sock(),
            vec![b'a'; 10 << 20],
            false,
        );
        assert!(failed(&out).contains("too large"), "{out}");
        assert!(server.clients.is_empty());
        // The server is still fine afterwards.
        let ok = raw_exchange(
            &mut server,
            &mut rec,
            &dir.sock(),
            b"{\"cmd\":\"status\"}\n".to_vec(),
            false,
        );
        assert!(matches!(reply(&ok), Reply::Status(_)));
    }

    #[test]
    fn a_silent_client_is_dropped_at_its_deadline() {
        let dir = TempDir::new("silent");
        let limits = Limits {
            timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let mut server = ControlServer::bind_with(&dir.sock(), limits).expect("bind");
        let mut rec = Recorder::default();
        assert_eq!(server.deadline(), None, "no client, no wakeup needed");
        let before = Instant::now();
        let mut silent = UnixStream::connect(dir.sock()).expect("connect");
        serve_until(&mut server, &mut rec, |s, _| !s.clients.is_empty());
        let deadline = server.deadline().expect("a client has a deadline");
        assert!(deadline >= before + limits.timeout && deadline <= Instant::now() + limits.timeout);
        serve_until(&mut server, &mut rec, |s, _| s.clients.is_empty());
        assert!(Instant::now() >= deadline, "dropped before its time limit");
        silent
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut out = String::new();
        silent
            .read_to_string(&mut out)
            .expect("EOF after the timeout notice");
        assert!(out.contains("timed out"), "{out:?}");
    }

    #[test]
    fn at_most_max_clients_and_the_rest_wait_in_the_backlog() {
        let dir = TempDir::new("maxclients");
        let limits = Limits {
            timeout: Duration::from_millis(300),
            max_clients: 2,
            ..Limits::default()
        };
        let mut server = ControlServer::bind_with(&dir.sock(), limits).expect("bind");
        let mut rec = Recorder::default();
        let listener = server.listener.as_raw_fd();
        let _silent: Vec<UnixStream> = (0..2)
            .map(|_| UnixStream::connect(dir.sock()).expect("connect"))
            .collect();
        serve_until(&mut server, &mut rec, |s, _| s.clients.len() == 2);
        assert!(
            server.poll_fds_for_test().iter().all(|p| p.fd != listener),
            "a full server must not poll its listener (the queued connection would wake it in a loop)"
        );
        // The third client is queued, then served once the silent ones time out.
        let out = raw_exchange(
            &mut server,
            &mut rec,
            &dir.sock(),
            b"{\"cmd\":\"status\"}\n".to_vec(),
            false,
        );
        assert!(matches!(reply(&out), Reply::Status(_)));
        assert!(server.poll_fds_for_test().iter().any(|p| p.fd == listener));
    }

    #[test]
    fn a_reply_larger_than_the_socket_buffer_is_written_on_pollout() {
        let dir = TempDir::new("bigreply");
        let mut server = ControlServer::bind_with(&dir.sock(), Limits::default()).expect("bind");
        let mut rec = Recorder {
            pad: 4 << 20,
            ..Recorder::default()
        };
        let path = dir.sock();
        let client = thread::spawn(move || {
            let mut s = UnixStream::connect(&path).expect("connect");
            s.write_all(b"{\"cmd\":\"status\"}\n").expect("write");
            // Wait until the server is stuck on a full socket buffer before reading anything.
            std::thread::park();
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read");
            out
        });
        serve_until(&mut server, &mut rec, |s, _| {
            s.poll_fds_for_test()
                .iter()
                .any(|p| p.events == libc::POLLOUT)
        });
        client.thread().unpark();
        serve_until(&mut server, &mut rec, |_, _| client.is_finished());
        let Reply::Status(s) = reply(&client.join().expect("client")) else {
            panic!("a status reply")
        };
        assert_eq!(s.app.state.len(), 4 << 20);
    }

    #[test]
    fn socket_is_0600_and_removed_on_drop() {
        let dir = TempDir::new("mode");
        let server = ControlServer::bind_with(&dir.sock(), Limits::default()).expect("bind");
        let mode = std::fs::metadata(dir.sock())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        drop(server);
        assert!(!dir.sock().exists());
    }

    #[test]
    fn missing_directory_is_created() {
        let dir = TempDir::new("mkdir");
        let path = dir.0.join("run/sub/c.sock");
        let _server = ControlServer::bind_with(&path, Limits::default()).expect("bind");
        assert!(path.exists());
    }

    #[test]
    fn stale_socket_is_replaced_but_live_sockets_and_files_are_not() {
        let dir = TempDir::new("stale");
        // A socket left behind by a dead process: bound, never unlinked, nobody listening.
        drop(UnixListener::bind(dir.sock()).expect("bind stale"));
        let live = ControlServer::bind_with(&dir.sock(), Limits::default())
            .expect("stale socket replaced");

        let err = ControlServer::bind_with(&dir.sock(), Limits::default())
            .err()
            .expect("live socket kept");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("MICROINIT_SOCKET"), "{err}");
        drop(live);

        std::fs::write(dir.sock(), "precious").expect("write file");
        let err = ControlServer::bind_with(&dir.sock(), Limits::default())
            .err()
            .expect("file kept");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.sock()).ok().as_deref(),
            Some("precious")
        );

        let long = dir.0.join("x".repeat(120));
        let err = ControlServer::bind_with(&long, Limits::default())
            .err()
            .expect("too long");
        assert!(err.to_string().contains("too long"), "{err}");
    }

    impl ControlServer {
        fn poll_fds_for_test(&self) -> Vec<libc::pollfd> {
            let mut fds = Vec::new();
            self.push_poll_fds(&mut fds);
            fds
        }
    }
}
