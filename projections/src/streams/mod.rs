//! `streams`: a catalogue of every stream in the log (type, tenant, version, first and
//! last position), for investigators who want to know what exists before they read it.

use flowforge_store::StoredEvent;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::ProjectionError;
use crate::document::{Document, DocumentProjection, SqlValue};

pub struct StreamsProjection;

#[derive(Debug, Clone, PartialEq)]
pub struct StreamRow {
    pub stream_id: String,
    pub stream_type: String,
    pub tenant_id: String,
    pub version: i64,
    pub first_position: i64,
    pub last_position: i64,
    pub last_event: String,
    /// Milliseconds since the Unix epoch (recorded_at of the first event).
    pub created_at: i64,
    pub updated_at: i64,
}

impl Document for StreamRow {
    const COLUMNS: &'static [&'static str] = &[
        "stream_id",
        "stream_type",
        "tenant_id",
        "version",
        "first_position",
        "last_position",
        "last_event",
        "created_at",
        "updated_at",
    ];

    fn key(&self) -> &str {
        &self.stream_id
    }

    fn values(&self) -> Vec<SqlValue> {
        vec![
            self.stream_id.as_str().into(),
            self.stream_type.as_str().into(),
            self.tenant_id.as_str().into(),
            self.version.into(),
            self.first_position.into(),
            self.last_position.into(),
            self.last_event.as_str().into(),
            self.created_at.into(),
            self.updated_at.into(),
        ]
    }

    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            stream_id: row.try_get("stream_id")?,
            stream_type: row.try_get("stream_type")?,
            tenant_id: row.try_get("tenant_id")?,
            version: row.try_get("version")?,
            first_position: row.try_get("first_position")?,
            last_position: row.try_get("last_position")?,
            last_event: row.try_get("last_event")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

impl DocumentProjection for StreamsProjection {
    type Doc = StreamRow;
    const NAME: &'static str = "streams";
    const TABLE: &'static str = "streams";
    const SCHEMA: &'static str = include_str!("schema.sql");
    const SCHEMA_VERSION: u32 = 1;

    fn key(&self, event: &StoredEvent) -> Option<String> {
        Some(event.stream_id.clone())
    }

    fn evolve(
        &self,
        current: Option<StreamRow>,
        event: &StoredEvent,
    ) -> Result<Option<StreamRow>, ProjectionError> {
        let position = i64::try_from(event.global_position).unwrap_or(i64::MAX);
        let at = event.recorded_at.timestamp_millis();
        let mut row = current.unwrap_or_else(|| StreamRow {
            stream_id: event.stream_id.clone(),
            stream_type: event.stream_type.clone(),
            tenant_id: event.tenant_id().to_owned(),
            version: 0,
            first_position: position,
            last_position: position,
            last_event: String::new(),
            created_at: at,
            updated_at: at,
        });
        row.version = i64::try_from(event.stream_version).unwrap_or(i64::MAX);
        row.last_position = position;
        row.last_event = event.event_type.clone();
        row.updated_at = at;
        Ok(Some(row))
    }
}
