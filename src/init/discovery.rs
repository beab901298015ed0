//! Service discovery as PID 1's loop sees it: the wait before the app starts, and the watches while it runs.
//!
//! Owns: which wait targets are up, the wait's deadline and progress lines, the latest answer of every
//! watch, the debounce, writing `--watch-file` (write + rename, so a reader never sees half a file; its lines
//! from `--watch-file-line`, with the agent's values admitted only as plain text), and
//! turning all that into [`Action`]s. Does not own: the network (`consul::watch` threads do it and wake the
//! loop through [`Discovery::wake_fd`]), nor performing an action: the event loop starts the app, delivers
//! signals and spawns `--on-change exec:` programs, so every child still has one reaper (DESIGN.md).
//!
//! Zero idle cost: the only timers are the wait's (while waiting) and a pending debounce (after a change).

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::discovery::{
    DiscoveryConfig, Field, LineTemplate, OnChange, Piece, WaitTarget, WatchFileFormat, WatchTarget,
};
use crate::consul::watch::{Event, Instance, Snapshot, Upstreams};
use crate::control::status;

/// First progress line this long into the wait (a quick wait prints none), then one every PROGRESS_EVERY.
const PROGRESS_FIRST: Duration = Duration::from_secs(1);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Changes that never settle still act this long after the first one.
const DEBOUNCE_MAX_FACTOR: u32 = 10;

/// What the event loop should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The wait is over: the lifecycle may start the app (its `AwaitDone`).
    StartApp,
    /// `--on-change signal:SIG`.
    Signal(i32),
    /// `--on-change exec:…`: spawn this argv with these variables added to microinit's environment.
    Exec {
        argv: Vec<OsString>,
        env: Vec<(String, String)>,
    },
}

struct Wait {
    target: WaitTarget,
    up: bool,
    detail: String,
}

struct Watch {
    target: WatchTarget,
    snapshot: Option<Snapshot>,
    error: Option<String>,
}

pub struct Discovery {
    upstreams: Upstreams,
    waits: Vec<Wait>,
    watches: Vec<Watch>,
    on_change: Option<OnChange>,
    watch_file: Option<(std::path::PathBuf, WatchFileFormat)>,
    debounce: Duration,
    wait_started: Instant,
    wait_timeout: Option<Duration>,
    /// Still before the app's first start.
    waiting: bool,
    next_progress: Option<Instant>,
    /// A change to act on: (act at, first change of this burst).
    pending: Option<(Instant, Instant)>,
    /// The pending change includes one after a watch's first answer (the first answer is the baseline: it
    /// is written to the watch file but not signalled).
    pending_fires: bool,
    /// Every watch has answered and the watch file holds it.
    file_current: bool,
    changes: u64,
}

