//! FlowForge's Rust SDK: write durable functions, serve them from an axum app.
//!
//! ```no_run
//! use flowforge_sdk::{App, Function, Error};
//! use serde_json::json;
//!
//! # async fn example() -> Result<(), Error> {
//! let process_order = Function::new("process-order")
//!     .trigger_event("order/created")
//!     .retries(3)
//!     .handler(|ctx, step| async move {
//!         let total = ctx.event["data"]["total"].as_f64().unwrap_or(0.0);
//!         let charge: serde_json::Value = step.run("charge-card", move || async move {
//!             Ok(json!({"charged": total}))
//!         }).await?;
//!         step.sleep("cool-off", std::time::Duration::from_secs(10)).await?;
//!         Ok(json!({"charge": charge}))
//!     });
//! let app = App::new("shop", "http://127.0.0.1:8288", "http://127.0.0.1:3000/api/flowforge")
//!     .function(process_order);
//! // Mount `app.router()` in your axum server, then `app.register().await?`.
//! # Ok(()) }
//! ```
//!
//! How a function runs: the server calls the app once per step. Each call runs the
//! handler from the top; steps that already ran return their memoized result, and the
//! first step that has not run stops the handler there and is reported to the server
//! (a step that is `pending` forever, so code after it never runs). Steps awaited
//! together (`tokio::join!`, `futures::join_all`) are reported together and run in
//! parallel. This is the wire protocol of Inngest's SDKs (`docs/sdk-protocol.md`).

mod client;
mod execution;
mod serve;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

pub use client::Client;
pub use execution::{ApprovalOutcome, ApprovalRequest, Context, Step, WaitOptions};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Handler = Arc<dyn Fn(Context, Step) -> BoxFuture<Result<Value, Error>> + Send + Sync>;

/// What a function or a step can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Fail and retry (with backoff) while attempts remain.
    #[error("{0}")]
    Failed(String),
    /// Fail the run now: retrying cannot help.
    #[error("non-retriable: {0}")]
    NonRetriable(String),
    /// Fail and retry no earlier than `after`.
    #[error("{message} (retry after {after:?})")]
    RetryAfter { message: String, after: Duration },
    /// A step failed for good (its retries are exhausted); handle it or let it fail the run.
    #[error("step failed: {name}: {message}")]
    Step { name: String, message: String },
    /// The SDK could not talk to the server or decode a value.
    #[error("flowforge sdk: {0}")]
    Sdk(String),
}

impl Error {
    pub fn msg(message: impl std::fmt::Display) -> Self {
        Error::Failed(message.to_string())
    }

    pub fn non_retriable(message: impl std::fmt::Display) -> Self {
        Error::NonRetriable(message.to_string())
    }

