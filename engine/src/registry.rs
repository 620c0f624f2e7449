//! The functions apps have registered, by tenant, at every version, folded from
//! `app.synced` events. Runs look up the version they were pinned to.

use std::collections::HashMap;
use std::sync::RwLock;

use chrono::{DateTime, Utc};
use flowforge_domain::app::{AppEvent, AppSynced, FunctionVersion, Trigger};
use flowforge_domain::trigger::name_matches;
use flowforge_store::{EventStore, LogFilter, StoreError, StoredEvent};

use crate::space::Space;

#[derive(Debug, Clone)]
pub struct AppInfo {
    pub space: Space,
    pub app_id: String,
    pub url: String,
    pub sdk: Option<String>,
    pub framework: Option<String>,
    pub last_synced_at: DateTime<Utc>,
    pub functions: Vec<String>,
}

#[derive(Default)]
struct State {
    apps: HashMap<(Space, String), AppInfo>,
    current: HashMap<(Space, String), FunctionVersion>,
    versions: HashMap<(Space, String, u32), FunctionVersion>,
    /// The app serving each current function.
    owner: HashMap<(Space, String), String>,
}

#[derive(Default)]
pub struct Registry {
    state: RwLock<State>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds every `app.synced` event in the log.
    pub async fn load(&self, store: &dyn EventStore) -> Result<u64, StoreError> {
        let filter = LogFilter::all().event_types(AppEvent::TYPES.iter().copied());
        let mut after = 0;
        loop {
            let page = store.read_all(after, 1_000, &filter).await?;
            if page.scanned_to <= after {
                return Ok(after);
            }
            for event in &page.events {
                self.apply(event);
            }
            after = page.scanned_to;
        }
    }

    /// Applies one log event (anything but `app.synced` is ignored).
    pub fn apply(&self, event: &StoredEvent) {
        if event.stream_type != flowforge_domain::app::STREAM_TYPE {
            return;
        }
        match event.decode::<AppEvent>() {
            Ok(AppEvent::Synced(synced)) => self.apply_sync(&Space::of(event), &synced),
            Err(error) => {
                tracing::error!(%error, position = event.global_position, "unreadable app event")
            }
        }
    }

    /// Applies one sync. Applying the same sync twice changes nothing.
    pub fn apply_sync(&self, space: &Space, synced: &AppSynced) {
        let Ok(mut state) = self.state.write() else {
            return;
        };
        let key = (space.clone(), synced.app_id.clone());
        let previous: Vec<String> = state
            .apps
            .get(&key)
            .map(|a| a.functions.clone())
            .unwrap_or_default();
        for removed in previous.iter().chain(&synced.removed) {
            let k = (space.clone(), removed.clone());
            if state.owner.get(&k) == Some(&synced.app_id) {
                state.current.remove(&k);
                state.owner.remove(&k);
            }
        }
        for f in &synced.functions {
            let k = (space.clone(), f.spec.id.clone());
            state.current.insert(k.clone(), f.clone());
            state.owner.insert(k, synced.app_id.clone());
            state
                .versions
                .insert((space.clone(), f.spec.id.clone(), f.version), f.clone());
        }
        state.apps.insert(
            key,
            AppInfo {
                space: space.clone(),
                app_id: synced.app_id.clone(),
                url: synced.url.clone(),
                sdk: synced.sdk.clone(),
                framework: synced.framework.clone(),
                last_synced_at: synced.at,
                functions: synced.functions.iter().map(|f| f.spec.id.clone()).collect(),
            },
        );
    }

    pub fn current(&self, space: &Space, function_id: &str) -> Option<FunctionVersion> {
        self.state
            .read()
            .ok()?
            .current
            .get(&(space.clone(), function_id.to_owned()))
            .cloned()
    }

    /// The app a current function belongs to.
    pub fn app_of(&self, space: &Space, function_id: &str) -> Option<String> {
        self.state
            .read()
            .ok()?
            .owner
            .get(&(space.clone(), function_id.to_owned()))
            .cloned()
    }

