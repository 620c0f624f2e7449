//! One call of a function: replay the memoized steps, stop at the first new one(s).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha1::{Digest, Sha1};
use tokio::sync::Notify;

use crate::{BoxFuture, Error, Function};

/// What the function is running for.
#[derive(Debug, Clone)]
pub struct Context {
    /// The triggering event (`{"name", "data", "id", "ts", ...}`).
    pub event: Value,
    /// Every triggering event (batches).
    pub events: Vec<Value>,
    pub run_id: String,
    /// 0 for the first attempt of the current step or call.
    pub attempt: u32,
    pub function_id: String,
}

/// What [`Step::wait_for_approval`] asks.
#[derive(Debug, Clone)]
pub struct ApprovalRequest {
    pub title: String,
    pub description: Option<String>,
    /// Ids of the users asked (and notified); empty: any member may answer.
    pub assignees: Vec<String>,
    pub timeout: Duration,
}

impl ApprovalRequest {
    pub fn new(title: impl Into<String>, timeout: Duration) -> Self {
        Self {
            title: title.into(),
            description: None,
            assignees: Vec::new(),
            timeout,
        }
    }

    pub fn assignees(mut self, users: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.assignees = users.into_iter().map(Into::into).collect();
        self
    }

    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }
}

/// The decision a [`Step::wait_for_approval`] returns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ApprovalOutcome {
    pub approved: bool,
    /// The user who answered; `None` when it timed out.
    pub by: Option<String>,
    pub comment: Option<String>,
    #[serde(default)]
    pub timed_out: bool,
}

/// Options of [`Step::wait_for_event`].
#[derive(Debug, Clone)]
pub struct WaitOptions {
    /// A field both events share (`"data.order_id"`): the waited-for event matches when
    /// its field equals the trigger's.
    pub match_field: Option<String>,
    /// A CEL expression over `event` (the trigger) and `async` (the candidate).
    pub if_: Option<String>,
    /// How long to wait; the step returns `None` when it expires.
    pub timeout: Duration,
}

impl WaitOptions {
    pub fn timeout(timeout: Duration) -> Self {
        Self {
            match_field: None,
            if_: None,
            timeout,
        }
    }

    pub fn matching(mut self, field: impl Into<String>) -> Self {
        self.match_field = Some(field.into());
        self
    }

    pub fn when(mut self, expression: impl Into<String>) -> Self {
        self.if_ = Some(expression.into());
        self
    }
}

type RunClosure = Box<dyn FnOnce() -> BoxFuture<Result<Value, Error>> + Send>;

/// A step the handler reached that has no memoized result yet.
pub(crate) struct NewStep {
    pub id: String,
    pub name: String,
    pub op: &'static str,
    pub opts: Value,
    pub run: Option<RunClosure>,
}

pub(crate) struct StepState {
    memos: HashMap<String, Value>,
    counters: Mutex<HashMap<String, u32>>,
    new_steps: Mutex<Vec<NewStep>>,
    reached_new: Notify,
}

/// The step tools of one call, cheap to clone into closures.
#[derive(Clone)]
pub struct Step {
    state: Arc<StepState>,
    client: crate::Client,
}

