//! Connection-pool settings shared by every pool FlowForge opens.

use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::{Connection, Database};

/// A connection idle at least this long is pinged before it is handed out.
pub const IDLE_BEFORE_CHECK: Duration = Duration::from_secs(1);

/// Checks a pooled connection before use only when it has been idle for
/// [`IDLE_BEFORE_CHECK`].
///
/// sqlx pings every connection it takes from the pool by default: one more round trip
/// to the database before every statement or transaction, on the path of every append
/// and every projection batch (in the runs benchmark on PostgreSQL + NATS, p50 went
/// from 4.63–4.67 ms to 4.50–4.57 ms without it).
/// A connection in steady use has just proven itself; one that sat idle (across a
/// database restart, a proxy's timeout) is still checked, and a broken one is
/// dropped and another taken, as before. A connection that breaks between two uses a
/// moment apart fails that one statement, which every caller already handles as a
/// transient error.
pub fn check_only_idle_connections<DB: Database>(options: PoolOptions<DB>) -> PoolOptions<DB> {
    check_only_connections_idle_for(options, IDLE_BEFORE_CHECK)
}

/// [`check_only_idle_connections`] with another idle threshold; tests use it so that
/// what counts as "a moment ago" does not depend on how loaded the machine is.
pub fn check_only_connections_idle_for<DB: Database>(
    options: PoolOptions<DB>,
    idle_before_check: Duration,
) -> PoolOptions<DB> {
    options
        .test_before_acquire(false)
        .before_acquire(move |connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= idle_before_check {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
}
