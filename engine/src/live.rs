//! A process-wide live feed of committed log events, for server-sent-event streams and
//! for requests that wait for a run to finish. One log subscription feeds every
//! listener; listeners filter for what they want.

use std::sync::Arc;

use flowforge_store::{EventStore, LogFilter, StoreError, StoredEvent, subscribe};
use tokio::sync::broadcast;

#[derive(Clone)]
pub struct LiveFeed {
    sender: broadcast::Sender<Arc<StoredEvent>>,
}

impl LiveFeed {
    /// Starts following the log from its current head.
    pub async fn start(
        store: Arc<dyn EventStore>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, StoreError> {
        let (sender, _) = broadcast::channel(16_384);
        let head = store.head_position().await?;
        let feed = sender.clone();
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
                            // No listeners is fine; they come and go.
                            let _ = feed.send(Arc::new(event));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "live feed: log read failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(Self { sender })
    }

    /// Events committed from now on. A listener that falls more than 16k events behind
    /// gets `RecvError::Lagged` and should re-read what it needs from the log.
    pub fn listen(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.sender.subscribe()
    }
}
