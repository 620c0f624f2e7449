//! Tasks of the agent team's board.
//!
//! Two aggregates. The `TaskBoard` of a tenant (stream `taskboard-<tenant>`) decides
//! each new task's number: `task.created` is appended to the board stream with the
//! next number, under optimistic concurrency, so numbers (`FF-1`, `FF-2`, …) have no
//! gap and no duplicate however many create at once. Everything after creation is the
//! `Task`'s own stream (`task-<uuid>`): a task's state is its `task.created` (found by
//! its event id, the task's id) followed by its stream.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::decider::{Decider, DomainEvent};

pub const BOARD_STREAM_TYPE: &str = "taskboard";
pub const STREAM_TYPE: &str = "task";
/// The prefix of human-readable task keys.
pub const KEY_PREFIX: &str = "FF";

pub const MAX_TITLE: usize = 200;
pub const MAX_DESCRIPTION: usize = 64 * 1024;
pub const MAX_LABELS: usize = 20;
pub const MAX_LABEL: usize = 50;

pub fn board_stream_id(tenant: &str) -> String {
    format!("taskboard-{tenant}")
}

pub fn stream_id(id: Uuid) -> String {
    format!("task-{id}")
}

pub fn key(number: u64) -> String {
    format!("{KEY_PREFIX}-{number}")
}

/// `FF-7` → 7.
pub fn parse_key(text: &str) -> Option<u64> {
    text.strip_prefix(KEY_PREFIX)?
        .strip_prefix('-')?
        .parse()
        .ok()
        .filter(|n| *n > 0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Todo,
    InProgress,
    InReview,
    Done,
    Blocked,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Todo,
        TaskStatus::InProgress,
        TaskStatus::InReview,
        TaskStatus::Done,
        TaskStatus::Blocked,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Todo => "todo",
            TaskStatus::InProgress => "in_progress",
            TaskStatus::InReview => "in_review",
            TaskStatus::Done => "done",
            TaskStatus::Blocked => "blocked",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the task still needs work (what keeps a parent from being done).
    pub fn is_open(self) -> bool {
        !matches!(self, TaskStatus::Done | TaskStatus::Cancelled)
    }

    /// The moves the board allows, written down once. Done and cancelled tasks can be
    /// reopened; nothing jumps from `todo` straight to review or done without being
    /// worked on.
    pub fn may_become(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, to),
            (Todo, InProgress | Blocked | Cancelled)
                | (InProgress, Todo | InReview | Done | Blocked | Cancelled)
                | (InReview, InProgress | Done | Blocked | Cancelled)
                | (Blocked, Todo | InProgress | Cancelled)
                | (Done, Todo | InProgress)
                | (Cancelled, Todo)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TaskPriority {
    #[default]
    None,
    Low,
    Medium,
    High,
    Urgent,
}

impl TaskPriority {
    pub const ALL: [TaskPriority; 5] = [
        TaskPriority::None,
        TaskPriority::Low,
        TaskPriority::Medium,
        TaskPriority::High,
        TaskPriority::Urgent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskPriority::None => "none",
            TaskPriority::Low => "low",
            TaskPriority::Medium => "medium",
            TaskPriority::High => "high",
            TaskPriority::Urgent => "urgent",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

/// Who a task is assigned to: a user or an agent of the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Assignee {
    User(Uuid),
    Agent(Uuid),
}

/// What a task says, as edited: everything but its status and assignee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFields {
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub priority: TaskPriority,
    #[serde(default)]
    pub labels: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCreated {
    pub task_id: Uuid,
    pub number: u64,
    #[serde(flatten)]
    pub fields: TaskFields,
    pub status: TaskStatus,
    /// Fixed at creation: a task never moves under another, so parents form no cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<Assignee>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum TaskBoardEvent {
    #[serde(rename = "task.created")]
    Created(TaskCreated),
}

impl DomainEvent for TaskBoardEvent {
    const STREAM_TYPE: &'static str = BOARD_STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            TaskBoardEvent::Created(_) => "task.created",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum TaskEvent {
    #[serde(rename = "task.edited")]
    Edited {
        fields: TaskFields,
        at: DateTime<Utc>,
    },
    #[serde(rename = "task.status_changed")]
    StatusChanged {
        from: TaskStatus,
        to: TaskStatus,
        at: DateTime<Utc>,
    },
    #[serde(rename = "task.assigned")]
    Assigned {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        assignee: Option<Assignee>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<Assignee>,
        at: DateTime<Utc>,
    },
    #[serde(rename = "task.run_linked")]
    RunLinked { run_id: Uuid, at: DateTime<Utc> },
}

impl TaskEvent {
    pub const TYPES: &'static [&'static str] = &[
        "task.edited",
        "task.status_changed",
        "task.assigned",
        "task.run_linked",
    ];
}

impl DomainEvent for TaskEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            TaskEvent::Edited { .. } => "task.edited",
            TaskEvent::StatusChanged { .. } => "task.status_changed",
            TaskEvent::Assigned { .. } => "task.assigned",
            TaskEvent::RunLinked { .. } => "task.run_linked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("no such task")]
    NotFound,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("a task cannot go from {from} to {to}")]
    Transition {
        from: &'static str,
        to: &'static str,
    },
    #[error("the task has {open} open sub-task(s); finish or cancel them first")]
    OpenSubtasks { open: u32 },
}

