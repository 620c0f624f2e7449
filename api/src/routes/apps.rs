//! Apps and their functions: `POST /fn/register` (the SDK protocol's sync), listings,
//! and invoking a function directly.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use flowforge_commands::CommandError;
use flowforge_domain::app::{
    App, AppError, CancelRule, FunctionSpec, FunctionVersion, SyncApp, Trigger,
};
use flowforge_domain::flow_control::FlowControl;
use flowforge_domain::run::{CreateRun, FunctionRef, Run, RunCommand, RunEvent};
use flowforge_engine::expr::Expressions;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::AppState;
use crate::caller::Caller;
use crate::error::ApiError;

/// Flow-control settings, checked (`domain::flow_control`) and kept verbatim from the
/// sync (enforced in a later version).
const FLOW_CONTROL_KEYS: &[&str] = &[
    "concurrency",
    "throttle",
    "rateLimit",
    "debounce",
    "batchEvents",
    "idempotency",
    "priority",
    "singleton",
    "timeouts",
];
/// Retries a function may ask for at most.
const MAX_RETRIES: u64 = 20;

fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// Parses the body of `POST /fn/register` (as Inngest's SDKs send it) into a sync.
pub fn parse_sync(body: &Value, default_max_attempts: u32) -> Result<SyncApp, ApiError> {
    let url = str_at(body, "url")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::invalid_field("url", "the app's URL is required"))?;
    let app_id = str_at(body, "appname")
        .or_else(|| str_at(body, "appName"))
        .or_else(|| str_at(body, "app_name"))
        .filter(|a| !a.trim().is_empty())
        .ok_or_else(|| ApiError::invalid_field("appname", "the app's name is required"))?;
    let functions = match body.get("functions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(functions)) => functions
            .iter()
            .enumerate()
            .map(|(i, f)| parse_function(i, f, url, default_max_attempts))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid_field("functions", "must be an array")),
    };
    Ok(SyncApp {
        app_id: app_id.to_owned(),
        url: url.to_owned(),
        sdk: str_at(body, "sdk").map(str::to_owned),
        framework: str_at(body, "framework").map(str::to_owned),
        functions,
        at: Utc::now(),
    })
}

