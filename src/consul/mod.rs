//! Consul: the agent's HTTP client and the registration worker that drives it off PID 1's thread.
//!
//! Owns: everything that talks to a Consul agent. Does not own: when the app starts or stops (`init`).

pub mod address;
pub mod client;
pub mod http;
pub mod identity;
pub mod registration;
pub mod transport;
pub mod watch;
