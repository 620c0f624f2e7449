//! A user's inbox. Notifications themselves are not decided here: the `notifications`
//! projection derives them from the events that cause them (a task assigned to the
//! user, a mention), one per causing event and recipient. What the user does with
//! them — read, read all, archive — is this aggregate's (stream `inbox-<user id>`), so
//! a rebuilt inbox keeps it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::decider::{Decider, DomainEvent};

pub const STREAM_TYPE: &str = "inbox";
/// What a notification can be about (its `kind`).
pub const KINDS: &[&str] = &[
    "task_assigned",
    "mentioned",
    "approval_requested",
    "agent_blocked",
    "run_failed",
];
/// The most notifications one request may mark.
pub const MAX_IDS: usize = 500;

pub fn stream_id(user_id: &str) -> String {
    format!("inbox-{user_id}")
}

/// The id of the notification `causing_event` gives `recipient`: the same however
/// often the event is read, so a notification exists once.
pub fn notification_id(causing_event: &str, recipient: &str) -> String {
    format!("{causing_event}:{recipient}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum InboxEvent {
    #[serde(rename = "inbox.read")]
    Read {
        notification_ids: Vec<String>,
        at: DateTime<Utc>,
    },
    /// Everything that arrived up to this log position is read.
    #[serde(rename = "inbox.all_read")]
    AllRead {
        up_to_position: u64,
        at: DateTime<Utc>,
    },
    #[serde(rename = "inbox.archived")]
    Archived {
        notification_ids: Vec<String>,
        at: DateTime<Utc>,
    },
}

impl InboxEvent {
    pub const TYPES: &'static [&'static str] = &["inbox.read", "inbox.all_read", "inbox.archived"];
}

impl DomainEvent for InboxEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            InboxEvent::Read { .. } => "inbox.read",
            InboxEvent::AllRead { .. } => "inbox.all_read",
            InboxEvent::Archived { .. } => "inbox.archived",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxCommand {
    MarkRead {
        notification_ids: Vec<String>,
        at: DateTime<Utc>,
    },
    MarkAllRead {
        up_to_position: u64,
        at: DateTime<Utc>,
    },
    Archive {
        notification_ids: Vec<String>,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    #[error("notification_ids: {0}")]
    Invalid(String),
}

/// How far "read all" has gone: a later one up to an earlier position changes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxState {
    pub all_read_up_to: u64,
}

#[derive(Debug)]
pub struct Inbox;

fn check(ids: &[String]) -> Result<(), InboxError> {
    if ids.is_empty() {
        return Err(InboxError::Invalid("name at least one notification".into()));
    }
    if ids.len() > MAX_IDS {
        return Err(InboxError::Invalid(format!("at most {MAX_IDS} at once")));
    }
    Ok(())
}

impl Decider for Inbox {
    type State = InboxState;
    type Command = InboxCommand;
    type Event = InboxEvent;
    type Error = InboxError;

    fn initial() -> InboxState {
        InboxState::default()
    }

    fn evolve(mut state: InboxState, event: &InboxEvent) -> InboxState {
        if let InboxEvent::AllRead { up_to_position, .. } = event {
            state.all_read_up_to = state.all_read_up_to.max(*up_to_position);
        }
        state
    }

    fn decide(state: &InboxState, command: InboxCommand) -> Result<Vec<InboxEvent>, InboxError> {
        Ok(vec![match command {
            InboxCommand::MarkRead {
                notification_ids,
                at,
            } => {
                check(&notification_ids)?;
                InboxEvent::Read {
                    notification_ids,
                    at,
                }
            }
            InboxCommand::MarkAllRead { up_to_position, at } => {
                if up_to_position <= state.all_read_up_to {
                    return Ok(Vec::new());
                }
                InboxEvent::AllRead { up_to_position, at }
            }
            InboxCommand::Archive {
                notification_ids,
                at,
            } => {
                check(&notification_ids)?;
                InboxEvent::Archived {
                    notification_ids,
                    at,
                }
            }
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec;
    use chrono::TimeZone;

    type Spec = DeciderSpec<Inbox>;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .unwrap_or_default()
    }

    #[test]
    fn marking_names_the_notifications() {
        Spec::given([])
            .when(InboxCommand::MarkRead {
                notification_ids: vec!["e1:u1".into()],
                at: t(1),
            })
            .then([InboxEvent::Read {
                notification_ids: vec!["e1:u1".into()],
                at: t(1),
            }]);
        Spec::given([])
            .when(InboxCommand::Archive {
                notification_ids: vec![],
                at: t(1),
            })
            .then_error(|e| matches!(e, InboxError::Invalid(_)));
    }

    #[test]
    fn read_all_only_moves_forward() {
        let given = [InboxEvent::AllRead {
            up_to_position: 50,
            at: t(1),
        }];
        Spec::given(given.clone())
            .when(InboxCommand::MarkAllRead {
                up_to_position: 40,
                at: t(2),
            })
            .then_nothing_happens();
        let state = Spec::given(given)
            .when(InboxCommand::MarkAllRead {
                up_to_position: 60,
                at: t(2),
            })
            .then([InboxEvent::AllRead {
                up_to_position: 60,
                at: t(2),
            }]);
        assert_eq!(state.all_read_up_to, 60);
    }

    #[test]
    fn one_notification_per_causing_event_and_recipient() {
        assert_eq!(notification_id("ev-1", "u-2"), "ev-1:u-2");
        assert_ne!(
            notification_id("ev-1", "u-2"),
            notification_id("ev-1", "u-3")
        );
    }
}
