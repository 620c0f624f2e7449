//! Human approvals through a real function over the Rust SDK: the run asks, the
//! assignee is notified, only a member who was asked may answer (a viewer reads but
//! cannot), the run resumes with the decision, and a timeout resumes it with a
//! rejection that the approval records too. The approvals read model rebuilt from the
//! log equals the incremental one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flowforge_api::auth::token::TokenKeys;
use flowforge_api::auth::{AuthConfig, AuthMode};
use flowforge_sdk::{App, ApprovalRequest, Function};
use flowforge_tests::backend::TestBackend;
use flowforge_tests::server::{Api, SdkApp, TestServer, config_for, signed_in_user};
use serde_json::{Value, json};

const SECRET: &[u8] = b"approval-tests-token-secret-0123456789ab";
const PASSWORD: &str = "correct horse battery staple";
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

fn app(server_url: String, serve_url: String) -> App {
    App::new("approvals", server_url, serve_url).function(
        Function::new("refund")
            .trigger_event("shop/refund.requested")
            .handler(|ctx, step| async move {
                let data = &ctx.event["data"];
                let assignees: Vec<String> = data["approvers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let timeout = Duration::from_secs(data["timeout_s"].as_u64().unwrap_or(60));
                let decision = step
                    .wait_for_approval(
                        "approve-refund",
                        ApprovalRequest::new(format!("Refund {} EUR?", data["amount"]), timeout)
                            .description("Customer says the parcel never arrived.")
                            .assignees(assignees),
                    )
                    .await?;
                Ok(json!({
                    "approved": decision.approved,
                    "by": decision.by,
                    "comment": decision.comment,
                    "timed_out": decision.timed_out,
                }))
            }),
    )
}

async fn user(base: &str, admin: &Api, name: &str, role: &str) -> (String, Api) {
    signed_in_user(base, admin, name, role, PASSWORD).await
}

async fn pending_approval_of(api: &Api, run_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let (status, page) = api.get("/api/v1/approvals?status=pending").await;
        assert_eq!(status, 200, "{page}");
        if let Some(found) = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["run_id"] == run_id)
        {
            return found.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {run_id} never asked: {page}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn approvals_round_trip_through_a_function(backend: TestBackend) {
    let mut config = config_for(&backend);
    config.auth = AuthConfig {
        mode: AuthMode::Open,
        tokens: Some(TokenKeys::new(SECRET)),
        token_ttl: Duration::from_secs(600),
        ..AuthConfig::open()
    };
    let server = TestServer::start_with(config).await;
    let base = server.url.clone();
    let admin = Api::new(base.clone());
    let _app = SdkApp::start(&base, app).await;
    let (ann_id, ann) = user(&base, &admin, "ann", "member").await;
    let (_bob_id, bob) = user(&base, &admin, "bob", "member").await;
    let (_vic_id, viewer) = user(&base, &admin, "vic", "viewer").await;

    let event = admin
        .send(
            "shop/refund.requested",
            json!({"amount": 120, "approvers": [ann_id]}),
        )
        .await;
    let run_id = admin.runs_of_event(&event, 1, RUN_TIMEOUT).await.remove(0);
    let approval = pending_approval_of(&ann, &run_id).await;
    let id = approval["id"].as_str().unwrap().to_owned();
    assert_eq!(approval["title"], "Refund 120 EUR?");
    assert_eq!(approval["assignees"], json!([ann_id]));
    assert_eq!(approval["function_id"], "approvals-refund");

    // Ann is told; only approvals asked of her are hers.
    let (status, inbox) = ann
        .get("/api/v1/notifications?kind=approval_requested")
        .await;
    assert_eq!(status, 200, "{inbox}");
    assert_eq!(inbox["items"][0]["approval_id"], id.as_str(), "{inbox}");
    assert_eq!(inbox["items"][0]["run_id"], run_id.as_str());
    let (_, mine) = ann.get("/api/v1/approvals?assignee=me").await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 1, "{mine}");
    let (_, bobs) = bob.get("/api/v1/approvals?assignee=me").await;
    assert_eq!(bobs["items"], json!([]));

    // A viewer reads but cannot answer; a member who was not asked cannot either.
    let (status, seen) = viewer.get(&format!("/api/v1/approvals/{id}")).await;
    assert_eq!((status, seen["status"].clone()), (200, json!("pending")));
    let (status, refused) = viewer
        .post(&format!("/api/v1/approvals/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, 403, "{refused}");
    let (status, refused) = bob
        .post(&format!("/api/v1/approvals/{id}/approve"), &json!({}))
        .await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (403, json!("not_an_assignee")),
        "{refused}"
    );
    let (status, refused) = ann
        .post(
            &format!("/api/v1/approvals/{id}/approve"),
            &json!({"comment": "x".repeat(20_000)}),
        )
        .await;
    assert_eq!(
        (status, refused["error"]["field"].clone()),
        (400, json!("comment"))
    );

    let (status, decided) = ann
        .post(
            &format!("/api/v1/approvals/{id}/approve"),
            &json!({"comment": "parcel lost, refund"}),
        )
        .await;
    assert_eq!(status, 200, "{decided}");
    assert_eq!(decided["status"], "approved");
    assert_eq!(decided["decided_by"], ann_id.as_str());
    let run = admin.finished_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(
        run["output"],
        json!({"approved": true, "by": ann_id, "comment": "parcel lost, refund", "timed_out": false})
    );
    // The same answer again is the recorded one; a different one is refused.
    let (status, again) = ann
        .post(&format!("/api/v1/approvals/{id}/approve"), &json!({}))
        .await;
    assert_eq!(
        (status, again["comment"].clone()),
        (200, json!("parcel lost, refund"))
    );
    let (status, refused) = ann
        .post(&format!("/api/v1/approvals/{id}/reject"), &json!({}))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("approved"),
        "{refused}"
    );

    // Nobody answers in time: the run resumes with a timed-out rejection, and the
    // approval says so; answering afterwards is refused.
    let event = admin
        .send(
            "shop/refund.requested",
            json!({"amount": 5, "approvers": [ann_id], "timeout_s": 1}),
        )
        .await;
    let late_run = admin.runs_of_event(&event, 1, RUN_TIMEOUT).await.remove(0);
    let late = pending_approval_of(&ann, &late_run).await;
    let run = admin.finished_run(&late_run, RUN_TIMEOUT).await;
    assert_eq!(
        run["output"],
        json!({"approved": false, "by": null, "comment": null, "timed_out": true}),
        "{run}"
    );
    let late_id = late["id"].as_str().unwrap();
    let (_, shown) = ann.get(&format!("/api/v1/approvals/{late_id}")).await;
    assert_eq!(shown["status"], "timed_out", "{shown}");
    let (status, refused) = ann
        .post(&format!("/api/v1/approvals/{late_id}/approve"), &json!({}))
        .await;
    assert_eq!(status, 409, "{refused}");

    // Unknown and malformed ids, bad filters.
    let (status, _) = ann
        .get(&format!("/api/v1/approvals/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, 404);
    let (status, error) = ann.get("/api/v1/approvals/not-a-uuid").await;
    assert_eq!(
        (status, error["error"]["field"].clone()),
        (400, json!("id"))
    );
    let (status, error) = ann.get("/api/v1/approvals?status=maybe").await;
    assert_eq!(
        (status, error["error"]["field"].clone()),
        (400, json!("status"))
    );

    // The read model, rebuilt from the log, is the incremental one row for row.
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let (_, page) = admin.get("/api/v1/approvals?status=timed_out").await;
        if page["items"].as_array().unwrap().len() == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (incremental, rebuilt) = backend
        .incremental_and_rebuilt::<flowforge_projections::approvals::ApprovalRow>(
            "approvals",
            "approval_id",
        )
        .await;
    assert_eq!(incremental.len(), 2);
    assert_eq!(rebuilt, incremental);
}

flowforge_tests::on_both_backends!(approvals_round_trip_through_a_function);
