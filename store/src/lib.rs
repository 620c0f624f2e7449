//! The FlowForge event log.
//!
//! One append-only log of immutable events is the single source of truth. This crate
//! defines the [`EventStore`] trait that everything else talks to, and one module per
//! backend: [`postgres`] (production), [`sqlite`] (the embedded default) and, behind
//! the `esdb` feature, `esdb` (EventStoreDB/KurrentDB).
//!
//! Guarantees every backend gives (and the shared conformance suite checks):
//! - appends are atomic per call and checked against an [`ExpectedVersion`];
//! - appending an `event_id` that is already stored writes nothing and returns the
//!   original positions;
//! - stream versions are contiguous from 1; global positions are strictly increasing
//!   and are only ever *visible* in order: a reader never sees position `p` while an
//!   event at a lower position can still commit (see `docs/architecture.md`);
//! - the stored rows cannot be updated or deleted, at the database level.

mod error;
mod event;
pub mod notifier;
pub mod pool;
pub mod postgres;
pub mod secrets;
pub mod sqlite;
mod subscription;
pub mod tail;
pub mod upcast;

#[cfg(feature = "esdb")]
pub mod esdb;

use async_trait::async_trait;
use uuid::Uuid;

pub use error::StoreError;
pub use event::{
    AppendOutcome, AppendedEvent, ExpectedVersion, LogFilter, LogPage, NewEvent, StoredEvent,
};
pub use notifier::HeadWatch;
pub use secrets::SecretStore;
pub use subscription::LogSubscription;
pub use upcast::Upcasters;

/// The operations every event-log backend offers.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to one stream, atomically, if the stream is at `expected`.
    ///
    /// If the first event's `event_id` is already stored, nothing is written and the
    /// positions of the original events are returned with `already_stored = true`.
    async fn append(
        &self,
        stream_id: &str,
        stream_type: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError>;

    /// The events of one stream with `stream_version >= from_version`, in order.
    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Up to `limit` events with `global_position > after` that match `filter`, in
    /// log order, never past the position below which every event has committed.
    async fn read_all(
        &self,
        after: u64,
        limit: usize,
        filter: &LogFilter,
    ) -> Result<LogPage, StoreError>;

    /// The highest position readers may see now (every lower event has committed).
    async fn head_position(&self) -> Result<u64, StoreError>;

    async fn event_by_id(&self, event_id: Uuid) -> Result<Option<StoredEvent>, StoreError>;

    /// A watch that changes when this store or (where the backend can tell) another
    /// process has committed new events. A hint for waking readers, never a source
    /// of truth: readers always go back to [`EventStore::read_all`].
    fn head_watch(&self) -> HeadWatch;

    /// A short name for logs and metrics: `postgres`, `sqlite`, `esdb`.
    fn backend(&self) -> &'static str;

    /// The process-wide reader of the log's tail that caught-up subscribers share, for
    /// backends where reading the log per subscriber is costly. `None`: every
    /// subscriber reads for itself.
    fn shared_tail(&self) -> Option<std::sync::Arc<tail::LogTail>> {
        None
    }
}

/// Subscribes to the whole log after `after`: catch-up first, then live.
pub fn subscribe(
    store: std::sync::Arc<dyn EventStore>,
    after: u64,
    filter: LogFilter,
) -> LogSubscription {
    LogSubscription::new(store, after, filter)
}
