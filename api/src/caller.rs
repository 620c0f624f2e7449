//! Who is calling. Every handler takes a [`Caller`], and every read and write is scoped
//! to its tenant.
//!
//! Authentication (users, API keys, roles) is not built yet: until it is, every
//! request acts as the administrator of the default tenant, which is what `flowforge
//! dev` promises a developer on their own machine.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use flowforge_domain::{Actor, EventMetadata, TenantId};

use crate::error::ApiError;

#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    pub actor: Actor,
    pub request_id: Option<String>,
}

impl Caller {
    pub fn metadata(&self) -> EventMetadata {
        let meta = EventMetadata::new(self.tenant.clone(), self.actor.clone());
        match &self.request_id {
            Some(id) => meta.with_request(id.clone()),
            None => meta,
        }
    }

    pub fn tenant(&self) -> &str {
        self.tenant.as_str()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(str::to_owned);
        Ok(Caller {
            tenant: TenantId::default_tenant(),
            actor: Actor::user("dev"),
            request_id,
        })
    }
}
