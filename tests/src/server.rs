//! The real FlowForge server on a random port, as tests talk to it: over HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use flowforge_api::config::{Config, Mode, Storage};
use flowforge_api::platform::Platform;
use serde_json::Value;

use crate::backend::TestBackend;

pub struct TestServer {
    pub url: String,
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

/// A configuration for `backend` with short retry delays, so that retry tests are quick.
pub fn config_for(backend: &TestBackend) -> Config {
    let mut config = match backend {
        TestBackend::Sqlite(dir) => Config::dev(dir.path().to_path_buf()),
        TestBackend::Postgres(db) => {
            let mut config = Config::dev(std::env::temp_dir());
            config.mode = Mode::Serve;
            config.storage = Storage::Postgres {
                url: db.url().to_owned(),
                max_connections: 16,
            };
            config
        }
    };
    config.port = 0;
    config.engine.backoff = flowforge_domain::run::BackoffPolicy {
        initial_ms: 100,
        max_ms: 1_000,
    };
    config.engine.executor_concurrency = 16;
    config
}

impl TestServer {
    pub async fn start(backend: &TestBackend) -> Self {
        Self::start_with(config_for(backend)).await
    }

    pub async fn start_with(config: Config) -> Self {
        let (listener, addr) = flowforge_api::http::bind(&config.host, config.port)
            .await
            .expect("bind");
        let platform = Platform::start(config).await.expect("start the platform");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let _ = flowforge_api::http::serve(platform, listener, async {
                let _ = rx.await;
            })
            .await;
        });
        Self {
            url: format!("http://{addr}"),
            addr,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.abort();
            let _ = handle.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// A small HTTP client for the REST API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::new(),
        }
    }

    /// A client that sends `Authorization: Bearer <credential>` on every request.
    pub fn with_bearer(base: impl Into<String>, credential: Option<String>) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(credential) = credential
            && let Ok(value) = format!("Bearer {credential}").parse()
        {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Self {
            base: base.into(),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .expect("http client"),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A `POST` of raw bytes (an upload) with their content type.
    pub async fn post_bytes(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::DELETE, path, None).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Sends one event; returns its id.
    pub async fn send(&self, name: &str, data: Value) -> String {
        let (status, body) = self
            .post(
                "/api/v1/events",
                &serde_json::json!({"name": name, "data": data}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["ids"][0].as_str().expect("an id").to_owned()
    }

    /// Waits until the event has triggered `count` runs; returns their ids.
    pub async fn runs_of_event(
        &self,
        event_id: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (_, page) = self.get(&format!("/api/v1/runs?event={event_id}")).await;
            let ids: Vec<String> = page["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|r| r["id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if ids.len() >= count {
                return ids;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "event {event_id} triggered {} of {count} runs",
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until a run reaches a final status; returns it (`GET /api/v1/runs/{id}`).
    pub async fn finished_run(&self, run_id: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, run) = self.get(&format!("/api/v1/runs/{run_id}")).await;
            if status == 200
                && matches!(
                    run["status"].as_str(),
                    Some("completed" | "failed" | "cancelled" | "skipped")
                )
            {
                return run;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {run_id} did not finish in {timeout:?}; last seen: {run}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until a run's state satisfies `check`.
    pub async fn run_until(
        &self,
        run_id: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        self.get_until(&format!("/api/v1/runs/{run_id}"), timeout, check)
            .await
    }

    /// Waits until `GET path` answers 200 with a body that satisfies `check`: what a
    /// read model shows follows the log, a moment later.
    pub async fn get_until(
        &self,
        path: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, body) = self.get(path).await;
            if status == 200 && check(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} never reached the state; last seen: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Serves an SDK app on a random port and registers it with the server.
pub struct SdkApp {
    pub url: String,
    handle: tokio::task::JoinHandle<()>,
}

impl SdkApp {
    /// An app of `process`, signing with its signing key when it has one.
    pub async fn start_for(
        process: &crate::process::ServerProcess,
        build: impl FnOnce(String, String) -> flowforge_sdk::App,
    ) -> Self {
        let key = process.signing_key.clone();
        Self::start(&process.url, move |server, serve| {
            let app = build(server, serve);
            match key {
                Some(key) => app.signing_key(key),
                None => app,
            }
        })
        .await
    }

    /// `build` gets the URL the app is served at and returns the app to serve.
    pub async fn start(
        server_url: &str,
        build: impl FnOnce(String, String) -> flowforge_sdk::App,
    ) -> Self {
        let (served, app) = Self::serve(server_url, build).await;
        app.register().await.expect("register the app");
        served
    }

    /// An app that waits to be asked to sync (a `PUT` on its endpoint).
    pub async fn start_unregistered(
        server_url: &str,
        build: impl FnOnce(String, String) -> flowforge_sdk::App,
    ) -> Self {
        Self::serve(server_url, build).await.0
    }

    async fn serve(
        server_url: &str,
        build: impl FnOnce(String, String) -> flowforge_sdk::App,
    ) -> (Self, flowforge_sdk::App) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the app");
        let addr = listener.local_addr().expect("addr");
        let serve_url = format!("http://{addr}/api/flowforge");
        let app = build(server_url.to_owned(), serve_url.clone());
        let router = axum::Router::new().nest("/api/flowforge", app.router());
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        (
            Self {
                url: serve_url,
                handle,
            },
            app,
        )
    }
}

impl Drop for SdkApp {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A user of the default tenant with `role`, created by `admin` and signed in with
/// `password`: their id and a client carrying their access token.
pub async fn signed_in_user(
    base: &str,
    admin: &Api,
    name: &str,
    role: &str,
    password: &str,
) -> (String, Api) {
    let email = format!("{name}@acme.test");
    let (status, created) = admin
        .post(
            "/api/v1/users",
            &serde_json::json!({"email": email, "name": name, "role": role, "password": password}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let (status, login) = Api::new(base)
        .post(
            "/api/v1/auth/login",
            &serde_json::json!({"email": email, "password": password}),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    (
        created["id"].as_str().expect("a user id").to_owned(),
        Api::with_bearer(base, login["access_token"].as_str().map(str::to_owned)),
    )
}
