//! The read side of FlowForge.
//!
//! A [`Projection`] turns log events into rows of read-model tables. The
//! [`runner::ProjectionRunner`] feeds it from the log, starting at its checkpoint, and
//! writes the new checkpoint in the same database transaction as the rows, so a crash
//! can neither skip nor double-apply an event.
//!
//! Each projection's tables exist in *generations*: physical tables `<table>__g<n>`
//! behind a view `<table>` that the API reads. A rebuild fills generation n+1 from
//! position 0 while generation n keeps serving, then swaps the view in one transaction
//! (see [`rebuild`]).

pub mod approvals;
pub mod checkpoint;
pub mod comments;
pub mod document;
pub mod events;
pub mod notifications;
pub mod readdb;
pub mod rebuild;
pub mod runner;
pub mod runs;
pub mod skills;
pub mod streams;
pub mod tasks;

use std::sync::Arc;

use async_trait::async_trait;
use flowforge_store::{LogFilter, StoreError, StoredEvent};
use sqlx::{Any, Transaction};

pub use checkpoint::ProjectionCheckpoint;
pub use readdb::{Dialect, ReadDb};
pub use rebuild::{RebuildReport, rebuild};
pub use runner::{ProjectionRunner, ProjectionStatus, status};

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("read-model database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("read-model migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event {position} ({event_type}) cannot be projected: {reason}")]
    Event {
        position: u64,
        event_type: String,
        reason: String,
    },
    #[error("unknown projection `{0}`")]
    Unknown(String),
    #[error("projection `{0}` has no active generation; it has not been initialised")]
    NotInitialised(String),
    #[error("{0}")]
    Io(String),
}

impl ProjectionError {
    pub fn event(event: &StoredEvent, reason: impl std::fmt::Display) -> Self {
        ProjectionError::Event {
            position: event.global_position,
            event_type: event.event_type.clone(),
            reason: reason.to_string(),
        }
    }
}

/// A read model built from the log.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// The stable name used in its checkpoint row, metrics and tracing spans.
    fn name(&self) -> &'static str;

    /// Bumped whenever the tables or the way events map onto them change; a projection
    /// whose stored generation has an older version is rebuilt at start-up.
    fn schema_version(&self) -> u32;

    /// Logical table names. The API reads views with these names.
    fn tables(&self) -> &'static [&'static str];

    /// DDL creating one generation's tables and indexes, with `{table}` placeholders
    /// for each logical table name (so that index names stay unique per generation).
    fn schema(&self) -> &'static str;

    /// The events this projection needs; others are never read.
    fn filter(&self) -> LogFilter {
        LogFilter::all()
    }

    /// Applies a batch of events, in log order, inside the caller's transaction.
    async fn apply(
        &self,
        tx: &mut Transaction<'static, Any>,
        tables: &Tables,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError>;
}

/// Physical table names of one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    generation: u64,
    names: Vec<(&'static str, String)>,
}

impl Tables {
    pub fn for_generation(projection: &dyn Projection, generation: u64) -> Self {
        Self {
            generation,
            names: projection
                .tables()
                .iter()
                .map(|logical| (*logical, format!("{logical}__g{generation}")))
                .collect(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The physical name of a logical table.
    pub fn get<'a>(&'a self, logical: &'a str) -> &'a str {
        self.names
            .iter()
            .find(|(l, _)| *l == logical)
            .map_or(logical, |(_, p)| p.as_str())
    }

    /// Replaces every `{table}` placeholder with its physical name.
    pub fn render(&self, template: &str) -> String {
        let mut sql = template.to_owned();
        for (logical, physical) in &self.names {
            sql = sql.replace(&format!("{{{logical}}}"), physical);
        }
        sql
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.names.iter().map(|(l, p)| (*l, p.as_str()))
    }
}

/// Every projection FlowForge runs, by name.
pub fn all_projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(document::Documents(runs::RunsProjection)),
        Arc::new(document::Documents(streams::StreamsProjection)),
        Arc::new(document::Documents(events::EventsProjection)),
        Arc::new(document::Documents(tasks::TasksProjection)),
        Arc::new(document::Documents(comments::CommentsProjection)),
        Arc::new(document::Documents(approvals::ApprovalsProjection)),
        Arc::new(document::Documents(skills::SkillsProjection)),
        Arc::new(notifications::NotificationsProjection),
    ]
}

pub fn find_projection(name: &str) -> Result<Arc<dyn Projection>, ProjectionError> {
    all_projections()
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| ProjectionError::Unknown(name.to_owned()))
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
