//! Recording incoming events. One append per event; an event whose `id` was seen
//! before (for this tenant) is accepted again without being recorded or run twice.

use chrono::Utc;
use flowforge_commands::CommandError;
use flowforge_domain::event::{EventReceived, EventSource, Incoming, IncomingError};
use flowforge_domain::{EventMetadata, TenantId};
use serde_json::Value;
use uuid::Uuid;

use crate::{EngineContext, ids};

/// An event as a sender gives it (already validated by the API).
#[derive(Debug, Clone)]
pub struct NewIncomingEvent {
    pub id: Option<String>,
    pub name: String,
    pub data: Value,
    pub ts: Option<i64>,
    pub user: Option<Value>,
    pub v: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    #[error("could not record the event: {0}")]
    Failed(String),
}

/// Records events; returns their public ids in order. Events of one call are appended
/// concurrently (each is its own stream).
pub async fn record(
    context: &EngineContext,
    metadata: &EventMetadata,
    events: Vec<NewIncomingEvent>,
    source: EventSource,
) -> Result<Vec<String>, IngestError> {
    record_seeded(context, metadata, events, source, None).await
}

/// [`record`], with the id seed of a request that a client may retry (Inngest's
/// `x-inngest-event-id-seed`): events without an id get ids derived from it, so a retry
/// answers the same ids and records nothing twice.
pub async fn record_seeded(
    context: &EngineContext,
    metadata: &EventMetadata,
    events: Vec<NewIncomingEvent>,
    source: EventSource,
    id_seed: Option<&str>,
) -> Result<Vec<String>, IngestError> {
    let tenant = metadata.tenant_id.clone();
    let appends = events.into_iter().enumerate().map(|(index, event)| {
        let metadata = metadata.clone();
        let source = source.clone();
        let tenant = tenant.clone();
        let seeded = id_seed.and_then(|seed| ids::seeded_event_key(tenant.as_str(), seed, index));
        async move { record_one(context, &tenant, metadata, event, source, seeded).await }
    });
    futures::future::try_join_all(appends).await
}

async fn record_one(
    context: &EngineContext,
    tenant: &TenantId,
    metadata: EventMetadata,
    event: NewIncomingEvent,
    source: EventSource,
    seeded: Option<Uuid>,
) -> Result<String, IngestError> {
    let now = Utc::now();
    let (key, id) = match event.id.filter(|id| !id.is_empty()) {
        Some(id) => (ids::event_key(tenant.as_str(), &id), id),
        None => {
            let key = seeded.unwrap_or_else(Uuid::now_v7);
            (key, key.to_string())
        }
    };
    let received = EventReceived {
        id: id.clone(),
        name: event.name,
        data: event.data,
        ts: event.ts.unwrap_or_else(|| now.timestamp_millis()),
        user: event.user,
        v: event.v,
        source,
        received_at: now,
    };
    append(context, &key, metadata.with_correlation(key), received).await?;
    Ok(id)
}

/// Appends one `event.received` to its stream; a duplicate is not an error.
pub async fn append(
    context: &EngineContext,
    key: &Uuid,
    metadata: EventMetadata,
    received: EventReceived,
) -> Result<(), IngestError> {
    let stream = flowforge_domain::event::stream_id(*key);
    match context
        .commands
        // Most events are new; a duplicate id costs a conflict and a read instead.
        .handle_new::<Incoming>(&stream, &metadata, || received.clone())
        .await
    {
        Ok(_) | Err(CommandError::Domain(IncomingError::Duplicate)) => Ok(()),
        // Two senders raced with the same id: the other one recorded it.
        Err(CommandError::Contention { .. }) => Ok(()),
        Err(CommandError::Store(e)) if e.is_transient() => {
            Err(IngestError::Unavailable(e.to_string()))
        }
        Err(e) => Err(IngestError::Failed(e.to_string())),
    }
}
