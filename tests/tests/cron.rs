//! Cron triggers fire on schedule, once per fire time, and stop when the function goes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flowforge_sdk::{App, Function};
use flowforge_tests::backend::TestBackend;
use flowforge_tests::server::{Api, SdkApp, TestServer};
use serde_json::json;

async fn a_cron_function_runs_on_its_schedule(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let _app = SdkApp::start(&server.url, |server_url, serve_url| {
        App::new("clock", server_url, serve_url).function(
            Function::new("tick")
                .cron("TZ=Europe/Paris */1 * * * * *")
                .handler(|ctx, _step| async move {
                    Ok(json!({"cron": ctx.event["data"]["cron"], "name": ctx.event["name"]}))
                }),
        )
    })
    .await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let (_, page) = api
        .get("/api/v1/runs?function=clock-tick&status=completed")
        .await;
    let runs = page["items"].as_array().unwrap();
    assert!(
        (2..=5).contains(&runs.len()),
        "about one run per second: {}",
        runs.len()
    );
    let (_, run) = api
        .get(&format!("/api/v1/runs/{}", runs[0]["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        run["output"],
        json!({"cron": "TZ=Europe/Paris */1 * * * * *", "name": "inngest/scheduled.timer"})
    );
    // One run per fire time: every run has its own scheduled event.
    let events: std::collections::HashSet<&str> = runs
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(events.len(), runs.len());
}

flowforge_tests::on_both_backends!(a_cron_function_runs_on_its_schedule);
