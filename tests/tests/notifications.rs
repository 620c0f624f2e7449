//! Inboxes: a task assigned to someone and a mention of someone reach them (and not
//! the one who acted); an agent blocked and a failed run reach their owners; reading,
//! reading all and archiving are theirs; and a notification exists once per causing
//! event, whether the read model is built incrementally or rebuilt from the log in
//! small batches.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flowforge_api::auth::token::TokenKeys;
use flowforge_api::auth::{AuthConfig, AuthMode};
use flowforge_projections::ReadDb;
use flowforge_sdk::{App, Error as SdkError, Function};
use flowforge_tests::backend::TestBackend;
use flowforge_tests::server::{Api, SdkApp, TestServer, config_for, signed_in_user};
use serde_json::{Value, json};

const SECRET: &[u8] = b"notification-tests-token-secret-0123456789";
const PASSWORD: &str = "correct horse battery staple";

/// A server whose users sign in (open mode: a request without a token is the admin).
async fn start(backend: &TestBackend) -> TestServer {
    let mut config = config_for(backend);
    config.auth = AuthConfig {
        mode: AuthMode::Open,
        tokens: Some(TokenKeys::new(SECRET)),
        token_ttl: Duration::from_secs(600),
        ..AuthConfig::open()
    };
    TestServer::start_with(config).await
}

async fn member(base: &str, admin: &Api, name: &str) -> (String, Api) {
    signed_in_user(base, admin, name, "member", PASSWORD).await
}

async fn inbox(api: &Api, query: &str, count: usize) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, page) = api.get(&format!("/api/v1/notifications?{query}")).await;
        assert_eq!(status, 200, "{page}");
        if page["items"].as_array().unwrap().len() == count {
            return page;
        }
        assert!(tokio::time::Instant::now() < deadline, "{query}: {page}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn unread(api: &Api) -> i64 {
    let (status, body) = api.get("/api/v1/notifications/unread-count").await;
    assert_eq!(status, 200, "{body}");
    body["unread"].as_i64().unwrap()
}

/// id, recipient, kind, read at, archived at.
type Row = (String, String, String, Option<i64>, Option<i64>);

