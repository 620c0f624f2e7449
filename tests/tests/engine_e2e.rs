//! Durable execution end to end: the real server on a random port, a real app written
//! with the Rust SDK on another, HTTP between them, on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use flowforge_sdk::{App, Error, Function, WaitOptions};
use flowforge_tests::backend::TestBackend;
use flowforge_tests::server::{Api, SdkApp, TestServer};
use serde_json::{Value, json};

const RUN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Counters {
    flaky: AtomicU32,
    fatal: AtomicU32,
    left: AtomicU32,
}

fn app(server_url: String, serve_url: String, counters: Arc<Counters>) -> App {
    let flaky_counter = counters.clone();
    let fatal_counter = counters.clone();
    let left_counter = counters;
    App::new("e2e", server_url, serve_url)
        .function(Function::new("steps").trigger_event("e2e/steps").handler(
            |ctx, step| async move {
                let a: i64 = step.run("a", || async { Ok::<_, Error>(1) }).await?;
                step.sleep("nap", Duration::from_millis(1_200)).await?;
                let b: i64 = step
                    .run("b", move || async move { Ok::<_, Error>(a + 1) })
                    .await?;
                Ok(json!({"a": a, "b": b, "n": ctx.event["data"]["n"]}))
            },
        ))
        .function(Function::new("wait").trigger_event("e2e/order").handler(
            |ctx, step| async move {
                let seconds = ctx.event["data"]["timeout_s"].as_u64().unwrap_or(30);
                let shipped = step
                    .wait_for_event(
                        "shipped",
                        "e2e/shipped",
                        WaitOptions::timeout(Duration::from_secs(seconds))
                            .matching("data.order_id"),
                    )
                    .await?;
                Ok(json!({"carrier": shipped.map(|e| e["data"]["carrier"].clone())}))
            },
        ))
        .function(Function::new("parent").trigger_event("e2e/parent").handler(
            |_ctx, step| async move {
                let child: Value = step
                    .invoke(
                        "call-child",
                        "e2e-child",
                        json!({"x": 20}),
                        Some(Duration::from_secs(60)),
                    )
                    .await?;
                Ok(json!({"child": child}))
            },
        ))
        .function(
            Function::new("child")
                .trigger_event("e2e/never-sent")
                .handler(|ctx, step| async move {
                    let x = ctx.event["data"]["x"].as_i64().unwrap_or(0);
                    let doubled: i64 = step
                        .run("double", move || async move { Ok::<_, Error>(x * 2) })
                        .await?;
                    Ok(json!(doubled + 2))
                }),
        )
        .function(Function::new("sender").trigger_event("e2e/send").handler(
            |ctx, step| async move {
                let ids = step
                    .send_event(
                        "ping",
                        vec![json!({"name": "e2e/pinged", "data": {"from": ctx.run_id}})],
                    )
                    .await?;
                Ok(json!({"sent": ids}))
            },
        ))
        .function(
            Function::new("pinged")
                .trigger_event("e2e/pinged")
                .handler(
                    |ctx, _step| async move { Ok(json!({"from": ctx.event["data"]["from"]})) },
                ),
        )
        .function(
            Function::new("parallel")
                .trigger_event("e2e/parallel")
                .handler(move |_ctx, step| {
                    let left_counter = left_counter.clone();
                    async move {
                        let (left, right) = tokio::join!(
                            step.run("left", move || async move {
                                left_counter.left.fetch_add(1, Ordering::SeqCst);
                                Ok::<_, Error>(10)
                            }),
                            step.run("right", || async { Ok::<_, Error>(32) }),
                        );
                        let (left, right): (i64, i64) = (left?, right?);
                        let sum: i64 = step
                            .run("sum", move || async move { Ok::<_, Error>(left + right) })
                            .await?;
                        Ok(json!(sum))
                    }
                }),
        )
        .function(
            Function::new("flaky")
                .trigger_event("e2e/flaky")
                .retries(3)
                .handler(move |_ctx, step| {
                    let counters = flaky_counter.clone();
                    async move {
                        let attempt: u32 = step
                            .run("flaky-step", move || async move {
                                let n = counters.flaky.fetch_add(1, Ordering::SeqCst) + 1;
                                if n < 3 {
                                    Err(Error::msg(format!("attempt {n} failed")))
                                } else {
                                    Ok(n)
                                }
                            })
                            .await?;
                        Ok(json!({"succeeded_on": attempt}))
                    }
                }),
        )
        .function(
            Function::new("fatal")
                .trigger_event("e2e/fatal")
                .retries(3)
                .handler(move |_ctx, step| {
                    let counters = fatal_counter.clone();
                    async move {
                        let _: i64 = step
                            .run("validate", move || async move {
                                counters.fatal.fetch_add(1, Ordering::SeqCst);
                                Err(Error::non_retriable("the order has no items"))
                            })
                            .await?;
                        Ok(json!("unreachable"))
                    }
                }),
        )
        .function(
            // Reacts to the failures of `fatal`, as an on-failure handler does.
            Function::new("failure-handler")
                .trigger_event_if(
                    "flowforge/function.failed",
                    "event.data.function_id == 'e2e-fatal'",
                )
                .handler(|ctx, _step| async move {
                    Ok(json!({"failed_run": ctx.event["data"]["run_id"]}))
                }),
        )
        .function(
            // Waits for the end of the run started by an `e2e/steps` event of its tag.
            Function::new("end-awaiter")
                .trigger_event("e2e/await-end")
                .handler(|_ctx, step| async move {
                    let end = step
                        .wait_for_event(
                            "end",
                            "inngest/function.finished",
                            WaitOptions::timeout(Duration::from_secs(60))
                                .when("async.data.event.data.n == event.data.n"),
                        )
                        .await?;
                    Ok(
                        json!({"run_id": end.as_ref().map(|e| e["data"]["run_id"].clone()),
                              "result": end.map(|e| e["data"]["result"].clone())}),
                    )
                }),
        )
        .function(
            Function::new("sleeper")
                .trigger_event("e2e/sleeper")
                .cancel_on("e2e/stop", Some("event.data.id == async.data.id"))
                .handler(|_ctx, step| async move {
                    step.sleep("long", Duration::from_secs(3_600)).await?;
                    Ok(json!("woke"))
                }),
        )
}

