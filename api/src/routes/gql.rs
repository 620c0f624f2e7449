//! `POST /v0/gql`: the part of Inngest's dev-server GraphQL API that SDK test suites
//! and tools read, answered from the same log and read models as the REST API. The
//! types and fields that exist are listed in `docs/sdk-protocol.md`.

use async_graphql::{
    Context, EmptyMutation, EmptySubscription, Enum, ID, InputObject, Object, Schema, SimpleObject,
};
use axum::Json;
use axum::extract::State;
use flowforge_domain::Decider;
use flowforge_domain::run::{Run, RunEvent, RunState, RunStatus, StepOutput};
use serde_json::Value;
use uuid::Uuid;

use super::AppState;
use crate::caller::Caller;

pub type GqlSchema = Schema<QueryRoot, EmptyMutation, EmptySubscription>;

pub fn schema() -> GqlSchema {
    Schema::build(QueryRoot, EmptyMutation, EmptySubscription)
        .limit_depth(12)
        .limit_complexity(2_000)
        .finish()
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "FunctionRunStatus", rename_items = "SCREAMING_SNAKE_CASE")]
pub enum FunctionRunStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl From<RunStatus> for FunctionRunStatus {
    fn from(status: RunStatus) -> Self {
        match status {
            RunStatus::New | RunStatus::Queued => FunctionRunStatus::Queued,
            RunStatus::Running => FunctionRunStatus::Running,
            RunStatus::Completed => FunctionRunStatus::Completed,
            RunStatus::Failed => FunctionRunStatus::Failed,
            // The protocol's statuses have no "skipped": to an SDK polling for the
            // outcome, a run flow control skipped ended without running, as if cancelled.
            RunStatus::Cancelled | RunStatus::Skipped => FunctionRunStatus::Cancelled,
        }
    }
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "StepError")]
pub struct GqlStepError {
    message: String,
    name: Option<String>,
    stack: Option<String>,
}

#[derive(SimpleObject, Clone)]
pub struct RunTraceSpanOutput {
    /// The step's result, JSON-encoded.
    data: Option<String>,
    error: Option<GqlStepError>,
}

#[derive(SimpleObject, Clone)]
pub struct RunTraceSpan {
    name: String,
    status: String,
    /// Pass to `runTraceSpanOutputByID` for the step's output.
    #[graphql(name = "outputID")]
    output_id: Option<String>,
    #[graphql(name = "childrenSpans")]
    children_spans: Vec<RunTraceSpan>,
}

#[derive(SimpleObject, Clone)]
pub struct RunTraceTrigger {
    /// The triggering events, each JSON-encoded.
    payloads: Vec<String>,
}

#[derive(SimpleObject, Clone)]
pub struct FunctionRun {
    id: ID,
    status: FunctionRunStatus,
    /// The run's output (or, when it failed, its error), JSON-encoded.
    output: Option<String>,
    #[graphql(name = "functionID")]
    function_id: String,
    #[graphql(name = "eventID")]
    event_id: Option<String>,
    trace: RunTraceSpan,
}

#[derive(SimpleObject, Clone)]
pub struct Event {
    id: ID,
    name: String,
    #[graphql(name = "functionRuns")]
    function_runs: Vec<FunctionRun>,
}

#[derive(InputObject)]
pub struct EventQuery {
    #[graphql(name = "eventId")]
    event_id: String,
}

pub struct QueryRoot;

struct Request {
    state: AppState,
    caller: Caller,
    tenant: String,
}

async fn load_run(
    request: &Request,
    run_id: &str,
) -> async_graphql::Result<Option<(Uuid, RunState)>> {
    let Ok(id) = run_id.parse::<Uuid>() else {
        return Ok(None);
    };
    let events = request
        .state
        .platform
        .store
        .read_stream(&flowforge_domain::run::stream_id(id), 1)
        .await
        .map_err(|e| async_graphql::Error::new(e.to_string()))?;
    if events.is_empty() || events.iter().any(|e| e.tenant_id() != request.tenant) {
        return Ok(None);
    }
    let mut state = Run::initial();
    for e in &events {
        let event: RunEvent = e
            .decode()
            .map_err(|e| async_graphql::Error::new(e.to_string()))?;
        state = Run::evolve(state, &event);
    }
    Ok(Some((id, state)))
}

