//! Work handed to executors. The queue is a delivery mechanism, never the truth: every
//! job is derived from the log by the scheduler, and a job delivered again for a state
//! that has moved on is refused by the Run decider as stale.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use flowforge_domain::run::CallTarget;
use tokio::sync::Notify;
use uuid::Uuid;

pub mod jetstream;

/// "Make this call for this run": the call for `target` that the run's state holds
/// with `token`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Job {
    pub tenant: String,
    pub run_id: Uuid,
    pub target: CallTarget,
    pub token: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the work queue is closed")]
    Closed,
    #[error("work queue error: {0}")]
    Backend(String),
}

/// A delivered job. `ack` once its outcome is committed to the log.
pub struct Delivery {
    pub job: Job,
    /// Delivered before (and not acknowledged then).
    pub redelivered: bool,
    acker: Box<dyn Acker>,
}

impl Delivery {
    pub fn new(job: Job, acker: Box<dyn Acker>) -> Self {
        Self {
            job,
            redelivered: false,
            acker,
        }
    }

    pub fn redelivered(mut self, redelivered: bool) -> Self {
        self.redelivered = redelivered;
        self
    }

    pub async fn ack(self) {
        self.acker.ack().await;
    }

    /// Gives the job back undone, to be delivered again after `delay`.
    pub async fn retry_later(self, delay: std::time::Duration) {
        self.acker.retry_later(delay).await;
    }
}

#[async_trait]
pub trait Acker: Send {
    async fn ack(self: Box<Self>);
    async fn retry_later(self: Box<Self>, delay: std::time::Duration);
}

#[async_trait]
pub trait WorkQueue: Send + Sync + 'static {
    /// Queues a job. A job already queued or in flight is not queued twice.
    async fn enqueue(&self, job: Job) -> Result<(), QueueError>;
    /// Waits for the next job.
    async fn dequeue(&self) -> Result<Delivery, QueueError>;
    /// Jobs waiting per tenant (for metrics and tests).
    fn depth(&self) -> HashMap<String, usize>;
    /// Marks a job as taken by the caller, who will run it at once, so that queueing
    /// it again (the scheduler derives the same job from the log) is a no-op until
    /// [`WorkQueue::release`]. Returns false if the job is already queued or taken.
    /// Queues that cannot do this (across processes) always return false.
    fn claim(&self, _job: &Job) -> bool {
        false
    }
    /// Ends a claim.
    fn release(&self, _job: &Job) {}
    /// Queues a job again that should have made progress by now and has not: the
    /// reconciler's remedy for a queue that may lose jobs. `attempt` counts re-queues of
    /// this job, so a queue that drops duplicates by id can tell this one apart.
    /// Queues that never lose a job need not do anything.
    async fn requeue(&self, _job: Job, _attempt: u32) -> Result<(), QueueError> {
        Ok(())
    }
    /// Whether other processes take jobs from this queue too.
    fn shared(&self) -> bool {
        false
    }
    /// This process's scheduler has started (past its start-up) or stopped.
    fn scheduler_running(&self, _running: bool) {}
    /// Keeps the jobs this process queues for `run_id` back from other processes until
    /// [`WorkQueue::release_run`], and lets [`WorkQueue::claim`] take them: this
    /// process's executor is working on the run and will most likely make its next call
    /// itself. Holds nest. Queues that are not shared need not do anything.
    fn hold_run(&self, _run_id: Uuid) {}
    /// Ends a hold; at the last one, hands back the jobs kept back meanwhile (with their
    /// requeue attempt) for the caller to queue if they are still due.
    fn release_run(&self, _run_id: Uuid) -> Vec<(Job, u32)> {
        Vec::new()
    }
    fn name(&self) -> &'static str;
}

/// The in-process queue of the embedded default and of a single `flowforge serve`.
///
/// One FIFO per tenant, served round-robin: a tenant with ten thousand queued jobs
/// gets one turn in N like every other tenant with work, so it cannot starve them.
pub struct InProcessQueue {
    state: std::sync::Arc<Mutex<QueueState>>,
    ready: std::sync::Arc<Notify>,
}

#[derive(Default)]
struct QueueState {
    /// Tenants with queued jobs, in the order they get their next turn.
    turns: VecDeque<String>,
    queues: HashMap<String, VecDeque<Job>>,
    /// Jobs queued or delivered and not yet acknowledged.
    outstanding: HashSet<Job>,
}

impl InProcessQueue {
    pub fn new() -> Self {
        Self {
            state: std::sync::Arc::default(),
            ready: std::sync::Arc::new(Notify::new()),
        }
    }
}

impl Default for InProcessQueue {
    fn default() -> Self {
        Self::new()
    }
}

struct InProcessAck {
    state: std::sync::Arc<Mutex<QueueState>>,
    ready: std::sync::Arc<Notify>,
    job: Job,
}

#[async_trait]
impl Acker for InProcessAck {
    async fn ack(self: Box<Self>) {
        if let Ok(mut state) = self.state.lock() {
            state.outstanding.remove(&self.job);
        }
    }

    async fn retry_later(self: Box<Self>, delay: std::time::Duration) {
        // Still outstanding meanwhile, so the scheduler's copy of it is not queued twice.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Ok(mut state) = self.state.lock() {
                let tenant = self.job.tenant.clone();
                let queue = state.queues.entry(tenant.clone()).or_default();
                let was_empty = queue.is_empty();
                queue.push_back(self.job.clone());
                if was_empty {
                    state.turns.push_back(tenant);
                }
            }
            self.ready.notify_one();
        });
    }
}