impl Discovery {
    /// Start the worker threads; None when no discovery option is set. Call with all signals blocked.
    pub fn start(cfg: DiscoveryConfig, now: Instant) -> std::io::Result<Option<Discovery>> {
        if cfg.wait_for.is_empty() && cfg.watches.is_empty() {
            return Ok(None);
        }
        let upstreams = Upstreams::start(&cfg)?;
        // Watches alone do not hold the app back, unless the watch file must exist first.
        let waiting = !cfg.wait_for.is_empty() || cfg.watch_file.is_some();
        Ok(Some(Discovery {
            upstreams,
            waits: cfg
                .wait_for
                .into_iter()
                .map(|target| Wait {
                    target,
                    up: false,
                    detail: "not checked yet".into(),
                })
                .collect(),
            watches: cfg
                .watches
                .into_iter()
                .map(|target| Watch {
                    target,
                    snapshot: None,
                    error: None,
                })
                .collect(),
            on_change: cfg.on_change,
            file_current: cfg.watch_file.is_none(),
            watch_file: cfg.watch_file,
            debounce: cfg.debounce,
            wait_started: now,
            wait_timeout: cfg.wait_timeout,
            waiting,
            next_progress: waiting.then_some(now + PROGRESS_FIRST),
            pending: None,
            pending_fires: false,
            changes: 0,
        }))
    }

    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.upstreams.wake_fd()
    }

    /// True until every wait target is up (and, with `--watch-file`, the file holds every watch's first
    /// answer): the app must not start yet.
    pub fn is_waiting(&self) -> bool {
        self.waiting
    }

    /// The wait is over without the app (a stop request): waiting threads may end.
    pub fn abort_wait(&mut self) {
        self.waiting = false;
        self.next_progress = None;
        self.upstreams.end_waiting();
    }

    /// Watch changes seen so far (first answers not counted).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The worker threads woke the loop: take their events.
    pub fn on_wake(&mut self, now: Instant) -> Vec<Action> {
        for ev in self.upstreams.take_events() {
            self.on_event(ev, now);
        }
        self.check_wait_over()
    }

    fn on_event(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::Waiting { target, detail } => {
                if let Some(w) = self.waits.get_mut(target) {
                    w.detail = detail;
                }
            }
            Event::Up { target } => {
                if let Some(w) = self.waits.get_mut(target) {
                    if self.waiting {
                        log::info!(
                            "{} is up after {:.1?}",
                            w.target,
                            now.duration_since(self.wait_started)
                        );
                    }
                    w.up = true;
                    w.detail = "up".into();
                }
            }
            Event::WatchError { watch, error } => {
                if let Some(w) = self.watches.get_mut(watch) {
                    log::warn!(
                        "watch {}: {}; retrying",
                        w.target.label(),
                        error.escape_debug()
                    );
                    w.error = Some(error);
                }
            }
            Event::Changed { watch, snapshot } => {
                let Some(w) = self.watches.get_mut(watch) else {
                    return;
                };
                let first = w.snapshot.is_none();
                log::info!("watch {}: {}", w.target.label(), describe(&snapshot));
                w.snapshot = Some(snapshot);
                w.error = None;
                if !first {
                    self.changes += 1;
                    self.pending_fires = true;
                }
                if self.watch_file.is_some() {
                    self.file_current = false;
                }
                // Debounce: act once it has been quiet for `debounce`, but no later than a bound after the
                // first change of the burst.
                let burst_start = self.pending.map_or(now, |(_, s)| s);
                let latest = burst_start + self.debounce * DEBOUNCE_MAX_FACTOR;
                self.pending = Some(((now + self.debounce).min(latest), burst_start));
            }
        }
    }

    fn check_wait_over(&mut self) -> Vec<Action> {
        if !self.waiting || !self.waits.iter().all(|w| w.up) || !self.file_current {
            return Vec::new();
        }
        self.waiting = false;
        self.next_progress = None;
        self.upstreams.end_waiting();
        if !self.waits.is_empty() {
            log::info!(
                "every upstream is up after {:.1?}; starting the app",
                self.wait_started.elapsed()
            );
        }
        vec![Action::StartApp]
    }

    /// The nearest instant `on_timer` has something to do. (`--wait-timeout` is the lifecycle's deadline.)
    pub fn deadline(&self) -> Option<Instant> {
        [self.next_progress, self.pending.map(|(at, _)| at)]
            .into_iter()
            .flatten()
            .min()
    }

    /// The wait's time limit, for the lifecycle (None: for ever).
    pub fn wait_timeout(&self) -> Option<Duration> {
        self.wait_timeout
    }

    /// The line printed when `--wait-timeout` ran out.
    pub fn timeout_message(&self) -> String {
        format!(
            "gave up after {:?} (--wait-timeout) waiting for: {}; not starting the app",
            self.wait_timeout.unwrap_or_default(),
            self.missing()
        )
    }

    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.pending.is_some_and(|(at, _)| now >= at) {
            self.pending = None;
            actions.extend(self.act());
        }
        if !self.waiting {
            return actions;
        }
        actions.extend(self.check_wait_over());
        if !self.waiting {
            return actions;
        }
        let waited = now.duration_since(self.wait_started);
        if self.next_progress.is_some_and(|t| now >= t) {
            self.next_progress = Some(now + PROGRESS_EVERY);
            eprintln!(
                "microinit: waiting {:.0?} so far for: {}",
                Duration::from_secs(waited.as_secs()),
                self.missing()
            );
        }
        actions
    }

    /// What is still awaited, with why, in one line (escaped: details come from the network).
    pub fn missing(&self) -> String {
        let mut parts: Vec<String> = self
            .waits
            .iter()
            .filter(|w| !w.up)
            .map(|w| format!("{} ({})", w.target, w.detail.escape_debug()))
            .collect();
        if !self.file_current {
            parts.extend(
                self.watches
                    .iter()
                    .filter(|w| w.snapshot.is_none())
                    .map(|w| format!("watch {} (first answer for --watch-file)", w.target.label())),
            );
        }
        parts.join(", ")
    }

    /// The debounce passed: rewrite the watch file, then the on-change action (once every watch has its
    /// baseline and something really changed).
    fn act(&mut self) -> Vec<Action> {
        let all_answered = self.watches.iter().all(|w| w.snapshot.is_some());
        if !all_answered {
            return Vec::new(); // acted on when the last first answer arrives
        }
        if let Some((path, format)) = &self.watch_file {
            match write_atomically(path, &render_file(&self.watches, format)) {
                Ok(()) => self.file_current = true,
                Err(e) => log::error!("--watch-file {}: {e}", path.display()),
            }
        }
        if !std::mem::take(&mut self.pending_fires) {
            return Vec::new();
        }
        match &self.on_change {
            None => Vec::new(),
            Some(OnChange::Signal(sig)) => vec![Action::Signal(*sig)],
            Some(OnChange::Exec(argv)) => vec![Action::Exec {
                argv: argv.clone(),
                env: self
                    .watches
                    .iter()
                    .map(|w| (env_name(&w.target), env_value(w.snapshot.as_ref())))
                    .collect(),
            }],
        }
    }

    /// For `microinit status`: what is awaited and what every watch sees.
    pub fn status(&self, now: Instant) -> status::Discovery {
        status::Discovery {
            waiting: self.waiting,
            waited_s: self
                .waiting
                .then(|| now.duration_since(self.wait_started).as_secs_f64()),
            wait_timeout_s: self.wait_timeout.map(|t| t.as_secs_f64()),
            wait_for: self
                .waits
                .iter()
                .map(|w| status::WaitFor {
                    target: w.target.to_string(),
                    up: w.up,
                    detail: w.detail.clone(),
                })
                .collect(),
            watches: self
                .watches
                .iter()
                .map(|w| status::Watch {
                    watch: w.target.label(),
                    value: w.snapshot.as_ref().map(snapshot_json),
                    error: w.error.clone(),
                })
                .collect(),
            changes: self.changes,
        }
    }
}

