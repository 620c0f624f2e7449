//! `notifications`: every user's inbox, derived from the events that cause a
//! notification (a task assigned to them, a mention of them, an approval asked of them,
//! an agent they own blocked, a run of an app they own failed) and from what they did
//! with it (`inbox.*`). Who owns an agent (its creator) or an app (`app.owner_set`),
//! and which agent has which task, are kept in two tables of the same generation, so
//! a rebuild derives the same owners in the same log order. A notification's id is its causing event's id and its
//! recipient, inserted only if absent in the same transaction as the checkpoint, so a
//! notification exists exactly once however often the log is read (restarts,
//! rebuilds).

use async_trait::async_trait;
use flowforge_domain::agent::AgentEvent;
use flowforge_domain::approval::ApprovalEvent;
use flowforge_domain::comment::{CommentEvent, CommentTarget, Member, Mention};
use flowforge_domain::metadata::ActorKind;
use flowforge_domain::notification::{InboxEvent, notification_id};
use flowforge_domain::ownership::AppOwnerEvent;
use flowforge_domain::run::RunEvent;
use flowforge_domain::task::{Assignee, TaskBoardEvent, TaskEvent, TaskStatus};
use flowforge_store::{LogFilter, StoredEvent};
use sqlx::{Any, Transaction};

use crate::{Projection, ProjectionError, Tables};

pub const NAME: &str = "notifications";

pub struct NotificationsProjection;

/// A notification to insert, if it does not exist yet.
struct New {
    recipient: String,
    kind: &'static str,
    task_id: Option<String>,
    comment_id: Option<String>,
    run_id: Option<String>,
    approval_id: Option<String>,
    summary: String,
}

/// A notification for each user `list` mentions, but `author` (nobody is told about
/// their own words).
fn mentioned(
    list: &[Mention],
    author: &str,
    comment_id: &str,
    target: Option<&CommentTarget>,
) -> Vec<New> {
    let (task_id, run_id) = match target {
        Some(CommentTarget::Task(id)) => (Some(id.to_string()), None),
        Some(CommentTarget::Run(id)) => (None, Some(id.to_string())),
        None => (None, None),
    };
    list.iter()
        .filter_map(|m| match &m.member {
            Member::User(user) if user != author => Some(New {
                recipient: user.clone(),
                kind: "mentioned",
                task_id: task_id.clone(),
                comment_id: Some(comment_id.to_owned()),
                run_id: run_id.clone(),
                approval_id: None,
                summary: format!("mentioned you (@{})", m.name),
            }),
            _ => None,
        })
        .collect()
}

/// The notifications an event causes.
fn caused(event: &StoredEvent) -> Result<Vec<New>, ProjectionError> {
    let actor = &event.metadata.actor.id;
    let assigned = |task_id: String, assignee: &Option<Assignee>, summary: String| match assignee {
        Some(Assignee::User(user)) if user.to_string() != *actor => vec![New {
            recipient: user.to_string(),
            kind: "task_assigned",
            task_id: Some(task_id),
            comment_id: None,
            run_id: None,
            approval_id: None,
            summary,
        }],
        _ => Vec::new(),
    };
    Ok(match event.event_type.as_str() {
        "task.created" => {
            let TaskBoardEvent::Created(created) = event
                .decode()
                .map_err(|e| ProjectionError::event(event, e))?;
            assigned(
                created.task_id.to_string(),
                &created.assignee,
                format!(
                    "assigned you {}: {}",
                    flowforge_domain::task::key(created.number),
                    created.fields.title
                ),
            )
        }
        "task.assigned" => {
            let TaskEvent::Assigned { assignee, .. } = event
                .decode()
                .map_err(|e| ProjectionError::event(event, e))?
            else {
                return Ok(Vec::new());
            };
            let task_id = event.stream_id.trim_start_matches("task-").to_owned();
            assigned(task_id, &assignee, "assigned you a task".into())
        }
        "comment.posted" | "comment.edited" => {
            let comment_id = event.stream_id.trim_start_matches("comment-").to_owned();
            match event
                .decode::<CommentEvent>()
                .map_err(|e| ProjectionError::event(event, e))?
            {
                CommentEvent::Posted {
                    target,
                    author,
                    mentions: list,
                    ..
                } => {
                    let author = match author {
                        Member::User(user) => user,
                        Member::Agent(agent) => agent.to_string(),
                    };
                    mentioned(&list, &author, &comment_id, Some(&target))
                }
                // An edit is the comment author's (or a moderator's): whoever it
                // mentions but its actor is told.
                CommentEvent::Edited { mentions: list, .. } => {
                    mentioned(&list, actor, &comment_id, None)
                }
                _ => Vec::new(),
            }
        }
        "approval.requested" => {
            let ApprovalEvent::Requested {
                approval_id,
                ask,
                origin,
                ..
            } = event
                .decode()
                .map_err(|e| ProjectionError::event(event, e))?
            else {
                return Ok(Vec::new());
            };
            ask.assignees
                .iter()
                .map(|user| New {
                    recipient: user.clone(),
                    kind: "approval_requested",
                    task_id: None,
                    comment_id: None,
                    run_id: Some(origin.run_id.to_string()),
                    approval_id: Some(approval_id.to_string()),
                    summary: format!("asks your approval: {}", ask.title),
                })
                .collect()
        }
        _ => Vec::new(),
    })
}

