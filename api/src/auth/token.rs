//! Access tokens: HS256 JWTs naming a user, their tenant and their session.
//!
//! A token carries no role: the role, whether the user is disabled and whether the
//! session was logged out are read from the user's stream on every request, so that
//! a change takes effect at the next request rather than at expiry.

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const ISSUER: &str = "flowforge";
/// The shortest secret `flowforge serve` accepts.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// The tenant.
    pub tid: String,
    /// The session (logout ends it).
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is invalid or has expired")]
    Invalid,
    #[error("cannot sign a token: {0}")]
    Signing(String),
}

/// The secret tokens are signed with.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    pub fn issue(
        &self,
        user: Uuid,
        tenant: &str,
        session: Uuid,
        issued: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> Result<String, TokenError> {
        let claims = Claims {
            sub: user,
            tid: tenant.to_owned(),
            sid: session,
            iat: issued.timestamp(),
            exp: expires.timestamp(),
            iss: ISSUER.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Signing(e.to_string()))
    }

    /// The claims of a token signed with this secret, unexpired, issued by FlowForge.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|_| TokenError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(&[7u8; 32])
    }

    #[test]
    fn a_token_round_trips_until_it_expires() {
        let now = Utc::now();
        let (user, session) = (Uuid::now_v7(), Uuid::now_v7());
        let token = keys()
            .issue(
                user,
                "acme",
                session,
                now,
                now + chrono::Duration::minutes(5),
            )
            .unwrap();
        let claims = keys().verify(&token).unwrap();
        assert_eq!(
            (claims.sub, claims.tid.as_str(), claims.sid),
            (user, "acme", session)
        );

        let expired = keys()
            .issue(
                user,
                "acme",
                session,
                now,
                now - chrono::Duration::seconds(1),
            )
            .unwrap();
        assert!(keys().verify(&expired).is_err());
    }

    #[test]
    fn tampered_or_foreign_tokens_are_refused() {
        let now = Utc::now();
        let token = keys()
            .issue(
                Uuid::nil(),
                "acme",
                Uuid::nil(),
                now,
                now + chrono::Duration::minutes(5),
            )
            .unwrap();
        assert!(TokenKeys::new(&[8u8; 32]).verify(&token).is_err());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = parts[1].replacen('e', "f", 1);
        assert!(keys().verify(&parts.join(".")).is_err());
        assert!(keys().verify("not.a.token").is_err());
        // `alg: none` must never pass.
        let none = format!("eyJhbGciOiJub25lIn0.{}.", token.split('.').nth(1).unwrap());
        assert!(keys().verify(&none).is_err());
    }
}
