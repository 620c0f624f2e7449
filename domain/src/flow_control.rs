//! A function's flow-control settings, as apps declare them at sync (the Inngest
//! protocol's shape: `concurrency`, `throttle`, `rateLimit`, `debounce`, `batchEvents`,
//! `idempotency`, `priority`, `singleton`, `timeouts`), read into types and checked, so
//! an impossible setting is refused at sync with the field that is wrong.
//!
//! Expressions (keys, `idempotency`, `priority.run`) are CEL; this module lists them
//! (`FlowControl::expressions`) for the caller to compile, as the domain does no
//! parsing of CEL itself.

use chrono::Duration;
use serde_json::Value;

use crate::duration;

/// How many concurrency limits a function may combine (a function-wide one and a
/// keyed one, as Inngest allows).
pub const MAX_CONCURRENCY_LIMITS: usize = 2;
pub const MAX_LIMIT: u64 = 100_000;
pub const MAX_BATCH_SIZE: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcurrencyScope {
    /// Runs of this function.
    Function,
    /// Runs of every function of the tenant's environment sharing the key.
    Environment,
    /// Runs of every function of the tenant sharing the key.
    Account,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyLimit {
    pub limit: u32,
    pub key: Option<String>,
    pub scope: ConcurrencyScope,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    pub limit: u32,
    pub period: Duration,
    pub burst: u32,
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: u32,
    pub period: Duration,
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debounce {
    pub period: Duration,
    pub key: Option<String>,
    /// The longest a run waits for quiet: a steady stream still runs.
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub max_size: u32,
    pub timeout: Duration,
    pub key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SingletonMode {
    Skip,
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Singleton {
    pub key: Option<String>,
    pub mode: SingletonMode,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// How long a run may wait to start.
    pub start: Option<Duration>,
    /// How long a run may take once started.
    pub finish: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowControl {
    pub concurrency: Vec<ConcurrencyLimit>,
    pub throttle: Option<Throttle>,
    pub rate_limit: Option<RateLimit>,
    pub debounce: Option<Debounce>,
    pub batch: Option<Batch>,
    pub idempotency: Option<String>,
    /// An expression giving a run a head start, in seconds.
    pub priority: Option<String>,
    pub singleton: Option<Singleton>,
    pub timeouts: Timeouts,
}

/// A setting that cannot be: the field (relative to the function) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FlowControlError {
    pub field: String,
    pub message: String,
}

fn error(field: impl Into<String>, message: impl Into<String>) -> FlowControlError {
    FlowControlError {
        field: field.into(),
        message: message.into(),
    }
}

fn object<'a>(
    value: &'a Value,
    field: &str,
) -> Result<&'a serde_json::Map<String, Value>, FlowControlError> {
    value
        .as_object()
        .ok_or_else(|| error(field, "must be an object"))
}

fn limit(map: &serde_json::Map<String, Value>, field: &str) -> Result<u32, FlowControlError> {
    let at = format!("{field}.limit");
    match map.get("limit") {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n as u32),
            _ => Err(error(
                at,
                format!("must be a whole number from 1 to {MAX_LIMIT}"),
            )),
        },
        _ => Err(error(at, "is required: a whole number from 1")),
    }
}

fn key(
    map: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<String>, FlowControlError> {
    match map.get("key") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(k)) if !k.trim().is_empty() => Ok(Some(k.clone())),
        Some(_) => Err(error(
            format!("{field}.key"),
            "must be an expression, e.g. event.data.customer_id",
        )),
    }
}

fn period(
    map: &serde_json::Map<String, Value>,
    name: &str,
    field: &str,
    range: (Duration, Duration),
    required: bool,
) -> Result<Option<Duration>, FlowControlError> {
    let at = format!("{field}.{name}");
    let text = match map.get(name) {
        None | Some(Value::Null) if !required => return Ok(None),
        Some(Value::String(text)) => text,
        _ => return Err(error(at, "is required: a duration such as 10s or 1m")),
    };
    let parsed = duration::parse(text).map_err(|e| error(at.clone(), e.to_string()))?;
    if parsed < range.0 || parsed > range.1 {
        return Err(error(
            at,
            format!(
                "must be from {}s to {}s",
                range.0.num_seconds(),
                range.1.num_seconds()
            ),
        ));
    }
    Ok(Some(parsed))
}

