//! Who is calling, proven: access tokens for dashboard users, API keys for apps.
//!
//! A token's check reads the user's stream from the log (one short stream per
//! request), so a logout, a disabled user or a changed role takes effect at the next
//! request, in every process. A key's check reads its stream too, unless this process
//! verified the key less than `key_cache_ttl` ago ([`verified_keys`]): a revocation
//! acts at once in the process that made it, within milliseconds in the others (their
//! live feed), and within `key_cache_ttl` whatever happens to the feed.

pub mod keys;
pub mod limiter;
pub mod password;
pub mod token;
pub mod verified_keys;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::HeaderMap;
use chrono::Utc;
use flowforge_commands::CommandHandler;
use flowforge_domain::access::Scope;
use flowforge_domain::api_key::{self, ApiKey};
use flowforge_domain::user::{self, User};
use flowforge_domain::{Actor, Environment, TenantId};
use flowforge_store::SecretStore;

use crate::caller::{Caller, Grants};

/// Whether requests without credentials are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `flowforge dev`: a request without credentials acts as the admin of the default
    /// tenant. Credentials, when sent, are still checked.
    Open,
    /// `flowforge serve` (and `dev --auth`): every request but `/health`, `/ready` and
    /// login must prove who it is.
    Required,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Signs access tokens; without it nobody can log in (API keys still work).
    pub tokens: Option<token::TokenKeys>,
    pub token_ttl: Duration,
    /// How long a verified API key is kept before its stream is read again (zero:
    /// every request reads it).
    pub key_cache_ttl: Duration,
}

impl AuthConfig {
    pub fn open() -> Self {
        Self {
            mode: AuthMode::Open,
            tokens: None,
            token_ttl: DEFAULT_TOKEN_TTL,
            key_cache_ttl: verified_keys::DEFAULT_TTL,
        }
    }
}

pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// Why credentials were refused. The answer to the client never says more than
/// "not authenticated": the reason goes to the server log only.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials")]
    Missing,
    #[error("credentials refused: {0}")]
    Refused(&'static str),
    #[error("identity store unavailable: {0}")]
    Unavailable(String),
}

/// Whether an `Authorization` value carries a FlowForge token or key (rather than an
/// Inngest signing key).
pub fn is_flowforge_credential(authorization: &str) -> bool {
    let credential = authorization
        .split_once(' ')
        .map_or(authorization, |(_, c)| c)
        .trim();
    credential.starts_with("ff_") || credential.matches('.').count() == 2
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
        .filter(|c| !c.is_empty())
}

/// The caller a request's credentials prove, or the dev admin in open mode when it
/// sends none.
pub async fn authenticate(
    config: &AuthConfig,
    commands: &CommandHandler,
    secrets: &dyn SecretStore,
    verified: &verified_keys::VerifiedKeys,
    headers: &HeaderMap,
) -> Result<Caller, AuthError> {
    let Some(credential) = bearer(headers) else {
        return match config.mode {
            AuthMode::Open => Ok(Caller::dev_admin()),
            AuthMode::Required => Err(AuthError::Missing),
        };
    };
    if credential.starts_with("ff_") {
        api_key_caller(commands, secrets, verified, credential).await
    } else {
        token_caller(config, commands, credential).await
    }
}

pub async fn api_key_caller(
    commands: &CommandHandler,
    secrets: &dyn SecretStore,
    verified: &verified_keys::VerifiedKeys,
    credential: &str,
) -> Result<Caller, AuthError> {
    let presented = api_key::parse_key(credential).ok_or(AuthError::Refused("malformed key"))?;
    if let Some(caller) = verified.caller(presented.id, credential) {
        touch(secrets, &caller.tenant, presented.id).await;
        return Ok(caller);
    }
    let epoch = verified.epoch();
    let loaded = commands
        .load::<ApiKey>(&api_key::stream_id(presented.id))
        .await
        .map_err(|e| AuthError::Unavailable(e.to_string()))?;
    let key = loaded
        .state
        .active()
        .ok_or(AuthError::Refused("unknown or revoked key"))?;
    if key.kind != presented.kind {
        return Err(AuthError::Refused("key kind does not match"));
    }
    let stored = secrets
        .secret(&key.tenant, &keys::secret_name(&key.key_id))
        .await
        .map_err(|e| AuthError::Unavailable(e.to_string()))?
        .ok_or(AuthError::Refused("key has no stored hash"))?;
    if !keys::matches(credential, &stored) {
        return Err(AuthError::Refused("key secret does not match"));
    }
    let caller = Caller {
        tenant: TenantId::new(key.tenant.clone()),
        actor: Actor::api_key(key.key_id.clone()),
        request_id: None,
        grants: Grants::Scopes(key.scopes.clone()),
        environment: key.kind.environment(),
        session: None,
    };
    verified.remember(epoch, &key.key_id, stored, &caller);
    touch(secrets, &caller.tenant, &key.key_id).await;
    Ok(caller)
}

/// Records a key's use, at most once a minute per process.
async fn touch(secrets: &dyn SecretStore, tenant: &TenantId, key_id: &str) {
    if keys::due_for_touch(key_id)
        && let Err(error) = secrets
            .touch_credential(tenant.as_str(), key_id, Utc::now().timestamp_millis())
            .await
    {
        // Bookkeeping only: the request goes on.
        tracing::debug!(%error, "cannot record an API key's use");
    }
}

async fn token_caller(
    config: &AuthConfig,
    commands: &CommandHandler,
    credential: &str,
) -> Result<Caller, AuthError> {
    let tokens = config
        .tokens
        .as_ref()
        .ok_or(AuthError::Refused("tokens are not enabled"))?;
    let claims = tokens
        .verify(credential)
        .map_err(|_| AuthError::Refused("invalid or expired token"))?;
    let loaded = commands
        .load::<User>(&user::stream_id(claims.sub))
        .await
        .map_err(|e| AuthError::Unavailable(e.to_string()))?;
    let state = loaded.state;
    let (Some(profile), Some(role)) = (&state.profile, state.role) else {
        return Err(AuthError::Refused("unknown user"));
    };
    if profile.tenant != claims.tid || !state.session_active(claims.sid, Utc::now()) {
        return Err(AuthError::Refused("session ended or user disabled"));
    }
    Ok(Caller {
        tenant: TenantId::new(profile.tenant.clone()),
        actor: Actor::user(profile.user_id.to_string()),
        request_id: None,
        grants: Grants::Role(role),
        environment: Environment::Live,
        session: Some(claims.sid),
    })
}

/// The scopes a new key may be given by `caller`: never more than the caller holds.
pub fn grantable(caller: &Caller, wanted: &BTreeSet<Scope>) -> Result<(), Scope> {
    match wanted.iter().find(|s| !caller.may(**s)) {
        Some(scope) => Err(*scope),
        None => Ok(()),
    }
}
