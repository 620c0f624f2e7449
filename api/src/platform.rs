//! One FlowForge process's parts: the event log, the read models and the background
//! workers that keep the read models up to date.

use std::sync::Arc;

use anyhow::Context;
use flowforge_engine::lease::{Leadership, PgAdvisoryLease, SoleProcess};
use flowforge_engine::queue::jetstream::JetStreamQueue;
use flowforge_engine::signing::SigningKeys;
use flowforge_engine::{Engine, EngineContext, InProcessQueue, WorkQueue};
use flowforge_projections::{Projection, ProjectionRunner, ReadDb, all_projections};
use flowforge_store::postgres::{PostgresConfig, PostgresEventStore};
use flowforge_store::sqlite::{SqliteConfig, SqliteEventStore};
use flowforge_store::{EventStore, Upcasters};
use tokio::task::JoinHandle;

use crate::config::{Config, Storage};

pub struct Platform {
    pub config: Config,
    pub store: Arc<dyn EventStore>,
    pub secrets: Arc<dyn flowforge_store::SecretStore>,
    /// The keys calls to apps are signed with and apps' signing-key bearers are checked
    /// against.
    pub signing_keys: Arc<SigningKeys>,
    /// Reached through [`Platform::reads`] (one tenant) or [`Platform::operations_db`].
    read_db: ReadDb,
    pub projections: Vec<Arc<dyn Projection>>,
    /// The log's PostgreSQL pool, when the log is on PostgreSQL (for the scheduler lease).
    pg_pool: Option<sqlx::PgPool>,
    /// The JetStream work queue, when work is distributed over NATS.
    pub jetstream: Option<Arc<JetStreamQueue>>,
    engine: Option<Engine>,
    workers: Vec<JoinHandle<()>>,
}

/// The upcasters every process applies when reading the log.
pub fn upcasters() -> Upcasters {
    Upcasters::new()
}

