//! The event loop as the control socket sees it: `microinit status` reads its state, `signal`, `restart` and
//! `maintenance` become the loop's own actions.
//!
//! Owns: the status document and the mapping of each command onto the loop. Does not own: the socket, the
//! protocol or the limits (`control`), nor the actions themselves (the rest of `event_loop`).

use serde_json::{json, Value};

use super::EventLoop;
use crate::consul::registration;
use crate::control::server::ControlHandler;
use crate::init::lifecycle::Event;
use crate::init::signals::signal_name;

impl ControlHandler for EventLoop {
    fn status(&self) -> Value {
        let command: Vec<String> = self
            .cfg
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        // While the lifecycle waits (e.g. for the runtime volume): what for and since when.
        let waiting = self.waiting_for().map(|(what, since)| {
            json!({"for": what.describe(), "since_s": since.elapsed().as_secs_f64()})
        });
        json!({
            "microinit": {"version": env!("CARGO_PKG_VERSION"), "pid": std::process::id(), "dialect": self.dialect},
            "app": {
                "pid": self.app.as_ref().map(|a| a.pid),
                "command": command,
                "state": self.lifecycle.state_name(),
                "waiting": waiting,
                "uptime_s": self.app.as_ref().map(|a| a.started.elapsed().as_secs_f64()),
                "restarts": self.lifecycle.restarts(),
                "last_exit": self.lifecycle.last_exit().map(|s| s.to_json()),
            },
            "signals_forwarded": self.signals_forwarded,
            "zombies_reaped": self.zombies_reaped,
            "runtime_check": self.runtime_check,
            "consul": self.registration.as_ref().map(|r| r.status_json()),
        })
    }

    fn signal(&mut self, sig: i32) -> Result<String, String> {
        let pid = self
            .app
            .as_ref()
            .map(|a| a.pid)
            .ok_or_else(|| format!("no app running; {} not sent", signal_name(sig)))?;
        self.dispatch(Event::Signal(sig));
        Ok(format!(
            "{} delivered to the app (pid {pid}) by microinit's rules",
            signal_name(sig)
        ))
    }

    fn restart(&mut self) -> Result<String, String> {
        let answer = self.lifecycle.restart_answer()?;
        self.dispatch(Event::Restart);
        Ok(answer.into())
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
