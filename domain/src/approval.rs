//! Human approvals: a run asks people for a decision and waits for it.
//!
//! An approval (stream `approval-<uuid>`) is requested by the engine when a run starts
//! an approval wait (`step.wait_for_approval` in the SDKs, a `WaitForEvent` op carrying
//! an `approval` option). Its id is derived from the run and the step, so asking again —
//! a replayed call, a scheduler taking over after a crash — finds the same approval.
//! It is decided once: approved or rejected by a member, or timed out when the wait
//! ends first. Whichever happens first wins; the other is refused, so the run and the
//! approval never disagree about the outcome.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::decider::{Decider, DomainEvent};

pub const STREAM_TYPE: &str = "approval";
/// The event a decision is announced with; approval waits resume on it.
pub const DECIDED_EVENT: &str = "flowforge/approval.decided";
pub const MAX_TITLE: usize = 500;
pub const MAX_DESCRIPTION: usize = 16 * 1024;
pub const MAX_ASSIGNEES: usize = 50;
pub const MAX_COMMENT: usize = 16 * 1024;

pub fn stream_id(approval_id: Uuid) -> String {
    format!("approval-{approval_id}")
}

/// The approval a run's wait step asks for: stable for a (run, step) pair.
pub fn approval_id(run_id: Uuid, step_id: &str) -> Uuid {
    Uuid::new_v5(&run_id, format!("approval:{step_id}").as_bytes())
}

/// What a function asks, as given in its step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalAsk {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Ids of the users asked to decide (and notified); empty means any member.
    #[serde(default)]
    pub assignees: Vec<String>,
}

/// Where an approval was asked from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalOrigin {
    pub run_id: Uuid,
    pub function_id: String,
    pub step_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    TimedOut,
}

impl ApprovalStatus {
    pub const ALL: [ApprovalStatus; 4] = [
        ApprovalStatus::Pending,
        ApprovalStatus::Approved,
        ApprovalStatus::Rejected,
        ApprovalStatus::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Rejected => "rejected",
            ApprovalStatus::TimedOut => "timed_out",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ApprovalEvent {
    #[serde(rename = "approval.requested")]
    Requested {
        approval_id: Uuid,
        #[serde(flatten)]
        ask: ApprovalAsk,
        #[serde(flatten)]
        origin: ApprovalOrigin,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    #[serde(rename = "approval.decided")]
    Decided {
        approval_id: Uuid,
        approved: bool,
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
        at: DateTime<Utc>,
    },
    #[serde(rename = "approval.timed_out")]
    TimedOut {
        approval_id: Uuid,
        at: DateTime<Utc>,
    },
}

impl ApprovalEvent {
    pub const TYPES: &'static [&'static str] = &[
        "approval.requested",
        "approval.decided",
        "approval.timed_out",
    ];

    /// The approval's status once this event has happened (read models use it too, so
    /// the rule lives here once).
    pub fn status_after(&self) -> ApprovalStatus {
        match self {
            ApprovalEvent::Requested { .. } => ApprovalStatus::Pending,
            ApprovalEvent::Decided { approved: true, .. } => ApprovalStatus::Approved,
            ApprovalEvent::Decided {
                approved: false, ..
            } => ApprovalStatus::Rejected,
            ApprovalEvent::TimedOut { .. } => ApprovalStatus::TimedOut,
        }
    }

    pub fn approval_id(&self) -> Uuid {
        match self {
            ApprovalEvent::Requested { approval_id, .. }
            | ApprovalEvent::Decided { approval_id, .. }
            | ApprovalEvent::TimedOut { approval_id, .. } => *approval_id,
        }
    }
}

impl DomainEvent for ApprovalEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            ApprovalEvent::Requested { .. } => "approval.requested",
            ApprovalEvent::Decided { .. } => "approval.decided",
            ApprovalEvent::TimedOut { .. } => "approval.timed_out",
        }
    }
}

/// A decision as it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalDecision {
    pub approved: bool,
    pub by: String,
    pub comment: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalState {
    pub approval_id: Uuid,
    pub ask: ApprovalAsk,
    pub origin: ApprovalOrigin,
    pub status: ApprovalStatus,
    pub expires_at: DateTime<Utc>,
    pub requested_at: DateTime<Utc>,
    pub decision: Option<ApprovalDecision>,
}

impl ApprovalState {
    /// What the waiting run resumes with (`data` of the decided event).
    pub fn outcome(&self) -> serde_json::Value {
        let decision = self.decision.as_ref();
        serde_json::json!({
            "approval_id": self.approval_id,
            "approved": decision.is_some_and(|d| d.approved),
            "by": decision.map(|d| d.by.clone()),
            "comment": decision.and_then(|d| d.comment.clone()),
            "timed_out": self.status == ApprovalStatus::TimedOut,
        })
    }