    /// A function at a version; falls back to the current version if that one is unknown.
    pub fn version(
        &self,
        space: &Space,
        function_id: &str,
        version: u32,
    ) -> Option<FunctionVersion> {
        let state = self.state.read().ok()?;
        state
            .versions
            .get(&(space.clone(), function_id.to_owned(), version))
            .or_else(|| state.current.get(&(space.clone(), function_id.to_owned())))
            .cloned()
    }

    /// Current functions with an event trigger whose name pattern matches `event_name`,
    /// with the trigger's expression (if any).
    pub fn triggered_by(
        &self,
        space: &Space,
        event_name: &str,
    ) -> Vec<(FunctionVersion, Option<String>)> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        let mut matched = Vec::new();
        for ((t, _), f) in &state.current {
            if t != space {
                continue;
            }
            for trigger in &f.spec.triggers {
                if let Trigger::Event { event, expression } = trigger
                    && name_matches(event, event_name)
                {
                    matched.push((f.clone(), expression.clone()));
                }
            }
        }
        matched.sort_by(|a, b| a.0.spec.id.cmp(&b.0.spec.id));
        matched
    }

    /// Whether some current function of the space, other than `except`, is triggered
    /// by the event name or cancels runs on it. Cheaper than `triggered_by`: nothing is
    /// cloned, and expressions are not evaluated (a match by name is enough to say the
    /// event could matter).
    pub fn reacts_to(&self, space: &Space, event_name: &str, except: &str) -> bool {
        let Ok(state) = self.state.read() else {
            // A poisoned registry cannot say: assume someone listens.
            return true;
        };
        state.current.iter().any(|((t, _), f)| {
            t == space
                && (f.spec.cancel.iter().any(|c| name_matches(&c.event, event_name))
                    || (f.spec.id != except
                        && f.spec.triggers.iter().any(|trigger| {
                            matches!(trigger, Trigger::Event { event, .. } if name_matches(event, event_name))
                        })))
        })
    }

    /// Every current function with cron triggers: (space, function, schedules).
    pub fn cron_functions(&self) -> Vec<(Space, FunctionVersion, Vec<String>)> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        state
            .current
            .iter()
            .filter_map(|((space, _), f)| {
                let crons: Vec<String> = f
                    .spec
                    .triggers
                    .iter()
                    .filter_map(|t| match t {
                        Trigger::Cron { cron } => Some(cron.clone()),
                        Trigger::Event { .. } => None,
                    })
                    .collect();
                (!crons.is_empty()).then(|| (space.clone(), f.clone(), crons))
            })
            .collect()
    }

    /// Current functions with a cancel rule for `event_name`.
    pub fn cancelled_by(&self, space: &Space, event_name: &str) -> Vec<FunctionVersion> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        state
            .current
            .iter()
            .filter(|((t, _), f)| {
                t == space
                    && f.spec
                        .cancel
                        .iter()
                        .any(|c| name_matches(&c.event, event_name))
            })
            .map(|(_, f)| f.clone())
            .collect()
    }

    pub fn apps(&self, space: &Space) -> Vec<AppInfo> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        let mut apps: Vec<AppInfo> = state
            .apps
            .values()
            .filter(|a| &a.space == space)
            .cloned()
            .collect();
        apps.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        apps
    }

    pub fn functions(&self, space: &Space) -> Vec<(String, FunctionVersion)> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        let mut functions: Vec<(String, FunctionVersion)> = state
            .current
            .iter()
            .filter(|((t, _), _)| t == space)
            .map(|((t, id), f)| {
                (
                    state
                        .owner
                        .get(&(t.clone(), id.clone()))
                        .cloned()
                        .unwrap_or_default(),
                    f.clone(),
                )
            })
            .collect();
        functions.sort_by(|a, b| a.1.spec.id.cmp(&b.1.spec.id));
        functions
    }
}

