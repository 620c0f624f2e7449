//! The Run aggregate: one function run, its SDK calls, steps, waits and outcome.
//!
//! A run advances by *calls* to the user's app (the SDK protocol). A call is due for a
//! *target*: `Discovery` (run the function from the top with the memoized steps, see what
//! comes next) or `Step(id)` (execute one planned step). Every due call carries a
//! `token`; a job that names a token the state no longer holds is stale and is refused
//! with [`RunError::StaleCall`], which is how redelivered work becomes a no-op.
//!
//! Stream: `run-<uuid>`, stream type `run`.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::approval::ApprovalAsk;
use crate::decider::{Decider, DomainEvent};
use crate::environment::Environment;

pub const STREAM_TYPE: &str = "run";

pub fn stream_id(run_id: Uuid) -> String {
    format!("run-{run_id}")
}

/// The function version a run executes. Pinned at creation: a later app sync does not
/// change what an in-flight run calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRef {
    pub app_id: String,
    /// The function's id as the app registered it (the protocol's `fnId`).
    pub function_id: String,
    pub version: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackoffPolicy {
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial_ms: 1_000,
            max_ms: 10 * 60 * 1_000,
        }
    }
}

impl BackoffPolicy {
    /// Exponential backoff with deterministic "full jitter" in [d/2, d].
    ///
    /// The jitter is a hash of (run, target, attempt) rather than a random draw so that
    /// `decide` stays pure and a replayed decision produces the same time.
    pub fn delay(&self, attempt: u32, jitter_seed: u64) -> Duration {
        let exp = self
            .initial_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
        let capped = exp.min(self.max_ms).max(1);
        let half = capped / 2;
        let jitter = if half == 0 {
            0
        } else {
            jitter_seed % (half + 1)
        };
        Duration::milliseconds(i64::try_from(half + jitter).unwrap_or(i64::MAX))
    }
}

/// An error as the SDK protocol reports it: `name` and `message`, and every other key
/// the SDK sent (`stack`, `code`, …) exactly as it sent it, so that the error can be
/// handed back verbatim (a `"stack": null` stays a `null`, an absent one absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    pub name: String,
    pub message: String,
    #[serde(flatten)]
    pub details: BTreeMap<String, Value>,
}

impl StepError {
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            message: message.into(),
            details: BTreeMap::new(),
        }
    }

    pub fn with_detail(mut self, key: impl Into<String>, value: Value) -> Self {
        self.details.insert(key.into(), value);
        self
    }

    pub fn stack(&self) -> Option<&str> {
        self.details.get("stack").and_then(Value::as_str)
    }

    pub fn code(&self) -> Option<&str> {
        self.details.get("code").and_then(Value::as_str)
    }
}

/// A memoized step result, in the shape the SDK protocol hands back to the app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutput {
    Data(Value),
    Error(StepError),
    /// A step with no value: a finished sleep, a wait that timed out.
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Run,
    Sleep,
    WaitForEvent,
    Invoke,
    /// A request to an LLM provider that the server made for the app (`step.ai.infer`).
    Ai,
}

/// What a call is made for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallTarget {
    /// Run the function from the top; the SDK reports what it finds next.
    Discovery,
    /// Execute one planned step (parallel steps, or after immediate execution was disabled).
    Step(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    pub run_id: Uuid,
    pub step_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub step_id: String,
    pub name: String,
}

// ---------------------------------------------------------------- events

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunCreated {
    pub run_id: Uuid,
    pub function: FunctionRef,
    /// The triggering events exactly as the SDK will receive them (`event` is the first).
    pub events: Vec<Value>,
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: BackoffPolicy,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
    /// The tenant environment the run lives in; its function is looked up there and
    /// only that environment's events resume or cancel it.
    #[serde(default, skip_serializing_if = "Environment::is_live")]
    pub environment: Environment,
    /// When the run may start, if flow control (throttle) put its start off; the
    /// `run.call_held` beside it says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallFinished {
    pub target: CallTarget,
    pub token: u64,
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The app's SDK changed its execution version (`x-inngest-req-version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_version: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepCompleted {
    pub step_id: String,
    pub name: String,
    pub kind: StepKind,
    pub output: StepOutput,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepFailed {
    pub step_id: String,
    pub name: String,
    /// 1-based number of the attempt that failed.
    pub attempt: u32,
    pub error: StepError,
    /// The call that retries the step.
    pub retry_target: CallTarget,
    pub retry_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SleepStarted {
    pub step_id: String,
    pub name: String,
    pub until: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitStarted {
    pub step_id: String,
    pub name: String,
    /// The event name waited for.
    pub event: String,
    /// A CEL expression over `event` (the trigger) and `async` (the candidate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    pub until: DateTime<Utc>,
    /// Set when the wait is for a human decision (`step.wait_for_approval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalWait>,
}

/// The approval a wait step asked for; the wait resumes on its decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalWait {
    pub approval_id: Uuid,
    #[serde(flatten)]
    pub ask: ApprovalAsk,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvokeStarted {
    pub step_id: String,
    pub name: String,
    pub function_id: String,
    pub child_run_id: Uuid,
    pub payload: Value,
    pub until: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallFailed {
    pub target: CallTarget,
    /// 1-based number of the attempt that failed.
    pub attempt: u32,
    pub error: StepError,
    pub retry_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunCompleted {
    pub output: Value,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFailed {
    pub error: StepError,
    pub at: DateTime<Utc>,
    /// The HTTP status of the app's final answer, when the run failed on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The function that failed, so a reader of this one event (the notifications
    /// inbox) knows whose it was. Absent in events recorded before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunCancelled {
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// Why flow control decided a run does not execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The function's rate limit for the key was reached.
    RateLimited,
    /// A run with the same idempotency key ran within the last 24 hours.
    Idempotent,
    /// Another run of the function with the same singleton key is active.
    Singleton,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::RateLimited => "rate_limited",
            SkipReason::Idempotent => "idempotent",
            SkipReason::Singleton => "singleton",
        }
    }
}

/// The run was created and, by a flow-control decision, never executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSkipped {
    pub reason: SkipReason,
    /// The decision in words (the limit, the period, the key).
    pub detail: String,
    pub at: DateTime<Utc>,
}

/// Which flow-control limit holds a due call back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    /// Every slot of a concurrency limit is taken; the call waits for one.
    Concurrency,
    /// The function's throttle lets the run start later (`until`).
    Throttle,
    /// The run waits for a quiet period of its key; each new event replaces its event
    /// and puts the start off (up to the debounce timeout).
    Debounce,
    /// The run collects events of its key until it has the batch size or the batch
    /// timeout passes.
    Batch,
}

impl HoldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::Concurrency => "concurrency",
            HoldReason::Throttle => "throttle",
            HoldReason::Debounce => "debounce",
            HoldReason::Batch => "batch",
        }
    }
}

/// A flow-control decision to hold a call back, as a command carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub reason: HoldReason,
    /// The limit's key as evaluated for this run (empty: the whole function).
    pub key: String,
    /// The decision in words (the limit, the key, the period).
    pub detail: String,
    /// When the call may go (throttle); `None`: when a slot frees (concurrency).
    pub until: Option<DateTime<Utc>>,
}

/// A due call is held back by flow control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallHeld {
    pub target: CallTarget,
    pub token: u64,
    pub reason: HoldReason,
    pub key: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

/// One more event for a run that has not started (debounce: it replaces the run's
/// event; batch: it joins them). `position` is the event's place in the log, so the
/// outcome does not depend on the order the engine records them in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventCollected {
    pub event: Value,
    pub position: u64,
    /// When the run starts now (debounce: after the new quiet period; batch: now, if
    /// the batch is full).
    pub until: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// A held call got its concurrency slot and goes to the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallReleased {
    pub target: CallTarget,
    pub token: u64,
    pub at: DateTime<Utc>,
}

/// A call flow control holds back, in the run's state.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldCall {
    pub token: u64,
    pub reason: HoldReason,
    pub key: String,
    pub detail: String,
    pub until: Option<DateTime<Utc>>,
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum RunEvent {
    #[serde(rename = "run.created")]
    Created(RunCreated),
    #[serde(rename = "run.call_finished")]
    CallFinished(CallFinished),
    #[serde(rename = "run.step_completed")]
    StepCompleted(StepCompleted),
    #[serde(rename = "run.step_failed")]
    StepFailed(StepFailed),
    #[serde(rename = "run.steps_planned")]
    StepsPlanned {
        steps: Vec<PlannedStep>,
        /// Every step reported in the same answer (planned steps, and sleeps, waits and
        /// invokes started beside them): the run resumes once all of them are done.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        group: Vec<String>,
        /// The app asked to resume after the first of them instead (`parallelMode: race`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        race: bool,
    },
    #[serde(rename = "run.sleep_started")]
    SleepStarted(SleepStarted),
    #[serde(rename = "run.wait_started")]
    WaitStarted(WaitStarted),
    #[serde(rename = "run.invoke_started")]
    InvokeStarted(InvokeStarted),
    #[serde(rename = "run.call_failed")]
    CallFailed(CallFailed),
    #[serde(rename = "run.completed")]
    Completed(RunCompleted),
    #[serde(rename = "run.failed")]
    Failed(RunFailed),
    #[serde(rename = "run.cancelled")]
    Cancelled(RunCancelled),
    #[serde(rename = "run.skipped")]
    Skipped(RunSkipped),
    #[serde(rename = "run.call_held")]
    CallHeld(CallHeld),
    #[serde(rename = "run.call_released")]
    CallReleased(CallReleased),
    #[serde(rename = "run.debounced")]
    Debounced(EventCollected),
    #[serde(rename = "run.batched")]
    Batched(EventCollected),
    /// The skill versions an AI step's request was given (recorded with the step's
    /// result, so a run says which knowledge its model saw).
    #[serde(rename = "run.skills_used")]
    SkillsUsed(SkillsUsed),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkillsUsed {
    pub step_id: String,
    pub skills: Vec<crate::skill::SkillVersionUsed>,
    pub at: DateTime<Utc>,
}

impl RunEvent {
    /// Every event type of the Run aggregate.
    pub const TYPES: &'static [&'static str] = &[
        "run.created",
        "run.call_finished",
        "run.step_completed",
        "run.step_failed",
        "run.steps_planned",
        "run.sleep_started",
        "run.wait_started",
        "run.invoke_started",
        "run.call_failed",
        "run.completed",
        "run.failed",
        "run.cancelled",
        "run.skipped",
        "run.call_held",
        "run.call_released",
        "run.debounced",
        "run.batched",
        "run.skills_used",
    ];
}

