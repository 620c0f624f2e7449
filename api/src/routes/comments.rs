//! Comments: `/api/v1/comments` on tasks and runs, with mentions resolved when
//! written, reactions, and a task's timeline interleaving its comments with its own
//! events in log order.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use flowforge_commands::CommandError;
use flowforge_domain::access::Scope;
use flowforge_domain::comment::{
    self, Comment, CommentCommand, CommentError, CommentTarget, CommentThread, Member, Mention,
    mentioned_names,
};
use flowforge_projections::comments::CommentRow;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use crate::caller::Caller;
use crate::error::ApiError;

fn comment_error(error: CommandError<CommentError>) -> ApiError {
    match error {
        CommandError::Domain(CommentError::Invalid { field, message }) => {
            ApiError::invalid_field(field, message)
        }
        CommandError::Domain(CommentError::NotFound) => ApiError::not_found("no such comment"),
        CommandError::Domain(e @ CommentError::NotAuthor) => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
        }
        CommandError::Domain(e @ CommentError::Deleted) => ApiError::conflict(e.to_string()),
        CommandError::Store(e) => e.into(),
        CommandError::Contention { .. } => {
            ApiError::conflict("the comment changed too often at once; try again")
        }
        other => ApiError::internal(other),
    }
}

fn member_json(member: &Member) -> Value {
    match member {
        Member::User(id) => json!({"kind": "user", "id": id}),
        Member::Agent(id) => json!({"kind": "agent", "id": id}),
    }
}

fn target_json(target: &CommentTarget) -> Value {
    match target {
        CommentTarget::Task(id) => json!({"kind": "task", "id": id}),
        CommentTarget::Run(id) => json!({"kind": "run", "id": id}),
    }
}

fn ms(ms: Option<i64>) -> Option<String> {
    ms.and_then(DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339())
}

fn comment_json(comment: &Comment) -> Value {
    json!({
        "id": comment.comment_id,
        "target": target_json(&comment.target),
        "author": member_json(&comment.author),
        "body": comment.body,
        "mentions": comment.mentions,
        "reactions": comment
            .reactions
            .iter()
            .map(|(emoji, who)| (emoji.clone(), Value::Array(who.iter().map(member_json).collect())))
            .collect::<serde_json::Map<_, _>>(),
        "posted_at": comment.posted_at.to_rfc3339(),
        "edited_at": comment.edited_at.map(|t| t.to_rfc3339()),
        "deleted_at": comment.deleted_at.map(|t| t.to_rfc3339()),
    })
}

pub fn row_json(row: &CommentRow) -> Value {
    json!({
        "id": row.comment_id,
        "target": {"kind": row.target_kind, "id": row.target_id},
        "author": {"kind": row.author_kind, "id": row.author_id},
        "body": row.body,
        "mentions": serde_json::from_str::<Value>(&row.mentions).unwrap_or_else(|_| json!([])),
        "reactions": serde_json::from_str::<Value>(&row.reactions).unwrap_or_else(|_| json!({})),
        "posted_at": ms(Some(row.posted_at)),
        "edited_at": ms(row.edited_at),
        "deleted_at": ms(row.deleted_at),
    })
}

/// Who the caller writes as: itself, or (`agent`) an agent of the team.
async fn author(
    state: &AppState,
    caller: &Caller,
    agent: Option<&str>,
) -> Result<Member, ApiError> {
    match agent {
        None => Ok(Member::User(caller.actor.id.clone())),
        Some(name) => {
            let directory = state
                .commands
                .load::<flowforge_domain::agent::AgentDirectory>(
                    &flowforge_domain::agent::stream_id(caller.tenant()),
                )
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .state;
            let found = match name.parse::<Uuid>() {
                Ok(id) => directory.active(id),
                Err(_) => directory.named(name),
            };
            found.map(|a| Member::Agent(a.agent_id)).ok_or_else(|| {
                ApiError::invalid_field("agent", format!("no agent `{name}` in the team"))
            })
        }
    }
}

/// `@names` in `body` that name an agent of the team or a user of the tenant (by the
/// part of their e-mail address before `@`); other names stay text.
async fn resolve_mentions(
    state: &AppState,
    caller: &Caller,
    body: &str,
) -> Result<Vec<Mention>, ApiError> {
    let names = mentioned_names(body);
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let directory = state
        .commands
        .load::<flowforge_domain::agent::AgentDirectory>(&flowforge_domain::agent::stream_id(
            caller.tenant(),
        ))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .state;
    let users = super::identity::tenant_users(state, caller).await?;
    let mut mentions = Vec::new();
    for name in names {
        let member = if let Some(agent) = directory.named(&name) {
            Some(Member::Agent(agent.agent_id))
        } else {
            users
                .iter()
                .filter_map(|u| u.profile.as_ref())
                .find(|p| {
                    p.email
                        .split('@')
                        .next()
                        .is_some_and(|local| local.eq_ignore_ascii_case(&name))
                })
                .map(|p| Member::User(p.user_id.to_string()))
        };
        if let Some(member) = member {
            mentions.push(Mention { name, member });
        }
    }
    Ok(mentions)
}

async fn decide(
    state: &AppState,
    caller: &Caller,
    comment_id: Uuid,
    command: CommentCommand,
) -> Result<Comment, ApiError> {
    state
        .commands
        .handle::<CommentThread>(&comment::stream_id(comment_id), &caller.metadata(), || {
            command.clone()
        })
        .await
        .map_err(comment_error)?
        .state
        .ok_or_else(|| ApiError::not_found("no such comment"))
}