/// Keeps a process's registry current from the log when it does not run the scheduler
/// (which applies app events itself as it reads them): executors in every process
/// need to know where each app lives. Follows the process's live feed rather than the
/// log itself, so it costs no read of its own per commit.
pub async fn follow(
    context: std::sync::Arc<crate::EngineContext>,
    mut feed: tokio::sync::broadcast::Receiver<std::sync::Arc<StoredEvent>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match feed.recv().await {
            Ok(event) => context.registry.apply(&event),
            Err(RecvError::Lagged(_)) => {
                // Missed some: fold every sync again (applying one twice changes nothing).
                if let Err(error) = context.registry.load(&*context.store).await {
                    tracing::warn!(%error, "registry: reloading from the log failed");
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use flowforge_domain::Environment;
    use flowforge_domain::app::{AppSynced, CancelRule, FunctionSpec, FunctionVersion, Trigger};

    use super::*;

    fn function(id: &str, triggers: &[&str], cancels_on: &[&str]) -> FunctionVersion {
        FunctionVersion {
            spec: FunctionSpec {
                id: id.into(),
                name: id.into(),
                triggers: triggers
                    .iter()
                    .map(|event| Trigger::Event {
                        event: (*event).into(),
                        expression: Some("event.data.never == true".into()),
                    })
                    .collect(),
                max_attempts: 1,
                url: "http://app.invalid/api/inngest".into(),
                cancel: cancels_on
                    .iter()
                    .map(|event| CancelRule {
                        event: (*event).into(),
                        expression: None,
                        timeout: None,
                    })
                    .collect(),
                flow_control: serde_json::Value::Null,
            },
            version: 1,
        }
    }

    fn registry(space: &Space, functions: Vec<FunctionVersion>) -> Registry {
        let registry = Registry::new();
        registry.apply_sync(
            space,
            &AppSynced {
                app_id: "app".into(),
                url: "http://app.invalid/api/inngest".into(),
                sdk: None,
                framework: None,
                functions,
                removed: Vec::new(),
                modified: true,
                at: Utc::now(),
            },
        );
        registry
    }

    const FINISHED: &str = "inngest/function.finished";

    #[test]
    fn a_trigger_of_another_function_reacts_by_name_whatever_its_expression() {
        let live = Space::new("acme", Environment::Live);
        let r = registry(&live, vec![function("audit", &[FINISHED], &[])]);
        assert!(r.reacts_to(&live, FINISHED, "worker"));
        assert!(!r.reacts_to(&live, "inngest/function.failed", "worker"));
    }

    #[test]
    fn a_wildcard_trigger_reacts_to_the_names_it_matches() {
        let live = Space::new("acme", Environment::Live);
        let r = registry(&live, vec![function("audit", &["inngest/function.*"], &[])]);
        assert!(r.reacts_to(&live, FINISHED, "worker"));
        assert!(!r.reacts_to(&live, "flowforge/function.finished", "worker"));
    }

    #[test]
    fn a_function_triggered_by_its_own_end_does_not_count_for_its_own_runs() {
        let live = Space::new("acme", Environment::Live);
        let r = registry(&live, vec![function("audit", &[FINISHED], &[])]);
        assert!(!r.reacts_to(&live, FINISHED, "audit"));
    }

    #[test]
    fn a_cancel_rule_reacts_even_on_the_runs_own_function() {
        let live = Space::new("acme", Environment::Live);
        let r = registry(&live, vec![function("worker", &["app/go"], &[FINISHED])]);
        assert!(r.reacts_to(&live, FINISHED, "worker"));
        assert!(r.reacts_to(&live, FINISHED, "other"));
        assert!(!r.reacts_to(&live, "app/go.finished", "other"));
    }

    #[test]
    fn another_space_never_reacts() {
        let live = Space::new("acme", Environment::Live);
        let r = registry(&live, vec![function("audit", &[FINISHED], &[FINISHED])]);
        assert!(!r.reacts_to(&Space::new("acme", Environment::Test), FINISHED, "worker"));
        assert!(!r.reacts_to(&Space::new("other", Environment::Live), FINISHED, "worker"));
    }

    #[test]
    fn a_function_removed_by_a_later_sync_no_longer_reacts() {
        let live = Space::new("acme", Environment::Live);
        let r = registry(&live, vec![function("audit", &[FINISHED], &[])]);
        r.apply_sync(
            &live,
            &AppSynced {
                app_id: "app".into(),
                url: "http://app.invalid/api/inngest".into(),
                sdk: None,
                framework: None,
                functions: vec![function("worker", &["app/go"], &[])],
                removed: vec!["audit".into()],
                modified: true,
                at: Utc::now(),
            },
        );
        assert!(!r.reacts_to(&live, FINISHED, "worker"));
    }
}
