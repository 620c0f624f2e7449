//! Crash safety: the server process is killed with SIGKILL while runs are mid-flight
//! (executing steps and sleeping), restarted on the same data, twice. Every run
//! completes with the right output, no step is recorded completed twice, no event is
//! lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use flowforge_sdk::{App, Error, Function};
use flowforge_tests::backend::TestBackend;
use flowforge_tests::process::ServerProcess;
use flowforge_tests::server::SdkApp;
use serde_json::json;

const RUNS: usize = 24;

fn app(server_url: String, serve_url: String) -> App {
    App::new("crash", server_url, serve_url).function(
        Function::new("durable")
            .trigger_event("crash/go")
            .retries(10)
            .handler(|ctx, step| async move {
                let n = ctx.event["data"]["n"].as_i64().unwrap_or(0);
                let a: i64 = step
                    .run("first", move || async move {
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        Ok::<_, Error>(n + 1)
                    })
                    .await?;
                step.sleep("rest", Duration::from_millis(700)).await?;
                let b: i64 = step
                    .run("second", move || async move {
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        Ok::<_, Error>(a * 10)
                    })
                    .await?;
                let c: i64 = step
                    .run("third", move || async move { Ok::<_, Error>(b + 1) })
                    .await?;
                Ok(json!({"n": n, "result": c}))
            }),
    )
}

async fn runs_survive_sigkill_of_the_server(backend: TestBackend) {
    let mut server = ServerProcess::for_backend(&backend);
    server.start().await;
    let api = server.api();
    let _app = SdkApp::start_for(&server, app).await;

    let mut events = Vec::new();
    for n in 0..RUNS {
        events.push((n as i64, api.send("crash/go", json!({"n": n})).await));
        if n % 6 == 5 {
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
    }
    // Kill it twice while runs are executing steps and sleeping.
    for pause in [350, 250] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.kill();
        server.start().await;
    }

    let mut finished = 0;
    for (n, event_id) in &events {
        let runs = api
            .runs_of_event(event_id, 1, Duration::from_secs(60))
            .await;
        assert_eq!(runs.len(), 1, "exactly one run per event");
        let run = api.finished_run(&runs[0], Duration::from_secs(90)).await;
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(run["output"], json!({"n": n, "result": (n + 1) * 10 + 1}));

        let (_, log) = api.get(&format!("/api/v1/runs/{}/events", runs[0])).await;
        let mut completed: HashMap<String, u32> = HashMap::new();
        for (i, e) in log["items"].as_array().unwrap().iter().enumerate() {
            assert_eq!(e["stream_version"], json!(i + 1));
            if e["event_type"] == "run.step_completed" {
                *completed
                    .entry(e["payload"]["name"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
        assert_eq!(
            completed.len(),
            4,
            "first, rest, second, third: {completed:?}"
        );
        assert!(
            completed.values().all(|c| *c == 1),
            "a step was recorded twice: {completed:?}"
        );

        let (status, event) = api.get(&format!("/api/v1/events/{event_id}")).await;
        assert_eq!(status, 200, "the event is still there");
        assert_eq!(event["data"]["n"], json!(n));
        finished += 1;
    }
    assert_eq!(finished, RUNS);
    let (_, page) = api.get("/api/v1/events?name=crash/go&limit=500").await;
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        RUNS,
        "no event lost or duplicated"
    );
}

flowforge_tests::on_both_backends!(runs_survive_sigkill_of_the_server);
