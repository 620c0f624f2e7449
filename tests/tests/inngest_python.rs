//! An app written with Inngest's official Python SDK (from PyPI) runs on FlowForge
//! unmodified: it finds the server through `INNGEST_DEV`, syncs when it gets a `PUT`,
//! and every step kind completes with the right output, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use flowforge_tests::backend::TestBackend;
use flowforge_tests::python::{ChildGuard, free_port, inngest_python, workspace_root};
use flowforge_tests::server::{Api, TestServer};
use serde_json::{Value, json};

const RUN_TIMEOUT: Duration = Duration::from_secs(30);

struct PythonApp {
    url: String,
    _process: ChildGuard,
}

async fn start_python_app(server_url: &str) -> Option<PythonApp> {
    let python = inngest_python()?;
    let port = free_port();
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("ff-inngest-app-{port}.log")))
            .unwrap();
    let process = Command::new(python)
        .arg(workspace_root().join("tests/python/inngest_app.py"))
        .env("INNGEST_DEV", server_url)
        .env("PORT", port.to_string())
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start the Python app");
    let guard = ChildGuard(process);
    let url = format!("http://127.0.0.1:{port}/api/inngest");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while http.get(&url).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Python app did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What Inngest's dev server does to sync an app: PUT its endpoint.
    let response = http
        .put(&url)
        .header("x-inngest-server-kind", "dev")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(
        status.is_success() && body["ok"] == json!(true),
        "sync failed: {status} {body}"
    );
    Some(PythonApp {
        url,
        _process: guard,
    })
}

async fn run_for(api: &Api, event: &str, data: Value) -> String {
    let id = api.send(event, data).await;
    api.runs_of_event(&id, 1, RUN_TIMEOUT).await.remove(0)
}

async fn an_app_written_with_the_official_python_sdk_runs_unmodified(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let Some(app) = start_python_app(&server.url).await else {
        return;
    };

    let (_, apps) = api.get("/api/v1/apps").await;
    assert_eq!(apps["items"][0]["id"], "py-app");
    assert_eq!(apps["items"][0]["url"], json!(app.url));
    let (_, functions) = api.get("/api/v1/functions").await;
    assert_eq!(
        functions["items"].as_array().unwrap().len(),
        9,
        "{functions}"
    );

    // Start everything at once; they run concurrently.
    let steps = run_for(&api, "py/steps", json!({"n": 5})).await;
    let waiting = run_for(&api, "py/order", json!({"order_id": "o-1"})).await;
    let timing_out = run_for(&api, "py/order", json!({"order_id": "o-2", "timeout_s": 1})).await;
    let parent = run_for(&api, "py/parent", json!({})).await;
    let sender = run_for(&api, "py/send", json!({})).await;
    let parallel = run_for(&api, "py/parallel", json!({})).await;
    let flaky = run_for(&api, "py/flaky", json!({})).await;
    let fatal = run_for(&api, "py/fatal", json!({})).await;

    api.run_until(&waiting, RUN_TIMEOUT, |r| {
        r["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["status"] == "waiting"))
    })
    .await;
    api.send("py/shipped", json!({"order_id": "o-1", "carrier": "DHL"}))
        .await;

    let expect = |run: &Value, status: &str| assert_eq!(run["status"], status, "{run}");
    let run = api.finished_run(&steps, RUN_TIMEOUT).await;
    expect(&run, "completed");
    assert_eq!(run["output"], json!({"a": 1, "b": 2, "n": 5}));

    let run = api.finished_run(&waiting, RUN_TIMEOUT).await;
    expect(&run, "completed");
    assert_eq!(run["output"], json!({"carrier": "DHL"}));

    let run = api.finished_run(&timing_out, RUN_TIMEOUT).await;
    expect(&run, "completed");
    assert_eq!(run["output"], json!({"carrier": null}));

    let run = api.finished_run(&parent, RUN_TIMEOUT).await;
    expect(&run, "completed");
    assert_eq!(run["output"], json!({"child": 42}));

    let run = api.finished_run(&sender, RUN_TIMEOUT).await;
    expect(&run, "completed");
    let sent = run["output"]["sent"][0].as_str().unwrap().to_owned();
    let pinged = api.runs_of_event(&sent, 1, RUN_TIMEOUT).await.remove(0);
    let run = api.finished_run(&pinged, RUN_TIMEOUT).await;
    expect(&run, "completed");
    assert_eq!(run["output"], json!({"from": sender}));

    let run = api.finished_run(&parallel, RUN_TIMEOUT).await;
    expect(&run, "completed");
    assert_eq!(run["output"], json!(42));

    let run = api.finished_run(&flaky, RUN_TIMEOUT).await;
    expect(&run, "completed");
    assert_eq!(run["output"], json!({"succeeded_on_attempt": 2}));
    assert_eq!(
        run["steps"][0]["attempts"].as_array().unwrap().len(),
        2,
        "{run}"
    );

    let run = api.finished_run(&fatal, RUN_TIMEOUT).await;
    expect(&run, "failed");
    assert_eq!(run["error"]["name"], "NonRetriableError");
    assert_eq!(run["error"]["message"], "the order has no items");
    assert_eq!(
        run["attempts"].as_array().unwrap().len(),
        0,
        "not retried: {run}"
    );
}

flowforge_tests::on_both_backends!(an_app_written_with_the_official_python_sdk_runs_unmodified);
