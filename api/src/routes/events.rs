//! Events in (`POST /api/v1/events`, the protocol's `POST /e/{key}`) and out (listing).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use flowforge_domain::event::EventSource;
use flowforge_engine::NewIncomingEvent;
use flowforge_engine::ingest::{self, IngestError};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, Page, page_limit};
use crate::caller::Caller;
use crate::error::ApiError;

/// Events per request at most.
pub const MAX_EVENTS_PER_REQUEST: usize = 5_000;
const MAX_NAME_LEN: usize = 256;
const MAX_ID_LEN: usize = 256;

/// The id seed of a request an SDK may retry (Inngest's `x-inngest-event-id-seed`).
fn id_seed(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-inngest-event-id-seed")
        .and_then(|v| v.to_str().ok())
}

/// Reads a request body up to `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        let mut error = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than the limit of {limit} bytes (FLOWFORGE_MAX_EVENT_BYTES)"),
        );
        error.body.field = Some("body".into());
        error
    })
}

pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid_field("body", format!("the body is not valid JSON: {e}")))
}

/// Validates one event or an array of them.
pub fn parse_events(body: Value) -> Result<Vec<NewIncomingEvent>, ApiError> {
    let (items, single) = match body {
        Value::Array(items) => (items, false),
        item @ Value::Object(_) => (vec![item], true),
        _ => {
            return Err(ApiError::invalid_field(
                "body",
                "send an event object or an array of events",
            ));
        }
    };
    if items.is_empty() {
        return Err(ApiError::invalid_field("body", "the array holds no events"));
    }
    if items.len() > MAX_EVENTS_PER_REQUEST {
        return Err(ApiError::invalid_field(
            "body",
            format!("at most {MAX_EVENTS_PER_REQUEST} events per request"),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_one(i, single, item))
        .collect()
}

/// Like [`parse_events`], but keeps the valid events before the first invalid one (the
/// protocol's `/e/{key}` records those and reports the first error).
pub fn parse_events_prefix(body: Value) -> (Vec<NewIncomingEvent>, Option<ApiError>) {
    let items = match body {
        Value::Array(items) => items,
        other => {
            return match parse_events(other) {
                Ok(events) => (events, None),
                Err(error) => (Vec::new(), Some(error)),
            };
        }
    };
    if items.is_empty() || items.len() > MAX_EVENTS_PER_REQUEST {
        return match parse_events(Value::Array(items)) {
            Ok(events) => (events, None),
            Err(error) => (Vec::new(), Some(error)),
        };
    }
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match parse_one(i, false, item) {
            Ok(event) => events.push(event),
            Err(error) => return (events, Some(error)),
        }
    }
    (events, None)
}

fn parse_one(i: usize, single: bool, item: Value) -> Result<NewIncomingEvent, ApiError> {
    let field = |name: &str| {
        if single {
            name.to_owned()
        } else {
            format!("[{i}].{name}")
        }
    };
    let Value::Object(mut event) = item else {
        return Err(ApiError::invalid_field(
            field("event"),
            "an event must be a JSON object",
        ));
    };
    let name = match event.remove("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name,
        Some(Value::String(_)) | None => {
            return Err(ApiError::invalid_field(
                field("name"),
                "an event needs a non-empty name",
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                field("name"),
                "the name must be a string",
            ));
        }
    };
    if name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            field("name"),
            format!(
                "the name must be at most {MAX_NAME_LEN} characters without control characters"
            ),
        ));
    }
    let data = match event.remove("data") {
        None | Some(Value::Null) => json!({}),
        Some(data @ Value::Object(_)) => data,
        Some(_) => {
            return Err(ApiError::invalid_field(
                field("data"),
                "data must be a JSON object",
            ));
        }
    };
    let id = match event.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if id.len() <= MAX_ID_LEN => Some(id),
        Some(Value::String(_)) => {
            return Err(ApiError::invalid_field(
                field("id"),
                format!("the id must be at most {MAX_ID_LEN} characters"),
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                field("id"),
                "the id must be a string",
            ));
        }
    };
    let ts = match event.remove("ts") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(ts) if ts >= 0 => Some(ts),
            _ => {
                return Err(ApiError::invalid_field(
                    field("ts"),
                    "ts must be a non-negative integer (milliseconds since the Unix epoch)",
                ));
            }
        },
        Some(_) => {
            return Err(ApiError::invalid_field(
                field("ts"),
                "ts must be an integer (milliseconds since the Unix epoch)",
            ));
        }
    };
    let user = match event.remove("user") {
        None | Some(Value::Null) => None,
        Some(user @ Value::Object(_)) => Some(user),
        Some(_) => {
            return Err(ApiError::invalid_field(
                field("user"),
                "user must be a JSON object",
            ));
        }
    };
    let v = match event.remove("v") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) => Some(v),
        Some(_) => return Err(ApiError::invalid_field(field("v"), "v must be a string")),
    };
    Ok(NewIncomingEvent {
        id,
        name,
        data,
        ts,
        user,
        v,
    })
}