struct Env {
    api: Api,
    counters: Arc<Counters>,
    _app: SdkApp,
    _server: TestServer,
}

async fn env(backend: &TestBackend) -> Env {
    let server = TestServer::start(backend).await;
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    let app = SdkApp::start(&server.url, move |server_url, serve_url| {
        app(server_url, serve_url, c)
    })
    .await;
    Env {
        api: Api::new(server.url.clone()),
        counters,
        _app: app,
        _server: server,
    }
}

async fn run_for(api: &Api, event: &str, data: Value) -> String {
    let id = api.send(event, data).await;
    api.runs_of_event(&id, 1, RUN_TIMEOUT).await.remove(0)
}

/// Waits until one of the run's steps has this status (`waiting`, `sleeping`, …).
async fn until_a_step_is(api: &Api, run_id: &str, status: &str) {
    api.run_until(run_id, RUN_TIMEOUT, |r| {
        r["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["status"] == status))
    })
    .await;
}

/// No step was recorded completed twice, and every recorded event of the run is in order.
async fn assert_each_step_completed_once(api: &Api, run_id: &str) {
    let (status, events) = api.get(&format!("/api/v1/runs/{run_id}/events")).await;
    assert_eq!(status, 200);
    let mut completed: HashMap<String, u32> = HashMap::new();
    let items = events["items"].as_array().unwrap();
    for (i, e) in items.iter().enumerate() {
        assert_eq!(e["stream_version"], json!(i + 1), "versions are contiguous");
        if e["event_type"] == "run.step_completed" {
            *completed
                .entry(e["payload"]["step_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert!(
        completed.values().all(|n| *n == 1),
        "a step completed twice: {completed:?}"
    );
}

async fn a_multi_step_function_with_a_sleep_completes(backend: TestBackend) {
    let env = env(&backend).await;
    let started = Instant::now();
    let run_id = run_for(&env.api, "e2e/steps", json!({"n": 7})).await;
    let run = env.api.finished_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!({"a": 1, "b": 2, "n": 7}));
    assert!(
        started.elapsed() >= Duration::from_millis(1_200),
        "the sleep was honoured"
    );
    let steps = run["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["a", "nap", "b"]);
    assert_eq!(steps[1]["kind"], "sleep");
    assert!(steps.iter().all(|s| s["status"] == "completed"));
    assert_each_step_completed_once(&env.api, &run_id).await;
}

async fn a_wait_resumes_with_the_matching_event(backend: TestBackend) {
    let env = env(&backend).await;
    let run_id = run_for(&env.api, "e2e/order", json!({"order_id": "o-1"})).await;
    until_a_step_is(&env.api, &run_id, "waiting").await;
    // An event for another order does not match; the right one does.
    env.api
        .send(
            "e2e/shipped",
            json!({"order_id": "o-2", "carrier": "wrong"}),
        )
        .await;
    env.api
        .send("e2e/shipped", json!({"order_id": "o-1", "carrier": "UPS"}))
        .await;
    let run = env.api.finished_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!({"carrier": "UPS"}));
    assert_each_step_completed_once(&env.api, &run_id).await;
}

async fn a_wait_that_times_out_resumes_with_nothing(backend: TestBackend) {
    let env = env(&backend).await;
    let run_id = run_for(
        &env.api,
        "e2e/order",
        json!({"order_id": "o-3", "timeout_s": 1}),
    )
    .await;
    let run = env.api.finished_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!({"carrier": null}));
}

async fn an_invoke_returns_the_child_result(backend: TestBackend) {
    let env = env(&backend).await;
    let run_id = run_for(&env.api, "e2e/parent", json!({})).await;
    let run = env.api.finished_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!({"child": 42}));
    let child = run["steps"][0]["invoked"]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let child_run = env.api.finished_run(&child, RUN_TIMEOUT).await;
    assert_eq!(child_run["parent"]["run_id"], json!(run_id));
    assert_eq!(child_run["event"]["name"], "inngest/function.invoked");
}

async fn send_event_triggers_another_function_exactly_once(backend: TestBackend) {
    let env = env(&backend).await;
    let run_id = run_for(&env.api, "e2e/send", json!({})).await;
    let run = env.api.finished_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "completed", "{run}");
    let sent = run["output"]["sent"][0].as_str().unwrap().to_owned();
    let triggered = env.api.runs_of_event(&sent, 1, RUN_TIMEOUT).await;
    let pinged = env.api.finished_run(&triggered[0], RUN_TIMEOUT).await;
    assert_eq!(pinged["output"], json!({"from": run_id}));
    // The events read model is a projection of its own: it may be a moment behind.
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    let event = loop {
        let (status, event) = env.api.get(&format!("/api/v1/events/{sent}")).await;
        if status == 200 {
            break event;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}: {event}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    assert_eq!(event["name"], "e2e/pinged");
    assert_eq!(event["runs"].as_array().unwrap().len(), 1);
}

async fn parallel_steps_run_once_each(backend: TestBackend) {
    let env = env(&backend).await;
    let run_id = run_for(&env.api, "e2e/parallel", json!({})).await;
    let run = env.api.finished_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!(42));
    assert_eq!(
        env.counters.left.load(Ordering::SeqCst),
        1,
        "the left branch ran exactly once"
    );
    let (_, events) = env.api.get(&format!("/api/v1/runs/{run_id}/events")).await;
    let planned = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "run.steps_planned")
        .expect("planned");
    assert_eq!(
        planned["payload"]["steps"].as_array().unwrap().len(),
        2,
        "both branches were planned together"
    );
    assert_each_step_completed_once(&env.api, &run_id).await;
}

