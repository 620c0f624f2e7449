//! Runs: listing (from the `runs` read model), one run in detail (folded from its
//! stream), its raw events, a live stream, cancel and replay.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use flowforge_commands::CommandError;
use flowforge_domain::Decider;
use flowforge_domain::run::{
    CallTarget, CreateRun, Run, RunCommand, RunError, RunEvent, StepKind, StepOutput,
};
use flowforge_projections::runs::RunRow;
use flowforge_store::StoredEvent;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{AppState, Page, page_limit};
use crate::caller::Caller;
use crate::error::ApiError;

fn parse_run_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse()
        .map_err(|_| ApiError::invalid_field("id", format!("`{id}` is not a run id (a UUID)")))
}

fn millis_to_rfc3339(ms: Option<i64>) -> Option<String> {
    ms.and_then(DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339())
}

pub fn row_json(row: &RunRow) -> Value {
    json!({
        "id": row.run_id,
        "function_id": row.function_id,
        "function_version": row.function_version,
        "app_id": row.app_id,
        "environment": row.environment,
        "status": row.status,
        "event_id": row.event_id,
        "event_name": row.event_name,
        "created_at": millis_to_rfc3339(Some(row.created_at)),
        "started_at": millis_to_rfc3339(row.started_at),
        "finished_at": millis_to_rfc3339(row.finished_at),
        "steps_completed": row.steps_completed,
        "failed_attempts": row.failed_attempts,
        "output": row.output.as_deref().and_then(|o| serde_json::from_str::<Value>(o).ok()),
        "error": row.error.as_deref().and_then(|e| serde_json::from_str::<Value>(e).ok()),
        "replay_of": row.replay_of,
        "parent_run_id": row.parent_run_id,
        "skipped": row.skip_reason.as_ref().map(|reason| json!({"reason": reason, "detail": row.skip_detail})),
        "flow_control": flow_control_json(row_flow(row)),
    })
}

/// A hold as the run views show it: reason, key, detail, since and until (ms).
type HoldView<'a> = (&'a str, &'a str, &'a str, Option<i64>, Option<i64>);

/// A run's flow-control state, from its row or folded from its stream.
pub struct FlowState<'a> {
    pub skip: Option<(&'a str, &'a str)>,
    pub hold: Option<HoldView<'a>>,
}

/// What flow control is doing to a run right now, in words: waiting for a slot,
/// throttled until a time, skipped (and why). `None` when it holds nothing back.
pub fn flow_control_json(flow: FlowState<'_>) -> Option<Value> {
    if let Some((reason, detail)) = flow.skip {
        let by = match reason {
            "rate_limited" => "rate limit",
            "idempotent" => "idempotency",
            other => other,
        };
        return Some(json!({
            "state": "skipped",
            "reason": reason,
            "detail": detail,
            "message": format!("skipped by {by}: {detail}"),
        }));
    }
    let (reason, key, detail, since, until) = flow.hold?;
    let on_key = if key.is_empty() {
        String::new()
    } else {
        format!(" of key `{key}`")
    };
    let until = millis_to_rfc3339(until);
    let until_text = until.clone().unwrap_or_default();
    let (state, message) = match reason {
        "throttle" => ("throttled", format!("throttled until {until_text}{on_key}")),
        "debounce" => (
            "debounced",
            format!("debounced until {until_text}{on_key}, unless another event comes"),
        ),
        "batch" => (
            "batching",
            format!("collecting a batch{on_key} until {until_text}, or until it is full"),
        ),
        _ => (
            "waiting_for_concurrency",
            format!("waiting for a concurrency slot{on_key}"),
        ),
    };
    Some(json!({
        "state": state,
        "reason": reason,
        "key": key,
        "detail": detail,
        "since": millis_to_rfc3339(since),
        "until": until,
        "message": message,
    }))
}

fn row_flow(row: &RunRow) -> FlowState<'_> {
    FlowState {
        skip: row
            .skip_reason
            .as_deref()
            .map(|r| (r, row.skip_detail.as_deref().unwrap_or_default())),
        hold: row.hold_reason.as_deref().map(|r| {
            (
                r,
                row.hold_key.as_deref().unwrap_or_default(),
                row.hold_detail.as_deref().unwrap_or_default(),
                row.hold_since,
                row.hold_until,
            )
        }),
    }
}

