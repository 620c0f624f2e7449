//! The event-log conformance suite: the same cases against every backend.
//!
//! PostgreSQL cases create their own database (and skip without a server unless
//! `CI=true`); SQLite cases use a temporary file. The EventStoreDB backend runs the
//! same cases where `FLOWFORGE_TEST_ESDB_URL` points at a server (see `esdb` below).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flowforge_domain::{Actor, EventMetadata, TenantId};
use flowforge_store::postgres::{PostgresConfig, PostgresEventStore};
use flowforge_store::sqlite::{SqliteConfig, SqliteEventStore};
use flowforge_store::{
    EventStore, ExpectedVersion, LogFilter, NewEvent, StoreError, Upcasters, subscribe,
};
use flowforge_tests::pg::TestDatabase;
use serde_json::{Value, json};
use uuid::Uuid;

enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
    #[cfg(feature = "esdb")]
    Esdb(String),
}

impl Backend {
    async fn sqlite() -> Option<Self> {
        Some(Backend::Sqlite(tempfile::tempdir().unwrap()))
    }

    async fn postgres() -> Option<Self> {
        TestDatabase::create().await.map(Backend::Postgres)
    }

    /// EventStoreDB cannot be installed on the CI machine; these cases run only where
    /// `FLOWFORGE_TEST_ESDB_URL` points at a server, and skip (even in CI) otherwise.
    #[cfg(feature = "esdb")]
    async fn esdb() -> Option<Self> {
        match std::env::var("FLOWFORGE_TEST_ESDB_URL") {
            Ok(url) => Some(Backend::Esdb(url)),
            Err(_) => {
                eprintln!(
                    "SKIPPED: FLOWFORGE_TEST_ESDB_URL is not set; no EventStoreDB to test against"
                );
                None
            }
        }
    }

    async fn open(&self, upcasters: Upcasters) -> Arc<dyn EventStore> {
        match self {
            #[cfg(feature = "esdb")]
            Backend::Esdb(url) => Arc::new(
                flowforge_store::esdb::EsdbEventStore::connect(url, upcasters)
                    .await
                    .unwrap(),
            ),
            Backend::Sqlite(dir) => Arc::new(
                SqliteEventStore::open(&SqliteConfig::new(dir.path().join("log.db")), upcasters)
                    .await
                    .unwrap(),
            ),
            Backend::Postgres(db) => Arc::new(
                PostgresEventStore::connect(&PostgresConfig::new(db.url()), upcasters)
                    .await
                    .unwrap(),
            ),
        }
    }

    /// Runs raw SQL against the log's database, bypassing the store.
    async fn execute_raw(&self, sql: &str) -> Result<(), String> {
        use sqlx::Connection;
        let result = match self {
            #[cfg(feature = "esdb")]
            Backend::Esdb(_) => return Err(format!("append-only: no SQL on EventStoreDB ({sql})")),
            Backend::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("log.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut conn)
                    .await
                    .map(|_| ())
            }
            Backend::Postgres(db) => {
                let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut conn)
                    .await
                    .map(|_| ())
            }
        };
        result.map_err(|e| e.to_string())
    }
}

fn meta(tenant: &str) -> EventMetadata {
    EventMetadata::new(TenantId::new(tenant), Actor::system("conformance"))
        .with_correlation(Uuid::now_v7())
        .with_request("req-1")
}

fn event(event_type: &str, payload: Value) -> NewEvent {
    NewEvent::new(event_type, payload, meta("t1"))
}

fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| event("thing.happened", json!({"i": i})))
        .collect()
}

fn stream() -> String {
    format!("thing-{}", Uuid::now_v7())
}

async fn append_n(store: &dyn EventStore, stream_id: &str, n: usize) -> Vec<u64> {
    store
        .append(stream_id, "thing", ExpectedVersion::Any, events(n))
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| e.global_position)
        .collect()
}

// ------------------------------------------------------------------ cases

async fn versions_start_at_one_and_positions_increase(backend: Backend) {
    let store = backend.open(Upcasters::new()).await;
    let s = stream();
    let first = store
        .append(&s, "thing", ExpectedVersion::NoStream, events(3))
        .await
        .unwrap();
    assert!(!first.already_stored);
    let versions: Vec<u64> = first.events.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, vec![1, 2, 3]);
    let positions: Vec<u64> = first.events.iter().map(|e| e.global_position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");

    let second = store
        .append(&s, "thing", ExpectedVersion::Exact(3), events(1))
        .await
        .unwrap();
    assert_eq!(second.stream_version(), 4);
    assert!(second.last_position() > positions[2]);

    let stored = store.read_stream(&s, 1).await.unwrap();
    let versions: Vec<u64> = stored.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert!(
        stored
            .iter()
            .all(|e| e.stream_type == "thing" && e.stream_id == s)
    );
}

async fn stored_events_keep_every_field(backend: Backend) {
    let store = backend.open(Upcasters::new()).await;
    let s = stream();
    let metadata = EventMetadata::new(TenantId::new("acme"), Actor::user("u-1"))
        .with_correlation(Uuid::now_v7())
        .with_causation(Uuid::now_v7())
        .with_request("req-9");
    let new = NewEvent::new(
        "thing.created",
        json!({"name": "ünïcode ✓", "nested": {"n": [1, 2.5, null, true]}}),
        metadata.clone(),
    );
    let id = new.event_id;
    assert_eq!(id.get_version_num(), 7, "event ids are UUIDv7");
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    store
        .append(&s, "thing", ExpectedVersion::NoStream, vec![new.clone()])
        .await
        .unwrap();
    let read = store.event_by_id(id).await.unwrap().expect("stored");
    assert_eq!(read.event_id, id);
    assert_eq!(read.event_type, "thing.created");
    assert_eq!(read.schema_version, 1);
    assert_eq!(read.payload_value(), new.payload);
    assert_eq!(read.metadata, metadata);
    assert_eq!(read.stream_version, 1);
    assert!(
        read.recorded_at > before
            && read.recorded_at < chrono::Utc::now() + chrono::Duration::seconds(5)
    );
    assert!(store.event_by_id(Uuid::now_v7()).await.unwrap().is_none());
}

