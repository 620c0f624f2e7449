//! The App aggregate: an application that serves functions, and the versions of those
//! functions. Each sync records the app's current function set; a function whose
//! definition changed gets a new version, a function that disappeared stops
//! triggering. Runs pin the version they started with.
//!
//! Stream: `app-<tenant>:<app id>` in the live environment, `app-<tenant>.test:<app id>`
//! in the test one (tenant ids never hold a `.`), stream type `app`. The same app id
//! synced in both environments is two apps.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decider::{Decider, DomainEvent};
use crate::environment::Environment;

pub const STREAM_TYPE: &str = "app";

pub fn stream_id(tenant: &str, environment: Environment, app_id: &str) -> String {
    match environment {
        Environment::Live => format!("app-{tenant}:{app_id}"),
        Environment::Test => format!("app-{tenant}.test:{app_id}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Trigger {
    /// An event name, with `*` wildcards, optionally filtered by a CEL expression over `event`.
    Event {
        event: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expression: Option<String>,
    },
    /// A cron schedule (5 or 6 fields), optionally prefixed `TZ=Area/City `.
    Cron { cron: String },
}

/// Cancel a running run when a matching event arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRule {
    pub event: String,
    /// CEL over `event` (the run's trigger) and `async` (the arriving event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// Only within this long after the run started (a duration string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A function as an app declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    /// The protocol's function id (`<app id>-<function id>` for Inngest SDKs).
    pub id: String,
    pub name: String,
    pub triggers: Vec<Trigger>,
    /// Attempts per step and per call, including the first (retries + 1).
    pub max_attempts: u32,
    /// Where the app serves this function (the step runtime URL).
    pub url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancel: Vec<CancelRule>,
    /// Flow-control settings as declared (concurrency, throttle, rate limit, debounce,
    /// idempotency, priority, batching, singleton, timeouts), kept verbatim.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub flow_control: Value,
}

/// A function at a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionVersion {
    #[serde(flatten)]
    pub spec: FunctionSpec,
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppSynced {
    pub app_id: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework: Option<String>,
    /// Every function the app serves after this sync.
    pub functions: Vec<FunctionVersion>,
    /// Functions the app no longer serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Whether any function was added, changed or removed.
    pub modified: bool,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AppEvent {
    #[serde(rename = "app.synced")]
    Synced(AppSynced),
}

impl AppEvent {
    pub const TYPES: &'static [&'static str] = &["app.synced"];
}

impl DomainEvent for AppEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            AppEvent::Synced(_) => "app.synced",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppState {
    pub app_id: Option<String>,
    pub url: Option<String>,
    pub functions: BTreeMap<String, FunctionVersion>,
    pub last_synced_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncApp {
    pub app_id: String,
    pub url: String,
    pub sdk: Option<String>,
    pub framework: Option<String>,
    pub functions: Vec<FunctionSpec>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

#[derive(Debug)]
pub struct App;

impl Decider for App {
    type State = AppState;
    type Command = SyncApp;
    type Event = AppEvent;
    type Error = AppError;

    fn initial() -> AppState {
        AppState::default()
    }

    fn evolve(mut state: AppState, event: &AppEvent) -> AppState {
        match event {
            AppEvent::Synced(e) => {
                state.app_id = Some(e.app_id.clone());
                state.url = Some(e.url.clone());
                state.functions = e
                    .functions
                    .iter()
                    .map(|f| (f.spec.id.clone(), f.clone()))
                    .collect();
                state.last_synced_at = Some(e.at);
            }
        }
        state
    }

    fn decide(state: &AppState, sync: SyncApp) -> Result<Vec<AppEvent>, AppError> {
        let invalid = |field: String, message: &str| AppError::Invalid {
            field,
            message: message.to_owned(),
        };
        if sync.app_id.trim().is_empty() {
            return Err(invalid("appName".into(), "must not be empty"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, f) in sync.functions.iter().enumerate() {
            if f.id.trim().is_empty() {
                return Err(invalid(format!("functions[{i}].id"), "must not be empty"));
            }
            if !seen.insert(f.id.as_str()) {
                return Err(invalid(format!("functions[{i}].id"), "is declared twice"));
            }
            if f.triggers.is_empty() {
                return Err(invalid(
                    format!("functions[{i}].triggers"),
                    "needs at least one trigger",
                ));
            }
            if f.url.trim().is_empty() {
                return Err(invalid(
                    format!("functions[{i}].steps.step.runtime.url"),
                    "must not be empty",
                ));
            }
        }
        let mut modified = false;
        let functions: Vec<FunctionVersion> = sync
            .functions
            .into_iter()
            .map(|spec| match state.functions.get(&spec.id) {
                Some(current) if current.spec == spec => current.clone(),
                Some(current) => {
                    modified = true;
                    FunctionVersion {
                        spec,
                        version: current.version + 1,
                    }
                }
                None => {
                    modified = true;
                    FunctionVersion { spec, version: 1 }
                }
            })
            .collect();
        let removed: Vec<String> = state
            .functions
            .keys()
            .filter(|id| !functions.iter().any(|f| &f.spec.id == *id))
            .cloned()
            .collect();
        modified |= !removed.is_empty();
        Ok(vec![AppEvent::Synced(AppSynced {
            app_id: sync.app_id,
            url: sync.url,
            sdk: sync.sdk,
            framework: sync.framework,
            functions,
            removed,
            modified,
            at: sync.at,
        })])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec;
    use serde_json::json;

    fn spec(id: &str, event: &str) -> FunctionSpec {
        FunctionSpec {
            id: id.into(),
            name: id.into(),
            triggers: vec![Trigger::Event {
                event: event.into(),
                expression: None,
            }],
            max_attempts: 4,
            url: format!("http://app/api/inngest?fnId={id}&stepId=step"),
            cancel: vec![],
            flow_control: Value::Null,
        }
    }

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn sync(functions: Vec<FunctionSpec>) -> SyncApp {
        SyncApp {
            app_id: "shop".into(),
            url: "http://app/api/inngest".into(),
            sdk: Some("py:v0.5.19".into()),
            framework: None,
            functions,
            at: at(),
        }
    }

    fn synced(functions: Vec<FunctionVersion>, removed: Vec<&str>, modified: bool) -> AppEvent {
        AppEvent::Synced(AppSynced {
            app_id: "shop".into(),
            url: "http://app/api/inngest".into(),
            sdk: Some("py:v0.5.19".into()),
            framework: None,
            functions,
            removed: removed.into_iter().map(Into::into).collect(),
            modified,
            at: at(),
        })
    }

    fn v(spec: FunctionSpec, version: u32) -> FunctionVersion {
        FunctionVersion { spec, version }
    }

    #[test]
    fn a_first_sync_registers_every_function_at_version_one() {
        let state = DeciderSpec::<App>::given([])
            .when(sync(vec![spec("shop-a", "a/x"), spec("shop-b", "b/x")]))
            .then([synced(
                vec![v(spec("shop-a", "a/x"), 1), v(spec("shop-b", "b/x"), 1)],
                vec![],
                true,
            )]);
        assert_eq!(state.functions.len(), 2);
    }

    #[test]
    fn an_unchanged_sync_keeps_versions_and_is_recorded_unmodified() {
        DeciderSpec::<App>::given([synced(vec![v(spec("shop-a", "a/x"), 1)], vec![], true)])
            .when(sync(vec![spec("shop-a", "a/x")]))
            .then([synced(vec![v(spec("shop-a", "a/x"), 1)], vec![], false)]);
    }

    #[test]
    fn a_changed_function_gets_a_new_version_and_a_removed_one_stops() {
        let state = DeciderSpec::<App>::given([synced(
            vec![v(spec("shop-a", "a/x"), 3), v(spec("shop-b", "b/x"), 1)],
            vec![],
            true,
        )])
        .when(sync(vec![spec("shop-a", "a/changed")]))
        .then([synced(
            vec![v(spec("shop-a", "a/changed"), 4)],
            vec!["shop-b"],
            true,
        )]);
        assert!(!state.functions.contains_key("shop-b"));
        assert_eq!(state.functions["shop-a"].version, 4);
    }

    #[test]
    fn invalid_function_sets_are_refused_naming_the_field() {
        let mut no_trigger = spec("shop-a", "a/x");
        no_trigger.triggers.clear();
        DeciderSpec::<App>::given([])
            .when(sync(vec![no_trigger]))
            .then_error(|e| matches!(e, AppError::Invalid { field, .. } if field == "functions[0].triggers"));
        DeciderSpec::<App>::given([])
            .when(sync(vec![spec("shop-a", "a/x"), spec("shop-a", "a/y")]))
            .then_error(
                |e| matches!(e, AppError::Invalid { field, .. } if field == "functions[1].id"),
            );
        let mut unnamed = sync(vec![]);
        unnamed.app_id = " ".into();
        DeciderSpec::<App>::given([])
            .when(unnamed)
            .then_error(|e| matches!(e, AppError::Invalid { field, .. } if field == "appName"));
    }

    #[test]
    fn app_events_round_trip_through_their_stored_form() {
        let mut f = spec("shop-a", "a/*");
        f.flow_control = json!({"concurrency": [{"limit": 2}]});
        f.cancel = vec![CancelRule {
            event: "a/cancel".into(),
            expression: Some("async.data.id == event.data.id".into()),
            timeout: Some("1h".into()),
        }];
        f.triggers.push(Trigger::Cron {
            cron: "TZ=Europe/Paris 0 9 * * *".into(),
        });
        let event = synced(vec![v(f, 2)], vec!["gone"], true);
        let payload = event.to_payload();
        assert_eq!(payload["functions"][0]["version"], 2);
        assert_eq!(payload["functions"][0]["triggers"][1]["type"], "cron");
        assert_eq!(
            AppEvent::from_stored_json("app.synced", &payload.to_string()).unwrap(),
            event
        );
    }
}
