//! The Tenant aggregate: a team using one FlowForge deployment. Everything else it owns
//! carries its id.
//!
//! Stream: `tenant-<id>`, stream type `tenant`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::decider::{Decider, DomainEvent};

pub const STREAM_TYPE: &str = "tenant";

pub fn stream_id(tenant_id: &str) -> String {
    format!("tenant-{tenant_id}")
}

/// Tenant ids appear in stream ids, subjects and URLs: lowercase letters, digits and
/// dashes, 1 to 63 of them, starting with a letter or digit.
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantCreated {
    pub tenant_id: String,
    pub name: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum TenantEvent {
    #[serde(rename = "tenant.created")]
    Created(TenantCreated),
}

impl DomainEvent for TenantEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            TenantEvent::Created(_) => "tenant.created",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantState {
    pub tenant: Option<TenantCreated>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantCommand {
    /// Creates the tenant; a no-op when it exists (so `create-admin` can be re-run).
    Ensure(TenantCreated),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

#[derive(Debug)]
pub struct Tenant;

impl Decider for Tenant {
    type State = TenantState;
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;

    fn initial() -> TenantState {
        TenantState::default()
    }

    fn evolve(mut state: TenantState, event: &TenantEvent) -> TenantState {
        match event {
            TenantEvent::Created(created) => state.tenant = Some(created.clone()),
        }
        state
    }

    fn decide(
        state: &TenantState,
        command: TenantCommand,
    ) -> Result<Vec<TenantEvent>, TenantError> {
        match command {
            TenantCommand::Ensure(_) if state.tenant.is_some() => Ok(vec![]),
            TenantCommand::Ensure(created) => {
                if !valid_tenant_id(&created.tenant_id) {
                    return Err(TenantError::Invalid {
                        field: "tenant",
                        message: "must be 1 to 63 lowercase letters, digits or dashes".into(),
                    });
                }
                if created.name.trim().is_empty() {
                    return Err(TenantError::Invalid {
                        field: "name",
                        message: "must not be empty".into(),
                    });
                }
                Ok(vec![TenantEvent::Created(created)])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec;
    use chrono::TimeZone;

    fn created(id: &str) -> TenantCreated {
        TenantCreated {
            tenant_id: id.into(),
            name: "Acme".into(),
            at: Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap(),
        }
    }

    #[test]
    fn ensures_a_tenant_exactly_once() {
        DeciderSpec::<Tenant>::given([])
            .when(TenantCommand::Ensure(created("acme")))
            .then([TenantEvent::Created(created("acme"))]);
        DeciderSpec::<Tenant>::given([TenantEvent::Created(created("acme"))])
            .when(TenantCommand::Ensure(created("acme")))
            .then_nothing_happens();
    }

    #[test]
    fn refuses_ids_that_cannot_go_into_subjects_and_urls() {
        for id in ["", "Acme", "a b", "-x", "a.b", &"a".repeat(64)] {
            DeciderSpec::<Tenant>::given([])
                .when(TenantCommand::Ensure(created(id)))
                .then_error(|e| {
                    matches!(
                        e,
                        TenantError::Invalid {
                            field: "tenant",
                            ..
                        }
                    )
                });
        }
        assert!(valid_tenant_id("team-7"));
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        let event = TenantEvent::Created(created("acme"));
        assert_eq!(
            TenantEvent::from_stored(event.event_type(), event.to_payload()).unwrap(),
            event
        );
    }
}