async fn a_wrong_expected_version_is_a_typed_conflict(backend: Backend) {
    let store = backend.open(Upcasters::new()).await;
    let s = stream();
    append_n(&*store, &s, 2).await;
    for expected in [
        ExpectedVersion::Exact(1),
        ExpectedVersion::Exact(3),
        ExpectedVersion::NoStream,
    ] {
        match store.append(&s, "thing", expected, events(1)).await {
            Err(StoreError::Conflict {
                stream_id,
                expected: e,
                actual,
            }) => {
                assert_eq!(stream_id, s);
                assert_eq!(e, expected);
                assert_eq!(actual, 2);
            }
            other => panic!("expected a conflict for {expected:?}, got {other:?}"),
        }
    }
    assert!(matches!(
        store
            .append(&stream(), "thing", ExpectedVersion::StreamExists, events(1))
            .await,
        Err(StoreError::Conflict { actual: 0, .. })
    ));
    store
        .append(&s, "thing", ExpectedVersion::StreamExists, events(1))
        .await
        .unwrap();
    // Nothing was written by the refused appends.
    assert_eq!(store.read_stream(&s, 1).await.unwrap().len(), 3);
}

async fn appending_stored_event_ids_again_writes_nothing(backend: Backend) {
    let store = backend.open(Upcasters::new()).await;
    let s = stream();
    let batch = events(3);
    let first = store
        .append(&s, "thing", ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    let stored_before = all_positions(&*store).await;
    // A client retrying after a timeout: same ids, whatever expected version it sends.
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Any,
        ExpectedVersion::Exact(0),
    ] {
        let retry = store
            .append(&s, "thing", expected, batch.clone())
            .await
            .unwrap();
        assert!(retry.already_stored);
        assert_eq!(retry.events, first.events);
    }
    assert_eq!(all_positions(&*store).await, stored_before);

    // Not a retry: the first id is stored but the batch differs.
    let mut mixed = vec![batch[0].clone()];
    mixed.extend(events(1));
    assert!(matches!(
        store.append(&s, "thing", ExpectedVersion::Any, mixed).await,
        Err(StoreError::IdempotencyMismatch { .. })
    ));
    // A stored id smuggled into the middle of a new batch is refused as a whole.
    let mut smuggled = events(1);
    smuggled.push(batch[1].clone());
    assert!(matches!(
        store
            .append(&s, "thing", ExpectedVersion::Any, smuggled)
            .await,
        Err(StoreError::IdempotencyMismatch { .. })
    ));
    // Refused appends may burn sequence values (holes are fine), but store nothing.
    assert_eq!(all_positions(&*store).await, stored_before);
}

async fn all_positions(store: &dyn EventStore) -> Vec<u64> {
    store
        .read_all(0, 10_000, &LogFilter::all())
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| e.global_position)
        .collect()
}

async fn concurrent_retries_of_one_append_store_it_once(backend: Backend) {
    let store = backend.open(Upcasters::new()).await;
    let s = stream();
    let batch = events(2);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let s = s.clone();
            let batch = batch.clone();
            tokio::spawn(
                async move { store.append(&s, "thing", ExpectedVersion::Any, batch).await },
            )
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| !o.already_stored).count(), 1);
    assert!(outcomes.windows(2).all(|w| w[0].events == w[1].events));
    assert_eq!(store.read_stream(&s, 1).await.unwrap().len(), 2);
}

async fn invalid_appends_are_refused(backend: Backend) {
    let store = backend.open(Upcasters::new()).await;
    let s = stream();
    assert!(matches!(
        store
            .append(&s, "thing", ExpectedVersion::Any, vec![])
            .await,
        Err(StoreError::InvalidAppend(_))
    ));
    let mixed = vec![
        NewEvent::new("a", json!({}), meta("t1")),
        NewEvent::new("a", json!({}), meta("t2")),
    ];
    assert!(matches!(
        store.append(&s, "thing", ExpectedVersion::Any, mixed).await,
        Err(StoreError::InvalidAppend(_))
    ));
    append_n(&*store, &s, 1).await;
    assert!(matches!(
        store
            .append(&s, "other", ExpectedVersion::Any, events(1))
            .await,
        Err(StoreError::StreamTypeMismatch { .. })
    ));
}

