//! The control socket served by PID 1 (`microinit status`, `signal`, `restart`, `maintenance`).
//!
//! Owns: the Unix socket at `ControlConfig::socket` (mode 0600, stale file replaced at bind, removed on drop),
//! the peer check (SO_PEERCRED: root or our own uid), the wire protocol (one newline-terminated JSON request
//! per connection, one JSON reply line, then close) and the per-client limits (request size, time, number of
//! clients). Everything is non-blocking and driven by the main loop's poll: `poll_fds` / `deadline` say what
//! to wait for, `on_ready` / `expire` do a bounded amount of work, so no client can delay signal forwarding
//! or reaping.
//!
//! Does not own: what the commands do (the `ControlHandler` the event loop implements), the client side
//! (`control_client`), nor the poll loop itself.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::socket::{
    self, sockopt::PeerCredentials, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::{umask, Mode};
use serde_json::{json, Value};

use crate::config::ControlConfig;
use crate::init::signals::parse_signal;

/// What the event loop does for each command. Called on the main thread, so it must not block.
pub trait ControlHandler {
    /// The status document (schema in the module docs of `control_client`); never contains a secret.
    fn status(&self) -> Value;
    /// Deliver `sig` to the app by PID 1's own rules (group delivery, rewrites).
    fn signal(&mut self, sig: i32) -> Result<String, String>;
    /// Start a graceful restart of the app; returns as soon as it is under way.
    fn restart(&mut self) -> Result<String, String>;
    /// Consul service maintenance mode on or off.
    fn maintenance(&mut self, on: bool, reason: Option<String>) -> Result<String, String>;
}

/// One request on the wire: `{"cmd":"status"}`, `{"cmd":"signal","signal":"TERM"}`, `{"cmd":"restart"}`,
/// `{"cmd":"maintenance","on":true,"reason":"…"}`. Replies are `{"ok":true,"status":{…}}`,
/// `{"ok":true,"message":"…"}` or `{"ok":false,"error":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    /// The signal as the user wrote it; parsed by the server so both ends agree on one parser.
    Signal(String),
    Restart,
    Maintenance {
        on: bool,
        reason: Option<String>,
    },
}

impl Request {
    pub fn to_json(&self) -> Value {
        match self {
            Request::Status => json!({"cmd": "status"}),
            Request::Signal(sig) => json!({"cmd": "signal", "signal": sig}),
            Request::Restart => json!({"cmd": "restart"}),
            Request::Maintenance { on, reason } => {
                json!({"cmd": "maintenance", "on": on, "reason": reason})
            }
        }
    }

    pub fn from_json(line: &[u8]) -> Result<Request, String> {
        let v: Value =
            serde_json::from_slice(line).map_err(|e| format!("bad request: not JSON ({e})"))?;
        match v.get("cmd").and_then(Value::as_str) {
            Some("status") => Ok(Request::Status),
            Some("signal") => match v.get("signal").and_then(Value::as_str) {
                Some(sig) => Ok(Request::Signal(sig.to_string())),
                None => Err("bad request: \"signal\" needs a string field \"signal\"".into()),
            },
            Some("restart") => Ok(Request::Restart),
            Some("maintenance") => match v.get("on").and_then(Value::as_bool) {
                Some(on) => Ok(Request::Maintenance {
                    on,
                    reason: v.get("reason").and_then(Value::as_str).map(str::to_string),
                }),
                None => Err("bad request: \"maintenance\" needs a boolean field \"on\"".into()),
            },
            Some(other) => Err(format!(
                "bad request: unknown cmd {other:?} (status, signal, restart, maintenance)"
            )),
            None => Err("bad request: no string field \"cmd\"".into()),
        }
    }
}

/// Per-client limits. A client that breaks one is sent an error (best effort) and disconnected.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line in bytes (without the newline).
    pub max_request: usize,
    /// From accept to the last byte of the reply.
    pub timeout: Duration,
    /// Clients served at once; further connections wait in the listen backlog.
    pub max_clients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request: 64 * 1024,
            timeout: Duration::from_secs(2),
            max_clients: 8,
        }
    }
}

enum Phase {
    Reading(Vec<u8>),
    Writing { reply: Vec<u8>, sent: usize },
}

struct Client {
    stream: UnixStream,
    deadline: Instant,
    phase: Phase,
}

/// What `Client::advance` leaves behind.
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
}