fn required_period(
    map: &serde_json::Map<String, Value>,
    name: &str,
    field: &str,
    range: (Duration, Duration),
) -> Result<Duration, FlowControlError> {
    period(map, name, field, range, true)?
        .ok_or_else(|| error(format!("{field}.{name}"), "is required"))
}

fn expression(value: &Value, field: &str) -> Result<String, FlowControlError> {
    match value {
        Value::String(e) if !e.trim().is_empty() => Ok(e.clone()),
        _ => Err(error(field, "must be an expression")),
    }
}

impl FlowControl {
    /// Reads the settings of one function from its sync (an object holding any of the
    /// protocol's flow-control keys; others are ignored).
    pub fn parse(function: &Value) -> Result<FlowControl, FlowControlError> {
        let mut control = FlowControl::default();
        let get = |k: &str| function.get(k).filter(|v| !v.is_null());
        if let Some(value) = get("concurrency") {
            let items: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                Value::Number(_) => vec![value],
                other => vec![other],
            };
            if items.len() > MAX_CONCURRENCY_LIMITS {
                return Err(error(
                    "concurrency",
                    format!("at most {MAX_CONCURRENCY_LIMITS} limits"),
                ));
            }
            for (i, item) in items.into_iter().enumerate() {
                let field = format!("concurrency[{i}]");
                let parsed = match item {
                    Value::Number(n) => match n.as_u64() {
                        Some(n) if (1..=MAX_LIMIT).contains(&n) => ConcurrencyLimit {
                            limit: n as u32,
                            key: None,
                            scope: ConcurrencyScope::Function,
                        },
                        _ => {
                            return Err(error(
                                field,
                                format!("must be a whole number from 1 to {MAX_LIMIT}"),
                            ));
                        }
                    },
                    other => {
                        let map = object(other, &field)?;
                        let scope = match map.get("scope").and_then(Value::as_str) {
                            None | Some("fn") => ConcurrencyScope::Function,
                            Some("env") => ConcurrencyScope::Environment,
                            Some("account") => ConcurrencyScope::Account,
                            Some(_) => {
                                return Err(error(
                                    format!("{field}.scope"),
                                    "must be fn, env or account",
                                ));
                            }
                        };
                        let key = key(map, &field)?;
                        if scope != ConcurrencyScope::Function && key.is_none() {
                            return Err(error(
                                format!("{field}.key"),
                                "a limit shared beyond the function needs a key",
                            ));
                        }
                        ConcurrencyLimit {
                            limit: limit(map, &field)?,
                            key,
                            scope,
                        }
                    }
                };
                control.concurrency.push(parsed);
            }
        }
        let second = Duration::seconds(1);
        let week = Duration::days(7);
        if let Some(value) = get("throttle") {
            let map = object(value, "throttle")?;
            let burst = match map.get("burst") {
                None | Some(Value::Null) => 1,
                Some(b) => match b.as_u64() {
                    Some(b) if (1..=MAX_LIMIT).contains(&b) => b as u32,
                    _ => {
                        return Err(error(
                            "throttle.burst",
                            format!("must be a whole number from 1 to {MAX_LIMIT}"),
                        ));
                    }
                },
            };
            control.throttle = Some(Throttle {
                limit: limit(map, "throttle")?,
                period: required_period(map, "period", "throttle", (second, week))?,
                burst,
                key: key(map, "throttle")?,
            });
        }
        if let Some(value) = get("rateLimit") {
            let map = object(value, "rateLimit")?;
            control.rate_limit = Some(RateLimit {
                limit: limit(map, "rateLimit")?,
                period: required_period(map, "period", "rateLimit", (second, Duration::hours(24)))?,
                key: key(map, "rateLimit")?,
            });
        }
        if let Some(value) = get("debounce") {
            let map = object(value, "debounce")?;
            let period = required_period(map, "period", "debounce", (second, week))?;
            let timeout = period_at_least(map, "debounce", period, week)?;
            control.debounce = Some(Debounce {
                period,
                key: key(map, "debounce")?,
                timeout,
            });
        }
        if let Some(value) = get("batchEvents") {
            let map = object(value, "batchEvents")?;
            let max_size = match map.get("maxSize").and_then(Value::as_u64) {
                Some(n) if (1..=MAX_BATCH_SIZE).contains(&n) => n as u32,
                _ => {
                    return Err(error(
                        "batchEvents.maxSize",
                        format!("is required: a whole number from 1 to {MAX_BATCH_SIZE}"),
                    ));
                }
            };
            control.batch = Some(Batch {
                max_size,
                timeout: required_period(
                    map,
                    "timeout",
                    "batchEvents",
                    (second, Duration::seconds(60)),
                )?,
                key: key(map, "batchEvents")?,
            });
        }
        if let Some(value) = get("idempotency") {
            control.idempotency = Some(expression(value, "idempotency")?);
        }
        if let Some(value) = get("priority") {
            let map = object(value, "priority")?;
            if let Some(run) = map.get("run").filter(|v| !v.is_null()) {
                control.priority = Some(expression(run, "priority.run")?);
            }
        }
        if let Some(value) = get("singleton") {
            let map = object(value, "singleton")?;
            let mode = match map.get("mode").and_then(Value::as_str) {
                None | Some("skip") => SingletonMode::Skip,
                Some("cancel") => SingletonMode::Cancel,
                Some(_) => return Err(error("singleton.mode", "must be skip or cancel")),
            };
            control.singleton = Some(Singleton {
                key: key(map, "singleton")?,
                mode,
            });
        }
        if let Some(value) = get("timeouts") {
            let map = object(value, "timeouts")?;
            let range = (second, Duration::days(365));
            control.timeouts = Timeouts {
                start: period(map, "start", "timeouts", range, false)?,
                finish: period(map, "finish", "timeouts", range, false)?,
            };
        }
        Ok(control)
    }

    /// Every expression in the settings, with its field, for the caller to compile.
    pub fn expressions(&self) -> Vec<(String, &str)> {
        let mut found = Vec::new();
        for (i, c) in self.concurrency.iter().enumerate() {
            if let Some(k) = &c.key {
                found.push((format!("concurrency[{i}].key"), k.as_str()));
            }
        }
        let keyed = [
            (
                "throttle.key",
                self.throttle.as_ref().and_then(|t| t.key.as_deref()),
            ),
            (
                "rateLimit.key",
                self.rate_limit.as_ref().and_then(|r| r.key.as_deref()),
            ),
            (
                "debounce.key",
                self.debounce.as_ref().and_then(|d| d.key.as_deref()),
            ),
            (
                "batchEvents.key",
                self.batch.as_ref().and_then(|b| b.key.as_deref()),
            ),
            (
                "singleton.key",
                self.singleton.as_ref().and_then(|s| s.key.as_deref()),
            ),
            ("idempotency", self.idempotency.as_deref()),
            ("priority.run", self.priority.as_deref()),
        ];
        for (field, expression) in keyed {
            if let Some(expression) = expression {
                found.push((field.to_owned(), expression));
            }
        }
        found
    }
}

