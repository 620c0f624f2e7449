//! The scheduler: the reactor that turns the log into work.
//!
//! It follows the whole log and keeps the state of every active run (folded from its
//! events). From that state it derives everything that must happen next:
//! - calls that are due → jobs on the [`WorkQueue`](crate::queue::WorkQueue) (or timers
//!   when they are due later: retries with backoff);
//! - sleeps, waits and invokes → timers for their end;
//! - waits → an index by event name, so an arriving event resumes the runs waiting for it;
//! - invokes → child runs; a finished child resumes its parent;
//! - finished runs → `function.finished` / `function.failed` events.
//!
//! From `event.received` it creates one run per matching function (and per cron fire),
//! and applies cancel rules.
//!
//! Side effects are appends with deterministic stream ids, so repeating one is a
//! no-op. The scheduler's checkpoint (`reactor_checkpoints`, name `scheduler`) only
//! passes an event once every effect it started has been committed; on start-up the
//! scheduler rebuilds the state of every active run from its stream and re-reads the
//! log from its checkpoint, so work interrupted by a crash is derived again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowforge_commands::CommandError;
use flowforge_domain::app::FunctionVersion;
use flowforge_domain::approval::ApprovalOrigin;
use flowforge_domain::event::{EventReceived, EventSource, IncomingEvent};
use flowforge_domain::flow_control::{
    Batch, ConcurrencyLimit, ConcurrencyScope, Debounce, FlowControl, Throttle,
};
use flowforge_domain::run::{
    CallTarget, CreateRun, FunctionRef, Hold, HoldReason, ParentLink, Run, RunCommand, RunError,
    RunEvent, RunState, RunStatus, StepError, Waiting,
};
use flowforge_domain::{Actor, Decider, Environment, EventMetadata, TenantId};
use flowforge_projections::{ProjectionError, ProjectionRunner};
use flowforge_store::{LogFilter, StoredEvent, subscribe};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::admission::key_text;
use crate::approvals;
use crate::concurrency::{CallId, Need, SlotKey, Slots};
use crate::metrics::Metrics;
use crate::queue::Job;
use crate::space::Space;
use crate::team_events;
use crate::timers::Timers;
use crate::{EngineContext, EngineError, ids, ingest};

pub const NAME: &str = "scheduler";
/// The most head start (or delay) `priority.run` can give a run, in seconds.
const MAX_PRIORITY_S: f64 = 600.0;
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// What a timer does when it fires.
#[derive(Debug)]
enum Timer {
    Enqueue(Job),
    /// A queued job should have made progress by now: queue it again if it has not.
    Reconcile {
        job: Job,
        attempt: u32,
    },
    SleepDone {
        run_id: Uuid,
        step_id: String,
    },
    WaitExpired {
        run_id: Uuid,
        step_id: String,
    },
    InvokeExpired {
        run_id: Uuid,
        step_id: String,
    },
    Cron {
        space: Space,
        function_id: String,
        version: u32,
        schedule: String,
        at: DateTime<Utc>,
    },
}

struct Tracked {
    space: Space,
    state: RunState,
    version: u64,
    /// Position of the run's first event: events before it cannot cancel it.
    created_position: u64,
    /// Position at which each wait started: only later events can match it.
    wait_positions: HashMap<String, u64>,
    /// Calls already handed to the queue or to a timer.
    dispatched: HashSet<(CallTarget, u64)>,
    /// Waiting steps whose end already has a timer.
    timed: HashSet<String>,
    /// Its function's limits, once looked up.
    limits: Option<Option<Arc<Limits>>>,
    /// The concurrency slots its calls need and its priority (ms), once known.
    needs: Option<(Vec<Need>, i64)>,
}

pub struct Scheduler {
    context: Arc<EngineContext>,
    runs: HashMap<Uuid, Tracked>,
    /// Event name → waiting (run, step).
    waits: HashMap<String, HashSet<(Uuid, String)>>,
    /// (space, function) → active runs, for cancel rules.
    by_function: HashMap<(Space, String), HashSet<Uuid>>,
    /// Cron timers set: (space, function, version, schedule).
    crons: HashSet<(Space, String, u32, String)>,
    timers: Timers<Timer>,
    fired: mpsc::UnboundedReceiver<Timer>,
    /// Effects in flight per log position; the checkpoint stays below the lowest.
    in_flight: BTreeMap<u64, usize>,
    done_tx: mpsc::UnboundedSender<u64>,
    done_rx: mpsc::UnboundedReceiver<u64>,
    processed: u64,
    saved_checkpoint: u64,
    start_position: u64,
    /// Jobs derived but not yet handed to the queue.
    to_enqueue: Vec<Job>,
    /// Concurrency slots taken and the calls lined up for them.
    slots: Slots,
    /// Flow-control limits of each function version that has any.
    limits: HashMap<(Space, String, u32), Option<Arc<Limits>>>,
    /// Throttles: the theoretical arrival time of the next run per (function, key).
    throttles: HashMap<(Space, String, String), DateTime<Utc>>,
    /// Loading the runs that were active when this scheduler took over.
    recovering: bool,
    /// Due calls of limited functions found while recovering, not recorded as held, with
    /// the log position of their run's last event and their line order.
    recovered: Vec<(Job, Vec<Need>, u64, i64)>,
    /// While recovering: the position of each loaded run's last event.
    recovered_positions: HashMap<Uuid, u64>,
    /// The run of each (function, key) still collecting events (debounce, batch).
    collecting: HashMap<(Space, String, String), Collecting>,
    /// The key each collecting run is open for (a timer finds its run's entry).
    collecting_key: HashMap<Uuid, (Space, String, String)>,
    /// Full batches that start once the events given to them are recorded.
    closing: HashMap<Uuid, Arc<std::sync::atomic::AtomicUsize>>,
}

/// A run that has not started and takes more events of its key.
struct Collecting {
    run_id: Uuid,
    /// When it starts unless another event puts it off (debounce) or fills it (batch).
    until: DateTime<Utc>,
    /// Debounce: the latest it may start (first event + timeout).
    deadline: Option<DateTime<Utc>>,
    /// Batch: events in it so far.
    count: u32,
    /// Events given to it whose record is not committed yet: it must not start before.
    pending: Arc<std::sync::atomic::AtomicUsize>,
}

/// What debounce or batching does with a new event for a function.
enum Collected {
    /// The function does neither.
    No,
    /// The event joined the run of its key.
    Joined,
    /// The event opens a new run, held like this.
    Opens(Hold),
}

/// The limits the scheduler applies to a function's calls and starts.
struct Limits {
    concurrency: Vec<ConcurrencyLimit>,
    throttle: Option<Throttle>,
    priority: Option<String>,
    debounce: Option<Debounce>,
    batch: Option<Batch>,
}

fn metadata(space: &Space) -> EventMetadata {
    space.stamp(EventMetadata::new(
        TenantId::new(space.tenant()),
        Actor::system(NAME),
    ))
}

fn run_id_of(stream_id: &str) -> Option<Uuid> {
    stream_id
        .strip_prefix("run-")
        .and_then(|id| id.parse().ok())
}

