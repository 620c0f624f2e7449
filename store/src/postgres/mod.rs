//! The PostgreSQL event log (production).
//!
//! Appends go through a few writer tasks that drain whatever appends are waiting and
//! send them as one call of the `event_log_append` SQL function: one round trip and
//! one commit (one WAL flush) for many appends, each still checked against its own
//! expected version (group commit). Reads are bounded by `event_log_safe_position()`,
//! which is what makes the log safe to tail while concurrent transactions commit out
//! of position order; `event_log_read()` computes it and reads in one round trip.
//!
//! Cross-process wake-ups use LISTEN/NOTIFY, but the NOTIFY is sent *after* the append
//! commits, from a separate statement: a NOTIFY inside the append transaction would take
//! PostgreSQL's global notify lock across the commit's WAL flush and serialise every
//! append in the database.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, types::Json};
use uuid::Uuid;

use crate::notifier::HeadNotifier;
use crate::pool::HeldConnection;
use crate::{
    AppendOutcome, AppendedEvent, EventStore, ExpectedVersion, HeadWatch, LogFilter, LogPage,
    NewEvent, StoreError, StoredEvent, Upcasters, event::validate_batch,
};

const NOTIFY_CHANNEL: &str = "flowforge_event_log";
/// How many times an `ExpectedVersion::Any` append is retried when a concurrent append
/// to the same stream took the version it computed.
const ANY_VERSION_RETRIES: usize = 16;
/// Appends (and events) one database call may carry.
const MAX_APPENDS_PER_CALL: usize = 256;
const MAX_EVENTS_PER_CALL: usize = 5_000;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres/log");

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// Writer tasks; each has at most one append call in flight, carrying every append
    /// that queued while the previous call was out.
    ///
    /// One, by default. Each call is one transaction, one WAL flush and one run of the
    /// append function whatever its size, so one writer that groups everything waiting
    /// does the least work per append; and its commits reach the log tail in position
    /// order, so the tail never has to read them back. With four writers the runs
    /// benchmark made 693–733 runs/s on PostgreSQL + NATS, with one 911–961 (same
    /// minutes, same build). The price is that one very large append (thousands of
    /// events) delays the appends queued behind it until it commits.
    pub append_writers: usize,
}

impl PostgresConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 32,
            acquire_timeout: Duration::from_secs(10),
            append_writers: 1,
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
    appends: tokio::sync::mpsc::Sender<PendingAppend>,
    tail: std::sync::OnceLock<Arc<crate::tail::LogTail>>,
}

/// One append waiting for a writer.
struct PendingAppend {
    stream_id: String,
    stream_type: String,
    expected: ExpectedVersion,
    tenant: String,
    columns: AppendColumns,
    reply: tokio::sync::oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

impl PostgresEventStore {
    /// Connects, runs the log's migrations, and starts the notification tasks.
    pub async fn connect(
        config: &PostgresConfig,
        upcasters: Upcasters,
    ) -> Result<Self, StoreError> {
        let options: PgConnectOptions = config.url.parse()?;
        let pool = crate::pool::check_only_idle_connections(PgPoolOptions::new())
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await?;
        Self::from_pool(pool, upcasters, config.append_writers).await
    }

