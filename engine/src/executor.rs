//! Executors: take a job, call the app, record what it answered.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use flowforge_commands::{CommandError, Loaded};
use flowforge_domain::run::{CallOutcome, Op, Run, RunCommand, RunError, RunState, StepError};
use flowforge_domain::{Actor, EventMetadata, TenantId};
use tracing::Instrument;
use uuid::Uuid;

use crate::EngineContext;
use crate::ai_gateway;
use crate::metrics::Metrics;
use crate::protocol::{self, CallResponse};
use crate::queue::Job;
use crate::space::Space;

/// Largest answer accepted from an app.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

pub async fn work(context: Arc<EngineContext>, worker: usize) {
    loop {
        let delivery = match context.queue.dequeue().await {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::error!(worker, %error, "work queue failed; executor stopping");
                return;
            }
        };
        Metrics::count(&context.metrics.jobs_delivered);
        if delivery.redelivered {
            Metrics::count(&context.metrics.jobs_redelivered);
        }
        let job = delivery.job.clone();
        tracing::debug!(run_id = %job.run_id, token = job.token, "executor: job delivered");
        match execute(&context, &job).await {
            Ok(recorded) => {
                delivery.ack().await;
                Metrics::count(&context.metrics.jobs_acked);
                continue_run(&context, recorded).await;
            }
            // The log could not be read: deliver the job again a little later.
            Err(NotNow) => delivery.retry_later(RETRY_LATER).await,
        }
    }
}

/// A call's outcome as this worker recorded it.
pub struct Recorded {
    job: Job,
    loaded: Loaded<RunState>,
    /// The run was held (see [`crate::queue::WorkQueue::hold_run`]) before the outcome
    /// was appended, so that the next call the outcome makes due stays in this process
    /// until the worker has decided whether to make it.
    held: bool,
}

/// Calls in a row one worker makes for one run before it goes back to the queue (so a
/// long run cannot hold a worker while other tenants wait).
const MAX_CONTINUATIONS: usize = 16;

/// The fast path: the worker that just committed a call's outcome runs the run's next
/// call itself if it is due now, instead of waiting for the scheduler to read the
/// outcome back from the log and queue it. It claims the job first, so the scheduler's
/// dispatch of the same job (which still happens: the log stays the source of work)
/// is a no-op.
async fn continue_run(context: &EngineContext, mut next: Option<Recorded>) {
    let mut continued = 0;
    while let Some(recorded) = next.take() {
        let claimed = (continued < MAX_CONTINUATIONS)
            .then(|| due_now(context, &recorded))
            .flatten()
            .filter(|job| context.queue.claim(job));
        if recorded.held {
            // Other due calls (parallel steps) go to other workers, now.
            queue_kept_back(context, recorded.job.run_id).await;
        }
        let Some(job) = claimed else {
            return;
        };
        continued += 1;
        let executed = execute(context, &job).await;
        context.queue.release(&job);
        next = match executed {
            Ok(next) => next,
            Err(NotNow) => {
                // Back to the queue: the scheduler's dispatch of it was absorbed by the claim.
                let _ = context.queue.enqueue(job).await;
                return;
            }
        };
    }
}

/// The run's next call, if it is due now and this worker may make it.
fn due_now(context: &EngineContext, recorded: &Recorded) -> Option<Job> {
    let now = Utc::now();
    let (target, due) = recorded
        .loaded
        .state
        .due
        .iter()
        .find(|(_, due)| due.not_before.is_none_or(|t| t <= now))?;
    // A concurrency limit is counted by the scheduler on the calls it queues: a call of
    // a limited function must go through it.
    if limited(context, &recorded.job.tenant, &recorded.loaded.state) {
        return None;
    }
    Some(Job {
        tenant: recorded.job.tenant.clone(),
        run_id: recorded.job.run_id,
        target: target.clone(),
        token: due.token,
    })
}