impl From<IngestError> for ApiError {
    fn from(error: IngestError) -> Self {
        match error {
            IngestError::Unavailable(message) => ApiError::unavailable(message),
            IngestError::Failed(message) => ApiError::internal(message),
        }
    }
}

async fn ingest_body(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<String>, ApiError> {
    let bytes = read_body(body, state.platform.config.max_event_bytes).await?;
    let events = parse_events(parse_json(&bytes)?)?;
    let engine = state.engine()?;
    let metadata = caller.metadata();
    Ok(ingest::record_seeded(
        engine,
        &metadata,
        events,
        EventSource::Api,
        id_seed(headers),
    )
    .await?)
}

#[derive(Debug, Deserialize)]
pub struct SendQuery {
    /// Wait until every run the events start has finished, and answer their outcomes.
    #[serde(default)]
    pub wait: bool,
    /// Seconds to wait at most (default 30, at most 300).
    pub timeout: Option<u64>,
}

/// `POST /api/v1/events`: one event or an array; answers their ids (and, with
/// `?wait=true`, the runs they started once those have finished).
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<SendQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    if !query.wait {
        let ids = ingest_body(&state, &caller, &headers, body).await?;
        return Ok(Json(json!({ "ids": ids, "status": 200 })));
    }
    let engine = state.engine()?;
    let bytes = read_body(body, state.platform.config.max_event_bytes).await?;
    let events = parse_events(parse_json(&bytes)?)?;
    // How many runs to expect, decided exactly as the scheduler decides (in the
    // caller's environment).
    let metadata = caller.metadata();
    let expected: usize = events
        .iter()
        .map(|e| {
            let received = flowforge_domain::event::EventReceived {
                id: e.id.clone().unwrap_or_default(),
                name: e.name.clone(),
                data: e.data.clone(),
                ts: e.ts.unwrap_or_default(),
                user: e.user.clone(),
                v: e.v.clone(),
                source: EventSource::Api,
                received_at: chrono::Utc::now(),
            };
            engine
                .functions_for(&caller.space(), &received, &received.to_sdk_json())
                .len()
        })
        .sum();
    // Listen before recording, so no run can start and finish unseen.
    let mut feed = engine.live.listen();
    let ids = ingest::record_seeded(
        engine,
        &metadata,
        events,
        EventSource::Api,
        id_seed(&headers),
    )
    .await?;
    let timeout = std::time::Duration::from_secs(query.timeout.unwrap_or(30).clamp(1, 300));
    let (runs, complete) =
        match tokio::time::timeout(timeout, wait_for_runs(&mut feed, &ids, expected)).await {
            Ok(runs) => (runs, true),
            Err(_) => (Vec::new(), false),
        };
    Ok(Json(
        json!({ "ids": ids, "status": 200, "complete": complete, "runs": runs }),
    ))
}

/// Follows the live feed until `expected` runs started by the events `ids` have finished.
async fn wait_for_runs(
    feed: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<flowforge_store::StoredEvent>>,
    ids: &[String],
    expected: usize,
) -> Vec<Value> {
    use flowforge_domain::run::RunEvent;
    let mut started: std::collections::HashMap<String, Option<Value>> =
        std::collections::HashMap::new();
    while started.len() < expected || started.values().any(Option::is_none) {
        let event = match feed.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        };
        if event.stream_type != flowforge_domain::run::STREAM_TYPE {
            continue;
        }
        let Ok(decoded) = event.decode::<RunEvent>() else {
            continue;
        };
        let run_id = event.stream_id.trim_start_matches("run-").to_owned();
        let outcome = match decoded {
            RunEvent::Created(created) => {
                let id = created
                    .events
                    .first()
                    .and_then(|e| e.get("id"))
                    .and_then(Value::as_str);
                if id.is_some_and(|id| ids.iter().any(|i| i == id)) {
                    started.entry(run_id).or_insert(None);
                }
                continue;
            }
            RunEvent::Completed(done) => {
                json!({"id": run_id, "status": "completed", "output": done.output})
            }
            RunEvent::Failed(failed) => {
                json!({"id": run_id, "status": "failed", "error": failed.error})
            }
            RunEvent::Cancelled(c) => {
                json!({"id": run_id, "status": "cancelled", "reason": c.reason})
            }
            _ => continue,
        };
        if let Some(slot) = started.get_mut(&run_id) {
            *slot = Some(outcome);
        }
    }
    started.into_values().flatten().collect()
}