async fn a_failing_step_is_retried_until_it_succeeds(backend: TestBackend) {
    let env = env(&backend).await;
    let run_id = run_for(&env.api, "e2e/flaky", json!({})).await;
    let run = env.api.finished_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!({"succeeded_on": 3}));
    let attempts = run["steps"][0]["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        2,
        "two failed attempts are recorded: {attempts:?}"
    );
    assert_eq!(attempts[0]["error"]["message"], "attempt 1 failed");
    assert_eq!(attempts[1]["attempt"], 2);
    assert_each_step_completed_once(&env.api, &run_id).await;
}

async fn a_non_retriable_failure_fails_the_run_at_once(backend: TestBackend) {
    let env = env(&backend).await;
    let run_id = run_for(&env.api, "e2e/fatal", json!({})).await;
    let run = env.api.finished_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["message"], "the order has no items");
    assert_eq!(env.counters.fatal.load(Ordering::SeqCst), 1, "not retried");
    // The function listening to failures ran once, for this failure.
    let (_, page) = env
        .api
        .get("/api/v1/events?name=flowforge/function.failed")
        .await;
    let announced: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"]["run_id"] == json!(run_id))
        .collect();
    assert_eq!(announced.len(), 1, "{page}");
    assert_eq!(
        announced[0]["data"]["error"]["message"],
        "the order has no items"
    );
    let event_id = announced[0]["id"].as_str().unwrap().to_owned();
    let handlers = env.api.runs_of_event(&event_id, 1, RUN_TIMEOUT).await;
    let handled = env.api.finished_run(&handlers[0], RUN_TIMEOUT).await;
    assert_eq!(
        handled["output"],
        json!({"failed_run": run_id}),
        "{handled}"
    );
}

