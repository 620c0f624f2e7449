//! FlowForge's durable execution engine.
//!
//! ```text
//!  event.received ─▶ Scheduler (reactor over the log) ─▶ run.created (one run per matching function)
//!  run.* events   ─▶ Scheduler ─▶ jobs (WorkQueue) and timers ─▶ Executor ─▶ call the app ─▶ run.* events
//! ```
//!
//! Every piece of work is derived from the committed log by the [`scheduler`]; the
//! [`queue`] and the [`timers`] only deliver it. A restarted process re-derives all
//! outstanding work from the log, and the Run decider refuses stale work, so a crash
//! anywhere loses nothing and repeats nothing that was recorded.

pub mod admission;
pub mod ai_gateway;
pub mod approvals;
pub mod concurrency;
pub mod cron;
pub mod executor;
pub mod expr;
pub mod ids;
pub mod ingest;
pub mod lease;
pub mod live;
pub mod metrics;
pub mod protocol;
pub mod queue;
pub mod registry;
pub mod scheduler;
pub mod signing;
pub mod skills;
pub mod space;
pub mod team_events;
pub mod timers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowforge_commands::{CommandHandler, Loaded};
use flowforge_domain::run::{BackoffPolicy, RunState};
use flowforge_projections::ReadDb;
use flowforge_store::EventStore;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use ingest::{IngestError, NewIncomingEvent};
pub use queue::{InProcessQueue, Job, WorkQueue};
pub use registry::Registry;
pub use space::Space;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Calls to apps in flight at once.
    pub executor_concurrency: usize,
    /// How long one call to an app may take.
    pub call_timeout: Duration,
    /// Attempts when a function does not say (retries + 1).
    pub default_max_attempts: u32,
    pub backoff: BackoffPolicy,
    /// `dev` or `cloud`, sent to apps as `X-Inngest-Server-Kind`.
    pub server_kind: &'static str,
    /// A call whose body would be larger than this asks the app to fetch the run's
    /// events and steps through the API instead (the protocol's `use_api`).
    pub max_call_bytes: usize,
    /// With a queue that may lose jobs (JetStream), a queued job whose run has not
    /// moved on after this long is queued again. `None` for the in-process queue.
    pub job_lease: Option<Duration>,
    /// This process's name in the log's metadata (`FLOWFORGE_INSTANCE`).
    pub instance: String,
}

/// A name for this process: `<host>-<pid>`.
pub fn default_instance() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "flowforge".into());
    format!("{host}-{}", std::process::id())
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            executor_concurrency: 64,
            call_timeout: Duration::from_secs(300),
            default_max_attempts: 4,
            backoff: BackoffPolicy::default(),
            server_kind: "dev",
            max_call_bytes: 4 * 1024 * 1024,
            job_lease: None,
            instance: default_instance(),
        }
    }
}

/// The latest known state of active runs, shared by the scheduler (which folds every
/// run event) and the executors (which decide against it). A stale entry costs one
/// append conflict and a reload; it never causes a wrong decision.
#[derive(Default)]
pub struct RunCache {
    runs: Mutex<HashMap<Uuid, Loaded<RunState>>>,
}

impl RunCache {
    pub fn get(&self, run_id: Uuid) -> Option<Loaded<RunState>> {
        self.runs.lock().ok()?.get(&run_id).cloned()
    }

    /// Keeps the newer of the cached and the given state. The scheduler removes a run
    /// when it reads the run's end; an executor that recorded the end keeps it here
    /// until then (so that the scheduler, still behind, cannot put back an older state
    /// in which the run's last call is still due), but never adds back a run the
    /// scheduler has already let go.
    pub fn put(&self, run_id: Uuid, state: RunState, version: u64) {
        let terminal = state.status.is_terminal();
        self.put_with(run_id, version, terminal, || state);
    }

