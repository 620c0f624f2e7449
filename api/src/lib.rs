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

/// Every binary linking the server allocates through mimalloc. A run's path through the
/// server is allocation-heavy (rows decoded by sqlx, JSON payloads, folded run
/// states), and glibc's allocator took about 29 % of the server's CPU samples under
/// the runs benchmark; mimalloc's per-thread free lists suit tokio's work-stealing
/// threads better.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
