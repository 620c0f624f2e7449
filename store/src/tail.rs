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

/// Events kept in memory for subscribers that are slightly behind.
const WINDOW_EVENTS: usize = 20_000;
/// How long the tail waits on one read before checking whether its store still exists.
const READ_TIMEOUT: Duration = Duration::from_millis(500);

struct Window {
    /// Every committed event after `start` and up to `end` is in `events`.
    start: u64,
    end: u64,
    events: VecDeque<StoredEvent>,
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
            }),
            end,
        });
        // Outside a runtime there is nobody to follow the log: the window stays empty
        // and every subscriber reads the store, as without a tail.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(follow(Arc::downgrade(&tail), open));
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

    fn extend(&self, batch: Vec<StoredEvent>, scanned_to: u64) {
        let end = {
            let mut window = self.window.write().unwrap_or_else(|p| p.into_inner());
            for event in batch {
                if event.global_position > window.end {
                    window.end = event.global_position;
                    window.events.push_back(event);
                }
            }
            window.end = window.end.max(scanned_to);
            while window.events.len() > WINDOW_EVENTS {
                if let Some(evicted) = window.events.pop_front() {
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

async fn follow<F>(tail: Weak<LogTail>, open: F)
where
    F: Fn() -> Option<Arc<dyn EventStore>>,
{
    let mut backoff = Duration::from_millis(50);
    // Only the safe head: an event below it that was still in flight would otherwise be
    // missing from the window for good.
    loop {
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
