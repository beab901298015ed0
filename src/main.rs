//! microinit: wiring only. See the module docs for what each stage owns.
#![allow(dead_code)] // skeleton: removed once every stage is wired

mod config;
mod control;
mod control_client;
mod which;

fn main() {}
