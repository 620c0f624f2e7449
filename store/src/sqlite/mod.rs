//! The SQLite event log (the embedded default, `flowforge dev`).
//!
//! All appends go through one writer task that owns the only writing connection. It
//! drains whatever appends are waiting and commits them in one transaction (group
//! commit), so concurrent writers share one fsync, and positions become visible in
//! order. Reads use a separate pool; in WAL mode they never block the writer.
//!
//! One process owns a database file for writing. Other processes (`flowforge
//! projections rebuild`, `flowforge projections status`) may read it.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::notifier::HeadNotifier;
use crate::{
    AppendOutcome, AppendedEvent, EventStore, ExpectedVersion, HeadWatch, LogFilter, LogPage,
    NewEvent, StoreError, StoredEvent, Upcasters, event::validate_batch,
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite/log");

/// Appends committed together at most; bounds the latency one commit adds to the first.
const MAX_APPENDS_PER_COMMIT: usize = 512;
const MAX_EVENTS_PER_COMMIT: usize = 10_000;
/// Rows per INSERT statement (10 bound values each; SQLite allows 32,766).
const ROWS_PER_INSERT: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit: a committed append survives power loss.
    Full,
    /// fsync at WAL checkpoints: survives a crash of the process, not of the machine.
    Normal,
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            other => Err(format!("unknown SQLite durability `{other}` (full|normal)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SqliteConfig {
    pub path: PathBuf,
    pub durability: Durability,
    pub read_connections: u32,
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::Full,
            read_connections: 4,
        }
    }
}

/// Connection options every FlowForge SQLite file is opened with.
pub fn connect_options(path: &Path, durability: Durability) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
}

#[derive(Clone)]
pub struct SqliteEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    readers: SqlitePool,
    writer: mpsc::Sender<AppendRequest>,
    notifier: HeadNotifier,
    upcasters: Upcasters,
    /// Shared with the writer, which hands every commit to the tail (see `LogTail::offer`).
    tail: Arc<std::sync::OnceLock<Arc<crate::tail::LogTail>>>,
}

struct AppendRequest {
    stream_id: String,
    stream_type: String,
    expected: ExpectedVersion,
    tenant: String,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

impl SqliteEventStore {
    /// Opens (creating if needed) the log at `config.path`, migrates it and starts the writer.
    pub async fn open(config: &SqliteConfig, upcasters: Upcasters) -> Result<Self, StoreError> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dir.display())))?;
        }
        let options = connect_options(&config.path, config.durability);
        let mut writer = SqliteConnection::connect_with(&options).await?;
        run_migrations(&mut writer).await?;
        let head: i64 =
            sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM event_log")
                .fetch_one(&mut writer)
                .await?;
        let readers = crate::pool::check_only_idle_connections(SqlitePoolOptions::new())
            .max_connections(config.read_connections.max(1))
            .connect_with(options)
            .await?;
        let notifier = HeadNotifier::new(to_u64(head));
        let (tx, rx) = mpsc::channel(4_096);
        let tail = Arc::new(std::sync::OnceLock::new());
        tokio::spawn(write_loop(
            writer,
            rx,
            Committed {
                notifier: notifier.clone(),
                tail: tail.clone(),
                upcasters: upcasters.clone(),
            },
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                readers,
                writer: tx,
                notifier,
                upcasters,
                tail,
            }),
        })
    }

    pub fn read_pool(&self) -> &SqlitePool {
        &self.inner.readers
    }

    fn decode(&self, row: &SqliteRow) -> Result<StoredEvent, StoreError> {
        let position = to_u64(row.try_get::<i64, _>("global_position")?);
        let corrupt = |reason: String| StoreError::Corrupt { position, reason };
        let payload: &str = row.try_get("payload")?;
        let metadata: &str = row.try_get("metadata")?;
        let recorded_at: i64 = row.try_get("recorded_at")?;
        let mut event = StoredEvent {
            event_id: row.try_get("event_id")?,
            stream_id: row.try_get("stream_id")?,
            stream_type: row.try_get("stream_type")?,
            stream_version: to_u64(row.try_get::<i64, _>("stream_version")?),
            global_position: position,
            event_type: row.try_get("event_type")?,
            schema_version: u32::try_from(row.try_get::<i64, _>("schema_version")?).unwrap_or(1),
            payload: serde_json::value::RawValue::from_string(payload.to_owned())
                .map_err(|e| corrupt(e.to_string()))?,
            metadata: serde_json::from_str(metadata).map_err(|e| corrupt(e.to_string()))?,
            recorded_at: DateTime::from_timestamp_micros(recorded_at)
                .ok_or_else(|| corrupt(format!("recorded_at {recorded_at} out of range")))?,
        };
        self.inner.upcasters.apply(&mut event);
        Ok(event)
    }
}