fn describe(s: &Snapshot) -> String {
    match s {
        Snapshot::Instances(v) if v.is_empty() => "no passing instance".into(),
        Snapshot::Instances(v) => format!(
            "{} passing: {}",
            v.len(),
            v.iter()
                .map(|i| format!("{}:{}", i.address, i.port))
                .collect::<Vec<_>>()
                .join(" ")
                .escape_debug()
        ),
        Snapshot::Value(None) => "key absent".into(),
        Snapshot::Value(Some(v)) => format!("{} bytes", v.len()),
    }
}

fn snapshot_json(s: &Snapshot) -> Value {
    match s {
        Snapshot::Instances(v) => Value::Array(
            v.iter()
                .map(|i| json!({"id": i.id, "node": i.node, "address": i.address, "port": i.port}))
                .collect(),
        ),
        Snapshot::Value(v) => json!(v),
    }
}

/// `MICROINIT_WATCH_<LABEL>`: the label upper-cased, anything but letters and digits as `_`.
pub fn env_name(t: &WatchTarget) -> String {
    let label: String = t
        .label()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("MICROINIT_WATCH_{label}")
}

/// Instances as `host:port` separated by commas (a KV value as is: the operator's own text). The addresses
/// pass the watch file's plain-text rule ([`render_line`]): a program that splits the list on `,` can never be
/// handed an extra entry, a newline or a shell metacharacter by whoever registered an instance.
fn env_value(s: Option<&Snapshot>) -> String {
    match s {
        Some(Snapshot::Instances(v)) => v
            .iter()
            .filter_map(|i| render_line(&LineTemplate::default(), i).ok())
            .collect::<Vec<_>>()
            .join(","),
        Some(Snapshot::Value(Some(v))) => v.clone(),
        Some(Snapshot::Value(None)) | None => String::new(),
    }
}

