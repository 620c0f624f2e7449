//! Skills: `/api/v1/skills` (templates and Agent Skills knowledge), the marketplace
//! (`/api/v1/skills/marketplace/*`), and which skills a function has enabled
//! (`/api/v1/functions/{id}/skills`). Every change is an event on the skill's stream;
//! what a source answers is fetched whole and validated before anything is recorded.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::Utc;
use flowforge_commands::CommandError;
use flowforge_domain::skill::{
    self, FunctionSkills, SetFunctionSkills, Skill, SkillBody, SkillCommand, SkillDecider,
    SkillError, SkillFile, SkillSource, SkillTemplate, SkillVersion,
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::reads::SkillListing;
use crate::skill_sources::{Location, SourceError};

/// Where a refused skill came from decides the answer: a client's own upload is a
/// 400, a source's content a 422 (the request was fine; what it points at is not).
#[derive(Clone, Copy)]
enum Origin {
    Client,
    Source,
}

fn skill_error(error: SkillError, origin: Origin) -> ApiError {
    match error {
        SkillError::Invalid { field, reason } => {
            let mut e = match origin {
                Origin::Client => ApiError::invalid_field(field.clone(), reason),
                Origin::Source => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_skill",
                    format!("the skill is not valid: {field}: {reason}"),
                ),
            };
            e.body.field = Some(field);
            e
        }
        SkillError::NotFound => ApiError::not_found("skill"),
        e @ (SkillError::NameTaken(_)
        | SkillError::OtherSource { .. }
        | SkillError::NotATemplate(_)) => ApiError::conflict(e.to_string()),
    }
}

fn command_error(error: CommandError<SkillError>, origin: Origin) -> ApiError {
    match error {
        CommandError::Domain(e) => skill_error(e, origin),
        CommandError::Store(e) => e.into(),
        other => ApiError::internal(other),
    }
}

fn source_error(error: SourceError) -> ApiError {
    match error {
        e @ (SourceError::Timeout(_) | SourceError::Unreachable(..) | SourceError::Status(..)) => {
            ApiError::new(StatusCode::BAD_GATEWAY, "source_unavailable", e.to_string())
        }
        e @ SourceError::Malformed(..) => {
            ApiError::new(StatusCode::BAD_GATEWAY, "source_malformed", e.to_string())
        }
        e @ SourceError::NotFound(..) => ApiError::not_found(e.to_string()),
        SourceError::Invalid { field, reason } => ApiError::invalid_field(field, reason),
    }
}

/// A skill by id or by name.
fn skill_id_of(caller: &Caller, id: &str) -> Uuid {
    id.parse()
        .unwrap_or_else(|_| skill::skill_id(caller.tenant.as_str(), id))
}

/// The skill as the log has it, if it is the caller's tenant's.
async fn load(state: &AppState, caller: &Caller, id: &str) -> Result<Skill, ApiError> {
    let skill_id = skill_id_of(caller, id);
    super::fold_in_tenant::<SkillDecider>(state, caller, &skill::stream_id(skill_id))
        .await?
        .flatten()
        .filter(|s| !s.deleted)
        .ok_or_else(|| ApiError::not_found("skill"))
}

async fn decide(
    state: &AppState,
    caller: &Caller,
    skill_id: Uuid,
    command: SkillCommand,
    origin: Origin,
) -> Result<(Skill, bool), ApiError> {
    let handled = state
        .commands
        .handle::<SkillDecider>(&skill::stream_id(skill_id), &caller.metadata(), || {
            command.clone()
        })
        .await
        .map_err(|e| command_error(e, origin))?;
    let changed = !handled.events.is_empty();
    let skill = handled.state.ok_or_else(|| ApiError::not_found("skill"))?;
    Ok((skill, changed))
}

fn version_summary(v: &SkillVersion) -> Value {
    json!({
        "version": v.version,
        "source": v.source,
        "sha256": v.sha256,
        "imported_at": v.at.to_rfc3339(),
        "files": v.files.iter().map(|f| json!({"path": f.path, "bytes": f.contents.len()})).collect::<Vec<_>>(),
    })
}

fn skill_json(skill: &Skill) -> Value {
    let mut out = json!({
        "id": skill.skill_id,
        "name": skill.name,
        "kind": skill.kind(),
        "description": skill.description,
    });
    match &skill.body {
        SkillBody::Template(template) => {
            out["config"] = template.config.clone();
            out["tools"] = json!(template.tools);
            out["from_function"] = json!(template.from_function);
        }
        SkillBody::Knowledge(versions) => {
            if let Some(latest) = versions.last() {
                out["version"] = json!(latest.version);
                out["sha256"] = json!(latest.sha256);
                out["source"] = json!(latest.source);
                out["manifest"] = json!(latest.manifest);
            }
            out["versions"] = versions.iter().map(version_summary).collect();
        }
    }
    out
}