fn position(event: &StoredEvent) -> i64 {
    i64::try_from(event.global_position).unwrap_or(i64::MAX)
}

#[async_trait]
impl Projection for NotificationsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn schema_version(&self) -> u32 {
        3
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "notifications",
            "notification_owners",
            "notification_task_agents",
        ]
    }

    fn schema(&self) -> &'static str {
        include_str!("schema.sql")
    }

    fn filter(&self) -> LogFilter {
        LogFilter::all().event_types(
            [
                "task.created",
                "task.assigned",
                "comment.posted",
                "comment.edited",
                "approval.requested",
                "agent.created",
                "task.status_changed",
                "app.owner_set",
                "run.failed",
            ]
            .into_iter()
            .chain(InboxEvent::TYPES.iter().copied()),
        )
    }

    async fn apply(
        &self,
        tx: &mut Transaction<'static, Any>,
        tables: &Tables,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError> {
        let table = tables.get("notifications");
        for event in events {
            if event.stream_type == flowforge_domain::notification::STREAM_TYPE {
                let user = event.stream_id.trim_start_matches("inbox-").to_owned();
                let inbox: InboxEvent = event
                    .decode()
                    .map_err(|e| ProjectionError::event(event, e))?;
                let (ids, column, at) = match &inbox {
                    InboxEvent::Read {
                        notification_ids,
                        at,
                    } => (Some(notification_ids), "read_at", at),
                    InboxEvent::Archived {
                        notification_ids,
                        at,
                    } => (Some(notification_ids), "archived_at", at),
                    InboxEvent::AllRead { up_to_position, at } => {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "UPDATE {table} SET read_at = $1 WHERE recipient = $2 \
                             AND source_position <= $3 AND read_at IS NULL"
                        )))
                        .bind(at.timestamp_millis())
                        .bind(&user)
                        .bind(i64::try_from(*up_to_position).unwrap_or(i64::MAX))
                        .execute(&mut **tx)
                        .await?;
                        (None, "read_at", at)
                    }
                };
                for id in ids.into_iter().flatten() {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "UPDATE {table} SET {column} = $1 WHERE notification_id = $2 \
                         AND recipient = $3 AND {column} IS NULL"
                    )))
                    .bind(at.timestamp_millis())
                    .bind(id)
                    .bind(&user)
                    .execute(&mut **tx)
                    .await?;
                }
                continue;
            }
            let mut news = caused(event)?;
            news.extend(owned(tx, tables, event).await?);
            for new in news {
                let actor =
                    serde_json::to_string(&event.metadata.actor).unwrap_or_else(|_| "null".into());
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {table} (notification_id, tenant_id, recipient, kind, actor, \
                     task_id, comment_id, run_id, approval_id, summary, source_position, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                     ON CONFLICT (notification_id) DO NOTHING"
                )))
                .bind(notification_id(&event.event_id.to_string(), &new.recipient))
                .bind(event.tenant_id())
                .bind(&new.recipient)
                .bind(new.kind)
                .bind(actor)
                .bind(new.task_id)
                .bind(new.comment_id)
                .bind(new.run_id)
                .bind(new.approval_id)
                .bind(new.summary)
                .bind(position(event))
                .bind(event.recorded_at.timestamp_millis())
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(())
    }
}

