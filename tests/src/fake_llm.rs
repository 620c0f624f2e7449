//! A stand-in for an LLM provider that cannot be reached from here: a real HTTP server
//! speaking Anthropic's Messages API (`POST /v1/messages`), recording every request it
//! gets so tests can check what FlowForge sent on an app's behalf.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

/// One request the provider received.
#[derive(Clone, Debug)]
pub struct ProviderRequest {
    pub path: String,
    /// Header names as they arrived on the wire, values as sent.
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

#[derive(Default)]
struct Recorded {
    requests: Vec<ProviderRequest>,
    /// Requests answered with 529 (Anthropic's "overloaded") before the real answer.
    overloaded_left: u32,
}

pub struct FakeAnthropic {
    pub base_url: String,
    recorded: Arc<Mutex<Recorded>>,
    handle: tokio::task::JoinHandle<()>,
}

impl FakeAnthropic {
    /// Starts the provider on a random port. `base_url` ends in `/v1`, as Anthropic's does.
    pub async fn start() -> Self {
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let app = Router::new()
            .route("/v1/messages", post(messages))
            .with_state(recorded.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake provider");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            recorded,
            handle,
        }
    }

    /// The next `n` requests are answered `529 overloaded_error`.
    pub fn overload_next(&self, n: u32) {
        self.recorded.lock().expect("lock").overloaded_left = n;
    }

    pub fn requests(&self) -> Vec<ProviderRequest> {
        self.recorded.lock().expect("lock").requests.clone()
    }
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The answer the provider gives to a prompt: the prompt's last user message, reversed,
/// so a test can tell that its own prompt was the one answered.
pub fn answer_to(prompt: &str) -> String {
    prompt.chars().rev().collect()
}

async fn messages(
    State(recorded): State<Arc<Mutex<Recorded>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut state = recorded.lock().expect("lock");
    state.requests.push(ProviderRequest {
        path: "/v1/messages".into(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body: body.clone(),
    });
    if state.overloaded_left > 0 {
        state.overloaded_left -= 1;
        return (
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            Json(json!({
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"}
            })),
        );
    }
    if headers.get("x-api-key").is_none() || headers.get("anthropic-version").is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({
                "type": "error",
                "error": {"type": "authentication_error", "message": "x-api-key and anthropic-version are required"}
            })),
        );
    }
    let Some(model) = body["model"].as_str() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "model: Field required"}
            })),
        );
    };
    let prompt = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    (
        StatusCode::OK,
        Json(json!({
            "id": format!("msg_{}", state.requests.len()),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": answer_to(prompt)}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": prompt.len(), "output_tokens": prompt.len()}
        })),
    )
}
