//! Team events functions can trigger on: a task assigned (`flowforge/task.assigned`)
//! and a member mentioned in a comment (`flowforge/comment.mentioned`), so that an
//! agent can be woken by a function when it is given work or asked something.
//!
//! The scheduler derives them from the log like any other work. Each one's id is its
//! causing event's id and the member concerned, so reading the log again (a restart,
//! a new scheduler) records none of them twice.

use flowforge_domain::comment::{CommentEvent, CommentTarget, Member, Mention};
use flowforge_domain::task::{Assignee, TaskBoardEvent, TaskEvent};
use flowforge_store::StoredEvent;
use serde_json::{Value, json};

use crate::NewIncomingEvent;

pub const TASK_ASSIGNED: &str = "flowforge/task.assigned";
pub const COMMENT_MENTIONED: &str = "flowforge/comment.mentioned";

fn assignee_json(assignee: &Assignee) -> Value {
    serde_json::to_value(assignee).unwrap_or(Value::Null)
}

fn member_json(member: &Member) -> Value {
    match member {
        Member::User(id) => json!({"kind": "user", "id": id}),
        Member::Agent(id) => json!({"kind": "agent", "id": id}),
    }
}

fn event(id: String, name: &str, data: Value) -> NewIncomingEvent {
    NewIncomingEvent {
        id: Some(id),
        name: name.to_owned(),
        data,
        ts: None,
        user: None,
        v: None,
    }
}

/// The function events a log event causes (none for most).
pub fn caused_by(stored: &StoredEvent) -> Vec<NewIncomingEvent> {
    let cause = stored.event_id.to_string();
    let by = serde_json::to_value(&stored.metadata.actor).unwrap_or(Value::Null);
    match stored.event_type.as_str() {
        "task.created" => match stored.decode::<TaskBoardEvent>() {
            Ok(TaskBoardEvent::Created(created)) => created
                .assignee
                .iter()
                .map(|assignee| {
                    event(
                        format!("{cause}:assigned"),
                        TASK_ASSIGNED,
                        json!({
                            "task_id": created.task_id,
                            "key": flowforge_domain::task::key(created.number),
                            "title": created.fields.title,
                            "assignee": assignee_json(assignee),
                            "by": by,
                        }),
                    )
                })
                .collect(),
            Err(_) => Vec::new(),
        },
        "task.assigned" => match stored.decode::<TaskEvent>() {
            Ok(TaskEvent::Assigned {
                assignee: Some(assignee),
                ..
            }) => vec![event(
                format!("{cause}:assigned"),
                TASK_ASSIGNED,
                json!({
                    "task_id": stored.stream_id.trim_start_matches("task-"),
                    "assignee": assignee_json(&assignee),
                    "by": by,
                }),
            )],
            _ => Vec::new(),
        },
        "comment.posted" | "comment.edited" => {
            let comment_id = stored.stream_id.trim_start_matches("comment-").to_owned();
            let (mentions, target, body): (Vec<Mention>, Option<CommentTarget>, String) =
                match stored.decode::<CommentEvent>() {
                    Ok(CommentEvent::Posted {
                        mentions,
                        target,
                        body,
                        ..
                    }) => (mentions, Some(target), body),
                    Ok(CommentEvent::Edited { mentions, body, .. }) => (mentions, None, body),
                    _ => return Vec::new(),
                };
            mentions
                .iter()
                .map(|mention| {
                    let member = member_json(&mention.member);
                    event(
                        format!("{cause}:{}:{}", member["kind"], member["id"]).replace('"', ""),
                        COMMENT_MENTIONED,
                        json!({
                            "comment_id": comment_id,
                            "target": target,
                            "mentioned": {"name": mention.name, "member": member},
                            "body": body,
                            "by": by,
                        }),
                    )
                })
                .collect()
        }
        _ => Vec::new(),
    }
}
