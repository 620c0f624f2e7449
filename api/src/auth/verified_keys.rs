//! API keys this process has verified against the log, kept for a moment.
//!
//! Checking a key reads its stream and its stored hash: two statements on every
//! request, a third of a millisecond of each run's latency on PostgreSQL and a good
//! share of its CPU. A verified key is kept here instead, and forgotten
//!
//! - at once in the process that revokes it (the revoke route forgets it before it
//!   answers);
//! - when this process's live feed delivers any event of the key's stream (a revocation
//!   in another process: milliseconds after its commit);
//! - when the feed lags or stops (everything is forgotten), and
//! - at the latest `ttl` after it was verified, so that even a feed that silently
//!   falls behind leaves a revoked key working for no longer than that.
//!
//! A verification that read the log before a revocation must not put its stale answer
//! back after the revocation was seen: every forgetting moves an epoch on, and an
//! answer is kept only if the epoch did not move while it was being read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use flowforge_domain::api_key;
use tokio::sync::broadcast::error::RecvError;

use crate::caller::Caller;

/// How long a verified key is kept by default (`FLOWFORGE_API_KEY_CACHE_MS`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(1);

/// Keys kept at most; past that the oldest half is dropped (a few thousand keys in use
/// at once is already a large deployment).
const MAX_KEYS: usize = 10_000;

struct Verified {
    caller: Caller,
    /// The stored SHA-256 of the whole key: a presented key must still match it.
    hash: String,
    at: Instant,
}

