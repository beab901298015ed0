//! The status document `microinit status` shows: one typed value, written to JSON here and read back here.
//!
//! Owns: the document's fields, its JSON form (`to_json`) and the one reader of it (`from_json`). Does not
//! own: filling it in (the event loop, the Consul worker, the runtime check each fill their part), the human
//! table (`render`) nor the socket (`server`, `client`).
//!
//! It never holds a secret: the Consul token is not a field, and every text comes from microinit's own
//! state or, for untrusted text (health output, agent errors, the command line), is shown escaped by
//! `render`. serde's derive is not used: it is not a dependency, and this hand-written pair is the only
//! place the field names appear.

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub microinit: Microinit,
    pub app: App,
    pub signals_forwarded: u64,
    pub zombies_reaped: u64,
    /// None when the check is off (`--no-runtime-check`).
    pub runtime_check: Option<RuntimeCheck>,
    /// None when microinit does not register a service.
    pub consul: Option<Consul>,
    /// None without `--wait-for` and `--watch`.
    pub discovery: Option<Discovery>,
    /// What `microinit health` reports (None only from a PID 1 that predates it).
    pub health: Option<Health>,
}

/// `microinit health`'s verdict, computed by PID 1 (`control::health::verdict`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub ok: bool,
    /// One line: why (un)healthy.
    pub reason: String,
}

/// Upstreams awaited and watched (`init::discovery`).
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// The app has not started yet because of `--wait-for`.
    pub waiting: bool,
    pub waited_s: Option<f64>,
    pub wait_timeout_s: Option<f64>,
    pub wait_for: Vec<WaitFor>,
    pub watches: Vec<Watch>,
    /// Watch changes acted on or pending (first answers not counted).
    pub changes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitFor {
    /// As the user wrote it: "consul:db:2", "tcp:redis:6379", …
    pub target: String,
    pub up: bool,
    /// Why not up yet, in one line (from the network: untrusted).
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    /// "web", "web@v2", "kv:config/app".
    pub watch: String,
    /// The last answer: `[{"id","node","address","port"}…]` for a service, the text (or null) for a KV key;
    /// None before the first answer. From the agent: untrusted.
    pub value: Option<Value>,
    pub error: Option<String>,
}

impl Discovery {
    fn to_json(&self) -> Value {
        json!({
            "waiting": self.waiting,
            "waited_s": self.waited_s,
            "wait_timeout_s": self.wait_timeout_s,
            "wait_for": self.wait_for.iter().map(|w| json!({
                "target": w.target, "up": w.up, "detail": w.detail,
            })).collect::<Vec<_>>(),
            "watches": self.watches.iter().map(|w| json!({
                "watch": w.watch, "value": w.value, "error": w.error,
            })).collect::<Vec<_>>(),
            "changes": self.changes,
        })
    }