fn render_file(watches: &[Watch], format: &WatchFileFormat) -> Vec<u8> {
    match format {
        WatchFileFormat::Lines { line, empty } => {
            let mut out = String::new();
            let mut lines = 0;
            for w in watches {
                match &w.snapshot {
                    Some(Snapshot::Instances(v)) => {
                        for i in v {
                            match render_line(line, i) {
                                Ok(l) => {
                                    out.push_str(&l);
                                    out.push('\n');
                                    lines += 1;
                                }
                                Err(why) => log::warn!(
                                    "--watch-file: instance {:?} of {} left out: {why}",
                                    i.id,
                                    w.target.label()
                                ),
                            }
                        }
                    }
                    Some(Snapshot::Value(Some(v))) => {
                        out.push_str(v);
                        if !v.ends_with('\n') {
                            out.push('\n');
                        }
                    }
                    _ => {}
                }
            }
            if let (0, Some(empty)) = (lines, empty) {
                out.push_str(empty);
                out.push('\n');
            }
            out.into_bytes()
        }
        WatchFileFormat::Json => {
            let map: serde_json::Map<String, Value> = watches
                .iter()
                .map(|w| {
                    (
                        w.target.label(),
                        w.snapshot.as_ref().map_or(Value::Null, snapshot_json),
                    )
                })
                .collect();
            let mut s = Value::Object(map).to_string();
            s.push('\n');
            s.into_bytes()
        }
    }
}

/// One instance's line from the template. The values come from the agent, that is from whoever registered
/// the instance: each one the template names must be plain text (letters, digits, `.`, `-`, `_`, `:`, at most
/// 255 bytes), so it can never end a line or a directive (`;`, `}`, a newline) in the config it lands in; an
/// instance with anything else is left out. An IPv6 address is put in brackets (`[::1]:80` stays parseable).
fn render_line(t: &LineTemplate, i: &Instance) -> Result<String, String> {
    let mut out = String::new();
    for piece in &t.0 {
        let field = match piece {
            Piece::Text(s) => {
                out.push_str(s);
                continue;
            }
            Piece::Field(f) => *f,
        };
        let value = match field {
            Field::Address => &i.address,
            Field::Port => {
                out.push_str(&i.port.to_string());
                continue;
            }
            Field::Id => &i.id,
            Field::Node => &i.node,
        };
        let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':');
        if value.is_empty() || value.len() > 255 || !value.bytes().all(plain) {
            let shown: String = value.chars().take(64).collect();
            return Err(format!("its {} {shown:?} is not plain text", field.name()));
        }
        if field == Field::Address && value.contains(':') {
            out.push_str(&format!("[{value}]"));
        } else {
            out.push_str(value);
        }
    }
    Ok(out)
}

