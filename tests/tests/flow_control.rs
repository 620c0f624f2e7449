//! Flow control end to end: settings checked at sync, and the limits on how many runs
//! start (rate limit per key, idempotency) decided from the log, with every skipped
//! run listed with its reason. The real server and a real app, on SQLite and
//! PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flowforge_sdk::{App, Function};
use flowforge_tests::backend::TestBackend;
use flowforge_tests::server::{Api, SdkApp, TestServer};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);

fn app(server: String, serve: String) -> App {
    App::new("limits", server, serve)
        .function(
            Function::new("notify")
                .trigger_event("fc/notify")
                .flow_control(
                    "rateLimit",
                    json!({"limit": 1, "period": "1m", "key": "event.data.user"}),
                )
                .handler(|ctx, _step| async move { Ok(ctx.event["data"]["n"].clone()) }),
        )
        .function(
            Function::new("sync-user")
                .trigger_event("fc/sync")
                .flow_control(
                    "singleton",
                    json!({"key": "event.data.user", "mode": "skip"}),
                )
                .handler(|ctx, step| async move {
                    step.sleep("work", Duration::from_millis(1_500)).await?;
                    Ok(ctx.event["data"]["n"].clone())
                }),
        )
        .function(
            Function::new("refresh")
                .trigger_event("fc/refresh")
                .flow_control(
                    "singleton",
                    json!({"key": "event.data.user", "mode": "cancel"}),
                )
                .handler(|ctx, step| async move {
                    step.sleep("work", Duration::from_millis(1_500)).await?;
                    Ok(ctx.event["data"]["n"].clone())
                }),
        )
        .function(
            Function::new("charge")
                .trigger_event("fc/charge")
                .flow_control("idempotency", json!("event.data.order_id"))
                .handler(|ctx, _step| async move { Ok(ctx.event["data"]["order_id"].clone()) }),
        )
}

/// Sends each event (in order) and answers the one run each started, finished.
async fn runs_of(api: &Api, name: &str, data: &[Value]) -> Vec<Value> {
    let mut runs = Vec::new();
    for d in data {
        let id = api.send(name, d.clone()).await;
        let run_id = api.runs_of_event(&id, 1, TIMEOUT).await.remove(0);
        runs.push(api.finished_run(&run_id, TIMEOUT).await);
    }
    runs
}

fn statuses(runs: &[Value]) -> Vec<&str> {
    runs.iter().map(|r| r["status"].as_str().unwrap()).collect()
}

