//! Which process runs the scheduler (the reactor that derives work from the log, fires
//! timers and publishes jobs). Exactly one at a time is the aim; two for a moment are
//! safe, because every effect of the scheduler is an append with a deterministic stream
//! id or a publish with a deterministic message id, so the lease buys efficiency, not
//! correctness.
//!
//! On PostgreSQL the lease is a session-level advisory lock, held on a connection of
//! its own. We chose it over a JetStream-native mechanism (a KV key with a TTL) because
//! the scheduler's truth — the log and its checkpoint — is in PostgreSQL: a process
//! that cannot reach PostgreSQL cannot schedule anything anyway, and the lock goes away
//! the moment its holder's connection does (a killed process frees it at once, not
//! after a TTL). The holder checks its connection every second and steps down when the
//! check fails, so a holder cut off from PostgreSQL stops within about three seconds;
//! waiting processes try to take the lock every second.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

/// A held lease. [`Lease::lost`] resolves when the holder must stop.
pub struct Lease {
    lost: watch::Receiver<bool>,
    _holder: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    /// A lease that is never lost.
    pub fn forever() -> Self {
        let (_, lost) = watch::channel(false);
        Self {
            lost,
            _holder: None,
        }
    }

    pub async fn lost(&mut self) {
        loop {
            if *self.lost.borrow() {
                return;
            }
            if self.lost.changed().await.is_err() {
                // The sender is gone: a `forever` lease, or a holder that ended.
                if self._holder.is_none() {
                    std::future::pending::<()>().await;
                }
                return;
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(holder) = self._holder.take() {
            holder.abort();
        }
    }
}

#[async_trait]
pub trait Leadership: Send + Sync + 'static {
    /// Waits until this process holds the lease called `name`.
    async fn acquire(&self, name: &str) -> Lease;
    /// Whether one process is all there is (the embedded default): then the lease is
    /// always held and nothing else needs to follow the log on its own.
    fn is_sole(&self) -> bool {
        false
    }
}

/// The embedded default: one process, always the leader.
pub struct SoleProcess;

#[async_trait]
impl Leadership for SoleProcess {
    async fn acquire(&self, _name: &str) -> Lease {
        Lease::forever()
    }

    fn is_sole(&self) -> bool {
        true
    }
}

/// A PostgreSQL session advisory lock.
pub struct PgAdvisoryLease {
    /// Advisory locks are per database, so installations on one server do not collide.
    pool: sqlx::PgPool,
    retry_every: Duration,
}

impl PgAdvisoryLease {
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self {
            pool,
            retry_every: Duration::from_secs(1),
        }
    }
}

/// The advisory lock key of a lease name: stable across versions and processes.
pub fn lock_key(name: &str) -> i64 {
    // FNV-1a: fixed, simple and good enough to keep a handful of names apart.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("flowforge:{name}").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[async_trait]
impl Leadership for PgAdvisoryLease {
    async fn acquire(&self, name: &str) -> Lease {
        let key = lock_key(name);
        loop {
            match self.try_lock(key).await {
                Ok(Some(connection)) => {
                    tracing::info!(lease = name, "lease acquired");
                    let (tx, lost) = watch::channel(false);
                    let lease_name = name.to_owned();
                    let holder = tokio::spawn(hold(connection, tx, lease_name));
                    return Lease {
                        lost,
                        _holder: Some(holder),
                    };
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(lease = name, %error, "cannot try the lease"),
            }
            tokio::time::sleep(self.retry_every).await;
        }
    }
}

impl PgAdvisoryLease {
    async fn try_lock(&self, key: i64) -> Result<Option<sqlx::PgConnection>, sqlx::Error> {
        // A connection of its own, out of the pool: the lock lives as long as it does.
        let mut connection = self.pool.acquire().await?.detach();
        let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut connection)
            .await?;
        Ok(locked.then_some(connection))
    }
}

async fn hold(mut connection: sqlx::PgConnection, lost: watch::Sender<bool>, name: String) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let check = tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(&mut connection),
        )
        .await;
        if !matches!(check, Ok(Ok(_))) {
            tracing::warn!(lease = %name, "lost the connection that holds the lease; stepping down");
            let _ = lost.send(true);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(lock_key("scheduler"), lock_key("scheduler"));
        assert_ne!(lock_key("scheduler"), lock_key("cron"));
    }

    #[tokio::test]
    async fn the_sole_process_always_leads() {
        let mut lease = SoleProcess.acquire("scheduler").await;
        let lost = tokio::time::timeout(Duration::from_millis(50), lease.lost()).await;
        assert!(lost.is_err(), "a sole process never loses its lease");
    }
}