#[derive(Debug, Deserialize)]
pub struct ListRuns {
    /// Function id.
    pub function: Option<String>,
    /// One status or several, comma-separated: queued, running, completed, failed, cancelled, skipped.
    pub status: Option<String>,
    /// The triggering event's id.
    pub event: Option<String>,
    /// Created at or after (RFC 3339 or milliseconds since the Unix epoch).
    pub from: Option<String>,
    /// Created before.
    pub to: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

fn parse_time(field: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(Some(ms));
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| {
            ApiError::invalid_field(
                field,
                "use RFC 3339 (2026-11-25T10:00:00Z) or milliseconds since the Unix epoch",
            )
        })
}

const STATUSES: &[&str] = &[
    "queued",
    "running",
    "completed",
    "failed",
    "cancelled",
    "skipped",
];

/// `GET /api/v1/runs`: newest first, filtered, cursor-paginated.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListRuns>,
) -> Result<Json<Page>, ApiError> {
    let limit = page_limit(query.limit)?;
    let (before_at, before_key) = super::parse_cursor(query.cursor.as_deref())?;
    let from = parse_time("from", query.from.as_deref())?;
    let to = parse_time("to", query.to.as_deref())?;
    let statuses: Option<Vec<String>> = query.status.as_deref().map(|s| {
        s.split(',')
            .map(|x| x.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect()
    });
    if let Some(statuses) = &statuses
        && let Some(bad) = statuses.iter().find(|s| !STATUSES.contains(&s.as_str()))
    {
        return Err(ApiError::invalid_field(
            "status",
            format!("unknown status `{bad}`; use {}", STATUSES.join(", ")),
        ));
    }
    let filter = crate::reads::RunFilter {
        function: query.function.as_deref(),
        statuses,
        event: query.event.as_deref(),
        from,
        to,
    };
    let rows = state
        .platform
        .reads(&caller)
        .runs(&filter, (before_at, &before_key), i64::from(limit) + 1)
        .await?;
    Ok(Json(Page::new(rows, limit, row_json, |r| {
        super::cursor(r.created_at, &r.run_id)
    })))
}

/// A run's stream, only if it belongs to the caller's tenant (404 otherwise, exactly as
/// for a run that does not exist).
async fn run_stream(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(Uuid, Vec<StoredEvent>), ApiError> {
    let run_id = parse_run_id(id)?;
    let events = state
        .platform
        .store
        .read_stream(&flowforge_domain::run::stream_id(run_id), 1)
        .await?;
    if events.is_empty() || events.iter().any(|e| e.tenant_id() != caller.tenant()) {
        return Err(ApiError::not_found(format!("no run `{id}`")));
    }
    let environment = match events[0].decode::<RunEvent>() {
        Ok(RunEvent::Created(created)) => created.environment,
        _ => Default::default(),
    };
    if !caller.sees(environment) {
        // Kept apart like another tenant's: indistinguishable from a missing run.
        return Err(ApiError::not_found(format!("no run `{id}`")));
    }
    Ok((run_id, events))
}

/// The run folded from its events, with a step timeline.
pub fn run_view(run_id: Uuid, events: &[StoredEvent]) -> Result<Value, ApiError> {
    let mut state = Run::initial();
    let mut steps: Vec<(String, Map<String, Value>)> = Vec::new();
    let mut attempts: Vec<Value> = Vec::new();
    let mut last_call: Option<(CallTarget, DateTime<Utc>, DateTime<Utc>)> = None;
    // Every flow-control hold, for the investigator: how long the run waited, and why.
    let mut holds: Vec<Value> = Vec::new();
    fn step<'a>(
        steps: &'a mut Vec<(String, Map<String, Value>)>,
        id: &str,
        name: &str,
    ) -> &'a mut Map<String, Value> {
        let index = match steps.iter().position(|(s, _)| s == id) {
            Some(i) => i,
            None => {
                let mut map = Map::new();
                map.insert("id".into(), json!(id));
                map.insert("name".into(), json!(name));
                map.insert("attempts".into(), json!([]));
                steps.push((id.to_owned(), map));
                steps.len() - 1
            }
        };
        &mut steps[index].1
    }
    // The skill versions an AI step was given, recorded just before its result.
    let mut skills_used: std::collections::HashMap<String, Value> =
        std::collections::HashMap::new();
    for stored in events {
        let event: RunEvent = stored.decode().map_err(ApiError::internal)?;
        match &event {
            RunEvent::SkillsUsed(used) => {
                skills_used.insert(used.step_id.clone(), json!(used.skills));
            }
            RunEvent::CallFinished(call) => {
                last_call = Some((call.target.clone(), call.started_at, call.finished_at))
            }
            RunEvent::StepCompleted(done) => {
                let started = match (&done.kind, &last_call) {
                    (StepKind::Run, Some((_, started, _))) => Some(started.to_rfc3339()),
                    _ => None,
                };
                let s = step(&mut steps, &done.step_id, &done.name);
                s.insert("kind".into(), json!(done.kind));
                if let Some(skills) = skills_used.remove(&done.step_id) {
                    s.insert("skills".into(), skills);
                }
                if let Some(started) = started {
                    s.entry("started_at").or_insert(json!(started));
                }
                s.insert("finished_at".into(), json!(done.at.to_rfc3339()));
                match &done.output {
                    StepOutput::Data(data) => {
                        s.insert("status".into(), json!("completed"));
                        s.insert("output".into(), data.clone());
                    }
                    StepOutput::Error(error) => {
                        s.insert("status".into(), json!("failed"));
                        s.insert("error".into(), json!(error));
                    }
                    StepOutput::Nothing => {
                        s.insert("status".into(), json!("completed"));
                        s.insert("output".into(), Value::Null);
                    }
                }
            }
            RunEvent::StepFailed(failed) => {
                let at = last_call
                    .as_ref()
                    .map(|(_, _, finished)| finished.to_rfc3339());
                let s = step(&mut steps, &failed.step_id, &failed.name);
                s.insert("kind".into(), json!(StepKind::Run));
                s.insert("status".into(), json!("retrying"));
                if let Some(Value::Array(list)) = s.get_mut("attempts") {
                    list.push(json!({"attempt": failed.attempt, "error": failed.error, "at": at, "retry_at": failed.retry_at.to_rfc3339()}));
                }
            }
            RunEvent::StepsPlanned { steps: planned, .. } => {
                for p in planned {
                    let s = step(&mut steps, &p.step_id, &p.name);
                    s.insert("kind".into(), json!(StepKind::Run));
                    s.insert("status".into(), json!("planned"));
                }
            }
            RunEvent::SleepStarted(sleep) => {
                let s = step(&mut steps, &sleep.step_id, &sleep.name);
                s.insert("kind".into(), json!(StepKind::Sleep));
                s.insert("status".into(), json!("sleeping"));
                s.insert("started_at".into(), json!(stored.recorded_at.to_rfc3339()));
                s.insert("until".into(), json!(sleep.until.to_rfc3339()));
            }
            RunEvent::WaitStarted(wait) => {
                let s = step(&mut steps, &wait.step_id, &wait.name);
                s.insert("kind".into(), json!(StepKind::WaitForEvent));
                s.insert("status".into(), json!("waiting"));
                s.insert("started_at".into(), json!(stored.recorded_at.to_rfc3339()));
                s.insert("until".into(), json!(wait.until.to_rfc3339()));
                s.insert(
                    "waiting_for".into(),
                    json!({"event": wait.event, "if": wait.expression}),
                );
            }
            RunEvent::InvokeStarted(invoke) => {
                let s = step(&mut steps, &invoke.step_id, &invoke.name);
                s.insert("kind".into(), json!(StepKind::Invoke));
                s.insert("status".into(), json!("invoking"));
                s.insert("started_at".into(), json!(stored.recorded_at.to_rfc3339()));
                s.insert("until".into(), json!(invoke.until.to_rfc3339()));
                s.insert(
                    "invoked".into(),
                    json!({"function_id": invoke.function_id, "run_id": invoke.child_run_id}),
                );
            }
            RunEvent::CallFailed(failed) => {
                attempts.push(json!({"attempt": failed.attempt, "error": failed.error, "retry_at": failed.retry_at.to_rfc3339()}));
            }
            RunEvent::CallHeld(held) => holds.push(json!({
                "reason": held.reason,
                "key": held.key,
                "detail": held.detail,
                "since": held.at.to_rfc3339(),
                "until": held.until.map(|u| u.to_rfc3339()),
                "token": held.token,
            })),
            RunEvent::CallReleased(released) => {
                for hold in holds.iter_mut().rev() {
                    if hold["token"] == json!(released.token) {
                        hold["released_at"] = json!(released.at.to_rfc3339());
                        break;
                    }
                }
            }
            RunEvent::Debounced(collected) | RunEvent::Batched(collected) => {
                if let Some(hold) = holds.last_mut() {
                    hold["until"] = json!(collected.until.to_rfc3339());
                    hold["events"] = json!(hold["events"].as_u64().unwrap_or(1) + 1);
                }
            }
            RunEvent::Created(_)
            | RunEvent::Completed(_)
            | RunEvent::Failed(_)
            | RunEvent::Cancelled(_)
            | RunEvent::Skipped(_) => {}
        }
        state = Run::evolve(state, &event);
    }
    let function = state.function.clone();
    let cancelled = events
        .iter()
        .rev()
        .find_map(|e| match e.decode::<RunEvent>() {
            Ok(RunEvent::Cancelled(c)) => Some(c.reason),
            _ => None,
        });
    let skip = events.iter().find_map(|e| match e.decode::<RunEvent>() {
        Ok(RunEvent::Skipped(s)) => Some(s),
        _ => None,
    });
    let skipped = skip
        .as_ref()
        .map(|s| json!({"reason": s.reason, "detail": s.detail}));
    let held = state.held.values().next();
    let flow = flow_control_json(FlowState {
        skip: skip
            .as_ref()
            .map(|s| (s.reason.as_str(), s.detail.as_str())),
        hold: held.map(|h| {
            (
                h.reason.as_str(),
                h.key.as_str(),
                h.detail.as_str(),
                Some(h.since.timestamp_millis()),
                h.until.map(|u| u.timestamp_millis()),
            )
        }),
    });
    Ok(json!({
        "id": run_id,
        "status": state.status.as_str(),
        "function_id": function.as_ref().map(|f| f.function_id.clone()),
        "function_version": function.as_ref().map(|f| f.version),
        "app_id": function.as_ref().map(|f| f.app_id.clone()),
        "environment": state.environment,
        "created_at": state.created_at.map(|t| t.to_rfc3339()),
        "started_at": state.started_at.map(|t| t.to_rfc3339()),
        "finished_at": state.finished_at.map(|t| t.to_rfc3339()),
        "event": state.events.first(),
        "events": state.events,
        "output": state.output,
        "error": state.error,
        "cancel_reason": cancelled,
        "skipped": skipped,
        "flow_control": flow,
        "holds": holds,
        "replay_of": state.replay_of,
        "parent": state.parent,
        "max_attempts": state.max_attempts,
        "attempts": attempts,
        "steps": steps.into_iter().map(|(_, s)| Value::Object(s)).collect::<Vec<_>>(),
        "version": events.last().map(|e| e.stream_version),
    }))
}

