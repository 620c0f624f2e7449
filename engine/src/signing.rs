//! The keys the server signs its calls to apps with, and checks apps' signing-key
//! bearers against: each space's [`SigningKeyRing`], whose keys live in the secret
//! store, and the operator's `FLOWFORGE_SIGNING_KEY` (with its fallback) for spaces
//! that have no key of their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use flowforge_commands::{CommandError, CommandHandler};
use flowforge_domain::Environment;
use flowforge_domain::signing_key::{SigningKeyRing, SigningKeyRingState, stream_id};
use flowforge_store::{SecretStore, StoreError};
use sha2::{Digest, Sha256};

use crate::protocol::{bare_bearer, constant_time_eq, hashed_signing_key};
use crate::space::Space;

/// How long a space's current key is remembered. A rotation made in another process
/// reaches this one's calls within this long; that is harmless, because apps accept
/// the old key and the new one alike until the grace period ends.
const REMEMBER_FOR: Duration = Duration::from_secs(5);

/// The secret holding a signing key.
pub fn key_secret_name(key_id: &str) -> String {
    format!("signing_key:{key_id}")
}

/// The secret that finds a key from the bearer apps present (the hashed key, without
/// its prefix): named by a digest of the bearer, valued `<environment>:<key id>`.
pub fn bearer_secret_name(bare_bearer: &str) -> String {
    format!(
        "signing_key_bearer:{}",
        hex::encode(Sha256::digest(bare_bearer.as_bytes()))
    )
}

/// A short, stable digest to tell keys apart in listings and the log.
pub fn fingerprint(key: &str) -> String {
    let hashed = hashed_signing_key(key);
    hex::encode(&Sha256::digest(hashed.as_bytes())[..6])
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCredential {
    pub space: Space,
    /// `None` for the operator's configured key.
    pub key_id: Option<String>,
}

pub struct SigningKeys {
    commands: CommandHandler,
    secrets: Arc<dyn SecretStore>,
    /// The operator's keys, newest first: the first signs for spaces without keys of
    /// their own, all are accepted as the default tenant's live environment.
    configured: Vec<String>,
    remembered: Mutex<HashMap<Space, (Instant, Option<String>)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SigningKeyLookupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the signing keys: {0}")]
    Load(String),
}

impl SigningKeys {
    pub fn new(
        commands: CommandHandler,
        secrets: Arc<dyn SecretStore>,
        configured: Vec<String>,
    ) -> Self {
        Self {
            commands,
            secrets,
            configured: configured.into_iter().filter(|k| !k.is_empty()).collect(),
            remembered: Mutex::new(HashMap::new()),
        }
    }

    pub async fn ring(
        &self,
        tenant: &str,
        environment: Environment,
    ) -> Result<SigningKeyRingState, SigningKeyLookupError> {
        self.commands
            .load::<SigningKeyRing>(&stream_id(tenant, environment))
            .await
            .map(|loaded| loaded.state)
            .map_err(|error| match error {
                CommandError::Store(store) => SigningKeyLookupError::Store(store),
                other => SigningKeyLookupError::Load(other.to_string()),
            })
    }

    /// The key calls into `space` are signed with, if any.
    pub async fn for_space(&self, space: &Space) -> Result<Option<String>, SigningKeyLookupError> {
        if let Ok(remembered) = self.remembered.lock()
            && let Some((at, key)) = remembered.get(space)
            && at.elapsed() < REMEMBER_FOR
        {
            return Ok(key.clone());
        }
        let ring = self.ring(space.tenant(), space.environment).await?;
        let key = match ring.current() {
            Some(current) => {
                self.secrets
                    .secret(space.tenant(), &key_secret_name(&current.key_id))
                    .await?
            }
            None => None,
        };
        let key = key.or_else(|| self.configured.first().cloned());
        if let Ok(mut remembered) = self.remembered.lock() {
            remembered.insert(space.clone(), (Instant::now(), key.clone()));
        }
        Ok(key)
    }

    /// Forgets what this process remembers of a space's key (after it rotated it).
    pub fn forget(&self, space: &Space) {
        if let Ok(mut remembered) = self.remembered.lock() {
            remembered.remove(space);
        }
    }

    /// Whether the operator configured keys. Without one, calls go unsigned (the open
    /// development mode).
    pub fn has_configured(&self) -> bool {
        !self.configured.is_empty()
    }

    /// Whether apps of `space` may already hold a key its ring does not: the
    /// operator's keys are the default tenant's live keys.
    pub fn operator_keys_serve(&self, space: &Space) -> bool {
        self.has_configured()
            && space.environment == Environment::Live
            && space.tenant() == flowforge_domain::TenantId::DEFAULT
    }

    /// The app a signing-key bearer (`signkey-<env>-<sha256 hex>`, the hashed key)
    /// belongs to, if the key is valid now.
    pub async fn authenticate(
        &self,
        bearer: &str,
    ) -> Result<Option<AppCredential>, SigningKeyLookupError> {
        let bearer = bare_bearer(bearer);
        if self
            .configured
            .iter()
            .any(|key| constant_time_eq(hashed_signing_key(key).as_bytes(), bearer.as_bytes()))
        {
            return Ok(Some(AppCredential {
                space: Space::live(flowforge_domain::TenantId::DEFAULT),
                key_id: None,
            }));
        }
        let Some((tenant, value)) = self
            .secrets
            .find_secret(&bearer_secret_name(bearer))
            .await?
        else {
            return Ok(None);
        };
        let Some((environment, key_id)) = value
            .split_once(':')
            .and_then(|(env, id)| Some((Environment::parse(env)?, id.to_owned())))
        else {
            return Ok(None);
        };
        let ring = self.ring(&tenant, environment).await?;
        Ok(ring.accepts(&key_id, Utc::now()).then(|| AppCredential {
            space: Space::new(tenant, environment),
            key_id: Some(key_id),
        }))
    }
}
