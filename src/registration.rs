//! PLACEHOLDER until the consul branch lands: registration is never configured.
use crate::config::{ConsulConfig, Options};
use std::os::fd::BorrowedFd;

pub fn consul_config(_opts: &Options) -> Result<Option<ConsulConfig>, String> {
    Ok(None)
}
pub struct Registration;
pub enum Command {
    AppStarted { pid: i32 },
    Health { status: CheckStatus, output: String },
    AppDown { reason: String },
    Maintenance { on: bool, reason: Option<String> },
    Deregister,
    Shutdown,
}
pub enum Event {
    Deregistered,
    Fatal(String),
    MaintenanceResult(Result<(), String>),
}
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
}
impl Registration {
    pub fn start(_cfg: ConsulConfig) -> std::io::Result<Registration> {
        Ok(Registration)
    }
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        unimplemented!()
    }
    pub fn send(&self, _cmd: Command) {}
    pub fn take_events(&self) -> Vec<Event> {
        vec![]
    }
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
