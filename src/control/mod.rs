//! The control socket: the server PID 1 runs and the client `docker exec … microinit status` runs.
//!
//! Owns: the wire protocol and the typed status document, shared by both ends, the table that shows it, and
//! both ends of the socket. Does not own: what a request does (`init`).

pub mod client;
pub mod health;
pub mod protocol;
pub mod render;
pub mod server;
pub mod status;