    /// [`RunCache::put`] of a state the caller keeps: cloned only when it is kept (the
    /// scheduler, following the log, mostly reads states an executor cached first).
    pub fn put_from(&self, run_id: Uuid, state: &RunState, version: u64) {
        self.put_with(run_id, version, state.status.is_terminal(), || {
            state.clone()
        });
    }

    fn put_with(
        &self,
        run_id: Uuid,
        version: u64,
        terminal: bool,
        state: impl FnOnce() -> RunState,
    ) {
        if let Ok(mut runs) = self.runs.lock() {
            match runs.get(&run_id) {
                Some(cached) if cached.version >= version => {}
                None if terminal => {}
                _ => {
                    runs.insert(
                        run_id,
                        Loaded {
                            state: state(),
                            version,
                        },
                    );
                }
            }
        }
    }

    /// Whether a state newer than `version` is cached and no longer holds `job`'s call:
    /// an executor of this process has made it and recorded the outcome, and the
    /// scheduler (at `version`) has not read that yet.
    pub fn moved_past(&self, job: &queue::Job, version: u64) -> bool {
        let Ok(runs) = self.runs.lock() else {
            return false;
        };
        runs.get(&job.run_id).is_some_and(|cached| {
            cached.version > version && !cached.state.holds_call(&job.target, job.token)
        })
    }

    pub fn remove(&self, run_id: Uuid) {
        if let Ok(mut runs) = self.runs.lock() {
            runs.remove(&run_id);
        }
    }