/// `POST /e/{key}`: the SDK protocol's event endpoint. Answers in the protocol's shape
/// (`{"ids", "status", "error"?}` with `error` a string), which Inngest's SDKs parse.
pub async fn send_with_key(
    State(state): State<AppState>,
    Path(key): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let protocol_error = |error: ApiError| {
        (
            error.status,
            Json(json!({"ids": [], "status": error.status.as_u16(), "error": error.body.message})),
        )
            .into_response()
    };
    let key_refused = || {
        protocol_error(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "event key not found",
        ))
    };
    let mut metadata = caller.metadata();
    if key.starts_with("ff_") {
        // A FlowForge API key: its tenant, and it must be allowed to send.
        match crate::auth::api_key_caller(
            &state.commands,
            &*state.platform.secrets,
            &state.verified_keys,
            &key,
        )
        .await
        {
            Ok(key_caller) if key_caller.may(flowforge_domain::access::Scope::EventsSend) => {
                metadata = key_caller.metadata();
            }
            Ok(_) => {
                return protocol_error(ApiError::forbidden(
                    flowforge_domain::access::Scope::EventsSend,
                ));
            }
            Err(crate::auth::AuthError::Unavailable(message)) => {
                return protocol_error(ApiError::unavailable(message));
            }
            Err(_) => return key_refused(),
        }
    } else {
        let keys = &state.platform.config.inngest_keys;
        match keys.tenant_of_event_key(&key) {
            Some(Some(tenant)) => {
                metadata.tenant_id = flowforge_domain::TenantId::new(tenant);
                metadata.actor = flowforge_domain::Actor::api_key(format!(
                    "event-key:{}",
                    key.chars().take(8).collect::<String>()
                ));
            }
            // No event keys configured: any key goes, but only where credentials are optional.
            Some(None) if state.platform.config.auth.mode == crate::auth::AuthMode::Open => {}
            Some(None) | None => return key_refused(),
        }
    }
    // Inngest's event API records the valid events before the first invalid one and
    // reports that error beside their ids; SDKs rely on the partial ids.
    let result = async {
        let bytes = read_body(body, state.platform.config.max_event_bytes).await?;
        let (events, invalid) = parse_events_prefix(parse_json(&bytes)?);
        let ids = if events.is_empty() {
            Vec::new()
        } else {
            let seed = id_seed(&headers);
            ingest::record_seeded(
                state.engine()?,
                &metadata,
                events,
                EventSource::EventKey,
                seed,
            )
            .await?
        };
        Ok::<_, ApiError>((ids, invalid))
    }
    .await;
    match result {
        Ok((ids, None)) => Json(json!({ "ids": ids, "status": 200 })).into_response(),
        Ok((ids, Some(error))) => (
            error.status,
            Json(json!({"ids": ids, "status": error.status.as_u16(), "error": error.body.message})),
        )
            .into_response(),
        Err(error) => protocol_error(error),
    }
}

#[derive(Debug, Deserialize)]
pub struct ListEvents {
    pub name: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

fn event_json(row: &flowforge_projections::events::EventRow) -> Value {
    json!({
        "id": row.id,
        "name": row.name,
        "environment": row.environment,
        "data": serde_json::from_str::<Value>(&row.data).unwrap_or(Value::Null),
        "ts": row.ts,
        "received_at": chrono::DateTime::from_timestamp_millis(row.received_at).map(|t| t.to_rfc3339()),
        "source": serde_json::from_str::<Value>(&row.source).unwrap_or(Value::Null),
        "position": row.position,
    })
}

/// `GET /api/v1/events`: newest first, cursor-paginated.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListEvents>,
) -> Result<Json<Page>, ApiError> {
    let limit = page_limit(query.limit)?;
    let rows = newest_events(&state, &caller, &query, limit).await?;
    Ok(Json(Page::new(rows, limit, event_json, |r| {
        super::cursor(r.received_at, &r.stream_id)
    })))
}

