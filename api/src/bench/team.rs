//! `flowforge bench team`: the task board and comments at scale. Seeds the log with
//! tasks (one board stream) and comments (a stream each), then measures what users and
//! operators wait for, through the real server over HTTP where a user would ask:
//! - the rebuild rate of the `tasks` and `comments` projections (events/s);
//! - board queries with filters (p50/p99);
//! - `GET /api/v1/tasks/{id}?as_of=` on a task with a long history (p50/p99).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use flowforge_domain::comment::{CommentEvent, CommentTarget, Member};
use flowforge_domain::task::{
    Assignee, TaskBoardEvent, TaskCreated, TaskEvent, TaskFields, TaskPriority, TaskStatus,
};
use flowforge_domain::{Actor, EventMetadata, TenantId};
use flowforge_projections::{ProjectionRunner, ReadDb, find_projection};
use flowforge_store::postgres::{PostgresConfig, PostgresEventStore};
use flowforge_store::sqlite::{SqliteConfig, SqliteEventStore};
use flowforge_store::{EventStore, ExpectedVersion, NewEvent, Upcasters};
use sqlx::{Connection, Executor};
use uuid::Uuid;

use crate::config::{Config, Storage};
use crate::platform::Platform;

#[derive(Args, Debug)]
pub struct TeamBenchArgs {
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
    #[arg(long, default_value_t = 100_000)]
    tasks: u64,
    #[arg(long, default_value_t = 1_000_000)]
    comments: u64,
    /// Events in the history of the task `as_of` is measured on.
    #[arg(long, default_value_t = 1_000)]
    history: u64,
    /// Requests per measured query.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Concurrent writers while seeding.
    #[arg(long, default_value_t = 8)]
    writers: u64,
}

const TENANT: &str = "default";
const LABELS: [&str; 5] = ["backend", "frontend", "infra", "docs", "security"];
const WORDS: [&str; 8] = [
    "deploy", "build", "flaky", "latency", "login", "billing", "export", "search",
];

fn emit(backend: &str, metric: &str, value: f64, unit: &str) {
    println!("bench=team backend={backend} metric={metric} value={value:.3} unit={unit}");
}

fn metadata() -> EventMetadata {
    EventMetadata::new(TenantId::new(TENANT), Actor::user("bench"))
}