impl Scheduler {
    /// Loads the registry, the checkpoint and every active run; sets their timers and
    /// queues their due calls.
    pub async fn prepare(context: Arc<EngineContext>) -> Result<Self, EngineError> {
        context.registry.load(&*context.store).await?;
        let checkpoint = load_checkpoint(&context).await?;
        let head = context.store.head_position().await?;
        // The runs read model tells which runs are active; make sure it has seen them all.
        let runs_projection = flowforge_projections::find_projection("runs")?;
        ProjectionRunner::new(
            context.read_db.clone(),
            context.store.clone(),
            runs_projection,
        )
        .catch_up()
        .await?;
        let active: Vec<(String, String)> = sqlx::query_as(
            "SELECT run_id, tenant_id FROM runs WHERE status IN ('queued', 'running') ORDER BY created_at",
        )
        .fetch_all(context.read_db.pool())
        .await
        .map_err(ProjectionError::from)?;

        let (timer_tx, fired) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut scheduler = Self {
            timers: Timers::start(timer_tx),
            context,
            runs: HashMap::new(),
            waits: HashMap::new(),
            by_function: HashMap::new(),
            crons: HashSet::new(),
            fired,
            in_flight: BTreeMap::new(),
            done_tx,
            done_rx,
            processed: checkpoint,
            saved_checkpoint: checkpoint,
            start_position: checkpoint,
            to_enqueue: Vec::new(),
            slots: Slots::new(),
            limits: HashMap::new(),
            throttles: HashMap::new(),
            recovering: true,
            recovered: Vec::new(),
            recovered_positions: HashMap::new(),
            collecting: HashMap::new(),
            collecting_key: HashMap::new(),
            closing: HashMap::new(),
        };
        for (run_id, tenant) in active {
            let Ok(run_id) = run_id.parse::<Uuid>() else {
                continue;
            };
            if let Err(error) = scheduler.track_from_stream(run_id, &tenant, 0).await {
                tracing::error!(%run_id, %error, "cannot load an active run");
            }
        }
        scheduler.recovering = false;
        // Due calls not recorded as held were queued by the previous scheduler, and
        // most are executing. It gave slots in the order it read the log, so they get
        // them again in that order (by the position of their run's last event, which
        // made the call due): the calls that are executing keep their slots. Line order
        // would not do: a run that arrived first may have been committed later, and
        // holding the call that is executing gave its slot to a second call at once.
        // A call the previous scheduler held back but died before recording (more of
        // them than the limit) is held now, the latest first, as it would have been.
        scheduler.recovered_positions.clear();
        let mut recovered = std::mem::take(&mut scheduler.recovered);
        recovered.sort_by_key(|(_, _, due_at, order)| (*due_at, *order));
        for (job, needs, _, order) in recovered {
            scheduler.acquire(job, needs, order, checkpoint);
        }
        // Calls recorded as held whose limit has room now (slots freed while no
        // scheduler was watching).
        let admitted = scheduler.slots.admit_all();
        scheduler.let_through(admitted);
        scheduler.schedule_crons();
        scheduler.flush_enqueued().await;
        tracing::info!(
            active_runs = scheduler.runs.len(),
            checkpoint,
            head,
            queued = ?scheduler.context.queue.depth(),
            timers = scheduler.timers.len(),
            "scheduler ready"
        );
        Ok(scheduler)
    }

