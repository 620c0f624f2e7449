//! Assignments and mentions wake functions: a function triggered on
//! `flowforge/task.assigned` or `flowforge/comment.mentioned` runs once per causing
//! change, with who and what in its event (its id is the causing event's, so a log
//! read again records it once).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flowforge_sdk::{App, Function};
use flowforge_tests::backend::TestBackend;
use flowforge_tests::server::{Api, SdkApp, TestServer};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);

fn app(server_url: String, serve_url: String) -> App {
    App::new("wake", server_url, serve_url)
        .function(
            Function::new("on-assigned")
                .trigger_event("flowforge/task.assigned")
                .handler(|ctx, _step| async move { Ok(ctx.event["data"].clone()) }),
        )
        .function(
            Function::new("on-mentioned")
                .trigger_event("flowforge/comment.mentioned")
                .handler(|ctx, _step| async move { Ok(ctx.event["data"].clone()) }),
        )
}

/// The outputs of the finished runs of `function`, once there are `count`.
async fn outputs(api: &Api, function: &str, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (status, page) = api
            .get(&format!(
                "/api/v1/runs?function={function}&status=completed"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        if items.len() >= count {
            assert_eq!(items.len(), count, "{page}");
            let mut out = Vec::new();
            for run in items {
                let (_, run) = api
                    .get(&format!("/api/v1/runs/{}", run["id"].as_str().unwrap()))
                    .await;
                out.push(run["output"].clone());
            }
            return out;
        }
        assert!(tokio::time::Instant::now() < deadline, "{function}: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn assignments_and_mentions_wake_functions_once(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let _app = SdkApp::start(&server.url, app).await;
    let (status, agent) = api
        .post(
            "/api/v1/agents",
            &json!({"name": "fixer", "model": "claude-sonnet", "system_prompt": "Fix builds."}),
        )
        .await;
    assert_eq!(status, 201, "{agent}");
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    let (status, task) = api
        .post(
            "/api/v1/tasks",
            &json!({"title": "Fix the build", "assignee": {"kind": "agent", "id": agent_id}}),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    let (status, comment) = api
        .post(
            "/api/v1/comments",
            &json!({"target": {"kind": "task", "id": task["id"]}, "body": "@fixer the linker fails"}),
        )
        .await;
    assert_eq!(status, 201, "{comment}");
    // A task with nobody assigned wakes nobody.
    let (status, _) = api
        .post("/api/v1/tasks", &json!({"title": "Unassigned"}))
        .await;
    assert_eq!(status, 201);

    let assigned = outputs(&api, "wake-on-assigned", 1).await;
    assert_eq!(assigned[0]["task_id"], task["id"]);
    assert_eq!(assigned[0]["key"], task["key"]);
    assert_eq!(
        assigned[0]["assignee"],
        json!({"kind": "agent", "id": agent_id})
    );
    let mentioned = outputs(&api, "wake-on-mentioned", 1).await;
    assert_eq!(mentioned[0]["comment_id"], comment["id"]);
    assert_eq!(
        mentioned[0]["mentioned"],
        json!({"name": "fixer", "member": {"kind": "agent", "id": agent_id}})
    );
    assert_eq!(mentioned[0]["body"], "@fixer the linker fails");
    assert_eq!(
        mentioned[0]["target"],
        json!({"kind": "task", "id": task["id"]})
    );

    // Later changes that assign or mention nobody new wake nobody again.
    let (status, _) = api
        .post(
            "/api/v1/comments",
            &json!({"target": {"kind": "task", "id": task["id"]}, "body": "no mention here"}),
        )
        .await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(outputs(&api, "wake-on-assigned", 1).await.len(), 1);
    assert_eq!(outputs(&api, "wake-on-mentioned", 1).await.len(), 1);
}

flowforge_tests::on_both_backends!(assignments_and_mentions_wake_functions_once);
