//! The `flowforge` command line, run as a user runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn flowforge() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowforge"));
    command
        .env_remove("FLOWFORGE_DATABASE_URL")
        .env("FLOWFORGE_LOG", "warn");
    command
}

#[test]
fn serve_refuses_to_start_without_a_database() {
    let output = flowforge().args(["serve", "--port", "0"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FLOWFORGE_DATABASE_URL"), "{stderr}");
}

#[test]
fn an_unsupported_database_url_is_refused_without_leaking_its_password() {
    let output = flowforge()
        .args(["migrate", "--database-url", "mysql://app:hunter2@db/ff"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unsupported database URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn migrate_then_status_on_an_empty_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = flowforge()
        .args(["migrate", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("migrations applied"));
    assert!(data.join("events.db").exists() && data.join("read.db").exists());

    let output = flowforge()
        .args(["projections", "status", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "runs",
            "streams",
            "events",
            "tasks",
            "comments",
            "approvals",
            "skills",
            "notifications"
        ]
    );
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["head"] == 0 && p["lag"] == 0)
    );

    let output = flowforge()
        .args(["projections", "rebuild", "nonesuch", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("unknown projection `nonesuch`; known: runs, streams, events")
    );
}

#[test]
fn send_and_runs_talk_to_a_running_dev_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = flowforge()
        .args(["dev", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "flowforge dev did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let cli = |args: &[&str]| {
        flowforge()
            .args(args)
            .env("FLOWFORGE_URL", &url)
            .output()
            .unwrap()
    };

    let sent = cli(&[
        "send",
        "order/created",
        "-d",
        r#"{"order_id": "123", "total": 99.99}"#,
        "--id",
        "cli-1",
    ]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&sent.stdout).trim(),
        "sent order/created as cli-1"
    );

    let bad = cli(&["send", "order/created", "-d", "[1, 2]"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("data: data must be a JSON object"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let listed = cli(&["runs", "list", "--json"]);
    assert!(listed.status.success());
    let page: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        page["items"],
        serde_json::json!([]),
        "no function is registered, so no run"
    );

    let missing = cli(&["runs", "show", "not-a-run"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("400 Bad Request: id:"));

    let _ = server.kill();
    let _ = server.wait();
}