fn listing_json(row: &SkillListing) -> Value {
    json!({
        "id": row.skill_id,
        "name": row.name,
        "kind": row.kind,
        "description": row.description,
        "version": row.latest_version,
        "source": row.source_kind.as_ref().map(|kind| json!({"kind": kind, "location": row.source_location})),
        "sha256": row.sha256,
    })
}

#[derive(Debug, Deserialize)]
pub struct ListSkills {
    pub kind: Option<String>,
}

/// `GET /api/v1/skills?kind=template|knowledge`
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListSkills>,
) -> Result<Json<Value>, ApiError> {
    if let Some(kind) = &query.kind
        && !["template", "knowledge"].contains(&kind.as_str())
    {
        return Err(ApiError::invalid_field("kind", "`template` or `knowledge`"));
    }
    let rows = state
        .platform
        .reads(&caller)
        .skills(query.kind.as_deref())
        .await?;
    Ok(Json(
        json!({ "items": rows.iter().map(listing_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct NewTemplate {
    pub name: Option<String>,
    pub description: Option<String>,
    /// Save this function's configuration ("save as skill").
    pub from_function: Option<String>,
    pub config: Option<Value>,
    pub tools: Option<Vec<Value>>,
}

/// `POST /api/v1/skills`: a template skill, from a function or given.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<NewTemplate>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = body
        .name
        .ok_or_else(|| ApiError::invalid_field("name", "required"))?;
    let description = body
        .description
        .ok_or_else(|| ApiError::invalid_field("description", "required"))?;
    let config = match (&body.from_function, body.config) {
        (Some(function_id), None) => {
            let registry = &state.engine()?.registry;
            let f = registry
                .current(&caller.space(), function_id)
                .ok_or_else(|| {
                    ApiError::invalid_field("from_function", format!("no function `{function_id}`"))
                })?;
            serde_json::to_value(&f.spec).map_err(ApiError::internal)?
        }
        (None, Some(config)) => config,
        (None, None) => Value::Object(Default::default()),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_field(
                "config",
                "give `from_function` or `config`, not both",
            ));
        }
    };
    let skill_id = skill::skill_id(caller.tenant.as_str(), &name);
    let (skill, _) = decide(
        &state,
        &caller,
        skill_id,
        SkillCommand::CreateTemplate {
            skill_id,
            name,
            description,
            template: SkillTemplate {
                config,
                tools: body.tools.unwrap_or_default(),
                from_function: body.from_function,
            },
            at: Utc::now(),
        },
        Origin::Client,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(skill_json(&skill))))
}

#[derive(Debug, Deserialize)]
pub struct ShowSkill {
    /// A version's files with their contents.
    pub version: Option<u32>,
}

/// `GET /api/v1/skills/{id}` (an id or a name); `?version=n` adds that version's files.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<ShowSkill>,
) -> Result<Json<Value>, ApiError> {
    let skill = load(&state, &caller, &id).await?;
    let mut out = skill_json(&skill);
    if let Some(n) = query.version {
        let SkillBody::Knowledge(versions) = &skill.body else {
            return Err(ApiError::invalid_field(
                "version",
                "a template has no versions",
            ));
        };
        let version = versions
            .iter()
            .find(|v| v.version == n)
            .ok_or_else(|| ApiError::not_found(format!("version {n}")))?;
        out["files"] = json!(version.files);
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
pub struct EditTemplate {
    pub description: Option<String>,
    pub config: Option<Value>,
    pub tools: Option<Vec<Value>>,
}

/// `PATCH /api/v1/skills/{id}`: a template's description, configuration or tools.
pub async fn edit(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<EditTemplate>,
) -> Result<Json<Value>, ApiError> {
    let skill = load(&state, &caller, &id).await?;
    let (skill, _) = decide(
        &state,
        &caller,
        skill.skill_id,
        SkillCommand::EditTemplate {
            description: body.description,
            config: body.config,
            tools: body.tools,
            at: Utc::now(),
        },
        Origin::Client,
    )
    .await?;
    Ok(Json(skill_json(&skill)))
}

/// `DELETE /api/v1/skills/{id}`: the skill stops being offered; its versions stay in
/// the log.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let skill = load(&state, &caller, &id).await?;
    decide(
        &state,
        &caller,
        skill.skill_id,
        SkillCommand::Delete { at: Utc::now() },
        Origin::Client,
    )
    .await?;
    Ok(Json(json!({ "id": skill.skill_id, "deleted": true })))
}

/// Records a folder as a version of the skill its SKILL.md names.
async fn import_folder(
    state: &AppState,
    caller: &Caller,
    files: Vec<SkillFile>,
    source: SkillSource,
    origin: Origin,
) -> Result<(Skill, bool), ApiError> {
    let name = skill::declared_name(&files).map_err(|e| skill_error(e, origin))?;
    // Validate before anything is recorded, with the same rules the decider applies.
    skill::read_folder(&name, &files).map_err(|e| skill_error(e, origin))?;
    let skill_id = skill::skill_id(caller.tenant.as_str(), &name);
    decide(
        state,
        caller,
        skill_id,
        SkillCommand::Import {
            skill_id,
            source,
            files,
            at: Utc::now(),
        },
        origin,
    )
    .await
}

fn imported(skill: &Skill, changed: bool) -> (StatusCode, Json<Value>) {
    let mut out = skill_json(skill);
    out["changed"] = json!(changed);
    let status = if changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(out))
}

#[derive(Debug, Deserialize)]
pub struct Upload {
    pub files: Option<Vec<SkillFile>>,
}

/// `POST /api/v1/skills/upload` with `{"files": [{"path", "contents"}]}`, or a zip
/// archive of the folder (`Content-Type: application/zip`): a skill from a machine with
/// no marketplace.
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let zipped = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/zip"));
    let (files, folder) = if zipped {
        crate::skill_zip::files_in_zip(&body)
            .map_err(|e| ApiError::invalid_field(e.field, e.message))?
    } else {
        let parsed: Upload = serde_json::from_value(super::events::parse_json(&body)?)
            .map_err(|e| ApiError::invalid_field("files", e.to_string()))?;
        let files = parsed
            .files
            .ok_or_else(|| ApiError::invalid_field("files", "required"))?;
        (files, None)
    };
    let name = skill::declared_name(&files).map_err(|e| skill_error(e, Origin::Client))?;
    if let Some(folder) = folder
        && folder != name
    {
        return Err(ApiError::invalid_field(
            "SKILL.md: name",
            format!("`{name}` must equal the name of its folder, `{folder}`"),
        ));
    }
    let source = SkillSource {
        kind: "upload".into(),
        location: name,
        reference: None,
    };
    let (skill, changed) = import_folder(&state, &caller, files, source, Origin::Client).await?;
    Ok(imported(&skill, changed))
}

