//! Limits on how many runs of a function start: `rateLimit` (at most N runs per period
//! per key) and `idempotency` (one run per key per 24 hours). Each is decided by the
//! `Admission` aggregate of its function and key before the run is created; a run a
//! limit refuses is created skipped, with the reason, so the run list shows it.

use chrono::{DateTime, Duration, Utc};
use flowforge_commands::CommandError;
use flowforge_domain::EventMetadata;
use flowforge_domain::admission::{
    self, Admission, AdmissionError, AdmissionEvent, Admit, window_of,
};
use flowforge_domain::app::FunctionVersion;
use flowforge_domain::flow_control::FlowControl;
use flowforge_domain::run::SkipReason;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::EngineContext;
use crate::expr::Expressions;
use crate::space::Space;

/// One limit a new run must pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub reason: SkipReason,
    /// The key as evaluated for this run's event (empty: the whole function).
    pub key: String,
    pub limit: u32,
    pub period: Duration,
    /// Cut into windows of one period (rate limits); idempotency keys are one stream.
    pub windowed: bool,
    /// When the decision is made: the event's arrival, so a decision made again after
    /// a restart is the same one.
    pub at: DateTime<Utc>,
}

impl Gate {
    fn rule(&self) -> &'static str {
        match self.reason {
            SkipReason::RateLimited => "rate_limit",
            SkipReason::Idempotent => "idempotency",
        }
    }

    fn detail(&self) -> String {
        let key = if self.key.is_empty() {
            String::new()
        } else {
            format!(" for key `{}`", self.key)
        };
        match self.reason {
            SkipReason::RateLimited => format!(
                "rate limit of {} run(s) per {}s reached{key}",
                self.limit,
                self.period.num_seconds()
            ),
            SkipReason::Idempotent => {
                format!(
                    "a run with idempotency key `{}` ran within the last 24h",
                    self.key
                )
            }
        }
    }
}

fn key_text(expressions: &Expressions, expression: Option<&str>, event: &Value) -> String {
    let Some(expression) = expression else {
        return String::new();
    };
    match expressions.evaluate(expression, &[("event", event)]) {
        Ok(Value::String(text)) => text,
        Ok(Value::Null) => String::new(),
        Ok(other) => other.to_string(),
        Err(error) => {
            // The expression compiled at sync; the event lacks what it reads. The
            // run shares the limit of every run without a key.
            tracing::warn!(%error, "a flow-control key did not evaluate; using no key");
            String::new()
        }
    }
}

/// The limits a run of `function` for `event` must pass, idempotency first (a
/// duplicate must not use up a place of the rate limit).
pub fn gates(
    expressions: &Expressions,
    function: &FunctionVersion,
    event: &Value,
    at: DateTime<Utc>,
) -> Vec<Gate> {
    if function.spec.flow_control.is_null() {
        return Vec::new();
    }
    let control = match FlowControl::parse(&function.spec.flow_control) {
        Ok(control) => control,
        Err(error) => {
            // Checked at sync; a version synced before the check existed may not parse.
            tracing::warn!(function = %function.spec.id, %error, "flow control ignored");
            return Vec::new();
        }
    };
    let mut gates = Vec::new();
    if let Some(expression) = &control.idempotency {
        gates.push(Gate {
            reason: SkipReason::Idempotent,
            key: key_text(expressions, Some(expression), event),
            limit: 1,
            period: Duration::hours(24),
            windowed: false,
            at,
        });
    }
    if let Some(limit) = &control.rate_limit {
        gates.push(Gate {
            reason: SkipReason::RateLimited,
            key: key_text(expressions, limit.key.as_deref(), event),
            limit: limit.limit,
            period: limit.period,
            windowed: true,
            at,
        });
    }
    gates
}

fn digest(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..16])
}

/// Decides one gate for a run: `None` when it may run, the skip otherwise.
pub async fn admit(
    context: &EngineContext,
    meta: &EventMetadata,
    space: &Space,
    function_id: &str,
    run_id: Uuid,
    gate: &Gate,
) -> Result<Option<(SkipReason, String)>, String> {
    let key_digest = digest(&gate.key);
    let stream = |window: Option<i64>| {
        admission::stream_id(
            space.tenant(),
            space.environment,
            function_id,
            gate.rule(),
            &key_digest,
            window,
        )
    };
    let (current, earlier) = if gate.windowed {
        let window = window_of(gate.at, gate.period);
        let previous = context
            .store
            .read_stream(&stream(Some(window - 1)), 1)
            .await
            .map_err(|e| e.to_string())?;
        let earlier = previous
            .iter()
            .filter_map(|e| match e.decode::<AdmissionEvent>() {
                Ok(AdmissionEvent::Granted { at, .. }) => Some(at),
                Err(_) => None,
            })
            .collect();
        (stream(Some(window)), earlier)
    } else {
        (stream(None), Vec::new())
    };
    let decided = context
        .commands
        .handle::<Admission>(&current, meta, || Admit {
            run_id,
            key: gate.key.clone(),
            limit: gate.limit,
            period: gate.period,
            earlier: earlier.clone(),
            at: gate.at,
        })
        .await;
    match decided {
        Ok(_) => Ok(None),
        Err(CommandError::Domain(AdmissionError::LimitReached { .. })) => {
            Ok(Some((gate.reason, gate.detail())))
        }
        Err(other) => Err(other.to_string()),
    }
}