/// `GET /api/v1/runs/{id}`
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (run_id, events) = run_stream(&state, &caller, &id).await?;
    let mut view = run_view(run_id, &events)?;
    // How many runs wait ahead of this one for the same slot (the read model knows).
    if view["flow_control"]["reason"] == "concurrency"
        && let Some(key) = view["flow_control"]["key"].as_str().map(str::to_owned)
        && let Some(row) = state
            .platform
            .reads(&caller)
            .run(&run_id.to_string())
            .await?
    {
        let ahead = state.platform.reads(&caller).held_ahead(&row, &key).await?;
        let flow = &mut view["flow_control"];
        flow["ahead"] = json!(ahead);
        flow["message"] = json!(format!(
            "{}, {ahead} ahead",
            flow["message"].as_str().unwrap_or_default()
        ));
    }
    Ok(Json(view))
}

fn stored_json(e: &StoredEvent) -> Value {
    json!({
        "event_id": e.event_id,
        "stream_id": e.stream_id,
        "stream_version": e.stream_version,
        "global_position": e.global_position,
        "event_type": e.event_type,
        "schema_version": e.schema_version,
        "payload": e.payload_value(),
        "metadata": e.metadata,
        "recorded_at": e.recorded_at.to_rfc3339(),
    })
}

/// `GET /api/v1/runs/{id}/events`: the run's raw events from the log.
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, events) = run_stream(&state, &caller, &id).await?;
    Ok(Json(
        json!({ "items": events.iter().map(stored_json).collect::<Vec<_>>() }),
    ))
}