async fn read_stream_starts_at_the_requested_version(backend: Backend) {
    let store = backend.open(Upcasters::new()).await;
    let s = stream();
    append_n(&*store, &s, 5).await;
    append_n(&*store, &stream(), 2).await;
    let tail = store.read_stream(&s, 4).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert_eq!(tail[0].payload_value(), json!({"i": 3}));
    assert!(store.read_stream(&s, 6).await.unwrap().is_empty());
    assert!(
        store
            .read_stream("thing-missing", 1)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn read_all_pages_in_order_and_filters(backend: Backend) {
    let store = backend.open(Upcasters::new()).await;
    let start = store.head_position().await.unwrap();
    let a = stream();
    let b = stream();
    store
        .append(
            &a,
            "thing",
            ExpectedVersion::Any,
            vec![
                NewEvent::new("x.one", json!({"n": 1}), meta("t1")),
                NewEvent::new("x.two", json!({"n": 2}), meta("t1")),
            ],
        )
        .await
        .unwrap();
    store
        .append(
            &b,
            "thing",
            ExpectedVersion::Any,
            vec![
                NewEvent::new("x.one", json!({"n": 3}), meta("t2")),
                NewEvent::new("x.three", json!({"n": 4}), meta("t2")),
            ],
        )
        .await
        .unwrap();
    store
        .append(
            &a,
            "thing",
            ExpectedVersion::Any,
            vec![NewEvent::new("x.two", json!({"n": 5}), meta("t1"))],
        )
        .await
        .unwrap();

    // Paging: three pages of two, then one of one, never repeating.
    let mut after = start;
    let mut seen = Vec::new();
    loop {
        let page = store.read_all(after, 2, &LogFilter::all()).await.unwrap();
        if page.events.is_empty() {
            break;
        }
        assert!(page.events.len() <= 2);
        for e in &page.events {
            assert!(e.global_position > after);
            seen.push(e.payload_value()["n"].as_i64().unwrap());
        }
        after = page.scanned_to;
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);

    let t2 = store
        .read_all(start, 100, &LogFilter::all().tenant("t2"))
        .await
        .unwrap();
    assert_eq!(
        t2.events
            .iter()
            .map(|e| e.payload_value()["n"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert!(t2.events.iter().all(|e| e.tenant_id() == "t2"));

    let ones_and_threes = store
        .read_all(
            start,
            100,
            &LogFilter::all().event_types(["x.one", "x.three"]),
        )
        .await
        .unwrap();
    assert_eq!(
        ones_and_threes
            .events
            .iter()
            .map(|e| e.payload_value()["n"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    // A filtered page still reports how far it looked, so readers skip what did not match.
    let head = store.head_position().await.unwrap();
    assert_eq!(ones_and_threes.scanned_to, head);
    // Paged by type: pages merge the types in log order and stop at the page size.
    let mut after = start;
    let mut paged = Vec::new();
    loop {
        let page = store
            .read_all(
                after,
                2,
                &LogFilter::all().event_types(["x.three", "x.one"]),
            )
            .await
            .unwrap();
        assert!(page.events.len() <= 2);
        if page.events.is_empty() && page.scanned_to <= after {
            break;
        }
        paged.extend(
            page.events
                .iter()
                .map(|e| e.payload_value()["n"].as_i64().unwrap()),
        );
        after = page.scanned_to;
        if after >= head {
            break;
        }
    }
    assert_eq!(paged, vec![1, 3, 4]);

    let both = store
        .read_all(
            start,
            100,
            &LogFilter::all().tenant("t1").event_types(["x.two"]),
        )
        .await
        .unwrap();
    assert_eq!(
        both.events
            .iter()
            .map(|e| e.payload_value()["n"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 5]
    );
}

async fn concurrent_appends_with_one_expected_version_have_one_winner(backend: Backend) {
    let store = backend.open(Upcasters::new()).await;
    let s = stream();
    append_n(&*store, &s, 1).await;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            let s = s.clone();
            tokio::spawn(async move {
                store
                    .append(&s, "thing", ExpectedVersion::Exact(1), events(2))
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    let mut conflicts = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(outcome) => {
                wins += 1;
                assert_eq!(outcome.stream_version(), 3);
            }
            Err(StoreError::Conflict { actual, .. }) => {
                conflicts += 1;
                assert_eq!(actual, 3);
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((wins, conflicts), (1, 9));
    let versions: Vec<u64> = store
        .read_stream(&s, 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
}

async fn concurrent_any_appends_to_one_stream_all_land_contiguously(backend: Backend) {
    let store = backend.open(Upcasters::new()).await;
    let s = stream();
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let store = store.clone();
            let s = s.clone();
            tokio::spawn(async move {
                store
                    .append(&s, "thing", ExpectedVersion::Any, events(3))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let versions: Vec<u64> = store
        .read_stream(&s, 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, (1..=36).collect::<Vec<u64>>());
}

async fn a_v1_event_is_read_as_v2_through_an_upcaster(backend: Backend) {
    let s = stream();
    let id = {
        let store = backend.open(Upcasters::new()).await;
        let v1 = NewEvent::new(
            "customer.registered",
            json!({"name": "Ada Lovelace"}),
            meta("t1"),
        );
        let id = v1.event_id;
        store
            .append(&s, "customer", ExpectedVersion::NoStream, vec![v1])
            .await
            .unwrap();
        let v2 = NewEvent::new(
            "customer.registered",
            json!({"first_name": "Grace", "last_name": "Hopper"}),
            meta("t1"),
        )
        .with_schema_version(2);
        store
            .append(&s, "customer", ExpectedVersion::Exact(1), vec![v2])
            .await
            .unwrap();
        id
    };
    let upcasters = Upcasters::new().register("customer.registered", 1, |mut payload| {
        let name = payload["name"].as_str().unwrap_or_default().to_owned();
        let (first, last) = name.split_once(' ').unwrap_or((&name, ""));
        payload = json!({"first_name": first, "last_name": last});
        payload
    });
    let store = backend.open(upcasters).await;
    let read = store.read_stream(&s, 1).await.unwrap();
    assert_eq!(read[0].schema_version, 2);
    assert_eq!(
        read[0].payload_value(),
        json!({"first_name": "Ada", "last_name": "Lovelace"})
    );
    assert_eq!(read[1].schema_version, 2);
    assert_eq!(
        read[1].payload_value(),
        json!({"first_name": "Grace", "last_name": "Hopper"})
    );
    let by_id = store.event_by_id(id).await.unwrap().unwrap();
    assert_eq!(by_id.payload_value()["first_name"], "Ada");
    let page = store.read_all(0, 10, &LogFilter::all()).await.unwrap();
    assert!(page.events.iter().all(|e| e.schema_version == 2));
}

async fn a_subscription_catches_up_then_receives_live_events(backend: Backend) {
    let store = backend.open(Upcasters::new()).await;
    let s = stream();
    let before = append_n(&*store, &s, 5).await;
    let mut sub = subscribe(store.clone(), 0, LogFilter::all()).with_page_size(2);
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(sub.next().await.unwrap().global_position);
    }
    assert_eq!(seen, before);

    let writer = {
        let store = store.clone();
        let s = s.clone();
        tokio::spawn(async move {
            let mut positions = Vec::new();
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                positions.extend(append_n(&*store, &s, 1).await);
            }
            positions
        })
    };
    let mut live = Vec::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let e = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("live event arrives")
            .unwrap();
        live.push(e.global_position);
        // Live delivery is pushed, not found by the 500 ms fallback poll.
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(live, writer.await.unwrap());
    // Filtered subscriptions skip what does not match.
    let mut filtered = subscribe(store.clone(), 0, LogFilter::all().tenant("nobody"));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), filtered.next())
            .await
            .is_err()
    );
    assert_eq!(filtered.position(), store.head_position().await.unwrap());
}

/// A live subscriber is served from memory (the writer hands its commits to the log
/// tail): what it receives must be exactly what reading the log returns, upcast alike.
async fn live_events_are_exactly_what_the_log_returns(backend: Backend) {
    let upcasters = || {
        Upcasters::new().register(
            "thing.renamed",
            1,
            |payload| json!({"name": payload["old"]}),
        )
    };
    let store = backend.open(upcasters()).await;
    let start = store.head_position().await.unwrap();
    let mut sub = subscribe(store.clone(), start, LogFilter::all());
    // One event first, so the tail is following by the time the writers start.
    append_n(&*store, &stream(), 1).await;
    let mut live = vec![sub.next().await.unwrap()];
    let writers = (0..25).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            let renamed = NewEvent::new(
                "thing.renamed",
                json!({"old": format!("é\"{n}")}),
                meta("t1"),
            );
            let noted = event(
                "thing.noted",
                json!({"n": n, "nested": {"list": [1, 2.5, null]}}),
            );
            store
                .append(
                    &format!("live-{}", n % 4),
                    "thing",
                    ExpectedVersion::Any,
                    vec![renamed, noted],
                )
                .await
                .unwrap();
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.unwrap();
    }
    while live.len() < 51 {
        let next = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("live event arrives")
            .unwrap();
        live.push(next);
    }
    let logged = store
        .read_all(start, 100, &LogFilter::all())
        .await
        .unwrap()
        .events;
    assert_eq!(logged.len(), 51);
    assert!(live.iter().any(|e| e.event_type == "thing.renamed"));
    assert!(
        live.iter()
            .filter(|e| e.event_type == "thing.renamed")
            .all(|e| e.schema_version == 2)
    );
    assert_eq!(
        serde_json::to_value(&live).unwrap(),
        serde_json::to_value(&logged).unwrap()
    );
    // And what another process (a fresh store on the same log) reads is the same again.
    let reopened = backend.open(upcasters()).await;
    let reread = reopened
        .read_all(start, 100, &LogFilter::all())
        .await
        .unwrap()
        .events;
    assert_eq!(
        serde_json::to_value(&reread).unwrap(),
        serde_json::to_value(&logged).unwrap()
    );
}

/// The sequence-gap problem: writers commit out of position order; a subscriber tailing
/// the log must see every committed event exactly once, in position order.
async fn a_subscriber_sees_every_committed_event_once_in_order_under_concurrent_writers(
    backend: Backend,
) {
    let store = backend.open(Upcasters::new()).await;
    let writers = 16;
    let appends_per_writer = 40;
    let mut sub = subscribe(store.clone(), 0, LogFilter::all());
    let collector = tokio::spawn(async move {
        let mut positions = Vec::new();
        let mut ids = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            match tokio::time::timeout_at(deadline, sub.next()).await {
                Ok(Ok(e)) => {
                    if e.event_type == "test.done" {
                        break;
                    }
                    positions.push(e.global_position);
                    ids.push(e.event_id);
                }
                Ok(Err(err)) => panic!("subscription failed: {err}"),
                Err(_) => panic!("subscription stalled after {} events", positions.len()),
            }
        }
        (positions, ids)
    });

    let chaos = Arc::new(backend);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let chaos = chaos.clone();
        tasks.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 0..appends_per_writer {
                let s = format!("gap-{w}-{}", i % 4);
                let batch: Vec<NewEvent> = (0..1 + (i % 3))
                    .map(|_| event("test.event", json!({"w": w, "i": i})))
                    .collect();
                let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
                match (w % 4, i % 5) {
                    // Slow transactions that hold their positions while others commit.
                    (0, 0) => {
                        if chaos
                            .slow_append(&s, &batch, Duration::from_millis(30), false)
                            .await
                        {
                            committed.extend(ids);
                        }
                    }
                    // Aborted transactions that leave holes in the sequence.
                    (1, 0) | (2, 3) => {
                        chaos
                            .slow_append(&s, &batch, Duration::from_millis(5), true)
                            .await;
                    }
                    _ => {
                        store
                            .append(&s, "gap", ExpectedVersion::Any, batch)
                            .await
                            .unwrap();
                        committed.extend(ids);
                    }
                }
            }
            committed
        }));
    }
    let mut committed = BTreeSet::new();
    for task in tasks {
        committed.extend(task.await.unwrap());
    }
    store
        .append(
            &stream(),
            "thing",
            ExpectedVersion::Any,
            vec![event("test.done", json!({}))],
        )
        .await
        .unwrap();
    let (positions, ids) = collector.await.unwrap();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "delivered out of order or twice"
    );
    let delivered: BTreeSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(delivered.len(), ids.len(), "an event was delivered twice");
    let missing: Vec<_> = committed.difference(&delivered).collect();
    assert!(
        missing.is_empty(),
        "{} committed events never delivered",
        missing.len()
    );
    let extra: Vec<_> = delivered.difference(&committed).collect();
    assert!(
        extra.is_empty(),
        "{} delivered events were never committed",
        extra.len()
    );
    if matches!(*chaos, Backend::Postgres(_)) {
        let overtaken = OVERTAKEN.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            overtaken > 0,
            "the test did not provoke a single out-of-order commit"
        );
        eprintln!(
            "{overtaken} transactions committed (or aborted) after higher positions had committed"
        );
    }
}

/// Slow or aborted transactions that saw higher positions commit before they finished.
static OVERTAKEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Opens a transaction on `conn` and appends `batch` in it the way the store's writer
/// does, leaving it uncommitted; returns the positions it holds.
async fn begin_append(
    conn: &mut sqlx::PgConnection,
    stream_id: &str,
    batch: &[NewEvent],
) -> Vec<i64> {
    // Plain statements rather than sqlx's Transaction keep the caller's future `Send`.
    sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
    let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
    let types: Vec<String> = batch.iter().map(|e| e.event_type.clone()).collect();
    let versions: Vec<i32> = batch.iter().map(|_| 1).collect();
    let payloads: Vec<String> = batch.iter().map(|e| e.payload.to_string()).collect();
    let metadata: Vec<String> = batch
        .iter()
        .map(|e| serde_json::to_string(&e.metadata).unwrap())
        .collect();
    let appended: Vec<(i64,)> = sqlx::query_as(
        "SELECT global_position FROM event_log_append(ARRAY[$1], ARRAY['gap'], \
         ARRAY[-1::bigint], ARRAY['t1'], ARRAY[$2::integer], $3, $4, $5, $6, $7)",
    )
    .bind(stream_id)
    .bind(i32::try_from(batch.len()).unwrap())
    .bind(&ids)
    .bind(&types)
    .bind(&versions)
    .bind(&payloads)
    .bind(&metadata)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    appended.into_iter().map(|(position,)| position).collect()
}

impl Backend {
    /// Appends inside an explicit transaction that sleeps before it commits or rolls back.
    /// Returns whether the events were committed.
    // Boxed so the spawned writer futures stay `Send` (rustc cannot prove it through the
    // borrowed arguments of a plain `async fn` here).
    fn slow_append<'a>(
        &'a self,
        stream_id: &'a str,
        batch: &'a [NewEvent],
        delay: Duration,
        abort: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            match self {
                Backend::Postgres(db) => {
                    use sqlx::Connection;
                    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
                    let appended = begin_append(&mut conn, stream_id, batch).await;
                    tokio::time::sleep(delay).await;
                    // Did higher positions commit while this transaction held lower ones? That
                    // is the situation a naive "read past the highest committed" reader gets wrong.
                    let mine = appended.iter().copied().max().unwrap_or(0);
                    let mut observer = sqlx::PgConnection::connect(db.url()).await.unwrap();
                    let overtaken: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM event_log WHERE global_position > $1",
                    )
                    .bind(mine)
                    .fetch_one(&mut observer)
                    .await
                    .unwrap();
                    if overtaken > 0 {
                        OVERTAKEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    let end = if abort { "ROLLBACK" } else { "COMMIT" };
                    sqlx::query(end).execute(&mut conn).await.unwrap();
                    !abort
                }
                // One writer: a slow append delays everyone, and a refused one writes nothing.
                // EventStoreDB orders commits itself; the same stand-in applies.
                _ => {
                    tokio::time::sleep(delay).await;
                    !abort && {
                        // Committed through a second handle of the store, as another client would.
                        let store = self.open(Upcasters::new()).await;
                        store
                            .append(stream_id, "gap", ExpectedVersion::Any, batch.to_vec())
                            .await
                            .is_ok()
                    }
                }
            }
        })
    }
}

