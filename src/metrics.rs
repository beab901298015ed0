//! Opt-in Prometheus metrics (`--metrics ADDR:PORT`): nothing listens unless asked.
//!
//! Owns: the listener thread, the text exposition format, and the snapshot it reads. PID 1's loop only
//! stores a few integers into the snapshot after each wakeup ([`Metrics::publish`]: one uncontended mutex,
//! no allocation, no syscall); the thread does every accept, read and write, one client at a time with a
//! time limit, so a scraper can never delay signal forwarding or reaping. Does not own: the values
//! themselves (the event loop and the registration worker's status snapshot).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::control::status::Consul;

/// Request head and reply must fit in this, per client.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// A request head longer than this is not a scrape.
const MAX_REQUEST: usize = 8 * 1024;

/// What the loop knows, copied after each wakeup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Values {
    pub app_up: bool,
    pub restarts: u32,
    /// The app's last status as microinit would exit with it (n, or 128+signal).
    pub last_exit: Option<i32>,
    pub zombies_reaped: u64,
    pub signals_forwarded: u64,
    pub waiting_upstreams: bool,
    pub watch_changes: u64,
}

/// Reads the registration worker's status (`Registration::status_reader`).
pub type ConsulStatus = Box<dyn Fn() -> Option<Consul> + Send>;

/// The loop's handle.
pub struct Metrics {
    values: Arc<Mutex<Values>>,
    addr: std::net::SocketAddr,
}

impl Metrics {
    /// Bind `addr` and start the listener thread (call with every signal blocked: it inherits the mask).
    pub fn start(addr: &str, consul: Option<ConsulStatus>) -> std::io::Result<Metrics> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            std::io::Error::new(e.kind(), format!("--metrics {addr}: cannot listen: {e}"))
        })?;
        let local = listener.local_addr()?;
        let values = Arc::new(Mutex::new(Values::default()));
        let shared = Arc::clone(&values);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&listener, &shared, consul.as_ref()))?;
        log::info!("metrics on http://{local}/metrics");
        Ok(Metrics {
            values,
            addr: local,
        })
    }

    /// Where the listener is (port 0 in `--metrics` picks a free one).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    pub fn publish(&self, v: Values) {
        match self.values.lock() {
            Ok(mut cur) => *cur = v,
            Err(p) => *p.into_inner() = v,
        }
    }
}

fn serve(listener: &TcpListener, values: &Mutex<Values>, consul: Option<&ConsulStatus>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let v = match values.lock() {
            Ok(v) => *v,
            Err(p) => *p.into_inner(),
        };
        if let Err(e) = answer(stream, v, consul) {
            log::debug!("metrics client: {e}");
        }
    }
}

fn answer(mut s: TcpStream, v: Values, consul: Option<&ConsulStatus>) -> std::io::Result<()> {
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    let (status, body) = match (method, path) {
        (b"GET", b"/metrics") | (b"GET", b"/") => {
            let status = consul.and_then(|f| f());
            ("200 OK", render(&v, status.as_ref(), unix_now()))
        }
        (b"GET", _) => ("404 Not Found", "only /metrics is served\n".to_string()),
        _ => ("405 Method Not Allowed", "GET /metrics\n".to_string()),
    };
    let reply = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(reply.as_bytes())
}