    /// Whether `user_id` may decide: anyone when nobody was named.
    pub fn may_be_decided_by(&self, user_id: &str) -> bool {
        self.ask.assignees.is_empty() || self.ask.assignees.iter().any(|a| a == user_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalCommand {
    Request {
        approval_id: Uuid,
        ask: ApprovalAsk,
        origin: ApprovalOrigin,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    Decide {
        approved: bool,
        by: String,
        comment: Option<String>,
        at: DateTime<Utc>,
    },
    /// The run's wait ended without a decision.
    TimeOut { at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("no such approval")]
    NotFound,
    #[error("the approval is already {0}")]
    AlreadyDecided(&'static str),
    #[error("the approval expired at {0}")]
    Expired(DateTime<Utc>),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

pub struct Approval;

impl Decider for Approval {
    type State = Option<ApprovalState>;
    type Command = ApprovalCommand;
    type Event = ApprovalEvent;
    type Error = ApprovalError;

    fn initial() -> Self::State {
        None
    }

    fn evolve(state: Self::State, event: &ApprovalEvent) -> Self::State {
        match event {
            ApprovalEvent::Requested {
                approval_id,
                ask,
                origin,
                expires_at,
                at,
            } => Some(ApprovalState {
                approval_id: *approval_id,
                ask: ask.clone(),
                origin: origin.clone(),
                status: event.status_after(),
                expires_at: *expires_at,
                requested_at: *at,
                decision: None,
            }),
            ApprovalEvent::Decided {
                approved,
                by,
                comment,
                at,
                ..
            } => state.map(|mut s| {
                s.status = event.status_after();
                s.decision = Some(ApprovalDecision {
                    approved: *approved,
                    by: by.clone(),
                    comment: comment.clone(),
                    at: *at,
                });
                s
            }),
            ApprovalEvent::TimedOut { .. } => state.map(|mut s| {
                s.status = event.status_after();
                s
            }),
        }
    }

    fn decide(
        state: &Self::State,
        command: ApprovalCommand,
    ) -> Result<Vec<ApprovalEvent>, ApprovalError> {
        match command {
            ApprovalCommand::Request {
                approval_id,
                ask,
                origin,
                expires_at,
                at,
            } => {
                // Asking again (a replay, a new scheduler) is the same request.
                if state.is_some() {
                    return Ok(vec![]);
                }
                validate_ask(&ask)?;
                Ok(vec![ApprovalEvent::Requested {
                    approval_id,
                    ask,
                    origin,
                    expires_at,
                    at,
                }])
            }
            ApprovalCommand::Decide {
                approved,
                by,
                comment,
                at,
            } => {
                let current = state.as_ref().ok_or(ApprovalError::NotFound)?;
                if current.status != ApprovalStatus::Pending {
                    return Err(ApprovalError::AlreadyDecided(current.status.as_str()));
                }
                if at >= current.expires_at {
                    return Err(ApprovalError::Expired(current.expires_at));
                }
                if comment.as_ref().is_some_and(|c| c.len() > MAX_COMMENT) {
                    return Err(ApprovalError::Invalid {
                        field: "comment",
                        reason: format!("at most {MAX_COMMENT} bytes"),
                    });
                }
                Ok(vec![ApprovalEvent::Decided {
                    approval_id: current.approval_id,
                    approved,
                    by,
                    comment,
                    at,
                }])
            }
            ApprovalCommand::TimeOut { at } => match state {
                Some(s) if s.status == ApprovalStatus::Pending => {
                    Ok(vec![ApprovalEvent::TimedOut {
                        approval_id: s.approval_id,
                        at,
                    }])
                }
                // Decided first: the decision stands.
                Some(_) => Ok(vec![]),
                None => Err(ApprovalError::NotFound),
            },
        }
    }
}

pub fn validate_ask(ask: &ApprovalAsk) -> Result<(), ApprovalError> {
    let title = ask.title.trim();
    if title.is_empty() || title.len() > MAX_TITLE {
        return Err(ApprovalError::Invalid {
            field: "title",
            reason: format!("1 to {MAX_TITLE} bytes"),
        });
    }
    if ask
        .description
        .as_ref()
        .is_some_and(|d| d.len() > MAX_DESCRIPTION)
    {
        return Err(ApprovalError::Invalid {
            field: "description",
            reason: format!("at most {MAX_DESCRIPTION} bytes"),
        });
    }
    if ask.assignees.len() > MAX_ASSIGNEES || ask.assignees.iter().any(|a| a.trim().is_empty()) {
        return Err(ApprovalError::Invalid {
            field: "assignees",
            reason: format!("at most {MAX_ASSIGNEES} non-empty user ids"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec;
    use chrono::TimeZone;

    type Spec = DeciderSpec<Approval>;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .unwrap_or_default()
    }

    fn ask() -> ApprovalAsk {
        ApprovalAsk {
            title: "Refund 120 EUR?".into(),
            description: None,
            assignees: vec!["ana".into()],
        }
    }

    fn origin() -> ApprovalOrigin {
        ApprovalOrigin {
            run_id: Uuid::from_u128(1),
            function_id: "refund".into(),
            step_id: "approve".into(),
        }
    }

    fn id() -> Uuid {
        approval_id(Uuid::from_u128(1), "approve")
    }

    fn requested() -> ApprovalEvent {
        ApprovalEvent::Requested {
            approval_id: id(),
            ask: ask(),
            origin: origin(),
            expires_at: t(3600),
            at: t(0),
        }
    }

    fn request() -> ApprovalCommand {
        ApprovalCommand::Request {
            approval_id: id(),
            ask: ask(),
            origin: origin(),
            expires_at: t(3600),
            at: t(0),
        }
    }

    fn decide(approved: bool, at: i64) -> ApprovalCommand {
        ApprovalCommand::Decide {
            approved,
            by: "ana".into(),
            comment: Some("ok".into()),
            at: t(at),
        }
    }

    fn decided(approved: bool, at: i64) -> ApprovalEvent {
        ApprovalEvent::Decided {
            approval_id: id(),
            approved,
            by: "ana".into(),
            comment: Some("ok".into()),
            at: t(at),
        }
    }

    #[test]
    fn the_id_is_stable_per_run_and_step() {
        assert_eq!(id(), approval_id(Uuid::from_u128(1), "approve"));
        assert_ne!(id(), approval_id(Uuid::from_u128(1), "approve-2"));
        assert_ne!(id(), approval_id(Uuid::from_u128(2), "approve"));
    }

    #[test]
    fn a_request_is_recorded_once() {
        Spec::given([]).when(request()).then([requested()]);
        Spec::given([requested()])
            .when(request())
            .then_nothing_happens();
    }

    #[test]
    fn a_request_without_a_title_is_refused() {
        let ApprovalCommand::Request {
            approval_id,
            origin,
            expires_at,
            at,
            ..
        } = request()
        else {
            unreachable!()
        };
        Spec::given([])
            .when(ApprovalCommand::Request {
                approval_id,
                ask: ApprovalAsk {
                    title: "  ".into(),
                    description: None,
                    assignees: vec![],
                },
                origin,
                expires_at,
                at,
            })
            .then_error(|e| matches!(e, ApprovalError::Invalid { field: "title", .. }));
    }

    #[test]
    fn a_pending_approval_is_approved_or_rejected_once() {
        let state = Spec::given([requested()])
            .when(decide(true, 10))
            .then([decided(true, 10)]);
        assert_eq!(state.map(|s| s.status), Some(ApprovalStatus::Approved));
        Spec::given([requested()])
            .when(decide(false, 10))
            .then([decided(false, 10)]);
        Spec::given([requested(), decided(false, 10)])
            .when(decide(true, 20))
            .then_error(|e| *e == ApprovalError::AlreadyDecided("rejected"));
    }

    #[test]
    fn an_unknown_approval_cannot_be_decided_or_timed_out() {
        Spec::given([])
            .when(decide(true, 1))
            .then_error(|e| *e == ApprovalError::NotFound);
        Spec::given([])
            .when(ApprovalCommand::TimeOut { at: t(1) })
            .then_error(|e| *e == ApprovalError::NotFound);
    }

    #[test]
    fn a_decision_after_expiry_is_refused() {
        Spec::given([requested()])
            .when(decide(true, 3600))
            .then_error(|e| matches!(e, ApprovalError::Expired(_)));
    }

    #[test]
    fn timing_out_ends_a_pending_approval_and_then_no_decision_is_taken() {
        let timed_out = ApprovalEvent::TimedOut {
            approval_id: id(),
            at: t(3600),
        };
        Spec::given([requested()])
            .when(ApprovalCommand::TimeOut { at: t(3600) })
            .then([timed_out.clone()]);
        Spec::given([requested(), timed_out])
            .when(decide(true, 10))
            .then_error(|e| *e == ApprovalError::AlreadyDecided("timed_out"));
    }

    #[test]
    fn a_decision_taken_before_the_timeout_stands() {
        Spec::given([requested(), decided(true, 10)])
            .when(ApprovalCommand::TimeOut { at: t(3600) })
            .then_nothing_happens();
    }

    #[test]
    fn the_outcome_is_what_the_run_resumes_with() {
        let state = Approval::fold(&[requested(), decided(true, 10)]);
        let outcome = state.as_ref().map(ApprovalState::outcome);
        assert_eq!(
            outcome,
            Some(serde_json::json!({
                "approval_id": id(), "approved": true, "by": "ana", "comment": "ok", "timed_out": false
            }))
        );
        let assignee_check = state
            .as_ref()
            .map(|s| (s.may_be_decided_by("ana"), s.may_be_decided_by("bo")));
        assert_eq!(assignee_check, Some((true, false)));
    }

    #[test]
    fn events_round_trip_through_their_stored_form() {
        for event in [
            requested(),
            decided(true, 1),
            ApprovalEvent::TimedOut {
                approval_id: id(),
                at: t(2),
            },
        ] {
            let payload = event.to_payload().to_string();
            let back = ApprovalEvent::from_stored_json(event.event_type(), &payload);
            assert_eq!(back.ok(), Some(event));
        }
    }
}
