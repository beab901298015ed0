//! PLACEHOLDER until the runtime-check branch lands.
use crate::config::RuntimeCheckConfig;
use std::ffi::OsString;
pub struct Report;
impl Report {
    pub fn is_ok(&self) -> bool {
        true
    }
    pub fn missing_message(&self, _cfg: &RuntimeCheckConfig) -> String {
        String::new()
    }
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
pub fn check_waiting(_command: &[OsString], _cfg: &RuntimeCheckConfig) -> Report {
    Report
}
pub fn check_main(_json: bool, _command: &[OsString], _cfg: &RuntimeCheckConfig) -> i32 {
    0
}