#[derive(Debug, Deserialize)]
pub struct Search {
    pub q: Option<String>,
    pub limit: Option<u32>,
    pub owner: Option<String>,
}

/// `GET /api/v1/skills/marketplace/search?q=&limit=&owner=`
pub async fn search(
    State(state): State<AppState>,
    Query(query): Query<Search>,
) -> Result<Json<Value>, ApiError> {
    let q = query.q.unwrap_or_default();
    if q.trim().is_empty() || q.len() > 200 {
        return Err(ApiError::invalid_field("q", "1 to 200 characters"));
    }
    let limit = query.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "from 1 to 100"));
    }
    let found = state
        .skill_sources
        .search(&q, limit, query.owner.as_deref())
        .await
        .map_err(source_error)?;
    Ok(Json(json!({ "items": found })))
}

#[derive(Debug, Deserialize)]
pub struct Preview {
    pub source: Option<String>,
}

fn location(source: Option<&str>) -> Result<Location, ApiError> {
    Location::parse(source.ok_or_else(|| ApiError::invalid_field("source", "required"))?)
        .map_err(source_error)
}

/// `GET /api/v1/skills/marketplace/preview?source=owner/repo/slug`: the skill as it
/// would be imported, validated; nothing is recorded.
pub async fn preview(
    State(state): State<AppState>,
    Query(query): Query<Preview>,
) -> Result<Json<Value>, ApiError> {
    let location = location(query.source.as_deref())?;
    let files = state
        .skill_sources
        .folder(&location)
        .await
        .map_err(source_error)?;
    let name = skill::declared_name(&files).map_err(|e| skill_error(e, Origin::Source))?;
    let manifest = skill::read_folder(&name, &files).map_err(|e| skill_error(e, Origin::Source))?;
    Ok(Json(json!({
        "source": location.describe().1,
        "manifest": manifest,
        "sha256": skill::content_hash(&files),
        "files": files,
    })))
}

