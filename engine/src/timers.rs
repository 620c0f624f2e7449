//! Timers: sleeps ending, retries becoming due, waits and invokes timing out, cron.
//!
//! Timers live in memory only. They are derived from the log (the scheduler rebuilds
//! them from every active run when it starts), so nothing is lost when a process dies:
//! a restarted process finds the same timers in the log and fires the overdue ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, mpsc};

/// Earliest first: (when, insertion order, payload).
type Heap<T> = BinaryHeap<Reverse<(DateTime<Utc>, u64, Entry<T>)>>;

pub struct Timers<T> {
    heap: Arc<Mutex<Heap<T>>>,
    changed: Arc<Notify>,
    seq: Arc<std::sync::atomic::AtomicU64>,
}

/// A timer's payload, compared only by the heap's (time, sequence) key.
struct Entry<T>(T);

impl<T> PartialEq for Entry<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<T> Clone for Timers<T> {
    fn clone(&self) -> Self {
        Self {
            heap: self.heap.clone(),
            changed: self.changed.clone(),
            seq: self.seq.clone(),
        }
    }
}

impl<T: Send + 'static> Timers<T> {
    /// Timers whose payloads are sent to `fired` when they are due.
    pub fn start(fired: mpsc::UnboundedSender<T>) -> Self {
        let timers = Self {
            heap: Arc::default(),
            changed: Arc::new(Notify::new()),
            seq: Arc::default(),
        };
        let runner = timers.clone();
        tokio::spawn(async move { runner.run(fired).await });
        timers
    }

    pub fn add(&self, at: DateTime<Utc>, payload: T) {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut heap) = self.heap.lock() {
            heap.push(Reverse((at, seq, Entry(payload))));
        }
        self.changed.notify_one();
    }

    pub fn len(&self) -> usize {
        self.heap.lock().map(|h| h.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn run(&self, fired: mpsc::UnboundedSender<T>) {
        loop {
            let changed = self.changed.notified();
            let next = {
                let Ok(mut heap) = self.heap.lock() else {
                    return;
                };
                let now = Utc::now();
                while heap.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
                    if let Some(Reverse((_, _, Entry(payload)))) = heap.pop()
                        && fired.send(payload).is_err()
                    {
                        return;
                    }
                }
                heap.peek().map(|Reverse((at, _, _))| *at)
            };
            match next {
                Some(at) => {
                    let wait = (at - Utc::now()).to_std().unwrap_or_default();
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[tokio::test]
    async fn timers_fire_in_time_order_and_overdue_ones_at_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let timers = Timers::start(tx);
        let now = Utc::now();
        timers.add(now + Duration::milliseconds(120), "late");
        timers.add(now + Duration::milliseconds(40), "soon");
        timers.add(now - Duration::seconds(5), "overdue");
        let started = std::time::Instant::now();
        assert_eq!(rx.recv().await, Some("overdue"));
        assert!(started.elapsed() < std::time::Duration::from_millis(30));
        assert_eq!(rx.recv().await, Some("soon"));
        assert_eq!(rx.recv().await, Some("late"));
        assert!(started.elapsed() >= std::time::Duration::from_millis(115));
        assert!(timers.is_empty());
    }
}
