//! An app written with Inngest's official Python SDK (from PyPI) runs on FlowForge
//! unmodified: it finds the server through `INNGEST_DEV`, syncs when it gets a `PUT`,
//! and every step kind completes with the right output, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use flowforge_tests::backend::TestBackend;
use flowforge_tests::fake_llm::{FakeAnthropic, answer_to};
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
        11,
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

/// A server that signs its calls with `signs_with` and accepts syncs with it and with
/// `accepts` (the operator's FLOWFORGE_SIGNING_KEY and its fallback).
async fn production_server(
    backend: &TestBackend,
    signs_with: &str,
    accepts: &[&str],
    max_call_bytes: Option<usize>,
) -> TestServer {
    let mut config = flowforge_tests::server::config_for(backend);
    config.engine.server_kind = "cloud";
    if let Some(max) = max_call_bytes {
        config.engine.max_call_bytes = max;
    }
    config.inngest_keys = flowforge_api::config::InngestKeys {
        event_keys: vec![(EVENT_KEY.to_owned(), "default".to_owned())],
        signing_keys: std::iter::once(signs_with)
            .chain(accepts.iter().copied().filter(|k| *k != signs_with))
            .map(str::to_owned)
            .collect(),
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

    // Like Inngest, the valid events before the first invalid one are recorded and their
    // ids returned beside the error.
    let (status, body) = api
        .post(
            &format!("/e/{EVENT_KEY}"),
            &json!([{"name": "py/partial", "data": {}}, {"name": ""}, {"name": "py/never"}]),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["ids"].as_array().map(Vec::len), Some(1), "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("name")),
        "the error names the field: {body}"
    );
    let path = format!("/api/v1/events/{}", body["ids"][0].as_str().unwrap());
    let deadline = std::time::Instant::now() + RUN_TIMEOUT;
    let recorded = loop {
        // The read model follows the log a few milliseconds behind.
        let (status, recorded) = api.get(&path).await;
        if status == 200 || std::time::Instant::now() > deadline {
            assert_eq!(status, 200, "{recorded}");
            break recorded;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(recorded["name"], "py/partial");
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

/// Asks `/v0/gql` and returns `data`, failing on any GraphQL error.
async fn gql(api: &Api, query: &str, variables: Value) -> Value {
    let (status, body) = api
        .post("/v0/gql", &json!({"query": query, "variables": variables}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{query}: {body}");
    body["data"].clone()
}

const RUN_QUERY: &str = "query ($runID: String!) { run(runID: $runID) { \
    status output trace { childrenSpans { name outputID } } } }";
const SPAN_OUTPUT_QUERY: &str = "query ($outputID: String!) { \
    runTraceSpanOutputByID(outputID: $outputID) { data error { message name stack } } }";

/// The output id of the run's span named `step`.
fn output_id_of(run: &Value, step: &str) -> String {
    run["trace"]["childrenSpans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == step))
        .and_then(|span| span["outputID"].as_str())
        .unwrap_or_else(|| panic!("no span `{step}` in {run}"))
        .to_owned()
}

/// The queries Inngest's SDK test helpers make of the dev server's GraphQL API, for a
/// completed, a failed and a cancelled run.
async fn gql_answers_the_dev_server_queries(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let Some(_app) = start_python_app(&server.url).await else {
        return;
    };
    let event_id = api.send("py/steps", json!({"n": 3})).await;
    let completed = api.runs_of_event(&event_id, 1, RUN_TIMEOUT).await.remove(0);
    let failed = run_for(&api, "py/doomed", json!({})).await;
    let waiting = run_for(&api, "py/order", json!({"order_id": "gql-1"})).await;

    api.finished_run(&completed, RUN_TIMEOUT).await;
    let run = gql(&api, RUN_QUERY, json!({"runID": completed})).await["run"].clone();
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let output: Value = serde_json::from_str(run["output"].as_str().unwrap()).unwrap();
    assert_eq!(output, json!({"a": 1, "b": 2, "n": 3}));
    let names: Vec<&str> = run["trace"]["childrenSpans"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "nap", "b"], "spans in the order the steps ran");
    let span = gql(
        &api,
        SPAN_OUTPUT_QUERY,
        json!({"outputID": output_id_of(&run, "b")}),
    )
    .await["runTraceSpanOutputByID"]
        .clone();
    assert_eq!(span["data"], "2", "{span}");
    assert_eq!(span["error"], Value::Null);

    let trigger = gql(
        &api,
        "query ($runID: String!) { runTrigger(runID: $runID) { payloads } }",
        json!({"runID": completed}),
    )
    .await;
    let payload: Value =
        serde_json::from_str(trigger["runTrigger"]["payloads"][0].as_str().unwrap()).unwrap();
    assert_eq!(payload["name"], "py/steps");
    assert_eq!(payload["data"], json!({"n": 3}));
    let event = gql(
        &api,
        "query ($id: String!) { event(query: {eventId: $id}) { name functionRuns { id status } } }",
        json!({"id": event_id}),
    )
    .await;
    assert_eq!(event["event"]["name"], "py/steps", "{event}");
    assert_eq!(
        event["event"]["functionRuns"],
        json!([{"id": completed, "status": "COMPLETED"}])
    );
    let unknown = gql(
        &api,
        "query ($id: String!) { event(query: {eventId: $id}) { name } }",
        json!({"id": "no-such-event"}),
    )
    .await;
    assert_eq!(unknown["event"], Value::Null);

    api.finished_run(&failed, RUN_TIMEOUT).await;
    let run = gql(&api, RUN_QUERY, json!({"runID": failed})).await["run"].clone();
    assert_eq!(run["status"], "FAILED", "{run}");
    let output: Value = serde_json::from_str(run["output"].as_str().unwrap()).unwrap();
    assert_eq!(output["message"], "boom", "{output}");
    let span = gql(
        &api,
        SPAN_OUTPUT_QUERY,
        json!({"outputID": output_id_of(&run, "explode")}),
    )
    .await["runTraceSpanOutputByID"]
        .clone();
    assert_eq!(span["data"], Value::Null, "{span}");
    assert_eq!(span["error"]["name"], "ValueError", "{span}");
    assert_eq!(span["error"]["message"], "boom");
    assert!(
        span["error"]["stack"]
            .as_str()
            .is_some_and(|s| s.contains("explode")),
        "the SDK's traceback: {span}"
    );

    let run = gql(&api, RUN_QUERY, json!({"runID": waiting})).await["run"].clone();
    assert!(
        ["QUEUED", "RUNNING"].contains(&run["status"].as_str().unwrap()),
        "{run}"
    );
    let (status, body) = api
        .post(&format!("/api/v1/runs/{waiting}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    api.finished_run(&waiting, RUN_TIMEOUT).await;
    let run = gql(&api, RUN_QUERY, json!({"runID": waiting})).await["run"].clone();
    assert_eq!(run["status"], "CANCELLED", "{run}");
    assert_eq!(run["output"], Value::Null);

    let (status, body) = api
        .post(
            "/v0/gql",
            &json!({"query": "{ run(runID: \"nope\") { status } }"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not found")),
        "{body}"
    );
}

/// `step.ai.infer`: the server, not the app, calls the provider with the app's key, and
/// the provider's answer becomes the step's memoized output. The key never reaches the log.
async fn ai_infer_is_answered_by_the_provider_through_the_server(backend: TestBackend) {
    let provider = FakeAnthropic::start().await;
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let Some(_app) = start_python_app(&server.url).await else {
        return;
    };
    // The first request finds the provider overloaded: a 529 is retried like any step error.
    provider.overload_next(1);
    let run = run_for(
        &api,
        "py/ask",
        json!({"llm": provider.base_url, "prompt": "durable"}),
    )
    .await;
    let run = api.finished_run(&run, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(
        run["output"],
        json!({"text": answer_to("durable"), "model": "claude-test-1"})
    );

    let requests = provider.requests();
    assert_eq!(
        requests.len(),
        2,
        "one overloaded, one answered: {requests:?}"
    );
    for request in &requests {
        assert_eq!(request.path, "/v1/messages");
        assert_eq!(request.headers["x-api-key"], "sk-ant-test-secret");
        assert_eq!(request.headers["anthropic-version"], "2023-06-01");
        assert_eq!(
            request.body,
            json!({
                "model": "claude-test-1",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": "durable"}]
            })
        );
    }
    let step = &run["steps"][0];
    assert_eq!(step["kind"], "ai", "{run}");
    assert_eq!(step["name"], "ask-model", "{run}");
    assert_eq!(
        step["attempts"].as_array().unwrap().len(),
        1,
        "one failed attempt: {run}"
    );
    assert!(
        step["attempts"][0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("the provider answered 529")),
        "the provider's status is in the error: {run}"
    );

    let id = run["id"].as_str().unwrap();
    let (status, events) = api.get(&format!("/api/v1/runs/{id}/events")).await;
    assert_eq!(status, 200);
    let log = events.to_string();
    assert!(log.contains("run.step_completed"), "{log}");
    assert!(
        !log.contains("sk-ant-test-secret"),
        "the provider key must not reach the log: {log}"
    );
}

/// A function's enabled skills reach its `step.ai.infer` requests: the server puts
/// their knowledge before the system prompt, and the run records which versions it
/// gave (`run.skills_used`, and the step's `skills` in the run's detail).
async fn an_ai_step_is_given_its_functions_skills_and_the_run_records_them(backend: TestBackend) {
    let provider = FakeAnthropic::start().await;
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let Some(_app) = start_python_app(&server.url).await else {
        return;
    };
    let skill_md = "---\nname: release-notes\ndescription: How we write release notes.\n---\nLead with what changed for the user.";
    let (status, skill) = api
        .post(
            "/api/v1/skills/upload",
            &json!({"files": [{"path": "SKILL.md", "contents": skill_md}]}),
        )
        .await;
    assert_eq!(status, 201, "{skill}");
    let (status, enabled) = api
        .put(
            "/api/v1/functions/py-app-ask/skills",
            &json!({"skills": ["release-notes"]}),
        )
        .await;
    assert_eq!(status, 200, "{enabled}");

    let run = run_for(
        &api,
        "py/ask",
        json!({"llm": provider.base_url, "prompt": "notes please"}),
    )
    .await;
    let run = api.finished_run(&run, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "completed", "{run}");
    let requests = provider.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let system = requests[0].body["system"].as_str().unwrap_or_default();
    assert!(
        system.starts_with("<skill-knowledge name=\"release-notes\">")
            && system.contains("Lead with what changed for the user."),
        "the model was given the skill: {system}"
    );
    assert_eq!(
        requests[0].body["messages"],
        json!([{"role": "user", "content": "notes please"}]),
        "the app's own messages are unchanged"
    );

    let version = &skill["versions"][0];
    let expected = json!([{
        "name": "release-notes",
        "version": version["version"],
        "sha256": version["sha256"],
    }]);
    assert!(
        version["sha256"].as_str().is_some_and(|h| h.len() == 64),
        "{skill}"
    );
    assert_eq!(run["steps"][0]["skills"], expected, "{run}");
    let id = run["id"].as_str().unwrap();
    let (status, events) = api.get(&format!("/api/v1/runs/{id}/events")).await;
    assert_eq!(status, 200);
    let used = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "run.skills_used" || e["event_type"] == "run.skills_used")
        .unwrap_or_else(|| panic!("no run.skills_used in {events}"));
    assert!(
        used.to_string()
            .contains(version["sha256"].as_str().unwrap()),
        "{used}"
    );
}

/// The SDK sends `x-inngest-event-id-seed` so that a retried send does not record twice;
/// `GET /v1/events` lists events the way Inngest's REST API does.
async fn a_seeded_event_is_recorded_once_and_listed(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let http = reqwest::Client::new();
    let send = || async {
        let response = http
            .post(format!("{}/e/dev-key", server.url))
            .header("x-inngest-event-id-seed", "1764000000000,q83v7w==")
            .json(&json!([
                {"name": "seeded/one", "data": {"n": 1}},
                {"name": "seeded/two", "data": {"n": 2}}
            ]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()
    };
    let first = send().await;
    let again = send().await;
    assert_eq!(first["ids"].as_array().unwrap().len(), 2, "{first}");
    assert_eq!(first["ids"], again["ids"], "same seed, same ids");
    assert_ne!(first["ids"][0], first["ids"][1]);

    // The list is a read model: wait for it to catch up with both events.
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    let listed = loop {
        let (status, listed) = api.get("/v1/events?limit=10").await;
        assert_eq!(status, 200, "{listed}");
        if listed["data"].as_array().is_some_and(|d| d.len() >= 2) {
            break listed;
        }
        assert!(tokio::time::Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let data = listed["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "recorded once, not twice: {listed}");
    let ids: Vec<&Value> = data.iter().map(|e| &e["id"]).collect();
    assert!(
        ids.contains(&&first["ids"][0]) && ids.contains(&&first["ids"][1]),
        "{listed}"
    );
    let one = data.iter().find(|e| e["name"] == "seeded/one").unwrap();
    assert_eq!(one["data"], json!({"n": 1}));
    assert!(one["ts"].as_i64().is_some_and(|ts| ts > 0), "{one}");

    let (status, body) = api.get("/v1/events?limit=nope").await;
    assert_eq!(status, 400, "{body}");
}

flowforge_tests::on_both_backends!(
    ai_infer_is_answered_by_the_provider_through_the_server,
    an_ai_step_is_given_its_functions_skills_and_the_run_records_them,
    a_seeded_event_is_recorded_once_and_listed,
    gql_answers_the_dev_server_queries,
    an_app_written_with_the_official_python_sdk_runs_unmodified,
    production_mode_keys_and_signatures_work_both_ways,
    a_bad_signature_is_rejected,
    a_sync_with_an_unknown_signing_key_is_refused,
    a_key_rotation_uses_the_fallback_signing_key,
    use_api_runs_fetch_their_data_from_the_server,
);
