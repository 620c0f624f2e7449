//! The team's agents over HTTP: created, found by id or name, renamed, given skills,
//! removed with their history kept, and every change in the log with its actor.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use flowforge_tests::backend::TestBackend;
use flowforge_tests::server::{Api, TestServer};
use serde_json::{Value, json};

async fn send(api: &Api, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let response = api
        .http
        .request(method, format!("{}{path}", api.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn an_agent_lives_on_the_team_and_in_the_log(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let (status, reviewer) = api
        .post(
            "/api/v1/agents",
            &json!({"name": "reviewer", "model": "claude-sonnet", "system_prompt": "Review PRs.",
                    "skills": ["code-review"], "status": "online"}),
        )
        .await;
    assert_eq!(status, 201, "{reviewer}");
    assert_eq!(reviewer["status"], "online");
    assert_eq!(reviewer["skills"], json!(["code-review"]));
    let id = reviewer["id"].as_str().unwrap();

    // By name (any case) or id.
    let (_, by_name) = api.get("/api/v1/agents/Reviewer").await;
    assert_eq!(by_name["id"], reviewer["id"]);
    // Names are unique, and must be mentionable.
    let (status, taken) = api
        .post("/api/v1/agents", &json!({"name": "REVIEWER"}))
        .await;
    assert_eq!(
        (status, taken["error"]["field"].clone()),
        (409, json!("name")),
        "{taken}"
    );
    for (body, field) in [
        (json!({"name": "two words"}), "name"),
        (json!({}), "name"),
        (json!({"name": "ok", "status": "asleep"}), "status"),
        (json!({"name": "ok", "skills": "x"}), "skills"),
        (json!({"name": "ok", "mood": "happy"}), "mood"),
    ] {
        let (status, error) = api.post("/api/v1/agents", &body).await;
        assert_eq!(
            (status, error["error"]["field"].clone()),
            (400, json!(field)),
            "{body}: {error}"
        );
    }

    let (status, renamed) = send(
        &api,
        reqwest::Method::PATCH,
        &format!("/api/v1/agents/{id}"),
        json!({"name": "lead-reviewer", "status": "busy"}),
    )
    .await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(
        (renamed["name"].as_str(), renamed["status"].as_str()),
        (Some("lead-reviewer"), Some("busy"))
    );
    let (status, skilled) = send(
        &api,
        reqwest::Method::PUT,
        &format!("/api/v1/agents/{id}/skills"),
        json!({"skills": ["code-review", "security"]}),
    )
    .await;
    assert_eq!(status, 200, "{skilled}");
    assert_eq!(skilled["skills"], json!(["code-review", "security"]));

    let (status, gone) = send(
        &api,
        reqwest::Method::DELETE,
        &format!("/api/v1/agents/{id}"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{gone}");
    assert!(gone["deleted_at"].is_string());
    let (_, team) = api.get("/api/v1/agents").await;
    assert_eq!(team["items"], json!([]));
    let (_, everyone) = api.get("/api/v1/agents?include_deleted=true").await;
    assert_eq!(everyone["items"][0]["name"], "lead-reviewer");
    // The name is free again; the old agent is still readable by id.
    let (status, _) = api
        .post("/api/v1/agents", &json!({"name": "lead-reviewer"}))
        .await;
    assert_eq!(status, 201);
    let (_, old) = api.get(&format!("/api/v1/agents/{id}")).await;
    assert_eq!(old["id"], reviewer["id"]);

    // Every change is in the log, with who made it.
    let store = backend.store().await;
    let log = store.read_stream("agents-default", 1).await.unwrap();
    let types: Vec<&str> = log.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "agent.created",
            "agent.edited",
            "agent.status_changed",
            "agent.skills_set",
            "agent.deleted",
            "agent.created"
        ]
    );
    assert!(
        log.iter().all(|e| e.metadata.actor.id == "dev"),
        "{:?}",
        log[0].metadata
    );
}

flowforge_tests::on_both_backends!(an_agent_lives_on_the_team_and_in_the_log);
