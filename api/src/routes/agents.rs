//! Agents: `/api/v1/agents`, the tenant's AI team members, decided and read from the
//! tenant's agent directory stream.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use flowforge_commands::CommandError;
use flowforge_domain::agent::{
    self, Agent, AgentCommand, AgentDirectory, AgentError, AgentProfile, AgentStatus, Directory,
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use crate::caller::Caller;
use crate::error::ApiError;

fn agent_error(error: CommandError<AgentError>) -> ApiError {
    match error {
        CommandError::Domain(AgentError::Invalid { field, message }) => {
            ApiError::invalid_field(field, message)
        }
        CommandError::Domain(AgentError::NotFound) => ApiError::not_found("no such agent"),
        CommandError::Domain(e @ AgentError::NameTaken(_)) => {
            let mut error = ApiError::conflict(e.to_string());
            error.body.field = Some("name".into());
            error
        }
        CommandError::Store(e) => e.into(),
        CommandError::Contention { .. } => {
            ApiError::conflict("the team changed too often at once; try again")
        }
        other => ApiError::internal(other),
    }
}

fn agent_json(agent: &Agent) -> Value {
    json!({
        "id": agent.agent_id,
        "name": agent.profile.name,
        "avatar": agent.profile.avatar,
        "model": agent.profile.model,
        "system_prompt": agent.profile.system_prompt,
        "status": agent.status.as_str(),
        "skills": agent.skills,
        "functions": agent.profile.functions,
        "created_at": agent.created_at.to_rfc3339(),
        "updated_at": agent.updated_at.to_rfc3339(),
        "deleted_at": agent.deleted_at.map(|d| d.to_rfc3339()),
    })
}

async fn directory(state: &AppState, caller: &Caller) -> Result<Directory, ApiError> {
    Ok(state
        .commands
        .load::<AgentDirectory>(&agent::stream_id(caller.tenant()))
        .await
        .map_err(agent_error)?
        .state)
}

/// An agent by id or by name (deleted ones by id only: their name may be taken again).
fn find<'a>(directory: &'a Directory, id: &str) -> Result<&'a Agent, ApiError> {
    let found = match id.parse::<Uuid>() {
        Ok(uuid) => directory.agents.get(&uuid),
        Err(_) => directory.named(id),
    };
    found.ok_or_else(|| ApiError::not_found(format!("no agent `{id}`")))
}

async fn decide(
    state: &AppState,
    caller: &Caller,
    command: AgentCommand,
) -> Result<Directory, ApiError> {
    Ok(state
        .commands
        .handle::<AgentDirectory>(
            &agent::stream_id(caller.tenant()),
            &caller.metadata(),
            || command.clone(),
        )
        .await
        .map_err(agent_error)?
        .state)
}

fn string_field(body: &Value, field: &'static str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid_field(field, "a string")),
    }
}

fn string_set(body: &Value, field: &'static str) -> Result<Option<BTreeSet<String>>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(|s| s.trim().to_owned())
                    .ok_or_else(|| ApiError::invalid_field(field, "a list of strings"))
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(ApiError::invalid_field(field, "a list of strings")),
    }
}

fn status_field(body: &Value) -> Result<Option<AgentStatus>, ApiError> {
    string_field(body, "status")?
        .map(|s| {
            AgentStatus::parse(&s).ok_or_else(|| {
                ApiError::invalid_field(
                    "status",
                    format!(
                        "`{s}` is not a status (one of {})",
                        AgentStatus::ALL.map(AgentStatus::as_str).join(", ")
                    ),
                )
            })
        })
        .transpose()
}

const FIELDS: [&str; 7] = [
    "name",
    "avatar",
    "model",
    "system_prompt",
    "status",
    "skills",
    "functions",
];

fn object(body: &Value) -> Result<(), ApiError> {
    let Some(map) = body.as_object() else {
        return Err(ApiError::invalid_field("body", "a JSON object"));
    };
    match map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::invalid_field(
            unknown.clone(),
            format!("an agent has no field `{unknown}`"),
        )),
        None => Ok(()),
    }
}

