//! One reader of the log's tail per process, shared by every subscriber that has
//! caught up.
//!
//! A process runs several log subscribers (the scheduler, each projection runner, the
//! live feed, the registry follower). Each used to ask the database for the events
//! after its position on every commit: with five of them, every append cost five
//! reads. The tail reads once and keeps the most recent events in memory; a subscriber
//! whose position is inside that window is served from it, and one that is behind (a
//! projection rebuilding, a reactor catching up after a restart) reads the store as
//! before until it reaches the window.
//!
//! The window holds every committed event with a position in `(start, end]`, in
//! order, because it is filled by an ordinary gap-safe [`LogSubscription`]; reading
//! from it is therefore exactly what reading the store would have returned.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::subscription::LogSubscription;
use crate::{EventStore, LogFilter, StoredEvent};

/// Events kept in memory for subscribers that are slightly behind, bounded by count
/// and by size (payloads may be megabytes).
const WINDOW_EVENTS: usize = 20_000;
const WINDOW_BYTES: usize = 64 * 1024 * 1024;
/// How long the tail waits on one read before checking whether its store still exists.
const READ_TIMEOUT: Duration = Duration::from_millis(500);

struct Window {
    /// Every committed event after `start` and up to `end` is in `events`.
    start: u64,
    end: u64,
    events: VecDeque<StoredEvent>,
    /// Approximate memory held by `events`.
    bytes: usize,
}

fn approximate_size(event: &StoredEvent) -> usize {
    event.payload.get().len() + event.stream_id.len() + event.event_type.len() + 256
}

pub struct LogTail {
    window: RwLock<Window>,
    end: watch::Sender<u64>,
}

/// What the window holds for a subscriber at some position.
pub(crate) enum TailRead {
    /// The next events after the position that match the filter (maybe none), and the
    /// position the subscriber has now looked through.
    Events {
        events: Vec<StoredEvent>,
        scanned_to: u64,
    },
    /// Nothing after the position has been read yet.
    CaughtUp,
    /// The position is before the window: read the store.
    Behind,
}

impl LogTail {
    /// Starts following the log from its safe head. `open` gives the store while it
    /// exists; the tail stops once it does not. Until the tail knows the head, every
    /// subscriber is "behind" it and reads the store.
    pub fn start<F>(open: F) -> Arc<Self>
    where
        F: Fn() -> Option<Arc<dyn EventStore>> + Send + Sync + 'static,
    {
        let (end, _) = watch::channel(0);
        let tail = Arc::new(Self {
            window: RwLock::new(Window {
                start: u64::MAX,
                end: u64::MAX,
                events: VecDeque::new(),
                bytes: 0,
            }),
            end,
        });
        // Outside a runtime there is nobody to follow the log: the window stays empty
        // and every subscriber reads the store, as without a tail.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(supervise(Arc::downgrade(&tail), Arc::new(open)));
        }
        tail
    }

    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.end.subscribe()
    }

    pub(crate) fn read_after(&self, position: u64, max: usize, filter: &LogFilter) -> TailRead {
        let window = self.window.read().unwrap_or_else(|p| p.into_inner());
        if position < window.start {
            return TailRead::Behind;
        }
        if position >= window.end {
            return TailRead::CaughtUp;
        }
        // Positions increase along the deque: skip to the first one after `position`.
        let first = window
            .events
            .partition_point(|e| e.global_position <= position);
        let mut events = Vec::new();
        for event in window.events.range(first..) {
            if filter.matches(event) {
                events.push(event.clone());
                if events.len() >= max {
                    return TailRead::Events {
                        scanned_to: event.global_position,
                        events,
                    };
                }
            }
        }
        TailRead::Events {
            events,
            scanned_to: window.end,
        }
    }

    /// Events this process's writer has just committed, handed over so the window need
    /// not read them back from the store. They are taken only when they continue the
    /// window exactly (positions `end + 1`, `end + 2`, …): those positions are theirs,
    /// so no other transaction can still commit an event among them and the window
    /// stays exactly what the store would return. Otherwise (another writer in between,
    /// a gap the sequence left) the follower reads them from the store as before.
    pub fn offer(&self, mut events: Vec<StoredEvent>) -> bool {
        events.sort_by_key(|e| e.global_position);
        let Some(last) = events.last().map(|e| e.global_position) else {
            return false;
        };
        {
            let window = self.window.read().unwrap_or_else(|p| p.into_inner());
            let continues = window.end != u64::MAX
                && events
                    .iter()
                    .enumerate()
                    .all(|(i, e)| e.global_position == window.end + 1 + i as u64);
            if !continues {
                return false;
            }
        }
        // `extend` ignores what it already holds, so a follower that read the same
        // events in between does no harm.
        self.extend(events, last);
        true
    }

    fn end_position(&self) -> u64 {
        self.window.read().unwrap_or_else(|p| p.into_inner()).end
    }

    fn extend(&self, batch: Vec<StoredEvent>, scanned_to: u64) {
        let end = {
            let mut window = self.window.write().unwrap_or_else(|p| p.into_inner());
            for event in batch {
                if event.global_position > window.end {
                    window.end = event.global_position;
                    window.bytes += approximate_size(&event);
                    window.events.push_back(event);
                }
            }
            window.end = window.end.max(scanned_to);
            while window.events.len() > WINDOW_EVENTS
                || (window.bytes > WINDOW_BYTES && window.events.len() > 1)
            {
                if let Some(evicted) = window.events.pop_front() {
                    window.bytes = window.bytes.saturating_sub(approximate_size(&evicted));
                    window.start = evicted.global_position;
                }
            }
            window.end
        };
        self.end.send_if_modified(|current| {
            if end > *current {
                *current = end;
                true
            } else {
                false
            }
        });
    }
}

