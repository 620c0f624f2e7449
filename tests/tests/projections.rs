//! Projections: checkpointed application, concurrent runners, and blue/green rebuilds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flowforge_commands::CommandHandler;
use flowforge_domain::run::{Run, RunStatus};
use flowforge_projections::document::{Document, Documents};
use flowforge_projections::runs::{RunRow, RunsProjection};
use flowforge_projections::streams::{StreamRow, StreamsProjection};
use flowforge_projections::{Projection, ProjectionRunner, ReadDb, rebuild, status};
use flowforge_store::EventStore;
use flowforge_tests::backend::TestBackend;
use flowforge_tests::fixtures::drive_run;
use uuid::Uuid;

fn runs() -> Arc<dyn Projection> {
    Arc::new(Documents(RunsProjection))
}

fn streams() -> Arc<dyn Projection> {
    Arc::new(Documents(StreamsProjection))
}

async fn run_rows(db: &ReadDb) -> Vec<RunRow> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM runs ORDER BY run_id",
        RunRow::COLUMNS.join(", ")
    )))
    .fetch_all(db.pool())
    .await
    .unwrap();
    rows.iter().map(|r| RunRow::from_row(r).unwrap()).collect()
}

async fn stream_rows(db: &ReadDb) -> Vec<StreamRow> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM streams ORDER BY stream_id",
        StreamRow::COLUMNS.join(", ")
    )))
    .fetch_all(db.pool())
    .await
    .unwrap();
    rows.iter()
        .map(|r| StreamRow::from_row(r).unwrap())
        .collect()
}

