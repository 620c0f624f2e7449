//! `flowforge bench store`: the event log and the projection runner, measured.
//!
//! For each backend, on a throwaway database:
//! 1. single-event appends to distinct streams with 1, 8 and 32 writers, beside plain
//!    single-row `INSERT`s into a bare table with the same concurrency and durability;
//! 2. appends of 100-event batches;
//! 3. reading the whole log;
//! 4. rebuilding the `runs` projection from `--rebuild-events` run events;
//! 5. commit-to-delivery lag at a live subscriber under 32 writers.
//!
//! Every figure is printed as `bench=store backend=… metric=… value=… unit=…`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use flowforge_domain::run::{
    BackoffPolicy, CallFinished, CallTarget, FunctionRef, RunCompleted, RunCreated, RunEvent,
    StepCompleted, StepKind, StepOutput,
};
use flowforge_domain::{Actor, EventMetadata, TenantId};
use flowforge_projections::ReadDb;
use flowforge_store::pool::check_only_idle_connections;
use flowforge_store::postgres::{PostgresConfig, PostgresEventStore};
use flowforge_store::sqlite::{SqliteConfig, SqliteEventStore};
use flowforge_store::{EventStore, ExpectedVersion, LogFilter, NewEvent, Upcasters, subscribe};
use serde_json::json;
use sqlx::{Connection, Executor};
use uuid::Uuid;

#[derive(Args, Debug)]
pub struct StoreBenchArgs {
    /// `sqlite`, `postgres` or `both`.
    #[arg(long, default_value = "both")]
    backend: String,
    /// A PostgreSQL database URL the benchmark may connect to in order to create (and
    /// afterwards drop) a database of its own.
    #[arg(
        long,
        env = "FLOWFORGE_BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pg_url: String,
    /// Seconds per concurrency level of the single-append and lag measurements.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Events appended in 100-event batches.
    #[arg(long, default_value_t = 200_000)]
    batch_events: u64,
    /// Run events in the log before the projection rebuild.
    #[arg(long, default_value_t = 1_000_000)]
    rebuild_events: u64,
}

fn emit(backend: &str, metric: &str, value: f64, unit: &str) {
    println!("bench=store backend={backend} metric={metric} value={value:.3} unit={unit}");
}

fn metadata() -> EventMetadata {
    EventMetadata::new(TenantId::new("bench"), Actor::system("bench"))
}

fn small_event() -> NewEvent {
    NewEvent::new(
        "order.created",
        json!({"order_id": Uuid::now_v7(), "customer": "Alice", "total": 99.99, "items": 3}),
        metadata(),
    )
}

