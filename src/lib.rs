//! microinit as a library: the modules the binary wires together, exposed so that tests reach them
//! without `#[path]`. The arrows point down: `cli` → `config`; `init` (the PID-1 core) uses `config`,
//! `runtime_check`, `consul` and `control`; none of those knows `init` or `cli`. See ARCHITECTURE.md.

pub mod cli;
pub mod config;
pub mod consul;
pub mod control;
pub mod init;
pub mod metrics;
pub mod runtime_check;
pub mod text;
