//! Tasks: the agent team's board. `POST /api/v1/tasks` numbers a task on the tenant's
//! board stream; every later change is a command on the task's own stream; lists come
//! from the `tasks` read model; one task, its history and `as_of` come from the log.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use flowforge_commands::Loaded;
use flowforge_domain::Decider;
use flowforge_domain::task::{
    self, Assignee, BOARD_STREAM_TYPE, BoardState, OpenTask, STREAM_TYPE, Task, TaskBoard,
    TaskBoardEvent, TaskCommand, TaskCreated, TaskError, TaskEvent, TaskFields, TaskHistoryEvent,
    TaskPriority, TaskState, TaskStatus,
};
use flowforge_projections::tasks::TaskRow;
use flowforge_store::{ExpectedVersion, NewEvent, StoreError, StoredEvent};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::reads::TaskFilter;

/// How often a create or change is decided again after losing a race for its stream.
const MAX_ATTEMPTS: usize = 100;

fn task_error(error: TaskError) -> ApiError {
    match error {
        TaskError::Invalid { field, message } => ApiError::invalid_field(field, message),
        TaskError::NotFound => ApiError::not_found("no such task"),
        TaskError::Transition { .. } => {
            let mut e = ApiError::conflict(error.to_string());
            e.body.field = Some("status".into());
            e
        }
        TaskError::OpenSubtasks { .. } => {
            let mut e = ApiError::conflict(error.to_string());
            e.body.field = Some("status".into());
            e
        }
    }
}

fn parse_status(text: &str, field: &str) -> Result<TaskStatus, ApiError> {
    TaskStatus::parse(text).ok_or_else(|| {
        ApiError::invalid_field(
            field,
            format!(
                "`{text}` is not a status (one of {})",
                TaskStatus::ALL.map(TaskStatus::as_str).join(", ")
            ),
        )
    })
}

fn parse_priority(text: &str) -> Result<TaskPriority, ApiError> {
    TaskPriority::parse(text).ok_or_else(|| {
        ApiError::invalid_field(
            "priority",
            format!(
                "`{text}` is not a priority (one of {})",
                TaskPriority::ALL.map(TaskPriority::as_str).join(", ")
            ),
        )
    })
}

/// An agent assignee must be an agent of the team.
async fn check_assignee(
    state: &AppState,
    caller: &Caller,
    assignee: Option<&Assignee>,
) -> Result<(), ApiError> {
    if let Some(Assignee::Agent(id)) = assignee
        && !super::agents::is_active(state, caller, *id).await?
    {
        return Err(ApiError::invalid_field(
            "assignee",
            format!("no agent `{id}` in the team"),
        ));
    }
    Ok(())
}

fn parse_assignee(value: &Value) -> Result<Option<Assignee>, ApiError> {
    if value.is_null() {
        return Ok(None);
    }
    let bad = || {
        ApiError::invalid_field(
            "assignee",
            "`{\"kind\": \"user\" | \"agent\", \"id\": \"<uuid>\"}`, or null",
        )
    };
    let id: Uuid = value
        .get("id")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    match value.get("kind").and_then(Value::as_str) {
        Some("user") => Ok(Some(Assignee::User(id))),
        Some("agent") => Ok(Some(Assignee::Agent(id))),
        _ => Err(bad()),
    }
}

fn parse_due(value: &Value) -> Result<Option<DateTime<Utc>>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .map(|d| Some(d.with_timezone(&Utc)))
            .map_err(|_| ApiError::invalid_field("due", "an RFC 3339 time, or null")),
        _ => Err(ApiError::invalid_field("due", "an RFC 3339 time, or null")),
    }
}

fn parse_labels(value: &Value) -> Result<BTreeSet<String>, ApiError> {
    let bad = || ApiError::invalid_field("labels", "a list of strings");
    value
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|l| l.as_str().map(|s| s.trim().to_owned()).ok_or_else(bad))
        .collect()
}

fn assignee_json(assignee: Option<&Assignee>) -> Value {
    match assignee {
        Some(Assignee::User(id)) => json!({"kind": "user", "id": id}),
        Some(Assignee::Agent(id)) => json!({"kind": "agent", "id": id}),
        None => Value::Null,
    }
}

