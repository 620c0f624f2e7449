//! Event schema evolution.
//!
//! Stored events are never rewritten. When an event's payload shape changes, its
//! `schema_version` is bumped and an upcaster from the old version is registered here;
//! reads then return every stored event at its newest version, so deciders and
//! projections only know the current shape.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::StoredEvent;

type UpcastFn = Arc<dyn Fn(Value) -> Value + Send + Sync>;

#[derive(Clone, Default)]
pub struct Upcasters {
    by_type_and_version: HashMap<(String, u32), UpcastFn>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<_> = self.by_type_and_version.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters")
            .field("registered", &keys)
            .finish()
    }
}

impl Upcasters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step from `from_version` to `from_version + 1` of `event_type`.
    pub fn register(
        mut self,
        event_type: impl Into<String>,
        from_version: u32,
        upcast: impl Fn(Value) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.by_type_and_version
            .insert((event_type.into(), from_version), Arc::new(upcast));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.by_type_and_version.is_empty()
    }

    /// Brings `event` to the newest registered version of its type.
    pub fn apply(&self, event: &mut StoredEvent) {
        if self.by_type_and_version.is_empty() {
            return;
        }
        // The key is looked up by value; this small allocation only happens on a non-empty registry.
        let mut key = (event.event_type.clone(), event.schema_version);
        if !self.by_type_and_version.contains_key(&key) {
            return;
        }
        let mut payload = event.payload_value();
        while let Some(upcast) = self.by_type_and_version.get(&key) {
            payload = upcast(payload);
            event.schema_version += 1;
            key.1 = event.schema_version;
        }
        if let Ok(raw) = serde_json::value::to_raw_value(&payload) {
            event.payload = raw;
        }
    }
}