/// Write to `PATH.microinit-tmp` in the same directory, then rename over PATH: readers see the old file or
/// the new one, never a mix (rename(2) is atomic within one filesystem).
fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".microinit-tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(content)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::discovery::{parse_line_template, ServiceQuery};
    use crate::consul::watch::Instance;

    fn inst(addr: &str, port: u16) -> Instance {
        Instance {
            address: addr.into(),
            port,
            id: format!("{addr}-{port}"),
            node: "n".into(),
        }
    }

    fn watch(name: &str, s: Option<Snapshot>) -> Watch {
        Watch {
            target: WatchTarget::Service(ServiceQuery {
                name: name.into(),
                tag: None,
                dc: None,
            }),
            snapshot: s,
            error: None,
        }
    }

    #[test]
    fn watch_file_formats_hold_every_instance() {
        let w = vec![
            watch(
                "web",
                Some(Snapshot::Instances(vec![
                    inst("10.0.0.1", 80),
                    inst("10.0.0.2", 81),
                ])),
            ),
            Watch {
                target: WatchTarget::Kv {
                    key: "cfg".into(),
                    dc: None,
                },
                snapshot: Some(Snapshot::Value(None)),
                error: None,
            },
        ];
        assert_eq!(
            String::from_utf8(render_file(&w, &lines(None, None))).unwrap(),
            "10.0.0.1:80\n10.0.0.2:81\n"
        );
        let j: Value =
            serde_json::from_slice(&render_file(&w, &WatchFileFormat::Json)).expect("json");
        assert_eq!(j["web"][1]["port"], 81);
        assert_eq!(j["kv:cfg"], Value::Null);
        assert_eq!(env_name(&w[0].target), "MICROINIT_WATCH_WEB");
        assert_eq!(env_name(&w[1].target), "MICROINIT_WATCH_KV_CFG");
        assert_eq!(env_value(w[0].snapshot.as_ref()), "10.0.0.1:80,10.0.0.2:81");
    }

    #[test]
    fn the_exec_list_leaves_out_addresses_that_are_not_plain_text() {
        let s = Snapshot::Instances(vec![
            inst("10.0.0.1", 80),
            inst("10.0.0.9,evil:1", 80),
            inst("x;rm -rf /", 80),
            inst("fd00::1", 81),
        ]);
        assert_eq!(env_value(Some(&s)), "10.0.0.1:80,[fd00::1]:81");
    }

    fn lines(template: Option<&str>, empty: Option<&str>) -> WatchFileFormat {
        WatchFileFormat::Lines {
            line: template.map_or_else(LineTemplate::default, |t| {
                parse_line_template(t).expect("template")
            }),
            empty: empty.map(String::from),
        }
    }

    fn render(w: &[Watch], format: &WatchFileFormat) -> String {
        String::from_utf8(render_file(w, format)).expect("utf-8")
    }

    /// One service watch `web` that sees these instances.
    fn web(v: Vec<Instance>) -> [Watch; 1] {
        [watch("web", Some(Snapshot::Instances(v)))]
    }

    #[test]
    fn a_line_template_makes_an_nginx_upstream_include() {
        let mut v6 = inst("fd00::7", 8080);
        v6.node = "host-2".into();
        let w = web(vec![inst("10.0.0.1", 80), v6]);
        assert_eq!(
            render(&w, &lines(Some("server {address}:{port};"), None)),
            "server 10.0.0.1:80;\nserver [fd00::7]:8080;\n"
        );
        assert_eq!(
            render(
                &w,
                &lines(Some("server {id} {address}:{port} check # {node}"), None)
            ),
            "server 10.0.0.1-80 10.0.0.1:80 check # n\n\
             server fd00::7-8080 [fd00::7]:8080 check # host-2\n"
        );
    }

    #[test]
    fn no_instance_writes_the_empty_line_and_nothing_else() {
        let none = web(vec![]);
        let nginx = lines(
            Some("server {address}:{port};"),
            Some("server 127.0.0.1:9 down;"),
        );
        assert_eq!(render(&none, &nginx), "server 127.0.0.1:9 down;\n");
        assert_eq!(
            render(&none, &lines(None, None)),
            "",
            "no empty line asked for"
        );
        let one = web(vec![inst("10.0.0.1", 80)]);
        assert_eq!(render(&one, &nginx), "server 10.0.0.1:80;\n");
    }

    #[test]
    fn agent_text_cannot_inject_into_the_config() {
        // Whoever registers an instance chooses its address, id and node name.
        let mut evil_id = inst("10.0.0.3", 82);
        evil_id.id = "x;\n}\nserver 127.6.6.6:80;".into();
        let w = web(vec![
            inst("10.0.0.1;\nserver 127.6.6.6:80", 80),
            inst("10.0.0.2}", 81),
            inst("", 83),
            inst(&"a".repeat(256), 84),
            evil_id.clone(),
        ]);
        let nginx = lines(
            Some("server {address}:{port};"),
            Some("server 127.0.0.1:9 down;"),
        );
        // Only evil_id's address is plain, and the template does not name its id.
        assert_eq!(render(&w, &nginx), "server 10.0.0.3:82;\n");
        let with_id = lines(Some("server {id} {address}:{port}"), Some("# none"));
        assert_eq!(render(&w, &with_id), "# none\n", "every instance left out");
        assert_eq!(
            render(&w, &lines(None, None)),
            "10.0.0.3:82\n",
            "the default lines too"
        );
        assert!(render_line(&LineTemplate::default(), &evil_id).is_ok());
        let why = render_line(&parse_line_template("{id}").unwrap(), &evil_id).unwrap_err();
        assert!(
            why.contains(r#""x;\n}\nserver"#),
            "escaped in the log: {why}"
        );
    }

    #[test]
    fn the_watch_file_is_replaced_never_rewritten_in_place() {
        let dir = std::env::temp_dir().join(format!("microinit-wf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("upstreams");
        std::fs::write(&path, "old\n").expect("write");
        let before = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        write_atomically(&path, b"new\n").expect("replace");
        let after = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert_ne!(before.ok(), after.ok(), "a new inode: rename, not truncate");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
