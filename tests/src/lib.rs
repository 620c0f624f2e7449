//! Helpers shared by FlowForge's integration tests.
//!
//! Tests that need PostgreSQL get a database of their own, created with a unique name
//! and dropped afterwards; they never assume an empty server. Where PostgreSQL cannot
//! be reached they skip with a message, except under `CI=true`, where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod pg;

/// True when running in CI, where a missing service is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (returns `None`) or fails, depending on [`in_ci`], when a service is missing.
pub fn missing_service<T>(what: &str, why: impl std::fmt::Display) -> Option<T> {
    if in_ci() {
        panic!("{what} is required under CI=true but is unavailable: {why}");
    }
    eprintln!("SKIPPED: {what} is unavailable ({why}); set CI=true to make this a failure");
    None
}

pub mod backend;
pub mod fake_llm;
pub mod fake_marketplace;
pub mod fixtures;
pub mod nats;
pub mod process;
pub mod python;
pub mod server;
