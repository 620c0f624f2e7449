//! Reads of the read models, always within one tenant.
//!
//! Handlers do not hold the read-model pool: they get a [`TenantReads`] for their
//! [`Caller`] (`Platform::reads`), and every query here binds the caller's tenant
//! itself, so no handler can forget the `tenant_id` condition. Operations that span
//! tenants (projection status, rebuilds, readiness) use `Platform::operations_db`.

use flowforge_projections::approvals::ApprovalRow;
use flowforge_projections::comments::CommentRow;
use flowforge_projections::document::Document;
use flowforge_projections::events::EventRow;
use flowforge_projections::runs::RunRow;
pub use flowforge_projections::skills::SkillRow as SkillListing;
use flowforge_projections::tasks::TaskRow;
use flowforge_projections::{Dialect, ReadDb};

use crate::caller::Caller;
use crate::error::ApiError;

pub struct TenantReads<'a> {
    db: &'a ReadDb,
    tenant: &'a str,
    /// Runs and events are read in the caller's environment only.
    environment: &'static str,
}

/// Which runs to list (`GET /api/v1/runs`); `None` means any.
#[derive(Debug, Default)]
pub struct RunFilter<'a> {
    pub function: Option<&'a str>,
    pub statuses: Option<Vec<String>>,
    pub event: Option<&'a str>,
    /// Milliseconds since the Unix epoch, inclusive / exclusive.
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// Which tasks the board shows (`GET /api/v1/tasks`); `None` means any.
#[derive(Debug, Default)]
pub struct TaskFilter {
    pub statuses: Option<Vec<String>>,
    /// A user's or agent's id; `none`: unassigned.
    pub assignee: Option<String>,
    pub label: Option<String>,
    pub priority: Option<String>,
    pub parent: Option<String>,
    /// Words that must all appear in the title or the description (any case).
    pub q: Option<String>,
}

/// A notification as the inbox shows it (with its task's key and title, if any).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NotificationRow {
    pub notification_id: String,
    pub kind: String,
    pub actor: String,
    pub task_id: Option<String>,
    pub task_number: Option<i64>,
    pub task_title: Option<String>,
    pub comment_id: Option<String>,
    pub run_id: Option<String>,
    pub approval_id: Option<String>,
    pub summary: String,
    pub created_at: i64,
    pub read_at: Option<i64>,
    pub archived_at: Option<i64>,
}

const EVENT_COLUMNS: &str =
    "stream_id, tenant_id, environment, id, name, data, ts, received_at, source, position";

fn rows<D: Document>(rows: &[sqlx::any::AnyRow]) -> Result<Vec<D>, ApiError> {
    rows.iter()
        .map(D::from_row)
        .collect::<Result<_, _>>()
        .map_err(ApiError::internal)
}

impl<'a> TenantReads<'a> {
    pub(crate) fn new(db: &'a ReadDb, caller: &'a Caller) -> Self {
        Self {
            db,
            tenant: caller.tenant(),
            environment: caller.environment.as_str(),
        }
    }

    /// Ids of the tenant's streams of one type, oldest first (at most 1000), from the
    /// `streams` catalogue.
    pub async fn stream_ids(&self, stream_type: &str) -> Result<Vec<String>, ApiError> {
        sqlx::query_scalar(
            "SELECT stream_id FROM streams WHERE tenant_id = $1 AND stream_type = $2 \
             ORDER BY created_at, stream_id LIMIT 1000",
        )
        .bind(self.tenant)
        .bind(stream_type)
        .fetch_all(self.db.pool())
        .await
        .map_err(ApiError::internal)
    }

    /// How many runs wait ahead of `row`'s run for a concurrency slot of `key`: held
    /// runs of the same function and key created before it (the scheduler's lines are
    /// first come, first served by run).
    pub async fn held_ahead(&self, row: &RunRow, key: &str) -> Result<i64, ApiError> {
        sqlx::query_scalar(
            "SELECT count(*) FROM runs WHERE tenant_id = $1 AND environment = $2 \
               AND function_id = $3 AND hold_reason = 'concurrency' AND hold_key = $4 \
               AND (created_at < $5 OR (created_at = $5 AND run_id < $6))",
        )
        .bind(self.tenant)
        .bind(row.environment.as_str())
        .bind(row.function_id.as_str())
        .bind(key)
        .bind(row.created_at)
        .bind(row.run_id.as_str())
        .fetch_one(self.db.pool())
        .await
        .map_err(ApiError::internal)
    }

