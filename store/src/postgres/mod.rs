//! The PostgreSQL event log (production).
//!
//! Appends are one call of the `event_log_append` SQL function (one round trip, one
//! transaction). Reads are bounded by `event_log_safe_position()`, which is what makes
//! the log safe to tail while concurrent transactions commit out of position order.
//!
//! Cross-process wake-ups use LISTEN/NOTIFY, but the NOTIFY is sent *after* the append
//! commits, from a separate statement: a NOTIFY inside the append transaction would take
//! PostgreSQL's global notify lock across the commit's WAL flush and serialise every
//! append in the database.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Row, types::Json};
use uuid::Uuid;

use crate::notifier::HeadNotifier;
use crate::{
    AppendOutcome, AppendedEvent, EventStore, ExpectedVersion, HeadWatch, LogFilter, LogPage,
    NewEvent, StoreError, StoredEvent, Upcasters, event::validate_batch,
};

const NOTIFY_CHANNEL: &str = "flowforge_event_log";
/// How many times an `ExpectedVersion::Any` append is retried when a concurrent append
/// to the same stream took the version it computed.
const ANY_VERSION_RETRIES: usize = 16;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres/log");

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl PostgresConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 32,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
pub struct PostgresEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    notifier: HeadNotifier,
    upcasters: Upcasters,
    /// Wakes the task that announces local commits to other processes.
    announce: tokio::sync::watch::Sender<u64>,
}

impl PostgresEventStore {
    /// Connects, runs the log's migrations, and starts the notification tasks.
    pub async fn connect(
        config: &PostgresConfig,
        upcasters: Upcasters,
    ) -> Result<Self, StoreError> {
        let options: PgConnectOptions = config.url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await?;
        Self::from_pool(pool, upcasters).await
    }