const SELECT_COLUMNS: &str = "SELECT global_position, event_id, stream_id, stream_type, \
    stream_version, event_type, schema_version, payload, metadata, recorded_at FROM event_log";

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(
        &self,
        stream_id: &str,
        stream_type: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let tenant = validate_batch(&events)?.to_owned();
        let (reply, outcome) = oneshot::channel();
        self.inner
            .writer
            .send(AppendRequest {
                stream_id: stream_id.to_owned(),
                stream_type: stream_type.to_owned(),
                expected,
                tenant,
                events,
                reply,
            })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        outcome.await.map_err(|_| StoreError::WriterStopped)?
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_COLUMNS} WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version"
        )))
        .bind(stream_id)
        .bind(to_i64(from_version))
        .fetch_all(&self.inner.readers)
        .await?;
        rows.iter().map(|row| self.decode(row)).collect()
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
        filter: &LogFilter,
    ) -> Result<LogPage, StoreError> {
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let types = filter
            .event_types
            .as_ref()
            .map(|t| serde_json::to_string(t).unwrap_or_else(|_| "[]".to_owned()));
        // Read the head in the same read transaction as the page, so `scanned_to` never
        // claims more than the page could see.
        let mut tx = self.inner.readers.begin().await?;
        let head: i64 =
            sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM event_log")
                .fetch_one(&mut *tx)
                .await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_COLUMNS} WHERE global_position > $1 AND global_position <= $2 \
               AND ($3 IS NULL OR tenant_id = $3) \
               AND ($4 IS NULL OR event_type IN (SELECT value FROM json_each($4))) \
             ORDER BY global_position LIMIT $5"
        )))
        .bind(to_i64(after))
        .bind(head)
        .bind(filter.tenant_id.as_deref())
        .bind(types)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let events = rows
            .iter()
            .map(|row| self.decode(row))
            .collect::<Result<Vec<_>, _>>()?;
        let head = to_u64(head).max(after);
        let scanned_to = if events.len() as i64 == limit {
            events.last().map_or(head, |e| e.global_position)
        } else {
            head
        };
        Ok(LogPage { events, scanned_to })
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        let head: i64 =
            sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM event_log")
                .fetch_one(&self.inner.readers)
                .await?;
        Ok(to_u64(head))
    }

    async fn event_by_id(&self, event_id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_COLUMNS} WHERE event_id = $1"
        )))
        .bind(event_id)
        .fetch_optional(&self.inner.readers)
        .await?;
        row.as_ref().map(|row| self.decode(row)).transpose()
    }

    /// One reader for every subscriber of the process: each read is a pooled query that
    /// decodes its rows, which is worth doing once per commit rather than per subscriber.
    fn shared_tail(&self) -> Option<Arc<crate::tail::LogTail>> {
        Some(crate::tail::shared(
            &self.inner.tail,
            &self.inner,
            |inner| SqliteEventStore { inner },
        ))
    }

    fn head_watch(&self) -> HeadWatch {
        self.inner.notifier.watch()
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

/// `Migrator::run`'s `Acquire` bound makes every future that awaits it fail rustc's
/// higher-ranked `Send` check (so it could not be spawned); sqlx's own workaround,
/// `run_direct`, takes the connection directly.
async fn run_migrations(conn: &mut SqliteConnection) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run_direct(None, conn, false).await
}

/// Where the writer announces what it committed.
struct Committed {
    notifier: HeadNotifier,
    tail: Arc<std::sync::OnceLock<Arc<crate::tail::LogTail>>>,
    upcasters: Upcasters,
}

async fn write_loop(
    mut conn: SqliteConnection,
    mut requests: mpsc::Receiver<AppendRequest>,
    committed: Committed,
) {
    while let Some(first) = requests.recv().await {
        let mut events = first.events.len();
        let mut batch = vec![first];
        while batch.len() < MAX_APPENDS_PER_COMMIT && events < MAX_EVENTS_PER_COMMIT {
            match requests.try_recv() {
                Ok(request) => {
                    events += request.events.len();
                    batch.push(request);
                }
                Err(_) => break,
            }
        }
        let (results, mut fresh) = commit_group(&mut conn, &batch).await;
        let last = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|o| !o.already_stored)
            .map(AppendOutcome::last_position)
            .max();
        if let Some(last) = last {
            // The tail first, so that a reader woken by the announcement finds the events
            // in memory rather than asking the store for them.
            if let Some(tail) = committed.tail.get() {
                for event in &mut fresh {
                    committed.upcasters.apply(event);
                }
                tail.offer(fresh);
            }
            committed.notifier.advance(last);
        }
        for (request, result) in batch.into_iter().zip(results) {
            // The caller may have given up waiting; its append stands regardless.
            let _ = request.reply.send(result);
        }
    }
}

