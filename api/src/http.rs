//! The HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::platform::Platform;

#[derive(Clone)]
pub struct AppState {
    pub platform: Arc<Platform>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(state)
}

/// The process is up and serving HTTP.
async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// The process can do useful work: the databases answer (their migrations ran at
/// start-up, before the listener opened) and the read models are caught up within
/// `ready_max_lag` log positions.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
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
    let is_ready = log_ok && read_ok && projections_ok;
    let body = json!({
        "ready": is_ready,
        "checks": {
            "event_log": {"ok": log_ok, "backend": platform.store.backend(), "head": head, "error": log_error},
            "read_models": {"ok": read_ok, "error": read_error},
            "migrations": {"ok": true},
            "projections": {"ok": projections_ok, "max_lag": max_lag, "each": projection_checks},
        }
    });
    let status = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// A server listening on a socket, serving until `shutdown` resolves.
pub async fn serve(
    platform: Platform,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState {
        platform: Arc::new(platform),
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Binds `host:port` (port 0 picks a free one).
pub async fn bind(host: &str, port: u16) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((host, port)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
