//! The ApiKey aggregate: a credential an application uses, with its scopes.
//!
//! A key reads `ff_{live|test|ro}_{id}{secret}`: `id` (12 base62 characters) names the
//! key's stream, `secret` (32 base62 characters, ~190 bits) proves possession. Only a
//! hash of the whole key is kept, in the secret store; the log keeps the key's
//! displayable prefix (`ff_live_{id}`), never the key or its hash.
//!
//! Stream: `api_key-<id>`, stream type `api_key`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use crate::access::Scope;
use crate::decider::{Decider, DomainEvent};

pub const STREAM_TYPE: &str = "api_key";
pub const ID_LEN: usize = 12;
pub const SECRET_LEN: usize = 32;

pub const STREAM_PREFIX: &str = "api_key-";

pub fn stream_id(key_id: &str) -> String {
    format!("{STREAM_PREFIX}{key_id}")
}

/// Where a key acts: `live` and `ro` keys in the tenant's live environment, `test` keys
/// in its test environment; `ro` keys may hold read scopes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Live,
    Test,
    Ro,
}

impl KeyKind {
    pub const ALL: [KeyKind; 3] = [KeyKind::Live, KeyKind::Test, KeyKind::Ro];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Live => "live",
            KeyKind::Test => "test",
            KeyKind::Ro => "ro",
        }
    }

    pub fn parse(value: &str) -> Option<KeyKind> {
        KeyKind::ALL.into_iter().find(|k| k.as_str() == value)
    }

    /// The environment a key acts in: `test` keys in the test one, the rest in live.
    pub fn environment(self) -> crate::Environment {
        match self {
            KeyKind::Test => crate::Environment::Test,
            KeyKind::Live | KeyKind::Ro => crate::Environment::Live,
        }
    }
}

/// The parts of a presented key, if it has the shape of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub kind: KeyKind,
    pub id: &'a str,
    pub secret: &'a str,
}

pub fn parse_key(key: &str) -> Option<PresentedKey<'_>> {
    let rest = key.strip_prefix("ff_")?;
    let (kind, body) = rest.split_once('_')?;
    let kind = KeyKind::parse(kind)?;
    if body.len() != ID_LEN + SECRET_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let (id, secret) = body.split_at(ID_LEN);
    Some(PresentedKey { kind, id, secret })
}

