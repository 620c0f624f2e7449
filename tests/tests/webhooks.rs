//! Webhooks: a third party posts JSON, FlowForge verifies its HMAC signature, turns the
//! body into an event with a transform, and functions run on it. Refused deliveries are
//! recorded; the secret never enters the log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flowforge_sdk::{App, Function};
use flowforge_store::LogFilter;
use flowforge_tests::backend::TestBackend;
use flowforge_tests::server::{Api, SdkApp, TestServer};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "whsec-correct-horse-battery-staple";

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(api: &Api, url: &str, body: &[u8], signature: Option<&str>) -> (u16, Value) {
    let mut request = api
        .http
        .post(format!("{}{url}", api.base))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn webhooks_turn_signed_deliveries_into_events(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let _app = SdkApp::start(&server.url, |server_url, serve_url| {
        App::new("hooks", server_url, serve_url).function(
            Function::new("on-push")
                .trigger_event("github/push")
                .handler(
                    |ctx, _step| async move { Ok(json!({"repo": ctx.event["data"]["repo"]})) },
                ),
        )
    })
    .await;

    let (status, body) = api
        .post(
            "/api/v1/webhooks",
            &json!({"name": "gh", "transform": "{'name': 'github/' + body.action"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("transform")),
        "{body}"
    );

    let (status, hook) = api
        .post(
            "/api/v1/webhooks",
            &json!({
                "name": "github",
                "secret": SECRET,
                "signature_header": "X-Hub-Signature-256",
                "signature_prefix": "sha256=",
                "transform": "{'name': 'github/' + headers['x-github-event'], 'data': {'repo': body.repository.name, 'pusher': body.pusher.name}}",
            }),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let url = hook["url"].as_str().unwrap().to_owned();
    assert!(
        hook.to_string().find(SECRET).is_none(),
        "the secret is never shown again"
    );

    let payload =
        json!({"repository": {"name": "flowforge"}, "pusher": {"name": "ada"}}).to_string();
    let (status, body) = deliver(
        &api,
        &url,
        payload.as_bytes(),
        Some(&sign(payload.as_bytes())),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let event_id = body["ids"][0].as_str().unwrap().to_owned();
    let runs = api
        .runs_of_event(&event_id, 1, Duration::from_secs(30))
        .await;
    let run = api.finished_run(&runs[0], Duration::from_secs(30)).await;
    assert_eq!(run["output"], json!({"repo": "flowforge"}));
    let (_, event) = api.get(&format!("/api/v1/events/{event_id}")).await;
    assert_eq!(event["name"], "github/push");
    assert_eq!(event["data"], json!({"repo": "flowforge", "pusher": "ada"}));
    assert_eq!(event["source"]["kind"], "webhook");

    // Refused: unsigned, wrongly signed, signed but not JSON.
    let (status, body) = deliver(&api, &url, payload.as_bytes(), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_signature")),
        "{body}"
    );
    let (status, _) = deliver(&api, &url, payload.as_bytes(), Some("sha256=00ff")).await;
    assert_eq!(status, 401);
    let garbage = b"{not json";
    let (status, body) = deliver(&api, &url, garbage, Some(&sign(garbage))).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("body")),
        "{body}"
    );
    let (_, shown) = api
        .get(&format!(
            "/api/v1/webhooks/{}",
            hook["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(shown["rejected_deliveries"], 3, "{shown}");
    assert_eq!(shown["last_rejection"]["status"], 400);
    let (_, list) = api.get("/api/v1/webhooks").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    // The secret is nowhere in the log.
    let store = backend.store().await;
    let everything = store.read_all(0, 100_000, &LogFilter::all()).await.unwrap();
    assert!(
        everything
            .events
            .iter()
            .any(|e| e.event_type == "webhook.delivery_rejected")
    );
    assert!(
        everything
            .events
            .iter()
            .all(|e| !e.payload.get().contains(SECRET))
    );

    let deleted = api
        .http
        .delete(format!(
            "{}/api/v1/webhooks/{}",
            api.base,
            hook["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let (status, _) = deliver(
        &api,
        &url,
        payload.as_bytes(),
        Some(&sign(payload.as_bytes())),
    )
    .await;
    assert_eq!(status, 404);
}

flowforge_tests::on_both_backends!(webhooks_turn_signed_deliveries_into_events);