impl Platform {
    /// Connects to (or creates) the log and the read-model database and runs their
    /// migrations. Starts nothing in the background.
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        type Stores = (
            Arc<dyn EventStore>,
            Arc<dyn flowforge_store::SecretStore>,
            ReadDb,
        );
        let mut pg_pool = None;
        let (store, secrets, read_db): Stores = match &config.storage {
            Storage::Postgres {
                url,
                max_connections,
            } => {
                let mut pg = PostgresConfig::new(url.clone());
                pg.max_connections = *max_connections;
                let store = PostgresEventStore::connect(&pg, upcasters())
                    .await
                    .with_context(|| {
                        format!("opening the event log on {}", config.storage.describe())
                    })?;
                let read_db = ReadDb::connect_postgres(url, (*max_connections / 2).max(4))
                    .await
                    .context("opening the read-model database")?;
                warn_if_pools_crowd_the_server(store.pool(), *max_connections).await;
                pg_pool = Some(store.pool().clone());
                let store = Arc::new(store);
                (store.clone(), store, read_db)
            }
            Storage::Sqlite {
                data_dir,
                durability,
            } => {
                let mut sqlite = SqliteConfig::new(data_dir.join("events.db"));
                sqlite.durability = *durability;
                let store = SqliteEventStore::open(&sqlite, upcasters())
                    .await
                    .with_context(|| format!("opening the event log in {}", data_dir.display()))?;
                // Read models are rebuildable and checkpointed atomically with their rows:
                // no fsync per commit (see ReadDb::open_sqlite).
                let read_db = ReadDb::open_sqlite(&data_dir.join("read.db"), false)
                    .await
                    .context("opening the read-model database")?;
                let store = Arc::new(store);
                (store.clone(), store, read_db)
            }
        };
        let signing_keys = Arc::new(SigningKeys::new(
            flowforge_commands::CommandHandler::new(store.clone()),
            secrets.clone(),
            config.inngest_keys.signing_keys.clone(),
        ));
        Ok(Self {
            config,
            store,
            secrets,
            signing_keys,
            read_db,
            projections: all_projections(),
            pg_pool,
            jetstream: None,
            engine: None,
            workers: Vec::new(),
        })
    }

    /// Opens the platform, starts every projection runner and the execution engine.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let mut platform = Self::open(config).await?;
        // On PostgreSQL any number of processes may share the log. One at a time runs
        // each projection and the scheduler (a lease each): the others would only
        // repeat its reads and lose the race for the checkpoint.
        let leadership: Arc<dyn Leadership> = match &platform.pg_pool {
            Some(pool) => Arc::new(PgAdvisoryLease::new(pool.clone())),
            None => Arc::new(SoleProcess),
        };
        for projection in platform.projections.clone() {
            let runner = ProjectionRunner::new(
                platform.read_db.clone(),
                platform.store.clone(),
                projection.clone(),
            );
            // Create (or rebuild, after a schema change) before serving, so that the
            // API's views exist from the first request.
            runner
                .initialise()
                .await
                .with_context(|| format!("initialising projection {}", projection.name()))?;
            let leadership = leadership.clone();
            platform.workers.push(tokio::spawn(async move {
                let name = format!("projection-{}", runner.name());
                loop {
                    let mut lease = leadership.acquire(&name).await;
                    tokio::select! {
                        () = runner.run() => return,
                        () = lease.lost() => {
                            tracing::warn!(projection = runner.name(), "projection lease lost; waiting to take it again");
                        }
                    }
                }
            }));
        }
        // With NATS every process's executors share the work.
        let queue: Arc<dyn WorkQueue> = match &platform.config.nats {
            Some(settings) => {
                if platform.pg_pool.is_none() {
                    anyhow::bail!(
                        "work distribution over NATS needs the event log on PostgreSQL \
                         (FLOWFORGE_DATABASE_URL=postgres://…): an embedded SQLite log \
                         belongs to one process"
                    );
                }
                let queue = JetStreamQueue::connect(settings.clone())
                    .await
                    .with_context(|| format!("connecting to NATS JetStream at {}", settings.url))?;
                platform.jetstream = Some(queue.clone());
                queue
            }
            None => Arc::new(InProcessQueue::new()),
        };
        let engine = Engine::start_with_leadership(
            platform.store.clone(),
            platform.read_db.clone(),
            queue,
            platform.config.engine.clone(),
            platform.signing_keys.clone(),
            leadership,
        )
        .await
        .context("starting the execution engine")?;
        platform.engine = Some(engine);
        Ok(platform)
    }

    /// The running engine (present on servers, absent on tool invocations).
    pub fn engine(&self) -> Option<&Arc<EngineContext>> {
        self.engine.as_ref().map(|e| &e.context)
    }

    /// The read models, as one caller's tenant may read them.
    pub fn reads<'a>(&'a self, caller: &'a crate::caller::Caller) -> crate::reads::TenantReads<'a> {
        crate::reads::TenantReads::new(&self.read_db, caller)
    }

    /// The whole read-model database, for operations across tenants: projection status,
    /// rebuilds, readiness.
    pub fn operations_db(&self) -> &ReadDb {
        &self.read_db
    }

    pub fn projection(&self, name: &str) -> Option<Arc<dyn Projection>> {
        self.projections.iter().find(|p| p.name() == name).cloned()
    }

    /// Stops the background workers. In-flight projection batches roll back; their
    /// checkpoints make the next process resume exactly where this one stopped.
    pub fn stop(&mut self) {
        if let Some(mut engine) = self.engine.take() {
            engine.stop();
        }
        for worker in self.workers.drain(..) {
            worker.abort();
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every process opens up to `max_connections` for the log and half as many for the
/// read models. When several processes together can ask PostgreSQL for more than it
/// allows, acquires wait and then time out under load ("pool timed out"), which looks
/// like a FlowForge fault; say so once at start-up instead.
async fn warn_if_pools_crowd_the_server(pool: &sqlx::PgPool, max_connections: u32) {
    let per_process = max_connections + (max_connections / 2).max(4);
    let limit: Result<(String,), sqlx::Error> =
        sqlx::query_as("SHOW max_connections").fetch_one(pool).await;
    let Ok(limit) = limit.map(|(v,)| v.parse::<u32>().unwrap_or(0)) else {
        return;
    };
    tracing::info!(
        per_process,
        server_max_connections = limit,
        "PostgreSQL connection budget: each process may open {per_process} connections"
    );
    if limit > 0 && per_process * 2 > limit {
        tracing::warn!(
            per_process,
            server_max_connections = limit,
            "two FlowForge processes could exhaust PostgreSQL's max_connections; \
             lower FLOWFORGE_DB_MAX_CONNECTIONS or raise max_connections"
        );
    }
}
