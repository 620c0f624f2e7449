//! The command side: load, decide, append with the expected version, re-decide on conflict.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use flowforge_commands::{CommandError, CommandHandler};
use flowforge_domain::run::{CallOutcome, CallTarget, Op, Run, RunCommand, RunError, RunStatus};
use flowforge_store::{ExpectedVersion, NewEvent};
use flowforge_tests::backend::TestBackend;
use flowforge_tests::fixtures::{create, metadata};
use serde_json::json;
use uuid::Uuid;

fn planned(ids: &[&str]) -> CallOutcome {
    CallOutcome::Ops(
        ids.iter()
            .map(|id| Op::StepPlanned {
                id: (*id).into(),
                name: (*id).into(),
                race: false,
            })
            .collect(),
    )
}

fn record(target: CallTarget, token: u64, outcome: CallOutcome) -> RunCommand {
    RunCommand::RecordCall {
        target,
        token,
        outcome,
        started_at: Utc::now(),
        finished_at: Utc::now(),
        request_version: Some(2),
    }
}

/// Two parallel steps finish at the same moment, each recorded by its own executor:
/// both must be memoized, whatever order the appends land in.
async fn two_concurrent_commands_on_one_stream_both_take_effect(backend: TestBackend) {
    let store = backend.store().await;
    let handler = CommandHandler::new(store.clone());
    let meta = metadata("t1");
    for round in 0..10 {
        let run_id = Uuid::now_v7();
        let stream = flowforge_domain::run::stream_id(run_id);
        let state = handler
            .handle::<Run>(&stream, &meta, || create(run_id, "f"))
            .await
            .unwrap()
            .state;
        let token = state.due[&CallTarget::Discovery].token;
        let state = handler
            .handle::<Run>(&stream, &meta, || {
                record(CallTarget::Discovery, token, planned(&["a", "b"]))
            })
            .await
            .unwrap()
            .state;
        let a = state.due[&CallTarget::Step("a".into())].token;
        let b = state.due[&CallTarget::Step("b".into())].token;
        let step = |id: &'static str, token: u64| {
            let handler = handler.clone();
            let stream = stream.clone();
            let meta = meta.clone();
            tokio::spawn(async move {
                handler
                    .handle::<Run>(&stream, &meta, || {
                        record(
                            CallTarget::Step(id.into()),
                            token,
                            CallOutcome::Ops(vec![Op::StepRun {
                                id: id.into(),
                                name: id.into(),
                                output: json!(id),
                            }]),
                        )
                    })
                    .await
            })
        };
        let (ra, rb) = tokio::join!(step("a", a), step("b", b));
        ra.unwrap().unwrap();
        rb.unwrap().unwrap();
        let loaded = handler.load::<Run>(&stream).await.unwrap();
        assert_eq!(loaded.state.steps.len(), 2, "round {round}");
        assert_eq!(
            loaded.state.steps["a"].output,
            flowforge_domain::run::StepOutput::Data(json!("a"))
        );
        assert_eq!(
            loaded.state.steps["b"].output,
            flowforge_domain::run::StepOutput::Data(json!("b"))
        );
        // created, call+planned, and two (call_finished + step_completed) pairs
        assert_eq!(loaded.version, 1 + 2 + 2 + 2);
    }
}

