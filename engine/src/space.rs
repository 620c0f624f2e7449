//! Where a function, a run or an event lives: a tenant's environment. Nothing the
//! engine derives ever crosses from one space to another.

use flowforge_domain::{Environment, EventMetadata};
use flowforge_store::StoredEvent;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Space {
    pub tenant: String,
    pub environment: Environment,
}

impl Space {
    pub fn new(tenant: impl Into<String>, environment: Environment) -> Self {
        Self {
            tenant: tenant.into(),
            environment,
        }
    }

    pub fn live(tenant: impl Into<String>) -> Self {
        Self::new(tenant, Environment::Live)
    }

    /// The space a stored event was recorded in.
    pub fn of(event: &StoredEvent) -> Self {
        Self::new(event.tenant_id(), event.metadata.environment())
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Marks metadata as recorded in this space.
    pub fn stamp(&self, metadata: EventMetadata) -> EventMetadata {
        metadata.in_environment(self.environment)
    }
}

impl std::fmt::Display for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.environment)
    }
}
