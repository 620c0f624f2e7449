//! The `flowforge` binary as a child process, for tests that kill and restart it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::backend::TestBackend;
use crate::python::{free_port, workspace_root};

/// The `flowforge` binary of this build, built once per test process.
pub fn flowforge_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(build_flowforge).clone()
}

/// The workspace's test build produces the binary (the `flowforge-api` package has
/// integration tests, so cargo builds its binary with the same features). Only when it
/// is missing (a narrower test run) is it built here.
fn build_flowforge() -> PathBuf {
    // target/<profile>/deps/<test binary> → target/<profile>/flowforge
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .expect("target dir");
    let binary = profile_dir.join("flowforge");
    if binary.exists() {
        return binary;
    }
    let lock = profile_dir.join(".flowforge-build-lock");
    while std::fs::create_dir(&lock).is_err() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.current_dir(workspace_root()).args([
        "build",
        "-p",
        "flowforge-api",
        "--bin",
        "flowforge",
    ]);
    if profile == "release" {
        build.arg("--release");
    }
    let status = build.status();
    let _ = std::fs::remove_dir(&lock);
    assert!(
        status.is_ok_and(|s| s.success()),
        "building the flowforge binary failed"
    );
    binary
}

/// A `flowforge dev` (SQLite) or `flowforge serve` (PostgreSQL) process on a fixed port.
pub struct ServerProcess {
    pub url: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    pub log: PathBuf,
}

impl ServerProcess {
    pub fn for_backend(backend: &TestBackend) -> Self {
        match backend {
            TestBackend::Sqlite(dir) => Self::with_args(vec![
                "dev".into(),
                "--data-dir".into(),
                dir.path().display().to_string(),
            ]),
            TestBackend::Postgres(db) => Self::serving(db.url()),
        }
    }

    /// `flowforge serve` on the PostgreSQL database at `database_url`.
    pub fn serving(database_url: &str) -> Self {
        Self::with_args(vec![
            "serve".into(),
            "--host".into(),
            "127.0.0.1".into(),
            "--database-url".into(),
            database_url.to_owned(),
        ])
    }

    fn with_args(mut args: Vec<String>) -> Self {
        let port = free_port();
        args.extend(["--port".into(), port.to_string()]);
        let log = std::env::temp_dir().join(format!("ff-server-{port}.log"));
        Self {
            url: format!("http://127.0.0.1:{port}"),
            args,
            envs: vec![
                ("FLOWFORGE_RETRY_BACKOFF_MS".into(), "100".into()),
                ("FLOWFORGE_RETRY_BACKOFF_MAX_MS".into(), "1000".into()),
            ],
            child: None,
            log,
        }
    }

    /// Sets an environment variable for the process (from its next start).
    pub fn set_env(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.envs.push((key.to_owned(), value.into()));
        self
    }

    /// Uses NATS JetStream for work, with this stream prefix, as `instance`.
    pub fn with_nats(&mut self, url: &str, prefix: &str, instance: &str) -> &mut Self {
        self.set_env("FLOWFORGE_NATS_URL", url)
            .set_env("FLOWFORGE_NATS_PREFIX", prefix)
            .set_env("FLOWFORGE_INSTANCE", instance)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the process and waits until it answers `/health`.
    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(flowforge_binary())
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start flowforge");
        self.child = Some(child);
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/health", self.url)).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("flowforge exited with {status}; see {}", self.log.display());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "flowforge did not start; see {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush, mid-whatever.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
