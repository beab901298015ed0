//! Upstreams off PID 1's thread: waiting for `--wait-for` targets and following `--watch`es.
//!
//! Owns: one thread per target or watch (a Consul blocking query holds its thread for up to [`QUERY_WAIT`],
//! so targets cannot share one), the blocking queries (`index` + `wait`, never a poll loop), re-querying
//! from index 0 with capped exponential backoff and jitter after the agent went away, probing tcp/http/file
//! targets with a capped backoff, and telling the main loop what happened through a channel and an eventfd
//! (as the registration worker does). Does not own: deciding what a result means for the app (starting it,
//! debouncing, signalling, spawning: `init::discovery` and the event loop), nor the HTTP calls (`client`).
//! No thread here spawns or waits for a process (DESIGN.md: one reaper).

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use serde_json::Value;

use crate::config::discovery::{DiscoveryConfig, ServiceQuery, WaitTarget, WatchTarget};
use crate::config::AgentConfig;
use crate::consul::client::{Client, Error};
use crate::consul::registration::seed;
use crate::init::probes;

/// How long one blocking query may be held by the agent. Longer means fewer requests when nothing changes;
/// a change is answered at once either way. (A dead agent resets the connection, which ends a query early.)
pub const QUERY_WAIT: Duration = Duration::from_secs(120);
/// Retry delays after a failure: doubles from the first to the cap, with ±25 % jitter.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);
/// tcp/http/file targets are probed again after this, doubling up to the cap.
const PROBE_FIRST: Duration = Duration::from_millis(50);
const PROBE_CAP: Duration = Duration::from_secs(1);
/// A KV value kept for the app is capped (it ends up in an environment variable).
const MAX_KV_VALUE: usize = 64 * 1024;

/// One instance of a watched or awaited service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instance {
    /// Sorted by address first: the order of `host:port` lines does not depend on ids.
    pub address: String,
    pub port: u16,
    pub id: String,
    pub node: String,
}

/// What a watch currently sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// Passing instances, sorted.
    Instances(Vec<Instance>),
    /// The KV value (None: the key does not exist).
    Value(Option<String>),
}

/// What the worker threads tell the main loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A wait target is not up yet: why, in one line (for progress lines and `status`).
    Waiting { target: usize, detail: String },
    /// A wait target is up; its thread has ended.
    Up { target: usize },
    /// A watch's first answer, or a different answer than the last one.
    Changed { watch: usize, snapshot: Snapshot },
    /// A watch cannot reach the agent (or was refused); it retries by itself.
    WatchError { watch: usize, error: String },
}

/// The main loop's handle: events out through a channel and an eventfd.
pub struct Upstreams {
    events: Receiver<Event>,
    wake: Arc<EventFd>,
    /// Set when the wait is over (started or aborted): waiting threads end at their next turn.
    waiting_done: Arc<AtomicBool>,
}

