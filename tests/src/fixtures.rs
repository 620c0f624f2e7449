//! Runs driven through the real command handler, for tests and benchmarks of the
//! read side.

use chrono::{Duration, Utc};
use flowforge_commands::{CommandError, CommandHandler};
use flowforge_domain::run::{
    BackoffPolicy, CallOutcome, CallTarget, CreateRun, FunctionRef, Op, Run, RunCommand, RunError,
    StepError,
};
use flowforge_domain::{Actor, EventMetadata, TenantId};
use serde_json::json;
use uuid::Uuid;

pub fn metadata(tenant: &str) -> EventMetadata {
    EventMetadata::new(TenantId::new(tenant), Actor::system("tests"))
}

pub fn create(run_id: Uuid, function: &str) -> RunCommand {
    RunCommand::Create(CreateRun {
        run_id,
        function: FunctionRef {
            app_id: "app".into(),
            function_id: function.into(),
            version: 1,
        },
        events: vec![json!({"id": format!("evt-{run_id}"), "name": "test/event", "data": {}})],
        max_attempts: 3,
        backoff: BackoffPolicy::default(),
        replay_of: None,
        parent: None,
        environment: Default::default(),
        skip: None,
        hold: None,
        at: Utc::now(),
    })
}

fn record(target: CallTarget, token: u64, outcome: CallOutcome) -> RunCommand {
    let now = Utc::now();
    RunCommand::RecordCall {
        target,
        token,
        outcome,
        started_at: now,
        finished_at: now,
        request_version: Some(2),
    }
}

/// Drives one run through a lifecycle picked by `shape` (steps, a retried failure,
/// completion, failure or cancellation); returns how many steps it completed.
pub async fn drive_run(
    handler: &CommandHandler,
    tenant: &str,
    run_id: Uuid,
    shape: u64,
) -> Result<u64, CommandError<RunError>> {
    let meta = metadata(tenant);
    let stream = flowforge_domain::run::stream_id(run_id);
    let function = format!("fn-{}", shape % 3);
    let mut state = handler
        .handle::<Run>(&stream, &meta, || create(run_id, &function))
        .await?
        .state;
    let steps = shape % 4;
    for i in 0..steps {
        let token = state.due[&CallTarget::Discovery].token;
        let op = if i == 1 && shape.is_multiple_of(5) {
            Op::StepError {
                id: format!("s{i}"),
                name: format!("step {i}"),
                error: StepError::new("Error", "transient"),
                retriable: true,
                retry_after: None,
            }
        } else {
            Op::StepRun {
                id: format!("s{i}"),
                name: format!("step {i}"),
                output: json!({"i": i, "shape": shape}),
            }
        };
        state = handler
            .handle::<Run>(&stream, &meta, || {
                record(
                    CallTarget::Discovery,
                    token,
                    CallOutcome::Ops(vec![op.clone()]),
                )
            })
            .await?
            .state;
    }
    let finish = match shape % 7 {
        0 => Some(RunCommand::Cancel {
            reason: "test".into(),
            at: Utc::now() + Duration::milliseconds(1),
        }),
        1 => {
            let token = state.due[&CallTarget::Discovery].token;
            Some(record(
                CallTarget::Discovery,
                token,
                CallOutcome::Failed {
                    status: None,
                    error: StepError::new("Error", "fatal"),
                    retriable: false,
                    retry_after: None,
                },
            ))
        }
        6 => None,
        _ => {
            let token = state.due[&CallTarget::Discovery].token;
            Some(record(
                CallTarget::Discovery,
                token,
                CallOutcome::Completed {
                    output: json!({"ok": shape}),
                },
            ))
        }
    };
    if let Some(finish) = finish {
        handler
            .handle::<Run>(&stream, &meta, || finish.clone())
            .await?;
    }
    Ok(state.steps.len() as u64)
}
