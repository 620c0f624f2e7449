//! Approvals, the engine's side: asking when a run starts an approval wait, deciding
//! for people (the API), and timing out when the wait ends first.
//!
//! A decision is announced as an ordinary event, `flowforge/approval.decided`, whose
//! id is derived from the approval: the waiting run resumes on it like on any awaited
//! event, functions can trigger on it, and announcing twice records it once. The
//! approval aggregate decides which of "decided" and "timed out" came first, and the
//! run always resumes with that one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use flowforge_commands::CommandError;
use flowforge_domain::EventMetadata;
use flowforge_domain::approval::{
    self, Approval, ApprovalCommand, ApprovalError, ApprovalOrigin, ApprovalState, ApprovalStatus,
};
use flowforge_domain::event::EventSource;
use flowforge_domain::run::{ApprovalWait, RunCommand};
use uuid::Uuid;

use crate::{EngineContext, NewIncomingEvent, ingest, scheduler};

#[derive(Debug, thiserror::Error)]
pub enum ApprovalDecideError {
    #[error(transparent)]
    Domain(#[from] ApprovalError),
    #[error("{0} may not decide this approval; it asks {1}")]
    NotAnAssignee(String, String),
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

/// Records that a run asks for a decision. Asking again is harmless.
pub(crate) async fn request(
    context: &EngineContext,
    meta: &EventMetadata,
    origin: ApprovalOrigin,
    wait: ApprovalWait,
    expires_at: DateTime<Utc>,
) -> Result<(), String> {
    let stream = approval::stream_id(wait.approval_id);
    retrying(|| async {
        context
            .commands
            .handle::<Approval>(&stream, meta, || ApprovalCommand::Request {
                approval_id: wait.approval_id,
                ask: wait.ask.clone(),
                origin: origin.clone(),
                expires_at,
                at: Utc::now(),
            })
            .await
            .map(|_| ())
    })
    .await
}

/// The wait ended: time the approval out unless someone decided first, and resume the
/// run with whichever outcome the approval holds.
pub(crate) async fn expire(
    context: &EngineContext,
    meta: &EventMetadata,
    run_id: Uuid,
    step_id: String,
    approval_id: Uuid,
) -> Result<(), String> {
    let stream = approval::stream_id(approval_id);
    let state = retrying(|| async {
        context
            .commands
            .handle::<Approval>(&stream, meta, || ApprovalCommand::TimeOut {
                at: Utc::now(),
            })
            .await
            .map(|handled| handled.state)
    })
    .await;
    let event = match state {
        Ok(Some(state)) if state.status != ApprovalStatus::TimedOut => {
            Some(decided_event(&state).to_sdk_json())
        }
        // Timed out, or never recorded (the request could not be stored): the wait ends
        // as every wait does on timeout.
        _ => None,
    };
    scheduler::run_command(
        context,
        meta,
        run_id,
        RunCommand::ResolveWait {
            step_id,
            event,
            at: Utc::now(),
        },
    )
    .await
}

/// A person decides. Returns the approval as decided; deciding again the same way is
/// answered with the recorded decision (and announced again, in case the first
/// announcement was lost), deciding otherwise is refused.
pub async fn decide(
    context: &EngineContext,
    meta: &EventMetadata,
    approval_id: Uuid,
    approved: bool,
    comment: Option<String>,
) -> Result<ApprovalState, ApprovalDecideError> {
    let by = meta.actor.id.clone();
    let stream = approval::stream_id(approval_id);
    let loaded = context
        .commands
        .load::<Approval>(&stream)
        .await
        .map_err(command_error)?;
    let current = loaded.state.ok_or(ApprovalError::NotFound)?;
    if !current.may_be_decided_by(&by) {
        return Err(ApprovalDecideError::NotAnAssignee(
            by,
            current.ask.assignees.join(", "),
        ));
    }
    let state = match current.decision.as_ref() {
        Some(d) if d.by == by && d.approved == approved => current,
        _ => context
            .commands
            .handle::<Approval>(&stream, meta, || ApprovalCommand::Decide {
                approved,
                by: by.clone(),
                comment: comment.clone(),
                at: Utc::now(),
            })
            .await
            .map_err(command_error)?
            .state
            .ok_or(ApprovalError::NotFound)?,
    };
    announce(context, meta, &state).await?;
    Ok(state)
}

async fn announce(
    context: &EngineContext,
    meta: &EventMetadata,
    state: &ApprovalState,
) -> Result<(), ApprovalDecideError> {
    let event = decided_event(state);
    ingest::record(
        context,
        meta,
        vec![NewIncomingEvent {
            id: Some(event.id),
            name: event.name,
            data: event.data,
            ts: None,
            user: None,
            v: None,
        }],
        EventSource::Api,
    )
    .await
    .map(|_| ())
    .map_err(|e| match e {
        ingest::IngestError::Unavailable(e) => ApprovalDecideError::Unavailable(e),
        ingest::IngestError::Failed(e) => ApprovalDecideError::Failed(e),
    })
}

/// The announcement of a decision, with an id that is the same every time.
fn decided_event(state: &ApprovalState) -> flowforge_domain::event::EventReceived {
    let at = state
        .decision
        .as_ref()
        .map_or(state.expires_at, |decision| decision.at);
    flowforge_domain::event::EventReceived {
        id: format!("approval-decided-{}", state.approval_id),
        name: approval::DECIDED_EVENT.to_owned(),
        data: state.outcome(),
        ts: at.timestamp_millis(),
        user: None,
        v: None,
        source: EventSource::Api,
        received_at: at,
    }
}

fn command_error(error: CommandError<ApprovalError>) -> ApprovalDecideError {
    match error {
        CommandError::Domain(e) => ApprovalDecideError::Domain(e),
        CommandError::Store(e) if e.is_transient() => {
            ApprovalDecideError::Unavailable(e.to_string())
        }
        other => ApprovalDecideError::Failed(other.to_string()),
    }
}

/// Retries what a short outage or a lost race may fail; a refusal is final.
async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CommandError<ApprovalError>>>,
{
    let mut backoff = Duration::from_millis(50);
    for _ in 0..12 {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(CommandError::Store(e)) if e.is_transient() => {
                tracing::warn!(error = %e, "event log unavailable; retrying an approval");
            }
            Err(CommandError::Contention { .. }) => {}
            Err(other) => return Err(other.to_string()),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    Err("gave up on an approval after repeated failures".into())
}
