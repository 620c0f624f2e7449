//! Authentication and authorisation, as a client meets them over HTTP: every route of
//! the API against every kind of credential, revocation and role changes taking effect
//! at the next request, the login rate limit, and secrets kept out of the log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use flowforge_api::auth::token::TokenKeys;
use flowforge_api::auth::{AuthConfig, AuthMode};
use flowforge_api::routes::{Access, catalogue};
use flowforge_domain::access::{Role, Scope};
use flowforge_store::LogFilter;
use flowforge_tests::backend::TestBackend;
use flowforge_tests::process::{ServerProcess, TEST_ADMIN_PASSWORD, flowforge_binary};
use flowforge_tests::server::{Api, TestServer, config_for};
use reqwest::Method;
use serde_json::{Value, json};

const SECRET: &[u8] = b"auth-tests-token-secret-0123456789abcdef";
const PASSWORD: &str = "correct horse battery staple";

fn database_url(backend: &TestBackend) -> String {
    match backend {
        TestBackend::Sqlite(dir) => format!("sqlite://{}", dir.path().display()),
        TestBackend::Postgres(db) => db.url().to_owned(),
    }
}

/// `flowforge create-admin`, as an operator runs it before the first start.
fn create_admin(backend: &TestBackend, email: &str, tenant: &str) {
    create_admin_as(backend, "flowforge", email, tenant);
}

/// The same under another of its names: `flowforge-server create-admin …` or
/// `flowforge-create-admin -e … -p … -n …`.
fn create_admin_as(backend: &TestBackend, program: &str, email: &str, tenant: &str) {
    let binary = flowforge_binary().with_file_name(program);
    let mut command = std::process::Command::new(&binary);
    if program != "flowforge-create-admin" {
        command.arg("create-admin");
    }
    let output = command
        .args(["-e", email, "-p", PASSWORD, "-n", "Admin"])
        .args(["--tenant", tenant, "--database-url", &database_url(backend)])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    assert!(
        output.status.success(),
        "create-admin: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(email) && stdout.contains(tenant),
        "{stdout}"
    );
}

async fn start(backend: &TestBackend) -> TestServer {
    let mut config = config_for(backend);
    config.auth = AuthConfig {
        mode: AuthMode::Required,
        tokens: Some(TokenKeys::new(SECRET)),
        token_ttl: Duration::from_secs(600),
        ..AuthConfig::open()
    };
    TestServer::start_with(config).await
}

