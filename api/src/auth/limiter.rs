//! Failed-login limits, per account and per client address.
//!
//! Counts live in this process's memory: behind a load balancer each process limits
//! on its own, which bounds an attacker to `processes × limit` guesses per window.
//! For existing accounts the login also counts the `auth.login_failed` events in the
//! user's stream, which holds across processes and restarts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window failures are counted in, and the failures allowed in it.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
pub const PER_ACCOUNT: usize = 5;
pub const PER_CLIENT: u32 = 30;

pub struct LoginLimiter {
    window: Duration,
    per_account: u32,
    per_client: u32,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    pub fn new(window: Duration, per_account: u32, per_client: u32) -> Self {
        Self {
            window,
            per_account,
            per_client,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn recent(&self, key: &str, now: Instant) -> u32 {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.get(key).map_or(0, |times| {
            times
                .iter()
                .filter(|t| now.duration_since(**t) < self.window)
                .count() as u32
        })
    }

    /// Whether another attempt for this account from this client may be checked.
    pub fn allows(&self, account: &str, client: &str) -> bool {
        let now = Instant::now();
        self.recent(&format!("a:{account}"), now) < self.per_account
            && self.recent(&format!("c:{client}"), now) < self.per_client
    }

    pub fn record_failure(&self, account: &str, client: &str) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Keep memory bounded by dropping what has left the window.
        if failures.len() > 100_000 {
            failures.retain(|_, times| times.iter().any(|t| now.duration_since(*t) < self.window));
        }
        for key in [format!("a:{account}"), format!("c:{client}")] {
            let times = failures.entry(key).or_default();
            times.retain(|t| now.duration_since(*t) < self.window);
            times.push(now);
        }
    }

    /// A successful login clears its account's failures (not the client's).
    pub fn record_success(&self, account: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(&format!("a:{account}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_an_account_after_its_limit_and_a_client_after_its_own() {
        let limiter = LoginLimiter::new(Duration::from_secs(60), 3, 5);
        for _ in 0..3 {
            assert!(limiter.allows("ada", "10.0.0.1"));
            limiter.record_failure("ada", "10.0.0.1");
        }
        assert!(
            !limiter.allows("ada", "10.0.0.2"),
            "the account is locked from anywhere"
        );
        assert!(limiter.allows("bob", "10.0.0.1"));
        limiter.record_failure("bob", "10.0.0.1");
        limiter.record_failure("cy", "10.0.0.1");
        assert!(
            !limiter.allows("dee", "10.0.0.1"),
            "the client is out of attempts"
        );
        assert!(limiter.allows("dee", "10.0.0.3"));
    }

    #[test]
    fn failures_expire_with_the_window_and_success_clears_the_account() {
        let limiter = LoginLimiter::new(Duration::from_millis(30), 1, 10);
        limiter.record_failure("ada", "c");
        assert!(!limiter.allows("ada", "c"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(limiter.allows("ada", "c"));
        limiter.record_failure("ada", "c");
        limiter.record_success("ada");
        assert!(limiter.allows("ada", "c"));
    }
}
