//! The task board as a user drives it over HTTP: numbering under concurrency, the
//! status rules, the board's filters and counts, history with actors and time travel
//! from the log, roles, and the read model rebuilt equal to the incremental one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use flowforge_tests::backend::TestBackend;
use flowforge_tests::server::{Api, TestServer};
use serde_json::{Value, json};

async fn create(api: &Api, body: Value) -> Value {
    let (status, task) = api.post("/api/v1/tasks", &body).await;
    assert_eq!(status, 201, "{task}");
    task
}

async fn patch(api: &Api, id: &str, body: Value) -> (u16, Value) {
    let response = api
        .http
        .patch(format!("{}/api/v1/tasks/{id}", api.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The board once it shows `count` tasks for `query`.
async fn board(api: &Api, query: &str, count: usize) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, page) = api.get(&format!("/api/v1/tasks?{query}")).await;
        assert_eq!(status, 200, "{page}");
        if page["items"].as_array().unwrap().len() == count {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the board never showed {count} tasks for `{query}`: {page}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn fifty_concurrent_creates_get_ff_1_to_ff_50(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let mut creators = Vec::new();
    for n in 0..50 {
        let api = api.clone();
        creators.push(tokio::spawn(async move {
            create(&api, json!({"title": format!("task {n}")})).await
        }));
    }
    let mut keys = BTreeSet::new();
    let mut numbers = Vec::new();
    for creator in creators {
        let task = creator.await.unwrap();
        keys.insert(task["key"].as_str().unwrap().to_owned());
        numbers.push(task["number"].as_u64().unwrap());
    }
    numbers.sort();
    assert_eq!(
        numbers,
        (1..=50).collect::<Vec<u64>>(),
        "no gap, no duplicate"
    );
    assert_eq!(keys.len(), 50);
    assert!(keys.contains("FF-1") && keys.contains("FF-50"));
    // The key and the id name the same task.
    let page = board(&api, "limit=500", 50).await;
    let seventh = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == "FF-7")
        .unwrap()
        .clone();
    let (_, by_key) = api.get("/api/v1/tasks/FF-7").await;
    let (_, by_id) = api
        .get(&format!(
            "/api/v1/tasks/{}",
            seventh["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(by_key, by_id);
    assert_eq!(by_key["title"], seventh["title"]);
}

async fn status_moves_follow_the_rules_and_refusals_name_both_statuses(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let task = create(&api, json!({"title": "Ship it"})).await;
    let key = task["key"].as_str().unwrap();
    assert_eq!(task["status"], "todo");

    let (status, refused) = patch(&api, key, json!({"status": "done"})).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["field"], "status");
    assert_eq!(
        refused["error"]["message"],
        "a task cannot go from todo to done"
    );
    let (status, moved) = patch(&api, key, json!({"status": "in_progress"})).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["status"], "in_progress");

    // A parent waits for its open sub-tasks.
    let child = create(&api, json!({"title": "Write the notes", "parent": key})).await;
    assert_eq!(child["parent_id"], task["id"]);
    board(&api, &format!("parent={key}"), 1).await;
    let (status, refused) = patch(&api, key, json!({"status": "done"})).await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 open sub-task"),
        "{refused}"
    );
    let child_key = child["key"].as_str().unwrap();
    patch(&api, child_key, json!({"status": "cancelled"})).await;
    board(&api, &format!("parent={key}&status=cancelled"), 1).await;
    let (status, done) = patch(&api, key, json!({"status": "done"})).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "done");

    // Bad input names the field.
    for (body, field) in [
        (json!({"status": "finished"}), "status"),
        (json!({"priority": "asap"}), "priority"),
        (json!({"title": ""}), "title"),
        (json!({"labels": "x"}), "labels"),
        (json!({"colour": "red"}), "colour"),
        (
            json!({"assignee": {"kind": "robot", "id": "x"}}),
            "assignee",
        ),
    ] {
        let (status, error) = patch(&api, key, body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
    }
    let (status, error) = api
        .post("/api/v1/tasks", &json!({"title": "x", "parent": "FF-999"}))
        .await;
    assert_eq!(status, 404, "{error}");
    let (status, error) = api.get("/api/v1/tasks/not-a-task").await;
    assert_eq!(
        (status, error["error"]["field"].clone()),
        (400, json!("id"))
    );
}

async fn the_board_filters_searches_and_counts(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let (status, bot) = api
        .post(
            "/api/v1/agents",
            &json!({"name": "fixer", "model": "claude-sonnet"}),
        )
        .await;
    assert_eq!(status, 201, "{bot}");
    let agent = bot["id"].as_str().unwrap().to_owned();
    let (status, error) = api
        .post(
            "/api/v1/tasks",
            &json!({"title": "x", "assignee": {"kind": "agent", "id": uuid::Uuid::now_v7()}}),
        )
        .await;
    assert_eq!(
        (status, error["error"]["field"].clone()),
        (400, json!("assignee")),
        "{error}"
    );
    create(
        &api,
        json!({"title": "Fix the login page", "labels": ["bug", "web"], "priority": "urgent",
               "assignee": {"kind": "agent", "id": agent}}),
    )
    .await;
    create(
        &api,
        json!({"title": "Write release notes", "description": "Mention the LOGIN fix", "labels": ["docs"]}),
    )
    .await;
    let third = create(&api, json!({"title": "Plan Q3", "priority": "low"})).await;
    patch(
        &api,
        third["key"].as_str().unwrap(),
        json!({"status": "blocked"}),
    )
    .await;

    // The read model follows the log: once the last change shows, all of it does.
    board(&api, "status=blocked", 1).await;
    let all = board(&api, "", 3).await;
    assert_eq!(all["counts"]["todo"], 2);
    assert_eq!(all["counts"]["blocked"], 1);
    assert_eq!(all["counts"]["done"], 0);
    // Column order, most urgent first within a column.
    let titles: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        ["Fix the login page", "Write release notes", "Plan Q3"]
    );
    let found = board(&api, "q=login", 2).await;
    assert_eq!(
        found["items"].as_array().unwrap().len(),
        2,
        "title and description, any case"
    );
    board(&api, "q=login+page", 1).await;
    let bugs = board(&api, "label=bug", 1).await;
    assert_eq!(bugs["items"][0]["labels"], json!(["bug", "web"]));
    board(&api, &format!("assignee={agent}"), 1).await;
    board(&api, "assignee=none", 2).await;
    board(&api, "priority=low", 1).await;
    board(&api, "status=todo,blocked", 3).await;
    let blocked = board(&api, "status=blocked", 1).await;
    assert_eq!(
        blocked["counts"]["todo"], 2,
        "counts ignore the status filter"
    );
    let (status, error) = api.get("/api/v1/tasks?status=later").await;
    assert_eq!(
        (status, error["error"]["field"].clone()),
        (400, json!("status"))
    );
}

async fn history_names_the_actors_and_as_of_shows_the_task_as_it_was(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let task = create(&api, json!({"title": "Draft", "priority": "low"})).await;
    let key = task["key"].as_str().unwrap();
    patch(&api, key, json!({"title": "Final", "priority": "high"})).await;
    patch(&api, key, json!({"status": "in_progress"})).await;

    let (status, history) = api.get(&format!("/api/v1/tasks/{key}/history")).await;
    assert_eq!(status, 200, "{history}");
    let items = history["items"].as_array().unwrap();
    let types: Vec<&str> = items
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["task.created", "task.edited", "task.status_changed"]
    );
    assert!(
        items.iter().all(|e| e["actor"]["kind"] == "user"),
        "{history}"
    );
    assert_eq!(items[2]["payload"]["from"], "todo");

    let after_create = items[0]["global_position"].as_u64().unwrap();
    let (_, then) = api
        .get(&format!("/api/v1/tasks/{key}?as_of={after_create}"))
        .await;
    assert_eq!(
        (then["title"].as_str(), then["priority"].as_str()),
        (Some("Draft"), Some("low"))
    );
    assert_eq!(then["status"], "todo");
    let (_, now) = api.get(&format!("/api/v1/tasks/{key}")).await;
    assert_eq!(
        (now["title"].as_str(), now["status"].as_str()),
        (Some("Final"), Some("in_progress"))
    );
    let at = items[1]["recorded_at"].as_str().unwrap();
    let (_, edited) = api
        .get(&format!("/api/v1/tasks/{key}?as_of={}", urlencode(at)))
        .await;
    assert_eq!(
        (edited["title"].as_str(), edited["status"].as_str()),
        (Some("Final"), Some("todo"))
    );
    let before = after_create - 1;
    let (status, _) = api
        .get(&format!("/api/v1/tasks/{key}?as_of={before}"))
        .await;
    assert_eq!(status, 404, "the task did not exist at position {before}");
    let (status, error) = api
        .get(&format!("/api/v1/tasks/{key}?as_of=yesterday"))
        .await;
    assert_eq!(
        (status, error["error"]["field"].clone()),
        (400, json!("as_of"))
    );
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

async fn the_board_rebuilt_from_the_log_equals_the_incremental_one(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    for n in 0..20 {
        let task = create(
            &api,
            json!({"title": format!("task {n}"), "labels": [format!("l{}", n % 3)]}),
        )
        .await;
        if n % 2 == 0 {
            patch(
                &api,
                task["key"].as_str().unwrap(),
                json!({"status": "in_progress", "priority": "medium"}),
            )
            .await;
        }
    }
    // Once the last change shows, the incremental model has seen all of them.
    board(&api, "status=in_progress", 10).await;
    let incremental = board(&api, "limit=500", 20).await;
    assert_eq!(incremental["counts"]["in_progress"], 10);
    let (rows, rebuilt) = backend
        .incremental_and_rebuilt::<flowforge_projections::tasks::TaskRow>("tasks", "number")
        .await;
    assert_eq!(rows.len(), 20);
    assert_eq!(rows, rebuilt);
}

/// Reads server-sent events until `done` holds for the `(event, data)` pairs so far.
async fn read_sse(
    response: &mut reqwest::Response,
    seen: &mut Vec<(String, Value)>,
    buffer: &mut String,
    done: impl Fn(&[(String, Value)]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(seen) {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no more entries; so far {seen:?}"))
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let event = message.lines().find_map(|l| l.strip_prefix("event: "));
            let data = message.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(event), Some(data)) = (event, data) {
                seen.push((event.to_owned(), serde_json::from_str(data).unwrap()));
            }
        }
    }
}