    pub async fn run(mut self) {
        let mut subscription = subscribe(
            self.context.store.clone(),
            self.start_position,
            LogFilter::all(),
        );
        let mut checkpoint_tick = tokio::time::interval(CHECKPOINT_EVERY);
        loop {
            tokio::select! {
                batch = subscription.next_batch(500) => match batch {
                    Ok(events) => {
                        for event in events {
                            let position = event.global_position;
                            self.on_event(event).await;
                            self.processed = self.processed.max(position);
                        }
                        self.processed = self.processed.max(subscription.position());
                        self.context.metrics.scheduler_position.store(self.processed, std::sync::atomic::Ordering::Relaxed);
                        self.flush_enqueued().await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "scheduler: reading the log failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                Some(timer) = self.fired.recv() => {
                    self.on_timer(timer).await;
                    self.flush_enqueued().await;
                }
                Some(position) = self.done_rx.recv() => self.effect_done(position),
                _ = checkpoint_tick.tick() => self.save_checkpoint().await,
            }
        }
    }

    // ------------------------------------------------------------------ log events

    async fn on_event(&mut self, event: StoredEvent) {
        tracing::trace!(position = event.global_position, stream = %event.stream_id, event_type = %event.event_type, "scheduler: read");
        match event.stream_type.as_str() {
            flowforge_domain::run::STREAM_TYPE => self.on_run_event(&event).await,
            flowforge_domain::event::STREAM_TYPE => self.on_incoming(&event),
            flowforge_domain::app::STREAM_TYPE => {
                self.context.registry.apply(&event);
                self.schedule_crons();
            }
            flowforge_domain::task::STREAM_TYPE
            | flowforge_domain::task::BOARD_STREAM_TYPE
            | flowforge_domain::comment::STREAM_TYPE => self.on_team_event(&event),
            _ => {}
        }
    }

    /// Team events become events functions can trigger on (see `team_events`).
    fn on_team_event(&mut self, event: &StoredEvent) {
        let caused = team_events::caused_by(event);
        if caused.is_empty() {
            return;
        }
        let context = self.context.clone();
        let meta = Space::of(event)
            .stamp(EventMetadata::new(
                TenantId::new(event.tenant_id()),
                Actor::system(NAME),
            ))
            .with_causation(event.event_id);
        self.effect(event.global_position, async move {
            ingest::record(&context, &meta, caused, EventSource::Internal)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    }

    async fn on_run_event(&mut self, event: &StoredEvent) {
        let Some(run_id) = run_id_of(&event.stream_id) else {
            return;
        };
        let decoded: RunEvent = match event.decode() {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::error!(%run_id, %error, position = event.global_position, "unreadable run event");
                return;
            }
        };
        let known = self.runs.get(&run_id).map(|t| t.version);
        match known {
            Some(version) if event.stream_version <= version => return,
            Some(version) if event.stream_version == version + 1 => {
                if let Some(tracked) = self.runs.get_mut(&run_id) {
                    let state = std::mem::take(&mut tracked.state);
                    tracked.state = Run::evolve(state, &decoded);
                    tracked.version = event.stream_version;
                    if let RunEvent::WaitStarted(wait) = &decoded {
                        tracked
                            .wait_positions
                            .insert(wait.step_id.clone(), event.global_position);
                    }
                }
            }
            None if event.stream_version == 1 => {
                let state = Run::evolve(Run::initial(), &decoded);
                self.start_tracking(run_id, event.tenant_id(), state, 1, event.global_position);
            }
            // A gap (or a run we did not know): read the whole stream.
            _ => {
                if let Err(error) = self
                    .track_from_stream(run_id, event.tenant_id(), event.global_position)
                    .await
                {
                    tracing::error!(%run_id, %error, "cannot load a run");
                }
                if !self.runs.contains_key(&run_id) && decoded_is_terminal(&decoded) {
                    self.finished_untracked(run_id, event).await;
                }
                return;
            }
        }
        if let RunEvent::InvokeStarted(invoke) = &decoded {
            let space = self.runs.get(&run_id).map(|t| t.space.clone());
            if let Some(space) = space {
                self.start_child(run_id, &space, invoke, event.global_position);
            }
        }
        self.after_change(run_id, event.global_position);
    }

    /// Loads a run from its stream and tracks it if it is still active.
    async fn track_from_stream(
        &mut self,
        run_id: Uuid,
        tenant: &str,
        position: u64,
    ) -> Result<(), CommandError<RunError>> {
        let stream = flowforge_domain::run::stream_id(run_id);
        let stored = self
            .context
            .store
            .read_stream(&stream, 1)
            .await
            .map_err(CommandError::Store)?;
        let mut state = Run::initial();
        let mut wait_positions = HashMap::new();
        let mut created_position = position;
        for e in &stored {
            let decoded: RunEvent = e.decode().map_err(|source| CommandError::Decode {
                stream_id: stream.clone(),
                source,
            })?;
            if e.stream_version == 1 {
                created_position = e.global_position;
            }
            if let RunEvent::WaitStarted(wait) = &decoded {
                wait_positions.insert(wait.step_id.clone(), e.global_position);
            }
            state = Run::evolve(state, &decoded);
        }
        let version = stored.last().map_or(0, |e| e.stream_version);
        if version == 0 || state.status.is_terminal() {
            return Ok(());
        }
        if self.recovering {
            if let Some(last) = stored.last() {
                self.recovered_positions
                    .insert(run_id, last.global_position);
            }
            let space = Space::new(tenant, state.environment);
            self.recover_throttle(&space, &state);
            self.recover_collecting(run_id, &space, &state);
        }
        self.start_tracking(run_id, tenant, state, version, created_position);
        if let Some(tracked) = self.runs.get_mut(&run_id) {
            tracked.wait_positions = wait_positions;
        }
        let space = Space::new(tenant, self.runs[&run_id].state.environment);
        // Children this run is waiting for: make sure they exist (and resume the
        // parent if they already finished while nobody was watching).
        let invokes: Vec<(String, Uuid)> = self.runs[&run_id]
            .state
            .waiting
            .iter()
            .filter_map(|(step, w)| match w {
                Waiting::Invoke { child_run_id, .. } => Some((step.clone(), *child_run_id)),
                _ => None,
            })
            .collect();
        for (step_id, child_run_id) in invokes {
            self.reconcile_child(run_id, &space, step_id, child_run_id, position);
        }
        self.after_change(run_id, position);
        Ok(())
    }

    fn start_tracking(
        &mut self,
        run_id: Uuid,
        tenant: &str,
        state: RunState,
        version: u64,
        created_position: u64,
    ) {
        let space = Space::new(tenant, state.environment);
        if let Some(function) = &state.function {
            self.by_function
                .entry((space.clone(), function.function_id.clone()))
                .or_default()
                .insert(run_id);
        }
        self.runs.insert(
            run_id,
            Tracked {
                space,
                state,
                version,
                created_position,
                wait_positions: HashMap::new(),
                dispatched: HashSet::new(),
                timed: HashSet::new(),
                limits: None,
                needs: None,
            },
        );
    }

    /// Derives the work a run's new state calls for.
    fn after_change(&mut self, run_id: Uuid, position: u64) {
        let Some(tracked) = self.runs.get_mut(&run_id) else {
            return;
        };
        self.context
            .cache
            .put_from(run_id, &tracked.state, tracked.version);
        if tracked.state.status.is_terminal() {
            let tracked = self.runs.remove(&run_id);
            if let Some(tracked) = tracked {
                self.forget(run_id, &tracked);
                self.context.cache.remove(run_id);
                self.finished(run_id, &tracked.space, &tracked.state, position);
            }
            return;
        }
        let now = Utc::now();
        // Calls: queue the due ones, set timers for the later ones.
        let mut no_longer_due = Vec::new();
        tracked.dispatched.retain(|(target, token)| {
            let due = tracked.state.holds_call(target, *token);
            if !due {
                no_longer_due.push((run_id, target.clone(), *token));
            }
            due
        });
        let mut to_queue = Vec::new();
        for (target, due) in &tracked.state.due {
            if !tracked.dispatched.insert((target.clone(), due.token)) {
                continue;
            }
            let job = Job {
                tenant: tracked.space.tenant.clone(),
                run_id,
                target: target.clone(),
                token: due.token,
            };
            match due.not_before {
                Some(at) if at > now => self.timers.add(at, Timer::Enqueue(job)),
                _ => to_queue.push(job),
            }
        }
        // Waiting steps: a timer for their end, and the wait index.
        let waiting: Vec<(String, Waiting)> = tracked
            .state
            .waiting
            .iter()
            .map(|(s, w)| (s.clone(), w.clone()))
            .collect();
        let gone: Vec<String> = tracked
            .timed
            .iter()
            .filter(|s| !tracked.state.waiting.contains_key(*s))
            .cloned()
            .collect();
        for step in &gone {
            tracked.timed.remove(step);
        }
        let mut new_waits = Vec::new();
        let mut new_approvals = Vec::new();
        for (step_id, w) in waiting {
            if !tracked.timed.insert(step_id.clone()) {
                continue;
            }
            let timer = match &w {
                Waiting::Sleep { .. } => Timer::SleepDone {
                    run_id,
                    step_id: step_id.clone(),
                },
                Waiting::Event {
                    event,
                    approval,
                    until,
                    ..
                } => {
                    new_waits.push((event.clone(), step_id.clone()));
                    if let Some(wait) = approval {
                        let origin = ApprovalOrigin {
                            run_id,
                            function_id: tracked
                                .state
                                .function
                                .as_ref()
                                .map(|f| f.function_id.clone())
                                .unwrap_or_default(),
                            step_id: step_id.clone(),
                        };
                        new_approvals.push((tracked.space.clone(), origin, wait.clone(), *until));
                    }
                    Timer::WaitExpired {
                        run_id,
                        step_id: step_id.clone(),
                    }
                }
                Waiting::Invoke { .. } => Timer::InvokeExpired {
                    run_id,
                    step_id: step_id.clone(),
                },
            };
            self.timers.add(w.until(), timer);
        }
        for step in gone {
            for waiters in self.waits.values_mut() {
                waiters.remove(&(run_id, step.clone()));
            }
        }
        for (event, step_id) in new_waits {
            self.waits
                .entry(event)
                .or_default()
                .insert((run_id, step_id));
        }
        for (space, origin, wait, until) in new_approvals {
            let context = self.context.clone();
            self.effect(position, async move {
                approvals::request(&context, &metadata(&space), origin, wait, until).await
            });
        }
        for call in no_longer_due {
            self.release(&call);
        }
        for job in to_queue {
            self.dispatch(job, position);
        }
    }

    fn forget(&mut self, run_id: Uuid, tracked: &Tracked) {
        for (target, token) in &tracked.dispatched {
            self.release(&(run_id, target.clone(), *token));
        }
        if let Some(function) = &tracked.state.function
            && let Some(runs) = self
                .by_function
                .get_mut(&(tracked.space.clone(), function.function_id.clone()))
        {
            runs.remove(&run_id);
        }
        for step in &tracked.timed {
            for waiters in self.waits.values_mut() {
                waiters.remove(&(run_id, step.clone()));
            }
        }
        self.waits.retain(|_, waiters| !waiters.is_empty());
    }

    fn enqueue(&mut self, job: Job) {
        self.to_enqueue.push(job);
    }

    /// The flow-control limits of a function version, read once.
    fn limits(&mut self, space: &Space, function: &FunctionRef) -> Option<Arc<Limits>> {
        let key = (
            space.clone(),
            function.function_id.clone(),
            function.version,
        );
        if let Some(limits) = self.limits.get(&key) {
            return limits.clone();
        }
        let limits = self
            .context
            .registry
            .version(space, &function.function_id, function.version)
            .filter(|f| !f.spec.flow_control.is_null())
            .and_then(|f| FlowControl::parse(&f.spec.flow_control).ok())
            .filter(|c| {
                !c.concurrency.is_empty()
                    || c.throttle.is_some()
                    || c.debounce.is_some()
                    || c.batch.is_some()
            })
            .map(|c| {
                Arc::new(Limits {
                    concurrency: c.concurrency,
                    throttle: c.throttle,
                    priority: c.priority,
                    debounce: c.debounce,
                    batch: c.batch,
                })
            });
        self.limits.insert(key, limits.clone());
        limits
    }

    /// The concurrency slots a run's calls need, keys evaluated on its event.
    fn needs(&self, space: &Space, function_id: &str, limits: &Limits, event: &Value) -> Vec<Need> {
        limits
            .concurrency
            .iter()
            .enumerate()
            .map(|(i, limit)| Need {
                slot: SlotKey {
                    scope: match limit.scope {
                        ConcurrencyScope::Function => format!("{space}:fn:{function_id}:{i}"),
                        ConcurrencyScope::Environment => format!("{space}:env"),
                        ConcurrencyScope::Account => format!("{}:account", space.tenant),
                    },
                    key: key_text(&self.context.expressions, limit.key.as_deref(), event),
                },
                limit: limit.limit,
            })
            .collect()
    }

    /// A run's head start in the line, in milliseconds (`priority.run`, seconds).
    fn priority_ms(&self, limits: &Limits, event: &Value) -> i64 {
        let Some(expression) = &limits.priority else {
            return 0;
        };
        match self
            .context
            .expressions
            .evaluate(expression, &[("event", event)])
        {
            Ok(value) => value.as_f64().map_or(0, |s| {
                (s.clamp(-MAX_PRIORITY_S, MAX_PRIORITY_S) * 1000.0) as i64
            }),
            Err(error) => {
                tracing::debug!(%error, "priority expression did not evaluate; no head start");
                0
            }
        }
    }

    /// Hands a due call to the queue if its function's concurrency limits have room;
    /// lines it up (and records that it is held, and why) if not.
    fn dispatch(&mut self, job: Job, position: u64) {
        let Some(tracked) = self.runs.get(&job.run_id) else {
            return;
        };
        let limits = match &tracked.limits {
            Some(known) => known.clone(),
            None => {
                let (space, function) = (tracked.space.clone(), tracked.state.function.clone());
                let limits = function.and_then(|f| self.limits(&space, &f));
                if let Some(tracked) = self.runs.get_mut(&job.run_id) {
                    tracked.limits = Some(limits.clone());
                }
                limits
            }
        };
        let Some(limits) = limits.filter(|l| !l.concurrency.is_empty()) else {
            return self.enqueue(job);
        };
        let Some(tracked) = self.runs.get(&job.run_id) else {
            return;
        };
        let (space, function_id) = (
            tracked.space.clone(),
            tracked
                .state
                .function
                .as_ref()
                .map(|f| f.function_id.clone())
                .unwrap_or_default(),
        );
        // Lines are first come, first served by run: a run already under way goes
        // before runs that have not started.
        let arrived = tracked
            .state
            .created_at
            .unwrap_or_else(Utc::now)
            .timestamp_millis();
        let recorded = tracked
            .state
            .held
            .get(&job.target)
            .is_some_and(|h| h.token == job.token && h.reason == HoldReason::Concurrency);
        // Keys and priority are the run's: evaluated once, at its first call.
        let (needs, priority) = match &tracked.needs {
            Some(known) => known.clone(),
            None => {
                let event = tracked.state.events.first().cloned().unwrap_or(Value::Null);
                let needs = self.needs(&space, &function_id, &limits, &event);
                let priority = self.priority_ms(&limits, &event);
                if let Some(tracked) = self.runs.get_mut(&job.run_id) {
                    tracked.needs = Some((needs.clone(), priority));
                }
                (needs, priority)
            }
        };
        let call: CallId = (job.run_id, job.target.clone(), job.token);
        if recorded {
            self.slots.line_up_held(call, needs, arrived - priority);
            return;
        }
        if self.recovering {
            let due_at = self
                .recovered_positions
                .get(&job.run_id)
                .copied()
                .unwrap_or(u64::MAX);
            self.recovered
                .push((job, needs, due_at, arrived - priority));
            return;
        }
        self.acquire(job, needs, arrived - priority, position);
    }

    /// Takes the call's slots and queues it, or lines it up and records the hold.
    fn acquire(&mut self, job: Job, needs: Vec<Need>, order: i64, position: u64) {
        let Some(tracked) = self.runs.get(&job.run_id) else {
            return;
        };
        let space = tracked.space.clone();
        let call: CallId = (job.run_id, job.target.clone(), job.token);
        let Some(full) = self.slots.acquire(call, needs, order) else {
            return self.enqueue(job);
        };
        let on_key = if full.slot.key.is_empty() {
            String::new()
        } else {
            format!(" of key `{}`", full.slot.key)
        };
        let hold = Hold {
            reason: HoldReason::Concurrency,
            key: full.slot.key.clone(),
            detail: format!("all {} concurrency slot(s){on_key} are taken", full.limit),
            until: None,
        };
        Metrics::count(&self.context.metrics.calls_held);
        self.command(
            position,
            &space,
            job.run_id,
            RunCommand::HoldCall {
                target: job.target,
                token: job.token,
                hold,
                at: Utc::now(),
            },
        );
    }

    /// A call is no longer due: its slots go to the next calls in line.
    fn release(&mut self, call: &CallId) {
        let admitted = self.slots.release(call);
        self.let_through(admitted);
    }

    /// Calls that got their slots: recorded as released, then queued.
    fn let_through(&mut self, admitted: Vec<CallId>) {
        for (run_id, target, token) in admitted {
            let job = Job {
                tenant: String::new(),
                run_id,
                target,
                token,
            };
            let Some(tracked) = self.runs.get(&run_id).filter(|_| self.still_due(&job)) else {
                // Not due any more after all: pass the slots on.
                self.release(&(run_id, job.target, token));
                continue;
            };
            let job = Job {
                tenant: tracked.space.tenant.clone(),
                ..job
            };
            let space = tracked.space.clone();
            let meta = metadata(&space);
            let context = self.context.clone();
            let released = job.clone();
            // Queued only once the release is in the log: a scheduler taking over
            // must never count a call that is executing as still held.
            self.effect(self.processed, async move {
                run_command(
                    &context,
                    &meta,
                    run_id,
                    RunCommand::ReleaseCall {
                        target: released.target.clone(),
                        token: released.token,
                        at: Utc::now(),
                    },
                )
                .await?;
                match context.queue.enqueue(released).await {
                    Ok(()) => Metrics::count(&context.metrics.jobs_published),
                    // The reconciler queues it again.
                    Err(error) => tracing::error!(%error, %run_id, "cannot queue a call"),
                }
                Ok(())
            });
            self.watch_job(job, 0);
        }
    }

    /// Queues the jobs derived from the events just processed.
    async fn flush_enqueued(&mut self) {
        let mut jobs = std::mem::take(&mut self.to_enqueue);
        // A job made stale later in the same batch, or already made by an executor that
        // continued the run (its outcome not read yet), would only be found stale by
        // whoever took it.
        jobs.retain(|job| {
            self.still_due(job)
                && self
                    .runs
                    .get(&job.run_id)
                    .is_some_and(|tracked| !self.context.cache.moved_past(job, tracked.version))
        });
        if jobs.is_empty() {
            return;
        }
        tracing::debug!(jobs = jobs.len(), first_run = %jobs[0].run_id, "scheduler: queueing jobs");
        // All at once: a networked queue answers each publish after a round trip.
        let queue = &self.context.queue;
        let results =
            futures::future::join_all(jobs.iter().map(|job| queue.enqueue(job.clone()))).await;
        for (job, result) in jobs.into_iter().zip(results) {
            match result {
                Ok(()) => Metrics::count(&self.context.metrics.jobs_published),
                // The reconciler below queues it again.
                Err(error) => tracing::error!(%error, run_id = %job.run_id, "cannot queue a call"),
            }
            self.watch_job(job, 0);
        }
    }

    /// Whether the run still holds this job's call with this token.
    fn still_due(&self, job: &Job) -> bool {
        self.runs
            .get(&job.run_id)
            .is_some_and(|t| t.state.holds_call(&job.target, job.token))
    }

    /// With a queue that may lose jobs, checks back after the job lease: a job whose
    /// run has not moved on by then is queued again (with a longer lease each time).
    fn watch_job(&mut self, job: Job, attempt: u32) {
        let Some(lease) = self.context.config.job_lease else {
            return;
        };
        let lease = lease.saturating_mul(1 << attempt.min(4));
        let at = Utc::now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        self.timers.add(at, Timer::Reconcile { job, attempt });
    }

    /// A run finished: announce it, and resume the parent that invoked it.
    fn finished(&mut self, run_id: Uuid, space: &Space, state: &RunState, position: u64) {
        if let (Some(created), Some(finished)) = (state.created_at, state.finished_at) {
            let seconds = (finished - created).num_microseconds().unwrap_or(0) as f64 / 1e6;
            self.context.metrics.run_seconds.observe(seconds);
        }
        let Some(function) = state.function.clone() else {
            return;
        };
        // A run flow control skipped never executed: nothing to announce.
        if state.status != RunStatus::Skipped {
            self.announce_end(run_id, space, state, &function, position);
        }
        if let Some(parent) = state.parent.clone()
            && let Some(result) = invoke_result(state)
        {
            self.command(
                position,
                space,
                parent.run_id,
                RunCommand::ResolveInvoke {
                    step_id: parent.step_id,
                    result,
                    at: Utc::now(),
                },
            );
        }
    }

    /// `function.finished` (and `function.failed`) events for a run's end.
    fn announce_end(
        &mut self,
        run_id: Uuid,
        space: &Space,
        state: &RunState,
        function: &FunctionRef,
        position: u64,
    ) {
        let event = state.events.first().cloned().unwrap_or(Value::Null);
        let (result_key, result) = match (&state.output, &state.error) {
            (Some(output), _) => ("result", output.clone()),
            (None, Some(error)) => {
                let mut error = crate::protocol::error_json(error);
                // Shaped as Inngest's servers shape it: the SDK's error code stays in the
                // run's output, and `error` says how the final call failed.
                if let Some(map) = error.as_object_mut() {
                    map.remove("code");
                    if let Some(status) = state.failed_status {
                        map.entry("error").or_insert_with(|| {
                            Value::String(format!("invalid status code: {status}"))
                        });
                    }
                }
                ("error", error)
            }
            (None, None) => (
                "error",
                json!({"name": "Cancelled", "message": "the run was cancelled"}),
            ),
        };
        let mut names = vec!["inngest/function.finished", "flowforge/function.finished"];
        if state.status == RunStatus::Failed {
            names.extend(["inngest/function.failed", "flowforge/function.failed"]);
        }
        // The run's end is in its own stream; an announcement only exists so that
        // something else can react, and most runs' ends interest nobody (they were
        // 2 of a run's 11 events and a fifth of the throughput).
        names.retain(|name| self.is_listened(space, name, &function.function_id));
        for name in names {
            let mut data = json!({
                "function_id": function.function_id,
                "run_id": run_id.to_string(),
                "event": event,
                "status": state.status.as_str(),
            });
            if let Some(map) = data.as_object_mut() {
                map.insert(result_key.to_owned(), result.clone());
            }
            let key = ids::run_outcome_event(run_id, name);
            let received = EventReceived {
                id: key.to_string(),
                name: name.to_owned(),
                data,
                ts: state
                    .finished_at
                    .unwrap_or_else(Utc::now)
                    .timestamp_millis(),
                user: None,
                v: None,
                source: EventSource::Internal,
                received_at: Utc::now(),
            };
            let context = self.context.clone();
            let meta = metadata(space).with_causation(key);
            self.effect(position, async move {
                ingest::append(&context, &key, meta, received)
                    .await
                    .map_err(|e| e.to_string())
            });
        }
    }

    /// Whether anything can react to an event of this name at this point of the log: a
    /// function triggered by it (other than `function_id`, which a run's own end never
    /// triggers), a cancel rule on it, or a step waiting for it.
    fn is_listened(&self, space: &Space, name: &str, function_id: &str) -> bool {
        self.context.registry.reacts_to(space, name, function_id)
            || self.waits.get(name).is_some_and(|waiters| {
                waiters
                    .iter()
                    .any(|(run_id, _)| self.runs.get(run_id).is_some_and(|t| &t.space == space))
            })
    }

    /// A terminal event of a run we were not tracking (re-read after a restart).
    async fn finished_untracked(&mut self, run_id: Uuid, event: &StoredEvent) {
        match self.context.commands.load::<Run>(&event.stream_id).await {
            Ok(loaded) if loaded.state.status.is_terminal() => {
                self.finished(
                    run_id,
                    &Space::new(event.tenant_id(), loaded.state.environment),
                    &loaded.state,
                    event.global_position,
                );
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%run_id, %error, "cannot load a finished run"),
        }
    }

    fn start_child(
        &mut self,
        parent: Uuid,
        space: &Space,
        invoke: &flowforge_domain::run::InvokeStarted,
        position: u64,
    ) {
        let Some(function) = self.context.registry.current(space, &invoke.function_id) else {
            self.command(
                position,
                space,
                parent,
                RunCommand::ResolveInvoke {
                    step_id: invoke.step_id.clone(),
                    result: Err(StepError::new(
                        "FunctionNotFound",
                        format!("no function `{}` is registered", invoke.function_id),
                    )),
                    at: Utc::now(),
                },
            );
            return;
        };
        let data = invoke
            .payload
            .get("data")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let key = ids::invocation_event(invoke.child_run_id);
        let event = json!({
            "id": key.to_string(),
            "name": "inngest/function.invoked",
            "data": data,
            "ts": Utc::now().timestamp_millis(),
            "user": {},
        });
        let link = ParentLink {
            run_id: parent,
            step_id: invoke.step_id.clone(),
        };
        self.create_run(
            position,
            space,
            invoke.child_run_id,
            &function,
            vec![event],
            None,
            Some(link),
            None,
        );
    }

    fn reconcile_child(
        &mut self,
        parent: Uuid,
        space: &Space,
        step_id: String,
        child: Uuid,
        position: u64,
    ) {
        let context = self.context.clone();
        let meta = metadata(space);
        self.effect(position, async move {
            let loaded = context
                .commands
                .load::<Run>(&flowforge_domain::run::stream_id(child))
                .await
                .map_err(|e| e.to_string())?;
            // Not created yet (the parent's InvokeStarted is re-read from the log and
            // creates it) or still running (its end resumes the parent).
            let Some(result) = invoke_result(&loaded.state) else {
                return Ok(());
            };
            run_command(
                &context,
                &meta,
                parent,
                RunCommand::ResolveInvoke {
                    step_id,
                    result,
                    at: Utc::now(),
                },
            )
            .await
        });
    }

    /// A new run of `function` in `space`, as the scheduler creates them.
    fn new_run(
        &mut self,
        space: &Space,
        run_id: Uuid,
        function: &FunctionVersion,
        events: Vec<Value>,
        links: (Option<Uuid>, Option<ParentLink>),
        hold: Option<Hold>,
    ) -> CreateRun {
        let mut create = self.base_run(space, run_id, function, events, links);
        create.hold = match hold {
            Some(hold) => Some(hold),
            None => self.throttle(space, run_id, function, &create.events),
        };
        create
    }

    /// A new run of `function`, with no flow-control decision.
    fn base_run(
        &self,
        space: &Space,
        run_id: Uuid,
        function: &FunctionVersion,
        events: Vec<Value>,
        (replay_of, parent): (Option<Uuid>, Option<ParentLink>),
    ) -> CreateRun {
        let app_id = self
            .context
            .registry
            .app_of(space, &function.spec.id)
            .unwrap_or_default();
        CreateRun {
            run_id,
            function: FunctionRef {
                app_id,
                function_id: function.spec.id.clone(),
                version: function.version,
            },
            events,
            max_attempts: function.spec.max_attempts.max(1),
            backoff: self.context.config.backoff,
            replay_of,
            parent,
            environment: space.environment,
            skip: None,
            hold: None,
            at: Utc::now(),
        }
    }

    /// When a throttled function's new run may start: each (function, key) starts
    /// runs at most `limit` per `period`, `burst` of them at once (GCRA). A run that
    /// must wait is created with its first call held until then; none is dropped.
    fn throttle(
        &mut self,
        space: &Space,
        run_id: Uuid,
        function: &FunctionVersion,
        events: &[Value],
    ) -> Option<Hold> {
        let reference = FunctionRef {
            app_id: String::new(),
            function_id: function.spec.id.clone(),
            version: function.version,
        };
        let throttle = self.limits(space, &reference)?.throttle.clone()?;
        // Read again after a restart: the run was decided then, and counted since.
        if self.runs.contains_key(&run_id) {
            return None;
        }
        let event = events.first().cloned().unwrap_or(Value::Null);
        let key = key_text(&self.context.expressions, throttle.key.as_deref(), &event);
        let now = Utc::now();
        let (start, next) = throttle_start(
            &throttle,
            self.throttles
                .get(&(space.clone(), function.spec.id.clone(), key.clone()))
                .copied(),
            now,
        );
        self.throttles
            .insert((space.clone(), function.spec.id.clone(), key.clone()), next);
        if start <= now + chrono::Duration::milliseconds(1) {
            return None;
        }
        Metrics::count(&self.context.metrics.calls_held);
        let on_key = if key.is_empty() {
            String::new()
        } else {
            format!(" for key `{key}`")
        };
        Some(Hold {
            reason: HoldReason::Throttle,
            detail: format!(
                "throttle of {} run start(s) per {}s (burst {}){on_key}",
                throttle.limit,
                throttle.period.num_milliseconds() as f64 / 1000.0,
                throttle.burst
            ),
            key,
            until: Some(start),
        })
    }

    /// Debounce and batches: gives the event to the run of its key still collecting,
    /// or says how to hold the run it opens.
    fn collect(
        &mut self,
        position: u64,
        space: &Space,
        run_id: Uuid,
        function: &FunctionVersion,
        event: &Value,
    ) -> Collected {
        let reference = FunctionRef {
            app_id: String::new(),
            function_id: function.spec.id.clone(),
            version: function.version,
        };
        let Some(limits) = self.limits(space, &reference) else {
            return Collected::No;
        };
        let now = Utc::now();
        let (reason, key_expression) = match (&limits.debounce, &limits.batch) {
            (Some(d), _) => (HoldReason::Debounce, d.key.as_deref()),
            (None, Some(b)) if b.max_size > 1 => (HoldReason::Batch, b.key.as_deref()),
            _ => return Collected::No,
        };
        let key = key_text(&self.context.expressions, key_expression, event);
        let slot = (space.clone(), function.spec.id.clone(), key.clone());
        if let Some(open) = self.collecting.get_mut(&slot) {
            if open.run_id == run_id {
                // Read again after a restart: the event that opened the run.
                return Collected::Joined;
            }
            let until = match (&limits.debounce, &limits.batch) {
                (Some(d), _) => {
                    let quiet = now + d.period;
                    let until = open.deadline.map_or(quiet, |deadline| quiet.min(deadline));
                    open.until = open.until.max(until);
                    until
                }
                (None, Some(b)) => {
                    open.count += 1;
                    if open.count >= b.max_size {
                        open.until = now;
                    }
                    open.until
                }
                (None, None) => return Collected::No,
            };
            let (into, pending) = (open.run_id, open.pending.clone());
            let full = reason == HoldReason::Batch && until <= now;
            pending.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let context = self.context.clone();
            let meta = metadata(space);
            let command = RunCommand::Collect {
                reason,
                event: event.clone(),
                position,
                until,
                at: now,
            };
            let fallback =
                self.base_run(space, run_id, function, vec![event.clone()], (None, None));
            self.effect(position, async move {
                let result = collect_into(&context, &meta, into, command, fallback).await;
                pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                result
            });
            if full {
                // Full: no more events for it; it starts once its records are in.
                if let Some(open) = self.collecting.remove(&slot) {
                    self.collecting_key.remove(&open.run_id);
                    self.start_collected(open);
                }
            }
            return Collected::Joined;
        }
        let (until, deadline, detail) = match (reason, &limits.debounce, &limits.batch) {
            (HoldReason::Debounce, Some(d), _) => (
                now + d.period,
                d.timeout.map(|t| now + t),
                format!(
                    "debounced: starts after {}s without another event{} (at most {})",
                    d.period.num_milliseconds() as f64 / 1000.0,
                    for_key(&key),
                    d.timeout
                        .map_or("no limit".to_owned(), |t| format!("{}s", t.num_seconds()))
                ),
            ),
            (_, _, Some(b)) => (
                now + b.timeout,
                None,
                format!(
                    "batching up to {} events{} for at most {}s",
                    b.max_size,
                    for_key(&key),
                    b.timeout.num_milliseconds() as f64 / 1000.0
                ),
            ),
            _ => return Collected::No,
        };
        self.collecting_key.insert(run_id, slot.clone());
        self.collecting.insert(
            slot,
            Collecting {
                run_id,
                until,
                deadline,
                count: 1,
                pending: Arc::default(),
            },
        );
        Collected::Opens(Hold {
            reason,
            key,
            detail,
            until: Some(until),
        })
    }

    /// A collecting run (batch full) starts as soon as the events given to it are
    /// recorded.
    fn start_collected(&mut self, open: Collecting) {
        self.closing.insert(open.run_id, open.pending.clone());
        let Some(tracked) = self.runs.get(&open.run_id) else {
            // Not read back yet: its first call's timer starts it.
            return;
        };
        if let Some(due) = tracked.state.due.get(&CallTarget::Discovery) {
            let job = Job {
                tenant: tracked.space.tenant.clone(),
                run_id: open.run_id,
                target: CallTarget::Discovery,
                token: due.token,
            };
            self.timers.add(Utc::now(), Timer::Enqueue(job));
        }
    }

    /// Whether a held first call may go now: not while its run still collects events
    /// (their start moved, or their records are not in yet).
    fn collecting_until(&mut self, run_id: Uuid) -> Option<DateTime<Utc>> {
        let now = Utc::now();
        if let Some(pending) = self.closing.get(&run_id) {
            if pending.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                return Some(now + chrono::Duration::milliseconds(20));
            }
            self.closing.remove(&run_id);
            return None;
        }
        let slot = self.collecting_key.get(&run_id)?.clone();
        let open = self.collecting.get(&slot)?;
        let (until, pending) = (
            open.until,
            open.pending.load(std::sync::atomic::Ordering::SeqCst),
        );
        if until > now {
            return Some(until);
        }
        if pending > 0 {
            return Some(now + chrono::Duration::milliseconds(20));
        }
        // It starts: later events open a new run.
        self.collecting.remove(&slot);
        self.collecting_key.remove(&run_id);
        None
    }

    /// Runs recorded as collecting when this scheduler took over go on collecting.
    fn recover_collecting(&mut self, run_id: Uuid, space: &Space, state: &RunState) {
        let Some(held) = state
            .held
            .get(&CallTarget::Discovery)
            .filter(|h| matches!(h.reason, HoldReason::Debounce | HoldReason::Batch))
        else {
            return;
        };
        let (Some(function), Some(until)) = (state.function.clone(), held.until) else {
            return;
        };
        let limits = self.limits(space, &function);
        let deadline = limits
            .as_ref()
            .and_then(|l| l.debounce.as_ref())
            .and_then(|d| d.timeout)
            .zip(state.created_at)
            .map(|(timeout, created)| created + timeout);
        let slot = (space.clone(), function.function_id, held.key.clone());
        self.collecting_key.insert(run_id, slot.clone());
        self.collecting.insert(
            slot,
            Collecting {
                run_id,
                until,
                deadline,
                count: u32::try_from(state.events.len()).unwrap_or(u32::MAX),
                pending: Arc::default(),
            },
        );
    }

    /// A run recorded as throttled when this scheduler took over: later runs of its
    /// key start after it.
    fn recover_throttle(&mut self, space: &Space, state: &RunState) {
        let Some(until) = state
            .held
            .values()
            .find(|h| h.reason == HoldReason::Throttle)
            .and_then(|h| h.until.map(|u| (u, h.key.clone())))
        else {
            return;
        };
        let Some(function) = state.function.clone() else {
            return;
        };
        let Some(throttle) = self
            .limits(space, &function)
            .and_then(|l| l.throttle.clone())
        else {
            return;
        };
        let (at, key) = until;
        let next = at + emission_interval(&throttle);
        let entry = self
            .throttles
            .entry((space.clone(), function.function_id, key))
            .or_insert(next);
        *entry = (*entry).max(next);
    }

    #[allow(clippy::too_many_arguments)]
    fn create_run(
        &mut self,
        position: u64,
        space: &Space,
        run_id: Uuid,
        function: &FunctionVersion,
        events: Vec<Value>,
        replay_of: Option<Uuid>,
        parent: Option<ParentLink>,
        hold: Option<Hold>,
    ) {
        let create = self.new_run(space, run_id, function, events, (replay_of, parent), hold);
        self.command(position, space, run_id, RunCommand::Create(create));
    }

    /// Creates a run whose function limits how many runs start (rate limit,
    /// idempotency): each limit's admission is decided first, and a run refused by one
    /// is created skipped, with the reason.
    #[allow(clippy::too_many_arguments)]
    fn create_admitted_run(
        &mut self,
        position: u64,
        space: &Space,
        run_id: Uuid,
        function: &FunctionVersion,
        event: Value,
        gates: Vec<crate::admission::Gate>,
        hold: Option<Hold>,
    ) {
        let mut create = self.new_run(space, run_id, function, vec![event], (None, None), hold);
        let context = self.context.clone();
        let meta = metadata(space);
        let space = space.clone();
        let function_id = function.spec.id.clone();
        self.effect(position, async move {
            let stream = flowforge_domain::run::stream_id(run_id);
            // Decided before (this event is read again after a restart): keep it.
            let recorded = context
                .store
                .read_stream(&stream, 1)
                .await
                .map_err(|e| e.to_string())?;
            if !recorded.is_empty() {
                return Ok(());
            }
            for gate in &gates {
                if let Some(refused) =
                    crate::admission::admit(&context, &meta, &space, &function_id, run_id, gate)
                        .await?
                {
                    create.skip = Some(refused);
                    break;
                }
            }
            let command = RunCommand::Create(create);
            run_command(&context, &meta, run_id, command).await
        });
    }

    /// Runs a command on a run as an effect of the event at `position`. Refusals that
    /// mean "already done" or "no longer relevant" are expected and ignored.
    fn command(&mut self, position: u64, space: &Space, run_id: Uuid, command: RunCommand) {
        let context = self.context.clone();
        let meta = metadata(space);
        self.effect(position, async move {
            run_command(&context, &meta, run_id, command).await
        });
    }

    /// Starts an effect; the checkpoint will not pass `position` until it completes.
    /// Failures that may pass (the database is briefly unavailable) are retried.
    fn effect<F>(&mut self, position: u64, effect: F)
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        *self.in_flight.entry(position).or_insert(0) += 1;
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            if let Err(error) = effect.await {
                tracing::error!(%error, position, "scheduler effect failed");
            }
            let _ = done.send(position);
        });
    }

    fn effect_done(&mut self, position: u64) {
        if let Some(count) = self.in_flight.get_mut(&position) {
            *count -= 1;
            if *count == 0 {
                self.in_flight.remove(&position);
            }
        }
    }

    // ------------------------------------------------------------------ incoming events

    fn on_incoming(&mut self, stored: &StoredEvent) {
        let Ok(IncomingEvent::Received(received)) = stored.decode::<IncomingEvent>() else {
            tracing::error!(
                position = stored.global_position,
                "unreadable incoming event"
            );
            return;
        };
        // Everything below stays in the event's space: a test event starts, resumes
        // and cancels only test runs, a live event only live ones.
        let space = Space::of(stored);
        let position = stored.global_position;
        let event_json = received.to_sdk_json();

        // 1. New runs.
        let candidates = self.context.functions_for(&space, &received, &event_json);
        let mut seen = HashSet::new();
        for function in candidates {
            if !seen.insert(function.spec.id.clone()) {
                continue;
            }
            let run_id = ids::run_for_event(&stored.stream_id, &function.spec.id);
            let gates = crate::admission::gates(
                &self.context.expressions,
                &function,
                &event_json,
                received.received_at,
            );
            // Debounce and batches: the event joins the run of its key that is still
            // collecting, or opens one.
            let hold = match self.collect(position, &space, run_id, &function, &event_json) {
                Collected::Joined => continue,
                Collected::Opens(hold) => Some(hold),
                Collected::No => None,
            };
            if gates.is_empty() {
                self.create_run(
                    position,
                    &space,
                    run_id,
                    &function,
                    vec![event_json.clone()],
                    None,
                    None,
                    hold,
                );
            } else {
                self.create_admitted_run(
                    position,
                    &space,
                    run_id,
                    &function,
                    event_json.clone(),
                    gates,
                    hold,
                );
            }
        }

        // 2. Waits for this event.
        if let Some(waiters) = self.waits.get(&received.name).cloned() {
            for (run_id, step_id) in waiters {
                let Some(tracked) = self.runs.get(&run_id) else {
                    continue;
                };
                if tracked.space != space {
                    continue;
                }
                if tracked
                    .wait_positions
                    .get(&step_id)
                    .is_some_and(|p| position <= *p)
                {
                    continue; // sent before the wait started
                }
                let Some(Waiting::Event { expression, .. }) = tracked.state.waiting.get(&step_id)
                else {
                    continue;
                };
                let trigger = tracked.state.events.first().cloned().unwrap_or(Value::Null);
                let matched = match expression {
                    None => true,
                    Some(expression) => self
                        .context
                        .expressions
                        .matches(expression, &trigger, Some(&event_json))
                        .unwrap_or_else(|error| {
                            tracing::warn!(%run_id, %error, "wait expression failed");
                            false
                        }),
                };
                if matched {
                    if let Some(waiters) = self.waits.get_mut(&received.name) {
                        waiters.remove(&(run_id, step_id.clone()));
                    }
                    self.command(
                        position,
                        &space,
                        run_id,
                        RunCommand::ResolveWait {
                            step_id,
                            event: Some(event_json.clone()),
                            at: Utc::now(),
                        },
                    );
                }
            }
        }

        // 3. Cancel rules.
        for function in self.context.registry.cancelled_by(&space, &received.name) {
            let runs: Vec<Uuid> = self
                .by_function
                .get(&(space.clone(), function.spec.id.clone()))
                .map(|r| r.iter().copied().collect())
                .unwrap_or_default();
            for run_id in runs {
                let Some(tracked) = self.runs.get(&run_id) else {
                    continue;
                };
                if tracked.created_position >= position {
                    continue;
                }
                let trigger = tracked.state.events.first().cloned().unwrap_or(Value::Null);
                let cancel = function.spec.cancel.iter().any(|rule| {
                    if !flowforge_domain::trigger::name_matches(&rule.event, &received.name) {
                        return false;
                    }
                    if let (Some(timeout), Some(created)) =
                        (&rule.timeout, tracked.state.created_at)
                        && let Ok(timeout) = flowforge_domain::duration::parse(timeout)
                        && received.received_at > created + timeout
                    {
                        return false;
                    }
                    match &rule.expression {
                        None => true,
                        Some(expression) => self
                            .context
                            .expressions
                            .matches(expression, &trigger, Some(&event_json))
                            .unwrap_or(false),
                    }
                });
                if cancel {
                    self.command(
                        position,
                        &space,
                        run_id,
                        RunCommand::Cancel {
                            reason: format!(
                                "cancelled by event {} ({})",
                                received.name, received.id
                            ),
                            at: Utc::now(),
                        },
                    );
                }
            }
        }
    }

    // ------------------------------------------------------------------ timers

    async fn on_timer(&mut self, timer: Timer) {
        let position = self.processed;
        match timer {
            Timer::Enqueue(job) => {
                if self.still_due(&job) {
                    if let Some(later) = self.collecting_until(job.run_id) {
                        self.timers.add(later, Timer::Enqueue(job));
                        return;
                    }
                    self.dispatch(job, position);
                }
            }
            Timer::Reconcile { job, attempt } => {
                if self.still_due(&job) {
                    tracing::warn!(run_id = %job.run_id, target = ?job.target, attempt, "a job made no progress within its lease; queueing it again");
                    match self.context.queue.requeue(job.clone(), attempt + 1).await {
                        Ok(()) => Metrics::count(&self.context.metrics.jobs_republished),
                        Err(error) => {
                            tracing::error!(%error, run_id = %job.run_id, "cannot queue a call again")
                        }
                    }
                    self.watch_job(job, attempt + 1);
                }
            }
            Timer::SleepDone { run_id, step_id } => {
                if let Some(space) = self.waiting_space(run_id, &step_id) {
                    self.command(
                        position,
                        &space,
                        run_id,
                        RunCommand::CompleteSleep {
                            step_id,
                            at: Utc::now(),
                        },
                    );
                }
            }
            Timer::WaitExpired { run_id, step_id } => {
                if let Some((space, approval_id)) = self.waiting_approval(run_id, &step_id) {
                    let context = self.context.clone();
                    self.effect(position, async move {
                        let meta = metadata(&space);
                        approvals::expire(&context, &meta, run_id, step_id, approval_id).await
                    });
                } else if let Some(space) = self.waiting_space(run_id, &step_id) {
                    self.command(
                        position,
                        &space,
                        run_id,
                        RunCommand::ResolveWait {
                            step_id,
                            event: None,
                            at: Utc::now(),
                        },
                    );
                }
            }
            Timer::InvokeExpired { run_id, step_id } => {
                if let Some(space) = self.waiting_space(run_id, &step_id) {
                    self.command(
                        position,
                        &space,
                        run_id,
                        RunCommand::ResolveInvoke {
                            step_id,
                            result: Err(StepError::new(
                                "InngestInvokeTimeoutError",
                                "Timed out waiting for invoked function to complete",
                            )),
                            at: Utc::now(),
                        },
                    );
                }
            }
            Timer::Cron {
                space,
                function_id,
                version,
                schedule,
                at,
            } => {
                let key = (
                    space.clone(),
                    function_id.clone(),
                    version,
                    schedule.clone(),
                );
                self.crons.remove(&key);
                let current = self.context.registry.current(&space, &function_id);
                if current.is_some_and(|f| f.version == version) {
                    // Live ids are as they always were; test ones must differ from them.
                    let scope = match space.environment {
                        Environment::Live => space.tenant.clone(),
                        Environment::Test => space.to_string(),
                    };
                    let id = ids::cron_event(&scope, &function_id, at.timestamp_millis());
                    let received = EventReceived {
                        id: id.to_string(),
                        name: "inngest/scheduled.timer".into(),
                        data: json!({"cron": schedule}),
                        ts: at.timestamp_millis(),
                        user: None,
                        v: None,
                        source: EventSource::Cron { function_id },
                        received_at: Utc::now(),
                    };
                    let context = self.context.clone();
                    let meta = metadata(&space);
                    self.effect(position, async move {
                        ingest::append(&context, &id, meta, received)
                            .await
                            .map_err(|e| e.to_string())
                    });
                }
                self.schedule_crons();
            }
        }
    }

    /// The approval a waiting step waits for, if it is an approval wait.
    fn waiting_approval(&self, run_id: Uuid, step_id: &str) -> Option<(Space, Uuid)> {
        let tracked = self.runs.get(&run_id)?;
        match tracked.state.waiting.get(step_id)? {
            Waiting::Event {
                approval: Some(wait),
                ..
            } => Some((tracked.space.clone(), wait.approval_id)),
            _ => None,
        }
    }

    fn waiting_space(&self, run_id: Uuid, step_id: &str) -> Option<Space> {
        let tracked = self.runs.get(&run_id)?;
        tracked
            .state
            .waiting
            .contains_key(step_id)
            .then(|| tracked.space.clone())
    }

    fn schedule_crons(&mut self) {
        let now = Utc::now();
        for (space, function, schedules) in self.context.registry.cron_functions() {
            for schedule in schedules {
                let key = (
                    space.clone(),
                    function.spec.id.clone(),
                    function.version,
                    schedule.clone(),
                );
                if self.crons.contains(&key) {
                    continue;
                }
                match crate::cron::Schedule::parse(&schedule) {
                    Ok(parsed) => {
                        if let Some(at) = parsed.next_after(now) {
                            self.crons.insert(key);
                            self.timers.add(
                                at,
                                Timer::Cron {
                                    space: space.clone(),
                                    function_id: function.spec.id.clone(),
                                    version: function.version,
                                    schedule,
                                    at,
                                },
                            );
                        }
                    }
                    Err(error) => {
                        tracing::warn!(function = %function.spec.id, %error, "invalid cron schedule")
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------ checkpoint

    fn checkpoint(&self) -> u64 {
        match self.in_flight.keys().next() {
            Some(lowest) => lowest.saturating_sub(1).max(self.saved_checkpoint),
            None => self.processed,
        }
    }

    async fn save_checkpoint(&mut self) {
        // Throttles whose next start is past have nothing to remember.
        let now = Utc::now();
        self.throttles.retain(|_, tat| *tat > now);
        let position = self.checkpoint();
        if position <= self.saved_checkpoint {
            return;
        }
        let result = sqlx::query(
            "INSERT INTO reactor_checkpoints (name, position, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
        )
        .bind(NAME)
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .bind(Utc::now().timestamp_millis())
        .execute(self.context.read_db.pool())
        .await;
        match result {
            Ok(_) => self.saved_checkpoint = position,
            Err(error) => tracing::warn!(%error, "cannot save the scheduler checkpoint"),
        }
    }
}

/// What an invoked run's end gives the step that invoked it; `None` while it runs.
fn for_key(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" of key `{key}`")
    }
}

/// Decides `command` on the run and keeps the state it reached in the run cache.
async fn handle_run(
    context: &EngineContext,
    meta: &EventMetadata,
    run_id: Uuid,
    command: &RunCommand,
) -> Result<(), CommandError<RunError>> {
    let stream = flowforge_domain::run::stream_id(run_id);
    let handled = match command {
        // A run's id is minted for it: its stream is almost never there yet.
        RunCommand::Create(_) => {
            context
                .commands
                .handle_new::<Run>(&stream, meta, || command.clone())
                .await?
        }
        _ => {
            context
                .commands
                .handle::<Run>(&stream, meta, || command.clone())
                .await?
        }
    };
    context
        .cache
        .put(run_id, handled.state, handled.stream_version);
    Ok(())
}

/// Gives an event to a run still collecting them; if it has started after all (the
/// event came as it did), the event gets a run of its own, so it is never lost.
async fn collect_into(
    context: &EngineContext,
    meta: &EventMetadata,
    run_id: Uuid,
    command: RunCommand,
    fallback: CreateRun,
) -> Result<(), String> {
    let mut backoff = Duration::from_millis(10);
    for _ in 0..50 {
        match handle_run(context, meta, run_id, &command).await {
            Ok(()) => return Ok(()),
            // The run that the event joins is being created by an effect of an
            // earlier event.
            Err(CommandError::Domain(RunError::NotFound)) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(CommandError::Domain(RunError::NotCollecting | RunError::Finished(_))) => break,
            Err(CommandError::Contention { .. }) => tokio::time::sleep(backoff).await,
            Err(CommandError::Store(e)) if e.is_transient() => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(other) => return Err(format!("run {run_id}: {other}")),
        }
    }
    tracing::warn!(%run_id, "a run no longer collects events; the event starts its own run");
    let own = fallback.run_id;
    run_command(context, meta, own, RunCommand::Create(fallback)).await
}

/// The time between two run starts of a throttle.
fn emission_interval(throttle: &Throttle) -> chrono::Duration {
    throttle.period / i32::try_from(throttle.limit.max(1)).unwrap_or(i32::MAX)
}

/// GCRA: given the theoretical arrival time of the next run (`tat`), when a run
/// arriving `now` may start, and the next `tat`.
fn throttle_start(
    throttle: &Throttle,
    tat: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let interval = emission_interval(throttle);
    let tolerance = interval * i32::try_from(throttle.burst.saturating_sub(1)).unwrap_or(i32::MAX);
    let tat = tat.map_or(now, |t| t.max(now));
    let start = (tat - tolerance).max(now);
    (start, tat + interval)
}

fn invoke_result(state: &RunState) -> Option<Result<Value, StepError>> {
    match state.status {
        RunStatus::New | RunStatus::Queued | RunStatus::Running => None,
        RunStatus::Completed => Some(Ok(state.output.clone().unwrap_or(Value::Null))),
        RunStatus::Failed => Some(Err(state
            .error
            .clone()
            .unwrap_or_else(|| StepError::new("Error", "the invoked function failed")))),
        RunStatus::Cancelled => Some(Err(StepError::new(
            "InngestInvokeCancelledError",
            "the invoked function was cancelled",
        ))),
        RunStatus::Skipped => {
            let reason = state.skipped.map_or("skipped", |r| r.as_str());
            Some(Err(StepError::new(
                "FunctionSkipped",
                format!("the invoked function was skipped by its flow control ({reason})"),
            )))
        }
    }
}

fn decoded_is_terminal(event: &RunEvent) -> bool {
    matches!(
        event,
        RunEvent::Completed(_) | RunEvent::Failed(_) | RunEvent::Cancelled(_)
    )
}

async fn load_checkpoint(context: &EngineContext) -> Result<u64, EngineError> {
    let position: Option<i64> =
        sqlx::query_scalar("SELECT position FROM reactor_checkpoints WHERE name = $1")
            .bind(NAME)
            .fetch_optional(context.read_db.pool())
            .await
            .map_err(ProjectionError::from)?;
    Ok(position.map_or(0, |p| u64::try_from(p).unwrap_or(0)))
}

/// Runs a command on a run, retrying while the database is unavailable. Refusals that
/// mean the effect already happened (or no longer applies) count as success.
pub(crate) async fn run_command(
    context: &EngineContext,
    meta: &EventMetadata,
    run_id: Uuid,
    command: RunCommand,
) -> Result<(), String> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match handle_run(context, meta, run_id, &command).await {
            Ok(()) => return Ok(()),
            Err(CommandError::Domain(
                RunError::AlreadyExists
                | RunError::Finished(_)
                | RunError::NotWaiting { .. }
                | RunError::StaleCall { .. }
                | RunError::TooEarly { .. },
            )) => return Ok(()),
            Err(CommandError::Store(e)) if e.is_transient() => {
                tracing::warn!(%run_id, error = %e, "event log unavailable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(CommandError::Contention { .. }) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(other) => return Err(format!("run {run_id}: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(limit: u32, period_ms: i64, burst: u32) -> Throttle {
        Throttle {
            limit,
            period: chrono::Duration::milliseconds(period_ms),
            burst,
            key: None,
        }
    }

    fn starts(throttle: &Throttle, arrivals_ms: &[i64]) -> Vec<i64> {
        let zero = DateTime::<Utc>::UNIX_EPOCH;
        let mut tat = None;
        arrivals_ms
            .iter()
            .map(|&at| {
                let (start, next) =
                    throttle_start(throttle, tat, zero + chrono::Duration::milliseconds(at));
                tat = Some(next);
                (start - zero).num_milliseconds()
            })
            .collect()
    }

    #[test]
    fn a_throttle_spaces_a_burst_of_arrivals_evenly() {
        assert_eq!(
            starts(&throttle(10, 1000, 1), &[0, 0, 0, 0]),
            vec![0, 100, 200, 300]
        );
    }

    #[test]
    fn a_burst_starts_at_once_and_the_rest_keep_the_rate() {
        assert_eq!(
            starts(&throttle(10, 1000, 3), &[0, 0, 0, 0, 0]),
            vec![0, 0, 0, 100, 200]
        );
    }

    #[test]
    fn a_quiet_period_lets_the_next_run_start_at_once() {
        assert_eq!(
            starts(&throttle(2, 1000, 1), &[0, 0, 5000, 5000]),
            vec![0, 500, 5000, 5500]
        );
    }

    #[test]
    fn any_window_of_one_period_holds_at_most_limit_plus_burst_less_one() {
        let t = throttle(10, 1000, 2);
        let arrivals: Vec<i64> = (0..200).map(|i| i * 7).collect();
        let starts = starts(&t, &arrivals);
        for (i, s) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().filter(|x| **x < s + 1000).count();
            assert!(in_window <= 11, "{in_window} starts within 1s of {s}");
        }
    }
}
