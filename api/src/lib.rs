//! The FlowForge server: configuration, process wiring and the HTTP API.
//!
//! `platform` assembles the event log, the read models and the background workers
//! for one process; `http` exposes them; `cli` is the `flowforge` command line;
//! `bench` holds the benchmark commands.

pub mod auth;
pub mod bench;
pub mod caller;
pub mod cli;
mod client_cli;
pub mod config;
mod dev_apps;
pub mod error;
pub mod http;
pub mod platform;
pub mod reads;
pub mod routes;
pub mod skill_sources;
pub mod skill_zip;
pub mod telemetry;

pub use config::Config;
pub use platform::Platform;