async fn the_log_cannot_be_changed_at_the_database_level(backend: Backend) {
    let store = backend.open(Upcasters::new()).await;
    append_n(&*store, &stream(), 3).await;
    let head = store.head_position().await.unwrap();
    for sql in [
        "UPDATE event_log SET event_type = 'rewritten'",
        "DELETE FROM event_log",
        "DELETE FROM event_log WHERE global_position = 1",
    ] {
        let error = backend.execute_raw(sql).await.expect_err(sql);
        assert!(error.contains("append-only"), "{sql}: {error}");
    }
    if matches!(backend, Backend::Postgres(_)) {
        let error = backend
            .execute_raw("TRUNCATE event_log")
            .await
            .expect_err("truncate");
        assert!(error.contains("append-only"), "{error}");
    }
    let all = store.read_all(0, 100, &LogFilter::all()).await.unwrap();
    assert_eq!(all.events.len(), 3);
    assert!(all.events.iter().all(|e| e.event_type == "thing.happened"));
    assert_eq!(all.events.last().unwrap().global_position, head);
}

// ------------------------------------------------------------------ instantiation

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(backend) = super::Backend::sqlite().await else { return };
                    super::$case(backend).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(backend) = super::Backend::postgres().await else { return };
                    super::$case(backend).await;
                }
            )*
        }
        #[cfg(feature = "esdb")]
        mod esdb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(backend) = super::Backend::esdb().await else { return };
                    super::$case(backend).await;
                }
            )*
        }
    };
}