    fn from_json(d: &Fields<'_>) -> Result<Discovery, String> {
        Ok(Discovery {
            waiting: d.boolean("waiting")?,
            waited_s: d.opt_f64("waited_s")?,
            wait_timeout_s: d.opt_f64("wait_timeout_s")?,
            wait_for: d
                .array("wait_for")?
                .iter()
                .map(|w| {
                    let w = Fields::of(w, "discovery.wait_for[].")?;
                    Ok(WaitFor {
                        target: w.string("target")?,
                        up: w.boolean("up")?,
                        detail: w.string("detail")?,
                    })
                })
                .collect::<Result<_, String>>()?,
            watches: d
                .array("watches")?
                .iter()
                .map(|w| {
                    let w = Fields::of(w, "discovery.watches[].")?;
                    Ok(Watch {
                        watch: w.string("watch")?,
                        value: w.get("value").cloned(),
                        error: w.opt_string("error")?,
                    })
                })
                .collect::<Result<_, String>>()?,
            changes: d.uint("changes")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Microinit {
    pub version: String,
    pub pid: u32,
    /// "microinit", "tini" or "dumb-init".
    pub dialect: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// None while no app process exists (pre-start hook, backoff, exited).
    pub pid: Option<i32>,
    pub command: Vec<String>,
    /// The phase in words ("running", "stopping", "waiting for the runtime volume since …").
    pub state: String,
    pub uptime_s: Option<f64>,
    pub restarts: u32,
    pub last_exit: Option<LastExit>,
}

/// How the app's last process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastExit {
    Code(i32),
    Signal(i32),
}

impl LastExit {
    /// The shell's view: n, or 128 + signal.
    pub fn status(self) -> i32 {
        match self {
            LastExit::Code(n) => n,
            LastExit::Signal(s) => 128 + s,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeCheck {
    pub ok: bool,
    pub missing: Vec<Missing>,
}

/// A file the app needs that is not in the image (see `runtime_check`).
#[derive(Debug, Clone, PartialEq)]
pub struct Missing {
    /// "program", "interpreter", "library", "link", …
    pub kind: String,
    pub path: String,
    pub needed_by: Option<String>,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Consul {
    pub agent: String,
    pub service_id: String,
    pub service_name: String,
    pub check_id: String,
    /// The service definition file, when the service came from one.
    pub service_file: Option<String>,
    /// The registration's state in words ("registered", "re-registering", …).
    pub state: String,
    pub ready: bool,
    pub check_status: String,
    /// What the TTL check says (health command output: untrusted).
    pub check_output: String,
    pub last_heartbeat: Option<Heartbeat>,
    /// Some(reason) while in maintenance mode (the reason itself may be None).
    pub maintenance: Option<Option<String>>,
    /// From the agent or the network: untrusted.
    pub last_error: Option<String>,
    /// Successful registrations, the first one included (more: the agent forgot the service and was told
    /// again).
    pub registrations: u32,
}

impl Consul {
    /// The "consul" part of the document.
    pub fn to_json(&self) -> Value {
        json!({
            "agent": self.agent,
            "service_id": self.service_id,
            "service_name": self.service_name,
            "check_id": self.check_id,
            "service_file": self.service_file,
            "state": self.state,
            "ready": self.ready,
            "check": {"status": self.check_status, "output": self.check_output},
            "last_heartbeat": self.last_heartbeat.as_ref().map(|h| json!({
                "unix": h.unix, "ok": h.error.is_none(), "error": h.error,
            })),
            "maintenance": self.maintenance.is_some(),
            "maintenance_reason": self.maintenance.clone().flatten(),
            "last_error": self.last_error,
            "registrations": self.registrations,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Unix time in seconds.
    pub unix: u64,
    /// None when the agent accepted it.
    pub error: Option<String>,
}

impl Status {
    pub fn to_json(&self) -> Value {
        let app = &self.app;
        json!({
            "microinit": {
                "version": self.microinit.version,
                "pid": self.microinit.pid,
                "dialect": self.microinit.dialect,
            },
            "app": {
                "pid": app.pid,
                "command": app.command,
                "state": app.state,
                "uptime_s": app.uptime_s,
                "restarts": app.restarts,
                "last_exit": app.last_exit.map(|e| match e {
                    LastExit::Code(n) => json!({"code": n, "signal": null, "status": e.status()}),
                    LastExit::Signal(s) => json!({"code": null, "signal": s, "status": e.status()}),
                }),
            },
            "signals_forwarded": self.signals_forwarded,
            "zombies_reaped": self.zombies_reaped,
            "runtime_check": self.runtime_check.as_ref().map(|r| json!({
                "ok": r.ok,
                "missing": r.missing.iter().map(|m| json!({
                    "kind": m.kind, "path": m.path, "needed_by": m.needed_by, "detail": m.detail,
                })).collect::<Vec<_>>(),
            })),
            "consul": self.consul.as_ref().map(Consul::to_json),
            "discovery": self.discovery.as_ref().map(Discovery::to_json),
            "health": self.health.as_ref().map(|h| json!({"ok": h.ok, "reason": h.reason})),
        })
    }

    /// The document as `to_json` wrote it. The error names the first field that does not fit.
    pub fn from_json(v: &Value) -> Result<Status, String> {
        let top = Fields::of(v, "")?;
        let mi = top.object("microinit", "microinit.")?;
        let app = top.object("app", "app.")?;
        let last_exit = match app.optional_object("last_exit", "app.last_exit.")? {
            None => None,
            Some(e) => Some(match (e.opt_int("code")?, e.opt_int("signal")?) {
                (_, Some(s)) => LastExit::Signal(s),
                (Some(n), None) => LastExit::Code(n),
                (None, None) => return Err(e.wrong("code", "a number")),
            }),
        };
        let runtime_check = match top.optional_object("runtime_check", "runtime_check.")? {
            None => None,
            Some(r) => Some(RuntimeCheck {
                ok: r.boolean("ok")?,
                missing: r
                    .array("missing")?
                    .iter()
                    .map(|m| {
                        let m = Fields::of(m, "runtime_check.missing[].")?;
                        Ok(Missing {
                            kind: m.string("kind")?,
                            path: m.string("path")?,
                            needed_by: m.opt_string("needed_by")?,
                            detail: m.string("detail")?,
                        })
                    })
                    .collect::<Result<_, String>>()?,
            }),
        };
        let consul = match top.optional_object("consul", "consul.")? {
            None => None,
            Some(c) => {
                let check = c.object("check", "consul.check.")?;
                let last_heartbeat =
                    match c.optional_object("last_heartbeat", "consul.last_heartbeat.")? {
                        None => None,
                        Some(h) => Some(Heartbeat {
                            unix: h.uint("unix")?,
                            error: match h.boolean("ok")? {
                                true => None,
                                // A failed heartbeat always says why; an empty reason still reads as failed.
                                false => Some(h.opt_string("error")?.unwrap_or_default()),
                            },
                        }),
                    };
                Some(Consul {
                    agent: c.string("agent")?,
                    service_id: c.string("service_id")?,
                    service_name: c.string("service_name")?,
                    check_id: c.string("check_id")?,
                    service_file: c.opt_string("service_file")?,
                    state: c.string("state")?,
                    ready: c.boolean("ready")?,
                    check_status: check.string("status")?,
                    check_output: check.string("output")?,
                    last_heartbeat,
                    maintenance: c
                        .boolean("maintenance")?
                        .then(|| c.opt_string("maintenance_reason"))
                        .transpose()?,
                    last_error: c.opt_string("last_error")?,
                    registrations: c.uint("registrations")?,
                })
            }
        };
        Ok(Status {
            microinit: Microinit {
                version: mi.string("version")?,
                pid: mi.uint("pid")?,
                dialect: mi.string("dialect")?,
            },
            app: App {
                pid: app.opt_int("pid")?,
                command: app
                    .array("command")?
                    .iter()
                    .map(|a| a.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| app.wrong("command", "a list of strings"))?,
                state: app.string("state")?,
                uptime_s: app.opt_f64("uptime_s")?,
                restarts: app.uint("restarts")?,
                last_exit,
            },
            signals_forwarded: top.uint("signals_forwarded")?,
            zombies_reaped: top.uint("zombies_reaped")?,
            runtime_check,
            consul,
            discovery: top
                .optional_object("discovery", "discovery.")?
                .map(|d| Discovery::from_json(&d))
                .transpose()?,
            health: match top.optional_object("health", "health.")? {
                None => None,
                Some(h) => Some(Health {
                    ok: h.boolean("ok")?,
                    reason: h.string("reason")?,
                }),
            },
        })
    }
}

/// The fields of one JSON object, read with errors that name the field's path ("app.pid").
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    /// "app." for the fields of "app".
    at: &'static str,
}

impl<'a> Fields<'a> {
    fn of(v: &'a Value, at: &'static str) -> Result<Fields<'a>, String> {
        match v.as_object() {
            Some(obj) => Ok(Fields { obj, at }),
            None if at.is_empty() => Err("status document: not a JSON object".into()),
            None => Err(format!(
                "status document: {} is not an object",
                at.trim_end_matches('.')
            )),
        }
    }

    fn wrong(&self, key: &str, what: &str) -> String {
        format!("status document: {}{key} is missing or not {what}", self.at)
    }

    /// The value, or None for a missing field and for null alike.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn required<T>(
        &self,
        key: &str,
        what: &str,
        f: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<T, String> {
        self.get(key)
            .and_then(f)
            .ok_or_else(|| self.wrong(key, what))
    }

    fn optional<T>(
        &self,
        key: &str,
        what: &str,
        f: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, String> {
        self.get(key)
            .map(|v| f(v).ok_or_else(|| self.wrong(key, what)))
            .transpose()
    }

    fn string(&self, key: &str) -> Result<String, String> {
        self.required(key, "a string", |v| v.as_str().map(str::to_string))
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>, String> {
        self.optional(key, "a string", |v| v.as_str().map(str::to_string))
    }

    fn boolean(&self, key: &str) -> Result<bool, String> {
        self.required(key, "true or false", Value::as_bool)
    }

    fn uint<T: TryFrom<u64>>(&self, key: &str) -> Result<T, String> {
        self.required(key, "a whole number in range", |v| {
            T::try_from(v.as_u64()?).ok()
        })
    }

    fn opt_int<T: TryFrom<i64>>(&self, key: &str) -> Result<Option<T>, String> {
        self.optional(key, "a whole number in range", |v| {
            T::try_from(v.as_i64()?).ok()
        })
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, String> {
        self.optional(key, "a number", Value::as_f64)
    }

    fn array(&self, key: &str) -> Result<&'a Vec<Value>, String> {
        self.required(key, "a list", Value::as_array)
    }

    fn object(&self, key: &str, at: &'static str) -> Result<Fields<'a>, String> {
        Fields::of(self.get(key).unwrap_or(&Value::Null), at)
    }

    fn optional_object(&self, key: &str, at: &'static str) -> Result<Option<Fields<'a>>, String> {
        self.get(key).map(|v| Fields::of(v, at)).transpose()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every field set, every optional part present: what the table and round-trip tests use.
    pub(crate) fn full_status() -> Status {
        Status {
            microinit: Microinit {
                version: "0.1.0".into(),
                pid: 1,
                dialect: "tini".into(),
            },
            app: App {
                pid: Some(7),
                command: vec![
                    "node".into(),
                    "server.js".into(),
                    "--name".into(),
                    "it's here".into(),
                ],
                state: "running".into(),
                uptime_s: Some(3723.4),
                restarts: 2,
                last_exit: Some(LastExit::Signal(15)),
            },
            signals_forwarded: 12,
            zombies_reaped: 3,
            runtime_check: Some(RuntimeCheck {
                ok: false,
                missing: vec![
                    Missing {
                        kind: "interpreter".into(),
                        path: "/lib/ld-musl-x86_64.so.1".into(),
                        needed_by: Some("/opt/files/node".into()),
                        detail: "x".into(),
                    },
                    Missing {
                        kind: "library".into(),
                        path: "/opt/files/lib/libstdc++.so.6".into(),
                        needed_by: None,
                        detail: "y".into(),
                    },
                ],
            }),
            consul: Some(Consul {
                agent: "http://127.0.0.1:8500".into(),
                service_id: "web-1".into(),
                service_name: "web".into(),
                check_id: "microinit:web-1".into(),
                service_file: None,
                state: "registered".into(),
                ready: true,
                check_status: "passing".into(),
                check_output: "microinit: app running (pid 7)".into(),
                last_heartbeat: Some(Heartbeat {
                    unix: 1000,
                    error: None,
                }),
                maintenance: Some(Some("deploy 42".into())),
                last_error: None,
                registrations: 1,
            }),
            discovery: Some(Discovery {
                waiting: true,
                waited_s: Some(6.5),
                wait_timeout_s: None,
                wait_for: vec![WaitFor {
                    target: "consul:db:2".into(),
                    up: false,
                    detail: "1 of 2 passing".into(),
                }],
                watches: vec![Watch {
                    watch: "web".into(),
                    value: Some(
                        json!([{"id": "web-1", "node": "n1", "address": "10.0.0.1", "port": 80}]),
                    ),
                    error: Some("agent unreachable".into()),
                }],
                changes: 3,
            }),
            health: Some(Health {
                ok: false,
                reason: "waiting for upstreams: consul:db:2 (1 of 2 passing)".into(),
            }),
        }
    }

    /// No app process, no Consul, no runtime check: every optional part absent.
    pub(crate) fn minimal_status() -> Status {
        let mut s = full_status();
        s.app.pid = None;
        s.app.command.clear();
        s.app.uptime_s = None;
        s.app.last_exit = Some(LastExit::Code(3));
        s.runtime_check = None;
        s.consul = None;
        s.discovery = None;
        s.health = None;
        s
    }

    #[test]
    fn a_full_document_survives_a_round_trip() {
        let s = full_status();
        assert_eq!(Status::from_json(&s.to_json()), Ok(s));
    }

    #[test]
    fn a_minimal_document_survives_a_round_trip() {
        let s = minimal_status();
        assert_eq!(Status::from_json(&s.to_json()), Ok(s));
    }

    #[test]
    fn consul_variants_survive_a_round_trip() {
        let mut s = full_status();
        let c = s.consul.as_mut().unwrap();
        c.maintenance = Some(None);
        c.service_file = Some("/etc/web.json".into());
        c.last_heartbeat = Some(Heartbeat {
            unix: 5,
            error: Some("consul agent unreachable".into()),
        });
        c.last_error = Some("ACL not found\u{1b}[2J".into());
        assert_eq!(Status::from_json(&s.to_json()), Ok(s.clone()));
        s.consul.as_mut().unwrap().maintenance = None;
        assert_eq!(Status::from_json(&s.to_json()), Ok(s));
    }

    #[test]
    fn the_json_has_the_documented_field_names() {
        let v = full_status().to_json();
        assert_eq!(v["app"]["pid"], 7);
        assert_eq!(
            v["app"]["last_exit"],
            json!({"code": null, "signal": 15, "status": 143})
        );
        assert_eq!(v["consul"]["check"]["status"], "passing");
        assert_eq!(v["consul"]["maintenance"], true);
        assert_eq!(v["consul"]["maintenance_reason"], "deploy 42");
        assert_eq!(v["consul"]["last_heartbeat"]["ok"], true);
        assert_eq!(v["runtime_check"]["missing"][1]["needed_by"], Value::Null);
    }

    #[test]
    fn a_wrong_field_is_named_by_its_path() {
        for (mutate, expect) in [
            (
                (|v: &mut Value| v["app"]["pid"] = json!("seven")) as fn(&mut Value),
                "app.pid",
            ),
            (|v| v["microinit"] = json!(1), "microinit is not an object"),
            (|v| v["app"]["command"] = json!([1]), "app.command"),
            (
                |v| v["consul"]["check"]["status"] = json!(null),
                "consul.check.status",
            ),
            (|v| v["signals_forwarded"] = json!(-1), "signals_forwarded"),
            (
                |v| v["microinit"]["pid"] = json!(1u64 << 40),
                "microinit.pid",
            ),
            (
                |v| v["runtime_check"]["missing"][0]["path"] = json!(false),
                "runtime_check.missing[].path",
            ),
            (|v| *v = json!([]), "not a JSON object"),
        ] {
            let mut v = full_status().to_json();
            mutate(&mut v);
            let err = Status::from_json(&v).expect_err("must be refused");
            assert!(err.contains(expect), "{err:?} should name {expect}");
        }
    }
}