/// Two cancels race: exactly one cancels, the other is told the run is already cancelled.
async fn a_command_that_loses_the_race_is_re_decided_on_the_new_state(backend: TestBackend) {
    let store = backend.store().await;
    let handler = CommandHandler::new(store.clone());
    let meta = metadata("t1");
    let run_id = Uuid::now_v7();
    let stream = flowforge_domain::run::stream_id(run_id);
    handler
        .handle::<Run>(&stream, &meta, || create(run_id, "f"))
        .await
        .unwrap();
    let cancel = || {
        let handler = handler.clone();
        let stream = stream.clone();
        let meta = meta.clone();
        tokio::spawn(async move {
            handler
                .handle::<Run>(&stream, &meta, || RunCommand::Cancel {
                    reason: "race".into(),
                    at: Utc::now(),
                })
                .await
        })
    };
    let results = [cancel(), cancel(), cancel(), cancel()];
    let mut cancelled = 0;
    let mut refused = 0;
    for r in results {
        match r.await.unwrap() {
            Ok(h) => {
                assert_eq!(h.state.status, RunStatus::Cancelled);
                cancelled += 1;
            }
            Err(CommandError::Domain(RunError::Finished("cancelled"))) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((cancelled, refused), (1, 3));
    assert_eq!(store.read_stream(&stream, 1).await.unwrap().len(), 2);
}

async fn contention_beyond_the_retry_budget_is_reported_not_swallowed(backend: TestBackend) {
    let store = backend.store().await;
    let handler = CommandHandler::new(store.clone()).with_max_attempts(1);
    let meta = metadata("t1");
    let run_id = Uuid::now_v7();
    let stream = flowforge_domain::run::stream_id(run_id);
    let loaded_before = {
        handler
            .handle::<Run>(&stream, &meta, || create(run_id, "f"))
            .await
            .unwrap();
        handler.load::<Run>(&stream).await.unwrap()
    };
    // Someone else appends after we loaded.
    store
        .append(
            &stream,
            "run",
            ExpectedVersion::Exact(1),
            vec![NewEvent::new(
                "run.cancelled",
                json!({"reason": "other writer", "at": Utc::now()}),
                meta.clone(),
            )],
        )
        .await
        .unwrap();
    let result = handler
        .handle_from::<Run>(&stream, &meta, Some(loaded_before), || RunCommand::Cancel {
            reason: "late".into(),
            at: Utc::now(),
        })
        .await;
    assert!(
        matches!(result, Err(CommandError::Contention { attempts: 1, .. })),
        "{result:?}"
    );
    // With a retry budget, the stale state costs a reload and the decider refuses correctly.
    let result = CommandHandler::new(store.clone())
        .handle::<Run>(&stream, &meta, || RunCommand::Cancel {
            reason: "late".into(),
            at: Utc::now(),
        })
        .await;
    assert!(
        matches!(
            result,
            Err(CommandError::Domain(RunError::Finished("cancelled")))
        ),
        "{result:?}"
    );
}

async fn a_stream_with_an_unreadable_event_is_reported(backend: TestBackend) {
    let store = backend.store().await;
    let handler = CommandHandler::new(store.clone());
    let stream = format!("run-{}", Uuid::now_v7());
    store
        .append(
            &stream,
            "run",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("run.exploded", json!({}), metadata("t1"))],
        )
        .await
        .unwrap();
    let result = handler.load::<Run>(&stream).await;
    assert!(
        matches!(result, Err(CommandError::Decode { .. })),
        "{result:?}"
    );
}

/// `handle_new` skips reading a stream it expects to be new; when the stream exists
/// after all, the command is decided against what it holds, not against nothing.
async fn a_new_stream_command_on_an_existing_stream_is_decided_on_what_it_holds(
    backend: TestBackend,
) {
    let store = backend.store().await;
    let handler = CommandHandler::new(store.clone());
    let meta = metadata("t1");
    let run_id = Uuid::now_v7();
    let stream = flowforge_domain::run::stream_id(run_id);
    let created = handler
        .handle_new::<Run>(&stream, &meta, || create(run_id, "f"))
        .await
        .unwrap();
    assert_eq!(created.stream_version, 1);
    assert_eq!(created.state.status, RunStatus::Queued);
    let again = handler
        .handle_new::<Run>(&stream, &meta, || create(run_id, "f"))
        .await;
    assert!(
        matches!(again, Err(CommandError::Domain(RunError::AlreadyExists))),
        "{again:?}"
    );
    assert_eq!(
        store.read_stream(&stream, 1).await.unwrap().len(),
        1,
        "the run was created once"
    );
}

flowforge_tests::on_both_backends!(
    a_new_stream_command_on_an_existing_stream_is_decided_on_what_it_holds,
    two_concurrent_commands_on_one_stream_both_take_effect,
    a_command_that_loses_the_race_is_re_decided_on_the_new_state,
    contention_beyond_the_retry_budget_is_reported_not_swallowed,
    a_stream_with_an_unreadable_event_is_reported,
);