/// A run's end is announced (`function.finished`, `function.failed`, under Inngest's and
/// FlowForge's names) when something can react to it, and only then: every end is in
/// the run's own stream anyway.
async fn a_run_end_is_announced_to_whoever_listens(backend: TestBackend) {
    let env = env(&backend).await;
    // A step waits for the end of the run of `n: 41`.
    let awaiter = run_for(&env.api, "e2e/await-end", json!({"n": 41})).await;
    until_a_step_is(&env.api, &awaiter, "waiting").await;
    let awaited = run_for(&env.api, "e2e/steps", json!({"n": 41})).await;
    let awaited_run = env.api.finished_run(&awaited, RUN_TIMEOUT).await;
    assert_eq!(awaited_run["status"], "completed", "{awaited_run}");
    let resumed = env.api.finished_run(&awaiter, RUN_TIMEOUT).await;
    assert_eq!(
        resumed["output"],
        json!({"run_id": awaited, "result": {"a": 1, "b": 2, "n": 41}}),
        "{resumed}"
    );

    // Nothing waits any more: the next run's end is not announced. A failure of
    // `fatal`, which has a listener, is processed after it and shows when the
    // scheduler has passed it.
    let unheard = run_for(&env.api, "e2e/steps", json!({"n": 42})).await;
    env.api.finished_run(&unheard, RUN_TIMEOUT).await;
    let failed = run_for(&env.api, "e2e/fatal", json!({})).await;
    env.api.finished_run(&failed, RUN_TIMEOUT).await;
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let (_, page) = env
            .api
            .get("/api/v1/events?name=flowforge/function.failed")
            .await;
        if page["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["data"]["run_id"] == json!(failed))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no function.failed event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let about = |run_id: &str, name: &str, page: &Value| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == name && e["data"]["run_id"] == json!(run_id))
            .count()
    };
    let (_, page) = env.api.get("/api/v1/events?limit=200").await;
    assert_eq!(
        about(&awaited, "inngest/function.finished", &page),
        1,
        "{page}"
    );
    for (run_id, name) in [
        (&awaited, "flowforge/function.finished"),
        (&unheard, "inngest/function.finished"),
        (&unheard, "flowforge/function.finished"),
        (&failed, "inngest/function.failed"),
        (&failed, "inngest/function.finished"),
        (&failed, "flowforge/function.finished"),
    ] {
        assert_eq!(about(run_id, name, &page), 0, "{name} of {run_id}: {page}");
    }
    assert_eq!(
        about(&failed, "flowforge/function.failed", &page),
        1,
        "{page}"
    );
}