fn task_json(task: &TaskState) -> Value {
    json!({
        "id": task.task_id,
        "key": task.key(),
        "number": task.number,
        "title": task.fields.title,
        "description": task.fields.description,
        "status": task.status,
        "priority": task.fields.priority,
        "labels": task.fields.labels,
        "due": task.fields.due.map(|d| d.to_rfc3339()),
        "parent_id": task.parent,
        "assignee": assignee_json(task.assignee.as_ref()),
        "runs": task.runs,
        "created_at": task.created_at.to_rfc3339(),
        "updated_at": task.updated_at.to_rfc3339(),
    })
}

fn ms_to_rfc3339(ms: i64) -> Option<String> {
    DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339())
}

fn row_json(row: &TaskRow) -> Value {
    let labels: Value = serde_json::from_str(&row.labels).unwrap_or_else(|_| json!([]));
    let runs: Value = serde_json::from_str(&row.runs).unwrap_or_else(|_| json!([]));
    json!({
        "id": row.task_id,
        "key": task::key(u64::try_from(row.number).unwrap_or(0)),
        "number": row.number,
        "title": row.title,
        "description": row.description,
        "status": row.status,
        "priority": row.priority,
        "labels": labels,
        "due": row.due_at.and_then(ms_to_rfc3339),
        "parent_id": row.parent_id,
        "assignee": match (&row.assignee_kind, &row.assignee_id) {
            (Some(kind), Some(id)) => json!({"kind": kind, "id": id}),
            _ => Value::Null,
        },
        "runs": runs,
        "created_at": ms_to_rfc3339(row.created_at),
        "updated_at": ms_to_rfc3339(row.updated_at),
    })
}

/// `FF-7` or a UUID → the task's id (the board read model resolves keys).
async fn resolve(
    state: &AppState,
    caller: &Caller,
    id: &str,
    field: &str,
) -> Result<Uuid, ApiError> {
    if let Ok(uuid) = id.parse::<Uuid>() {
        return Ok(uuid);
    }
    let Some(number) = task::parse_key(id) else {
        return Err(ApiError::invalid_field(
            field,
            format!("`{id}` is neither a task key (FF-7) nor a task id (a UUID)"),
        ));
    };
    if let Some(found) = state
        .platform
        .reads(caller)
        .task_id_by_number(number)
        .await?
        .and_then(|t| t.parse().ok())
    {
        return Ok(found);
    }
    // Not on the board yet (just created): task n is the board stream's n-th event,
    // as each of its events numbers one task.
    let board = task::board_stream_id(caller.tenant());
    let recent = state.platform.store.read_stream(&board, number).await?;
    recent
        .first()
        .filter(|e| e.stream_version == number)
        .and_then(|e| e.decode::<TaskBoardEvent>().ok())
        .map(|TaskBoardEvent::Created(created)| created.task_id)
        .ok_or_else(|| ApiError::not_found(format!("no task `{id}`")))
}

/// A task of the caller's tenant named by key or id (what a comment may be on).
pub async fn existing(
    state: &AppState,
    caller: &Caller,
    id: &str,
    field: &str,
) -> Result<Uuid, ApiError> {
    let task_id = resolve(state, caller, id, field).await?;
    load_events(state, caller, task_id).await?;
    Ok(task_id)
}

/// The task's creation (an event of the board stream whose id is the task's) and its
/// own stream, from the log.
async fn load_events(
    state: &AppState,
    caller: &Caller,
    task_id: Uuid,
) -> Result<(StoredEvent, Vec<StoredEvent>), ApiError> {
    let missing = || ApiError::not_found(format!("no task `{task_id}`"));
    let created = state
        .platform
        .store
        .event_by_id(task_id)
        .await?
        .filter(|e| e.stream_type == BOARD_STREAM_TYPE && e.tenant_id() == caller.tenant())
        .ok_or_else(missing)?;
    let changes = state
        .platform
        .store
        .read_stream(&task::stream_id(task_id), 1)
        .await?;
    Ok((created, changes))
}

