//! Flow control that holds across processes: two `flowforge serve` processes on one
//! PostgreSQL database sharing the work through NATS JetStream, a real app, and every
//! limit checked from what the log recorded (each call's start and finish, each hold)
//! as well as from what the app saw.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowforge_sdk::{App, Error, Function};
use flowforge_tests::backend::TestBackend;
use flowforge_tests::nats::TestNats;
use flowforge_tests::process::{ServerProcess, cluster};
use flowforge_tests::server::{Api, SdkApp};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);

/// How many step bodies run at once in the app, and the most there ever were.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl InFlight {
    async fn work(&self, pause: Duration) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(pause).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An app whose one function does one step of `pause`, under `control`.
fn limited_app(
    control: Vec<(&'static str, Value)>,
    pause: Duration,
    in_flight: Arc<InFlight>,
) -> impl FnOnce(String, String) -> App {
    move |server, serve| {
        let mut function = Function::new("limited").trigger_event("fc/go").retries(3);
        for (key, value) in control {
            function = function.flow_control(key, value);
        }
        App::new("fc-cluster", server, serve).function(function.handler(move |ctx, step| {
            let in_flight = in_flight.clone();
            async move {
                let n = ctx.event["data"]["n"].clone();
                step.run("work", move || async move {
                    in_flight.work(pause).await;
                    Ok::<_, Error>(json!(true))
                })
                .await?;
                Ok(n)
            }
        }))
    }
}

async fn start(env: &[(&str, &str)]) -> Option<(TestBackend, TestNats, Vec<ServerProcess>)> {
    let backend = TestBackend::postgres().await?;
    let nats = TestNats::shared().await?;
    let processes = cluster(&backend, &nats, &["one", "two"], env).await;
    Some((backend, nats, processes))
}

/// Sends the events half to each process (as behind a load balancer); returns the
/// event ids in order.
async fn send_across(apis: &[Api], events: Vec<Value>) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, chunk) in events.chunks(25).enumerate() {
        let api = &apis[i % apis.len()];
        let (status, body) = api.post("/api/v1/events", &json!(chunk)).await;
        assert_eq!(status, 200, "{body}");
        ids.extend(
            body["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_str().unwrap().to_owned()),
        );
    }
    ids
}

/// When a call started and finished, as the executor recorded it.
type Interval = (DateTime<Utc>, DateTime<Utc>);

