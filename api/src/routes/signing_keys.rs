//! `/api/v1/signing-keys`: the keys an environment signs its calls to apps with and
//! accepts from apps, and their two-step rotation (see `domain::signing_key`). Each
//! request acts on the caller's environment (`?environment=test` for the test one).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use flowforge_commands::CommandError;
use flowforge_domain::signing_key::{
    self, SigningKeyCommand, SigningKeyError, SigningKeyInfo, SigningKeyRing, SigningKeyRingState,
};
use flowforge_engine::signing::{bearer_secret_name, fingerprint, key_secret_name};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::events::{parse_json, read_body};
use super::identity::body_of;
use crate::auth::keys;
use crate::caller::Caller;
use crate::error::ApiError;

const BODY_LIMIT: usize = 16 * 1024;
/// How long a rotated-out key stays valid when the request does not say.
const DEFAULT_GRACE_SECONDS: i64 = 24 * 60 * 60;

fn key_json(key: &SigningKeyInfo) -> Value {
    json!({
        "id": key.key_id,
        "status": key.status,
        "fingerprint": key.fingerprint,
        "created_at": key.created_at.to_rfc3339(),
        "valid_until": key.valid_until.map(|t| t.to_rfc3339()),
    })
}

fn ring_json(caller: &Caller, ring: &SigningKeyRingState) -> Value {
    json!({
        "environment": caller.environment,
        "items": ring.keys.iter().rev().map(key_json).collect::<Vec<_>>(),
    })
}

fn ring_error(error: CommandError<SigningKeyError>) -> ApiError {
    match error {
        CommandError::Domain(SigningKeyError::Invalid { field, message }) => {
            ApiError::invalid_field(field, message)
        }
        CommandError::Domain(SigningKeyError::NotFound) => {
            ApiError::not_found("no such signing key")
        }
        CommandError::Domain(
            e @ (SigningKeyError::NextKeyPending
            | SigningKeyError::NoNextKey
            | SigningKeyError::RevokingCurrent
            | SigningKeyError::AlreadyExists),
        ) => ApiError::conflict(e.to_string()),
        CommandError::Store(e) => e.into(),
        other => ApiError::internal(other),
    }
}

fn stream(caller: &Caller) -> String {
    signing_key::stream_id(caller.tenant(), caller.environment)
}

/// `GET /api/v1/signing-keys`
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let loaded = state
        .commands
        .load::<SigningKeyRing>(&stream(&caller))
        .await
        .map_err(ring_error)?;
    Ok(Json(ring_json(&caller, &loaded.state)))
}

/// `POST /api/v1/signing-keys`: a new key. The environment's first key signs at once
/// (except where apps may hold the operator's key); a later one waits as `next` until
/// it is rotated in. The answer is the only place the key appears.
pub async fn create(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let (key_id, key) = keys::generate_signing_key(caller.environment);
    let hashed = flowforge_engine::protocol::hashed_signing_key(&key);
    let secrets = &state.platform.secrets;
    // The secrets first: a key whose event is recorded can always be used. Secrets
    // without their event name a key no ring holds, which nothing accepts.
    secrets
        .put_secret(caller.tenant(), &key_secret_name(&key_id), &key)
        .await?;
    secrets
        .put_secret(
            caller.tenant(),
            &bearer_secret_name(&hashed),
            &format!("{}:{key_id}", caller.environment),
        )
        .await?;
    // Apps of the default tenant's live environment may hold the operator's key: the
    // first key of that ring waits to be rotated in like any later one.
    let first_signs_at_once = !state
        .platform
        .signing_keys
        .operator_keys_serve(&caller.space());
    let handled = state
        .commands
        .handle::<SigningKeyRing>(&stream(&caller), &caller.metadata(), || {
            SigningKeyCommand::Create {
                key_id: key_id.clone(),
                environment: caller.environment,
                fingerprint: fingerprint(&key),
                first_signs_at_once,
                at: Utc::now(),
            }
        })
        .await
        .map_err(ring_error)?;
    state.platform.signing_keys.forget(&caller.space());
    let created = handled
        .state
        .keys
        .iter()
        .find(|k| k.key_id == key_id)
        .map(key_json)
        .unwrap_or(Value::Null);
    let mut answer = json!({ "environment": caller.environment, "key": key });
    if let (Some(answer), Value::Object(created)) = (answer.as_object_mut(), created) {
        answer.extend(created);
    }
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the replaced key stays valid (default a day, at most 30 days).
    grace_period_seconds: Option<i64>,
}

/// `POST /api/v1/signing-keys/rotate`: the next key becomes current; the current one
/// stays valid for the grace period.
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = read_body(body, BODY_LIMIT).await?;
    let body: RotateBody = if bytes.is_empty() {
        RotateBody::default()
    } else {
        body_of(parse_json(&bytes)?)?
    };
    let grace =
        chrono::Duration::try_seconds(body.grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECONDS))
            .ok_or_else(|| ApiError::invalid_field("grace_period_seconds", "out of range"))?;
    let handled = state
        .commands
        .handle::<SigningKeyRing>(&stream(&caller), &caller.metadata(), || {
            SigningKeyCommand::Rotate {
                grace,
                at: Utc::now(),
            }
        })
        .await
        .map_err(ring_error)?;
    state.platform.signing_keys.forget(&caller.space());
    Ok(Json(ring_json(&caller, &handled.state)))
}

/// `DELETE /api/v1/signing-keys/{id}`: a next or retired key stops being accepted at once.
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let handled = state
        .commands
        .handle::<SigningKeyRing>(&stream(&caller), &caller.metadata(), || {
            SigningKeyCommand::Revoke {
                key_id: id.clone(),
                at: Utc::now(),
            }
        })
        .await
        .map_err(ring_error)?;
    state.platform.signing_keys.forget(&caller.space());
    Ok(Json(ring_json(&caller, &handled.state)))
}
