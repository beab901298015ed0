//! The client side of the control socket: `microinit status [--json]`, `signal SIG`, `restart`,
//! `maintenance on|off [--reason TEXT]`, run as `docker exec CONTAINER microinit …`.
//!
//! Owns: connecting with a time limit, one request/reply exchange (forms in `protocol`), and the exit codes.
//! Does not own: argument parsing (`cli`), the status document (`status`) and its table (`render`), nor
//! anything PID 1 does.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;

use crate::control::protocol::{Reply, Request, MAX_REPLY};
use crate::control::render::render_status;
use crate::control::server::connect_nonblocking;

/// Exit codes of the client commands.
pub const EXIT_OK: i32 = 0;
/// PID 1 answered and refused or failed the command (including "permission denied").
pub const EXIT_FAILED: i32 = 1;
/// Nothing answers on the socket: not in a microinit container, or the wrong MICROINIT_SOCKET.
pub const EXIT_NO_SOCKET: i32 = 3;

/// Connect, send and receive must all fit in this.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Send `request` to the socket at `socket` and print the answer (`json`: the status document as JSON);
/// returns the process exit code.
pub fn client_main(request: &Request, json: bool, socket: &Path) -> i32 {
    let reply = match call(socket, request, TIMEOUT) {
        Ok(reply) => reply,
        Err((code, msg)) => {
            eprintln!("microinit: {msg}");
            return code;
        }
    };
    match reply {
        Reply::Failed(msg) => {
            eprintln!("microinit: {msg}");
            return EXIT_FAILED;
        }
        Reply::Status(s) if json => println!("{:#}", s.to_json()),
        Reply::Status(s) => print!("{}", render_status(&s, unix_now())),
        Reply::Done(msg) => println!("{msg}"),
    }
    EXIT_OK
}

/// One exchange. The error is (exit code, one-line message).
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, (i32, String)> {
    let deadline = Instant::now() + timeout;
    let no_answer = || {
        format!(
            "microinit control socket at {} did not answer within {}s",
            socket.display(),
            timeout.as_secs_f64()
        )
    };
    let stream = connect(socket, deadline)?;
    let io_err = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            (EXIT_NO_SOCKET, no_answer())
        } else {
            (
                EXIT_FAILED,
                format!("control socket {}: {e}", socket.display()),
            )
        }
    };
    stream.set_nonblocking(false).map_err(io_err)?;
    stream
        .set_write_timeout(Some(remaining(deadline)))
        .map_err(io_err)?;
    let sent = (&stream).write_all(&request.to_line());
    // A refused peer's request is never read: PID 1 may have replied and closed before (or while) we wrote,
    // so read the reply even when the write failed, and only fall back to the write error.
    let reply = match (read_line(&stream, deadline), sent) {
        (Ok(reply), _) if !reply.is_empty() => reply,
        (Ok(_), Err(e)) | (Err(_), Err(e)) | (Err(e), Ok(())) => return Err(io_err(e)),
        (Ok(_), Ok(())) => {
            return Err((
                EXIT_FAILED,
                format!("control socket {} closed without a reply", socket.display()),
            ))
        }
    };
    let end = reply
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(reply.len());
    Reply::parse(&reply[..end]).map_err(|e| {
        (
            EXIT_FAILED,
            format!(
                "control socket {} sent an unreadable reply: {e}",
                socket.display()
            ),
        )
    })
}

