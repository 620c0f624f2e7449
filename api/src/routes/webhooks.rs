//! Webhooks: `/api/v1/webhooks` to manage them, `POST /hooks/{id}` for third parties.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use flowforge_commands::CommandError;
use flowforge_domain::event::EventSource;
use flowforge_domain::webhook::{
    DeliveryRejected, SignatureCheck, Webhook, WebhookCommand, WebhookCreated, WebhookError,
    WebhookState,
};
use flowforge_domain::{Actor, Decider, EventMetadata, TenantId};
use flowforge_engine::NewIncomingEvent;
use flowforge_engine::expr::Expressions;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::AppState;
use crate::caller::Caller;
use crate::error::ApiError;

const DEFAULT_SIGNATURE_HEADER: &str = "x-flowforge-signature";

fn secret_name(id: Uuid) -> String {
    format!("webhook:{id}")
}

#[derive(Debug, Deserialize)]
pub struct CreateWebhook {
    pub name: String,
    /// The event name when the transform gives none (default `webhook/<name>`).
    pub event_name: Option<String>,
    /// CEL over `body` and `headers` (lower-case names) giving `{"name"?, "data"?}`.
    pub transform: Option<String>,
    /// A shared secret: deliveries must then be signed with it.
    pub secret: Option<String>,
    pub signature_header: Option<String>,
    /// What comes before the hex digest in the header (GitHub: `sha256=`).
    pub signature_prefix: Option<String>,
}

fn webhook_json(id: Uuid, state: &WebhookState) -> Option<Value> {
    let config = state.active()?;
    Some(json!({
        "id": id,
        "name": config.name,
        "url": format!("/hooks/{id}"),
        "event_name": config.event_name,
        "transform": config.transform,
        "signature": config.signature.as_ref().map(|s| json!({
            "header": s.header, "prefix": s.prefix, "secret_fingerprint": s.secret_fingerprint,
        })),
        "created_at": config.at.to_rfc3339(),
        "rejected_deliveries": state.rejected,
        "last_rejection": state.last_rejection,
    }))
}

fn webhook_error(error: CommandError<WebhookError>) -> ApiError {
    match error {
        CommandError::Domain(WebhookError::Invalid { field, message }) => {
            ApiError::invalid_field(field, message)
        }
        CommandError::Domain(WebhookError::NotFound) => ApiError::not_found("no such webhook"),
        CommandError::Domain(WebhookError::AlreadyExists) => {
            ApiError::conflict("the webhook already exists")
        }
        CommandError::Store(e) => e.into(),
        other => ApiError::internal(other),
    }
}

/// The webhook's state and its tenant, from its stream.
async fn load(state: &AppState, id: Uuid) -> Result<(WebhookState, String), ApiError> {
    let events = state
        .platform
        .store
        .read_stream(&flowforge_domain::webhook::stream_id(id), 1)
        .await?;
    let Some(first) = events.first() else {
        return Err(ApiError::not_found(format!("no webhook `{id}`")));
    };
    let tenant = first.tenant_id().to_owned();
    let mut webhook = Webhook::initial();
    for e in &events {
        webhook = Webhook::evolve(webhook, &e.decode().map_err(ApiError::internal)?);
    }
    Ok((webhook, tenant))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse()
        .map_err(|_| ApiError::invalid_field("id", format!("`{id}` is not a webhook id (a UUID)")))
}

/// `POST /api/v1/webhooks`
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateWebhook>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    if let Some(transform) = &body.transform {
        Expressions::validate(transform)
            .map_err(|e| ApiError::invalid_field("transform", e.to_string()))?;
    }
    let id = Uuid::now_v7();
    let signature = match body.secret.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(secret) => {
            if secret.len() < 16 {
                return Err(ApiError::invalid_field(
                    "secret",
                    "use at least 16 characters",
                ));
            }
            state
                .platform
                .secrets
                .put_secret(caller.tenant(), &secret_name(id), secret)
                .await?;
            Some(SignatureCheck {
                header: body
                    .signature_header
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SIGNATURE_HEADER.to_owned())
                    .to_ascii_lowercase(),
                prefix: body
                    .signature_prefix
                    .clone()
                    .unwrap_or_else(|| "sha256=".to_owned()),
                secret_fingerprint: hex::encode(Sha256::digest(secret.as_bytes()))[..12].to_owned(),
            })
        }
    };
    let created = WebhookCreated {
        webhook_id: id,
        event_name: body
            .event_name
            .clone()
            .unwrap_or_else(|| format!("webhook/{}", body.name)),
        name: body.name.clone(),
        transform: body.transform.clone().filter(|t| !t.trim().is_empty()),
        signature,
        at: Utc::now(),
    };
    let handled = engine
        .commands
        .handle::<Webhook>(
            &flowforge_domain::webhook::stream_id(id),
            &caller.metadata(),
            || WebhookCommand::Create(created.clone()),
        )
        .await
        .map_err(webhook_error)?;
    Ok((StatusCode::CREATED, Json(webhook_json(id, &handled.state))).into_response())
}

