//! The SDK wire protocol (Inngest's), server side: what a call to an app looks like,
//! how its answer maps onto the Run aggregate's `CallOutcome`, and request signatures.
//! `docs/sdk-protocol.md` is the human-readable version of this module.

use chrono::{DateTime, Duration, Utc};
use flowforge_domain::approval::{ApprovalAsk, validate_ask};
use flowforge_domain::run::{
    CallOutcome, CallTarget, MemoizedStep, Op, RunState, StepError, StepKind, StepOutput,
};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;
use uuid::Uuid;

/// The protocol's name for "no particular step": run the function from the top.
pub const DISCOVERY_STEP_ID: &str = "step";
/// How long an invoke waits for the child when the app gives no timeout.
pub const DEFAULT_INVOKE_TIMEOUT: Duration = Duration::days(365);
/// A wait with no timeout still ends; Inngest's maximum run duration is a year.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::days(365);

/// The value the app finds under a step's id in `steps`.
pub fn step_memo(step: &MemoizedStep) -> Value {
    match (&step.output, step.kind) {
        // A matched wait is the raw event; everything else that has data is wrapped.
        (StepOutput::Data(event), StepKind::WaitForEvent) => event.clone(),
        (StepOutput::Data(data), _) => json!({ "data": data }),
        (StepOutput::Error(error), _) => json!({ "error": error_json(error) }),
        (StepOutput::Nothing, _) => Value::Null,
    }
}

pub fn error_json(error: &StepError) -> Value {
    let mut map = Map::new();
    map.insert("name".into(), Value::String(error.name.clone()));
    map.insert("message".into(), Value::String(error.message.clone()));
    for (key, value) in &error.details {
        map.insert(key.clone(), value.clone());
    }
    Value::Object(map)
}

/// The body of a call to the app for `target`.
pub fn call_body(state: &RunState, target: &CallTarget, attempt: u32) -> Value {
    let events = state.events.clone();
    let event = events.first().cloned().unwrap_or_else(|| json!({}));
    let steps: Map<String, Value> = state
        .steps
        .iter()
        .map(|(id, step)| (id.clone(), step_memo(step)))
        .collect();
    let step_id = match target {
        CallTarget::Discovery => DISCOVERY_STEP_ID.to_owned(),
        CallTarget::Step(id) => id.clone(),
    };
    json!({
        "event": event,
        "events": events,
        "steps": steps,
        "ctx": {
            "run_id": state.run_id.map(|r| r.to_string()).unwrap_or_default(),
            "fn_id": state.function.as_ref().map(|f| f.function_id.clone()).unwrap_or_default(),
            "step_id": step_id,
            "attempt": attempt,
            "max_attempts": state.max_attempts,
                        "disable_immediate_execution": state.force_step_plan(),
            "use_api": false,
            "stack": {"stack": state.stack, "current": state.stack.len()},
            "env": "",
        },
        "version": 2,
        "use_api": false,
    })
}

/// A call body that tells the app to fetch the events and memoized steps itself
/// (`GET /v0/runs/{id}/batch` and `/actions`), for runs whose full body is too large.
pub fn use_api_body(full: &Value) -> Value {
    let mut body = full.clone();
    if let Some(map) = body.as_object_mut() {
        map.insert("steps".into(), json!({}));
        map.insert("events".into(), json!([]));
        map.insert("use_api".into(), Value::Bool(true));
        if let Some(ctx) = map.get_mut("ctx").and_then(Value::as_object_mut) {
            ctx.insert("use_api".into(), Value::Bool(true));
        }
    }
    body
}

/// The app URL for a call: the registered step URL with `stepId` set for the target.
pub fn call_url(registered: &str, target: &CallTarget) -> String {
    let step = match target {
        CallTarget::Discovery => DISCOVERY_STEP_ID,
        CallTarget::Step(id) => id.as_str(),
    };
    let (base, query) = registered.split_once('?').unwrap_or((registered, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("stepId="))
        .map(str::to_owned)
        .collect();
    params.push(format!("stepId={step}"));
    format!("{base}?{}", params.join("&"))
}

/// What came back from the app, before it is mapped to an outcome.
pub struct CallResponse<'a> {
    pub status: u16,
    pub no_retry: bool,
    pub retry_after: Option<&'a str>,
    pub body: &'a [u8],
}

