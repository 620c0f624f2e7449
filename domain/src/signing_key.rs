//! The SigningKeyRing aggregate: the keys one environment of a tenant signs its calls to
//! apps with, and accepts from apps (the Inngest protocol's signing key).
//!
//! Rotation is two-step, as apps need the new key before the server signs with it:
//! 1. `create` makes a *next* key. It is shown once; the app is deployed with it as its
//!    signing key and the old one as its fallback. From now on the server accepts both
//!    from apps, but still signs with the current key.
//! 2. `rotate` makes the next key current (the server signs with it from then on) and
//!    keeps the old one valid for a grace period, for apps not yet redeployed.
//!
//! A tenant's first key becomes current at once. A retired or pending key can be
//! revoked before its time (a leaked key); the current one only by rotating first.
//! The keys themselves are kept in the secret store, never in the log: events carry a
//! key id and a fingerprint.
//!
//! Stream: `signing_keys-<tenant>:<environment>`, stream type `signing_keys`.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::decider::{Decider, DomainEvent};
use crate::environment::Environment;

pub const STREAM_TYPE: &str = "signing_keys";

/// The longest grace period a rotation may give the old key.
pub const MAX_GRACE: Duration = Duration::days(30);

pub fn stream_id(tenant: &str, environment: Environment) -> String {
    format!("signing_keys-{tenant}:{environment}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyCreated {
    pub key_id: String,
    pub environment: Environment,
    /// A short digest of the key, to tell keys apart without showing them.
    pub fingerprint: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyActivated {
    pub key_id: String,
    /// The key it replaces, accepted from apps until `previous_valid_until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum SigningKeyEvent {
    #[serde(rename = "signing_key.created")]
    Created(SigningKeyCreated),
    #[serde(rename = "signing_key.activated")]
    Activated(SigningKeyActivated),
    #[serde(rename = "signing_key.revoked")]
    Revoked { key_id: String, at: DateTime<Utc> },
}

impl DomainEvent for SigningKeyEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            SigningKeyEvent::Created(_) => "signing_key.created",
            SigningKeyEvent::Activated(_) => "signing_key.activated",
            SigningKeyEvent::Revoked { .. } => "signing_key.revoked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Signs the server's calls; accepted from apps.
    Current,
    /// Created, not yet current; accepted from apps.
    Next,
    /// Replaced; accepted from apps until its grace period ends.
    Retired,
    /// Out of use.
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyInfo {
    pub key_id: String,
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
    pub status: KeyStatus,
    /// For retired keys: when the grace period ends.
    pub valid_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SigningKeyRingState {
    /// Every key ever created here, oldest first.
    pub keys: Vec<SigningKeyInfo>,
}

impl SigningKeyRingState {
    fn find(&self, key_id: &str) -> Option<&SigningKeyInfo> {
        self.keys.iter().find(|k| k.key_id == key_id)
    }

    fn find_mut(&mut self, key_id: &str) -> Option<&mut SigningKeyInfo> {
        self.keys.iter_mut().find(|k| k.key_id == key_id)
    }

    fn with_status(&self, status: KeyStatus) -> Option<&SigningKeyInfo> {
        self.keys.iter().find(|k| k.status == status)
    }

    /// The key the server signs with.
    pub fn current(&self) -> Option<&SigningKeyInfo> {
        self.with_status(KeyStatus::Current)
    }

    pub fn next(&self) -> Option<&SigningKeyInfo> {
        self.with_status(KeyStatus::Next)
    }

    /// Whether an app may authenticate with this key at `now`.
    pub fn accepts(&self, key_id: &str, now: DateTime<Utc>) -> bool {
        self.find(key_id).is_some_and(|k| match k.status {
            KeyStatus::Current | KeyStatus::Next => true,
            KeyStatus::Retired => k.valid_until.is_some_and(|until| now < until),
            KeyStatus::Revoked => false,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningKeyCommand {
    Create {
        key_id: String,
        environment: Environment,
        fingerprint: String,
        /// Whether an environment's first key signs at once. Not when apps already
        /// hold a key this ring does not (the operator's `FLOWFORGE_SIGNING_KEY`):
        /// then the first key waits as next, like any other.
        first_signs_at_once: bool,
        at: DateTime<Utc>,
    },
    Rotate {
        grace: Duration,
        at: DateTime<Utc>,
    },
    Revoke {
        key_id: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningKeyError {
    #[error("a next signing key is already waiting to be rotated in; rotate or revoke it first")]
    NextKeyPending,
    #[error("there is no next signing key to rotate in; create one first")]
    NoNextKey,
    #[error("no such signing key")]
    NotFound,
    #[error("the current signing key cannot be revoked; rotate a new one in first")]
    RevokingCurrent,
    #[error("a signing key with this id already exists")]
    AlreadyExists,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

#[derive(Debug)]
pub struct SigningKeyRing;

impl Decider for SigningKeyRing {
    type State = SigningKeyRingState;
    type Command = SigningKeyCommand;
    type Event = SigningKeyEvent;
    type Error = SigningKeyError;

    fn initial() -> SigningKeyRingState {
        SigningKeyRingState::default()
    }

    fn evolve(mut state: SigningKeyRingState, event: &SigningKeyEvent) -> SigningKeyRingState {
        match event {
            SigningKeyEvent::Created(created) => state.keys.push(SigningKeyInfo {
                key_id: created.key_id.clone(),
                fingerprint: created.fingerprint.clone(),
                created_at: created.at,
                status: KeyStatus::Next,
                valid_until: None,
            }),
            SigningKeyEvent::Activated(activated) => {
                if let Some(previous) = &activated.previous_key_id
                    && let Some(key) = state.find_mut(previous)
                {
                    key.status = KeyStatus::Retired;
                    key.valid_until = activated.previous_valid_until;
                }
                if let Some(key) = state.find_mut(&activated.key_id) {
                    key.status = KeyStatus::Current;
                }
            }
            SigningKeyEvent::Revoked { key_id, .. } => {
                if let Some(key) = state.find_mut(key_id) {
                    key.status = KeyStatus::Revoked;
                }
            }
        }
        state
    }

    fn decide(
        state: &SigningKeyRingState,
        command: SigningKeyCommand,
    ) -> Result<Vec<SigningKeyEvent>, SigningKeyError> {
        match command {
            SigningKeyCommand::Create {
                key_id,
                environment,
                fingerprint,
                first_signs_at_once,
                at,
            } => {
                if key_id.is_empty()
                    || key_id.len() > 64
                    || !key_id.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(SigningKeyError::Invalid {
                        field: "key_id",
                        message: "must be 1 to 64 letters and digits".into(),
                    });
                }
                if state.find(&key_id).is_some() {
                    return Err(SigningKeyError::AlreadyExists);
                }
                if state.next().is_some() {
                    return Err(SigningKeyError::NextKeyPending);
                }
                let created = SigningKeyEvent::Created(SigningKeyCreated {
                    key_id: key_id.clone(),
                    environment,
                    fingerprint,
                    at,
                });
                if state.current().is_some() || !first_signs_at_once {
                    return Ok(vec![created]);
                }
                // Nothing to rotate from: no app can hold an older key of this ring.
                Ok(vec![
                    created,
                    SigningKeyEvent::Activated(SigningKeyActivated {
                        key_id,
                        previous_key_id: None,
                        previous_valid_until: None,
                        at,
                    }),
                ])
            }
            SigningKeyCommand::Rotate { grace, at } => {
                if grace < Duration::zero() || grace > MAX_GRACE {
                    return Err(SigningKeyError::Invalid {
                        field: "grace_period_seconds",
                        message: format!(
                            "must be between 0 and {} seconds",
                            MAX_GRACE.num_seconds()
                        ),
                    });
                }
                let next = state.next().ok_or(SigningKeyError::NoNextKey)?;
                let previous = state.current().map(|k| k.key_id.clone());
                Ok(vec![SigningKeyEvent::Activated(SigningKeyActivated {
                    key_id: next.key_id.clone(),
                    previous_valid_until: previous.as_ref().map(|_| at + grace),
                    previous_key_id: previous,
                    at,
                })])
            }
            SigningKeyCommand::Revoke { key_id, at } => {
                let key = state.find(&key_id).ok_or(SigningKeyError::NotFound)?;
                match key.status {
                    KeyStatus::Current => Err(SigningKeyError::RevokingCurrent),
                    KeyStatus::Revoked => Ok(vec![]),
                    KeyStatus::Next | KeyStatus::Retired => {
                        Ok(vec![SigningKeyEvent::Revoked { key_id, at }])
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec;
    use chrono::TimeZone;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 10, minute, 0).unwrap()
    }

    fn create(key_id: &str, minute: u32) -> SigningKeyCommand {
        SigningKeyCommand::Create {
            key_id: key_id.into(),
            environment: Environment::Live,
            fingerprint: format!("fp-{key_id}"),
            first_signs_at_once: true,
            at: at(minute),
        }
    }

    fn created(key_id: &str, minute: u32) -> SigningKeyEvent {
        SigningKeyEvent::Created(SigningKeyCreated {
            key_id: key_id.into(),
            environment: Environment::Live,
            fingerprint: format!("fp-{key_id}"),
            at: at(minute),
        })
    }

    fn activated(key_id: &str, previous: Option<(&str, u32)>, minute: u32) -> SigningKeyEvent {
        SigningKeyEvent::Activated(SigningKeyActivated {
            key_id: key_id.into(),
            previous_key_id: previous.map(|(id, _)| id.to_owned()),
            previous_valid_until: previous.map(|(_, until)| at(until)),
            at: at(minute),
        })
    }

    #[test]
    fn the_first_key_becomes_current_at_once() {
        let state = DeciderSpec::<SigningKeyRing>::given([])
            .when(create("k1", 0))
            .then([created("k1", 0), activated("k1", None, 0)]);
        assert_eq!(state.current().map(|k| k.key_id.as_str()), Some("k1"));
        assert!(state.accepts("k1", at(59)));
    }

    #[test]
    fn a_first_key_waits_as_next_when_apps_hold_another_key() {
        let command = match create("k1", 0) {
            SigningKeyCommand::Create {
                key_id,
                environment,
                fingerprint,
                at,
                ..
            } => SigningKeyCommand::Create {
                key_id,
                environment,
                fingerprint,
                first_signs_at_once: false,
                at,
            },
            other => other,
        };
        let state = DeciderSpec::<SigningKeyRing>::given([])
            .when(command)
            .then([created("k1", 0)]);
        assert!(state.current().is_none());
        // Rotating it in retires nothing the ring knows of.
        DeciderSpec::<SigningKeyRing>::given([created("k1", 0)])
            .when(SigningKeyCommand::Rotate {
                grace: Duration::minutes(5),
                at: at(1),
            })
            .then([activated("k1", None, 1)]);
    }

    #[test]
    fn a_later_key_waits_as_next_and_is_accepted_but_does_not_sign() {
        let state =
            DeciderSpec::<SigningKeyRing>::given([created("k1", 0), activated("k1", None, 0)])
                .when(create("k2", 1))
                .then([created("k2", 1)]);
        assert_eq!(state.current().map(|k| k.key_id.as_str()), Some("k1"));
        assert_eq!(state.next().map(|k| k.key_id.as_str()), Some("k2"));
        assert!(state.accepts("k1", at(2)) && state.accepts("k2", at(2)));
    }

    #[test]
    fn only_one_next_key_waits_at_a_time() {
        DeciderSpec::<SigningKeyRing>::given([
            created("k1", 0),
            activated("k1", None, 0),
            created("k2", 1),
        ])
        .when(create("k3", 2))
        .then_error(|e| *e == SigningKeyError::NextKeyPending);
    }

    #[test]
    fn rotating_makes_next_current_and_keeps_the_old_key_for_the_grace_period() {
        let state = DeciderSpec::<SigningKeyRing>::given([
            created("k1", 0),
            activated("k1", None, 0),
            created("k2", 1),
        ])
        .when(SigningKeyCommand::Rotate {
            grace: Duration::minutes(10),
            at: at(5),
        })
        .then([activated("k2", Some(("k1", 15)), 5)]);
        assert_eq!(state.current().map(|k| k.key_id.as_str()), Some("k2"));
        assert!(state.next().is_none());
        assert!(state.accepts("k1", at(14)), "within the grace period");
        assert!(!state.accepts("k1", at(15)), "after the grace period");
        assert!(state.accepts("k2", at(59)));
    }

    #[test]
    fn rotating_needs_a_next_key_and_a_sane_grace_period() {
        DeciderSpec::<SigningKeyRing>::given([created("k1", 0), activated("k1", None, 0)])
            .when(SigningKeyCommand::Rotate {
                grace: Duration::minutes(1),
                at: at(1),
            })
            .then_error(|e| *e == SigningKeyError::NoNextKey);
        for grace in [Duration::seconds(-1), MAX_GRACE + Duration::seconds(1)] {
            DeciderSpec::<SigningKeyRing>::given([
                created("k1", 0),
                activated("k1", None, 0),
                created("k2", 1),
            ])
            .when(SigningKeyCommand::Rotate { grace, at: at(1) })
            .then_error(|e| {
                matches!(
                    e,
                    SigningKeyError::Invalid {
                        field: "grace_period_seconds",
                        ..
                    }
                )
            });
        }
    }

    #[test]
    fn revoking_ends_a_retired_or_next_key_but_never_the_current_one() {
        let rotated = [
            created("k1", 0),
            activated("k1", None, 0),
            created("k2", 1),
            activated("k2", Some(("k1", 30)), 2),
        ];
        let state = DeciderSpec::<SigningKeyRing>::given(rotated.clone())
            .when(SigningKeyCommand::Revoke {
                key_id: "k1".into(),
                at: at(3),
            })
            .then([SigningKeyEvent::Revoked {
                key_id: "k1".into(),
                at: at(3),
            }]);
        assert!(
            !state.accepts("k1", at(4)),
            "revoked before its grace ended"
        );
        DeciderSpec::<SigningKeyRing>::given(rotated.clone())
            .when(SigningKeyCommand::Revoke {
                key_id: "k2".into(),
                at: at(3),
            })
            .then_error(|e| *e == SigningKeyError::RevokingCurrent);
        DeciderSpec::<SigningKeyRing>::given(rotated)
            .when(SigningKeyCommand::Revoke {
                key_id: "nope".into(),
                at: at(3),
            })
            .then_error(|e| *e == SigningKeyError::NotFound);
    }

    #[test]
    fn key_ids_are_checked_and_never_reused() {
        DeciderSpec::<SigningKeyRing>::given([])
            .when(create("not-alnum", 0))
            .then_error(|e| {
                matches!(
                    e,
                    SigningKeyError::Invalid {
                        field: "key_id",
                        ..
                    }
                )
            });
        DeciderSpec::<SigningKeyRing>::given([
            created("k1", 0),
            activated("k1", None, 0),
            created("k2", 1),
            activated("k2", Some(("k1", 30)), 2),
        ])
        .when(create("k1", 3))
        .then_error(|e| *e == SigningKeyError::AlreadyExists);
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        for event in [
            created("k1", 0),
            activated("k2", Some(("k1", 9)), 1),
            activated("k1", None, 1),
            SigningKeyEvent::Revoked {
                key_id: "k1".into(),
                at: at(2),
            },
        ] {
            let payload = event.to_payload();
            assert_eq!(
                SigningKeyEvent::from_stored(event.event_type(), payload.clone()).unwrap(),
                event
            );
        }
    }
}