impl DomainEvent for RunEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            RunEvent::Created(_) => "run.created",
            RunEvent::CallFinished(_) => "run.call_finished",
            RunEvent::StepCompleted(_) => "run.step_completed",
            RunEvent::StepFailed(_) => "run.step_failed",
            RunEvent::StepsPlanned { .. } => "run.steps_planned",
            RunEvent::SleepStarted(_) => "run.sleep_started",
            RunEvent::WaitStarted(_) => "run.wait_started",
            RunEvent::InvokeStarted(_) => "run.invoke_started",
            RunEvent::CallFailed(_) => "run.call_failed",
            RunEvent::Completed(_) => "run.completed",
            RunEvent::Failed(_) => "run.failed",
            RunEvent::Cancelled(_) => "run.cancelled",
            RunEvent::Skipped(_) => "run.skipped",
            RunEvent::CallHeld(_) => "run.call_held",
            RunEvent::CallReleased(_) => "run.call_released",
            RunEvent::Debounced(_) => "run.debounced",
            RunEvent::Batched(_) => "run.batched",
            RunEvent::SkillsUsed(_) => "run.skills_used",
        }
    }
}

// ---------------------------------------------------------------- state

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// No events yet.
    New,
    /// Created, no call has finished yet.
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    /// Flow control decided it never executes (see [`SkipReason`]).
    Skipped,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled | RunStatus::Skipped
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::New => "new",
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemoizedStep {
    pub name: String,
    pub kind: StepKind,
    pub output: StepOutput,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Waiting {
    Sleep {
        until: DateTime<Utc>,
    },
    Event {
        event: String,
        expression: Option<String>,
        until: DateTime<Utc>,
        approval: Option<ApprovalWait>,
    },
    Invoke {
        child_run_id: Uuid,
        until: DateTime<Utc>,
    },
}

impl Waiting {
    pub fn until(&self) -> DateTime<Utc> {
        match self {
            Waiting::Sleep { until }
            | Waiting::Event { until, .. }
            | Waiting::Invoke { until, .. } => *until,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCall {
    pub token: u64,
    /// The attempt number the SDK sees (`ctx.attempt`, 0-based).
    pub attempt: u32,
    pub not_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    pub status: RunStatus,
    /// Why flow control skipped the run, when it did.
    pub skipped: Option<SkipReason>,
    pub run_id: Option<Uuid>,
    pub function: Option<FunctionRef>,
    pub environment: Environment,
    pub events: Vec<Value>,
    pub max_attempts: u32,
    pub backoff: BackoffPolicy,
    pub replay_of: Option<Uuid>,
    pub parent: Option<ParentLink>,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Memoized steps by hashed step id.
    pub steps: BTreeMap<String, MemoizedStep>,
    /// Step ids in the order they completed (the protocol's `ctx.stack`).
    pub stack: Vec<String>,
    /// Failed attempts so far of steps that have not completed.
    pub step_attempts: BTreeMap<String, u32>,
    pub waiting: BTreeMap<String, Waiting>,
    /// Display names of the steps that are waiting, for the step's completion event.
    pub waiting_names: BTreeMap<String, String>,
    pub due: BTreeMap<CallTarget, DueCall>,
    /// Due calls flow control holds back (only while the same call is due).
    pub held: BTreeMap<CallTarget, HeldCall>,
    /// Log positions of `events` collected after the first (debounce, batch).
    pub collected: Vec<u64>,
    /// Failed function-level attempts since the last step completed.
    pub call_attempts: u32,
    /// Source of call tokens; only ever increases.
    pub last_token: u64,
    /// Steps ran in parallel at some point (see [`RunState::force_step_plan`]).
    pub parallel: bool,
    /// The execution version of the app's SDK, from its last answer that said (0: unknown).
    pub request_version: u32,
    /// The parallel steps still running; the run resumes when none is left (or at the
    /// first one to finish, when `group_race`).
    pub group: std::collections::BTreeSet<String>,
    pub group_race: bool,
    pub output: Option<Value>,
    pub error: Option<StepError>,
    /// The HTTP status of the app's final answer when the run failed on one.
    pub failed_status: Option<u16>,
}

impl Default for RunState {
    fn default() -> Self {
        Self {
            status: RunStatus::New,
            skipped: None,
            run_id: None,
            function: None,
            environment: Environment::Live,
            events: Vec::new(),
            max_attempts: 1,
            backoff: BackoffPolicy::default(),
            replay_of: None,
            parent: None,
            created_at: None,
            started_at: None,
            finished_at: None,
            steps: BTreeMap::new(),
            stack: Vec::new(),
            step_attempts: BTreeMap::new(),
            waiting: BTreeMap::new(),
            waiting_names: BTreeMap::new(),
            due: BTreeMap::new(),
            held: BTreeMap::new(),
            collected: Vec::new(),
            call_attempts: 0,
            last_token: 0,
            parallel: false,
            request_version: 0,
            group: std::collections::BTreeSet::new(),
            group_race: false,
            output: None,
            error: None,
            failed_status: None,
        }
    }
}

impl RunState {
    /// Whether the call for `target` with `token` is still due: the job that names it
    /// is current, not stale.
    pub fn holds_call(&self, target: &CallTarget, token: u64) -> bool {
        self.due.get(target).is_some_and(|due| due.token == token)
    }

    /// Moves the start of a run collecting events (its first call, held).
    fn put_start(&mut self, start: impl Fn(DateTime<Utc>) -> DateTime<Utc>) {
        if let (Some(held), Some(due)) = (
            self.held.get_mut(&CallTarget::Discovery),
            self.due.get_mut(&CallTarget::Discovery),
        ) && held.token == due.token
            && let Some(until) = held.until
        {
            let until = start(until);
            held.until = Some(until);
            due.not_before = Some(until);
        }
    }

    fn make_due(&mut self, target: CallTarget, attempt: u32, not_before: Option<DateTime<Utc>>) {
        self.last_token += 1;
        self.due.insert(
            target,
            DueCall {
                token: self.last_token,
                attempt,
                not_before,
            },
        );
    }

    /// Whether the app must plan every new step instead of running it inline (the
    /// protocol's `disable_immediate_execution`): once steps ran in parallel, an inline
    /// step could race its siblings. As Inngest's executor does, SDKs of execution
    /// version 2 or later get inline execution back once no parallel step is left.
    pub fn force_step_plan(&self) -> bool {
        let in_flight =
            !self.group.is_empty() || self.due.keys().any(|t| matches!(t, CallTarget::Step(_)));
        self.parallel && (self.request_version < 2 || in_flight)
    }

    fn finish(&mut self, status: RunStatus, at: DateTime<Utc>) {
        self.status = status;
        self.finished_at = Some(at);
        self.due.clear();
        self.waiting.clear();
        self.waiting_names.clear();
    }

    fn jitter_seed(&self, target: &CallTarget, attempt: u32) -> u64 {
        // FNV-1a over the run id, target and attempt: stable across processes and versions.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for b in bytes {
                hash ^= u64::from(*b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        };
        if let Some(id) = self.run_id {
            feed(id.as_bytes());
        }
        match target {
            CallTarget::Discovery => feed(b"discovery"),
            CallTarget::Step(id) => feed(id.as_bytes()),
        }
        feed(&attempt.to_le_bytes());
        hash
    }

    fn retry_at(
        &self,
        target: &CallTarget,
        attempt: u32,
        now: DateTime<Utc>,
        retry_after: Option<DateTime<Utc>>,
    ) -> DateTime<Utc> {
        retry_after.filter(|t| *t > now).unwrap_or_else(|| {
            now + self
                .backoff
                .delay(attempt, self.jitter_seed(target, attempt))
        })
    }

    fn is_known_step(&self, step_id: &str) -> bool {
        self.steps.contains_key(step_id)
            || self.waiting.contains_key(step_id)
            || self.due.contains_key(&CallTarget::Step(step_id.to_owned()))
    }
}

// ---------------------------------------------------------------- commands

#[derive(Debug, Clone, PartialEq)]
pub struct CreateRun {
    pub run_id: Uuid,
    pub function: FunctionRef,
    pub events: Vec<Value>,
    pub max_attempts: u32,
    pub backoff: BackoffPolicy,
    pub replay_of: Option<Uuid>,
    pub parent: Option<ParentLink>,
    pub environment: Environment,
    /// Flow control decided the run does not execute: it is recorded, and skipped.
    pub skip: Option<(SkipReason, String)>,
    /// Flow control decided the run starts later (throttle): its first call is held.
    pub hold: Option<Hold>,
    pub at: DateTime<Utc>,
}

/// One new step reported by the app in a 206 response.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    StepRun {
        id: String,
        name: String,
        output: Value,
    },
    StepError {
        id: String,
        name: String,
        error: StepError,
        retriable: bool,
        retry_after: Option<DateTime<Utc>>,
    },
    StepPlanned {
        id: String,
        name: String,
        /// `parallelMode: race`: resume the run after the first planned step completes.
        race: bool,
    },
    Sleep {
        id: String,
        name: String,
        until: DateTime<Utc>,
    },
    WaitForEvent {
        id: String,
        name: String,
        event: String,
        expression: Option<String>,
        until: DateTime<Utc>,
        /// A wait for a human decision: the event and match are FlowForge's own.
        approval: Option<ApprovalAsk>,
    },
    InvokeFunction {
        id: String,
        name: String,
        function_id: String,
        payload: Value,
        until: DateTime<Utc>,
        /// Chosen by the caller so that `decide` stays pure.
        child_run_id: Uuid,
    },
    /// The answer of an LLM provider to a request the server made for the app, and the
    /// skill versions the request was given.
    AiResponse {
        id: String,
        name: String,
        output: Value,
        skills: Vec<crate::skill::SkillVersionUsed>,
    },
}

/// What one call to the app answered.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    /// 200: the function returned.
    Completed { output: Value },
    /// 206: new steps.
    Ops(Vec<Op>),
    /// An error outside any step (or a transport failure).
    Failed {
        error: StepError,
        retriable: bool,
        retry_after: Option<DateTime<Utc>>,
        /// The HTTP status the app answered with, if it answered.
        status: Option<u16>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunCommand {
    Create(CreateRun),
    RecordCall {
        target: CallTarget,
        token: u64,
        outcome: CallOutcome,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
        /// The execution version the app's SDK answered with (`x-inngest-req-version`).
        request_version: Option<u32>,
    },
    CompleteSleep {
        step_id: String,
        at: DateTime<Utc>,
    },
    /// A matching event arrived (`Some`) or the wait timed out (`None`).
    ResolveWait {
        step_id: String,
        event: Option<Value>,
        at: DateTime<Utc>,
    },
    ResolveInvoke {
        step_id: String,
        result: Result<Value, StepError>,
        at: DateTime<Utc>,
    },
    Cancel {
        reason: String,
        at: DateTime<Utc>,
    },
    /// Flow control holds the due call back.
    HoldCall {
        target: CallTarget,
        token: u64,
        hold: Hold,
        at: DateTime<Utc>,
    },
    /// Another event for a run still collecting them (debounce or batch).
    Collect {
        reason: HoldReason,
        event: Value,
        position: u64,
        until: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// A held call may go.
    ReleaseCall {
        target: CallTarget,
        token: u64,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("run does not exist")]
    NotFound,
    #[error("run already exists")]
    AlreadyExists,
    #[error("run is already {0}")]
    Finished(&'static str),
    #[error("the call for {target:?} with token {token} is no longer due")]
    StaleCall { target: CallTarget, token: u64 },
    #[error("step {step_id} is not waiting for this")]
    NotWaiting { step_id: String },
    #[error("sleep {step_id} ends at {until}, not yet")]
    TooEarly {
        step_id: String,
        until: DateTime<Utc>,
    },
    #[error("the run has started: it collects no more events")]
    NotCollecting,
    #[error("invalid command: {0}")]
    Invalid(&'static str),
}

#[derive(Debug)]
pub struct Run;

impl Decider for Run {
    type State = RunState;
    type Command = RunCommand;
    type Event = RunEvent;
    type Error = RunError;

    fn initial() -> RunState {
        RunState::default()
    }

    fn evolve(mut state: RunState, event: &RunEvent) -> RunState {
        match event {
            RunEvent::Created(e) => {
                state.status = RunStatus::Queued;
                state.run_id = Some(e.run_id);
                state.function = Some(e.function.clone());
                state.events = e.events.clone();
                state.max_attempts = e.max_attempts.max(1);
                state.backoff = e.backoff;
                state.replay_of = e.replay_of;
                state.parent = e.parent.clone();
                state.environment = e.environment;
                state.created_at = Some(e.created_at);
                state.make_due(CallTarget::Discovery, 0, e.start_at);
            }
            RunEvent::CallFinished(e) => {
                if let Some(version) = e.request_version {
                    state.request_version = version;
                }
                if state.holds_call(&e.target, e.token) {
                    state.due.remove(&e.target);
                }
                if state.status == RunStatus::Queued {
                    state.status = RunStatus::Running;
                    state.started_at = Some(e.started_at);
                }
            }
            RunEvent::StepCompleted(e) => {
                state.steps.insert(
                    e.step_id.clone(),
                    MemoizedStep {
                        name: e.name.clone(),
                        kind: e.kind,
                        output: e.output.clone(),
                    },
                );
                state.stack.push(e.step_id.clone());
                state.waiting.remove(&e.step_id);
                state.waiting_names.remove(&e.step_id);
                state.step_attempts.remove(&e.step_id);
                state.due.remove(&CallTarget::Step(e.step_id.clone()));
                state.call_attempts = 0;
                let in_group = state.group.remove(&e.step_id);
                let resume = !in_group || state.group.is_empty() || state.group_race;
                if state.group_race && in_group {
                    state.group.clear();
                }
                // Always a fresh discovery: one already due or in flight was (or is being)
                // made without this step's result, so its answer must count as stale.
                if resume && !state.status.is_terminal() {
                    state.make_due(CallTarget::Discovery, 0, None);
                }
            }
            RunEvent::StepFailed(e) => {
                state.step_attempts.insert(e.step_id.clone(), e.attempt);
                state.make_due(e.retry_target.clone(), e.attempt, Some(e.retry_at));
            }
            RunEvent::StepsPlanned { steps, group, race } => {
                state.parallel = true;
                state.group.extend(group.iter().cloned());
                state.group_race = *race;
                for step in steps {
                    let attempt = state.step_attempts.get(&step.step_id).copied().unwrap_or(0);
                    state.make_due(CallTarget::Step(step.step_id.clone()), attempt, None);
                }
            }
            RunEvent::SleepStarted(e) => {
                state
                    .waiting_names
                    .insert(e.step_id.clone(), e.name.clone());
                state
                    .waiting
                    .insert(e.step_id.clone(), Waiting::Sleep { until: e.until });
            }
            RunEvent::WaitStarted(e) => {
                state
                    .waiting_names
                    .insert(e.step_id.clone(), e.name.clone());
                state.waiting.insert(
                    e.step_id.clone(),
                    Waiting::Event {
                        event: e.event.clone(),
                        expression: e.expression.clone(),
                        until: e.until,
                        approval: e.approval.clone(),
                    },
                );
            }
            RunEvent::InvokeStarted(e) => {
                state
                    .waiting_names
                    .insert(e.step_id.clone(), e.name.clone());
                state.waiting.insert(
                    e.step_id.clone(),
                    Waiting::Invoke {
                        child_run_id: e.child_run_id,
                        until: e.until,
                    },
                );
            }
            RunEvent::CallFailed(e) => {
                state.call_attempts = e.attempt;
                state.make_due(e.target.clone(), e.attempt, Some(e.retry_at));
            }
            RunEvent::Completed(e) => {
                state.output = Some(e.output.clone());
                state.finish(RunStatus::Completed, e.at);
            }
            RunEvent::Failed(e) => {
                state.error = Some(e.error.clone());
                state.failed_status = e.http_status;
                state.finish(RunStatus::Failed, e.at);
            }
            RunEvent::Cancelled(e) => state.finish(RunStatus::Cancelled, e.at),
            RunEvent::Skipped(e) => {
                state.skipped = Some(e.reason);
                state.finish(RunStatus::Skipped, e.at);
            }
            RunEvent::CallHeld(e) => {
                if let Some(due) = state.due.get_mut(&e.target)
                    && due.token == e.token
                {
                    if e.until.is_some() {
                        due.not_before = e.until;
                    }
                    state.held.insert(
                        e.target.clone(),
                        HeldCall {
                            token: e.token,
                            reason: e.reason,
                            key: e.key.clone(),
                            detail: e.detail.clone(),
                            until: e.until,
                            since: e.at,
                        },
                    );
                }
            }
            RunEvent::CallReleased(e) => {
                if state
                    .held
                    .get(&e.target)
                    .is_some_and(|h| h.token == e.token)
                {
                    state.held.remove(&e.target);
                }
            }
            RunEvent::Debounced(e) => {
                // The latest event in the log wins, whatever order they were recorded in.
                if state.collected.last().is_none_or(|p| e.position > *p) {
                    state.events = vec![e.event.clone()];
                    state.collected = vec![e.position];
                }
                state.put_start(|until| until.max(e.until));
            }
            RunEvent::Batched(e) => {
                if !state.collected.contains(&e.position) {
                    let at = state.collected.partition_point(|p| *p < e.position);
                    state.collected.insert(at, e.position);
                    // The first event (from run.created) has no recorded position.
                    state.events.insert(at + 1, e.event.clone());
                }
                state.put_start(|until| until.min(e.until));
            }
            // A record for readers; what the run does next does not depend on it.
            RunEvent::SkillsUsed(_) => {}
        }
        // A hold is on one call: it ends when that call is no longer due.
        if !state.held.is_empty() {
            let due = &state.due;
            state
                .held
                .retain(|target, held| due.get(target).is_some_and(|d| d.token == held.token));
        }
        state
    }

    fn decide(state: &RunState, command: RunCommand) -> Result<Vec<RunEvent>, RunError> {
        if let RunCommand::Create(create) = command {
            return decide_create(state, create);
        }
        match state.status {
            RunStatus::New => return Err(RunError::NotFound),
            status if status.is_terminal() => return Err(RunError::Finished(status.as_str())),
            _ => {}
        }
        match command {
            RunCommand::Create(_) => Err(RunError::AlreadyExists),
            RunCommand::RecordCall {
                target,
                token,
                outcome,
                started_at,
                finished_at,
                request_version,
            } => decide_call(
                state,
                (target, token),
                outcome,
                (started_at, finished_at),
                request_version,
            ),
            RunCommand::CompleteSleep { step_id, at } => match state.waiting.get(&step_id) {
                Some(Waiting::Sleep { until }) if at < *until => Err(RunError::TooEarly {
                    step_id,
                    until: *until,
                }),
                Some(Waiting::Sleep { .. }) => Ok(vec![completed(
                    state,
                    &step_id,
                    StepKind::Sleep,
                    StepOutput::Nothing,
                    at,
                )]),
                _ => Err(RunError::NotWaiting { step_id }),
            },
            RunCommand::ResolveWait { step_id, event, at } => match state.waiting.get(&step_id) {
                Some(Waiting::Event { .. }) => {
                    let output = event.map_or(StepOutput::Nothing, StepOutput::Data);
                    Ok(vec![completed(
                        state,
                        &step_id,
                        StepKind::WaitForEvent,
                        output,
                        at,
                    )])
                }
                _ => Err(RunError::NotWaiting { step_id }),
            },
            RunCommand::ResolveInvoke {
                step_id,
                result,
                at,
            } => match state.waiting.get(&step_id) {
                Some(Waiting::Invoke { .. }) => {
                    let output = match result {
                        Ok(data) => StepOutput::Data(data),
                        Err(error) => StepOutput::Error(error),
                    };
                    Ok(vec![completed(
                        state,
                        &step_id,
                        StepKind::Invoke,
                        output,
                        at,
                    )])
                }
                _ => Err(RunError::NotWaiting { step_id }),
            },
            RunCommand::Cancel { reason, at } => {
                Ok(vec![RunEvent::Cancelled(RunCancelled { reason, at })])
            }
            RunCommand::HoldCall {
                target,
                token,
                hold,
                at,
            } => {
                if state.due.get(&target).is_none_or(|d| d.token != token) {
                    return Err(RunError::StaleCall { target, token });
                }
                if state.held.get(&target).is_some_and(|h| h.token == token) {
                    return Ok(Vec::new());
                }
                Ok(vec![held(target, token, hold, at)])
            }
            RunCommand::Collect {
                reason,
                event,
                position,
                until,
                at,
            } => {
                let collecting = state.status == RunStatus::Queued
                    && state
                        .held
                        .get(&CallTarget::Discovery)
                        .is_some_and(|h| h.reason == reason)
                    && matches!(reason, HoldReason::Debounce | HoldReason::Batch);
                if !collecting {
                    return Err(RunError::NotCollecting);
                }
                if state.collected.contains(&position) {
                    return Ok(Vec::new());
                }
                let collected = EventCollected {
                    event,
                    position,
                    until,
                    at,
                };
                Ok(vec![match reason {
                    HoldReason::Batch => RunEvent::Batched(collected),
                    _ => RunEvent::Debounced(collected),
                }])
            }
            RunCommand::ReleaseCall { target, token, at } => {
                if state.due.get(&target).is_none_or(|d| d.token != token) {
                    return Err(RunError::StaleCall { target, token });
                }
                if state.held.get(&target).is_none_or(|h| h.token != token) {
                    return Ok(Vec::new());
                }
                Ok(vec![RunEvent::CallReleased(CallReleased {
                    target,
                    token,
                    at,
                })])
            }
        }
    }
}

fn decide_create(state: &RunState, create: CreateRun) -> Result<Vec<RunEvent>, RunError> {
    if state.status != RunStatus::New {
        return Err(RunError::AlreadyExists);
    }
    if create.events.is_empty() {
        return Err(RunError::Invalid(
            "a run needs at least one triggering event",
        ));
    }
    let created = RunEvent::Created(RunCreated {
        run_id: create.run_id,
        function: create.function,
        events: create.events,
        max_attempts: create.max_attempts.max(1),
        backoff: create.backoff,
        created_at: create.at,
        replay_of: create.replay_of,
        parent: create.parent,
        environment: create.environment,
        start_at: create.hold.as_ref().and_then(|h| h.until),
    });
    if let Some(hold) = create.hold {
        let token = Run::evolve(state.clone(), &created)
            .due
            .get(&CallTarget::Discovery)
            .map_or(0, |d| d.token);
        return Ok(vec![
            created,
            held(CallTarget::Discovery, token, hold, create.at),
        ]);
    }
    Ok(match create.skip {
        None => vec![created],
        Some((reason, detail)) => vec![
            created,
            RunEvent::Skipped(RunSkipped {
                reason,
                detail,
                at: create.at,
            }),
        ],
    })
}

fn held(target: CallTarget, token: u64, hold: Hold, at: DateTime<Utc>) -> RunEvent {
    RunEvent::CallHeld(CallHeld {
        target,
        token,
        reason: hold.reason,
        key: hold.key,
        detail: hold.detail,
        until: hold.until,
        at,
    })
}

fn completed(
    state: &RunState,
    step_id: &str,
    kind: StepKind,
    output: StepOutput,
    at: DateTime<Utc>,
) -> RunEvent {
    let name = state
        .steps
        .get(step_id)
        .map(|s| s.name.clone())
        .or_else(|| state.waiting_names.get(step_id).cloned())
        .unwrap_or_else(|| step_id.to_owned());
    RunEvent::StepCompleted(StepCompleted {
        step_id: step_id.to_owned(),
        name,
        kind,
        output,
        at,
    })
}

fn decide_call(
    state: &RunState,
    (target, token): (CallTarget, u64),
    outcome: CallOutcome,
    (started_at, finished_at): (DateTime<Utc>, DateTime<Utc>),
    request_version: Option<u32>,
) -> Result<Vec<RunEvent>, RunError> {
    let due = match state.due.get(&target) {
        Some(due) if due.token == token => due,
        _ => return Err(RunError::StaleCall { target, token }),
    };
    let mut events = vec![RunEvent::CallFinished(CallFinished {
        target: target.clone(),
        token,
        attempt: due.attempt,
        started_at,
        finished_at,
        // Recorded when it changes only: it is the same on almost every call.
        request_version: request_version.filter(|v| *v != state.request_version),
    })];
    match outcome {
        CallOutcome::Completed { output } => {
            events.push(RunEvent::Completed(RunCompleted {
                output,
                at: finished_at,
            }));
        }
        CallOutcome::Failed {
            error,
            retriable,
            retry_after,
            status,
        } => {
            let attempt = due.attempt + 1;
            if retriable && attempt < state.max_attempts {
                events.push(RunEvent::CallFailed(CallFailed {
                    retry_at: state.retry_at(&target, attempt, finished_at, retry_after),
                    target,
                    attempt,
                    error,
                }));
            } else {
                events.push(RunEvent::Failed(RunFailed {
                    error,
                    at: finished_at,
                    http_status: status,
                    function: state.function.clone(),
                }));
            }
        }
        CallOutcome::Ops(ops) => {
            let mut planned = Vec::new();
            let mut group = Group::default();
            let mut seen = std::collections::BTreeSet::new();
            for op in ops {
                decide_op(
                    state,
                    &target,
                    op,
                    finished_at,
                    &mut events,
                    (&mut planned, &mut group),
                    &mut seen,
                );
            }
            if !planned.is_empty() {
                events.push(RunEvent::StepsPlanned {
                    steps: planned,
                    group: group.members,
                    race: group.race,
                });
            }
        }
    }
    Ok(events)
}

/// The steps of one answer that the run waits for together.
#[derive(Default)]
struct Group {
    members: Vec<String>,
    race: bool,
}

fn decide_op(
    state: &RunState,
    target: &CallTarget,
    op: Op,
    now: DateTime<Utc>,
    events: &mut Vec<RunEvent>,
    (planned, group): (&mut Vec<PlannedStep>, &mut Group),
    seen: &mut std::collections::BTreeSet<String>,
) {
    let id = match &op {
        Op::StepRun { id, .. }
        | Op::StepError { id, .. }
        | Op::StepPlanned { id, .. }
        | Op::Sleep { id, .. }
        | Op::WaitForEvent { id, .. }
        | Op::InvokeFunction { id, .. }
        | Op::AiResponse { id, .. } => id.clone(),
    };
    // A step the run already knows about (memoized, waiting, or planned) may be reported
    // again by a discovery call while it is in flight; only its own call may finish it.
    let own_call = *target == CallTarget::Step(id.clone());
    if state.steps.contains_key(&id) || !seen.insert(id.clone()) {
        return;
    }
    if state.is_known_step(&id) && !own_call {
        return;
    }
    match op {
        Op::StepRun { id, name, output } => {
            events.push(RunEvent::StepCompleted(StepCompleted {
                step_id: id,
                name,
                kind: StepKind::Run,
                output: StepOutput::Data(output),
                at: now,
            }));
        }
        Op::AiResponse {
            id,
            name,
            output,
            skills,
        } => {
            if !skills.is_empty() {
                events.push(RunEvent::SkillsUsed(SkillsUsed {
                    step_id: id.clone(),
                    skills,
                    at: now,
                }));
            }
            events.push(RunEvent::StepCompleted(StepCompleted {
                step_id: id,
                name,
                kind: StepKind::Ai,
                output: StepOutput::Data(output),
                at: now,
            }));
        }
        Op::StepError {
            id,
            name,
            error,
            retriable,
            retry_after,
        } => {
            let attempt = state.step_attempts.get(&id).copied().unwrap_or(0) + 1;
            if retriable && attempt < state.max_attempts {
                events.push(RunEvent::StepFailed(StepFailed {
                    retry_at: state.retry_at(target, attempt, now, retry_after),
                    step_id: id,
                    name,
                    attempt,
                    error,
                    retry_target: target.clone(),
                }));
            } else {
                events.push(RunEvent::StepCompleted(StepCompleted {
                    step_id: id,
                    name,
                    kind: StepKind::Run,
                    output: StepOutput::Error(error),
                    at: now,
                }));
            }
        }
        Op::StepPlanned { id, name, race } => {
            group.race |= race;
            group.members.push(id.clone());
            planned.push(PlannedStep { step_id: id, name });
        }
        Op::Sleep { id, name, until } => {
            group.members.push(id.clone());
            events.push(RunEvent::SleepStarted(SleepStarted {
                step_id: id,
                name,
                until,
            }));
        }
        Op::WaitForEvent {
            id,
            name,
            event,
            expression,
            until,
            approval,
        } => {
            group.members.push(id.clone());
            let (event, expression, approval) = match (approval, state.run_id) {
                (Some(ask), Some(run_id)) => {
                    let approval_id = crate::approval::approval_id(run_id, &id);
                    (
                        crate::approval::DECIDED_EVENT.to_owned(),
                        Some(format!("async.data.approval_id == \"{approval_id}\"")),
                        Some(ApprovalWait { approval_id, ask }),
                    )
                }
                _ => (event, expression, None),
            };
            events.push(RunEvent::WaitStarted(WaitStarted {
                step_id: id,
                name,
                event,
                expression,
                until,
                approval,
            }));
        }
        Op::InvokeFunction {
            id,
            name,
            function_id,
            payload,
            until,
            child_run_id,
        } => {
            group.members.push(id.clone());
            events.push(RunEvent::InvokeStarted(InvokeStarted {
                step_id: id,
                name,
                function_id,
                child_run_id,
                payload,
                until,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec;
    use serde_json::json;

    type Spec = DeciderSpec<Run>;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn run_id() -> Uuid {
        Uuid::from_u128(42)
    }

    fn function() -> FunctionRef {
        FunctionRef {
            app_id: "shop".into(),
            function_id: "process-order".into(),
            version: 1,
        }
    }

    /// The command that records [`created`] (and skips the run when `skip` says so).
    fn create_command(skip: Option<(SkipReason, String)>) -> RunCommand {
        RunCommand::Create(CreateRun {
            run_id: run_id(),
            function: function(),
            events: vec![json!({"name": "order/created", "data": {"total": 10}})],
            max_attempts: 3,
            backoff: BackoffPolicy {
                initial_ms: 100,
                max_ms: 1_000,
            },
            replay_of: None,
            parent: None,
            environment: Environment::Live,
            skip,
            hold: None,
            at: t(0),
        })
    }

    fn created() -> RunEvent {
        RunEvent::Created(RunCreated {
            run_id: run_id(),
            function: function(),
            events: vec![json!({"name": "order/created", "data": {"total": 10}})],
            max_attempts: 3,
            backoff: BackoffPolicy {
                initial_ms: 100,
                max_ms: 1_000,
            },
            created_at: t(0),
            replay_of: None,
            parent: None,
            environment: Environment::Live,
            start_at: None,
        })
    }

    fn call_finished(target: CallTarget, token: u64, attempt: u32) -> RunEvent {
        RunEvent::CallFinished(CallFinished {
            target,
            token,
            attempt,
            started_at: t(1),
            finished_at: t(2),
            request_version: None,
        })
    }

    fn record(target: CallTarget, token: u64, outcome: CallOutcome) -> RunCommand {
        RunCommand::RecordCall {
            target,
            token,
            outcome,
            started_at: t(1),
            finished_at: t(2),
            request_version: None,
        }
    }

    fn step_done(id: &str, output: Value) -> RunEvent {
        RunEvent::StepCompleted(StepCompleted {
            step_id: id.into(),
            name: id.into(),
            kind: StepKind::Run,
            output: StepOutput::Data(output),
            at: t(2),
        })
    }

    fn step_run(id: &str, output: Value) -> Op {
        Op::StepRun {
            id: id.into(),
            name: id.into(),
            output,
        }
    }

    #[test]
    fn create_records_the_pinned_function_and_makes_discovery_due() {
        let state = Spec::given([]).when(create_command(None)).then([created()]);
        assert_eq!(state.status, RunStatus::Queued);
        assert_eq!(state.due[&CallTarget::Discovery].token, 1);
    }

    #[test]
    fn a_run_flow_control_skips_is_recorded_finished_with_nothing_due() {
        let skipped = RunEvent::Skipped(RunSkipped {
            reason: SkipReason::RateLimited,
            detail: "1 run per 1m for key a".into(),
            at: t(0),
        });
        let state = Spec::given([])
            .when(create_command(Some((
                SkipReason::RateLimited,
                "1 run per 1m for key a".into(),
            ))))
            .then([created(), skipped.clone()]);
        assert_eq!(state.status, RunStatus::Skipped);
        assert!(state.status.is_terminal());
        assert_eq!(state.skipped, Some(SkipReason::RateLimited));
        assert!(state.due.is_empty(), "a skipped run makes no call");
        let payload = skipped.to_payload();
        assert_eq!(payload["reason"], "rate_limited");
        assert_eq!(
            RunEvent::from_stored("run.skipped", payload).unwrap(),
            skipped
        );
    }

    fn concurrency_hold() -> Hold {
        Hold {
            reason: HoldReason::Concurrency,
            key: "customer-42".into(),
            detail: "all 1 slot(s) of key `customer-42` are taken".into(),
            until: None,
        }
    }

    fn held_event(token: u64, hold: Hold, at: DateTime<Utc>) -> RunEvent {
        RunEvent::CallHeld(CallHeld {
            target: CallTarget::Discovery,
            token,
            reason: hold.reason,
            key: hold.key,
            detail: hold.detail,
            until: hold.until,
            at,
        })
    }

    #[test]
    fn a_throttled_run_is_created_with_its_first_call_held_until_its_start() {
        let hold = Hold {
            reason: HoldReason::Throttle,
            key: String::new(),
            detail: "throttle of 10 run(s) per 1s".into(),
            until: Some(t(5)),
        };
        let RunCommand::Create(mut create) = create_command(None) else {
            unreachable!()
        };
        create.hold = Some(hold.clone());
        let RunEvent::Created(mut throttled) = created() else {
            unreachable!()
        };
        throttled.start_at = Some(t(5));
        let state = Spec::given([]).when(RunCommand::Create(create)).then([
            RunEvent::Created(throttled.clone()),
            held_event(1, hold, t(0)),
        ]);
        // The start is in the first event: whoever reads only it does not call early.
        let first = Run::evolve(Run::initial(), &RunEvent::Created(throttled));
        assert_eq!(first.due[&CallTarget::Discovery].not_before, Some(t(5)));
        assert_eq!(state.status, RunStatus::Queued);
        assert_eq!(state.due[&CallTarget::Discovery].not_before, Some(t(5)));
        let held = &state.held[&CallTarget::Discovery];
        assert_eq!(
            (held.reason, held.until),
            (HoldReason::Throttle, Some(t(5)))
        );
    }

    #[test]
    fn a_due_call_is_held_once_and_released_once() {
        let state = Spec::given([created()])
            .when(RunCommand::HoldCall {
                target: CallTarget::Discovery,
                token: 1,
                hold: concurrency_hold(),
                at: t(1),
            })
            .then([held_event(1, concurrency_hold(), t(1))]);
        assert_eq!(state.held[&CallTarget::Discovery].key, "customer-42");
        assert_eq!(state.held[&CallTarget::Discovery].since, t(1));
        assert_eq!(state.due[&CallTarget::Discovery].not_before, None);
        Spec::given([created(), held_event(1, concurrency_hold(), t(1))])
            .when(RunCommand::HoldCall {
                target: CallTarget::Discovery,
                token: 1,
                hold: concurrency_hold(),
                at: t(2),
            })
            .then_nothing_happens();
        let released = RunEvent::CallReleased(CallReleased {
            target: CallTarget::Discovery,
            token: 1,
            at: t(3),
        });
        let state = Spec::given([created(), held_event(1, concurrency_hold(), t(1))])
            .when(RunCommand::ReleaseCall {
                target: CallTarget::Discovery,
                token: 1,
                at: t(3),
            })
            .then([released.clone()]);
        assert!(state.held.is_empty());
        assert!(state.due.contains_key(&CallTarget::Discovery));
        Spec::given([created(), held_event(1, concurrency_hold(), t(1)), released])
            .when(RunCommand::ReleaseCall {
                target: CallTarget::Discovery,
                token: 1,
                at: t(4),
            })
            .then_nothing_happens();
    }

    #[test]
    fn holding_a_call_that_is_no_longer_due_is_refused() {
        Spec::given([created(), call_finished(CallTarget::Discovery, 1, 0)])
            .when(RunCommand::HoldCall {
                target: CallTarget::Discovery,
                token: 1,
                hold: concurrency_hold(),
                at: t(3),
            })
            .then_error(|e| matches!(e, RunError::StaleCall { token: 1, .. }));
        Spec::given([created()])
            .when(RunCommand::ReleaseCall {
                target: CallTarget::Discovery,
                token: 7,
                at: t(3),
            })
            .then_error(|e| matches!(e, RunError::StaleCall { token: 7, .. }));
    }

    #[test]
    fn a_hold_ends_with_its_call() {
        let state = [
            created(),
            held_event(1, concurrency_hold(), t(1)),
            call_finished(CallTarget::Discovery, 1, 0),
        ]
        .iter()
        .fold(Run::initial(), Run::evolve);
        assert!(state.held.is_empty());
    }

    #[test]
    fn holds_read_back_as_recorded() {
        let hold = Hold {
            until: Some(t(9)),
            ..concurrency_hold()
        };
        let event = held_event(4, hold, t(1));
        let payload = event.to_payload();
        assert_eq!(payload["reason"], "concurrency");
        assert_eq!(payload["key"], "customer-42");
        assert_eq!(
            RunEvent::from_stored("run.call_held", payload).unwrap(),
            event
        );
    }

    fn collecting(reason: HoldReason, until: DateTime<Utc>) -> Vec<RunEvent> {
        vec![
            created(),
            held_event(
                1,
                Hold {
                    reason,
                    key: "k".into(),
                    detail: "collecting".into(),
                    until: Some(until),
                },
                t(0),
            ),
        ]
    }

    fn collected(n: u64, until: DateTime<Utc>) -> EventCollected {
        EventCollected {
            event: json!({"name": "e", "data": {"n": n}}),
            position: n,
            until,
            at: t(1),
        }
    }

    fn fold(events: &[RunEvent]) -> RunState {
        events.iter().fold(Run::initial(), Run::evolve)
    }

    #[test]
    fn a_debounced_run_keeps_the_latest_event_and_the_latest_start() {
        let mut given = collecting(HoldReason::Debounce, t(5));
        let state = Spec::given(given.clone())
            .when(RunCommand::Collect {
                reason: HoldReason::Debounce,
                event: json!({"name": "e", "data": {"n": 7}}),
                position: 7,
                until: t(8),
                at: t(1),
            })
            .then([RunEvent::Debounced(collected(7, t(8)))]);
        assert_eq!(state.events[0]["data"]["n"], 7);
        assert_eq!(state.due[&CallTarget::Discovery].not_before, Some(t(8)));
        assert_eq!(state.held[&CallTarget::Discovery].until, Some(t(8)));
        // Recorded out of order, the later event still wins, and the start never moves back.
        given.push(RunEvent::Debounced(collected(9, t(9))));
        given.push(RunEvent::Debounced(collected(7, t(8))));
        let state = fold(&given);
        assert_eq!(state.events.len(), 1);
        assert_eq!(state.events[0]["data"]["n"], 9);
        assert_eq!(state.due[&CallTarget::Discovery].not_before, Some(t(9)));
    }

    #[test]
    fn a_batch_collects_events_in_log_order_and_a_full_one_starts_at_once() {
        let mut given = collecting(HoldReason::Batch, t(5));
        given.push(RunEvent::Batched(collected(9, t(5))));
        given.push(RunEvent::Batched(collected(4, t(5))));
        let state = fold(&given);
        let order: Vec<&Value> = state.events.iter().map(|e| &e["data"]["total"]).collect();
        assert_eq!(state.events.len(), 3);
        assert_eq!(order[0], 10, "the first event stays first");
        assert_eq!(state.events[1]["data"]["n"], 4);
        assert_eq!(state.events[2]["data"]["n"], 9);
        // The batch is full: it starts now, not at its timeout.
        let state = Spec::given(given)
            .when(RunCommand::Collect {
                reason: HoldReason::Batch,
                event: json!({"name": "e", "data": {"n": 12}}),
                position: 12,
                until: t(1),
                at: t(1),
            })
            .then([RunEvent::Batched(collected(12, t(1)))]);
        assert_eq!(state.due[&CallTarget::Discovery].not_before, Some(t(1)));
        assert_eq!(state.events.len(), 4);
    }

    #[test]
    fn an_event_is_collected_once() {
        let mut given = collecting(HoldReason::Batch, t(5));
        given.push(RunEvent::Batched(collected(4, t(5))));
        Spec::given(given)
            .when(RunCommand::Collect {
                reason: HoldReason::Batch,
                event: json!({"name": "e", "data": {"n": 4}}),
                position: 4,
                until: t(5),
                at: t(2),
            })
            .then_nothing_happens();
    }

    #[test]
    fn a_run_that_started_collects_nothing_more() {
        let mut given = collecting(HoldReason::Debounce, t(5));
        given.push(call_finished(CallTarget::Discovery, 1, 0));
        Spec::given(given)
            .when(RunCommand::Collect {
                reason: HoldReason::Debounce,
                event: json!({}),
                position: 3,
                until: t(8),
                at: t(6),
            })
            .then_error(|e| *e == RunError::NotCollecting);
        Spec::given([created()])
            .when(RunCommand::Collect {
                reason: HoldReason::Batch,
                event: json!({}),
                position: 3,
                until: t(8),
                at: t(1),
            })
            .then_error(|e| *e == RunError::NotCollecting);
    }

    #[test]
    fn creating_an_existing_run_is_refused() {
        Spec::given([created()])
            .when(RunCommand::Create(CreateRun {
                run_id: run_id(),
                function: function(),
                events: vec![json!({})],
                max_attempts: 1,
                backoff: BackoffPolicy::default(),
                replay_of: None,
                parent: None,
                environment: Environment::Live,
                skip: None,
                hold: None,
                at: t(0),
            }))
            .then_error(|e| *e == RunError::AlreadyExists);
    }

    #[test]
    fn a_run_needs_a_triggering_event() {
        Spec::given([])
            .when(RunCommand::Create(CreateRun {
                run_id: run_id(),
                function: function(),
                events: vec![],
                max_attempts: 1,
                backoff: BackoffPolicy::default(),
                replay_of: None,
                parent: None,
                environment: Environment::Live,
                skip: None,
                hold: None,
                at: t(0),
            }))
            .then_error(|e| matches!(e, RunError::Invalid(_)));
    }

    #[test]
    fn commands_on_a_missing_run_are_refused() {
        Spec::given([])
            .when(RunCommand::Cancel {
                reason: "x".into(),
                at: t(0),
            })
            .then_error(|e| *e == RunError::NotFound);
    }

    #[test]
    fn an_immediately_executed_step_is_memoized_and_discovery_becomes_due_again() {
        let state = Spec::given([created()])
            .when(record(
                CallTarget::Discovery,
                1,
                CallOutcome::Ops(vec![step_run("a", json!(1))]),
            ))
            .then([
                call_finished(CallTarget::Discovery, 1, 0),
                step_done("a", json!(1)),
            ]);
        assert_eq!(state.status, RunStatus::Running);
        assert_eq!(state.started_at, Some(t(1)));
        assert_eq!(state.stack, vec!["a".to_owned()]);
        assert_eq!(state.due[&CallTarget::Discovery].token, 2);
    }

    #[test]
    fn a_redelivered_call_for_a_state_that_moved_on_is_stale() {
        Spec::given([
            created(),
            call_finished(CallTarget::Discovery, 1, 0),
            step_done("a", json!(1)),
        ])
        .when(record(
            CallTarget::Discovery,
            1,
            CallOutcome::Ops(vec![step_run("a", json!(1))]),
        ))
        .then_error(|e| matches!(e, RunError::StaleCall { token: 1, .. }));
    }

    #[test]
    fn an_ai_answer_records_the_skill_versions_its_request_was_given() {
        let used = vec![crate::skill::SkillVersionUsed {
            name: "release-notes".into(),
            version: 2,
            sha256: "ab".repeat(32),
        }];
        let answer = |skills: Vec<crate::skill::SkillVersionUsed>| Op::AiResponse {
            id: "ask".into(),
            name: "ask".into(),
            output: json!({"text": "hi"}),
            skills,
        };
        let ai_done = RunEvent::StepCompleted(StepCompleted {
            step_id: "ask".into(),
            name: "ask".into(),
            kind: StepKind::Ai,
            output: StepOutput::Data(json!({"text": "hi"})),
            at: t(2),
        });
        let state = Spec::given([created()])
            .when(record(
                CallTarget::Discovery,
                1,
                CallOutcome::Ops(vec![answer(used.clone())]),
            ))
            .then([
                call_finished(CallTarget::Discovery, 1, 0),
                RunEvent::SkillsUsed(SkillsUsed {
                    step_id: "ask".into(),
                    skills: used,
                    at: t(2),
                }),
                ai_done.clone(),
            ]);
        assert!(state.steps.contains_key("ask"), "the answer is memoized");
        // No skills enabled: nothing about skills is recorded.
        Spec::given([created()])
            .when(record(
                CallTarget::Discovery,
                1,
                CallOutcome::Ops(vec![answer(Vec::new())]),
            ))
            .then([call_finished(CallTarget::Discovery, 1, 0), ai_done]);
    }

    #[test]
    fn a_step_reported_again_is_never_memoized_twice() {
        Spec::given([
            created(),
            call_finished(CallTarget::Discovery, 1, 0),
            step_done("a", json!(1)),
        ])
        .when(record(
            CallTarget::Discovery,
            2,
            CallOutcome::Ops(vec![step_run("a", json!(99)), step_run("b", json!(2))]),
        ))
        .then([
            call_finished(CallTarget::Discovery, 2, 0),
            step_done("b", json!(2)),
        ]);
    }

    #[test]
    fn the_function_returning_completes_the_run() {
        let state = Spec::given([created()])
            .when(record(
                CallTarget::Discovery,
                1,
                CallOutcome::Completed {
                    output: json!({"ok": true}),
                },
            ))
            .then([
                call_finished(CallTarget::Discovery, 1, 0),
                RunEvent::Completed(RunCompleted {
                    output: json!({"ok": true}),
                    at: t(2),
                }),
            ]);
        assert_eq!(state.status, RunStatus::Completed);
        assert!(state.due.is_empty());
    }

    #[test]
    fn a_failing_step_is_retried_with_backoff_then_memoized_as_an_error() {
        let err = StepError::new("Error", "card declined");
        let fail = |token| {
            record(
                CallTarget::Discovery,
                token,
                CallOutcome::Ops(vec![Op::StepError {
                    id: "charge".into(),
                    name: "charge".into(),
                    error: err.clone(),
                    retriable: true,
                    retry_after: None,
                }]),
            )
        };
        let first = Spec::given([created()]).when(fail(1)).events();
        let RunEvent::StepFailed(failed) = &first[1] else {
            panic!("expected a step failure, got {first:?}");
        };
        assert_eq!(failed.attempt, 1);
        assert!(failed.retry_at >= t(2) + Duration::milliseconds(50));
        assert!(failed.retry_at <= t(2) + Duration::milliseconds(100));

        let mut given = vec![created()];
        given.extend(first);
        let second = Spec::given(given.clone()).when(fail(2)).events();
        assert!(matches!(&second[1], RunEvent::StepFailed(f) if f.attempt == 2));
        given.extend(second);
        let state = Spec::given(given.clone()).when(fail(3)).then([
            call_finished(CallTarget::Discovery, 3, 2),
            RunEvent::StepCompleted(StepCompleted {
                step_id: "charge".into(),
                name: "charge".into(),
                kind: StepKind::Run,
                output: StepOutput::Error(err.clone()),
                at: t(2),
            }),
        ]);
        assert_eq!(state.due[&CallTarget::Discovery].attempt, 0);
    }

    #[test]
    fn a_non_retriable_step_error_is_memoized_at_once() {
        let err = StepError::new("NonRetriableError", "bad input");
        Spec::given([created()])
            .when(record(
                CallTarget::Discovery,
                1,
                CallOutcome::Ops(vec![Op::StepError {
                    id: "v".into(),
                    name: "validate".into(),
                    error: err.clone(),
                    retriable: false,
                    retry_after: None,
                }]),
            ))
            .then([
                call_finished(CallTarget::Discovery, 1, 0),
                RunEvent::StepCompleted(StepCompleted {
                    step_id: "v".into(),
                    name: "validate".into(),
                    kind: StepKind::Run,
                    output: StepOutput::Error(err),
                    at: t(2),
                }),
            ]);
    }

    #[test]
    fn retry_after_from_the_app_wins_over_backoff() {
        let events = Spec::given([created()])
            .when(record(
                CallTarget::Discovery,
                1,
                CallOutcome::Failed {
                    status: None,
                    error: StepError::new("Error", "rate limited"),
                    retriable: true,
                    retry_after: Some(t(60_000)),
                },
            ))
            .events();
        assert!(
            matches!(&events[1], RunEvent::CallFailed(f) if f.retry_at == t(60_000) && f.attempt == 1)
        );
    }

    #[test]
    fn function_errors_fail_the_run_when_attempts_are_exhausted_or_not_retriable() {
        let err = StepError::new("Error", "boom");
        let failed = |attempt| {
            RunEvent::CallFailed(CallFailed {
                target: CallTarget::Discovery,
                attempt,
                error: err.clone(),
                retry_at: t(500),
            })
        };
        // Tokens: 1 at creation, 2 after the first failure, 3 after the second.
        let state = Spec::given([
            created(),
            call_finished(CallTarget::Discovery, 1, 0),
            failed(1),
            call_finished(CallTarget::Discovery, 2, 1),
            failed(2),
        ])
        .when(record(
            CallTarget::Discovery,
            3,
            CallOutcome::Failed {
                status: None,
                error: err.clone(),
                retriable: true,
                retry_after: None,
            },
        ))
        .then([
            call_finished(CallTarget::Discovery, 3, 2),
            RunEvent::Failed(RunFailed {
                http_status: None,
                error: err.clone(),
                at: t(2),
                function: Some(function()),
            }),
        ]);
        assert_eq!(state.status, RunStatus::Failed);

        Spec::given([created()])
            .when(record(
                CallTarget::Discovery,
                1,
                CallOutcome::Failed {
                    status: None,
                    error: err.clone(),
                    retriable: false,
                    retry_after: None,
                },
            ))
            .then([
                call_finished(CallTarget::Discovery, 1, 0),
                RunEvent::Failed(RunFailed {
                    http_status: None,
                    error: err,
                    at: t(2),
                    function: Some(function()),
                }),
            ]);
    }

    fn planned(ids: &[&str], race: bool) -> RunEvent {
        RunEvent::StepsPlanned {
            steps: ids
                .iter()
                .map(|id| PlannedStep {
                    step_id: (*id).into(),
                    name: (*id).into(),
                })
                .collect(),
            group: ids.iter().map(|id| (*id).to_owned()).collect(),
            race,
        }
    }

    fn plan_op(id: &str, race: bool) -> Op {
        Op::StepPlanned {
            id: id.into(),
            name: id.into(),
            race,
        }
    }

    #[test]
    fn parallel_steps_are_planned_together_and_each_executed_by_its_own_call() {
        let state = Spec::given([created()])
            .when(record(
                CallTarget::Discovery,
                1,
                CallOutcome::Ops(vec![plan_op("a", false), plan_op("b", false)]),
            ))
            .then([
                call_finished(CallTarget::Discovery, 1, 0),
                planned(&["a", "b"], false),
            ]);
        assert_eq!(state.due.len(), 2);
        assert!(state.parallel);
        let a = state.due[&CallTarget::Step("a".into())].token;
        let b = state.due[&CallTarget::Step("b".into())].token;
        assert_ne!(a, b);
    }

    #[test]
    fn the_run_resumes_once_every_step_of_a_parallel_group_is_done() {
        let mut given = vec![
            created(),
            call_finished(CallTarget::Discovery, 1, 0),
            planned(&["a", "b"], false),
        ];
        // a finishes: b is still running, so no discovery yet.
        let after_a = Spec::given(given.clone())
            .when(record(
                CallTarget::Step("a".into()),
                2,
                CallOutcome::Ops(vec![step_run("a", json!("A"))]),
            ))
            .then([
                call_finished(CallTarget::Step("a".into()), 2, 0),
                step_done("a", json!("A")),
            ]);
        assert!(!after_a.due.contains_key(&CallTarget::Discovery));
        given.push(call_finished(CallTarget::Step("a".into()), 2, 0));
        given.push(step_done("a", json!("A")));
        // b finishes: the group is done, one discovery.
        let after_b = Spec::given(given)
            .when(record(
                CallTarget::Step("b".into()),
                3,
                CallOutcome::Ops(vec![step_run("b", json!("B"))]),
            ))
            .then([
                call_finished(CallTarget::Step("b".into()), 3, 0),
                step_done("b", json!("B")),
            ]);
        assert_eq!(
            after_b.due.keys().collect::<Vec<_>>(),
            vec![&CallTarget::Discovery]
        );
        assert!(after_b.group.is_empty());
    }

    #[test]
    fn steps_are_planned_while_parallel_steps_run_and_after_them_for_old_sdks() {
        let given = vec![created()];
        let discovery = RunCommand::RecordCall {
            target: CallTarget::Discovery,
            token: 1,
            outcome: CallOutcome::Ops(vec![plan_op("a", false), plan_op("b", false)]),
            started_at: t(1),
            finished_at: t(2),
            request_version: Some(2),
        };
        let events = Spec::given(given.clone()).when(discovery).events();
        assert!(
            matches!(&events[0], RunEvent::CallFinished(f) if f.request_version == Some(2)),
            "the version is recorded when it changes: {events:?}"
        );
        let mut history = given;
        history.extend(events);
        let running = Run::fold(history.iter());
        assert!(running.force_step_plan(), "a and b are running");

        for (token, id) in [(2, "a"), (3, "b")] {
            let events = Spec::given(history.clone())
                .when(RunCommand::RecordCall {
                    target: CallTarget::Step(id.into()),
                    token,
                    outcome: CallOutcome::Ops(vec![step_run(id, json!(id))]),
                    started_at: t(3),
                    finished_at: t(4),
                    request_version: Some(2),
                })
                .events();
            assert!(
                matches!(&events[0], RunEvent::CallFinished(f) if f.request_version.is_none()),
                "an unchanged version is not repeated: {events:?}"
            );
            history.extend(events);
        }
        let done = Run::fold(history.iter());
        assert!(done.parallel);
        assert!(
            !done.force_step_plan(),
            "version 2: inline execution is back once the group is done"
        );

        // An SDK that never said its version keeps planning every step.
        let old: Vec<RunEvent> = history
            .into_iter()
            .map(|e| match e {
                RunEvent::CallFinished(f) => RunEvent::CallFinished(CallFinished {
                    request_version: None,
                    ..f
                }),
                other => other,
            })
            .collect();
        assert!(Run::fold(old.iter()).force_step_plan());
    }

    #[test]
    fn an_approval_wait_waits_for_its_own_decision_whatever_event_the_app_named() {
        let ask = ApprovalAsk {
            title: "Ship it?".into(),
            description: None,
            assignees: vec!["ana".into()],
        };
        let events = Spec::given([created()])
            .when(record(
                CallTarget::Discovery,
                1,
                CallOutcome::Ops(vec![Op::WaitForEvent {
                    id: "ok".into(),
                    name: "ok".into(),
                    event: "anything".into(),
                    expression: None,
                    until: t(60_000),
                    approval: Some(ask.clone()),
                }]),
            ))
            .events();
        let run_id = Run::fold([created()].iter()).run_id.unwrap_or_default();
        let approval_id = crate::approval::approval_id(run_id, "ok");
        let wait = events.iter().find_map(|e| match e {
            RunEvent::WaitStarted(w) => Some(w.clone()),
            _ => None,
        });
        assert_eq!(
            wait,
            Some(WaitStarted {
                step_id: "ok".into(),
                name: "ok".into(),
                event: crate::approval::DECIDED_EVENT.into(),
                expression: Some(format!("async.data.approval_id == \"{approval_id}\"")),
                until: t(60_000),
                approval: Some(ApprovalWait { approval_id, ask }),
            })
        );
    }

    #[test]
    fn a_sleep_in_a_parallel_group_is_waited_for_too() {
        let events = Spec::given([created()])
            .when(record(
                CallTarget::Discovery,
                1,
                CallOutcome::Ops(vec![
                    plan_op("a", false),
                    Op::Sleep {
                        id: "nap".into(),
                        name: "nap".into(),
                        until: t(10_000),
                    },
                ]),
            ))
            .events();
        let mut given = vec![created()];
        given.extend(events);
        given.push(call_finished(CallTarget::Step("a".into()), 2, 0));
        given.push(step_done("a", json!("A")));
        let state = Run::fold(given.iter());
        assert!(
            !state.due.contains_key(&CallTarget::Discovery),
            "the sleep is still running"
        );
        let state = Spec::given(given)
            .when(RunCommand::CompleteSleep {
                step_id: "nap".into(),
                at: t(10_000),
            })
            .events();
        let RunEvent::StepCompleted(done) = &state[0] else {
            panic!("{state:?}")
        };
        assert_eq!(done.step_id, "nap");
    }

    #[test]
    fn a_discovery_made_before_a_racing_step_finished_is_stale_afterwards() {
        // Race mode: b finishes (discovery 4 due), then a finishes while discovery 4 is in flight.
        let given = vec![
            created(),
            call_finished(CallTarget::Discovery, 1, 0),
            planned(&["a", "b"], true),
            call_finished(CallTarget::Step("b".into()), 3, 0),
            step_done("b", json!("B")),
            call_finished(CallTarget::Step("a".into()), 2, 0),
            step_done("a", json!("A")),
        ];
        let state = Run::fold(given.iter());
        assert_eq!(state.due[&CallTarget::Discovery].token, 5);
        Spec::given(given.clone())
            .when(record(CallTarget::Discovery, 4, CallOutcome::Ops(vec![])))
            .then_error(|e| matches!(e, RunError::StaleCall { token: 4, .. }));
        Spec::given(given)
            .when(record(
                CallTarget::Discovery,
                5,
                CallOutcome::Completed {
                    output: json!("AB"),
                },
            ))
            .events();
    }

    #[test]
    fn a_step_the_run_already_knows_is_not_planned_again() {
        let given = vec![
            created(),
            call_finished(CallTarget::Discovery, 1, 0),
            planned(&["a", "b"], true),
        ];
        let given = [
            given,
            vec![
                call_finished(CallTarget::Step("a".into()), 2, 0),
                step_done("a", json!("A")),
            ],
        ]
        .concat();
        let discovery = Run::fold(given.iter()).due[&CallTarget::Discovery].token;
        Spec::given(given)
            .when(record(
                CallTarget::Discovery,
                discovery,
                CallOutcome::Ops(vec![plan_op("b", true)]),
            ))
            .then([call_finished(CallTarget::Discovery, discovery, 0)]);
    }

    #[test]
    fn a_sleep_completes_only_when_its_time_has_come() {
        let given = [
            created(),
            call_finished(CallTarget::Discovery, 1, 0),
            RunEvent::SleepStarted(SleepStarted {
                step_id: "nap".into(),
                name: "Take a nap".into(),
                until: t(10_000),
            }),
        ];
        Spec::given(given.clone())
            .when(RunCommand::CompleteSleep {
                step_id: "nap".into(),
                at: t(9_999),
            })
            .then_error(|e| matches!(e, RunError::TooEarly { .. }));
        let state = Spec::given(given)
            .when(RunCommand::CompleteSleep {
                step_id: "nap".into(),
                at: t(10_000),
            })
            .then([RunEvent::StepCompleted(StepCompleted {
                step_id: "nap".into(),
                name: "Take a nap".into(),
                kind: StepKind::Sleep,
                output: StepOutput::Nothing,
                at: t(10_000),
            })]);
        assert!(state.waiting.is_empty());
        assert!(state.waiting_names.is_empty());
        assert!(state.due.contains_key(&CallTarget::Discovery));
    }

    #[test]
    fn a_wait_resolves_with_the_matched_event_or_nothing_on_timeout() {
        let given = [
            created(),
            call_finished(CallTarget::Discovery, 1, 0),
            RunEvent::WaitStarted(WaitStarted {
                step_id: "w".into(),
                name: "wait-shipped".into(),
                event: "order/shipped".into(),
                expression: Some("event.data.id == async.data.id".into()),
                until: t(60_000),
                approval: None,
            }),
        ];
        let matched = json!({"name": "order/shipped", "data": {"id": 1}});
        Spec::given(given.clone())
            .when(RunCommand::ResolveWait {
                step_id: "w".into(),
                event: Some(matched.clone()),
                at: t(5),
            })
            .then([RunEvent::StepCompleted(StepCompleted {
                step_id: "w".into(),
                name: "wait-shipped".into(),
                kind: StepKind::WaitForEvent,
                output: StepOutput::Data(matched),
                at: t(5),
            })]);
        Spec::given(given)
            .when(RunCommand::ResolveWait {
                step_id: "w".into(),
                event: None,
                at: t(60_000),
            })
            .then([RunEvent::StepCompleted(StepCompleted {
                step_id: "w".into(),
                name: "wait-shipped".into(),
                kind: StepKind::WaitForEvent,
                output: StepOutput::Nothing,
                at: t(60_000),
            })]);
    }

    #[test]
    fn resolving_something_the_run_is_not_waiting_for_is_refused() {
        Spec::given([created()])
            .when(RunCommand::ResolveWait {
                step_id: "nope".into(),
                event: None,
                at: t(1),
            })
            .then_error(|e| matches!(e, RunError::NotWaiting { .. }));
        Spec::given([created()])
            .when(RunCommand::CompleteSleep {
                step_id: "nope".into(),
                at: t(1),
            })
            .then_error(|e| matches!(e, RunError::NotWaiting { .. }));
    }

    #[test]
    fn an_invoke_resumes_with_the_child_result_or_error() {
        let child = Uuid::from_u128(7);
        let events = Spec::given([created()])
            .when(record(
                CallTarget::Discovery,
                1,
                CallOutcome::Ops(vec![Op::InvokeFunction {
                    id: "i".into(),
                    name: "invoke-child".into(),
                    function_id: "shop-child".into(),
                    payload: json!({"data": {"x": 1}}),
                    until: t(3_600_000),
                    child_run_id: child,
                }]),
            ))
            .events();
        let mut given = vec![created()];
        given.extend(events);
        let state = Spec::given(given.clone())
            .when(RunCommand::ResolveInvoke {
                step_id: "i".into(),
                result: Err(StepError::new("Error", "child failed")),
                at: t(9),
            })
            .then([RunEvent::StepCompleted(StepCompleted {
                step_id: "i".into(),
                name: "invoke-child".into(),
                kind: StepKind::Invoke,
                output: StepOutput::Error(StepError::new("Error", "child failed")),
                at: t(9),
            })]);
        assert!(state.waiting.is_empty());
        Spec::given(given)
            .when(RunCommand::ResolveInvoke {
                step_id: "i".into(),
                result: Ok(json!(5)),
                at: t(9),
            })
            .events();
    }

    #[test]
    fn cancel_stops_a_live_run_and_a_finished_run_stays_finished() {
        let state = Spec::given([created()])
            .when(RunCommand::Cancel {
                reason: "user".into(),
                at: t(3),
            })
            .then([RunEvent::Cancelled(RunCancelled {
                reason: "user".into(),
                at: t(3),
            })]);
        assert_eq!(state.status, RunStatus::Cancelled);
        assert!(state.due.is_empty());
        Spec::given([
            created(),
            RunEvent::Cancelled(RunCancelled {
                reason: "user".into(),
                at: t(3),
            }),
        ])
        .when(RunCommand::Cancel {
            reason: "again".into(),
            at: t(4),
        })
        .then_error(|e| *e == RunError::Finished("cancelled"));
    }

    #[test]
    fn every_event_round_trips_through_its_stored_form() {
        let events = vec![
            created(),
            call_finished(CallTarget::Step("x".into()), 3, 1),
            step_done("a", json!({"n": 1})),
            planned(&["p"], false),
            planned(&["q", "r"], true),
            RunEvent::Cancelled(RunCancelled {
                reason: "r".into(),
                at: t(1),
            }),
            RunEvent::Failed(RunFailed {
                http_status: None,
                error: StepError::new("E", "m"),
                at: t(1),
                function: None,
            }),
        ];
        for event in events {
            assert!(RunEvent::TYPES.contains(&event.event_type()));
            let payload = event.to_payload();
            assert!(payload.is_object(), "{payload}");
            let from_text =
                RunEvent::from_stored_json(event.event_type(), &payload.to_string()).unwrap();
            assert_eq!(from_text, event);
            let back = RunEvent::from_stored(event.event_type(), payload).unwrap();
            assert_eq!(back, event);
        }
        assert!(matches!(
            RunEvent::from_stored("run.exploded", json!({})),
            Err(crate::EventDecodeError::UnknownType(_))
        ));
        assert!(matches!(
            RunEvent::from_stored("run.completed", json!({"output": 1})),
            Err(crate::EventDecodeError::Payload { .. })
        ));
        assert!(RunEvent::from_stored_json("run.completed", "{\"output\": 1}").is_err());
        assert!(RunEvent::from_stored_json("run.completed", "not json").is_err());
    }

    #[test]
    fn backoff_grows_exponentially_within_its_cap() {
        let policy = BackoffPolicy {
            initial_ms: 1_000,
            max_ms: 8_000,
        };
        for seed in [0u64, 1, 999, u64::MAX] {
            let d1 = policy.delay(1, seed).num_milliseconds();
            let d3 = policy.delay(3, seed).num_milliseconds();
            let d9 = policy.delay(9, seed).num_milliseconds();
            assert!((500..=1_000).contains(&d1), "{d1}");
            assert!((2_000..=4_000).contains(&d3), "{d3}");
            assert!((4_000..=8_000).contains(&d9), "{d9}");
        }
    }
}