    /// Uses an existing pool (which must reach a database the log may own).
    pub async fn from_pool(pool: PgPool, upcasters: Upcasters) -> Result<Self, StoreError> {
        MIGRATOR.run(&pool).await?;
        let head = safe_position(&pool).await?;
        let notifier = HeadNotifier::new(head);
        let (announce, announce_rx) = tokio::sync::watch::channel(head);
        let store = Self {
            inner: Arc::new(Inner {
                pool,
                notifier,
                upcasters,
                announce,
            }),
        };
        tokio::spawn(announce_commits(store.inner.pool.clone(), announce_rx));
        tokio::spawn(listen_for_commits(
            store.inner.pool.clone(),
            store.inner.notifier.clone(),
            Arc::downgrade(&store.inner),
        ));
        Ok(store)
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    async fn try_append(
        &self,
        stream_id: &str,
        stream_type: &str,
        expected: ExpectedVersion,
        tenant: &str,
        columns: &AppendColumns,
    ) -> Result<AppendOutcome, StoreError> {
        let rows = sqlx::query(
            "SELECT global_position, stream_version, already_stored \
             FROM event_log_append($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(stream_id)
        .bind(stream_type)
        .bind(expected.code())
        .bind(tenant)
        .bind(&columns.ids)
        .bind(&columns.types)
        .bind(&columns.schema_versions)
        .bind(&columns.payloads)
        .bind(&columns.metadata)
        .fetch_all(&self.inner.pool)
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                return self
                    .recover_or_classify(error, stream_id, stream_type, expected, columns)
                    .await;
            }
        };
        let already_stored = rows
            .first()
            .map(|r| r.try_get::<bool, _>(2))
            .transpose()?
            .unwrap_or(false);
        let events = rows
            .iter()
            .map(|r| {
                Ok(AppendedEvent {
                    global_position: to_u64(r.try_get::<i64, _>(0)?),
                    stream_version: to_u64(r.try_get::<i64, _>(1)?),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        if already_stored && events.len() != columns.ids.len() {
            return Err(StoreError::IdempotencyMismatch {
                event_id: columns.ids[0],
            });
        }
        Ok(AppendOutcome {
            events,
            already_stored,
        })
    }

    /// Turns a failed append into the typed error it stands for, or into the original
    /// outcome when a concurrent append of the very same events won the race.
    async fn recover_or_classify(
        &self,
        error: sqlx::Error,
        stream_id: &str,
        stream_type: &str,
        expected: ExpectedVersion,
        columns: &AppendColumns,
    ) -> Result<AppendOutcome, StoreError> {
        let Some(db) = error.as_database_error() else {
            return Err(error.into());
        };
        Err(match (db.code().as_deref(), db.constraint()) {
            (Some("FF001"), _) => {
                let actual = db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|e| e.detail())
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0);
                StoreError::Conflict {
                    stream_id: stream_id.to_owned(),
                    expected,
                    actual,
                }
            }
            (Some("FF003"), _) => StoreError::StreamTypeMismatch {
                stream_id: stream_id.to_owned(),
                actual: db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|e| e.detail())
                    .unwrap_or_default()
                    .to_owned(),
                requested: stream_type.to_owned(),
            },
            (Some("23505"), Some("event_log_stream_version_key")) => {
                // A concurrent append took the version between our check and our insert.
                let actual = self.stream_version(stream_id).await.unwrap_or(0);
                StoreError::Conflict {
                    stream_id: stream_id.to_owned(),
                    expected,
                    actual,
                }
            }
            (Some("23505"), Some("event_log_event_id_key")) => {
                // A concurrent append of the same events won: answer as the retry it is.
                return match self.stored_positions(stream_id, &columns.ids).await? {
                    Some(outcome) => Ok(outcome),
                    None => Err(StoreError::IdempotencyMismatch {
                        event_id: columns.ids[0],
                    }),
                };
            }
            _ => error.into(),
        })
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT max(stream_version) FROM event_log WHERE stream_id = $1")
                .bind(stream_id)
                .fetch_one(&self.inner.pool)
                .await?;
        Ok(version.map_or(0, to_u64))
    }

    async fn stored_positions(
        &self,
        stream_id: &str,
        ids: &[Uuid],
    ) -> Result<Option<AppendOutcome>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.global_position, e.stream_version \
             FROM unnest($1::uuid[]) WITH ORDINALITY AS i(id, n) \
             JOIN event_log e ON e.event_id = i.id AND e.stream_id = $2 ORDER BY i.n",
        )
        .bind(ids)
        .bind(stream_id)
        .fetch_all(&self.inner.pool)
        .await?;
        if rows.len() != ids.len() {
            return Ok(None);
        }
        let events = rows
            .iter()
            .map(|r| {
                Ok(AppendedEvent {
                    global_position: to_u64(r.try_get::<i64, _>(0)?),
                    stream_version: to_u64(r.try_get::<i64, _>(1)?),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Some(AppendOutcome {
            events,
            already_stored: true,
        }))
    }

    fn decode(&self, row: &PgRow) -> Result<StoredEvent, StoreError> {
        let position = to_u64(row.try_get::<i64, _>("global_position")?);
        let metadata: Json<flowforge_domain::EventMetadata> =
            row.try_get("metadata").map_err(|e| StoreError::Corrupt {
                position,
                reason: e.to_string(),
            })?;
        let mut event = StoredEvent {
            event_id: row.try_get("event_id")?,
            stream_id: row.try_get("stream_id")?,
            stream_type: row.try_get("stream_type")?,
            stream_version: to_u64(row.try_get::<i64, _>("stream_version")?),
            global_position: position,
            event_type: row.try_get("event_type")?,
            schema_version: u32::try_from(row.try_get::<i32, _>("schema_version")?).unwrap_or(1),
            payload: row.try_get::<Value, _>("payload")?,
            metadata: metadata.0,
            recorded_at: row.try_get::<DateTime<Utc>, _>("recorded_at")?,
        };
        self.inner.upcasters.apply(&mut event);
        Ok(event)
    }
}

struct AppendColumns {
    ids: Vec<Uuid>,
    types: Vec<String>,
    schema_versions: Vec<i32>,
    payloads: Vec<Value>,
    metadata: Vec<Value>,
}

impl AppendColumns {
    fn from_events(events: Vec<NewEvent>) -> Result<Self, StoreError> {
        let mut columns = Self {
            ids: Vec::with_capacity(events.len()),
            types: Vec::with_capacity(events.len()),
            schema_versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metadata: Vec::with_capacity(events.len()),
        };
        for event in events {
            columns.ids.push(event.event_id);
            columns.types.push(event.event_type);
            columns
                .schema_versions
                .push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
            columns.payloads.push(event.payload);
            columns.metadata.push(
                serde_json::to_value(&event.metadata)
                    .map_err(|e| StoreError::Backend(format!("metadata: {e}")))?,
            );
        }
        Ok(columns)
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

async fn safe_position(pool: &PgPool) -> Result<u64, StoreError> {
    let safe: i64 = sqlx::query_scalar("SELECT event_log_safe_position()")
        .fetch_one(pool)
        .await?;
    Ok(to_u64(safe))
}

/// Publishes local commits to other processes, coalescing bursts into one NOTIFY.
async fn announce_commits(pool: PgPool, mut commits: tokio::sync::watch::Receiver<u64>) {
    while commits.changed().await.is_ok() {
        let head = *commits.borrow_and_update();
        if let Err(error) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(head.to_string())
            .execute(&pool)
            .await
        {
            // Readers elsewhere fall back to polling; nothing is lost, only latency.
            tracing::debug!(%error, "could not announce a commit");
        }
    }
}

/// Turns other processes' NOTIFYs into local wake-ups. Reconnects when the connection drops.
async fn listen_for_commits(pool: PgPool, notifier: HeadNotifier, alive: std::sync::Weak<Inner>) {
    loop {
        if alive.strong_count() == 0 {
            return;
        }
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(%error, "LISTEN connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::debug!(%error, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(5), listener.recv()).await {
                Ok(Ok(notification)) => {
                    if let Ok(head) = notification.payload().parse::<u64>() {
                        notifier.advance(head);
                    }
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "LISTEN connection lost; reconnecting");
                    break;
                }
                Err(_elapsed) => {
                    if alive.strong_count() == 0 || pool.is_closed() {
                        return;
                    }
                }
            }
        }
    }
}

#[async_trait]
impl EventStore for PostgresEventStore {
    async fn append(
        &self,
        stream_id: &str,
        stream_type: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let tenant = validate_batch(&events)?.to_owned();
        let columns = AppendColumns::from_events(events)?;
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            match self
                .try_append(stream_id, stream_type, expected, &tenant, &columns)
                .await
            {
                Err(StoreError::Conflict { .. })
                    if expected == ExpectedVersion::Any && attempts < ANY_VERSION_RETRIES =>
                {
                    continue;
                }
                other => break other?,
            }
        };
        if !outcome.already_stored {
            let last = outcome.last_position();
            self.inner.notifier.advance(last);
            self.inner.announce.send_if_modified(|head| {
                if last > *head {
                    *head = last;
                    true
                } else {
                    false
                }
            });
        }
        Ok(outcome)
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT global_position, event_id, stream_id, stream_type, stream_version, event_type, \
                    schema_version, payload, metadata, recorded_at \
             FROM event_log WHERE stream_id = $1 AND stream_version >= $2 \
             ORDER BY stream_version",
        )
        .bind(stream_id)
        .bind(to_i64(from_version))
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(|row| self.decode(row)).collect()
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
        filter: &LogFilter,
    ) -> Result<LogPage, StoreError> {
        // Two statements on purpose: the read's snapshot must be taken after the safe
        // position was computed (see event_log_safe_position).
        let safe = safe_position(&self.inner.pool).await?;
        if safe <= after {
            return Ok(LogPage {
                events: Vec::new(),
                scanned_to: after,
            });
        }
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT global_position, event_id, stream_id, stream_type, stream_version, event_type, \
                    schema_version, payload, metadata, recorded_at \
             FROM event_log \
             WHERE global_position > $1 AND global_position <= $2 \
               AND ($3::text IS NULL OR tenant_id = $3) \
               AND ($4::text[] IS NULL OR event_type = ANY($4)) \
             ORDER BY global_position LIMIT $5",
        )
        .bind(to_i64(after))
        .bind(to_i64(safe))
        .bind(filter.tenant_id.as_deref())
        .bind(filter.event_types.as_deref())
        .bind(limit)
        .fetch_all(&self.inner.pool)
        .await?;
        let events = rows
            .iter()
            .map(|row| self.decode(row))
            .collect::<Result<Vec<_>, _>>()?;
        let scanned_to = if events.len() as i64 == limit {
            events.last().map_or(safe, |e| e.global_position)
        } else {
            safe
        };
        Ok(LogPage { events, scanned_to })
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        safe_position(&self.inner.pool).await
    }

    async fn event_by_id(&self, event_id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        let row = sqlx::query(
            "SELECT global_position, event_id, stream_id, stream_type, stream_version, event_type, \
                    schema_version, payload, metadata, recorded_at \
             FROM event_log WHERE event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(&self.inner.pool)
        .await?;
        row.as_ref().map(|row| self.decode(row)).transpose()
    }

    fn head_watch(&self) -> HeadWatch {
        self.inner.notifier.watch()
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
