//! The AI gateway: `step.ai.infer` asks the server, not the app, to call an LLM
//! provider (the protocol's `AIGateway` op), so the app's compute is not held while the
//! model thinks.
//!
//! The executor makes the request while it records the answer that asked for it, and
//! records the provider's response as the step's memoized output (`kind: ai`) or its
//! error. The provider's key travels in the op and is used for this one request only:
//! it never reaches the log. A crash between the provider's answer and the append
//! means the next discovery reports the op again and the request is made again, which
//! is the at-least-once every step has.

use std::collections::BTreeMap;
use std::time::Duration;

use flowforge_domain::run::{Op, StepError};
use serde_json::{Value, json};

/// Bytes of a provider's response at most.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// One provider request an app asked for.
#[derive(Clone, PartialEq)]
pub struct AiRequest {
    pub step_id: String,
    pub name: String,
    pub url: String,
    /// The provider's API shape: `anthropic`, `openai-chat`, `gemini`, …
    pub format: String,
    auth_key: String,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

impl std::fmt::Debug for AiRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiRequest")
            .field("step_id", &self.step_id)
            .field("name", &self.name)
            .field("url", &self.url)
            .field("format", &self.format)
            .field("auth_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl AiRequest {
    /// Reads an `AIGateway` op. `None` for any other op.
    pub fn from_op(item: &Value) -> Option<Result<AiRequest, String>> {
        if item.get("op").and_then(Value::as_str) != Some("AIGateway") {
            return None;
        }
        let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
        let Some(step_id) = text(item.get("id")) else {
            return Some(Err("a step has no `id`".into()));
        };
        let name = text(item.get("displayName"))
            .or_else(|| text(item.get("name")))
            .unwrap_or_else(|| step_id.clone());
        let opts = item.get("opts").cloned().unwrap_or(Value::Null);
        let Some(url) = text(opts.get("url")).filter(|u| u.starts_with("http")) else {
            return Some(Err(format!(
                "step.ai.infer {name} has no http(s) `opts.url`"
            )));
        };
        let headers = opts
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| {
                h.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Some(Ok(AiRequest {
            name,
            url,
            format: text(opts.get("format")).unwrap_or_else(|| "openai-chat".into()),
            auth_key: text(opts.get("auth_key")).unwrap_or_default(),
            headers,
            body: opts.get("body").cloned().unwrap_or_else(|| json!({})),
            step_id,
        }))
    }

    /// The headers that authenticate with the provider, in its own convention.
    /// Puts skills' knowledge before the request's system prompt, in the provider's
    /// format; the rest of the body is the app's and stays as it is. Whether it could:
    /// a body of a shape this does not know is sent unchanged (and no skill is
    /// recorded as used).
    pub fn give_knowledge(&mut self, knowledge: &str) -> bool {
        if knowledge.is_empty() {
            return false;
        }
        let Some(body) = self.body.as_object_mut() else {
            return false;
        };
        match self.format.as_str() {
            "anthropic" => match body.get_mut("system") {
                None | Some(Value::Null) => {
                    body.insert("system".into(), Value::String(knowledge.to_owned()));
                    true
                }
                Some(Value::String(text)) => {
                    *text = format!("{knowledge}\n\n{text}");
                    true
                }
                Some(Value::Array(blocks)) => {
                    blocks.insert(0, json!({"type": "text", "text": knowledge}));
                    true
                }
                Some(_) => false,
            },
            "gemini" => {
                let instruction = body
                    .entry("systemInstruction")
                    .or_insert_with(|| json!({"parts": []}));
                match instruction.get_mut("parts").and_then(Value::as_array_mut) {
                    Some(parts) => {
                        parts.insert(0, json!({"text": knowledge}));
                        true
                    }
                    None => false,
                }
            }
            // OpenAI's chat format, which most other providers speak too.
            _ => match body.get_mut("messages").and_then(Value::as_array_mut) {
                Some(messages) => {
                    messages.insert(0, json!({"role": "system", "content": knowledge}));
                    true
                }
                None => false,
            },
        }
    }

    fn auth_headers(&self) -> Vec<(&'static str, String)> {
        if self.auth_key.is_empty() {
            return Vec::new();
        }
        match self.format.as_str() {
            "anthropic" => vec![
                ("x-api-key", self.auth_key.clone()),
                ("anthropic-version", "2023-06-01".into()),
            ],
            // The SDK's Gemini adapter puts the key in the URL as well.
            "gemini" => vec![("x-goog-api-key", self.auth_key.clone())],
            _ => vec![("authorization", format!("Bearer {}", self.auth_key))],
        }
    }
}

/// The `AIGateway` ops of an app's 206 answer.
pub fn requests_in(answer: &[u8]) -> Result<Vec<AiRequest>, String> {
    let items = match serde_json::from_slice::<Value>(answer) {
        Ok(Value::Array(items)) => items,
        Ok(item @ Value::Object(_)) => vec![item],
        _ => return Ok(Vec::new()),
    };
    items.iter().filter_map(AiRequest::from_op).collect()
}

/// Makes the request and turns the provider's answer into the step's outcome.
pub async fn infer(http: &reqwest::Client, request: &AiRequest, timeout: Duration) -> Op {
    let span = tracing::debug_span!("ai_gateway.infer", step_id = %request.step_id, format = %request.format);
    tracing::Instrument::instrument(infer_in_span(http, request, timeout), span).await
}

async fn infer_in_span(http: &reqwest::Client, request: &AiRequest, timeout: Duration) -> Op {
    let failed = |name: &str, message: String, retriable: bool| Op::StepError {
        id: request.step_id.clone(),
        name: request.name.clone(),
        error: StepError::new(name, message),
        retriable,
        retry_after: None,
    };
    let mut call = http
        .post(&request.url)
        .timeout(timeout)
        .header("content-type", "application/json");
    // The adapter's own headers win over the defaults for the provider.
    for (name, value) in request.auth_headers() {
        if !request.headers.keys().any(|h| h.eq_ignore_ascii_case(name)) {
            call = call.header(name, value);
        }
    }
    for (name, value) in &request.headers {
        call = call.header(name, value);
    }
    let response = match call.json(&request.body).send().await {
        Ok(response) => response,
        Err(error) => {
            return failed(
                "AIGatewayError",
                format!("calling {} failed: {error}", request.url),
                true,
            );
        }
    };
    let status = response.status();
    let body = match read_limited(response).await {
        Ok(body) => body,
        Err(message) => return failed("AIGatewayError", message, true),
    };
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(2_000)]).into_owned();
        // A client error will not change on retry, except a rate limit.
        let retriable = status.is_server_error() || status.as_u16() == 429;
        return failed(
            "AIGatewayError",
            format!("the provider answered {}: {text}", status.as_u16()),
            retriable,
        );
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(output) => Op::AiResponse {
            id: request.step_id.clone(),
            name: request.name.clone(),
            output,
            skills: Vec::new(),
        },
        Err(error) => failed(
            "AIGatewayError",
            format!("the provider's answer is not JSON: {error}"),
            true,
        ),
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the provider's answer: {e}"))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!(
                "the provider's answer is larger than {MAX_RESPONSE_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(opts: Value) -> Value {
        json!({"id": "h1", "displayName": "ask", "op": "AIGateway", "opts": opts})
    }

    #[test]
    fn reads_the_op_and_keeps_the_key_out_of_debug_output() {
        let request = AiRequest::from_op(&op(json!({
            "auth_key": "sk-secret", "body": {"messages": []}, "format": "anthropic",
            "headers": {"x-my-header": "v"}, "type": "step.ai.infer",
            "url": "http://127.0.0.1:9/v1/messages"
        })))
        .unwrap()
        .unwrap();
        assert_eq!(request.step_id, "h1");
        assert_eq!(request.name, "ask");
        assert_eq!(request.headers["x-my-header"], "v");
        assert_eq!(
            request.auth_headers(),
            vec![
                ("x-api-key", "sk-secret".to_owned()),
                ("anthropic-version", "2023-06-01".to_owned())
            ]
        );
        assert!(!format!("{request:?}").contains("sk-secret"));
    }

    #[test]
    fn other_ops_are_not_requests_and_a_bad_url_is_an_error() {
        assert!(AiRequest::from_op(&json!({"id": "x", "op": "StepRun"})).is_none());
        assert!(
            AiRequest::from_op(&op(json!({"url": "file:///etc/passwd"})))
                .unwrap()
                .is_err()
        );
        let openai = AiRequest::from_op(&op(json!({
            "auth_key": "k", "format": "openai-chat", "url": "https://api.example/v1/chat/completions"
        })))
        .unwrap()
        .unwrap();
        assert_eq!(
            openai.auth_headers(),
            vec![("authorization", "Bearer k".to_owned())]
        );
    }

    #[test]
    fn finds_the_requests_among_other_ops() {
        let answer = json!([
            {"id": "a", "op": "StepPlanned"},
            op(json!({"url": "http://127.0.0.1:9/x"})),
        ]);
        let requests = requests_in(answer.to_string().as_bytes()).unwrap();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].step_id, "h1");
        assert!(requests_in(b"not json").unwrap().is_empty());
    }

    fn request(format: &str, body: Value) -> AiRequest {
        AiRequest::from_op(&op(json!({
            "format": format, "url": "http://127.0.0.1:9/v1", "body": body
        })))
        .unwrap()
        .unwrap()
    }

    #[test]
    fn knowledge_goes_before_the_system_prompt_in_each_format() {
        let k = "<skill-knowledge name=\"x\">K</skill-knowledge>";
        let mut anthropic = request("anthropic", json!({"system": "Be brief.", "messages": []}));
        assert!(anthropic.give_knowledge(k));
        assert_eq!(anthropic.body["system"], format!("{k}\n\nBe brief."));
        let mut blocks = request(
            "anthropic",
            json!({"system": [{"type": "text", "text": "Be brief."}]}),
        );
        assert!(blocks.give_knowledge(k));
        assert_eq!(blocks.body["system"][0]["text"], k);
        assert_eq!(blocks.body["system"][1]["text"], "Be brief.");
        let mut none = request("anthropic", json!({"messages": []}));
        assert!(none.give_knowledge(k));
        assert_eq!(none.body["system"], k);

        let mut openai = request(
            "openai-chat",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        );
        assert!(openai.give_knowledge(k));
        assert_eq!(
            openai.body["messages"][0],
            json!({"role": "system", "content": k})
        );
        assert_eq!(openai.body["messages"][1]["content"], "hi");

        let mut gemini = request("gemini", json!({"contents": []}));
        assert!(gemini.give_knowledge(k));
        assert_eq!(gemini.body["systemInstruction"]["parts"][0]["text"], k);
    }

    #[test]
    fn a_body_of_an_unknown_shape_is_left_alone() {
        let mut odd = request("anthropic", json!({"system": 42}));
        assert!(!odd.give_knowledge("K"));
        assert_eq!(odd.body["system"], 42);
        let mut no_messages = request("openai-chat", json!({"prompt": "hi"}));
        assert!(!no_messages.give_knowledge("K"));
        assert_eq!(no_messages.body, json!({"prompt": "hi"}));
        let mut empty = request("openai-chat", json!({"messages": []}));
        assert!(!empty.give_knowledge(""), "no knowledge, nothing given");
    }
}
