//! API keys: made here, shown once, kept only as a SHA-256 hash in the secret store.
//!
//! A key has ~190 random bits, so a fast hash is enough (a password hash defends weak
//! secrets, which these are not) and keeps every request's check cheap.

use flowforge_domain::api_key::{ID_LEN, KeyKind, SECRET_LEN};
use rand::Rng;
use sha2::{Digest, Sha256};

/// The secret-store name of a key's hash.
pub fn secret_name(key_id: &str) -> String {
    format!("api_key/{key_id}")
}

fn base62(n: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// A new key: its id and the whole key text.
pub fn generate(kind: KeyKind) -> (String, String) {
    let id = base62(ID_LEN);
    let key = format!("ff_{}_{id}{}", kind.as_str(), base62(SECRET_LEN));
    (id, key)
}

/// A new signing key for an environment, in the Inngest format
/// (`signkey-<env>-<64 hex>`), and an id to name it by.
pub fn generate_signing_key(environment: flowforge_domain::Environment) -> (String, String) {
    let secret: [u8; 32] = rand::random();
    (
        base62(ID_LEN),
        format!("signkey-{}-{}", environment.as_str(), hex::encode(secret)),
    )
}

pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Compares a presented key with a stored hash without leaking where they differ.
pub fn matches(key: &str, stored_hash: &str) -> bool {
    crate::config::constant_time_eq(hash(key).as_bytes(), stored_hash.as_bytes())
}

/// How often one process records a key's use: often enough for "last used", rarely
/// enough that using a key costs no write per request.
const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether this process should record a use of `key_id` now.
pub fn due_for_touch(key_id: &str) -> bool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;
    static TOUCHED: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    let mut touched = TOUCHED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    match touched.get(key_id) {
        Some(at) if now.duration_since(*at) < TOUCH_EVERY => false,
        _ => {
            if touched.len() > 100_000 {
                touched.retain(|_, at| now.duration_since(*at) < TOUCH_EVERY);
            }
            touched.insert(key_id.to_owned(), now);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowforge_domain::api_key::parse_key;

    #[test]
    fn generated_keys_parse_and_match_only_their_hash() {
        let (id, key) = generate(KeyKind::Test);
        let parsed = parse_key(&key).unwrap();
        assert_eq!((parsed.kind, parsed.id), (KeyKind::Test, id.as_str()));
        let stored = hash(&key);
        assert!(matches(&key, &stored));
        let (_, other) = generate(KeyKind::Test);
        assert!(!matches(&other, &stored));
        assert_ne!(generate(KeyKind::Live).1, generate(KeyKind::Live).1);
    }

    #[test]
    fn a_key_is_touched_at_most_once_a_minute() {
        let (id, _) = generate(KeyKind::Live);
        assert!(due_for_touch(&id));
        assert!(!due_for_touch(&id));
        let (other, _) = generate(KeyKind::Live);
        assert!(due_for_touch(&other));
    }
}