    /// Uses an existing pool (which must reach a database the log may own).
    pub async fn from_pool(
        pool: PgPool,
        upcasters: Upcasters,
        append_writers: usize,
    ) -> Result<Self, StoreError> {
        {
            let mut conn = pool.acquire().await?;
            MIGRATOR.run_direct(None, &mut *conn, false).await?;
        }
        let head = safe_position(&pool).await?;
        let notifier = HeadNotifier::new(head);
        let (announce, announce_rx) = tokio::sync::watch::channel(head);
        let (appends, pending) = tokio::sync::mpsc::channel(8_192);
        let store = Self {
            inner: Arc::new(Inner {
                pool,
                notifier,
                upcasters,
                announce,
                appends,
                tail: std::sync::OnceLock::new(),
            }),
        };
        let pending = Arc::new(tokio::sync::Mutex::new(pending));
        for _ in 0..append_writers.max(1) {
            tokio::spawn(write_appends(Arc::downgrade(&store.inner), pending.clone()));
        }
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

    /// Sends a group of appends in one call. A unique violation means another
    /// transaction raced one of them; the group is then retried one append at a time,
    /// which gives each its own precise answer.
    ///
    /// Also returns when the group's events were recorded, when it went through as one
    /// call (the writer then hands them to the log tail).
    async fn append_group(
        &self,
        connection: &mut HeldConnection<Postgres>,
        group: &[&PendingAppend],
    ) -> (
        Vec<Result<AppendOutcome, StoreError>>,
        Option<DateTime<Utc>>,
    ) {
        match self.call_append(connection, group).await {
            Ok(answer) => answer,
            Err(error) if is_unique_violation(&error) => {
                let mut results = Vec::with_capacity(group.len());
                for append in group {
                    results.push(self.append_alone(connection, append).await);
                }
                (results, None)
            }
            Err(error) => (
                group.iter().map(|_| Err(shared_error(&error))).collect(),
                None,
            ),
        }
    }

    async fn append_alone(
        &self,
        connection: &mut HeldConnection<Postgres>,
        append: &PendingAppend,
    ) -> Result<AppendOutcome, StoreError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = match self.call_append(connection, &[append]).await {
                Ok((mut results, _)) => results.pop().unwrap_or(Err(StoreError::Backend(
                    "event_log_append returned no result".into(),
                ))),
                Err(error) if is_unique_violation(&error) => {
                    self.recover_unique_violation(error, append).await
                }
                Err(error) => Err(error.into()),
            };
            match result {
                // A concurrent append took the version this one computed; for `Any`
                // that is not a conflict, just a reason to compute again.
                Err(StoreError::Conflict { .. })
                    if append.expected == ExpectedVersion::Any
                        && attempts < ANY_VERSION_RETRIES => {}
                other => return other,
            }
        }
    }