fn history_event(stored: &StoredEvent) -> Result<TaskHistoryEvent, ApiError> {
    if stored.stream_type == BOARD_STREAM_TYPE {
        Ok(TaskHistoryEvent::Created(
            stored
                .decode::<TaskBoardEvent>()
                .map_err(ApiError::internal)?,
        ))
    } else {
        Ok(TaskHistoryEvent::Changed(
            stored.decode::<TaskEvent>().map_err(ApiError::internal)?,
        ))
    }
}

fn fold<'a>(events: impl Iterator<Item = &'a StoredEvent>) -> Result<Option<TaskState>, ApiError> {
    let mut task = Task::initial();
    for stored in events {
        task = Task::evolve(task, &history_event(stored)?);
    }
    Ok(task)
}

/// Decides `command` on the task's stream and appends the outcome, deciding again
/// (from the stream as it now is) whenever another writer got there first.
async fn change(
    state: &AppState,
    caller: &Caller,
    task_id: Uuid,
    command: impl Fn(&TaskState) -> TaskCommand,
) -> Result<TaskState, ApiError> {
    for _ in 0..MAX_ATTEMPTS {
        let (created, changes) = load_events(state, caller, task_id).await?;
        let current = fold(std::iter::once(&created).chain(changes.iter()))?
            .ok_or_else(|| ApiError::not_found(format!("no task `{task_id}`")))?;
        let decided =
            Task::decide(&Some(current.clone()), command(&current)).map_err(task_error)?;
        let events: Vec<TaskEvent> = decided
            .into_iter()
            .filter_map(|e| match e {
                TaskHistoryEvent::Changed(change) => Some(change),
                TaskHistoryEvent::Created(_) => None,
            })
            .collect();
        if events.is_empty() {
            return Ok(current);
        }
        let version = changes.last().map_or(0, |e| e.stream_version);
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        let new_events = events
            .iter()
            .map(|e| NewEvent::from_domain(e, caller.metadata()))
            .collect();
        match state
            .platform
            .store
            .append(&task::stream_id(task_id), STREAM_TYPE, expected, new_events)
            .await
        {
            Ok(_) => {
                let mut after = Some(current);
                for event in &events {
                    after = Task::evolve(after, &TaskHistoryEvent::Changed(event.clone()));
                }
                return after.ok_or_else(|| ApiError::internal("a task vanished"));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(other) => return Err(other.into()),
        }
    }
    Err(ApiError::conflict(
        "the task changed too often at once; try again",
    ))
}

#[derive(Debug, Deserialize)]
pub struct CreateTask {
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub priority: Option<String>,
    pub labels: Option<Value>,
    pub status: Option<String>,
    /// `FF-7` or a UUID.
    pub parent: Option<String>,
    pub assignee: Option<Value>,
    pub due: Option<Value>,
}

/// `POST /api/v1/tasks`
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateTask>,
) -> Result<Response, ApiError> {
    let fields = TaskFields {
        title: body.title.clone().unwrap_or_default(),
        description: body.description.clone().unwrap_or_default(),
        priority: body
            .priority
            .as_deref()
            .map(parse_priority)
            .transpose()?
            .unwrap_or_default(),
        labels: body
            .labels
            .as_ref()
            .map(parse_labels)
            .transpose()?
            .unwrap_or_default(),
        due: body.due.as_ref().map(parse_due).transpose()?.flatten(),
    };
    fields.validate().map_err(task_error)?;
    let status = body
        .status
        .as_deref()
        .map(|s| parse_status(s, "status"))
        .transpose()?
        .unwrap_or(TaskStatus::Todo);
    let parent = match &body.parent {
        None => None,
        Some(parent) => {
            let id = resolve(&state, &caller, parent, "parent").await?;
            // The parent must be a task of this tenant (its creation is in the log).
            load_events(&state, &caller, id)
                .await
                .map_err(|_| ApiError::invalid_field("parent", format!("no task `{parent}`")))?;
            Some(id)
        }
    };
    let open = OpenTask {
        task_id: Uuid::now_v7(),
        fields,
        status,
        parent,
        assignee: body
            .assignee
            .as_ref()
            .map(parse_assignee)
            .transpose()?
            .flatten(),
        at: Utc::now(),
    };
    check_assignee(&state, &caller, open.assignee.as_ref()).await?;
    let created = open_on_board(&state, &caller, open).await?;
    let task = Task::evolve(
        None,
        &TaskHistoryEvent::Created(TaskBoardEvent::Created(created)),
    )
    .ok_or_else(|| ApiError::internal("a created task did not fold"))?;
    Ok((StatusCode::CREATED, Json(task_json(&task))).into_response())
}