conformance!(
    versions_start_at_one_and_positions_increase,
    stored_events_keep_every_field,
    a_wrong_expected_version_is_a_typed_conflict,
    appending_stored_event_ids_again_writes_nothing,
    concurrent_retries_of_one_append_store_it_once,
    invalid_appends_are_refused,
    read_stream_starts_at_the_requested_version,
    read_all_pages_in_order_and_filters,
    concurrent_appends_with_one_expected_version_have_one_winner,
    concurrent_any_appends_to_one_stream_all_land_contiguously,
    a_v1_event_is_read_as_v2_through_an_upcaster,
    a_subscription_catches_up_then_receives_live_events,
    a_subscriber_sees_every_committed_event_once_in_order_under_concurrent_writers,
    the_log_cannot_be_changed_at_the_database_level,
    live_events_are_exactly_what_the_log_returns,
);

/// The pools' health check (`flowforge_store::pool`): a connection that sat idle is
/// checked and, if its server side is gone, replaced before use; one used a moment ago
/// is handed out without a round trip, so a break in between reaches the statement.
mod pooled_connections {
    use std::time::Duration;

    use flowforge_store::pool::{IDLE_BEFORE_CHECK, check_only_connections_idle_for};
    use flowforge_tests::pg::TestDatabase;
    use sqlx::postgres::{PgPool, PgPoolOptions};