/// Maps an app's answer onto the Run aggregate's vocabulary.
///
/// `new_id` supplies ids the server must choose (invoked child runs), so that this
/// function stays deterministic.
pub fn parse_response(
    response: &CallResponse<'_>,
    now: DateTime<Utc>,
    mut new_id: impl FnMut() -> Uuid,
) -> CallOutcome {
    let retry_after = response.retry_after.and_then(|v| parse_retry_after(v, now));
    let body: Result<Value, _> = serde_json::from_slice(response.body);
    match response.status {
        200 => CallOutcome::Completed {
            output: body.unwrap_or(Value::Null),
        },
        206 => match body {
            Ok(Value::Array(items)) => {
                let mut ops = Vec::with_capacity(items.len());
                for item in &items {
                    match parse_op(item, now, response.no_retry, &mut new_id) {
                        Ok(Some(op)) => ops.push(op),
                        Ok(None) => {}
                        Err(message) => return protocol_error(message),
                    }
                }
                CallOutcome::Ops(ops)
            }
            Ok(Value::Object(item)) => {
                // A single op not wrapped in an array (older SDKs).
                match parse_op(&Value::Object(item), now, response.no_retry, &mut new_id) {
                    Ok(op) => CallOutcome::Ops(op.into_iter().collect()),
                    Err(message) => protocol_error(message),
                }
            }
            _ => CallOutcome::Failed {
                status: None,
                error: StepError::new(
                    "ProtocolError",
                    "a 206 answer must be a JSON array of steps",
                ),
                retriable: true,
                retry_after,
            },
        },
        status => {
            let error = body
                .ok()
                .and_then(|b| parse_error(&b))
                .map(|mut error| {
                    // A 500 is the function failing; anything else is the app (or what is
                    // in front of it) refusing the call, which the error must say.
                    if status != 500 {
                        error.message =
                            format!("the app answered HTTP {status}: {}", error.message);
                    }
                    error
                })
                .unwrap_or_else(|| {
                    StepError::new(
                        "HttpError",
                        format!(
                            "the app answered HTTP {status}: {}",
                            String::from_utf8_lossy(&response.body[..response.body.len().min(500)])
                        ),
                    )
                });
            CallOutcome::Failed {
                error,
                retriable: !response.no_retry,
                retry_after,
                status: Some(status),
            }
        }
    }
}

fn parse_error(value: &Value) -> Option<StepError> {
    let object = value.as_object()?;
    let message = object.get("message").and_then(Value::as_str)?;
    Some(StepError {
        name: object
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("Error")
            .to_owned(),
        message: message.to_owned(),
        details: object
            .iter()
            .filter(|(key, _)| key.as_str() != "name" && key.as_str() != "message")
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
    })
}

fn str_field<'a>(item: &'a Value, key: &str) -> Option<&'a str> {
    item.get(key).and_then(Value::as_str)
}

