use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::tail::{LogTail, TailRead};
use crate::{EventStore, HeadWatch, LogFilter, StoreError, StoredEvent};

/// How long a subscriber waits for a wake-up before looking at the log anyway. Covers
/// appends by processes whose notifications cannot reach this one.
const FALLBACK_POLL: Duration = Duration::from_millis(500);
/// When a wake-up announced events that are not yet readable (an earlier transaction is
/// still in flight), re-read after this delay, doubling up to `FALLBACK_POLL`.
const IN_FLIGHT_RETRY: Duration = Duration::from_millis(1);

/// A catch-up-then-live reader of the whole log.
///
/// Delivers every event after its start position exactly once, in global-position
/// order: it only ever asks the store for events after the last one it delivered, and
/// the store only returns positions below which nothing can still commit.
pub struct LogSubscription {
    store: Arc<dyn EventStore>,
    /// The shared tail, when the store has one: served from memory once caught up.
    tail: Option<(Arc<LogTail>, tokio::sync::watch::Receiver<u64>)>,
    position: u64,
    filter: LogFilter,
    buffer: VecDeque<StoredEvent>,
    watch: HeadWatch,
    page_size: usize,
    /// Position of the last event handed to the caller.
    delivered: u64,
}

impl LogSubscription {
    pub(crate) fn new(store: Arc<dyn EventStore>, after: u64, filter: LogFilter) -> Self {
        let tail = store.shared_tail().map(|tail| {
            let watch = tail.watch();
            (tail, watch)
        });
        let mut subscription = Self::direct(store, after, filter);
        subscription.tail = tail;
        subscription
    }

    /// A subscription that always reads the store itself (what the shared tail uses).
    pub(crate) fn direct(store: Arc<dyn EventStore>, after: u64, filter: LogFilter) -> Self {
        let watch = store.head_watch();
        Self {
            tail: None,
            store,
            position: after,
            filter,
            buffer: VecDeque::new(),
            watch,
            page_size: 1_000,
            delivered: after,
        }
    }

    pub fn with_page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size.max(1);
        self
    }

    /// The position a consumer that has processed everything handed to it so far can
    /// checkpoint: past filtered-out events, but never past a buffered, undelivered one.
    pub fn position(&self) -> u64 {
        if self.buffer.is_empty() {
            self.position
        } else {
            self.delivered
        }
    }

    /// The next event, waiting for one if the subscriber has caught up.
    pub async fn next(&mut self) -> Result<StoredEvent, StoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.delivered = event.global_position;
                return Ok(event);
            }
            let page = self.next_batch(self.page_size).await?;
            self.buffer.extend(page);
        }
    }

    /// Events from the shared tail, waiting there once caught up; `None` when this
    /// subscriber is behind the tail's window (or there is no tail) and must read the
    /// store.
    async fn next_from_tail(&mut self, max: usize) -> Option<Vec<StoredEvent>> {
        let (tail, watch) = self.tail.as_mut()?;
        loop {
            watch.borrow_and_update();
            match tail.read_after(self.position, max.max(1), &self.filter) {
                TailRead::Behind => return None,
                TailRead::Events { events, scanned_to } => {
                    self.position = self.position.max(scanned_to);
                    if let Some(last) = events.last() {
                        self.delivered = last.global_position;
                        return Some(events);
                    }
                }
                TailRead::CaughtUp => {
                    // The tail wakes us when it reads more. After a quiet while, look at
                    // the store once ourselves: a tail whose task has stopped (its
                    // runtime shut down) must not hold this subscriber forever.
                    match tokio::time::timeout(FALLBACK_POLL, watch.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) | Err(_) => return None,
                    }
                }
            }
        }
    }

    /// Up to `max` next events (at least one), waiting if the subscriber has caught up.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<StoredEvent>, StoreError> {
        if !self.buffer.is_empty() {
            let n = self.buffer.len().min(max);
            let batch: Vec<StoredEvent> = self.buffer.drain(..n).collect();
            self.delivered = batch.last().map_or(self.delivered, |e| e.global_position);
            return Ok(batch);
        }
        if let Some(events) = self.next_from_tail(max).await {
            return Ok(events);
        }
        let mut retry = IN_FLIGHT_RETRY;
        loop {
            if self.tail.is_some()
                && let Some(events) = self.next_from_tail(max).await
            {
                return Ok(events);
            }
            // Mark the watch before reading so that a commit racing with the read wakes us.
            self.watch.mark_seen();
            let page = self
                .store
                .read_all(self.position, max.max(1), &self.filter)
                .await?;
            let progressed = page.scanned_to > self.position;
            tracing::trace!(
                from = self.position,
                scanned_to = page.scanned_to,
                events = page.events.len(),
                announced = self.watch.latest(),
                "log subscription: read"
            );
            self.position = self.position.max(page.scanned_to);
            if !page.events.is_empty() {
                self.delivered = page
                    .events
                    .last()
                    .map_or(self.delivered, |e| e.global_position);
                return Ok(page.events);
            }
            if progressed {
                // A window with nothing for this filter; the next one may have something.
                continue;
            }
            if self.watch.latest() > self.position {
                // Something committed past what is readable: an earlier transaction is
                // still in flight (or was aborted). It settles quickly; look again soon.
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(FALLBACK_POLL);
                continue;
            }
            retry = IN_FLIGHT_RETRY;
            let _ = tokio::time::timeout(FALLBACK_POLL, self.watch.changed()).await;
        }
    }
}
