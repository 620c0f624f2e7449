//! Who did what, for whom, and why: the envelope every stored event carries.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The tenant (team) an event belongs to. Every event and read-model row carries one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub String);

impl TenantId {
    /// The tenant `flowforge dev` acts in when nobody has configured one.
    pub const DEFAULT: &'static str = "default";

    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn default_tenant() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    User,
    ApiKey,
    Agent,
    /// An app authenticating with its environment's signing key.
    SigningKey,
    System,
}

/// The identity on whose behalf an event was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

impl Actor {
    pub fn system(component: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::System,
            id: component.into(),
        }
    }

    pub fn user(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::User,
            id: id.into(),
        }
    }

    pub fn api_key(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::ApiKey,
            id: id.into(),
        }
    }

    pub fn signing_key(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::SigningKey,
            id: id.into(),
        }
    }

    pub fn agent(id: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::Agent,
            id: id.into(),
        }
    }
}

/// Metadata stored beside every event's payload.
///
/// `correlation_id` ties together everything caused by one outside request or event;
/// `causation_id` names the event (or request) that directly caused this one, so an
/// investigator can walk the chain backwards through the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub tenant_id: TenantId,
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The FlowForge process that recorded the event, where several share the log
    /// (`FLOWFORGE_INSTANCE`): tells an investigator which process made a call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// `test` for what a tenant's test environment (a `test` API key) recorded; absent
    /// for the live environment. Test events never reach live functions or runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

impl EventMetadata {
    pub fn new(tenant_id: TenantId, actor: Actor) -> Self {
        Self {
            tenant_id,
            actor,
            correlation_id: None,
            causation_id: None,
            request_id: None,
            instance: None,
            environment: None,
        }
    }

    /// The name of the test environment in [`EventMetadata::environment`].
    pub const TEST_ENVIRONMENT: &'static str = "test";

    pub fn in_test_environment(mut self) -> Self {
        self.environment = Some(Self::TEST_ENVIRONMENT.to_owned());
        self
    }

    pub fn in_environment(self, environment: crate::Environment) -> Self {
        match environment {
            crate::Environment::Live => Self {
                environment: None,
                ..self
            },
            crate::Environment::Test => self.in_test_environment(),
        }
    }

    pub fn is_test_environment(&self) -> bool {
        self.environment.as_deref() == Some(Self::TEST_ENVIRONMENT)
    }

    /// The environment this event was recorded in.
    pub fn environment(&self) -> crate::Environment {
        if self.is_test_environment() {
            crate::Environment::Test
        } else {
            crate::Environment::Live
        }
    }

    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    pub fn with_correlation(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    pub fn with_causation(mut self, causation_id: Uuid) -> Self {
        self.causation_id = Some(causation_id);
        self
    }

    pub fn with_request(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_json_with_the_documented_field_names() {
        let meta = EventMetadata::new(TenantId::new("acme"), Actor::api_key("key-1"))
            .with_correlation(Uuid::nil())
            .with_request("req-7");
        let json = serde_json::to_value(&meta).unwrap();
        assert_eq!(json["tenant_id"], "acme");
        assert_eq!(json["actor"]["kind"], "api_key");
        assert_eq!(json["actor"]["id"], "key-1");
        assert_eq!(json["request_id"], "req-7");
        assert!(json.get("causation_id").is_none());
        let back: EventMetadata = serde_json::from_value(json).unwrap();
        assert_eq!(back, meta);
    }
}