#[async_trait]
impl WorkQueue for InProcessQueue {
    async fn enqueue(&self, job: Job) -> Result<(), QueueError> {
        {
            let mut state = self.state.lock().map_err(|_| QueueError::Closed)?;
            if !state.outstanding.insert(job.clone()) {
                return Ok(());
            }
            let tenant = job.tenant.clone();
            let queue = state.queues.entry(tenant.clone()).or_default();
            let was_empty = queue.is_empty();
            queue.push_back(job);
            if was_empty {
                state.turns.push_back(tenant);
            }
        }
        self.ready.notify_one();
        Ok(())
    }

    async fn dequeue(&self) -> Result<Delivery, QueueError> {
        loop {
            // Register interest before looking, so an enqueue in between is not missed.
            let notified = self.ready.notified();
            {
                let mut state = self.state.lock().map_err(|_| QueueError::Closed)?;
                if let Some(tenant) = state.turns.pop_front() {
                    let (job, more) = match state.queues.get_mut(&tenant) {
                        Some(queue) => (queue.pop_front(), !queue.is_empty()),
                        None => (None, false),
                    };
                    if more {
                        state.turns.push_back(tenant);
                    } else {
                        state.queues.remove(&tenant);
                    }
                    if let Some(job) = job {
                        if !state.turns.is_empty() {
                            // Others are waiting too: pass the wake-up on.
                            self.ready.notify_one();
                        }
                        return Ok(Delivery::new(
                            job.clone(),
                            Box::new(InProcessAck {
                                state: self.state.clone(),
                                ready: self.ready.clone(),
                                job,
                            }),
                        ));
                    }
                    continue;
                }
            }
            notified.await;
        }
    }

    fn depth(&self) -> HashMap<String, usize> {
        self.state
            .lock()
            .map(|s| s.queues.iter().map(|(t, q)| (t.clone(), q.len())).collect())
            .unwrap_or_default()
    }

    fn name(&self) -> &'static str {
        "in-process"
    }

    fn claim(&self, job: &Job) -> bool {
        self.state
            .lock()
            .map(|mut s| s.outstanding.insert(job.clone()))
            .unwrap_or(false)
    }

    fn release(&self, job: &Job) {
        if let Ok(mut state) = self.state.lock() {
            state.outstanding.remove(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(tenant: &str, n: u64) -> Job {
        Job {
            tenant: tenant.into(),
            run_id: Uuid::from_u128(u128::from(n)),
            target: CallTarget::Discovery,
            token: 1,
        }
    }

    #[tokio::test]
    async fn a_busy_tenant_cannot_starve_another() {
        let queue = InProcessQueue::new();
        for n in 0..10_000 {
            queue.enqueue(job("busy", n)).await.unwrap();
        }
        queue.enqueue(job("quiet", 0)).await.unwrap();
        let mut position = None;
        for i in 0..10_001 {
            let delivery = queue.dequeue().await.unwrap();
            if delivery.job.tenant == "quiet" {
                position = Some(i);
                break;
            }
            delivery.ack().await;
        }
        assert!(
            position.unwrap() <= 1,
            "the quiet tenant waited behind {position:?} jobs"
        );
        assert_eq!(queue.depth()["busy"], 9_999);
    }

    #[tokio::test]
    async fn a_job_is_not_queued_twice_until_acknowledged() {
        let queue = InProcessQueue::new();
        queue.enqueue(job("t", 1)).await.unwrap();
        queue.enqueue(job("t", 1)).await.unwrap();
        assert_eq!(queue.depth()["t"], 1);
        let delivery = queue.dequeue().await.unwrap();
        queue.enqueue(job("t", 1)).await.unwrap();
        assert!(queue.depth().is_empty(), "in flight: not queued again");
        delivery.ack().await;
        queue.enqueue(job("t", 1)).await.unwrap();
        assert_eq!(queue.depth()["t"], 1);
    }

    #[tokio::test]
    async fn a_claimed_job_is_not_queued_until_released() {
        let queue = InProcessQueue::new();
        assert!(queue.claim(&job("t", 1)));
        assert!(!queue.claim(&job("t", 1)), "claimed twice");
        queue.enqueue(job("t", 1)).await.unwrap();
        assert!(queue.depth().is_empty());
        queue.release(&job("t", 1));
        queue.enqueue(job("t", 1)).await.unwrap();
        assert_eq!(queue.depth()["t"], 1);
        assert!(!queue.claim(&job("t", 1)), "queued jobs cannot be claimed");
    }

    #[tokio::test]
    async fn waiting_consumers_wake_up_for_new_work() {
        let queue = std::sync::Arc::new(InProcessQueue::new());
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move { queue.dequeue().await.unwrap().job })
            })
            .collect();
        tokio::task::yield_now().await;
        for n in 0..4 {
            queue.enqueue(job("t", n)).await.unwrap();
        }
        let mut got = Vec::new();
        for c in consumers {
            got.push(
                tokio::time::timeout(std::time::Duration::from_secs(2), c)
                    .await
                    .unwrap()
                    .unwrap()
                    .run_id,
            );
        }
        got.sort();
        assert_eq!(got, (0..4).map(Uuid::from_u128).collect::<Vec<_>>());
    }
}