/// Queues the jobs the scheduler derived for a held run that this worker did not take,
/// if the run still wants them (by the latest state this process knows; a job it knows
/// nothing of is queued, and the executor that takes it finds out).
async fn queue_kept_back(context: &EngineContext, run_id: Uuid) {
    let kept = context.queue.release_run(run_id);
    if kept.is_empty() {
        return;
    }
    let latest = context.cache.get(run_id);
    for (job, attempt) in kept {
        let still_due = latest
            .as_ref()
            .is_none_or(|loaded| loaded.state.holds_call(&job.target, job.token));
        if !still_due {
            continue;
        }
        let queued = if attempt == 0 {
            context.queue.enqueue(job).await
        } else {
            context.queue.requeue(job, attempt).await
        };
        if let Err(error) = queued {
            // The reconciler queues it again when its lease runs out.
            tracing::warn!(%run_id, %error, "cannot queue a kept-back job");
        }
    }
}

fn limited(context: &EngineContext, tenant: &str, state: &RunState) -> bool {
    let Some(function) = &state.function else {
        return true;
    };
    let space = Space::new(tenant, state.environment);
    context
        .registry
        .version(&space, &function.function_id, function.version)
        .is_none_or(|f| {
            f.spec
                .flow_control
                .get("concurrency")
                .is_some_and(|c| !c.is_null())
        })
}

/// The log (or the registry in it) could not be read: the job is neither done nor
/// stale, and should be tried again.
#[derive(Debug)]
pub struct NotNow;

/// How long a job that met an unreadable log waits before it is delivered again.
const RETRY_LATER: std::time::Duration = std::time::Duration::from_secs(1);

/// Makes the call a job names, if the run still wants it, and records the outcome.
/// Returns the run's state after the outcome when this worker recorded it.
pub async fn execute(context: &EngineContext, job: &Job) -> Result<Option<Recorded>, NotNow> {
    // `instrument`, not `span.enter()`: a guard held across an await leaves the span
    // entered on whatever task the thread polls next, and tracing-subscriber panics
    // when such a span closes (it killed the shared log tail under debug logging).
    let span = tracing::debug_span!("executor.call", run_id = %job.run_id, target = ?job.target, token = job.token);
    execute_call(context, job).instrument(span).await
}

async fn execute_call(context: &EngineContext, job: &Job) -> Result<Option<Recorded>, NotNow> {
    let stream = flowforge_domain::run::stream_id(job.run_id);
    let load = || async {
        context.commands.load::<Run>(&stream).await.map_err(|error| {
            tracing::warn!(run_id = %job.run_id, %error, "cannot load the run; trying the job again later");
            NotNow
        })
    };
    let holds_job = |loaded: &Loaded<RunState>| loaded.state.holds_call(&job.target, job.token);
    let early = |loaded: &Loaded<RunState>| {
        loaded
            .state
            .due
            .get(&job.target)
            .is_some_and(|d| d.not_before.is_some_and(|t| t > Utc::now()))
    };
    let loaded = match context.cache.get(job.run_id) {
        // The cache may be behind the log (another process appended since): a job it
        // does not know may be newer than it, and a start it has as later may have
        // moved (a full batch starts at once), so only the stream can say no.
        Some(cached) if holds_job(&cached) && !early(&cached) => cached,
        _ => load().await?,
    };
    let Some(due) = loaded
        .state
        .due
        .get(&job.target)
        .filter(|d| d.token == job.token)
        .cloned()
    else {
        Metrics::count(&context.metrics.jobs_stale);
        return Ok(None); // stale: the run moved on
    };
    if due.not_before.is_some_and(|t| t > Utc::now()) {
        // Early (its start moved after it was queued): try again later rather than
        // drop it, as the queue may refuse the same job again as a duplicate.
        return Err(NotNow);
    }
    let Some(function_ref) = loaded.state.function.clone() else {
        return Ok(None);
    };
    let space = Space::new(&job.tenant, loaded.state.environment);
    let mut function =
        context
            .registry
            .version(&space, &function_ref.function_id, function_ref.version);
    if function.is_none() {
        // This process's registry may be behind the log (another process took the
        // sync); only the log can say the function is gone.
        if let Err(error) = context.registry.load(&*context.store).await {
            tracing::warn!(%error, "cannot reload the function registry; trying the job again later");
            return Err(NotNow);
        }
        function =
            context
                .registry
                .version(&space, &function_ref.function_id, function_ref.version);
    }
    let signing_key = match context.signing_keys.for_space(&space).await {
        Ok(key) => key,
        Err(error) => {
            // Never call an app unsigned (or with the wrong key) because a lookup failed.
            tracing::warn!(%error, %space, "cannot read the signing key; trying the job again later");
            return Err(NotNow);
        }
    };

    let started_at = Utc::now();
    let (outcome, request_version) = match function {
        None => (
            CallOutcome::Failed {
                status: None,
                error: StepError::new(
                    "FunctionNotFound",
                    format!(
                        "function `{}` is no longer registered by any app",
                        function_ref.function_id
                    ),
                ),
                retriable: false,
                retry_after: None,
            },
            None,
        ),
        Some(function) => {
            call_app(
                context,
                &loaded,
                &function.spec.url,
                job,
                due.attempt,
                signing_key.as_deref(),
            )
            .await
        }
    };
    let finished_at = Utc::now();
    Metrics::count(&context.metrics.calls);
    context
        .metrics
        .call_seconds
        .observe((finished_at - started_at).num_microseconds().unwrap_or(0) as f64 / 1e6);
    let recorded = record(
        context,
        job,
        loaded,
        outcome,
        (started_at, finished_at),
        request_version,
    )
    .await;
    Ok(recorded)
}