fn parse_op(
    item: &Value,
    now: DateTime<Utc>,
    no_retry: bool,
    new_id: &mut impl FnMut() -> Uuid,
) -> Result<Option<Op>, String> {
    let id = str_field(item, "id")
        .ok_or("a step has no `id`")?
        .to_owned();
    let op = str_field(item, "op").ok_or_else(|| format!("step {id} has no `op`"))?;
    let display = str_field(item, "displayName")
        .or_else(|| str_field(item, "name"))
        .unwrap_or(&id)
        .to_owned();
    let opts = item.get("opts").cloned().unwrap_or(Value::Null);
    let opt_str = |key: &str| opts.get(key).and_then(Value::as_str).map(str::to_owned);
    let timeout = |default: Duration| -> Result<Duration, String> {
        match opt_str("timeout") {
            Some(t) => flowforge_domain::duration::parse(&t).map_err(|e| format!("step {id}: {e}")),
            None => Ok(default),
        }
    };
    Ok(Some(match op {
        "StepRun" => Op::StepRun {
            id,
            name: display,
            output: item.get("data").cloned().unwrap_or(Value::Null),
        },
        "StepError" | "StepFailed" => Op::StepError {
            error: item.get("error").and_then(parse_error).unwrap_or_else(|| {
                StepError::new("Error", "the step failed without an error message")
            }),
            retriable: op == "StepError" && !no_retry,
            retry_after: None,
            id,
            name: display,
        },
        "StepPlanned" => Op::StepPlanned {
            race: opts.get("parallelMode").and_then(Value::as_str) == Some("race"),
            id,
            name: display,
        },
        "Sleep" => {
            // Go SDKs send `opts.duration`; the Python SDK puts the wake-up time in `name`.
            let until = match opt_str("duration") {
                Some(d) => {
                    now + flowforge_domain::duration::parse(&d)
                        .map_err(|e| format!("step {id}: {e}"))?
                }
                None => {
                    let name = str_field(item, "name").unwrap_or_default();
                    DateTime::parse_from_rfc3339(name)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|_| {
                            format!("sleep {id} has neither opts.duration nor a timestamp name")
                        })?
                }
            };
            Op::Sleep {
                id,
                name: display,
                until,
            }
        }
        "WaitForEvent" => {
            let event = opt_str("event")
                .or_else(|| str_field(item, "name").map(str::to_owned))
                .ok_or_else(|| format!("wait {id} names no event"))?;
            let approval = match opts.get("approval") {
                None | Some(Value::Null) => None,
                Some(ask) => {
                    let ask: ApprovalAsk = serde_json::from_value(ask.clone())
                        .map_err(|e| format!("approval wait {id}: opts.approval: {e}"))?;
                    validate_ask(&ask).map_err(|e| format!("approval wait {id}: {e}"))?;
                    Some(ask)
                }
            };
            Op::WaitForEvent {
                until: now + timeout(DEFAULT_WAIT_TIMEOUT)?,
                expression: opt_str("if"),
                approval,
                event,
                id,
                name: display,
            }
        }
        "InvokeFunction" => Op::InvokeFunction {
            function_id: opt_str("function_id")
                .ok_or_else(|| format!("invoke {id} names no function_id"))?,
            payload: opts.get("payload").cloned().unwrap_or(Value::Null),
            until: now + timeout(DEFAULT_INVOKE_TIMEOUT)?,
            child_run_id: new_id(),
            id,
            name: display,
        },
        // The server makes these requests itself: see `ai_gateway`.
        "AIGateway" => return Ok(None),
        other => return Err(format!("step {display} has an unknown op `{other}`")),
    }))
}

/// The app answered something the protocol does not allow: retrying will not change it.
pub fn protocol_error(message: impl Into<String>) -> CallOutcome {
    CallOutcome::Failed {
        status: None,
        error: StepError::new("ProtocolError", message),
        retriable: false,
        retry_after: None,
    }
}

fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Ok(seconds) = value.trim().parse::<i64>() {
        return Some(now + Duration::seconds(seconds));
    }
    DateTime::parse_from_rfc3339(value.trim())
        .or_else(|_| DateTime::parse_from_rfc2822(value.trim()))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

// ------------------------------------------------------------------ signatures

/// The HMAC key of a signing key: the key without its `signkey-<env>-` prefix, as text.
fn hmac_key(signing_key: &str) -> &str {
    let Some(rest) = signing_key.strip_prefix("signkey-") else {
        return signing_key;
    };
    match rest.split_once('-') {
        Some((env, key))
            if !env.is_empty() && env.chars().all(|c| c.is_alphanumeric() || c == '_') =>
        {
            key
        }
        _ => signing_key,
    }
}

/// `X-Inngest-Signature` for `body` sent at `unix_seconds`.
pub fn sign(signing_key: &str, body: &[u8], unix_seconds: i64) -> String {
    let t = unix_seconds.to_string();
    let mut mac = match Hmac::<Sha256>::new_from_slice(hmac_key(signing_key).as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    mac.update(t.as_bytes());
    format!("t={t}&s={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks an `X-Inngest-Signature` header against `body` with any of `keys`.
/// `max_age` bounds how old the signature's timestamp may be.
pub fn verify(
    header: &str,
    body: &[u8],
    keys: &[&str],
    now_seconds: i64,
    max_age_seconds: i64,
) -> bool {
    let mut t = None;
    let mut s = None;
    for part in header.split('&') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("s", v)) => s = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(s)) = (t, s) else {
        return false;
    };
    if (now_seconds - t).abs() > max_age_seconds {
        return false;
    }
    keys.iter().any(|key| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(hmac_key(key).as_bytes()) else {
            return false;
        };
        mac.update(body);
        mac.update(t.to_string().as_bytes());
        mac.verify_slice(&s).is_ok()
    })
}

