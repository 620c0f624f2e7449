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

/// One pooled connection kept by a task that uses it all the time (the log's writer,
/// the commit announcer), instead of taken from the pool and given back per statement.
///
/// sqlx pings every connection given back to a pool (sqlx-core 0.9,
/// `PoolConnection::return_to_pool`; there is no setting for it): one more round trip,
/// and a wake-up of a server process, after every statement. A task that holds its
/// connection pays it only when it gives the connection up. It checks the connection
/// itself as the pool would, only after it sat idle for the threshold, and takes
/// another when a statement on it failed for any reason other than the database's
/// answer.
///
/// In a pool smaller than [`MIN_POOL_TO_HOLD`] it holds nothing between statements:
/// the tasks that hold connections could otherwise take all of it and leave every other
/// user (the LISTEN connection, readers) waiting.
pub struct HeldConnection<DB: Database> {
    pool: sqlx::Pool<DB>,
    connection: Option<sqlx::pool::PoolConnection<DB>>,
    last_used: std::time::Instant,
    idle_before_check: Duration,
    hold: bool,
}

/// The smallest pool from which a [`HeldConnection`] keeps its connection.
pub const MIN_POOL_TO_HOLD: u32 = 8;

impl<DB: Database> HeldConnection<DB> {
    pub fn new(pool: sqlx::Pool<DB>) -> Self {
        let hold = pool.options().get_max_connections() >= MIN_POOL_TO_HOLD;
        Self {
            pool,
            connection: None,
            last_used: std::time::Instant::now(),
            idle_before_check: IDLE_BEFORE_CHECK,
            hold,
        }
    }

    /// The held connection: taken from the pool if none is held, pinged first (and
    /// replaced if the ping fails) if it sat idle for the threshold.
    pub async fn get(&mut self) -> Result<&mut DB::Connection, sqlx::Error> {
        if let Some(mut connection) = self.connection.take() {
            let healthy = self.last_used.elapsed() < self.idle_before_check
                || connection.ping().await.is_ok();
            if healthy {
                self.connection = Some(connection);
            } else {
                connection.close_on_drop();
            }
        }
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.pool.acquire().await?,
        };
        self.last_used = std::time::Instant::now();
        Ok(&mut **self.connection.insert(connection))
    }

    /// Reports how the last statement on the connection went: unless the database
    /// answered it (an error of the statement, not of the connection), the connection
    /// is closed and the next [`HeldConnection::get`] takes another. In a small pool
    /// the connection goes back to it here.
    pub fn after<T>(&mut self, result: &Result<T, sqlx::Error>) {
        let broken = match result {
            Ok(_) => false,
            Err(error) => error.as_database_error().is_none(),
        };
        if broken && let Some(mut connection) = self.connection.take() {
            connection.close_on_drop();
        }
        if !self.hold {
            self.connection = None;
        }
    }
}
