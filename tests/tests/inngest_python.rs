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
    let app = launch_python_app(&[("INNGEST_DEV", server_url)]).await?;
    let (status, body) = sync(&app.url, Some("dev")).await;
    assert!(
        status.is_success() && body["ok"] == json!(true),
        "sync failed: {status} {body}"
    );
    Some(app)
}

/// Syncs an app the way Inngest's servers do: `PUT` its endpoint.
async fn sync(url: &str, server_kind: Option<&str>) -> (reqwest::StatusCode, Value) {
    let mut request = reqwest::Client::new().put(url);
    if let Some(kind) = server_kind {
        request = request.header("x-inngest-server-kind", kind);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn launch_python_app(env: &[(&str, &str)]) -> Option<PythonApp> {
    let python = inngest_python()?;
    let port = free_port();
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("ff-inngest-app-{port}.log")))
            .unwrap();
    let process = Command::new(python)
        .arg(workspace_root().join("tests/python/inngest_app.py"))
        .envs(env.iter().copied())
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

const KEY_ONE: &str =
    "signkey-prod-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const KEY_TWO: &str =
    "signkey-prod-fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
const EVENT_KEY: &str = "ek-flowforge-compat-test-key";

/// A server that signs its calls with `signs_with` and accepts syncs with `accepts`.
async fn production_server(
    backend: &TestBackend,
    signs_with: &str,
    accepts: &[&str],
    max_call_bytes: Option<usize>,
) -> TestServer {
    let mut config = flowforge_tests::server::config_for(backend);
    config.engine.signing_key = Some(signs_with.to_owned());
    config.engine.server_kind = "cloud";
    if let Some(max) = max_call_bytes {
        config.engine.max_call_bytes = max;
    }
    config.inngest_keys = flowforge_api::config::InngestKeys {
        event_keys: vec![(EVENT_KEY.to_owned(), "default".to_owned())],
        signing_keys: accepts.iter().map(|k| (*k).to_owned()).collect(),
    };
    TestServer::start_with(config).await
}

async fn production_app(server_url: &str, key: &str, fallback: Option<&str>) -> Option<PythonApp> {
    let mut env = vec![
        ("APP_MODE", "production"),
        ("INNGEST_BASE_URL", server_url),
        ("INNGEST_SIGNING_KEY", key),
        ("INNGEST_EVENT_KEY", EVENT_KEY),
    ];
    if let Some(fallback) = fallback {
        env.push(("INNGEST_SIGNING_KEY_FALLBACK", fallback));
    }
    launch_python_app(&env).await
}

/// Production mode: the app authenticates its sync with the hashed signing key, checks
/// FlowForge's signature on every call, and sends events with its event key.
async fn production_mode_keys_and_signatures_work_both_ways(backend: TestBackend) {
    let server = production_server(&backend, KEY_ONE, &[KEY_ONE], None).await;
    let api = Api::new(server.url.clone());
    let Some(app) = production_app(&server.url, KEY_ONE, None).await else {
        return;
    };
    let (status, body) = sync(&app.url, None).await;
    assert!(
        status.is_success() && body["ok"] == json!(true),
        "sync failed: {status} {body}"
    );

    let run_id = run_for(&api, "py/send", json!({})).await;
    let run = api.finished_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(
        run["status"], "completed",
        "signed calls were accepted: {run}"
    );
    // The step sent its event with the event key.
    let sent = run["output"]["sent"][0].as_str().unwrap().to_owned();
    let pinged = api.runs_of_event(&sent, 1, RUN_TIMEOUT).await.remove(0);
    assert_eq!(
        api.finished_run(&pinged, RUN_TIMEOUT).await["status"],
        "completed"
    );

    let (status, body) = api
        .post("/e/not-a-key", &json!([{"name": "py/steps", "data": {}}]))
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error"], "event key not found",
        "the protocol's error shape: {body}"
    );
    let (status, body) = api
        .post(
            &format!("/e/{EVENT_KEY}"),
            &json!([{"name": "py/steps", "data": {"n": 1}}]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let run = api
        .runs_of_event(body["ids"][0].as_str().unwrap(), 1, RUN_TIMEOUT)
        .await
        .remove(0);
    assert_eq!(
        api.finished_run(&run, RUN_TIMEOUT).await["status"],
        "completed"
    );
}

/// A server that signs with the wrong key: the app refuses every call, and the run fails
/// after its attempts; an app with the wrong key cannot sync.
async fn a_bad_signature_is_rejected(backend: TestBackend) {
    let server = production_server(&backend, KEY_TWO, &[KEY_ONE], None).await;
    let api = Api::new(server.url.clone());
    let Some(app) = production_app(&server.url, KEY_ONE, None).await else {
        return;
    };
    let (status, body) = sync(&app.url, None).await;
    assert!(
        status.is_success() && body["ok"] == json!(true),
        "sync failed: {status} {body}"
    );
    let run_id = run_for(&api, "py/steps", json!({"n": 1})).await;
    let run = api.finished_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"]["message"].as_str().unwrap().contains("401"),
        "{run}"
    );
}

/// An app whose signing key FlowForge does not know cannot sync.
async fn a_sync_with_an_unknown_signing_key_is_refused(backend: TestBackend) {
    let server = production_server(&backend, KEY_ONE, &[KEY_ONE], None).await;
    let api = Api::new(server.url.clone());
    let Some(app) = production_app(&server.url, KEY_TWO, None).await else {
        return;
    };
    let (_, body) = sync(&app.url, None).await;
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let (_, functions) = api.get("/api/v1/functions").await;
    assert_eq!(functions["items"], json!([]));
}

/// A rotation: FlowForge signs with the new key and still accepts the old one; the app
/// syncs with the old one and checks signatures with either.
async fn a_key_rotation_uses_the_fallback_signing_key(backend: TestBackend) {
    let server = production_server(&backend, KEY_TWO, &[KEY_TWO, KEY_ONE], None).await;
    let api = Api::new(server.url.clone());
    let Some(app) = production_app(&server.url, KEY_ONE, Some(KEY_TWO)).await else {
        return;
    };
    let (status, body) = sync(&app.url, None).await;
    assert!(
        status.is_success() && body["ok"] == json!(true),
        "sync with the fallback key: {status} {body}"
    );
    let run_id = run_for(&api, "py/parallel", json!({})).await;
    let run = api.finished_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!(42));
}