impl ControlServer {
    pub fn bind(cfg: &ControlConfig) -> io::Result<ControlServer> {
        Self::bind_with(&cfg.socket, Limits::default())
    }

    pub fn bind_with(path: &Path, limits: Limits) -> io::Result<ControlServer> {
        // sun_path is 108 bytes including the terminating NUL; std's error would not name the variable.
        if path.as_os_str().len() >= 108 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "control socket path {} is too long (max 107 bytes); set MICROINIT_SOCKET to a shorter path",
                    path.display()
                ),
            ));
        }
        remove_stale(path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Scratch images have no /run: create it like an init system would.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| annotate(e, "cannot create the directory of control socket", path))?;
        }
        // The socket file takes its mode from the umask at bind time: 0600 from the first instant, no
        // chmod race. The main thread is the only one creating files, so the brief umask change is safe.
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        umask(old);
        let listener = bound.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot bind control socket {}: {e} (set MICROINIT_SOCKET to a writable path)",
                    path.display()
                ),
            )
        })?;
        listener.set_nonblocking(true)?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
            our_uid: nix::unistd::geteuid().as_raw(),
            limits,
            clients: Vec::new(),
        })
    }

    /// Have the kernel raise SIGIO (si_code POLL_IN, si_fd the listener) when a client connects, so that
    /// the loop can sleep in read(2) on its signalfd while no client is connected (see `is_connect`).
    /// Only for a process that blocks SIGIO: a default SIGIO would kill it.
    pub fn signal_on_connect(&self) -> io::Result<()> {
        // <fcntl.h>'s F_SETSIG (10 on every Linux architecture); the libc crate leaves it out for musl.
        const F_SETSIG: libc::c_int = 10;
        let fd = self.listener.as_raw_fd();
        // SAFETY: fcntl on our own listening socket; results are checked.
        let ok = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0
                && libc::fcntl(fd, libc::F_SETOWN, libc::getpid()) == 0
                && libc::fcntl(fd, F_SETSIG, libc::SIGIO) == 0
                && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC) == 0
        };
        if ok {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// A client is waiting to be accepted (one that came before `signal_on_connect` raised no SIGIO).
    pub fn connection_waiting(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        unsafe { libc::poll(&mut p, 1, 0) != 0 }
    }

    /// True for the SIGIO that `signal_on_connect` asked for (a positive si_code only comes from the
    /// kernel, never from kill(2) or sigqueue(3), so a SIGIO sent to us is still forwarded).
    pub fn is_connect(&self, s: &crate::init::signals::Received) -> bool {
        s.signo == libc::SIGIO && s.code > 0 && s.fd == self.listener.as_raw_fd()
    }

    /// No client connected: the listener is all there is to wait for.
    pub fn is_idle(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The fds to poll and for what: the listener (POLLIN) while there is room for a client, each client
    /// POLLIN while its request is read and POLLOUT while a reply that did not fit in one send is written.
    pub fn poll_fds(&self) -> Vec<(RawFd, PollFlags)> {
        let listener = (self.clients.len() < self.limits.max_clients)
            .then(|| (self.listener.as_raw_fd(), PollFlags::POLLIN));
        listener
            .into_iter()
            .chain(self.clients.iter().map(|c| {
                let events = match c.phase {
                    Phase::Reading(_) => PollFlags::POLLIN,
                    Phase::Writing { .. } => PollFlags::POLLOUT,
                };
                (c.stream.as_raw_fd(), events)
            }))
            .collect()
    }

    /// The earliest client time limit, so the loop wakes up to enforce it.
    pub fn deadline(&self) -> Option<Instant> {
        self.clients.iter().map(|c| c.deadline).min()
    }

    /// Serve every fd in `ready` that is ours (any revents: HUP and ERR are found out by the read).
    /// Bounded work: at most `max_request` bytes read per client and `max_clients` accepts.
    pub fn on_ready(&mut self, ready: &[RawFd], now: Instant, handler: &mut dyn ControlHandler) {
        let limits = self.limits;
        self.clients.retain_mut(|c| {
            !ready.contains(&c.stream.as_raw_fd())
                || matches!(c.advance(&limits, handler), Next::Keep)
        });
        if ready.contains(&self.listener.as_raw_fd()) {
            self.accept(now, handler);
        }
    }

    /// Drop clients past their time limit, telling readers why (best effort).
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.limits.timeout;
        self.clients.retain(|c| {
            if c.deadline > now {
                return true;
            }
            if let Phase::Reading(_) = c.phase {
                let reply = reply_line(&error(format!(
                    "timed out: no complete request within {}ms",
                    timeout.as_millis()
                )));
                let _ = send_nonblocking(&c.stream, &reply);
            }
            log::debug!("control socket: client timed out");
            false
        });
    }

    fn accept(&mut self, now: Instant, handler: &mut dyn ControlHandler) {
        while self.clients.len() < self.limits.max_clients {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE and friends: leave the connection queued, the next wakeup retries.
                    log::warn!("control socket: accept failed: {e}");
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
                        reply: reply_line(&error(msg)),
                        sent: 0,
                    }
                }
            };
            let mut client = Client {
                stream,
                deadline: now + self.limits.timeout,
                phase,
            };
            // The request (or room for the refusal) is usually there already: save a poll round trip.
            if let Next::Keep = client.advance(&self.limits, handler) {
                self.clients.push(client);
            }
        }
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
    /// Read the request, answer it, write the answer: as far as the socket allows without blocking.
    fn advance(&mut self, limits: &Limits, handler: &mut dyn ControlHandler) -> Next {
        if let Phase::Reading(buf) = &mut self.phase {
            let reply = match read_request(&mut self.stream, buf, limits.max_request) {
                Ok(None) => return Next::Keep,
                Ok(Some(Ok(line))) => respond(&line, handler),
                Ok(Some(Err(msg))) => error(msg),
                Err(_) => return Next::Close,
            };
            self.phase = Phase::Writing {
                reply: reply_line(&reply),
                sent: 0,
            };
        }
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

/// Run one request line against the handler and build the reply.
fn respond(line: &[u8], handler: &mut dyn ControlHandler) -> Value {
    let outcome = match Request::from_json(line) {
        Err(msg) => Err(msg),
        Ok(Request::Status) => return json!({"ok": true, "status": handler.status()}),
        Ok(Request::Signal(name)) => parse_signal(&name).and_then(|sig| handler.signal(sig)),
        Ok(Request::Restart) => handler.restart(),
        Ok(Request::Maintenance { on, reason }) => handler.maintenance(on, reason),
    };
    match outcome {
        Ok(message) => json!({"ok": true, "message": message}),
        Err(msg) => error(msg),
    }
}

fn error(msg: String) -> Value {
    json!({"ok": false, "error": msg})
}

fn reply_line(v: &Value) -> Vec<u8> {
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    line
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

/// A real handler and a real poll loop for the unit tests of `control` and `control_client`.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use nix::poll::{poll, PollFd};
    use std::os::fd::BorrowedFd;

    /// Records what it was asked to do; `status` carries a `pad` string to make replies as large as wanted.
    #[derive(Default)]
    pub struct Recorder {
        pub signals: Vec<i32>,
        pub restarts: u32,
        pub maintenance: Vec<(bool, Option<String>)>,
        pub pad: usize,
    }

    impl ControlHandler for Recorder {
        fn status(&self) -> Value {
            json!({"microinit": {"version": "0.1.0", "pid": 1, "dialect": "microinit"},
                   "app": {"pid": 42, "state": "running", "restarts": self.restarts},
                   "signals_forwarded": self.signals.len(), "pad": "x".repeat(self.pad)})
        }
        fn signal(&mut self, sig: i32) -> Result<String, String> {
            self.signals.push(sig);
            Ok(format!("sent signal {sig} to pid 42"))
        }
        fn restart(&mut self) -> Result<String, String> {
            self.restarts += 1;
            Ok("restarting".into())
        }
        fn maintenance(&mut self, on: bool, reason: Option<String>) -> Result<String, String> {
            if reason.as_deref() == Some("fail") {
                return Err("consul said no".into());
            }
            self.maintenance.push((on, reason));
            Ok(format!("maintenance {on}"))
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
    /// `max_wait`), serve the ready fds, expire the late clients.
    pub fn turn(server: &mut ControlServer, handler: &mut dyn ControlHandler, max_wait: Duration) {
        let fds = server.poll_fds();
        let wait = server
            .deadline()
            .map(|d| d.saturating_duration_since(Instant::now()).min(max_wait))
            .unwrap_or(max_wait);
        // SAFETY: the fds belong to `server`, which outlives this poll and is not touched during it.
        let mut pfds: Vec<PollFd> = fds
            .iter()
            .map(|&(fd, ev)| PollFd::new(unsafe { BorrowedFd::borrow_raw(fd) }, ev))
            .collect();
        poll(
            &mut pfds,
            u16::try_from(wait.as_millis()).unwrap_or(u16::MAX),
        )
        .expect("poll");
        let ready: Vec<RawFd> = pfds
            .iter()
            .zip(&fds)
            .filter(|(p, _)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, &(fd, _))| fd)
            .collect();
        let now = Instant::now();
        server.on_ready(&ready, now, handler);
        server.expire(now);
    }

    /// Drive the server until `done` holds; panics after 20 s so a hang fails the test instead of stalling.
    pub fn serve_until(
        server: &mut ControlServer,
        handler: &mut dyn ControlHandler,
        mut done: impl FnMut(&ControlServer) -> bool,
    ) {
        let give_up = Instant::now() + Duration::from_secs(20);
        while !done(server) {
            assert!(
                Instant::now() < give_up,
                "server loop: condition not reached within 20s"
            );
            turn(server, handler, Duration::from_millis(50));
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
        handler: &mut Recorder,
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
        serve_until(server, handler, |_| client.is_finished());
        client.join().expect("client thread")
    }

    fn reply(text: &str) -> Value {
        let line = text.lines().next().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| panic!("reply {text:?} is not JSON: {e}"))
    }

    #[test]
    fn requests_round_trip_and_bad_ones_are_named() {
        for r in [
            Request::Status,
            Request::Signal("RTMIN+3".into()),
            Request::Restart,
            Request::Maintenance {
                on: true,
                reason: Some("deploy".into()),
            },
            Request::Maintenance {
                on: false,
                reason: None,
            },
        ] {
            let line = r.to_json().to_string();
            assert_eq!(Request::from_json(line.as_bytes()), Ok(r));
        }
        for (bad, expect) in [
            (&b"\x00\xffgarbage"[..], "not JSON"),
            (br#"{"cmd":"reboot"}"#, "unknown cmd"),
            (br#"{"cmd":"signal"}"#, "\"signal\""),
            (br#"{"cmd":"maintenance","on":"yes"}"#, "\"on\""),
            (br#"[1,2]"#, "\"cmd\""),
        ] {
            let err = Request::from_json(bad).expect_err("must be refused");
            assert!(err.contains(expect), "{err:?} should mention {expect}");
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
    fn commands_reach_the_handler_over_a_real_socket() {
        let dir = TempDir::new("commands");
        let mut server = ControlServer::bind_with(&dir.sock(), Limits::default()).expect("bind");
        let mut h = Recorder::default();
        let path = dir.sock();

        let status = reply(&raw_exchange(
            &mut server,
            &mut h,
            &path,
            b"{\"cmd\":\"status\"}\n".to_vec(),
            false,
        ));
        assert_eq!(status["ok"], true);
        assert_eq!(status["status"]["app"]["pid"], 42);

        let sig = reply(&raw_exchange(
            &mut server,
            &mut h,
            &path,
            b"{\"cmd\":\"signal\",\"signal\":\"USR1\"}\n".to_vec(),
            false,
        ));
        assert_eq!(sig["ok"], true, "{sig}");
        assert_eq!(h.signals, vec![libc::SIGUSR1]);

        let bad = reply(&raw_exchange(
            &mut server,
            &mut h,
            &path,
            b"{\"cmd\":\"signal\",\"signal\":\"NOPE\"}\n".to_vec(),
            false,
        ));
        assert_eq!(bad["ok"], false);
        assert!(
            bad["error"]
                .as_str()
                .unwrap_or_default()
                .contains("unknown signal"),
            "{bad}"
        );
        assert_eq!(
            h.signals.len(),
            1,
            "an unknown signal must not reach the handler"
        );

        let restart = reply(&raw_exchange(
            &mut server,
            &mut h,
            &path,
            b"{\"cmd\":\"restart\"}\n".to_vec(),
            false,
        ));
        assert_eq!(restart["message"], "restarting");
        assert_eq!(h.restarts, 1);

        let failed = reply(&raw_exchange(
            &mut server,
            &mut h,
            &path,
            b"{\"cmd\":\"maintenance\",\"on\":true,\"reason\":\"fail\"}\n".to_vec(),
            false,
        ));
        assert_eq!(failed, json!({"ok": false, "error": "consul said no"}));

        // No newline: a request ended by half-closing the connection counts too (socat, nc -U).
        let eof = reply(&raw_exchange(
            &mut server,
            &mut h,
            &path,
            b"{\"cmd\":\"maintenance\",\"on\":false}".to_vec(),
            true,
        ));
        assert_eq!(eof["ok"], true, "{eof}");
        assert_eq!(h.maintenance, vec![(false, None)]);
        assert!(
            server.clients.is_empty(),
            "every connection is closed after its reply"
        );
    }

    #[test]
    fn garbage_gets_an_error_and_the_connection_is_closed() {
        let dir = TempDir::new("garbage");
        let mut server = ControlServer::bind_with(&dir.sock(), Limits::default()).expect("bind");
        let mut h = Recorder::default();
        let out = raw_exchange(
            &mut server,
            &mut h,
            &dir.sock(),
            b"\x00\x01GET / HTTP/1.0\r\n\r\n".to_vec(),
            false,
        );
        let r = reply(&out);
        assert_eq!(r["ok"], false);
        assert!(
            r["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with("bad request"),
            "{r}"
        );
        assert_eq!(out.lines().count(), 1, "one reply line, then EOF");
        assert!(server.clients.is_empty());
    }

    #[test]
    fn a_10mb_line_is_cut_off_at_the_size_limit() {
        let dir = TempDir::new("oversized");
        let mut server = ControlServer::bind_with(&dir.sock(), Limits::default()).expect("bind");
        let mut h = Recorder::default();
        let out = raw_exchange(
            &mut server,
            &mut h,
            &dir.sock(),
            vec![b'a'; 10 << 20],
            false,
        );
        let r = reply(&out);
        assert_eq!(r["ok"], false);
        assert!(
            r["error"]
                .as_str()
                .unwrap_or_default()
                .contains("too large"),
            "{r}"
        );
        assert!(server.clients.is_empty());
        // The server is still fine afterwards.
        let ok = reply(&raw_exchange(
            &mut server,
            &mut h,
            &dir.sock(),
            b"{\"cmd\":\"status\"}\n".to_vec(),
            false,
        ));
        assert_eq!(ok["ok"], true);
    }

    #[test]
    fn a_silent_client_is_dropped_at_its_deadline() {
        let dir = TempDir::new("silent");
        let limits = Limits {
            timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let mut server = ControlServer::bind_with(&dir.sock(), limits).expect("bind");
        let mut h = Recorder::default();
        assert_eq!(server.deadline(), None, "no client, no wakeup needed");
        let before = Instant::now();
        let mut silent = UnixStream::connect(dir.sock()).expect("connect");
        serve_until(&mut server, &mut h, |s| !s.clients.is_empty());
        let deadline = server.deadline().expect("a client has a deadline");
        assert!(deadline >= before + limits.timeout && deadline <= Instant::now() + limits.timeout);
        serve_until(&mut server, &mut h, |s| s.clients.is_empty());
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
        let mut h = Recorder::default();
        let listener = server.listener.as_raw_fd();
        let _silent: Vec<UnixStream> = (0..2)
            .map(|_| UnixStream::connect(dir.sock()).expect("connect"))
            .collect();
        serve_until(&mut server, &mut h, |s| s.clients.len() == 2);
        assert!(
            server.poll_fds().iter().all(|&(fd, _)| fd != listener),
            "a full server must not poll its listener (the queued connection would wake it in a loop)"
        );
        // The third client is queued, then served once the silent ones time out.
        let out = raw_exchange(
            &mut server,
            &mut h,
            &dir.sock(),
            b"{\"cmd\":\"status\"}\n".to_vec(),
            false,
        );
        assert_eq!(reply(&out)["ok"], true);
        assert!(server.poll_fds().iter().any(|&(fd, _)| fd == listener));
    }

    #[test]
    fn a_reply_larger_than_the_socket_buffer_is_written_on_pollout() {
        let dir = TempDir::new("bigreply");
        let mut server = ControlServer::bind_with(&dir.sock(), Limits::default()).expect("bind");
        let mut h = Recorder {
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
        serve_until(&mut server, &mut h, |s| {
            s.poll_fds().iter().any(|&(_, ev)| ev == PollFlags::POLLOUT)
        });
        client.thread().unpark();
        serve_until(&mut server, &mut h, |_| client.is_finished());
        let r = reply(&client.join().expect("client"));
        assert_eq!(r["status"]["pad"].as_str().map(str::len), Some(4 << 20));
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
}
