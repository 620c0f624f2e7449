//! `/health` and `/ready`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;

/// The process is up and serving HTTP.
pub async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// The process can do useful work: the databases answer (their migrations ran at
/// start-up, before the listener opened) and the read models are caught up within
/// `ready_max_lag` log positions.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let platform = &state.platform;
    let timeout = Duration::from_secs(2);
    let head = tokio::time::timeout(timeout, platform.store.head_position()).await;
    let (log_ok, head, log_error) = match head {
        Ok(Ok(head)) => (true, head, None),
        Ok(Err(e)) => (false, 0, Some(e.to_string())),
        Err(_) => (false, 0, Some("timed out".to_owned())),
    };
    let projections = tokio::time::timeout(
        timeout,
        flowforge_projections::status(&platform.read_db, &*platform.store, &platform.projections),
    )
    .await;
    let (read_ok, projections, read_error) = match projections {
        Ok(Ok(list)) => (true, list, None),
        Ok(Err(e)) => (false, Vec::new(), Some(e.to_string())),
        Err(_) => (false, Vec::new(), Some("timed out".to_owned())),
    };
    let max_lag = platform.config.ready_max_lag;
    let projection_checks: Vec<_> = projections
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "checkpoint": p.checkpoint,
                "lag": p.lag,
                "ok": p.checkpoint.is_some() && p.lag <= max_lag,
            })
        })
        .collect();
    let projections_ok = read_ok
        && projections
            .iter()
            .all(|p| p.checkpoint.is_some() && p.lag <= max_lag);
    let nats = platform.jetstream.as_ref().map(|q| q.is_connected());
    let is_ready = log_ok && read_ok && projections_ok && nats != Some(false);
    let body = json!({
        "ready": is_ready,
        "checks": {
            "event_log": {"ok": log_ok, "backend": platform.store.backend(), "head": head, "error": log_error},
            "read_models": {"ok": read_ok, "error": read_error},
            "migrations": {"ok": true},
            "projections": {"ok": projections_ok, "max_lag": max_lag, "each": projection_checks},
            "work_queue": {
                "ok": nats != Some(false),
                "backend": if nats.is_some() { "nats-jetstream" } else { "in-process" },
            },
        }
    });
    let status = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