/// `POST /api/v1/agents`
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    object(&body)?;
    let agent_id = Uuid::now_v7();
    let profile = AgentProfile {
        name: string_field(&body, "name")?
            .ok_or_else(|| ApiError::invalid_field("name", "an agent needs a name"))?,
        avatar: string_field(&body, "avatar")?,
        model: string_field(&body, "model")?,
        system_prompt: string_field(&body, "system_prompt")?.unwrap_or_default(),
        functions: string_set(&body, "functions")?.unwrap_or_default(),
    };
    let directory = decide(
        &state,
        &caller,
        AgentCommand::Create {
            agent_id,
            profile,
            status: status_field(&body)?.unwrap_or_default(),
            skills: string_set(&body, "skills")?.unwrap_or_default(),
            at: Utc::now(),
        },
    )
    .await?;
    let agent = directory
        .agents
        .get(&agent_id)
        .ok_or_else(|| ApiError::internal("a created agent is missing"))?;
    Ok((StatusCode::CREATED, Json(agent_json(agent))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ListAgents {
    #[serde(default)]
    pub include_deleted: bool,
    pub status: Option<String>,
}

/// `GET /api/v1/agents`
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListAgents>,
) -> Result<Json<Value>, ApiError> {
    let status = query
        .status
        .as_deref()
        .map(|s| status_field(&json!({ "status": s })))
        .transpose()?
        .flatten();
    let directory = directory(&state, &caller).await?;
    let mut agents: Vec<&Agent> = directory
        .agents
        .values()
        .filter(|a| query.include_deleted || a.deleted_at.is_none())
        .filter(|a| status.is_none_or(|s| a.status == s))
        .collect();
    agents.sort_by(|a, b| {
        a.profile
            .name
            .to_lowercase()
            .cmp(&b.profile.name.to_lowercase())
    });
    Ok(Json(
        json!({ "items": agents.into_iter().map(agent_json).collect::<Vec<_>>() }),
    ))
}

/// `GET /api/v1/agents/{id}` (id or name)
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let directory = directory(&state, &caller).await?;
    Ok(Json(agent_json(find(&directory, &id)?)))
}

/// `PATCH /api/v1/agents/{id}`: profile fields, status, skills.
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    object(&body)?;
    let current = directory(&state, &caller).await?;
    let agent = find(&current, &id)?.clone();
    let agent_id = agent.agent_id;
    let profile = AgentProfile {
        name: string_field(&body, "name")?.unwrap_or(agent.profile.name.clone()),
        avatar: match body.get("avatar") {
            Some(Value::Null) => None,
            Some(_) => string_field(&body, "avatar")?,
            None => agent.profile.avatar.clone(),
        },
        model: match body.get("model") {
            Some(Value::Null) => None,
            Some(_) => string_field(&body, "model")?,
            None => agent.profile.model.clone(),
        },
        system_prompt: string_field(&body, "system_prompt")?
            .unwrap_or(agent.profile.system_prompt.clone()),
        functions: string_set(&body, "functions")?.unwrap_or(agent.profile.functions.clone()),
    };
    let status = status_field(&body)?;
    let skills = string_set(&body, "skills")?;
    let now = Utc::now();
    let mut directory = decide(
        &state,
        &caller,
        AgentCommand::Edit {
            agent_id,
            profile,
            at: now,
        },
    )
    .await?;
    if let Some(to) = status {
        directory = decide(
            &state,
            &caller,
            AgentCommand::ChangeStatus {
                agent_id,
                to,
                at: now,
            },
        )
        .await?;
    }
    if let Some(skills) = skills {
        directory = decide(
            &state,
            &caller,
            AgentCommand::SetSkills {
                agent_id,
                skills,
                at: now,
            },
        )
        .await?;
    }
    let agent = directory
        .agents
        .get(&agent_id)
        .ok_or_else(|| ApiError::not_found("no such agent"))?;
    Ok(Json(agent_json(agent)))
}

/// Finds the agent named in the path, decides `command` for it, answers the agent.
async fn change(
    state: &AppState,
    caller: &Caller,
    id: &str,
    command: impl FnOnce(Uuid) -> AgentCommand,
) -> Result<Json<Value>, ApiError> {
    let current = directory(state, caller).await?;
    let agent_id = find(&current, id)?.agent_id;
    let directory = decide(state, caller, command(agent_id)).await?;
    let agent = directory
        .agents
        .get(&agent_id)
        .ok_or_else(|| ApiError::not_found("no such agent"))?;
    Ok(Json(agent_json(agent)))
}

/// `PUT /api/v1/agents/{id}/skills` with `{"skills": [...]}`
pub async fn set_skills(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let skills = string_set(&body, "skills")?
        .ok_or_else(|| ApiError::invalid_field("skills", "a list of skill names"))?;
    change(&state, &caller, &id, |agent_id| AgentCommand::SetSkills {
        agent_id,
        skills,
        at: Utc::now(),
    })
    .await
}

/// `DELETE /api/v1/agents/{id}`: the agent leaves the team; its history stays.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    change(&state, &caller, &id, |agent_id| AgentCommand::Delete {
        agent_id,
        at: Utc::now(),
    })
    .await
}

/// Whether `agent_id` is an agent of the caller's tenant who has not left (for task
/// assignment).
pub async fn is_active(
    state: &AppState,
    caller: &Caller,
    agent_id: Uuid,
) -> Result<bool, ApiError> {
    Ok(directory(state, caller).await?.active(agent_id).is_some())
}
