//! Events applications send in (`POST /api/v1/events`, `POST /e/{key}`, webhooks, cron,
//! invocations and FlowForge's own `function.finished`/`function.failed`).
//!
//! Each one is its own stream, `event-<uuid>`. An event sent with an `id` gets a stream
//! id derived from (tenant, id), so sending it again appends nothing: the log's
//! `NoStream` check is the de-duplication.
//!
//! Stream type `event`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decider::{Decider, DomainEvent};

pub const STREAM_TYPE: &str = "event";

pub fn stream_id(key: uuid::Uuid) -> String {
    format!("event-{key}")
}

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EventSource {
    /// The REST API or the CLI.
    Api,
    /// The protocol's event endpoint (`/e/{key}`), used by SDKs.
    EventKey,
    Webhook {
        webhook_id: String,
    },
    /// A cron trigger firing.
    Cron {
        function_id: String,
    },
    /// FlowForge itself (function finished/failed, invocations).
    Internal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventReceived {
    /// The event's public id (the sender's `id`, or one FlowForge generated).
    pub id: String,
    pub name: String,
    pub data: Value,
    /// The sender's timestamp, milliseconds since the Unix epoch.
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<String>,
    pub source: EventSource,
    pub received_at: DateTime<Utc>,
}

impl EventReceived {
    /// The event as SDKs receive it (`event` / `events` in a call).
    pub fn to_sdk_json(&self) -> Value {
        let mut event = serde_json::json!({
            "id": self.id,
            "name": self.name,
            "data": if self.data.is_null() { serde_json::json!({}) } else { self.data.clone() },
            "ts": self.ts,
            "user": self.user.clone().unwrap_or_else(|| serde_json::json!({})),
        });
        if let (Some(v), Some(map)) = (&self.v, event.as_object_mut()) {
            map.insert("v".into(), Value::String(v.clone()));
        }
        event
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum IncomingEvent {
    #[serde(rename = "event.received")]
    Received(EventReceived),
}

impl IncomingEvent {
    pub const TYPES: &'static [&'static str] = &["event.received"];
}

impl DomainEvent for IncomingEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            IncomingEvent::Received(_) => "event.received",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncomingError {
    #[error("an event with this id was already received")]
    Duplicate,
}

/// Recording an event: once per stream.
#[derive(Debug)]
pub struct Incoming;

impl Decider for Incoming {
    type State = Option<EventReceived>;
    type Command = EventReceived;
    type Event = IncomingEvent;
    type Error = IncomingError;

    fn initial() -> Self::State {
        None
    }

    fn evolve(_: Self::State, event: &IncomingEvent) -> Self::State {
        match event {
            IncomingEvent::Received(e) => Some(e.clone()),
        }
    }

    fn decide(
        state: &Self::State,
        command: EventReceived,
    ) -> Result<Vec<IncomingEvent>, IncomingError> {
        match state {
            Some(_) => Err(IncomingError::Duplicate),
            None => Ok(vec![IncomingEvent::Received(command)]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec;
    use serde_json::json;

    fn received() -> EventReceived {
        EventReceived {
            id: "evt-1".into(),
            name: "order/created".into(),
            data: json!({"total": 10}),
            ts: 1_800_000_000_000,
            user: None,
            v: None,
            source: EventSource::Api,
            received_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn an_event_is_recorded_once() {
        DeciderSpec::<Incoming>::given([])
            .when(received())
            .then([IncomingEvent::Received(received())]);
        DeciderSpec::<Incoming>::given([IncomingEvent::Received(received())])
            .when(received())
            .then_error(|e| *e == IncomingError::Duplicate);
    }

    #[test]
    fn sdks_get_the_event_with_the_fields_they_require() {
        let sdk = received().to_sdk_json();
        assert_eq!(sdk["id"], "evt-1");
        assert_eq!(sdk["ts"], 1_800_000_000_000i64);
        assert_eq!(sdk["user"], json!({}));
        assert!(sdk.get("v").is_none());
        let mut null_data = received();
        null_data.data = Value::Null;
        assert_eq!(null_data.to_sdk_json()["data"], json!({}));
    }

    #[test]
    fn the_stored_form_round_trips() {
        let mut e = received();
        e.source = EventSource::Webhook {
            webhook_id: "wh-1".into(),
        };
        let event = IncomingEvent::Received(e);
        let payload = event.to_payload();
        assert_eq!(payload["source"]["kind"], "webhook");
        assert_eq!(
            IncomingEvent::from_stored_json("event.received", &payload.to_string()).unwrap(),
            event
        );
    }
}
