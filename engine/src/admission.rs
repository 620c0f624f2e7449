//! Limits on which runs of a function start: `rateLimit` (at most N runs per period
//! per key), `idempotency` (one run per key per 24 hours) and `singleton` (one active
//! run per key: a new one is skipped, or replaces the active one). Each is decided by
//! an aggregate of its function and key (`Admission`, `Singleton`) before the run is
//! created; a run a limit refuses is created skipped, with the reason, so the run list
//! shows it.

use chrono::{DateTime, Duration, Utc};
use flowforge_commands::CommandError;
use flowforge_domain::EventMetadata;
use flowforge_domain::admission::singleton::{Claim, Singleton, SingletonError, SingletonEvent};
use flowforge_domain::admission::{
    self, Admission, AdmissionError, AdmissionEvent, Admit, singleton, window_of,
};
use flowforge_domain::app::FunctionVersion;
use flowforge_domain::flow_control::{FlowControl, SingletonMode};
use flowforge_domain::run::{Run, RunCommand, SkipReason};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::EngineContext;
use crate::expr::Expressions;
use crate::space::Space;

#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// At most `limit` runs per `period`; cut into windows of one period (rate
    /// limits) or one stream per key (idempotency).
    Limit {
        limit: u32,
        period: Duration,
        windowed: bool,
    },
    /// One active run per key; `cancel`: a new run replaces the active one.
    Singleton { cancel: bool },
}

/// One limit a new run must pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub reason: SkipReason,
    /// The key as evaluated for this run's event (empty: the whole function).
    pub key: String,
    pub rule: Rule,
    /// When the decision is made: the event's arrival, so a decision made again after
    /// a restart is the same one.
    pub at: DateTime<Utc>,
}

impl Gate {
    fn rule(&self) -> &'static str {
        match self.reason {
            SkipReason::RateLimited => "rate_limit",
            SkipReason::Idempotent => "idempotency",
            SkipReason::Singleton => "singleton",
        }
    }

    fn detail(&self) -> String {
        let key = if self.key.is_empty() {
            String::new()
        } else {
            format!(" for key `{}`", self.key)
        };
        match (self.reason, &self.rule) {
            (SkipReason::RateLimited, Rule::Limit { limit, period, .. }) => format!(
                "rate limit of {limit} run(s) per {}s reached{key}",
                period.num_seconds()
            ),
            (SkipReason::Singleton, _) => format!("another run is active{key} (singleton)"),
            (SkipReason::RateLimited, _) => format!("rate limit reached{key}"),
            (SkipReason::Idempotent, _) => {
                format!(
                    "a run with idempotency key `{}` ran within the last 24h",
                    self.key
                )
            }
        }
    }
}

pub(crate) fn key_text(
    expressions: &Expressions,
    expression: Option<&str>,
    event: &Value,
) -> String {
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
/// duplicate must not use up a place of the rate limit), singleton last.
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
            rule: Rule::Limit {
                limit: 1,
                period: Duration::hours(24),
                windowed: false,
            },
            at,
        });
    }
    if let Some(limit) = &control.rate_limit {
        gates.push(Gate {
            reason: SkipReason::RateLimited,
            key: key_text(expressions, limit.key.as_deref(), event),
            rule: Rule::Limit {
                limit: limit.limit,
                period: limit.period,
                windowed: true,
            },
            at,
        });
    }
    // Last: a run refused by another limit must not take the key.
    if let Some(singleton) = &control.singleton {
        gates.push(Gate {
            reason: SkipReason::Singleton,
            key: key_text(expressions, singleton.key.as_deref(), event),
            rule: Rule::Singleton {
                cancel: singleton.mode == SingletonMode::Cancel,
            },
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
    match gate.rule {
        Rule::Limit {
            limit,
            period,
            windowed,
        } => {
            admit_limit(
                context,
                meta,
                space,
                function_id,
                run_id,
                gate,
                (limit, period, windowed),
            )
            .await
        }
        Rule::Singleton { cancel } => {
            claim_singleton(context, meta, space, function_id, run_id, gate, cancel).await
        }
    }
}

async fn admit_limit(
    context: &EngineContext,
    meta: &EventMetadata,
    space: &Space,
    function_id: &str,
    run_id: Uuid,
    gate: &Gate,
    (limit, period, windowed): (u32, Duration, bool),
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
    let (current, earlier) = if windowed {
        let window = window_of(gate.at, period);
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
            limit,
            period,
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

async fn claim_singleton(
    context: &EngineContext,
    meta: &EventMetadata,
    space: &Space,
    function_id: &str,
    run_id: Uuid,
    gate: &Gate,
    cancel: bool,
) -> Result<Option<(SkipReason, String)>, String> {
    let stream = singleton::stream_id(
        space.tenant(),
        space.environment,
        function_id,
        &digest(&gate.key),
    );
    let holder = context
        .commands
        .load::<Singleton>(&stream)
        .await
        .map_err(|e| e.to_string())?
        .state
        .holder;
    // A holder that has finished gives way. (One claimed but not yet created counts as
    // active: its creation is on its way.)
    let mut finished_holder = None;
    if let Some(holder) = holder.filter(|h| *h != run_id) {
        let run = context
            .commands
            .load::<Run>(&flowforge_domain::run::stream_id(holder))
            .await
            .map_err(|e| e.to_string())?;
        if run.state.status.is_terminal() {
            finished_holder = Some(holder);
        }
    }
    let decided = context
        .commands
        .handle::<Singleton>(&stream, meta, || Claim {
            run_id,
            key: gate.key.clone(),
            finished_holder,
            replace_active: cancel,
            at: gate.at,
        })
        .await;
    match decided {
        Ok(handled) => {
            for event in &handled.events {
                let SingletonEvent::Claimed {
                    replaces: Some(replaced),
                    ..
                } = event
                else {
                    continue;
                };
                let reason = match gate.key.is_empty() {
                    true => format!("replaced by run {run_id} (singleton)"),
                    false => format!("replaced by run {run_id} (singleton key `{}`)", gate.key),
                };
                crate::scheduler::run_command(
                    context,
                    meta,
                    *replaced,
                    RunCommand::Cancel {
                        reason,
                        at: Utc::now(),
                    },
                )
                .await?;
            }
            Ok(None)
        }
        Err(CommandError::Domain(SingletonError::Busy(_))) => {
            Ok(Some((gate.reason, gate.detail())))
        }
        Err(other) => Err(other.to_string()),
    }
}