fn parse_function(
    i: usize,
    f: &Value,
    app_url: &str,
    default_max_attempts: u32,
) -> Result<FunctionSpec, ApiError> {
    let at = |field: &str| format!("functions[{i}].{field}");
    let id = str_at(f, "id")
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| ApiError::invalid_field(at("id"), "a function needs an id"))?
        .to_owned();
    let name = str_at(f, "name")
        .filter(|n| !n.is_empty())
        .unwrap_or(&id)
        .to_owned();
    let mut triggers = Vec::new();
    for (j, t) in f
        .get("triggers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = |x: &str| at(&format!("triggers[{j}].{x}"));
        if let Some(event) = str_at(t, "event") {
            let expression = str_at(t, "expression")
                .filter(|e| !e.trim().is_empty())
                .map(str::to_owned);
            if let Some(e) = &expression {
                Expressions::validate(e)
                    .map_err(|err| ApiError::invalid_field(field("expression"), err.to_string()))?;
            }
            triggers.push(Trigger::Event {
                event: event.to_owned(),
                expression,
            });
        } else if let Some(cron) = str_at(t, "cron") {
            flowforge_engine::cron::Schedule::parse(cron)
                .map_err(|err| ApiError::invalid_field(field("cron"), err.to_string()))?;
            triggers.push(Trigger::Cron {
                cron: cron.to_owned(),
            });
        } else {
            return Err(ApiError::invalid_field(
                at(&format!("triggers[{j}]")),
                "a trigger needs `event` or `cron`",
            ));
        }
    }
    if triggers.is_empty() {
        return Err(ApiError::invalid_field(
            at("triggers"),
            "a function needs at least one trigger",
        ));
    }
    let step = f.get("steps").and_then(|s| s.get("step"));
    let max_attempts = match step
        .and_then(|s| s.get("retries"))
        .and_then(|r| r.get("attempts"))
    {
        None | Some(Value::Null) => default_max_attempts,
        Some(value) => match value.as_u64() {
            Some(retries) if retries <= MAX_RETRIES => u32::try_from(retries + 1).unwrap_or(1),
            _ => {
                return Err(ApiError::invalid_field(
                    at("steps.step.retries.attempts"),
                    format!("retries must be an integer from 0 to {MAX_RETRIES}"),
                ));
            }
        },
    };
    let url = step
        .and_then(|s| s.get("runtime"))
        .and_then(|r| str_at(r, "url"))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let separator = if app_url.contains('?') { '&' } else { '?' };
            format!("{app_url}{separator}fnId={id}&stepId=step")
        });
    let mut cancel = Vec::new();
    for (j, c) in f
        .get("cancel")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = |x: &str| at(&format!("cancel[{j}].{x}"));
        let event = str_at(c, "event").ok_or_else(|| {
            ApiError::invalid_field(field("event"), "a cancel rule needs an event")
        })?;
        let expression = str_at(c, "if")
            .filter(|e| !e.trim().is_empty())
            .map(str::to_owned);
        if let Some(e) = &expression {
            Expressions::validate(e)
                .map_err(|err| ApiError::invalid_field(field("if"), err.to_string()))?;
        }
        let timeout = str_at(c, "timeout").map(str::to_owned);
        if let Some(t) = &timeout {
            flowforge_domain::duration::parse(t)
                .map_err(|err| ApiError::invalid_field(field("timeout"), err.to_string()))?;
        }
        cancel.push(CancelRule {
            event: event.to_owned(),
            expression,
            timeout,
        });
    }
    // Refused now rather than found impossible when a run needs them.
    let control = FlowControl::parse(f).map_err(|e| {
        ApiError::invalid_field(at(&e.field), format!("function `{id}`: {}", e.message))
    })?;
    for (field, expression) in control.expressions() {
        Expressions::validate(expression)
            .map_err(|e| ApiError::invalid_field(at(&field), format!("function `{id}`: {e}")))?;
    }
    let flow_control: Map<String, Value> = FLOW_CONTROL_KEYS
        .iter()
        .filter_map(|k| {
            f.get(*k)
                .filter(|v| !v.is_null())
                .map(|v| ((*k).to_owned(), v.clone()))
        })
        .collect();
    Ok(FunctionSpec {
        id,
        name,
        triggers,
        max_attempts,
        url,
        cancel,
        flow_control: if flow_control.is_empty() {
            Value::Null
        } else {
            Value::Object(flow_control)
        },
    })
}

/// `POST /fn/register`: an app tells the server what it serves. The route's guard has
/// checked the app's signing key (or FlowForge key) already.
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = super::events::read_body(body, 8 * 1024 * 1024).await?;
    let body = super::events::parse_json(&bytes)?;
    let engine = state.engine()?;
    let sync = parse_sync(&body, engine.config.default_max_attempts)?;
    let app_id = sync.app_id.clone();
    let stream = flowforge_domain::app::stream_id(caller.tenant(), caller.environment, &app_id);
    let handled = engine
        .commands
        .handle::<App>(&stream, &caller.metadata(), || sync.clone())
        .await
        .map_err(|e| match e {
            CommandError::Domain(AppError::Invalid { field, message }) => {
                ApiError::invalid_field(field, message)
            }
            CommandError::Store(e) => ApiError::from(e),
            other => ApiError::internal(other),
        })?;
    // Make the new versions visible to this process at once (the scheduler applies
    // them from the log too; applying a sync twice changes nothing).
    let mut modified = false;
    for event in &handled.events {
        let flowforge_domain::app::AppEvent::Synced(synced) = event;
        modified |= synced.modified;
        engine.registry.apply_sync(&caller.space(), synced);
    }
    Ok(Json(json!({
        "ok": true,
        "modified": modified,
        "app_id": app_id,
        "functions": handled.state.functions.len(),
    })))
}

