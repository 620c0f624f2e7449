//! Who is calling. The authentication layer (`routes::authorize`) proves it and puts a
//! [`Caller`] in the request; every handler takes one, and every read and write is
//! scoped to its tenant.

use std::collections::BTreeSet;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use flowforge_domain::access::{Role, Scope};
use flowforge_domain::api_key::KeyKind;
use flowforge_domain::{Actor, EventMetadata, TenantId};
use uuid::Uuid;

use crate::error::ApiError;

/// What a caller may do: a user's role, or a key's scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grants {
    Role(Role),
    Scopes(BTreeSet<Scope>),
}

#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    pub actor: Actor,
    pub request_id: Option<String>,
    pub grants: Grants,
    /// `test` keys act in the tenant's test environment; everyone else in live.
    pub environment: KeyKind,
    /// The session a user's token belongs to (logout ends it).
    pub session: Option<Uuid>,
}

impl Caller {
    /// The identity of a request without credentials on `flowforge dev`: the admin of
    /// the default tenant.
    pub fn dev_admin() -> Self {
        Caller {
            tenant: TenantId::default_tenant(),
            actor: Actor::user("dev"),
            request_id: None,
            grants: Grants::Role(Role::Admin),
            environment: KeyKind::Live,
            session: None,
        }
    }

    pub fn may(&self, scope: Scope) -> bool {
        match &self.grants {
            Grants::Role(role) => role.grants(scope),
            Grants::Scopes(scopes) => scopes.contains(&scope) || scopes.contains(&Scope::Admin),
        }
    }

    pub fn metadata(&self) -> EventMetadata {
        let mut meta = EventMetadata::new(self.tenant.clone(), self.actor.clone());
        if self.environment == KeyKind::Test {
            meta = meta.in_test_environment();
        }
        match &self.request_id {
            Some(id) => meta.with_request(id.clone()),
            None => meta,
        }
    }

    pub fn tenant(&self) -> &str {
        self.tenant.as_str()
    }
}

pub fn request_id(parts: &axum::http::HeaderMap) -> Option<String> {
    parts
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Put there by the authentication layer, which every route passes through.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(ApiError::unauthenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_their_scopes_and_admin_keys_hold_all() {
        let mut caller = Caller::dev_admin();
        caller.grants = Grants::Scopes([Scope::RunsRead].into());
        assert!(caller.may(Scope::RunsRead));
        assert!(!caller.may(Scope::RunsWrite));
        caller.grants = Grants::Scopes([Scope::Admin].into());
        assert!(caller.may(Scope::RunsWrite));
        caller.grants = Grants::Role(Role::Viewer);
        assert!(!caller.may(Scope::EventsSend));
    }
}