async fn runs_can_be_cancelled_by_the_api_and_by_an_event(backend: TestBackend) {
    let env = env(&backend).await;
    let by_api = run_for(&env.api, "e2e/sleeper", json!({"id": "a"})).await;
    let by_event = run_for(&env.api, "e2e/sleeper", json!({"id": "b"})).await;
    for run_id in [&by_api, &by_event] {
        until_a_step_is(&env.api, run_id, "sleeping").await;
    }
    let (status, body) = env
        .api
        .post(&format!("/api/v1/runs/{by_api}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    env.api.send("e2e/stop", json!({"id": "b"})).await;
    let a = env.api.finished_run(&by_api, RUN_TIMEOUT).await;
    let b = env.api.finished_run(&by_event, RUN_TIMEOUT).await;
    assert_eq!(a["status"], "cancelled");
    assert_eq!(b["status"], "cancelled");
    assert!(b["cancel_reason"].as_str().unwrap().contains("e2e/stop"));
    let (status, body) = env
        .api
        .post(&format!("/api/v1/runs/{by_api}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409, "cancelling twice: {body}");
}

async fn a_replay_runs_again_from_the_same_event(backend: TestBackend) {
    let env = env(&backend).await;
    let run_id = run_for(&env.api, "e2e/parallel", json!({})).await;
    env.api.finished_run(&run_id, RUN_TIMEOUT).await;
    let (status, body) = env
        .api
        .post(&format!("/api/v1/runs/{run_id}/replay"), &json!({}))
        .await;
    assert_eq!(status, 201, "{body}");
    let replay = body["id"].as_str().unwrap().to_owned();
    assert_ne!(replay, run_id);
    let run = env.api.finished_run(&replay, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "completed");
    assert_eq!(run["output"], json!(42));
    assert_eq!(run["replay_of"], json!(run_id));
    assert_eq!(
        env.counters.left.load(Ordering::SeqCst),
        2,
        "the replay ran the steps again"
    );
}

async fn bad_requests_get_typed_errors(backend: TestBackend) {
    let env = env(&backend).await;
    let (status, body) = env.api.post("/api/v1/events", &json!({"data": {}})).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("name")),
        "{body}"
    );
    let (status, body) = env
        .api
        .post_raw("/api/v1/events", b"{not json".to_vec())
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("body")),
        "{body}"
    );
    let big = json!({"name": "e2e/big", "data": {"blob": "x".repeat(600 * 1024)}});
    let (status, body) = env.api.post("/api/v1/events", &big).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    let (status, body) = env.api.get("/api/v1/runs/not-a-uuid").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("id")),
        "{body}"
    );
    let (status, _) = env
        .api
        .get(&format!("/api/v1/runs/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, 404);
    let (status, body) = env.api.get("/api/v1/runs?status=sideways").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("status")),
        "{body}"
    );
    // The same event id twice is accepted once and runs once.
    let first = env
        .api
        .post(
            "/api/v1/events",
            &json!({"name": "e2e/parallel", "id": "dup-1"}),
        )
        .await;
    let second = env
        .api
        .post(
            "/api/v1/events",
            &json!({"name": "e2e/parallel", "id": "dup-1"}),
        )
        .await;
    assert_eq!(first.1["ids"], json!(["dup-1"]));
    assert_eq!(second.1["ids"], json!(["dup-1"]));
    let runs = env.api.runs_of_event("dup-1", 1, RUN_TIMEOUT).await;
    env.api.finished_run(&runs[0], RUN_TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, page) = env.api.get("/api/v1/runs?event=dup-1").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

