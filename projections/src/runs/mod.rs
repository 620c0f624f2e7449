//! `runs`: one row per run, for listing and filtering runs. The full step timeline of
//! one run is folded from its stream on demand, not stored here.

use flowforge_domain::run::{RunEvent, RunStatus, StepOutput};
use flowforge_store::{LogFilter, StoredEvent};
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::ProjectionError;
use crate::document::{Document, DocumentProjection, SqlValue};

pub struct RunsProjection;

#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub run_id: String,
    pub tenant_id: String,
    /// `live` or `test`.
    pub environment: String,
    pub app_id: String,
    pub function_id: String,
    pub function_version: i64,
    pub status: String,
    pub event_id: Option<String>,
    pub event_name: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub steps_completed: i64,
    pub failed_attempts: i64,
    /// JSON text.
    pub output: Option<String>,
    /// JSON text.
    pub error: Option<String>,
    pub replay_of: Option<String>,
    pub parent_run_id: Option<String>,
    /// Why flow control skipped the run (`rate_limited`, `idempotent`), and in words.
    pub skip_reason: Option<String>,
    pub skip_detail: Option<String>,
    /// The flow-control hold on the run's latest held call (`concurrency`,
    /// `throttle`), while it lasts: the key, the decision in words, since and until.
    pub hold_reason: Option<String>,
    pub hold_key: Option<String>,
    pub hold_detail: Option<String>,
    pub hold_since: Option<i64>,
    pub hold_until: Option<i64>,
    pub hold_token: Option<i64>,
    pub stream_version: i64,
    pub last_position: i64,
}

impl Document for RunRow {
    const COLUMNS: &'static [&'static str] = &[
        "run_id",
        "tenant_id",
        "environment",
        "app_id",
        "function_id",
        "function_version",
        "status",
        "event_id",
        "event_name",
        "created_at",
        "started_at",
        "finished_at",
        "steps_completed",
        "failed_attempts",
        "output",
        "error",
        "replay_of",
        "parent_run_id",
        "skip_reason",
        "skip_detail",
        "hold_reason",
        "hold_key",
        "hold_detail",
        "hold_since",
        "hold_until",
        "hold_token",
        "stream_version",
        "last_position",
    ];

    fn key(&self) -> &str {
        &self.run_id
    }

    fn values(&self) -> Vec<SqlValue> {
        vec![
            self.run_id.as_str().into(),
            self.tenant_id.as_str().into(),
            self.environment.as_str().into(),
            self.app_id.as_str().into(),
            self.function_id.as_str().into(),
            self.function_version.into(),
            self.status.as_str().into(),
            self.event_id.clone().into(),
            self.event_name.clone().into(),
            self.created_at.into(),
            self.started_at.into(),
            self.finished_at.into(),
            self.steps_completed.into(),
            self.failed_attempts.into(),
            self.output.clone().into(),
            self.error.clone().into(),
            self.replay_of.clone().into(),
            self.parent_run_id.clone().into(),
            self.skip_reason.clone().into(),
            self.skip_detail.clone().into(),
            self.hold_reason.clone().into(),
            self.hold_key.clone().into(),
            self.hold_detail.clone().into(),
            self.hold_since.into(),
            self.hold_until.into(),
            self.hold_token.into(),
            self.stream_version.into(),
            self.last_position.into(),
        ]
    }

    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            run_id: row.try_get("run_id")?,
            tenant_id: row.try_get("tenant_id")?,
            environment: row.try_get("environment")?,
            app_id: row.try_get("app_id")?,
            function_id: row.try_get("function_id")?,
            function_version: row.try_get("function_version")?,
            status: row.try_get("status")?,
            event_id: row.try_get("event_id")?,
            event_name: row.try_get("event_name")?,
            created_at: row.try_get("created_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            steps_completed: row.try_get("steps_completed")?,
            failed_attempts: row.try_get("failed_attempts")?,
            output: row.try_get("output")?,
            error: row.try_get("error")?,
            replay_of: row.try_get("replay_of")?,
            parent_run_id: row.try_get("parent_run_id")?,
            skip_reason: row.try_get("skip_reason")?,
            skip_detail: row.try_get("skip_detail")?,
            hold_reason: row.try_get("hold_reason")?,
            hold_key: row.try_get("hold_key")?,
            hold_detail: row.try_get("hold_detail")?,
            hold_since: row.try_get("hold_since")?,
            hold_until: row.try_get("hold_until")?,
            hold_token: row.try_get("hold_token")?,
            stream_version: row.try_get("stream_version")?,
            last_position: row.try_get("last_position")?,
        })
    }
}

impl RunRow {
    fn clear_hold(&mut self) {
        self.hold_reason = None;
        self.hold_key = None;
        self.hold_detail = None;
        self.hold_since = None;
        self.hold_until = None;
        self.hold_token = None;
    }
}

fn token(token: u64) -> i64 {
    i64::try_from(token).unwrap_or(i64::MAX)
}

fn position(event: &StoredEvent) -> i64 {
    i64::try_from(event.global_position).unwrap_or(i64::MAX)
}

impl DocumentProjection for RunsProjection {
    type Doc = RunRow;
    const NAME: &'static str = "runs";
    const TABLE: &'static str = "runs";
    const SCHEMA: &'static str = include_str!("schema.sql");
    const SCHEMA_VERSION: u32 = 4;