impl Upstreams {
    /// Start a thread for every wait target and every watch. Call with all signals blocked (threads inherit
    /// the mask, so no signal is ever delivered to them).
    pub fn start(cfg: &DiscoveryConfig) -> std::io::Result<Upstreams> {
        let wake = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let (tx, rx) = mpsc::channel();
        let waiting_done = Arc::new(AtomicBool::new(false));
        let client = |agent: &Option<AgentConfig>| -> std::io::Result<Client> {
            let a = agent.as_ref().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "no Consul agent configured",
                )
            })?;
            Client::new(a).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        };
        for (i, target) in cfg.wait_for.iter().enumerate() {
            let out = Out {
                tx: tx.clone(),
                wake: Arc::clone(&wake),
            };
            let done = Arc::clone(&waiting_done);
            let target = target.clone();
            let body: Box<dyn FnOnce() + Send> = match &target {
                WaitTarget::Consul { query, min } => {
                    let c = client(&cfg.agent)?;
                    let (query, min) = (query.clone(), *min);
                    Box::new(move || wait_consul(&c, &query, min, i, &out, &done))
                }
                _ => Box::new(move || wait_probe(&target, i, &out, &done)),
            };
            std::thread::Builder::new()
                .name(format!("wait-{i}"))
                .spawn(body)?;
        }
        for (i, watch) in cfg.watches.iter().enumerate() {
            let out = Out {
                tx: tx.clone(),
                wake: Arc::clone(&wake),
            };
            let c = client(&cfg.agent)?;
            let watch = watch.clone();
            std::thread::Builder::new()
                .name(format!("watch-{i}"))
                .spawn(move || follow(&c, &watch, i, &out))?;
        }
        Ok(Upstreams {
            events: rx,
            wake,
            waiting_done,
        })
    }

    /// Readable when events are queued; then call [`Upstreams::take_events`].
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Clear the eventfd and drain the queued events; never blocks.
    pub fn take_events(&self) -> Vec<Event> {
        // Read first, then drain: threads queue before they write, so nothing is lost in between.
        let _ = self.wake.read();
        self.events.try_iter().collect()
    }

    /// The wait is over: waiting threads stop at their next turn (a query in flight ends within its wait).
    pub fn end_waiting(&self) {
        self.waiting_done.store(true, Ordering::Relaxed);
    }
}

/// A thread's way out to the main loop.
struct Out {
    tx: Sender<Event>,
    wake: Arc<EventFd>,
}