async fn sending_and_waiting_answers_the_runs_outcomes(backend: TestBackend) {
    let env = env(&backend).await;
    let (status, body) = env
        .api
        .post(
            "/api/v1/events?wait=true",
            &json!({"name": "e2e/parallel", "data": {}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true, "{body}");
    assert_eq!(body["runs"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["runs"][0]["status"], "completed");
    assert_eq!(body["runs"][0]["output"], json!(42));
    // An event no function listens to has nothing to wait for.
    let (status, body) = env
        .api
        .post("/api/v1/events?wait=true", &json!({"name": "e2e/nobody"}))
        .await;
    assert_eq!(
        (status, body["runs"].as_array().unwrap().len()),
        (200, 0),
        "{body}"
    );
}

async fn a_run_streams_its_events_live(backend: TestBackend) {
    let env = env(&backend).await;
    let run_id = run_for(&env.api, "e2e/steps", json!({"n": 1})).await;
    // Subscribe while the run is still going (it sleeps 1.2 s); the stream replays what
    // happened so far, then delivers the rest as it is committed, and ends with the run.
    let response = env
        .api
        .http
        .get(format!("{}/api/v1/runs/{run_id}/stream", env.api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = tokio::time::timeout(RUN_TIMEOUT, response.text())
        .await
        .unwrap()
        .unwrap();
    let types: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(types.first(), Some(&"run.created"));
    assert_eq!(types.last(), Some(&"run.completed"));
    assert_eq!(
        types.iter().filter(|t| **t == "run.step_completed").count(),
        3,
        "{types:?}"
    );
    let versions: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(
        versions,
        (1..=versions.len() as u64).collect::<Vec<_>>(),
        "each event once, in order"
    );
}

/// `GET /metrics` counts what the engine did, in Prometheus' text format.
async fn metrics_count_the_work_done(backend: TestBackend) {
    let env = env(&backend).await;
    let run_id = run_for(&env.api, "e2e/steps", json!({"n": 1})).await;
    env.api.finished_run(&run_id, RUN_TIMEOUT).await;
    let value = |text: &str, series: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + RUN_TIMEOUT;
    let text = loop {
        let response = http
            .get(format!("{}/metrics", env.api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"),
        );
        let text = response.text().await.unwrap();
        // The scheduler observes the run's end as it reads the log: allow it to catch up.
        if value(&text, "flowforge_run_duration_seconds_count") == Some(1.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Discovery, step a, after the sleep, step b: four calls at least (a retried call more).
    let calls = value(&text, "flowforge_calls_total").unwrap();
    assert!(calls >= 4.0, "{text}");
    assert_eq!(
        value(&text, "flowforge_call_duration_seconds_count"),
        Some(calls),
        "every call is timed: {text}"
    );
    assert!(
        value(&text, "flowforge_jobs_published_total").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        value(&text, "flowforge_events_total{stream_type=\"run\"}").unwrap() >= 5.0,
        "{text}"
    );
    let run_seconds = value(&text, "flowforge_run_duration_seconds_sum").unwrap();
    assert!(run_seconds >= 1.0, "the run slept a second: {text}");
    assert!(
        value(
            &text,
            "flowforge_projection_lag_events{projection=\"runs\"}"
        )
        .is_some(),
        "{text}"
    );
    assert!(
        value(&text, "flowforge_log_head_position").unwrap() >= 5.0,
        "{text}"
    );
}

/// Events sent with a `test` key are recorded but kept apart from the live
/// environment: they start no live run and resume no live wait.
async fn test_key_events_reach_no_live_run(backend: TestBackend) {
    let env = env(&backend).await;
    let key = |kind: &'static str| {
        let api = env.api.clone();
        async move {
            let (status, key) = api
                .post(
                    "/api/v1/api-keys",
                    &json!({"name": kind, "kind": kind, "scopes": ["events:send", "runs:read"]}),
                )
                .await;
            assert_eq!(status, 201, "{key}");
            Api::with_bearer(
                api.base.clone(),
                Some(key["key"].as_str().unwrap().to_owned()),
            )
        }
    };
    let (test, live) = (key("test").await, key("live").await);

    let run_id = run_for(&env.api, "e2e/order", json!({"order_id": "o-9"})).await;
    until_a_step_is(&env.api, &run_id, "waiting").await;
    let shipped = json!({"name": "e2e/shipped", "data": {"order_id": "o-9", "carrier": "test"}});
    let (status, sent) = test.post("/api/v1/events", &shipped).await;
    assert_eq!(status, 200, "{sent}");
    let (status, started) = test
        .post(
            "/api/v1/events?wait=true&timeout=5",
            &json!({"name": "e2e/steps", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["complete"], true, "nothing to wait for: {started}");
    assert_eq!(started["runs"], json!([]));
    let trigger_id = started["ids"][0].as_str().unwrap().to_owned();

    // The event is recorded in the test environment (the events read model shows it
    // there once projected, and not in live)…
    let deadline = Instant::now() + RUN_TIMEOUT;
    while env
        .api
        .get(&format!("/api/v1/events/{trigger_id}?environment=test"))
        .await
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "the test event was not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // …and the scheduler, which handles events in log order, has handled it once it
    // has started the run of a live event sent after it: it started nothing for it.
    let barrier = live
        .post(
            "/api/v1/events",
            &json!({"name": "e2e/steps", "data": {"n": 2}}),
        )
        .await;
    let barrier_id = barrier.1["ids"][0].as_str().unwrap().to_owned();
    env.api.runs_of_event(&barrier_id, 1, RUN_TIMEOUT).await;
    assert_eq!(
        env.api.get(&format!("/api/v1/events/{trigger_id}")).await.0,
        404,
        "a test event is listed in live"
    );
    for environment in ["live", "test"] {
        let (_, runs) = env
            .api
            .get(&format!(
                "/api/v1/runs?event={trigger_id}&environment={environment}"
            ))
            .await;
        assert_eq!(
            runs["items"],
            json!([]),
            "a test event started a run in {environment} (only test functions may run, and there are none)"
        );
    }
    let (_, run) = env.api.get(&format!("/api/v1/runs/{run_id}")).await;
    assert_eq!(
        run["status"], "running",
        "a test event resumed a live wait: {run}"
    );

    let live_shipped =
        json!({"name": "e2e/shipped", "data": {"order_id": "o-9", "carrier": "UPS"}});
    assert_eq!(live.post("/api/v1/events", &live_shipped).await.0, 200);
    let run = env.api.finished_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(run["output"], json!({"carrier": "UPS"}), "{run}");
}

/// A stream watch (what `invoke?wait=true` and a run's SSE stream wait on) gets its
/// stream's events, in order, and nothing of other streams; dropping it stops the
/// watching.
async fn a_stream_watch_sees_its_stream_only(backend: TestBackend) {
    use flowforge_store::{ExpectedVersion, NewEvent};
    let store = backend.store().await;
    let feed = flowforge_engine::live::LiveFeed::start(store.clone(), Arc::default())
        .await
        .unwrap();
    let (mine, other) = (
        format!("run-{}", uuid::Uuid::now_v7()),
        format!("run-{}", uuid::Uuid::now_v7()),
    );
    let mut watch = feed.watch_stream(&mine);
    assert_eq!(feed.watched_streams(), 1);
    let meta = flowforge_tests::fixtures::metadata("t1");
    for (stream, n) in [(&other, 1), (&mine, 1), (&other, 2), (&mine, 2)] {
        let expected = if n == 1 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(1)
        };
        store
            .append(
                stream,
                "run",
                expected,
                vec![NewEvent::new("test.step", json!({"n": n}), meta.clone())],
            )
            .await
            .unwrap();
    }
    for version in 1..=2 {
        let event = tokio::time::timeout(Duration::from_secs(5), watch.recv())
            .await
            .expect("the watched stream's event arrives")
            .unwrap();
        assert_eq!(
            (event.stream_id.as_str(), event.stream_version),
            (mine.as_str(), version)
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch.recv())
            .await
            .is_err(),
        "nothing of the other stream"
    );
    drop(watch);
    assert_eq!(feed.watched_streams(), 0, "a dropped watch stops watching");
}

flowforge_tests::on_both_backends!(
    a_stream_watch_sees_its_stream_only,
    test_key_events_reach_no_live_run,
    metrics_count_the_work_done,
    a_run_streams_its_events_live,
    sending_and_waiting_answers_the_runs_outcomes,
    a_multi_step_function_with_a_sleep_completes,
    a_wait_resumes_with_the_matching_event,
    a_wait_that_times_out_resumes_with_nothing,
    an_invoke_returns_the_child_result,
    send_event_triggers_another_function_exactly_once,
    parallel_steps_run_once_each,
    a_failing_step_is_retried_until_it_succeeds,
    a_non_retriable_failure_fails_the_run_at_once,
    a_run_end_is_announced_to_whoever_listens,
    runs_can_be_cancelled_by_the_api_and_by_an_event,
    a_replay_runs_again_from_the_same_event,
    bad_requests_get_typed_errors,
);