/// Appends `task.created` with the board's next number. Creators race for the board
/// stream; each loser catches up on what was appended since and decides again, so
/// numbers never repeat and never skip.
async fn open_on_board(
    state: &AppState,
    caller: &Caller,
    open: OpenTask,
) -> Result<TaskCreated, ApiError> {
    let tenant = caller.tenant().to_owned();
    let stream = task::board_stream_id(&tenant);
    let cached = state
        .task_boards
        .lock()
        .ok()
        .and_then(|b| b.get(&tenant).cloned());
    let mut board = match cached {
        Some(board) => board,
        None => Loaded {
            state: BoardState::default(),
            version: 0,
        },
    };
    for attempt in 0..MAX_ATTEMPTS {
        // Whatever was appended since (all of it, the first time).
        for stored in state
            .platform
            .store
            .read_stream(&stream, board.version + 1)
            .await?
        {
            let event: TaskBoardEvent = stored.decode().map_err(ApiError::internal)?;
            board.state = TaskBoard::evolve(board.state, &event);
            board.version = stored.stream_version;
        }
        let decided = TaskBoard::decide(&board.state, open.clone()).map_err(task_error)?;
        let expected = if board.version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(board.version)
        };
        let new_events = decided
            .iter()
            .map(|e| NewEvent::from_domain(e, caller.metadata()).with_id(open.task_id))
            .collect();
        match state
            .platform
            .store
            .append(&stream, BOARD_STREAM_TYPE, expected, new_events)
            .await
        {
            Ok(outcome) => {
                let Some(TaskBoardEvent::Created(created)) = decided.into_iter().next() else {
                    return Err(ApiError::internal("the board decided nothing"));
                };
                board.state =
                    TaskBoard::evolve(board.state, &TaskBoardEvent::Created(created.clone()));
                board.version = outcome.stream_version();
                if let Ok(mut boards) = state.task_boards.lock() {
                    boards.insert(tenant, board);
                }
                return Ok(created);
            }
            Err(StoreError::Conflict { .. }) => {
                // Spread the losers out a little so they do not collide again at once.
                let jitter = rand::random::<u64>() % (1 + 2 * attempt.min(10) as u64);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            Err(other) => return Err(other.into()),
        }
    }
    Err(ApiError::conflict(
        "too many tasks were created at once; try again",
    ))
}

#[derive(Debug, Deserialize)]
pub struct ListTasks {
    pub status: Option<String>,
    pub assignee: Option<String>,
    pub label: Option<String>,
    pub priority: Option<String>,
    pub parent: Option<String>,
    pub q: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// `GET /api/v1/tasks`: the board, in column order, with counts per status.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListTasks>,
) -> Result<Json<Value>, ApiError> {
    let statuses = query
        .status
        .as_deref()
        .map(|list| {
            list.split(',')
                .map(|s| parse_status(s.trim(), "status").map(|s| s.as_str().to_owned()))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    if let Some(priority) = &query.priority {
        parse_priority(priority)?;
    }
    let assignee = match query.assignee.as_deref() {
        None => None,
        Some("none") => Some("none".to_owned()),
        Some(id) => Some(
            id.parse::<Uuid>()
                .map_err(|_| {
                    ApiError::invalid_field("assignee", "a user's or agent's id, or `none`")
                })?
                .to_string(),
        ),
    };
    let parent = match &query.parent {
        None => None,
        Some(parent) => Some(
            resolve(&state, &caller, parent, "parent")
                .await?
                .to_string(),
        ),
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "from 1 to 500"));
    }
    let offset = query.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::invalid_field("offset", "0 or more"));
    }
    let filter = TaskFilter {
        statuses,
        assignee,
        label: query.label.clone(),
        priority: query.priority.clone(),
        parent,
        q: query.q.clone(),
    };
    let reads = state.platform.reads(&caller);
    let rows = reads.tasks(&filter, limit, offset).await?;
    let counts = reads.task_counts(&filter).await?;
    let mut by_status = serde_json::Map::new();
    for status in TaskStatus::ALL {
        let count = counts
            .iter()
            .find(|(s, _)| s == status.as_str())
            .map_or(0, |(_, n)| *n);
        by_status.insert(status.as_str().to_owned(), json!(count));
    }
    Ok(Json(json!({
        "items": rows.iter().map(row_json).collect::<Vec<_>>(),
        "counts": by_status,
    })))
}

