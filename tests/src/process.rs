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
    let aliases = ["flowforge-server", "flowforge-create-admin"];
    if binary.exists() && aliases.iter().all(|a| profile_dir.join(a).exists()) {
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
    build
        .current_dir(workspace_root())
        .args(["build", "-p", "flowforge-api", "--bins"]);
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

/// The signing key `flowforge serve` test processes share with the apps they call.
pub const TEST_SIGNING_KEY: &str =
    "signkey-test-5f1d0c3b9a8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a392817060504";
const TEST_JWT_SECRET: &str = "flowforge-tests-token-secret-0123456789abcdef";
pub const TEST_ADMIN_PASSWORD: &str = "correct horse battery staple";

/// A `flowforge dev` (SQLite) or `flowforge serve` (PostgreSQL) process on a fixed port.
///
/// `serve` requires credentials on every request, as in production: on its first start
/// the process gets an admin (made with `flowforge create-admin`) and an admin API key,
/// which [`ServerProcess::api`] and [`ServerProcess::http`] send.
pub struct ServerProcess {
    pub url: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    pub log: PathBuf,
    database_url: Option<String>,
    /// The signing key apps of this process must use (serve only).
    pub signing_key: Option<String>,
    api_key: Option<String>,
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
        let mut process = Self::with_args(vec![
            "serve".into(),
            "--host".into(),
            "127.0.0.1".into(),
            "--database-url".into(),
            database_url.to_owned(),
        ]);
        process
            .set_env("FLOWFORGE_JWT_SECRET", TEST_JWT_SECRET)
            .set_env("FLOWFORGE_SIGNING_KEY", TEST_SIGNING_KEY)
            // Tests run side by side on the machine's one PostgreSQL (max_connections
            // 100): the default pools (32 + 16 per process) of a few clusters at once
            // would exhaust it and acquires would time out.
            .set_env("FLOWFORGE_DB_MAX_CONNECTIONS", "8");
        process.database_url = Some(database_url.to_owned());
        process.signing_key = Some(TEST_SIGNING_KEY.to_owned());
        process
    }

    /// The REST client of this process, with its admin key when it has one.
    pub fn api(&self) -> crate::server::Api {
        crate::server::Api::with_bearer(self.url.clone(), self.api_key.clone())
    }

    /// The admin API key this process was provisioned with (serve only).
    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// A plain HTTP client that sends this process's admin key.
    pub fn http(&self) -> reqwest::Client {
        self.api().http
    }

    /// Makes an admin with the CLI, then logs in and creates an admin API key.
    async fn provision_admin(&mut self) {
        let Some(database_url) = self.database_url.clone() else {
            return;
        };
        let email = format!("admin-{}@tests.invalid", uuid::Uuid::new_v4().simple());
        let output = Command::new(flowforge_binary())
            .args([
                "create-admin",
                "--email",
                &email,
                "--password",
                TEST_ADMIN_PASSWORD,
            ])
            .args(["--database-url", &database_url])
            .output()
            .expect("run flowforge create-admin");
        assert!(
            output.status.success(),
            "create-admin failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let api = crate::server::Api::new(self.url.clone());
        let (status, login) = api
            .post(
                "/api/v1/auth/login",
                &serde_json::json!({"email": email, "password": TEST_ADMIN_PASSWORD}),
            )
            .await;
        assert_eq!(status, 200, "login: {login}");
        let token = login["access_token"].as_str().expect("token").to_owned();
        let admin = crate::server::Api::with_bearer(self.url.clone(), Some(token));
        let (status, key) = admin
            .post(
                "/api/v1/api-keys",
                &serde_json::json!({"name": "tests", "kind": "live", "scopes": ["admin"]}),
            )
            .await;
        assert_eq!(status, 201, "create key: {key}");
        self.api_key = Some(key["key"].as_str().expect("key").to_owned());
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
            database_url: None,
            signing_key: None,
            api_key: None,
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
                if self.api_key.is_none() {
                    self.provision_admin().await;
                }
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

/// Processes of the production shape: `flowforge serve` on `backend`'s PostgreSQL
/// database, sharing work through NATS, one per instance name, each with `env` set.
pub async fn cluster(
    backend: &TestBackend,
    nats: &crate::nats::TestNats,
    instances: &[&str],
    env: &[(&str, &str)],
) -> Vec<ServerProcess> {
    let mut processes = Vec::new();
    for instance in instances {
        let mut process = ServerProcess::for_backend(backend);
        process.with_nats(&nats.url, &nats.prefix, instance);
        for (key, value) in env {
            process.set_env(key, *value);
        }
        process.start().await;
        processes.push(process);
    }
    processes
}
