//! The event loop as the control socket sees it: `microinit status` reads its state, `signal`, `restart` and
//! `maintenance` become the loop's own actions.
//!
//! Owns: the status document and the mapping of each command onto the loop. Does not own: the socket, the
//! protocol or the limits (`control`), nor the actions themselves (the rest of `event_loop`).

use serde_json::{json, Value};

use super::{AppState, EventLoop};
use crate::consul::registration;
use crate::control::server::ControlHandler;
use crate::init::signals::signal_name;

impl ControlHandler for EventLoop {
    fn status(&self) -> Value {
        let command: Vec<String> = self
            .cfg
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        json!({
            "microinit": {"version": env!("CARGO_PKG_VERSION"), "pid": std::process::id(), "dialect": self.dialect},
            "app": {
                "pid": self.app_pid,
                "command": command,
                "state": self.state.as_str(),
                "uptime_s": self.app_started.map(|t| t.elapsed().as_secs_f64()),
                "restarts": self.restarts,
                "last_exit": self.last_exit.map(|s| s.to_json()),
            },
            "signals_forwarded": self.signals_forwarded,
            "zombies_reaped": self.zombies_reaped,
            "runtime_check": self.runtime_check,
            "consul": self.registration.as_ref().map(|r| r.status_json()),
            "discovery": self.discovery.as_ref().map(|d| d.status_json(std::time::Instant::now())),
            "health": crate::control::health::to_json(&self.health_verdict()),
        })
    }

    fn signal(&mut self, sig: i32) -> Result<String, String> {
        let pid = self
            .app_pid
            .ok_or_else(|| format!("no app running; {} not sent", signal_name(sig)))?;
        self.deliver(sig);
        Ok(format!(
            "{} delivered to the app (pid {pid}) by microinit's rules",
            signal_name(sig)
        ))
    }

    fn restart(&mut self) -> Result<String, String> {
        if self.stopping || self.state == AppState::Exited {
            return Err("microinit is stopping; not restarting the app".into());
        }
        match self.app_pid {
            Some(pid) if self.restart_requested => Ok(format!(
                "a restart is already under way (waiting for pid {pid} to exit)"
            )),
            Some(pid) => {
                // The exit is routed to after_app_exit, which respawns at once when restart_requested is set.
                self.restart_requested = true;
                self.state = AppState::Restarting;
                if let Some(r) = &self.registration {
                    r.send(registration::Command::AppDown {
                        reason: "restart requested (microinit restart)".into(),
                    });
                }
                self.forward_stop(libc::SIGTERM);
                Ok(format!(
                    "restarting the app: SIGTERM sent to pid {pid}, SIGKILL after {:?} if it is still running",
                    self.cfg.grace
                ))
            }
            // Between restarts (backoff) or before the pre-start hook finished: start without waiting.
            None if self.respawn_at.is_some() => {
                self.respawn_at = Some(std::time::Instant::now());
                Ok("the app was waiting to restart; starting it now".into())
            }
            None => Err("the app is not running yet (pre-start hook); nothing to restart".into()),
        }
    }

    fn maintenance(&mut self, on: bool, reason: Option<String>) -> Result<String, String> {
        let r = self
            .registration
            .as_ref()
            .ok_or("Consul registration is off, so there is no service to put in maintenance")?;
        r.send(registration::Command::Maintenance { on, reason });
        Ok(format!(
            "maintenance {} requested from the Consul agent",
            if on { "on" } else { "off" }
        ))
    }
}
