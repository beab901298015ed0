//! Shell-free probes: a TCP connect, an HTTP GET that must answer 2xx, a file that must exist.
//!
//! Owns: doing one probe with a time limit and saying in one line why it failed. Does not own: when to probe
//! or what a result means (`consul::watch` for `--wait-for`). These block (connect, name resolution), so
//! they run on a worker thread, never on PID 1's loop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::discovery::{split_url, WaitTarget};

/// Connect plus answer of one probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The status line is all an HTTP probe reads.
const MAX_STATUS_LINE: usize = 1024;

/// Probe a non-Consul target once, within `timeout`. Ok(()) when it is up.
pub fn probe(target: &WaitTarget, timeout: Duration) -> Result<(), String> {
    match target {
        WaitTarget::Tcp { host, port } => tcp(host, *port, timeout).map(drop),
        WaitTarget::Http { url } => http_get(url, timeout),
        WaitTarget::File(p) => file(p),
        WaitTarget::Consul { .. } => Err("a consul: target is not probed, it is queried".into()),
    }
}

/// Connect to HOST:PORT (every address the name resolves to, in order) within `timeout` in total.
pub fn tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let deadline = Instant::now() + timeout;
    // The system resolver has no timeout of its own: this is why probes live on a worker thread.
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} resolves to no address");
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("connect to {a}: timed out"));
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connect to {a}: {e}"),
        }
    }
    Err(last)
}

/// GET an http:// URL; Ok when the status is 2xx. Reads only the status line (bounded).
pub fn http_get(url: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let (host, port, path) = split_url(url)?;
    let mut s = tcp(&host, port, timeout)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let _ = s.set_read_timeout(Some(left));
    let _ = s.set_write_timeout(Some(left));
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: microinit/{}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("GET {url}: {e}"))?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("GET {url}: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/"))
        .ok_or_else(|| format!("GET {url}: not an HTTP answer"))?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        // The reason phrase comes from the server: only printable ASCII of it, capped.
        let reason: String = line
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(100)
            .collect();
        Err(format!("GET {url}: {reason}"))
    }
}

/// Ok when `path` exists (a dangling symlink does not count).
pub fn file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server answering each connection with `answer`, on a real loopback socket.
    fn serve(answer: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        port
    }

    #[test]
    fn http_probe_passes_on_2xx_only_and_names_the_status() {
        let ok = serve("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(
            http_get(&format!("http://127.0.0.1:{ok}/ready"), PROBE_TIMEOUT),
            Ok(())
        );
        let bad = serve("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let e = http_get(&format!("http://127.0.0.1:{bad}/"), PROBE_TIMEOUT).expect_err("503");
        assert!(e.contains("503 Service Unavailable"), "{e}");
        let junk = serve("\x1b[31mnope\r\n");
        let e = http_get(&format!("http://127.0.0.1:{junk}/"), PROBE_TIMEOUT).expect_err("junk");
        assert!(e.contains("not an HTTP answer"), "{e}");
    }

    #[test]
    fn a_silent_server_costs_at_most_the_timeout() {
        // Accepts (the kernel does, via the backlog) but never answers.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let t = Instant::now();
        let e = http_get(
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_millis(300),
        )
        .expect_err("silent");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(e.starts_with("GET http://127.0.0.1"), "{e}");
        drop(l);
    }

    #[test]
    fn tcp_and_file_probes_say_why_they_failed() {
        let closed = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let e = tcp("127.0.0.1", closed, PROBE_TIMEOUT).expect_err("closed port");
        assert!(e.contains("refused"), "{e}");
        let open = serve("");
        assert!(tcp("127.0.0.1", open, PROBE_TIMEOUT).is_ok());
        let e = file(Path::new("/nonexistent/ready")).expect_err("missing");
        assert!(e.contains("/nonexistent/ready"), "{e}");
        assert_eq!(file(Path::new("/")), Ok(()));
    }
}