/// The JSON bytes a signed call carries: RFC 8785 canonical form, as Inngest's servers
/// send (the Python SDK canonicalises the body before checking the signature).
///
/// Most bodies are written by serde_json directly: for them its output already is the
/// canonical form, and the canonicaliser took 8 % of the server's CPU in the runs
/// benchmark. The rest (fractions, integers past 2^53, non-ASCII keys) go through it.
pub fn canonical_bytes(value: &Value) -> Vec<u8> {
    if serializes_canonically(value)
        && let Ok(bytes) = serde_json::to_vec(value)
    {
        return bytes;
    }
    serde_json_canonicalizer::to_vec(value).unwrap_or_else(|_| value.to_string().into_bytes())
}

/// Whether serde_json writes `value` exactly as RFC 8785 does. Both escape strings the
/// same way (`\"`, `\\`, `\b \f \n \r \t`, other control characters as lowercase
/// `\u00xx`, everything else as is). They differ on numbers other than integers of at
/// most 2^53 (RFC 8785 writes every number as ECMAScript writes a double), and on key
/// order: RFC 8785 sorts by UTF-16 code units, serde_json keeps a map's order, which
/// is byte order for its sorted maps — the same order for ASCII keys. The order is
/// checked, not assumed, so a map that keeps insertion order takes the slow path.
fn serializes_canonically(value: &Value) -> bool {
    const EXACT: u64 = 1 << 53;
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => true,
        Value::Number(n) => n
            .as_u64()
            .map(|u| u <= EXACT)
            .or_else(|| n.as_i64().map(|i| i.unsigned_abs() <= EXACT))
            .unwrap_or(false),
        Value::Array(items) => items.iter().all(serializes_canonically),
        Value::Object(map) => {
            let mut previous: Option<&str> = None;
            map.iter().all(|(key, item)| {
                let in_order = key.is_ascii() && previous.is_none_or(|p| p < key.as_str());
                previous = Some(key);
                in_order && serializes_canonically(item)
            })
        }
    }
}

/// Compares secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A signing-key bearer without its `signkey-<env>-` prefix (SDKs send it with one,
/// some tools without).
pub fn bare_bearer(token: &str) -> &str {
    let token = token.trim();
    token
        .strip_prefix("signkey-")
        .and_then(|rest| rest.split_once('-').map(|(_, hash)| hash))
        .unwrap_or(token)
}

