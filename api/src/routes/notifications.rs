//! The caller's inbox: `/api/v1/notifications`, from the `notifications` read model;
//! what the caller does with it is an event on their inbox stream.

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use flowforge_commands::CommandError;
use flowforge_domain::notification::{self, Inbox, InboxCommand, InboxError};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::reads::NotificationRow;

fn inbox_error(error: CommandError<InboxError>) -> ApiError {
    match error {
        CommandError::Domain(InboxError::Invalid(message)) => {
            ApiError::invalid_field("notification_ids", message)
        }
        CommandError::Store(e) => e.into(),
        other => ApiError::internal(other),
    }
}

fn ms(ms: Option<i64>) -> Option<String> {
    ms.and_then(DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339())
}

fn notification_json(row: &NotificationRow) -> Value {
    json!({
        "id": row.notification_id,
        "kind": row.kind,
        "summary": row.summary,
        "actor": serde_json::from_str::<Value>(&row.actor).unwrap_or(Value::Null),
        "task": row.task_id.as_ref().map(|id| json!({
            "id": id,
            "key": row.task_number.map(|n| flowforge_domain::task::key(u64::try_from(n).unwrap_or(0))),
            "title": row.task_title,
        })),
        "comment_id": row.comment_id,
        "run_id": row.run_id,
        "approval_id": row.approval_id,
        "created_at": ms(Some(row.created_at)),
        "read_at": ms(row.read_at),
        "archived_at": ms(row.archived_at),
    })
}

#[derive(Debug, Deserialize)]
pub struct ListNotifications {
    pub kind: Option<String>,
    #[serde(default)]
    pub unread: bool,
    #[serde(default)]
    pub archived: bool,
    pub limit: Option<i64>,
}

/// `GET /api/v1/notifications`: unread first, then newest; archived ones only with
/// `archived=true`.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListNotifications>,
) -> Result<Json<Value>, ApiError> {
    use flowforge_domain::notification::KINDS;
    if let Some(kind) = &query.kind
        && !KINDS.contains(&kind.as_str())
    {
        let kinds: Vec<String> = KINDS.iter().map(|k| format!("`{k}`")).collect();
        return Err(ApiError::invalid_field(
            "kind",
            format!("one of {}", kinds.join(", ")),
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "from 1 to 500"));
    }
    let reads = state.platform.reads(&caller);
    let rows = reads
        .notifications(
            &caller.actor.id,
            query.kind.as_deref(),
            query.unread,
            query.archived,
            limit,
        )
        .await?;
    let unread = reads.unread_notifications(&caller.actor.id).await?;
    Ok(Json(json!({
        "items": rows.iter().map(notification_json).collect::<Vec<_>>(),
        "unread": unread,
    })))
}

/// `GET /api/v1/notifications/unread-count`
pub async fn unread_count(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let unread = state
        .platform
        .reads(&caller)
        .unread_notifications(&caller.actor.id)
        .await?;
    Ok(Json(json!({ "unread": unread })))
}

#[derive(Debug, Deserialize)]
pub struct Marked {
    pub notification_ids: Option<Vec<String>>,
}

async fn record(state: &AppState, caller: &Caller, command: InboxCommand) -> Result<(), ApiError> {
    state
        .commands
        .handle::<Inbox>(
            &notification::stream_id(&caller.actor.id),
            &caller.metadata(),
            || command.clone(),
        )
        .await
        .map_err(inbox_error)?;
    Ok(())
}

/// `POST /api/v1/notifications/read` with `{"notification_ids": [...]}`
pub async fn mark_read(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<Marked>,
) -> Result<Json<Value>, ApiError> {
    let ids = body.notification_ids.unwrap_or_default();
    record(
        &state,
        &caller,
        InboxCommand::MarkRead {
            notification_ids: ids.clone(),
            at: Utc::now(),
        },
    )
    .await?;
    Ok(Json(json!({ "read": ids })))
}

/// `POST /api/v1/notifications/read-all`: everything caused up to now.
pub async fn mark_all_read(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let head = state.platform.store.head_position().await?;
    record(
        &state,
        &caller,
        InboxCommand::MarkAllRead {
            up_to_position: head,
            at: Utc::now(),
        },
    )
    .await?;
    Ok(Json(json!({ "read_up_to": head })))
}

/// `POST /api/v1/notifications/archive` with `{"notification_ids": [...]}`
pub async fn archive(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<Marked>,
) -> Result<Json<Value>, ApiError> {
    let ids = body.notification_ids.unwrap_or_default();
    record(
        &state,
        &caller,
        InboxCommand::Archive {
            notification_ids: ids.clone(),
            at: Utc::now(),
        },
    )
    .await?;
    Ok(Json(json!({ "archived": ids })))
}