async fn a_task_streams_its_timeline_live(backend: TestBackend) {
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let task = create(&api, json!({"title": "Ship the release"})).await;
    let other = create(&api, json!({"title": "Something else"})).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let (status, first) = api
        .post(
            "/api/v1/comments",
            &json!({"target": {"kind": "task", "id": id}, "body": "before the stream"}),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    // The read model shows the comment before the stream opens, so the replay has it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, timeline) = api.get(&format!("/api/v1/tasks/{id}/timeline")).await;
        if timeline["items"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{timeline}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut response = api
        .http
        .get(format!("{}/api/v1/tasks/{id}/stream", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut seen = Vec::new();
    let mut buffer = String::new();
    read_sse(&mut response, &mut seen, &mut buffer, |s| s.len() == 2).await;
    assert_eq!(seen[0].1["event_type"], "task.created");
    assert_eq!(seen[1].0, "comment");
    assert_eq!(seen[1].1["comment"]["body"], "before the stream");

    // Live: a status change, a new comment and a reaction to it, an edit of the old
    // one; nothing of the other task.
    let (status, _) = patch(&api, &id, json!({"status": "in_progress"})).await;
    assert_eq!(status, 200);
    let (status, _) = api
        .post(
            "/api/v1/comments",
            &json!({"target": {"kind": "task", "id": other["id"]}, "body": "elsewhere"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, second) = api
        .post(
            "/api/v1/comments",
            &json!({"target": {"kind": "task", "id": id}, "body": "on it"}),
        )
        .await;
    assert_eq!(status, 201, "{second}");
    let (status, reacted) = api
        .post(
            &format!(
                "/api/v1/comments/{}/reactions",
                second["id"].as_str().unwrap()
            ),
            &json!({"emoji": "rocket"}),
        )
        .await;
    assert_eq!(status, 200, "{reacted}");
    read_sse(&mut response, &mut seen, &mut buffer, |s| s.len() == 5).await;
    let live: Vec<&str> = seen[2..]
        .iter()
        .map(|(_, entry)| entry["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        live,
        [
            "task.status_changed",
            "comment.posted",
            "comment.reaction_added"
        ],
        "{seen:?}"
    );
    assert_eq!(seen[3].1["payload"]["body"], "on it");
    let positions: Vec<u64> = seen
        .iter()
        .map(|(_, e)| e["global_position"].as_u64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
}

flowforge_tests::on_both_backends!(
    a_task_streams_its_timeline_live,
    fifty_concurrent_creates_get_ff_1_to_ff_50,
    status_moves_follow_the_rules_and_refusals_name_both_statuses,
    the_board_filters_searches_and_counts,
    history_names_the_actors_and_as_of_shows_the_task_as_it_was,
    the_board_rebuilt_from_the_log_equals_the_incremental_one,
);

/// A comment the comments read model has not reached yet still reaches a stream opened
/// after it was posted: the stream follows the log from where the read model was.
/// PostgreSQL only: the test holds the comments projection's checkpoint row, so the
/// projection cannot commit while the stream opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_comment_the_read_model_has_not_reached_still_streams() {
    use sqlx::{Connection, Executor};
    let Some(backend) = TestBackend::postgres().await else {
        return;
    };
    let url = backend.database_url().unwrap().to_owned();
    let server = TestServer::start(&backend).await;
    let api = Api::new(server.url.clone());
    let task = create(&api, json!({"title": "A lagging read model"})).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let comment = |body: &'static str| {
        let api = api.clone();
        let id = id.clone();
        async move {
            let (status, posted) = api
                .post(
                    "/api/v1/comments",
                    &json!({"target": {"kind": "task", "id": id}, "body": body}),
                )
                .await;
            assert_eq!(status, 201, "{posted}");
        }
    };
    let timeline_len = || {
        let api = api.clone();
        let id = id.clone();
        async move {
            let (_, timeline) = api.get(&format!("/api/v1/tasks/{id}/timeline")).await;
            timeline["items"].as_array().unwrap().len()
        }
    };
    comment("projected").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while timeline_len().await != 2 {
        assert!(tokio::time::Instant::now() < deadline, "never projected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    conn.execute("BEGIN").await.unwrap();
    conn.execute(
        "SELECT position FROM projection_checkpoints \
         WHERE name = 'comments' AND state = 'active' FOR UPDATE",
    )
    .await
    .unwrap();
    comment("while the read model waits").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(timeline_len().await, 2, "the read model was held back");

    let mut response = api
        .http
        .get(format!("{}/api/v1/tasks/{id}/stream", api.base))
        .send()
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buffer = String::new();
    read_sse(&mut response, &mut seen, &mut buffer, |s| s.len() == 3).await;
    assert_eq!(seen[0].1["event_type"], "task.created", "{seen:?}");
    assert_eq!(seen[1].1["comment"]["body"], "projected", "{seen:?}");
    assert_eq!(seen[2].0, "comment_change", "{seen:?}");
    assert_eq!(seen[2].1["event_type"], "comment.posted", "{seen:?}");
    assert_eq!(
        seen[2].1["payload"]["body"], "while the read model waits",
        "{seen:?}"
    );

    // The read model catches up; the stream sends the next comment, and nothing twice.
    conn.execute("ROLLBACK").await.unwrap();
    comment("after").await;
    read_sse(&mut response, &mut seen, &mut buffer, |s| s.len() == 4).await;
    assert_eq!(seen[3].1["payload"]["body"], "after", "{seen:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while timeline_len().await != 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the read model never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), response.chunk()).await;
    assert!(
        extra.is_err()
            || !String::from_utf8_lossy(&extra.unwrap().unwrap().unwrap_or_default())
                .contains("data:"),
        "nothing more is sent"
    );
    server.stop().await;
}