fn function_run(id: Uuid, state: &RunState) -> FunctionRun {
    let output = match state.status {
        RunStatus::Completed => state.output.as_ref().map(Value::to_string),
        RunStatus::Failed => state
            .error
            .as_ref()
            .map(|e| flowforge_engine::protocol::error_json(e).to_string()),
        _ => None,
    };
    let children_spans = state
        .stack
        .iter()
        .filter_map(|step_id| state.steps.get(step_id).map(|step| (step_id, step)))
        .map(|(step_id, step)| RunTraceSpan {
            name: step.name.clone(),
            status: match step.output {
                StepOutput::Error(_) => "FAILED".into(),
                _ => "COMPLETED".into(),
            },
            output_id: Some(format!("{id}:{step_id}")),
            children_spans: Vec::new(),
        })
        .collect();
    FunctionRun {
        id: ID(id.to_string()),
        status: state.status.into(),
        output,
        function_id: state
            .function
            .as_ref()
            .map(|f| f.function_id.clone())
            .unwrap_or_default(),
        event_id: state
            .events
            .first()
            .and_then(|e| e.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        trace: RunTraceSpan {
            name: state
                .function
                .as_ref()
                .map(|f| f.function_id.clone())
                .unwrap_or_default(),
            status: state.status.as_str().to_uppercase(),
            output_id: None,
            children_spans,
        },
    }
}

#[Object]
impl QueryRoot {
    /// A run. Not found while the run does not exist yet.
    async fn run(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "runID")] run_id: String,
    ) -> async_graphql::Result<FunctionRun> {
        let request = ctx.data::<Request>()?;
        match load_run(request, &run_id).await? {
            Some((id, state)) => Ok(function_run(id, &state)),
            None => Err(async_graphql::Error::new(format!("run {run_id} not found"))),
        }
    }

    /// The events that triggered a run.
    async fn run_trigger(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "runID")] run_id: String,
    ) -> async_graphql::Result<RunTraceTrigger> {
        let request = ctx.data::<Request>()?;
        match load_run(request, &run_id).await? {
            Some((_, state)) => Ok(RunTraceTrigger {
                payloads: state.events.iter().map(Value::to_string).collect(),
            }),
            None => Err(async_graphql::Error::new(format!("run {run_id} not found"))),
        }
    }

    /// A step's output, by the `outputID` of its span.
    #[graphql(name = "runTraceSpanOutputByID")]
    async fn run_trace_span_output_by_id(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "outputID")] output_id: String,
    ) -> async_graphql::Result<RunTraceSpanOutput> {
        let request = ctx.data::<Request>()?;
        let (run_id, step_id) = output_id
            .split_once(':')
            .ok_or_else(|| async_graphql::Error::new("not an output id"))?;
        let Some((_, state)) = load_run(request, run_id).await? else {
            return Err(async_graphql::Error::new(format!("run {run_id} not found")));
        };
        let step = state
            .steps
            .get(step_id)
            .ok_or_else(|| async_graphql::Error::new(format!("no step {step_id}")))?;
        Ok(match &step.output {
            StepOutput::Data(data) => RunTraceSpanOutput {
                data: Some(data.to_string()),
                error: None,
            },
            StepOutput::Nothing => RunTraceSpanOutput {
                data: Some("null".into()),
                error: None,
            },
            StepOutput::Error(error) => RunTraceSpanOutput {
                data: None,
                error: Some(GqlStepError {
                    message: error.message.clone(),
                    name: Some(error.name.clone()),
                    stack: error.stack().map(str::to_owned),
                }),
            },
        })
    }

    /// An event, with the runs it triggered.
    async fn event(
        &self,
        ctx: &Context<'_>,
        query: EventQuery,
    ) -> async_graphql::Result<Option<Event>> {
        let request = ctx.data::<Request>()?;
        let gql_error = |e: crate::error::ApiError| async_graphql::Error::new(e.body.message);
        let reads = request.state.platform.reads(&request.caller);
        let Some(row) = reads.event(&query.event_id).await.map_err(gql_error)? else {
            return Ok(None);
        };
        let runs = reads
            .runs_for_event(&query.event_id)
            .await
            .map_err(gql_error)?;
        let mut function_runs = Vec::new();
        for run in runs {
            if let Some((id, state)) = load_run(request, &run.run_id).await? {
                function_runs.push(function_run(id, &state));
            }
        }
        Ok(Some(Event {
            id: ID(query.event_id.clone()),
            name: row.name,
            function_runs,
        }))
    }
}

/// `POST /v0/gql`
pub async fn handle(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<async_graphql::Request>,
) -> Json<async_graphql::Response> {
    let schema = state.gql.clone();
    let request = request.data(Request {
        tenant: caller.tenant().to_owned(),
        caller,
        state,
    });
    Json(schema.execute(request).await)
}
