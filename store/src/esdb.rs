//! The EventStoreDB/KurrentDB event log (optional, cargo feature `esdb`).
//!
//! Mapping onto the server's model:
//! - `stream_version` is the server's revision + 1; `global_position` is the commit
//!   position in `$all` (strictly increasing, not contiguous);
//! - `stream_type`, `schema_version`, `tenant_id` and our metadata travel in the
//!   event's custom metadata;
//! - idempotency is the server's own: an append whose event ids were already written
//!   with the same expected revision succeeds without writing. The server does not say
//!   whether that happened, so `already_stored` is always `false` here;
//! - `event_by_id` scans `$all` (the server has no index by id); fine for audits, not
//!   for hot paths.
//!
//! No EventStoreDB can be installed on FlowForge's CI machine: this module is compiled
//! there, and the conformance suite runs against it only where
//! `FLOWFORGE_TEST_ESDB_URL` points at a server.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventstore::{
    AppendToStreamOptions, Client, ClientSettings, EventData, ExpectedRevision, Position,
    ReadAllOptions, ReadStreamOptions, RecordedEvent, StreamPosition, SubscribeToAllOptions,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::notifier::HeadNotifier;
use crate::{
    AppendOutcome, AppendedEvent, EventStore, ExpectedVersion, HeadWatch, LogFilter, LogPage,
    NewEvent, StoreError, StoredEvent, Upcasters, event::validate_batch,
};

/// What FlowForge keeps in each event's custom metadata.
#[derive(Serialize, Deserialize)]
struct Envelope {
    stream_type: String,
    schema_version: u32,
    metadata: flowforge_domain::EventMetadata,
}

#[derive(Clone)]
pub struct EsdbEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    notifier: HeadNotifier,
    upcasters: Upcasters,
}

fn backend_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl EsdbEventStore {
    /// Connects with a connection string such as `esdb://localhost:2113?tls=false`.
    pub async fn connect(url: &str, upcasters: Upcasters) -> Result<Self, StoreError> {
        let settings: ClientSettings = url.parse().map_err(backend_error)?;
        let client = Client::new(settings).map_err(backend_error)?;
        let store = Self {
            inner: Arc::new(Inner {
                client,
                notifier: HeadNotifier::new(0),
                upcasters,
            }),
        };
        let head = store.head_position().await?;
        store.inner.notifier.advance(head);
        tokio::spawn(watch_head(Arc::downgrade(&store.inner)));
        Ok(store)
    }

    fn decode(&self, recorded: &RecordedEvent) -> Result<StoredEvent, StoreError> {
        let position = recorded.position.commit;
        let corrupt = |reason: String| StoreError::Corrupt { position, reason };
        let envelope: Envelope = serde_json::from_slice(&recorded.custom_metadata)
            .map_err(|e| corrupt(format!("custom metadata: {e}")))?;
        let mut event = StoredEvent {
            event_id: recorded.id,
            stream_id: recorded.stream_id.clone(),
            stream_type: envelope.stream_type,
            stream_version: recorded.revision + 1,
            global_position: position,
            event_type: recorded.event_type.clone(),
            schema_version: envelope.schema_version,
            payload: serde_json::from_slice(&recorded.data)
                .map_err(|e| corrupt(format!("payload: {e}")))?,
            metadata: envelope.metadata,
            recorded_at: recorded.created,
        };
        self.inner.upcasters.apply(&mut event);
        Ok(event)
    }

    async fn current_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        let options = ReadStreamOptions::default()
            .position(StreamPosition::End)
            .backwards()
            .max_count(1);
        let mut read = match self.inner.client.read_stream(stream_id, &options).await {
            Ok(read) => read,
            Err(eventstore::Error::ResourceNotFound) => return Ok(0),
            Err(e) => return Err(backend_error(e)),
        };
        match read.next().await {
            Ok(Some(event)) => Ok(event.get_original_event().revision + 1),
            Ok(None) | Err(eventstore::Error::ResourceNotFound) => Ok(0),
            Err(e) => Err(backend_error(e)),
        }
    }
}