async fn drive_runs(store: &Arc<dyn EventStore>, n: u64, seed: u64) -> Vec<Uuid> {
    let handler = CommandHandler::new(store.clone());
    let mut ids = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let handler = handler.clone();
        let id = Uuid::now_v7();
        ids.push(id);
        let tenant = if i % 3 == 0 { "t2" } else { "t1" };
        tasks.push(tokio::spawn(async move {
            drive_run(&handler, tenant, id, seed + i).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    ids
}

async fn the_runs_read_model_agrees_with_the_log(backend: TestBackend) {
    let store = backend.store().await;
    let db = backend.read_db().await;
    let ids = drive_runs(&store, 40, 0).await;
    let position = ProjectionRunner::new(db.clone(), store.clone(), runs())
        .catch_up()
        .await
        .unwrap();
    assert_eq!(position, store.head_position().await.unwrap());

    let rows = run_rows(&db).await;
    assert_eq!(rows.len(), ids.len());
    let handler = CommandHandler::new(store.clone());
    for row in &rows {
        let id: Uuid = row.run_id.parse().unwrap();
        let loaded = handler
            .load::<Run>(&flowforge_domain::run::stream_id(id))
            .await
            .unwrap();
        assert_eq!(row.status, loaded.state.status.as_str(), "{row:?}");
        assert_eq!(row.steps_completed, loaded.state.steps.len() as i64);
        assert_eq!(row.stream_version, loaded.version as i64);
        assert_eq!(row.finished_at.is_some(), loaded.state.status.is_terminal());
        if loaded.state.status == RunStatus::Completed {
            let output: serde_json::Value =
                serde_json::from_str(row.output.as_deref().unwrap()).unwrap();
            assert_eq!(Some(output), loaded.state.output);
        }
    }
    assert_eq!(rows.iter().filter(|r| r.tenant_id == "t2").count(), 14);

    // Nothing left to do: a second catch-up applies nothing and keeps the checkpoint.
    let again = ProjectionRunner::new(db.clone(), store.clone(), runs())
        .catch_up()
        .await
        .unwrap();
    assert_eq!(again, position);
    assert_eq!(run_rows(&db).await, rows);
}

/// The rebuilt model is identical, row for row, to the incrementally built one.
async fn a_rebuild_is_identical_row_for_row_to_the_incremental_model(backend: TestBackend) {
    let store = backend.store().await;
    let db = backend.read_db().await;
    drive_runs(&store, 60, 100).await;
    for projection in [runs(), streams()] {
        ProjectionRunner::new(db.clone(), store.clone(), projection)
            .catch_up()
            .await
            .unwrap();
    }
    let incremental_runs = run_rows(&db).await;
    let incremental_streams = stream_rows(&db).await;
    assert_eq!(incremental_runs.len(), 60);

    for projection in [runs(), streams()] {
        let report = rebuild(&db, &store, &projection).await.unwrap();
        assert_eq!(report.generation, 2);
        assert_eq!(report.position, store.head_position().await.unwrap());
    }
    assert_eq!(run_rows(&db).await, incremental_runs);
    assert_eq!(stream_rows(&db).await, incremental_streams);
    let checkpoints = flowforge_projections::checkpoint::all(&db).await.unwrap();
    assert!(
        checkpoints.iter().all(|c| c.active && c.generation == 2),
        "{checkpoints:?}"
    );
}

/// A rebuild while runs keep arriving and the live runner keeps projecting: after the
/// swap nothing is missing or doubled, compared with a model built from scratch.
async fn a_rebuild_under_concurrent_writes_misses_and_doubles_nothing(backend: TestBackend) {
    let store = backend.store().await;
    let db = backend.read_db().await;
    drive_runs(&store, 50, 200).await;
    let live = {
        let runner = ProjectionRunner::new(db.clone(), store.clone(), runs()).with_batch_size(7);
        tokio::spawn(async move { runner.run().await })
    };
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let store = store.clone();
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut seed = 300;
            while writing.load(Ordering::SeqCst) {
                drive_runs(&store, 5, seed).await;
                seed += 5;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    rebuild(&db, &store, &runs()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    writing.store(false, Ordering::SeqCst);
    writer.await.unwrap();
    // Let the live runner (now on the new generation) finish.
    let head = store.head_position().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let cp = flowforge_projections::checkpoint::active(&db, "runs")
            .await
            .unwrap()
            .unwrap();
        if cp.position >= head {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "live runner stalled at {} < {head}",
            cp.position
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    live.abort();

    // A second read-model database, built from scratch after the writes stopped.
    let (fresh, _fresh_db) = match &backend {
        TestBackend::Sqlite(dir) => (
            ReadDb::open_sqlite(&dir.path().join("fresh.db"), false)
                .await
                .unwrap(),
            None,
        ),
        TestBackend::Postgres(_) => {
            let other = flowforge_tests::pg::TestDatabase::create().await.unwrap();
            let db = ReadDb::connect_postgres(other.url(), 4).await.unwrap();
            (db, Some(other))
        }
    };
    ProjectionRunner::new(fresh.clone(), store.clone(), runs())
        .catch_up()
        .await
        .unwrap();
    let expected = run_rows(&fresh).await;
    let actual = run_rows(&db).await;
    assert!(expected.len() > 50);
    assert_eq!(actual.len(), expected.len());
    assert_eq!(actual, expected);
    fresh.pool().close().await;
}

/// Processes starting together on an empty read database agree on one first
/// generation: none builds a second set of tables that the view then points away from.
async fn runners_initialising_at_once_create_one_generation(backend: TestBackend) {
    let store = backend.store().await;
    drive_runs(&store, 5, 950).await;
    let mut starts = Vec::new();
    for _ in 0..4 {
        let runner = ProjectionRunner::new(backend.read_db().await, store.clone(), streams());
        starts.push(tokio::spawn(async move { runner.initialise().await }));
    }
    let mut generations = Vec::new();
    for start in starts {
        generations.push(start.await.unwrap().unwrap().generation);
    }
    assert_eq!(
        generations,
        vec![1; 4],
        "every runner adopted the same generation"
    );
    let db = backend.read_db().await;
    let checkpoints: Vec<_> = flowforge_projections::checkpoint::all(&db)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.name == "streams")
        .collect();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    assert!(checkpoints[0].active);
}

/// Two runners of one projection (two processes) never apply an event twice.
async fn two_runners_of_one_projection_never_double_apply(backend: TestBackend) {
    let store = backend.store().await;
    let db_a = backend.read_db().await;
    let db_b = backend.read_db().await;
    drive_runs(&store, 30, 400).await;
    let a = {
        let r = ProjectionRunner::new(db_a.clone(), backend.store().await, streams())
            .with_batch_size(3);
        tokio::spawn(async move { r.run().await })
    };
    let b = {
        let r = ProjectionRunner::new(db_b.clone(), backend.store().await, streams())
            .with_batch_size(5);
        tokio::spawn(async move { r.run().await })
    };
    drive_runs(&store, 30, 500).await;
    let head = store.head_position().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let cp = flowforge_projections::checkpoint::active(&db_a, "streams")
            .await
            .unwrap()
            .unwrap();
        if cp.position >= head {
            assert_eq!(
                cp.events_applied,
                store
                    .read_all(0, 100_000, &Default::default())
                    .await
                    .unwrap()
                    .events
                    .len() as u64
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.abort();
    b.abort();
    // Every stream's version in the catalogue equals the log's: a double application
    // would not change it, so check the applied-event count above as well.
    let rows = stream_rows(&db_a).await;
    assert_eq!(rows.len(), 60);
    for row in rows {
        let events = store.read_stream(&row.stream_id, 1).await.unwrap();
        assert_eq!(row.version as usize, events.len());
        assert_eq!(
            row.last_position as u64,
            events.last().unwrap().global_position
        );
    }
}

async fn readers_see_the_old_model_until_the_swap(backend: TestBackend) {
    let store = backend.store().await;
    let db = backend.read_db().await;
    drive_runs(&store, 200, 600).await;
    ProjectionRunner::new(db.clone(), store.clone(), runs())
        .catch_up()
        .await
        .unwrap();
    let rebuilding = {
        let db = db.clone();
        let store = store.clone();
        tokio::spawn(async move { rebuild(&db, &store, &runs()).await })
    };
    let mut reads = 0;
    while !rebuilding.is_finished() {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(count, 200, "a reader saw a partial model");
        reads += 1;
    }
    rebuilding.await.unwrap().unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(count, 200);
    assert!(reads > 0);
}

async fn status_reports_checkpoint_head_and_lag(backend: TestBackend) {
    let store = backend.store().await;
    let db = backend.read_db().await;
    drive_runs(&store, 10, 700).await;
    let all = [runs(), streams()];
    let before = status(&db, &*store, &all).await.unwrap();
    assert!(
        before
            .iter()
            .all(|s| s.checkpoint.is_none() && s.lag == s.head && s.head > 0)
    );
    ProjectionRunner::new(db.clone(), store.clone(), runs())
        .catch_up()
        .await
        .unwrap();
    drive_runs(&store, 2, 800).await;
    let after = status(&db, &*store, &all).await.unwrap();
    let runs_status = after.iter().find(|s| s.name == "runs").unwrap();
    assert_eq!(runs_status.generation, Some(1));
    assert!(runs_status.lag > 0 && runs_status.lag < runs_status.head);
    assert_eq!(
        runs_status.checkpoint.unwrap() + runs_status.lag,
        runs_status.head
    );
    let streams_status = after.iter().find(|s| s.name == "streams").unwrap();
    assert_eq!(streams_status.checkpoint, None);
}

/// The `runs` projection at a newer schema version (same tables, same logic).
struct RunsV2(Arc<dyn Projection>);

#[async_trait::async_trait]
impl Projection for RunsV2 {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn schema_version(&self) -> u32 {
        self.0.schema_version() + 1
    }
    fn tables(&self) -> &'static [&'static str] {
        self.0.tables()
    }
    fn schema(&self) -> &'static str {
        self.0.schema()
    }
    fn filter(&self) -> flowforge_store::LogFilter {
        self.0.filter()
    }
    async fn apply(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        tables: &flowforge_projections::Tables,
        events: &[flowforge_store::StoredEvent],
    ) -> Result<(), flowforge_projections::ProjectionError> {
        self.0.apply(tx, tables, events).await
    }
}

async fn a_changed_schema_version_rebuilds_at_start_up(backend: TestBackend) {
    let store = backend.store().await;
    let db = backend.read_db().await;
    drive_runs(&store, 20, 900).await;
    ProjectionRunner::new(db.clone(), store.clone(), runs())
        .catch_up()
        .await
        .unwrap();
    let before = run_rows(&db).await;
    let v2: Arc<dyn Projection> = Arc::new(RunsV2(runs()));
    let checkpoint = ProjectionRunner::new(db.clone(), store.clone(), v2.clone())
        .initialise()
        .await
        .unwrap();
    assert_eq!(checkpoint.generation, 2, "a new generation was built");
    assert_eq!(checkpoint.schema_version, v2.schema_version());
    assert_eq!(run_rows(&db).await, before);
}

flowforge_tests::on_both_backends!(
    a_changed_schema_version_rebuilds_at_start_up,
    the_runs_read_model_agrees_with_the_log,
    a_rebuild_is_identical_row_for_row_to_the_incremental_model,
    a_rebuild_under_concurrent_writes_misses_and_doubles_nothing,
    two_runners_of_one_projection_never_double_apply,
    runners_initialising_at_once_create_one_generation,
    readers_see_the_old_model_until_the_swap,
    status_reports_checkpoint_head_and_lag,
    ready_counts_only_events_a_read_model_still_has_to_apply,
);

/// `/ready` with no lag allowed: read models that read none of the newest events
/// (approvals, skills, tasks … after a burst of incoming events) have nothing pending,
/// so the server is ready although their checkpoints are behind the head.
async fn ready_counts_only_events_a_read_model_still_has_to_apply(backend: TestBackend) {
    let mut config = flowforge_tests::server::config_for(&backend);
    config.ready_max_lag = 0;
    let server = flowforge_tests::server::TestServer::start_with(config).await;
    let api = flowforge_tests::server::Api::new(server.url.clone());
    for n in 0..20 {
        api.send("orders/placed", serde_json::json!({"n": n})).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = api.get("/ready").await;
        if status == 200 {
            assert_eq!(body["ready"], true, "{body}");
            let each = body["checks"]["projections"]["each"].as_array().unwrap();
            let approvals = each.iter().find(|p| p["name"] == "approvals").unwrap();
            assert_eq!(approvals["ok"], true, "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready with nothing pending: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// sqlx prepares statements; PostgreSQL may then settle on a generic plan costed while
/// a read model's table was still a page, and keep scanning the whole table for each
/// lookup by key as the table grows (until an ANALYZE happens to invalidate it). Read
/// model connections plan each execution for its parameters and the table's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lookups_first_planned_on_a_young_table_use_its_index_once_it_has_grown() {
    let Some(backend) = TestBackend::postgres().await else {
        return;
    };
    let db = backend.read_db().await;
    let mut conn = db.pool().acquire().await.unwrap();
    // As wide as a run's row: on a table of one page never analysed, the planner
    // assumes 10 pages of such rows, where a scan looks cheaper than the index.
    let columns: Vec<String> = (0..20).map(|i| format!("c{i} TEXT")).collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE plan_probe (id TEXT PRIMARY KEY, {})",
        columns.join(", ")
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    // A young read model: its first page, never analysed.
    sqlx::query("INSERT INTO plan_probe (id) SELECT 'k' || n FROM generate_series(1, 5) n")
        .execute(&mut *conn)
        .await
        .unwrap();
    let lookup = "SELECT id FROM plan_probe WHERE id IN ($1, $2)";
    for _ in 0..10 {
        let rows = sqlx::query(lookup)
            .bind("k1")
            .bind("k2")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
    }
    sqlx::query(
        "INSERT INTO plan_probe (id, c0) SELECT 'k' || n, repeat('x', 200) \
         FROM generate_series(6, 50000) n",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    // pg_stat_xact_* shows this backend's scans not yet reported, at once: the
    // difference around the lookup is the lookup's.
    let scans = "SELECT coalesce(seq_scan, 0), coalesce(idx_scan, 0) \
                 FROM pg_stat_xact_user_tables WHERE relname = 'plan_probe'";
    sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
    let before: (i64, i64) = sqlx::query_as(scans).fetch_one(&mut *conn).await.unwrap();
    let rows = sqlx::query(lookup)
        .bind("k7")
        .bind("k49999")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    let after: (i64, i64) = sqlx::query_as(scans).fetch_one(&mut *conn).await.unwrap();
    sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
    assert_eq!(rows.len(), 2);
    let scans = (after.0 - before.0, after.1 - before.1);
    assert!(
        scans.0 == 0 && scans.1 >= 1,
        "(sequential scans, index scans) of the lookup: {scans:?}"
    );
}