async fn login(base: &str, email: &str, password: &str) -> (u16, Value) {
    Api::new(base)
        .post(
            "/api/v1/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await
}

async fn token(base: &str, email: &str) -> String {
    let (status, body) = login(base, email, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

fn as_bearer(base: &str, credential: &str) -> Api {
    Api::with_bearer(base, Some(credential.to_owned()))
}

async fn call(api: &Api, method: &Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut request = api
        .http
        .request(method.clone(), format!("{}{path}", api.base));
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn create_key(admin: &Api, kind: &str, scopes: &[Scope]) -> (String, String) {
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let (status, body) = admin
        .post(
            "/api/v1/api-keys",
            &json!({"name": format!("{kind} {scopes:?}"), "kind": kind, "scopes": scopes}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let key = body["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("ff_{kind}_")), "{key}");
    assert!(key.starts_with(body["prefix"].as_str().unwrap()));
    (body["id"].as_str().unwrap().to_owned(), key)
}

enum Who {
    Nobody,
    User(Role),
    Key(BTreeSet<Scope>),
    OtherTenantAdmin,
}

struct Credential {
    name: String,
    bearer: Option<String>,
    who: Who,
}

/// How one route is called in the matrix, and what a permitted caller of the resource's
/// tenant, and the admin of another tenant, get back.
struct Case {
    path: String,
    body: Option<Value>,
    ok: u16,
    other_tenant: u16,
}

fn case(path: impl Into<String>, body: Option<Value>, ok: u16, other_tenant: u16) -> Case {
    Case {
        path: path.into(),
        body,
        ok,
        other_tenant,
    }
}

/// Every route × every kind of credential, with the exact status. The routes come from
/// the router's own catalogue: a new route without an entry here fails this test.
async fn every_route_answers_every_credential_exactly(backend: TestBackend) {
    create_admin(&backend, "admin@acme.test", "acme");
    create_admin_as(
        &backend,
        "flowforge-create-admin",
        "admin@other.test",
        "other",
    );
    let server = start(&backend).await;
    let base = server.url.clone();
    let admin = as_bearer(&base, &token(&base, "admin@acme.test").await);

    // Users of each role, and the resources the matrix reads.
    let mut viewer_id = String::new();
    for (email, role) in [
        ("viewer@acme.test", "viewer"),
        ("member@acme.test", "member"),
    ] {
        let (status, user) = admin
            .post(
                "/api/v1/users",
                &json!({"email": email, "name": role, "role": role, "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, 201, "{user}");
        assert_eq!(user["role"], role);
        if role == "viewer" {
            viewer_id = user["id"].as_str().unwrap().to_owned();
        }
    }
    let (status, hook) = admin
        .post("/api/v1/webhooks", &json!({"name": "matrix"}))
        .await;
    assert_eq!(status, 201, "{hook}");
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    let (status, sent) = admin
        .post(
            "/api/v1/events",
            &json!({"name": "matrix/seed", "data": {}}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let event_id = sent["ids"][0].as_str().unwrap().to_owned();
    let (doomed_key, _) = create_key(&admin, "live", &[Scope::RunsRead]).await;
    let missing = uuid::Uuid::now_v7();
    let (status, task) = admin
        .post("/api/v1/tasks", &json!({"title": "matrix"}))
        .await;
    assert_eq!(status, 201, "{task}");
    let task_id = task["id"].as_str().unwrap().to_owned();
    let (status, bot) = admin
        .post("/api/v1/agents", &json!({"name": "matrix-bot"}))
        .await;
    assert_eq!(status, 201, "{bot}");
    let agent_id = bot["id"].as_str().unwrap().to_owned();
    let (_, doomed) = admin
        .post("/api/v1/agents", &json!({"name": "doomed-bot"}))
        .await;
    let doomed_agent = doomed["id"].as_str().unwrap().to_owned();
    let (status, comment) = admin
        .post(
            "/api/v1/comments",
            &json!({"target": {"kind": "task", "id": task_id}, "body": "seed"}),
        )
        .await;
    assert_eq!(status, 201, "{comment}");
    let comment_id = comment["id"].as_str().unwrap().to_owned();

    let mut credentials = vec![
        Credential {
            name: "no credentials".into(),
            bearer: None,
            who: Who::Nobody,
        },
        Credential {
            name: "expired token".into(),
            bearer: Some({
                let now = chrono::Utc::now();
                let viewer: uuid::Uuid = viewer_id.parse().unwrap();
                TokenKeys::new(SECRET)
                    .issue(
                        viewer,
                        "acme",
                        uuid::Uuid::now_v7(),
                        now - chrono::Duration::minutes(20),
                        now - chrono::Duration::minutes(5),
                    )
                    .unwrap()
            }),
            who: Who::Nobody,
        },
        Credential {
            name: "tampered token".into(),
            bearer: Some({
                let good = token(&base, "admin@acme.test").await;
                let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
                // Another tenant in the claims, signature left as it was.
                let claims = String::from_utf8(base64_url_decode(&parts[1]))
                    .unwrap()
                    .replace("\"acme\"", "\"other\"");
                parts[1] = base64_url_encode(claims.as_bytes());
                parts.join(".")
            }),
            who: Who::Nobody,
        },
        Credential {
            name: "unknown API key".into(),
            bearer: Some(format!("ff_live_{}", "A".repeat(44))),
            who: Who::Nobody,
        },
    ];
    for (email, role) in [
        ("viewer@acme.test", Role::Viewer),
        ("member@acme.test", Role::Member),
        ("admin@acme.test", Role::Admin),
    ] {
        credentials.push(Credential {
            name: format!("{role} token"),
            bearer: Some(token(&base, email).await),
            who: Who::User(role),
        });
    }
    for scope in Scope::ALL {
        let (_, key) = create_key(&admin, "live", &[scope]).await;
        credentials.push(Credential {
            name: format!("live key with only {scope}"),
            bearer: Some(key),
            who: Who::Key([scope].into()),
        });
    }
    let reads: Vec<Scope> = Scope::ALL.into_iter().filter(|s| s.is_read()).collect();
    let (_, ro) = create_key(&admin, "ro", &reads).await;
    credentials.push(Credential {
        name: "ro key with every read scope".into(),
        bearer: Some(ro),
        who: Who::Key(reads.iter().copied().collect()),
    });
    let test_scopes = [Scope::EventsSend, Scope::RunsRead];
    let (_, test) = create_key(&admin, "test", &test_scopes).await;
    credentials.push(Credential {
        name: "test key with events:send, runs:read".into(),
        bearer: Some(test),
        who: Who::Key(test_scopes.into()),
    });
    credentials.push(Credential {
        name: "another tenant's admin".into(),
        bearer: Some(token(&base, "admin@other.test").await),
        who: Who::OtherTenantAdmin,
    });

    let mut n = 0usize;
    let mut cases = move |method: &Method, path: &str| -> Option<Case> {
        n += 1;
        let m = method.as_str();
        Some(match (m, path) {
            ("GET", "/health")
            | ("GET", "/ready")
            | ("GET", "/metrics")
            | ("GET", "/api/v1/openapi.json") => case(path, None, 200, 200),
            ("POST", "/e/{key}") => case("/e/not-a-key", Some(json!({"name": "x"})), 401, 401),
            ("POST", "/fn/register") => case(path, Some(json!({})), 400, 400),
            ("POST", "/v0/gql") => case(path, Some(json!({"query": "{ __typename }"})), 200, 200),
            ("GET", "/v1/events") => case(path, None, 200, 200),
            ("GET", "/v0/runs/{id}/batch") => {
                case(format!("/v0/runs/{missing}/batch"), None, 404, 404)
            }
            ("GET", "/v0/runs/{id}/actions") => {
                case(format!("/v0/runs/{missing}/actions"), None, 404, 404)
            }
            ("POST", "/api/v1/auth/login") => case(path, Some(json!({})), 400, 400),
            ("POST", "/api/v1/auth/logout") => return None, // last, see below
            ("GET", "/api/v1/auth/me") => case(path, None, 200, 200),
            ("GET", "/api/v1/users") => case(path, None, 200, 200),
            ("POST", "/api/v1/users") => case(
                path,
                Some(
                    json!({"email": format!("new-{n}@matrix.test"), "name": "New", "role": "viewer", "password": PASSWORD}),
                ),
                201,
                201,
            ),
            ("GET", "/api/v1/users/{id}") => {
                case(format!("/api/v1/users/{viewer_id}"), None, 200, 404)
            }
            ("PATCH", "/api/v1/users/{id}") => case(
                format!("/api/v1/users/{viewer_id}"),
                Some(json!({"role": "viewer"})),
                200,
                404,
            ),
            ("GET", "/api/v1/api-keys") => case(path, None, 200, 200),
            ("POST", "/api/v1/api-keys") => case(
                path,
                Some(json!({"name": "made in the matrix", "kind": "ro", "scopes": ["runs:read"]})),
                201,
                201,
            ),
            ("DELETE", "/api/v1/api-keys/{id}") => {
                case(format!("/api/v1/api-keys/{doomed_key}"), None, 200, 404)
            }
            ("GET", "/api/v1/signing-keys") => case(path, None, 200, 200),
            // Exactly two callers of acme may: the first key signs at once, the second
            // waits as next (a third would be refused: one next key at a time).
            ("POST", "/api/v1/signing-keys") => case(path, None, 201, 201),
            // Whether a next key waits depends on the order of the calls; a grace
            // period out of range is refused the same way every time.
            ("POST", "/api/v1/signing-keys/rotate") => {
                case(path, Some(json!({"grace_period_seconds": -1})), 400, 400)
            }
            ("DELETE", "/api/v1/signing-keys/{id}") => {
                case(format!("/api/v1/signing-keys/{missing}"), None, 404, 404)
            }
            ("POST", "/api/v1/events") => case(
                path,
                Some(json!({"name": "matrix/ping", "data": {}})),
                200,
                200,
            ),
            ("GET", "/api/v1/events") => case(path, None, 200, 200),
            ("GET", "/api/v1/events/{id}") => {
                case(format!("/api/v1/events/{event_id}"), None, 200, 404)
            }
            ("GET", "/api/v1/apps") | ("GET", "/api/v1/functions") => case(path, None, 200, 200),
            ("PUT", "/api/v1/apps/{id}/owner") => case(
                "/api/v1/apps/no-such-app/owner",
                Some(json!({"owner": null})),
                404,
                404,
            ),
            ("GET", "/api/v1/functions/{id}") => case("/api/v1/functions/nope", None, 404, 404),
            ("POST", "/api/v1/functions/{id}/invoke") => {
                case("/api/v1/functions/nope/invoke", Some(json!({})), 404, 404)
            }
            ("GET", "/api/v1/runs") => case(path, None, 200, 200),
            ("GET", "/api/v1/runs/{id}")
            | ("GET", "/api/v1/runs/{id}/events")
            | ("GET", "/api/v1/runs/{id}/stream")
            | ("POST", "/api/v1/runs/{id}/cancel")
            | ("POST", "/api/v1/runs/{id}/replay") => {
                case(path.replace("{id}", &missing.to_string()), None, 404, 404)
            }
            ("POST", "/api/v1/webhooks") => {
                case(path, Some(json!({"name": format!("hook-{n}")})), 201, 201)
            }
            ("GET", "/api/v1/webhooks") => case(path, None, 200, 200),
            ("GET", "/api/v1/webhooks/{id}") => {
                case(format!("/api/v1/webhooks/{hook_id}"), None, 200, 404)
            }
            ("DELETE", "/api/v1/webhooks/{id}") => {
                case(format!("/api/v1/webhooks/{missing}"), None, 404, 404)
            }
            ("POST", "/hooks/{id}") => case(format!("/hooks/{missing}"), Some(json!({})), 404, 404),
            ("POST", "/api/v1/agents") => {
                case(path, Some(json!({"name": format!("bot-{n}")})), 201, 201)
            }
            ("GET", "/api/v1/agents") => case(path, None, 200, 200),
            ("GET", "/api/v1/agents/{id}") => {
                case(format!("/api/v1/agents/{agent_id}"), None, 200, 404)
            }
            ("PATCH", "/api/v1/agents/{id}") => case(
                format!("/api/v1/agents/{agent_id}"),
                Some(json!({"status": "busy"})),
                200,
                404,
            ),
            ("PUT", "/api/v1/agents/{id}/skills") => case(
                format!("/api/v1/agents/{agent_id}/skills"),
                Some(json!({"skills": ["code-review"]})),
                200,
                404,
            ),
            // Deleting is repeatable (the agent stays in history), so every caller
            // allowed to may.
            ("DELETE", "/api/v1/agents/{id}") => {
                case(format!("/api/v1/agents/{doomed_agent}"), None, 200, 404)
            }
            ("POST", "/api/v1/tasks") => {
                case(path, Some(json!({"title": format!("task {n}")})), 201, 201)
            }
            ("GET", "/api/v1/tasks") => case(path, None, 200, 200),
            ("GET", "/api/v1/approvals") => case(path, None, 200, 200),
            // An endless stream for a real task: asked of a missing one, it is a 404.
            ("GET", "/api/v1/tasks/{id}/stream") => case(
                path.replace("{id}", "0192d0c4-0000-7000-8000-000000000000"),
                None,
                404,
                404,
            ),
            ("GET", "/api/v1/skills") => case(path, None, 200, 200),
            // Unknown skills and functions: 404 once access is granted; bodies that
            // are refused before any source is asked: 400.
            ("GET", "/api/v1/skills/{id}")
            | ("DELETE", "/api/v1/skills/{id}")
            | ("POST", "/api/v1/skills/{id}/refresh") => {
                case(path.replace("{id}", "no-such-skill"), None, 404, 404)
            }
            ("PATCH", "/api/v1/skills/{id}") => case(
                path.replace("{id}", "no-such-skill"),
                Some(json!({"description": "d"})),
                404,
                404,
            ),
            ("POST", "/api/v1/skills") => case(
                path,
                Some(json!({"name": "Bad Name", "description": "d"})),
                400,
                400,
            ),
            ("POST", "/api/v1/skills/upload") => case(path, Some(json!({"files": []})), 400, 400),
            ("GET", "/api/v1/skills/marketplace/search") => {
                case(format!("{path}?q="), None, 400, 400)
            }
            ("GET", "/api/v1/skills/marketplace/preview") => {
                case(format!("{path}?source=bad"), None, 400, 400)
            }
            ("POST", "/api/v1/skills/marketplace/import") => {
                case(path, Some(json!({"source": "bad"})), 400, 400)
            }
            ("GET", "/api/v1/functions/{id}/skills") => {
                case(path.replace("{id}", "no-such-function"), None, 404, 404)
            }
            ("PUT", "/api/v1/functions/{id}/skills") => case(
                path.replace("{id}", "no-such-function"),
                Some(json!({"skills": []})),
                404,
                404,
            ),
            // No run has asked for one: the answer after access is granted is 404.
            ("GET", "/api/v1/approvals/{id}") => case(
                path.replace("{id}", "0192d0c4-0000-7000-8000-000000000000"),
                None,
                404,
                404,
            ),
            ("POST", "/api/v1/approvals/{id}/approve")
            | ("POST", "/api/v1/approvals/{id}/reject") => case(
                path.replace("{id}", "0192d0c4-0000-7000-8000-000000000000"),
                Some(json!({})),
                404,
                404,
            ),
            ("GET", "/api/v1/notifications") | ("GET", "/api/v1/notifications/unread-count") => {
                case(path, None, 200, 200)
            }
            ("POST", "/api/v1/notifications/read") | ("POST", "/api/v1/notifications/archive") => {
                case(
                    path,
                    Some(json!({"notification_ids": ["nothing"]})),
                    200,
                    200,
                )
            }
            ("POST", "/api/v1/notifications/read-all") => case(path, None, 200, 200),
            ("POST", "/api/v1/comments") => case(
                path,
                Some(json!({"target": {"kind": "task", "id": task_id}, "body": "hello"})),
                201,
                404,
            ),
            ("GET", "/api/v1/comments") => {
                case(format!("/api/v1/comments?task={task_id}"), None, 200, 404)
            }
            // Editing and deleting are the author's: a comment nobody wrote is missing
            // for everyone allowed to try.
            ("PATCH", "/api/v1/comments/{id}") => case(
                format!("/api/v1/comments/{missing}"),
                Some(json!({"body": "x"})),
                404,
                404,
            ),
            ("DELETE", "/api/v1/comments/{id}") => {
                case(format!("/api/v1/comments/{missing}"), None, 404, 404)
            }
            ("POST", "/api/v1/comments/{id}/reactions") => case(
                format!("/api/v1/comments/{comment_id}/reactions"),
                Some(json!({"emoji": "+1"})),
                200,
                404,
            ),
            ("DELETE", "/api/v1/comments/{id}/reactions/{emoji}") => case(
                format!("/api/v1/comments/{comment_id}/reactions/+1"),
                None,
                200,
                404,
            ),
            ("GET", "/api/v1/tasks/{id}")
            | ("GET", "/api/v1/tasks/{id}/history")
            | ("GET", "/api/v1/tasks/{id}/timeline") => {
                case(path.replace("{id}", &task_id), None, 200, 404)
            }
            ("PATCH", "/api/v1/tasks/{id}") => case(
                format!("/api/v1/tasks/{task_id}"),
                Some(json!({"priority": "high"})),
                200,
                404,
            ),
            _ => panic!("route {m} {path} has no entry in the access matrix: add one"),
        })
    };

    // The published API description and the router list the same routes.
    let (status, document) = Api::new(base.clone()).get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");
    let described: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = catalogue()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .collect();
    assert_eq!(described, served, "openapi.json and the router disagree");
    for route in catalogue() {
        let operation = &document["paths"][route.path][route.method.as_str().to_lowercase()];
        if let Access::Scope(scope) = route.access {
            assert_eq!(
                operation["x-flowforge-access"]["scope"],
                scope.as_str(),
                "{}",
                route.path
            );
        }
    }

    let mut failures = Vec::new();
    let mut checked = 0;
    for route in catalogue() {
        for credential in &credentials {
            let Some(case) = cases(&route.method, route.path) else {
                continue;
            };
            let expected = match (route.access, &credential.who) {
                (Access::Public | Access::Webhook | Access::EventKey, _) => case.ok,
                (_, Who::Nobody) => 401,
                (_, Who::OtherTenantAdmin) => case.other_tenant,
                (Access::Authenticated, _) => case.ok,
                (Access::Scope(scope) | Access::Protocol(scope), Who::User(role)) => {
                    if role.grants(scope) { case.ok } else { 403 }
                }
                (Access::Scope(scope) | Access::Protocol(scope), Who::Key(scopes)) => {
                    if scopes.contains(&scope) || scopes.contains(&Scope::Admin) {
                        case.ok
                    } else {
                        403
                    }
                }
            };
            let api = match &credential.bearer {
                Some(bearer) => as_bearer(&base, bearer),
                None => Api::new(base.clone()),
            };
            let (status, body) = call(&api, &route.method, &case.path, case.body.as_ref()).await;
            checked += 1;
            if status != expected {
                failures.push(format!(
                    "{} {} as {}: expected {expected}, got {status} {body}",
                    route.method, case.path, credential.name
                ));
            }
            if status == 401
                && route.access != Access::EventKey
                && route.path != "/api/v1/auth/login"
            {
                // Refusals say nothing about why.
                assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
            }
        }
    }
    // Logging out ends the session of the token sent; keys have no session.
    for credential in &credentials {
        let api = match &credential.bearer {
            Some(bearer) => as_bearer(&base, bearer),
            None => Api::new(base.clone()),
        };
        let expected = match credential.who {
            Who::Nobody => 401,
            Who::User(_) | Who::OtherTenantAdmin => 204,
            Who::Key(_) => 400,
        };
        let (status, body) = call(&api, &Method::POST, "/api/v1/auth/logout", None).await;
        checked += 1;
        if status != expected {
            failures.push(format!(
                "POST /api/v1/auth/logout as {}: expected {expected}, got {status} {body}",
                credential.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} calls answered wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{checked} route × credential calls answered as expected");
    server.stop().await;
}

fn base64_url_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

fn base64_url_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Revoking a key, disabling a user, changing a role and logging out each act on the
/// very next request.
async fn identity_changes_take_effect_at_the_next_request(backend: TestBackend) {
    create_admin_as(&backend, "flowforge-server", "admin@acme.test", "acme");
    let server = start(&backend).await;
    let base = server.url.clone();
    let admin = as_bearer(&base, &token(&base, "admin@acme.test").await);

    let (key_id, key) = create_key(&admin, "live", &[Scope::RunsRead]).await;
    let (unused_id, _) = create_key(&admin, "ro", &[Scope::RunsRead]).await;
    let app = as_bearer(&base, &key);
    assert_eq!(app.get("/api/v1/runs").await.0, 200);
    // The listing comes from a read model (the key itself is checked against the log):
    // wait for it to show both keys.
    let deadline = Instant::now() + Duration::from_secs(10);
    let items = loop {
        let (status, listed) = admin.get("/api/v1/api-keys").await;
        assert_eq!(status, 200);
        let items = listed["items"].as_array().unwrap().clone();
        if items.len() >= 2 {
            break items;
        }
        assert!(Instant::now() < deadline, "keys not listed: {listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let listed = |id: &str| items.iter().find(|k| k["id"] == id).unwrap().clone();
    let (used, unused) = (listed(&key_id), listed(&unused_id));
    assert!(
        used.get("key").is_none(),
        "the key is shown once, at creation"
    );
    assert!(used["last_used_at"].is_string(), "{used}");
    assert!(unused["last_used_at"].is_null(), "{unused}");
    assert_eq!(used["scopes"], json!(["runs:read"]));
    assert_eq!(unused["kind"], "ro");
    let (status, revoked) = call(
        &admin,
        &Method::DELETE,
        &format!("/api/v1/api-keys/{key_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    assert_eq!(
        app.get("/api/v1/runs").await.0,
        401,
        "a revoked key stops at once"
    );

    let (status, _) = admin
        .post(
            "/api/v1/users",
            &json!({"email": "ada@acme.test", "name": "Ada", "role": "viewer", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 201);
    let (_, ada) = login(&base, "Ada@ACME.test", PASSWORD).await;
    let ada_id = ada["user"]["id"].as_str().unwrap().to_owned();
    let ada = as_bearer(&base, ada["access_token"].as_str().unwrap());
    let (status, me) = ada.get("/api/v1/auth/me").await;
    assert_eq!(status, 200);
    assert_eq!(
        (me["tenant"].as_str(), me["role"].as_str()),
        (Some("acme"), Some("viewer"))
    );
    let event = json!({"name": "x/y", "data": {}});
    assert_eq!(
        ada.post("/api/v1/events", &event).await.0,
        403,
        "viewers read only"
    );

    let promote = json!({"role": "member"});
    let (status, _) = call(
        &admin,
        &Method::PATCH,
        &format!("/api/v1/users/{ada_id}"),
        Some(&promote),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        ada.post("/api/v1/events", &event).await.0,
        200,
        "the new role acts at once"
    );

    let disable = json!({"disabled": true});
    let (status, user) = call(
        &admin,
        &Method::PATCH,
        &format!("/api/v1/users/{ada_id}"),
        Some(&disable),
    )
    .await;
    assert_eq!((status, &user["disabled"]), (200, &json!(true)));
    assert_eq!(
        ada.get("/api/v1/runs").await.0,
        401,
        "a disabled user stops at once"
    );
    let (status, refused) = login(&base, "ada@acme.test", PASSWORD).await;
    assert_eq!(status, 401);
    assert_eq!(refused["error"]["message"], "invalid email or password");

    let enable = json!({"disabled": false});
    call(
        &admin,
        &Method::PATCH,
        &format!("/api/v1/users/{ada_id}"),
        Some(&enable),
    )
    .await;
    let ada = as_bearer(&base, &token(&base, "ada@acme.test").await);
    assert_eq!(ada.get("/api/v1/runs").await.0, 200);
    assert_eq!(
        call(&ada, &Method::POST, "/api/v1/auth/logout", None)
            .await
            .0,
        204
    );
    assert_eq!(
        ada.get("/api/v1/runs").await.0,
        401,
        "a logged-out token stops at once"
    );

    // Nobody grants what they do not hold, and bad input names its field.
    let (status, body) = admin
        .post(
            "/api/v1/api-keys",
            &json!({"name": "k", "kind": "ro", "scopes": ["events:send"]}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("scopes")),
        "{body}"
    );
    let (status, body) = admin
        .post(
            "/api/v1/users",
            &json!({"email": "b@acme.test", "name": "B", "role": "owner", "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("role")),
        "{body}"
    );
    let (status, body) = admin
        .post(
            "/api/v1/users",
            &json!({"email": "b@acme.test", "name": "B", "role": "viewer", "password": "short"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("password")),
        "{body}"
    );
    let (status, body) = admin
        .post("/api/v1/users", &json!({"email": "admin@acme.test", "name": "Again", "role": "viewer", "password": PASSWORD}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        login(&base, "admin@acme.test", PASSWORD).await.0,
        200,
        "a refused duplicate leaves the existing user's password alone"
    );
    server.stop().await;
}

/// Failed logins are limited per account, answered alike whether or not the account
/// exists, and cost about the same time either way.
async fn failed_logins_are_limited_and_alike(backend: TestBackend) {
    create_admin(&backend, "admin@acme.test", "acme");
    let server = start(&backend).await;
    let base = server.url.clone();

    let mut times: HashMap<&str, Vec<Duration>> = HashMap::new();
    for round in 0..4 {
        for (label, email) in [
            ("exists", "admin@acme.test"),
            ("unknown", "ghost@acme.test"),
        ] {
            let started = Instant::now();
            let (status, body) = login(&base, email, &format!("wrong password {round}")).await;
            times.entry(label).or_default().push(started.elapsed());
            assert_eq!(status, 401);
            assert_eq!(
                body["error"]["message"], "invalid email or password",
                "{body}"
            );
        }
    }
    let median = |label: &str| {
        let mut t = times[label].clone();
        t.sort();
        t[t.len() / 2]
    };
    let (exists, unknown) = (median("exists"), median("unknown"));
    // Both verify an argon2id hash; without the decoy, `unknown` would answer in
    // microseconds and tell an attacker which emails have accounts.
    assert!(
        unknown * 3 > exists && exists * 3 > unknown,
        "login time depends on whether the account exists: {exists:?} vs {unknown:?}"
    );

    // The fifth failure locks the account for a while, even with the right password.
    let (status, _) = login(&base, "admin@acme.test", "wrong again").await;
    assert_eq!(status, 401);
    let (status, body) = login(&base, "admin@acme.test", PASSWORD).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_attempts");
    server.stop().await;

    // The account's limit is kept in its stream, not in the process: a restarted
    // server (another process behind a load balancer alike) still refuses it.
    let server = start(&backend).await;
    let (status, body) = login(&server.url, "admin@acme.test", PASSWORD).await;
    assert_eq!(status, 429, "{body}");
    // Another account from the same client is not locked by it.
    let (status, _) = login(&server.url, "ghost@acme.test", "still wrong").await;
    assert_eq!(status, 401);
    server.stop().await;

    // Every failure for the existing account is in the log, without the password tried.
    let store = backend.store().await;
    let everything = store.read_all(0, 100_000, &LogFilter::all()).await.unwrap();
    let failed: Vec<_> = everything
        .events
        .iter()
        .filter(|e| e.event_type == "auth.login_failed")
        .collect();
    assert_eq!(
        failed.len(),
        5,
        "one event per failed login of the real account"
    );
    assert!(failed.iter().all(|e| {
        let payload = e.payload.get();
        payload.contains("wrong_password")
            && !payload.contains("wrong password")
            && !payload.contains("wrong again")
    }));
}

/// Passwords, their hashes and API keys never reach the log or the process's own logs.
async fn secrets_stay_out_of_the_log_and_the_logs(backend: TestBackend) {
    create_admin(&backend, "admin@acme.test", "acme");
    let server = start(&backend).await;
    let base = server.url.clone();
    let admin = as_bearer(&base, &token(&base, "admin@acme.test").await);
    let (_, key) = create_key(&admin, "live", &[Scope::EventsSend]).await;
    let sender = as_bearer(&base, &key);
    assert_eq!(
        sender
            .post("/api/v1/events", &json!({"name": "a/b", "data": {}}))
            .await
            .0,
        200
    );
    // An Inngest SDK sends with the key in the path.
    let (status, body) = Api::new(base.clone())
        .post(&format!("/e/{key}"), &json!({"name": "a/c", "data": {}}))
        .await;
    assert_eq!(status, 200, "{body}");
    login(&base, "admin@acme.test", "a wrong password here").await;
    server.stop().await;

    let store = backend.store().await;
    let everything = store.read_all(0, 100_000, &LogFilter::all()).await.unwrap();
    let types: BTreeSet<&str> = everything
        .events
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    for expected in [
        "tenant.created",
        "user.created",
        "auth.logged_in",
        "auth.login_failed",
        "api_key.created",
    ] {
        assert!(
            types.contains(expected),
            "{expected} missing from {types:?}"
        );
    }
    let key_hash = flowforge_api::auth::keys::hash(&key);
    for event in &everything.events {
        let text = format!("{} {:?}", event.payload.get(), event.metadata);
        for secret in [
            PASSWORD,
            "a wrong password here",
            key.as_str(),
            key_hash.as_str(),
            "$argon2",
        ] {
            assert!(
                !text.contains(secret),
                "{} holds a secret: {text}",
                event.event_type
            );
        }
    }
    let sent: Vec<_> = everything
        .events
        .iter()
        .filter(|e| e.event_type == "event.received" && e.payload.get().contains("\"a/c\""))
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].tenant_id(),
        "acme",
        "the key's tenant, not the default one"
    );
}

flowforge_tests::on_both_backends!(
    every_route_answers_every_credential_exactly,
    identity_changes_take_effect_at_the_next_request,
    failed_logins_are_limited_and_alike,
    secrets_stay_out_of_the_log_and_the_logs
);

/// The server's own logs, at debug level, hold no password, token or key either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_the_tracing_output() {
    let Some(backend) = TestBackend::postgres().await else {
        return;
    };
    let TestBackend::Postgres(db) = &backend else {
        return;
    };
    let mut server = ServerProcess::serving(db.url());
    server.set_env("FLOWFORGE_LOG", "debug");
    // Starting provisions an admin (create-admin), logs in and creates an API key.
    server.start().await;
    let key = server.api_key().unwrap().to_owned();
    let (status, _) = server
        .api()
        .post("/api/v1/events", &json!({"name": "a/b", "data": {}}))
        .await;
    assert_eq!(status, 200);
    let (status, me) = server.api().get("/api/v1/auth/me").await;
    assert_eq!(status, 200);
    assert_eq!(me["actor"]["kind"], "api_key");
    let (status, _) = login(&server.url, "nobody@tests.invalid", "a guessed password").await;
    assert_eq!(status, 401);
    let (status, _) = Api::new(server.url.clone()).get("/api/v1/runs").await;
    assert_eq!(status, 401);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("DEBUG"), "the server logged at debug level");
    assert!(
        log.contains("request not authenticated"),
        "refusals are logged"
    );
    for secret in [
        TEST_ADMIN_PASSWORD,
        "a guessed password",
        key.as_str(),
        "$argon2",
    ] {
        assert!(
            !log.contains(secret),
            "the server log holds a secret ({secret})"
        );
    }
    assert!(!log.contains("eyJ"), "the server log holds a token");
}