    use super::{PostgresEventStore, Upcasters, append_n, stream};

    /// Long enough that a loaded machine never makes "a moment ago" count as idle.
    const NEVER_IDLE: Duration = Duration::from_secs(3600);

    async fn one_connection_pool(db: &TestDatabase, idle_before_check: Duration) -> PgPool {
        check_only_connections_idle_for(PgPoolOptions::new().max_connections(1), idle_before_check)
            .connect(db.url())
            .await
            .unwrap()
    }

    /// A pool of one connection, used once, whose server process has then been
    /// terminated; and that process's pid.
    async fn pool_whose_connection_died(
        db: &TestDatabase,
        idle_before_check: Duration,
    ) -> (PgPool, i32) {
        let pool = one_connection_pool(db, idle_before_check).await;
        let pid = backend_pid(&pool).await.unwrap();
        terminate(db, pid).await;
        (pool, pid)
    }

    async fn backend_pid(pool: &PgPool) -> Result<i32, sqlx::Error> {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(pool)
            .await
    }

    async fn terminate(db: &TestDatabase, pid: i32) {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(db.url())
            .await
            .unwrap();
        let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
            .bind(pid)
            .fetch_one(&admin)
            .await
            .unwrap();
        assert!(terminated, "backend {pid} was not terminated");
        admin.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_connection_whose_server_side_died_is_replaced_before_use() {
        let Some(db) = TestDatabase::create().await else {
            return;
        };
        let (pool, first) = pool_whose_connection_died(&db, IDLE_BEFORE_CHECK).await;
        tokio::time::sleep(IDLE_BEFORE_CHECK + Duration::from_millis(200)).await;
        let second = backend_pid(&pool)
            .await
            .expect("the dead idle connection should have been replaced");
        assert_ne!(
            first, second,
            "the statement ran on the dead connection's pid"
        );
        pool.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_used_a_moment_ago_is_handed_out_without_a_check() {
        let Some(db) = TestDatabase::create().await else {
            return;
        };
        let (pool, first) = pool_whose_connection_died(&db, NEVER_IDLE).await;
        // Not pinged, so the break reaches this statement (callers retry it as
        // transient) — unless sqlx's connection read the server's goodbye (FATAL 57P01,
        // then EOF) on its own first, in which case the pool replaced it. Which of the
        // two happens is a race inside sqlx, so either is accepted; what must hold is
        // that no statement runs on the dead backend and the pool recovers by itself.
        let next = match backend_pid(&pool).await {
            Err(_) => backend_pid(&pool).await.unwrap(),
            Ok(pid) => pid,
        };
        assert_ne!(first, next, "a statement ran on a terminated backend");
        assert_eq!(
            backend_pid(&pool).await.unwrap(),
            next,
            "the replacement connection is kept, not replaced again"
        );
        pool.close().await;
    }

    /// What the pool says to the server, seen from a TCP proxy between them: the type
    /// byte of every message the client sends after its startup packet, in order.
    struct CountingProxy {
        port: u16,
        sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl CountingProxy {
        /// A proxy to the server of `db`.
        async fn to_database(db: &TestDatabase) -> Self {
            let options: sqlx::postgres::PgConnectOptions = db.url().parse().unwrap();
            Self::to(format!("{}:{}", options.get_host(), options.get_port())).await
        }

        /// How to reach `db` through the proxy: in clear, so that it can read.
        fn options(&self, db: &TestDatabase) -> sqlx::postgres::PgConnectOptions {
            let options: sqlx::postgres::PgConnectOptions = db.url().parse().unwrap();
            options
                .host("127.0.0.1")
                .port(self.port)
                .ssl_mode(sqlx::postgres::PgSslMode::Disable)
        }

        async fn to(server: String) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let record = sent.clone();
            let task = tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let upstream = tokio::net::TcpStream::connect(&server).await.unwrap();
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = upstream.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    });
                    let record = record.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut frames = FrontendFrames::default();
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            let n = match client_read.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let types = frames.feed(&buffer[..n]);
                            record.lock().unwrap().extend(types);
                            if server_write.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            Self { port, sent, task }
        }

        /// Messages sent since the last call.
        fn take(&self) -> Vec<char> {
            std::mem::take(&mut *self.sent.lock().unwrap())
                .into_iter()
                .map(char::from)
                .collect()
        }
    }