#[derive(Debug, Deserialize)]
pub struct ShowTask {
    /// A global log position, or an RFC 3339 time: the task as it was then.
    pub as_of: Option<String>,
}

/// `GET /api/v1/tasks/{id}` (`FF-7` or a UUID), optionally `?as_of=`.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<ShowTask>,
) -> Result<Json<Value>, ApiError> {
    let task_id = resolve(&state, &caller, &id, "id").await?;
    let (created, changes) = load_events(&state, &caller, task_id).await?;
    let all = std::iter::once(&created).chain(changes.iter());
    let task = match query.as_of.as_deref() {
        None => fold(all)?,
        Some(as_of) => {
            let until: Box<dyn Fn(&StoredEvent) -> bool> = match as_of.parse::<u64>() {
                Ok(position) => Box::new(move |e| e.global_position <= position),
                Err(_) => {
                    let at = DateTime::parse_from_rfc3339(as_of)
                        .map_err(|_| {
                            ApiError::invalid_field(
                                "as_of",
                                "a global log position or an RFC 3339 time",
                            )
                        })?
                        .with_timezone(&Utc);
                    Box::new(move |e| e.recorded_at <= at)
                }
            };
            Some(fold(all.filter(|e| until(e)))?.ok_or_else(|| {
                ApiError::not_found(format!("task `{id}` did not exist at {as_of}"))
            })?)
        }
    };
    let task = task.ok_or_else(|| ApiError::not_found(format!("no task `{id}`")))?;
    Ok(Json(task_json(&task)))
}

