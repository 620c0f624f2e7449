//! Logging: human-readable by default, JSON lines with `FLOWFORGE_LOG_FORMAT=json`.
//! The level comes from `FLOWFORGE_LOG` (or `RUST_LOG`), `info` by default.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = std::env::var("FLOWFORGE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,sqlx=warn".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("FLOWFORGE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests that start several apps) keeps the first subscriber.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
}
