//! Serving an app: `POST` runs a function call, `PUT` syncs, `GET` describes the app.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::execution::{Context, Outcome, execute};
use crate::{App, Error};

const SDK: &str = concat!("rust:v", env!("CARGO_PKG_VERSION"));

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", post(call).put(sync).get(describe))
        .with_state(app)
}

fn hmac_key(key: &str) -> &str {
    key.strip_prefix("signkey-")
        .and_then(|rest| rest.split_once('-').map(|(_, k)| k))
        .unwrap_or(key)
}

fn signature_valid(header: Option<&str>, body: &[u8], key: &str) -> bool {
    let Some(header) = header else { return false };
    let mut t = None;
    let mut s = None;
    for part in header.split('&') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("s", v)) => s = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(s)) = (t, s) else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - t).abs() > 300 {
        return false;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(hmac_key(key).as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.update(t.to_string().as_bytes());
    mac.verify_slice(&s).is_ok()
}

fn json_response(status: StatusCode, body: &Value, extra: &[(&'static str, String)]) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-inngest-sdk", HeaderValue::from_static(SDK));
    headers.insert("x-inngest-req-version", HeaderValue::from_static("2"));
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    response
}

async fn call(
    State(app): State<Arc<App>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(key) = &app.signing_key
        && !std::iter::once(key)
            .chain(app.signing_key_fallback.iter())
            .any(|key| {
                signature_valid(
                    headers
                        .get("x-inngest-signature")
                        .and_then(|v| v.to_str().ok()),
                    &body,
                    key,
                )
            })
    {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"message": "invalid or missing X-Inngest-Signature"}),
            &[],
        );
    }
    let Some(function) = query.get("fnId").and_then(|id| app.functions.get(id)) else {
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"name": "FunctionNotFound", "message": format!("no function {:?}", query.get("fnId"))}),
            &[("x-inngest-no-retry", "true".into())],
        );
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"name": "BadRequest", "message": format!("the call body is not JSON: {e}")}),
                &[],
            );
        }
    };
    let ctx = &request["ctx"];
    let event = request["event"].clone();
    let context = Context {
        events: request["events"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![event.clone()]),
        event,
        run_id: ctx["run_id"].as_str().unwrap_or_default().to_owned(),
        attempt: u32::try_from(ctx["attempt"].as_u64().unwrap_or(0)).unwrap_or(0),
        function_id: query.get("fnId").cloned().unwrap_or_default(),
    };
    let memos: HashMap<String, Value> = request["steps"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let target = query
        .get("stepId")
        .filter(|s| s.as_str() != "step")
        .cloned();
    let disable_immediate = ctx["disable_immediate_execution"]
        .as_bool()
        .unwrap_or(false);
    match execute(
        function,
        context,
        memos,
        target,
        disable_immediate,
        app.client(),
    )
    .await
    {
        Outcome::Done(value) => json_response(StatusCode::OK, &value, &[]),
        Outcome::Steps(steps) => {
            json_response(StatusCode::PARTIAL_CONTENT, &Value::Array(steps), &[])
        }
        Outcome::Failed {
            error,
            no_retry,
            retry_after,
        } => {
            let mut extra = vec![("x-inngest-no-retry", no_retry.to_string())];
            if let Some(after) = retry_after {
                extra.push(("retry-after", after.as_secs().max(1).to_string()));
            }
            json_response(StatusCode::INTERNAL_SERVER_ERROR, &error, &extra)
        }
    }
}

async fn sync(State(app): State<Arc<App>>) -> Response {
    match register(&app).await {
        Ok(body) => json_response(StatusCode::OK, &body, &[]),
        Err(error) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"message": error.to_string()}),
            &[],
        ),
    }
}

async fn describe(State(app): State<Arc<App>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"app_id": app.id, "function_count": app.functions.len(), "sdk": SDK, "mode": if app.signing_key.is_some() { "cloud" } else { "dev" }}),
        &[],
    )
}

pub async fn register(app: &App) -> Result<Value, Error> {
    let separator = if app.serve_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let functions: Vec<Value> = app
        .functions
        .iter()
        .map(|(full_id, f)| {
            let mut step = json!({
                "id": "step",
                "name": "step",
                "runtime": {"type": "http", "url": format!("{}{separator}fnId={full_id}&stepId=step", app.serve_url)},
            });
            if let Some(retries) = f.retries {
                step["retries"] = json!({"attempts": retries});
            }
            let mut function = json!({
                "id": full_id,
                "name": f.name.clone().unwrap_or_else(|| f.id.clone()),
                "triggers": f.triggers,
                "cancel": f.cancel,
                "steps": {"step": step},
            });
            if let Some(map) = function.as_object_mut() {
                map.extend(f.flow_control.clone());
            }
            function
        })
        .collect();
    let body = json!({
        "url": app.serve_url,
        "appname": app.id,
        "deploy_type": "ping",
        "sdk": SDK,
        "framework": "axum",
        "v": "0.1",
        "functions": functions,
    });
    let mut request = app
        .http
        .post(format!("{}/fn/register", app.server_url))
        .json(&body);
    if let Some(key) = &app.signing_key {
        use sha2::Digest;
        let raw = hmac_key(key);
        let bytes = hex::decode(raw).unwrap_or_else(|_| raw.as_bytes().to_vec());
        request = request.bearer_auth(hex::encode(Sha256::digest(bytes)));
    }
    let response = request
        .send()
        .await
        .map_err(|e| Error::Sdk(format!("registering: {e}")))?;
    let status = response.status();
    let answer: Value = response
        .json()
        .await
        .map_err(|e| Error::Sdk(format!("registering: {e}")))?;
    if !status.is_success() {
        return Err(Error::Sdk(format!(
            "registering failed with HTTP {status}: {answer}"
        )));
    }
    Ok(answer)
}