/// Keeps who owns what and which agent has which task, and returns the notifications
/// that go to an owner: `agent_blocked` (a task of an agent they own moved to blocked)
/// and `run_failed` (a run of an app they own failed). Nobody is told of what they did.
async fn owned(
    tx: &mut Transaction<'static, Any>,
    tables: &Tables,
    event: &StoredEvent,
) -> Result<Vec<New>, ProjectionError> {
    let owners = tables.get("notification_owners");
    let task_agents = tables.get("notification_task_agents");
    let tenant = event.tenant_id();
    let decode_error = |e| ProjectionError::event(event, e);
    let owner_of = |subject: String| {
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
            "SELECT owner FROM {owners} WHERE tenant_id = $1 AND subject = $2"
        )))
        .bind(tenant)
        .bind(subject)
    };
    let agent_of = |assignee: &Option<Assignee>| match assignee {
        Some(Assignee::Agent(agent)) => Some(agent.to_string()),
        _ => None,
    };
    let actor = &event.metadata.actor;
    match event.event_type.as_str() {
        "agent.created" => {
            let AgentEvent::Created { agent_id, .. } = event.decode().map_err(decode_error)? else {
                return Ok(Vec::new());
            };
            if actor.kind == ActorKind::User {
                let owner = Some(actor.id.clone());
                let subject = format!("agent:{agent_id}");
                put_or_delete(tx, owners, tenant, ("subject", subject), ("owner", owner)).await?;
            }
        }
        "app.owner_set" => {
            let AppOwnerEvent::OwnerSet { app_id, owner, .. } =
                event.decode().map_err(decode_error)?;
            let subject = format!("app:{app_id}");
            put_or_delete(tx, owners, tenant, ("subject", subject), ("owner", owner)).await?;
        }
        "task.created" => {
            let TaskBoardEvent::Created(created) = event.decode().map_err(decode_error)?;
            if let Some(agent) = agent_of(&created.assignee) {
                let task = created.task_id.to_string();
                put_or_delete(
                    tx,
                    task_agents,
                    tenant,
                    ("task_id", task),
                    ("agent_id", Some(agent)),
                )
                .await?;
            }
        }
        "task.assigned" => {
            let TaskEvent::Assigned { assignee, .. } = event.decode().map_err(decode_error)? else {
                return Ok(Vec::new());
            };
            let task_id = event.stream_id.trim_start_matches("task-").to_owned();
            let agent = agent_of(&assignee);
            put_or_delete(
                tx,
                task_agents,
                tenant,
                ("task_id", task_id),
                ("agent_id", agent),
            )
            .await?;
        }
        "task.status_changed" => {
            let TaskEvent::StatusChanged { to, .. } = event.decode().map_err(decode_error)? else {
                return Ok(Vec::new());
            };
            if to != TaskStatus::Blocked {
                return Ok(Vec::new());
            }
            let task_id = event.stream_id.trim_start_matches("task-").to_owned();
            let agent: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT agent_id FROM {task_agents} WHERE tenant_id = $1 AND task_id = $2"
            )))
            .bind(tenant)
            .bind(&task_id)
            .fetch_optional(&mut **tx)
            .await?;
            let Some(agent) = agent else {
                return Ok(Vec::new());
            };
            let owner = owner_of(format!("agent:{agent}"))
                .fetch_optional(&mut **tx)
                .await?;
            return Ok(owner
                .filter(|owner| *owner != actor.id)
                .map(|owner| New {
                    recipient: owner,
                    kind: "agent_blocked",
                    task_id: Some(task_id),
                    comment_id: None,
                    run_id: None,
                    approval_id: None,
                    summary: "an agent you own is blocked on a task".into(),
                })
                .into_iter()
                .collect());
        }
        "run.failed" => {
            let RunEvent::Failed(failed) = event.decode().map_err(decode_error)? else {
                return Ok(Vec::new());
            };
            let Some(function) = failed.function else {
                return Ok(Vec::new());
            };
            let owner = owner_of(format!("app:{}", function.app_id))
                .fetch_optional(&mut **tx)
                .await?;
            let run_id = event.stream_id.trim_start_matches("run-").to_owned();
            return Ok(owner
                .filter(|owner| *owner != actor.id)
                .map(|owner| New {
                    recipient: owner,
                    kind: "run_failed",
                    task_id: None,
                    comment_id: None,
                    run_id: Some(run_id),
                    approval_id: None,
                    summary: format!(
                        "a run of `{}` failed: {}",
                        function.function_id, failed.error.message
                    ),
                })
                .into_iter()
                .collect());
        }
        _ => {}
    }
    Ok(Vec::new())
}

/// Sets `column` of the row of `tenant` and a key in `table` (a helper table of this
/// projection keyed by tenant and one more column), or deletes the row for `None`.
async fn put_or_delete(
    tx: &mut Transaction<'static, Any>,
    table: &str,
    tenant: &str,
    (key_column, key): (&str, String),
    (column, value): (&str, Option<String>),
) -> Result<(), ProjectionError> {
    match value {
        Some(value) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} (tenant_id, {key_column}, {column}) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant_id, {key_column}) DO UPDATE SET {column} = excluded.{column}"
            )))
            .bind(tenant)
            .bind(key)
            .bind(value)
            .execute(&mut **tx)
            .await?;
        }
        None => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE tenant_id = $1 AND {key_column} = $2"
            )))
            .bind(tenant)
            .bind(key)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}
