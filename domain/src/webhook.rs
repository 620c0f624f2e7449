//! The Webhook aggregate: a URL third parties (GitHub, Stripe…) post JSON to, turned
//! into FlowForge events. Its signing secret never enters the log; the log keeps a
//! fingerprint of it, and every refused delivery.
//!
//! Stream: `webhook-<uuid>`, stream type `webhook`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::decider::{Decider, DomainEvent};

pub const STREAM_TYPE: &str = "webhook";

pub fn stream_id(id: Uuid) -> String {
    format!("webhook-{id}")
}

/// How a sender signs: `header` carries `prefix` + hex(HMAC-SHA256(secret, raw body)),
/// as GitHub does with `X-Hub-Signature-256: sha256=…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureCheck {
    pub header: String,
    #[serde(default)]
    pub prefix: String,
    /// The first 12 hex digits of SHA-256(secret), to tell secrets apart in audits.
    pub secret_fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookCreated {
    pub webhook_id: Uuid,
    pub name: String,
    /// The event name when the transform does not give one.
    pub event_name: String,
    /// A CEL expression over `body` and `headers` giving `{"name"?: …, "data"?: …}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureCheck>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRejected {
    pub status: u16,
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum WebhookEvent {
    #[serde(rename = "webhook.created")]
    Created(WebhookCreated),
    #[serde(rename = "webhook.deleted")]
    Deleted { at: DateTime<Utc> },
    #[serde(rename = "webhook.delivery_rejected")]
    DeliveryRejected(DeliveryRejected),
}

impl DomainEvent for WebhookEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            WebhookEvent::Created(_) => "webhook.created",
            WebhookEvent::Deleted { .. } => "webhook.deleted",
            WebhookEvent::DeliveryRejected(_) => "webhook.delivery_rejected",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookState {
    pub config: Option<WebhookCreated>,
    pub deleted: bool,
    pub rejected: u64,
    pub last_rejection: Option<DeliveryRejected>,
}

impl WebhookState {
    /// The webhook, if it exists and was not deleted.
    pub fn active(&self) -> Option<&WebhookCreated> {
        self.config.as_ref().filter(|_| !self.deleted)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookCommand {
    Create(WebhookCreated),
    Delete { at: DateTime<Utc> },
    RejectDelivery(DeliveryRejected),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook already exists")]
    AlreadyExists,
    #[error("no such webhook")]
    NotFound,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

#[derive(Debug)]
pub struct Webhook;

impl Decider for Webhook {
    type State = WebhookState;
    type Command = WebhookCommand;
    type Event = WebhookEvent;
    type Error = WebhookError;

    fn initial() -> WebhookState {
        WebhookState::default()
    }

    fn evolve(mut state: WebhookState, event: &WebhookEvent) -> WebhookState {
        match event {
            WebhookEvent::Created(created) => state.config = Some(created.clone()),
            WebhookEvent::Deleted { .. } => state.deleted = true,
            WebhookEvent::DeliveryRejected(rejected) => {
                state.rejected += 1;
                state.last_rejection = Some(rejected.clone());
            }
        }
        state
    }

    fn decide(
        state: &WebhookState,
        command: WebhookCommand,
    ) -> Result<Vec<WebhookEvent>, WebhookError> {
        match command {
            WebhookCommand::Create(created) => {
                if state.config.is_some() {
                    return Err(WebhookError::AlreadyExists);
                }
                if created.name.trim().is_empty() {
                    return Err(WebhookError::Invalid {
                        field: "name",
                        message: "a webhook needs a name".into(),
                    });
                }
                if created.event_name.trim().is_empty() {
                    return Err(WebhookError::Invalid {
                        field: "event_name",
                        message: "must not be empty".into(),
                    });
                }
                if let Some(signature) = &created.signature
                    && signature.header.trim().is_empty()
                {
                    return Err(WebhookError::Invalid {
                        field: "signature_header",
                        message: "must name the header that carries the signature".into(),
                    });
                }
                Ok(vec![WebhookEvent::Created(created)])
            }
            WebhookCommand::Delete { at } => match state.active() {
                Some(_) => Ok(vec![WebhookEvent::Deleted { at }]),
                None => Err(WebhookError::NotFound),
            },
            WebhookCommand::RejectDelivery(rejected) => match state.config {
                Some(_) => Ok(vec![WebhookEvent::DeliveryRejected(rejected)]),
                None => Err(WebhookError::NotFound),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn created() -> WebhookCreated {
        WebhookCreated {
            webhook_id: Uuid::from_u128(1),
            name: "github".into(),
            event_name: "github/push".into(),
            transform: Some("{'name': 'github/' + headers['x-github-event']}".into()),
            signature: Some(SignatureCheck {
                header: "x-hub-signature-256".into(),
                prefix: "sha256=".into(),
                secret_fingerprint: "0123456789ab".into(),
            }),
            at: at(),
        }
    }

    #[test]
    fn create_delete_and_record_rejections() {
        DeciderSpec::<Webhook>::given([])
            .when(WebhookCommand::Create(created()))
            .then([WebhookEvent::Created(created())]);
        DeciderSpec::<Webhook>::given([WebhookEvent::Created(created())])
            .when(WebhookCommand::Create(created()))
            .then_error(|e| *e == WebhookError::AlreadyExists);
        let rejected = DeliveryRejected {
            status: 401,
            reason: "bad signature".into(),
            at: at(),
        };
        let state = DeciderSpec::<Webhook>::given([WebhookEvent::Created(created())])
            .when(WebhookCommand::RejectDelivery(rejected.clone()))
            .then([WebhookEvent::DeliveryRejected(rejected)]);
        assert_eq!(state.rejected, 1);
        let state = DeciderSpec::<Webhook>::given([WebhookEvent::Created(created())])
            .when(WebhookCommand::Delete { at: at() })
            .then([WebhookEvent::Deleted { at: at() }]);
        assert!(state.active().is_none());
        DeciderSpec::<Webhook>::given([
            WebhookEvent::Created(created()),
            WebhookEvent::Deleted { at: at() },
        ])
        .when(WebhookCommand::Delete { at: at() })
        .then_error(|e| *e == WebhookError::NotFound);
    }

    #[test]
    fn invalid_webhooks_name_the_field() {
        let mut unnamed = created();
        unnamed.name = " ".into();
        DeciderSpec::<Webhook>::given([])
            .when(WebhookCommand::Create(unnamed))
            .then_error(|e| matches!(e, WebhookError::Invalid { field: "name", .. }));
        let mut no_header = created();
        if let Some(s) = no_header.signature.as_mut() {
            s.header = String::new();
        }
        DeciderSpec::<Webhook>::given([])
            .when(WebhookCommand::Create(no_header))
            .then_error(|e| {
                matches!(
                    e,
                    WebhookError::Invalid {
                        field: "signature_header",
                        ..
                    }
                )
            });
    }

    #[test]
    fn events_round_trip() {
        for event in [
            WebhookEvent::Created(created()),
            WebhookEvent::Deleted { at: at() },
            WebhookEvent::DeliveryRejected(DeliveryRejected {
                status: 400,
                reason: "x".into(),
                at: at(),
            }),
        ] {
            let payload = event.to_payload();
            assert_eq!(
                WebhookEvent::from_stored_json(event.event_type(), &payload.to_string()).unwrap(),
                event
            );
        }
    }
}