/// `GET /api/v1/webhooks`
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let ids = state
        .platform
        .reads(&caller)
        .stream_ids(flowforge_domain::webhook::STREAM_TYPE)
        .await?;
    let mut items = Vec::new();
    for stream in ids {
        let Ok(id) = stream.trim_start_matches("webhook-").parse::<Uuid>() else {
            continue;
        };
        let (webhook, _) = load(&state, id).await?;
        items.extend(webhook_json(id, &webhook));
    }
    Ok(Json(json!({ "items": items })))
}

/// `GET /api/v1/webhooks/{id}`
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let (webhook, tenant) = load(&state, id).await?;
    if tenant != caller.tenant() {
        return Err(ApiError::not_found(format!("no webhook `{id}`")));
    }
    webhook_json(id, &webhook)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no webhook `{id}`")))
}

/// `DELETE /api/v1/webhooks/{id}`
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let (_, tenant) = load(&state, id).await?;
    if tenant != caller.tenant() {
        return Err(ApiError::not_found(format!("no webhook `{id}`")));
    }
    state
        .engine()?
        .commands
        .handle::<Webhook>(
            &flowforge_domain::webhook::stream_id(id),
            &caller.metadata(),
            || WebhookCommand::Delete { at: Utc::now() },
        )
        .await
        .map_err(webhook_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /hooks/{id}`: a delivery from a third party. Refusals are recorded on the
/// webhook's stream (status and reason, never the body).
pub async fn deliver(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let (webhook, tenant) = load(&state, id).await?;
    let config = webhook
        .active()
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no webhook `{id}`")))?;
    let engine = state.engine()?;
    let meta = EventMetadata::new(
        TenantId::new(tenant.clone()),
        Actor::system(format!("webhook:{id}")),
    );
    let reject = |error: ApiError| {
        let engine = engine.clone();
        let meta = meta.clone();
        async move {
            let rejected = DeliveryRejected {
                status: error.status.as_u16(),
                reason: error.body.message.clone(),
                at: Utc::now(),
            };
            let recorded = engine
                .commands
                .handle::<Webhook>(&flowforge_domain::webhook::stream_id(id), &meta, || {
                    WebhookCommand::RejectDelivery(rejected.clone())
                })
                .await;
            if let Err(e) = recorded {
                tracing::warn!(webhook = %id, error = %e, "could not record a refused delivery");
            }
            error
        }
    };
    let bytes = match super::events::read_body(body, state.platform.config.max_event_bytes).await {
        Ok(bytes) => bytes,
        Err(error) => return Err(reject(error).await),
    };
    if let Some(check) = &config.signature {
        let secret = state
            .platform
            .secrets
            .secret(&tenant, &secret_name(id))
            .await?;
        let given = headers
            .get(check.header.as_str())
            .and_then(|v| v.to_str().ok());
        let valid = match (
            secret,
            given.and_then(|g| g.strip_prefix(check.prefix.as_str())),
        ) {
            (Some(secret), Some(digest)) => match (
                Hmac::<Sha256>::new_from_slice(secret.as_bytes()),
                hex::decode(digest.trim()),
            ) {
                (Ok(mut mac), Ok(digest)) => {
                    mac.update(&bytes);
                    mac.verify_slice(&digest).is_ok()
                }
                _ => false,
            },
            _ => false,
        };
        if !valid {
            let message = if given.is_none() {
                format!(
                    "the delivery is not signed (expected header {})",
                    check.header
                )
            } else {
                format!("the signature in {} does not match", check.header)
            };
            return Err(reject(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                message,
            ))
            .await);
        }
    }
    let parsed: Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(e) => {
            return Err(reject(ApiError::invalid_field(
                "body",
                format!("the body is not valid JSON: {e}"),
            ))
            .await);
        }
    };
    let header_map: Map<String, Value> = headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_ascii_lowercase(), Value::String(v.to_owned())))
        })
        .collect();
    let header_map = Value::Object(header_map);
    let (mut name, mut data) = (config.event_name.clone(), parsed.clone());
    if let Some(transform) = &config.transform {
        match engine
            .expressions
            .evaluate(transform, &[("body", &parsed), ("headers", &header_map)])
        {
            Ok(Value::Object(out)) => {
                if let Some(n) = out.get("name") {
                    match n.as_str().filter(|n| !n.trim().is_empty()) {
                        Some(n) => name = n.to_owned(),
                        None => {
                            return Err(reject(ApiError::invalid_field(
                                "transform",
                                "the transform's `name` must be a non-empty string",
                            ))
                            .await);
                        }
                    }
                }
                if let Some(d) = out.get("data") {
                    data = d.clone();
                }
            }
            Ok(other) => {
                return Err(reject(ApiError::invalid_field(
                    "transform",
                    format!("the transform must give an object, not {other}"),
                ))
                .await);
            }
            Err(e) => return Err(reject(ApiError::invalid_field("transform", e.to_string())).await),
        }
    }
    if !data.is_object() {
        data = json!({ "body": data });
    }
    let ids = flowforge_engine::ingest::record(
        engine,
        &meta,
        vec![NewIncomingEvent {
            id: headers
                .get("x-github-delivery")
                .or_else(|| headers.get("idempotency-key"))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            name,
            data,
            ts: None,
            user: None,
            v: None,
        }],
        EventSource::Webhook {
            webhook_id: id.to_string(),
        },
    )
    .await?;
    Ok(Json(json!({ "ids": ids })))
}
