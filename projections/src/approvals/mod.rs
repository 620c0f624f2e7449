//! `approvals`: one row per approval a run asked for, for the approvals inbox.

use flowforge_domain::approval::ApprovalEvent;
use flowforge_store::{LogFilter, StoredEvent};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::ProjectionError;
use crate::document::{Document, DocumentProjection, SqlValue};

pub struct ApprovalsProjection;

#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRow {
    pub approval_id: String,
    pub tenant_id: String,
    pub run_id: String,
    pub function_id: String,
    pub step_id: String,
    pub title: String,
    pub description: Option<String>,
    pub assignees: String,
    pub status: String,
    pub decided_by: Option<String>,
    pub comment: Option<String>,
    pub requested_at: i64,
    pub expires_at: i64,
    pub decided_at: Option<i64>,
    pub last_position: i64,
}

impl Document for ApprovalRow {
    const COLUMNS: &'static [&'static str] = &[
        "approval_id",
        "tenant_id",
        "run_id",
        "function_id",
        "step_id",
        "title",
        "description",
        "assignees",
        "status",
        "decided_by",
        "comment",
        "requested_at",
        "expires_at",
        "decided_at",
        "last_position",
    ];

    fn key(&self) -> &str {
        &self.approval_id
    }

    fn values(&self) -> Vec<SqlValue> {
        vec![
            self.approval_id.as_str().into(),
            self.tenant_id.as_str().into(),
            self.run_id.as_str().into(),
            self.function_id.as_str().into(),
            self.step_id.as_str().into(),
            self.title.as_str().into(),
            self.description.clone().into(),
            self.assignees.as_str().into(),
            self.status.as_str().into(),
            self.decided_by.clone().into(),
            self.comment.clone().into(),
            self.requested_at.into(),
            self.expires_at.into(),
            self.decided_at.into(),
            self.last_position.into(),
        ]
    }

    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            approval_id: row.try_get("approval_id")?,
            tenant_id: row.try_get("tenant_id")?,
            run_id: row.try_get("run_id")?,
            function_id: row.try_get("function_id")?,
            step_id: row.try_get("step_id")?,
            title: row.try_get("title")?,
            description: row.try_get("description")?,
            assignees: row.try_get("assignees")?,
            status: row.try_get("status")?,
            decided_by: row.try_get("decided_by")?,
            comment: row.try_get("comment")?,
            requested_at: row.try_get("requested_at")?,
            expires_at: row.try_get("expires_at")?,
            decided_at: row.try_get("decided_at")?,
            last_position: row.try_get("last_position")?,
        })
    }
}

impl DocumentProjection for ApprovalsProjection {
    type Doc = ApprovalRow;
    const NAME: &'static str = "approvals";
    const TABLE: &'static str = "approvals";
    const SCHEMA: &'static str = include_str!("schema.sql");
    const SCHEMA_VERSION: u32 = 1;

    fn filter(&self) -> LogFilter {
        LogFilter::all().event_types(ApprovalEvent::TYPES.iter().copied())
    }

    fn key(&self, event: &StoredEvent) -> Option<String> {
        (event.stream_type == flowforge_domain::approval::STREAM_TYPE)
            .then(|| event.stream_id.trim_start_matches("approval-").to_owned())
    }

    fn evolve(
        &self,
        current: Option<ApprovalRow>,
        event: &StoredEvent,
    ) -> Result<Option<ApprovalRow>, ProjectionError> {
        let decoded: ApprovalEvent = event
            .decode()
            .map_err(|e| ProjectionError::event(event, e))?;
        let status = decoded.status_after();
        let mut row = match (current, decoded) {
            (
                None,
                ApprovalEvent::Requested {
                    approval_id,
                    ask,
                    origin,
                    expires_at,
                    at,
                },
            ) => ApprovalRow {
                approval_id: approval_id.to_string(),
                tenant_id: event.tenant_id().to_owned(),
                run_id: origin.run_id.to_string(),
                function_id: origin.function_id,
                step_id: origin.step_id,
                title: ask.title,
                description: ask.description,
                assignees: serde_json::to_string(&ask.assignees).unwrap_or_else(|_| "[]".into()),
                status: status.as_str().into(),
                decided_by: None,
                comment: None,
                requested_at: at.timestamp_millis(),
                expires_at: expires_at.timestamp_millis(),
                decided_at: None,
                last_position: 0,
            },
            (None, _) => {
                return Err(ProjectionError::event(
                    event,
                    "approval event before approval.requested",
                ));
            }
            (Some(row), ApprovalEvent::Requested { .. }) => row,
            (
                Some(mut row),
                ApprovalEvent::Decided {
                    by, comment, at, ..
                },
            ) => {
                row.status = status.as_str().into();
                row.decided_by = Some(by);
                row.comment = comment;
                row.decided_at = Some(at.timestamp_millis());
                row
            }
            (Some(mut row), ApprovalEvent::TimedOut { at, .. }) => {
                row.status = status.as_str().into();
                row.decided_at = Some(at.timestamp_millis());
                row
            }
        };
        row.last_position = i64::try_from(event.global_position).unwrap_or(i64::MAX);
        Ok(Some(row))
    }
}