/// Advances the notifier from a live subscription to `$all`; reconnects on error.
async fn watch_head(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let options = SubscribeToAllOptions::default().position(StreamPosition::End);
        let mut subscription = strong.client.subscribe_to_all(&options).await;
        let notifier = strong.notifier.clone();
        drop(strong);
        loop {
            match subscription.next().await {
                Ok(event) => notifier.advance(event.get_original_event().position.commit),
                Err(error) => {
                    tracing::debug!(%error, "esdb subscription dropped; resubscribing");
                    break;
                }
            }
            if inner.strong_count() == 0 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[async_trait]
impl EventStore for EsdbEventStore {
    async fn append(
        &self,
        stream_id: &str,
        stream_type: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        validate_batch(&events)?;
        let current = self.current_version(stream_id).await?;
        if current > 0 {
            // The stream type is not part of the server's model; check it ourselves.
            let first = self.read_stream(stream_id, current).await?;
            if let Some(actual) = first.first().map(|e| e.stream_type.clone())
                && actual != stream_type
            {
                return Err(StoreError::StreamTypeMismatch {
                    stream_id: stream_id.to_owned(),
                    actual,
                    requested: stream_type.to_owned(),
                });
            }
        }
        let count = events.len() as u64;
        let mut data = Vec::with_capacity(events.len());
        for event in events {
            let envelope = Envelope {
                stream_type: stream_type.to_owned(),
                schema_version: event.schema_version,
                metadata: event.metadata,
            };
            data.push(
                EventData::json(&event.event_type, &event.payload)
                    .and_then(|d| d.metadata_as_json(&envelope))
                    .map_err(backend_error)?
                    .id(event.event_id),
            );
        }
        let revision = match expected {
            ExpectedVersion::Any => ExpectedRevision::Any,
            ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => ExpectedRevision::NoStream,
            ExpectedVersion::StreamExists => ExpectedRevision::StreamExists,
            ExpectedVersion::Exact(n) => ExpectedRevision::Exact(n - 1),
        };
        let options = AppendToStreamOptions::default().expected_revision(revision);
        match self
            .inner
            .client
            .append_to_stream(stream_id, &options, data)
            .await
        {
            Ok(result) => {
                let last_version = result.next_expected_version + 1;
                let first_version = last_version + 1 - count;
                // The server reports only the commit position of the write; every event
                // of one append shares it, so positions are reported as that position.
                let position = result.position.commit;
                self.inner.notifier.advance(position);
                Ok(AppendOutcome {
                    events: (first_version..=last_version)
                        .map(|v| AppendedEvent {
                            stream_version: v,
                            global_position: position,
                        })
                        .collect(),
                    already_stored: false,
                })
            }
            Err(eventstore::Error::WrongExpectedVersion { current, .. }) => {
                Err(StoreError::Conflict {
                    stream_id: stream_id.to_owned(),
                    expected,
                    actual: match current {
                        eventstore::CurrentRevision::Current(r) => r + 1,
                        eventstore::CurrentRevision::NoStream => 0,
                    },
                })
            }
            Err(e) => Err(backend_error(e)),
        }
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let options = ReadStreamOptions::default()
            .forwards()
            .position(StreamPosition::Position(from_version.saturating_sub(1)))
            .max_count(usize::MAX);
        let mut read = match self.inner.client.read_stream(stream_id, &options).await {
            Ok(read) => read,
            Err(eventstore::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(backend_error(e)),
        };
        let mut events = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(resolved)) => events.push(self.decode(resolved.get_original_event())?),
                Ok(None) | Err(eventstore::Error::ResourceNotFound) => break,
                Err(e) => return Err(backend_error(e)),
            }
        }
        Ok(events)
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
        filter: &LogFilter,
    ) -> Result<LogPage, StoreError> {
        let start = if after == 0 {
            StreamPosition::Start
        } else {
            StreamPosition::Position(Position {
                commit: after,
                prepare: after,
            })
        };
        let options = ReadAllOptions::default()
            .forwards()
            .position(start)
            .max_count(limit.saturating_mul(4).max(64));
        let mut read = self
            .inner
            .client
            .read_all(&options)
            .await
            .map_err(backend_error)?;
        let mut events = Vec::new();
        let mut scanned_to = after;
        while events.len() < limit {
            let Some(resolved) = read.next().await.map_err(backend_error)? else {
                break;
            };
            let recorded = resolved.get_original_event();
            if recorded.position.commit <= after {
                continue;
            }
            scanned_to = recorded.position.commit;
            // Server-internal events ($metadata, $stats…) are not part of FlowForge's log.
            if recorded.event_type.starts_with('$') || recorded.stream_id.starts_with('$') {
                continue;
            }
            let event = self.decode(recorded)?;
            if filter.matches(&event) {
                events.push(event);
            }
        }
        Ok(LogPage { events, scanned_to })
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        let options = ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(1);
        let mut read = self
            .inner
            .client
            .read_all(&options)
            .await
            .map_err(backend_error)?;
        Ok(read
            .next()
            .await
            .map_err(backend_error)?
            .map_or(0, |e| e.get_original_event().position.commit))
    }

    async fn event_by_id(&self, event_id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        let mut after = 0;
        loop {
            let page = self.read_all(after, 1_000, &LogFilter::all()).await?;
            if let Some(found) = page.events.iter().find(|e| e.event_id == event_id) {
                return Ok(Some(found.clone()));
            }
            if page.scanned_to == after {
                return Ok(None);
            }
            after = page.scanned_to;
        }
    }

    fn head_watch(&self) -> HeadWatch {
        self.inner.notifier.watch()
    }

    fn backend(&self) -> &'static str {
        "esdb"
    }
}
