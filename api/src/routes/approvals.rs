//! Human approvals: `/api/v1/approvals`. A run asks (`step.wait_for_approval`); a
//! member or admin answers here, and the run resumes with `{approved, by, comment}`.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::DateTime;
use flowforge_domain::approval::{
    self, Approval, ApprovalError, ApprovalState, ApprovalStatus, MAX_COMMENT,
};
use flowforge_engine::approvals::{self, ApprovalDecideError};
use flowforge_projections::approvals::ApprovalRow;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use crate::caller::Caller;
use crate::error::ApiError;

fn decide_error(error: ApprovalDecideError) -> ApiError {
    match error {
        ApprovalDecideError::Domain(ApprovalError::NotFound) => ApiError::not_found("approval"),
        ApprovalDecideError::Domain(e @ ApprovalError::AlreadyDecided(_))
        | ApprovalDecideError::Domain(e @ ApprovalError::Expired(_)) => {
            ApiError::conflict(e.to_string())
        }
        ApprovalDecideError::Domain(ApprovalError::Invalid { field, reason }) => {
            ApiError::invalid_field(field, reason)
        }
        e @ ApprovalDecideError::NotAnAssignee(..) => ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "not_an_assignee",
            e.to_string(),
        ),
        ApprovalDecideError::Unavailable(e) => ApiError::unavailable(e),
        e @ ApprovalDecideError::Failed(_) => ApiError::internal(e),
    }
}

fn ms(ms: Option<i64>) -> Option<String> {
    ms.and_then(DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339())
}

fn row_json(row: &ApprovalRow) -> Value {
    json!({
        "id": row.approval_id,
        "title": row.title,
        "description": row.description,
        "assignees": serde_json::from_str::<Value>(&row.assignees).unwrap_or(Value::Null),
        "status": row.status,
        "run_id": row.run_id,
        "function_id": row.function_id,
        "step_id": row.step_id,
        "decided_by": row.decided_by,
        "comment": row.comment,
        "requested_at": ms(Some(row.requested_at)),
        "expires_at": ms(Some(row.expires_at)),
        "decided_at": ms(row.decided_at),
    })
}

fn state_json(state: &ApprovalState) -> Value {
    let decision = state.decision.as_ref();
    json!({
        "id": state.approval_id,
        "title": state.ask.title,
        "description": state.ask.description,
        "assignees": state.ask.assignees,
        "status": state.status.as_str(),
        "run_id": state.origin.run_id,
        "function_id": state.origin.function_id,
        "step_id": state.origin.step_id,
        "decided_by": decision.map(|d| d.by.clone()),
        "comment": decision.and_then(|d| d.comment.clone()),
        "requested_at": state.requested_at.to_rfc3339(),
        "expires_at": state.expires_at.to_rfc3339(),
        "decided_at": decision.map(|d| d.at.to_rfc3339()),
    })
}

#[derive(Debug, Deserialize)]
pub struct ListApprovals {
    pub status: Option<String>,
    /// `me`, or a user id: only approvals that user may decide.
    pub assignee: Option<String>,
    pub limit: Option<i64>,
}

/// `GET /api/v1/approvals?status=pending&assignee=me`
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListApprovals>,
) -> Result<Json<Value>, ApiError> {
    if let Some(status) = &query.status
        && ApprovalStatus::parse(status).is_none()
    {
        return Err(ApiError::invalid_field(
            "status",
            "`pending`, `approved`, `rejected` or `timed_out`",
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "from 1 to 500"));
    }
    let assignee = match query.assignee.as_deref() {
        Some("me") => Some(caller.actor.id.clone()),
        other => other.map(str::to_owned),
    };
    let rows = state
        .platform
        .reads(&caller)
        .approvals(query.status.as_deref(), assignee.as_deref(), limit)
        .await?;
    Ok(Json(json!({
        "items": rows.iter().map(row_json).collect::<Vec<_>>(),
    })))
}

fn approval_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse()
        .map_err(|_| ApiError::invalid_field("id", "an approval id (a UUID)"))
}

/// The approval as the log has it, if it is the caller's tenant's.
async fn found(state: &AppState, caller: &Caller, id: Uuid) -> Result<ApprovalState, ApiError> {
    super::fold_in_tenant::<Approval>(state, caller, &approval::stream_id(id))
        .await?
        .flatten()
        .ok_or_else(|| ApiError::not_found("approval"))
}

/// `GET /api/v1/approvals/{id}`: from the log, so it is current the moment it changed.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let approval = found(&state, &caller, approval_id(&id)?).await?;
    Ok(Json(state_json(&approval)))
}

#[derive(Debug, Deserialize, Default)]
pub struct Answer {
    pub comment: Option<String>,
}

async fn answer(
    state: AppState,
    caller: Caller,
    id: String,
    approved: bool,
    body: Option<Json<Answer>>,
) -> Result<Json<Value>, ApiError> {
    let id = approval_id(&id)?;
    let comment = body.and_then(|Json(b)| b.comment);
    if comment.as_ref().is_some_and(|c| c.len() > MAX_COMMENT) {
        return Err(ApiError::invalid_field(
            "comment",
            format!("at most {MAX_COMMENT} bytes"),
        ));
    }
    let engine = state.engine()?;
    found(&state, &caller, id).await?;
    let decided = approvals::decide(engine, &caller.metadata(), id, approved, comment)
        .await
        .map_err(decide_error)?;
    Ok(Json(state_json(&decided)))
}

/// `POST /api/v1/approvals/{id}/approve` with an optional `{"comment": "…"}`
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Option<Json<Answer>>,
) -> Result<Json<Value>, ApiError> {
    answer(state, caller, id, true, body).await
}

/// `POST /api/v1/approvals/{id}/reject` with an optional `{"comment": "…"}`
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Option<Json<Answer>>,
) -> Result<Json<Value>, ApiError> {
    answer(state, caller, id, false, body).await
}