/// `GET /api/v1/tasks/{id}/history`: the task's events from the log, with who did it.
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let task_id = resolve(&state, &caller, &id, "id").await?;
    let (created, changes) = load_events(&state, &caller, task_id).await?;
    let items: Vec<Value> = std::iter::once(&created)
        .chain(changes.iter())
        .map(|e| {
            json!({
                "event_type": e.event_type,
                "global_position": e.global_position,
                "recorded_at": e.recorded_at.to_rfc3339(),
                "actor": e.metadata.actor,
                "payload": e.payload_value(),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `PATCH /api/v1/tasks/{id}`: any of title, description, priority, labels, due,
/// assignee, status. Each kind of change is its own event.
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let Some(fields_in) = body.as_object() else {
        return Err(ApiError::invalid_field("body", "a JSON object"));
    };
    const KNOWN: [&str; 7] = [
        "title",
        "description",
        "priority",
        "labels",
        "due",
        "assignee",
        "status",
    ];
    if let Some(unknown) = fields_in.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::invalid_field(
            unknown.clone(),
            format!("a task has no field `{unknown}` that can be changed"),
        ));
    }
    let task_id = resolve(&state, &caller, &id, "id").await?;
    // Parse everything before changing anything.
    let title = match body.get("title") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(ApiError::invalid_field("title", "a string")),
    };
    let description = match body.get("description") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(ApiError::invalid_field("description", "a string")),
    };
    let priority = match body.get("priority") {
        None => None,
        Some(Value::String(p)) => Some(parse_priority(p)?),
        Some(_) => return Err(ApiError::invalid_field("priority", "a string")),
    };
    let labels = body.get("labels").map(parse_labels).transpose()?;
    let due = body.get("due").map(parse_due).transpose()?;
    let assignee = body.get("assignee").map(parse_assignee).transpose()?;
    if let Some(assignee) = &assignee {
        check_assignee(&state, &caller, assignee.as_ref()).await?;
    }
    let status = match body.get("status") {
        None => None,
        Some(Value::String(s)) => Some(parse_status(s, "status")?),
        Some(_) => return Err(ApiError::invalid_field("status", "a string")),
    };

    let mut task = None;
    if title.is_some()
        || description.is_some()
        || priority.is_some()
        || labels.is_some()
        || due.is_some()
    {
        let edited = |current: &TaskFields| TaskFields {
            title: title.clone().unwrap_or_else(|| current.title.clone()),
            description: description
                .clone()
                .unwrap_or_else(|| current.description.clone()),
            priority: priority.unwrap_or(current.priority),
            labels: labels.clone().unwrap_or_else(|| current.labels.clone()),
            due: due.unwrap_or(current.due),
        };
        // Merged with the fields as they are when the edit is decided: a concurrent
        // edit of another field is kept.
        task = Some(
            change(&state, &caller, task_id, |current| TaskCommand::Edit {
                fields: edited(&current.fields),
                at: Utc::now(),
            })
            .await?,
        );
    }
    if let Some(assignee) = assignee {
        task = Some(
            change(&state, &caller, task_id, |_| TaskCommand::Assign {
                assignee: assignee.clone(),
                at: Utc::now(),
            })
            .await?,
        );
    }
    if let Some(to) = status {
        let open_subtasks = if to == TaskStatus::Done {
            state
                .platform
                .reads(&caller)
                .open_subtasks(&task_id.to_string())
                .await?
        } else {
            0
        };
        task = Some(
            change(&state, &caller, task_id, |_| TaskCommand::ChangeStatus {
                to,
                open_subtasks,
                at: Utc::now(),
            })
            .await?,
        );
    }
    let task = match task {
        Some(task) => task,
        None => {
            let (created, changes) = load_events(&state, &caller, task_id).await?;
            fold(std::iter::once(&created).chain(changes.iter()))?
                .ok_or_else(|| ApiError::not_found(format!("no task `{id}`")))?
        }
    };
    Ok(Json(task_json(&task)))
}

/// `GET /api/v1/tasks/{id}/timeline`: the task's events and its comments, in log order.
pub async fn timeline(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let task_id = resolve(&state, &caller, &id, "id").await?;
    let (entries, _) = timeline_entries(&state, &caller, task_id).await?;
    Ok(Json(json!({
        "items": entries.into_iter().map(|(_, entry)| entry).collect::<Vec<_>>(),
    })))
}

fn event_entry(e: &StoredEvent) -> Value {
    json!({
        "type": "event",
        "event_type": e.event_type,
        "global_position": e.global_position,
        "at": e.recorded_at.to_rfc3339(),
        "actor": e.metadata.actor,
        "payload": e.payload_value(),
    })
}

/// A change to a comment, as the live timeline delivers it (a deleted comment's body
/// is in no event after its deletion, and `comment.deleted` carries none).
fn comment_change_entry(e: &StoredEvent) -> Value {
    json!({
        "type": "comment_change",
        "event_type": e.event_type,
        "comment_id": e.stream_id.trim_start_matches("comment-"),
        "global_position": e.global_position,
        "at": e.recorded_at.to_rfc3339(),
        "actor": e.metadata.actor,
        "payload": e.payload_value(),
    })
}

/// The task's timeline, in log order, and the ids of the comments on it.
async fn timeline_entries(
    state: &AppState,
    caller: &Caller,
    task_id: Uuid,
) -> Result<(Vec<(i64, Value)>, BTreeSet<String>), ApiError> {
    let (created, changes) = load_events(state, caller, task_id).await?;
    let comments = state
        .platform
        .reads(caller)
        .comments_on("task", &task_id.to_string())
        .await?;
    let mut entries: Vec<(i64, Value)> = std::iter::once(&created)
        .chain(changes.iter())
        .map(|e| {
            (
                i64::try_from(e.global_position).unwrap_or(i64::MAX),
                event_entry(e),
            )
        })
        .collect();
    entries.extend(comments.iter().map(|c| {
        (
            c.posted_position,
            json!({
                "type": "comment",
                "global_position": c.posted_position,
                "comment": super::comments::row_json(c),
            }),
        )
    }));
    entries.sort_by_key(|(position, _)| *position);
    let ids = comments.iter().map(|c| c.comment_id.clone()).collect();
    Ok((entries, ids))
}

