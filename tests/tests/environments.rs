//! A tenant's live and test environments, end to end: apps synced with a test signing
//! key serve the test environment only, events sent with `ff_test_` keys run only
//! there, runs are listed apart, and each environment signs its calls with its own
//! rotatable key. The real server, real apps over HTTP, on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flowforge_sdk::{App, Function};
use flowforge_tests::backend::TestBackend;
use flowforge_tests::server::{Api, SdkApp, TestServer};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The same app id and function in both environments; each answers with its name.
fn shop(server: String, serve: String, answer: &'static str) -> App {
    App::new("shop", server, serve).function(
        Function::new("hello")
            .trigger_event("env/hello")
            .handler(move |_ctx, _step| async move { Ok(json!(answer)) }),
    )
}

async fn key(admin: &Api, kind: &str) -> Api {
    let (status, key) = admin
        .post(
            "/api/v1/api-keys",
            &json!({"name": kind, "kind": kind, "scopes": ["events:send", "runs:read", "functions:read"]}),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    Api::with_bearer(
        admin.base.clone(),
        Some(key["key"].as_str().unwrap().to_owned()),
    )
}

/// Sends `env/hello` and answers the outputs of the runs it started.
async fn hello(api: &Api) -> Vec<Value> {
    let (status, body) = api
        .post(
            "/api/v1/events?wait=true&timeout=20",
            &json!({"name": "env/hello", "data": {}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true, "{body}");
    body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "completed", "{r}");
            r["output"].clone()
        })
        .collect()
}