pub async fn run(args: TeamBenchArgs) -> anyhow::Result<()> {
    let backends: Vec<&str> = match args.backend.as_str() {
        "both" => vec!["sqlite", "postgres"],
        "sqlite" => vec!["sqlite"],
        "postgres" => vec!["postgres"],
        other => anyhow::bail!("unknown backend `{other}` (sqlite, postgres or both)"),
    };
    for backend in backends {
        let data_dir =
            std::env::temp_dir().join(format!("flowforge-bench-team-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data_dir)?;
        let mut config = Config::dev(&data_dir);
        config.port = 0;
        config.ready_max_lag = 0;
        let mut pg_name = None;
        let store: Arc<dyn EventStore> = if backend == "sqlite" {
            Arc::new(
                SqliteEventStore::open(
                    &SqliteConfig::new(data_dir.join("events.db")),
                    Upcasters::new(),
                )
                .await?,
            )
        } else {
            let name = format!("ff_bench_{}", Uuid::new_v4().simple());
            let mut admin = sqlx::PgConnection::connect(&args.pg_url)
                .await
                .with_context(|| "connecting to PostgreSQL (set FLOWFORGE_BENCH_PG_URL)")?;
            admin
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await?;
            let url = super::store::replace_database(&args.pg_url, &name);
            config.storage = Storage::Postgres {
                url: url.clone(),
                max_connections: 20,
            };
            pg_name = Some(name);
            let mut pg = PostgresConfig::new(&url);
            pg.max_connections = 20;
            Arc::new(PostgresEventStore::connect(&pg, Upcasters::new()).await?)
        };
        let result = bench(backend, &args, store, config, &data_dir).await;
        let _ = std::fs::remove_dir_all(&data_dir);
        if let Some(name) = pg_name {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut admin = sqlx::PgConnection::connect(&args.pg_url).await?;
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await?;
        }
        result?;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The tasks: FF-1 … FF-n on the board stream, in batches of 1,000.
async fn seed_tasks(store: &Arc<dyn EventStore>, count: u64) -> anyhow::Result<Vec<Uuid>> {
    let board = flowforge_domain::task::board_stream_id(TENANT);
    let mut ids = Vec::with_capacity(count as usize);
    let mut version = 0;
    let now = Utc::now();
    let users: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let priorities = [
        TaskPriority::None,
        TaskPriority::Low,
        TaskPriority::Medium,
        TaskPriority::High,
        TaskPriority::Urgent,
    ];
    while (ids.len() as u64) < count {
        let mut batch = Vec::new();
        for _ in 0..1_000.min(count - ids.len() as u64) {
            let number = ids.len() as u64 + 1;
            let task_id = Uuid::now_v7();
            ids.push(task_id);
            let n = number as usize;
            let event = TaskBoardEvent::Created(TaskCreated {
                task_id,
                number,
                fields: TaskFields {
                    title: format!("{} is {} on {}", WORDS[n % 8], WORDS[(n / 8) % 8], number),
                    description: format!(
                        "Seen since release {}; {} users report {}.",
                        n % 97,
                        n % 13,
                        WORDS[(n / 64) % 8]
                    ),
                    priority: priorities[n % 5],
                    labels: [LABELS[n % 5].to_owned()].into(),
                    due: None,
                },
                status: TaskStatus::Todo,
                parent: None,
                assignee: (!n.is_multiple_of(3)).then(|| Assignee::User(users[n % users.len()])),
                at: now,
            });
            batch.push(NewEvent::from_domain(&event, metadata()).with_id(task_id));
        }
        let appended = store
            .append(
                &board,
                flowforge_domain::task::BOARD_STREAM_TYPE,
                ExpectedVersion::Exact(version),
                batch,
            )
            .await?;
        version = appended.stream_version();
    }
    // A quarter of the tasks move on, so that status filters select varied sets.
    for (i, task_id) in ids.iter().enumerate().filter(|(i, _)| i % 4 == 0) {
        let to = if i % 8 == 0 {
            TaskStatus::InProgress
        } else {
            TaskStatus::Blocked
        };
        let event = TaskEvent::StatusChanged {
            from: TaskStatus::Todo,
            to,
            at: now,
        };
        store
            .append(
                &flowforge_domain::task::stream_id(*task_id),
                flowforge_domain::task::STREAM_TYPE,
                ExpectedVersion::NoStream,
                vec![NewEvent::from_domain(&event, metadata())],
            )
            .await?;
    }
    Ok(ids)
}

async fn seed_comments(
    store: &Arc<dyn EventStore>,
    tasks: &Arc<Vec<Uuid>>,
    count: u64,
    writers: u64,
) -> anyhow::Result<()> {
    let (store, tasks) = (store.clone(), tasks.clone());
    super::split_among_writers(count, writers, move |n| {
        let (store, tasks) = (store.clone(), tasks.clone());
        async move {
            let comment_id = Uuid::now_v7();
            let task = tasks[(n as usize * 7919) % tasks.len()];
            let event = CommentEvent::Posted {
                comment_id,
                target: CommentTarget::Task(task),
                author: Member::User(format!("user-{}", n % 50)),
                body: format!(
                    "Looked at this: {} again after {}.",
                    WORDS[(n % 8) as usize],
                    n
                ),
                mentions: Vec::new(),
                at: Utc::now(),
            };
            store
                .append(
                    &flowforge_domain::comment::stream_id(comment_id),
                    flowforge_domain::comment::STREAM_TYPE,
                    ExpectedVersion::NoStream,
                    vec![NewEvent::from_domain(&event, metadata())],
                )
                .await?;
            Ok(())
        }
    })
    .await
}

/// One task with `count` edits after its creation; returns it and the global
/// position of its middle event.
async fn seed_history(
    store: &Arc<dyn EventStore>,
    task_id: Uuid,
    count: u64,
) -> anyhow::Result<u64> {
    let stream = flowforge_domain::task::stream_id(task_id);
    let existing = store.read_stream(&stream, 1).await?;
    let mut version = existing.last().map_or(0, |e| e.stream_version);
    let mut middle = 0;
    let mut written = 0;
    while written < count {
        let batch: Vec<NewEvent> = (0..100.min(count - written))
            .map(|i| {
                let n = written + i;
                NewEvent::from_domain(
                    &TaskEvent::Edited {
                        fields: TaskFields {
                            title: format!("Revision {n} of the release plan"),
                            description: format!("Step {n}: ").repeat(5),
                            priority: TaskPriority::High,
                            labels: [LABELS[(n % 5) as usize].to_owned()].into(),
                            due: None,
                        },
                        at: Utc::now(),
                    },
                    metadata(),
                )
            })
            .collect();
        let size = batch.len() as u64;
        let appended = store
            .append(
                &stream,
                flowforge_domain::task::STREAM_TYPE,
                if version == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(version)
                },
                batch,
            )
            .await?;
        version = appended.stream_version();
        if written <= count / 2 && count / 2 < written + size {
            let index = (count / 2 - written) as usize;
            middle = appended.events.get(index).map_or(0, |e| e.global_position);
        }
        written += size;
    }
    Ok(middle)
}

async fn rebuild_rate(
    backend: &str,
    store: &Arc<dyn EventStore>,
    config: &Config,
    data_dir: &std::path::Path,
    projection: &str,
) -> anyhow::Result<()> {
    // Each projection is built from position 0 into an empty read model: the rate is a
    // rebuild's.
    let read_db = match &config.storage {
        // The server's own read-model file: what is rebuilt here, it need not build.
        Storage::Sqlite { .. } => ReadDb::open_sqlite(&data_dir.join("read.db"), false).await?,
        Storage::Postgres { url, .. } => ReadDb::connect_postgres(url, 4).await?,
    };
    let found = find_projection(projection)?;
    let runner = ProjectionRunner::new(read_db.clone(), store.clone(), found.clone());
    let started = Instant::now();
    runner.catch_up().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let applied = flowforge_projections::runner::status(&read_db, store.as_ref(), &[found])
        .await?
        .first()
        .map_or(0, |s| s.events_applied);
    emit(
        backend,
        &format!("rebuild_{projection}_events"),
        applied as f64,
        "events",
    );
    emit(
        backend,
        &format!("rebuild_{projection}_rate"),
        applied as f64 / elapsed,
        "events/s",
    );
    Ok(())
}

async fn latencies(
    http: &reqwest::Client,
    url: &str,
    requests: usize,
) -> anyhow::Result<(f64, f64, serde_json::Value)> {
    let mut samples = Vec::with_capacity(requests);
    let mut last = serde_json::Value::Null;
    for _ in 0..requests {
        let started = Instant::now();
        let response = http.get(url).send().await?;
        let status = response.status();
        last = response.json().await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(status.is_success(), "{url} answered {status}: {last}");
    }
    samples.sort_by(f64::total_cmp);
    Ok((percentile(&samples, 50.0), percentile(&samples, 99.0), last))
}

async fn bench(
    backend: &str,
    args: &TeamBenchArgs,
    store: Arc<dyn EventStore>,
    config: Config,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let tasks = Arc::new(seed_tasks(&store, args.tasks.max(1)).await?);
    emit(
        backend,
        "seed_tasks_rate",
        args.tasks as f64 / started.elapsed().as_secs_f64(),
        "tasks/s",
    );
    let started = Instant::now();
    seed_comments(&store, &tasks, args.comments, args.writers.max(1)).await?;
    emit(
        backend,
        "seed_comments_rate",
        args.comments as f64 / started.elapsed().as_secs_f64().max(1e-9),
        "comments/s",
    );
    let long_task = tasks[1];
    let middle = seed_history(&store, long_task, args.history).await?;

    rebuild_rate(backend, &store, &config, data_dir, "tasks").await?;
    rebuild_rate(backend, &store, &config, data_dir, "comments").await?;

    // The real server over the same storage; ready once its read models caught up.
    let (listener, addr) = crate::http::bind(&config.host, 0).await?;
    let platform = Platform::start(config).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = crate::http::serve(platform, listener, async {
            let _ = stopped.await;
        })
        .await;
    });
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let ready = http.get(format!("{base}/ready")).send().await?;
        if ready.status().is_success() {
            break;
        }
        let body = ready.text().await.unwrap_or_default();
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3_600),
            "the server never became ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let queries = [
        ("board_all", "/api/v1/tasks?limit=50".to_owned()),
        (
            "board_status",
            "/api/v1/tasks?status=in_progress&limit=50".to_owned(),
        ),
        (
            "board_label_priority",
            "/api/v1/tasks?label=infra&priority=high&limit=50".to_owned(),
        ),
        (
            "board_text",
            "/api/v1/tasks?q=flaky%20billing&limit=50".to_owned(),
        ),
    ];
    for (name, path) in queries {
        let (p50, p99, last) = latencies(&http, &format!("{base}{path}"), args.requests).await?;
        if name == "board_all" {
            anyhow::ensure!(
                last["items"]
                    .as_array()
                    .is_some_and(|items| items.len() == 50),
                "the board is not full: {last}"
            );
        }
        emit(backend, &format!("{name}_p50"), p50, "ms");
        emit(backend, &format!("{name}_p99"), p99, "ms");
    }
    let (p50, p99, last) = latencies(
        &http,
        &format!("{base}/api/v1/tasks/{long_task}?as_of={middle}"),
        args.requests,
    )
    .await?;
    anyhow::ensure!(
        args.history == 0
            || last["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("Revision")),
        "as_of answered {last}"
    );
    emit(
        backend,
        "as_of_history_events",
        args.history as f64,
        "events",
    );
    emit(backend, "as_of_p50", p50, "ms");
    emit(backend, "as_of_p99", p99, "ms");
    let _ = stop.send(());
    let _ = server.await;
    Ok(())
}
