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

pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Compares a presented key with a stored hash without leaking where they differ.
pub fn matches(key: &str, stored_hash: &str) -> bool {
    let presented = hash(key);
    presented.len() == stored_hash.len()
        && presented
            .bytes()
            .zip(stored_hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
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
}