fn function_json(app_id: &str, f: &FunctionVersion) -> Value {
    json!({
        "id": f.spec.id,
        "name": f.spec.name,
        "app_id": app_id,
        "version": f.version,
        "triggers": f.spec.triggers,
        "retries": f.spec.max_attempts.saturating_sub(1),
        "cancel": f.spec.cancel,
        "flow_control": f.spec.flow_control,
        "url": f.spec.url,
    })
}

/// `GET /api/v1/apps`
pub async fn list_apps(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let apps = state.engine()?.registry.apps(&caller.space());
    Ok(Json(json!({
        "items": apps.iter().map(|a| json!({
            "id": a.app_id,
            "url": a.url,
            "sdk": a.sdk,
            "framework": a.framework,
            "last_synced_at": a.last_synced_at.to_rfc3339(),
            "functions": a.functions,
        })).collect::<Vec<_>>()
    })))
}

#[derive(Debug, Deserialize)]
pub struct OwnerBody {
    /// A user of the caller's tenant, or null for no owner.
    pub owner: Option<String>,
}

/// `PUT /api/v1/apps/{id}/owner` `{"owner": "<user id>" | null}`: the person told (in
/// their inbox) when a run of one of the app's functions fails.
pub async fn set_owner(
    State(state): State<AppState>,
    caller: Caller,
    Path(app_id): Path<String>,
    Json(body): Json<OwnerBody>,
) -> Result<Json<Value>, ApiError> {
    use flowforge_domain::ownership::{self, AppOwnerError, AppOwnership, SetAppOwner};
    use flowforge_domain::user::{self, User};
    let known = state
        .engine()?
        .registry
        .apps(&caller.space())
        .iter()
        .any(|a| a.app_id == app_id);
    if !known {
        return Err(ApiError::not_found(format!("no app `{app_id}`")));
    }
    if let Some(owner) = &body.owner {
        let not_a_user = || ApiError::invalid_field("owner", format!("no user `{owner}`"));
        let id: Uuid = owner.parse().map_err(|_| not_a_user())?;
        let found = super::fold_in_tenant::<User>(&state, &caller, &user::stream_id(id)).await?;
        if found.is_none_or(|u| u.profile.is_none()) {
            return Err(not_a_user());
        }
    }
    let command = SetAppOwner {
        app_id: app_id.clone(),
        owner: body.owner.clone(),
        at: Utc::now(),
    };
    state
        .commands
        .handle::<AppOwnership>(
            &ownership::stream_id(caller.tenant(), &app_id),
            &caller.metadata(),
            || command.clone(),
        )
        .await
        .map_err(|e| match e {
            CommandError::Domain(AppOwnerError::Invalid { field, message }) => {
                ApiError::invalid_field(field, message)
            }
            other => ApiError::internal(other),
        })?;
    Ok(Json(json!({"app_id": app_id, "owner": body.owner})))
}

/// `GET /api/v1/functions`
pub async fn list_functions(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let functions = state.engine()?.registry.functions(&caller.space());
    Ok(Json(json!({
        "items": functions.iter().map(|(app, f)| function_json(app, f)).collect::<Vec<_>>()
    })))
}

/// `GET /api/v1/functions/{id}`
pub async fn show_function(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let registry = &state.engine()?.registry;
    let f = registry
        .current(&caller.space(), &id)
        .ok_or_else(|| ApiError::not_found(format!("no function `{id}`")))?;
    let app = registry.app_of(&caller.space(), &id).unwrap_or_default();
    Ok(Json(function_json(&app, &f)))
}

#[derive(Debug, Deserialize)]
pub struct InvokeQuery {
    /// Wait for the run to finish and answer its output.
    #[serde(default)]
    pub wait: bool,
    /// Seconds to wait at most (default 30, at most 300).
    pub timeout: Option<u64>,
}

