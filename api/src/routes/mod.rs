//! The HTTP routes, one module per resource.

pub mod apps;
pub mod events;
pub mod gql;
pub mod runs;
pub mod system;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use flowforge_engine::EngineContext;
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::platform::Platform;

#[derive(Clone)]
pub struct AppState {
    pub platform: Arc<Platform>,
    pub gql: gql::GqlSchema,
}

impl AppState {
    pub fn new(platform: Platform) -> Self {
        Self {
            platform: Arc::new(platform),
            gql: gql::schema(),
        }
    }
}

impl AppState {
    pub fn engine(&self) -> Result<&Arc<EngineContext>, ApiError> {
        self.platform.engine().ok_or_else(|| {
            ApiError::unavailable("the execution engine is not running in this process")
        })
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(system::health))
        .route("/ready", get(system::ready))
        .route("/metrics", get(system::metrics))
        // The SDK protocol.
        .route("/e/{key}", post(events::send_with_key))
        .route("/fn/register", post(apps::register))
        .route("/v0/gql", post(gql::handle))
        .route("/v1/events", get(events::list_inngest))
        .route("/v0/runs/{id}/batch", get(runs::protocol_batch))
        .route("/v0/runs/{id}/actions", get(runs::protocol_actions))
        // The REST API.
        .route("/api/v1/events", post(events::send).get(events::list))
        .route("/api/v1/events/{id}", get(events::show))
        .route("/api/v1/apps", get(apps::list_apps))
        .route("/api/v1/functions", get(apps::list_functions))
        .route("/api/v1/functions/{id}", get(apps::show_function))
        .route("/api/v1/functions/{id}/invoke", post(apps::invoke))
        .route("/api/v1/runs", get(runs::list))
        .route("/api/v1/runs/{id}", get(runs::show))
        .route("/api/v1/runs/{id}/events", get(runs::events))
        .route("/api/v1/runs/{id}/stream", get(runs::stream))
        .route("/api/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/api/v1/runs/{id}/replay", post(runs::replay))
        .route(
            "/api/v1/webhooks",
            post(webhooks::create).get(webhooks::list),
        )
        .route(
            "/api/v1/webhooks/{id}",
            get(webhooks::show).delete(webhooks::delete),
        )
        .route("/hooks/{id}", post(webhooks::deliver))
        .with_state(state)
}

/// A page of a list, newest first.
#[derive(Debug, Serialize)]
pub struct Page {
    pub items: Vec<Value>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl Page {
    pub fn new<T>(
        mut rows: Vec<T>,
        limit: u32,
        to_json: impl Fn(&T) -> Value,
        cursor_of: impl Fn(&T) -> String,
    ) -> Self {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Self {
            next_cursor: if more {
                rows.last().map(&cursor_of)
            } else {
                None
            },
            items: rows.iter().map(to_json).collect(),
        }
    }
}

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;

pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(0) => Err(ApiError::invalid_field("limit", "limit must be at least 1")),
        Some(n) if n > MAX_PAGE => Err(ApiError::invalid_field(
            "limit",
            format!("limit must be at most {MAX_PAGE}"),
        )),
        Some(n) => Ok(n),
    }
}

/// An opaque cursor over (timestamp, key) ordering.
pub fn cursor(at: i64, key: &str) -> String {
    format!("{at}_{key}")
}

/// The (timestamp, key) to continue before; the start of the list without a cursor.
pub fn parse_cursor(cursor: Option<&str>) -> Result<(i64, String), ApiError> {
    match cursor {
        None => Ok((i64::MAX, String::new())),
        Some(c) => {
            let (at, key) = c.split_once('_').ok_or_else(|| {
                ApiError::invalid_field("cursor", "not a cursor this API returned")
            })?;
            let at = at
                .parse()
                .map_err(|_| ApiError::invalid_field("cursor", "not a cursor this API returned"))?;
            Ok((at, key.to_owned()))
        }
    }
}