/// `GET /v1/events`: the listing of Inngest's REST API (`{"data": [...]}`, each event
/// with its `internal_id`), for tools and SDK tests written against Inngest.
pub async fn list_inngest(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListEvents>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(query.limit)?;
    let rows = newest_events(&state, &caller, &query, limit).await?;
    let more = rows.len() > limit as usize;
    let cursor = rows
        .get(limit as usize - 1)
        .filter(|_| more)
        .map(|r| super::cursor(r.received_at, &r.stream_id));
    let data: Vec<Value> = rows
        .iter()
        .take(limit as usize)
        .map(|row| {
            json!({
                "internal_id": row.stream_id.strip_prefix("event-").unwrap_or(&row.stream_id),
                "id": row.id,
                "name": row.name,
                "data": serde_json::from_str::<Value>(&row.data).unwrap_or(Value::Null),
                "ts": row.ts,
                "receivedAt": chrono::DateTime::from_timestamp_millis(row.received_at)
                    .map(|t| t.to_rfc3339()),
            })
        })
        .collect();
    Ok(Json(json!({
        "data": data,
        "cursor": cursor,
        "metadata": {"fetched_at": chrono::Utc::now().to_rfc3339()},
    })))
}

/// Up to `limit + 1` events, newest first, from the query's cursor on.
async fn newest_events(
    state: &AppState,
    caller: &Caller,
    query: &ListEvents,
    limit: u32,
) -> Result<Vec<flowforge_projections::events::EventRow>, ApiError> {
    let (before_at, before_key) = super::parse_cursor(query.cursor.as_deref())?;
    state
        .platform
        .reads(caller)
        .newest_events(
            query.name.as_deref(),
            (before_at, &before_key),
            i64::from(limit) + 1,
        )
        .await
}

/// `GET /api/v1/events/{id}`: the event and the runs it triggered.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let reads = state.platform.reads(&caller);
    let row = reads
        .event(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no event `{id}`")))?;
    let runs: Vec<Value> = reads
        .runs_for_event(&id)
        .await?
        .iter()
        .map(super::runs::row_json)
        .collect();
    let mut body = event_json(&row);
    if let Some(map) = body.as_object_mut() {
        map.insert("runs".into(), Value::Array(runs));
    }
    Ok(Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(error: ApiError) -> Option<String> {
        error.body.field
    }

    #[test]
    fn bad_events_name_the_field() {
        assert_eq!(
            field_of(parse_events(json!({"data": {}})).unwrap_err()).as_deref(),
            Some("name")
        );
        assert_eq!(
            field_of(parse_events(json!({"name": "  "})).unwrap_err()).as_deref(),
            Some("name")
        );
        assert_eq!(
            field_of(parse_events(json!({"name": 5})).unwrap_err()).as_deref(),
            Some("name")
        );
        assert_eq!(
            field_of(parse_events(json!({"name": "a", "data": [1]})).unwrap_err()).as_deref(),
            Some("data")
        );
        assert_eq!(
            field_of(parse_events(json!({"name": "a", "ts": 1.5})).unwrap_err()).as_deref(),
            Some("ts")
        );
        assert_eq!(
            field_of(parse_events(json!({"name": "a", "ts": -1})).unwrap_err()).as_deref(),
            Some("ts")
        );
        assert_eq!(
            field_of(parse_events(json!({"name": "a", "id": 7})).unwrap_err()).as_deref(),
            Some("id")
        );
        assert_eq!(
            field_of(parse_events(json!([{"name": "a"}, {"name": ""}])).unwrap_err()).as_deref(),
            Some("[1].name")
        );
        assert_eq!(
            field_of(parse_events(json!([])).unwrap_err()).as_deref(),
            Some("body")
        );
        assert_eq!(
            field_of(parse_events(json!("x")).unwrap_err()).as_deref(),
            Some("body")
        );
        assert_eq!(
            field_of(parse_events(json!({"name": "a\u{0}b"})).unwrap_err()).as_deref(),
            Some("name")
        );
    }

    #[test]
    fn good_events_are_normalised() {
        let events = parse_events(
            json!([{"name": "a"}, {"name": "b", "data": {"x": 1}, "id": "k", "ts": 5}]),
        )
        .unwrap();
        assert_eq!(events[0].data, json!({}));
        assert_eq!(events[1].id.as_deref(), Some("k"));
        assert_eq!(events[1].ts, Some(5));
    }
}
