//! `/health`, `/ready` and `/metrics`.

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
        flowforge_projections::status(
            platform.operations_db(),
            &*platform.store,
            &platform.projections,
        ),
    )
    .await;
    let (read_ok, projections, read_error) = match projections {
        Ok(Ok(list)) => (true, list, None),
        Ok(Err(e)) => (false, Vec::new(), Some(e.to_string())),
        Err(_) => (false, Vec::new(), Some("timed out".to_owned())),
    };
    let max_lag = platform.config.ready_max_lag;
    // A projection's checkpoint moves when it applies events; one that matches none of
    // the newest events stays behind the head while having nothing to do. Behind by
    // more than allowed, it is asked whether anything it reads is pending.
    let mut projection_checks = Vec::new();
    let mut projections_ok = read_ok;
    for p in &projections {
        let mut pending = p.lag;
        if let Some(checkpoint) = p.checkpoint
            && p.lag > max_lag
            && let Some(projection) = platform.projections.iter().find(|x| x.name() == p.name)
        {
            let next = tokio::time::timeout(
                timeout,
                platform.store.read_all(checkpoint, 1, &projection.filter()),
            )
            .await;
            if let Ok(Ok(page)) = next
                && page.events.is_empty()
            {
                pending = 0;
            }
        }
        let ok = p.checkpoint.is_some() && pending <= max_lag;
        projections_ok &= ok;
        projection_checks.push(json!({
            "name": p.name,
            "checkpoint": p.checkpoint,
            "lag": p.lag,
            "ok": ok,
        }));
    }
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

/// Prometheus text format: the engine's counters and latency histograms, and gauges read
/// now (log head, projection and scheduler lag, queue depth per tenant).
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    use std::fmt::Write as _;
    let platform = &state.platform;
    let mut out = String::new();
    let gauge = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
    };
    let timeout = Duration::from_secs(2);
    let head = tokio::time::timeout(timeout, platform.store.head_position())
        .await
        .ok()
        .and_then(Result::ok);
    if let Some(head) = head {
        gauge(
            &mut out,
            "flowforge_log_head_position",
            "Global position of the newest event in the log.",
        );
        let _ = writeln!(out, "flowforge_log_head_position {head}");
    }
    if let Ok(Ok(projections)) = tokio::time::timeout(
        timeout,
        flowforge_projections::status(
            platform.operations_db(),
            &*platform.store,
            &platform.projections,
        ),
    )
    .await
    {
        gauge(
            &mut out,
            "flowforge_projection_lag_events",
            "Log positions a read model is behind the head.",
        );
        for p in projections {
            let _ = writeln!(
                out,
                "flowforge_projection_lag_events{{projection=\"{}\"}} {}",
                p.name, p.lag
            );
        }
    }
    let (hits, misses) = state.verified_keys.counts();
    for (name, help, value) in [
        (
            "flowforge_api_key_cache_hits_total",
            "API-key checks answered by keys this process verified lately.",
            hits,
        ),
        (
            "flowforge_api_key_cache_misses_total",
            "API-key checks that read the key from the log.",
            misses,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {value}");
    }
    if let Some(engine) = platform.engine() {
        engine.metrics.render(&mut out);
        let position = engine
            .metrics
            .scheduler_position
            .load(std::sync::atomic::Ordering::Relaxed);
        if let (Some(head), true) = (head, position > 0) {
            gauge(
                &mut out,
                "flowforge_scheduler_lag_events",
                "Log positions the scheduler (the relay that publishes jobs) is behind the head, in the process that runs it.",
            );
            let _ = writeln!(
                out,
                "flowforge_scheduler_lag_events {}",
                head.saturating_sub(position)
            );
        }
        gauge(
            &mut out,
            "flowforge_queue_depth",
            "Jobs waiting for an executor in this process, per tenant.",
        );
        let mut depth: Vec<_> = engine.queue.depth().into_iter().collect();
        depth.sort();
        for (tenant, n) in depth {
            let _ = writeln!(out, "flowforge_queue_depth{{tenant=\"{tenant}\"}} {n}");
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}