/// Read up to the first newline (or EOF). Stopping at the newline matters: a server that closes with our
/// request unread makes the kernel report ECONNRESET after its reply, instead of EOF.
fn read_line(stream: &UnixStream, deadline: Instant) -> std::io::Result<Vec<u8>> {
    let mut reply = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut limited = stream.take(MAX_REPLY as u64 + 1);
    while !reply.contains(&b'\n') {
        // A per-read timeout alone would let a trickling peer stretch the total: recompute each time.
        stream.set_read_timeout(Some(remaining(deadline)))?;
        match limited.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(reply)
}

fn connect(socket: &Path, deadline: Instant) -> Result<UnixStream, (i32, String)> {
    loop {
        match connect_nonblocking(socket) {
            Ok(stream) => return Ok(stream),
            // The listen backlog is full (PID 1 is serving its maximum of clients): retry until the deadline.
            Err(Errno::EAGAIN) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(Errno::EACCES) | Err(Errno::EPERM) => {
                return Err((
                    EXIT_FAILED,
                    format!(
                        "permission denied on microinit control socket {}: only root or the user microinit runs as may use it",
                        socket.display()
                    ),
                ))
            }
            Err(_) => {
                return Err((
                    EXIT_NO_SOCKET,
                    format!(
                        "no microinit control socket at {} (is this running inside a microinit container? set MICROINIT_SOCKET)",
                        socket.display()
                    ),
                ))
            }
        }
    }
}

fn remaining(deadline: Instant) -> Duration {
    // A zero timeout means "block forever" to setsockopt: never pass it.
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::server::testing::{serve_until, Recorder, TempDir};
    use crate::control::server::{ControlServer, Limits};
    use std::os::unix::net::UnixListener;

    #[test]
    fn no_socket_is_exit_3_with_one_clear_line() {
        let dir = TempDir::new("nosocket");
        let (code, msg) = call(&dir.sock(), &Request::Status, TIMEOUT).expect_err("nothing there");
        assert_eq!(code, EXIT_NO_SOCKET);
        assert_eq!(
            msg,
            format!(
                "no microinit control socket at {} (is this running inside a microinit container? set MICROINIT_SOCKET)",
                dir.sock().display()
            )
        );
        // A socket file nobody listens on (left by a dead PID 1) is the same case.
        drop(UnixListener::bind(dir.sock()).expect("bind"));
        assert_eq!(
            client_main(&Request::Restart, false, &dir.sock()),
            EXIT_NO_SOCKET
        );
    }

    #[test]
    fn a_socket_that_never_answers_times_out_with_exit_3() {
        let dir = TempDir::new("mute");
        // Listening but never accepting: the connection sits in the backlog like with a hung PID 1.
        let _mute = UnixListener::bind(dir.sock()).expect("bind");
        let started = Instant::now();
        let (code, msg) =
            call(&dir.sock(), &Request::Status, Duration::from_millis(300)).expect_err("no answer");
        assert_eq!(code, EXIT_NO_SOCKET);
        assert!(msg.contains("did not answer"), "{msg}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the client must give up near its timeout"
        );
    }

    #[test]
    fn client_and_server_agree() {
        let dir = TempDir::new("agree");
        let mut server = ControlServer::bind_with(&dir.sock(), Limits::default()).expect("bind");
        let mut h = Recorder::default();
        let path = dir.sock();
        let client = std::thread::spawn(move || {
            let status = call(&path, &Request::Status, TIMEOUT);
            let codes = [
                client_main(&Request::Status, true, &path),
                client_main(&Request::Status, false, &path),
                client_main(&Request::Signal(libc::SIGRTMIN() + 2), false, &path),
                client_main(
                    &Request::Maintenance {
                        on: true,
                        reason: Some("deploy".into()),
                    },
                    false,
                    &path,
                ),
                client_main(
                    &Request::Maintenance {
                        on: true,
                        reason: Some("fail".into()),
                    },
                    false,
                    &path,
                ),
            ];
            (status, codes)
        });
        serve_until(&mut server, &mut h, |_, _| client.is_finished());
        let (status, codes) = client.join().expect("client");
        let Ok(Reply::Status(status)) = status else {
            panic!("a status reply: {status:?}")
        };
        assert_eq!(status.app.pid, Some(42));
        assert_eq!(codes, [EXIT_OK, EXIT_OK, EXIT_OK, EXIT_OK, EXIT_FAILED]);
        assert_eq!(h.signals, vec![libc::SIGRTMIN() + 2]);
        assert_eq!(h.maintenance, vec![(true, Some("deploy".into()))]);
    }
}
