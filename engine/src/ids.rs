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

/// The stream key of the `index`-th event, sent without an id, of a request carrying
/// Inngest's `x-inngest-event-id-seed` header (`<millis>,<entropy>`): an SDK retrying
/// the request sends the same seed, so the retry lands on the same streams and records
/// nothing twice. A UUIDv7 on the seed's time, its random bits derived from the tenant,
/// seed and index. `None` when the seed is not of that shape.
pub fn seeded_event_key(tenant: &str, seed: &str, index: usize) -> Option<Uuid> {
    let (millis, entropy) = seed.split_once(',')?;
    let millis: u64 = millis.trim().parse().ok()?;
    if entropy.trim().is_empty() || millis >= 1 << 48 {
        return None;
    }
    let derived = derive(&["seed", tenant, seed, &index.to_string()]);
    let mut random = [0u8; 10];
    random.copy_from_slice(&derived.as_bytes()[..10]);
    Some(uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
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

    #[test]
    fn seeded_event_keys_repeat_for_a_retried_request_only() {
        let seed = "1795629626159,q83vEjRWeJCrzQ==";
        let first = seeded_event_key("t", seed, 0).unwrap();
        assert_eq!(Some(first), seeded_event_key("t", seed, 0));
        assert_eq!(first.get_version_num(), 7);
        let (secs, nanos) = first.get_timestamp().unwrap().to_unix();
        assert_eq!(
            secs * 1000 + u64::from(nanos) / 1_000_000,
            1_795_629_626_159
        );
        assert_ne!(Some(first), seeded_event_key("t", seed, 1));
        assert_ne!(Some(first), seeded_event_key("u", seed, 0));
        assert_ne!(
            Some(first),
            seeded_event_key("t", "1795629626159,AAAAAAAAAAAAAA==", 0)
        );
        for bad in ["", "123", "x,abc", "123,", "-1,abc", "281474976710656,abc"] {
            assert_eq!(seeded_event_key("t", bad, 0), None, "{bad:?}");
        }
    }
}