/// `POST /api/v1/functions/{id}/invoke`: start a run of one function now. The body is
/// the event data (an object), or any JSON value, given to the function as
/// `event.data.input`. With `?wait=true` the answer is the run's output.
pub async fn invoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<InvokeQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let bytes = super::events::read_body(body, state.platform.config.max_event_bytes).await?;
    let input = if bytes.is_empty() {
        json!({})
    } else {
        super::events::parse_json(&bytes)?
    };
    let data = match input {
        // `{"data": {...}}` is the event data; any other object is the data itself.
        Value::Object(object)
            if object.len() == 1 && object.get("data").is_some_and(Value::is_object) =>
        {
            object.get("data").cloned().unwrap_or_default()
        }
        object @ Value::Object(_) => object,
        other => json!({ "input": other }),
    };
    let function = engine
        .registry
        .current(&caller.space(), &id)
        .ok_or_else(|| ApiError::not_found(format!("no function `{id}`")))?;
    let run_id = Uuid::now_v7();
    let event = json!({
        "id": Uuid::now_v7().to_string(),
        "name": "inngest/function.invoked",
        "data": data,
        "ts": Utc::now().timestamp_millis(),
        "user": {},
    });
    let stream = flowforge_domain::run::stream_id(run_id);
    // Watch before the run exists, so its end cannot slip past.
    let mut watch = engine.live.watch_stream(&stream);
    let command = RunCommand::Create(CreateRun {
        run_id,
        function: FunctionRef {
            app_id: engine
                .registry
                .app_of(&caller.space(), &id)
                .unwrap_or_default(),
            function_id: function.spec.id.clone(),
            version: function.version,
        },
        events: vec![event],
        max_attempts: function.spec.max_attempts,
        backoff: engine.config.backoff,
        replay_of: None,
        parent: None,
        environment: caller.environment,
        skip: None,
        hold: None,
        at: Utc::now(),
    });
    engine
        .commands
        .handle_new::<Run>(&stream, &caller.metadata(), || command.clone())
        .await
        .map_err(ApiError::internal)?;
    if !query.wait {
        return Ok((StatusCode::ACCEPTED, Json(json!({ "run_id": run_id }))).into_response());
    }
    let timeout = Duration::from_secs(query.timeout.unwrap_or(30).clamp(1, 300));
    let outcome = tokio::time::timeout(timeout, async {
        while let Some(event) = watch.recv().await {
            let Ok(decoded) = event.decode::<RunEvent>() else {
                continue;
            };
            match decoded {
                RunEvent::Completed(done) => return Some(Ok(done.output)),
                RunEvent::Failed(failed) => {
                    return Some(Err((
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"status": "failed", "run_id": run_id, "error": failed.error}),
                    )));
                }
                RunEvent::Cancelled(c) => {
                    return Some(Err((
                        StatusCode::CONFLICT,
                        json!({"status": "cancelled", "run_id": run_id, "reason": c.reason}),
                    )));
                }
                _ => {}
            }
        }
        None
    })
    .await;
    Ok(match outcome {
        Ok(Some(Ok(output))) => (StatusCode::OK, Json(output)).into_response(),
        Ok(Some(Err((status, body)))) => (status, Json(body)).into_response(),
        Ok(None) | Err(_) => (
            StatusCode::ACCEPTED,
            Json(json!({ "run_id": run_id, "status": "running" })),
        )
            .into_response(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python_sdk_sync() -> Value {
        json!({
            "appname": "my-app",
            "deploy_type": "ping",
            "framework": "flask",
            "sdk": "py:v0.5.19",
            "url": "http://localhost:8000/api/inngest",
            "v": "0.1",
            "functions": [{
                "cancel": [{"event": "app/cancel", "if": "async.data.id == event.data.id", "timeout": "1h"}],
                "concurrency": [{"key": "event.data.user", "limit": 2, "scope": "fn"}],
                "debounce": {"key": "event.data.id", "period": "10s"},
                "id": "my-app-hello",
                "name": "Hello fn",
                "steps": {"step": {"id": "step", "name": "step", "retries": {"attempts": 3},
                    "runtime": {"type": "http", "url": "http://localhost:8000/api/inngest?fnId=my-app-hello&stepId=step"}}},
                "triggers": [{"event": "app/hello", "expression": "event.data.x > 1"}, {"cron": "*/5 * * * *"}]
            }]
        })
    }

    #[test]
    fn the_python_sdks_sync_body_is_understood() {
        let sync = parse_sync(&python_sdk_sync(), 4).unwrap();
        assert_eq!(sync.app_id, "my-app");
        let f = &sync.functions[0];
        assert_eq!(f.id, "my-app-hello");
        assert_eq!(f.max_attempts, 4);
        assert_eq!(
            f.url,
            "http://localhost:8000/api/inngest?fnId=my-app-hello&stepId=step"
        );
        assert_eq!(f.triggers.len(), 2);
        assert_eq!(f.cancel[0].timeout.as_deref(), Some("1h"));
        assert_eq!(f.flow_control["concurrency"][0]["limit"], 2);
        assert_eq!(f.flow_control["debounce"]["period"], "10s");
    }

    #[test]
    fn impossible_flow_control_is_refused_at_sync_naming_the_function_and_field() {
        let mut body = python_sdk_sync();
        body["functions"][0]["concurrency"][0]["limit"] = json!(-1);
        let error = parse_sync(&body, 4).unwrap_err();
        assert_eq!(
            error.body.field.as_deref(),
            Some("functions[0].concurrency[0].limit")
        );
        assert!(error.body.message.contains("my-app-hello"), "{error:?}");
        let mut body = python_sdk_sync();
        body["functions"][0]["concurrency"][0]["key"] = json!("event.data.");
        assert_eq!(
            parse_sync(&body, 4).unwrap_err().body.field.as_deref(),
            Some("functions[0].concurrency[0].key")
        );
        let mut body = python_sdk_sync();
        body["functions"][0]["rateLimit"] = json!({"limit": 1, "period": "3d"});
        assert_eq!(
            parse_sync(&body, 4).unwrap_err().body.field.as_deref(),
            Some("functions[0].rateLimit.period")
        );
    }

    #[test]
    fn invalid_syncs_name_the_function_and_field() {
        let mut body = python_sdk_sync();
        body["functions"][0]["triggers"][0]["expression"] = json!("event.data.x >");
        assert_eq!(
            parse_sync(&body, 4).unwrap_err().body.field.as_deref(),
            Some("functions[0].triggers[0].expression")
        );
        let mut body = python_sdk_sync();
        body["functions"][0]["triggers"][1]["cron"] = json!("every tuesday");
        assert_eq!(
            parse_sync(&body, 4).unwrap_err().body.field.as_deref(),
            Some("functions[0].triggers[1].cron")
        );
        let mut body = python_sdk_sync();
        body["functions"][0]["steps"]["step"]["retries"]["attempts"] = json!(-1);
        assert_eq!(
            parse_sync(&body, 4).unwrap_err().body.field.as_deref(),
            Some("functions[0].steps.step.retries.attempts")
        );
        let mut body = python_sdk_sync();
        body["functions"][0]["cancel"][0]["timeout"] = json!("soon");
        assert_eq!(
            parse_sync(&body, 4).unwrap_err().body.field.as_deref(),
            Some("functions[0].cancel[0].timeout")
        );
        let mut body = python_sdk_sync();
        body["functions"][0]["triggers"] = json!([]);
        assert_eq!(
            parse_sync(&body, 4).unwrap_err().body.field.as_deref(),
            Some("functions[0].triggers")
        );
        assert_eq!(
            parse_sync(&json!({"url": "x"}), 4)
                .unwrap_err()
                .body
                .field
                .as_deref(),
            Some("appname")
        );
    }
}
