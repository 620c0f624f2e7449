//! Wake-up hints for log readers.
//!
//! A [`HeadNotifier`] is advanced after every local commit (and, on PostgreSQL, when
//! another process announces one). Readers hold a [`HeadWatch`] and re-read the log
//! when it moves. The value is only a hint: the log itself says what is visible.

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct HeadNotifier {
    tx: watch::Sender<u64>,
}

/// The receiving side of a [`HeadNotifier`].
#[derive(Debug, Clone)]
pub struct HeadWatch {
    rx: watch::Receiver<u64>,
}

impl HeadNotifier {
    pub fn new(initial: u64) -> Self {
        let (tx, _) = watch::channel(initial);
        Self { tx }
    }

    /// Records that events up to `position` have committed somewhere.
    pub fn advance(&self, position: u64) {
        self.tx.send_if_modified(|head| {
            if position > *head {
                *head = position;
                true
            } else {
                false
            }
        });
    }

    pub fn watch(&self) -> HeadWatch {
        HeadWatch {
            rx: self.tx.subscribe(),
        }
    }

    pub fn latest(&self) -> u64 {
        *self.tx.borrow()
    }
}

impl HeadWatch {
    /// The highest committed position announced so far.
    pub fn latest(&self) -> u64 {
        *self.rx.borrow()
    }

    /// Waits until a position newer than the last one seen is announced.
    /// Returns `false` if the notifier is gone (the store was dropped).
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// Marks the current value as seen.
    pub fn mark_seen(&mut self) -> u64 {
        *self.rx.borrow_and_update()
    }
}