/// The tail of a store whose handles share `inner`: started on first use, following the
/// store while any handle to it exists (the tail itself holds none).
pub fn shared<I, S>(
    cell: &std::sync::OnceLock<Arc<LogTail>>,
    inner: &Arc<I>,
    handle: fn(Arc<I>) -> S,
) -> Arc<LogTail>
where
    I: Send + Sync + 'static,
    S: EventStore,
{
    let weak = Arc::downgrade(inner);
    cell.get_or_init(|| {
        LogTail::start(move || {
            weak.upgrade()
                .map(|inner| Arc::new(handle(inner)) as Arc<dyn EventStore>)
        })
    })
    .clone()
}

/// Runs the follower, and runs it again if it panics. Without this, one panic (a bug
/// in a decoder, an upcaster, a tracing layer) would leave every caught-up subscriber
/// waiting on a window that no longer moves, seeing new events only on its fallback
/// poll, with nothing in the logs but the panic.
async fn supervise<F>(tail: Weak<LogTail>, open: Arc<F>)
where
    F: Fn() -> Option<Arc<dyn EventStore>> + Send + Sync + 'static,
{
    loop {
        let open = open.clone();
        let follower = tokio::spawn(follow(tail.clone(), move || open()));
        match follower.await {
            Err(error) if error.is_panic() => {
                tracing::error!("log tail: the follower panicked; restarting it");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // It returned (its store or every subscriber is gone) or the runtime is
            // shutting down.
            _ => return,
        }
    }
}

async fn follow<F>(tail: Weak<LogTail>, open: F)
where
    F: Fn() -> Option<Arc<dyn EventStore>>,
{
    let mut backoff = Duration::from_millis(50);
    // A restarted follower goes on from the window's end: the window still holds every
    // event up to it.
    let known = |tail: &Weak<LogTail>| {
        tail.upgrade()
            .is_some_and(|t| t.window.read().unwrap_or_else(|p| p.into_inner()).end != u64::MAX)
    };
    // Only the safe head: an event below it that was still in flight would otherwise be
    // missing from the window for good.
    while !known(&tail) {
        let Some(store) = open() else { return };
        match store.head_position().await {
            Ok(head) => {
                let Some(tail) = tail.upgrade() else { return };
                let mut window = tail.window.write().unwrap_or_else(|p| p.into_inner());
                window.start = head;
                window.end = head;
                break;
            }
            Err(error) => {
                tracing::debug!(%error, "log tail: cannot read the head; retrying");
                drop(store);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    loop {
        let (Some(store), Some(position)) = (
            open(),
            tail.upgrade().map(|t| t.window.read().map_or(0, |w| w.end)),
        ) else {
            return; // the store or every subscriber is gone
        };
        // Our own commits are handed over by the writer (`offer`): read the store only
        // when a commit was announced past the window, or after a quiet while (a commit
        // by another process that no notification reached).
        let mut watch = store.head_watch();
        if watch.mark_seen() <= position {
            let announced = tokio::time::timeout(READ_TIMEOUT, watch.changed()).await;
            let end = tail.upgrade().map_or(u64::MAX, |t| t.end_position());
            if matches!(announced, Ok(true)) && watch.latest() <= end {
                continue;
            }
        }
        // A direct subscription (never through a tail), re-made on each turn so that
        // holding it does not keep the store alive.
        let mut subscription = LogSubscription::direct(store, position, LogFilter::all());
        match tokio::time::timeout(READ_TIMEOUT, subscription.next_batch(1_000)).await {
            Ok(Ok(batch)) => {
                backoff = Duration::from_millis(50);
                let scanned_to = subscription.position();
                if let Some(tail) = tail.upgrade() {
                    tail.extend(batch, scanned_to);
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "log tail: read failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(_quiet) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use flowforge_domain::{Actor, EventMetadata, TenantId};

    fn event(position: u64, tenant: &str) -> StoredEvent {
        StoredEvent {
            event_id: uuid::Uuid::now_v7(),
            stream_id: format!("s-{position}"),
            stream_type: "test".into(),
            stream_version: 1,
            global_position: position,
            event_type: "test.happened".into(),
            schema_version: 1,
            payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            metadata: EventMetadata::new(TenantId::new(tenant), Actor::system("test")),
            recorded_at: chrono::Utc::now(),
        }
    }

    fn positions(read: TailRead) -> (Vec<u64>, u64) {
        match read {
            TailRead::Events { events, scanned_to } => (
                events.iter().map(|e| e.global_position).collect(),
                scanned_to,
            ),
            TailRead::CaughtUp => (vec![], u64::MAX),
            TailRead::Behind => (vec![], 0),
        }
    }

    /// A tail at position 10 (no runtime here, so no task follows the store).
    fn tail_at_ten() -> Arc<LogTail> {
        let tail = LogTail::start(|| None);
        {
            let mut window = tail.window.write().unwrap();
            window.start = 10;
            window.end = 10;
        }
        tail
    }

    #[test]
    fn a_tail_that_does_not_know_the_head_sends_everyone_to_the_store() {
        let tail = LogTail::start(|| None);
        assert!(matches!(
            tail.read_after(0, 10, &LogFilter::all()),
            TailRead::Behind
        ));
        assert!(matches!(
            tail.read_after(1 << 40, 10, &LogFilter::all()),
            TailRead::Behind
        ));
    }

    #[test]
    fn serves_what_follows_a_position_inside_the_window_filtered_and_paged() {
        let tail = tail_at_ten();
        // Position 13 was an aborted append: a hole, which the subscription skipped.
        tail.extend(vec![event(11, "a"), event(12, "b"), event(14, "a")], 15);
        let all = LogFilter::all();
        assert!(matches!(tail.read_after(9, 10, &all), TailRead::Behind));
        assert_eq!(
            positions(tail.read_after(10, 10, &all)),
            (vec![11, 12, 14], 15)
        );
        assert_eq!(positions(tail.read_after(11, 1, &all)), (vec![12], 12));
        assert_eq!(
            positions(tail.read_after(10, 10, &LogFilter::all().tenant("a"))),
            (vec![11, 14], 15)
        );
        assert_eq!(
            positions(tail.read_after(12, 10, &LogFilter::all().tenant("b"))),
            (vec![], 15),
            "a subscriber with nothing to read still moves past what it looked at"
        );
        assert!(matches!(tail.read_after(15, 10, &all), TailRead::CaughtUp));
        assert_eq!(*tail.watch().borrow(), 15);
    }

    #[test]
    fn the_window_forgets_its_oldest_events_and_sends_their_readers_to_the_store() {
        let tail = tail_at_ten();
        let batch: Vec<StoredEvent> = (11..=10 + WINDOW_EVENTS as u64 + 5)
            .map(|p| event(p, "a"))
            .collect();
        let last = batch.last().unwrap().global_position;
        tail.extend(batch, last);
        assert!(matches!(
            tail.read_after(12, 10, &LogFilter::all()),
            TailRead::Behind
        ));
        let (events, _) = positions(tail.read_after(15, 2, &LogFilter::all()));
        assert_eq!(events, vec![16, 17]);
        // Already-seen positions are not added twice.
        tail.extend(vec![event(last, "a")], last);
        assert_eq!(tail.window.read().unwrap().events.len(), WINDOW_EVENTS);
    }

    #[tokio::test]
    async fn a_follower_that_panics_is_restarted_and_goes_on_serving() {
        use crate::sqlite::{SqliteConfig, SqliteEventStore};
        use crate::{ExpectedVersion, NewEvent, Upcasters};
        use std::sync::atomic::{AtomicUsize, Ordering};

        let path = std::env::temp_dir().join(format!(
            "flowforge-tail-{}.sqlite",
            uuid::Uuid::new_v4().simple()
        ));
        let store = Arc::new(
            SqliteEventStore::open(&SqliteConfig::new(&path), Upcasters::default())
                .await
                .unwrap(),
        );
        let turns = Arc::new(AtomicUsize::new(0));
        let tail = LogTail::start({
            let (store, turns) = (store.clone(), turns.clone());
            move || {
                // The third turn is inside the follow loop, after the head is known.
                if turns.fetch_add(1, Ordering::SeqCst) == 2 {
                    panic!("a follower bug");
                }
                Some(store.clone() as Arc<dyn EventStore>)
            }
        });
        let meta = EventMetadata::new(TenantId::new("t"), Actor::system("test"));
        let mut seen = Vec::new();
        for n in 1..=3u64 {
            store
                .append(
                    &format!("s-{n}"),
                    "test",
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new(
                        "test.happened",
                        serde_json::json!({}),
                        meta.clone(),
                    )],
                )
                .await
                .unwrap();
            // Well under the subscribers' fallback poll (500 ms) per event: served by
            // a live follower, not by the store.
            let deadline = std::time::Instant::now() + Duration::from_millis(2_000);
            loop {
                if let TailRead::Events { events, .. } =
                    tail.read_after(n - 1, 10, &LogFilter::all())
                    && !events.is_empty()
                {
                    seen.extend(events.iter().map(|e| e.global_position));
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "event {n} never reached the window"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert_eq!(seen, vec![1, 2, 3]);
        assert!(
            turns.load(Ordering::SeqCst) > 3,
            "the follower ran again after its panic"
        );
        drop(tail);
        drop(store);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_writer_hands_over_commits_that_continue_the_window_and_nothing_else() {
        let tail = tail_at_ten();
        let all = LogFilter::all();
        assert!(
            tail.offer(vec![event(12, "a"), event(11, "a")]),
            "order within a commit does not matter"
        );
        assert_eq!(positions(tail.read_after(10, 10, &all)), (vec![11, 12], 12));
        assert_eq!(*tail.watch().borrow(), 12);
        // 13 is missing (another writer's, or a gap): only a read of the store can say.
        assert!(!tail.offer(vec![event(14, "a")]));
        assert!(!tail.offer(vec![event(13, "a"), event(15, "a")]));
        assert!(matches!(tail.read_after(12, 10, &all), TailRead::CaughtUp));
        assert!(!tail.offer(Vec::new()));
        let unknown = LogTail::start(|| None);
        assert!(
            !unknown.offer(vec![event(1, "a")]),
            "a tail that does not know the head"
        );
    }

    #[tokio::test]
    async fn what_the_sqlite_writer_hands_over_is_what_the_log_returns() {
        use crate::sqlite::{SqliteConfig, SqliteEventStore};
        use crate::{ExpectedVersion, NewEvent, Upcasters};

        let path = std::env::temp_dir().join(format!(
            "flowforge-tail-offer-{}.sqlite",
            uuid::Uuid::new_v4().simple()
        ));
        let store = SqliteEventStore::open(&SqliteConfig::new(&path), Upcasters::default())
            .await
            .unwrap();
        let tail = store.shared_tail().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tail.end_position() == u64::MAX {
            assert!(
                std::time::Instant::now() < deadline,
                "the tail never learnt the head"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let meta = EventMetadata::new(TenantId::new("t"), Actor::system("test"))
            .with_causation(uuid::Uuid::now_v7());
        let appends = (0..20).map(|n| {
            let store = store.clone();
            let meta = meta.clone();
            async move {
                store
                    .append(
                        &format!("s-{}", n % 3),
                        "test",
                        ExpectedVersion::Any,
                        vec![
                            NewEvent::new(
                                "test.happened",
                                serde_json::json!({"n": n, "s": "é\"x"}),
                                meta.clone(),
                            ),
                            NewEvent::new("test.again", serde_json::json!([n]), meta),
                        ],
                    )
                    .await
                    .unwrap()
            }
        });
        futures::future::join_all(appends).await;
        let stored = store
            .read_all(0, 100, &LogFilter::all())
            .await
            .unwrap()
            .events;
        assert_eq!(stored.len(), 40);
        let TailRead::Events { events: held, .. } = tail.read_after(0, 100, &LogFilter::all())
        else {
            panic!("the window does not hold the log");
        };
        let as_json = |events: &[StoredEvent]| serde_json::to_value(events).unwrap();
        assert_eq!(as_json(&held), as_json(&stored));
        drop(tail);
        drop(store);
        let _ = std::fs::remove_file(&path);
    }
}