fn period_at_least(
    map: &serde_json::Map<String, Value>,
    field: &str,
    least: Duration,
    most: Duration,
) -> Result<Option<Duration>, FlowControlError> {
    let timeout = period(map, "timeout", field, (Duration::zero(), most), false)?;
    if let Some(t) = timeout
        && t < least
    {
        return Err(error(
            format!("{field}.timeout"),
            "must be at least the period",
        ));
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(settings: Value) -> FlowControlError {
        FlowControl::parse(&settings).expect_err("refused")
    }

    #[test]
    fn reads_every_setting_in_the_protocols_shape() {
        let control = FlowControl::parse(&json!({
            "concurrency": [{"limit": 5}, {"limit": 1, "key": "event.data.customer_id"}],
            "throttle": {"limit": 10, "period": "1s", "burst": 2},
            "rateLimit": {"limit": 1, "period": "1m", "key": "event.data.user"},
            "debounce": {"period": "5s", "timeout": "1m"},
            "batchEvents": {"maxSize": 10, "timeout": "2s"},
            "idempotency": "event.data.order_id",
            "priority": {"run": "event.data.vip ? 60 : 0"},
            "singleton": {"key": "event.data.user", "mode": "cancel"},
            "timeouts": {"start": "1h"},
        }))
        .unwrap();
        assert_eq!(control.concurrency.len(), 2);
        assert_eq!(
            control.concurrency[1].key.as_deref(),
            Some("event.data.customer_id")
        );
        assert_eq!(control.throttle.as_ref().unwrap().burst, 2);
        assert_eq!(control.rate_limit.unwrap().period, Duration::minutes(1));
        assert_eq!(
            control.debounce.unwrap().timeout,
            Some(Duration::minutes(1))
        );
        assert_eq!(control.batch.unwrap().max_size, 10);
        assert_eq!(control.singleton.unwrap().mode, SingletonMode::Cancel);
        assert_eq!(control.timeouts.start, Some(Duration::hours(1)));
        assert_eq!(
            FlowControl::parse(&json!({"concurrency": 3}))
                .unwrap()
                .concurrency[0]
                .limit,
            3
        );
        assert_eq!(
            FlowControl::parse(&json!({})).unwrap(),
            FlowControl::default()
        );
    }

    #[test]
    fn lists_every_expression_with_its_field() {
        let control = FlowControl::parse(&json!({
            "concurrency": [{"limit": 1, "key": "k1"}],
            "throttle": {"limit": 1, "period": "1s", "key": "k2"},
            "idempotency": "k3",
            "priority": {"run": "k4"},
        }))
        .unwrap();
        assert_eq!(
            control.expressions(),
            vec![
                ("concurrency[0].key".to_owned(), "k1"),
                ("throttle.key".to_owned(), "k2"),
                ("idempotency".to_owned(), "k3"),
                ("priority.run".to_owned(), "k4"),
            ]
        );
    }

    #[test]
    fn impossible_settings_are_refused_naming_the_field() {
        for (settings, field) in [
            (json!({"concurrency": -1}), "concurrency[0]"),
            (
                json!({"concurrency": [{"limit": 0}]}),
                "concurrency[0].limit",
            ),
            (
                json!({"concurrency": [{"limit": 1}, {"limit": 2}, {"limit": 3}]}),
                "concurrency",
            ),
            (
                json!({"concurrency": [{"limit": 1, "scope": "env"}]}),
                "concurrency[0].key",
            ),
            (
                json!({"concurrency": [{"limit": 1, "scope": "galaxy"}]}),
                "concurrency[0].scope",
            ),
            (json!({"throttle": {"limit": 10}}), "throttle.period"),
            (
                json!({"throttle": {"limit": 10, "period": "10ms"}}),
                "throttle.period",
            ),
            (
                json!({"throttle": {"limit": 10, "period": "1s", "burst": 0}}),
                "throttle.burst",
            ),
            (
                json!({"rateLimit": {"limit": 1, "period": "2d"}}),
                "rateLimit.period",
            ),
            (
                json!({"rateLimit": {"limit": -5, "period": "1m"}}),
                "rateLimit.limit",
            ),
            (json!({"debounce": {"period": "soon"}}), "debounce.period"),
            (
                json!({"debounce": {"period": "10s", "timeout": "5s"}}),
                "debounce.timeout",
            ),
            (
                json!({"batchEvents": {"maxSize": 0, "timeout": "1s"}}),
                "batchEvents.maxSize",
            ),
            (
                json!({"batchEvents": {"maxSize": 5, "timeout": "5m"}}),
                "batchEvents.timeout",
            ),
            (json!({"idempotency": 7}), "idempotency"),
            (json!({"singleton": {"mode": "maybe"}}), "singleton.mode"),
            (json!({"throttle": "fast"}), "throttle"),
            (
                json!({"timeouts": {"finish": "forever"}}),
                "timeouts.finish",
            ),
        ] {
            assert_eq!(refused(settings.clone()).field, field, "{settings}");
        }
    }
}
