//! The read-model database: PostgreSQL in production, a SQLite file beside the log in
//! the embedded default.
//!
//! Read models are written in one portable SQL dialect through sqlx's `Any` driver:
//! `$n` parameters, `INSERT … ON CONFLICT … DO UPDATE`, `RETURNING`, and only the
//! column types both databases share (BIGINT, TEXT, DOUBLE PRECISION, BOOLEAN; JSON as
//! TEXT; timestamps as BIGINT milliseconds). One projection, one SQL text.

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor, Transaction};

use crate::ProjectionError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

#[derive(Clone, Debug)]
pub struct ReadDb {
    pool: AnyPool,
    dialect: Dialect,
}

static INSTALL_DRIVERS: Once = Once::new();

fn install_drivers() {
    INSTALL_DRIVERS.call_once(sqlx::any::install_default_drivers);
}

impl ReadDb {
    /// Connects to a PostgreSQL read-model database and migrates it.
    pub async fn connect_postgres(
        url: &str,
        max_connections: u32,
    ) -> Result<Self, ProjectionError> {
        install_drivers();
        let options: AnyConnectOptions = url.parse()?;
        let pool = flowforge_store::pool::check_only_idle_connections(AnyPoolOptions::new())
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            // Read models are derived and their checkpoint commits in the same transaction
            // as their rows: a crash can lose the last few commits only together, and the
            // runner then simply applies those events again. So they need not wait for
            // the WAL flush, which would otherwise cost a flush per projection per batch.
            //
            // Statements are planned for their parameters every time. sqlx prepares
            // them, and after five executions PostgreSQL may settle on a generic plan
            // costed while the table was young (one page, never analysed): a
            // projection's `WHERE key IN (…)` load then stayed a sequential scan as the
            // table grew, reading every row for every batch, until autovacuum's next
            // ANALYZE (two thirds of the loads in the runs benchmark); and the API's
            // optional filters (`$n IS NULL OR …`) cannot use an index in a generic plan.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET synchronous_commit = off").await?;
                    conn.execute("SET plan_cache_mode = force_custom_plan")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let db = Self {
            pool,
            dialect: Dialect::Postgres,
        };
        db.migrate().await?;
        Ok(db)
    }

    /// Opens (creating if needed) a SQLite read-model file and migrates it.
    ///
    /// `synchronous_full` = false (what FlowForge uses) commits without an fsync: safe
    /// for read models, for the reason given in [`ReadDb::connect_postgres`].
    pub async fn open_sqlite(path: &Path, synchronous_full: bool) -> Result<Self, ProjectionError> {
        install_drivers();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ProjectionError::Io(e.to_string()))?;
        }
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let options: AnyConnectOptions = url.parse()?;
        let synchronous = if synchronous_full { "FULL" } else { "NORMAL" };
        let pool = flowforge_store::pool::check_only_idle_connections(AnyPoolOptions::new())
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
                         PRAGMA busy_timeout = 10000;"
                    )))
                    .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let db = Self {
            pool,
            dialect: Dialect::Sqlite,
        };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), ProjectionError> {
        let mut migrator = match self.dialect {
            Dialect::Postgres => sqlx::migrate!("../migrations/postgres/read"),
            Dialect::Sqlite => sqlx::migrate!("../migrations/sqlite/read"),
        };
        // The log and the read side may share a PostgreSQL database; each keeps its own
        // migration history so neither sees the other's as missing.
        migrator.dangerous_set_table_name("_flowforge_read_migrations");
        let mut conn = self.pool.acquire().await?;
        migrator.run_direct(None, &mut *conn, false).await?;
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so a transaction that reads before it writes cannot fail
    /// with a lock upgrade conflict.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, ProjectionError> {
        Ok(match self.dialect {
            Dialect::Postgres => self.pool.begin().await?,
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
        })
    }

    /// Serialises, until `tx` ends, everyone who changes which generation of projection
    /// `name` exists. Row locks cannot do this when there is no row yet: two processes
    /// initialising an empty read database would both create a first generation.
    /// SQLite's `BEGIN IMMEDIATE` already excludes every other writer.
    pub async fn lock_projection(
        &self,
        tx: &mut Transaction<'static, Any>,
        name: &str,
    ) -> Result<(), ProjectionError> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))::text")
                .bind(format!("flowforge.projection.{name}"))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// ` FOR UPDATE` where the dialect has row locks (SQLite's write lock already excludes
    /// every other writer).
    pub fn for_update(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }
}