fn ids(listed: &Value) -> Vec<String> {
    listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// What an app presents: its key, hashed, as Inngest SDKs send it.
fn bearer(key: &str) -> String {
    let hashed = flowforge_engine::protocol::hashed_signing_key(key);
    format!("signkey-test-{hashed}")
}

async fn protocol_status(base: &str, key: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}/v1/events"))
        .bearer_auth(bearer(key))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn runs_where(api: &Api, path: &str, expected: usize) -> Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (status, listed) = api.get(path).await;
        assert_eq!(status, 200, "{listed}");
        if listed["items"].as_array().unwrap().len() >= expected {
            return listed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: expected {expected} runs, have {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn environments_are_kept_apart_and_sign_with_their_own_keys(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let admin = Api::new(server.url.clone());

    // The test environment's first signing key signs at once; it is shown only here.
    let (status, first) = admin
        .post("/api/v1/signing-keys?environment=test", &json!({}))
        .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["status"], "current");
    assert_eq!(first["environment"], "test");
    let k1 = first["key"].as_str().unwrap().to_owned();
    let k1_id = first["id"].as_str().unwrap().to_owned();
    assert!(
        k1.starts_with("signkey-test-") && k1.len() == 13 + 64,
        "{k1}"
    );
    let (_, listed) = admin.get("/api/v1/signing-keys?environment=test").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    assert!(listed["items"][0].get("key").is_none(), "{listed}");
    assert!(!listed.to_string().contains(&k1[13..]), "the key is listed");
    let (_, live_keys) = admin.get("/api/v1/signing-keys").await;
    assert_eq!(live_keys["items"], json!([]), "the live ring is its own");

    // One app id, one function id, in each environment.
    let _live_app = SdkApp::start(&server.url, |s, u| shop(s, u, "live")).await;
    let test_app = SdkApp::start(&server.url, |s, u| {
        shop(s, u, "test").signing_key(k1.clone())
    })
    .await;
    let (live, test) = (key(&admin, "live").await, key(&admin, "test").await);

    assert_eq!(hello(&test).await, vec![json!("test")]);
    assert_eq!(hello(&live).await, vec![json!("live")]);
    assert_eq!(
        hello(&admin).await,
        vec![json!("live")],
        "users act in live"
    );

    // Functions and runs are listed in the caller's environment.
    let (_, functions) = test.get("/api/v1/functions").await;
    assert!(
        functions["items"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with(&test_app.url),
        "{functions}"
    );
    let test_runs = runs_where(&test, "/api/v1/runs", 1).await;
    let live_runs = runs_where(&live, "/api/v1/runs", 2).await;
    assert_eq!(ids(&test_runs).len(), 1, "{test_runs}");
    assert_eq!(test_runs["items"][0]["environment"], "test");
    assert_eq!(ids(&live_runs).len(), 2, "{live_runs}");
    assert!(
        live_runs["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["environment"] == "live"),
        "{live_runs}"
    );
    let (_, admin_default) = admin.get("/api/v1/runs").await;
    assert_eq!(
        ids(&admin_default),
        ids(&live_runs),
        "users see live by default"
    );
    let (_, admin_test) = admin.get("/api/v1/runs?environment=test").await;
    assert_eq!(ids(&admin_test), ids(&test_runs), "…and test when they ask");
    let live_run = &ids(&live_runs)[0];
    let test_run = &ids(&test_runs)[0];
    assert_eq!(test.get(&format!("/api/v1/runs/{live_run}")).await.0, 404);
    assert_eq!(live.get(&format!("/api/v1/runs/{test_run}")).await.0, 404);
    let (status, run) = admin.get(&format!("/api/v1/runs/{test_run}")).await;
    assert_eq!(
        (status, &run["environment"]),
        (200, &json!("test")),
        "{run}"
    );
    let (status, refused) = test.get("/api/v1/runs?environment=live").await;
    assert_eq!(
        (status, refused["error"]["field"].as_str()),
        (400, Some("environment")),
        "{refused}"
    );

    // Rotation, step 1: a next key, accepted from apps, not yet signing.
    let (status, second) = admin
        .post("/api/v1/signing-keys?environment=test", &json!({}))
        .await;
    assert_eq!(
        (status, &second["status"]),
        (201, &json!("next")),
        "{second}"
    );
    let k2 = second["key"].as_str().unwrap().to_owned();
    let (status, pending) = admin
        .post("/api/v1/signing-keys?environment=test", &json!({}))
        .await;
    assert_eq!(status, 409, "one next key at a time: {pending}");
    assert_eq!(protocol_status(&server.url, &k2).await, 200);
    assert_eq!(
        hello(&test).await,
        vec![json!("test")],
        "the app with the current key only still verifies the server's calls"
    );

    // Step 2: rotate; the server signs with the new key, the old one stays valid for
    // the grace period. An app holding only the new key proves which key signs.
    let (status, rotated) = admin
        .post(
            "/api/v1/signing-keys/rotate?environment=test",
            &json!({"grace_period_seconds": 3600}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let status_of = |id: &str| {
        rotated["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(status_of(&k1_id)["status"], "retired");
    assert!(status_of(&k1_id)["valid_until"].is_string(), "{rotated}");
    drop(test_app);
    let _new_app = SdkApp::start(&server.url, |s, u| {
        shop(s, u, "test").signing_key(k2.clone())
    })
    .await;
    assert_eq!(hello(&test).await, vec![json!("test")]);
    assert_eq!(
        protocol_status(&server.url, &k1).await,
        200,
        "within the grace period"
    );

    // A leaked old key can be ended before its grace period does.
    let response = reqwest::Client::new()
        .delete(format!(
            "{}/api/v1/signing-keys/{k1_id}?environment=test",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(protocol_status(&server.url, &k1).await, 401);
    assert_eq!(
        protocol_status(&server.url, &"0".repeat(64)).await,
        401,
        "an unknown key"
    );

    // The log records the keys' ids and fingerprints, never the keys.
    let store = backend.store().await;
    let page = store
        .read_all(0, 100_000, &flowforge_store::LogFilter::all())
        .await
        .unwrap();
    let log: String = page
        .events
        .iter()
        .map(|e| format!("{} {} {:?}\n", e.event_type, e.payload, e.metadata))
        .collect();
    for key in [&k1, &k2] {
        assert!(!log.contains(&key[13..]), "a signing key is in the log");
    }
    assert!(log.contains("signing_key.activated"));
    server.stop().await;
}

/// Where the operator configured FLOWFORGE_SIGNING_KEY, apps of the default tenant's
/// live environment hold it: that ring's first key waits to be rotated in, and the
/// server signs with the operator's key until then.
async fn the_operators_key_signs_until_a_key_of_the_ring_is_rotated_in(backend: TestBackend) {
    let operator_key = format!("signkey-prod-{}", "ab".repeat(32));
    let mut config = flowforge_tests::server::config_for(&backend);
    config.inngest_keys.signing_keys = vec![operator_key.clone()];
    let server = TestServer::start_with(config).await;
    let admin = Api::new(server.url.clone());
    let (status, created) = admin.post("/api/v1/signing-keys", &json!({})).await;
    assert_eq!(
        (status, &created["status"]),
        (201, &json!("next")),
        "{created}"
    );
    let ring_key = created["key"].as_str().unwrap().to_owned();
    let old_app = SdkApp::start(&server.url, |s, u| {
        shop(s, u, "live").signing_key(operator_key.clone())
    })
    .await;
    assert_eq!(
        hello(&admin).await,
        vec![json!("live")],
        "signed with the operator's key"
    );
    let (status, rotated) = admin.post("/api/v1/signing-keys/rotate", &json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["items"][0]["status"], "current", "{rotated}");
    drop(old_app);
    let _new_app = SdkApp::start(&server.url, |s, u| {
        shop(s, u, "live").signing_key(ring_key.clone())
    })
    .await;
    assert_eq!(
        hello(&admin).await,
        vec![json!("live")],
        "signed with the ring's key"
    );
    server.stop().await;
}

flowforge_tests::on_both_backends!(
    environments_are_kept_apart_and_sign_with_their_own_keys,
    the_operators_key_signs_until_a_key_of_the_ring_is_rotated_in
);
