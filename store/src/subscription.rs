use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

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
        let watch = store.head_watch();
        Self {
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

    /// Up to `max` next events (at least one), waiting if the subscriber has caught up.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<StoredEvent>, StoreError> {
        if !self.buffer.is_empty() {
            let n = self.buffer.len().min(max);
            let batch: Vec<StoredEvent> = self.buffer.drain(..n).collect();
            self.delivered = batch.last().map_or(self.delivered, |e| e.global_position);
            return Ok(batch);
        }
        let mut retry = IN_FLIGHT_RETRY;
        loop {
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
