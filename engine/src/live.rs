//! A process-wide live feed of committed log events, for server-sent-event streams and
//! for requests that wait for a run to finish. One log subscription feeds every
//! listener: broadcast listeners see every event and filter for what they want; stream
//! watchers get only the events of their stream (a request waiting for one run must
//! not be woken for every event of every other run).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flowforge_store::{EventStore, LogFilter, StoreError, StoredEvent, subscribe};
use tokio::sync::{broadcast, mpsc};

#[derive(Clone)]
pub struct LiveFeed {
    sender: broadcast::Sender<Arc<StoredEvent>>,
    watchers: Arc<Watchers>,
}

/// One watcher: its id, and where its stream's events go.
type Watcher = (u64, mpsc::UnboundedSender<Arc<StoredEvent>>);

/// Watchers by stream id.
#[derive(Default)]
struct Watchers {
    next_id: AtomicU64,
    by_stream: Mutex<HashMap<String, Vec<Watcher>>>,
}

impl Watchers {
    fn deliver(&self, event: &Arc<StoredEvent>) {
        let Ok(by_stream) = self.by_stream.lock() else {
            return;
        };
        if let Some(watchers) = by_stream.get(&event.stream_id) {
            for (_, watcher) in watchers {
                let _ = watcher.send(event.clone());
            }
        }
    }
}

/// The events of one stream committed from when it was made; stops watching when
/// dropped.
pub struct StreamWatch {
    id: u64,
    stream_id: String,
    events: mpsc::UnboundedReceiver<Arc<StoredEvent>>,
    watchers: Arc<Watchers>,
}

impl StreamWatch {
    /// The stream's next event; `None` if the feed has stopped.
    pub async fn recv(&mut self) -> Option<Arc<StoredEvent>> {
        self.events.recv().await
    }
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        if let Ok(mut by_stream) = self.watchers.by_stream.lock()
            && let Some(watchers) = by_stream.get_mut(&self.stream_id)
        {
            watchers.retain(|(id, _)| *id != self.id);
            if watchers.is_empty() {
                by_stream.remove(&self.stream_id);
            }
        }
    }
}

impl LiveFeed {
    /// Starts following the log from its current head.
    pub async fn start(
        store: Arc<dyn EventStore>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, StoreError> {
        let (sender, _) = broadcast::channel(16_384);
        let watchers = Arc::new(Watchers::default());
        let head = store.head_position().await?;
        let feed = sender.clone();
        let watched = watchers.clone();
        tokio::spawn(async move {
            let mut subscription = subscribe(store, head, LogFilter::all());
            loop {
                match subscription.next_batch(1_000).await {
                    Ok(batch) => {
                        tracing::trace!(
                            events = batch.len(),
                            last = batch.last().map(|e| e.global_position),
                            "live feed: read"
                        );
                        for event in batch {
                            metrics.saw_event(&event.stream_type);
                            let event = Arc::new(event);
                            watched.deliver(&event);
                            // No listeners is fine; they come and go.
                            let _ = feed.send(event);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "live feed: log read failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(Self { sender, watchers })
    }

    /// Events committed from now on. A listener that falls more than 16k events behind
    /// gets `RecvError::Lagged` and should re-read what it needs from the log.
    pub fn listen(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.sender.subscribe()
    }

    /// The events of `stream_id` committed from now on, in order, none missed (the
    /// watcher's queue is unbounded: a stream's events are few).
    pub fn watch_stream(&self, stream_id: &str) -> StreamWatch {
        let (sender, events) = mpsc::unbounded_channel();
        let id = self.watchers.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut by_stream) = self.watchers.by_stream.lock() {
            by_stream
                .entry(stream_id.to_owned())
                .or_default()
                .push((id, sender));
        }
        StreamWatch {
            id,
            stream_id: stream_id.to_owned(),
            events,
            watchers: self.watchers.clone(),
        }
    }

    /// Streams watched now (for tests and metrics).
    pub fn watched_streams(&self) -> usize {
        self.watchers.by_stream.lock().map_or(0, |w| w.len())
    }
}
