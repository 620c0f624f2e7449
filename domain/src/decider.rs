//! The Decider shape every aggregate follows, and the contract between domain events and the log.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

/// A pure aggregate: fold events into state, decide new events from state and a command.
///
/// `decide` must not read clocks, generate ids or do IO; anything time- or
/// randomness-dependent arrives inside the command, so that a decision can be replayed
/// and unit-tested exactly.
pub trait Decider {
    type State;
    type Command;
    type Event;
    type Error: std::error::Error;

    fn initial() -> Self::State;
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
    fn decide(state: &Self::State, command: Self::Command)
    -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds a sequence of events from the initial state.
    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(Self::initial(), Self::evolve)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventDecodeError {
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("event `{event_type}` has a payload that does not match its schema: {source}")]
    Payload {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
}

/// An event type of one aggregate, as stored in the log.
///
/// Implementors are serde enums tagged adjacently (`#[serde(tag = "type", content =
/// "data")]`) whose variant names are the stable, dotted `event_type`s; the variant's
/// content is the stored payload. Event types are never renamed: a changed shape gets
/// a new `schema_version` and an upcaster in the store.
pub trait DomainEvent: Sized + Serialize + DeserializeOwned {
    /// The `stream_type` of the streams these events are appended to.
    const STREAM_TYPE: &'static str;

    fn event_type(&self) -> &'static str;

    /// The current schema version of this event's payload.
    fn schema_version(&self) -> u32 {
        1
    }

    fn to_payload(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut tagged)) => tagged
                .remove("data")
                .unwrap_or_else(|| Value::Object(Map::new())),
            // A DomainEvent enum is always an adjacently tagged object; anything else is a
            // programming error that the round-trip unit tests of each aggregate catch.
            _ => Value::Object(Map::new()),
        }
    }

    /// Decodes a stored payload given as JSON text, parsing it once, straight into the
    /// event type (no intermediate `Value`).
    fn from_stored_json(event_type: &str, payload: &str) -> Result<Self, EventDecodeError> {
        let trimmed = payload.trim();
        let tag =
            serde_json::to_string(event_type).map_err(|source| EventDecodeError::Payload {
                event_type: event_type.to_owned(),
                source,
            })?;
        let tagged = if trimmed == "{}" {
            format!("{{\"type\":{tag}}}")
        } else {
            format!("{{\"type\":{tag},\"data\":{trimmed}}}")
        };
        match serde_json::from_str(&tagged) {
            Ok(event) => Ok(event),
            // Unusual shapes (empty struct variants) take the slower, more forgiving path.
            Err(_) => {
                let value: Value =
                    serde_json::from_str(trimmed).map_err(|source| EventDecodeError::Payload {
                        event_type: event_type.to_owned(),
                        source,
                    })?;
                Self::from_stored(event_type, value)
            }
        }
    }

    fn from_stored(event_type: &str, payload: Value) -> Result<Self, EventDecodeError> {
        let mut tagged = Map::with_capacity(2);
        tagged.insert("type".to_owned(), Value::String(event_type.to_owned()));
        let empty_unit = matches!(&payload, Value::Object(m) if m.is_empty());
        if !empty_unit {
            tagged.insert("data".to_owned(), payload);
        }
        serde_json::from_value(Value::Object(tagged.clone()))
            .or_else(|first| {
                // Unit variants are stored as `{}`; struct variants that happen to be empty
                // need `data` present. Try the other form before giving up.
                if empty_unit {
                    tagged.insert("data".to_owned(), Value::Object(Map::new()));
                    serde_json::from_value(Value::Object(tagged)).map_err(|_| first)
                } else {
                    Err(first)
                }
            })
            .map_err(|source| {
                if source.to_string().starts_with("unknown variant") {
                    EventDecodeError::UnknownType(event_type.to_owned())
                } else {
                    EventDecodeError::Payload {
                        event_type: event_type.to_owned(),
                        source,
                    }
                }
            })
    }
}

/// Given-events / when-command / then-events specifications for deciders.
pub mod spec {
    use super::Decider;
    use std::fmt::Debug;

    pub struct DeciderSpec<D: Decider> {
        given: Vec<D::Event>,
    }

    pub struct WhenSpec<D: Decider> {
        state: D::State,
        result: Result<Vec<D::Event>, D::Error>,
    }

    impl<D: Decider> DeciderSpec<D> {
        pub fn given(events: impl IntoIterator<Item = D::Event>) -> Self {
            Self {
                given: events.into_iter().collect(),
            }
        }

        pub fn when(self, command: D::Command) -> WhenSpec<D> {
            let state = D::fold(self.given.iter());
            let result = D::decide(&state, command);
            WhenSpec { state, result }
        }
    }

    impl<D: Decider> WhenSpec<D>
    where
        D::Event: Debug + PartialEq,
        D::Error: Debug,
    {
        #[track_caller]
        pub fn then(self, expected: impl IntoIterator<Item = D::Event>) -> D::State {
            let expected: Vec<D::Event> = expected.into_iter().collect();
            match self.result {
                Ok(events) => {
                    assert_eq!(
                        events, expected,
                        "decided events differ from the expected ones"
                    );
                    events.iter().fold(self.state, D::evolve)
                }
                Err(error) => panic!("expected events {expected:?}, got error {error:?}"),
            }
        }

        #[track_caller]
        pub fn then_nothing_happens(self) {
            match self.result {
                Ok(events) => assert!(events.is_empty(), "expected no events, got {events:?}"),
                Err(error) => panic!("expected no events, got error {error:?}"),
            }
        }

        #[track_caller]
        pub fn then_error(self, check: impl FnOnce(&D::Error) -> bool) {
            match self.result {
                Ok(events) => panic!("expected an error, got events {events:?}"),
                Err(error) => assert!(check(&error), "unexpected error {error:?}"),
            }
        }

        /// The decided events, for assertions that need to look inside them.
        #[track_caller]
        pub fn events(self) -> Vec<D::Event> {
            match self.result {
                Ok(events) => events,
                Err(error) => panic!("expected events, got error {error:?}"),
            }
        }
    }
}