    pub fn retry_after(message: impl std::fmt::Display, after: Duration) -> Self {
        Error::RetryAfter {
            message: message.to_string(),
            after,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum TriggerSpec {
    Event {
        event: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        expression: Option<String>,
    },
    Cron {
        cron: String,
    },
}

#[derive(Debug, Clone, Serialize)]
struct CancelSpec {
    event: String,
    #[serde(rename = "if", skip_serializing_if = "Option::is_none")]
    if_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
}

/// A durable function.
#[derive(Clone)]
pub struct Function {
    id: String,
    name: Option<String>,
    triggers: Vec<TriggerSpec>,
    retries: Option<u32>,
    cancel: Vec<CancelSpec>,
    /// Flow-control settings in the protocol's shape (`rateLimit`, `concurrency`, …).
    flow_control: serde_json::Map<String, Value>,
    handler: Option<Handler>,
}

impl Function {
    /// `id` is unique within the app; the server knows the function as `<app id>-<id>`.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: None,
            triggers: Vec::new(),
            retries: None,
            cancel: Vec::new(),
            flow_control: serde_json::Map::new(),
            handler: None,
        }
    }

    /// A flow-control setting as the protocol writes it, e.g.
    /// `.flow_control("rateLimit", json!({"limit": 1, "period": "1m", "key": "event.data.user"}))`
    /// or `.flow_control("idempotency", json!("event.data.order_id"))`.
    pub fn flow_control(mut self, setting: &str, value: Value) -> Self {
        self.flow_control.insert(setting.to_owned(), value);
        self
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Runs for every event with this name (`*` wildcards allowed).
    pub fn trigger_event(mut self, event: impl Into<String>) -> Self {
        self.triggers.push(TriggerSpec::Event {
            event: event.into(),
            expression: None,
        });
        self
    }

    /// Runs for events with this name for which the CEL expression over `event` holds.
    pub fn trigger_event_if(
        mut self,
        event: impl Into<String>,
        expression: impl Into<String>,
    ) -> Self {
        self.triggers.push(TriggerSpec::Event {
            event: event.into(),
            expression: Some(expression.into()),
        });
        self
    }

    /// Runs on a cron schedule (`TZ=Europe/Paris 0 9 * * *`).
    pub fn cron(mut self, schedule: impl Into<String>) -> Self {
        self.triggers.push(TriggerSpec::Cron {
            cron: schedule.into(),
        });
        self
    }

    /// Retries per step (and per call) after the first attempt.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// Cancels a running run when `event` arrives and the CEL expression (over `event`,
    /// the trigger, and `async`, the new event) holds.
    pub fn cancel_on(mut self, event: impl Into<String>, expression: Option<&str>) -> Self {
        self.cancel.push(CancelSpec {
            event: event.into(),
            if_: expression.map(str::to_owned),
            timeout: None,
        });
        self
    }

    pub fn handler<F, Fut, T>(mut self, handler: F) -> Self
    where
        F: Fn(Context, Step) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
        T: Serialize + 'static,
    {
        let handler = Arc::new(handler);
        self.handler = Some(Arc::new(move |ctx, step| {
            let fut = handler(ctx, step);
            Box::pin(async move {
                let value = fut.await?;
                serde_json::to_value(value).map_err(|e| {
                    Error::NonRetriable(format!("the function's result is not JSON: {e}"))
                })
            })
        }));
        self
    }
}

/// An app: a set of functions served at one URL.
#[derive(Clone)]
pub struct App {
    id: String,
    server_url: String,
    serve_url: String,
    signing_key: Option<String>,
    signing_key_fallback: Option<String>,
    event_key: String,
    functions: HashMap<String, Function>,
    http: reqwest::Client,
}

impl App {
    /// `server_url`: where FlowForge listens. `serve_url`: the full URL at which this app
    /// serves its functions (where `router()` is mounted), as the server can reach it.
    pub fn new(
        id: impl Into<String>,
        server_url: impl Into<String>,
        serve_url: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            server_url: server_url.into().trim_end_matches('/').to_owned(),
            serve_url: serve_url.into(),
            signing_key: None,
            signing_key_fallback: None,
            event_key: "NO_EVENT_KEY_SET".to_owned(),
            functions: HashMap::new(),
            http: reqwest::Client::new(),
        }
    }

    /// Verify the server's signature on every call with this key (and sign sync calls).
    pub fn signing_key(mut self, key: impl Into<String>) -> Self {
        self.signing_key = Some(key.into());
        self
    }

    /// During a key rotation: the previous key, also accepted on the server's calls
    /// (as `INNGEST_SIGNING_KEY_FALLBACK` is for Inngest's SDKs).
    pub fn signing_key_fallback(mut self, key: impl Into<String>) -> Self {
        self.signing_key_fallback = Some(key.into());
        self
    }

    pub fn event_key(mut self, key: impl Into<String>) -> Self {
        self.event_key = key.into();
        self
    }

    pub fn function(mut self, function: Function) -> Self {
        self.functions
            .insert(format!("{}-{}", self.id, function.id), function);
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn client(&self) -> Client {
        Client::new(self.server_url.clone()).event_key(self.event_key.clone())
    }

    /// The axum router serving this app's functions (mount it at `serve_url`'s path).
    pub fn router(&self) -> axum::Router {
        serve::router(Arc::new(self.clone()))
    }

    /// Tells the server which functions this app serves (`POST /fn/register`).
    pub async fn register(&self) -> Result<Value, Error> {
        serve::register(self).await
    }
}
