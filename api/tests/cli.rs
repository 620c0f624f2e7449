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
    assert_eq!(names, vec!["runs", "streams", "events"]);
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