/// Applies a group of appends in one transaction. Each append is checked before it
/// writes, so a refused append leaves no trace and does not affect the others. Also
/// returns the events committed (not those of idempotent retries), as stored.
async fn commit_group(
    conn: &mut SqliteConnection,
    batch: &[AppendRequest],
) -> (Vec<Result<AppendOutcome, StoreError>>, Vec<StoredEvent>) {
    let failed_all = |what: &str, message: String| {
        batch
            .iter()
            .map(|_| Err(StoreError::Backend(format!("{what}: {message}"))))
            .collect()
    };
    if let Err(error) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        return (failed_all("begin", error.to_string()), Vec::new());
    }
    let now = Utc::now().timestamp_micros();
    let mut results = Vec::with_capacity(batch.len());
    let mut fresh = Vec::new();
    for request in batch {
        results.push(apply_append(conn, request, now, &mut fresh).await);
    }
    match sqlx::query("COMMIT").execute(&mut *conn).await {
        Ok(_) => (results, fresh),
        Err(error) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            let message = error.to_string();
            tracing::error!(%message, "event log commit failed");
            (failed_all("commit", message), Vec::new())
        }
    }
}

/// Writes one append inside the group's transaction, adding its events to `fresh`.
///
/// The common case costs two statements: the stream's version, then one insert. Whether
/// the append is a retry of one already stored (same event ids) is only asked when the
/// version check or the insert refuses it, which is where such a retry ends up.
async fn apply_append(
    conn: &mut SqliteConnection,
    request: &AppendRequest,
    recorded_at: i64,
    fresh: &mut Vec<StoredEvent>,
) -> Result<AppendOutcome, StoreError> {
    let ids: Vec<Uuid> = request.events.iter().map(|e| e.event_id).collect();
    let current: Option<(i64, String)> = sqlx::query_as(
        "SELECT stream_version, stream_type FROM event_log WHERE stream_id = $1 \
         ORDER BY stream_version DESC LIMIT 1",
    )
    .bind(&request.stream_id)
    .fetch_optional(&mut *conn)
    .await?;
    let (version, stream_type) = match current {
        Some((v, t)) => (to_u64(v), Some(t)),
        None => (0, None),
    };
    if let Some(actual) = stream_type.filter(|t| *t != request.stream_type) {
        if let Some(outcome) = stored_positions(conn, &request.stream_id, &ids).await? {
            return Ok(outcome);
        }
        return Err(StoreError::StreamTypeMismatch {
            stream_id: request.stream_id.clone(),
            actual,
            requested: request.stream_type.clone(),
        });
    }
    if !request.expected.accepts(version) {
        if let Some(outcome) = stored_positions(conn, &request.stream_id, &ids).await? {
            return Ok(outcome);
        }
        return Err(StoreError::Conflict {
            stream_id: request.stream_id.clone(),
            expected: request.expected,
            actual: version,
        });
    }

    // An append of several statements must not leave its first rows behind when a later
    // one is refused: it gets a savepoint (one statement needs none, as a refused
    // statement undoes itself).
    let chunked = request.events.len() > ROWS_PER_INSERT;
    if chunked {
        sqlx::query("SAVEPOINT append").execute(&mut *conn).await?;
    }
    let inserted = insert_events(conn, request, version, recorded_at).await;
    if chunked {
        let end = if inserted.is_ok() {
            "RELEASE append"
        } else {
            "ROLLBACK TO append; RELEASE append"
        };
        sqlx::raw_sql(end).execute(&mut *conn).await?;
    }
    match inserted {
        Ok((appended, mut events)) => {
            fresh.append(&mut events);
            Ok(AppendOutcome {
                events: appended,
                already_stored: false,
            })
        }
        Err(InsertError::Duplicate) => {
            match stored_positions(conn, &request.stream_id, &ids).await? {
                Some(outcome) => Ok(outcome),
                // Part of the batch is already stored: not a retry of one earlier append.
                None => Err(StoreError::IdempotencyMismatch {
                    event_id: request.events[0].event_id,
                }),
            }
        }
        Err(InsertError::Store(error)) => Err(error),
    }
}

