use chrono::{DateTime, Utc};
use flowforge_domain::{DomainEvent, EventMetadata};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

/// The version a stream must be at for an append to go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist (any version).
    StreamExists,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// The wire code used by the SQL backends: -1 any, -2 no stream, -3 exists, n exact.
    pub(crate) fn code(self) -> i64 {
        match self {
            ExpectedVersion::Any => -1,
            ExpectedVersion::NoStream => -2,
            ExpectedVersion::StreamExists => -3,
            ExpectedVersion::Exact(n) => i64::try_from(n).unwrap_or(i64::MAX),
        }
    }

    pub fn accepts(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::StreamExists => current > 0,
            ExpectedVersion::Exact(n) => current == n,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(n) => write!(f, "{n}"),
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Value,
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// A new event with a fresh UUIDv7 id.
    pub fn new(event_type: impl Into<String>, payload: Value, metadata: EventMetadata) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            payload,
            metadata,
        }
    }

    pub fn from_domain<E: DomainEvent>(event: &E, metadata: EventMetadata) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload: event.to_payload(),
            metadata,
        }
    }

    pub fn with_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }

    pub fn with_schema_version(mut self, schema_version: u32) -> Self {
        self.schema_version = schema_version;
        self
    }
}

/// An event as the log holds it.
///
/// The payload stays the JSON text it was stored as: readers that do not need it never
/// parse it, and typed decoding parses it once, straight into the event type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    pub event_id: Uuid,
    pub stream_id: String,
    pub stream_type: String,
    pub stream_version: u64,
    pub global_position: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Box<RawValue>,
    pub metadata: EventMetadata,
    pub recorded_at: DateTime<Utc>,
}

impl PartialEq for StoredEvent {
    fn eq(&self, other: &Self) -> bool {
        self.event_id == other.event_id
            && self.stream_id == other.stream_id
            && self.stream_type == other.stream_type
            && self.stream_version == other.stream_version
            && self.global_position == other.global_position
            && self.event_type == other.event_type
            && self.schema_version == other.schema_version
            && self.payload.get() == other.payload.get()
            && self.metadata == other.metadata
            && self.recorded_at == other.recorded_at
    }
}

impl StoredEvent {
    /// Decodes the payload into an aggregate's event type.
    pub fn decode<E: DomainEvent>(&self) -> Result<E, flowforge_domain::EventDecodeError> {
        E::from_stored_json(&self.event_type, self.payload.get())
    }

    /// The payload as a JSON value (parses it).
    pub fn payload_value(&self) -> Value {
        serde_json::from_str(self.payload.get()).unwrap_or(Value::Null)
    }

    pub fn tenant_id(&self) -> &str {
        self.metadata.tenant_id.as_str()
    }
}

/// Where one appended event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedEvent {
    pub stream_version: u64,
    pub global_position: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub events: Vec<AppendedEvent>,
    /// True when the events were already stored by an earlier append (an idempotent retry).
    pub already_stored: bool,
}

impl AppendOutcome {
    /// The stream's version after the append.
    pub fn stream_version(&self) -> u64 {
        self.events.last().map_or(0, |e| e.stream_version)
    }

    pub fn last_position(&self) -> u64 {
        self.events.last().map_or(0, |e| e.global_position)
    }
}

/// Which events a log read or subscription wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    pub tenant_id: Option<String>,
    /// Only these event types (exact names).
    pub event_types: Option<Vec<String>>,
}

impl LogFilter {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    pub fn event_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    pub fn matches(&self, event: &StoredEvent) -> bool {
        self.tenant_id
            .as_deref()
            .is_none_or(|t| t == event.tenant_id())
            && self
                .event_types
                .as_ref()
                .is_none_or(|types| types.contains(&event.event_type))
    }
}

/// A page of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    pub events: Vec<StoredEvent>,
    /// The position up to which the log was examined. With a filter this can be
    /// past the last returned event; the next read continues after it.
    pub scanned_to: u64,
}

pub(crate) fn validate_batch(events: &[NewEvent]) -> Result<&str, crate::StoreError> {
    let first = events.first().ok_or(crate::StoreError::InvalidAppend(
        "an append needs at least one event",
    ))?;
    let tenant = first.metadata.tenant_id.as_str();
    if tenant.is_empty() {
        return Err(crate::StoreError::InvalidAppend(
            "tenant_id must not be empty",
        ));
    }
    for event in events {
        if event.metadata.tenant_id.as_str() != tenant {
            return Err(crate::StoreError::InvalidAppend(
                "all events of one append must belong to one tenant",
            ));
        }
        if event.event_type.is_empty() {
            return Err(crate::StoreError::InvalidAppend(
                "event_type must not be empty",
            ));
        }
        if event.schema_version == 0 {
            return Err(crate::StoreError::InvalidAppend(
                "schema_version starts at 1",
            ));
        }
    }
    Ok(tenant)
}