/// The hashed form of a signing key that SDKs send as `Authorization: Bearer …`.
pub fn hashed_signing_key(signing_key: &str) -> String {
    use sha2::Digest;
    let key = hmac_key(signing_key);
    let bytes = hex::decode(key).unwrap_or_else(|_| key.as_bytes().to_vec());
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn respond(status: u16, body: Value) -> CallOutcome {
        let bytes = body.to_string().into_bytes();
        parse_response(
            &CallResponse {
                status,
                no_retry: false,
                retry_after: None,
                body: &bytes,
            },
            now(),
            || Uuid::from_u128(9),
        )
    }

    #[test]
    fn a_200_completes_with_the_raw_return_value() {
        assert_eq!(
            respond(200, json!({"ok": 1})),
            CallOutcome::Completed {
                output: json!({"ok": 1})
            }
        );
    }

    #[test]
    fn the_python_sdks_ops_are_understood() {
        let ops = respond(
            206,
            json!([
                {"displayName":"a","id":"86f7","name":"a","op":"StepRun","opts":null,"userland":{"id":"a","index":null},"data":{"v":1}},
                {"displayName":"p1","id":"b78f","name":"p1","op":"StepPlanned","opts":null,"data":null},
                {"displayName":"nap","id":"c264","name":"2027-01-15T08:00:10.000Z","op":"Sleep","opts":null,"data":null},
                {"displayName":"wait","id":"daaa","name":"app/approve","op":"WaitForEvent","opts":{"if":"event.data.id == async.data.id","timeout":"1h"},"data":null},
                {"displayName":"inv","id":"a22c","name":"inv","op":"InvokeFunction","opts":{"function_id":"my-app-child","payload":{"data":{"k":2},"v":null},"timeout":null},"data":null},
                {"displayName":"boom","id":"c53d","name":"boom","op":"StepError","opts":null,"error":{"code":"unknown","message":"kaboom","name":"ValueError","stack":"Traceback"},"data":null},
                {"displayName":"last","id":"e1e1","name":"last","op":"StepFailed","opts":null,"error":{"message":"final","name":"ValueError"},"data":null}
            ]),
        );
        let CallOutcome::Ops(ops) = ops else {
            panic!("{ops:?}")
        };
        assert_eq!(
            ops[0],
            Op::StepRun {
                id: "86f7".into(),
                name: "a".into(),
                output: json!({"v": 1})
            }
        );
        assert_eq!(
            ops[1],
            Op::StepPlanned {
                id: "b78f".into(),
                name: "p1".into(),
                race: false,
            }
        );
        assert!(
            matches!(&ops[2], Op::Sleep { until, .. } if until.to_rfc3339() == "2027-01-15T08:00:10+00:00")
        );
        assert!(
            matches!(&ops[3], Op::WaitForEvent { event, expression: Some(e), until, .. }
            if event == "app/approve" && e == "event.data.id == async.data.id" && *until == now() + Duration::hours(1))
        );
        assert!(
            matches!(&ops[4], Op::InvokeFunction { function_id, payload, child_run_id, .. }
            if function_id == "my-app-child" && payload["data"]["k"] == 2 && *child_run_id == Uuid::from_u128(9))
        );
        assert!(
            matches!(&ops[5], Op::StepError { error, retriable: true, .. } if error.message == "kaboom" && error.name == "ValueError")
        );
        assert!(matches!(
            &ops[6],
            Op::StepError {
                retriable: false,
                ..
            }
        ));
    }

    #[test]
    fn errors_map_to_retriable_or_final_failures() {
        let bytes =
            json!({"code":"non_retriable_error","message":"nope","name":"NonRetriableError"})
                .to_string();
        let outcome = parse_response(
            &CallResponse {
                status: 500,
                no_retry: true,
                retry_after: None,
                body: bytes.as_bytes(),
            },
            now(),
            Uuid::now_v7,
        );
        assert!(
            matches!(outcome, CallOutcome::Failed { retriable: false, ref error, .. } if error.name == "NonRetriableError")
        );
        let outcome = parse_response(
            &CallResponse {
                status: 500,
                no_retry: false,
                retry_after: Some("2027-01-15T08:00:30.000Z"),
                body: b"oops",
            },
            now(),
            Uuid::now_v7,
        );
        assert!(
            matches!(outcome, CallOutcome::Failed { retriable: true, retry_after: Some(_), ref error, .. } if error.name == "HttpError")
        );
        let outcome = parse_response(
            &CallResponse {
                status: 500,
                no_retry: false,
                retry_after: Some("30"),
                body: b"{}",
            },
            now(),
            Uuid::now_v7,
        );
        assert!(
            matches!(outcome, CallOutcome::Failed { retry_after: Some(t), .. } if t == now() + Duration::seconds(30))
        );
        // AIGateway ops are left for the AI gateway, which the executor runs.
        assert!(matches!(
            respond(206, json!([{"id": "x", "op": "AIGateway"}])),
            CallOutcome::Ops(ops) if ops.is_empty()
        ));
        assert!(matches!(
            respond(206, json!([{"id": "x", "op": "Teleport"}])),
            CallOutcome::Failed {
                retriable: false,
                ..
            }
        ));
        let refused = respond(401, json!({"message": "Unauthorized"}));
        assert!(
            matches!(&refused, CallOutcome::Failed { retriable: true, error, .. }
                if error.message == "the app answered HTTP 401: Unauthorized"),
            "{refused:?}"
        );
        assert!(matches!(
            respond(206, json!("nope")),
            CallOutcome::Failed { .. }
        ));
    }

    #[test]
    fn memos_have_the_shapes_sdks_expect() {
        let run = MemoizedStep {
            name: "a".into(),
            kind: StepKind::Run,
            output: StepOutput::Data(json!(1)),
        };
        assert_eq!(step_memo(&run), json!({"data": 1}));
        let wait = MemoizedStep {
            name: "w".into(),
            kind: StepKind::WaitForEvent,
            output: StepOutput::Data(json!({"name": "e", "data": {}})),
        };
        assert_eq!(step_memo(&wait), json!({"name": "e", "data": {}}));
        let sleep = MemoizedStep {
            name: "s".into(),
            kind: StepKind::Sleep,
            output: StepOutput::Nothing,
        };
        assert_eq!(step_memo(&sleep), Value::Null);
        let failed = MemoizedStep {
            name: "f".into(),
            kind: StepKind::Run,
            output: StepOutput::Error(StepError::new("ValueError", "bad")),
        };
        assert_eq!(
            step_memo(&failed),
            json!({"error": {"name": "ValueError", "message": "bad"}})
        );
    }

    #[test]
    fn call_urls_target_the_step() {
        let url = "http://app:8000/api/inngest?fnId=my-app-hello&stepId=step";
        assert_eq!(call_url(url, &CallTarget::Discovery), url);
        assert_eq!(
            call_url(url, &CallTarget::Step("abc".into())),
            "http://app:8000/api/inngest?fnId=my-app-hello&stepId=abc"
        );
        assert_eq!(
            call_url("http://app/x", &CallTarget::Discovery),
            "http://app/x?stepId=step"
        );
    }

    #[test]
    fn signatures_verify_with_the_current_or_the_fallback_key() {
        let key = "signkey-prod-0123456789abcdef";
        let old = "signkey-prod-fedcba9876543210";
        let body = br#"{"a":1}"#;
        let header = sign(key, body, 1_800_000_000);
        assert!(header.starts_with("t=1800000000&s="));
        assert!(verify(&header, body, &[key], 1_800_000_010, 300));
        assert!(verify(&header, body, &[old, key], 1_800_000_010, 300));
        assert!(!verify(&header, body, &[old], 1_800_000_010, 300));
        assert!(!verify(&header, br#"{"a":2}"#, &[key], 1_800_000_010, 300));
        assert!(
            !verify(&header, body, &[key], 1_800_001_000, 300),
            "too old"
        );
        // The prefix is not part of the key, and keys of other environments work the same.
        assert_eq!(
            sign("signkey-test-0123456789abcdef", body, 1),
            sign("0123456789abcdef", body, 1)
        );
    }

    /// Values of every shape the fast path takes or refuses: each must come out exactly
    /// as the RFC 8785 canonicaliser writes it.
    #[test]
    fn canonical_bytes_are_what_the_canonicaliser_writes() {
        let strings = [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "\u{0}\u{1}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f}\u{7f}",
            "é ü ß 中文 🎉 \u{2028}\u{2029} \u{e000}",
        ];
        let numbers = [
            json!(0),
            json!(-1),
            json!(42),
            json!(9_007_199_254_740_992u64),
            json!(-9_007_199_254_740_992i64),
            json!(9_007_199_254_740_993u64),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.0),
            json!(0.1),
            json!(-2.5e-7),
            json!(1e21),
            json!(123456789.125),
        ];
        let keys = ["a", "b", "B", "_", "aa", "é", "🎉", "\u{e000}", "z1", "Z"];
        let mut values: Vec<Value> = vec![Value::Null, json!(true), json!(false)];
        values.extend(strings.iter().map(|s| json!(s)));
        values.extend(numbers.iter().cloned());
        let leaves = values.clone();
        for (i, leaf) in leaves.iter().enumerate() {
            let mut object = serde_json::Map::new();
            for (j, key) in keys.iter().enumerate() {
                if (i + j) % 3 != 0 {
                    object.insert(
                        (*key).to_owned(),
                        leaves[(i * 7 + j) % leaves.len()].clone(),
                    );
                }
            }
            values.push(json!([leaf, Value::Object(object.clone()), [object]]));
        }
        values.push(
            json!({"run": {"steps": [{"id": "step1", "data": 1}], "attempt": 0},
            "event": {"name": "bench/run", "data": {"input": 0}, "ts": 1_764_000_000_000u64}}),
        );
        let mut fast = 0;
        for value in &values {
            assert_eq!(
                String::from_utf8(canonical_bytes(value)).unwrap(),
                String::from_utf8(serde_json_canonicalizer::to_vec(value).unwrap()).unwrap(),
                "{value}"
            );
            fast += usize::from(serializes_canonically(value));
        }
        // Both paths were taken.
        assert!(
            fast > 10 && fast < values.len() - 10,
            "{fast} of {}",
            values.len()
        );
    }

    #[test]
    fn canonical_json_sorts_keys() {
        assert_eq!(
            canonical_bytes(&json!({"b": 1, "a": [2, {"d": 1, "c": 2}]})),
            br#"{"a":[2,{"c":2,"d":1}],"b":1}"#.to_vec()
        );
    }
}