    impl Drop for CountingProxy {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Splits the client's byte stream into PostgreSQL frontend messages: untyped
    /// packets (SSL/GSS requests, then the startup message) first, then messages of a
    /// type byte and a length that counts itself.
    #[derive(Default)]
    struct FrontendFrames {
        pending: Vec<u8>,
        started: bool,
    }

    impl FrontendFrames {
        fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
            const SSL_REQUEST: u32 = 80_877_103;
            const GSS_REQUEST: u32 = 80_877_104;
            self.pending.extend_from_slice(bytes);
            let mut types = Vec::new();
            loop {
                let header = usize::from(self.started);
                let Some(length) = self.pending.get(header..header + 4) else {
                    return types;
                };
                let length = u32::from_be_bytes(length.try_into().unwrap()) as usize;
                let total = header + length;
                if self.pending.len() < total {
                    return types;
                }
                if self.started {
                    types.push(self.pending[0]);
                } else {
                    let code = u32::from_be_bytes(self.pending[4..8].try_into().unwrap());
                    self.started = code != SSL_REQUEST && code != GSS_REQUEST;
                }
                self.pending.drain(..total);
            }
        }
    }

    /// A pool of one connection through a [`CountingProxy`], with `idle_before_check`.
    async fn pool_through_proxy(
        db: &TestDatabase,
        idle_before_check: Duration,
    ) -> (PgPool, CountingProxy) {
        let proxy = CountingProxy::to_database(db).await;
        let pool = check_only_connections_idle_for(
            PgPoolOptions::new().max_connections(1),
            idle_before_check,
        )
        .connect_with(proxy.options(db))
        .await
        .unwrap();
        (pool, proxy)
    }

    /// The cheap check, shown on the wire: a connection used a moment ago gets no ping
    /// (`Sync` alone, the whole of sqlx's PostgreSQL ping) before its next statement,
    /// and one idle past the threshold gets exactly one. It also shows what the pool
    /// cannot be told not to do, and why the log's writer holds its connection
    /// (`store::pool::HeldConnection`): sqlx pings every connection given back to it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_connection_idle_past_the_threshold_is_pinged_before_use() {
        let Some(db) = TestDatabase::create().await else {
            return;
        };
        let idle_before_check = Duration::from_millis(400);
        let (pool, proxy) = pool_through_proxy(&db, idle_before_check).await;
        // Simple-protocol statements: each is one `Query` message, so every `Sync` on
        // the wire is a ping.
        let statement = || sqlx::raw_sql("SELECT 1").execute(&pool);
        statement().await.unwrap();
        // The ping on release runs after the statement has answered.
        let settle = || tokio::time::sleep(Duration::from_millis(100));
        settle().await;
        proxy.take();

        for _ in 0..5 {
            statement().await.unwrap();
        }
        settle().await;
        assert_eq!(
            proxy.take().iter().collect::<String>(),
            "QSQSQSQSQS",
            "expected each statement, then sqlx's ping on release, and no ping before use"
        );

        tokio::time::sleep(idle_before_check).await;
        statement().await.unwrap();
        settle().await;
        assert_eq!(
            proxy.take().iter().collect::<String>(),
            "SQS",
            "an idle connection was not pinged exactly once before its statement"
        );
        pool.close().await;
    }

    /// A pool too small to give connections away for good (here 2: the writer and the
    /// announcer would take both) still serves everyone: the LISTEN connection, reads,
    /// and appends in a row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_pool_is_not_taken_over_by_the_writer() {
        use flowforge_store::{EventStore, LogFilter};
        let Some(db) = TestDatabase::create().await else {
            return;
        };
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(3))
            .connect(db.url())
            .await
            .unwrap();
        let store = PostgresEventStore::from_pool(pool, Upcasters::new(), 1)
            .await
            .unwrap();
        let stream = stream();
        let mut appended = Vec::new();
        for _ in 0..5 {
            appended.extend(append_n(&store, &stream, 1).await);
        }
        let page = tokio::time::timeout(
            Duration::from_secs(10),
            store.read_all(0, 100, &LogFilter::all()),
        )
        .await
        .expect("a read waited for a connection the writer kept")
        .expect("a read failed");
        let read: Vec<u64> = page.events.iter().map(|e| e.global_position).collect();
        assert_eq!(read, appended);
    }

    /// The log's writer and its commit announcer keep their connections: on the wire,
    /// every `Sync` an append or an announcement sends closes its own statement
    /// (`Execute`); none is a ping on a connection given back to the pool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_in_a_row_cost_no_ping_on_the_wire() {
        let Some(db) = TestDatabase::create().await else {
            return;
        };
        let proxy = CountingProxy::to_database(&db).await;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(proxy.options(&db))
            .await
            .unwrap();
        let store = PostgresEventStore::from_pool(pool, Upcasters::new(), 1)
            .await
            .unwrap();
        let stream = stream();
        append_n(&store, &stream, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.take();

        for _ in 0..20 {
            append_n(&store, &stream, 1).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent = proxy.take();
        let count = |kind: char| sent.iter().filter(|&&c| c == kind).count();
        assert!(
            count('E') >= 20,
            "expected at least 20 statements (one per append), saw {sent:?}"
        );
        assert_eq!(
            count('S'),
            count('E'),
            "a Sync without a statement (a ping) between appends: {sent:?}"
        );
    }
}