pub struct VerifiedKeys {
    ttl: Duration,
    entries: Mutex<HashMap<String, Verified>>,
    epoch: AtomicU64,
    /// Whether a live feed is telling this cache about key changes; without one it
    /// keeps nothing.
    following: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl VerifiedKeys {
    /// A cache that keeps nothing until [`VerifiedKeys::follow`] gives it a feed.
    pub fn new(ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            ttl,
            entries: Mutex::default(),
            epoch: AtomicU64::new(0),
            following: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.following.load(Ordering::Acquire)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Verified>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take before reading a key from the log; hand to [`VerifiedKeys::remember`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The caller `credential` proved when key `key_id` was last verified, if that was
    /// less than the TTL ago and nothing about the key has been seen since.
    pub fn caller(&self, key_id: &str, credential: &str) -> Option<Caller> {
        if !self.enabled() {
            return None;
        }
        let found = {
            let entries = self.entries();
            entries
                .get(key_id)
                .filter(|v| v.at.elapsed() < self.ttl)
                .filter(|v| super::keys::matches(credential, &v.hash))
                .map(|v| v.caller.clone())
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps a verification made from a read that started at `epoch`, unless something
    /// was forgotten since.
    pub fn remember(&self, epoch: u64, key_id: &str, hash: String, caller: &Caller) {
        if !self.enabled() {
            return;
        }
        let mut entries = self.entries();
        // Checked under the lock that `forget` moves the epoch under, so a forgetting
        // cannot slip between the check and the insert.
        if self.epoch() != epoch {
            return;
        }
        if entries.len() >= MAX_KEYS {
            let mut ages: Vec<Instant> = entries.values().map(|v| v.at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            entries.retain(|_, v| v.at > cut);
        }
        entries.insert(
            key_id.to_owned(),
            Verified {
                caller: caller.clone(),
                hash,
                at: Instant::now(),
            },
        );
    }

    pub fn forget(&self, key_id: &str) {
        let mut entries = self.entries();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.remove(key_id);
    }

    pub fn forget_all(&self) {
        let mut entries = self.entries();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    /// (hits, misses) since the process started.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Starts forgetting keys as `feed` shows their streams change. Must be called from
    /// within a Tokio runtime; the task ends when the cache is dropped or the feed stops.
    pub fn follow(self: &Arc<Self>, feed: &flowforge_engine::live::LiveFeed) {
        if self.ttl.is_zero() {
            return;
        }
        let mut events = feed.listen();
        let cache: Weak<Self> = Arc::downgrade(self);
        self.following.store(true, Ordering::Release);
        tokio::spawn(async move {
            loop {
                let received = events.recv().await;
                let Some(cache) = cache.upgrade() else { return };
                match received {
                    Ok(event) if event.stream_type == api_key::STREAM_TYPE => {
                        let key_id = event
                            .stream_id
                            .strip_prefix(api_key::STREAM_PREFIX)
                            .unwrap_or(&event.stream_id);
                        cache.forget(key_id);
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "live feed lagged: forgetting verified API keys");
                        cache.forget_all();
                    }
                    Err(RecvError::Closed) => {
                        cache.following.store(false, Ordering::Release);
                        cache.forget_all();
                        return;
                    }
                }
            }
        });
    }

    /// For tests: keep entries without a feed.
    #[cfg(test)]
    fn assume_following(&self) {
        self.following.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(ttl: Duration) -> Arc<VerifiedKeys> {
        let cache = VerifiedKeys::new(ttl);
        cache.assume_following();
        cache
    }

    fn key() -> (String, String) {
        super::super::keys::generate(api_key::KeyKind::Live)
    }

    /// A verification of `secret` under `id` that started at `epoch`.
    fn remember(cache: &VerifiedKeys, epoch: u64, id: &str, secret: &str) {
        cache.remember(
            epoch,
            id,
            super::super::keys::hash(secret),
            &Caller::dev_admin(),
        );
    }

    #[test]
    fn a_verified_key_is_kept_for_its_own_secret_only() {
        let cache = cache(Duration::from_secs(60));
        let (id, secret) = key();
        let (_, other) = key();
        remember(&cache, cache.epoch(), &id, &secret);
        assert!(cache.caller(&id, &secret).is_some());
        assert!(
            cache.caller(&id, &other).is_none(),
            "another secret under the same id"
        );
        assert!(cache.caller("unknown", &secret).is_none());
        assert_eq!(cache.counts(), (1, 2));
    }

    #[test]
    fn a_verification_read_before_a_forgetting_is_not_kept() {
        let cache = cache(Duration::from_secs(60));
        let (id, secret) = key();
        let before = cache.epoch();
        // A revocation is seen while the verification is still reading the log.
        cache.forget(&id);
        remember(&cache, before, &id, &secret);
        assert!(cache.caller(&id, &secret).is_none());
        // A fresh verification is kept, and a later forgetting removes it.
        remember(&cache, cache.epoch(), &id, &secret);
        assert!(cache.caller(&id, &secret).is_some());
        cache.forget_all();
        assert!(cache.caller(&id, &secret).is_none());
    }

    #[test]
    fn entries_expire_and_nothing_is_kept_without_a_feed_or_ttl() {
        let cache = cache(Duration::from_millis(30));
        let (id, secret) = key();
        remember(&cache, cache.epoch(), &id, &secret);
        assert!(cache.caller(&id, &secret).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.caller(&id, &secret).is_none(), "expired");

        for unfollowed in [
            VerifiedKeys::new(Duration::from_secs(60)),
            cache_with_zero_ttl(),
        ] {
            remember(&unfollowed, unfollowed.epoch(), &id, &secret);
            assert!(unfollowed.caller(&id, &secret).is_none());
        }
    }

    fn cache_with_zero_ttl() -> Arc<VerifiedKeys> {
        cache(Duration::ZERO)
    }

    #[test]
    fn a_full_cache_drops_its_oldest_half() {
        let cache = cache(Duration::from_secs(60));
        let (_, secret) = key();
        let hash = super::super::keys::hash(&secret);
        for n in 0..MAX_KEYS + 1 {
            cache.remember(
                cache.epoch(),
                &format!("k{n}"),
                hash.clone(),
                &Caller::dev_admin(),
            );
        }
        let kept = cache.entries().len();
        assert!(kept <= MAX_KEYS / 2 + 1, "{kept}");
        assert!(
            cache.caller(&format!("k{MAX_KEYS}"), &secret).is_some(),
            "the newest stays"
        );
    }
}