impl Out {
    fn send(&self, ev: Event) {
        if self.tx.send(ev).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

/// `--wait-for consul:…`: blocking queries until `min` instances pass.
fn wait_consul(
    client: &Client,
    query: &ServiceQuery,
    min: u32,
    target: usize,
    out: &Out,
    done: &AtomicBool,
) {
    let path = health_path(query);
    let perm = format!("service:read on service {:?}", query.name);
    let mut last_detail = String::new();
    let mut report = |detail: String| {
        if detail != last_detail {
            last_detail.clone_from(&detail);
            out.send(Event::Waiting { target, detail });
        }
    };
    blocking_loop(client, &path, &perm, done, |answer| match answer {
        Ok(body) => {
            let n = body.as_deref().map(parse_instances).map_or(0, |r| match r {
                Ok(v) => v.len(),
                Err(_) => 0,
            });
            if n >= min as usize {
                out.send(Event::Up { target });
                return Flow::Stop;
            }
            report(format!("{n} of {min} passing"));
            Flow::Go
        }
        Err(e) => {
            report(e.message.clone());
            Flow::Go
        }
    });
}

/// `--wait-for tcp:|http://|file:`: probe with a capped backoff until it answers.
fn wait_probe(t: &WaitTarget, target: usize, out: &Out, done: &AtomicBool) {
    let mut delay = PROBE_FIRST;
    let mut last = String::new();
    while !done.load(Ordering::Relaxed) {
        match probes::probe(t, probes::PROBE_TIMEOUT) {
            Ok(()) => {
                out.send(Event::Up { target });
                return;
            }
            Err(detail) => {
                if detail != last {
                    last.clone_from(&detail);
                    out.send(Event::Waiting { target, detail });
                }
            }
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(PROBE_CAP);
    }
}

/// `--watch`: blocking queries for ever; an event whenever the answer differs from the last one.
fn follow(client: &Client, watch: &WatchTarget, i: usize, out: &Out) {
    let (path, perm) = match watch {
        WatchTarget::Service(q) => (
            health_path(q),
            format!("service:read on service {:?}", q.name),
        ),
        WatchTarget::Kv { key, dc } => {
            let mut p = format!("/v1/kv/{}", encode_key(key));
            if let Some(dc) = dc {
                p.push_str(&format!("?dc={}", encode_key(dc)));
            }
            (p, format!("key:read on key {key:?}"))
        }
    };
    let never = AtomicBool::new(false);
    let mut last: Option<Snapshot> = None;
    let mut failing = false;
    blocking_loop(client, &path, &perm, &never, |answer| {
        let snapshot = match answer {
            Err(e) => {
                if !failing {
                    failing = true;
                    out.send(Event::WatchError {
                        watch: i,
                        error: e.message.clone(),
                    });
                }
                return Flow::Go;
            }
            Ok(body) => match watch {
                WatchTarget::Service(_) => match body.as_deref().map(parse_instances) {
                    Some(Ok(v)) => Snapshot::Instances(v),
                    None => Snapshot::Instances(Vec::new()),
                    Some(Err(e)) => {
                        out.send(Event::WatchError { watch: i, error: e });
                        return Flow::Go;
                    }
                },
                WatchTarget::Kv { .. } => Snapshot::Value(body.as_deref().and_then(kv_value)),
            },
        };
        failing = false;
        if last.as_ref() != Some(&snapshot) {
            last = Some(snapshot.clone());
            out.send(Event::Changed { watch: i, snapshot });
        }
        Flow::Go
    });
}

enum Flow {
    Go,
    Stop,
}

/// The blocking-query loop shared by waits and watches: each answer (or error) goes to `on_answer`.
///
/// The index: the agent's `X-Consul-Index` from the last answer. It restarts from 0 after a failure (a
/// restarted agent's index may be lower than ours, and a query with a higher index than the agent's would
/// block for the whole wait, missing changes) and when it went backwards (Consul's documented rule).
fn blocking_loop(
    client: &Client,
    path: &str,
    perm: &str,
    stop: &AtomicBool,
    mut on_answer: impl FnMut(Result<Option<String>, &Error>) -> Flow,
) {
    let mut index = 0u64;
    let mut failures = 0u32;
    let mut rng = seed();
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        match client.blocking_get(path, perm, index, QUERY_WAIT) {
            Ok((body, new_index)) => {
                failures = 0;
                let same = new_index == index;
                index = if new_index < index { 0 } else { new_index };
                if let Flow::Stop = on_answer(Ok(body)) {
                    return;
                }
                // An agent answering at once with an unchanged index (no index support on the endpoint, or
                // an index of 0) would make this a busy loop: pace it like a failure instead.
                if same && asked.elapsed() < QUERY_WAIT / 2 {
                    std::thread::sleep(jittered(RETRY_FIRST, &mut rng));
                }
            }
            Err(e) => {
                index = 0;
                if let Flow::Stop = on_answer(Err(&e)) {
                    return;
                }
                let delay = RETRY_FIRST
                    .saturating_mul(1 << failures.min(16))
                    .min(RETRY_CAP);
                failures += 1;
                log::debug!("{}; retrying in about {delay:?}", e.message);
                std::thread::sleep(jittered(delay, &mut rng));
            }
        }
    }
}

/// `/v1/health/service/NAME?passing[&tag=T][&dc=DC]`.
fn health_path(q: &ServiceQuery) -> String {
    let mut p = format!("/v1/health/service/{}?passing", encode_key(&q.name));
    if let Some(t) = &q.tag {
        p.push_str(&format!("&tag={}", encode_key(t)));
    }
    if let Some(dc) = &q.dc {
        p.push_str(&format!("&dc={}", encode_key(dc)));
    }
    p
}

/// The passing instances in a `/v1/health/service` answer, sorted. The service address falls back to the
/// node's, as Consul's own DNS interface does.
pub fn parse_instances(body: &str) -> Result<Vec<Instance>, String> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| format!("health answer is not JSON ({e})"))?;
    let entries = v.as_array().ok_or("health answer is not a JSON array")?;
    let mut out: Vec<Instance> = entries
        .iter()
        .filter_map(|e| {
            let svc = e.get("Service")?;
            let node = e.get("Node");
            let node_addr = node.and_then(|n| n.get("Address")).and_then(Value::as_str);
            let address = svc
                .get("Address")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
                .or(node_addr)?;
            Some(Instance {
                address: address.to_string(),
                port: svc
                    .get("Port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(0),
                id: svc.get("ID").and_then(Value::as_str).unwrap_or("").into(),
                node: node
                    .and_then(|n| n.get("Node"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .into(),
            })
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The value of a `/v1/kv/KEY` answer (base64 in `[{"Value": …}]`), as text, capped.
fn kv_value(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let b64 = v.get(0)?.get("Value")?.as_str()?;
    let mut bytes = base64_decode(b64)?;
    bytes.truncate(MAX_KV_VALUE);
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Standard base64 (what Consul's KV API uses); None on anything else. A dozen lines beat a dependency.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (k, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * k);
        }
        let bytes = n.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// Percent-encode everything but unreserved characters and '/' (KV keys are paths).
fn encode_key(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `d` ± 25 %, so many watchers that lost the same agent do not come back in lock step.
fn jittered(d: Duration, rng: &mut u64) -> Duration {
    // xorshift64: jitter only, no security needed.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    d.mul_f64(0.75 + (*rng % 1000) as f64 / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_sorted_and_fall_back_to_the_node_address() {
        let body = r#"[
          {"Node":{"Node":"n2","Address":"10.0.0.2"},"Service":{"ID":"web-b","Address":"","Port":8080}},
          {"Node":{"Node":"n1","Address":"10.0.0.9"},"Service":{"ID":"web-a","Address":"10.0.0.1","Port":80}},
          {"Node":{"Node":"n3"},"Service":{"ID":"no-address","Port":1}}
        ]"#;
        let v = parse_instances(body).expect("parses");
        let shown: Vec<String> = v
            .iter()
            .map(|i| format!("{}:{}", i.address, i.port))
            .collect();
        assert_eq!(shown, ["10.0.0.1:80", "10.0.0.2:8080"]);
        assert_eq!(v[1].node, "n2");
        assert!(parse_instances("{\"x\":1}").is_err());
        assert!(parse_instances("[1,").is_err());
    }

    #[test]
    fn kv_values_are_decoded_from_base64() {
        assert_eq!(
            kv_value(r#"[{"Key":"k","Value":"aGVsbG8gd29ybGQ="}]"#),
            Some("hello world".into())
        );
        assert_eq!(base64_decode("YQ=="), Some(b"a".to_vec()));
        assert_eq!(base64_decode("YWI="), Some(b"ab".to_vec()));
        assert_eq!(base64_decode("YW*i"), None);
        assert_eq!(kv_value(r#"[{"Key":"k","Value":null}]"#), None);
    }

    #[test]
    fn query_paths_are_encoded() {
        let q = ServiceQuery {
            name: "web".into(),
            tag: Some("v 2".into()),
            dc: Some("eu".into()),
        };
        assert_eq!(
            health_path(&q),
            "/v1/health/service/web?passing&tag=v%202&dc=eu"
        );
        assert_eq!(encode_key("a/b c"), "a/b%20c");
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        let mut rng = seed();
        for _ in 0..1000 {
            let d = jittered(Duration::from_millis(1000), &mut rng);
            assert!(
                d >= Duration::from_millis(750) && d <= Duration::from_millis(1250),
                "{d:?}"
            );
        }
    }
}

#[cfg(test)]
mod agent_tests {
    use super::*;
    use crate::config::discovery::{parse_wait_target, parse_watch};
    use crate::consul::registration::dev_agent::DevAgent;

    const SOON: Duration = Duration::from_secs(20);

    fn config(agent: &DevAgent, wait_for: &[&str], watches: &[&str]) -> DiscoveryConfig {
        DiscoveryConfig {
            wait_for: wait_for
                .iter()
                .map(|s| parse_wait_target(s).expect("target"))
                .collect(),
            watches: watches
                .iter()
                .map(|s| parse_watch(s).expect("watch"))
                .collect(),
            agent: Some({
                let mut o = crate::config::Options::default();
                o.set("CONSUL_HTTP_ADDR", vec![agent.addr()]);
                AgentConfig::parse(&o).expect("agent config")
            }),
            ..DiscoveryConfig::default()
        }
    }

    /// The next event, waiting on the eventfd as the main loop does.
    fn next_event(u: &Upstreams, queue: &mut std::collections::VecDeque<Event>) -> Event {
        let deadline = Instant::now() + SOON;
        loop {
            if let Some(ev) = queue.pop_front() {
                return ev;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no event within {SOON:?}");
            let mut fds = [libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&u.wake_fd()),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, left.as_millis() as i32) };
            queue.extend(u.take_events());
        }
    }

    fn ports(ev: &Event) -> Option<Vec<u16>> {
        match ev {
            Event::Changed {
                snapshot: Snapshot::Instances(v),
                ..
            } => Some(v.iter().map(|i| i.port).collect()),
            _ => None,
        }
    }

    #[test]
    fn a_consul_wait_is_up_only_once_enough_instances_pass() {
        let agent = DevAgent::start();
        let u = Upstreams::start(&config(&agent, &["consul:db:2"], &[])).expect("start");
        let mut q = Default::default();
        assert_eq!(
            next_event(&u, &mut q),
            Event::Waiting {
                target: 0,
                detail: "0 of 2 passing".into()
            }
        );
        agent.register_instance("db", "db-1", 5432, "passing");
        agent.register_instance("db", "db-2", 5433, "critical");
        assert_eq!(
            next_event(&u, &mut q),
            Event::Waiting {
                target: 0,
                detail: "1 of 2 passing".into()
            }
        );
        agent.set_instance_check("db-2", "passing", "");
        assert_eq!(next_event(&u, &mut q), Event::Up { target: 0 });
    }

    #[test]
    fn a_watch_sees_instances_come_and_go_and_resumes_after_the_agent_restarts() {
        let mut agent = DevAgent::start();
        let u = Upstreams::start(&config(&agent, &[], &["web"])).expect("start");
        let mut q = Default::default();
        assert_eq!(ports(&next_event(&u, &mut q)), Some(vec![]), "first answer");
        agent.register_instance("web", "web-1", 8001, "passing");
        assert_eq!(ports(&next_event(&u, &mut q)), Some(vec![8001]));
        agent.register_instance("web", "web-2", 8002, "passing");
        assert_eq!(ports(&next_event(&u, &mut q)), Some(vec![8001, 8002]));
        agent.set_instance_check("web-1", "critical", "");
        assert_eq!(ports(&next_event(&u, &mut q)), Some(vec![8002]));

        agent.restart(); // a dev agent forgets every service
        let mut saw_error = false;
        let after = loop {
            match next_event(&u, &mut q) {
                Event::WatchError { .. } => saw_error = true,
                ev => break ports(&ev),
            }
        };
        assert!(saw_error, "the lost agent is reported");
        assert_eq!(after, Some(vec![]), "the restarted agent knows no instance");
        agent.register_instance("web", "web-3", 8003, "passing");
        assert_eq!(ports(&next_event(&u, &mut q)), Some(vec![8003]));
    }

    #[test]
    fn a_kv_watch_follows_the_value_including_its_absence() {
        let agent = DevAgent::start();
        let u = Upstreams::start(&config(&agent, &[], &["kv:app/config"])).expect("start");
        let mut q = Default::default();
        let value = |ev: Event| match ev {
            Event::Changed {
                snapshot: Snapshot::Value(v),
                ..
            } => v,
            other => panic!("not a value: {other:?}"),
        };
        assert_eq!(value(next_event(&u, &mut q)), None);
        let (st, _) = agent.request("PUT", "/v1/kv/app/config", None, Some("v1"));
        assert_eq!(st, 200);
        assert_eq!(value(next_event(&u, &mut q)), Some("v1".into()));
    }
}