enum InsertError {
    /// An event id is already in the log.
    Duplicate,
    Store(StoreError),
}

impl From<StoreError> for InsertError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl From<sqlx::Error> for InsertError {
    fn from(error: sqlx::Error) -> Self {
        if is_unique_violation(&error) {
            Self::Duplicate
        } else {
            Self::Store(error.into())
        }
    }
}

/// Inserts an append's events after stream version `version`; returns where they landed
/// and the events as a reader of the log will see them.
async fn insert_events(
    conn: &mut SqliteConnection,
    request: &AppendRequest,
    version: u64,
    recorded_at: i64,
) -> Result<(Vec<AppendedEvent>, Vec<StoredEvent>), InsertError> {
    let recorded = DateTime::from_timestamp_micros(recorded_at).unwrap_or_else(Utc::now);
    let mut appended = Vec::with_capacity(request.events.len());
    let mut stored = Vec::with_capacity(request.events.len());
    let mut next_version = version;
    for chunk in request.events.chunks(ROWS_PER_INSERT) {
        let mut encoded = Vec::with_capacity(chunk.len());
        for event in chunk {
            let payload = serde_json::value::to_raw_value(&event.payload)
                .map_err(|e| StoreError::Backend(format!("payload: {e}")))?;
            let metadata = serde_json::to_string(&event.metadata)
                .map_err(|e| StoreError::Backend(format!("metadata: {e}")))?;
            encoded.push((payload, metadata));
        }
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO event_log (event_id, stream_id, stream_type, stream_version, event_type, \
             schema_version, tenant_id, payload, metadata, recorded_at) ",
        );
        let first_version = next_version;
        insert.push_values(
            chunk.iter().zip(&encoded),
            |mut row, (event, (payload, metadata))| {
                next_version += 1;
                row.push_bind(event.event_id)
                    .push_bind(&request.stream_id)
                    .push_bind(&request.stream_type)
                    .push_bind(to_i64(next_version))
                    .push_bind(&event.event_type)
                    .push_bind(i64::from(event.schema_version))
                    .push_bind(&request.tenant)
                    .push_bind(payload.get())
                    .push_bind(metadata)
                    .push_bind(recorded_at);
            },
        );
        insert.push(" RETURNING global_position, stream_version");
        let rows = insert.build().fetch_all(&mut *conn).await?;
        let mut landed = Vec::with_capacity(rows.len());
        for row in rows {
            landed.push(AppendedEvent {
                global_position: to_u64(row.try_get::<i64, _>(0).map_err(InsertError::from)?),
                stream_version: to_u64(row.try_get::<i64, _>(1).map_err(InsertError::from)?),
            });
        }
        landed.sort_by_key(|e| e.stream_version);
        for (i, ((event, (payload, _)), at)) in chunk.iter().zip(encoded).zip(&landed).enumerate() {
            debug_assert_eq!(at.stream_version, first_version + 1 + i as u64);
            stored.push(StoredEvent {
                event_id: event.event_id,
                stream_id: request.stream_id.clone(),
                stream_type: request.stream_type.clone(),
                stream_version: at.stream_version,
                global_position: at.global_position,
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                payload,
                metadata: event.metadata.clone(),
                recorded_at: recorded,
            });
        }
        appended.extend(landed);
    }
    Ok((appended, stored))
}

/// The stored positions of a batch whose first event is already in the log.
async fn stored_positions(
    conn: &mut SqliteConnection,
    stream_id: &str,
    ids: &[Uuid],
) -> Result<Option<AppendOutcome>, StoreError> {
    let first: Option<(i64, i64, String)> = sqlx::query_as(
        "SELECT global_position, stream_version, stream_id FROM event_log WHERE event_id = $1",
    )
    .bind(ids[0])
    .fetch_optional(&mut *conn)
    .await?;
    let Some(first) = first else {
        return Ok(None);
    };
    let mut events = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let found = if i == 0 {
            Some(first.clone())
        } else {
            sqlx::query_as(
                "SELECT global_position, stream_version, stream_id FROM event_log WHERE event_id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
        };
        match found {
            Some((position, version, stream)) if stream == stream_id => {
                events.push(AppendedEvent {
                    global_position: to_u64(position),
                    stream_version: to_u64(version),
                })
            }
            _ => return Err(StoreError::IdempotencyMismatch { event_id: ids[0] }),
        }
    }
    Ok(Some(AppendOutcome {
        events,
        already_stored: true,
    }))
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