#[derive(Debug, Deserialize)]
pub struct Import {
    pub source: Option<String>,
}

async fn import_from(
    state: &AppState,
    caller: &Caller,
    location: &Location,
) -> Result<(Skill, bool), ApiError> {
    let files = state
        .skill_sources
        .folder(location)
        .await
        .map_err(source_error)?;
    let (kind, where_) = location.describe();
    let source = SkillSource {
        kind: kind.into(),
        location: where_,
        reference: None,
    };
    import_folder(state, caller, files, source, Origin::Source).await
}

/// `POST /api/v1/skills/marketplace/import` with `{"source": "owner/repo/slug"}` or
/// `{"source": "https://site#skill-name"}` (the site's discovery index).
pub async fn import(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<Import>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let location = location(body.source.as_deref())?;
    let (skill, changed) = import_from(&state, &caller, &location).await?;
    Ok(imported(&skill, changed))
}

/// `POST /api/v1/skills/{id}/refresh`: fetch the skill again from where it came from;
/// a new version only when its content changed.
pub async fn refresh(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let skill = load(&state, &caller, &id).await?;
    let Some(latest) = skill.latest() else {
        return Err(ApiError::conflict(format!(
            "skill `{}` is a template: there is nothing to refresh",
            skill.name
        )));
    };
    let location = match latest.source.kind.as_str() {
        "marketplace" | "well_known" => {
            Location::parse(&latest.source.location).map_err(source_error)?
        }
        _ => {
            return Err(ApiError::conflict(format!(
                "skill `{}` was uploaded: upload it again to change it",
                skill.name
            )));
        }
    };
    let (skill, changed) = import_from(&state, &caller, &location).await?;
    Ok(imported(&skill, changed))
}

#[derive(Debug, Deserialize)]
pub struct EnabledSkills {
    pub skills: Option<Vec<String>>,
}

/// `PUT /api/v1/functions/{id}/skills` with `{"skills": ["pdf-tools"]}`: which skills
/// the function's model steps are given. Each must exist.
pub async fn set_function_skills(
    State(state): State<AppState>,
    caller: Caller,
    Path(function_id): Path<String>,
    Json(body): Json<EnabledSkills>,
) -> Result<Json<Value>, ApiError> {
    let skills: BTreeSet<String> = body
        .skills
        .ok_or_else(|| ApiError::invalid_field("skills", "required: a list of skill names"))?
        .into_iter()
        .collect();
    require_function(&state, &caller, &function_id)?;
    for name in &skills {
        skill::validate_name("skills", name).map_err(|e| skill_error(e, Origin::Client))?;
        if load(&state, &caller, name).await.is_err() {
            return Err(ApiError::invalid_field(
                "skills",
                format!("no skill named `{name}`"),
            ));
        }
    }
    state
        .commands
        .handle::<FunctionSkills>(
            &skill::function_skills_stream_id(caller.tenant.as_str(), &function_id),
            &caller.metadata(),
            || SetFunctionSkills {
                function_id: function_id.clone(),
                skills: skills.clone(),
                at: Utc::now(),
            },
        )
        .await
        .map_err(|e| command_error(e, Origin::Client))?;
    function_skills_answer(&state, &caller, &function_id, skills).await
}

fn require_function(state: &AppState, caller: &Caller, function_id: &str) -> Result<(), ApiError> {
    match state
        .engine()?
        .registry
        .current(&caller.space(), function_id)
    {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("no function `{function_id}`"))),
    }
}

/// `GET /api/v1/functions/{id}/skills`: the enabled skills and the knowledge a model
/// step would be given now, with the versions it comes from.
pub async fn function_skills(
    State(state): State<AppState>,
    caller: Caller,
    Path(function_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_function(&state, &caller, &function_id)?;
    let loaded = state
        .commands
        .load::<FunctionSkills>(&skill::function_skills_stream_id(
            caller.tenant.as_str(),
            &function_id,
        ))
        .await
        .map_err(|e| command_error(e, Origin::Client))?;
    function_skills_answer(&state, &caller, &function_id, loaded.state).await
}

async fn function_skills_answer(
    state: &AppState,
    caller: &Caller,
    function_id: &str,
    skills: BTreeSet<String>,
) -> Result<Json<Value>, ApiError> {
    let knowledge =
        flowforge_engine::skills::knowledge(state.engine()?, caller.tenant.as_str(), &skills)
            .await
            .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "function_id": function_id,
        "skills": skills,
        "knowledge": knowledge,
    })))
}
