//! `tasks`: the board. One row per task, from its `task.created` (on the tenant's
//! board stream) and its own stream, for the kanban view's filters and counts.

use flowforge_domain::task::{
    Assignee, BOARD_STREAM_TYPE, STREAM_TYPE, TaskBoardEvent, TaskEvent, TaskFields,
};
use flowforge_store::{LogFilter, StoredEvent};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::ProjectionError;
use crate::document::{Document, DocumentProjection, SqlValue};

pub struct TasksProjection;

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub task_id: String,
    pub tenant_id: String,
    pub number: i64,
    pub title: String,
    pub description: String,
    pub status: String,
    pub priority: String,
    pub priority_rank: i64,
    /// JSON array.
    pub labels: String,
    pub parent_id: Option<String>,
    /// `user` or `agent`.
    pub assignee_kind: Option<String>,
    pub assignee_id: Option<String>,
    pub due_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// JSON array.
    pub runs: String,
    pub last_position: i64,
}

impl Document for TaskRow {
    const COLUMNS: &'static [&'static str] = &[
        "task_id",
        "tenant_id",
        "number",
        "title",
        "description",
        "status",
        "priority",
        "priority_rank",
        "labels",
        "parent_id",
        "assignee_kind",
        "assignee_id",
        "due_at",
        "created_at",
        "updated_at",
        "runs",
        "last_position",
    ];

    fn key(&self) -> &str {
        &self.task_id
    }

    fn values(&self) -> Vec<SqlValue> {
        vec![
            self.task_id.as_str().into(),
            self.tenant_id.as_str().into(),
            self.number.into(),
            self.title.as_str().into(),
            self.description.as_str().into(),
            self.status.as_str().into(),
            self.priority.as_str().into(),
            self.priority_rank.into(),
            self.labels.as_str().into(),
            self.parent_id.clone().into(),
            self.assignee_kind.clone().into(),
            self.assignee_id.clone().into(),
            self.due_at.into(),
            self.created_at.into(),
            self.updated_at.into(),
            self.runs.as_str().into(),
            self.last_position.into(),
        ]
    }

    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            task_id: row.try_get("task_id")?,
            tenant_id: row.try_get("tenant_id")?,
            number: row.try_get("number")?,
            title: row.try_get("title")?,
            description: row.try_get("description")?,
            status: row.try_get("status")?,
            priority: row.try_get("priority")?,
            priority_rank: row.try_get("priority_rank")?,
            labels: row.try_get("labels")?,
            parent_id: row.try_get("parent_id")?,
            assignee_kind: row.try_get("assignee_kind")?,
            assignee_id: row.try_get("assignee_id")?,
            due_at: row.try_get("due_at")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            runs: row.try_get("runs")?,
            last_position: row.try_get("last_position")?,
        })
    }
}

impl TaskRow {
    fn set_fields(&mut self, fields: &TaskFields) {
        self.title = fields.title.clone();
        self.description = fields.description.clone();
        self.priority = fields.priority.as_str().to_owned();
        self.priority_rank = fields.priority as i64;
        self.labels = serde_json::to_string(&fields.labels).unwrap_or_else(|_| "[]".into());
        self.due_at = fields.due.map(|d| d.timestamp_millis());
    }

    fn set_assignee(&mut self, assignee: Option<&Assignee>) {
        (self.assignee_kind, self.assignee_id) = match assignee {
            Some(Assignee::User(id)) => (Some("user".into()), Some(id.to_string())),
            Some(Assignee::Agent(id)) => (Some("agent".into()), Some(id.to_string())),
            None => (None, None),
        };
    }
}

fn position(event: &StoredEvent) -> i64 {
    i64::try_from(event.global_position).unwrap_or(i64::MAX)
}

impl DocumentProjection for TasksProjection {
    type Doc = TaskRow;
    const NAME: &'static str = "tasks";
    const TABLE: &'static str = "tasks";
    const SCHEMA: &'static str = include_str!("schema.sql");
    const SCHEMA_VERSION: u32 = 1;

    fn filter(&self) -> LogFilter {
        LogFilter::all()
            .event_types(std::iter::once("task.created").chain(TaskEvent::TYPES.iter().copied()))
    }

    fn key(&self, event: &StoredEvent) -> Option<String> {
        match event.stream_type.as_str() {
            BOARD_STREAM_TYPE => event
                .payload_value()
                .get("task_id")
                .and_then(|id| id.as_str())
                .map(str::to_owned),
            STREAM_TYPE => Some(event.stream_id.trim_start_matches("task-").to_owned()),
            _ => None,
        }
    }

    fn evolve(
        &self,
        current: Option<TaskRow>,
        event: &StoredEvent,
    ) -> Result<Option<TaskRow>, ProjectionError> {
        let mut row = if event.stream_type == BOARD_STREAM_TYPE {
            let TaskBoardEvent::Created(created) = event
                .decode::<TaskBoardEvent>()
                .map_err(|e| ProjectionError::event(event, e))?;
            let mut row = TaskRow {
                task_id: created.task_id.to_string(),
                tenant_id: event.tenant_id().to_owned(),
                number: i64::try_from(created.number).unwrap_or(i64::MAX),
                title: String::new(),
                description: String::new(),
                status: created.status.as_str().to_owned(),
                priority: String::new(),
                priority_rank: 0,
                labels: "[]".into(),
                parent_id: created.parent.map(|p| p.to_string()),
                assignee_kind: None,
                assignee_id: None,
                due_at: None,
                created_at: created.at.timestamp_millis(),
                updated_at: created.at.timestamp_millis(),
                runs: "[]".into(),
                last_position: 0,
            };
            row.set_fields(&created.fields);
            row.set_assignee(created.assignee.as_ref());
            row
        } else {
            let Some(mut row) = current else {
                return Err(ProjectionError::event(
                    event,
                    "task event before task.created",
                ));
            };
            let change: TaskEvent = event
                .decode()
                .map_err(|e| ProjectionError::event(event, e))?;
            let at = match &change {
                TaskEvent::Edited { fields, at } => {
                    row.set_fields(fields);
                    at
                }
                TaskEvent::StatusChanged { to, at, .. } => {
                    row.status = to.as_str().to_owned();
                    at
                }
                TaskEvent::Assigned { assignee, at, .. } => {
                    row.set_assignee(assignee.as_ref());
                    at
                }
                TaskEvent::RunLinked { run_id, at } => {
                    let mut runs: Vec<String> = serde_json::from_str(&row.runs).unwrap_or_default();
                    let id = run_id.to_string();
                    if !runs.contains(&id) {
                        runs.push(id);
                    }
                    row.runs = serde_json::to_string(&runs).unwrap_or_else(|_| "[]".into());
                    at
                }
            };
            row.updated_at = at.timestamp_millis();
            row
        };
        row.last_position = position(event);
        Ok(Some(row))
    }
}