async fn call_app(
    context: &EngineContext,
    loaded: &Loaded<flowforge_domain::run::RunState>,
    url: &str,
    job: &Job,
    attempt: u32,
    signing_key: Option<&str>,
) -> (CallOutcome, Option<u32>) {
    let body = protocol::call_body(&loaded.state, &job.target, attempt);
    let encode = |body: &serde_json::Value| match signing_key {
        Some(_) => protocol::canonical_bytes(body),
        None => body.to_string().into_bytes(),
    };
    let mut bytes = encode(&body);
    if bytes.len() > context.config.max_call_bytes {
        bytes = encode(&protocol::use_api_body(&body));
    }
    let mut request = context
        .http
        .post(protocol::call_url(url, &job.target))
        .timeout(context.config.call_timeout)
        .header("content-type", "application/json")
        .header("x-inngest-server-kind", context.config.server_kind)
        .header("x-inngest-req-version", "2")
        .header(
            "user-agent",
            concat!("flowforge/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(key) = signing_key {
        request = request.header(
            "x-inngest-signature",
            protocol::sign(key, &bytes, Utc::now().timestamp()),
        );
    }
    let started = Instant::now();
    let response = request.body(bytes).send().await;
    let mut request_version = None;
    let outcome = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let no_retry =
                header("x-inngest-no-retry").is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let retry_after = header("retry-after");
            request_version = header("x-inngest-req-version").and_then(|v| v.trim().parse().ok());
            match read_limited(response).await {
                Ok(body) => {
                    let outcome = protocol::parse_response(
                        &CallResponse {
                            status,
                            no_retry,
                            retry_after: retry_after.as_deref(),
                            body: &body,
                        },
                        Utc::now(),
                        Uuid::now_v7,
                    );
                    match outcome {
                        CallOutcome::Ops(ops) if status == 206 => {
                            infer_for_app(context, &job.tenant, &loaded.state, &body, ops).await
                        }
                        other => other,
                    }
                }
                Err(message) => CallOutcome::Failed {
                    status: None,
                    error: StepError::new("ResponseError", message),
                    retriable: true,
                    retry_after: None,
                },
            }
        }
        Err(error) => CallOutcome::Failed {
            status: None,
            error: StepError::new(
                if error.is_timeout() {
                    "TimeoutError"
                } else {
                    "NetworkError"
                },
                format!("calling the app failed: {error}"),
            ),
            retriable: true,
            retry_after: None,
        },
    };
    tracing::debug!(
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "app answered"
    );
    (outcome, request_version)
}

