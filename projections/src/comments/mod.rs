//! `comments`: one row per comment, for a task's or a run's thread. A deleted
//! comment keeps its row (it existed) without its body, mentions or reactions.

use std::collections::{BTreeMap, BTreeSet};

use flowforge_domain::comment::{CommentEvent, CommentTarget, Member};
use flowforge_store::{LogFilter, StoredEvent};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::ProjectionError;
use crate::document::{Document, DocumentProjection, SqlValue};

pub struct CommentsProjection;

#[derive(Debug, Clone, PartialEq)]
pub struct CommentRow {
    pub comment_id: String,
    pub tenant_id: String,
    pub target_kind: String,
    pub target_id: String,
    pub author_kind: String,
    pub author_id: String,
    pub body: Option<String>,
    pub mentions: String,
    pub reactions: String,
    pub posted_at: i64,
    pub edited_at: Option<i64>,
    pub deleted_at: Option<i64>,
    pub posted_position: i64,
    pub last_position: i64,
}

impl Document for CommentRow {
    const COLUMNS: &'static [&'static str] = &[
        "comment_id",
        "tenant_id",
        "target_kind",
        "target_id",
        "author_kind",
        "author_id",
        "body",
        "mentions",
        "reactions",
        "posted_at",
        "edited_at",
        "deleted_at",
        "posted_position",
        "last_position",
    ];

    fn key(&self) -> &str {
        &self.comment_id
    }

    fn values(&self) -> Vec<SqlValue> {
        vec![
            self.comment_id.as_str().into(),
            self.tenant_id.as_str().into(),
            self.target_kind.as_str().into(),
            self.target_id.as_str().into(),
            self.author_kind.as_str().into(),
            self.author_id.as_str().into(),
            self.body.clone().into(),
            self.mentions.as_str().into(),
            self.reactions.as_str().into(),
            self.posted_at.into(),
            self.edited_at.into(),
            self.deleted_at.into(),
            self.posted_position.into(),
            self.last_position.into(),
        ]
    }

    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            comment_id: row.try_get("comment_id")?,
            tenant_id: row.try_get("tenant_id")?,
            target_kind: row.try_get("target_kind")?,
            target_id: row.try_get("target_id")?,
            author_kind: row.try_get("author_kind")?,
            author_id: row.try_get("author_id")?,
            body: row.try_get("body")?,
            mentions: row.try_get("mentions")?,
            reactions: row.try_get("reactions")?,
            posted_at: row.try_get("posted_at")?,
            edited_at: row.try_get("edited_at")?,
            deleted_at: row.try_get("deleted_at")?,
            posted_position: row.try_get("posted_position")?,
            last_position: row.try_get("last_position")?,
        })
    }
}

fn member_parts(member: &Member) -> (String, String) {
    match member {
        Member::User(id) => ("user".into(), id.clone()),
        Member::Agent(id) => ("agent".into(), id.to_string()),
    }
}

fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn position(event: &StoredEvent) -> i64 {
    i64::try_from(event.global_position).unwrap_or(i64::MAX)
}

impl DocumentProjection for CommentsProjection {
    type Doc = CommentRow;
    const NAME: &'static str = "comments";
    const TABLE: &'static str = "comments";
    const SCHEMA: &'static str = include_str!("schema.sql");
    const SCHEMA_VERSION: u32 = 1;

    fn filter(&self) -> LogFilter {
        LogFilter::all().event_types(CommentEvent::TYPES.iter().copied())
    }

    fn key(&self, event: &StoredEvent) -> Option<String> {
        (event.stream_type == flowforge_domain::comment::STREAM_TYPE)
            .then(|| event.stream_id.trim_start_matches("comment-").to_owned())
    }

    fn evolve(
        &self,
        current: Option<CommentRow>,
        event: &StoredEvent,
    ) -> Result<Option<CommentRow>, ProjectionError> {
        let decoded: CommentEvent = event
            .decode()
            .map_err(|e| ProjectionError::event(event, e))?;
        let mut row = match (current, decoded) {
            (
                None,
                CommentEvent::Posted {
                    comment_id,
                    target,
                    author,
                    body,
                    mentions,
                    at,
                },
            ) => {
                let (target_kind, target_id) = match target {
                    CommentTarget::Task(id) => ("task", id),
                    CommentTarget::Run(id) => ("run", id),
                };
                let (author_kind, author_id) = member_parts(&author);
                CommentRow {
                    comment_id: comment_id.to_string(),
                    tenant_id: event.tenant_id().to_owned(),
                    target_kind: target_kind.into(),
                    target_id: target_id.to_string(),
                    author_kind,
                    author_id,
                    body: Some(body),
                    mentions: json_text(&mentions),
                    reactions: "{}".into(),
                    posted_at: at.timestamp_millis(),
                    edited_at: None,
                    deleted_at: None,
                    posted_position: position(event),
                    last_position: 0,
                }
            }
            (None, _) => {
                return Err(ProjectionError::event(
                    event,
                    "comment event before comment.posted",
                ));
            }
            (Some(row), CommentEvent::Posted { .. }) => row,
            (Some(mut row), change) => {
                let mut reactions: BTreeMap<String, BTreeSet<Member>> =
                    serde_json::from_str(&row.reactions).unwrap_or_default();
                match change {
                    CommentEvent::Posted { .. } => {}
                    CommentEvent::Edited { body, mentions, at } => {
                        row.body = Some(body);
                        row.mentions = json_text(&mentions);
                        row.edited_at = Some(at.timestamp_millis());
                    }
                    CommentEvent::Deleted { at } => {
                        row.body = None;
                        row.mentions = "[]".into();
                        reactions.clear();
                        row.deleted_at = Some(at.timestamp_millis());
                    }
                    CommentEvent::ReactionAdded { emoji, by, .. } => {
                        reactions.entry(emoji).or_default().insert(by);
                    }
                    CommentEvent::ReactionRemoved { emoji, by, .. } => {
                        if let Some(who) = reactions.get_mut(&emoji) {
                            who.remove(&by);
                            if who.is_empty() {
                                reactions.remove(&emoji);
                            }
                        }
                    }
                }
                row.reactions = json_text(&reactions);
                row
            }
        };
        row.last_position = position(event);
        Ok(Some(row))
    }
}