/// Calls too large to carry the run's data make the app fetch it (`use_api`).
async fn use_api_runs_fetch_their_data_from_the_server(backend: TestBackend) {
    let server = production_server(&backend, KEY_ONE, &[KEY_ONE], Some(0)).await;
    let api = Api::new(server.url.clone());
    let Some(app) = production_app(&server.url, KEY_ONE, None).await else {
        return;
    };
    let (status, body) = sync(&app.url, None).await;
    assert!(status.is_success(), "{status} {body}");
    let steps = run_for(&api, "py/steps", json!({"n": 9})).await;
    let parallel = run_for(&api, "py/parallel", json!({})).await;
    let run = api.finished_run(&steps, RUN_TIMEOUT).await;
    assert_eq!(run["output"], json!({"a": 1, "b": 2, "n": 9}), "{run}");
    assert_eq!(
        api.finished_run(&parallel, RUN_TIMEOUT).await["output"],
        json!(42)
    );
    // The endpoints the app used.
    let hashed = flowforge_engine::protocol::hashed_signing_key(KEY_ONE);
    let actions = api
        .http
        .get(format!("{}/v0/runs/{steps}/actions", api.base))
        .bearer_auth(&hashed)
        .send()
        .await
        .unwrap();
    assert_eq!(actions.status(), 200);
    let actions: Value = actions.json().await.unwrap();
    assert_eq!(actions.as_object().unwrap().len(), 3, "{actions}");
    let unauthenticated = api
        .http
        .get(format!("{}/v0/runs/{steps}/batch", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

flowforge_tests::on_both_backends!(
    an_app_written_with_the_official_python_sdk_runs_unmodified,
    production_mode_keys_and_signatures_work_both_ways,
    a_bad_signature_is_rejected,
    a_sync_with_an_unknown_signing_key_is_refused,
    a_key_rotation_uses_the_fallback_signing_key,
    use_api_runs_fetch_their_data_from_the_server,
);
