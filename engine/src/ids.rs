//! Deterministic identifiers. Everything the engine creates on behalf of something
//! else gets an id derived from that something, so that doing it twice (after a crash,
//! in two processes) lands on the same stream and the log's `NoStream` check turns the
//! second attempt into a no-op.

use uuid::Uuid;

/// FlowForge's UUIDv5 namespace.
const NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_0c2e_8b3d_4f7a_9e15_2c4b_8d6f_0a31);

fn derive(parts: &[&str]) -> Uuid {
    Uuid::new_v5(&NAMESPACE, parts.join("\u{1f}").as_bytes())
}

/// The stream key of an event sent with an id: one per (tenant, id).
pub fn event_key(tenant: &str, event_id: &str) -> Uuid {
    derive(&["event", tenant, event_id])
}

/// The run a function gets for an event (one run per function per event).
pub fn run_for_event(event_stream: &str, function_id: &str) -> Uuid {
    derive(&["run", event_stream, function_id])
}

/// The event a cron trigger emits for one scheduled time.
pub fn cron_event(tenant: &str, function_id: &str, fire_at_ms: i64) -> Uuid {
    derive(&["cron", tenant, function_id, &fire_at_ms.to_string()])
}

/// The `function.finished` / `function.failed` event of a run, per event name.
pub fn run_outcome_event(run_id: Uuid, name: &str) -> Uuid {
    derive(&["outcome", &run_id.to_string(), name])
}

/// The invocation event of a child run.
pub fn invocation_event(child_run_id: Uuid) -> Uuid {
    derive(&["invoke", &child_run_id.to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(event_key("t", "a"), event_key("t", "a"));
        assert_ne!(event_key("t", "a"), event_key("u", "a"));
        assert_ne!(run_for_event("event-1", "f"), run_for_event("event-1", "g"));
        // The separator keeps ("a", "bc") and ("ab", "c") apart.
        assert_ne!(event_key("a", "bc"), event_key("ab", "c"));
    }
}