/// The Prometheus text exposition of `v` and the registration status.
pub fn render(v: &Values, consul: Option<&Consul>, now_unix: u64) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    metric(
        "microinit_app_up",
        "gauge",
        "1 while the app runs.",
        &[("", b(v.app_up))],
    );
    metric(
        "microinit_app_restarts_total",
        "counter",
        "Restarts of the app.",
        &[("", f64::from(v.restarts))],
    );
    if let Some(code) = v.last_exit {
        metric(
            "microinit_app_last_exit_status",
            "gauge",
            "The app's last exit status (n, or 128+signal).",
            &[("", f64::from(code))],
        );
    }
    metric(
        "microinit_zombies_reaped_total",
        "counter",
        "Processes reaped that were not microinit's own children.",
        &[("", v.zombies_reaped as f64)],
    );
    metric(
        "microinit_signals_forwarded_total",
        "counter",
        "Signals delivered to the app.",
        &[("", v.signals_forwarded as f64)],
    );
    metric(
        "microinit_waiting_for_upstreams",
        "gauge",
        "1 while the app waits for --wait-for targets.",
        &[("", b(v.waiting_upstreams))],
    );
    metric(
        "microinit_watch_changes_total",
        "counter",
        "Changes seen by --watch (first answers not counted).",
        &[("", v.watch_changes as f64)],
    );
    let Some(c) = consul else {
        return out;
    };
    metric(
        "microinit_consul_registered",
        "gauge",
        "1 while the service is registered with the agent.",
        &[("", b(c.state == "registered"))],
    );
    let samples: Vec<(String, f64)> = ["passing", "warning", "critical"]
        .iter()
        .map(|s| (format!("{{status=\"{s}\"}}"), b(c.check_status == *s)))
        .collect();
    let samples: Vec<(&str, f64)> = samples.iter().map(|(l, x)| (l.as_str(), *x)).collect();
    metric(
        "microinit_consul_check_status",
        "gauge",
        "The TTL check's status, one-hot.",
        &samples,
    );
    if let Some(h) = &c.last_heartbeat {
        metric(
            "microinit_consul_heartbeat_age_seconds",
            "gauge",
            "Seconds since the last check update sent to the agent.",
            &[("", now_unix.saturating_sub(h.unix) as f64)],
        );
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn the_exposition_holds_every_value_and_each_metric_once() {
        let v = Values {
            app_up: true,
            restarts: 3,
            last_exit: Some(137),
            zombies_reaped: 12,
            signals_forwarded: 5,
            waiting_upstreams: false,
            watch_changes: 2,
        };
        let mut consul = crate::control::status::tests::full_status()
            .consul
            .expect("a consul part");
        consul.check_status = "warning".into();
        let t = render(&v, Some(&consul), 1007);
        assert_eq!(sample(&t, "microinit_app_up"), Some(1.0));
        assert_eq!(sample(&t, "microinit_app_restarts_total"), Some(3.0));
        assert_eq!(sample(&t, "microinit_app_last_exit_status"), Some(137.0));
        assert_eq!(sample(&t, "microinit_zombies_reaped_total"), Some(12.0));
        assert_eq!(sample(&t, "microinit_signals_forwarded_total"), Some(5.0));
        assert_eq!(sample(&t, "microinit_watch_changes_total"), Some(2.0));
        assert_eq!(sample(&t, "microinit_consul_registered"), Some(1.0));
        assert_eq!(
            sample(&t, "microinit_consul_check_status{status=\"warning\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, "microinit_consul_check_status{status=\"passing\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&t, "microinit_consul_heartbeat_age_seconds"),
            Some(7.0)
        );
        for l in t.lines().filter(|l| l.starts_with("# TYPE")) {
            assert_eq!(t.matches(l).count(), 1, "{l} twice");
        }
        let without = render(&Values::default(), None, 0);
        assert!(!without.contains("consul") && !without.contains("last_exit"));
    }

    #[test]
    fn the_listener_serves_the_latest_snapshot_and_nothing_else() {
        let m = Metrics::start("127.0.0.1:0", None).expect("listen");
        let addr = m.local_addr().to_string();
        m.publish(Values {
            restarts: 4,
            ..Values::default()
        });
        let get = |path: &str| {
            let mut s = TcpStream::connect(&addr).expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .expect("send");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read");
            out
        };
        let page = get("/metrics");
        assert!(page.starts_with("HTTP/1.0 200"), "{page}");
        assert_eq!(sample(&page, "microinit_app_restarts_total"), Some(4.0));
        assert!(get("/secret").starts_with("HTTP/1.0 404"));
        // A client that connects and says nothing costs the next one at most the client timeout.
        let _silent = TcpStream::connect(&addr).expect("connect");
        let t = std::time::Instant::now();
        assert!(get("/metrics").contains("microinit_app_up"));
        assert!(t.elapsed() < CLIENT_TIMEOUT * 2, "{:?}", t.elapsed());
    }
}