    /// One call of `event_log_append` for the group: each append's outcome, and when the
    /// inserted events were recorded (the transaction's time, the same for all).
    async fn call_append(
        &self,
        connection: &mut HeldConnection<Postgres>,
        group: &[&PendingAppend],
    ) -> Result<
        (
            Vec<Result<AppendOutcome, StoreError>>,
            Option<DateTime<Utc>>,
        ),
        sqlx::Error,
    > {
        let mut stream_ids = Vec::with_capacity(group.len());
        let mut stream_types = Vec::with_capacity(group.len());
        let mut expected = Vec::with_capacity(group.len());
        let mut tenants = Vec::with_capacity(group.len());
        let mut counts = Vec::with_capacity(group.len());
        let total: usize = group.iter().map(|a| a.columns.ids.len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut types: Vec<&str> = Vec::with_capacity(total);
        let mut schema_versions = Vec::with_capacity(total);
        let mut payloads: Vec<&str> = Vec::with_capacity(total);
        let mut metadata: Vec<&str> = Vec::with_capacity(total);
        for append in group {
            stream_ids.push(append.stream_id.as_str());
            stream_types.push(append.stream_type.as_str());
            expected.push(append.expected.code());
            tenants.push(append.tenant.as_str());
            counts.push(i32::try_from(append.columns.ids.len()).unwrap_or(i32::MAX));
            ids.extend_from_slice(&append.columns.ids);
            types.extend(append.columns.types.iter().map(String::as_str));
            schema_versions.extend_from_slice(&append.columns.schema_versions);
            payloads.extend(append.columns.payloads.iter().map(|p| p.get()));
            metadata.extend(append.columns.metadata.iter().map(String::as_str));
        }
        let query = sqlx::query(
            "SELECT append_index, status, global_position, stream_version, detail \
             FROM event_log_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&stream_ids)
        .bind(&stream_types)
        .bind(&expected)
        .bind(&tenants)
        .bind(&counts)
        .bind(&ids)
        .bind(&types)
        .bind(&schema_versions)
        .bind(&payloads)
        .bind(&metadata);
        let rows = query.fetch_all(connection.get().await?).await;
        connection.after(&rows);
        let rows = rows?;

        let mut outcomes: Vec<Result<AppendOutcome, StoreError>> = group
            .iter()
            .map(|_| {
                Ok(AppendOutcome {
                    events: Vec::new(),
                    already_stored: false,
                })
            })
            .collect();
        let mut recorded_at = None;
        for row in &rows {
            let index = usize::try_from(row.try_get::<i32, _>(0)?).unwrap_or(0);
            let Some(slot) = index.checked_sub(1).and_then(|i| outcomes.get_mut(i)) else {
                continue;
            };
            let append = group[index - 1];
            let status: &str = row.try_get(1)?;
            let detail: Option<String> = row.try_get(4)?;
            match status {
                "ok" | "stored" => {
                    if status == "ok" && recorded_at.is_none() {
                        recorded_at = detail
                            .and_then(|d| d.parse::<i64>().ok())
                            .and_then(DateTime::from_timestamp_micros);
                    }
                    if let Ok(outcome) = slot {
                        outcome.already_stored = status == "stored";
                        outcome.events.push(AppendedEvent {
                            global_position: to_u64(row.try_get::<i64, _>(2)?),
                            stream_version: to_u64(row.try_get::<i64, _>(3)?),
                        });
                    }
                }
                "conflict" => {
                    *slot = Err(StoreError::Conflict {
                        stream_id: append.stream_id.clone(),
                        expected: append.expected,
                        actual: detail.and_then(|d| d.parse().ok()).unwrap_or(0),
                    });
                }
                "stream_type" => {
                    *slot = Err(StoreError::StreamTypeMismatch {
                        stream_id: append.stream_id.clone(),
                        actual: detail.unwrap_or_default(),
                        requested: append.stream_type.clone(),
                    });
                }
                other => {
                    *slot = Err(StoreError::Backend(format!(
                        "unknown append status `{other}`"
                    )));
                }
            }
        }
        for (slot, append) in outcomes.iter_mut().zip(group) {
            if let Ok(outcome) = slot
                && outcome.events.len() != append.columns.ids.len()
            {
                // Only part of the batch is stored: this is not a retry of one append.
                *slot = Err(StoreError::IdempotencyMismatch {
                    event_id: append.columns.ids[0],
                });
            }
        }
        Ok((outcomes, recorded_at))
    }

    /// A lone append hit a unique index: either the same events were appended
    /// concurrently (answer as the idempotent retry it is) or the stream version was taken.
    async fn recover_unique_violation(
        &self,
        error: sqlx::Error,
        append: &PendingAppend,
    ) -> Result<AppendOutcome, StoreError> {
        let constraint = error
            .as_database_error()
            .and_then(|d| d.constraint())
            .map(str::to_owned);
        match constraint.as_deref() {
            Some("event_log_event_id_key") => {
                match self
                    .stored_positions(&append.stream_id, &append.columns.ids)
                    .await?
                {
                    Some(outcome) => Ok(outcome),
                    None => Err(StoreError::IdempotencyMismatch {
                        event_id: append.columns.ids[0],
                    }),
                }
            }
            Some("event_log_stream_version_key") => Err(StoreError::Conflict {
                stream_id: append.stream_id.clone(),
                expected: append.expected,
                actual: self.stream_version(&append.stream_id).await.unwrap_or(0),
            }),
            _ => Err(error.into()),
        }
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
            payload: row.try_get::<Box<serde_json::value::RawValue>, _>("payload")?,
            metadata: metadata.0,
            recorded_at: row.try_get::<DateTime<Utc>, _>("recorded_at")?,
        };
        self.inner.upcasters.apply(&mut event);
        Ok(event)
    }

    /// The events a group inserted, as a reader of the log will see them.
    fn committed_events(
        &self,
        group: &[PendingAppend],
        results: &[Result<AppendOutcome, StoreError>],
        recorded_at: DateTime<Utc>,
    ) -> Vec<StoredEvent> {
        let mut events = Vec::new();
        for (append, result) in group.iter().zip(results) {
            let Ok(outcome) = result else { continue };
            if outcome.already_stored {
                continue;
            }
            let columns = &append.columns;
            // The i-th event of an append took the i-th version after the stream's last.
            let first = outcome
                .events
                .iter()
                .map(|e| e.stream_version)
                .min()
                .unwrap_or(1);
            for at in &outcome.events {
                let Some(i) = usize::try_from(at.stream_version - first)
                    .ok()
                    .filter(|i| *i < columns.ids.len())
                else {
                    return Vec::new();
                };
                let mut event = StoredEvent {
                    event_id: columns.ids[i],
                    stream_id: append.stream_id.clone(),
                    stream_type: append.stream_type.clone(),
                    stream_version: at.stream_version,
                    global_position: at.global_position,
                    event_type: columns.types[i].clone(),
                    schema_version: u32::try_from(columns.schema_versions[i]).unwrap_or(1),
                    payload: columns.payloads[i].clone(),
                    metadata: columns.metadata_values[i].clone(),
                    recorded_at,
                };
                self.inner.upcasters.apply(&mut event);
                events.push(event);
            }
        }
        events
    }
}

struct AppendColumns {
    ids: Vec<Uuid>,
    types: Vec<String>,
    schema_versions: Vec<i32>,
    payloads: Vec<Box<serde_json::value::RawValue>>,
    /// JSON text.
    metadata: Vec<String>,
    metadata_values: Vec<flowforge_domain::EventMetadata>,
}

impl AppendColumns {
    fn from_events(events: Vec<NewEvent>) -> Result<Self, StoreError> {
        let mut columns = Self {
            ids: Vec::with_capacity(events.len()),
            types: Vec::with_capacity(events.len()),
            schema_versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metadata: Vec::with_capacity(events.len()),
            metadata_values: Vec::with_capacity(events.len()),
        };
        for event in events {
            columns.ids.push(event.event_id);
            columns.types.push(event.event_type);
            columns
                .schema_versions
                .push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
            columns.payloads.push(
                serde_json::value::to_raw_value(&event.payload)
                    .map_err(|e| StoreError::Backend(format!("payload: {e}")))?,
            );
            columns.metadata.push(
                serde_json::to_string(&event.metadata)
                    .map_err(|e| StoreError::Backend(format!("metadata: {e}")))?,
            );
            columns.metadata_values.push(event.metadata);
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

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.code().as_deref() == Some("23505"))
}

/// A copy of an error for every append of a failed group (sqlx errors are not `Clone`).
fn shared_error(error: &sqlx::Error) -> StoreError {
    let transient = matches!(
        error,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    ) || error
        .as_database_error()
        .and_then(|d| d.code())
        // A deadlock or serialization failure aborted the whole call; each append in it
        // may simply be tried again.
        .is_some_and(|c| c.starts_with("08") || c == "57P01" || c == "40P01" || c == "40001");
    if transient {
        StoreError::Unavailable(error.to_string())
    } else {
        StoreError::Backend(error.to_string())
    }
}

/// A writer: takes whatever appends are waiting (up to a limit), sends them as one
/// call, answers each. Several writers keep several calls in flight.
async fn write_appends(
    store: std::sync::Weak<Inner>,
    pending: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<PendingAppend>>>,
) {
    let Some(pool) = store.upgrade().map(|inner| inner.pool.clone()) else {
        return;
    };
    let mut connection = HeldConnection::new(pool);
    loop {
        let group = {
            let mut pending = pending.lock().await;
            let Some(first) = pending.recv().await else {
                return;
            };
            let mut events = first.columns.ids.len();
            let mut group = vec![first];
            while group.len() < MAX_APPENDS_PER_CALL && events < MAX_EVENTS_PER_CALL {
                match pending.try_recv() {
                    Ok(next) => {
                        events += next.columns.ids.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            // Every writer, in every process, inserts into streams in the same order, so
            // two calls appending to the same streams wait for each other instead of
            // deadlocking on the stream-version index (stable: one stream's appends keep
            // their order).
            group.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
            group
        };
        let Some(inner) = store.upgrade() else { return };
        let store = PostgresEventStore { inner };
        let refs: Vec<&PendingAppend> = group.iter().collect();
        let (results, recorded_at) = store.append_group(&mut connection, &refs).await;
        let last = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|o| !o.already_stored)
            .map(AppendOutcome::last_position)
            .max();
        if let Some(last) = last {
            // The tail first, so that a reader woken by the announcement finds the events
            // in memory. Without the time they were recorded (the group was retried one
            // append at a time) the follower reads them instead.
            if let (Some(tail), Some(recorded_at)) = (store.inner.tail.get(), recorded_at) {
                tail.offer(store.committed_events(&group, &results, recorded_at));
            }
            store.inner.notifier.advance(last);
            store.inner.announce.send_if_modified(|head| {
                if last > *head {
                    *head = last;
                    true
                } else {
                    false
                }
            });
        }
        for (append, result) in group.into_iter().zip(results) {
            let _ = append.reply.send(result);
        }
    }
}

async fn safe_position(pool: &PgPool) -> Result<u64, StoreError> {
    let safe: i64 = sqlx::query_scalar("SELECT event_log_safe_position()")
        .fetch_one(pool)
        .await?;
    Ok(to_u64(safe))
}

/// Publishes local commits to other processes, coalescing bursts into one NOTIFY.
async fn announce_commits(pool: PgPool, mut commits: tokio::sync::watch::Receiver<u64>) {
    let mut connection = HeldConnection::new(pool);
    while commits.changed().await.is_ok() {
        let head = *commits.borrow_and_update();
        let announced = match connection.get().await {
            Ok(held) => {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(NOTIFY_CHANNEL)
                    .bind(head.to_string())
                    .execute(held)
                    .await
            }
            Err(error) => Err(error),
        };
        connection.after(&announced);
        if let Err(error) = announced {
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
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.inner
            .appends
            .send(PendingAppend {
                stream_id: stream_id.to_owned(),
                stream_type: stream_type.to_owned(),
                expected,
                tenant,
                columns,
                reply,
            })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        // The writer has already announced the commit.
        answer.await.map_err(|_| StoreError::WriterStopped)?
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
        // One call: `event_log_read` computes the safe position and then reads, as two
        // statements inside the function, so the read's snapshot is taken after the
        // safe position was (see event_log_safe_position and migration 0006).
        //
        // It reads a window of positions, not "everything up to safe": positions are
        // nearly contiguous, so a window of `limit` positions holds about `limit`
        // events, and whatever plan PostgreSQL picks (with fresh statistics or stale
        // ones, as after a bulk load) touches only that window. An open range let a
        // stale-statistics plan bitmap-scan and sort every row up to the head for each
        // page.
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let filtered = filter.tenant_id.is_some() || filter.event_types.is_some();
        let window = if filtered {
            limit.saturating_mul(8)
        } else {
            limit
        };
        let rows = sqlx::query(
            "SELECT upper_bound, global_position, event_id, stream_id, stream_type, \
                    stream_version, event_type, schema_version, payload, metadata, recorded_at \
             FROM event_log_read($1, $2, $3, $4, $5)",
        )
        .bind(to_i64(after))
        .bind(window)
        .bind(limit)
        .bind(filter.tenant_id.as_deref())
        .bind(filter.event_types.as_deref())
        .fetch_all(&self.inner.pool)
        .await?;
        let Some((header, rows)) = rows.split_first() else {
            return Err(StoreError::Corrupt {
                position: after,
                reason: "event_log_read returned no header row".into(),
            });
        };
        let upper = to_u64(header.try_get::<i64, _>("upper_bound")?).max(after);
        let events = rows
            .iter()
            .map(|row| self.decode(row))
            .collect::<Result<Vec<_>, _>>()?;
        let scanned_to = if events.len() as i64 == limit {
            events.last().map_or(upper, |e| e.global_position)
        } else {
            upper
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

    /// Every subscriber of this process reads the tail through one reader: a read of
    /// the log is a round trip and a `pg_locks` scan, too costly to repeat per subscriber.
    fn shared_tail(&self) -> Option<Arc<crate::tail::LogTail>> {
        Some(crate::tail::shared(
            &self.inner.tail,
            &self.inner,
            |inner| PostgresEventStore { inner },
        ))
    }

    fn head_watch(&self) -> HeadWatch {
        self.inner.notifier.watch()
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