/// Makes the LLM requests the app's answer asked for (`step.ai.infer`), concurrently,
/// and adds their outcomes to the answer's ops. Each request is given the knowledge of
/// the skills enabled for the function (their newest versions now), and its outcome
/// names those versions, so the run records them.
async fn infer_for_app(
    context: &EngineContext,
    tenant: &str,
    state: &RunState,
    answer: &[u8],
    mut ops: Vec<Op>,
) -> CallOutcome {
    let requests = match ai_gateway::requests_in(answer) {
        Ok(requests) => requests,
        Err(message) => return protocol::protocol_error(message),
    };
    let mut pending: Vec<_> = requests
        .into_iter()
        .filter(|r| !state.steps.contains_key(&r.step_id))
        .collect();
    if pending.is_empty() {
        return CallOutcome::Ops(ops);
    }
    let knowledge = match enabled_skills(context, tenant, state).await {
        Ok(knowledge) => knowledge,
        Err(message) => {
            // Never ask a model without the knowledge it was set up with: the step
            // fails this attempt and is retried.
            ops.extend(pending.iter().map(|r| Op::StepError {
                id: r.step_id.clone(),
                name: r.name.clone(),
                error: StepError::new("SkillsUnavailable", message.clone()),
                retriable: true,
                retry_after: None,
            }));
            return CallOutcome::Ops(ops);
        }
    };
    let given: Vec<bool> = pending
        .iter_mut()
        .map(|r| r.give_knowledge(&knowledge.text))
        .collect();
    let answers = futures::future::join_all(
        pending
            .iter()
            .map(|r| ai_gateway::infer(&context.http, r, context.config.call_timeout)),
    )
    .await;
    ops.extend(answers.into_iter().zip(given).map(|(op, given)| match op {
        Op::AiResponse {
            id, name, output, ..
        } if given => Op::AiResponse {
            id,
            name,
            output,
            skills: knowledge.used.clone(),
        },
        other => other,
    }));
    CallOutcome::Ops(ops)
}

/// The knowledge of the skills enabled for the run's function.
async fn enabled_skills(
    context: &EngineContext,
    tenant: &str,
    state: &RunState,
) -> Result<crate::skills::SkillKnowledge, String> {
    let Some(function) = &state.function else {
        return Ok(Default::default());
    };
    let names = context
        .commands
        .load::<flowforge_domain::skill::FunctionSkills>(
            &flowforge_domain::skill::function_skills_stream_id(tenant, &function.function_id),
        )
        .await
        .map_err(|e| format!("cannot read the function's skills: {e}"))?
        .state;
    if names.is_empty() {
        return Ok(Default::default());
    }
    crate::skills::knowledge(context, tenant, &names).await
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!(
                "the app's answer is larger than {MAX_RESPONSE_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn record(
    context: &EngineContext,
    job: &Job,
    loaded: Loaded<RunState>,
    outcome: CallOutcome,
    (started_at, finished_at): (chrono::DateTime<Utc>, chrono::DateTime<Utc>),
    request_version: Option<u32>,
) -> Option<Recorded> {
    let stream = flowforge_domain::run::stream_id(job.run_id);
    // On a shared queue the next call can stay in this process only if this process's
    // scheduler is the one that would queue it.
    let held = context.queue.shared() && context.is_scheduling();
    if held {
        context.queue.hold_run(job.run_id);
    }
    let meta = EventMetadata::new(TenantId::new(job.tenant.clone()), Actor::system("executor"))
        .in_environment(loaded.state.environment)
        .with_instance(context.config.instance.clone());
    let mut backoff = std::time::Duration::from_millis(50);
    let mut known = Some(loaded);
    loop {
        let result = context
            .commands
            .handle_from::<Run>(&stream, &meta, known.take(), || RunCommand::RecordCall {
                target: job.target.clone(),
                token: job.token,
                outcome: outcome.clone(),
                started_at,
                finished_at,
                request_version,
            })
            .await;
        match result {
            Ok(handled) => {
                context
                    .cache
                    .put(job.run_id, handled.state.clone(), handled.stream_version);
                return Some(Recorded {
                    job: job.clone(),
                    loaded: Loaded {
                        state: handled.state,
                        version: handled.stream_version,
                    },
                    held,
                });
            }
            Err(CommandError::Domain(RunError::StaleCall { .. } | RunError::Finished(_))) => {
                if held {
                    queue_kept_back(context, job.run_id).await;
                }
                return None;
            }
            Err(CommandError::Store(e)) if e.is_transient() => {
                // The app has answered; keep trying to record it rather than calling again.
                tracing::warn!(run_id = %job.run_id, error = %e, "cannot record a call yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
            Err(error) => {
                tracing::error!(run_id = %job.run_id, %error, "cannot record a call");
                if held {
                    queue_kept_back(context, job.run_id).await;
                }
                return None;
            }
        }
    }
}
