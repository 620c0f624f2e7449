//! Who owns an app, and so its functions: the person whose inbox hears when one of its
//! runs fails. One stream per tenant and app, `app-owner-<uuid5(tenant, app id)>`,
//! apart from the app's own stream, which the app itself writes when it syncs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::decider::{Decider, DomainEvent};

pub const STREAM_TYPE: &str = "app_owner";
const NAMESPACE: Uuid = Uuid::from_u128(0x6a0b_3f43_9a61_4f7e_b3a4_52c1_0e8d_7f21);

pub fn stream_id(tenant: &str, app_id: &str) -> String {
    let id = Uuid::new_v5(&NAMESPACE, format!("{tenant}\n{app_id}").as_bytes());
    format!("app-owner-{id}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AppOwnerEvent {
    /// `owner` is a user id; `None` when the app no longer has an owner.
    #[serde(rename = "app.owner_set")]
    OwnerSet {
        app_id: String,
        owner: Option<String>,
        at: DateTime<Utc>,
    },
}

impl AppOwnerEvent {
    pub const TYPES: &'static [&'static str] = &["app.owner_set"];
}

impl DomainEvent for AppOwnerEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            AppOwnerEvent::OwnerSet { .. } => "app.owner_set",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAppOwner {
    pub app_id: String,
    pub owner: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppOwnerError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: &'static str,
    },
}

#[derive(Debug)]
pub struct AppOwnership;

impl Decider for AppOwnership {
    /// The current owner, if any.
    type State = Option<String>;
    type Command = SetAppOwner;
    type Event = AppOwnerEvent;
    type Error = AppOwnerError;

    fn initial() -> Option<String> {
        None
    }

    fn evolve(_: Option<String>, event: &AppOwnerEvent) -> Option<String> {
        match event {
            AppOwnerEvent::OwnerSet { owner, .. } => owner.clone(),
        }
    }

    fn decide(
        state: &Option<String>,
        command: SetAppOwner,
    ) -> Result<Vec<AppOwnerEvent>, AppOwnerError> {
        if command.app_id.trim().is_empty() {
            return Err(AppOwnerError::Invalid {
                field: "app_id",
                message: "must not be empty",
            });
        }
        if command.owner.as_ref().is_some_and(|o| o.trim().is_empty()) {
            return Err(AppOwnerError::Invalid {
                field: "owner",
                message: "must be a user id or null",
            });
        }
        // Setting the owner it already has records nothing.
        if *state == command.owner {
            return Ok(Vec::new());
        }
        Ok(vec![AppOwnerEvent::OwnerSet {
            app_id: command.app_id,
            owner: command.owner,
            at: command.at,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec;

    type Spec = DeciderSpec<AppOwnership>;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    fn set(owner: Option<&str>) -> SetAppOwner {
        SetAppOwner {
            app_id: "billing".into(),
            owner: owner.map(str::to_owned),
            at: at(),
        }
    }

    fn owner_set(owner: Option<&str>) -> AppOwnerEvent {
        AppOwnerEvent::OwnerSet {
            app_id: "billing".into(),
            owner: owner.map(str::to_owned),
            at: at(),
        }
    }

    #[test]
    fn an_app_gets_an_owner() {
        let state = Spec::given([])
            .when(set(Some("ann")))
            .then([owner_set(Some("ann"))]);
        assert_eq!(state.as_deref(), Some("ann"));
    }

    #[test]
    fn the_same_owner_again_records_nothing() {
        Spec::given([owner_set(Some("ann"))])
            .when(set(Some("ann")))
            .then_nothing_happens();
        Spec::given([]).when(set(None)).then_nothing_happens();
    }

    #[test]
    fn ownership_moves_and_can_be_given_up() {
        Spec::given([owner_set(Some("ann"))])
            .when(set(Some("bob")))
            .then([owner_set(Some("bob"))]);
        let state = Spec::given([owner_set(Some("ann"))])
            .when(set(None))
            .then([owner_set(None)]);
        assert_eq!(state, None);
    }

    #[test]
    fn an_empty_app_or_owner_is_refused_naming_the_field() {
        Spec::given([])
            .when(SetAppOwner {
                app_id: " ".into(),
                ..set(Some("ann"))
            })
            .then_error(|e| {
                matches!(
                    e,
                    AppOwnerError::Invalid {
                        field: "app_id",
                        ..
                    }
                )
            });
        Spec::given([])
            .when(set(Some("")))
            .then_error(|e| matches!(e, AppOwnerError::Invalid { field: "owner", .. }));
    }

    #[test]
    fn stream_ids_are_per_tenant_and_app() {
        assert_eq!(stream_id("acme", "billing"), stream_id("acme", "billing"));
        assert_ne!(stream_id("acme", "billing"), stream_id("other", "billing"));
        assert_ne!(stream_id("acme", "billing"), stream_id("acme", "shipping"));
    }
}
