//! The command side of FlowForge.
//!
//! A command is handled by loading its aggregate's stream, folding the events into
//! state, asking the pure decider for new events, and appending them with the
//! stream's version as the expected version. If another writer appended first, the
//! append is refused with a conflict and the whole cycle runs again on the new state,
//! a bounded number of times; the decider sees every concurrent change, so nothing is
//! overwritten and nothing is silently dropped.

use std::sync::Arc;

use flowforge_domain::{Decider, DomainEvent, EventDecodeError, EventMetadata};
use flowforge_store::{AppendedEvent, EventStore, ExpectedVersion, NewEvent, StoreError};

/// How many times a command is re-decided after losing an append race.
pub const DEFAULT_MAX_ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The decider refused the command.
    #[error(transparent)]
    Domain(E),
    /// Other writers kept winning the race for the stream.
    #[error("stream `{stream_id}` kept changing; gave up after {attempts} attempts")]
    Contention { stream_id: String, attempts: usize },
    #[error("stream `{stream_id}` holds an event this version cannot read: {source}")]
    Decode {
        stream_id: String,
        #[source]
        source: EventDecodeError,
    },
    #[error(transparent)]
    Store(StoreError),
}

/// What handling a command did.
#[derive(Debug)]
pub struct Handled<D: Decider> {
    /// The state after the new events.
    pub state: D::State,
    /// The new events (empty if the decider decided nothing).
    pub events: Vec<D::Event>,
    /// Where they were stored.
    pub appended: Vec<AppendedEvent>,
    /// The stream's version after the command.
    pub stream_version: u64,
}

/// Loaded state of one stream at one version.
#[derive(Debug, Clone)]
pub struct Loaded<S> {
    pub state: S,
    pub version: u64,
}

#[derive(Clone)]
pub struct CommandHandler {
    store: Arc<dyn EventStore>,
    max_attempts: usize,
}

impl CommandHandler {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    pub fn with_max_attempts(mut self, max_attempts: usize) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Folds a stream into its current state.
    pub async fn load<D>(&self, stream_id: &str) -> Result<Loaded<D::State>, CommandError<D::Error>>
    where
        D: Decider,
        D::Event: DomainEvent,
        D::Error: 'static,
    {
        let stored = self
            .store
            .read_stream(stream_id, 1)
            .await
            .map_err(CommandError::Store)?;
        let mut state = D::initial();
        let mut version = 0;
        for event in &stored {
            let decoded = event
                .decode::<D::Event>()
                .map_err(|source| CommandError::Decode {
                    stream_id: stream_id.to_owned(),
                    source,
                })?;
            state = D::evolve(state, &decoded);
            version = event.stream_version;
        }
        Ok(Loaded { state, version })
    }

    /// Handles `command` against the stream's current state.
    ///
    /// `command` is called once per attempt so that a re-decision after a conflict gets
    /// a fresh command value (commands carry owned data).
    pub async fn handle<D>(
        &self,
        stream_id: &str,
        metadata: &EventMetadata,
        command: impl Fn() -> D::Command,
    ) -> Result<Handled<D>, CommandError<D::Error>>
    where
        D: Decider,
        D::Event: DomainEvent,
        D::Error: 'static,
    {
        self.handle_from::<D>(stream_id, metadata, None, command)
            .await
    }

    /// Like [`CommandHandler::handle`], for a stream that almost certainly does not exist
    /// yet (its id was just minted): decides against the initial state without reading
    /// the stream. If the stream does exist after all, the append meets a conflict and
    /// the command is decided again against the stream, as with any stale state.
    pub async fn handle_new<D>(
        &self,
        stream_id: &str,
        metadata: &EventMetadata,
        command: impl Fn() -> D::Command,
    ) -> Result<Handled<D>, CommandError<D::Error>>
    where
        D: Decider,
        D::Event: DomainEvent,
        D::Error: 'static,
    {
        let nothing_yet = Loaded {
            state: D::initial(),
            version: 0,
        };
        self.handle_from::<D>(stream_id, metadata, Some(nothing_yet), command)
            .await
    }

    /// Like [`CommandHandler::handle`], starting from a state the caller already holds
    /// (for example one it cached after its previous command). A stale state costs one
    /// conflict and a reload; it can never cause a wrong decision.
    pub async fn handle_from<D>(
        &self,
        stream_id: &str,
        metadata: &EventMetadata,
        mut known: Option<Loaded<D::State>>,
        command: impl Fn() -> D::Command,
    ) -> Result<Handled<D>, CommandError<D::Error>>
    where
        D: Decider,
        D::Event: DomainEvent,
        D::Error: 'static,
    {
        for attempt in 1..=self.max_attempts {
            let Loaded { state, version } = match known.take() {
                Some(loaded) => loaded,
                None => self.load::<D>(stream_id).await?,
            };
            let events = D::decide(&state, command()).map_err(CommandError::Domain)?;
            if events.is_empty() {
                return Ok(Handled {
                    state,
                    events,
                    appended: Vec::new(),
                    stream_version: version,
                });
            }
            let new_events: Vec<NewEvent> = events
                .iter()
                .map(|e| NewEvent::from_domain(e, metadata.clone()))
                .collect();
            let expected = if version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(version)
            };
            match self
                .store
                .append(stream_id, D::Event::STREAM_TYPE, expected, new_events)
                .await
            {
                Ok(outcome) => {
                    let state = events.iter().fold(state, D::evolve);
                    return Ok(Handled {
                        state,
                        stream_version: outcome.stream_version(),
                        appended: outcome.events,
                        events,
                    });
                }
                Err(StoreError::Conflict { actual, .. }) => {
                    tracing::debug!(
                        stream_id,
                        attempt,
                        expected = version,
                        actual,
                        "append conflict; re-deciding"
                    );
                }
                Err(error) => return Err(CommandError::Store(error)),
            }
        }
        Err(CommandError::Contention {
            stream_id: stream_id.to_owned(),
            attempts: self.max_attempts,
        })
    }
}