async fn rows(db: &ReadDb) -> Vec<Row> {
    sqlx::query_as(
        "SELECT notification_id, recipient, kind, read_at, archived_at FROM notifications \
         ORDER BY notification_id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap()
}

async fn assignments_and_mentions_reach_the_inbox_once(backend: TestBackend) {
    let server = start(&backend).await;
    let base = server.url.clone();
    let admin = Api::new(base.clone());
    let (ann_id, ann) = member(&base, &admin, "ann").await;
    let (bob_id, bob) = member(&base, &admin, "bob").await;

    // Ann assigns Bob a task and mentions him (and herself) in a comment.
    let (status, task) = ann
        .post(
            "/api/v1/tasks",
            &json!({"title": "Fix the build", "assignee": {"kind": "user", "id": bob_id}}),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    let (status, comment) = ann
        .post(
            "/api/v1/comments",
            &json!({"target": {"kind": "task", "id": task["id"]}, "body": "@bob can you look? cc @ann"}),
        )
        .await;
    assert_eq!(status, 201, "{comment}");
    assert_eq!(comment["mentions"].as_array().unwrap().len(), 2);

    let page = inbox(&bob, "", 2).await;
    assert_eq!(page["unread"], 2);
    let kinds: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["mentioned", "task_assigned"], "newest first");
    let assigned = &page["items"][1];
    assert_eq!(assigned["task"]["key"], task["key"]);
    assert_eq!(assigned["task"]["title"], "Fix the build");
    assert_eq!(assigned["actor"]["id"], ann_id.as_str());
    // Ann acted: nothing for her, not even her own mention.
    inbox(&ann, "", 0).await;
    inbox(&bob, "kind=mentioned", 1).await;

    // Reading one, then all; archiving.
    let mention_id = page["items"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = bob
        .post(
            "/api/v1/notifications/read",
            &json!({"notification_ids": [mention_id]}),
        )
        .await;
    assert_eq!(status, 200);
    inbox(&bob, "unread=true", 1).await;
    assert_eq!(unread(&bob).await, 1);
    let (status, _) = bob.post("/api/v1/notifications/read-all", &json!({})).await;
    assert_eq!(status, 200);
    inbox(&bob, "unread=true", 0).await;
    let (status, _) = bob
        .post(
            "/api/v1/notifications/archive",
            &json!({"notification_ids": [mention_id]}),
        )
        .await;
    assert_eq!(status, 200);
    inbox(&bob, "", 1).await;
    let archived = inbox(&bob, "archived=true", 1).await;
    assert_eq!(archived["items"][0]["id"], mention_id.as_str());
    let (status, error) = bob
        .post(
            "/api/v1/notifications/read",
            &json!({"notification_ids": []}),
        )
        .await;
    assert_eq!(
        (status, error["error"]["field"].clone()),
        (400, json!("notification_ids"))
    );
    let (status, error) = bob.get("/api/v1/notifications?kind=gossip").await;
    assert_eq!(
        (status, error["error"]["field"].clone()),
        (400, json!("kind"))
    );

    // Rebuilt from the log one event per batch: the same notifications, once each,
    // in the same state; and reading the log again adds nothing.
    let incremental = rows(&backend.read_db().await).await;
    assert_eq!(incremental.len(), 2, "{incremental:?}");
    assert_rebuilds_to(&backend, &incremental).await;
}

/// The read model rebuilt from the log one event per batch, then read again from the
/// start, equals the incremental one.
async fn assert_rebuilds_to(backend: &TestBackend, incremental: &[Row]) {
    let (fresh, _guard) = backend.fresh_read_db().await;
    let runner = flowforge_projections::ProjectionRunner::new(
        fresh.clone(),
        backend.store().await,
        flowforge_projections::find_projection("notifications").unwrap(),
    )
    .with_batch_size(1);
    runner.catch_up().await.unwrap();
    assert_eq!(rows(&fresh).await, incremental);
    sqlx::query("UPDATE projection_checkpoints SET position = 0 WHERE name = 'notifications'")
        .execute(fresh.pool())
        .await
        .unwrap();
    runner.catch_up().await.unwrap();
    assert_eq!(
        rows(&fresh).await,
        incremental,
        "a replay creates nothing twice"
    );
}

fn failing_app(server_url: String, serve_url: String) -> App {
    App::new("billing", server_url, serve_url).function(
        Function::new("charge")
            .trigger_event("billing/charge")
            .handler(|_ctx, step| async move {
                let _: i64 = step
                    .run("call the bank", || async {
                        Err::<i64, _>(SdkError::non_retriable("the bank said no"))
                    })
                    .await?;
                Ok(json!("charged"))
            }),
    )
}

async fn agents_blocked_and_failed_runs_reach_their_owners(backend: TestBackend) {
    let server = start(&backend).await;
    let base = server.url.clone();
    let admin = Api::new(base.clone());
    let (ann_id, ann) = member(&base, &admin, "ann").await;
    let (bob_id, bob) = member(&base, &admin, "bob").await;

    // Ann's agent is blocked by Bob: Ann hears of it. Ann blocking it herself: nothing.
    let (status, agent) = ann
        .post("/api/v1/agents", &json!({"name": "builder"}))
        .await;
    assert_eq!(status, 201, "{agent}");
    let assigned = json!({"kind": "agent", "id": agent["id"]});
    let mut tasks = Vec::new();
    for title in ["Release 1.2", "Release 1.3"] {
        let (status, task) = bob
            .post(
                "/api/v1/tasks",
                &json!({"title": title, "assignee": assigned}),
            )
            .await;
        assert_eq!(status, 201, "{task}");
        tasks.push(task);
    }
    let block = |api: &Api, task: &Value| {
        let api = api.clone();
        let url = format!("{}/api/v1/tasks/{}", api.base, task["id"].as_str().unwrap());
        async move {
            let response = api
                .http
                .patch(url)
                .json(&json!({"status": "blocked"}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    block(&bob, &tasks[0]).await;
    block(&ann, &tasks[1]).await;
    let page = inbox(&ann, "kind=agent_blocked", 1).await;
    let blocked = &page["items"][0];
    assert_eq!(blocked["task"]["key"], tasks[0]["key"], "{blocked}");
    assert_eq!(blocked["actor"]["id"], bob_id.as_str());
    // A task of a person blocked, or an agent nobody owns: nobody is told.
    inbox(&bob, "kind=agent_blocked", 0).await;

    // Bob owns the billing app; its run fails; Bob hears of it, Ann does not.
    let _app = SdkApp::start(&base, failing_app).await;
    let (status, error) = ann
        .put(
            "/api/v1/apps/billing/owner",
            &json!({"owner": "not-a-user"}),
        )
        .await;
    assert_eq!(
        (status, error["error"]["field"].clone()),
        (400, json!("owner")),
        "{error}"
    );
    let (status, error) = ann
        .put("/api/v1/apps/no-such-app/owner", &json!({"owner": bob_id}))
        .await;
    assert_eq!(status, 404, "{error}");
    let (status, owned) = ann
        .put("/api/v1/apps/billing/owner", &json!({"owner": bob_id}))
        .await;
    assert_eq!(status, 200, "{owned}");
    assert_eq!(owned["owner"], bob_id.as_str());
    let (status, failed) = admin
        .post(
            "/api/v1/functions/billing-charge/invoke?wait=true",
            &json!({}),
        )
        .await;
    assert_eq!(status, 422, "{failed}");
    let page = inbox(&bob, "kind=run_failed", 1).await;
    let notice = &page["items"][0];
    assert_eq!(notice["run_id"], failed["run_id"], "{notice}");
    assert!(
        notice["summary"]
            .as_str()
            .unwrap()
            .contains("the bank said no"),
        "{notice}"
    );
    inbox(&ann, "kind=run_failed", 0).await;

    // Giving the app up: the next failure tells nobody.
    let (status, _) = bob
        .put("/api/v1/apps/billing/owner", &json!({"owner": null}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = admin
        .post(
            "/api/v1/functions/billing-charge/invoke?wait=true",
            &json!({}),
        )
        .await;
    assert_eq!(status, 422);

    // A later notification shows the projection has read past that failure.
    let (status, task) = bob
        .post(
            "/api/v1/tasks",
            &json!({"title": "Release 1.4", "assignee": assigned}),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    block(&bob, &task).await;
    inbox(&ann, "kind=agent_blocked", 2).await;
    inbox(&bob, "kind=run_failed", 1).await;

    let incremental = rows(&backend.read_db().await).await;
    let kinds: Vec<(&str, &str)> = incremental
        .iter()
        .map(|(_, recipient, kind, _, _)| (recipient.as_str(), kind.as_str()))
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == (ann_id.as_str(), "agent_blocked"))
            .count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == (bob_id.as_str(), "run_failed"))
            .count(),
        1
    );
    assert_eq!(incremental.len(), 3, "{incremental:?}");
    assert_rebuilds_to(&backend, &incremental).await;
}

flowforge_tests::on_both_backends!(
    assignments_and_mentions_reach_the_inbox_once,
    agents_blocked_and_failed_runs_reach_their_owners,
);
