//! The event loop as the control socket sees it: `microinit status` reads its state, `signal`, `restart` and
//! `maintenance` become the loop's own actions.
//!
//! Owns: filling in the status document and the answer to each request, including the ones answered later
//! (`maintenance` waits for Consul's result). Does not own: the socket, the
//! protocol or the limits (`control`), nor the actions themselves (the rest of `event_loop`).

use std::time::Instant;

use super::EventLoop;
use crate::consul::registration;
use crate::control::protocol::{Reply, Request};
use crate::control::server::{ClientId, Incoming};
use crate::control::status::{self, Status};
use crate::init::exit_status::ExitStatus;
use crate::init::lifecycle::Event;
use crate::init::signals::signal_name;

impl EventLoop {
    /// Serve the control socket after a wakeup (`polled`: what poll reported, empty after the read(2) wait)
    /// and answer every request read. Costs no syscall when no client is there and no SIGIO came.
    pub(super) fn serve_control(&mut self, polled: &[libc::pollfd]) {
        let Some(server) = &mut self.control else {
            return;
        };
        if polled.is_empty() && server.may_sleep_in_read() {
            // Woken in read(2) by a signal: no client, no connection due (each raises a SIGIO): nothing to
            // serve, and no clock to read on the signal-forwarding path.
            return;
        }
        for Incoming { client, request } in server.serve(polled, Instant::now()) {
            let outcome = match request {
                Request::Status => Ok(Some(Reply::Status(Box::new(self.status())))),
                Request::Signal(sig) => self.signal_request(sig).map(|m| Some(Reply::Done(m))),
                Request::Restart => self.restart_request().map(|m| Some(Reply::Done(m))),
                // Answered when the worker reports Consul's result (`on_maintenance_result`).
                Request::Maintenance { on, reason } => {
                    self.maintenance_request(client, on, reason).map(|()| None)
                }
            };
            let reply = match outcome {
                Ok(None) => continue,
                Ok(Some(reply)) => reply,
                Err(error) => Reply::Failed(error),
            };
            if let Some(server) = &mut self.control {
                server.reply(client, &reply);
            }
        }
    }

    /// The worker's answer to the oldest maintenance request (it answers each, in order).
    pub(super) fn on_maintenance_result(&mut self, result: Result<(), String>) {
        let reply = match (&result, self.maintenance_replies.pop_front()) {
            (_, None) => None,
            (Ok(()), Some((client, on))) => Some((
                client,
                Reply::Done(format!(
                    "maintenance {}: the Consul agent applied it",
                    if on { "on" } else { "off" }
                )),
            )),
            (Err(e), Some((client, _))) => {
                Some((client, Reply::Failed(format!("maintenance: {e}"))))
            }
        };
        match result {
            Ok(()) => log::info!("maintenance mode updated"),
            Err(e) => log::error!("maintenance: {e}"),
        }
        if let (Some((client, reply)), Some(server)) = (reply, &mut self.control) {
            server.reply(client, &reply);
        }
    }

    fn status(&self) -> Status {
        status::Status {
            microinit: status::Microinit {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
                dialect: self.dialect.into(),
            },
            app: status::App {
                pid: self.app.as_ref().map(|a| a.pid),
                command: self
                    .cfg
                    .command
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
                state: match self.waiting_for() {
                    Some((what, since)) => format!(
                        "waiting for {} since {:.1} s",
                        what.describe(),
                        since.elapsed().as_secs_f64()
                    ),
                    None => self.lifecycle.state_name().into(),
                },
                uptime_s: self.app.as_ref().map(|a| a.started.elapsed().as_secs_f64()),
                restarts: self.lifecycle.restarts(),
                last_exit: self.lifecycle.last_exit().map(|e| match e {
                    ExitStatus::Code(n) => status::LastExit::Code(n),
                    ExitStatus::Signal(s) => status::LastExit::Signal(s),
                }),
            },
            signals_forwarded: self.signals_forwarded,
            zombies_reaped: self.zombies_reaped,
            runtime_check: self.runtime_check.clone(),
            consul: self.registration.as_ref().and_then(|r| r.status()),
            discovery: self.discovery.as_ref().map(|d| d.status(Instant::now())),
            health: Some(crate::control::health::to_status(self.health_verdict())),
        }
    }

    fn signal_request(&mut self, sig: i32) -> Result<String, String> {
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

    fn restart_request(&mut self) -> Result<String, String> {
        let answer = self.lifecycle.restart_answer()?;
        self.dispatch(Event::Restart);
        Ok(answer.into())
    }

    fn maintenance_request(
        &mut self,
        client: ClientId,
        on: bool,
        reason: Option<String>,
    ) -> Result<(), String> {
        let r = self
            .registration
            .as_ref()
            .ok_or("Consul registration is off, so there is no service to put in maintenance")?;
        r.send(registration::Command::Maintenance { on, reason });
        self.maintenance_replies.push_back((client, on));
        Ok(())
    }
}
