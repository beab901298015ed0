//! The health bridge: `microinit health` exits 0 when the app is running and ready (and, with Consul on,
//! its check is passing), 1 otherwise, with one line saying why. Made for `HEALTHCHECK CMD
//! ["microinit","health"]`, a Kubernetes exec probe and compose's `condition: service_healthy`.
//!
//! Owns: the rule ([`verdict`], pure, computed by PID 1 and sent in the status document as
//! `"health":{"ok","reason"}`) and the client side (exit codes 0/1 only: Docker reserves 2, and a probe
//! must read "no answer" as unhealthy). Does not own: the facts (the event loop gathers them) nor the
//! socket exchange (`control::client`).

use std::path::Path;
use std::time::Duration;

use crate::control::client::call;
use crate::control::protocol::{Reply, Request};
use crate::control::status;

/// A probe must answer well within Docker's default 30 s HEALTHCHECK timeout.
const TIMEOUT: Duration = Duration::from_secs(3);
/// An app that restarted after a crash counts as crash-looping until it has run this long.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// What PID 1 knows that health depends on.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The app's state as `status` names it ("running", "restarting", …).
    pub state: String,
    /// The app's pid when one is running.
    pub pid: Option<i32>,
    /// Still waiting for `--wait-for` targets: what is missing.
    pub waiting_for: Option<String>,
    /// Restarts after failures in a row, and how long the current run has lasted.
    pub crash_restarts: u32,
    pub uptime: Duration,
    /// With Consul registration: the worker's readiness and the TTL check's status.
    pub consul: Option<(bool, String)>,
}

/// Ok(why healthy) or Err(why not), one line each.
pub fn verdict(f: &Facts) -> Result<String, String> {
    if let Some(missing) = &f.waiting_for {
        return Err(format!("waiting for upstreams: {missing}"));
    }
    let Some(pid) = f.pid else {
        return Err(format!("the app is not running (state: {})", f.state));
    };
    if f.state != "running" {
        return Err(format!("the app (pid {pid}) is {}", f.state));
    }
    if f.crash_restarts > 0 && f.uptime < STABLE_AFTER {
        return Err(format!(
            "crash loop: the app restarted {} time(s) after failing and has run only {:.1}s (healthy after {}s)",
            f.crash_restarts,
            f.uptime.as_secs_f64(),
            STABLE_AFTER.as_secs()
        ));
    }
    match &f.consul {
        Some((false, _)) => Err(format!("the app (pid {pid}) is running but not ready yet")),
        Some((true, check)) if check != "passing" => Err(format!(
            "the app (pid {pid}) is running but its Consul check is {check}"
        )),
        Some(_) => Ok(format!(
            "the app (pid {pid}) is running, ready and passing in Consul"
        )),
        None => Ok(format!("the app (pid {pid}) is running")),
    }
}

/// The `health` part of the status document.
pub fn to_status(v: Result<String, String>) -> status::Health {
    match v {
        Ok(reason) => status::Health { ok: true, reason },
        Err(reason) => status::Health { ok: false, reason },
    }
}

/// `microinit health`: 0 healthy, 1 anything else (including no answer), one line on stdout.
pub fn health_main(socket: &Path) -> i32 {
    let reply = match call(socket, &Request::Status, TIMEOUT) {
        Ok(r) => r,
        Err((_, msg)) => {
            println!("unhealthy: {msg}");
            return 1;
        }
    };
    let health = match reply {
        Reply::Status(s) => s.health,
        Reply::Failed(e) | Reply::Done(e) => {
            println!("unhealthy: {}", e.escape_debug());
            return 1;
        }
    };
    let Some(h) = health else {
        println!("unhealthy: PID 1 sent no health verdict");
        return 1;
    };
    // The reason can quote the agent or a URL: print it escaped, on one line.
    if h.ok {
        println!("healthy: {}", h.reason.escape_debug());
        0
    } else {
        println!("unhealthy: {}", h.reason.escape_debug());
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Facts {
        Facts {
            state: "running".into(),
            pid: Some(7),
            uptime: Duration::from_secs(60),
            ..Facts::default()
        }
    }

    #[test]
    fn a_running_app_is_healthy_and_says_so() {
        assert_eq!(verdict(&running()), Ok("the app (pid 7) is running".into()));
        let f = Facts {
            consul: Some((true, "passing".into())),
            ..running()
        };
        assert!(verdict(&f).is_ok());
    }

    #[test]
    fn every_unhealthy_state_names_its_reason() {
        let cases = [
            (
                Facts {
                    waiting_for: Some("consul:db (0 of 1 passing)".into()),
                    ..Facts::default()
                },
                "waiting for upstreams: consul:db",
            ),
            (
                Facts {
                    state: "restarting".into(),
                    ..Facts::default()
                },
                "not running (state: restarting)",
            ),
            (
                Facts {
                    state: "stopping".into(),
                    ..running()
                },
                "is stopping",
            ),
            (
                Facts {
                    crash_restarts: 3,
                    uptime: Duration::from_millis(500),
                    ..running()
                },
                "crash loop",
            ),
            (
                Facts {
                    consul: Some((false, "critical".into())),
                    ..running()
                },
                "not ready",
            ),
            (
                Facts {
                    consul: Some((true, "warning".into())),
                    ..running()
                },
                "check is warning",
            ),
        ];
        for (f, want) in cases {
            let e = verdict(&f).expect_err(want);
            assert!(e.contains(want), "{e} lacks {want}");
        }
        let stable = Facts {
            crash_restarts: 3,
            uptime: STABLE_AFTER,
            ..running()
        };
        assert!(
            verdict(&stable).is_ok(),
            "a restarted app that has run long enough is healthy"
        );
    }
}