/// One run as the log recorded it.
struct RecordedRun {
    data: Value,
    created_at: DateTime<Utc>,
    /// (started, finished) of each call.
    calls: Vec<Interval>,
    holds: Vec<Value>,
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

/// Waits for each event's one run to complete and reads its log.
async fn completed_runs(api: &Api, event_ids: &[String]) -> Vec<RecordedRun> {
    let mut runs = Vec::new();
    for event_id in event_ids {
        let run_ids = api.runs_of_event(event_id, 1, TIMEOUT).await;
        assert_eq!(run_ids.len(), 1, "one run per event");
        let run = api.finished_run(&run_ids[0], TIMEOUT).await;
        assert_eq!(
            run["status"], "completed",
            "no run is lost or failed: {run}"
        );
        let (status, log) = api
            .get(&format!("/api/v1/runs/{}/events", run_ids[0]))
            .await;
        assert_eq!(status, 200, "{log}");
        let mut recorded = RecordedRun {
            data: run["event"]["data"].clone(),
            created_at: time(&run["created_at"]),
            calls: Vec::new(),
            holds: Vec::new(),
        };
        for event in log["items"].as_array().unwrap() {
            let payload = &event["payload"];
            match event["event_type"].as_str().unwrap() {
                "run.call_finished" => recorded
                    .calls
                    .push((time(&payload["started_at"]), time(&payload["finished_at"]))),
                "run.call_held" => recorded.holds.push(payload.clone()),
                _ => {}
            }
        }
        runs.push(recorded);
    }
    runs
}

/// The most intervals that overlap at any instant (an interval ending at `t` does
/// not overlap one starting at `t`).
fn most_at_once<'a>(intervals: impl Iterator<Item = &'a Interval>) -> usize {
    let mut edges: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for (start, end) in intervals {
        edges.push((*start, 1));
        edges.push((*end, -1));
    }
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

async fn concurrency_5_holds_for_100_runs() {
    let Some((_backend, _nats, processes)) = start(&[]).await else {
        return;
    };
    let in_flight = Arc::new(InFlight::default());
    let app = limited_app(
        vec![("concurrency", json!([{"limit": 5}]))],
        Duration::from_millis(40),
        in_flight.clone(),
    );
    let _app = SdkApp::start_for(&processes[0], app).await;
    let apis: Vec<Api> = processes.iter().map(ServerProcess::api).collect();
    let events = (0..100)
        .map(|n| json!({"name": "fc/go", "data": {"n": n}}))
        .collect();
    let ids = send_across(&apis, events).await;
    let runs = completed_runs(&apis[0], &ids).await;

    let calls = runs.iter().flat_map(|r| r.calls.iter());
    let most = most_at_once(calls);
    assert!(most <= 5, "{most} calls executed at once (the log)");
    assert!(
        most >= 2,
        "the limit allows parallel calls; at most {most} ran"
    );
    let seen = in_flight.max.load(Ordering::SeqCst);
    assert!(seen <= 5, "{seen} steps executed at once (the app)");
    let held = runs.iter().filter(|r| !r.holds.is_empty()).count();
    assert!(held > 0, "100 runs never waited for a slot of 5");
    for run in &runs {
        for hold in &run.holds {
            assert_eq!(hold["reason"], "concurrency", "{hold}");
            assert_eq!(hold["detail"], "all 5 concurrency slot(s) are taken");
        }
    }
}

async fn keyed_concurrency_runs_each_customer_one_at_a_time_and_customers_in_parallel() {
    let Some((_backend, _nats, processes)) = start(&[]).await else {
        return;
    };
    let in_flight = Arc::new(InFlight::default());
    let app = limited_app(
        vec![(
            "concurrency",
            json!([{"limit": 1, "key": "event.data.customer"}]),
        )],
        Duration::from_millis(150),
        in_flight,
    );
    let _app = SdkApp::start_for(&processes[0], app).await;
    let apis: Vec<Api> = processes.iter().map(ServerProcess::api).collect();
    let customers = ["ann", "bob", "cho"];
    let events = (0..18)
        .map(|n| json!({"name": "fc/go", "data": {"n": n, "customer": customers[n % 3]}}))
        .collect();
    let ids = send_across(&apis, events).await;
    let runs = completed_runs(&apis[0], &ids).await;

    let mut by_customer: HashMap<String, Vec<Interval>> = HashMap::new();
    for run in &runs {
        let customer = run.data["customer"].as_str().unwrap().to_owned();
        by_customer
            .entry(customer)
            .or_default()
            .extend(run.calls.iter().copied());
    }
    for (customer, calls) in &by_customer {
        let most = most_at_once(calls.iter());
        assert_eq!(most, 1, "{customer}: {most} calls at once");
    }
    let all = most_at_once(runs.iter().flat_map(|r| r.calls.iter()));
    assert!(
        all >= 2,
        "customers never ran in parallel (at most {all} at once)"
    );

    // The run view says which key a waiting run waits for; the log recorded it.
    let keyed: Vec<&Value> = runs.iter().flat_map(|r| r.holds.iter()).collect();
    assert!(!keyed.is_empty(), "six runs per customer never waited");
    for hold in keyed {
        assert!(customers.contains(&hold["key"].as_str().unwrap()), "{hold}");
    }
}

async fn a_waiting_run_says_what_it_waits_for() {
    let Some((_backend, _nats, processes)) = start(&[]).await else {
        return;
    };
    let app = limited_app(
        vec![(
            "concurrency",
            json!([{"limit": 1, "key": "event.data.customer"}]),
        )],
        Duration::from_millis(1_500),
        Arc::new(InFlight::default()),
    );
    let _app = SdkApp::start_for(&processes[0], app).await;
    let api = processes[1].api();
    let events: Vec<Value> = (0..3)
        .map(|n| json!({"name": "fc/go", "data": {"n": n, "customer": "customer-42"}}))
        .collect();
    let (status, body) = api.post("/api/v1/events", &json!(events)).await;
    assert_eq!(status, 200, "{body}");
    let last_event = body["ids"][2].as_str().unwrap().to_owned();
    let last_run = api.runs_of_event(&last_event, 1, TIMEOUT).await.remove(0);
    let view = api
        .run_until(&last_run, TIMEOUT, |run| !run["flow_control"].is_null())
        .await;
    let flow = &view["flow_control"];
    assert_eq!(flow["state"], "waiting_for_concurrency", "{view}");
    assert_eq!(flow["key"], "customer-42");
    // The two runs created before it, when both wait (one between its two calls).
    let ahead = flow["ahead"].as_i64().unwrap();
    assert!((0..=2).contains(&ahead), "{flow}");
    assert_eq!(
        flow["message"],
        format!("waiting for a concurrency slot of key `customer-42`, {ahead} ahead")
    );
    // The list is a read model: it shows the hold once its projection has applied it.
    api.get_until("/api/v1/runs?status=queued", TIMEOUT, |list| {
        list["items"].as_array().is_some_and(|items| {
            items.iter().any(|r| {
                r["flow_control"]["state"] == "waiting_for_concurrency"
                    && r["flow_control"]["key"] == "customer-42"
            })
        })
    })
    .await;
    let done = api.finished_run(&last_run, TIMEOUT).await;
    assert_eq!(done["status"], "completed");
    assert!(done["flow_control"].is_null(), "{done}");
    let holds = done["holds"].as_array().unwrap();
    assert!(!holds.is_empty(), "{done}");
    assert!(holds.iter().all(|h| h["released_at"].is_string()), "{done}");
}

async fn a_throttle_of_10_per_second_spaces_100_run_starts_and_drops_none() {
    let Some((_backend, _nats, processes)) = start(&[]).await else {
        return;
    };
    let app = limited_app(
        vec![("throttle", json!({"limit": 10, "period": "1s"}))],
        Duration::from_millis(1),
        Arc::new(InFlight::default()),
    );
    let _app = SdkApp::start_for(&processes[0], app).await;
    let apis: Vec<Api> = processes.iter().map(ServerProcess::api).collect();
    let events = (0..100)
        .map(|n| json!({"name": "fc/go", "data": {"n": n}}))
        .collect();
    let ids = send_across(&apis, events).await;
    let runs = completed_runs(&apis[0], &ids).await;

    // The start the throttle decided (recorded in the log) and the first call's start.
    let mut decided = Vec::new();
    for run in &runs {
        let hold = run.holds.iter().find(|h| h["reason"] == "throttle");
        let start = hold.map_or(run.created_at, |h| time(&h["until"]));
        let first_call = run.calls.iter().map(|c| c.0).min().unwrap();
        assert!(
            first_call >= start,
            "a run started at {first_call}, before its throttled start {start}"
        );
        decided.push(start);
    }
    decided.sort();
    for (i, start) in decided.iter().enumerate() {
        let within = decided[i..]
            .iter()
            .filter(|s| **s < *start + chrono::Duration::seconds(1))
            .count();
        assert!(within <= 10, "{within} run starts within 1s of {start}");
    }
    let span = *decided.last().unwrap() - decided[0];
    assert!(
        span >= chrono::Duration::milliseconds(9_800),
        "100 starts at 10/s took only {span}"
    );
    assert!(
        runs.iter().filter(|r| !r.holds.is_empty()).count() >= 80,
        "most runs were throttled"
    );
}

/// The process executing the one call a concurrency limit of 1 allows is killed: the
/// call goes to the other process after the job lease, the runs behind it follow, and
/// none is lost.
async fn a_killed_process_gives_its_slot_back_within_the_lease() {
    let Some((_backend, _nats, mut processes)) = start(&[("FLOWFORGE_JOB_LEASE_SECS", "3")]).await
    else {
        return;
    };
    let in_flight = Arc::new(InFlight::default());
    let app = limited_app(
        vec![("concurrency", json!([{"limit": 1}]))],
        Duration::from_millis(1_000),
        in_flight.clone(),
    );
    let _app = SdkApp::start_for(&processes[0], app).await;
    let api = processes[1].api();
    let events: Vec<Value> = (0..4)
        .map(|n| json!({"name": "fc/go", "data": {"n": n}}))
        .collect();
    let ids = send_across(std::slice::from_ref(&api), events).await;
    // Wait for a step to be executing, then kill each process in turn (one of them
    // is executing it, one of them is the scheduler).
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while in_flight.now.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    processes[0].kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    processes[0].start().await;
    let runs = completed_runs(&api, &ids).await;
    let most = most_at_once(runs.iter().flat_map(|r| r.calls.iter()));
    let calls: Vec<_> = runs.iter().map(|r| (&r.calls, &r.holds)).collect();
    assert_eq!(
        most, 1,
        "{most} calls recorded at once under a limit of 1: {calls:#?}"
    );
}

/// The runs of the cluster app's one function, once `count` of them completed.
async fn completed_runs_of_function(api: &Api, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (status, page) = api
            .get("/api/v1/runs?function=fc-cluster-collector&limit=100")
            .await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        if items.iter().filter(|r| r["status"] == "completed").count() >= count {
            return items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} runs never completed: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn collector_app(control: (&'static str, Value)) -> impl FnOnce(String, String) -> App {
    move |server, serve| {
        App::new("fc-cluster", server, serve).function(
            Function::new("collector")
                .trigger_event("fc/collect")
                .flow_control(control.0, control.1)
                .handler(|ctx, _step| async move {
                    let ns: Vec<Value> =
                        ctx.events.iter().map(|e| e["data"]["n"].clone()).collect();
                    Ok(json!({"event": ctx.event["data"]["n"], "ns": ns}))
                }),
        )
    }
}

async fn a_burst_of_20_events_within_the_debounce_period_runs_once_with_the_last() {
    let Some((_backend, _nats, processes)) = start(&[]).await else {
        return;
    };
    let _app = SdkApp::start_for(
        &processes[0],
        collector_app((
            "debounce",
            json!({"period": "2s", "key": "event.data.user", "timeout": "1m"}),
        )),
    )
    .await;
    let apis: Vec<Api> = processes.iter().map(ServerProcess::api).collect();
    let mut first_run = None;
    for n in 0..20 {
        let id = apis[n % 2]
            .send("fc/collect", json!({"n": n, "user": "ann"}))
            .await;
        if n == 0 {
            first_run = Some(apis[0].runs_of_event(&id, 1, TIMEOUT).await.remove(0));
        }
    }
    // While the burst lasts, the run says it is debounced.
    let (_, waiting) = apis[1]
        .get(&format!("/api/v1/runs/{}", first_run.clone().unwrap()))
        .await;
    assert!(
        waiting["status"] == "completed" || waiting["flow_control"]["state"] == "debounced",
        "{waiting}"
    );
    let runs = completed_runs_of_function(&apis[0], 1).await;
    // A quiet period later, still one run.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let runs_after = completed_runs_of_function(&apis[0], 1).await;
    assert_eq!(runs_after.len(), 1, "{runs_after:?}");
    assert_eq!(runs[0]["id"], runs_after[0]["id"]);
    let run = apis[0]
        .finished_run(runs[0]["id"].as_str().unwrap(), TIMEOUT)
        .await;
    assert_eq!(run["output"], json!({"event": 19, "ns": [19]}), "{run}");
    assert_eq!(run["holds"][0]["reason"], "debounce", "{run}");
    assert_eq!(run["holds"][0]["events"], 20, "{run}");
}

async fn a_batch_of_10_with_a_2s_timeout_runs_25_events_as_10_10_and_5() {
    let Some((_backend, _nats, processes)) = start(&[]).await else {
        return;
    };
    let _app = SdkApp::start_for(
        &processes[0],
        collector_app(("batchEvents", json!({"maxSize": 10, "timeout": "2s"}))),
    )
    .await;
    let apis: Vec<Api> = processes.iter().map(ServerProcess::api).collect();
    // One by one, so that the log's order is the order of `n`.
    for n in 0..25 {
        apis[n % 2].send("fc/collect", json!({"n": n})).await;
    }
    let runs = completed_runs_of_function(&apis[0], 3).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let runs = {
        let after = completed_runs_of_function(&apis[0], 3).await;
        assert_eq!(after.len(), runs.len().max(3), "{after:?}");
        after
    };
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    for run in &runs {
        let ns = run["output"]["ns"].as_array().unwrap();
        sizes.push(ns.len());
        all.extend(ns.iter().map(|n| n.as_i64().unwrap()));
        // In log order within a batch, and the batches one after the other.
        let in_order: Vec<i64> = ns.iter().map(|n| n.as_i64().unwrap()).collect();
        let mut sorted = in_order.clone();
        sorted.sort();
        assert_eq!(in_order, sorted, "{run}");
    }
    sizes.sort();
    assert_eq!(sizes, vec![5, 10, 10], "{runs:?}");
    let mut firsts: Vec<i64> = runs
        .iter()
        .map(|r| r["output"]["ns"][0].as_i64().unwrap())
        .collect();
    firsts.sort();
    assert_eq!(firsts, vec![0, 10, 20], "{runs:?}");
    all.sort();
    assert_eq!(
        all,
        (0..25).collect::<Vec<i64>>(),
        "every event in exactly one batch"
    );
}

macro_rules! tokio_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                super::$name().await;
            }
        )*
    };
}

mod production {
    tokio_tests!(
        concurrency_5_holds_for_100_runs,
        keyed_concurrency_runs_each_customer_one_at_a_time_and_customers_in_parallel,
        a_waiting_run_says_what_it_waits_for,
        a_throttle_of_10_per_second_spaces_100_run_starts_and_drops_none,
        a_killed_process_gives_its_slot_back_within_the_lease,
        a_burst_of_20_events_within_the_debounce_period_runs_once_with_the_last,
        a_batch_of_10_with_a_2s_timeout_runs_25_events_as_10_10_and_5,
    );
}
