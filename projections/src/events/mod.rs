//! `events`: every event applications sent (and FlowForge emitted), for listing and
//! looking them up by their public id.

use flowforge_domain::event::IncomingEvent;
use flowforge_store::{LogFilter, StoredEvent};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::ProjectionError;
use crate::document::{Document, DocumentProjection, SqlValue};

pub struct EventsProjection;

#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub stream_id: String,
    pub tenant_id: String,
    /// `live` or `test`.
    pub environment: String,
    pub id: String,
    pub name: String,
    /// JSON text.
    pub data: String,
    pub ts: i64,
    pub received_at: i64,
    /// JSON text of the source.
    pub source: String,
    pub position: i64,
}

impl Document for EventRow {
    const COLUMNS: &'static [&'static str] = &[
        "stream_id",
        "tenant_id",
        "environment",
        "id",
        "name",
        "data",
        "ts",
        "received_at",
        "source",
        "position",
    ];

    fn key(&self) -> &str {
        &self.stream_id
    }

    fn values(&self) -> Vec<SqlValue> {
        vec![
            self.stream_id.as_str().into(),
            self.tenant_id.as_str().into(),
            self.environment.as_str().into(),
            self.id.as_str().into(),
            self.name.as_str().into(),
            self.data.as_str().into(),
            self.ts.into(),
            self.received_at.into(),
            self.source.as_str().into(),
            self.position.into(),
        ]
    }

    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            stream_id: row.try_get("stream_id")?,
            tenant_id: row.try_get("tenant_id")?,
            environment: row.try_get("environment")?,
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            data: row.try_get("data")?,
            ts: row.try_get("ts")?,
            received_at: row.try_get("received_at")?,
            source: row.try_get("source")?,
            position: row.try_get("position")?,
        })
    }
}

impl DocumentProjection for EventsProjection {
    type Doc = EventRow;
    const NAME: &'static str = "events";
    const TABLE: &'static str = "events";
    const SCHEMA: &'static str = include_str!("schema.sql");
    const SCHEMA_VERSION: u32 = 2;

    fn filter(&self) -> LogFilter {
        LogFilter::all().event_types(IncomingEvent::TYPES.iter().copied())
    }

    fn key(&self, event: &StoredEvent) -> Option<String> {
        (event.stream_type == flowforge_domain::event::STREAM_TYPE).then(|| event.stream_id.clone())
    }

    fn evolve(
        &self,
        current: Option<EventRow>,
        event: &StoredEvent,
    ) -> Result<Option<EventRow>, ProjectionError> {
        if current.is_some() {
            return Ok(current);
        }
        let IncomingEvent::Received(received) = event
            .decode()
            .map_err(|e| ProjectionError::event(event, e))?;
        Ok(Some(EventRow {
            stream_id: event.stream_id.clone(),
            tenant_id: event.tenant_id().to_owned(),
            environment: event.metadata.environment().as_str().to_owned(),
            id: received.id,
            name: received.name,
            data: received.data.to_string(),
            ts: received.ts,
            received_at: received.received_at.timestamp_millis(),
            source: serde_json::to_string(&received.source).unwrap_or_else(|_| "{}".into()),
            position: i64::try_from(event.global_position).unwrap_or(i64::MAX),
        }))
    }
}
