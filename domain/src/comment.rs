//! Comments on a task or a run, by a user or an agent, with `@mentions` resolved when
//! written and emoji reactions. Stream: `comment-<uuid>`.
//!
//! Deleting a comment removes its body from every read model; the log keeps that it
//! existed (and, being immutable, what it said when posted or edited).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::decider::{Decider, DomainEvent};

pub const STREAM_TYPE: &str = "comment";
pub const MAX_BODY: usize = 64 * 1024;
pub const MAX_EMOJI: usize = 32;

pub fn stream_id(id: Uuid) -> String {
    format!("comment-{id}")
}

/// What a comment is on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum CommentTarget {
    Task(Uuid),
    Run(Uuid),
}

/// A user or an agent: who wrote, who reacted, who is mentioned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Member {
    User(String),
    Agent(Uuid),
}

/// An `@name` that named a member when the comment was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mention {
    pub name: String,
    pub member: Member,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CommentEvent {
    #[serde(rename = "comment.posted")]
    Posted {
        comment_id: Uuid,
        target: CommentTarget,
        author: Member,
        body: String,
        #[serde(default)]
        mentions: Vec<Mention>,
        at: DateTime<Utc>,
    },
    #[serde(rename = "comment.edited")]
    Edited {
        body: String,
        #[serde(default)]
        mentions: Vec<Mention>,
        at: DateTime<Utc>,
    },
    #[serde(rename = "comment.deleted")]
    Deleted { at: DateTime<Utc> },
    #[serde(rename = "comment.reaction_added")]
    ReactionAdded {
        emoji: String,
        by: Member,
        at: DateTime<Utc>,
    },
    #[serde(rename = "comment.reaction_removed")]
    ReactionRemoved {
        emoji: String,
        by: Member,
        at: DateTime<Utc>,
    },
}

impl CommentEvent {
    pub const TYPES: &'static [&'static str] = &[
        "comment.posted",
        "comment.edited",
        "comment.deleted",
        "comment.reaction_added",
        "comment.reaction_removed",
    ];
}