fn invalid(field: &'static str, message: impl Into<String>) -> TaskError {
    TaskError::Invalid {
        field,
        message: message.into(),
    }
}

impl TaskFields {
    /// Checks the fields a person typed: a clear error naming the field.
    pub fn validate(&self) -> Result<(), TaskError> {
        let title = self.title.trim();
        if title.is_empty() {
            return Err(invalid("title", "a task needs a title"));
        }
        if title.chars().count() > MAX_TITLE {
            return Err(invalid("title", format!("at most {MAX_TITLE} characters")));
        }
        if self.description.len() > MAX_DESCRIPTION {
            return Err(invalid(
                "description",
                format!("at most {MAX_DESCRIPTION} bytes"),
            ));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(invalid("labels", format!("at most {MAX_LABELS} labels")));
        }
        if let Some(bad) = self
            .labels
            .iter()
            .find(|l| l.trim().is_empty() || l.chars().count() > MAX_LABEL)
        {
            return Err(invalid(
                "labels",
                format!("`{bad}`: a label has 1 to {MAX_LABEL} characters"),
            ));
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ the board

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoardState {
    pub last_number: u64,
}

/// A task to open on the board; its number is the board's to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTask {
    pub task_id: Uuid,
    pub fields: TaskFields,
    pub status: TaskStatus,
    pub parent: Option<Uuid>,
    pub assignee: Option<Assignee>,
    pub at: DateTime<Utc>,
}

#[derive(Debug)]
pub struct TaskBoard;

impl Decider for TaskBoard {
    type State = BoardState;
    type Command = OpenTask;
    type Event = TaskBoardEvent;
    type Error = TaskError;

    fn initial() -> BoardState {
        BoardState::default()
    }

    fn evolve(mut state: BoardState, event: &TaskBoardEvent) -> BoardState {
        match event {
            TaskBoardEvent::Created(created) => {
                state.last_number = state.last_number.max(created.number);
            }
        }
        state
    }

    fn decide(state: &BoardState, open: OpenTask) -> Result<Vec<TaskBoardEvent>, TaskError> {
        open.fields.validate()?;
        if open.parent == Some(open.task_id) {
            return Err(invalid("parent", "a task cannot be its own parent"));
        }
        Ok(vec![TaskBoardEvent::Created(TaskCreated {
            task_id: open.task_id,
            number: state.last_number + 1,
            fields: TaskFields {
                title: open.fields.title.trim().to_owned(),
                ..open.fields
            },
            status: open.status,
            parent: open.parent,
            assignee: open.assignee,
            at: open.at,
        })])
    }
}

// ------------------------------------------------------------------ one task

/// What the Task aggregate folds: its creation, then its own stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TaskHistoryEvent {
    Created(TaskBoardEvent),
    Changed(TaskEvent),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    pub task_id: Uuid,
    pub number: u64,
    pub fields: TaskFields,
    pub status: TaskStatus,
    pub parent: Option<Uuid>,
    pub assignee: Option<Assignee>,
    pub runs: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TaskState {
    pub fn key(&self) -> String {
        key(self.number)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskCommand {
    Edit {
        fields: TaskFields,
        at: DateTime<Utc>,
    },
    ChangeStatus {
        to: TaskStatus,
        /// Sub-tasks still open, as the board read model counts them when asked.
        open_subtasks: u32,
        at: DateTime<Utc>,
    },
    Assign {
        assignee: Option<Assignee>,
        at: DateTime<Utc>,
    },
    LinkRun {
        run_id: Uuid,
        at: DateTime<Utc>,
    },
}

#[derive(Debug)]
pub struct Task;

impl Decider for Task {
    /// `None` until its `task.created`.
    type State = Option<TaskState>;
    type Command = TaskCommand;
    type Event = TaskHistoryEvent;
    type Error = TaskError;

    fn initial() -> Option<TaskState> {
        None
    }

    fn evolve(state: Option<TaskState>, event: &TaskHistoryEvent) -> Option<TaskState> {
        match (state, event) {
            (None, TaskHistoryEvent::Created(TaskBoardEvent::Created(c))) => Some(TaskState {
                task_id: c.task_id,
                number: c.number,
                fields: c.fields.clone(),
                status: c.status,
                parent: c.parent,
                assignee: c.assignee.clone(),
                runs: Vec::new(),
                created_at: c.at,
                updated_at: c.at,
            }),
            (Some(mut task), TaskHistoryEvent::Changed(change)) => {
                match change {
                    TaskEvent::Edited { fields, at } => {
                        task.fields = fields.clone();
                        task.updated_at = *at;
                    }
                    TaskEvent::StatusChanged { to, at, .. } => {
                        task.status = *to;
                        task.updated_at = *at;
                    }
                    TaskEvent::Assigned { assignee, at, .. } => {
                        task.assignee = assignee.clone();
                        task.updated_at = *at;
                    }
                    TaskEvent::RunLinked { run_id, at } => {
                        if !task.runs.contains(run_id) {
                            task.runs.push(*run_id);
                        }
                        task.updated_at = *at;
                    }
                }
                Some(task)
            }
            (state, _) => state,
        }
    }

    fn decide(
        state: &Option<TaskState>,
        command: TaskCommand,
    ) -> Result<Vec<TaskHistoryEvent>, TaskError> {
        let task = state.as_ref().ok_or(TaskError::NotFound)?;
        let change = match command {
            TaskCommand::Edit { fields, at } => {
                fields.validate()?;
                let fields = TaskFields {
                    title: fields.title.trim().to_owned(),
                    ..fields
                };
                if fields == task.fields {
                    return Ok(Vec::new());
                }
                TaskEvent::Edited { fields, at }
            }
            TaskCommand::ChangeStatus {
                to,
                open_subtasks,
                at,
            } => {
                if to == task.status {
                    return Ok(Vec::new());
                }
                if !task.status.may_become(to) {
                    return Err(TaskError::Transition {
                        from: task.status.as_str(),
                        to: to.as_str(),
                    });
                }
                if to == TaskStatus::Done && open_subtasks > 0 {
                    return Err(TaskError::OpenSubtasks {
                        open: open_subtasks,
                    });
                }
                TaskEvent::StatusChanged {
                    from: task.status,
                    to,
                    at,
                }
            }
            TaskCommand::Assign { assignee, at } => {
                if assignee == task.assignee {
                    return Ok(Vec::new());
                }
                TaskEvent::Assigned {
                    previous: task.assignee.clone(),
                    assignee,
                    at,
                }
            }
            TaskCommand::LinkRun { run_id, at } => {
                if task.runs.contains(&run_id) {
                    return Ok(Vec::new());
                }
                TaskEvent::RunLinked { run_id, at }
            }
        };
        Ok(vec![TaskHistoryEvent::Changed(change)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec as Spec;
    use chrono::TimeZone;
    use serde_json::json;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .unwrap_or_default()
    }

    fn fields(title: &str) -> TaskFields {
        TaskFields {
            title: title.into(),
            description: String::new(),
            priority: TaskPriority::None,
            labels: BTreeSet::new(),
            due: None,
        }
    }

    fn open(id: u128, title: &str) -> OpenTask {
        OpenTask {
            task_id: Uuid::from_u128(id),
            fields: fields(title),
            status: TaskStatus::Todo,
            parent: None,
            assignee: None,
            at: t(0),
        }
    }

    fn created(id: u128, number: u64, status: TaskStatus) -> TaskBoardEvent {
        TaskBoardEvent::Created(TaskCreated {
            task_id: Uuid::from_u128(id),
            number,
            fields: fields("Write the docs"),
            status,
            parent: None,
            assignee: None,
            at: t(0),
        })
    }

    fn task(status: TaskStatus) -> Vec<TaskHistoryEvent> {
        vec![TaskHistoryEvent::Created(created(1, 1, status))]
    }

    #[test]
    fn the_board_numbers_tasks_one_after_the_other() {
        Spec::<TaskBoard>::given([])
            .when(open(1, "  Write the docs "))
            .then([created(1, 1, TaskStatus::Todo)]);
        let state = Spec::<TaskBoard>::given([
            created(1, 1, TaskStatus::Todo),
            created(2, 2, TaskStatus::Todo),
        ])
        .when(open(3, "Write the docs"))
        .then([created(3, 3, TaskStatus::Todo)]);
        assert_eq!(state.last_number, 3);
    }

    #[test]
    fn a_task_without_a_title_or_with_too_many_labels_is_refused_naming_the_field() {
        Spec::<TaskBoard>::given([])
            .when(open(1, "   "))
            .then_error(|e| matches!(e, TaskError::Invalid { field: "title", .. }));
        let mut many = open(1, "x");
        many.fields.labels = (0..=MAX_LABELS).map(|i| format!("l{i}")).collect();
        Spec::<TaskBoard>::given([]).when(many).then_error(|e| {
            matches!(
                e,
                TaskError::Invalid {
                    field: "labels",
                    ..
                }
            )
        });
        let mut own_parent = open(1, "x");
        own_parent.parent = Some(own_parent.task_id);
        Spec::<TaskBoard>::given([])
            .when(own_parent)
            .then_error(|e| {
                matches!(
                    e,
                    TaskError::Invalid {
                        field: "parent",
                        ..
                    }
                )
            });
    }

    #[test]
    fn allowed_moves_change_the_status_and_record_where_from() {
        let state = Spec::<Task>::given(task(TaskStatus::Todo))
            .when(TaskCommand::ChangeStatus {
                to: TaskStatus::InProgress,
                open_subtasks: 0,
                at: t(5),
            })
            .then([TaskHistoryEvent::Changed(TaskEvent::StatusChanged {
                from: TaskStatus::Todo,
                to: TaskStatus::InProgress,
                at: t(5),
            })]);
        assert_eq!(
            state.map(|s| (s.status, s.updated_at)),
            Some((TaskStatus::InProgress, t(5)))
        );
    }

    #[test]
    fn refused_moves_name_both_statuses() {
        Spec::<Task>::given(task(TaskStatus::Todo))
            .when(TaskCommand::ChangeStatus {
                to: TaskStatus::Done,
                open_subtasks: 0,
                at: t(5),
            })
            .then_error(|e| {
                *e == TaskError::Transition {
                    from: "todo",
                    to: "done",
                }
            });
    }

    #[test]
    fn every_move_is_written_down_once() {
        use TaskStatus::*;
        let allowed: Vec<(TaskStatus, TaskStatus)> = TaskStatus::ALL
            .into_iter()
            .flat_map(|from| TaskStatus::ALL.into_iter().map(move |to| (from, to)))
            .filter(|(from, to)| from.may_become(*to))
            .collect();
        assert_eq!(allowed.len(), 18, "{allowed:?}");
        assert!(Done.may_become(Todo), "done tasks can be reopened");
        assert!(!Todo.may_become(InReview));
        assert!(TaskStatus::ALL.iter().all(|s| !s.may_become(*s)));
    }

    #[test]
    fn a_parent_is_not_done_while_a_sub_task_is_open() {
        Spec::<Task>::given(task(TaskStatus::InReview))
            .when(TaskCommand::ChangeStatus {
                to: TaskStatus::Done,
                open_subtasks: 2,
                at: t(5),
            })
            .then_error(|e| *e == TaskError::OpenSubtasks { open: 2 });
    }

    #[test]
    fn repeating_a_change_changes_nothing() {
        Spec::<Task>::given(task(TaskStatus::Blocked))
            .when(TaskCommand::ChangeStatus {
                to: TaskStatus::Blocked,
                open_subtasks: 0,
                at: t(5),
            })
            .then_nothing_happens();
        Spec::<Task>::given(task(TaskStatus::Todo))
            .when(TaskCommand::Edit {
                fields: fields("Write the docs"),
                at: t(5),
            })
            .then_nothing_happens();
    }

    #[test]
    fn assigning_records_the_previous_assignee() {
        let ann = Assignee::User(Uuid::from_u128(7));
        let bot = Assignee::Agent(Uuid::from_u128(8));
        let mut given = task(TaskStatus::Todo);
        given.push(TaskHistoryEvent::Changed(TaskEvent::Assigned {
            assignee: Some(ann.clone()),
            previous: None,
            at: t(1),
        }));
        let state = Spec::<Task>::given(given)
            .when(TaskCommand::Assign {
                assignee: Some(bot.clone()),
                at: t(2),
            })
            .then([TaskHistoryEvent::Changed(TaskEvent::Assigned {
                assignee: Some(bot.clone()),
                previous: Some(ann),
                at: t(2),
            })]);
        assert_eq!(state.and_then(|s| s.assignee), Some(bot));
    }

    #[test]
    fn commands_on_a_task_that_does_not_exist_are_refused() {
        Spec::<Task>::given([])
            .when(TaskCommand::LinkRun {
                run_id: Uuid::nil(),
                at: t(1),
            })
            .then_error(|e| *e == TaskError::NotFound);
    }

    #[test]
    fn events_read_back_as_recorded() {
        let event = created(1, 42, TaskStatus::Todo);
        let payload = event.to_payload();
        assert_eq!(payload["number"], 42);
        assert_eq!(payload["title"], "Write the docs");
        assert_eq!(
            TaskBoardEvent::from_stored("task.created", payload).unwrap(),
            event
        );
        let assigned = TaskEvent::Assigned {
            assignee: Some(Assignee::Agent(Uuid::from_u128(3))),
            previous: None,
            at: t(1),
        };
        assert_eq!(
            assigned.to_payload()["assignee"],
            json!({"kind": "agent", "id": Uuid::from_u128(3)})
        );
        assert_eq!(
            TaskEvent::from_stored("task.assigned", assigned.to_payload()).unwrap(),
            assigned
        );
    }

    #[test]
    fn keys_read_back() {
        assert_eq!(key(7), "FF-7");
        assert_eq!(parse_key("FF-7"), Some(7));
        assert_eq!(parse_key("FF-0"), None);
        assert_eq!(parse_key("XX-7"), None);
        assert_eq!(parse_key("FF-x"), None);
    }
}
