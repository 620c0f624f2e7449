//! Comments as people and agents write them: mentions resolved when written, edits
//! and deletions by the author only, reactions once per author and emoji, and a task's
//! timeline interleaving its comments with its own events in log order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flowforge_tests::backend::TestBackend;
use flowforge_tests::server::{Api, TestServer};
use serde_json::{Value, json};

async fn send(api: &Api, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = api.http.request(method, format!("{}{path}", api.base));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn thread(api: &Api, task: &str, count: usize) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, page) = api.get(&format!("/api/v1/comments?task={task}")).await;
        assert_eq!(status, 200, "{page}");
        if page["items"].as_array().unwrap().len() == count {
            return page;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn a_conversation_on_a_task(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let (_, bot) = api.post("/api/v1/agents", &json!({"name": "qa-bot"})).await;
    let (_, task) = api
        .post("/api/v1/tasks", &json!({"title": "Release 1.2"}))
        .await;
    let key = task["key"].as_str().unwrap();

    let (status, first) = api
        .post(
            "/api/v1/comments",
            &json!({"target": {"kind": "task", "id": key}, "body": "@qa-bot please test; @nobody can wait. Mail x@qa-bot.dev"}),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["author"]["kind"], "user");
    assert_eq!(
        first["mentions"],
        json!([{"name": "qa-bot", "member": {"kind": "agent", "id": bot["id"]}}]),
        "known names are resolved, unknown ones stay text"
    );
    // The agent answers.
    let (status, answer) = api
        .post(
            "/api/v1/comments",
            &json!({"target": {"kind": "task", "id": task["id"]}, "body": "All green.", "agent": "qa-bot"}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["author"], json!({"kind": "agent", "id": bot["id"]}));
    let first_id = first["id"].as_str().unwrap();

    // Reactions: once per author and emoji, whatever how often it is sent.
    for _ in 0..2 {
        let (status, reacted) = api
            .post(
                &format!("/api/v1/comments/{first_id}/reactions"),
                &json!({"emoji": "🎉"}),
            )
            .await;
        assert_eq!(status, 200, "{reacted}");
        assert_eq!(reacted["reactions"]["🎉"].as_array().unwrap().len(), 1);
    }
    let (status, error) = api
        .post(
            &format!("/api/v1/comments/{first_id}/reactions"),
            &json!({"emoji": "a b"}),
        )
        .await;
    assert_eq!(
        (status, error["error"]["field"].clone()),
        (400, json!("emoji"))
    );

    // Editing re-resolves mentions.
    let (status, edited) = send(
        &api,
        reqwest::Method::PATCH,
        &format!("/api/v1/comments/{first_id}"),
        Some(json!({"body": "Done, thanks"})),
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["mentions"], json!([]));
    assert!(edited["edited_at"].is_string());

    // A status change between the comments shows in the timeline in log order.
    let response = api
        .http
        .patch(format!("{}/api/v1/tasks/{key}", api.base))
        .json(&json!({"status": "in_progress"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (_, last) = api
        .post(
            "/api/v1/comments",
            &json!({"target": {"kind": "task", "id": key}, "body": "Shipping now"}),
        )
        .await;
    let page = thread(&api, key, 3).await;
    assert_eq!(page["items"][0]["body"], "Done, thanks");
    assert_eq!(page["items"][0]["reactions"]["🎉"][0]["kind"], "user");

    let (status, timeline) = api.get(&format!("/api/v1/tasks/{key}/timeline")).await;
    assert_eq!(status, 200, "{timeline}");
    let kinds: Vec<String> = timeline["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "comment" => format!("comment:{}", e["comment"]["body"].as_str().unwrap()),
            _ => e["event_type"].as_str().unwrap().to_owned(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "task.created",
            "comment:Done, thanks",
            "comment:All green.",
            "task.status_changed",
            "comment:Shipping now"
        ]
    );

    // Deleting: the body leaves every read model; the comment's place stays.
    let last_id = last["id"].as_str().unwrap();
    let (status, deleted) = send(
        &api,
        reqwest::Method::DELETE,
        &format!("/api/v1/comments/{last_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{deleted}");
    assert!(deleted["body"].is_null());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = thread(&api, key, 3).await;
        if page["items"][2]["body"].is_null() {
            assert!(page["items"][2]["deleted_at"].is_string());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, _) = api
        .post(
            &format!("/api/v1/comments/{last_id}/reactions"),
            &json!({"emoji": "👍"}),
        )
        .await;
    assert_eq!(status, 409, "a deleted comment takes no reactions");

    // Bad input names the field.
    for (body, field) in [
        (json!({"body": "x"}), "target"),
        (
            json!({"target": {"kind": "page", "id": "x"}, "body": "x"}),
            "target.kind",
        ),
        (
            json!({"target": {"kind": "task", "id": key}, "body": " "}),
            "body",
        ),
        (
            json!({"target": {"kind": "task", "id": key}, "body": "x", "agent": "ghost"}),
            "agent",
        ),
    ] {
        let (status, error) = api.post("/api/v1/comments", &body).await;
        assert_eq!(
            (status, error["error"]["field"].clone()),
            (400, json!(field)),
            "{body}: {error}"
        );
    }
    // The read model rebuilt from the log is the incremental one, row for row.
    let (incremental, rebuilt) = backend
        .incremental_and_rebuilt::<flowforge_projections::comments::CommentRow>(
            "comments",
            "posted_position",
        )
        .await;
    assert_eq!(incremental.len(), 3);
    assert_eq!(incremental, rebuilt);
}

flowforge_tests::on_both_backends!(a_conversation_on_a_task);