impl DomainEvent for CommentEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            CommentEvent::Posted { .. } => "comment.posted",
            CommentEvent::Edited { .. } => "comment.edited",
            CommentEvent::Deleted { .. } => "comment.deleted",
            CommentEvent::ReactionAdded { .. } => "comment.reaction_added",
            CommentEvent::ReactionRemoved { .. } => "comment.reaction_removed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub comment_id: Uuid,
    pub target: CommentTarget,
    pub author: Member,
    /// `None` once deleted.
    pub body: Option<String>,
    pub mentions: Vec<Mention>,
    pub reactions: BTreeMap<String, BTreeSet<Member>>,
    pub posted_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommentCommand {
    Post {
        comment_id: Uuid,
        target: CommentTarget,
        author: Member,
        body: String,
        mentions: Vec<Mention>,
        at: DateTime<Utc>,
    },
    Edit {
        by: Member,
        /// Admins may change anyone's comment; others only their own.
        moderator: bool,
        body: String,
        mentions: Vec<Mention>,
        at: DateTime<Utc>,
    },
    Delete {
        by: Member,
        moderator: bool,
        at: DateTime<Utc>,
    },
    React {
        emoji: String,
        by: Member,
        at: DateTime<Utc>,
    },
    Unreact {
        emoji: String,
        by: Member,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommentError {
    #[error("no such comment")]
    NotFound,
    #[error("only its author (or an admin) may change a comment")]
    NotAuthor,
    #[error("the comment was deleted")]
    Deleted,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn check_body(body: &str) -> Result<(), CommentError> {
    if body.trim().is_empty() {
        return Err(CommentError::Invalid {
            field: "body",
            message: "a comment needs a body".into(),
        });
    }
    if body.len() > MAX_BODY {
        return Err(CommentError::Invalid {
            field: "body",
            message: format!("at most {MAX_BODY} bytes"),
        });
    }
    Ok(())
}

fn check_emoji(emoji: &str) -> Result<(), CommentError> {
    if emoji.is_empty() || emoji.len() > MAX_EMOJI || emoji.chars().any(char::is_whitespace) {
        return Err(CommentError::Invalid {
            field: "emoji",
            message: format!("one emoji or short name, at most {MAX_EMOJI} bytes, no spaces"),
        });
    }
    Ok(())
}

/// The `@names` in a text, in order, each once: a name is what follows `@` up to the
/// first character that cannot be in one (letters, digits, `-`, `_`, `.`; a trailing
/// `.` ends a sentence, not a name). An `@` inside a word (an e-mail address) is not a
/// mention.
pub fn mentioned_names(body: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let chars: Vec<char> = body.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if *c != '@' || (i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')) {
            continue;
        }
        let name: String = chars[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        let name = name.trim_end_matches('.').to_owned();
        if !name.is_empty() && !names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            names.push(name);
        }
    }
    names
}

#[derive(Debug)]
pub struct CommentThread;

impl Decider for CommentThread {
    type State = Option<Comment>;
    type Command = CommentCommand;
    type Event = CommentEvent;
    type Error = CommentError;

    fn initial() -> Option<Comment> {
        None
    }

    fn evolve(state: Option<Comment>, event: &CommentEvent) -> Option<Comment> {
        match (state, event) {
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
            ) => Some(Comment {
                comment_id: *comment_id,
                target: target.clone(),
                author: author.clone(),
                body: Some(body.clone()),
                mentions: mentions.clone(),
                reactions: BTreeMap::new(),
                posted_at: *at,
                edited_at: None,
                deleted_at: None,
            }),
            (Some(mut comment), event) => {
                match event {
                    CommentEvent::Posted { .. } => {}
                    CommentEvent::Edited { body, mentions, at } => {
                        comment.body = Some(body.clone());
                        comment.mentions = mentions.clone();
                        comment.edited_at = Some(*at);
                    }
                    CommentEvent::Deleted { at } => {
                        comment.body = None;
                        comment.mentions.clear();
                        comment.reactions.clear();
                        comment.deleted_at = Some(*at);
                    }
                    CommentEvent::ReactionAdded { emoji, by, .. } => {
                        comment
                            .reactions
                            .entry(emoji.clone())
                            .or_default()
                            .insert(by.clone());
                    }
                    CommentEvent::ReactionRemoved { emoji, by, .. } => {
                        if let Some(who) = comment.reactions.get_mut(emoji) {
                            who.remove(by);
                            if who.is_empty() {
                                comment.reactions.remove(emoji);
                            }
                        }
                    }
                }
                Some(comment)
            }
            (None, _) => None,
        }
    }

    fn decide(
        state: &Option<Comment>,
        command: CommentCommand,
    ) -> Result<Vec<CommentEvent>, CommentError> {
        if let CommentCommand::Post {
            comment_id,
            target,
            author,
            body,
            mentions,
            at,
        } = command
        {
            if state.is_some() {
                return Ok(Vec::new());
            }
            check_body(&body)?;
            return Ok(vec![CommentEvent::Posted {
                comment_id,
                target,
                author,
                body,
                mentions,
                at,
            }]);
        }
        let comment = state.as_ref().ok_or(CommentError::NotFound)?;
        let live = || {
            if comment.deleted_at.is_some() {
                Err(CommentError::Deleted)
            } else {
                Ok(())
            }
        };
        match command {
            CommentCommand::Post { .. } => Ok(Vec::new()),
            CommentCommand::Edit {
                by,
                moderator,
                body,
                mentions,
                at,
            } => {
                live()?;
                if by != comment.author && !moderator {
                    return Err(CommentError::NotAuthor);
                }
                check_body(&body)?;
                if comment.body.as_deref() == Some(body.as_str()) {
                    return Ok(Vec::new());
                }
                Ok(vec![CommentEvent::Edited { body, mentions, at }])
            }
            CommentCommand::Delete { by, moderator, at } => {
                if comment.deleted_at.is_some() {
                    return Ok(Vec::new());
                }
                if by != comment.author && !moderator {
                    return Err(CommentError::NotAuthor);
                }
                Ok(vec![CommentEvent::Deleted { at }])
            }
            CommentCommand::React { emoji, by, at } => {
                live()?;
                check_emoji(&emoji)?;
                if comment
                    .reactions
                    .get(&emoji)
                    .is_some_and(|w| w.contains(&by))
                {
                    return Ok(Vec::new());
                }
                Ok(vec![CommentEvent::ReactionAdded { emoji, by, at }])
            }
            CommentCommand::Unreact { emoji, by, at } => {
                live()?;
                if !comment
                    .reactions
                    .get(&emoji)
                    .is_some_and(|w| w.contains(&by))
                {
                    return Ok(Vec::new());
                }
                Ok(vec![CommentEvent::ReactionRemoved { emoji, by, at }])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec;
    use chrono::TimeZone;

    type Spec = DeciderSpec<CommentThread>;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .unwrap_or_default()
    }

    fn ann() -> Member {
        Member::User("ann".into())
    }

    fn bot() -> Member {
        Member::Agent(Uuid::from_u128(9))
    }

    fn posted() -> CommentEvent {
        CommentEvent::Posted {
            comment_id: Uuid::from_u128(1),
            target: CommentTarget::Task(Uuid::from_u128(2)),
            author: ann(),
            body: "Looks good, @reviewer".into(),
            mentions: vec![Mention {
                name: "reviewer".into(),
                member: bot(),
            }],
            at: t(0),
        }
    }

    #[test]
    fn a_comment_is_posted_once() {
        let CommentEvent::Posted {
            comment_id,
            target,
            author,
            body,
            mentions,
            at,
        } = posted()
        else {
            unreachable!()
        };
        let post = CommentCommand::Post {
            comment_id,
            target,
            author,
            body,
            mentions,
            at,
        };
        Spec::given([]).when(post.clone()).then([posted()]);
        Spec::given([posted()]).when(post).then_nothing_happens();
    }

    #[test]
    fn only_the_author_or_a_moderator_edits_or_deletes() {
        Spec::given([posted()])
            .when(CommentCommand::Edit {
                by: bot(),
                moderator: false,
                body: "mine now".into(),
                mentions: vec![],
                at: t(1),
            })
            .then_error(|e| *e == CommentError::NotAuthor);
        Spec::given([posted()])
            .when(CommentCommand::Delete {
                by: bot(),
                moderator: true,
                at: t(1),
            })
            .then([CommentEvent::Deleted { at: t(1) }]);
    }

    #[test]
    fn a_deleted_comment_keeps_no_body_and_takes_no_reactions() {
        let state = Spec::given([posted()])
            .when(CommentCommand::Delete {
                by: ann(),
                moderator: false,
                at: t(1),
            })
            .then([CommentEvent::Deleted { at: t(1) }]);
        let comment = state.unwrap();
        assert_eq!(comment.body, None);
        assert!(comment.mentions.is_empty());
        Spec::given([posted(), CommentEvent::Deleted { at: t(1) }])
            .when(CommentCommand::React {
                emoji: "👍".into(),
                by: ann(),
                at: t(2),
            })
            .then_error(|e| *e == CommentError::Deleted);
    }

    #[test]
    fn reactions_are_one_per_author_and_emoji_and_idempotent() {
        let added = CommentEvent::ReactionAdded {
            emoji: "👍".into(),
            by: bot(),
            at: t(1),
        };
        let state = Spec::given([posted()])
            .when(CommentCommand::React {
                emoji: "👍".into(),
                by: bot(),
                at: t(1),
            })
            .then([added.clone()]);
        assert_eq!(state.unwrap().reactions["👍"].len(), 1);
        Spec::given([posted(), added.clone()])
            .when(CommentCommand::React {
                emoji: "👍".into(),
                by: bot(),
                at: t(2),
            })
            .then_nothing_happens();
        let state = Spec::given([posted(), added.clone()])
            .when(CommentCommand::Unreact {
                emoji: "👍".into(),
                by: bot(),
                at: t(3),
            })
            .then([CommentEvent::ReactionRemoved {
                emoji: "👍".into(),
                by: bot(),
                at: t(3),
            }]);
        assert!(state.unwrap().reactions.is_empty());
        Spec::given([posted()])
            .when(CommentCommand::Unreact {
                emoji: "👍".into(),
                by: bot(),
                at: t(3),
            })
            .then_nothing_happens();
        Spec::given([posted()])
            .when(CommentCommand::React {
                emoji: "two words".into(),
                by: bot(),
                at: t(3),
            })
            .then_error(|e| matches!(e, CommentError::Invalid { field: "emoji", .. }));
    }

    #[test]
    fn an_empty_body_is_refused() {
        Spec::given([posted()])
            .when(CommentCommand::Edit {
                by: ann(),
                moderator: false,
                body: "  ".into(),
                mentions: vec![],
                at: t(1),
            })
            .then_error(|e| matches!(e, CommentError::Invalid { field: "body", .. }));
    }

    #[test]
    fn mentions_are_found_once_each_and_not_in_email_addresses() {
        assert_eq!(
            mentioned_names("@ann, ask @qa-bot. Mail ann@acme.test or @Ann again; @ alone"),
            vec!["ann".to_owned(), "qa-bot".to_owned()]
        );
        assert!(mentioned_names("no mentions here").is_empty());
    }

    #[test]
    fn events_read_back_as_recorded() {
        let payload = posted().to_payload();
        assert_eq!(
            payload["target"],
            serde_json::json!({"kind": "task", "id": Uuid::from_u128(2)})
        );
        assert_eq!(payload["mentions"][0]["member"]["kind"], "agent");
        assert_eq!(
            CommentEvent::from_stored("comment.posted", payload).unwrap(),
            posted()
        );
    }
}
