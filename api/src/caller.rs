//! Who is calling. The authentication layer (`routes::authorize`) proves it and puts a
//! [`Caller`] in the request; every handler takes one, and every read and write is
//! scoped to its tenant.

use std::collections::BTreeSet;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use flowforge_domain::access::{Role, Scope};
use flowforge_domain::{Actor, Environment, EventMetadata, TenantId};
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
    /// `test` keys (and apps with a test signing key) act in the tenant's test
    /// environment; everyone else in live.
    pub environment: Environment,
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
            environment: Environment::Live,
            session: None,
        }
    }

    /// An app that authenticated with a signing key: it may do what the Inngest
    /// protocol lets an app do, in its key's environment.
    pub fn app(credential: flowforge_engine::signing::AppCredential) -> Self {
        Caller {
            tenant: TenantId::new(credential.space.tenant),
            actor: Actor::signing_key(credential.key_id.unwrap_or_else(|| "configured".into())),
            request_id: None,
            grants: Grants::Scopes(
                [
                    Scope::FunctionsManage,
                    Scope::FunctionsRead,
                    Scope::RunsRead,
                    Scope::EventsRead,
                    Scope::EventsSend,
                ]
                .into(),
            ),
            environment: credential.space.environment,
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
        let meta = EventMetadata::new(self.tenant.clone(), self.actor.clone())
            .in_environment(self.environment);
        match &self.request_id {
            Some(id) => meta.with_request(id.clone()),
            None => meta,
        }
    }

    pub fn tenant(&self) -> &str {
        self.tenant.as_str()
    }

    /// Whether the caller may see what lives in `environment`: users see both of
    /// their tenant's environments, keys and apps only their own.
    pub fn sees(&self, environment: Environment) -> bool {
        matches!(self.grants, Grants::Role(_)) || environment == self.environment
    }

    /// The tenant environment this request acts in.
    pub fn space(&self) -> flowforge_engine::Space {
        flowforge_engine::Space::new(self.tenant.as_str(), self.environment)
    }

    /// Acts in another environment of the tenant, where the caller may: users choose
    /// (`?environment=test`), keys and apps act in their own only.
    pub fn acting_in(mut self, environment: Environment) -> Result<Self, ApiError> {
        match self.grants {
            Grants::Role(_) => {
                self.environment = environment;
                Ok(self)
            }
            Grants::Scopes(_) if environment == self.environment => Ok(self),
            Grants::Scopes(_) => Err(ApiError::invalid_field(
                "environment",
                format!(
                    "this credential acts in the {} environment only",
                    self.environment
                ),
            )),
        }
    }
}

#[derive(serde::Deserialize)]
struct EnvironmentParam {
    environment: Option<String>,
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
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(ApiError::unauthenticated)?;
        let requested = axum::extract::Query::<EnvironmentParam>::try_from_uri(&parts.uri)
            .ok()
            .and_then(|q| q.0.environment);
        match requested {
            None => Ok(caller),
            Some(name) => {
                let environment = Environment::parse(&name).ok_or_else(|| {
                    ApiError::invalid_field("environment", "must be `live` or `test`")
                })?;
                caller.acting_in(environment)
            }
        }
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