    fn filter(&self) -> LogFilter {
        LogFilter::all().event_types(RunEvent::TYPES.iter().copied())
    }

    fn key(&self, event: &StoredEvent) -> Option<String> {
        (event.stream_type == flowforge_domain::run::STREAM_TYPE)
            .then(|| event.stream_id.trim_start_matches("run-").to_owned())
    }

    fn evolve(
        &self,
        current: Option<RunRow>,
        event: &StoredEvent,
    ) -> Result<Option<RunRow>, ProjectionError> {
        let decoded: RunEvent = event
            .decode()
            .map_err(|e| ProjectionError::event(event, e))?;
        let mut row = match (current, decoded) {
            (None, RunEvent::Created(created)) => {
                let first = created.events.first();
                RunRow {
                    run_id: created.run_id.to_string(),
                    tenant_id: event.tenant_id().to_owned(),
                    environment: created.environment.as_str().to_owned(),
                    app_id: created.function.app_id,
                    function_id: created.function.function_id,
                    function_version: i64::from(created.function.version),
                    status: RunStatus::Queued.as_str().to_owned(),
                    event_id: first
                        .and_then(|e| e.get("id"))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned),
                    event_name: first
                        .and_then(|e| e.get("name"))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned),
                    created_at: created.created_at.timestamp_millis(),
                    started_at: None,
                    finished_at: None,
                    steps_completed: 0,
                    failed_attempts: 0,
                    output: None,
                    error: None,
                    replay_of: created.replay_of.map(|r| r.to_string()),
                    parent_run_id: created.parent.map(|p| p.run_id.to_string()),
                    skip_reason: None,
                    skip_detail: None,
                    hold_reason: None,
                    hold_key: None,
                    hold_detail: None,
                    hold_since: None,
                    hold_until: None,
                    hold_token: None,
                    stream_version: 0,
                    last_position: 0,
                }
            }
            (None, _) => {
                return Err(ProjectionError::event(
                    event,
                    "run event before run.created",
                ));
            }
            (Some(row), RunEvent::Created(_)) => row,
            (Some(mut row), other) => {
                match other {
                    RunEvent::Created(_) => {}
                    RunEvent::CallFinished(call) => {
                        if row.hold_token == Some(token(call.token)) {
                            row.clear_hold();
                        }
                        if row.started_at.is_none() {
                            row.started_at = Some(call.started_at.timestamp_millis());
                            if row.status == RunStatus::Queued.as_str() {
                                row.status = RunStatus::Running.as_str().to_owned();
                            }
                        }
                    }
                    RunEvent::StepCompleted(step) => {
                        row.steps_completed += 1;
                        if let StepOutput::Error(_) = step.output {
                            row.failed_attempts += 1;
                        }
                    }
                    RunEvent::StepFailed(_) | RunEvent::CallFailed(_) => row.failed_attempts += 1,
                    RunEvent::StepsPlanned { .. }
                    | RunEvent::SleepStarted(_)
                    | RunEvent::WaitStarted(_)
                    | RunEvent::InvokeStarted(_)
                    | RunEvent::SkillsUsed(_) => {}
                    RunEvent::Completed(done) => {
                        row.status = RunStatus::Completed.as_str().to_owned();
                        row.output = Some(done.output.to_string());
                        row.finished_at = Some(done.at.timestamp_millis());
                    }
                    RunEvent::Failed(failed) => {
                        row.status = RunStatus::Failed.as_str().to_owned();
                        row.error = serde_json::to_string(&failed.error).ok();
                        row.finished_at = Some(failed.at.timestamp_millis());
                    }
                    RunEvent::Cancelled(cancelled) => {
                        row.status = RunStatus::Cancelled.as_str().to_owned();
                        row.finished_at = Some(cancelled.at.timestamp_millis());
                    }
                    RunEvent::Skipped(skipped) => {
                        row.status = RunStatus::Skipped.as_str().to_owned();
                        row.skip_reason = Some(skipped.reason.as_str().to_owned());
                        row.skip_detail = Some(skipped.detail);
                        row.finished_at = Some(skipped.at.timestamp_millis());
                    }
                    RunEvent::CallHeld(held) => {
                        row.hold_reason = Some(held.reason.as_str().to_owned());
                        row.hold_key = Some(held.key);
                        row.hold_detail = Some(held.detail);
                        row.hold_since = Some(held.at.timestamp_millis());
                        row.hold_until = held.until.map(|u| u.timestamp_millis());
                        row.hold_token = Some(token(held.token));
                    }
                    RunEvent::CallReleased(released) => {
                        if row.hold_token == Some(token(released.token)) {
                            row.clear_hold();
                        }
                    }
                    RunEvent::Debounced(collected) => {
                        // The run now runs with the latest event (as the run view shows).
                        if let Some(id) = collected.event.get("id").and_then(Value::as_str) {
                            row.event_id = Some(id.to_owned());
                        }
                        row.hold_until =
                            row.hold_until.max(Some(collected.until.timestamp_millis()));
                    }
                    RunEvent::Batched(collected) => {
                        let until = collected.until.timestamp_millis();
                        row.hold_until = Some(row.hold_until.map_or(until, |u| u.min(until)));
                    }
                }
                if row.finished_at.is_some() {
                    row.clear_hold();
                }
                row
            }
        };
        row.stream_version = i64::try_from(event.stream_version).unwrap_or(i64::MAX);
        row.last_position = position(event);
        Ok(Some(row))
    }
}