pub async fn run(args: StoreBenchArgs) -> anyhow::Result<()> {
    let backends: Vec<&str> = match args.backend.as_str() {
        "both" => vec!["sqlite", "postgres"],
        "sqlite" => vec!["sqlite"],
        "postgres" => vec!["postgres"],
        other => anyhow::bail!("unknown backend `{other}` (sqlite, postgres or both)"),
    };
    for backend in backends {
        match backend {
            "sqlite" => {
                let dir = std::env::temp_dir()
                    .join(format!("flowforge-bench-{}", Uuid::new_v4().simple()));
                let result = bench_sqlite(&args, &dir).await;
                let _ = std::fs::remove_dir_all(&dir);
                result?;
            }
            _ => {
                let name = format!("ff_bench_{}", Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(&args.pg_url)
                    .await
                    .with_context(|| "connecting to PostgreSQL (set FLOWFORGE_BENCH_PG_URL)")?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await?;
                let url = replace_database(&args.pg_url, &name);
                let result = bench_postgres(&args, &url).await;
                // Give pooled connections a moment to close, then force the drop.
                tokio::time::sleep(Duration::from_millis(200)).await;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await?;
                result?;
            }
        }
    }
    Ok(())
}

pub(crate) fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let mut out = match base[scheme_end..].find('/') {
        Some(i) => format!("{}/{database}", &base[..scheme_end + i]),
        None => format!("{base}/{database}"),
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

async fn bench_sqlite(args: &StoreBenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let store: Arc<dyn EventStore> = Arc::new(
        SqliteEventStore::open(&SqliteConfig::new(dir.join("events.db")), Upcasters::new()).await?,
    );
    let baseline = Arc::new(SqliteBaseline::open(dir.join("bare.db")).await?);
    let read_db = ReadDb::open_sqlite(&dir.join("read.db"), true).await?;
    run_suite("sqlite", args, store, baseline, read_db).await
}

async fn bench_postgres(args: &StoreBenchArgs, url: &str) -> anyhow::Result<()> {
    let mut config = PostgresConfig::new(url);
    config.max_connections = 40;
    let store: Arc<dyn EventStore> =
        Arc::new(PostgresEventStore::connect(&config, Upcasters::new()).await?);
    let baseline = Arc::new(PgBaseline::open(url).await?);
    let read_db = ReadDb::connect_postgres(url, 8).await?;
    run_suite("postgres", args, store, baseline, read_db).await
}

/// A bare table receiving plain single-row INSERTs (autocommit), the reference the
/// log's append rate is compared with.
#[async_trait::async_trait]
trait Baseline: Sync {
    async fn insert(&self) -> anyhow::Result<()>;
}

struct PgBaseline {
    pool: sqlx::PgPool,
}

impl PgBaseline {
    async fn open(url: &str) -> anyhow::Result<Self> {
        // Pooled like the log's connections, so that the comparison is of the writes.
        let pool = check_only_idle_connections(sqlx::postgres::PgPoolOptions::new())
            .max_connections(40)
            .connect(url)
            .await?;
        sqlx::query("CREATE TABLE bare (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
            .execute(&pool)
            .await?;
        Ok(Self { pool })
    }
}

#[async_trait::async_trait]
impl Baseline for PgBaseline {
    async fn insert(&self) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO bare (payload) VALUES ($1)")
            .bind(json!({"order_id": Uuid::now_v7(), "customer": "Alice", "total": 99.99, "items": 3}))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

struct SqliteBaseline {
    pool: sqlx::SqlitePool,
}

impl SqliteBaseline {
    async fn open(path: PathBuf) -> anyhow::Result<Self> {
        let options = flowforge_store::sqlite::connect_options(
            &path,
            flowforge_store::sqlite::Durability::Full,
        );
        let pool = check_only_idle_connections(sqlx::sqlite::SqlitePoolOptions::new())
            .max_connections(32)
            .connect_with(options)
            .await?;
        sqlx::query("CREATE TABLE bare (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
            .execute(&pool)
            .await?;
        Ok(Self { pool })
    }
}

#[async_trait::async_trait]
impl Baseline for SqliteBaseline {
    async fn insert(&self) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO bare (payload) VALUES ($1)")
            .bind(json!({"order_id": Uuid::now_v7(), "customer": "Alice", "total": 99.99, "items": 3}).to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Runs `op` from `writers` tasks for `seconds`; returns completed operations per second.
async fn rate<F, Fut>(writers: usize, seconds: f64, op: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let op = op.clone();
        let done = done.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = op().await?;
                done.fetch_add(n, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

async fn run_suite(
    backend: &str,
    args: &StoreBenchArgs,
    store: Arc<dyn EventStore>,
    baseline: Arc<dyn Baseline + Send>,
    read_db: ReadDb,
) -> anyhow::Result<()> {
    // 1. Single-event appends vs plain INSERTs.
    for writers in [1usize, 8, 32] {
        let s = store.clone();
        let appends = rate(writers, args.seconds, move || {
            let s = s.clone();
            async move {
                let stream = format!("order-{}", Uuid::now_v7());
                s.append(
                    &stream,
                    "order",
                    ExpectedVersion::NoStream,
                    vec![small_event()],
                )
                .await?;
                Ok(1)
            }
        })
        .await?;
        let b = baseline.clone();
        let inserts = rate(writers, args.seconds, move || {
            let b = b.clone();
            async move {
                b.insert().await?;
                Ok(1)
            }
        })
        .await?;
        emit(
            backend,
            &format!("append_single_c{writers}"),
            appends,
            "events/s",
        );
        emit(
            backend,
            &format!("plain_insert_c{writers}"),
            inserts,
            "rows/s",
        );
        emit(
            backend,
            &format!("append_vs_insert_ratio_c{writers}"),
            appends / inserts,
            "ratio",
        );
    }

    // 2. 100-event batches.
    for writers in [1usize, 8] {
        let per_writer = (args.batch_events / writers as u64 / 100).max(1);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_writer {
                    let stream = format!("batch-{}", Uuid::now_v7());
                    let batch: Vec<NewEvent> = (0..100).map(|_| small_event()).collect();
                    s.append(&stream, "batch", ExpectedVersion::NoStream, batch)
                        .await?;
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let total = per_writer * writers as u64 * 100;
        emit(
            backend,
            &format!("append_batch100_c{writers}"),
            total as f64 / started.elapsed().as_secs_f64(),
            "events/s",
        );
    }

    // 4 (setup). Fill the log with runs for the rebuild.
    let runs = (args.rebuild_events / 10).max(1);
    fill_runs(&store, runs, 8).await?;

    // 3. Read the whole log.
    let started = Instant::now();
    let mut after = 0;
    let mut read = 0u64;
    loop {
        let page = store.read_all(after, 10_000, &LogFilter::all()).await?;
        if page.scanned_to <= after {
            break;
        }
        read += page.events.len() as u64;
        after = page.scanned_to;
    }
    emit(
        backend,
        "read_all",
        read as f64 / started.elapsed().as_secs_f64(),
        "events/s",
    );
    emit(backend, "log_events", read as f64, "events");

    // 4. Rebuild `runs` from the run events.
    let projection = flowforge_projections::find_projection("runs")?;
    let report = flowforge_projections::rebuild(&read_db, &store, &projection).await?;
    emit(
        backend,
        "rebuild_runs_events",
        report.events as f64,
        "events",
    );
    emit(
        backend,
        "rebuild_runs",
        report.events_per_second(),
        "events/s",
    );

    // 5. Subscriber lag under 32 writers.
    let (p50, p99, delivered) = subscriber_lag(&store, 32, args.seconds).await?;
    emit(backend, "subscriber_lag_p50_c32", p50, "ms");
    emit(backend, "subscriber_lag_p99_c32", p99, "ms");
    emit(
        backend,
        "subscriber_lag_samples",
        delivered as f64,
        "events",
    );
    Ok(())
}

fn run_events(run_id: Uuid) -> Vec<NewEvent> {
    let now = Utc::now();
    let mut events = vec![RunEvent::Created(RunCreated {
        run_id,
        function: FunctionRef {
            app_id: "bench".into(),
            function_id: "bench-fn".into(),
            version: 1,
        },
        events: vec![json!({"id": run_id, "name": "bench/run", "data": {"n": 1}})],
        max_attempts: 4,
        backoff: BackoffPolicy::default(),
        created_at: now,
        replay_of: None,
        parent: None,
        environment: Default::default(),
        start_at: None,
    })];
    for (token, step) in (1u64..).zip(["a", "b", "c", "d"]) {
        events.push(RunEvent::CallFinished(CallFinished {
            target: CallTarget::Discovery,
            token,
            attempt: 0,
            started_at: now,
            finished_at: now,
            request_version: None,
        }));
        events.push(RunEvent::StepCompleted(StepCompleted {
            step_id: step.into(),
            name: step.into(),
            kind: StepKind::Run,
            output: StepOutput::Data(json!({"value": token})),
            at: now,
        }));
    }
    events.push(RunEvent::Completed(RunCompleted {
        output: json!(4),
        at: now,
    }));
    events
        .iter()
        .map(|e| NewEvent::from_domain(e, metadata()))
        .collect()
}

async fn fill_runs(store: &Arc<dyn EventStore>, runs: u64, writers: u64) -> anyhow::Result<()> {
    let store = store.clone();
    super::split_among_writers(runs, writers, move |_| {
        let store = store.clone();
        async move {
            let run_id = Uuid::now_v7();
            store
                .append(
                    &flowforge_domain::run::stream_id(run_id),
                    flowforge_domain::run::STREAM_TYPE,
                    ExpectedVersion::NoStream,
                    run_events(run_id),
                )
                .await?;
            Ok(())
        }
    })
    .await
}

async fn subscriber_lag(
    store: &Arc<dyn EventStore>,
    writers: usize,
    seconds: f64,
) -> anyhow::Result<(f64, f64, usize)> {
    let committed: Arc<std::sync::Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let head = store.head_position().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let subscriber = {
        let store = store.clone();
        let committed = committed.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sub = subscribe(store, head, LogFilter::all().event_types(["lag.probe"]));
            let mut lags = Vec::new();
            let mut pending: Vec<(Uuid, Instant)> = Vec::new();
            loop {
                let batch =
                    match tokio::time::timeout(Duration::from_millis(500), sub.next_batch(1_000))
                        .await
                    {
                        Ok(batch) => batch?,
                        Err(_) if stop.load(Ordering::Relaxed) => break,
                        Err(_) => continue,
                    };
                let now = Instant::now();
                pending.extend(batch.iter().map(|e| (e.event_id, now)));
                // The append may return after delivery; match up what is known.
                let known = committed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                pending.retain(|(id, delivered)| match known.get(id) {
                    Some(at) => {
                        lags.push(delivered.saturating_duration_since(*at).as_secs_f64() * 1000.0);
                        false
                    }
                    None => true,
                });
            }
            anyhow::Ok(lags)
        })
    };
    let s = store.clone();
    let c = committed.clone();
    rate(writers, seconds, move || {
        let s = s.clone();
        let c = c.clone();
        async move {
            let event = NewEvent::new("lag.probe", json!({"n": 1}), metadata());
            let id = event.event_id;
            s.append(
                &format!("probe-{}", Uuid::now_v7()),
                "probe",
                ExpectedVersion::NoStream,
                vec![event],
            )
            .await?;
            c.lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .insert(id, Instant::now());
            Ok(1)
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lags = subscriber.await??;
    lags.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if lags.is_empty() {
            return f64::NAN;
        }
        let idx = ((p / 100.0) * lags.len() as f64).ceil() as usize;
        lags[idx.clamp(1, lags.len()) - 1]
    };
    Ok((pct(50.0), pct(99.0), lags.len()))
}