async fn a_rate_limit_skips_runs_beyond_it_per_key_and_says_why(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let _app = SdkApp::start(&server.url, app).await;

    let runs = runs_of(
        &api,
        "fc/notify",
        &[
            json!({"user": "ann", "n": 1}),
            json!({"user": "ann", "n": 2}),
            json!({"user": "bob", "n": 3}),
            json!({"user": "ann", "n": 4}),
        ],
    )
    .await;
    assert_eq!(
        statuses(&runs),
        ["completed", "skipped", "completed", "skipped"]
    );
    assert_eq!(runs[0]["output"], 1);
    assert_eq!(runs[2]["output"], 3);
    let skipped = &runs[1];
    assert_eq!(skipped["skipped"]["reason"], "rate_limited", "{skipped}");
    assert!(
        skipped["skipped"]["detail"]
            .as_str()
            .unwrap()
            .contains("`ann`"),
        "{skipped}"
    );
    assert_eq!(
        skipped["attempts"],
        json!([]),
        "a skipped run calls nothing"
    );

    // The run list says the same, from the read model.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (_, listed) = api.get("/api/v1/runs?status=skipped").await;
        let items = listed["items"].as_array().unwrap();
        if items.len() == 2 {
            assert!(
                items
                    .iter()
                    .all(|r| r["skipped"]["reason"] == "rate_limited"),
                "{listed}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

async fn idempotency_runs_one_run_per_key(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let _app = SdkApp::start(&server.url, app).await;
    let runs = runs_of(
        &api,
        "fc/charge",
        &[
            json!({"order_id": "o-1"}),
            json!({"order_id": "o-1"}),
            json!({"order_id": "o-2"}),
        ],
    )
    .await;
    assert_eq!(statuses(&runs), ["completed", "skipped", "completed"]);
    assert_eq!(runs[1]["skipped"]["reason"], "idempotent", "{}", runs[1]);
    server.stop().await;
}

/// Starts a run and waits until it is running (sleeping in its step).
async fn running(api: &Api, name: &str, data: Value) -> String {
    let id = api.send(name, data).await;
    let run_id = api.runs_of_event(&id, 1, TIMEOUT).await.remove(0);
    api.run_until(&run_id, TIMEOUT, |r| r["status"] == "running")
        .await;
    run_id
}

async fn a_singleton_skips_or_replaces_the_active_run_of_its_key(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let _app = SdkApp::start(&server.url, app).await;

    // mode: skip — one active run per user; another user is not held up; once the
    // active run has finished, the key is free again.
    let first = running(&api, "fc/sync", json!({"user": "ann", "n": 1})).await;
    let runs = runs_of(
        &api,
        "fc/sync",
        &[
            json!({"user": "ann", "n": 2}),
            json!({"user": "bob", "n": 3}),
        ],
    )
    .await;
    assert_eq!(statuses(&runs), ["skipped", "completed"]);
    assert_eq!(runs[0]["skipped"]["reason"], "singleton", "{}", runs[0]);
    let first = api.finished_run(&first, TIMEOUT).await;
    assert_eq!(
        (&first["status"], &first["output"]),
        (&json!("completed"), &json!(1))
    );
    let again = runs_of(&api, "fc/sync", &[json!({"user": "ann", "n": 4})]).await;
    assert_eq!(statuses(&again), ["completed"]);

    // mode: cancel — the new run replaces the active one.
    let old = running(&api, "fc/refresh", json!({"user": "ann", "n": 5})).await;
    let new = runs_of(&api, "fc/refresh", &[json!({"user": "ann", "n": 6})]).await;
    assert_eq!(statuses(&new), ["completed"]);
    let old = api.finished_run(&old, TIMEOUT).await;
    assert_eq!(old["status"], "cancelled", "{old}");
    assert!(
        old["cancel_reason"]
            .as_str()
            .unwrap()
            .contains(new[0]["id"].as_str().unwrap()),
        "{old}"
    );
    server.stop().await;
}

async fn impossible_settings_are_refused_at_sync(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    for (setting, value, field) in [
        (
            "concurrency",
            json!([{"limit": -1}]),
            "functions[0].concurrency[0].limit",
        ),
        (
            "rateLimit",
            json!({"limit": 1, "period": "1m", "key": "event.data."}),
            "functions[0].rateLimit.key",
        ),
        (
            "debounce",
            json!({"period": "100ms"}),
            "functions[0].debounce.period",
        ),
    ] {
        let (status, body) = api
            .post(
                "/fn/register",
                &json!({"url": "http://127.0.0.1:9/api", "appname": "bad", "functions": [{
                    "id": "bad-fn", "name": "fn", "triggers": [{"event": "fc/x"}], setting: value
                }]}),
            )
            .await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (400, Some(field)),
            "{body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("bad-fn"),
            "{body}"
        );
    }
    let (_, functions) = api.get("/api/v1/functions").await;
    assert_eq!(functions["items"], json!([]), "nothing was synced");
    server.stop().await;
}

/// One process (the in-process queue, whose workers run a run's next call at once):
/// a concurrency limit still counts every call.
async fn a_concurrency_limit_holds_in_one_process(backend: TestBackend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n2, m2) = (now.clone(), most.clone());
    let _app = SdkApp::start(&server.url, move |server, serve| {
        App::new("limits", server, serve).function(
            Function::new("slow")
                .trigger_event("fc/slow")
                .flow_control("concurrency", json!([{"limit": 2}]))
                .handler(move |ctx, step| {
                    let (now, most) = (n2.clone(), m2.clone());
                    async move {
                        for name in ["a", "b"] {
                            let (now, most) = (now.clone(), most.clone());
                            step.run(name, move || async move {
                                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                                most.fetch_max(running, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(60)).await;
                                now.fetch_sub(1, Ordering::SeqCst);
                                Ok::<_, flowforge_sdk::Error>(json!(1))
                            })
                            .await?;
                        }
                        Ok(ctx.event["data"]["n"].clone())
                    }
                }),
        )
    })
    .await;
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(api.send("fc/slow", json!({"n": n})).await);
    }
    for id in &ids {
        let run_id = api.runs_of_event(id, 1, TIMEOUT).await.remove(0);
        let run = api.finished_run(&run_id, TIMEOUT).await;
        assert_eq!(run["status"], "completed", "{run}");
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} steps ran at once under a limit of 2");
    assert_eq!(most, 2, "the limit allows two at once");
}

/// A steady stream of events never goes quiet: the debounce timeout still starts a run.
async fn a_debounce_timeout_runs_a_steady_stream(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let _app = SdkApp::start(&server.url, |server, serve| {
        App::new("limits", server, serve).function(
            Function::new("digest")
                .trigger_event("fc/tick")
                .flow_control(
                    "debounce",
                    json!({"period": "1s", "timeout": "2s", "key": "event.data.feed"}),
                )
                .handler(|ctx, _step| async move { Ok(ctx.event["data"]["n"].clone()) }),
        )
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut first_run = None;
    let mut n = 0;
    // An event every 300 ms for 4 s: never a quiet second.
    while started.elapsed() < Duration::from_secs(4) {
        api.send("fc/tick", json!({"n": n, "feed": "news"})).await;
        n += 1;
        if first_run.is_none() {
            let (_, page) = api
                .get("/api/v1/runs?function=limits-digest&status=completed")
                .await;
            if let Some(run) = page["items"].as_array().and_then(|i| i.first()) {
                first_run = Some((started.elapsed(), run["output"].clone()));
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (at, output) = first_run.expect("a run completed while the stream went on");
    assert!(
        at < Duration::from_secs(4),
        "the first run completed after {at:?}"
    );
    let last_before = output.as_i64().unwrap();
    assert!(
        (4..n - 1).contains(&last_before),
        "the run took the latest event at its start (n = {last_before} of {n})"
    );
}

flowforge_tests::on_both_backends!(
    a_debounce_timeout_runs_a_steady_stream,
    a_concurrency_limit_holds_in_one_process,
    a_rate_limit_skips_runs_beyond_it_per_key_and_says_why,
    idempotency_runs_one_run_per_key,
    a_singleton_skips_or_replaces_the_active_run_of_its_key,
    impossible_settings_are_refused_at_sync
);