/// `GET /api/v1/tasks/{id}/stream`: the timeline, then each new entry as it is
/// committed (server-sent events; `id` is the entry's global position). Comments are
/// followed from their posting on: edits, deletions and reactions arrive as
/// `comment_change` entries.
///
/// The task's own events come from the log, its comments from the read model, which
/// may lag the log. So the stream notes how far the comments read model had got
/// *before* reading it, and follows the log from there: a comment committed but not
/// yet projected still arrives (as a `comment_change` of its posting), and nothing
/// already sent is sent again. A change the read model had already folded into a
/// replayed comment may arrive once more as a `comment_change`; applying it twice
/// leaves the same comment.
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use flowforge_projections::document::DocumentProjection;
    use flowforge_projections::{checkpoint, comments::CommentsProjection};
    let task_id = resolve(&state, &caller, &id, "id").await?;
    let projected = checkpoint::active(state.platform.operations_db(), CommentsProjection::NAME)
        .await?
        .map_or(0, |c| c.position);
    let (existing, mut comment_ids) = timeline_entries(&state, &caller, task_id).await?;
    let mut replayed: std::collections::HashSet<u64> = existing
        .iter()
        .map(|(position, _)| u64::try_from(*position).unwrap_or(0))
        .collect();
    let task_stream = format!("task-{task_id}");
    let task_text = task_id.to_string();
    // Only the types the timeline shows: when comments are rare the checkpoint can be
    // far behind the head, and the catch-up read then skips everything else.
    let types = ["task.created"]
        .iter()
        .chain(flowforge_domain::task::TaskEvent::TYPES)
        .chain(flowforge_domain::comment::CommentEvent::TYPES)
        .copied();
    let mut log = flowforge_store::subscribe(
        state.platform.store.clone(),
        projected,
        flowforge_store::LogFilter::all()
            .tenant(caller.tenant.as_str())
            .event_types(types),
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, std::convert::Infallible>>(256);
    tokio::spawn(async move {
        let sse = |kind: &str, position: u64, entry: &Value| {
            SseEvent::default()
                .event(kind)
                .id(position.to_string())
                .data(entry.to_string())
        };
        for (position, entry) in &existing {
            let kind = entry["type"].as_str().unwrap_or("event");
            let position = u64::try_from(*position).unwrap_or(0);
            if tx.send(Ok(sse(kind, position, entry))).await.is_err() {
                return;
            }
        }
        let last_replayed = replayed.iter().copied().max().unwrap_or(0);
        loop {
            let e = match log.next().await {
                Ok(e) => e,
                // The client reconnects and reads the timeline again.
                Err(_) => return,
            };
            if e.global_position <= last_replayed && replayed.remove(&e.global_position) {
                continue;
            }
            let entry = if e.stream_id == task_stream
                || (e.event_type == "task.created"
                    && e.payload_value()["task_id"].as_str() == Some(&task_text))
            {
                Some(("event", event_entry(&e)))
            } else if e.stream_type == flowforge_domain::comment::STREAM_TYPE {
                let comment_id = e.stream_id.trim_start_matches("comment-").to_owned();
                let payload = e.payload_value();
                if e.event_type == "comment.posted"
                    && payload["target"]["kind"] == "task"
                    && payload["target"]["id"].as_str() == Some(&task_text)
                {
                    comment_ids.insert(comment_id);
                    Some(("comment_change", comment_change_entry(&e)))
                } else if comment_ids.contains(&comment_id) {
                    Some(("comment_change", comment_change_entry(&e)))
                } else {
                    None
                }
            } else {
                None
            };
            if let Some((kind, entry)) = entry
                && tx
                    .send(Ok(sse(kind, e.global_position, &entry)))
                    .await
                    .is_err()
            {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
