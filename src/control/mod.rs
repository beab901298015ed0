//! The control socket: the server PID 1 runs and the client `docker exec … microinit status` runs.
//!
//! Owns: the wire protocol, both of its ends. Does not own: what a request does (`init`).

pub mod client;
pub mod health;
pub mod server;