fn duration_string(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl Step {
    /// The protocol's step id: SHA-1 of the name, `name:n` for its n-th repeat.
    fn hashed_id(&self, name: &str) -> String {
        let n = {
            let mut counters = self
                .state
                .counters
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let n = counters.entry(name.to_owned()).or_insert(0);
            let current = *n;
            *n += 1;
            current
        };
        let key = if n == 0 {
            name.to_owned()
        } else {
            format!("{name}:{n}")
        };
        hex::encode(Sha1::digest(key.as_bytes()))
    }

    /// The memoized value, or (after reporting the step) never.
    async fn memo_or_report(
        &self,
        name: &str,
        op: &'static str,
        opts: Value,
        run: Option<RunClosure>,
    ) -> Value {
        let id = self.hashed_id(name);
        if let Some(memo) = self.state.memos.get(&id) {
            return memo.clone();
        }
        self.state
            .new_steps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(NewStep {
                id,
                name: name.to_owned(),
                op,
                opts,
                run,
            });
        self.state.reached_new.notify_one();
        std::future::pending().await
    }

    fn unwrap_data<T: DeserializeOwned>(name: &str, memo: Value) -> Result<T, Error> {
        if let Some(error) = memo.get("error").filter(|e| e.get("message").is_some()) {
            return Err(Error::Step {
                name: error
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("Error")
                    .to_owned(),
                message: error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        let data = match memo {
            Value::Object(mut map) if map.len() == 1 && map.contains_key("data") => {
                map.remove("data").unwrap_or_default()
            }
            other => other,
        };
        serde_json::from_value(data).map_err(|e| {
            Error::Sdk(format!(
                "step {name}: the memoized value does not decode: {e}"
            ))
        })
    }

    /// Runs `f` once, durably: its result is memoized and returned on every later call.
    /// A failure is retried by the server with backoff; after the last attempt the step
    /// returns [`Error::Step`].
    pub async fn run<T, F, Fut>(&self, name: &str, f: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let closure: RunClosure = Box::new(move || {
            Box::pin(async move {
                let value = f().await?;
                serde_json::to_value(value)
                    .map_err(|e| Error::NonRetriable(format!("the step's result is not JSON: {e}")))
            })
        });
        let memo = self
            .memo_or_report(name, "StepRun", Value::Null, Some(closure))
            .await;
        Self::unwrap_data(name, memo)
    }

    pub async fn sleep(&self, name: &str, duration: Duration) -> Result<(), Error> {
        self.memo_or_report(
            name,
            "Sleep",
            json!({"duration": duration_string(duration)}),
            None,
        )
        .await;
        Ok(())
    }

    pub async fn sleep_until(&self, name: &str, until: DateTime<Utc>) -> Result<(), Error> {
        let duration = (until - Utc::now()).to_std().unwrap_or_default();
        self.sleep(name, duration).await
    }

    /// Waits for an event; `None` when the timeout passes first.
    pub async fn wait_for_event(
        &self,
        name: &str,
        event: &str,
        options: WaitOptions,
    ) -> Result<Option<Value>, Error> {
        let expression = match (&options.match_field, &options.if_) {
            (Some(field), None) => Some(format!("event.{field} == async.{field}")),
            (Some(field), Some(extra)) => {
                Some(format!("event.{field} == async.{field} && ({extra})"))
            }
            (None, Some(expression)) => Some(expression.clone()),
            (None, None) => None,
        };
        let memo = self
            .memo_or_report(
                name,
                "WaitForEvent",
                json!({"event": event, "if": expression, "timeout": duration_string(options.timeout)}),
                None,
            )
            .await;
        Ok((!memo.is_null()).then_some(memo))
    }

    /// Asks people for a decision and waits for it (FlowForge's approvals): the
    /// assignees are notified, a member answers `POST /api/v1/approvals/{id}/approve`
    /// or `/reject`, and the step returns the decision. When `timeout` passes first
    /// it returns a rejection with `timed_out` set.
    pub async fn wait_for_approval(
        &self,
        name: &str,
        request: ApprovalRequest,
    ) -> Result<ApprovalOutcome, Error> {
        let memo = self
            .memo_or_report(
                name,
                "WaitForEvent",
                json!({
                    "event": "flowforge/approval.decided",
                    "timeout": duration_string(request.timeout),
                    "approval": {
                        "title": request.title,
                        "description": request.description,
                        "assignees": request.assignees,
                    },
                }),
                None,
            )
            .await;
        if memo.is_null() {
            return Ok(ApprovalOutcome {
                approved: false,
                by: None,
                comment: None,
                timed_out: true,
            });
        }
        serde_json::from_value(memo.get("data").cloned().unwrap_or(Value::Null)).map_err(|e| {
            Error::msg(format!(
                "step {name}: the approval's answer is malformed: {e}"
            ))
        })
    }

    /// Runs another function (its full id, `<app>-<function>`) and returns its result.
    pub async fn invoke<T: DeserializeOwned>(
        &self,
        name: &str,
        function_id: &str,
        data: Value,
        timeout: Option<Duration>,
    ) -> Result<T, Error> {
        let memo = self
            .memo_or_report(
                name,
                "InvokeFunction",
                json!({"function_id": function_id, "payload": {"data": data}, "timeout": timeout.map(duration_string)}),
                None,
            )
            .await;
        Self::unwrap_data(name, memo)
    }

    /// Sends events exactly once (even when the function is retried); returns their ids.
    pub async fn send_event(&self, name: &str, events: Vec<Value>) -> Result<Vec<String>, Error> {
        let client = self.client.clone();
        self.run(
            name,
            move || async move { client.send_events(events).await },
        )
        .await
    }
}

/// What one call answers.
pub(crate) enum Outcome {
    /// 200: the function returned.
    Done(Value),
    /// 206: new steps.
    Steps(Vec<Value>),
    /// 500: the function (or a step, fatally) failed.
    Failed {
        error: Value,
        no_retry: bool,
        retry_after: Option<Duration>,
    },
}

fn error_value(name: &str, message: &str) -> Value {
    json!({"name": name, "message": message})
}

fn failed(error: Error) -> Outcome {
    match error {
        Error::NonRetriable(message) => Outcome::Failed {
            error: error_value("NonRetriableError", &message),
            no_retry: true,
            retry_after: None,
        },
        Error::RetryAfter { message, after } => Outcome::Failed {
            error: error_value("RetryAfterError", &message),
            no_retry: false,
            retry_after: Some(after),
        },
        // A step that failed for good, re-raised by the handler: the run fails.
        Error::Step { name, message } => Outcome::Failed {
            error: error_value(&name, &message),
            no_retry: true,
            retry_after: None,
        },
        Error::Failed(message) => Outcome::Failed {
            error: error_value("Error", &message),
            no_retry: false,
            retry_after: None,
        },
        Error::Sdk(message) => Outcome::Failed {
            error: error_value("SdkError", &message),
            no_retry: false,
            retry_after: None,
        },
    }
}

/// Runs one call of `function`.
pub(crate) async fn execute(
    function: &Function,
    context: Context,
    memos: HashMap<String, Value>,
    target: Option<String>,
    disable_immediate: bool,
    client: crate::Client,
) -> Outcome {
    let Some(handler) = function.handler.clone() else {
        return failed(Error::NonRetriable(format!(
            "function {} has no handler",
            function.id
        )));
    };
    let state = Arc::new(StepState {
        memos,
        counters: Mutex::new(HashMap::new()),
        new_steps: Mutex::new(Vec::new()),
        reached_new: Notify::new(),
    });
    let step = Step {
        state: state.clone(),
        client,
    };
    let mut run = handler(context, step);
    // The handler either returns, or reaches new steps. Steps awaited together are all
    // registered in the same poll, before the handler yields.
    tokio::select! {
        biased;
        result = &mut run => {
            return match result {
                Ok(value) => Outcome::Done(value),
                Err(error) => failed(error),
            };
        }
        () = state.reached_new.notified() => {}
    }
    drop(run);
    let mut steps = std::mem::take(&mut *state.new_steps.lock().unwrap_or_else(|e| e.into_inner()));

    let chosen = match &target {
        Some(target) => match steps.iter().position(|s| &s.id == target) {
            Some(i) => Some(i),
            None => {
                return failed(Error::Failed(format!(
                    "step {target} was not reached; the function's steps changed between calls"
                )));
            }
        },
        None if steps.len() == 1 && steps[0].op == "StepRun" && !disable_immediate => Some(0),
        None => None,
    };
    if let Some(i) = chosen {
        let mut step = steps.swap_remove(i);
        if let Some(run) = step.run.take() {
            return match run().await {
                Ok(data) => Outcome::Steps(vec![op_json(&step, "StepRun", Some(data), None)]),
                Err(error @ (Error::NonRetriable(_) | Error::RetryAfter { .. })) => failed(error),
                Err(error) => {
                    let message = match &error {
                        Error::Failed(m) | Error::Sdk(m) => m.clone(),
                        other => other.to_string(),
                    };
                    Outcome::Steps(vec![op_json(
                        &step,
                        "StepError",
                        None,
                        Some(error_value("Error", &message)),
                    )])
                }
            };
        }
        return Outcome::Steps(vec![op_json(&step, step.op, None, None)]);
    }
    Outcome::Steps(
        steps
            .iter()
            .map(|s| {
                op_json(
                    s,
                    if s.op == "StepRun" {
                        "StepPlanned"
                    } else {
                        s.op
                    },
                    None,
                    None,
                )
            })
            .collect(),
    )
}

fn op_json(step: &NewStep, op: &str, data: Option<Value>, error: Option<Value>) -> Value {
    let mut value = json!({
        "id": step.id,
        "name": step.name,
        "displayName": step.name,
        "op": op,
        "opts": if op == "StepPlanned" || op == "StepRun" || op == "StepError" { Value::Null } else { step.opts.clone() },
        "data": data.unwrap_or(Value::Null),
    });
    if let (Some(error), Some(map)) = (error, value.as_object_mut()) {
        map.insert("error".into(), error);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_ids_follow_the_protocol() {
        let step = Step {
            state: Arc::new(StepState {
                memos: HashMap::new(),
                counters: Mutex::new(HashMap::new()),
                new_steps: Mutex::new(Vec::new()),
                reached_new: Notify::new(),
            }),
            client: crate::Client::new("http://x"),
        };
        assert_eq!(
            step.hashed_id("a"),
            "86f7e437faa5a7fce15d1ddcb9eaeaea377667b8"
        );
        assert_eq!(
            step.hashed_id("a"),
            "de89bfaf06245091a7873290a793604612302247"
        );
    }
}