    pub fn len(&self) -> usize {
        self.runs.lock().map(|r| r.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What every part of the engine shares.
pub struct EngineContext {
    pub store: Arc<dyn EventStore>,
    pub read_db: ReadDb,
    pub commands: CommandHandler,
    pub registry: Registry,
    pub cache: RunCache,
    pub queue: Arc<dyn WorkQueue>,
    pub http: reqwest::Client,
    pub expressions: expr::Expressions,
    pub live: live::LiveFeed,
    pub metrics: Arc<metrics::Metrics>,
    pub signing_keys: Arc<signing::SigningKeys>,
    pub config: EngineConfig,
    /// This process runs the scheduler now, so the jobs it derives are queued here first
    /// (which lets executors keep a run's next call in the process, see
    /// [`queue::WorkQueue::hold_run`]).
    pub scheduling: std::sync::atomic::AtomicBool,
}

impl EngineContext {
    pub fn is_scheduling(&self) -> bool {
        self.scheduling.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_scheduling(&self, scheduling: bool) {
        self.scheduling
            .store(scheduling, std::sync::atomic::Ordering::Release);
        self.queue.scheduler_running(scheduling);
    }
}

impl EngineContext {
    /// The functions an incoming event starts a run of: every current function with a
    /// matching event trigger (and expression), or the cron function that fired.
    pub fn functions_for(
        &self,
        space: &Space,
        received: &flowforge_domain::event::EventReceived,
        event_json: &serde_json::Value,
    ) -> Vec<flowforge_domain::app::FunctionVersion> {
        use flowforge_domain::event::EventSource;
        let mut functions: Vec<flowforge_domain::app::FunctionVersion> = match &received.source {
            EventSource::Cron { function_id } => self.registry.current(space, function_id).into_iter().collect(),
            _ => self
                .registry
                .triggered_by(space, &received.name)
                .into_iter()
                .filter(|(function, expression)| {
                    // A function is never triggered by the announcement of its own end.
                    let about = received.data.get("function_id").and_then(serde_json::Value::as_str);
                    let announces_an_end =
                        received.name.ends_with("/function.finished") || received.name.ends_with("/function.failed");
                    if announces_an_end && about == Some(function.spec.id.as_str()) {
                        return false;
                    }
                    match expression {
                        None => true,
                        Some(expression) => match self.expressions.matches(expression, event_json, None) {
                            Ok(matched) => matched,
                            Err(error) => {
                                tracing::warn!(function = %function.spec.id, %error, "trigger expression failed");
                                false
                            }
                        },
                    }
                })
                .map(|(function, _)| function)
                .collect(),
        };
        functions.dedup_by(|a, b| a.spec.id == b.spec.id);
        functions
    }
}

pub struct Engine {
    pub context: Arc<EngineContext>,
    tasks: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Builds the engine and starts its scheduler and executors.
    pub async fn start(
        store: Arc<dyn EventStore>,
        read_db: ReadDb,
        queue: Arc<dyn WorkQueue>,
        config: EngineConfig,
        signing_keys: Arc<signing::SigningKeys>,
    ) -> Result<Self, EngineError> {
        Self::start_with_leadership(
            store,
            read_db,
            queue,
            config,
            signing_keys,
            Arc::new(lease::SoleProcess),
        )
        .await
    }

    /// Builds the engine for one of several processes: executors start at once, the
    /// scheduler whenever this process holds the `scheduler` lease.
    pub async fn start_with_leadership(
        store: Arc<dyn EventStore>,
        read_db: ReadDb,
        queue: Arc<dyn WorkQueue>,
        config: EngineConfig,
        signing_keys: Arc<signing::SigningKeys>,
        leadership: Arc<dyn lease::Leadership>,
    ) -> Result<Self, EngineError> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(config.executor_concurrency.max(8))
            .tcp_nodelay(true)
            // Header names as Inngest's servers send them (`X-Api-Key`): HTTP says they
            // are case-insensitive, but some servers and test harnesses compare them
            // as written.
            .http1_title_case_headers()
            .build()
            .map_err(|e| EngineError::Http(e.to_string()))?;
        let metrics = Arc::new(metrics::Metrics::default());
        let live = live::LiveFeed::start(store.clone(), metrics.clone()).await?;
        let context = Arc::new(EngineContext {
            commands: CommandHandler::new(store.clone()),
            store,
            read_db,
            registry: Registry::new(),
            cache: RunCache::default(),
            queue,
            http,
            expressions: expr::Expressions::new(),
            live,
            metrics,
            signing_keys,
            config,
            scheduling: std::sync::atomic::AtomicBool::new(false),
        });
        let mut tasks = Vec::new();
        if leadership.is_sole() {
            // Start-up errors surface here rather than in a retry loop.
            let scheduler = scheduler::Scheduler::prepare(context.clone()).await?;
            context.set_scheduling(true);
            tasks.push(tokio::spawn(scheduler.run()));
        } else {
            // Listen before loading, so no sync falls between the two.
            let feed = context.live.listen();
            let follower = tokio::spawn(registry::follow(context.clone(), feed));
            context.registry.load(&*context.store).await?;
            tasks.push(follower);
            tasks.push(tokio::spawn(lead(context.clone(), leadership)));
        }
        for worker in 0..context.config.executor_concurrency.max(1) {
            tasks.push(tokio::spawn(executor::work(context.clone(), worker)));
        }
        Ok(Self { context, tasks })
    }

    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

/// Runs the scheduler while this process holds its lease, and waits for the lease again
/// when it is lost.
async fn lead(context: Arc<EngineContext>, leadership: Arc<dyn lease::Leadership>) {
    loop {
        let mut lease = leadership.acquire(scheduler::NAME).await;
        match scheduler::Scheduler::prepare(context.clone()).await {
            Ok(scheduler) => {
                context.set_scheduling(true);
                tokio::select! {
                    _ = scheduler.run() => {}
                    _ = lease.lost() => tracing::warn!("scheduler stopped: its lease was lost"),
                }
                context.set_scheduling(false);
            }
            Err(error) => {
                tracing::error!(%error, "the scheduler cannot start; trying again");
                drop(lease);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error(transparent)]
    Store(#[from] flowforge_store::StoreError),
    #[error(transparent)]
    Projection(#[from] flowforge_projections::ProjectionError),
}