/// The comment, if it is the caller's tenant's.
async fn load(state: &AppState, caller: &Caller, id: &str) -> Result<(Uuid, Comment), ApiError> {
    let comment_id: Uuid = id
        .parse()
        .map_err(|_| ApiError::invalid_field("id", format!("`{id}` is not a comment id")))?;
    let comment =
        super::fold_in_tenant::<CommentThread>(state, caller, &comment::stream_id(comment_id))
            .await?
            .flatten()
            .ok_or_else(|| ApiError::not_found(format!("no comment `{id}`")))?;
    Ok((comment_id, comment))
}

fn moderator(caller: &Caller) -> bool {
    caller.may(Scope::Admin)
}

fn me(caller: &Caller) -> Member {
    Member::User(caller.actor.id.clone())
}

#[derive(Debug, Deserialize)]
pub struct PostComment {
    /// `{"kind": "task", "id": "FF-7" | "<uuid>"}` or `{"kind": "run", "id": "<uuid>"}`.
    pub target: Option<Value>,
    pub body: Option<String>,
    /// Post as this agent of the team (id or name).
    pub agent: Option<String>,
}

/// `POST /api/v1/comments`
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<PostComment>,
) -> Result<Response, ApiError> {
    let target_value = body.target.as_ref().ok_or_else(|| {
        ApiError::invalid_field(
            "target",
            "what the comment is on: {\"kind\": \"task\" | \"run\", \"id\"}",
        )
    })?;
    let id = target_value
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid_field("target.id", "a task key or id, or a run id"))?;
    let target = match target_value.get("kind").and_then(Value::as_str) {
        Some("task") => {
            CommentTarget::Task(super::tasks::existing(&state, &caller, id, "target.id").await?)
        }
        Some("run") => {
            let run_id: Uuid = id
                .parse()
                .map_err(|_| ApiError::invalid_field("target.id", "a run id (a UUID)"))?;
            let events = state
                .platform
                .store
                .read_stream(&flowforge_domain::run::stream_id(run_id), 1)
                .await?;
            if events
                .first()
                .is_none_or(|e| e.tenant_id() != caller.tenant())
            {
                return Err(ApiError::not_found(format!("no run `{run_id}`")));
            }
            CommentTarget::Run(run_id)
        }
        _ => return Err(ApiError::invalid_field("target.kind", "`task` or `run`")),
    };
    let text = body.body.clone().unwrap_or_default();
    let author = author(&state, &caller, body.agent.as_deref()).await?;
    let mentions = resolve_mentions(&state, &caller, &text).await?;
    let comment_id = Uuid::now_v7();
    let comment = decide(
        &state,
        &caller,
        comment_id,
        CommentCommand::Post {
            comment_id,
            target,
            author,
            body: text,
            mentions,
            at: Utc::now(),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(comment_json(&comment))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ListComments {
    /// A task key or id.
    pub task: Option<String>,
    pub run: Option<String>,
}

/// `GET /api/v1/comments?task=FF-7` or `?run=<id>`: a thread, oldest first.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListComments>,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = match (&query.task, &query.run) {
        (Some(task), None) => (
            "task",
            super::tasks::existing(&state, &caller, task, "task").await?,
        ),
        (None, Some(run)) => (
            "run",
            run.parse()
                .map_err(|_| ApiError::invalid_field("run", "a run id (a UUID)"))?,
        ),
        _ => {
            return Err(ApiError::invalid_field(
                "task",
                "give `task` or `run`, one of them",
            ));
        }
    };
    let rows = state
        .platform
        .reads(&caller)
        .comments_on(kind, &id.to_string())
        .await?;
    Ok(Json(
        json!({ "items": rows.iter().map(row_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct EditComment {
    pub body: Option<String>,
}

/// Loads the comment named in the path, decides what `command` makes of it, answers
/// the comment.
async fn change(
    state: &AppState,
    caller: &Caller,
    id: &str,
    command: impl FnOnce(&Comment) -> CommentCommand,
) -> Result<Json<Value>, ApiError> {
    let (comment_id, current) = load(state, caller, id).await?;
    let comment = decide(state, caller, comment_id, command(&current)).await?;
    Ok(Json(comment_json(&comment)))
}

/// Who changes a comment: the caller, or, for an agent's comment, the agent on whose
/// behalf someone who may manage agents acts.
fn acting_for(caller: &Caller, comment: &Comment) -> Member {
    match &comment.author {
        Member::Agent(_) if caller.may(Scope::AgentsManage) => comment.author.clone(),
        _ => me(caller),
    }
}

/// `PATCH /api/v1/comments/{id}` (its author, or an admin)
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<EditComment>,
) -> Result<Json<Value>, ApiError> {
    let text = body.body.unwrap_or_default();
    let mentions = resolve_mentions(&state, &caller, &text).await?;
    change(&state, &caller, &id, |current| CommentCommand::Edit {
        by: acting_for(&caller, current),
        moderator: moderator(&caller),
        body: text,
        mentions,
        at: Utc::now(),
    })
    .await
}

/// `DELETE /api/v1/comments/{id}` (its author, or an admin)
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    change(&state, &caller, &id, |current| CommentCommand::Delete {
        by: acting_for(&caller, current),
        moderator: moderator(&caller),
        at: Utc::now(),
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct React {
    pub emoji: Option<String>,
}

/// `POST /api/v1/comments/{id}/reactions` with `{"emoji"}`: idempotent per author.
pub async fn react(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<React>,
) -> Result<Json<Value>, ApiError> {
    change(&state, &caller, &id, |_| CommentCommand::React {
        emoji: body.emoji.unwrap_or_default(),
        by: me(&caller),
        at: Utc::now(),
    })
    .await
}

/// `DELETE /api/v1/comments/{id}/reactions/{emoji}`
pub async fn unreact(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, emoji)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    change(&state, &caller, &id, |_| CommentCommand::Unreact {
        emoji,
        by: me(&caller),
        at: Utc::now(),
    })
    .await
}