    /// Up to `limit` runs, newest first, before the cursor `(created_at, run_id)`.
    pub async fn runs(
        &self,
        filter: &RunFilter<'_>,
        (before_at, before_key): (i64, &str),
        limit: i64,
    ) -> Result<Vec<RunRow>, ApiError> {
        let statuses = filter
            .statuses
            .as_ref()
            .map(|s| serde_json::to_string(s).unwrap_or_default());
        // Portable "status IN (list)": the list travels as one JSON text parameter and
        // each row's status is looked up in it.
        let status_clause = match self.db.dialect() {
            Dialect::Postgres => {
                "($4::text IS NULL OR status IN (SELECT json_array_elements_text($4::json)))"
            }
            Dialect::Sqlite => "($4 IS NULL OR status IN (SELECT value FROM json_each($4)))",
        };
        let found = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM runs WHERE tenant_id = $1 AND environment = $2 \
               AND ($3 IS NULL OR function_id = $3) \
               AND {status_clause} \
               AND ($5 IS NULL OR event_id = $5) \
               AND ($6 IS NULL OR created_at >= $6) \
               AND ($7 IS NULL OR created_at < $7) \
               AND (created_at < $8 OR (created_at = $8 AND run_id < $9)) \
             ORDER BY created_at DESC, run_id DESC LIMIT $10",
            RunRow::COLUMNS.join(", ")
        )))
        .bind(self.tenant)
        .bind(self.environment)
        .bind(filter.function)
        .bind(statuses)
        .bind(filter.event)
        .bind(filter.from)
        .bind(filter.to)
        .bind(before_at)
        .bind(before_key)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        rows(&found)
    }

    /// The runs an event started, oldest first.
    pub async fn runs_for_event(&self, event_id: &str) -> Result<Vec<RunRow>, ApiError> {
        self.runs_where("event_id", event_id).await
    }

    /// The run's row, when the read model has it (in any of the tenant's environments:
    /// the caller was already allowed to see the run).
    pub async fn run(&self, run_id: &str) -> Result<Option<RunRow>, ApiError> {
        let found = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM runs WHERE tenant_id = $1 AND run_id = $2",
            RunRow::COLUMNS.join(", ")
        )))
        .bind(self.tenant)
        .bind(run_id)
        .fetch_all(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        Ok(rows(&found)?.pop())
    }

    async fn runs_where(&self, column: &'static str, value: &str) -> Result<Vec<RunRow>, ApiError> {
        let found = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM runs WHERE tenant_id = $1 AND environment = $2 AND {column} = $3 \
             ORDER BY created_at, run_id",
            RunRow::COLUMNS.join(", ")
        )))
        .bind(self.tenant)
        .bind(self.environment)
        .bind(value)
        .fetch_all(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        rows(&found)
    }

    /// The comments on a task or run, oldest first (deleted ones without their body).
    pub async fn comments_on(&self, kind: &str, id: &str) -> Result<Vec<CommentRow>, ApiError> {
        let found = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM comments WHERE tenant_id = $1 AND target_kind = $2 AND target_id = $3 \
             ORDER BY posted_position",
            CommentRow::COLUMNS.join(", ")
        )))
        .bind(self.tenant)
        .bind(kind)
        .bind(id)
        .fetch_all(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        rows(&found)
    }

    /// Approvals, newest first; `status` filters, `assignee` keeps those asked of that
    /// user (or of anyone).
    pub async fn approvals(
        &self,
        status: Option<&str>,
        assignee: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ApprovalRow>, ApiError> {
        let found = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM approvals WHERE tenant_id = $1 AND ($2 IS NULL OR status = $2) \
             AND ($3 IS NULL OR assignees = '[]' OR assignees LIKE $4) \
             ORDER BY requested_at DESC, approval_id LIMIT $5",
            ApprovalRow::COLUMNS.join(", ")
        )))
        .bind(self.tenant)
        .bind(status)
        .bind(assignee)
        .bind(assignee.map(|a| format!("%{}%", serde_json::Value::from(a))))
        .bind(limit)
        .fetch_all(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        rows(&found)
    }

    /// The tenant's skills that are not deleted, by name.
    pub async fn skills(&self, kind: Option<&str>) -> Result<Vec<SkillListing>, ApiError> {
        let found = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM skills WHERE tenant_id = $1 AND deleted_at IS NULL \
             AND ($2 IS NULL OR kind = $2) ORDER BY name",
            SkillListing::COLUMNS.join(", ")
        )))
        .bind(self.tenant)
        .bind(kind)
        .fetch_all(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        rows(&found)
    }

    /// A user's notifications: unread first, then newest.
    pub async fn notifications(
        &self,
        recipient: &str,
        kind: Option<&str>,
        unread_only: bool,
        archived: bool,
        limit: i64,
    ) -> Result<Vec<NotificationRow>, ApiError> {
        sqlx::query_as::<_, NotificationRow>(
            "SELECT n.notification_id, n.kind, n.actor, n.task_id, t.number AS task_number, \
                    t.title AS task_title, n.comment_id, n.run_id, n.approval_id, n.summary, n.created_at, \
                    n.read_at, n.archived_at \
             FROM notifications n LEFT JOIN tasks t ON t.task_id = n.task_id \
             WHERE n.tenant_id = $1 AND n.recipient = $2 \
               AND ($3 IS NULL OR n.kind = $3) \
               AND ($4 = 0 OR n.read_at IS NULL) \
               AND (($5 = 1) = (n.archived_at IS NOT NULL)) \
             ORDER BY CASE WHEN n.read_at IS NULL THEN 0 ELSE 1 END, n.source_position DESC \
             LIMIT $6",
        )
        .bind(self.tenant)
        .bind(recipient)
        .bind(kind)
        .bind(i64::from(unread_only))
        .bind(i64::from(archived))
        .bind(limit)
        .fetch_all(self.db.pool())
        .await
        .map_err(ApiError::internal)
    }

    pub async fn unread_notifications(&self, recipient: &str) -> Result<i64, ApiError> {
        sqlx::query_scalar(
            "SELECT count(*) FROM notifications WHERE tenant_id = $1 AND recipient = $2 \
               AND read_at IS NULL AND archived_at IS NULL",
        )
        .bind(self.tenant)
        .bind(recipient)
        .fetch_one(self.db.pool())
        .await
        .map_err(ApiError::internal)
    }

    /// The task with this number (`FF-<number>`), when the board has it.
    pub async fn task_id_by_number(&self, number: u64) -> Result<Option<String>, ApiError> {
        sqlx::query_scalar("SELECT task_id FROM tasks WHERE tenant_id = $1 AND number = $2")
            .bind(self.tenant)
            .bind(i64::try_from(number).unwrap_or(i64::MAX))
            .fetch_optional(self.db.pool())
            .await
            .map_err(ApiError::internal)
    }

    /// Sub-tasks of `task_id` that are neither done nor cancelled.
    pub async fn open_subtasks(&self, task_id: &str) -> Result<u32, ApiError> {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE tenant_id = $1 AND parent_id = $2 \
               AND status NOT IN ('done', 'cancelled')",
        )
        .bind(self.tenant)
        .bind(task_id)
        .fetch_one(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        Ok(u32::try_from(open).unwrap_or(u32::MAX))
    }

    /// The conditions of a task filter, from parameter `$first` on, and their values
    /// (the status list last, so counts can leave it out).
    fn task_conditions(
        &self,
        filter: &TaskFilter,
        with_status: bool,
    ) -> (String, Vec<Option<String>>) {
        let mut values: Vec<Option<String>> = Vec::new();
        let mut clauses = vec!["tenant_id = $1".to_owned()];
        if filter.assignee.as_deref() == Some("none") {
            clauses.push("assignee_id IS NULL".into());
        }
        let mut bind = |clause: &dyn Fn(usize) -> String, value: Option<String>| {
            values.push(value);
            clauses.push(clause(values.len() + 1));
        };
        if let Some(assignee) = filter.assignee.as_ref().filter(|a| *a != "none") {
            bind(&|n| format!("assignee_id = ${n}"), Some(assignee.clone()));
        }
        if let Some(priority) = &filter.priority {
            bind(&|n| format!("priority = ${n}"), Some(priority.clone()));
        }
        if let Some(parent) = &filter.parent {
            bind(&|n| format!("parent_id = ${n}"), Some(parent.clone()));
        }
        if let Some(label) = &filter.label {
            let dialect = self.db.dialect();
            bind(
                &move |n| match dialect {
                    Dialect::Postgres => format!("labels::jsonb ? ${n}"),
                    Dialect::Sqlite => {
                        format!("EXISTS (SELECT 1 FROM json_each(labels) WHERE value = ${n})")
                    }
                },
                Some(label.clone()),
            );
        }
        for word in filter
            .q
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .take(8)
        {
            let pattern = format!(
                "%{}%",
                word.to_lowercase()
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            );
            bind(
                &|n| {
                    format!(
                        "(lower(title) LIKE ${n} ESCAPE '\\' OR lower(description) LIKE ${n} ESCAPE '\\')"
                    )
                },
                Some(pattern),
            );
        }
        if with_status && let Some(statuses) = &filter.statuses {
            let list = serde_json::to_string(statuses).unwrap_or_default();
            let dialect = self.db.dialect();
            bind(
                &move |n| match dialect {
                    Dialect::Postgres => {
                        format!("status IN (SELECT json_array_elements_text(${n}::json))")
                    }
                    Dialect::Sqlite => format!("status IN (SELECT value FROM json_each(${n}))"),
                },
                Some(list),
            );
        }
        (clauses.join(" AND "), values)
    }

    /// The board: matching tasks in column order (status), most urgent first.
    pub async fn tasks(
        &self,
        filter: &TaskFilter,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<TaskRow>, ApiError> {
        let (conditions, values) = self.task_conditions(filter, true);
        let n = values.len() + 2;
        let sql = format!(
            "SELECT {} FROM tasks WHERE {conditions} \
             ORDER BY CASE status WHEN 'todo' THEN 0 WHEN 'in_progress' THEN 1 \
               WHEN 'in_review' THEN 2 WHEN 'blocked' THEN 3 WHEN 'done' THEN 4 ELSE 5 END, \
               priority_rank DESC, number \
             LIMIT ${n} OFFSET ${}",
            TaskRow::COLUMNS.join(", "),
            n + 1
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(self.tenant);
        for value in values {
            query = query.bind(value);
        }
        let found = query
            .bind(limit)
            .bind(offset)
            .fetch_all(self.db.pool())
            .await
            .map_err(ApiError::internal)?;
        rows(&found)
    }

    /// How many tasks match per status (the filter without its statuses).
    pub async fn task_counts(&self, filter: &TaskFilter) -> Result<Vec<(String, i64)>, ApiError> {
        let (conditions, values) = self.task_conditions(filter, false);
        let sql = format!("SELECT status, count(*) FROM tasks WHERE {conditions} GROUP BY status");
        let mut query =
            sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql)).bind(self.tenant);
        for value in values {
            query = query.bind(value);
        }
        query
            .fetch_all(self.db.pool())
            .await
            .map_err(ApiError::internal)
    }

    /// The first event recorded with this id (a re-sent id is accepted once).
    pub async fn event(&self, id: &str) -> Result<Option<EventRow>, ApiError> {
        let found = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = $1 AND environment = $2 AND id = $3 \
             ORDER BY received_at LIMIT 1"
        )))
        .bind(self.tenant)
        .bind(self.environment)
        .bind(id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        found
            .map(|row| EventRow::from_row(&row))
            .transpose()
            .map_err(ApiError::internal)
    }

    /// Up to `limit` events, newest first, before the cursor `(received_at, stream_id)`.
    pub async fn newest_events(
        &self,
        name: Option<&str>,
        (before_at, before_key): (i64, &str),
        limit: i64,
    ) -> Result<Vec<EventRow>, ApiError> {
        let found = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = $1 AND environment = $2 \
               AND ($3 IS NULL OR name = $3) \
               AND (received_at < $4 OR (received_at = $4 AND stream_id < $5)) \
             ORDER BY received_at DESC, stream_id DESC LIMIT $6"
        )))
        .bind(self.tenant)
        .bind(self.environment)
        .bind(name)
        .bind(before_at)
        .bind(before_key)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await
        .map_err(ApiError::internal)?;
        rows(&found)
    }
}