/// `event_log_read` (one round trip: the safe position, then the read) stops below an
/// append that is still in flight, even when a later append has committed, and returns
/// both once the first commits.
mod one_call_reads {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_read_stops_below_an_append_still_in_flight() {
        let Some(backend) = Backend::postgres().await else {
            return;
        };
        let Backend::Postgres(db) = &backend else {
            unreachable!()
        };
        let store = backend.open(Upcasters::new()).await;
        let first = append_n(store.as_ref(), &stream(), 1).await[0];

        use sqlx::Connection;
        let mut slow = sqlx::PgConnection::connect(db.url()).await.unwrap();
        let held = event("test.slow", json!({}));
        let held_position =
            begin_append(&mut slow, &stream(), std::slice::from_ref(&held)).await[0];
        let later = append_n(store.as_ref(), &stream(), 1).await[0];
        assert!(u64::try_from(held_position).unwrap() < later);

        let page = store.read_all(0, 100, &LogFilter::all()).await.unwrap();
        let seen: Vec<u64> = page.events.iter().map(|e| e.global_position).collect();
        assert_eq!(seen, vec![first], "read past a position still in flight");
        assert_eq!(
            page.scanned_to, first,
            "moved past a position still in flight"
        );

        sqlx::query("COMMIT").execute(&mut slow).await.unwrap();
        let page = store.read_all(0, 100, &LogFilter::all()).await.unwrap();
        let seen: Vec<u64> = page.events.iter().map(|e| e.global_position).collect();
        assert_eq!(
            seen,
            vec![first, u64::try_from(held_position).unwrap(), later]
        );
        assert_eq!(page.scanned_to, later);
        assert_eq!(page.events[1].event_id, held.event_id);

        let page = store.read_all(later, 100, &LogFilter::all()).await.unwrap();
        assert!(page.events.is_empty());
        assert_eq!(page.scanned_to, later, "a read with nothing new stays put");
    }
}

mod writers_in_two_processes {
    use super::*;

    /// Each process's writer sends the appends waiting as one call (one transaction).
    /// Two such calls appending to the same streams take the same stream versions, so
    /// one waits for the other on the stream-version index; if they inserted the
    /// streams in opposite orders, each would wait for the other and PostgreSQL would
    /// abort one as a deadlock, failing every append in it. Every append must land.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn batches_to_the_same_streams_in_opposite_orders_all_land() {
        let Some(backend) = Backend::postgres().await else {
            return;
        };
        let Backend::Postgres(db) = &backend else {
            unreachable!()
        };
        let one = backend.open(Upcasters::new()).await;
        let two = backend.open(Upcasters::new()).await;

        // A few rounds: the two calls must start within a millisecond or so of each other.
        for _round in 0..3 {
            // Hold both writers inside a call: every append announces itself with a shared
            // lock on the key of the sequence's current value, which this takes exclusively.
            use sqlx::Connection;
            let mut gate = sqlx::PgConnection::connect(db.url()).await.unwrap();
            let key: i64 = sqlx::query_scalar(
                "SELECT event_log_epoch_key(CASE WHEN is_called THEN last_value ELSE 0 END) \
                 FROM event_log_position_seq",
            )
            .fetch_one(&mut gate)
            .await
            .unwrap();
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(key)
                .execute(&mut gate)
                .await
                .unwrap();
            let held: Vec<_> = [one.clone(), two.clone()]
                .into_iter()
                .map(|store| {
                    tokio::spawn(async move { append_n(store.as_ref(), &stream(), 1).await })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(300)).await;

            // Meanwhile each writer's queue fills, with one call's worth: every `a` stream,
            // then every `b`, in the first process; every `b`, then every `a`, in the
            // second. Once the gate opens, both send theirs at the same moment: unordered,
            // each would hold half the streams the other goes on to insert.
            let pairs: Vec<(String, String)> = (0..128).map(|_| (stream(), stream())).collect();
            let (a, b): (Vec<String>, Vec<String>) = pairs.iter().cloned().unzip();
            let mut appends = Vec::new();
            for (store, first, then) in [(&one, &a, &b), (&two, &b, &a)] {
                for stream_id in first.iter().chain(then) {
                    let (store, stream_id) = (store.clone(), stream_id.clone());
                    appends.push(async move {
                        store
                            .append(
                                &stream_id,
                                "thing",
                                ExpectedVersion::Any,
                                vec![event("thing.happened", json!({}))],
                            )
                            .await
                    });
                }
            }
            let appends = tokio::spawn(futures::future::join_all(appends));
            tokio::time::sleep(Duration::from_millis(300)).await;
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(&mut gate)
                .await
                .unwrap();
            for first in held {
                first.await.unwrap();
            }

            let failed: Vec<String> = appends
                .await
                .unwrap()
                .into_iter()
                .filter_map(|result| result.err().map(|e| e.to_string()))
                .collect();
            assert!(
                failed.is_empty(),
                "{} of {} appends failed, e.g. {:?}",
                failed.len(),
                pairs.len() * 4,
                failed.first()
            );
            for (a, b) in &pairs {
                for stream_id in [a, b] {
                    let versions: Vec<u64> = one
                        .read_stream(stream_id, 1)
                        .await
                        .unwrap()
                        .iter()
                        .map(|e| e.stream_version)
                        .collect();
                    assert_eq!(versions, vec![1, 2], "{stream_id}");
                }
            }
        }
    }
}
