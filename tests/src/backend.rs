//! A log plus a read-model database on either backend, for tests that run on both.

use std::sync::Arc;

use flowforge_projections::ReadDb;
use flowforge_store::postgres::{PostgresConfig, PostgresEventStore};
use flowforge_store::sqlite::{SqliteConfig, SqliteEventStore};
use flowforge_store::{EventStore, Upcasters};

use crate::pg::TestDatabase;

pub enum TestBackend {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
}

impl TestBackend {
    pub async fn sqlite() -> Option<Self> {
        Some(TestBackend::Sqlite(tempfile::tempdir().expect("temp dir")))
    }

    pub async fn postgres() -> Option<Self> {
        TestDatabase::create().await.map(TestBackend::Postgres)
    }

    pub fn name(&self) -> &'static str {
        match self {
            TestBackend::Sqlite(_) => "sqlite",
            TestBackend::Postgres(_) => "postgres",
        }
    }

    /// Opens the event log (each call is a new handle, as another process would have).
    pub async fn store(&self) -> Arc<dyn EventStore> {
        match self {
            TestBackend::Sqlite(dir) => Arc::new(
                SqliteEventStore::open(
                    &SqliteConfig::new(dir.path().join("events.db")),
                    Upcasters::new(),
                )
                .await
                .expect("open sqlite log"),
            ),
            TestBackend::Postgres(db) => Arc::new(
                PostgresEventStore::connect(&PostgresConfig::new(db.url()), Upcasters::new())
                    .await
                    .expect("connect postgres log"),
            ),
        }
    }

    pub async fn read_db(&self) -> ReadDb {
        match self {
            TestBackend::Sqlite(dir) => ReadDb::open_sqlite(&dir.path().join("read.db"), false)
                .await
                .expect("open sqlite read models"),
            TestBackend::Postgres(db) => ReadDb::connect_postgres(db.url(), 8)
                .await
                .expect("connect postgres read models"),
        }
    }

    /// The URL `flowforge serve` would be given for this backend's database.
    pub fn database_url(&self) -> Option<&str> {
        match self {
            TestBackend::Sqlite(_) => None,
            TestBackend::Postgres(db) => Some(db.url()),
        }
    }

    pub fn data_dir(&self) -> Option<&std::path::Path> {
        match self {
            TestBackend::Sqlite(dir) => Some(dir.path()),
            TestBackend::Postgres(_) => None,
        }
    }
}

/// Instantiates async test functions `fn(TestBackend)` once per backend:
/// `on_both_backends!(case_a, case_b);` creates `sqlite::case_a`, `postgres::case_a`, …
#[macro_export]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(backend) = $crate::backend::TestBackend::sqlite().await else { return };
                    super::$case(backend).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(backend) = $crate::backend::TestBackend::postgres().await else { return };
                    super::$case(backend).await;
                }
            )*
        }
    };
}

impl TestBackend {
    /// A second, empty read-model database beside this backend's, for comparing a
    /// rebuild with the incremental read model. Keep the guard while using it.
    pub async fn fresh_read_db(&self) -> (ReadDb, Option<crate::pg::TestDatabase>) {
        match self {
            TestBackend::Sqlite(dir) => (
                ReadDb::open_sqlite(&dir.path().join("fresh.db"), false)
                    .await
                    .expect("open a fresh sqlite read model"),
                None,
            ),
            TestBackend::Postgres(_) => {
                let other = crate::pg::TestDatabase::create()
                    .await
                    .expect("create a fresh postgres database");
                let db = ReadDb::connect_postgres(other.url(), 4)
                    .await
                    .expect("connect the fresh read model");
                (db, Some(other))
            }
        }
    }

    /// The rows of projection `name`'s table in this backend's read model and in one
    /// rebuilt from the log into a fresh database, both ordered by `order_by`.
    pub async fn incremental_and_rebuilt<D: flowforge_projections::document::Document>(
        &self,
        name: &str,
        order_by: &str,
    ) -> (Vec<D>, Vec<D>) {
        let (fresh, _guard) = self.fresh_read_db().await;
        let projection = flowforge_projections::find_projection(name).expect("a projection");
        let table = projection.tables()[0];
        flowforge_projections::ProjectionRunner::new(fresh.clone(), self.store().await, projection)
            .catch_up()
            .await
            .expect("rebuild into the fresh read model");
        let read = |db: ReadDb| async move {
            let found = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM {table} ORDER BY {order_by}",
                D::COLUMNS.join(", ")
            )))
            .fetch_all(db.pool())
            .await
            .expect("read the rows");
            found
                .iter()
                .map(D::from_row)
                .collect::<Result<Vec<D>, _>>()
                .expect("decode the rows")
        };
        let incremental = read(self.read_db().await).await;
        let rebuilt = read(fresh).await;
        (incremental, rebuilt)
    }
}