/// What a listing shows of a key: enough to recognise it, not enough to use it.
pub fn display_prefix(kind: KeyKind, id: &str) -> String {
    format!("ff_{}_{id}", kind.as_str())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    pub key_id: String,
    pub tenant: String,
    pub kind: KeyKind,
    pub name: String,
    pub scopes: BTreeSet<Scope>,
    pub prefix: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ApiKeyEvent {
    #[serde(rename = "api_key.created")]
    Created(ApiKeyCreated),
    #[serde(rename = "api_key.revoked")]
    Revoked { at: DateTime<Utc> },
}

impl DomainEvent for ApiKeyEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            ApiKeyEvent::Created(_) => "api_key.created",
            ApiKeyEvent::Revoked { .. } => "api_key.revoked",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeyState {
    pub key: Option<ApiKeyCreated>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyState {
    /// The key, if it exists and was not revoked.
    pub fn active(&self) -> Option<&ApiKeyCreated> {
        self.key.as_ref().filter(|_| self.revoked_at.is_none())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyCommand {
    Create(ApiKeyCreated),
    Revoke { at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("an API key with this id already exists")]
    AlreadyExists,
    #[error("no such API key")]
    NotFound,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ApiKeyError {
    ApiKeyError::Invalid {
        field,
        message: message.into(),
    }
}

#[derive(Debug)]
pub struct ApiKey;

impl Decider for ApiKey {
    type State = ApiKeyState;
    type Command = ApiKeyCommand;
    type Event = ApiKeyEvent;
    type Error = ApiKeyError;

    fn initial() -> ApiKeyState {
        ApiKeyState::default()
    }

    fn evolve(mut state: ApiKeyState, event: &ApiKeyEvent) -> ApiKeyState {
        match event {
            ApiKeyEvent::Created(created) => state.key = Some(created.clone()),
            ApiKeyEvent::Revoked { at } => state.revoked_at = Some(*at),
        }
        state
    }

    fn decide(
        state: &ApiKeyState,
        command: ApiKeyCommand,
    ) -> Result<Vec<ApiKeyEvent>, ApiKeyError> {
        match command {
            ApiKeyCommand::Create(created) => {
                if state.key.is_some() {
                    return Err(ApiKeyError::AlreadyExists);
                }
                if created.key_id.len() != ID_LEN
                    || !created.key_id.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(invalid(
                        "key_id",
                        format!("must be {ID_LEN} base62 characters"),
                    ));
                }
                if created.name.trim().is_empty() || created.name.len() > 200 {
                    return Err(invalid("name", "must be 1 to 200 characters"));
                }
                if created.scopes.is_empty() {
                    return Err(invalid("scopes", "a key needs at least one scope"));
                }
                if created.kind == KeyKind::Ro
                    && let Some(scope) = created.scopes.iter().find(|s| !s.is_read())
                {
                    return Err(invalid(
                        "scopes",
                        format!("an `ro` key may hold read scopes only, not `{scope}`"),
                    ));
                }
                if created.prefix != display_prefix(created.kind, &created.key_id) {
                    return Err(invalid("prefix", "must be ff_{kind}_{key_id}"));
                }
                Ok(vec![ApiKeyEvent::Created(created)])
            }
            ApiKeyCommand::Revoke { at } => match (&state.key, state.revoked_at) {
                (None, _) => Err(ApiKeyError::NotFound),
                (Some(_), Some(_)) => Ok(vec![]),
                (Some(_), None) => Ok(vec![ApiKeyEvent::Revoked { at }]),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec;
    use chrono::TimeZone;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 10, minute, 0).unwrap()
    }

    fn created(kind: KeyKind, scopes: &[Scope]) -> ApiKeyCreated {
        ApiKeyCreated {
            key_id: "AbCdEf123456".into(),
            tenant: "acme".into(),
            kind,
            name: "deploy bot".into(),
            scopes: scopes.iter().copied().collect(),
            prefix: display_prefix(kind, "AbCdEf123456"),
            at: at(0),
        }
    }

    #[test]
    fn parses_only_well_formed_keys() {
        let secret = "x".repeat(SECRET_LEN);
        let key = format!("ff_live_AbCdEf123456{secret}");
        assert_eq!(
            parse_key(&key),
            Some(PresentedKey {
                kind: KeyKind::Live,
                id: "AbCdEf123456",
                secret: &secret
            })
        );
        assert_eq!(
            parse_key(&format!("ff_ro_AbCdEf123456{secret}")).map(|k| k.kind),
            Some(KeyKind::Ro)
        );
        for bad in [
            String::new(),
            "ff_live_".into(),
            format!("ff_prod_AbCdEf123456{secret}"),
            format!("ff_live_AbCdEf123456{secret}x"),
            format!("ff_live_AbCdEf12345{secret}"),
            format!("ff_live_AbCdEf-23456{secret}"),
            format!("xx_live_AbCdEf123456{secret}"),
        ] {
            assert_eq!(parse_key(&bad), None, "{bad}");
        }
    }

    #[test]
    fn creates_a_key_once() {
        let key = created(KeyKind::Live, &[Scope::EventsSend]);
        DeciderSpec::<ApiKey>::given([])
            .when(ApiKeyCommand::Create(key.clone()))
            .then([ApiKeyEvent::Created(key.clone())]);
        DeciderSpec::<ApiKey>::given([ApiKeyEvent::Created(key.clone())])
            .when(ApiKeyCommand::Create(key))
            .then_error(|e| *e == ApiKeyError::AlreadyExists);
    }

    #[test]
    fn ro_keys_hold_read_scopes_only() {
        DeciderSpec::<ApiKey>::given([])
            .when(ApiKeyCommand::Create(created(
                KeyKind::Ro,
                &[Scope::RunsRead, Scope::EventsSend],
            )))
            .then_error(|e| {
                matches!(e, ApiKeyError::Invalid { field: "scopes", message } if message.contains("events:send"))
            });
        let key = created(KeyKind::Ro, &[Scope::RunsRead, Scope::FunctionsRead]);
        DeciderSpec::<ApiKey>::given([])
            .when(ApiKeyCommand::Create(key.clone()))
            .then([ApiKeyEvent::Created(key)]);
    }

    #[test]
    fn refuses_keys_without_scopes_names_or_a_proper_id() {
        DeciderSpec::<ApiKey>::given([])
            .when(ApiKeyCommand::Create(created(KeyKind::Live, &[])))
            .then_error(|e| {
                matches!(
                    e,
                    ApiKeyError::Invalid {
                        field: "scopes",
                        ..
                    }
                )
            });
        let mut key = created(KeyKind::Live, &[Scope::Admin]);
        key.name = String::new();
        DeciderSpec::<ApiKey>::given([])
            .when(ApiKeyCommand::Create(key))
            .then_error(|e| matches!(e, ApiKeyError::Invalid { field: "name", .. }));
        let mut key = created(KeyKind::Live, &[Scope::Admin]);
        key.key_id = "short".into();
        DeciderSpec::<ApiKey>::given([])
            .when(ApiKeyCommand::Create(key))
            .then_error(|e| {
                matches!(
                    e,
                    ApiKeyError::Invalid {
                        field: "key_id",
                        ..
                    }
                )
            });
        let mut key = created(KeyKind::Live, &[Scope::Admin]);
        key.prefix = "ff_test_AbCdEf123456".into();
        DeciderSpec::<ApiKey>::given([])
            .when(ApiKeyCommand::Create(key))
            .then_error(|e| {
                matches!(
                    e,
                    ApiKeyError::Invalid {
                        field: "prefix",
                        ..
                    }
                )
            });
    }

    #[test]
    fn revoking_takes_the_key_out_of_use_once() {
        let key = created(KeyKind::Test, &[Scope::EventsSend]);
        let state = DeciderSpec::<ApiKey>::given([ApiKeyEvent::Created(key.clone())])
            .when(ApiKeyCommand::Revoke { at: at(1) })
            .then([ApiKeyEvent::Revoked { at: at(1) }]);
        assert!(state.active().is_none());
        DeciderSpec::<ApiKey>::given([
            ApiKeyEvent::Created(key),
            ApiKeyEvent::Revoked { at: at(1) },
        ])
        .when(ApiKeyCommand::Revoke { at: at(2) })
        .then_nothing_happens();
        DeciderSpec::<ApiKey>::given([])
            .when(ApiKeyCommand::Revoke { at: at(2) })
            .then_error(|e| *e == ApiKeyError::NotFound);
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        for event in [
            ApiKeyEvent::Created(created(KeyKind::Ro, &[Scope::RunsRead])),
            ApiKeyEvent::Revoked { at: at(3) },
        ] {
            let payload = event.to_payload();
            assert_eq!(
                ApiKeyEvent::from_stored(event.event_type(), payload.clone()).unwrap(),
                event
            );
            assert_eq!(
                ApiKeyEvent::from_stored_json(event.event_type(), &payload.to_string()).unwrap(),
                event
            );
        }
    }
}