/// `GET /api/v1/runs/{id}/stream`: server-sent events, one per run event, from the
/// first; ends after the run's final event.
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?.clone();
    // Listen first, then read what exists: nothing committed in between is missed,
    // and versions already sent are skipped.
    let stream_id = flowforge_domain::run::stream_id(parse_run_id(&id)?);
    let mut watch = engine.live.watch_stream(&stream_id);
    let (_, existing) = run_stream(&state, &caller, &id).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(256);
    tokio::spawn(async move {
        let mut sent = 0u64;
        let is_final = |e: &StoredEvent| {
            matches!(
                e.event_type.as_str(),
                "run.completed" | "run.failed" | "run.cancelled"
            )
        };
        let send = |e: &StoredEvent| {
            SseEvent::default()
                .event(e.event_type.clone())
                .id(e.stream_version.to_string())
                .data(stored_json(e).to_string())
        };
        for e in &existing {
            sent = e.stream_version;
            if tx.send(Ok(send(e))).await.is_err() || is_final(e) {
                return;
            }
        }
        while let Some(e) = watch.recv().await {
            if e.stream_version <= sent {
                continue;
            }
            sent = e.stream_version;
            if tx.send(Ok(send(&e))).await.is_err() || is_final(&e) {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// `POST /api/v1/runs/{id}/cancel`
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (run_id, _) = run_stream(&state, &caller, &id).await?;
    let engine = state.engine()?;
    let stream = flowforge_domain::run::stream_id(run_id);
    let reason = format!("cancelled by {}", caller.actor.id);
    match engine
        .commands
        .handle::<Run>(&stream, &caller.metadata(), || RunCommand::Cancel {
            reason: reason.clone(),
            at: Utc::now(),
        })
        .await
    {
        Ok(handled) => Ok(Json(
            json!({"id": run_id, "status": handled.state.status.as_str()}),
        )),
        Err(CommandError::Domain(RunError::Finished(status))) => {
            Err(ApiError::conflict(format!("the run is already {status}")))
        }
        Err(CommandError::Store(e)) => Err(e.into()),
        Err(other) => Err(ApiError::internal(other)),
    }
}

/// `POST /api/v1/runs/{id}/replay`: a new run of the same function with the same
/// events, linked to the original.
pub async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (original, events) = run_stream(&state, &caller, &id).await?;
    let engine = state.engine()?;
    let mut run = Run::initial();
    for e in &events {
        run = Run::evolve(run, &e.decode::<RunEvent>().map_err(ApiError::internal)?);
    }
    let Some(function_ref) = run.function.clone() else {
        return Err(ApiError::not_found(format!("no run `{id}`")));
    };
    // Replays run the function as the app serves it now, in the run's environment.
    let space = flowforge_engine::Space::new(caller.tenant(), run.environment);
    let function = engine
        .registry
        .current(&space, &function_ref.function_id)
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "function `{}` is no longer registered",
                function_ref.function_id
            ))
        })?;
    let run_id = Uuid::now_v7();
    let command = RunCommand::Create(CreateRun {
        run_id,
        function: flowforge_domain::run::FunctionRef {
            app_id: function_ref.app_id.clone(),
            function_id: function.spec.id.clone(),
            version: function.version,
        },
        events: run.events.clone(),
        max_attempts: function.spec.max_attempts,
        backoff: engine.config.backoff,
        replay_of: Some(original),
        parent: None,
        environment: run.environment,
        skip: None,
        hold: None,
        at: Utc::now(),
    });
    engine
        .commands
        .handle::<Run>(
            &flowforge_domain::run::stream_id(run_id),
            &caller.metadata().in_environment(run.environment),
            || command.clone(),
        )
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": run_id, "replay_of": original})),
    )
        .into_response())
}

/// The SDK's `use_api` mode: when the server says so, the app fetches the events and
/// memoized steps of a run instead of receiving them in the call.
async fn protocol_run(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<flowforge_domain::run::RunState, ApiError> {
    let (_, events) = run_stream(state, caller, id).await?;
    let mut run = Run::initial();
    for e in &events {
        run = Run::evolve(run, &e.decode::<RunEvent>().map_err(ApiError::internal)?);
    }
    Ok(run)
}

/// `GET /v0/runs/{id}/batch`: the run's triggering events.
pub async fn protocol_batch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = protocol_run(&state, &caller, &id).await?;
    Ok(Json(Value::Array(run.events)))
}

/// `GET /v0/runs/{id}/actions`: the run's memoized steps, as `steps` in a call.
pub async fn protocol_actions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = protocol_run(&state, &caller, &id).await?;
    let steps: Map<String, Value> = run
        .steps
        .iter()
        .map(|(id, step)| (id.clone(), flowforge_engine::protocol::step_memo(step)))
        .collect();
    Ok(Json(Value::Object(steps)))
}
