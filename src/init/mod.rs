//! The PID-1 core: spawning the app, owning every signal, reaping every child, and the event loop that
//! ties them together until the exit status is known.
//!
//! Owns: everything that runs inside PID 1's single thread. Does not own: parsing options (`cli`,
//! `config`), the runtime check (`runtime_check`), HTTP (`consul`), the socket protocol (`control`).

pub mod discovery;
pub mod event_loop;
pub mod exit_status;
pub mod lifecycle;
pub mod probes;
pub mod reaper;
pub mod resident;
pub mod signals;
pub mod spawn;
